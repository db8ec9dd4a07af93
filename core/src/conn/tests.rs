use super::*;
use crate::proto::{FileKey, FileKind, NodeId, Timestamp};
use std::fmt::Write;

fn root() -> Attr {
    Attr {
        node: NodeId::ROOT,
        key: FileKey { dev: 1, ino: 2 },
        kind: FileKind::Dir,
        size: 0,
        mode: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        version: 1,
        rdev: 0,
    }
}

fn limits() -> Limits {
    Limits {
        chunk_size: 131_072,
        max_dir_page: 512,
        lock_ttl_ms: 30_000,
        read_only: false,
        owners: crate::proto::Owners::HostUser {
            uid: 1000,
            gid: 1000,
        },
    }
}

const S1: SessionId = SessionId([1; 16]);
const S2: SessionId = SessionId([2; 16]);

fn machine() -> Connection {
    Connection::new(
        ConnConfig::default(),
        TicketSecret([7; 32]),
        Rng::from_u64(3),
    )
}

fn drain(c: &mut Connection) -> Vec<ConnOutput> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn t(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

/// Connects all the way to Ready at `now`.
fn ready(c: &mut Connection, now: Instant, session: SessionId) -> Vec<ConnOutput> {
    c.connect(now);
    c.transport_established(now, &[5; 32]);
    c.hello_ack(now, session, root(), limits());
    drain(c)
}

#[test]
fn connect_authenticates_with_a_session_bound_proof() {
    let mut c = machine();
    assert_eq!(c.state(), ConnState::Disconnected);
    c.connect(t(0));
    assert_eq!(c.state(), ConnState::Connecting);
    assert_eq!(drain(&mut c), vec![ConnOutput::OpenTransport]);
    c.transport_established(t(10), &[5; 32]);
    assert_eq!(c.state(), ConnState::Authenticating);
    let [
        ConnOutput::Send(Request::Hello {
            version,
            proof,
            resume,
        }),
    ] = &drain(&mut c)[..]
    else {
        panic!("a Hello")
    };
    assert_eq!(*version, u16::from(crate::codec::PROTOCOL_VERSION));
    assert_eq!(*resume, None);
    assert!(auth::verify(&TicketSecret([7; 32]), &[5; 32], proof));
    c.hello_ack(t(20), S1, root(), limits());
    assert_eq!(c.state(), ConnState::Ready);
    assert!(matches!(
        drain(&mut c)[..],
        [ConnOutput::Event(ConnEvent::Ready {
            session: S1,
            resumed: false,
            ..
        })]
    ));
    assert_eq!(c.poll_timeout(), None, "Ready has no timer");
}

#[test]
fn first_connect_times_out_after_ten_seconds() {
    let mut c = machine();
    c.connect(t(0));
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t(10_000)));
    c.handle_timeout(t(9_999));
    assert_eq!(c.state(), ConnState::Connecting);
    c.handle_timeout(t(10_000));
    assert_eq!(c.state(), ConnState::Disconnected);
    assert_eq!(
        drain(&mut c),
        vec![
            ConnOutput::CloseTransport,
            ConnOutput::Event(ConnEvent::Disconnected(DisconnectReason::ConnectTimeout))
        ]
    );
}

#[test]
fn authentication_times_out_after_five_seconds() {
    let mut c = machine();
    c.connect(t(0));
    c.transport_established(t(100), &[5; 32]);
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t(5_100)));
    c.handle_timeout(t(5_100));
    assert!(
        drain(&mut c).contains(&ConnOutput::Event(ConnEvent::Disconnected(
            DisconnectReason::AuthTimeout
        )))
    );
}

#[test]
fn a_refused_proof_is_final_even_when_reconnecting() {
    let mut c = machine();
    c.connect(t(0));
    c.transport_established(t(0), &[5; 32]);
    c.hello_refused(t(1), Errno::Acces);
    assert_eq!(c.state(), ConnState::Disconnected);
    assert!(
        drain(&mut c).contains(&ConnOutput::Event(ConnEvent::Disconnected(
            DisconnectReason::AuthFailed
        )))
    );
    // During a reconnect too.
    ready(&mut c, t(0), S1);
    c.transport_lost(t(1));
    c.handle_timeout(t(60_000));
    c.transport_established(t(60_000), &[6; 32]);
    c.hello_refused(t(60_001), Errno::Acces);
    assert_eq!(c.state(), ConnState::Disconnected);
}

