//! NAT traversal (seed 002 §7): STUN, NAT classification, candidates and
//! connectivity checks. See docs/nat.md.
//!
//! * [`stun`]: the STUN messages, through the `stun-types` codec, with
//!   transaction ids from the caller.
//! * [`binding`]: Binding transactions with RFC 8489 retransmission.
//! * [`classify`]: RFC 5780 mapping, filtering and hairpin tests, and the
//!   seed's `NatType` with `can_punch`.
//! * [`birthday`]: many sockets against many ports, for one symmetric
//!   side.
//! * [`traversal`]: candidates and authenticated connectivity checks: hole
//!   punching on the socket that will carry the connection.

pub mod binding;
pub mod birthday;
pub mod classify;
#[cfg(any(test, feature = "testkit"))]
pub mod model;
pub mod stun;
pub mod traversal;

pub use binding::{BindingClient, BindingConfig, BindingError, BindingEvent};
pub use birthday::BirthdayConfig;
pub use classify::{Classifier, ClassifyError, Filtering, Mapping, NatBehaviour, NatType};
pub use stun::{Change, CheckKey, TxId};
pub use traversal::{
    Candidate, CandidateKind, FailReason, Offer, Role, Traversal, TraversalConfig, TraversalEvent,
    TraversalState,
};

use core::net::IpAddr;

/// Whether `ip` is on this machine or a private network (RFC 1918,
/// RFC 4193, link-local): reachable on a LAN, never through the internet.
pub fn is_local_network(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}
