//! The core's TURN client against coturn (`turnserver`, Debian's package)
//! on loopback, configured as a deployment would be: `use-auth-secret`
//! with a static secret, credentials minted the REST-API way. The client
//! machine is driven over blocking std sockets (it is sans-IO; the shells'
//! relayed sockets build on the same machine).
//!
//! Checked: an allocation with credentials minted by the rendezvous
//! machine configured with coturn's secret (through the 401 →
//! realm/nonce → signed retry dance), a channel to a peer socket, data
//! both ways through the relay; expired credentials and credentials under
//! another secret are refused with the error that says so.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::net::UdpSocket;
use std::time::Duration;
use wormhole_core::nat::binding::BindingConfig;
use wormhole_core::turn::{TurnClient, TurnCredentials, TurnError, TurnEvent};
use wormhole_core::{Instant, Rng};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
use wormhole_tests::coturn::{Coturn, SECRET, unix_now};

fn coturn() -> Coturn {
    Coturn::start()
}

/// Drives `client` over `socket` until `done` says so (given each event)
/// or 20 s pass; returns what peers sent through the relay meanwhile.
fn drive(
    client: &mut TurnClient,
    socket: &UdpSocket,
    start: std::time::Instant,
    mut done: impl FnMut(&TurnEvent) -> bool,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let now = || Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(0));
    let mut relayed = Vec::new();
    let mut buf = [0u8; 2048];
    let limit = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < limit {
        while let Some(t) = client.poll_transmit() {
            socket.send_to(&t.payload, t.remote).expect("send");
        }
        while let Some(e) = client.poll_event() {
            if done(&e) {
                return relayed;
            }
        }
        let wait = client
            .poll_timeout()
            .map_or(Duration::from_millis(50), |t| {
                Duration::from_nanos(t.as_nanos().saturating_sub(now().as_nanos()))
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        socket.set_read_timeout(Some(wait)).expect("timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(r) = client.handle_datagram(now(), from, &buf[..n]) {
                    relayed.push((r.peer, r.data.to_vec()));
                }
            }
            Err(_) => client.handle_timeout(now()),
        }
    }
    panic!("no outcome within 20 s");
}

fn client_for(server: SocketAddr, credentials: TurnCredentials) -> (TurnClient, UdpSocket) {
    let socket = UdpSocket::bind((LOOPBACK, 0)).expect("bind");
    let local = socket.local_addr().expect("local");
    // Quick retransmissions: coturn may still be starting.
    let client = TurnClient::new(
        Instant::ZERO,
        BindingConfig::interactive(),
        local,
        server,
        credentials,
        Rng::from_u64(7),
    );
    (client, socket)
}

/// What a mount is given: the rendezvous machine, configured with the
/// secret coturn has, answers a ticket holder's `TurnAsk`.
fn credentials_from_a_rendezvous(turn: SocketAddr) -> (SocketAddr, TurnCredentials) {
    use wormhole_core::rendezvous::wire::{HostId, Signalling, Token};
    use wormhole_core::rendezvous::{Rendezvous, ServerAddrs, TurnService};
    let addrs = ServerAddrs::one_ip(LOOPBACK, [3478, 3479]);
    let mut rv = Rendezvous::new(addrs);
    rv.set_turn(TurnService {
        server: turn,
        secret: SECRET.as_bytes().to_vec(),
        ttl: Duration::from_secs(600),
        unix_at_origin: unix_now(),
    });
    let (host, token) = (HostId([1; 32]), Token([2; 32]));
    let (host_addr, mount) = (
        SocketAddr::new(LOOPBACK, 4000),
        SocketAddr::new(LOOPBACK, 5000),
    );
    let register = Signalling::Register {
        host,
        verifier: token.verifier(),
    };
    rv.handle_datagram(
        Instant::ZERO,
        addrs.primary(),
        host_addr,
        &register.encode(),
    );
    while rv.poll_transmit().is_some() {}
    let ask = Signalling::TurnAsk {
        host,
        token: Some(token),
        session: 42,
    };
    rv.handle_datagram(Instant::ZERO, addrs.primary(), mount, &ask.encode());
    let answer = rv.poll_transmit().expect("the rendezvous answers");
    match Signalling::decode(&answer.payload) {
        Ok(Signalling::TurnGrant {
            server,
            credentials,
            ..
        }) => (server, credentials),
        other => panic!("no grant: {other:?}"),
    }
}

