//! One random sequence of metadata operations on a mount and on a local
//! directory, compared after every step: outcomes, attributes, and which
//! times moved (the body is shared with the smol binary's test).

mod common {
    pub(crate) mod procs;
    pub(crate) mod timestamps;
}

#[test]
fn metadata_changes_as_on_a_local_disk() {
    common::timestamps::metadata_like_a_local_disk(std::path::Path::new(env!(
        "CARGO_BIN_EXE_wormhole"
    )));
}
