//! The rendezvous answering the classifier through NAT models of every
//! behaviour: each is classified as what it is.

use super::*;
use crate::nat::model::NatModel;
use crate::nat::{
    BindingConfig, Classifier, ClassifyError, Filtering, Mapping, NatBehaviour, NatType,
};
use crate::{Instant, Rng};
use core::time::Duration;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

const A: &str = "10.0.0.2:40000";
const B: &str = "10.0.0.2:40001";

fn two_ip_server() -> ServerAddrs {
    ServerAddrs::two_ips(
        [
            "198.51.100.1".parse().expect("ip"),
            "198.51.100.2".parse().expect("ip"),
        ],
        [3478, 3479],
    )
}

fn one_ip_server() -> ServerAddrs {
    ServerAddrs::one_ip("198.51.100.1".parse().expect("ip"), [3478, 3479])
}

/// Runs a classification of a machine behind `nat` against a rendezvous
/// on `addrs` (or against silence, if `addrs` is `None`).
fn classify(
    mut nat: NatModel,
    addrs: Option<ServerAddrs>,
    seed: u64,
) -> Result<NatBehaviour, ClassifyError> {
    let server = addrs.map_or(addr("198.51.100.1:3478"), |a| a.primary());
    let mut rendezvous = addrs.map(Rendezvous::new);
    let mut now = Instant::ZERO;
    let mut c = Classifier::new(
        now,
        BindingConfig::interactive(),
        Rng::from_u64(seed),
        server,
        addr(A),
        addr(B),
    );
    for _ in 0..1000 {
        if let Some(result) = c.poll_result() {
            return result;
        }
        let mut moved = true;
        while moved {
            moved = false;
            while let Some(t) = c.poll_transmit() {
                moved = true;
                let src = nat.outbound(now, t.local, t.remote);
                if t.remote.ip() == nat.public_ip || t.remote.ip() == t.local.ip() {
                    // Toward our own public address: a hairpin.
                    let back = if nat.mapping == Mapping::None {
                        Some(t.remote)
                    } else if nat.hairpin {
                        nat.inbound(now, src, t.remote.port())
                    } else {
                        None
                    };
                    if let Some(inside) = back {
                        c.handle_datagram(now, inside, src, &t.payload);
                    }
                } else if let Some((r, local)) = rendezvous.as_mut().and_then(|r| {
                    let local = r.addrs.sockets().into_iter().find(|s| {
                        s.port() == t.remote.port()
                            && (s.ip() == t.remote.ip() || s.ip().is_unspecified())
                    })?;
                    Some((r, local))
                }) {
                    r.handle_datagram(now, local, src, &t.payload);
                }
            }
            while let Some(t) = rendezvous.as_mut().and_then(Rendezvous::poll_transmit) {
                moved = true;
                // A wildcard socket sends from the address it was reached at.
                let origin = if t.local.ip().is_unspecified() {
                    SocketAddr::new(server.ip(), t.local.port())
                } else {
                    t.local
                };
                if let Some(inside) = nat.inbound(now, origin, t.remote.port()) {
                    c.handle_datagram(now, inside, origin, &t.payload);
                }
            }
        }
        let Some(next) = c.poll_timeout() else {
            continue;
        };
        now = next;
        c.handle_timeout(now);
    }
    panic!("classification never ended");
}

fn nat(mapping: Mapping, filtering: Filtering) -> NatModel {
    let public = if mapping == Mapping::None {
        "10.0.0.2"
    } else {
        "203.0.113.7"
    };
    NatModel::new(mapping, filtering, public.parse().expect("ip"), 50000)
}

#[test]
fn every_behaviour_is_classified_as_what_it_is() {
    use Filtering as F;
    use Mapping as M;
    let cases = [
        (M::None, F::EndpointIndependent, NatType::None),
        (M::None, F::AddressAndPortDependent, NatType::PortRestricted),
        (
            M::EndpointIndependent,
            F::EndpointIndependent,
            NatType::FullCone,
        ),
        (
            M::EndpointIndependent,
            F::AddressDependent,
            NatType::RestrictedCone,
        ),
        (
            M::EndpointIndependent,
            F::AddressAndPortDependent,
            NatType::PortRestricted,
        ),
        (M::AddressDependent, F::AddressDependent, NatType::Symmetric),
        (
            M::AddressAndPortDependent,
            F::AddressAndPortDependent,
            NatType::Symmetric,
        ),
    ];
    for (seed, (mapping, filtering, kind)) in cases.into_iter().enumerate() {
        let got = classify(nat(mapping, filtering), Some(two_ip_server()), seed as u64)
            .unwrap_or_else(|e| panic!("{mapping:?}/{filtering:?}: {e}"));
        assert_eq!((got.mapping, got.filtering), (mapping, filtering));
        assert_eq!(got.nat_type(), kind, "{mapping:?}/{filtering:?}");
        assert!(got.other_ip_tested);
        assert!(!got.hairpin || mapping == M::None);
        if mapping != M::None {
            assert_eq!(
                got.public.ip(),
                "203.0.113.7".parse::<core::net::IpAddr>().expect("ip")
            );
        }
    }
}

#[test]
fn hairpinning_is_seen_when_the_nat_does_it() {
    let mut model = nat(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    );
    model.hairpin = true;
    let got = classify(model, Some(two_ip_server()), 1).expect("classified");
    assert!(got.hairpin);
}

