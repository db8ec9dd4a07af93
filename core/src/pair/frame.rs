//! The keepalive frame: a versioned, MAC-authenticated ping or pong.

use super::{PairKey, PairNonce};
use crate::codec::{self, CodecError, WireMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Ping or pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum FrameKind {
    /// Sent by the pinger every interval.
    Ping,
    /// The ponger's answer, echoing the ping nonce.
    Pong,
}

/// Length of the truncated MAC. 128 bits: forging one takes 2^128 tries.
pub const MAC_LEN: usize = 16;

/// One keepalive datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct KeepaliveFrame {
    /// Ping or pong.
    pub kind: FrameKind,
    /// Which pair this frame keeps alive.
    pub pair: PairNonce,
    /// The ping's sequence number (echoed by the pong); increases per ping,
    /// so a replayed ping is recognised.
    pub ping: u64,
    /// BLAKE3 keyed hash of the fields above under the pair key.
    pub mac: [u8; MAC_LEN],
}

impl WireMessage for KeepaliveFrame {
    // version + kind + two varint u64 + MAC: at most 1 + 1 + 9 + 9 + 16.
    const MAX_SIZE: usize = 64;
}

/// Domain separation: a MAC made for a keepalive frame is never valid
/// anywhere else, and a frame of another protocol version never verifies.
const MAC_CONTEXT: &[u8] = b"wormhole/1 pair keepalive";

fn mac(key: &PairKey, kind: FrameKind, pair: PairNonce, ping: u64) -> [u8; MAC_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(&key.0);
    hasher.update(MAC_CONTEXT);
    hasher.update(&[codec::PROTOCOL_VERSION, kind as u8]);
    hasher.update(&pair.0.to_le_bytes());
    hasher.update(&ping.to_le_bytes());
    let full = hasher.finalize();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
    out
}

impl KeepaliveFrame {
    /// A frame with its MAC computed under `key`.
    pub fn sealed(key: &PairKey, kind: FrameKind, pair: PairNonce, ping: u64) -> Self {
        KeepaliveFrame {
            kind,
            pair,
            ping,
            mac: mac(key, kind, pair, ping),
        }
    }

    /// Whether the MAC is valid under `key` (constant time).
    pub fn verify(&self, key: &PairKey) -> bool {
        let expected = mac(key, self.kind, self.pair, self.ping);
        // Fold the differences so timing does not reveal the first mismatch.
        expected
            .iter()
            .zip(self.mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The frame's wire bytes.
    pub fn encode(&self) -> Bytes {
        // A keepalive frame is fixed-shape and far below its limit.
        codec::encode(self).unwrap_or_default()
    }

    /// Parses a datagram; the MAC is not checked here (the key depends on
    /// the pair the nonce names).
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PairKey {
        PairKey([b; 32])
    }

    #[test]
    fn sealed_frames_verify_and_round_trip() {
        let frame = KeepaliveFrame::sealed(&key(1), FrameKind::Ping, PairNonce(42), 7);
        assert!(frame.verify(&key(1)));
        assert!(!frame.verify(&key(2)));
        assert_eq!(KeepaliveFrame::decode(&frame.encode()), Ok(frame));
    }

    #[test]
    fn any_changed_field_breaks_the_mac() {
        let frame = KeepaliveFrame::sealed(&key(1), FrameKind::Ping, PairNonce(42), 7);
        for tampered in [
            KeepaliveFrame {
                kind: FrameKind::Pong,
                ..frame.clone()
            },
            KeepaliveFrame {
                pair: PairNonce(43),
                ..frame.clone()
            },
            KeepaliveFrame {
                ping: 8,
                ..frame.clone()
            },
        ] {
            assert!(!tampered.verify(&key(1)), "{tampered:?}");
        }
    }

    #[test]
    fn wire_bytes_are_pinned() {
        let ping = KeepaliveFrame::sealed(&key(1), FrameKind::Ping, PairNonce(42), 7);
        let pong = KeepaliveFrame::sealed(&key(1), FrameKind::Pong, PairNonce(0xdead_beef), 300);
        insta::assert_snapshot!(
            "keepalive_wire",
            format!(
                "ping {:02x?}\npong {:02x?}",
                &ping.encode()[..],
                &pong.encode()[..]
            )
        );
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(KeepaliveFrame::decode(&[]).is_err());
        assert!(KeepaliveFrame::decode(&[1, 9]).is_err());
        assert!(KeepaliveFrame::decode(&[2; 30]).is_err());
        assert!(KeepaliveFrame::decode(&[1; 200]).is_err());
    }
}
