//! Unit tests of the pair subsystem: every transition, timeout and bad
//! input, driven through two pools joined by a hand-operated "network".

use super::*;
use crate::{Instant, Rng};
use std::fmt::Write;
use std::time::Duration;

const NONCE: PairNonce = PairNonce(7);

fn a_id() -> PeerId {
    PeerId::from_u64(1)
}
fn b_id() -> PeerId {
    PeerId::from_u64(2)
}
fn a_addr() -> SocketAddr {
    "10.0.0.1:4000".parse().expect("addr")
}
fn b_addr() -> SocketAddr {
    "10.0.0.2:5000".parse().expect("addr")
}
fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn endpoint(local: SocketAddr, remote: SocketAddr, peer: PeerId, role: PingRole) -> EndpointPair {
    EndpointPair {
        nonce: NONCE,
        local,
        remote,
        peer,
        key: PairKey([9; 32]),
        role,
    }
}

/// Decides which signals the network loses.
type SignalFilter = Box<dyn FnMut(Side, &Signal) -> bool>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// Two pools sharing pair `NONCE` (A pings, B answers) and a network the
/// test controls: it can cut UDP, drop signals by a rule, and records a
/// readable trace of everything that crosses it.
struct Duo {
    a: PairPool,
    b: PairPool,
    now: Instant,
    trace: String,
    events: Vec<(Side, PairEvent)>,
    udp_up: bool,
    /// Signals matching this are dropped (and traced as dropped).
    drop_signal: SignalFilter,
    /// Trace keepalive frames too (off by default: they are many).
    trace_frames: bool,
}

impl Duo {
    fn new() -> Self {
        Self::with_config(PairConfig::default())
    }

    fn with_config(cfg: PairConfig) -> Self {
        let mut a = PairPool::new(a_id(), cfg.clone(), Rng::from_u64(1));
        let mut b = PairPool::new(b_id(), cfg, Rng::from_u64(2));
        a.add(
            Instant::ZERO,
            endpoint(a_addr(), b_addr(), b_id(), PingRole::Pinger),
        )
        .expect("add a");
        b.add(
            Instant::ZERO,
            endpoint(b_addr(), a_addr(), a_id(), PingRole::Ponger),
        )
        .expect("add b");
        Duo {
            a,
            b,
            now: Instant::ZERO,
            trace: String::new(),
            events: Vec::new(),
            udp_up: true,
            drop_signal: Box::new(|_, _| false),
            trace_frames: false,
        }
    }

    fn pool(&mut self, side: Side) -> &mut PairPool {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn state(&self, side: Side) -> Option<PairState> {
        match side {
            Side::A => self.a.get(NONCE).map(PairEntry::state),
            Side::B => self.b.get(NONCE).map(PairEntry::state),
        }
    }

    fn hstate(&self, side: Side) -> Option<HandoverState> {
        let pool = match side {
            Side::A => &self.a,
            Side::B => &self.b,
        };
        pool.handover(NONCE).map(PairHandover::state)
    }

    fn note(&mut self, line: String) {
        writeln!(self.trace, "{:>7?} {line}", self.now).expect("string write");
    }

    /// Moves outputs between the pools until both are quiet. Returns the
    /// number of outputs moved.
    fn pump(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let mut any = false;
            for side in [Side::A, Side::B] {
                while let Some(out) = self.pool(side).poll_output() {
                    any = true;
                    moved += 1;
                    self.deliver(side, out);
                }
            }
            if !any {
                return moved;
            }
        }
    }

    fn deliver(&mut self, from: Side, out: Output) {
        let (to, from_id) = match from {
            Side::A => (Side::B, a_id()),
            Side::B => (Side::A, b_id()),
        };
        let now = self.now;
        match out {
            Output::Transmit(t) => {
                if self.trace_frames {
                    let f = KeepaliveFrame::decode(&t.payload).expect("own frames decode");
                    self.note(format!("{from:?}->{to:?} udp {:?} {}", f.kind, f.ping));
                }
                if self.udp_up {
                    self.pool(to)
                        .handle_datagram(now, t.remote, t.local, &t.payload);
                }
            }
            Output::Signal { to: peer, signal } => {
                assert_eq!(peer, if to == Side::A { a_id() } else { b_id() });
                let dropped = (self.drop_signal)(from, &signal);
                self.note(format!(
                    "{from:?}->{to:?} {:?} h{}{}",
                    signal.kind,
                    signal.handover.seq,
                    if dropped { " (lost)" } else { "" }
                ));
                if !dropped {
                    // Through the wire encoding, as a shell would.
                    let bytes = signal.encode();
                    self.pool(to).handle_signal_bytes(now, from_id, &bytes);
                }
            }
            Output::Event(e) => {
                self.note(format!("{from:?} event {e:?}"));
                self.events.push((from, e));
            }
        }
    }

