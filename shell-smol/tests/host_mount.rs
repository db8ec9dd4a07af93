//! `wormhole-smol host`, `mount`, `unmount` run as a person would (the
//! body is shared with the tokio binary's test).

#[path = "../../shell-tokio/tests/common/host_mount.rs"]
mod host_mount;
#[path = "../../shell-tokio/tests/common/procs.rs"]
mod procs;

#[test]
fn host_mount_unmount_and_ticket_errors() {
    host_mount::host_and_mount(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole-smol")));
}
