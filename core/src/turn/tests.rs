//! The TURN client against a scripted server: what it does when nothing
//! answers, when a nonce goes stale, when a response is forged, and when
//! its allocation must be refreshed. (Against coturn itself:
//! `tests/tests/turn_coturn.rs`.)

use super::*;
use crate::nat::binding::BindingConfig;
use crate::nat::stun;
use crate::{Instant, Rng};
use bytes::Bytes;
use core::net::SocketAddr;
use core::time::Duration;
use stun_types::attribute::{AttributeStaticType, ErrorCode, MessageIntegrity, Nonce, Realm};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType,
    MessageWriteExt, MessageWriteVec, TransactionId,
};
use turn_types::attribute::{Lifetime, XorRelayedAddress};

const REALM: &str = "test.realm";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn credentials() -> TurnCredentials {
    TurnCredentials::mint(b"secret", 2_000_000_000, "t")
}

fn key() -> LongTermKeyCredentials {
    let c = credentials();
    LongTermKeyCredentials::new(c.username, c.password, REALM.into())
}

/// What the scripted server answers to one request.
enum Answer {
    Unauthorized(&'static str),
    StaleNonce(&'static str),
    Error(u16),
    /// Success, granting this lifetime (seconds), signed with `key` or not.
    Success {
        lifetime: u32,
        signed: bool,
    },
}

fn answer(request: &[u8], answer: Answer) -> Bytes {
    let msg = Message::from_bytes(request).expect("a STUN request");
    let tx: TransactionId = msg.transaction_id();
    let class = match answer {
        Answer::Success { .. } => MessageClass::Success,
        _ => MessageClass::Error,
    };
    let mut out = Message::builder(
        MessageType::from_class_method(class, msg.method()),
        tx,
        MessageWriteVec::new(),
    );
    let error = |code| ErrorCode::builder(code).build().expect("error code");
    match answer {
        Answer::Unauthorized(nonce) | Answer::StaleNonce(nonce) => {
            let code = if matches!(answer, Answer::Unauthorized(_)) {
                ErrorCode::UNAUTHORIZED
            } else {
                ErrorCode::STALE_NONCE
            };
            stun::add(&mut out, &error(code));
            stun::add(&mut out, &Realm::new(REALM).expect("realm"));
            stun::add(&mut out, &Nonce::new(nonce).expect("nonce"));
        }
        Answer::Error(code) => stun::add(&mut out, &error(code)),
        Answer::Success { lifetime, signed } => {
            stun::add(
                &mut out,
                &XorRelayedAddress::new(addr("192.0.2.1:50000"), tx),
            );
            stun::add(&mut out, &Lifetime::new(lifetime));
            if signed {
                out.add_message_integrity(&key().into(), IntegrityAlgorithm::Sha1)
                    .expect("signed");
            }
        }
    }
    stun::finish(out)
}

fn client() -> TurnClient {
    TurnClient::new(
        Instant::ZERO,
        BindingConfig::default(),
        addr("10.0.0.2:4000"),
        addr("192.0.2.1:3478"),
        credentials(),
        Rng::from_u64(1),
    )
}

fn server() -> SocketAddr {
    addr("192.0.2.1:3478")
}

fn signed(request: &[u8]) -> bool {
    Message::from_bytes(request)
        .expect("request")
        .has_attribute(MessageIntegrity::TYPE)
}

/// Runs the allocation dance: 401 with a nonce, then the signed request
/// answered with `lifetime`.
fn allocated(lifetime: u32) -> TurnClient {
    let mut c = client();
    let first = c.poll_transmit().expect("Allocate");
    assert!(!signed(&first.payload), "the first request goes unsigned");
    c.handle_datagram(
        Instant::ZERO,
        server(),
        &answer(&first.payload, Answer::Unauthorized("n1")),
    );
    let second = c.poll_transmit().expect("Allocate, signed");
    assert!(signed(&second.payload));
    c.handle_datagram(
        Instant::ZERO,
        server(),
        &answer(
            &second.payload,
            Answer::Success {
                lifetime,
                signed: true,
            },
        ),
    );
    assert!(matches!(c.poll_event(), Some(TurnEvent::Allocated { .. })));
    c
}

#[test]
fn an_unanswered_allocation_gives_up_after_the_rfc_timer() {
    let mut c = client();
    let mut sends = 0;
    let mut now = Instant::ZERO;
    while let Some(next) = c.poll_timeout() {
        now = next;
        c.handle_timeout(now);
        while c.poll_transmit().is_some() {
            sends += 1;
        }
    }
    assert_eq!(sends, BindingConfig::default().requests, "Rc requests");
    assert_eq!(now.since_origin(), BindingConfig::default().give_up_after());
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::Failed(TurnError::Unreachable(server())))
    );
}

#[test]
fn a_stale_nonce_is_replaced_and_the_request_repeated() {
    let mut c = client();
    let first = c.poll_transmit().expect("Allocate");
    c.handle_datagram(
        Instant::ZERO,
        server(),
        &answer(&first.payload, Answer::Unauthorized("n1")),
    );
    let second = c.poll_transmit().expect("signed");
    c.handle_datagram(
        Instant::ZERO,
        server(),
        &answer(&second.payload, Answer::StaleNonce("n2")),
    );
    let third = c.poll_transmit().expect("signed again");
    let nonce = Message::from_bytes(&third.payload)
        .expect("request")
        .attribute::<Nonce>()
        .expect("a nonce")
        .nonce()
        .to_owned();
    assert_eq!(nonce, "n2", "the fresh nonce");
    c.handle_datagram(
        Instant::ZERO,
        server(),
        &answer(
            &third.payload,
            Answer::Success {
                lifetime: 600,
                signed: true,
            },
        ),
    );
    assert!(matches!(c.poll_event(), Some(TurnEvent::Allocated { .. })));
}

