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
        if let Signalling::Connect { offer, .. }
        | Signalling::Incoming { offer, .. }
        | Signalling::Answer { offer, .. }
        | Signalling::Answered { offer, .. } = msg
        {
            assert!(offer.candidates.len() <= MAX_CANDIDATES);
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

/// One input to a traversal under the fuzzer.
#[derive(Debug, arbitrary::Arbitrary)]
pub enum TraversalInput {
    /// The peer's candidates (addresses from a small set), and whether
    /// its mapping varies.
    Candidates(Vec<(u8, bool)>, bool),
    /// A check request from address `from`, under the right key or not.
    Request {
        /// Sender (index into a small set).
        from: u8,
        /// Signed with the session key.
        signed: bool,
        /// Nominating.
        nominate: bool,
    },
    /// An answer to the `nth` check the traversal sent, signed or not.
    Answer {
        /// Which transmitted check it answers (modulo those sent).
        nth: u16,
        /// Signed with the session key.
        signed: bool,
    },
    /// A Binding answer to no request of ours.
    Mapped(u8),
    /// The rendezvous answers the traversal's latest Binding request with
    /// this public port, naming its other port or not.
    Gathered {
        /// Our public port as the rendezvous saw it.
        port: u16,
        /// The answer names the rendezvous's other port.
        other: bool,
    },
    /// The shell binds this many sprayers (when asked or not).
    Sprayers(u8),
    /// Arbitrary bytes from anyone.
    Bytes(u8, Vec<u8>),
    /// Time passes (milliseconds) and timers run.
    Wait(u16),
}

/// Fuzz input for `traversal_machine`.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct TraversalFuzz {
    /// The side.
    pub controlling: bool,
    /// Whether a rendezvous is asked.
    pub with_rendezvous: bool,
    /// What happens.
    pub inputs: Vec<TraversalInput>,
}