    /// Runs both pools' timers up to `self.now + d`, delivering as it goes.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .a
                .poll_timeout()
                .into_iter()
                .chain(self.b.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.a.handle_timeout(now);
                    self.b.handle_timeout(now);
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn take(&mut self, side: Side) -> HandoverId {
        let now = self.now;
        let peer = if side == Side::A { b_id() } else { a_id() };
        let (nonce, id) = self.pool(side).take(now, peer).expect("idle pair");
        assert_eq!(nonce, NONCE);
        self.note(format!("{side:?} take"));
        id
    }

    fn release(&mut self, side: Side) {
        let now = self.now;
        self.pool(side).release(now, NONCE).expect("in use");
        self.note(format!("{side:?} release"));
    }

    fn count_events(&self, side: Side, pred: impl Fn(&PairEvent) -> bool) -> usize {
        self.events
            .iter()
            .filter(|(s, e)| *s == side && pred(e))
            .count()
    }

    fn signals_in_trace(&self, needle: &str) -> usize {
        self.trace.lines().filter(|l| l.contains(needle)).count()
    }
}

// ---------------------------------------------------------------- keepalive

#[test]
fn keepalive_keeps_both_sides_idle_for_an_hour() {
    let mut d = Duo::new();
    d.advance(secs(3600));
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    let a = d.a.get(NONCE).expect("a").stats();
    let b = d.b.get(NONCE).expect("b").stats();
    // One ping per 10 s interval (the first within the first interval).
    assert!((359..=361).contains(&a.pings_sent), "{a:?}");
    assert_eq!(b.pongs_sent, a.pings_sent);
    assert_eq!(a.frames_accepted, a.pings_sent);
    assert_eq!(d.a.drops().total() + d.b.drops().total(), 0);
}

#[test]
fn keepalive_frames_trace() {
    let mut d = Duo::new();
    d.trace_frames = true;
    d.advance(secs(25));
    insta::assert_snapshot!("keepalive_trace", d.trace);
}

#[test]
fn both_sides_expire_after_silence_and_the_pinger_keeps_trying_until_then() {
    let mut d = Duo::new();
    d.advance(secs(15));
    d.udp_up = false;
    let cut = d.now;
    d.advance(secs(60));
    assert_eq!(d.state(Side::A), None, "pinger without pongs expires");
    assert_eq!(d.state(Side::B), None, "ponger without pings expires");
    for side in [Side::A, Side::B] {
        let expired = d.events.iter().find(|(s, e)| {
            *s == side && matches!(e, PairEvent::Expired { pair } if *pair == NONCE)
        });
        assert!(expired.is_some(), "{side:?} reports the expiry");
    }
    // Expiry comes idle_timeout after the last frame heard, not earlier.
    assert!(d.now - cut >= secs(15));
    assert!(d.a.is_empty() && d.b.is_empty());
    assert_eq!(d.a.poll_timeout(), None, "an empty pool has no timers");
}

#[test]
fn expiry_is_exactly_idle_timeout_after_the_last_frame() {
    let mut d = Duo::new();
    d.udp_up = false;
    d.advance(secs(30) - Duration::from_nanos(1));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    d.advance(Duration::from_nanos(1));
    assert_eq!(d.state(Side::B), None);
}

/// A pool with one pinger pair and a helper to feed it frames from the
/// peer.
fn pinger() -> PairPool {
    let mut pool = PairPool::new(a_id(), PairConfig::default(), Rng::from_u64(1));
    pool.add(
        Instant::ZERO,
        endpoint(a_addr(), b_addr(), b_id(), PingRole::Pinger),
    )
    .expect("add");
    pool
}

fn ponger() -> PairPool {
    let mut pool = PairPool::new(b_id(), PairConfig::default(), Rng::from_u64(2));
    pool.add(
        Instant::ZERO,
        endpoint(b_addr(), a_addr(), a_id(), PingRole::Ponger),
    )
    .expect("add");
    pool
}

fn frame(kind: FrameKind, ping: u64) -> bytes::Bytes {
    KeepaliveFrame::sealed(&PairKey([9; 32]), kind, NONCE, ping).encode()
}

fn drain(pool: &mut PairPool) -> Vec<Output> {
    std::iter::from_fn(|| pool.poll_output()).collect()
}

#[test]
fn every_bad_frame_is_dropped_and_counted_by_reason() {
    let mut b = ponger();
    let t = Instant::ZERO + secs(1);
    let stranger: SocketAddr = "10.9.9.9:1".parse().expect("addr");
    let cases: Vec<(&str, SocketAddr, SocketAddr, bytes::Bytes, DropReason)> = vec![
        (
            "garbage",
            b_addr(),
            a_addr(),
            bytes::Bytes::from_static(b"\x01\xff\xff"),
            DropReason::Malformed,
        ),
        (
            "empty",
            b_addr(),
            a_addr(),
            bytes::Bytes::new(),
            DropReason::Malformed,
        ),
        (
            "unknown nonce",
            b_addr(),
            a_addr(),
            KeepaliveFrame::sealed(&PairKey([9; 32]), FrameKind::Ping, PairNonce(8), 1).encode(),
            DropReason::UnknownPair,
        ),
        (
            "foreign source",
            b_addr(),
            stranger,
            frame(FrameKind::Ping, 1),
            DropReason::WrongAddress,
        ),
        (
            "wrong local socket",
            stranger,
            a_addr(),
            frame(FrameKind::Ping, 1),
            DropReason::WrongAddress,
        ),
        (
            "bad mac",
            b_addr(),
            a_addr(),
            KeepaliveFrame::sealed(&PairKey([1; 32]), FrameKind::Ping, NONCE, 1).encode(),
            DropReason::BadMac,
        ),
        (
            "pong to the ponger",
            b_addr(),
            a_addr(),
            frame(FrameKind::Pong, 1),
            DropReason::Unexpected,
        ),
    ];
    for (name, local, from, bytes, reason) in cases {
        let before = b.drops().get(reason);
        b.handle_datagram(t, local, from, &bytes);
        assert_eq!(b.drops().get(reason), before + 1, "{name}");
        assert!(drain(&mut b).is_empty(), "{name}: nothing is answered");
    }
    // A valid ping is answered once; its replay is not.
    b.handle_datagram(t, b_addr(), a_addr(), &frame(FrameKind::Ping, 5));
    assert_eq!(drain(&mut b).len(), 1);
    b.handle_datagram(t, b_addr(), a_addr(), &frame(FrameKind::Ping, 5));
    b.handle_datagram(t, b_addr(), a_addr(), &frame(FrameKind::Ping, 4));
    assert_eq!(b.drops().get(DropReason::Replayed), 2);
    assert!(drain(&mut b).is_empty());
}

#[test]
fn the_pinger_accepts_only_pongs_for_pings_in_flight() {
    let mut a = pinger();
    let first = a.poll_timeout().expect("ping timer");
    a.handle_timeout(first);
    let [Output::Transmit(t)] = &drain(&mut a)[..] else {
        panic!("one ping")
    };
    let ping = KeepaliveFrame::decode(&t.payload).expect("decodes");
    assert_eq!((ping.kind, ping.ping), (FrameKind::Ping, 1));
    a.handle_datagram(first, a_addr(), b_addr(), &frame(FrameKind::Pong, 2));
    assert_eq!(
        a.drops().get(DropReason::Replayed),
        1,
        "pong for a ping never sent"
    );
    a.handle_datagram(first, a_addr(), b_addr(), &frame(FrameKind::Ping, 9));
    assert_eq!(
        a.drops().get(DropReason::Unexpected),
        1,
        "ping to the pinger"
    );
    a.handle_datagram(first, a_addr(), b_addr(), &frame(FrameKind::Pong, 1));
    assert_eq!(a.get(NONCE).expect("pair").stats().frames_accepted, 1);
    a.handle_datagram(first, a_addr(), b_addr(), &frame(FrameKind::Pong, 1));
    assert_eq!(
        a.drops().get(DropReason::Replayed),
        2,
        "second pong for one ping"
    );
}

#[test]
fn pings_in_flight_are_bounded() {
    let mut a = pinger();
    // No pongs ever: the pinger keeps pinging until it expires, and its
    // in-flight record never grows past its bound.
    let mut sent = 0;
    while let Some(t) = a.poll_timeout() {
        a.handle_timeout(t);
        sent += drain(&mut a)
            .iter()
            .filter(|o| matches!(o, Output::Transmit(_)))
            .count();
    }
    assert_eq!(sent, 3, "pings at <10 s, +10 s, +20 s; expiry at 30 s");
    assert!(a.is_empty());
}

#[test]
fn timeouts_early_or_twice_are_harmless() {
    let mut a = pinger();
    let due = a.poll_timeout().expect("timer");
    a.handle_timeout(Instant::ZERO);
    assert!(drain(&mut a).is_empty(), "early: nothing");
    assert_eq!(a.poll_timeout(), Some(due), "early: timer unchanged");
    a.handle_timeout(due);
    assert_eq!(drain(&mut a).len(), 1);
    a.handle_timeout(due);
    assert!(drain(&mut a).is_empty(), "twice: nothing more");
    assert!(
        a.poll_timeout().expect("next") > due,
        "never a timer in the past"
    );
}

// ------------------------------------------------------------------- drain

#[test]
fn locking_drains_a_ping_in_flight_until_its_pong() {
    let mut d = Duo::new();
    // Deliver the first ping to nobody yet: cut UDP from A right after it
    // is sent, so it is in flight when A locks.
    let first = d.a.poll_timeout().expect("first ping");
    d.now = first;
    d.a.handle_timeout(first);
    let ping = drain(&mut d.a);
    assert_eq!(ping.len(), 1);
    d.take(Side::A);
    assert_eq!(d.state(Side::A), Some(PairState::Locking));
    d.pump();
    // B answered Lock: B is silent, A still waits for its own pong.
    assert_eq!(d.state(Side::B), Some(PairState::Locked));
    assert_eq!(d.hstate(Side::A), Some(HandoverState::Locking));
    // The ping reaches B, which is Locked: it does not answer.
    let Output::Transmit(t) = &ping[0] else {
        panic!("transmit")
    };
    d.b.handle_datagram(d.now, t.remote, t.local, &t.payload);
    assert_eq!(d.b.drops().get(DropReason::Silent), 1);
    // So A's drain ends by age-out, then Take goes out.
    d.advance(ms(1999));
    assert_eq!(d.state(Side::A), Some(PairState::Locking));
    d.advance(ms(1));
    assert_eq!(d.state(Side::A), Some(PairState::InUse));
    assert_eq!(d.state(Side::B), Some(PairState::InUse));
}

#[test]
fn locking_ends_when_the_pong_arrives() {
    let mut a = pinger();
    let first = a.poll_timeout().expect("first ping");
    a.handle_timeout(first);
    drain(&mut a);
    a.take(first, b_id()).expect("take");
    assert_eq!(a.get(NONCE).map(PairEntry::state), Some(PairState::Locking));
    a.handle_datagram(
        first + ms(30),
        a_addr(),
        b_addr(),
        &frame(FrameKind::Pong, 1),
    );
    assert_eq!(a.get(NONCE).map(PairEntry::state), Some(PairState::Locked));
    // Still waiting for LockOk: no Take yet, and the pair sends nothing.
    assert_eq!(
        a.handover(NONCE).map(PairHandover::state),
        Some(HandoverState::Locking)
    );
    let outs = drain(&mut a);
    assert!(
        outs.iter().all(|o| !matches!(o, Output::Transmit(_))),
        "{outs:?}"
    );
}

#[test]
fn locked_and_in_use_pairs_are_strictly_silent() {
    let mut d = Duo::new();
    d.trace_frames = true;
    d.take(Side::A);
    d.pump();
    assert_eq!(d.state(Side::A), Some(PairState::InUse));
    let before = d.trace.len();
    d.advance(secs(600));
    let after = &d.trace[before..];
    assert!(
        !after.contains("udp"),
        "no keepalive while in use:\n{after}"
    );
    assert_eq!(
        d.state(Side::A),
        Some(PairState::InUse),
        "in use never expires"
    );
    assert_eq!(d.state(Side::B), Some(PairState::InUse));
}

// ---------------------------------------------------------------- handover

#[test]
fn happy_path_take_and_release_trace() {
    let mut d = Duo::new();
    d.advance(secs(12));
    let id = d.take(Side::A);
    assert_eq!(
        id,
        HandoverId {
            initiator: a_id(),
            seq: 1
        }
    );
    d.pump();
    for side in [Side::A, Side::B] {
        assert_eq!(d.state(side), Some(PairState::InUse));
        assert_eq!(d.hstate(side), Some(HandoverState::InUse));
        assert_eq!(
            d.count_events(side, |e| matches!(e, PairEvent::Taken { .. })),
            1
        );
    }
    assert_eq!(
        d.b.handover(NONCE).map(PairHandover::role),
        Some(HandoverRole::Responder)
    );
    d.advance(secs(1));
    d.release(Side::A);
    assert_eq!(
        d.state(Side::A),
        Some(PairState::Locked),
        "silent until confirmed"
    );
    d.pump();
    for side in [Side::A, Side::B] {
        assert_eq!(d.state(side), Some(PairState::Idle));
        assert_eq!(d.hstate(side), None, "finished handovers are forgotten");
    }
    // Keepalive resumes at once.
    d.trace_frames = true;
    d.advance(ms(1));
    insta::assert_snapshot!("happy_path_trace", d.trace);
}

#[test]
fn the_responder_can_release_too() {
    let mut d = Duo::new();
    d.take(Side::A);
    d.pump();
    d.release(Side::B);
    d.pump();
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    assert!(d.events.contains(&(
        Side::A,
        PairEvent::Released {
            pair: NONCE,
            by_peer: true
        }
    )));
    assert!(d.events.contains(&(
        Side::B,
        PairEvent::Released {
            pair: NONCE,
            by_peer: false
        }
    )));
}

#[test]
fn simultaneous_release_ends_cleanly_on_both_sides() {
    let mut d = Duo::new();
    d.take(Side::A);
    d.pump();
    let now = d.now;
    d.a.release(now, NONCE).expect("a releases");
    d.b.release(now, NONCE).expect("b releases");
    d.pump();
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    assert_eq!(d.hstate(Side::A), None);
    assert_eq!(d.hstate(Side::B), None);
}

#[test]
fn release_waits_silently_for_release_ok_and_repeats_release() {
    let mut d = Duo::new();
    d.take(Side::A);
    d.pump();
    d.drop_signal = Box::new(|from, s| from == Side::A && s.kind == SignalKind::Release);
    d.trace_frames = true;
    d.release(Side::A);
    d.advance(ms(2100));
    assert_eq!(d.hstate(Side::A), Some(HandoverState::Releasing));
    assert_eq!(d.state(Side::A), Some(PairState::Locked));
    assert_eq!(
        d.signals_in_trace("Release h1 (lost)"),
        5,
        "sent + 4 repeats"
    );
    assert!(
        !d.trace.contains("udp"),
        "silent while the peer may still use it"
    );
    d.drop_signal = Box::new(|_, _| false);
    d.advance(ms(500));
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
}

#[test]
fn release_with_an_unreachable_peer_gives_up_and_expires_the_pair() {
    let mut d = Duo::new();
    d.take(Side::A);
    d.pump();
    d.drop_signal = Box::new(|_, _| true);
    d.release(Side::A);
    d.advance(secs(29));
    assert_eq!(d.state(Side::A), Some(PairState::Locked));
    d.advance(secs(1));
    assert_eq!(d.state(Side::A), None, "declared expired, never resumed");
    assert!(d.events.iter().any(|(s, e)| *s == Side::A
        && matches!(
            e,
            PairEvent::HandoverFailed {
                reason: FailReason::PeerUnreachable,
                ..
            }
        )));
    assert!(
        d.events
            .contains(&(Side::A, PairEvent::Expired { pair: NONCE }))
    );
}

#[test]
fn busy_when_the_peer_does_not_know_the_pair() {
    let mut d = Duo::new();
    d.b.remove(NONCE).expect("present");
    d.take(Side::A);
    d.pump();
    assert_eq!(
        d.state(Side::A),
        Some(PairState::Idle),
        "rolled back, not lost"
    );
    assert!(d.events.iter().any(|(s, e)| *s == Side::A
        && matches!(
            e,
            PairEvent::HandoverFailed {
                reason: FailReason::Busy(BusyReason::UnknownPair),
                ..
            }
        )));
    insta::assert_snapshot!("busy_unknown_trace", d.trace);
}

/// A peer still answering an older handover that its initiator gave up
/// (the LockOk and the Abort were lost) rolls it back when a newer Lock
/// of the same initiator arrives, and the new handover goes through at
/// once, rather than being refused until the old one times out.
#[test]
fn a_newer_handover_supersedes_one_the_peer_still_holds() {
    let mut d = Duo::new();
    // h1: LockOk and the abort that follows A's timeout are both lost, so B
    // stays Locked for h1 while A is Idle again.
    d.drop_signal = Box::new(|from, s| {
        (from == Side::B && s.kind == SignalKind::LockOk) || s.kind == SignalKind::Abort
    });
    let h1 = d.take(Side::A);
    d.advance(secs(5));
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Locked));
    d.drop_signal = Box::new(|_, _| false);
    let h2 = d.take(Side::A);
    assert_eq!(h2.seq, 2);
    d.pump();
    assert!(d.events.iter().any(|(s, e)| *s == Side::B
        && matches!(
            e,
            PairEvent::HandoverFailed {
                handover,
                reason: FailReason::Aborted,
                ..
            } if *handover == h1
        )));
    // Once A's own pings in flight have drained.
    d.advance(secs(3));
    assert_eq!(d.state(Side::A), Some(PairState::InUse));
    assert_eq!(d.state(Side::B), Some(PairState::InUse));
}

