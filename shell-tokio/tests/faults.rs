//! Fault injection on the `wormhole` binary (tokio); the bodies, and the
//! list of tests, are shared with the smol binary's test.

mod common {
    pub(crate) mod faults;
    pub(crate) mod procs;
}

use common::faults;

faults::fault_tests!(env!("CARGO_BIN_EXE_wormhole"));
