//! Fuzz bodies for the NAT machines: the STUN decoder, the rendezvous and
//! the Binding client fed arbitrary datagrams.

use core::net::SocketAddr;
use wormhole_core::nat::stun::{self, Stun};
use wormhole_core::nat::{BindingClient, BindingConfig, BindingEvent, Change};
use wormhole_core::rendezvous::{Rendezvous, ServerAddrs};
use wormhole_core::{Instant, Rng};

/// Largest answer the rendezvous may send to one request: it must never
/// amplify much (a request is at least 20 bytes).
const MAX_ANSWER: usize = 128;

/// `stun`: arbitrary bytes as a datagram to each socket of a rendezvous
/// and to a Binding client with a transaction in flight. Nothing panics;
/// the rendezvous answers at most once per datagram, only to the sender's
/// IP, small, and with the request's transaction; the client ends only
/// its own transaction and only on a datagram of its id.
pub fn stun(data: &[u8]) {
    let decoded = stun::decode(data);
    let from: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let addrs = ServerAddrs::two_ips(
        [
            "198.51.100.1".parse().expect("ip"),
            "198.51.100.2".parse().expect("ip"),
        ],
        [3478, 3479],
    );
    let mut rendezvous = Rendezvous::new(addrs);
    for local in addrs.sockets() {
        rendezvous.handle_datagram(Instant::ZERO, local, from, data);
        let answer = rendezvous.poll_transmit();
        assert!(
            rendezvous.poll_transmit().is_none(),
            "one answer per datagram"
        );
        let Some(answer) = answer else { continue };
        let Ok(Stun::Request { tx, .. }) = decoded else {
            panic!("answered a datagram that is not a Binding request: {decoded:?}");
        };
        assert_eq!(
            answer.remote.ip(),
            from.ip(),
            "answers go to the sender's IP only"
        );
        assert!(addrs.sockets().contains(&answer.local));
        assert!(
            answer.payload.len() <= MAX_ANSWER,
            "answer of {} bytes",
            answer.payload.len()
        );
        match stun::decode(&answer.payload) {
            Ok(Stun::Success { tx: t, mapped, .. }) => {
                assert_eq!(t, tx);
                assert_eq!(mapped, from);
            }
            Ok(Stun::Error { tx: t }) => assert_eq!(t, tx),
            other => panic!("answered with {other:?}"),
        }
    }

    let local: SocketAddr = "10.0.0.2:5000".parse().expect("address");
    let mut client = BindingClient::new(BindingConfig::default(), Rng::from_u64(1));
    let tx = client
        .request(
            Instant::ZERO,
            local,
            "198.51.100.1:3478".parse().expect("address"),
            Change::NONE,
        )
        .expect("room for one");
    client.handle_datagram(local, from, data);
    if let Some(event) = client.poll_event() {
        match event {
            BindingEvent::Mapped { tx: t, .. } | BindingEvent::Failed { tx: t, .. } => {
                assert_eq!(t, tx);
                assert!(
                    matches!(decoded, Ok(Stun::Success { tx: d, .. } | Stun::Error { tx: d }) if d == tx),
                    "ended by {decoded:?}"
                );
            }
            BindingEvent::HairpinArrived { .. } => panic!("no hairpin probe was sent"),
        }
        assert_eq!(client.in_flight(), 0);
    } else {
        assert_eq!(client.in_flight(), 1);
    }
}

/// `rendezvous_signalling`: arbitrary bytes as a signalling message. A
/// message that decodes re-encodes to bytes that decode to the same
/// message, holds at most `MAX_CANDIDATES` candidates per side, and fed
/// to a rendezvous (after a registration) makes at most one datagram,
/// never larger than the message's limit, never to a third address.
pub fn rendezvous_signalling(data: &[u8]) {
    use wormhole_core::codec::WireMessage;
    use wormhole_core::rendezvous::wire::{HostId, MAX_CANDIDATES, Signalling, Token};
    let decoded = Signalling::decode(data);
    if let Ok(msg) = &decoded {
        let bytes = msg.encode();
        assert_eq!(
            Signalling::decode(&bytes).as_ref(),
            Ok(msg),
            "encode∘decode"
        );
        if let Signalling::Connect { candidates, .. }
        | Signalling::Incoming { candidates, .. }
        | Signalling::Answer { candidates, .. }
        | Signalling::Answered { candidates, .. } = msg
        {
            assert!(candidates.len() <= MAX_CANDIDATES);
        }
    }
    let addrs = ServerAddrs::one_ip("198.51.100.1".parse().expect("ip"), [3478, 3479]);
    let local = addrs.primary();
    let host: SocketAddr = "192.0.2.10:4000".parse().expect("address");
    let client: SocketAddr = "203.0.113.7:40000".parse().expect("address");
    let mut rendezvous = Rendezvous::new(addrs);
    let register = Signalling::Register {
        host: HostId([1; 32]),
        verifier: Token([2; 32]).verifier(),
    };
    rendezvous.handle_datagram(Instant::ZERO, local, host, &register.encode());
    while rendezvous.poll_transmit().is_some() {}
    rendezvous.handle_datagram(Instant::ZERO, local, client, data);
    let answer = rendezvous.poll_transmit();
    assert!(
        rendezvous.poll_transmit().is_none(),
        "one datagram per message"
    );
    if let Some(t) = answer {
        assert!(
            t.remote == client || t.remote == host,
            "sent to {}",
            t.remote
        );
        assert!(t.payload.len() <= Signalling::MAX_SIZE.max(128));
    }
}
