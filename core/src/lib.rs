//! # wormhole-core: the sans-IO protocol core of Wormhole
//!
//! Every state machine of Wormhole lives here, and none of them does I/O.
//! The core never touches a socket, a file, a clock, a thread or a global
//! random number generator; `core/clippy.toml` makes that a checked rule.
//! Runtime shells (`wormhole-tokio`, `wormhole-smol`) own the sockets and
//! timers, feed the core, and carry out what it asks.
//!
//! ## The contract
//!
//! Every machine follows the same shape (the style of `quinn-proto` and
//! `str0m`):
//!
//! * **Time is an input.** [`Instant`] is nanoseconds since an origin the
//!   shell chooses. Every input method takes `now`.
//! * **Inputs** are `handle_*` methods (`handle_datagram`, `handle_signal`,
//!   …) and commands (`add`, `take`, `release`, …). Commands that can be
//!   refused return a `thiserror` error; network input that is bad is
//!   dropped and counted, never a panic.
//! * **Outputs** are drained with `poll_output()` until it returns `None`:
//!   datagrams to send, signals for a peer, events to act on. Payloads are
//!   [`bytes::Bytes`]. Each input produces a bounded number of outputs.
//! * **Timers**: `poll_timeout()` says when the machine next needs
//!   `handle_timeout(now)`. The shell sleeps until then (or until the next
//!   input). Calling `handle_timeout` early or twice is harmless.
//! * **Randomness** comes from a seeded [`Rng`] the machine owns: the shell
//!   seeds it from the OS, simulations from the test seed. The same seed and
//!   the same inputs give byte-identical outputs.
//! * **Bounds**: every queue, map, frame and retry count is bounded, so a
//!   peer cannot make the core allocate without limit.
//!
//! ## A worked example
//!
//! Two nodes share one NAT pair. Here "the network" is a loop that moves
//! each output to the other pool by hand, which is all a shell does too,
//! with sockets instead of function calls.
//!
//! ```
//! use std::time::Duration;
//! use wormhole_core::pair::*;
//! use wormhole_core::{Instant, Rng};
//!
//! let (a_id, b_id) = (PeerId::from_u64(1), PeerId::from_u64(2));
//! let (a_addr, b_addr) = ("10.0.0.1:4000".parse().unwrap(), "10.0.0.2:5000".parse().unwrap());
//! let pair = |local, remote, peer, role| EndpointPair {
//!     nonce: PairNonce(7), local, remote, peer, key: PairKey([9; 32]), role,
//! };
//! let mut a = PairPool::new(a_id, PairConfig::default(), Rng::from_u64(1));
//! let mut b = PairPool::new(b_id, PairConfig::default(), Rng::from_u64(2));
//! let mut now = Instant::ZERO;
//! a.add(now, pair(a_addr, b_addr, b_id, PingRole::Pinger)).unwrap();
//! b.add(now, pair(b_addr, a_addr, a_id, PingRole::Ponger)).unwrap();
//!
//! // The shell's loop: drain outputs, deliver them, repeat until quiet.
//! fn pump(a: &mut PairPool, b: &mut PairPool, now: Instant, events: &mut Vec<PairEvent>) {
//!     // Move one pool's outputs to the other; true if anything moved.
//!     fn deliver(from: &mut PairPool, to: &mut PairPool, now: Instant, events: &mut Vec<PairEvent>) -> bool {
//!         let mut moved = false;
//!         while let Some(output) = from.poll_output() {
//!             moved = true;
//!             match output {
//!                 Output::Transmit(t) => to.handle_datagram(now, t.remote, t.local, &t.payload),
//!                 Output::Signal { signal, .. } => to.handle_signal(now, from.local_id(), signal),
//!                 Output::Event(e) => events.push(e),
//!             }
//!         }
//!         moved
//!     }
//!     while deliver(a, b, now, events) | deliver(b, a, now, events) {}
//! }
//!
//! // Let keepalive run for a minute of simulated time: the pair stays up.
//! let mut events = Vec::new();
//! while now < Instant::ZERO + Duration::from_secs(60) {
//!     now = a.poll_timeout().into_iter().chain(b.poll_timeout()).min().unwrap();
//!     a.handle_timeout(now);
//!     b.handle_timeout(now);
//!     pump(&mut a, &mut b, now, &mut events);
//! }
//! assert_eq!(b.get(PairNonce(7)).unwrap().state(), PairState::Idle);
//!
//! // A takes the pair: Lock, LockOk, Take, TakeOk, and both sides report it.
//! let (nonce, _handover) = a.take(now, b_id).unwrap();
//! pump(&mut a, &mut b, now, &mut events);
//! assert!(matches!(events[..], [PairEvent::Taken { .. }, PairEvent::Taken { .. }]));
//! assert_eq!(a.get(nonce).unwrap().state(), PairState::InUse);
//!
//! // The shell would now hand the pair's socket to QUIC. When the
//! // connection closes, release it: keepalive resumes on both sides.
//! a.release(now, nonce).unwrap();
//! pump(&mut a, &mut b, now, &mut events);
//! assert_eq!(a.get(nonce).unwrap().state(), PairState::Idle);
//! assert_eq!(b.get(nonce).unwrap().state(), PairState::Idle);
//! ```
//!
//! ## Modules
//!
//! * [`lock`]: the host's lock table and the client's lock machine.
//! * [`cache`]: the client's cache: TTLs, coalescing, invalidation, L1/L2 eviction.
//! * [`nat`]: STUN and NAT classification (traversal to come).
//! * [`rendezvous`]: the rendezvous server's machine (STUN answers).
//! * [`pair`]: NAT pairs: keepalive, the pool, the lock/take/release
//!   handover.
//! * [`proto`]: the file protocol's messages, errno values and limits.
//! * [`client`]: the mount client: kernel operations in, requests and replies out.
//! * [`conn`]: the client's connection: connect, authenticate, reconnect.
//! * [`host`]: the host session and the host side of the file protocol.
//! * [`vfs`]: the client's inode table: numbers, paths, lookups, orphans.
//! * [`write`]: the client's write transactions: lock, chunks, commit.
//! * [`codec`]: the one place that knows the wire encoding.
//! * [`time`], [`rng`]: the injected clock and randomness.

pub mod cache;
pub mod client;
pub mod codec;
pub mod conn;
pub mod host;
pub mod lock;
pub mod nat;
pub mod pair;
pub mod proto;
pub mod rendezvous;
pub mod rng;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
pub mod turn;
pub mod vfs;
pub mod write;

pub use rng::Rng;
pub use time::Instant;
