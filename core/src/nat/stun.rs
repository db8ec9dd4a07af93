//! The STUN messages Wormhole speaks (RFC 8489 Binding, with the RFC 5780
//! attributes NAT classification needs), encoded and parsed by
//! `stun-types` behind this one module.
//!
//! Nothing here draws randomness or reads a clock: transaction ids come
//! from the caller (the machines draw them from their seeded [`Rng`]), so a
//! trace stays byte-identical per seed. `core/clippy.toml` forbids the
//! crate's own id generator.
//!
//! [`Rng`]: crate::Rng

use bytes::Bytes;
use core::fmt;
use core::net::SocketAddr;
use stun_types::attribute::{
    AttributeType, ErrorCode, MappedSocketAddr, RawAttribute, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, Message, MessageClass, MessageIntegrityCredentials, MessageType,
    MessageWrite, MessageWriteExt, MessageWriteVec, ShortTermCredentials, TransactionId,
};
use thiserror::Error;

/// CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer from its
/// other address and/or port.
const CHANGE_REQUEST: AttributeType = AttributeType::new(0x0003);
/// RESPONSE-ORIGIN (RFC 5780 §7.3): the address the answer was sent from.
const RESPONSE_ORIGIN: AttributeType = AttributeType::new(0x802b);
/// OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address.
const OTHER_ADDRESS: AttributeType = AttributeType::new(0x802c);
/// RESPONSE-PORT (RFC 5780 §7.5): answer to this port of the sender's IP.
const RESPONSE_PORT: AttributeType = AttributeType::new(0x0027);
/// MAPPED-ADDRESS (RFC 8489 §14.1), answered too for RFC 3489 clients.
const MAPPED_ADDRESS: AttributeType = AttributeType::new(0x0001);
/// PRIORITY (RFC 8445 §16.1): the priority a peer-reflexive candidate
/// learned from this check would have.
const PRIORITY: AttributeType = AttributeType::new(0x0024);
/// USE-CANDIDATE (RFC 8445 §16.1): the controlling side nominates.
const USE_CANDIDATE: AttributeType = AttributeType::new(0x0025);
/// CHANGE-REQUEST flag bits.
const CHANGE_IP: u32 = 0x4;
const CHANGE_PORT: u32 = 0x2;

/// A STUN transaction id: 96 bits (the top 32 of the `u128` are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TxId(u128);

impl TxId {
    /// The id from its 96 bits; higher bits are dropped.
    pub fn new(bits: u128) -> TxId {
        TxId(bits & ((1 << 96) - 1))
    }

    /// A fresh id from the caller's seeded `Rng`: never the thread RNG
    /// (`TransactionId::generate`), so a seed replays byte for byte.
    pub fn draw(rng: &mut crate::Rng) -> TxId {
        TxId::new((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()))
    }

    /// The id's 96 bits.
    pub fn bits(self) -> u128 {
        self.0
    }

    pub(crate) fn stun(self) -> TransactionId {
        self.0.into()
    }
}

/// The server's alternate address (OTHER-ADDRESS) as a socket to send
/// to: a server bound to a wildcard address cannot name its own IP, so
/// its other port is then on the IP we reached it at.
pub fn other_address(other: SocketAddr, reached: SocketAddr) -> SocketAddr {
    if other.ip().is_unspecified() {
        SocketAddr::new(reached.ip(), other.port())
    } else {
        other
    }
}

/// Which of its addresses a server is asked to answer from (RFC 5780).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Change {
    /// From its other IP address.
    pub ip: bool,
    /// From its other port.
    pub port: bool,
}

impl Change {
    /// Answer from where the request arrived.
    pub const NONE: Change = Change {
        ip: false,
        port: false,
    };
    /// Answer from the other port.
    pub const PORT: Change = Change {
        ip: false,
        port: true,
    };
    /// Answer from the other address and port.
    pub const IP_AND_PORT: Change = Change {
        ip: true,
        port: true,
    };

    fn is_none(self) -> bool {
        !self.ip && !self.port
    }
}

