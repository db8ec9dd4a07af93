//! Tickets: everything a client needs to mount a host, as one word.
//!
//! A [`Ticket`] is everything a client needs to mount a host: where it is
//! (its addresses), who it is (its certificate's fingerprint, pinned) and
//! what to prove (the ticket secret). As text it is one copy-pasteable
//! word: `wormhole1-` and the lowercase base32 (RFC 4648, no padding) of a
//! versioned encoding (through [`wormhole_core::codec`], size-limited)
//! followed by a 4-byte checksum, so a ticket cut short or mistyped fails
//! as "bad ticket" instead of as a wrong secret.

use core::fmt;
use core::net::SocketAddr;
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use wormhole_core::codec::{self, WireMessage};
use wormhole_core::conn::auth::TicketSecret;

use crate::net::identity::Fingerprint;

/// The text before the encoding; the digit is the ticket format version.
pub const PREFIX: &str = "wormhole1-";
/// Addresses a ticket may hold.
pub const MAX_ADDRS: usize = 16;
/// Bytes of checksum after the encoding.
const CHECKSUM: usize = 4;
/// Version of the encoded ticket body: 2 adds the rendezvous. Version 1
/// tickets (no rendezvous) still parse.
const BODY_VERSION: u8 = 2;

/// What a client needs to reach and prove itself to a host.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Where the host listens, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// The host certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// The secret proved in Hello.
    pub secret: TicketSecret,
    /// The rendezvous the host is registered with, for peers that cannot
    /// reach `addrs` (behind NATs).
    pub rendezvous: Option<SocketAddr>,
}

impl fmt::Debug for Ticket {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("addrs", &self.addrs)
            .field("fingerprint", &self.fingerprint)
            .field("rendezvous", &self.rendezvous)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    version: u8,
    addrs: Vec<SocketAddr>,
    fingerprint: [u8; 32],
    secret: [u8; 32],
    rendezvous: Option<SocketAddr>,
}

impl WireMessage for Body {
    // Version bytes, 16 IPv6 addresses, fingerprint, secret and the
    // rendezvous, with room.
    const MAX_SIZE: usize = 512;
}

/// A version 1 body: no rendezvous.
#[derive(Serialize, Deserialize)]
struct BodyV1 {
    version: u8,
    addrs: Vec<SocketAddr>,
    fingerprint: [u8; 32],
    secret: [u8; 32],
}

impl WireMessage for BodyV1 {
    const MAX_SIZE: usize = 512;
}

/// Why a ticket does not parse. Displayed as one line starting with
/// "bad ticket:".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The text does not start with `wormhole1-`.
    #[error("bad ticket: it must start with \"{PREFIX}\" (copy the whole line the host printed)")]
    Prefix,
    /// A character that is not base32.
    #[error("bad ticket: unexpected character {0:?} (copy the whole line the host printed)")]
    Char(char),
    /// Longer than any ticket can be.
    #[error("bad ticket: too long ({0} characters)")]
    TooLong(usize),
    /// The checksum does not match: cut short or mistyped.
    #[error("bad ticket: checksum mismatch (cut short or mistyped?)")]
    Checksum,
    /// A ticket from another version of Wormhole.
    #[error("bad ticket: format version {0} is not supported by this build")]
    Version(u8),
    /// The body does not decode.
    #[error("bad ticket: {0}")]
    Body(String),
    /// No address, or too many.
    #[error("bad ticket: it holds {0} addresses (1 to {MAX_ADDRS} expected)")]
    Addrs(usize),
}