#[test]
fn one_server_ip_tells_port_behaviour_and_says_what_it_could_not_test() {
    let full_cone = classify(
        nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
        Some(one_ip_server()),
        2,
    )
    .expect("classified");
    assert!(!full_cone.other_ip_tested);
    assert_eq!(full_cone.mapping, Mapping::EndpointIndependent);
    // Without a second IP, "answers from another port arrive" is as far
    // as filtering can be told.
    assert_eq!(full_cone.filtering, Filtering::AddressDependent);
    let symmetric = classify(
        nat(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        ),
        Some(one_ip_server()),
        3,
    )
    .expect("classified");
    assert_eq!(symmetric.nat_type(), NatType::Symmetric);
    let port_restricted = classify(
        nat(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        ),
        Some(one_ip_server()),
        4,
    )
    .expect("classified");
    assert_eq!(port_restricted.nat_type(), NatType::PortRestricted);
}

#[test]
fn a_server_on_a_wildcard_address_classifies_too() {
    let wildcard = ServerAddrs::one_ip("0.0.0.0".parse().expect("ip"), [3478, 3479]);
    let got = classify(
        nat(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        ),
        Some(wildcard),
        6,
    )
    .expect("classified");
    assert_eq!(got.nat_type(), NatType::Symmetric);
    assert!(!got.other_ip_tested);
}

#[test]
fn a_silent_server_is_unreachable_in_bounded_time() {
    let got = classify(
        nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
        None,
        5,
    );
    assert_eq!(
        got,
        Err(ClassifyError::Unreachable(addr("198.51.100.1:3478")))
    );
    assert!(BindingConfig::interactive().give_up_after() < Duration::from_secs(6));
}

#[test]
fn answers_come_from_the_socket_the_client_asked_for() {
    let addrs = two_ip_server();
    let mut r = Rendezvous::new(addrs);
    let from = addr("203.0.113.7:50000");
    let primary = addrs.primary();
    for (change, origin) in [
        (Change::NONE, "198.51.100.1:3478"),
        (Change::PORT, "198.51.100.1:3479"),
        (Change::IP_AND_PORT, "198.51.100.2:3479"),
    ] {
        let tx = crate::nat::TxId::new(42);
        r.handle_datagram(
            Instant::ZERO,
            primary,
            from,
            &stun::binding_request(tx, change),
        );
        let t = r.poll_transmit().expect("an answer");
        assert_eq!((t.local, t.remote), (addr(origin), from));
        assert_eq!(
            stun::decode(&t.payload),
            Ok(Stun::Success {
                tx,
                mapped: from,
                other: Some(addr("198.51.100.2:3479")),
                origin: Some(addr(origin)),
            })
        );
    }
}

#[test]
fn what_is_not_a_binding_request_is_dropped_and_counted() {
    let mut r = Rendezvous::new(one_ip_server());
    let local = addr("198.51.100.1:3478");
    let from = addr("203.0.113.7:50000");
    let tx = crate::nat::TxId::new(1);
    let answer = stun::binding_success(tx, from, None, local);
    r.handle_datagram(Instant::ZERO, local, from, &answer);
    r.handle_datagram(Instant::ZERO, local, from, b"\x40hello, not stun at all");
    assert_eq!(r.poll_transmit(), None);
    // A one-IP server cannot answer from another IP, and says so.
    r.handle_datagram(
        Instant::ZERO,
        local,
        from,
        &stun::binding_request(tx, Change::IP_AND_PORT),
    );
    let refusal = r.poll_transmit().expect("a refusal");
    assert_eq!(stun::decode(&refusal.payload), Ok(Stun::Error { tx }));
    assert_eq!(
        r.stats(),
        RendezvousStats {
            answered: 0,
            refused: 1,
            dropped: 2,
            ..RendezvousStats::default()
        }
    );
}

#[test]
fn response_port_moves_the_answer_to_another_port_of_the_same_ip() {
    // The second request of coturn's `turnutils_stunclient` (RFC 5780
    // test II), as captured: CHANGE-REQUEST ip+port, RESPONSE-PORT 42088.
    let request: [u8; 36] = [
        0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42, 0x45, 0xe5, 0x51, 0xc9, 0x52, 0xc8, 0x2b,
        0x9e, 0x6a, 0x75, 0xe3, 0xe6, 0x00, 0x27, 0x00, 0x04, 0xa4, 0x68, 0x00, 0x00, 0x00, 0x03,
        0x00, 0x04, 0x00, 0x00, 0x00, 0x06,
    ];
    let mut r = Rendezvous::new(two_ip_server());
    let from = addr("203.0.113.7:42087");
    r.handle_datagram(Instant::ZERO, addr("198.51.100.1:3478"), from, &request);
    let t = r.poll_transmit().expect("an answer");
    assert_eq!(t.local, addr("198.51.100.2:3479"));
    assert_eq!(t.remote, addr("203.0.113.7:42088"));
    assert!(matches!(stun::decode(&t.payload), Ok(Stun::Success { mapped, .. }) if mapped == from));
}