/// A parsed STUN message of the kinds Wormhole uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stun {
    /// A Binding request.
    Request {
        /// Its transaction.
        tx: TxId,
        /// Where the client asked to be answered from.
        change: Change,
        /// The port of the client's IP it asked to be answered at
        /// (RESPONSE-PORT), if not the one it sent from.
        response_port: Option<u16>,
    },
    /// A Binding success response.
    Success {
        /// The transaction it answers.
        tx: TxId,
        /// The client's address as the server saw it (XOR-MAPPED-ADDRESS,
        /// or MAPPED-ADDRESS from an RFC 3489 server).
        mapped: SocketAddr,
        /// The server's alternate address, if it offers one.
        other: Option<SocketAddr>,
        /// The address the server says it answered from.
        origin: Option<SocketAddr>,
    },
    /// A Binding error response.
    Error {
        /// The transaction it answers.
        tx: TxId,
    },
    /// A STUN message of another method or class (an indication).
    Other,
}

/// Why a datagram is not a usable STUN message.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StunError {
    /// Not STUN at all, or malformed (bad header, length, FINGERPRINT).
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    /// A success response without a mapped address.
    #[error("Binding response without a mapped address")]
    NoMappedAddress,
}

/// The magic cookie every RFC 5389/8489 message carries in bytes 4–7.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Whether a datagram is shaped like STUN: first byte in STUN's range
/// (RFC 7983: 0–3, which no QUIC packet uses with greasing off), the magic
/// cookie, and a length that is a multiple of four. Wormhole's own frames
/// begin with the protocol version (2), inside that range, so the cookie
/// is what tells them apart.
pub fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20
        && datagram[0] <= 3
        && datagram[4..8] == MAGIC_COOKIE
        && datagram.len().is_multiple_of(4)
}

/// A Binding request with FINGERPRINT (and CHANGE-REQUEST if `change`
/// asks for another origin).
pub fn binding_request(tx: TxId, change: Change) -> Bytes {
    let mut msg = Message::builder(
        MessageType::from_class_method(MessageClass::Request, BINDING),
        tx.stun(),
        MessageWriteVec::new(),
    );
    if !change.is_none() {
        let flags = (u32::from(change.ip) * CHANGE_IP) | (u32::from(change.port) * CHANGE_PORT);
        let value = flags.to_be_bytes();
        add(&mut msg, &RawAttribute::new(CHANGE_REQUEST, &value));
    }
    finish(msg)
}

/// A Binding success response to `tx`: `mapped` as XOR-MAPPED-ADDRESS and
/// MAPPED-ADDRESS, the server's `other` address and the `origin` it sends
/// from, and FINGERPRINT.
pub fn binding_success(
    tx: TxId,
    mapped: SocketAddr,
    other: Option<SocketAddr>,
    origin: SocketAddr,
) -> Bytes {
    let mut msg = Message::builder(
        MessageType::from_class_method(MessageClass::Success, BINDING),
        tx.stun(),
        MessageWriteVec::new(),
    );
    add(&mut msg, &XorMappedAddress::new(mapped, tx.stun()));
    add(
        &mut msg,
        &MappedSocketAddr::new(mapped).to_raw(MAPPED_ADDRESS),
    );
    add(
        &mut msg,
        &MappedSocketAddr::new(origin).to_raw(RESPONSE_ORIGIN),
    );
    if let Some(other) = other {
        add(
            &mut msg,
            &MappedSocketAddr::new(other).to_raw(OTHER_ADDRESS),
        );
    }
    finish(msg)
}

/// A Binding error response to `tx` saying the server cannot honour an
/// attribute (420, as for a CHANGE-REQUEST to an IP it does not have).
pub fn binding_unsupported(tx: TxId) -> Bytes {
    let mut msg = Message::builder(
        MessageType::from_class_method(MessageClass::Error, BINDING),
        tx.stun(),
        MessageWriteVec::new(),
    );
    let code = ErrorCode::builder(ErrorCode::UNKNOWN_ATTRIBUTE)
        .reason("No alternate address")
        .build();
    debug_assert!(code.is_ok(), "420 is in range");
    if let Ok(code) = code {
        add(&mut msg, &code);
    }
    finish(msg)
}

/// The key of one traversal's connectivity checks: both peers derive it
/// for this exchange, and a check without a valid MAC under it (HMAC-SHA256
/// MESSAGE-INTEGRITY-SHA256, RFC 8489 §14.6) is dropped.
#[derive(Clone)]
pub struct CheckKey(ShortTermCredentials);

impl CheckKey {
    /// The key from 32 secret bytes.
    pub fn new(secret: &[u8; 32]) -> Self {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        CheckKey(ShortTermCredentials::new(hex))
    }

    fn credentials(&self) -> MessageIntegrityCredentials {
        self.0.clone().into()
    }
}