#[test]
fn lock_timeout_rolls_back_and_repeats_lock_meanwhile() {
    let mut d = Duo::new();
    d.drop_signal = Box::new(|from, _| from == Side::A);
    d.take(Side::A);
    d.pump();
    d.advance(ms(4999));
    assert_eq!(d.hstate(Side::A), Some(HandoverState::Locking));
    assert_eq!(
        d.signals_in_trace("Lock h1 (lost)"),
        10,
        "sent + 9 repeats in 5 s"
    );
    d.advance(ms(1));
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.hstate(Side::A), None);
    assert!(
        d.trace.contains("Abort h1"),
        "the responder is told at once"
    );
    assert!(d.events.iter().any(|(s, e)| *s == Side::A
        && matches!(
            e,
            PairEvent::HandoverFailed {
                reason: FailReason::Timeout,
                ..
            }
        )));
    insta::assert_snapshot!("lock_timeout_trace", d.trace);
}

#[test]
fn the_responder_gives_up_waiting_for_take() {
    let mut d = Duo::new();
    d.drop_signal = Box::new(|from, s| from == Side::A && s.kind != SignalKind::Lock);
    d.take(Side::A);
    d.pump();
    assert_eq!(d.hstate(Side::B), Some(HandoverState::Locked));
    d.advance(secs(10) - Duration::from_nanos(1));
    assert_eq!(d.state(Side::B), Some(PairState::Locked));
    d.advance(Duration::from_nanos(1));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    assert!(d.events.iter().any(|(s, e)| *s == Side::B
        && matches!(
            e,
            PairEvent::HandoverFailed {
                reason: FailReason::Timeout,
                ..
            }
        )));
}