/// Relay credentials go to the registered host (from its address) and
/// to whoever shows its token, minted for the configured TURN server with
/// the expiry the shared secret signs; everyone else is refused saying
/// why, and a rendezvous without a relay says that.
#[test]
fn relay_credentials_go_to_the_host_and_its_ticket_holders_only() {
    use crate::rendezvous::wire::{HostId, Refusal, Signalling, Token};
    use crate::turn::TurnCredentials;
    let local = addr("198.51.100.1:3478");
    let (host_addr, client, stranger) = (
        addr("192.0.2.10:4000"),
        addr("192.0.2.20:5000"),
        addr("192.0.2.66:6666"),
    );
    let turn = TurnService {
        server: addr("198.51.100.5:3478"),
        secret: b"shared".to_vec(),
        ttl: Duration::from_secs(600),
        unix_at_origin: 1_800_000_000,
    };
    let (host, token) = (HostId([1; 32]), Token([2; 32]));
    let mut with = Rendezvous::new(one_ip_server());
    with.set_turn(turn.clone());
    let mut without = Rendezvous::new(one_ip_server());
    let now = Instant::ZERO + Duration::from_secs(5);
    let register = Signalling::Register {
        host,
        verifier: token.verifier(),
    }
    .encode();
    for rv in [&mut with, &mut without] {
        rv.handle_datagram(now, local, host_addr, &register);
        while rv.poll_transmit().is_some() {}
    }
    let ask = |rv: &mut Rendezvous, from, host, token| {
        let msg = Signalling::TurnAsk {
            host,
            token,
            session: 7,
        };
        rv.handle_datagram(now, local, from, &msg.encode());
        let answer = rv.poll_transmit().expect("an answer");
        assert_eq!(answer.remote, from);
        Signalling::decode(&answer.payload).expect("signalling")
    };
    let expected = Signalling::TurnGrant {
        session: 7,
        server: turn.server,
        credentials: TurnCredentials::mint(b"shared", 1_800_000_605, "0000000000000007"),
    };
    assert_eq!(ask(&mut with, client, host, Some(token)), expected);
    assert_eq!(ask(&mut with, host_addr, host, None), expected);
    let refused = |why| Signalling::Refused { session: 7, why };
    assert_eq!(
        ask(&mut with, stranger, host, Some(Token([3; 32]))),
        refused(Refusal::BadToken)
    );
    assert_eq!(
        ask(&mut with, stranger, host, None),
        refused(Refusal::BadToken)
    );
    assert_eq!(
        ask(&mut with, client, HostId([9; 32]), Some(token)),
        refused(Refusal::NotRegistered)
    );
    assert_eq!(
        ask(&mut without, client, host, Some(token)),
        refused(Refusal::NoRelay)
    );
    assert_eq!(with.stats().turn_grants, 2);
}

mod signalling {
    use super::*;
    use crate::conn::auth::TicketSecret;
    use crate::nat::TraversalConfig;
    use crate::pair::{FrameKind, KeepaliveFrame, Signal, SignalKind, Transmit};
    use crate::rendezvous::peer::{ClientEvent, ClientRendezvous, HostEvent, HostRendezvous};
    use crate::rendezvous::wire::{Refusal, Signalling};

    const FINGERPRINT: [u8; 32] = [5; 32];

    /// Host, client and rendezvous on one flat network; returns the
    /// client's outcome and the host's events.
    fn run(client_secret: TicketSecret, register: bool) -> (ClientEvent, Vec<HostEvent>) {
        run_lossy(client_secret, register, |_| false)
    }

    /// The pair signal inside a datagram, if it carries one.
    fn pair_signal(payload: &[u8]) -> Option<Signal> {
        match Signalling::decode(payload) {
            Ok(Signalling::PairSignal { signal, .. }) => Signal::decode(&signal).ok(),
            _ => None,
        }
    }

    /// As [`run`], with the ticket's secret, dropping every datagram
    /// `lose` picks. The host forgets a session when it reports it
    /// connected, as the shell does.
    fn run_lossy(
        client_secret: TicketSecret,
        register: bool,
        mut lose: impl FnMut(&Transmit) -> bool,
    ) -> (ClientEvent, Vec<HostEvent>) {
        let secret = TicketSecret([9; 32]);
        let server = one_ip_server();
        let rv_addr = server.primary();
        let mut rv = Rendezvous::new(server);
        let (host_reg, host_punch, client_addr) = (
            addr("192.0.2.10:4000"),
            addr("192.0.2.10:4001"),
            addr("192.0.2.20:5000"),
        );
        let mut now = Instant::ZERO;
        let config = TraversalConfig::default();
        let mut host = register.then(|| {
            HostRendezvous::new(
                now,
                rv_addr,
                host_reg,
                &FINGERPRINT,
                secret.clone(),
                config,
                Rng::from_u64(1),
            )
        });
        let mut client = ClientRendezvous::new(
            now,
            rv_addr,
            client_addr,
            vec![client_addr],
            &FINGERPRINT,
            &client_secret,
            config,
            Rng::from_u64(2),
        );
        let mut host_events = Vec::new();
        for _ in 0..10_000 {
            let mut packets = Vec::new();
            if let Some(h) = host.as_mut() {
                while let Some(t) = h.poll_transmit() {
                    packets.push(t);
                }
                while let Some(e) = h.poll_event() {
                    match e {
                        HostEvent::NeedSocket { session } => {
                            h.add_socket(now, session, host_punch, vec![host_punch]);
                        }
                        HostEvent::Connected { session, .. } => h.forget(now, session),
                        _ => {}
                    }
                    host_events.push(e);
                }
            }
            while let Some(t) = client.poll_transmit() {
                packets.push(t);
            }
            if let Some(e) = client.poll_event() {
                // Let the host finish too (it lingers and answers).
                for _ in 0..3 {
                    now += Duration::from_millis(100);
                    if let Some(h) = host.as_mut() {
                        h.handle_timeout(now);
                        while let Some(e) = h.poll_event() {
                            host_events.push(e);
                        }
                    }
                }
                return (e, host_events);
            }
            while let Some(t) = rv.poll_transmit() {
                packets.push(t);
            }
            packets.retain(|t| !lose(t));
            if packets.is_empty() {
                let next = [
                    client.poll_timeout(),
                    host.as_ref().and_then(HostRendezvous::poll_timeout),
                ]
                .into_iter()
                .flatten()
                .min()
                .expect("something is pending");
                now = now.max(next);
                client.handle_timeout(now);
                if let Some(h) = host.as_mut() {
                    h.handle_timeout(now);
                }
                continue;
            }
            for t in packets {
                if t.remote == rv_addr {
                    rv.handle_datagram(now, rv_addr, t.local, &t.payload);
                } else if t.remote == client_addr {
                    client.handle_datagram(now, t.remote, t.local, &t.payload);
                } else if let Some(h) = host.as_mut() {
                    h.handle_datagram(now, t.remote, t.local, &t.payload);
                }
            }
        }
        panic!("no outcome");
    }

