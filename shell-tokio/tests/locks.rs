//! Advisory locks (`flock`, OFD and POSIX byte-range `fcntl` locks) held
//! across two mounts of one host, and SQLite sharing a database through
//! both (the body is shared with the smol binary's test).

mod common {
    pub(crate) mod locks;
    pub(crate) mod procs;
}

#[test]
fn locks_hold_across_mounts_and_sqlite_shares_a_database() {
    common::locks::locks_across_mounts(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}
