//! End to end: a NAT pair's whole life over real sockets on loopback, with
//! one test body run on both shells (tokio and smol).
//!
//! Two agents share a pair: keepalive frames flow and are accepted on both
//! sides; forged datagrams are counted as drops and change nothing; a
//! handover takes the pair; a QUIC connection between the two pair sockets
//! (the very sockets keepalive used) carries data both ways; release brings
//! both sides back to Idle and keepalive resumes on the same sockets.
//!
//! Every wait has a limit and fails with what it was waiting for.

use core::net::{Ipv4Addr, SocketAddr};
use std::io::IoSliceMut;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use wormhole_core::pair::{
    DropReason, EndpointPair, FailReason, FrameKind, KeepaliveFrame, PairConfig, PairKey,
    PairNonce, PairState, PingRole,
};
use wormhole_io::cli::demo::{hash_stream, quick_pair_config, send_pattern};
use wormhole_io::net::identity;
use wormhole_io::pair;
use wormhole_io::{
    AgentConfig, AgentError, AgentEvent, AgentStats, Identity, PairAgent, PairLease, PairStatus,
    Shell, timeout, wait_for,
};

/// The limit on any one step. Steps take milliseconds; this only turns a
/// hang into a failure that names the step.
const STEP: Duration = Duration::from_secs(20);
/// How often counters are checked while waiting for them to grow.
const POLL: Duration = Duration::from_millis(10);
/// Fast keepalive, so the test runs in seconds.
const PING: Duration = Duration::from_millis(50);
/// Frames each side must accept to count as "keepalive runs".
const FRAMES: u64 = 3;
/// Bytes sent each way over QUIC.
const PAYLOAD: u64 = 1 << 20;

wormhole_tests::both_shells! {
    pair_lifecycle: pair_lifecycle;

    unanswered_take_fails_cleanly: unanswered_take;

    quic_pins_certificates_both_ways: pinning;
}

fn pair_lifecycle<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    shell.block_on(body(shell));
}

fn unanswered_take<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    shell.block_on(unanswered_take_body(shell));
}

fn pinning<S: Shell>(shell: &S) {
    shell.block_on(pinning_body(shell));
}