#[test]
fn transport_error_while_connecting_disconnects() {
    let mut c = machine();
    c.connect(t(0));
    c.transport_lost(t(3));
    assert_eq!(c.state(), ConnState::Disconnected);
}

#[test]
fn reconnect_backs_off_1_2_4_8_16_with_jitter_then_gives_up() {
    let mut c = machine();
    ready(&mut c, t(0), S1);
    let mut now = t(1_000);
    c.transport_lost(now);
    assert_eq!(c.state(), ConnState::Reconnecting);
    let mut delays = Vec::new();
    loop {
        let outs = drain(&mut c);
        if outs.contains(&ConnOutput::Event(ConnEvent::Disconnected(
            DisconnectReason::RetriesExhausted,
        ))) {
            break;
        }
        let delay = outs
            .iter()
            .find_map(|o| match o {
                ConnOutput::Event(ConnEvent::Retrying { delay, .. }) => Some(*delay),
                _ => None,
            })
            .expect("a retry is scheduled");
        delays.push(delay);
        assert_eq!(c.poll_timeout(), Some(now + delay));
        now += delay;
        c.handle_timeout(now);
        assert_eq!(drain(&mut c), vec![ConnOutput::OpenTransport]);
        // The attempt fails: the host is still down.
        now += Duration::from_secs(10);
        c.handle_timeout(now);
    }
    assert_eq!(delays.len(), 5);
    for (i, d) in delays.iter().enumerate() {
        let base = Duration::from_secs(1 << i).as_secs_f64();
        let ratio = d.as_secs_f64() / base;
        assert!((0.9..=1.1).contains(&ratio), "attempt {}: {d:?}", i + 1);
    }
    assert_eq!(c.state(), ConnState::Disconnected);
}

#[test]
fn backoff_is_capped_at_thirty_seconds() {
    let cfg = ConnConfig {
        max_retries: 8,
        jitter: 0.0,
        ..ConnConfig::default()
    };
    let mut c = Connection::new(cfg, TicketSecret([7; 32]), Rng::from_u64(1));
    let delays: Vec<Duration> = (1..=8).map(|a| c.backoff(a)).collect();
    assert_eq!(
        delays.iter().map(Duration::as_secs).collect::<Vec<_>>(),
        vec![1, 2, 4, 8, 16, 30, 30, 30]
    );
}

#[test]
fn reconnect_resumes_the_session_and_says_whether_it_was_restored() {
    let mut c = machine();
    ready(&mut c, t(0), S1);
    c.transport_lost(t(1));
    drain(&mut c);
    let until = c.poll_timeout().expect("retry timer");
    c.handle_timeout(until);
    c.transport_established(until, &[9; 32]);
    let outs = drain(&mut c);
    assert!(matches!(
        outs[..],
        [
            ConnOutput::OpenTransport,
            ConnOutput::Send(Request::Hello {
                resume: Some(S1),
                ..
            })
        ]
    ));
    c.hello_ack(until, S1, root(), limits());
    assert!(matches!(
        drain(&mut c)[..],
        [ConnOutput::Event(ConnEvent::Ready { resumed: true, .. })]
    ));
    // A host that restarted hands out a new session: not resumed.
    c.transport_lost(t(100_000));
    drain(&mut c);
    let until = c.poll_timeout().expect("retry timer");
    c.handle_timeout(until);
    c.transport_established(until, &[9; 32]);
    c.hello_ack(until, S2, root(), limits());
    assert!(matches!(
        drain(&mut c)[..],
        [
            ConnOutput::OpenTransport,
            ConnOutput::Send(_),
            ConnOutput::Event(ConnEvent::Ready { resumed: false, .. })
        ]
    ));
}