impl fmt::Debug for CheckKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckKey(…)")
    }
}

/// A connectivity check or its answer, authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// "Can you hear me here?"
    Request {
        /// Its transaction.
        tx: TxId,
        /// The sender's priority for a candidate learned from it.
        priority: u32,
        /// The controlling side nominates this path.
        nominate: bool,
    },
    /// "Yes, and you came from `mapped`."
    Success {
        /// The transaction answered.
        tx: TxId,
        /// The requester's address as the answering side saw it.
        mapped: SocketAddr,
    },
}

/// A connectivity check request.
pub fn check_request(tx: TxId, key: &CheckKey, priority: u32, nominate: bool) -> Bytes {
    let mut msg = Message::builder(
        MessageType::from_class_method(MessageClass::Request, BINDING),
        tx.stun(),
        MessageWriteVec::new(),
    );
    add(
        &mut msg,
        &RawAttribute::new(PRIORITY, &priority.to_be_bytes()),
    );
    if nominate {
        add(&mut msg, &RawAttribute::new(USE_CANDIDATE, &[]));
    }
    sign_and_finish(msg, key)
}

/// The answer to a connectivity check that arrived from `mapped`.
pub fn check_success(tx: TxId, key: &CheckKey, mapped: SocketAddr) -> Bytes {
    let mut msg = Message::builder(
        MessageType::from_class_method(MessageClass::Success, BINDING),
        tx.stun(),
        MessageWriteVec::new(),
    );
    add(&mut msg, &XorMappedAddress::new(mapped, tx.stun()));
    sign_and_finish(msg, key)
}

fn sign_and_finish(mut msg: MessageWriteVec, key: &CheckKey) -> Bytes {
    let signed = msg.add_message_integrity(&key.credentials(), IntegrityAlgorithm::Sha256);
    debug_assert!(signed.is_ok(), "integrity refused: {signed:?}");
    finish(msg)
}

/// Parses a datagram as a connectivity check under `key`. `None` if it is
/// not one: not STUN, not a Binding request or success, or without a
/// valid MAC under this key (a plain STUN answer, or a forgery).
pub fn decode_check(datagram: &[u8], key: &CheckKey) -> Option<Check> {
    if !looks_like_stun(datagram) {
        return None;
    }
    let msg = Message::from_bytes(datagram).ok()?;
    if !msg.has_method(BINDING)
        || !matches!(
            msg.validate_integrity(&key.credentials()),
            Ok(IntegrityAlgorithm::Sha256)
        )
    {
        return None;
    }
    let tx = TxId::new(msg.transaction_id().into());
    match msg.class() {
        MessageClass::Request => {
            let raw = msg.raw_attribute(PRIORITY)?;
            let b = raw.value.get(..4)?;
            Some(Check::Request {
                tx,
                priority: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                nominate: msg.has_attribute(USE_CANDIDATE),
            })
        }
        MessageClass::Success => Some(Check::Success {
            tx,
            mapped: msg
                .attribute::<XorMappedAddress>()
                .ok()?
                .addr(msg.transaction_id()),
        }),
        _ => None,
    }
}

/// Parses a datagram as STUN.
pub fn decode(datagram: &[u8]) -> Result<Stun, StunError> {
    let msg = Message::from_bytes(datagram).map_err(|e| StunError::Malformed(e.to_string()))?;
    if !msg.has_method(BINDING) {
        return Ok(Stun::Other);
    }
    let tx = TxId::new(msg.transaction_id().into());
    let addr = |atype| {
        msg.raw_attribute(atype)
            .and_then(|raw| MappedSocketAddr::from_raw(&raw).ok())
            .map(|a| a.addr())
    };
    Ok(match msg.class() {
        MessageClass::Request => Stun::Request {
            tx,
            change: msg
                .raw_attribute(CHANGE_REQUEST)
                .map_or(Change::NONE, |raw| {
                    let flags = raw
                        .value
                        .get(..4)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    Change {
                        ip: flags & CHANGE_IP != 0,
                        port: flags & CHANGE_PORT != 0,
                    }
                }),
            response_port: msg
                .raw_attribute(RESPONSE_PORT)
                .and_then(|raw| raw.value.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))),
        },
        MessageClass::Success => {
            let mapped = msg
                .attribute::<XorMappedAddress>()
                .map(|x| x.addr(msg.transaction_id()))
                .ok()
                .or_else(|| addr(MAPPED_ADDRESS))
                .ok_or(StunError::NoMappedAddress)?;
            Stun::Success {
                tx,
                mapped,
                other: addr(OTHER_ADDRESS),
                origin: addr(RESPONSE_ORIGIN),
            }
        }
        MessageClass::Error => Stun::Error { tx },
        MessageClass::Indication => Stun::Other,
    })
}

