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
//! What is here:
//!
//! * [`NodeHandle`]: a pair node. One task owns a
//!   [`PairPool`](wormhole_core::pair::PairPool), one UDP socket per pair
//!   and one signalling stream per peer, and carries out the pool's outputs:
//!   keepalive datagrams, framed signals, and on `Taken` a QUIC endpoint
//!   built on the pair's own socket, which comes back to keepalive on
//!   release.
//! * [`quic`]: node identities, certificate pinning both ways, the quinn
//!   configs (ALPN `wormhole/1`).
//! * [`hostfs`]: the host's disk, every file operation confined beneath
//!   the shared root (no symlink followed), and [`watch`], the watcher that
//!   turns local changes into invalidations.
//! * [`cli`]: the command line, defined once for both binaries, and
//!   [`demo`], the `pair-demo` it runs.
//! * [`mount`]: a FUSE mount ([`Mount`]): fuser's session, the
//!   [`fuse`] adapter that turns kernel requests into the client core's
//!   operations, and the mount driver that runs the
//!   [`ClientCore`](wormhole_core::client::ClientCore), its disk cache and
//!   a [`Transport`] to the host.
//! * [`host`]: the host driver ([`Host`]), a host core serving a real
//!   directory over QUIC; [`transport`], the protocol on QUIC streams and
//!   [`QuicTransport`], the mount's way to a remote host; [`ticket`], the
//!   one-line ticket and the host's identity kept across restarts.
//! * [`loopback`]: an in-process host over the in-memory disk (or any
//!   [`FsExecutor`](loopback::FsExecutor)), a [`Transport`] without a
//!   network.
//!
//! The shells make no protocol decisions, and neither does this crate: it
//! reads sockets and timers, feeds the core, and does what the core says.

mod disk_cache;
mod driver;
mod news;
mod node;
mod recycle;
mod runtime;

pub mod cli;
pub mod commands;
pub mod demo;
pub mod fuse;
pub mod host;
pub mod hostfs;
pub mod loopback;
pub mod mount;
pub mod quic;
pub mod ticket;
pub mod transport;
pub mod watch;

pub use host::{Host, HostError, HostOptions};
pub use mount::{Link, Mount, MountError, MountOptions, Transport};
pub use node::{
    IoStats, NodeConfig, NodeError, NodeEvent, NodeHandle, NodeStats, PairLease, PairStatus,
};
pub use quic::{Fingerprint, Identity};
pub use runtime::{BoxFuture, Shell, SignalStream, StreamPair, TimedOut, sleep, timeout, wait_for};
pub use ticket::{Ticket, TicketError};
pub use transport::QuicTransport;
