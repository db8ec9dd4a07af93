//! NAT behaviour on kernel NATs, with the `wormhole` binary (tokio); the
//! bodies are shared with the smol binary's test.

mod common {
    pub(crate) mod nat;
    pub(crate) mod netns;
    pub(crate) mod procs;
}

use common::nat;

nat::nat_tests!(env!("CARGO_BIN_EXE_wormhole"), "t");
