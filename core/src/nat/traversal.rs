//! Hole punching: candidates and authenticated connectivity checks (seed
//! 002 §7, after RFC 8445), on the one socket that will carry the
//! connection.
//!
//! States: `Initial` → `Probing` (asking the rendezvous for our public
//! address) → `Candidates` (checks in both directions) → `Connected`, or
//! `DirectFailed` at the deadline or once every path has failed. Two
//! deviations from the seed, on purpose: a rendezvous that does not answer
//! does not end the traversal (host candidates still work on a LAN), and
//! `RelayFallback` arrives with relays (the next issue).
//!
//! Checks are STUN Binding requests with PRIORITY, USE-CANDIDATE and a
//! MESSAGE-INTEGRITY-SHA256 under a key both peers derived for this
//! exchange ([`CheckKey`]); anything without a valid MAC is dropped and
//! counted, so a third party can neither answer a check nor plant a
//! candidate. A check from an address we did not know is answered and
//! that address becomes a peer-reflexive candidate, checked at once: that
//! is how a hole punched from the other side is found.
//!
//! The controlling side (the mount) nominates the first path that
//! answers, with a check carrying USE-CANDIDATE, and is connected when
//! that check is answered; the controlled side (the host) is connected
//! once it has been nominated on a path its own check succeeded on. After
//! connecting, a few more checks keep the path's NAT state fresh while the
//! other side catches up, and checks keep being answered.

use super::binding::{BindingClient, BindingConfig, BindingEvent};
use super::stun::{self, Change, Check, CheckKey, TxId};
use crate::pair::Transmit;
use crate::{Instant, Rng};
use core::net::SocketAddr;
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Remote candidates and peer-reflexive addresses kept at most.
pub const MAX_PATHS: usize = 32;

/// A candidate's type (seed 002 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum CandidateKind {
    /// An address of the machine itself.
    Host,
    /// Our public address as a STUN server saw it.
    ServerReflexive,
    /// An address learned from a check that arrived from it.
    PeerReflexive,
    /// A relay's address (the next issue).
    Relay,
}

impl CandidateKind {
    /// RFC 8445's recommended type preferences, as the seed has them.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relay => 0,
        }
    }
}

/// A transport address a peer may be reached at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Candidate {
    /// Its type.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
    /// Its priority.
    pub priority: u32,
}

impl Candidate {
    /// A candidate with the seed's priority for `kind` and `local_pref`.
    pub fn new(kind: CandidateKind, addr: SocketAddr, local_pref: u16) -> Self {
        Candidate {
            kind,
            addr,
            priority: priority(kind, local_pref),
        }
    }
}

/// The seed's (and RFC 8445 §5.1.2.1's) candidate priority for component
/// 1: `type_pref << 24 | local_pref << 8 | 255`.
pub fn priority(kind: CandidateKind, local_pref: u16) -> u32 {
    (kind.type_preference() << 24) | (u32::from(local_pref) << 8) | 255
}

/// RFC 8445 §6.1.2.3: a pair's priority from the controlling side's
/// candidate priority `g` and the controlled side's `d`.
pub fn pair_priority(g: u32, d: u32) -> u64 {
    (u64::from(g.min(d)) << 32) + 2 * u64::from(g.max(d)) + u64::from(g > d)
}

/// Which side nominates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Role {
    /// Nominates (the mount).
    Controlling,
    /// Follows the nomination (the host).
    Controlled,
}

/// Timing and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraversalConfig {
    /// Asking the rendezvous for our public address.
    pub gather: BindingConfig,
    /// Time between two new checks (RFC 8445's Ta).
    pub pace: Duration,
    /// First retransmission timeout of a check; it doubles up to
    /// `max_rto`.
    pub check_rto: Duration,
    /// Largest retransmission timeout of a check.
    pub max_rto: Duration,
    /// Sends of one check before its path counts as failed.
    pub check_sends: u32,
    /// From `start` to `DirectFailed` if nothing connected.
    pub deadline: Duration,
    /// Checks sent on the chosen path after connecting.
    pub linger: u32,
}

impl Default for TraversalConfig {
    /// 20 ms pacing, checks retried for about four seconds, ten seconds in
    /// all.
    fn default() -> Self {
        TraversalConfig {
            gather: BindingConfig::interactive(),
            pace: Duration::from_millis(20),
            check_rto: Duration::from_millis(100),
            max_rto: Duration::from_millis(500),
            check_sends: 10,
            deadline: Duration::from_secs(10),
            linger: 3,
        }
    }
}