#[test]
fn coturn_allocates_binds_and_relays_both_ways_with_minted_credentials() {
    let coturn = coturn();
    let start = std::time::Instant::now();
    let (server, credentials) = credentials_from_a_rendezvous(coturn.addr);
    assert_eq!(server, coturn.addr);
    let (mut client, socket) = client_for(server, credentials);
    let mut relayed_addr = None;
    drive(&mut client, &socket, start, |e| {
        if let TurnEvent::Allocated { relayed, .. } = e {
            relayed_addr = Some(*relayed);
        }
        assert!(!matches!(e, TurnEvent::Failed(_)), "{e:?}");
        relayed_addr.is_some()
    });
    let relayed_addr = relayed_addr.expect("allocated");
    assert_eq!(relayed_addr.ip(), LOOPBACK, "relayed on --relay-ip");

    let peer = UdpSocket::bind((LOOPBACK, 0)).expect("bind the peer");
    let peer_addr = peer.local_addr().expect("peer address");
    let now = Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(0));
    assert!(client.bind(now, peer_addr));
    drive(&mut client, &socket, start, |e| {
        assert!(!matches!(e, TurnEvent::Failed(_)), "{e:?}");
        *e == TurnEvent::Bound { peer: peer_addr }
    });

    // Peer → relay → us, as ChannelData.
    peer.send_to(b"through the relay", relayed_addr)
        .expect("peer sends");
    let mut got = Vec::new();
    let limit = std::time::Instant::now() + Duration::from_secs(10);
    while got.is_empty() && std::time::Instant::now() < limit {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let now = Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(0));
            got.extend(client.handle_datagram(now, from, &buf[..n]));
        }
    }
    assert_eq!(got.len(), 1, "one datagram relayed to us");
    assert_eq!(got[0].peer, peer_addr);
    assert_eq!(&got[0].data[..], b"through the relay");

    // Us → relay → peer, from the relayed address.
    let t = client
        .send(peer_addr, b"and back")
        .expect("a channel to the peer");
    socket.send_to(&t.payload, t.remote).expect("send");
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!(&buf[..n], b"and back");
    assert_eq!(from, relayed_addr, "from the relayed address");
    assert!(client.stats().relayed_in >= 1 && client.stats().relayed_out >= 1);

    // Release: coturn frees the allocation.
    let now = Instant::from_nanos(u64::try_from(start.elapsed().as_nanos()).unwrap_or(0));
    client.close(now);
    assert!(client.relayed().is_none());
    while let Some(t) = client.poll_transmit() {
        socket.send_to(&t.payload, t.remote).expect("send");
    }
}

#[test]
fn coturn_refuses_expired_or_foreign_credentials_saying_so() {
    let coturn = coturn();
    for (what, credentials) in [
        (
            "expired",
            TurnCredentials::mint(SECRET.as_bytes(), unix_now() - 60, "mount"),
        ),
        (
            "another secret",
            TurnCredentials::mint(b"not the secret", unix_now() + 600, "mount"),
        ),
    ] {
        let start = std::time::Instant::now();
        let (mut client, socket) = client_for(coturn.addr, credentials);
        let mut outcome = None;
        drive(&mut client, &socket, start, |e| {
            outcome = Some(e.clone());
            true
        });
        assert_eq!(
            outcome,
            Some(TurnEvent::Failed(TurnError::Unauthorized)),
            "{what}"
        );
        let message = TurnError::Unauthorized.to_string();
        assert!(message.contains("expired"), "{message}");
    }
}