    /// Rendezvous, host and client on one flat network, run in steps.
    struct Flat {
        rv: Rendezvous,
        rv_addr: SocketAddr,
        host: HostRendezvous,
        client: ClientRendezvous,
        client_addr: SocketAddr,
        now: Instant,
        host_events: Vec<HostEvent>,
        client_events: Vec<ClientEvent>,
    }

    impl Flat {
        /// A client punching a spare path to a registered host.
        fn spare() -> Self {
            let secret = TicketSecret([9; 32]);
            let server = one_ip_server();
            let rv_addr = server.primary();
            let (host_reg, client_addr) = (addr("192.0.2.10:4000"), addr("192.0.2.20:5000"));
            let now = Instant::ZERO;
            let config = TraversalConfig::default();
            let host = HostRendezvous::new(
                now,
                rv_addr,
                host_reg,
                &FINGERPRINT,
                secret.clone(),
                config,
                Rng::from_u64(1),
            );
            let client = ClientRendezvous::new(
                now,
                rv_addr,
                client_addr,
                vec![client_addr],
                &FINGERPRINT,
                &secret,
                config,
                Rng::from_u64(2),
            )
            .spare();
            Flat {
                rv: Rendezvous::new(server),
                rv_addr,
                host,
                client,
                client_addr,
                now,
                host_events: Vec::new(),
                client_events: Vec::new(),
            }
        }

        /// Runs until `stop` holds or the clock passes `until`, dropping
        /// what `lose` picks. The host's shell gives each session a fresh
        /// socket and forgets a session it reports connected.
        fn run(
            &mut self,
            until: Instant,
            mut lose: impl FnMut(&Transmit) -> bool,
            stop: impl Fn(&Flat) -> bool,
        ) {
            let mut sockets = 4001;
            loop {
                while let Some(e) = self.host.poll_event() {
                    match e {
                        HostEvent::NeedSocket { session } => {
                            let local = addr(&format!("192.0.2.10:{sockets}"));
                            sockets += 1;
                            self.host.add_socket(self.now, session, local, vec![local]);
                        }
                        HostEvent::Connected { session, .. } => self.host.forget(self.now, session),
                        _ => {}
                    }
                    self.host_events.push(e);
                }
                while let Some(e) = self.client.poll_event() {
                    self.client_events.push(e);
                }
                if stop(self) || self.now > until {
                    return;
                }
                let mut packets = Vec::new();
                while let Some(t) = self.host.poll_transmit() {
                    packets.push(t);
                }
                while let Some(t) = self.client.poll_transmit() {
                    packets.push(t);
                }
                while let Some(t) = self.rv.poll_transmit() {
                    packets.push(t);
                }
                packets.retain(|t| !lose(t));
                if packets.is_empty() {
                    let next = [self.client.poll_timeout(), self.host.poll_timeout()]
                        .into_iter()
                        .flatten()
                        .min()
                        .expect("something is pending");
                    self.now = self.now.max(next);
                    self.client.handle_timeout(self.now);
                    self.host.handle_timeout(self.now);
                    continue;
                }
                for t in packets {
                    if t.remote == self.rv_addr {
                        self.rv
                            .handle_datagram(self.now, self.rv_addr, t.local, &t.payload);
                    } else if t.remote == self.client_addr {
                        self.client
                            .handle_datagram(self.now, t.remote, t.local, &t.payload);
                    } else {
                        self.host
                            .handle_datagram(self.now, t.remote, t.local, &t.payload);
                    }
                }
            }
        }

        fn client_saw(&self, what: impl Fn(&ClientEvent) -> bool) -> bool {
            self.client_events.iter().any(what)
        }
    }