impl Ticket {
    /// The ticket's text.
    pub fn encode(&self) -> String {
        let body = Body {
            version: BODY_VERSION,
            addrs: self.addrs.clone(),
            fingerprint: self.fingerprint.0,
            secret: self.secret.0,
            rendezvous: self.rendezvous,
        };
        // At most MAX_ADDRS addresses fit MAX_SIZE; more is a caller bug,
        // which parse would refuse anyway.
        let mut bytes = codec::encode(&body).map(|b| b.to_vec()).unwrap_or_default();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM]);
        format!("{PREFIX}{}", base32_encode(&bytes))
    }

    /// Parses a ticket's text (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        let rest = text
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and_then(|_| text.get(PREFIX.len()..))
            .ok_or(TicketError::Prefix)?;
        let max_chars = (Body::MAX_SIZE + CHECKSUM) * 8 / 5 + 1;
        if rest.len() > max_chars {
            return Err(TicketError::TooLong(text.len()));
        }
        let bytes = base32_decode(rest)?;
        if bytes.len() <= CHECKSUM {
            return Err(TicketError::Checksum);
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if blake3::hash(body).as_bytes()[..CHECKSUM] != *sum {
            return Err(TicketError::Checksum);
        }
        let decoded: Result<Body, _> = codec::decode(body);
        let body = match decoded {
            Ok(b) if b.version == BODY_VERSION => b,
            Ok(b) => return Err(TicketError::Version(b.version)),
            Err(codec::CodecError::Version { got }) => return Err(TicketError::Version(got)),
            Err(e) => match codec::decode::<BodyV1>(body) {
                Ok(v1) if v1.version == 1 => Body {
                    version: 1,
                    addrs: v1.addrs,
                    fingerprint: v1.fingerprint,
                    secret: v1.secret,
                    rendezvous: None,
                },
                _ => return Err(TicketError::Body(e.to_string())),
            },
        };
        if body.addrs.is_empty() || body.addrs.len() > MAX_ADDRS {
            return Err(TicketError::Addrs(body.addrs.len()));
        }
        Ok(Ticket {
            addrs: body.addrs,
            fingerprint: Fingerprint(body.fingerprint),
            secret: TicketSecret(body.secret),
            rendezvous: body.rendezvous,
        })
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticket::parse(s)
    }
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn base32_decode(text: &str) -> Result<Vec<u8>, TicketError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.chars() {
        let v = match c.to_ascii_lowercase() {
            l @ 'a'..='z' => l as u32 - 'a' as u32,
            d @ '2'..='7' => d as u32 - '2' as u32 + 26,
            _ => return Err(TicketError::Char(c)),
        };
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            addrs: vec![
                "192.168.1.20:47470".parse().expect("addr"),
                "[fe80::1]:47470".parse().expect("addr"),
                "127.0.0.1:47470".parse().expect("addr"),
            ],
            fingerprint: Fingerprint([7; 32]),
            secret: TicketSecret([9; 32]),
            rendezvous: Some("198.51.100.1:3478".parse().expect("addr")),
        }
    }

    #[test]
    fn a_version_1_ticket_still_parses() {
        let t = Ticket {
            rendezvous: None,
            ..ticket()
        };
        let body = BodyV1 {
            version: 1,
            addrs: t.addrs.clone(),
            fingerprint: t.fingerprint.0,
            secret: t.secret.0,
        };
        let mut bytes = codec::encode(&body).expect("encode").to_vec();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM]);
        let text = format!("{PREFIX}{}", base32_encode(&bytes));
        assert_eq!(Ticket::parse(&text), Ok(t));
    }

    #[test]
    fn round_trip() {
        let t = ticket();
        let text = t.encode();
        assert!(text.starts_with(PREFIX), "{text}");
        assert!(text.len() < 200, "short enough to paste: {}", text.len());
        assert_eq!(Ticket::parse(&text), Ok(t.clone()));
        assert_eq!(
            Ticket::parse(&format!("  {}\n", text.to_uppercase())),
            Ok(t.clone())
        );
        assert!(!format!("{t:?}").contains("09"), "no secret in Debug");
    }

    #[test]
    fn base32_round_trips_every_length() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            assert_eq!(base32_decode(&base32_encode(&bytes)), Ok(bytes));
        }
    }

    #[test]
    fn parse_errors_are_typed_and_one_line() {
        let text = ticket().encode();
        assert_eq!(Ticket::parse("hello"), Err(TicketError::Prefix));
        assert_eq!(Ticket::parse(""), Err(TicketError::Prefix));
        assert_eq!(
            Ticket::parse(&format!("{text}!")),
            Err(TicketError::Char('!'))
        );
        assert_eq!(
            Ticket::parse(&text[..text.len() - 3]),
            Err(TicketError::Checksum)
        );
        assert_eq!(Ticket::parse(PREFIX), Err(TicketError::Checksum));
        // One character changed.
        let mut bad: Vec<char> = text.chars().collect();
        let i = PREFIX.len() + 20;
        bad[i] = if bad[i] == 'a' { 'b' } else { 'a' };
        let bad: String = bad.into_iter().collect();
        assert_eq!(Ticket::parse(&bad), Err(TicketError::Checksum));
        let long = format!("{PREFIX}{}", "a".repeat(2000));
        assert!(matches!(Ticket::parse(&long), Err(TicketError::TooLong(_))));
        // No addresses: well-formed, checksummed, still refused.
        let empty = Ticket {
            addrs: vec![],
            ..ticket()
        };
        assert_eq!(Ticket::parse(&empty.encode()), Err(TicketError::Addrs(0)));
        for e in [
            TicketError::Prefix,
            TicketError::Checksum,
            TicketError::Char('!'),
            TicketError::Version(9),
        ] {
            let line = e.to_string();
            assert!(
                line.starts_with("bad ticket: ") && !line.contains('\n'),
                "{line}"
            );
        }
    }
}