/// Where a traversal stands (seed 002 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraversalState {
    /// Not started.
    Initial,
    /// Asking the rendezvous for our public address.
    Probing,
    /// Checking paths.
    Candidates,
    /// A path works.
    Connected {
        /// The peer's address on it.
        remote: SocketAddr,
    },
    /// No direct path.
    DirectFailed(FailReason),
}

/// Why no direct path was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The peer's candidates never arrived.
    NoRemoteCandidates,
    /// Every path was checked and none answered (or the deadline passed).
    NoPathAnswered,
}

/// What the traversal tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraversalEvent {
    /// Our candidates, for the peer (through the rendezvous).
    LocalCandidates(Vec<Candidate>),
    /// A path works; the socket may now carry the connection.
    Connected {
        /// Our socket.
        local: SocketAddr,
        /// The peer's address on the path.
        remote: SocketAddr,
        /// How the peer's address was learned.
        kind: CandidateKind,
    },
    /// No direct path.
    Failed(FailReason),
    /// After `Connected`, the lingering checks are done: the peer has had
    /// time to finish its side, and the socket may go to the connection.
    Settled,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraversalStats {
    /// Check requests sent (first sends, retransmissions and lingering).
    pub checks_sent: u64,
    /// Check requests answered.
    pub checks_answered: u64,
    /// STUN datagrams dropped that were neither a check under our key nor
    /// the rendezvous's answer (forgeries among them).
    pub unauthenticated: u64,
    /// Authenticated answers to no check in flight (late or duplicated).
    pub stray: u64,
    /// New paths refused beyond [`MAX_PATHS`] or of the other IP family.
    pub refused_paths: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct Path {
    remote: SocketAddr,
    kind: CandidateKind,
    priority: u64,
    state: PathState,
    /// The peer nominated this path (controlled side).
    nominated_by_peer: bool,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    remote: SocketAddr,
    nominate: bool,
    sends: u32,
    rto: Duration,
    next: Instant,
}

/// One side's hole punching toward one peer.
#[derive(Debug)]
pub struct Traversal {
    config: TraversalConfig,
    role: Role,
    key: CheckKey,
    local: SocketAddr,
    host_addrs: Vec<SocketAddr>,
    rng: Rng,
    binding: BindingClient,
    gather: Option<TxId>,
    state: TraversalState,
    deadline: Option<Instant>,
    next_check: Instant,
    paths: Vec<Path>,
    remote_known: bool,
    in_flight: BTreeMap<TxId, InFlight>,
    nominating: bool,
    linger_left: u32,
    /// `Settled` has been reported.
    settled: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TraversalEvent>,
    stats: TraversalStats,
}

impl Traversal {
    /// A traversal on the socket bound to `local`; `host_addrs` are the
    /// machine's own addresses for that socket (its host candidates).
    pub fn new(
        config: TraversalConfig,
        role: Role,
        key: CheckKey,
        local: SocketAddr,
        host_addrs: Vec<SocketAddr>,
        mut rng: Rng,
    ) -> Self {
        let binding = BindingClient::new(config.gather, Rng::from_u64(rng.next_u64()));
        Traversal {
            config,
            role,
            key,
            local,
            host_addrs,
            rng,
            binding,
            gather: None,
            state: TraversalState::Initial,
            deadline: None,
            next_check: Instant::ZERO,
            paths: Vec::new(),
            remote_known: false,
            in_flight: BTreeMap::new(),
            nominating: false,
            linger_left: 0,
            settled: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TraversalStats::default(),
        }
    }

    /// Starts: asks `rendezvous` (if any) for our public address, and arms
    /// the deadline.
    pub fn start(&mut self, now: Instant, rendezvous: Option<SocketAddr>) {
        if self.state != TraversalState::Initial {
            return;
        }
        self.deadline = Some(now + self.config.deadline);
        self.next_check = now;
        match rendezvous.and_then(|r| self.binding.request(now, self.local, r, Change::NONE).ok()) {
            Some(tx) => {
                self.gather = Some(tx);
                self.state = TraversalState::Probing;
                self.flush_binding();
            }
            None => self.gathered(None),
        }
        self.check();
    }

    /// The peer's candidates, from the rendezvous. Later calls add to them.
    pub fn add_remote_candidates(&mut self, now: Instant, candidates: &[Candidate]) {
        if self.finished() {
            return;
        }
        for c in candidates {
            self.learn(c.addr, c.kind, c.priority);
        }
        self.remote_known = true;
        self.next_check = self.next_check.max(now);
        self.check();
    }

    /// Offers a datagram that arrived on our socket; returns whether it
    /// was STUN for this traversal (a check, or the rendezvous's answer).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        if !stun::looks_like_stun(datagram) {
            return false;
        }
        match stun::decode_check(datagram, &self.key) {
            Some(Check::Request {
                tx,
                priority,
                nominate,
            }) => self.on_request(now, from, tx, priority, nominate),
            Some(Check::Success { tx, .. }) => self.on_success(now, tx),
            None => {
                if self.binding.handle_datagram(self.local, from, datagram) {
                    self.flush_binding();
                } else {
                    self.stats.unauthenticated += 1;
                }
            }
        }
        self.check();
        true
    }

    /// Retransmits, paces new checks, lingers and ends at the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.binding.handle_timeout(now);
        self.flush_binding();
        if let TraversalState::Connected { remote } = self.state {
            if self.next_check <= now {
                if self.linger_left > 0 {
                    self.linger_left -= 1;
                    self.next_check = now + self.config.pace * 5;
                    let tx = self.fresh_tx();
                    self.send_check(tx, remote, false);
                } else if !self.settled {
                    self.settled = true;
                    self.events.push_back(TraversalEvent::Settled);
                }
            }
            self.check();
            return;
        }
        if self.finished() {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            let why = if self.remote_known {
                FailReason::NoPathAnswered
            } else {
                FailReason::NoRemoteCandidates
            };
            self.fail(why);
            self.check();
            return;
        }
        let due: Vec<TxId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.next <= now)
            .map(|(tx, _)| *tx)
            .collect();
        for tx in due {
            self.retransmit(now, tx);
        }
        if self.role == Role::Controlling && !self.nominating {
            // A nomination that went unanswered: try the best path that
            // has answered, if any.
            let best = self
                .paths
                .iter()
                .filter(|p| p.state == PathState::Succeeded)
                .max_by_key(|p| p.priority)
                .map(|p| p.remote);
            if let Some(remote) = best {
                self.nominating = true;
                self.start_check(now, remote, true);
            }
        }
        if self.next_check <= now {
            if let Some(i) = self.best_waiting() {
                self.paths[i].state = PathState::InProgress;
                let remote = self.paths[i].remote;
                self.start_check(now, remote, false);
            }
            self.next_check = now + self.config.pace;
        }
        if self.remote_known
            && !self.paths.is_empty()
            && self.paths.iter().all(|p| p.state == PathState::Failed)
        {
            self.fail(FailReason::NoPathAnswered);
        }
        self.check();
    }

    /// The next datagram to send, from our socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TraversalEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let binding = self.binding.poll_timeout();
        let own = match self.state {
            TraversalState::Initial | TraversalState::DirectFailed(_) => None,
            TraversalState::Connected { .. } => (!self.settled).then_some(self.next_check),
            TraversalState::Probing | TraversalState::Candidates => {
                let retransmit = self.in_flight.values().map(|f| f.next).min();
                let pace = self.best_waiting().map(|_| self.next_check);
                [self.deadline, retransmit, pace]
                    .into_iter()
                    .flatten()
                    .min()
            }
        };
        [binding, own].into_iter().flatten().min()
    }

    /// Where it stands.
    pub fn state(&self) -> TraversalState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> TraversalStats {
        self.stats
    }

    fn finished(&self) -> bool {
        matches!(
            self.state,
            TraversalState::Connected { .. } | TraversalState::DirectFailed(_)
        )
    }

    fn flush_binding(&mut self) {
        while let Some(t) = self.binding.poll_transmit() {
            self.transmits.push_back(t);
        }
        while let Some(event) = self.binding.poll_event() {
            match event {
                BindingEvent::Mapped { tx, mapped, .. } if Some(tx) == self.gather => {
                    self.gathered(Some(mapped));
                }
                BindingEvent::Failed { tx, .. } if Some(tx) == self.gather => self.gathered(None),
                _ => {}
            }
        }
    }

    /// Gathering ended (with our public address, if the rendezvous gave
    /// it): our candidates go to the peer.
    fn gathered(&mut self, public: Option<SocketAddr>) {
        self.gather = None;
        let mut candidates: Vec<Candidate> = self
            .host_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let pref = u16::MAX.saturating_sub(u16::try_from(i).unwrap_or(u16::MAX));
                Candidate::new(CandidateKind::Host, *a, pref)
            })
            .collect();
        if let Some(public) = public.filter(|p| !self.host_addrs.contains(p)) {
            candidates.push(Candidate::new(
                CandidateKind::ServerReflexive,
                public,
                u16::MAX,
            ));
        }
        if self.state == TraversalState::Initial || self.state == TraversalState::Probing {
            self.state = TraversalState::Candidates;
        }
        self.events
            .push_back(TraversalEvent::LocalCandidates(candidates));
    }

    /// A peer address, from its candidates or a check that came from it.
    fn learn(
        &mut self,
        addr: SocketAddr,
        kind: CandidateKind,
        remote_priority: u32,
    ) -> Option<usize> {
        if let Some(i) = self.paths.iter().position(|p| p.remote == addr) {
            return Some(i);
        }
        if self.paths.len() >= MAX_PATHS || addr.is_ipv4() != self.local.is_ipv4() {
            self.stats.refused_paths += 1;
            return None;
        }
        // Our side of every path is the one socket, as a host candidate.
        let ours = priority(CandidateKind::Host, u16::MAX);
        let priority = match self.role {
            Role::Controlling => pair_priority(ours, remote_priority),
            Role::Controlled => pair_priority(remote_priority, ours),
        };
        self.paths.push(Path {
            remote: addr,
            kind,
            priority,
            state: PathState::Waiting,
            nominated_by_peer: false,
        });
        Some(self.paths.len() - 1)
    }

    fn best_waiting(&self) -> Option<usize> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PathState::Waiting)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i)
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, tx: TxId, prio: u32, nominate: bool) {
        // Always answered, also once connected: the peer may still need it.
        self.transmits.push_back(Transmit {
            local: self.local,
            remote: from,
            payload: stun::check_success(tx, &self.key, from),
        });
        self.stats.checks_answered += 1;
        if self.finished() {
            return;
        }
        let Some(i) = self.learn(from, CandidateKind::PeerReflexive, prio) else {
            return;
        };
        if nominate && self.role == Role::Controlled {
            self.paths[i].nominated_by_peer = true;
        }
        match self.paths[i].state {
            PathState::Succeeded => self.maybe_connect(i),
            PathState::InProgress => {}
            // A triggered check: the peer's packet just came through, so
            // ours will too, now.
            PathState::Waiting | PathState::Failed => {
                self.paths[i].state = PathState::InProgress;
                self.start_check(now, from, false);
            }
        }
    }

    fn on_success(&mut self, now: Instant, tx: TxId) {
        let Some(flight) = self.in_flight.remove(&tx) else {
            self.stats.stray += 1;
            return;
        };
        if self.finished() {
            return;
        }
        let Some(i) = self.paths.iter().position(|p| p.remote == flight.remote) else {
            return;
        };
        self.paths[i].state = PathState::Succeeded;
        match self.role {
            Role::Controlling if flight.nominate => self.connect(i),
            Role::Controlling if !self.nominating => {
                self.nominating = true;
                self.start_check(now, flight.remote, true);
            }
            Role::Controlling => {}
            Role::Controlled => self.maybe_connect(i),
        }
    }

    fn maybe_connect(&mut self, i: usize) {
        if self.paths[i].nominated_by_peer && self.paths[i].state == PathState::Succeeded {
            self.connect(i);
        }
    }

    fn connect(&mut self, i: usize) {
        let (remote, kind) = (self.paths[i].remote, self.paths[i].kind);
        self.state = TraversalState::Connected { remote };
        self.in_flight.clear();
        self.linger_left = self.config.linger;
        self.events.push_back(TraversalEvent::Connected {
            local: self.local,
            remote,
            kind,
        });
    }

    fn fail(&mut self, why: FailReason) {
        self.state = TraversalState::DirectFailed(why);
        self.in_flight.clear();
        self.events.push_back(TraversalEvent::Failed(why));
    }

    fn fresh_tx(&mut self) -> TxId {
        let bits = (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64());
        TxId::new(bits)
    }

    fn start_check(&mut self, now: Instant, remote: SocketAddr, nominate: bool) {
        let tx = self.fresh_tx();
        self.in_flight.insert(
            tx,
            InFlight {
                remote,
                nominate,
                sends: 1,
                rto: self.config.check_rto,
                next: now + self.config.check_rto,
            },
        );
        self.send_check(tx, remote, nominate);
    }

    fn retransmit(&mut self, now: Instant, tx: TxId) {
        let Some(mut f) = self.in_flight.get(&tx).copied() else {
            return;
        };
        if f.sends >= self.config.check_sends {
            self.in_flight.remove(&tx);
            if f.nominate {
                self.nominating = false;
            }
            // The path fails only if no other check of it is in flight.
            let others = self.in_flight.values().any(|o| o.remote == f.remote);
            if let Some(p) = self.paths.iter_mut().find(|p| p.remote == f.remote)
                && !others
                && p.state == PathState::InProgress
            {
                p.state = PathState::Failed;
            }
            return;
        }
        f.sends += 1;
        f.rto = (f.rto * 2).min(self.config.max_rto);
        f.next = now + f.rto;
        self.in_flight.insert(tx, f);
        self.send_check(tx, f.remote, f.nominate);
    }

    fn send_check(&mut self, tx: TxId, remote: SocketAddr, nominate: bool) {
        let ours = priority(CandidateKind::PeerReflexive, u16::MAX);
        self.transmits.push_back(Transmit {
            local: self.local,
            remote,
            payload: stun::check_request(tx, &self.key, ours, nominate),
        });
        self.stats.checks_sent += 1;
    }

    /// Postconditions of every input.
    fn check(&self) {
        debug_assert!(self.paths.len() <= MAX_PATHS);
        // One check in flight per path at most, plus one nomination.
        debug_assert!(self.in_flight.len() <= self.paths.len() + 1);
        debug_assert!(
            self.in_flight
                .values()
                .all(|f| self.paths.iter().any(|p| p.remote == f.remote))
        );
        if let TraversalState::Connected { remote } = self.state {
            debug_assert!(
                self.paths
                    .iter()
                    .any(|p| p.remote == remote && p.state == PathState::Succeeded),
                "connected on a path that never answered"
            );
            debug_assert!(self.in_flight.is_empty());
        }
        if matches!(self.state, TraversalState::DirectFailed(_)) {
            debug_assert!(self.in_flight.is_empty());
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
    fn priorities_follow_the_seed_and_rfc_8445() {
        assert_eq!(
            priority(CandidateKind::Host, 65535),
            (126 << 24) | (65535 << 8) | 255
        );
        assert_eq!(priority(CandidateKind::Relay, 0), 255);
        assert!(priority(CandidateKind::Host, 0) > priority(CandidateKind::PeerReflexive, 65535));
        // Symmetric in the roles except for the tie-break bit.
        assert_eq!(pair_priority(5, 9), (5 << 32) + 18);
        assert_eq!(pair_priority(9, 5), (5 << 32) + 18 + 1);
    }

    /// Two peers on one network, no NAT: the controlling side nominates,
    /// both connect on each other's host candidate; a forged check is
    /// neither answered nor learned from.
    #[test]
    fn two_peers_on_a_lan_connect_and_a_forger_is_ignored() {
        let key = CheckKey::new(&[1; 32]);
        let (a_addr, b_addr) = (addr("192.168.1.2:5000"), addr("192.168.1.3:6000"));
        let config = TraversalConfig::default();
        let mut a = Traversal::new(
            config,
            Role::Controlled,
            key.clone(),
            a_addr,
            vec![a_addr],
            Rng::from_u64(1),
        );
        let mut b = Traversal::new(
            config,
            Role::Controlling,
            key,
            b_addr,
            vec![b_addr],
            Rng::from_u64(2),
        );
        let mut now = Instant::ZERO;
        a.start(now, None);
        b.start(now, None);
        let cands = |t: &mut Traversal| match t.poll_event() {
            Some(TraversalEvent::LocalCandidates(c)) => c,
            other => panic!("expected candidates, got {other:?}"),
        };
        let (ca, cb) = (cands(&mut a), cands(&mut b));
        a.add_remote_candidates(now, &cb);
        b.add_remote_candidates(now, &ca);
        let forger = addr("192.168.1.66:666");
        let forged = stun::check_request(TxId::new(5), &CheckKey::new(&[2; 32]), 1, true);
        assert!(a.handle_datagram(now, forger, &forged));
        for _ in 0..200 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                assert_ne!(t.remote, forger, "a forged check was answered");
                moved = true;
                b.handle_datagram(now, t.local, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                moved = true;
                a.handle_datagram(now, t.local, &t.payload);
            }
            if !moved {
                let Some(next) = [a.poll_timeout(), b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                else {
                    break;
                };
                now = next;
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
        }
        assert_eq!(a.state(), TraversalState::Connected { remote: b_addr });
        assert_eq!(b.state(), TraversalState::Connected { remote: a_addr });
        assert_eq!(a.stats().unauthenticated, 1, "the forgery was counted");
        assert!(now < Instant::ZERO + Duration::from_secs(1), "took {now:?}");
    }
}