    /// A spare is punched and held in both pools without being taken,
    /// stays alive there for minutes (keepalive, and the rendezvous's
    /// session kept open by repeated Connects), and is taken at once when
    /// asked: the host connects on the same path.
    #[test]
    fn a_spare_path_is_held_alive_and_taken_when_asked() {
        let mut w = Flat::spare();
        w.run(
            Instant::ZERO + Duration::from_secs(10),
            |_| false,
            |w| w.client_saw(|e| matches!(e, ClientEvent::SpareReady { .. })),
        );
        let Some(&ClientEvent::SpareReady { local, remote, .. }) = w.client_events.last() else {
            panic!("no spare: {:?}", w.client_events);
        };
        assert!(
            !w.host_events
                .iter()
                .any(|e| matches!(e, HostEvent::Connected { .. })),
            "a spare is not taken before it is asked for"
        );
        // Five minutes: ten times the rendezvous's session lifetime and
        // the pair's silence limit.
        let ready_at = w.now;
        w.run(ready_at + Duration::from_secs(300), |_| false, |_| false);
        assert_eq!(w.client_events.len(), 1, "{:?}", w.client_events);
        let taken_at = w.now;
        assert!(w.client.take_spare(taken_at), "the spare is there to take");
        w.run(
            taken_at + Duration::from_secs(5),
            |_| false,
            |w| w.client_saw(|e| matches!(e, ClientEvent::Connected { .. })),
        );
        assert!(
            matches!(
                w.client_events.last(),
                Some(ClientEvent::Connected { local: l, remote: r, .. }) if *l == local && *r == remote
            ),
            "{:?}",
            w.client_events
        );
        // Two round trips through the rendezvous, nothing gathered or
        // punched again.
        assert!(
            w.now - taken_at < Duration::from_millis(100),
            "{:?}",
            w.now - taken_at
        );
        let host_took = w.host_events.iter().find_map(|e| match e {
            HostEvent::Connected { remote, .. } => Some(*remote),
            _ => None,
        });
        assert_eq!(host_took, Some(local), "the host took the same path");
        assert!(!w.client.take_spare(w.now), "a spare is taken once");
    }

    /// A held spare whose host goes silent (gone, or its NAT forgot the
    /// path) is reported failed, so the shell does not count on it.
    #[test]
    fn a_spare_whose_host_goes_silent_fails() {
        let mut w = Flat::spare();
        w.run(
            Instant::ZERO + Duration::from_secs(10),
            |_| false,
            |w| w.client_saw(|e| matches!(e, ClientEvent::SpareReady { .. })),
        );
        let host = addr("192.0.2.10:4001");
        let silent_from = w.now;
        w.run(
            silent_from + Duration::from_secs(120),
            |t| t.local == host || t.local.ip() == host.ip(),
            |w| w.client_saw(|e| matches!(e, ClientEvent::Failed(_))),
        );
        assert!(
            w.client_saw(|e| *e == ClientEvent::Failed(crate::nat::FailReason::NotTaken)),
            "{:?}",
            w.client_events
        );
        assert!(
            w.now - silent_from <= Duration::from_secs(45),
            "{:?}",
            w.now - silent_from
        );
        assert!(!w.client.take_spare(w.now), "nothing to take");
    }

    /// No datagram passes between the client's and the host's sockets
    /// directly (as between two symmetric NATs): the client asks the
    /// rendezvous for relay credentials, allocates on the (modelled) TURN
    /// server, punches again from the relayed address, and takes the pair
    /// through the relay; the host sees a path to the relayed address.
    #[test]
    fn with_no_direct_path_the_client_connects_through_the_relay() {
        let (outcome, mut client, turn, host_events) = punch_without_a_direct_path(false);
        let ClientEvent::Connected {
            local,
            relayed: true,
            ..
        } = outcome
        else {
            panic!("{outcome:?} {host_events:?}");
        };
        assert!(turn.relays(local), "the path starts at the relayed address");
        assert!(
            client.take_relay().is_some(),
            "the allocation goes to the shell"
        );
        assert!(
            host_events
                .iter()
                .any(|e| matches!(e, HostEvent::Connected { remote, .. } if *remote == local)),
            "{host_events:?}"
        );
        assert!(turn.relayed > 0);
    }

    /// A relayed mount looking for a direct path punches without a relay:
    /// with none to be found it fails, and never allocates.
    #[test]
    fn a_punch_without_relay_fails_instead_of_relaying() {
        let (outcome, mut client, turn, _) = punch_without_a_direct_path(true);
        assert!(
            matches!(
                outcome,
                ClientEvent::Failed(
                    crate::nat::FailReason::NoPathAnswered | crate::nat::FailReason::BothSymmetric
                )
            ),
            "{outcome:?}"
        );
        assert!(client.take_relay().is_none());
        assert_eq!(turn.relayed, 0, "nothing went through the relay");
    }

