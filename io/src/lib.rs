//! # wormhole-io: runtime-agnostic I/O glue shared by both shells
//!
//! This crate is **not** part of the pure core. `wormhole-core` never
//! touches a socket or a clock; this crate is where its machines meet real
//! sockets and timers, written once for every runtime. It depends on no
//! runtime: timers, spawning and UDP sockets come from [`quinn::Runtime`]
//! (implemented by `quinn::TokioRuntime` and `quinn::SmolRuntime`), byte
//! streams are `futures-io` traits, and the rest a shell provides through
//! [`Shell`]. The shells `wormhole-tokio` and `wormhole-smol` only pick a
//! runtime, open sockets and call into this crate.
//!
//! Its folders mirror the core's modules, one feature each:
//!
//! * [`net`]: identities and certificate pinning, QUIC settings, frames
//!   on streams, tickets, and the [`Transport`] a mount reaches its host
//!   by ([`QuicTransport`]).
//! * [`host`]: the [`Host`] driver serving a real directory, its disk
//!   executor confined beneath the shared root ([`host::fs`]), the
//!   watcher of local changes and the keys kept across restarts.
//! * [`mount`]: a FUSE [`Mount`]: fuser's session, the adapter from kernel
//!   requests to the client core, the mount driver and the disk cache.
//! * [`nat`]: the rendezvous server and `nat-check`, over real UDP.
//! * [`pair`]: the [`PairAgent`], which drives a NAT pair pool over real
//!   UDP sockets and hands a taken pair's socket to QUIC.
//! * [`cli`]: the command line, defined once for both binaries.
//! * `drive`, `runtime` and `recycle`: the drive loop every driver
//!   runs, what a shell provides, and recycled buffers for file data.
//! * `testkit` (feature `testkit`): an in-process host, a [`Transport`]
//!   without a network, for tests.
//!
//! The shells make no protocol decisions, and neither does this crate: it
//! reads sockets and timers, feeds the core, and does what the core says.

mod claim;
mod drive;
mod recycle;
mod runtime;

pub mod cli;
pub mod host;
pub mod mount;
pub mod nat;
pub mod net;
pub mod pair;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod turn;

pub use host::{Host, HostError, HostOptions};
pub use mount::{Mount, MountError, MountOptions};
pub use net::{Fingerprint, HostLink, Identity, QuicTransport, Ticket, TicketError, Transport};
pub use pair::{
    AgentConfig, AgentError, AgentEvent, AgentStats, IoStats, PairAgent, PairLease, PairStatus,
};
pub use runtime::{BoxFuture, Shell, SignalStream, StreamPair, TimedOut, sleep, timeout, wait_for};
