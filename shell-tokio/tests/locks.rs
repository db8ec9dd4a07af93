//! Advisory locks (`flock`, OFD and POSIX byte-range `fcntl` locks) held
//! across two mounts of one host, SQLite sharing a database through
//! both, and both appending to one log (the body is shared with the
//! smol binary's test).

mod common {
    pub(crate) mod locks;
    pub(crate) mod procs;
}

#[test]
fn locks_sqlite_and_appends_are_shared_across_mounts() {
    common::locks::locks_across_mounts(std::path::Path::new(env!("CARGO_BIN_EXE_wormhole")));
}