#[test]
fn moving_to_a_better_path_reconnects_at_once_and_resumes() {
    let mut c = machine();
    ready(&mut c, t(0), S1);
    c.move_path(t(5));
    // No loss to report, no backoff: the new transport opens at once.
    assert_eq!(
        drain(&mut c),
        vec![ConnOutput::CloseTransport, ConnOutput::OpenTransport]
    );
    c.transport_established(t(6), &[9; 32]);
    assert!(matches!(
        drain(&mut c)[..],
        [ConnOutput::Send(Request::Hello {
            resume: Some(S1),
            ..
        })]
    ));
    c.hello_ack(t(7), S1, root(), limits());
    assert!(matches!(
        drain(&mut c)[..],
        [ConnOutput::Event(ConnEvent::Ready { resumed: true, .. })]
    ));
    // A move that fails goes on as a lost connection would: retries.
    c.move_path(t(10));
    drain(&mut c);
    c.transport_lost(t(11));
    assert!(matches!(
        drain(&mut c)[..],
        [
            ConnOutput::CloseTransport,
            ConnOutput::Event(ConnEvent::Retrying { attempt: 1, .. })
        ]
    ));
    // Not Ready: nothing to move.
    c.move_path(t(12));
    assert_eq!(drain(&mut c), vec![]);
}

#[test]
fn a_successful_reconnect_resets_the_retry_budget() {
    let mut c = machine();
    ready(&mut c, t(0), S1);
    for round in 0..3 {
        // Four failed attempts, then success: never exhausts five retries.
        let mut now = t(1_000_000 * (round + 1));
        c.transport_lost(now);
        for _ in 0..4 {
            now = c.poll_timeout().expect("retry");
            c.handle_timeout(now);
            c.transport_lost(now);
        }
        now = c.poll_timeout().expect("retry");
        c.handle_timeout(now);
        c.transport_established(now, &[1; 32]);
        c.hello_ack(now, S1, root(), limits());
        assert_eq!(c.state(), ConnState::Ready, "round {round}");
        drain(&mut c);
    }
}

#[test]
fn goodbye_and_disconnect_end_cleanly() {
    let mut c = machine();
    ready(&mut c, t(0), S1);
    c.disconnect(t(5));
    assert_eq!(
        drain(&mut c),
        vec![
            ConnOutput::Send(Request::Goodbye),
            ConnOutput::CloseTransport,
            ConnOutput::Event(ConnEvent::Disconnected(DisconnectReason::Requested))
        ]
    );
    ready(&mut c, t(10), S1);
    c.host_goodbye(t(11));
    assert_eq!(c.state(), ConnState::Disconnected);
    assert!(
        drain(&mut c).contains(&ConnOutput::Event(ConnEvent::Disconnected(
            DisconnectReason::HostGoodbye
        )))
    );
    // Nothing happens on inputs that do not apply.
    c.hello_ack(t(12), S1, root(), limits());
    c.transport_established(t(12), &[0; 32]);
    c.handle_timeout(t(1_000_000));
    assert!(drain(&mut c).is_empty());
}

#[test]
fn reconnect_trace() {
    let mut c = machine();
    let mut trace = String::new();
    let mut log = |c: &mut Connection, now: Instant, what: &str| {
        writeln!(trace, "{now:?} {what} -> {:?}", c.state()).expect("write");
        for o in drain(c) {
            let o = match o {
                ConnOutput::Send(Request::Hello { resume, .. }) => {
                    format!("Send Hello resume={resume:?}")
                }
                ConnOutput::Event(ConnEvent::Ready {
                    session, resumed, ..
                }) => {
                    format!("Ready {session:?} resumed={resumed}")
                }
                other => format!("{other:?}"),
            };
            writeln!(trace, "    {o}").expect("write");
        }
    };
    c.connect(t(0));
    log(&mut c, t(0), "connect");
    c.transport_established(t(30), &[1; 32]);
    log(&mut c, t(30), "transport up");
    c.hello_ack(t(40), S1, root(), limits());
    log(&mut c, t(40), "HelloAck");
    c.transport_lost(t(1_000));
    log(&mut c, t(1_000), "lost");
    let at = c.poll_timeout().expect("timer");
    c.handle_timeout(at);
    log(&mut c, at, "timer");
    c.handle_timeout(at + Duration::from_secs(10));
    log(&mut c, at + Duration::from_secs(10), "timer");
    let at = c.poll_timeout().expect("timer");
    c.handle_timeout(at);
    log(&mut c, at, "timer");
    c.transport_established(at, &[2; 32]);
    log(&mut c, at, "transport up");
    c.hello_ack(at, S1, root(), limits());
    log(&mut c, at, "HelloAck");
    insta::assert_snapshot!("reconnect_trace", trace);
}
