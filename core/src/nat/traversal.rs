//! Hole punching: candidates and authenticated connectivity checks (seed
//! 002 §7, after RFC 8445), on the socket that will carry the connection.
//!
//! States: `Initial` → `Probing` (asking the rendezvous for our public
//! address) → `Candidates` (checks in both directions) → `Connected`, or
//! `DirectFailed` at the deadline or once every path has failed. Two
//! deviations from the seed, on purpose: a rendezvous that does not answer
//! does not end the traversal (host candidates still work on a LAN), and
//! `RelayFallback` arrives with relays (the next issue).
//!
//! Gathering asks the rendezvous twice, at its two ports: if the two
//! answers name different public ports, our NAT's mapping varies with the
//! destination (endpoint-dependent, "symmetric"), and the peer is told so
//! with our candidates ([`Offer`]). With one side symmetric and the other
//! not, ordinary checks cannot find a path through a port-restricted
//! filter, and [birthday punching](super::birthday) starts after a short
//! grace.
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
use super::birthday::{BirthdayConfig, PortWalk};
use super::stun::{self, Change, Check, CheckKey, TxId};
use crate::pair::Transmit;
use crate::{Instant, Rng};
use core::net::SocketAddr;
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Remote candidates and peer-reflexive addresses kept at most.
pub const MAX_PATHS: usize = 32;
/// Birthday datagrams whose answer is still awaited, at most (the oldest
/// is forgotten first: at 800 a second this is over a second of them).
const PROBES_KEPT: usize = 1024;
/// How long gathering waits for the second answer that tells whether our
/// mapping varies; without it, it is taken not to.
const CLASSIFY_WAIT: Duration = Duration::from_secs(1);

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

/// What one side tells the other through the rendezvous.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Offer {
    /// Where we may be reached.
    pub candidates: Vec<Candidate>,
    /// Our NAT gives each destination its own public port (the two
    /// rendezvous ports saw different ones): our server-reflexive
    /// candidate only works for the rendezvous.
    pub mapping_varies: bool,
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
    /// Birthday punching, for one symmetric side.
    pub birthday: BirthdayConfig,
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
            birthday: BirthdayConfig::default(),
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
        /// Our socket on it.
        local: SocketAddr,
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
    /// Both NATs map each destination to its own port: no direct path can
    /// be punched (a relay can carry it, in the next issue).
    BothSymmetric,
    /// A path was punched, but the two sides did not agree to use it: the
    /// pair's handover through the rendezvous failed.
    NotTaken,
}

/// What the traversal tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraversalEvent {
    /// Our candidates, for the peer (through the rendezvous).
    LocalCandidates(Offer),
    /// Birthday punching wants this many more UDP sockets, bound like the
    /// first: pass them to [`Traversal::add_sprayers`] (fewer is fine).
    NeedSprayers(u16),
    /// A path works; its socket may now carry the connection.
    Connected {
        /// Our socket (the first one, or a sprayer).
        local: SocketAddr,
        /// The peer's address on the path.
        remote: SocketAddr,
        /// How the peer's address was learned.
        kind: CandidateKind,
        /// Found by birthday punching.
        birthday: bool,
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
    /// Birthday datagrams sent (scan probes or sprays).
    pub birthday_sent: u64,
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
    local: SocketAddr,
    remote: SocketAddr,
    kind: CandidateKind,
    priority: u64,
    state: PathState,
    /// The peer nominated this path (controlled side).
    nominated_by_peer: bool,
    /// Found by birthday punching (a sprayer's, or a scan's find).
    birthday: bool,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    local: SocketAddr,
    remote: SocketAddr,
    nominate: bool,
    sends: u32,
    rto: Duration,
    next: Instant,
    /// When it was last sent.
    sent: Instant,
}

/// Birthday punching's part in a traversal.
#[derive(Clone, Debug)]
enum Birthday {
    /// Not (yet) needed.
    Off,
    /// Our mapping varies: our sprayers send to the peer's public address.
    Spray { target: SocketAddr, next: usize },
    /// The peer's mapping varies: walk the ports of its public IP.
    Scan {
        target: core::net::IpAddr,
        walk: PortWalk,
    },
    /// Budget spent: answers to the last bursts may still arrive until
    /// then (one `max_rto`, a check's longest wait).
    Draining(Instant),
    /// Budget spent and drained, or a path found.
    Done,
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
    /// The second gathering request (to the rendezvous's other port), and
    /// when to stop waiting for it.
    classify: Option<(TxId, Instant)>,
    /// Our public address, as the rendezvous saw it.
    public: Option<SocketAddr>,
    mapping_varies: bool,
    state: TraversalState,
    deadline: Option<Instant>,
    next_check: Instant,
    paths: Vec<Path>,
    /// The peer's offer arrived, then.
    remote_since: Option<Instant>,
    remote_varies: bool,
    /// The peer's public (server-reflexive) address of our first socket's
    /// family, from its offer: what birthday punching aims at. Kept apart
    /// from the paths, where the same address may already stand as
    /// peer-reflexive (a check from it arrived before the offer did).
    remote_public: Option<SocketAddr>,
    in_flight: BTreeMap<TxId, InFlight>,
    nominating: bool,
    linger_left: u32,
    /// `Settled` has been reported.
    settled: bool,
    birthday: Birthday,
    /// Our local address is a TURN allocation's relayed address.
    relay: bool,
    /// Our extra sockets for spraying, sorted: every datagram asks
    /// whether it arrived on one ([`Self::is_sprayer`]).
    sprayers: Vec<SocketAddr>,
    /// The IP our scan probes (once it started): a new address there is
    /// the scan's find, whichever check crossed first.
    scanned: Option<core::net::IpAddr>,
    /// Where our sprayers send (once they started): a path there, even
    /// from our first socket, is one the peer's scan opened.
    sprayed: Option<SocketAddr>,
    /// Birthday datagrams awaiting an answer, oldest first: (local, remote).
    probes: BTreeMap<TxId, (SocketAddr, SocketAddr)>,
    probe_order: VecDeque<TxId>,
    birthday_left: u32,
    next_burst: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TraversalEvent>,
    stats: TraversalStats,
}