#[test]
fn take_unanswered_aborts_and_rolls_back_after_abort_ok() {
    let mut d = Duo::new();
    d.drop_signal = Box::new(|from, s| from == Side::B && s.kind == SignalKind::TakeOk);
    d.take(Side::A);
    d.pump();
    // B took the pair; A never heard so.
    assert_eq!(d.state(Side::B), Some(PairState::InUse));
    assert_eq!(d.hstate(Side::A), Some(HandoverState::Taking));
    d.advance(secs(5));
    // A does not resume keepalive while B may use the pair: it asks B.
    // B's AbortOk comes back at once and both are Idle.
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    assert!(d.events.contains(&(
        Side::B,
        PairEvent::Released {
            pair: NONCE,
            by_peer: true
        }
    )));
    insta::assert_snapshot!("take_timeout_abort_trace", d.trace);
}

#[test]
fn aborting_stays_silent_and_expires_if_the_peer_never_answers() {
    let mut d = Duo::new();
    d.drop_signal = Box::new(|from, s| from == Side::B && s.kind == SignalKind::TakeOk);
    d.take(Side::A);
    d.pump();
    d.drop_signal = Box::new(|_, _| true);
    d.advance(secs(5));
    assert_eq!(d.hstate(Side::A), Some(HandoverState::Aborting));
    assert_eq!(d.state(Side::A), Some(PairState::Locked));
    d.advance(secs(30));
    assert_eq!(d.state(Side::A), None);
    // B still holds it in use: its connection, not keepalive, decides.
    assert_eq!(d.state(Side::B), Some(PairState::InUse));
}

