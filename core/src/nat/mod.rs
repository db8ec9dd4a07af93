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