/// A success response without our key's MESSAGE-INTEGRITY (an off-path
/// forger who guessed the transaction) is dropped and counted; the real
/// answer still counts.
#[test]
fn an_unsigned_success_to_a_signed_request_is_dropped() {
    let mut c = client();
    let first = c.poll_transmit().expect("Allocate");
    c.handle_datagram(
        Instant::ZERO,
        server(),
        &answer(&first.payload, Answer::Unauthorized("n1")),
    );
    let second = c.poll_transmit().expect("signed");
    let forged = answer(
        &second.payload,
        Answer::Success {
            lifetime: 600,
            signed: false,
        },
    );
    c.handle_datagram(Instant::ZERO, server(), &forged);
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.stats().dropped, 1);
    // From anyone but the server, even a good answer is not looked at.
    let good = answer(
        &second.payload,
        Answer::Success {
            lifetime: 600,
            signed: true,
        },
    );
    c.handle_datagram(Instant::ZERO, addr("192.0.2.66:3478"), &good);
    assert_eq!(c.poll_event(), None);
    c.handle_datagram(Instant::ZERO, server(), &good);
    assert!(matches!(c.poll_event(), Some(TurnEvent::Allocated { .. })));
}

/// Granted two minutes, the client refreshes a minute before they end;
/// a refused refresh means the allocation is lost, and says so.
#[test]
fn the_allocation_is_refreshed_before_it_expires() {
    let mut c = allocated(120);
    let due = c.poll_timeout().expect("a refresh is scheduled");
    assert_eq!(due.since_origin(), Duration::from_secs(60));
    c.handle_timeout(due);
    let refresh = c.poll_transmit().expect("Refresh");
    let msg = Message::from_bytes(&refresh.payload).expect("request");
    assert_eq!(msg.method(), turn_types::message::REFRESH);
    assert!(signed(&refresh.payload));
    c.handle_datagram(due, server(), &answer(&refresh.payload, Answer::Error(437)));
    assert_eq!(c.poll_event(), Some(TurnEvent::Failed(TurnError::Lost)));
    assert!(c.relayed().is_none());
}

/// Relayed data is accepted only from the server, and only from a peer
/// we allowed: by IP once its permission is installed (a Data
/// indication), on a channel once it is bound (ChannelData); anything
/// else is dropped and counted, never a panic.
#[test]
fn relayed_data_comes_only_from_allowed_peers() {
    let mut c = allocated(600);
    let peer = addr("198.51.100.9:7000");
    assert!(c.bind(Instant::ZERO, peer));
    assert!(c.send(peer, b"early").is_none(), "nothing allowed yet");
    let requests: Vec<_> = core::iter::from_fn(|| c.poll_transmit()).collect();
    let of = |method| {
        requests
            .iter()
            .find(|t| Message::from_bytes(&t.payload).is_ok_and(|m| m.method() == method))
            .expect("a request")
            .payload
            .clone()
    };
    let (permission, bind) = (
        of(turn_types::message::CREATE_PERMISSION),
        of(turn_types::message::CHANNEL_BIND),
    );
    let channel_data = |ch: u16, data: &[u8]| {
        let mut v = ch.to_be_bytes().to_vec();
        v.extend_from_slice(&u16::try_from(data.len()).expect("short").to_be_bytes());
        v.extend_from_slice(data);
        v
    };
    let ok = Answer::Success {
        lifetime: 600,
        signed: true,
    };
    c.handle_datagram(Instant::ZERO, server(), &answer(&permission, ok));
    let indication = c.send(peer, b"permitted").expect("a Send indication");
    assert!(Message::from_bytes(&indication.payload).is_ok());
    // Not bound yet: ChannelData is dropped.
    assert_eq!(
        c.handle_datagram(Instant::ZERO, server(), &channel_data(0x4000, b"x")),
        None
    );
    let ok = Answer::Success {
        lifetime: 600,
        signed: true,
    };
    c.handle_datagram(Instant::ZERO, server(), &answer(&bind, ok));
    assert_eq!(c.poll_event(), Some(TurnEvent::Bound { peer }));
    let got = c.handle_datagram(Instant::ZERO, server(), &channel_data(0x4000, b"hi"));
    assert_eq!(
        got.map(|r| (r.peer, r.data)),
        Some((peer, Bytes::from("hi")))
    );
    for junk in [
        channel_data(0x4001, b"no such channel"),
        vec![0x40, 0x00, 0xff, 0xff],
        vec![0x40],
        vec![0x00, 0x01, 0x00],
    ] {
        assert_eq!(c.handle_datagram(Instant::ZERO, server(), &junk), None);
    }
    assert_eq!(c.stats().dropped, 5);
    let out = c.send(peer, b"ok").expect("through the channel");
    assert_eq!(&out.payload[..], &channel_data(0x4000, b"ok")[..]);
}