/// `traversal_machine`: a traversal driven by arbitrary inputs. Its own
/// postconditions run after each (debug assertions); besides: each input
/// makes a bounded number of datagrams, nothing is ever sent to an
/// address the traversal did not learn from the peer's candidates, an
/// authenticated check or the rendezvous (birthday probes: any port of a
/// server-reflexive candidate's IP), no more birthday datagrams than the
/// budget, and it ends within its deadline once time passes.
pub fn traversal_machine(data: &[u8]) {
    use arbitrary::{Arbitrary, Unstructured};
    use wormhole_core::nat::stun::CheckKey;
    use wormhole_core::nat::traversal::MAX_PATHS;
    use wormhole_core::nat::{
        Candidate, CandidateKind, Offer, Role, Traversal, TraversalConfig, TraversalState, TxId,
    };
    let Ok(fuzz) = TraversalFuzz::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let key = CheckKey::new(&[1; 32]);
    let wrong = CheckKey::new(&[2; 32]);
    let peer = |i: u8| SocketAddr::from(([203, 0, 113, i % 8], 4000 + u16::from(i % 4)));
    let rendezvous = SocketAddr::from(([198, 51, 100, 1], 3478));
    let rendezvous_other = SocketAddr::from(([198, 51, 100, 1], 3479));
    let local = SocketAddr::from(([10, 0, 0, 2], 5000));
    let role = if fuzz.controlling {
        Role::Controlling
    } else {
        Role::Controlled
    };
    let config = TraversalConfig::default();
    let mut t = Traversal::new(
        config,
        role,
        key.clone(),
        local,
        vec![local],
        Rng::from_u64(1),
    );
    let mut now = Instant::ZERO;
    t.start(now, fuzz.with_rendezvous.then_some(rendezvous));
    let mut allowed: Vec<SocketAddr> = vec![rendezvous, rendezvous_other];
    // The IPs of the peer's server-reflexive candidates: birthday probes
    // may go to any of their ports.
    let mut scan_ips: Vec<core::net::IpAddr> = Vec::new();
    let mut sent: Vec<TxId> = Vec::new();
    let mut gathers: Vec<(TxId, SocketAddr)> = Vec::new();
    let burst = usize::from(config.birthday.burst);
    let drain = |t: &mut Traversal,
                 allowed: &[SocketAddr],
                 scan_ips: &[core::net::IpAddr],
                 sent: &mut Vec<TxId>,
                 gathers: &mut Vec<(TxId, SocketAddr)>| {
        let mut n = 0;
        while let Some(out) = t.poll_transmit() {
            n += 1;
            assert!(
                allowed.contains(&out.remote) || scan_ips.contains(&out.remote.ip()),
                "sent to {} which it never learned",
                out.remote
            );
            if let Some(stun::Check::Request { tx, .. }) = stun::decode_check(&out.payload, &key) {
                sent.push(tx);
            } else if let Ok(stun::Stun::Request { tx, .. }) = stun::decode(&out.payload) {
                gathers.push((tx, out.remote));
            }
        }
        assert!(n <= MAX_PATHS + burst + 4, "{n} datagrams for one input");
        while t.poll_event().is_some() {}
    };
    drain(&mut t, &allowed, &scan_ips, &mut sent, &mut gathers);
    for input in fuzz.inputs.into_iter().take(256) {
        match input {
            TraversalInput::Candidates(list, mapping_varies) => {
                let c: Vec<Candidate> = list
                    .into_iter()
                    .take(16)
                    .map(|(i, srflx)| {
                        let kind = if srflx {
                            CandidateKind::ServerReflexive
                        } else {
                            CandidateKind::Host
                        };
                        Candidate::new(kind, peer(i), 1)
                    })
                    .collect();
                allowed.extend(c.iter().map(|c| c.addr));
                scan_ips.extend(
                    c.iter()
                        .filter(|c| c.kind == CandidateKind::ServerReflexive)
                        .map(|c| c.addr.ip()),
                );
                let offer = Offer {
                    candidates: c,
                    mapping_varies,
                };
                t.add_remote_candidates(now, &offer);
            }
            TraversalInput::Request {
                from,
                signed,
                nominate,
            } => {
                let k = if signed { &key } else { &wrong };
                if signed {
                    allowed.push(peer(from));
                }
                let tx = TxId::new(u128::from(from) << 64 | u128::from(nominate));
                t.handle_datagram(
                    now,
                    local,
                    peer(from),
                    &stun::check_request(tx, k, 7, nominate),
                );
            }
            TraversalInput::Answer { nth, signed } => {
                if let Some(tx) = sent.get(usize::from(nth) % sent.len().max(1)).copied() {
                    let k = if signed { &key } else { &wrong };
                    t.handle_datagram(now, local, peer(0), &stun::check_success(tx, k, local));
                }
            }
            TraversalInput::Mapped(i) => {
                // Not the gathering transaction's id: a stray, dropped.
                let answer =
                    stun::binding_success(TxId::new(u128::from(i)), peer(i), None, rendezvous);
                t.handle_datagram(now, local, rendezvous, &answer);
            }
            TraversalInput::Gathered { port, other } => {
                if let Some((tx, server)) = gathers.pop() {
                    let mapped = SocketAddr::from(([192, 0, 2, 1], port));
                    let other = other.then_some(rendezvous_other);
                    let answer = stun::binding_success(tx, mapped, other, server);
                    t.handle_datagram(now, local, server, &answer);
                }
            }
            TraversalInput::Sprayers(n) => {
                let sprayers: Vec<SocketAddr> = (0..u16::from(n))
                    .map(|i| SocketAddr::from(([10, 0, 0, 2], 6000 + i)))
                    .collect();
                t.add_sprayers(&sprayers);
            }
            TraversalInput::Bytes(from, bytes) => {
                t.handle_datagram(now, local, peer(from), &bytes);
            }
            TraversalInput::Wait(ms) => {
                now += core::time::Duration::from_millis(u64::from(ms));
                t.handle_timeout(now);
            }
        }
        drain(&mut t, &allowed, &scan_ips, &mut sent, &mut gathers);
    }
    // Liveness: past the deadline, it has ended.
    now += config.deadline + core::time::Duration::from_secs(1);
    t.handle_timeout(now);
    drain(&mut t, &allowed, &scan_ips, &mut sent, &mut gathers);
    assert!(
        t.stats().birthday_sent <= u64::from(config.birthday.probes),
        "over the birthday budget"
    );
    assert!(
        matches!(
            t.state(),
            TraversalState::Connected { .. } | TraversalState::DirectFailed(_)
        ),
        "still {:?} after its deadline",
        t.state()
    );
}

