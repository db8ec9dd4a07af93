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
                    r.handle_datagram(local, src, &t.payload);
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
        r.handle_datagram(primary, from, &stun::binding_request(tx, change));
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
    r.handle_datagram(local, from, &answer);
    r.handle_datagram(local, from, b"\x40hello, not stun at all");
    assert_eq!(r.poll_transmit(), None);
    // A one-IP server cannot answer from another IP, and says so.
    r.handle_datagram(local, from, &stun::binding_request(tx, Change::IP_AND_PORT));
    let refusal = r.poll_transmit().expect("a refusal");
    assert_eq!(stun::decode(&refusal.payload), Ok(Stun::Error { tx }));
    assert_eq!(
        r.stats(),
        RendezvousStats {
            answered: 0,
            refused: 1,
            dropped: 2
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
    r.handle_datagram(addr("198.51.100.1:3478"), from, &request);
    let t = r.poll_transmit().expect("an answer");
    assert_eq!(t.local, addr("198.51.100.2:3479"));
    assert_eq!(t.remote, addr("203.0.113.7:42088"));
    assert!(matches!(stun::decode(&t.payload), Ok(Stun::Success { mapped, .. }) if mapped == from));
}
