//! The rendezvous's signalling messages and the keys derived from a
//! ticket's secret for them.
//!
//! They share the rendezvous's UDP port with STUN: every message begins
//! with the protocol version byte (inside STUN's first-byte range), and
//! STUN is told apart by its magic cookie
//! ([`looks_like_stun`](crate::nat::stun::looks_like_stun)).
//!
//! What the rendezvous learns: a host's id (a hash of its certificate
//! fingerprint), a verifier (a hash of the rendezvous token), and, from
//! clients, the token itself, derived one-way from the ticket secret. It
//! never learns the secret, so it cannot authenticate to the host's QUIC
//! endpoint, nor compute the key that signs the connectivity checks
//! ([`check_key`]): a hostile rendezvous can deny service, or make a host
//! punch toward an address, but cannot put itself on the path.

use crate::codec::{self, CodecError, WireMessage};
use crate::conn::auth::TicketSecret;
use crate::nat::{CheckKey, Offer};
use crate::pair::{PairKey, PairNonce, PeerId, Signal};
use crate::turn::TurnCredentials;
use bytes::Bytes;
use core::net::SocketAddr;
use serde::{Deserialize, Serialize};

/// Candidates one side may send at most.
pub const MAX_CANDIDATES: usize = 8;

/// A registered host's name at the rendezvous: a hash of its
/// certificate's fingerprint, so the rendezvous needs nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostId(pub [u8; 32]);

impl HostId {
    /// The id of the host whose certificate has `fingerprint`.
    pub fn of(fingerprint: &[u8; 32]) -> Self {
        HostId(blake3::derive_key(
            "wormhole/1 rendezvous host id",
            fingerprint,
        ))
    }
}

/// What a client shows the rendezvous to be put through to a host,
/// derived one-way from the ticket secret.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Token(pub [u8; 32]);

impl core::fmt::Debug for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token of a ticket.
    pub fn of(secret: &TicketSecret) -> Self {
        Token(blake3::derive_key("wormhole/1 rendezvous token", &secret.0))
    }

    /// What the host registers, so the rendezvous can check a token
    /// without holding one until a client shows it.
    pub fn verifier(&self) -> [u8; 32] {
        *blake3::hash(&self.0).as_bytes()
    }
}

/// The key of the connectivity checks of one session, known to the host
/// and the client (both hold the secret), not to the rendezvous.
pub fn check_key(secret: &TicketSecret, session: u64) -> CheckKey {
    let mut hasher = blake3::Hasher::new_derive_key("wormhole/1 connectivity checks");
    hasher.update(&secret.0);
    hasher.update(&session.to_le_bytes());
    CheckKey::new(hasher.finalize().as_bytes())
}

/// The punched pair of one session as both sides name it in their pair
/// pools: its nonce and key, derived from the ticket secret (so the
/// rendezvous knows neither).
pub fn session_pair(secret: &TicketSecret, session: u64) -> (PairNonce, PairKey) {
    let mut hasher = blake3::Hasher::new_derive_key("wormhole/1 punched pair");
    hasher.update(&secret.0);
    hasher.update(&session.to_le_bytes());
    let mut out = [0u8; 40];
    hasher.finalize_xof().fill(&mut out);
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&out[..8]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&out[8..]);
    // A zero nonce is refused by the pool; one in 2^64.
    (PairNonce(u64::from_le_bytes(nonce).max(1)), PairKey(key))
}

/// The host's id in pair pools: the first half of its [`HostId`].
pub fn host_peer(host: HostId) -> PeerId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&host.0[..16]);
    PeerId(id)
}

/// A client's id in pair pools, for one session.
pub fn client_peer(session: u64) -> PeerId {
    let hash = blake3::derive_key("wormhole/1 client peer id", &session.to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    PeerId(id)
}

/// The MAC of a pair signal sent through the rendezvous for `session`, by
/// the host (`from_host`) or the client, under the session's pair key: the
/// rendezvous can drop signals but not forge, alter or reflect one.
pub(crate) fn pair_signal_mac(
    key: &PairKey,
    session: u64,
    from_host: bool,
    signal: &[u8],
) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new_keyed(&key.0);
    hasher.update(b"wormhole/1 pair signal");
    hasher.update(&session.to_le_bytes());
    hasher.update(&[u8::from(from_host)]);
    hasher.update(signal);
    let mut mac = [0u8; 16];
    mac.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    mac
}

impl Signalling {
    /// A pair handover signal for `session`'s punched pair, sealed under
    /// its key by the host (`from_host`) or the client.
    pub fn seal_pair_signal(
        host: HostId,
        session: u64,
        key: &PairKey,
        from_host: bool,
        signal: &Signal,
    ) -> Self {
        let signal = signal.encode().to_vec();
        let mac = pair_signal_mac(key, session, from_host, &signal);
        Signalling::PairSignal {
            host,
            session,
            signal,
            mac,
        }
    }
}