#[test]
fn a_release_from_the_responder_ends_a_take_that_lost_its_take_ok() {
    let mut d = Duo::new();
    d.drop_signal = Box::new(|from, s| from == Side::B && s.kind == SignalKind::TakeOk);
    d.take(Side::A);
    d.pump();
    d.release(Side::B);
    d.pump();
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    assert!(d.events.iter().any(|(s, e)| *s == Side::A
        && matches!(
            e,
            PairEvent::HandoverFailed {
                reason: FailReason::ReleasedByPeer,
                ..
            }
        )));
}

#[test]
fn simultaneous_lock_is_won_by_the_lower_peer_id() {
    for first in [Side::A, Side::B] {
        let mut d = Duo::new();
        // Both take before either hears the other.
        let second = if first == Side::A { Side::B } else { Side::A };
        d.take(first);
        d.take(second);
        d.pump();
        for side in [Side::A, Side::B] {
            assert_eq!(d.state(side), Some(PairState::InUse), "{first:?} first");
            let h = d.pool(side).handover(NONCE).expect("handover").id();
            assert_eq!(h.initiator, a_id(), "A (peer:1) wins");
        }
        assert!(d.events.contains(&(
            Side::B,
            PairEvent::HandoverFailed {
                pair: NONCE,
                handover: HandoverId {
                    initiator: b_id(),
                    seq: 1
                },
                reason: FailReason::LostTie
            }
        )));
        if first == Side::A {
            insta::assert_snapshot!("simultaneous_lock_trace", d.trace);
        }
    }
}