/// `turn_client`: a [`TurnClient`](wormhole_core::turn::TurnClient)
/// allocated on the modelled TURN server, with a permission for one peer
/// IP and a channel to one peer, fed arbitrary datagrams. The input is a
/// sequence of records `[who, len_hi, len_lo, bytes…]`: `who` picks the
/// sender (the server, or a third address) and whether a second passes
/// first. Nothing panics; data is handed up only from datagrams of the
/// server and only for a permitted peer; every datagram the client sends
/// goes from its socket to the server; what it has queued stays bounded.
pub fn turn_client(data: &[u8]) {
    turn_client_relays(data);
}

/// [`turn_client`], returning how many datagrams the client handed up as
/// a peer's data (a corpus worth replaying has some).
pub fn turn_client_relays(data: &[u8]) -> usize {
    use wormhole_core::turn::server_model::TurnServerModel;
    use wormhole_core::turn::{TurnClient, TurnCredentials};
    let local: SocketAddr = "192.0.2.20:5000".parse().expect("address");
    let server_addr: SocketAddr = "198.51.100.5:3478".parse().expect("address");
    let peer: SocketAddr = "203.0.113.9:7000".parse().expect("address");
    let stranger: SocketAddr = "203.0.113.66:9".parse().expect("address");
    let mut server = TurnServerModel::new(server_addr, b"relay");
    let mut now = Instant::ZERO;
    let credentials = TurnCredentials::mint(b"relay", 2_000_000_000, "fuzz");
    let mut client = TurnClient::new(
        now,
        BindingConfig::interactive(),
        local,
        server_addr,
        credentials,
        Rng::from_u64(1),
    );
    client.bind(now, peer);
    // The handshake with the model: allocate, permit, bind.
    for _ in 0..16 {
        while let Some(t) = client.poll_transmit() {
            server.handle_client(t.local, &t.payload);
        }
        while let Some(t) = server.poll_transmit() {
            let _ = client.handle_datagram(now, t.local, &t.payload);
        }
    }
    assert!(client.relayed().is_some(), "the model allocates");
    while client.poll_event().is_some() {}
    let mut rest = data;
    let mut relays = 0;
    while let [who, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        if who & 0x80 != 0 {
            now += core::time::Duration::from_secs(1);
            client.handle_timeout(now);
        }
        let from = if who & 1 == 0 { server_addr } else { stranger };
        if let Some(relayed) = client.handle_datagram(now, from, datagram) {
            assert_eq!(from, server_addr, "data only through the server");
            assert_eq!(
                relayed.peer.ip(),
                peer.ip(),
                "data only from a permitted peer"
            );
            assert!(relayed.data.len() <= datagram.len());
            relays += 1;
        }
        let mut queued = 0;
        while let Some(t) = client.poll_transmit() {
            assert_eq!((t.local, t.remote), (local, server_addr));
            queued += 1;
        }
        assert!(queued <= 8, "{queued} datagrams for one input");
        while client.poll_event().is_some() {}
    }
    // Sending works or says no; never to anyone but the server.
    if let Some(t) = client.send(peer, b"after the input") {
        assert_eq!(t.remote, server_addr);
    }
    assert!(client.send(stranger, b"to a stranger").is_none());
    relays
}
