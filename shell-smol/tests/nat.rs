//! NAT behaviour on kernel NATs, with the `wormhole-smol` binary; the
//! bodies are shared with the tokio binary's test.

#[path = "../../shell-tokio/tests/common/nat.rs"]
mod nat;
#[path = "../../shell-tokio/tests/common/netns.rs"]
mod netns;
#[path = "../../shell-tokio/tests/common/procs.rs"]
mod procs;

nat::nat_tests!(env!("CARGO_BIN_EXE_wormhole-smol"), "s");