impl Traversal {
    /// A traversal on the socket bound to `local`; `host_addrs` are the
    /// machine's own addresses: those of `local`'s IP family are that
    /// socket's host candidates; one of the other family is a second
    /// socket, bound to exactly that address, for peers of that family
    /// (IPv6 beside IPv4: no NAT to punch, usually a stateful firewall).
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
            classify: None,
            public: None,
            mapping_varies: false,
            state: TraversalState::Initial,
            deadline: None,
            next_check: Instant::ZERO,
            paths: Vec::new(),
            remote_since: None,
            remote_varies: false,
            remote_public: None,
            in_flight: BTreeMap::new(),
            nominating: false,
            linger_left: 0,
            settled: false,
            birthday: Birthday::Off,
            sprayers: Vec::new(),
            scanned: None,
            sprayed: None,
            probes: BTreeMap::new(),
            probe_order: VecDeque::new(),
            birthday_left: config.birthday.probes,
            next_burst: Instant::ZERO,
            relay: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TraversalStats::default(),
        }
    }

    /// A traversal whose one local address is `relayed`, an allocation on
    /// a TURN server: its only candidate is that relayed address (type
    /// preference 0), and what it sends from `relayed` the caller relays.
    /// Birthday punching does not apply. Start it with no rendezvous.
    pub fn relayed(
        mut config: TraversalConfig,
        role: Role,
        key: CheckKey,
        relayed: SocketAddr,
        rng: Rng,
    ) -> Self {
        config.birthday.probes = 0;
        let mut t = Traversal::new(config, role, key, relayed, Vec::new(), rng);
        t.relay = true;
        t
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
                self.flush_binding(now);
            }
            None => self.gathered(),
        }
        self.check();
    }

    /// The peer's offer, from the rendezvous. Later calls add to it.
    pub fn add_remote_candidates(&mut self, now: Instant, offer: &Offer) {
        if self.finished() {
            return;
        }
        for c in &offer.candidates {
            match self.socket_for(c.addr) {
                Some(local) => {
                    self.learn(local, c.addr, c.kind, c.priority, false);
                }
                None => self.stats.refused_paths += 1,
            }
        }
        self.remote_varies |= offer.mapping_varies;
        let public = offer.candidates.iter().find(|c| {
            c.kind == CandidateKind::ServerReflexive && c.addr.is_ipv4() == self.local.is_ipv4()
        });
        if let (None, Some(c)) = (self.remote_public, public) {
            self.remote_public = Some(c.addr);
        }
        self.remote_since.get_or_insert(now);
        self.next_check = self.next_check.max(now);
        self.check();
    }

    /// The sockets asked for with [`TraversalEvent::NeedSprayers`], bound:
    /// spraying starts from them.
    pub fn add_sprayers(&mut self, locals: &[SocketAddr]) {
        let room = usize::from(self.config.birthday.sprayers).saturating_sub(self.sprayers.len());
        self.sprayers.extend(
            locals
                .iter()
                .filter(|l| **l != self.local && l.is_ipv4() == self.local.is_ipv4())
                .take(room),
        );
        self.sprayers.sort_unstable();
        self.sprayers.dedup();
        self.check();
    }

    /// Offers a datagram that arrived on our socket `local`; returns
    /// whether it was STUN for this traversal (a check, or the
    /// rendezvous's answer).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        if !stun::looks_like_stun(datagram) || !self.owns(local) {
            return false;
        }
        match stun::decode_check(datagram, &self.key) {
            Some(Check::Request {
                tx,
                priority,
                nominate,
            }) => self.on_request(now, local, from, tx, priority, nominate),
            Some(Check::Success { tx, .. }) => self.on_success(now, tx),
            None => {
                if local == self.local && self.binding.handle_datagram(local, from, datagram) {
                    self.flush_binding(now);
                } else {
                    self.stats.unauthenticated += 1;
                }
            }
        }
        self.check();
        true
    }

    /// Retransmits, paces new checks, punches birthday bursts, lingers
    /// and ends at the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.binding.handle_timeout(now);
        self.flush_binding(now);
        if self.classify.is_some_and(|(_, until)| until <= now) {
            self.gathered();
        }
        if let TraversalState::Connected { local, remote } = self.state {
            if self.next_check <= now {
                if self.linger_left > 0 {
                    self.linger_left -= 1;
                    self.next_check = now + self.config.pace * 5;
                    let tx = self.fresh_tx();
                    self.send_check(tx, local, remote, false);
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
            let why = if self.remote_since.is_some() {
                self.no_path()
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
                .map(|p| (p.local, p.remote));
            if let Some((local, remote)) = best {
                self.nominating = true;
                self.start_check(now, local, remote, true);
            }
        }
        if self.next_check <= now {
            if let Some(i) = self.best_waiting() {
                self.paths[i].state = PathState::InProgress;
                let (local, remote) = (self.paths[i].local, self.paths[i].remote);
                self.start_check(now, local, remote, false);
            }
            self.next_check = now + self.config.pace;
        }
        self.birthday_tick(now);
        if self.remote_since.is_some()
            && !self.paths.is_empty()
            && self.paths.iter().all(|p| p.state == PathState::Failed)
            && matches!(self.birthday, Birthday::Off | Birthday::Done)
            && self.birthday_start().is_none()
        {
            self.fail(self.no_path());
        }
        self.check();
    }

    /// The next datagram to send, from one of our sockets.
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
                let classify = self.classify.map(|(_, until)| until);
                [
                    self.deadline,
                    retransmit,
                    pace,
                    classify,
                    self.birthday_due(),
                ]
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

    /// Whether it may still punch by birthday: running, with a budget.
    pub fn may_birthday(&self) -> bool {
        !self.finished() && self.config.birthday.probes > 0
    }

    /// Counters.
    pub fn stats(&self) -> TraversalStats {
        self.stats
    }

    /// Our sockets: the first, the other family's (if any), then the
    /// sprayers.
    pub fn locals(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        core::iter::once(self.local)
            .chain(self.other_family())
            .chain(self.sprayers.iter().copied())
    }

    /// The socket of the other IP family: a host address of that family
    /// is a socket of its own (the first socket cannot reach it).
    fn other_family(&self) -> Option<SocketAddr> {
        self.host_addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() != self.local.is_ipv4())
    }

    /// Our socket for a peer address: the first one, or the one of the
    /// address's family.
    fn socket_for(&self, remote: SocketAddr) -> Option<SocketAddr> {
        if remote.is_ipv4() == self.local.is_ipv4() {
            Some(self.local)
        } else {
            self.other_family()
        }
    }

    fn owns(&self, local: SocketAddr) -> bool {
        local == self.local || self.is_sprayer(local) || self.other_family() == Some(local)
    }

    fn is_sprayer(&self, local: SocketAddr) -> bool {
        self.sprayers.binary_search(&local).is_ok()
    }

    fn finished(&self) -> bool {
        matches!(
            self.state,
            TraversalState::Connected { .. } | TraversalState::DirectFailed(_)
        )
    }

    fn flush_binding(&mut self, now: Instant) {
        while let Some(t) = self.binding.poll_transmit() {
            self.transmits.push_back(t);
        }
        while let Some(event) = self.binding.poll_event() {
            match event {
                BindingEvent::Mapped {
                    tx,
                    mapped,
                    from,
                    other,
                    ..
                } if Some(tx) == self.gather => {
                    self.gather = None;
                    self.public = Some(mapped);
                    // The rendezvous's other port tells whether our
                    // mapping depends on the destination.
                    let second = other
                        .map(|o| stun::other_address(o, from))
                        .filter(|o| *o != from && o.is_ipv4() == from.is_ipv4())
                        .and_then(|o| self.binding.request(now, self.local, o, Change::NONE).ok());
                    match second {
                        Some(tx) => self.classify = Some((tx, now + CLASSIFY_WAIT)),
                        None => self.gathered(),
                    }
                }
                BindingEvent::Mapped { tx, mapped, .. }
                    if self.classify.is_some_and(|(c, _)| c == tx) =>
                {
                    self.mapping_varies = self.public != Some(mapped);
                    self.gathered();
                }
                BindingEvent::Failed { tx, .. }
                    if Some(tx) == self.gather || self.classify.is_some_and(|(c, _)| c == tx) =>
                {
                    self.gather = None;
                    self.gathered();
                }
                _ => {}
            }
        }
        while let Some(t) = self.binding.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    /// Gathering ended (with our public address, if the rendezvous gave
    /// it): our candidates go to the peer.
    fn gathered(&mut self) {
        self.classify = None;
        let mut candidates: Vec<Candidate> = self
            .host_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let pref = u16::MAX.saturating_sub(u16::try_from(i).unwrap_or(u16::MAX));
                Candidate::new(CandidateKind::Host, *a, pref)
            })
            .collect();
        if let Some(public) = self.public.filter(|p| !self.host_addrs.contains(p)) {
            candidates.push(Candidate::new(
                CandidateKind::ServerReflexive,
                public,
                u16::MAX,
            ));
        }
        if self.relay {
            candidates.push(Candidate::new(CandidateKind::Relay, self.local, u16::MAX));
        }
        if self.state == TraversalState::Initial || self.state == TraversalState::Probing {
            self.state = TraversalState::Candidates;
        }
        self.events
            .push_back(TraversalEvent::LocalCandidates(Offer {
                candidates,
                mapping_varies: self.mapping_varies,
            }));
    }

    /// A peer address, from its candidates or a check that came from it.
    fn learn(
        &mut self,
        local: SocketAddr,
        addr: SocketAddr,
        kind: CandidateKind,
        remote_priority: u32,
        birthday: bool,
    ) -> Option<usize> {
        if let Some(i) = self
            .paths
            .iter()
            .position(|p| p.local == local && p.remote == addr)
        {
            return Some(i);
        }
        if self.paths.len() >= MAX_PATHS || addr.is_ipv4() != local.is_ipv4() {
            self.stats.refused_paths += 1;
            return None;
        }
        // Our side of a path is a socket, as a host candidate, or the
        // relayed address.
        let our_kind = if self.relay {
            CandidateKind::Relay
        } else {
            CandidateKind::Host
        };
        let ours = priority(our_kind, u16::MAX);
        let priority = match self.role {
            Role::Controlling => pair_priority(ours, remote_priority),
            Role::Controlled => pair_priority(remote_priority, ours),
        };
        self.paths.push(Path {
            local,
            remote: addr,
            kind,
            priority,
            state: PathState::Waiting,
            nominated_by_peer: false,
            birthday: birthday || self.is_sprayer(local) || self.scanned == Some(addr.ip()),
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

    fn on_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        tx: TxId,
        prio: u32,
        nominate: bool,
    ) {
        // Always answered, also once connected: the peer may still need it.
        self.transmits.push_back(Transmit {
            local,
            remote: from,
            payload: stun::check_success(tx, &self.key, from),
        });
        self.stats.checks_answered += 1;
        if self.finished() {
            return;
        }
        let Some(i) = self.learn(local, from, CandidateKind::PeerReflexive, prio, false) else {
            return;
        };
        if nominate && self.role == Role::Controlled {
            self.paths[i].nominated_by_peer = true;
        }
        match self.paths[i].state {
            PathState::Succeeded => self.maybe_connect(i),
            // A check of this path is backing off (its first sends were
            // filtered before the peer's NAT had seen us): send it again
            // now, as the same transaction, rather than wait out its
            // timer; at most once a pace, so two sides cannot volley.
            PathState::InProgress => {
                let stale = self.in_flight.iter().find(|(_, f)| {
                    !f.nominate
                        && f.local == local
                        && f.remote == from
                        && now >= f.sent + self.config.pace
                });
                if let Some((tx, f)) = stale.map(|(tx, f)| (*tx, *f)) {
                    self.in_flight.insert(tx, InFlight { sent: now, ..f });
                    self.send_check(tx, local, from, false);
                }
            }
            // A triggered check: the peer's packet just came through, so
            // ours will too, now.
            PathState::Waiting | PathState::Failed => {
                self.paths[i].state = PathState::InProgress;
                self.start_check(now, local, from, false);
            }
        }
    }

    fn on_success(&mut self, now: Instant, tx: TxId) {
        let flight = match self.in_flight.remove(&tx) {
            Some(f) => Some((f.local, f.remote, f.nominate)),
            None => self.probes.remove(&tx).map(|(l, r)| (l, r, false)),
        };
        let Some((local, remote, nominate)) = flight else {
            self.stats.stray += 1;
            return;
        };
        if self.finished() {
            return;
        }
        let i = match self
            .paths
            .iter()
            .position(|p| p.local == local && p.remote == remote)
        {
            Some(i) => i,
            // A birthday probe found a path.
            None => match self.learn(local, remote, CandidateKind::PeerReflexive, 0, true) {
                Some(i) => i,
                None => return,
            },
        };
        self.paths[i].state = PathState::Succeeded;
        match self.role {
            Role::Controlling if nominate => self.connect(i),
            Role::Controlling if !self.nominating => {
                self.nominating = true;
                self.start_check(now, local, remote, true);
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
        let p = &self.paths[i];
        let (local, remote, kind) = (p.local, p.remote, p.kind);
        let birthday = p.birthday || self.sprayed == Some(remote);
        self.state = TraversalState::Connected { local, remote };
        self.in_flight.clear();
        self.end_birthday();
        self.linger_left = self.config.linger;
        self.events.push_back(TraversalEvent::Connected {
            local,
            remote,
            kind,
            birthday,
        });
    }

    fn fail(&mut self, why: FailReason) {
        if self.finished() {
            return;
        }
        self.state = TraversalState::DirectFailed(why);
        self.in_flight.clear();
        self.end_birthday();
        self.events.push_back(TraversalEvent::Failed(why));
    }

    /// Why no path was found, once none was.
    fn no_path(&self) -> FailReason {
        if self.mapping_varies && self.remote_varies {
            FailReason::BothSymmetric
        } else {
            FailReason::NoPathAnswered
        }
    }

    /// When birthday punching starts, if it applies: exactly one side's
    /// mapping varies, both sides are behind a NAT (each has a
    /// server-reflexive address), and the ordinary checks had their grace.
    fn birthday_start(&self) -> Option<Instant> {
        let since = self.remote_since?;
        let natted = self.public.is_some_and(|p| !self.host_addrs.contains(&p));
        (matches!(self.birthday, Birthday::Off)
            && self.config.birthday.probes > 0
            && self.mapping_varies != self.remote_varies
            && natted
            && self.remote_public.is_some())
        .then_some(since + self.config.birthday.after)
    }

    fn birthday_due(&self) -> Option<Instant> {
        match self.birthday {
            Birthday::Off => self.birthday_start(),
            Birthday::Spray { .. } if self.sprayers.is_empty() => None,
            Birthday::Spray { .. } | Birthday::Scan { .. } => Some(self.next_burst),
            Birthday::Draining(until) => Some(until),
            Birthday::Done => None,
        }
    }

    fn birthday_tick(&mut self, now: Instant) {
        if let Some(start) = self.birthday_start() {
            let Some(target) = self.remote_public.filter(|_| start <= now) else {
                return;
            };
            self.next_burst = now;
            self.birthday = if self.mapping_varies {
                self.events
                    .push_back(TraversalEvent::NeedSprayers(self.config.birthday.sprayers));
                self.sprayed = Some(target);
                Birthday::Spray { target, next: 0 }
            } else {
                self.scanned = Some(target.ip());
                Birthday::Scan {
                    target: target.ip(),
                    walk: PortWalk::new(&mut self.rng, target.port()),
                }
            };
        }
        if let Birthday::Draining(until) = self.birthday {
            if until <= now {
                self.birthday = Birthday::Done;
            }
            return;
        }
        if self.next_burst > now {
            return;
        }
        self.next_burst = now + self.config.birthday.tick;
        let drained = Birthday::Draining(now + self.config.max_rto);
        for _ in 0..self.config.birthday.burst {
            if self.birthday_left == 0 {
                self.birthday = drained;
                return;
            }
            let (local, remote) = match &mut self.birthday {
                Birthday::Spray { target, next } => {
                    let Some(local) = self.sprayers.get(*next % self.sprayers.len().max(1)) else {
                        return;
                    };
                    *next += 1;
                    (*local, *target)
                }
                Birthday::Scan { target, walk } => match walk.next() {
                    Some(port) => (self.local, SocketAddr::new(*target, port)),
                    None => {
                        self.birthday = drained;
                        return;
                    }
                },
                Birthday::Off | Birthday::Draining(_) | Birthday::Done => return,
            };
            self.birthday_left -= 1;
            let tx = self.fresh_tx();
            if self.probe_order.len() >= PROBES_KEPT
                && let Some(old) = self.probe_order.pop_front()
            {
                self.probes.remove(&old);
            }
            self.probes.insert(tx, (local, remote));
            self.probe_order.push_back(tx);
            self.stats.birthday_sent += 1;
            self.send_check(tx, local, remote, false);
        }
    }

    fn end_birthday(&mut self) {
        if !matches!(self.birthday, Birthday::Off) {
            self.birthday = Birthday::Done;
        }
        self.probes.clear();
        self.probe_order.clear();
    }

    fn fresh_tx(&mut self) -> TxId {
        TxId::draw(&mut self.rng)
    }

    fn start_check(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, nominate: bool) {
        let tx = self.fresh_tx();
        self.in_flight.insert(
            tx,
            InFlight {
                local,
                remote,
                nominate,
                sends: 1,
                rto: self.config.check_rto,
                next: now + self.config.check_rto,
                sent: now,
            },
        );
        self.send_check(tx, local, remote, nominate);
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
            let others = self
                .in_flight
                .values()
                .any(|o| o.local == f.local && o.remote == f.remote);
            if let Some(p) = self
                .paths
                .iter_mut()
                .find(|p| p.local == f.local && p.remote == f.remote)
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
        f.sent = now;
        self.in_flight.insert(tx, f);
        self.send_check(tx, f.local, f.remote, f.nominate);
    }

    fn send_check(&mut self, tx: TxId, local: SocketAddr, remote: SocketAddr, nominate: bool) {
        let ours = priority(CandidateKind::PeerReflexive, u16::MAX);
        self.transmits.push_back(Transmit {
            local,
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
        debug_assert!(self.in_flight.values().all(|f| {
            self.paths
                .iter()
                .any(|p| p.local == f.local && p.remote == f.remote)
        }));
        debug_assert!(self.sprayers.len() <= usize::from(self.config.birthday.sprayers));
        debug_assert!(
            self.sprayers.windows(2).all(|w| w[0] < w[1]),
            "sorted, once each"
        );
        // The order may still name probes answered since.
        debug_assert!(self.probes.len() <= self.probe_order.len());
        debug_assert!(self.probe_order.len() <= PROBES_KEPT);
        debug_assert!(self.stats.birthday_sent <= u64::from(self.config.birthday.probes));
        debug_assert!(self.paths.iter().all(|p| self.owns(p.local)));
        if let TraversalState::Connected { local, remote } = self.state {
            debug_assert!(
                self.paths.iter().any(|p| p.local == local
                    && p.remote == remote
                    && p.state == PathState::Succeeded),
                "connected on a path that never answered"
            );
            debug_assert!(self.in_flight.is_empty() && self.probes.is_empty());
        }
        if matches!(self.state, TraversalState::DirectFailed(_)) {
            debug_assert!(self.in_flight.is_empty() && self.probes.is_empty());
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

    /// Two started traversals on no NAT that have exchanged offers: `a`
    /// controlled on sockets `a_socks`, `b` controlling on `b_socks` (the
    /// first of each is its main socket); and `a`'s offer.
    fn two_peers(
        key: &CheckKey,
        a_socks: &[SocketAddr],
        b_socks: &[SocketAddr],
    ) -> (Traversal, Traversal, Offer) {
        let config = TraversalConfig::default();
        let side = |role, socks: &[SocketAddr], seed| {
            let mut t = Traversal::new(
                config,
                role,
                key.clone(),
                socks[0],
                socks.to_vec(),
                Rng::from_u64(seed),
            );
            t.start(Instant::ZERO, None);
            let offer = match t.poll_event() {
                Some(TraversalEvent::LocalCandidates(o)) => o,
                other => panic!("expected candidates, got {other:?}"),
            };
            (t, offer)
        };
        let (mut a, oa) = side(Role::Controlled, a_socks, 1);
        let (mut b, ob) = side(Role::Controlling, b_socks, 2);
        a.add_remote_candidates(Instant::ZERO, &ob);
        b.add_remote_candidates(Instant::ZERO, &oa);
        (a, b, oa)
    }

    /// Runs `a` and `b` on a flat, instant network that delivers what
    /// `pass` lets through, until nothing is pending (at most 400 rounds);
    /// returns the time it ended at.
    fn run_flat(
        a: &mut Traversal,
        b: &mut Traversal,
        mut pass: impl FnMut(&Transmit) -> bool,
    ) -> Instant {
        let mut now = Instant::ZERO;
        for _ in 0..400 {
            let mut moved = false;
            for a_sends in [true, false] {
                let (from, to) = if a_sends {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                while let Some(t) = from.poll_transmit() {
                    moved = true;
                    if pass(&t) {
                        to.handle_datagram(now, t.remote, t.local, &t.payload);
                    }
                }
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
        now
    }

    /// Two peers on one network, no NAT: the controlling side nominates,
    /// both connect on each other's host candidate; a forged check is
    /// neither answered nor learned from.
    #[test]
    fn two_peers_on_a_lan_connect_and_a_forger_is_ignored() {
        let (a_addr, b_addr) = (addr("192.168.1.2:5000"), addr("192.168.1.3:6000"));
        let (mut a, mut b, _) = two_peers(&CheckKey::new(&[1; 32]), &[a_addr], &[b_addr]);
        let forger = addr("192.168.1.66:666");
        let forged = stun::check_request(TxId::new(5), &CheckKey::new(&[2; 32]), 1, true);
        assert!(a.handle_datagram(Instant::ZERO, a_addr, forger, &forged));
        let now = run_flat(&mut a, &mut b, |t| {
            assert_ne!(t.remote, forger, "a forged check was answered");
            true
        });
        assert_eq!(
            a.state(),
            TraversalState::Connected {
                local: a_addr,
                remote: b_addr
            }
        );
        assert_eq!(
            b.state(),
            TraversalState::Connected {
                local: b_addr,
                remote: a_addr
            }
        );
        assert_eq!(a.stats().unauthenticated, 1, "the forgery was counted");
        assert!(now < Instant::ZERO + Duration::from_secs(1), "took {now:?}");
    }

    /// Each peer has an IPv4 socket and an IPv6 one; IPv4 between them is
    /// dropped (two NATs with no way through, say), IPv6 passes: the IPv6
    /// host candidates are checked like any other and the two connect
    /// over IPv6, on the IPv6 sockets.
    #[test]
    fn ipv6_host_candidates_connect_where_ipv4_cannot() {
        let a4 = addr("10.1.0.2:5000");
        let a6 = addr("[2001:db8:1::2]:5001");
        let b4 = addr("10.2.0.2:6000");
        let b6 = addr("[2001:db8:2::2]:6001");
        let (mut a, mut b, oa) = two_peers(&CheckKey::new(&[4; 32]), &[a4, a6], &[b4, b6]);
        assert!(oa.candidates.iter().any(|c| c.addr == a6), "{oa:?}");
        let mut dropped = 0;
        run_flat(&mut a, &mut b, |t| {
            assert_eq!(
                t.local.is_ipv4(),
                t.remote.is_ipv4(),
                "sent from a socket of the other family"
            );
            dropped += u32::from(t.remote.is_ipv4());
            t.remote.is_ipv6()
        });
        assert!(dropped > 0, "the IPv4 paths were tried");
        assert_eq!(
            a.state(),
            TraversalState::Connected {
                local: a6,
                remote: b6
            }
        );
        assert_eq!(
            b.state(),
            TraversalState::Connected {
                local: b6,
                remote: a6
            }
        );
        assert_eq!(a.locals().collect::<Vec<_>>(), [a4, a6]);
    }

    use crate::nat::model::NatModel;
    use crate::nat::{Filtering, Mapping};
    use core::net::IpAddr;

    /// Where the STUN stand-in listens: one IP, two ports.
    const RV: [&str; 2] = ["198.51.100.1:3478", "198.51.100.1:3479"];

    /// Two traversals behind NATs of the given behaviours, with a STUN
    /// stand-in at two ports and a 10 ms network, run until both have
    /// ended and settled (or 20 s have passed).
    fn punch_behind(
        host: (Mapping, Filtering),
        mount: (Mapping, Filtering),
        seed: u64,
    ) -> [(Traversal, Vec<TraversalEvent>); 2] {
        let key = CheckKey::new(&[7; 32]);
        let rv: Vec<SocketAddr> = RV.iter().map(|a| addr(a)).collect();
        let insides = [addr("10.1.0.2:40000"), addr("10.2.0.2:40000")];
        let nats = [host, mount];
        let mut models: Vec<NatModel> = (0..2)
            .map(|i| {
                let (m, f) = nats[i];
                let public: IpAddr = ["203.0.113.1", "203.0.113.2"][i].parse().expect("ip");
                let nat = NatModel::new(m, f, public, 20000);
                if m == Mapping::AddressAndPortDependent {
                    nat.with_random_ports(Rng::from_u64(seed + 100 * i as u64))
                } else {
                    nat
                }
            })
            .collect();
        let mut sides: Vec<(Traversal, Vec<TraversalEvent>)> = (0..2)
            .map(|i| {
                let role = [Role::Controlled, Role::Controlling][i];
                let t = Traversal::new(
                    TraversalConfig::default(),
                    role,
                    key.clone(),
                    insides[i],
                    vec![insides[i]],
                    Rng::from_u64(seed * 2 + i as u64),
                );
                (t, Vec::new())
            })
            .collect();
        let mut now = Instant::ZERO;
        for (t, _) in &mut sides {
            t.start(now, Some(rv[0]));
        }
        // (arrival, sequence) → (from, to public, payload)
        let mut wire: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, bytes::Bytes)> =
            BTreeMap::new();
        let mut seq = 0u64;
        let delay = Duration::from_millis(10);
        let end = Instant::ZERO + Duration::from_secs(20);
        while now < end {
            for i in 0..2 {
                let mut sent = 0;
                while let Some(t) = sides[i].0.poll_transmit() {
                    sent += 1;
                    let src = models[i].outbound(now, t.local, t.remote);
                    seq += 1;
                    wire.insert((now + delay, seq), (src, t.remote, t.payload));
                }
                let burst = usize::from(TraversalConfig::default().birthday.burst);
                assert!(sent <= burst + 4, "{sent} datagrams for one input");
                while let Some(e) = sides[i].0.poll_event() {
                    match &e {
                        TraversalEvent::LocalCandidates(offer) => {
                            let offer = offer.clone();
                            sides[1 - i].0.add_remote_candidates(now, &offer);
                        }
                        TraversalEvent::NeedSprayers(n) => {
                            let ip = insides[i].ip();
                            let socks: Vec<SocketAddr> =
                                (0..*n).map(|k| SocketAddr::new(ip, 50000 + k)).collect();
                            sides[i].0.add_sprayers(&socks);
                        }
                        _ => {}
                    }
                    sides[i].1.push(e);
                }
            }
            let done = sides.iter().all(|(t, ev)| {
                matches!(t.state(), TraversalState::DirectFailed(_))
                    || ev.contains(&TraversalEvent::Settled)
            });
            if done {
                break;
            }
            let next = sides
                .iter()
                .filter_map(|(t, _)| t.poll_timeout())
                .chain(wire.keys().next().map(|(t, _)| *t))
                .min()
                .expect("something is pending");
            now = now.max(next);
            if let Some(((at, _), _)) = wire.first_key_value()
                && *at <= now
            {
                let Some((_, (from, to, payload))) = wire.pop_first() else {
                    break;
                };
                if let Some(port) = rv.iter().position(|a| *a == to) {
                    if let Ok(stun::Stun::Request { tx, .. }) = stun::decode(&payload) {
                        seq += 1;
                        let other = rv[1 - port];
                        let answer = stun::binding_success(tx, from, Some(other), to);
                        wire.insert((now + delay, seq), (to, from, answer));
                    }
                    continue;
                }
                for i in 0..2 {
                    if models[i].public_ip == to.ip()
                        && let Some(inside) = models[i].inbound(now, from, to.port())
                    {
                        sides[i].0.handle_datagram(now, inside, from, &payload);
                    }
                }
            } else {
                for (t, _) in &mut sides {
                    if t.poll_timeout().is_some_and(|d| d <= now) {
                        t.handle_timeout(now);
                    }
                }
            }
        }
        let [a, b]: [(Traversal, Vec<TraversalEvent>); 2] = sides
            .try_into()
            .unwrap_or_else(|_| unreachable!("two sides"));
        [a, b]
    }

    fn connected(events: &[TraversalEvent]) -> Option<(SocketAddr, bool)> {
        events.iter().find_map(|e| match e {
            TraversalEvent::Connected {
                local, birthday, ..
            } => Some((*local, *birthday)),
            _ => None,
        })
    }

    const PORT_RESTRICTED: (Mapping, Filtering) = (
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    );
    const SYMMETRIC: (Mapping, Filtering) = (
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    );

    /// A port-restricted NAT against a symmetric one, both ways round:
    /// ordinary checks cannot pass, birthday punching finds a path, on a
    /// sprayer of the symmetric side, within the budget.
    #[test]
    fn birthday_punching_joins_a_symmetric_and_a_port_restricted_nat() {
        for seed in 0..4 {
            for (host, mount, sym) in [
                (PORT_RESTRICTED, SYMMETRIC, 1),
                (SYMMETRIC, PORT_RESTRICTED, 0),
            ] {
                let sides = punch_behind(host, mount, seed);
                let ends: Vec<_> = sides.iter().map(|(_, ev)| connected(ev)).collect();
                let (_, birthday) = ends[sym].expect("the symmetric side connected");
                assert!(birthday, "found by birthday punching");
                let (other_local, _) = ends[1 - sym].expect("the other side connected");
                assert_eq!(other_local.port(), 40000, "the scan's own socket");
                let cfg = TraversalConfig::default().birthday;
                for (t, _) in &sides {
                    assert!(t.stats().birthday_sent <= u64::from(cfg.probes));
                    assert!(t.stats().birthday_sent > 0);
                }
            }
        }
    }

    /// Answers the rendezvous's Binding requests among `t`'s transmits at
    /// once (from its port `i` the mapped address is `publics[i]`), and
    /// returns the other transmits.
    fn answer_rendezvous(
        t: &mut Traversal,
        now: Instant,
        publics: [SocketAddr; 2],
    ) -> Vec<Transmit> {
        let rv: Vec<SocketAddr> = RV.iter().map(|a| addr(a)).collect();
        let mut others = Vec::new();
        while let Some(tx) = t.poll_transmit() {
            match (
                rv.iter().position(|a| *a == tx.remote),
                stun::decode(&tx.payload),
            ) {
                (Some(i), Ok(stun::Stun::Request { tx: id, .. })) => {
                    let answer = stun::binding_success(id, publics[i], Some(rv[1 - i]), tx.remote);
                    t.handle_datagram(now, tx.local, tx.remote, &answer);
                }
                _ => others.push(tx),
            }
        }
        others
    }

    /// The scan's last burst still gets a check's longest wait for its
    /// answers: one that arrives then connects, instead of finding the
    /// traversal already failed.
    #[test]
    fn the_last_birthday_burst_is_given_time_to_be_answered() {
        let key = CheckKey::new(&[3; 32]);
        let local = addr("10.0.0.2:40000");
        let (public, peer) = (addr("203.0.113.9:20000"), addr("198.51.100.7:30000"));
        let config = TraversalConfig::default();
        let mut t = Traversal::new(
            config,
            Role::Controlling,
            key.clone(),
            local,
            vec![local],
            Rng::from_u64(5),
        );
        let mut now = Instant::ZERO;
        t.start(now, Some(addr(RV[0])));
        // The scan's probes: transaction, port probed, when.
        let mut probes = Vec::new();
        let end = Instant::ZERO + Duration::from_secs(30);
        while now < end && t.stats().birthday_sent < u64::from(config.birthday.probes) {
            for tx in answer_rendezvous(&mut t, now, [public; 2]) {
                if let Ok(stun::Stun::Request { tx: id, .. }) = stun::decode(&tx.payload)
                    && tx.remote != peer
                {
                    probes.push((id, tx.remote, now));
                }
            }
            while let Some(e) = t.poll_event() {
                if matches!(e, TraversalEvent::LocalCandidates(_)) {
                    // The peer is behind a NAT whose mapping varies.
                    let offer = Offer {
                        candidates: vec![Candidate::new(CandidateKind::ServerReflexive, peer, 0)],
                        mapping_varies: true,
                    };
                    t.add_remote_candidates(now, &offer);
                }
            }
            let Some(next) = t.poll_timeout() else {
                break;
            };
            now = now.max(next);
            t.handle_timeout(now);
        }
        let &(last, port, sent) = probes.last().expect("the scan ran");
        assert_eq!(t.stats().birthday_sent, u64::from(config.birthday.probes));
        // Time passes up to just before the answer to the last probe.
        let answer_at = sent + (config.max_rto - Duration::from_millis(1));
        while let Some(next) = t.poll_timeout().filter(|n| *n < answer_at) {
            now = now.max(next);
            t.handle_timeout(now);
            while t.poll_transmit().is_some() {}
        }
        assert!(
            !matches!(t.state(), TraversalState::DirectFailed(_)),
            "failed before the last burst could be answered"
        );
        let answer = stun::check_success(last, &key, public);
        t.handle_datagram(answer_at, local, port, &answer);
        // The path is nominated; the nomination is answered too.
        while let Some(tx) = t.poll_transmit() {
            if let Ok(stun::Stun::Request { tx: id, .. }) = stun::decode(&tx.payload)
                && tx.remote == port
            {
                let answer = stun::check_success(id, &key, public);
                t.handle_datagram(answer_at, local, port, &answer);
            }
        }
        assert_eq!(
            t.state(),
            TraversalState::Connected {
                local,
                remote: port
            }
        );
    }

    /// The peer's check arrives from its public address before its offer
    /// names that address: the path is learned as peer-reflexive first,
    /// and birthday punching still aims at the public address the offer
    /// gives.
    #[test]
    fn birthday_aims_at_the_offered_public_address_even_if_it_was_seen_first() {
        let key = CheckKey::new(&[4; 32]);
        let local = addr("10.0.0.2:40000");
        let peer = addr("198.51.100.7:30000");
        // Our mapping varies: each rendezvous port sees another port.
        let publics = [addr("203.0.113.9:20000"), addr("203.0.113.9:20001")];
        let mut t = Traversal::new(
            TraversalConfig::default(),
            Role::Controlled,
            key.clone(),
            local,
            vec![local],
            Rng::from_u64(6),
        );
        let mut now = Instant::ZERO;
        t.start(now, Some(addr(RV[0])));
        let mut offer = None;
        for _ in 0..100 {
            answer_rendezvous(&mut t, now, publics);
            while let Some(e) = t.poll_event() {
                if let TraversalEvent::LocalCandidates(o) = e {
                    offer = Some(o);
                }
            }
            if offer.is_some() {
                break;
            }
            now = t.poll_timeout().map_or(now, |n| now.max(n));
            t.handle_timeout(now);
        }
        assert!(offer.expect("gathered").mapping_varies);
        let check = stun::check_request(TxId::new(77), &key, 5, false);
        t.handle_datagram(now, local, peer, &check);
        let offer = Offer {
            candidates: vec![Candidate::new(CandidateKind::ServerReflexive, peer, 0)],
            mapping_varies: false,
        };
        t.add_remote_candidates(now, &offer);
        let end = now + Duration::from_secs(2);
        let mut asked = false;
        while now < end && !asked {
            answer_rendezvous(&mut t, now, publics);
            asked = core::iter::from_fn(|| t.poll_event())
                .any(|e| matches!(e, TraversalEvent::NeedSprayers(_)));
            now = t.poll_timeout().map_or(end, |n| now.max(n));
            t.handle_timeout(now);
        }
        assert!(asked, "birthday punching asked for its sprayers");
    }

    /// Two symmetric NATs: no sprayers asked, and the failure says why.
    #[test]
    fn two_symmetric_nats_fail_saying_so() {
        let sides = punch_behind(SYMMETRIC, SYMMETRIC, 1);
        for (t, events) in &sides {
            assert_eq!(
                t.state(),
                TraversalState::DirectFailed(FailReason::BothSymmetric)
            );
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, TraversalEvent::NeedSprayers(_)))
            );
            assert_eq!(t.stats().birthday_sent, 0);
        }
    }

    /// Two port-restricted NATs punch the ordinary way: no birthday.
    #[test]
    fn endpoint_independent_nats_need_no_birthday() {
        let sides = punch_behind(PORT_RESTRICTED, PORT_RESTRICTED, 2);
        for (t, events) in &sides {
            assert_eq!(connected(events).map(|c| c.1), Some(false));
            assert_eq!(t.stats().birthday_sent, 0);
        }
    }
}
