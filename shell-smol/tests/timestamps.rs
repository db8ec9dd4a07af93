//! One random sequence of metadata operations on a mount and on a local
//! directory, compared after every step: outcomes, attributes, and which
//! times moved (the body is shared with the tokio binary's test).

#[path = "../../shell-tokio/tests/common/procs.rs"]
mod procs;
#[path = "../../shell-tokio/tests/common/timestamps.rs"]
mod timestamps;

#[test]
fn metadata_changes_as_on_a_local_disk() {
    timestamps::metadata_like_a_local_disk(std::path::Path::new(env!(
        "CARGO_BIN_EXE_wormhole-smol"
    )));
}