#[test]
fn a_late_duplicate_lock_never_restarts_a_finished_handover() {
    let mut d = Duo::new();
    let h1 = d.take(Side::A);
    d.pump();
    d.release(Side::A);
    d.pump();
    let now = d.now;
    let dup = Signal {
        pair: NONCE,
        handover: h1,
        kind: SignalKind::Lock,
    };
    d.b.handle_signal(now, a_id(), dup);
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    assert_eq!(
        drain(&mut d.b),
        vec![Output::Signal {
            to: a_id(),
            signal: Signal {
                kind: SignalKind::LockBusy(BusyReason::NoSuchHandover),
                ..dup
            }
        }]
    );
    // Late answers are stale and dropped; late Take is refused for good.
    for kind in [
        SignalKind::LockOk,
        SignalKind::TakeOk,
        SignalKind::ReleaseOk,
        SignalKind::AbortOk,
    ] {
        d.a.handle_signal(now, b_id(), Signal { kind, ..dup });
    }
    assert_eq!(d.a.drops().get(DropReason::StaleSignal), 4);
    d.b.handle_signal(
        now,
        a_id(),
        Signal {
            kind: SignalKind::Take,
            ..dup
        },
    );
    assert!(matches!(
        drain(&mut d.b)[..],
        [Output::Signal {
            signal: Signal {
                kind: SignalKind::LockBusy(BusyReason::NoSuchHandover),
                ..
            },
            ..
        }]
    ));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
}