/// Adds an attribute the builder has room and rules for. Our own messages
/// only ever hold a few fixed attributes before FINGERPRINT, so a refusal
/// would be a bug in this module, not bad input.
pub(crate) fn add(msg: &mut MessageWriteVec, attr: &dyn stun_types::attribute::AttributeWrite) {
    let added = msg.add_attribute(attr);
    debug_assert!(added.is_ok(), "attribute refused: {added:?}");
}

pub(crate) fn finish(mut msg: MessageWriteVec) -> Bytes {
    let added = msg.add_fingerprint();
    debug_assert!(added.is_ok(), "fingerprint refused: {added:?}");
    Bytes::from(msg.finish())
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (false, false) => f.write_str("same origin"),
            (false, true) => f.write_str("other port"),
            (true, false) => f.write_str("other address"),
            (true, true) => f.write_str("other address and port"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_request_round_trips_with_its_change_flags() {
        for change in [Change::NONE, Change::PORT, Change::IP_AND_PORT] {
            let tx = TxId::new(0x1234_5678_9abc_def0_1122_3344);
            let bytes = binding_request(tx, change);
            assert!(looks_like_stun(&bytes));
            assert_eq!(
                decode(&bytes),
                Ok(Stun::Request {
                    tx,
                    change,
                    response_port: None
                })
            );
        }
    }

    #[test]
    fn a_success_carries_mapped_other_and_origin() {
        let tx = TxId::new(7);
        for mapped in [addr("203.0.113.9:40000"), addr("[2001:db8::9]:40000")] {
            let bytes = binding_success(
                tx,
                mapped,
                Some(addr("198.51.100.2:3479")),
                addr("198.51.100.1:3478"),
            );
            assert_eq!(
                decode(&bytes),
                Ok(Stun::Success {
                    tx,
                    mapped,
                    other: Some(addr("198.51.100.2:3479")),
                    origin: Some(addr("198.51.100.1:3478")),
                })
            );
        }
    }

    #[test]
    fn an_error_response_decodes_as_one() {
        let tx = TxId::new(3);
        assert_eq!(decode(&binding_unsupported(tx)), Ok(Stun::Error { tx }));
    }

    #[test]
    fn checks_round_trip_under_their_key_only() {
        let key = CheckKey::new(&[7; 32]);
        let other = CheckKey::new(&[8; 32]);
        let tx = TxId::new(11);
        let request = check_request(tx, &key, 0x6e00_01ff, true);
        assert_eq!(
            decode_check(&request, &key),
            Some(Check::Request {
                tx,
                priority: 0x6e00_01ff,
                nominate: true
            })
        );
        assert_eq!(decode_check(&request, &other), None);
        let mapped = "203.0.113.9:4000".parse().expect("address");
        let success = check_success(tx, &key, mapped);
        assert_eq!(
            decode_check(&success, &key),
            Some(Check::Success { tx, mapped })
        );
        assert_eq!(decode_check(&success, &other), None);
        // A plain Binding answer is not a check.
        let plain = binding_success(tx, mapped, None, mapped);
        assert_eq!(decode_check(&plain, &key), None);
        // A check whose MAC was computed over other bytes fails.
        let mut forged = request.to_vec();
        forged[27] ^= 1;
        assert_eq!(decode_check(&forged, &key), None);
    }

    #[test]
    fn a_corrupted_fingerprint_is_refused() {
        let mut bytes = binding_request(TxId::new(9), Change::NONE).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(decode(&bytes), Err(StunError::Malformed(_))));
    }

    #[test]
    fn garbage_and_truncations_are_errors_not_panics() {
        let bytes = binding_success(TxId::new(1), addr("192.0.2.1:1"), None, addr("192.0.2.2:2"));
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        assert!(!looks_like_stun(&[0x40; 40]));
    }

    #[test]
    fn the_wire_bytes_are_stable() {
        let bytes = binding_request(TxId::new(0xabcdef), Change::PORT);
        insta::assert_snapshot!(hex(&bytes));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
