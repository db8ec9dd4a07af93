//! NAT traversal over real sockets: the rendezvous server and `nat-check`.
//! The decisions are the core's (`wormhole_core::nat`,
//! `wormhole_core::rendezvous`); this folder reads and writes UDP for them.
//!
//! * [`rendezvous`]: `wormhole rendezvous`, the STUN (RFC 5780) server
//!   peers learn and classify their NATs against.
//! * [`check`]: `wormhole nat-check`: classify this machine's NAT.
//! * `udp`: the small set-of-sockets reader and writer both use.

pub mod check;
pub mod rendezvous;
mod udp;

pub use check::{CheckError, nat_check};
pub use rendezvous::{RendezvousServer, RendezvousStart};