    /// A client and host between which no datagram passes directly, a
    /// rendezvous offering a (modelled) TURN server: the client's first
    /// event, the client, the server and the host's events.
    fn punch_without_a_direct_path(
        without_relay: bool,
    ) -> (
        ClientEvent,
        ClientRendezvous,
        crate::turn::server_model::TurnServerModel,
        Vec<HostEvent>,
    ) {
        use crate::rendezvous::TurnService;
        use crate::turn::server_model::TurnServerModel;
        let secret = TicketSecret([9; 32]);
        let server = one_ip_server();
        let rv_addr = server.primary();
        let turn_addr = addr("198.51.100.5:3478");
        let mut rv = Rendezvous::new(server);
        rv.set_turn(TurnService {
            server: turn_addr,
            secret: b"relay".to_vec(),
            ttl: Duration::from_secs(600),
            unix_at_origin: 1_800_000_000,
        });
        let mut turn = TurnServerModel::new(turn_addr, b"relay");
        let (host_reg, host_punch, client_addr) = (
            addr("192.0.2.10:4000"),
            addr("192.0.2.10:4001"),
            addr("192.0.2.20:5000"),
        );
        let mut now = Instant::ZERO;
        let config = TraversalConfig::default();
        let mut host = HostRendezvous::new(
            now,
            rv_addr,
            host_reg,
            &FINGERPRINT,
            secret.clone(),
            config,
            Rng::from_u64(1),
        );
        let mut client = ClientRendezvous::new(
            now,
            rv_addr,
            client_addr,
            vec![client_addr],
            &FINGERPRINT,
            &secret,
            config,
            Rng::from_u64(2),
        );
        if without_relay {
            client = client.without_relay();
        }
        let mut host_events = Vec::new();
        let mut outcome = None;
        let mut host_sockets = vec![host_reg];
        for _ in 0..100_000 {
            let mut packets = Vec::new();
            while let Some(t) = host.poll_transmit() {
                packets.push(t);
            }
            while let Some(e) = host.poll_event() {
                match e {
                    HostEvent::NeedSocket { session } => {
                        let socket = SocketAddr::new(host_punch.ip(), 4001 + session as u16 % 1000);
                        host_sockets.push(socket);
                        host.add_socket(now, session, socket, vec![socket]);
                    }
                    HostEvent::Connected { session, .. } | HostEvent::Failed { session, .. } => {
                        host.forget(now, session);
                    }
                    _ => {}
                }
                host_events.push(e);
            }
            while let Some(t) = client.poll_transmit() {
                packets.push(t);
            }
            if let Some(e) = client.poll_event() {
                outcome = Some(e);
                break;
            }
            while let Some(t) = rv.poll_transmit() {
                packets.push(t);
            }
            while let Some(t) = turn.poll_transmit() {
                packets.push(t);
            }
            // No direct path.
            packets.retain(|t| {
                let between =
                    |a: SocketAddr, b: SocketAddr| a == client_addr && host_sockets.contains(&b);
                !between(t.local, t.remote) && !between(t.remote, t.local)
            });
            if packets.is_empty() {
                let next = [client.poll_timeout(), host.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("something is pending");
                now = now.max(next);
                client.handle_timeout(now);
                host.handle_timeout(now);
                continue;
            }
            for t in packets {
                if t.remote == rv_addr {
                    rv.handle_datagram(now, rv_addr, t.local, &t.payload);
                } else if t.remote == turn_addr {
                    turn.handle_client(t.local, &t.payload);
                } else if turn.relays(t.remote) {
                    turn.handle_peer(t.local, t.remote, &t.payload);
                } else if t.remote == client_addr {
                    client.handle_datagram(now, t.remote, t.local, &t.payload);
                } else {
                    host.handle_datagram(now, t.remote, t.local, &t.payload);
                }
            }
        }
        let outcome = outcome.expect("the client ended");
        (outcome, client, turn, host_events)
    }

    /// The host's TakeOk is lost after the host has handed the pair to its
    /// connection and forgotten the session: the client's repeated Take
    /// is still verified and answered, and the client connects.
    #[test]
    fn a_take_repeated_after_the_host_forgot_the_session_is_answered() {
        let mut lost_take_oks = 0;
        let (outcome, host_events) = run_lossy(TicketSecret([9; 32]), true, |t| {
            let take_ok = pair_signal(&t.payload).is_some_and(|s| s.kind == SignalKind::TakeOk);
            if take_ok && lost_take_oks < 2 && t.remote != addr("198.51.100.1:3478") {
                lost_take_oks += 1;
                return true;
            }
            false
        });
        assert_eq!(lost_take_oks, 2, "the first two TakeOks were lost");
        assert!(
            matches!(outcome, ClientEvent::Connected { .. }),
            "{outcome:?}"
        );
        assert!(
            host_events
                .iter()
                .any(|e| matches!(e, HostEvent::Connected { .. })),
            "{host_events:?}"
        );
    }

    /// A client takes its path only once the host has answered a probe on
    /// it: with every keepalive answer lost, it never sends a Lock and
    /// gives up saying why.
    #[test]
    fn a_path_the_host_never_answers_on_is_never_taken() {
        let mut locks = 0;
        let (outcome, host_events) = run_lossy(TicketSecret([9; 32]), true, |t| {
            if pair_signal(&t.payload).is_some_and(|s| s.kind == SignalKind::Lock) {
                locks += 1;
            }
            KeepaliveFrame::decode(&t.payload).is_ok_and(|f| f.kind == FrameKind::Pong)
        });
        assert_eq!(
            outcome,
            ClientEvent::Failed(crate::nat::FailReason::NotTaken)
        );
        assert_eq!(locks, 0, "no take without an answer on the path");
        assert!(
            !host_events
                .iter()
                .any(|e| matches!(e, HostEvent::Connected { .. })),
            "{host_events:?}"
        );
    }

    /// Every Lock of the first take is lost, so it times out; the take
    /// after it has a newer handover id, so nothing late from the first
    /// can be mistaken for an answer to the second.
    #[test]
    fn a_take_after_a_failed_one_has_a_newer_handover_id() {
        let mut seqs = Vec::new();
        let (outcome, _) = run_lossy(TicketSecret([9; 32]), true, |t| {
            let Some(s) = pair_signal(&t.payload).filter(|s| s.kind == SignalKind::Lock) else {
                return false;
            };
            if t.remote != addr("198.51.100.1:3478") {
                return false;
            }
            seqs.push(s.handover.seq);
            s.handover.seq == 1
        });
        assert!(
            matches!(outcome, ClientEvent::Connected { .. }),
            "{outcome:?}"
        );
        assert!(seqs.contains(&1) && seqs.contains(&2), "{seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    }

    #[test]
    fn a_client_with_the_ticket_is_put_through_and_both_punch() {
        let (outcome, host_events) = run(TicketSecret([9; 32]), true);
        // The host's first check may arrive before its answer does, so
        // the client may learn the address as peer-reflexive.
        assert!(
            matches!(outcome, ClientEvent::Connected { remote, .. } if remote == addr("192.0.2.10:4001")),
            "{outcome:?}"
        );
        assert!(host_events.contains(&HostEvent::Registered));
        assert!(host_events.iter().any(|e| matches!(e, HostEvent::Connected { remote, .. } if *remote == addr("192.0.2.20:5000"))), "{host_events:?}");
    }

    #[test]
    fn a_wrong_ticket_is_refused_and_the_host_never_hears_of_it() {
        let (outcome, host_events) = run(TicketSecret([8; 32]), true);
        assert_eq!(outcome, ClientEvent::Refused(Refusal::BadToken));
        assert_eq!(host_events, [HostEvent::Registered]);
    }

    #[test]
    fn an_unregistered_host_is_named_as_such() {
        let (outcome, _) = run(TicketSecret([9; 32]), false);
        assert_eq!(outcome, ClientEvent::Refused(Refusal::NotRegistered));
    }

    #[test]
    fn a_silent_rendezvous_is_reported_once_and_its_return_too() {
        let rv = addr("198.51.100.1:3478");
        let local = addr("192.0.2.10:4000");
        let mut host = HostRendezvous::new(
            Instant::ZERO,
            rv,
            local,
            &FINGERPRINT,
            TicketSecret([9; 32]),
            TraversalConfig::default(),
            Rng::from_u64(1),
        );
        let mut events = Vec::new();
        for s in 0..=12 {
            host.handle_timeout(Instant::ZERO + Duration::from_secs(s));
            while host.poll_transmit().is_some() {}
            events.extend(core::iter::from_fn(|| host.poll_event()));
        }
        assert_eq!(events, [HostEvent::RendezvousSilent], "reported once");
        let registered = Signalling::Registered { ttl_secs: 60 }.encode();
        host.handle_datagram(
            Instant::ZERO + Duration::from_secs(13),
            local,
            rv,
            &registered,
        );
        assert_eq!(host.poll_event(), Some(HostEvent::Registered));
    }

    #[test]
    fn an_answer_from_anyone_but_the_registered_host_is_dropped() {
        let mut rv = Rendezvous::new(one_ip_server());
        let local = addr("198.51.100.1:3478");
        let host = crate::rendezvous::wire::HostId([1; 32]);
        let token = crate::rendezvous::wire::Token([2; 32]);
        let reg = Signalling::Register {
            host,
            verifier: token.verifier(),
        }
        .encode();
        rv.handle_datagram(Instant::ZERO, local, addr("192.0.2.10:4000"), &reg);
        let connect = Signalling::Connect {
            host,
            token,
            session: 7,
            offer: Default::default(),
        }
        .encode();
        rv.handle_datagram(Instant::ZERO, local, addr("192.0.2.20:5000"), &connect);
        while rv.poll_transmit().is_some() {}
        let forged = Signalling::Answer {
            host,
            session: 7,
            offer: Default::default(),
        }
        .encode();
        rv.handle_datagram(Instant::ZERO, local, addr("192.0.2.66:6666"), &forged);
        assert_eq!(rv.poll_transmit(), None);
        rv.handle_datagram(Instant::ZERO, local, addr("192.0.2.10:4000"), &forged);
        let answered = rv.poll_transmit().expect("forwarded");
        assert_eq!(answered.remote, addr("192.0.2.20:5000"));
    }

    /// Pair signals go between a session's client and its registered host
    /// only, in both directions; a third party's is dropped.
    #[test]
    fn pair_signals_pass_only_between_the_session_ends() {
        let mut rv = Rendezvous::new(one_ip_server());
        let local = addr("198.51.100.1:3478");
        let (host_addr, client_addr, stranger) = (
            addr("192.0.2.10:4000"),
            addr("192.0.2.20:5000"),
            addr("192.0.2.66:6666"),
        );
        let host = crate::rendezvous::wire::HostId([1; 32]);
        let token = crate::rendezvous::wire::Token([2; 32]);
        let reg = Signalling::Register {
            host,
            verifier: token.verifier(),
        };
        rv.handle_datagram(Instant::ZERO, local, host_addr, &reg.encode());
        let connect = Signalling::Connect {
            host,
            token,
            session: 7,
            offer: Default::default(),
        };
        rv.handle_datagram(Instant::ZERO, local, client_addr, &connect.encode());
        while rv.poll_transmit().is_some() {}
        let signal = Signalling::PairSignal {
            host,
            session: 7,
            signal: vec![1, 2, 3],
            mac: [9; 16],
        }
        .encode();
        for (from, to) in [
            (client_addr, Some(host_addr)),
            (host_addr, Some(client_addr)),
            (stranger, None),
        ] {
            rv.handle_datagram(Instant::ZERO, local, from, &signal);
            assert_eq!(rv.poll_transmit().map(|t| t.remote), to, "from {from}");
        }
        assert_eq!(rv.stats().pair_signals, 2);
    }

    /// A pair signal under a wrong MAC (forged by the rendezvous, say)
    /// never reaches the host's pool.
    #[test]
    fn a_host_drops_a_pair_signal_it_cannot_verify() {
        let rv = addr("198.51.100.1:3478");
        let local = addr("192.0.2.10:4000");
        let secret = TicketSecret([9; 32]);
        let mut host = HostRendezvous::new(
            Instant::ZERO,
            rv,
            local,
            &FINGERPRINT,
            secret.clone(),
            TraversalConfig::default(),
            Rng::from_u64(1),
        );
        let id = crate::rendezvous::wire::HostId::of(&FINGERPRINT);
        let incoming = Signalling::Incoming {
            session: 7,
            offer: Default::default(),
        };
        host.handle_datagram(Instant::ZERO, local, rv, &incoming.encode());
        while host.poll_event().is_some() {}
        while host.poll_transmit().is_some() {}
        let (nonce, key) = crate::rendezvous::wire::session_pair(&secret, 7);
        let lock = crate::pair::Signal {
            pair: nonce,
            handover: crate::pair::HandoverId {
                initiator: crate::rendezvous::wire::client_peer(7),
                seq: 1,
            },
            kind: crate::pair::SignalKind::Lock,
        }
        .encode()
        .to_vec();
        let signed = |mac| Signalling::PairSignal {
            host: id,
            session: 7,
            signal: lock.clone(),
            mac,
        };
        host.handle_datagram(Instant::ZERO, local, rv, &signed([0; 16]).encode());
        assert_eq!(host.poll_transmit(), None, "a forged Lock is not answered");
        let mac = crate::rendezvous::wire::pair_signal_mac(&key, 7, false, &lock);
        host.handle_datagram(Instant::ZERO, local, rv, &signed(mac).encode());
        let answer = host.poll_transmit().expect("the genuine Lock is answered");
        assert_eq!(answer.remote, rv, "through the rendezvous");
    }

    /// Three clients behind symmetric NATs at once: the host, behind an
    /// endpoint-independent NAT, scans for the first two by birthday and
    /// not for the third, so one ticket holder cannot make it send more
    /// than two budgets' worth of datagrams to third parties.
    #[test]
    fn birthday_punching_runs_for_at_most_two_sessions_at_once() {
        use crate::nat::{Candidate, CandidateKind, Offer, stun};
        use crate::rendezvous::peer::MAX_BIRTHDAY_SESSIONS;
        let rv = addr("198.51.100.1:3478");
        let rv_ports = [rv, addr("198.51.100.1:3479")];
        let local = addr("10.0.0.2:4000");
        let mut host = HostRendezvous::new(
            Instant::ZERO,
            rv,
            local,
            &FINGERPRINT,
            TicketSecret([9; 32]),
            TraversalConfig::default(),
            Rng::from_u64(3),
        );
        let mut now = Instant::ZERO;
        for session in 1..=3u64 {
            let offer = Offer {
                candidates: vec![Candidate::new(
                    CandidateKind::ServerReflexive,
                    SocketAddr::new([198, 51, 100, 9].into(), 3000),
                    0,
                )],
                mapping_varies: true,
            };
            let incoming = Signalling::Incoming { session, offer }.encode();
            host.handle_datagram(now, local, rv, &incoming);
        }
        // Each client's probes, by the host socket that sends them.
        let mut scanning = std::collections::BTreeSet::new();
        let end = now + Duration::from_secs(4);
        while now < end {
            while let Some(e) = host.poll_event() {
                if let HostEvent::NeedSocket { session } = e {
                    let socket = SocketAddr::new(local.ip(), 5000 + session as u16);
                    host.add_socket(now, session, socket, vec![socket]);
                }
            }
            while let Some(t) = host.poll_transmit() {
                let port = rv_ports.iter().position(|a| *a == t.remote);
                match (port, stun::decode(&t.payload)) {
                    // The rendezvous: the host's NAT maps every socket to
                    // one public port (endpoint-independent).
                    (Some(i), Ok(stun::Stun::Request { tx, .. })) => {
                        let public = SocketAddr::new([203, 0, 113, 5].into(), t.local.port());
                        let answer =
                            stun::binding_success(tx, public, Some(rv_ports[1 - i]), t.remote);
                        host.handle_datagram(now, t.local, t.remote, &answer);
                    }
                    (None, Ok(stun::Stun::Request { .. })) if t.remote.port() != 3000 => {
                        scanning.insert(t.local);
                    }
                    _ => {}
                }
            }
            now = host.poll_timeout().map_or(end, |n| now.max(n));
            host.handle_timeout(now);
        }
        assert_eq!(scanning.len(), MAX_BIRTHDAY_SESSIONS, "{scanning:?}");
    }

    #[test]
    fn registrations_are_bounded_and_lapse() {
        let config = crate::rendezvous::RendezvousConfig {
            max_hosts: 2,
            ..Default::default()
        };
        let mut rv = Rendezvous::with_config(one_ip_server(), config);
        let local = addr("198.51.100.1:3478");
        for i in 0..3u8 {
            let reg = Signalling::Register {
                host: crate::rendezvous::wire::HostId([i; 32]),
                verifier: [0; 32],
            }
            .encode();
            rv.handle_datagram(Instant::ZERO, local, addr("192.0.2.10:4000"), &reg);
        }
        assert_eq!(rv.hosts(), 2);
        let later = Instant::ZERO + Duration::from_secs(61);
        let reg = Signalling::Register {
            host: crate::rendezvous::wire::HostId([9; 32]),
            verifier: [0; 32],
        }
        .encode();
        rv.handle_datagram(later, local, addr("192.0.2.10:4000"), &reg);
        assert_eq!(rv.hosts(), 1, "the lapsed two were swept");
    }
}
