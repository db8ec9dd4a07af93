//! NAT traversal over real sockets: the rendezvous server and `nat-check`.
//! The decisions are the core's (`wormhole_core::nat`,
//! `wormhole_core::rendezvous`); this folder reads and writes UDP for them.
//!
//! * [`rendezvous`]: `wormhole rendezvous`, the STUN (RFC 5780) server
//!   peers learn and classify their NATs against.
//! * [`check`]: `wormhole nat-check`: classify this machine's NAT.
//! * [`punch`]: hole punching through a rendezvous, on the sockets the
//!   connections will use.
//! * `udp`: the small set-of-sockets reader and writer both use.

pub mod check;
pub mod punch;
pub mod rendezvous;
pub(crate) mod udp;

pub use check::{CheckError, nat_check, route_to};
pub use punch::{PunchParty, Punched, Relay, client_punch, client_spare, host_punch};
pub use rendezvous::{RendezvousServer, RendezvousStart};