#[test]
fn signals_for_pairs_the_sender_does_not_share_are_dropped() {
    let mut d = Duo::new();
    let now = d.now;
    let mallory = PeerId::from_u64(99);
    let lock = Signal {
        pair: NONCE,
        handover: HandoverId {
            initiator: mallory,
            seq: 1,
        },
        kind: SignalKind::Lock,
    };
    d.b.handle_signal(now, mallory, lock);
    assert_eq!(
        d.b.drops().get(DropReason::WrongPeer),
        1,
        "not mallory's pair"
    );
    d.b.handle_signal(now, a_id(), lock);
    assert_eq!(
        d.b.drops().get(DropReason::WrongPeer),
        2,
        "A cannot speak for mallory"
    );
    d.b.handle_signal_bytes(now, a_id(), b"\x01\x02");
    assert_eq!(d.b.drops().get(DropReason::Malformed), 1);
    assert!(drain(&mut d.b).is_empty());
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
}

#[test]
fn requests_about_unknown_pairs_get_final_answers() {
    let mut b = ponger();
    let h = HandoverId {
        initiator: a_id(),
        seq: 1,
    };
    let other = PairNonce(99);
    for (kind, reply) in [
        (
            SignalKind::Lock,
            SignalKind::LockBusy(BusyReason::UnknownPair),
        ),
        (
            SignalKind::Take,
            SignalKind::LockBusy(BusyReason::UnknownPair),
        ),
        (SignalKind::Release, SignalKind::ReleaseOk),
        (SignalKind::Abort, SignalKind::AbortOk),
    ] {
        b.handle_signal(
            Instant::ZERO,
            a_id(),
            Signal {
                pair: other,
                handover: h,
                kind,
            },
        );
        assert_eq!(
            drain(&mut b),
            vec![Output::Signal {
                to: a_id(),
                signal: Signal {
                    pair: other,
                    handover: h,
                    kind: reply
                }
            }]
        );
    }
}

// -------------------------------------------------------------------- pool