/// Awaits `fut` for at most [`STEP`], failing the test with `what`.
async fn step<T>(
    rt: &dyn quinn::Runtime,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    timeout(rt, STEP, what, fut)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn stats(agent: &PairAgent) -> AgentStats {
    agent.stats().await.expect("agent is running")
}

async fn status(agent: &PairAgent, pair: PairNonce) -> PairStatus {
    stats(agent)
        .await
        .pair(pair)
        .cloned()
        .unwrap_or_else(|| panic!("pair {pair:?} is gone"))
}

/// Waits until `agent` has accepted at least `at_least` frames on `pair`.
async fn frames_reach(rt: &dyn quinn::Runtime, agent: &PairAgent, pair: PairNonce, at_least: u64) {
    let what = format!("{:?} to accept {at_least} keepalive frames", agent.id());
    wait_for(rt, STEP, POLL, what, || async {
        agent
            .stats()
            .await
            .ok()?
            .pair(pair)
            .filter(|p| p.stats.frames_accepted >= at_least)
            .map(|_| ())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until `agent` has dropped at least `at_least` inputs for `reason`.
async fn drops_reach(
    rt: &dyn quinn::Runtime,
    agent: &PairAgent,
    reason: DropReason,
    at_least: u64,
) {
    let what = format!("{:?} to count {at_least} {reason:?} drops", agent.id());
    wait_for(rt, STEP, POLL, what, || async {
        (agent.stats().await.ok()?.drops.get(reason) >= at_least).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Whether `socket` receives anything within `within`.
async fn receives_anything(
    rt: &dyn quinn::Runtime,
    socket: &Arc<dyn quinn::AsyncUdpSocket>,
    within: Duration,
) -> bool {
    let mut buf = [0u8; 2048];
    let recv = core::future::poll_fn(|cx| {
        let mut meta = [quinn::udp::RecvMeta::default()];
        let mut bufs = [IoSliceMut::new(&mut buf)];
        match socket.poll_recv(cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(_)) => Poll::Ready(()),
            // A receive error still means nothing was delivered; keep
            // listening.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    });
    timeout(rt, within, "a datagram", recv).await.is_ok()
}

async fn send_from(socket: &Arc<dyn quinn::AsyncUdpSocket>, to: SocketAddr, payload: &[u8]) {
    let mut writable = socket.clone().create_io_poller();
    loop {
        let sent = socket.try_send(&quinn::udp::Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        });
        match sent {
            Ok(()) => return,
            // A fresh socket's writability is not known to the reactor yet.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                core::future::poll_fn(|cx| writable.as_mut().poll_writable(cx))
                    .await
                    .expect("wait until writable");
            }
            Err(e) => panic!("send a forged datagram: {e}"),
        }
    }
}

async fn body<S: Shell>(shell: &S) {
    let runtime = shell.runtime();
    let rt = &*runtime;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));

    // Two agents, each with its own certificate, joined by TCP signalling.
    let cfg = quick_pair_config(PING);
    let id_a = Identity::generate().expect("identity");
    let id_b = Identity::generate().expect("identity");
    let (fp_a, fp_b) = (id_a.fingerprint(), id_b.fingerprint());
    let a = PairAgent::spawn(
        shell.runtime(),
        AgentConfig::new(id_a, cfg.clone()).expect("config"),
    );
    let b = PairAgent::spawn(
        shell.runtime(),
        AgentConfig::new(id_b, cfg).expect("config"),
    );
    let (sa, sb) = step(
        rt,
        "a TCP connection on loopback",
        shell.tcp_loopback_pair(loopback),
    )
    .await
    .expect("signalling connection");
    a.add_peer(b.id(), fp_b, sa).await.expect("add B to A");
    b.add_peer(a.id(), fp_a, sb).await.expect("add A to B");

    // One pair: A pings, B answers.
    let ua = shell.bind_udp(loopback).expect("bind A");
    let ub = shell.bind_udp(loopback).expect("bind B");
    let (a_addr, b_addr) = (
        ua.local_addr().expect("addr"),
        ub.local_addr().expect("addr"),
    );
    let nonce = PairNonce(0x5eed_0001);
    let key = PairKey([0x42; 32]);
    let pair = |local, remote, peer, role| EndpointPair {
        nonce,
        local,
        remote,
        peer,
        key: key.clone(),
        role,
    };
    a.add_pair(pair(a_addr, b_addr, b.id(), PingRole::Pinger), ua)
        .await
        .expect("add pair to A");
    b.add_pair(pair(b_addr, a_addr, a.id(), PingRole::Ponger), ub)
        .await
        .expect("add pair to B");

    // Keepalive: authenticated frames accepted on both sides.
    frames_reach(rt, &a, nonce, FRAMES).await;
    frames_reach(rt, &b, nonce, FRAMES).await;
    for agent in [&a, &b] {
        let s = status(agent, nonce).await;
        assert_eq!(s.state, PairState::Idle);
        assert!(!s.with_quic);
    }

    // Forgeries. From a socket that is not the pair's remote, even a frame
    // with a valid MAC is dropped, and nothing answers it. Its ping number
    // is far ahead: had it been accepted, every real ping after it would
    // be dropped as a replay and keepalive would stop.
    let evil = rt
        .wrap_udp_socket(shell.bind_udp(loopback).expect("bind a foreign socket"))
        .expect("wrap");
    let evil_addr = evil.local_addr().expect("addr");
    let valid_but_foreign = KeepaliveFrame::sealed(&key, FrameKind::Ping, nonce, 1 << 40).encode();
    send_from(&evil, b_addr, &valid_but_foreign).await;
    drops_reach(rt, &b, DropReason::WrongAddress, 1).await;
    assert!(
        !receives_anything(rt, &evil, Duration::from_millis(300)).await,
        "a forged ping was answered"
    );
    // A bad MAC needs the right source address to be checked at all: a
    // second pair on B whose remote end is the test's socket.
    let probe = PairNonce(0x5eed_0002);
    let ub2 = shell.bind_udp(loopback).expect("bind B's second socket");
    let b2_addr = ub2.local_addr().expect("addr");
    b.add_pair(
        EndpointPair {
            nonce: probe,
            local: b2_addr,
            remote: evil_addr,
            peer: a.id(),
            key: PairKey([0x43; 32]),
            role: PingRole::Ponger,
        },
        ub2,
    )
    .await
    .expect("add probe pair to B");
    let wrong_key =
        KeepaliveFrame::sealed(&PairKey([0x44; 32]), FrameKind::Ping, probe, 1).encode();
    send_from(&evil, b2_addr, &wrong_key).await;
    drops_reach(rt, &b, DropReason::BadMac, 1).await;
    assert_eq!(
        status(&b, probe).await.stats.frames_accepted,
        0,
        "forged frame accepted"
    );
    // Keepalive on the real pair goes on, with no replays.
    let base_b = status(&b, nonce).await.stats.frames_accepted;
    frames_reach(rt, &b, nonce, base_b + 2).await;
    assert_eq!(stats(&b).await.drops.get(DropReason::Replayed), 0);

    // Handover: A takes, both sides report Taken, each hands the pair's own
    // socket to QUIC.
    let lease_a: PairLease = step(rt, "A's take", a.take(b.id()))
        .await
        .expect("take the pair");
    let lease_b = step(
        rt,
        "B's Taken event",
        b.wait_event(|e| match e {
            AgentEvent::Taken(lease) if lease.pair == nonce => Some(lease.clone()),
            _ => None,
        }),
    )
    .await
    .expect("B's events");
    assert!(lease_a.initiator && !lease_b.initiator);
    assert_eq!(lease_a.handover, lease_b.handover);
    assert_eq!(lease_a.endpoint.local_addr().expect("addr"), a_addr);
    assert_eq!(lease_b.endpoint.local_addr().expect("addr"), b_addr);
    assert_eq!((lease_a.remote, lease_b.remote), (b_addr, a_addr));
    let pings_at_take = status(&a, nonce).await.stats.pings_sent;
    for agent in [&a, &b] {
        let s = status(agent, nonce).await;
        assert_eq!(s.state, PairState::InUse);
        assert!(s.with_quic);
    }

    // QUIC between the two pair sockets, certificates pinned both ways,
    // data both ways.
    let (conn_a, conn_b) = step(
        rt,
        "the QUIC handshake",
        futures_lite::future::zip(lease_a.connect(), lease_b.accept()),
    )
    .await;
    let (conn_a, conn_b) = (conn_a.expect("connect"), conn_b.expect("accept"));
    assert_eq!(conn_a.remote_address(), b_addr);
    assert_eq!(conn_b.remote_address(), a_addr);
    let side_a = async {
        let (mut send, mut recv) = conn_a.open_bi().await.expect("open stream");
        futures_lite::future::zip(send_pattern(&mut send, 1, PAYLOAD), hash_stream(&mut recv)).await
    };
    let side_b = async {
        let (mut send, mut recv) = conn_b.accept_bi().await.expect("accept stream");
        futures_lite::future::zip(send_pattern(&mut send, 2, PAYLOAD), hash_stream(&mut recv)).await
    };
    let ((a_sent, a_got), (b_sent, b_got)) = step(
        rt,
        "data both ways over QUIC",
        futures_lite::future::zip(side_a, side_b),
    )
    .await;
    let (a_sent, (a_got, a_len)) = (a_sent.expect("A sends"), a_got.expect("A receives"));
    let (b_sent, (b_got, b_len)) = (b_sent.expect("B sends"), b_got.expect("B receives"));
    assert_eq!((a_len, b_len), (PAYLOAD, PAYLOAD));
    assert_eq!(b_got, a_sent, "A->B data changed in transit");
    assert_eq!(a_got, b_sent, "B->A data changed in transit");
    assert_eq!(
        status(&a, nonce).await.stats.pings_sent,
        pings_at_take,
        "keepalive ran while QUIC held the pair"
    );
    conn_a.close(0u32.into(), b"done");
    drop((conn_a, conn_b));

    // Release. A still holds a clone of its endpoint on purpose: the agent
    // must take the socket back regardless.
    let base_a = status(&a, nonce).await.stats.frames_accepted;
    let base_b = status(&b, nonce).await.stats.frames_accepted;
    step(rt, "A's release", a.release(nonce))
        .await
        .expect("release");
    let by_peer = step(
        rt,
        "B's Released event",
        b.wait_event(|e| match e {
            AgentEvent::Released { pair, by_peer } if *pair == nonce => Some(*by_peer),
            _ => None,
        }),
    )
    .await
    .expect("B's events");
    assert!(by_peer, "B should see the release as the peer's");
    for (agent, addr) in [(&a, a_addr), (&b, b_addr)] {
        let s = status(agent, nonce).await;
        assert_eq!(s.state, PairState::Idle);
        assert!(!s.with_quic);
        assert_eq!(s.bound, Some(addr), "the pair's socket changed");
    }
    assert_ne!(
        lease_a.endpoint.local_addr().expect("addr"),
        a_addr,
        "a kept endpoint clone still sits on the pair's socket"
    );

    // Keepalive resumes on the same sockets: more frames accepted after the
    // release, on both sides.
    frames_reach(rt, &a, nonce, base_a + FRAMES).await;
    frames_reach(rt, &b, nonce, base_b + FRAMES).await;

    // The pair can be taken again, and this time the side that was asked
    // (B) ends the use: A sees the release as the peer's.
    let again = step(rt, "the second take", a.take(b.id()))
        .await
        .expect("second take");
    assert_eq!(again.endpoint.local_addr().expect("addr"), a_addr);
    assert!(again.handover.seq > lease_a.handover.seq);
    let again_b = step(
        rt,
        "B's second Taken event",
        b.wait_event(|e| match e {
            AgentEvent::Taken(lease) if lease.handover == again.handover => Some(lease.clone()),
            _ => None,
        }),
    )
    .await
    .expect("B's events");
    assert_eq!(again_b.endpoint.local_addr().expect("addr"), b_addr);
    let second = again.handover;
    drop((again, again_b));
    step(rt, "B's release", b.release(nonce))
        .await
        .expect("release by B");
    // A's own events of the first round are still queued: the Released
    // that counts is the one after the second Taken.
    let mut after_second_take = false;
    let by_peer = step(
        rt,
        "A's Released event",
        a.wait_event(|e| match e {
            AgentEvent::Taken(lease) if lease.handover == second => {
                after_second_take = true;
                None
            }
            AgentEvent::Released { pair, by_peer } if *pair == nonce && after_second_take => {
                Some(*by_peer)
            }
            _ => None,
        }),
    )
    .await
    .expect("A's events");
    assert!(by_peer, "A should see B's release as the peer's");
    let base_a = status(&a, nonce).await.stats.frames_accepted;
    let base_b = status(&b, nonce).await.stats.frames_accepted;
    frames_reach(rt, &a, nonce, base_a + FRAMES).await;
    frames_reach(rt, &b, nonce, base_b + FRAMES).await;

    let (sa, sb) = (stats(&a).await, stats(&b).await);
    assert_eq!(sa.drops.get(DropReason::BadMac), 0);
    assert_eq!(sa.drops.get(DropReason::WrongAddress), 0);
    assert_eq!(sb.drops.get(DropReason::Replayed), 0);
}

/// The peer never answers the handover (its signalling stream leads
/// nowhere): the take fails with a timeout, nothing is handed to QUIC, and
/// the pair goes on with keepalive.
async fn unanswered_take_body<S: Shell>(shell: &S) {
    let runtime = shell.runtime();
    let rt = &*runtime;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let handshake = Duration::from_millis(300);
    let cfg = PairConfig {
        handshake_timeout: handshake,
        ..quick_pair_config(PING)
    };
    let id_a = Identity::generate().expect("identity");
    let id_b = Identity::generate().expect("identity");
    let (fp_a, fp_b) = (id_a.fingerprint(), id_b.fingerprint());
    let a = PairAgent::spawn(
        shell.runtime(),
        AgentConfig::new(id_a, cfg.clone()).expect("config"),
    );
    let b = PairAgent::spawn(
        shell.runtime(),
        AgentConfig::new(id_b, cfg).expect("config"),
    );
    // Each agent's signalling stream ends at the test, which never reads or
    // writes: signals vanish, datagrams still flow.
    let (to_void_a, _void_a) = step(rt, "a TCP connection", shell.tcp_loopback_pair(loopback))
        .await
        .expect("tcp");
    let (to_void_b, _void_b) = step(rt, "a TCP connection", shell.tcp_loopback_pair(loopback))
        .await
        .expect("tcp");
    a.add_peer(b.id(), fp_b, to_void_a)
        .await
        .expect("add B to A");
    b.add_peer(a.id(), fp_a, to_void_b)
        .await
        .expect("add A to B");
    let ua = shell.bind_udp(loopback).expect("bind A");
    let ub = shell.bind_udp(loopback).expect("bind B");
    let (a_addr, b_addr) = (
        ua.local_addr().expect("addr"),
        ub.local_addr().expect("addr"),
    );
    let nonce = PairNonce(0x5eed_0003);
    let key = PairKey([0x45; 32]);
    let pair = |local, remote, peer, role| EndpointPair {
        nonce,
        local,
        remote,
        peer,
        key: key.clone(),
        role,
    };
    a.add_pair(pair(a_addr, b_addr, b.id(), PingRole::Pinger), ua)
        .await
        .expect("add pair to A");
    b.add_pair(pair(b_addr, a_addr, a.id(), PingRole::Ponger), ub)
        .await
        .expect("add pair to B");
    frames_reach(rt, &a, nonce, FRAMES).await;

    let started = rt.now();
    let result = step(rt, "the unanswered take to fail", a.take(b.id())).await;
    let took = rt.now().saturating_duration_since(started);
    match result {
        Err(AgentError::HandoverFailed {
            pair,
            reason: FailReason::Timeout,
        }) => assert_eq!(pair, nonce),
        other => panic!("expected a handover timeout, got {other:?}"),
    }
    assert!(
        took >= handshake,
        "gave up after {took:?}, before the handshake timeout"
    );
    let s = status(&a, nonce).await;
    assert_eq!(s.state, PairState::Idle);
    assert!(!s.with_quic);
    // Keepalive goes on after the rollback, on both sides.
    let base_a = s.stats.frames_accepted;
    let base_b = status(&b, nonce).await.stats.frames_accepted;
    frames_reach(rt, &a, nonce, base_a + FRAMES).await;
    frames_reach(rt, &b, nonce, base_b + FRAMES).await;
}

/// The QUIC configs a taken pair uses: the expected client reaches the
/// expected server with ALPN `wormhole/1`; a client pinning another
/// certificate gives up, and a client the server does not expect is
/// refused, whatever it pins.
async fn pinning_body<S: Shell>(shell: &S) {
    let runtime = shell.runtime();
    let rt = &*runtime;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server_id = Identity::generate().expect("identity");
    let client_id = Identity::generate().expect("identity");
    let stranger = Identity::generate().expect("identity");
    let endpoint = |server: Option<quinn::ServerConfig>| {
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            shell.bind_udp(loopback).expect("bind"),
            runtime.clone(),
        )
        .expect("endpoint")
    };
    let server = endpoint(Some(
        pair::server_config(&server_id, client_id.fingerprint()).expect("server config"),
    ));
    let server_addr = server.local_addr().expect("addr");
    let accept = || async {
        let incoming = server.accept().await.expect("an incoming connection");
        incoming.await
    };
    let attempt = |me: &Identity, pin| {
        let client = endpoint(None);
        let config = pair::client_config(me, pin).expect("client config");
        let connecting = client
            .connect_with(config, server_addr, identity::SERVER_NAME)
            .expect("start connecting");
        async move {
            let conn = connecting.await?;
            // With client certificates the client may finish its side of
            // the handshake before the server has judged it: a refusal
            // then arrives as the connection closing.
            let read = conn.accept_uni().await.map(|_| ());
            match read {
                Err(quinn::ConnectionError::ApplicationClosed(_)) => Ok(conn),
                Err(e) => Err(e),
                Ok(()) => Ok(conn),
            }
        }
    };

    // The expected pair of certificates connects, with Wormhole's ALPN.
    let (client_side, server_side) = step(
        rt,
        "the pinned handshake",
        futures_lite::future::zip(attempt(&client_id, server_id.fingerprint()), async {
            let conn = accept().await.expect("server accepts the pinned client");
            conn.close(0u32.into(), b"ok");
            conn
        }),
    )
    .await;
    let client_side = client_side.expect("client reaches the pinned server");
    let alpn = server_side
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    assert_eq!(alpn.as_deref(), Some(identity::ALPN));
    drop(client_side);

    // A client pinning another certificate refuses the server.
    let (client_side, server_side) = step(
        rt,
        "a handshake with the wrong pin",
        futures_lite::future::zip(attempt(&client_id, stranger.fingerprint()), accept()),
    )
    .await;
    assert!(
        client_side.is_err(),
        "client accepted a server it did not pin"
    );
    assert!(server_side.is_err());

    // A client the server does not expect is refused, although it pins the
    // server correctly.
    let (client_side, server_side) = step(
        rt,
        "a handshake from a stranger",
        futures_lite::future::zip(attempt(&stranger, server_id.fingerprint()), accept()),
    )
    .await;
    assert!(
        server_side.is_err(),
        "server accepted a client it did not pin"
    );
    assert!(client_side.is_err(), "the stranger's connection survived");
}
