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
use bytes::Bytes;
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
    /// Rendezvous → client: not put through.
    Refused {
        /// The session.
        session: u64,
        /// Why.
        why: Refusal,
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