#[test]
fn add_validates_nonce_uniqueness_and_capacity() {
    let cfg = PairConfig {
        max_pairs_per_peer: 2,
        max_pairs: 3,
        ..PairConfig::default()
    };
    let mut pool = PairPool::new(a_id(), cfg, Rng::from_u64(1));
    let pair = |n: u64, peer: u64| EndpointPair {
        nonce: PairNonce(n),
        ..endpoint(a_addr(), b_addr(), PeerId::from_u64(peer), PingRole::Pinger)
    };
    let now = Instant::ZERO;
    assert_eq!(pool.add(now, pair(0, 2)), Err(AddError::ZeroNonce));
    pool.add(now, pair(1, 2)).expect("first");
    assert_eq!(
        pool.add(now, pair(1, 3)),
        Err(AddError::DuplicateNonce(PairNonce(1)))
    );
    pool.add(now, pair(2, 2)).expect("second for peer 2");
    assert_eq!(
        pool.add(now, pair(3, 2)),
        Err(AddError::PeerFull {
            peer: PeerId::from_u64(2),
            max: 2
        })
    );
    pool.add(now, pair(3, 3)).expect("third");
    assert_eq!(
        pool.add(now, pair(4, 4)),
        Err(AddError::PoolFull { max: 3 })
    );
    assert_eq!(pool.len(), 3);
    let nonces: Vec<_> = pool
        .pairs_of(PeerId::from_u64(2))
        .map(|e| e.pair().nonce)
        .collect();
    assert_eq!(nonces, vec![PairNonce(1), PairNonce(2)]);
    assert!(pool.remove(PairNonce(1)).is_some());
    assert!(pool.remove(PairNonce(1)).is_none());
    pool.add(now, pair(5, 2)).expect("room again after remove");
}

#[test]
fn take_claims_each_idle_pair_once() {
    let mut pool = PairPool::new(a_id(), PairConfig::default(), Rng::from_u64(1));
    let now = Instant::ZERO;
    for n in [1, 2] {
        pool.add(
            now,
            EndpointPair {
                nonce: PairNonce(n),
                ..endpoint(a_addr(), b_addr(), b_id(), PingRole::Pinger)
            },
        )
        .expect("add");
    }
    let (first, _) = pool.take(now, b_id()).expect("one");
    let (second, _) = pool.take(now, b_id()).expect("two");
    assert_ne!(first, second, "a claimed pair is never claimed again");
    assert_eq!(pool.take(now, b_id()), Err(TakeError::NoIdlePair(b_id())));
    assert_eq!(pool.take(now, a_id()), Err(TakeError::NoIdlePair(a_id())));
    assert!(matches!(
        pool.take_pair(now, first),
        Err(TakeError::NotIdle { .. })
    ));
    assert_eq!(
        pool.take_pair(now, PairNonce(9)),
        Err(TakeError::UnknownPair(PairNonce(9)))
    );
    assert_eq!(pool.release(now, first), Err(ReleaseError::NotInUse(first)));
    assert_eq!(
        pool.release(now, PairNonce(9)),
        Err(ReleaseError::UnknownPair(PairNonce(9)))
    );
}

#[test]
fn handover_ids_grow_per_pair() {
    let mut d = Duo::new();
    for seq in 1..=3 {
        let id = d.take(Side::A);
        assert_eq!(id.seq, seq);
        d.pump();
        d.release(Side::A);
        d.pump();
    }
    let id = d.take(Side::B);
    assert_eq!(
        id,
        HandoverId {
            initiator: b_id(),
            seq: 1
        },
        "numbered per initiator"
    );
}

#[test]
fn peer_ids_display_in_full_and_debug_short() {
    assert_eq!(
        PeerId::from_u64(1).to_string(),
        "00000000000000000000000000000001"
    );
    assert_eq!(format!("{:?}", PeerId::from_u64(0x1234)), "peer:1234");
    assert_eq!(PeerId([0xab; 16]).to_string().len(), 32);
}

#[test]
fn release_traces() {
    // The responder releases; then both release at once.
    let mut d = Duo::new();
    d.take(Side::A);
    d.pump();
    d.release(Side::B);
    d.pump();
    d.take(Side::A);
    d.pump();
    let now = d.now;
    d.a.release(now, NONCE).expect("a releases");
    d.b.release(now, NONCE).expect("b releases");
    d.note("A and B release at once".into());
    d.pump();
    assert_eq!(d.state(Side::A), Some(PairState::Idle));
    assert_eq!(d.state(Side::B), Some(PairState::Idle));
    insta::assert_snapshot!("release_trace", d.trace);
}
