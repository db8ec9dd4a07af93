//! Fault injection on the `wormhole-smol` binary; the bodies, and the
//! list of tests, are shared with the tokio binary's test.

#[path = "../../shell-tokio/tests/common/faults.rs"]
mod faults;
#[path = "../../shell-tokio/tests/common/procs.rs"]
mod procs;

faults::fault_tests!(env!("CARGO_BIN_EXE_wormhole-smol"));
