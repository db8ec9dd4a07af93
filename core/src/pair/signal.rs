//! Handover signals: the typed messages two peers exchange, over whatever
//! channel the shell provides, to lock, take and release a pair.

use super::{PairNonce, PeerId};
use crate::codec::{self, CodecError, WireMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Names one handover. The initiator numbers its handovers per pair, so a
/// late, duplicated or reordered signal of an earlier handover is told
/// apart from the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HandoverId {
    /// The peer that started it.
    pub initiator: PeerId,
    /// Its per-pair sequence number at that peer (starts at 1).
    pub seq: u64,
}

/// Why a responder refused a Lock (or a Take it no longer knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum BusyReason {
    /// No pair with that nonce (never added, removed, or expired).
    UnknownPair,
    /// The pair is locked, in use or handing over already.
    AlreadyLocked,
    /// Both peers locked at once and the other handover won the tie-break.
    Contended,
    /// The handover is over (or never started) at the responder; it will
    /// never hold the pair for it again.
    NoSuchHandover,
}

/// What a signal asks or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum SignalKind {
    /// Initiator → responder: stop keepalive on this pair and lock it.
    Lock,
    /// Responder: drained and silent.
    LockOk,
    /// Responder: refused; the initiator rolls back.
    LockBusy(BusyReason),
    /// Initiator: the pair is about to carry a connection.
    Take,
    /// Responder: in use on this side.
    TakeOk,
    /// Either side, from InUse: the connection is closed; resume keepalive.
    Release,
    /// Answer to Release; the releasing side resumes keepalive on it.
    ReleaseOk,
    /// Initiator: a Take went unanswered; release whatever you hold.
    Abort,
    /// Answer to Abort: the responder holds nothing for this handover.
    AbortOk,
}

/// One handover signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Signal {
    /// The pair concerned.
    pub pair: PairNonce,
    /// The handover concerned.
    pub handover: HandoverId,
    /// What is asked or answered.
    pub kind: SignalKind,
}

impl WireMessage for Signal {
    // version + varint nonce + 16-byte id + varint seq + kind: well under 64.
    const MAX_SIZE: usize = 64;
}

impl Signal {
    /// The signal's wire bytes.
    pub fn encode(&self) -> Bytes {
        // A signal is fixed-shape and far below its limit.
        codec::encode(self).unwrap_or_default()
    }

    /// Parses a signal received from the channel.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    fn all_kinds() -> Vec<SignalKind> {
        use SignalKind::*;
        vec![
            Lock,
            LockOk,
            LockBusy(BusyReason::UnknownPair),
            LockBusy(BusyReason::AlreadyLocked),
            LockBusy(BusyReason::Contended),
            LockBusy(BusyReason::NoSuchHandover),
            Take,
            TakeOk,
            Release,
            ReleaseOk,
            Abort,
            AbortOk,
        ]
    }

    #[test]
    fn every_signal_round_trips_and_its_bytes_are_pinned() {
        let mut listing = String::new();
        for kind in all_kinds() {
            let signal = Signal {
                pair: PairNonce(0x1234),
                handover: HandoverId {
                    initiator: PeerId::from_u64(1),
                    seq: 3,
                },
                kind,
            };
            let bytes = signal.encode();
            assert_eq!(Signal::decode(&bytes), Ok(signal));
            writeln!(listing, "{kind:?}: {:02x?}", &bytes[..]).expect("string write");
        }
        insta::assert_snapshot!("signal_wire", listing);
    }

    #[test]
    fn truncated_signals_are_errors() {
        let bytes = Signal {
            pair: PairNonce(1),
            handover: HandoverId {
                initiator: PeerId::from_u64(1),
                seq: 1,
            },
            kind: SignalKind::Take,
        }
        .encode();
        for len in 0..bytes.len() {
            assert!(Signal::decode(&bytes[..len]).is_err(), "prefix of {len}");
        }
    }
}
