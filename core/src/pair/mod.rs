//! NAT pairs: NAT-traversed UDP paths kept alive by pings, registered by
//! nonce, and handed over to a connection (seeds 001 and 000).
//!
//! * [`PairEntry`] keeps one pair's NAT mapping alive: the pinger pings, the
//!   ponger answers, both expire after a silence; on lock it drains its
//!   in-flight pings and then falls strictly silent.
//! * [`PairHandover`] is the lock / take / release protocol between the two
//!   peers that share a pair, with a timeout on every waiting state and a
//!   rollback that never loses the pair.
//! * [`PairPool`] is one node's registry of pairs and the machine the shell
//!   drives: datagrams, signals and timeouts in; [`Output`]s out.
//!
//! How the signals travel is the shell's business; the pool only says which
//! peer each one is for. The full protocol, with the reasoning behind each
//! rule, is in `docs/pairs.md`.

mod config;
mod entry;
mod frame;
mod handover;
mod pool;
#[cfg(test)]
mod regressions;
mod signal;
#[cfg(test)]
mod tests;

pub use config::PairConfig;
pub use entry::{PairEntry, PairState, PairStats};
pub use frame::{FrameKind, KeepaliveFrame, MAC_LEN};
pub use handover::{FailReason, HandoverRole, HandoverState, PairHandover};
pub use pool::{
    AddError, DropCounts, DropReason, Output, PairEvent, PairPool, ReleaseError, TakeError,
};
pub use signal::{BusyReason, HandoverId, Signal, SignalKind};

use core::fmt;
use core::net::SocketAddr;
use serde::{Deserialize, Serialize};

/// A pair's identity, shared by both peers' pools. Zero is never valid.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PairNonce(pub u64);

impl fmt::Debug for PairNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:x}", self.0)
    }
}

/// A peer's identity (in Wormhole, derived from its certificate).
///
/// Ordered, because simultaneous handovers are decided by it: the lower id
/// wins.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    /// A peer id whose last eight bytes are `n`, for tests and simulations.
    pub fn from_u64(n: u64) -> Self {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        PeerId(id)
    }
}

impl fmt::Display for PeerId {
    /// Fixed-width hex, all 16 bytes: what logs and people compare against
    /// a certificate fingerprint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Leading zero bytes are dropped so test ids read as "peer:1" in
        // traces; `Display` prints the full id.
        let first = self.0.iter().position(|&b| b != 0).unwrap_or(15);
        write!(f, "peer:")?;
        for (i, b) in self.0[first..].iter().enumerate() {
            if i == 0 {
                write!(f, "{b:x}")?;
            } else {
                write!(f, "{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// The secret both peers hold for a pair; keepalive frames carry a MAC
/// under it. Never printed.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PairKey(pub [u8; 32]);

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairKey(..)")
    }
}

/// Which side of a pair sends the keepalive pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PingRole {
    /// Sends a ping every interval and expects a pong.
    Pinger,
    /// Answers pings; expires when they stop.
    Ponger,
}

/// Everything one side knows about a pair when it is added to its pool:
/// the result of a successful hole punch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EndpointPair {
    /// The pair's identity, the same on both sides.
    pub nonce: PairNonce,
    /// Our socket's address (the shell owns the socket).
    pub local: SocketAddr,
    /// The peer's public endpoint; frames from anywhere else are dropped.
    pub remote: SocketAddr,
    /// The peer at the other end.
    pub peer: PeerId,
    /// The pair's MAC key.
    pub key: PairKey,
    /// Whether this side pings or answers.
    pub role: PingRole,
}

/// A datagram the shell must send from the socket bound to `local`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The local socket to send from (the pair's own socket).
    pub local: SocketAddr,
    /// Destination.
    pub remote: SocketAddr,
    /// The datagram.
    pub payload: bytes::Bytes,
}
