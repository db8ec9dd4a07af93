//! `wormhole host`, `wormhole mount`, `wormhole unmount` run as a person
//! would (the body is shared with the smol binary's test).

mod common {
    pub(crate) mod host_mount;
    pub(crate) mod procs;
}

#[test]
fn host_mount_unmount_and_ticket_errors() {
    common::host_mount::host_and_mount(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}