/// The signal inside a [`Signalling::PairSignal`], if its MAC verifies
/// under `key` as sent by the host (`from_host`) or the client, and it
/// decodes.
pub fn open_pair_signal(
    key: &PairKey,
    session: u64,
    from_host: bool,
    signal: &[u8],
    mac: &[u8; 16],
) -> Option<Signal> {
    let expected = pair_signal_mac(key, session, from_host, signal);
    // Compared without an early exit: a MAC's bytes leak nothing by timing.
    let diff = expected
        .iter()
        .zip(mac)
        .fold(0, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return None;
    }
    Signal::decode(signal).ok()
}

/// Why the rendezvous refused to put a client through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Refusal {
    /// No host of that id is registered (not running, or not with this
    /// rendezvous).
    NotRegistered,
    /// The token does not match the host's ticket.
    BadToken,
    /// The rendezvous is full.
    Busy,
    /// This rendezvous hands out no relay credentials (started without
    /// `--turn`).
    NoRelay,
}

/// A signalling message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Signalling {
    /// Host → rendezvous, repeated: keep me registered at this address.
    Register {
        /// Who.
        host: HostId,
        /// The hash of the host's token.
        verifier: [u8; 32],
    },
    /// Rendezvous → host: registered for this long.
    Registered {
        /// Seconds until the registration lapses without another Register.
        ttl_secs: u32,
    },
    /// Client → rendezvous, repeated until answered: put me through.
    Connect {
        /// To whom.
        host: HostId,
        /// The ticket's proof.
        token: Token,
        /// The client's name for this attempt (random).
        session: u64,
        /// The client's candidates.
        offer: Offer,
    },
    /// Rendezvous → host: a client wants in.
    Incoming {
        /// The client's session.
        session: u64,
        /// The client's candidates.
        offer: Offer,
    },
    /// Host → rendezvous: my candidates for `session`.
    Answer {
        /// Who answers.
        host: HostId,
        /// The session answered.
        session: u64,
        /// The host's candidates.
        offer: Offer,
    },
    /// Rendezvous → client: the host's candidates.
    Answered {
        /// The session.
        session: u64,
        /// The host's candidates.
        offer: Offer,
    },
    /// Host ↔ client, through the rendezvous: a pair handover signal
    /// (docs/pairs.md) for the punched pair of `session`. The rendezvous
    /// forwards it between the session's client and the registered host,
    /// whichever sent it; the MAC ([`pair_signal_mac`]) is for the peer.
    PairSignal {
        /// The host.
        host: HostId,
        /// The session.
        session: u64,
        /// The encoded [`Signal`](crate::pair::Signal).
        signal: Vec<u8>,
        /// Its MAC.
        mac: [u8; 16],
    },
    /// Rendezvous → client: not put through.
    Refused {
        /// The session.
        session: u64,
        /// Why.
        why: Refusal,
    },
    /// Host or client → rendezvous: credentials for the TURN server, to
    /// relay `session` through. A client shows the ticket's token for a
    /// registered host; the host asks from the address it registered
    /// from. Answered with [`Signalling::TurnGrant`] or `Refused`.
    TurnAsk {
        /// The host the session is with.
        host: HostId,
        /// The ticket's proof (a client), or none (the host itself).
        token: Option<Token>,
        /// The session.
        session: u64,
    },
    /// Rendezvous → asker: where the TURN server is, and credentials it
    /// accepts for a while (minted, never stored).
    TurnGrant {
        /// The session asked for.
        session: u64,
        /// The TURN server.
        server: SocketAddr,
        /// Short-lived credentials.
        credentials: TurnCredentials,
    },
}

impl WireMessage for Signalling {
    // Eight candidates of at most 1 + 1 + 17 + 2 + 5 bytes, a flag, plus
    // two ids.
    const MAX_SIZE: usize = 512;
}

impl Signalling {
    /// The message's wire bytes.
    pub fn encode(&self) -> Bytes {
        // Bounded by construction: callers never build more than
        // MAX_CANDIDATES candidates.
        codec::encode(self).unwrap_or_default()
    }

    /// Parses a datagram; more than [`MAX_CANDIDATES`] candidates is an
    /// error like any other malformation.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let msg: Signalling = codec::decode(bytes)?;
        let too_many = match &msg {
            Signalling::Connect { offer, .. }
            | Signalling::Incoming { offer, .. }
            | Signalling::Answer { offer, .. }
            | Signalling::Answered { offer, .. } => offer.candidates.len() > MAX_CANDIDATES,
            _ => false,
        };
        if too_many {
            return Err(CodecError::TooLarge {
                len: bytes.len(),
                max: Self::MAX_SIZE,
            });
        }
        Ok(msg)
    }
}
