//! Relaying through a standard TURN server (RFC 8656), for when no direct
//! path exists: [`TurnClient`] holds an allocation and its channels;
//! [`TurnCredentials`] are the short-lived credentials a rendezvous mints
//! for it, in the form coturn's `use-auth-secret` accepts.

pub mod client;
pub mod credentials;
#[cfg(any(test, feature = "testkit"))]
pub mod server_model;

pub use client::{MAX_PEERS, Relayed, TurnClient, TurnError, TurnEvent, TurnStats};
pub use credentials::TurnCredentials;

#[cfg(test)]
mod tests;
