//! The simulated world: nodes, pairs, links, messages in flight, and the
//! invariants checked after every input.

use super::net::{Lane, Link, LinkParams};
use super::op::{ArbSignal, Channel, InjectPayload, Op};
use super::{HISTORY, MAX_OUTPUTS_PER_INPUT};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use wormhole_core::pair::{
    AddError, EndpointPair, FailReason, HandoverId, HandoverRole, HandoverState, KeepaliveFrame,
    Output, PairConfig, PairEvent, PairKey, PairNonce, PairPool, PairState, PeerId, PingRole,
    ReleaseError, Signal, TakeError,
};
use wormhole_core::{Instant, Rng};

/// How a node treats a pair it has taken: the stand-in for the QUIC
/// connection that would use the pair's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldPolicy {
    /// Only [`Op::Release`] releases (and the liveness phase).
    Manual,
    /// Hold for a uniformly random time in `min..=max`, then release.
    Random {
        /// Shortest hold.
        min: Duration,
        /// Longest hold.
        max: Duration,
    },
    /// Release at once (the liveness phase).
    Immediate,
}

/// The shape of a simulated world.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes (at least 2).
    pub nodes: usize,
    /// Every pool's configuration.
    pub pair: PairConfig,
    /// Every link's initial behaviour.
    pub link: LinkParams,
    /// How taken pairs are held.
    pub hold: HoldPolicy,
    /// Pairs the world creates at most; further `AddPair`s do nothing.
    pub max_pairs: usize,
}

impl SimConfig {
    /// Short timeouts, so that network delays race every timer.
    pub fn stress_pair_config() -> PairConfig {
        PairConfig {
            ping_interval: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(6),
            drain_timeout: Duration::from_millis(300),
            signal_retransmit: Duration::from_millis(200),
            handshake_timeout: Duration::from_secs(1),
            give_up_timeout: Duration::from_secs(6),
            max_pairs_per_peer: 4,
            max_pairs: 64,
        }
    }
}

/// A broken invariant (or a refused command that should have worked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time.
    pub at: Instant,
    /// Number of pool inputs so far.
    pub step: u64,
    /// What broke, in words.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {:?} (step {}): {}", self.at, self.step, self.what)
    }
}

impl std::error::Error for Violation {}

/// Counters of what a run exercised, summed over seeds to show the
/// workload reaches every corner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Inputs fed to pools.
    pub steps: u64,
    /// Keepalive datagrams sent.
    pub transmits: u64,
    /// Signals sent.
    pub signals: u64,
    /// Messages lost (loss or partition).
    pub lost: u64,
    /// Messages duplicated by the network.
    pub duplicated: u64,
    /// Handovers started by a take.
    pub takes: u64,
    /// Takes refused (no idle pair, or not idle).
    pub takes_refused: u64,
    /// `Taken` events.
    pub taken: u64,
    /// `Released` events, by the peer.
    pub released_by_peer: u64,
    /// `Released` events, by us.
    pub released_by_us: u64,
    /// `HandoverFailed` events, by reason.
    pub failed: BTreeMap<String, u64>,
    /// `Expired` events.
    pub expired: u64,
    /// Keepalive datagrams that reached a side whose pair was in use (sent
    /// before the lock and delayed, or duplicated: the drain bounds this
    /// only in time, and the pool drops them as `Silent`).
    pub keepalive_reached_in_use: u64,
    /// Pool drops, all reasons.
    pub drops: u64,
    /// Worlds that ran the liveness phase.
    pub converged: u64,
    /// Longest time from the start of the liveness phase until no handover
    /// was left anywhere.
    pub max_handover_drain: Duration,
    /// Pairs alive (on both sides) at the end of the liveness phase.
    pub pairs_survived: u64,
}

impl SimStats {
    /// Adds another run's counters to these.
    pub fn merge(&mut self, other: &SimStats) {
        self.steps += other.steps;
        self.transmits += other.transmits;
        self.signals += other.signals;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.takes += other.takes;
        self.takes_refused += other.takes_refused;
        self.taken += other.taken;
        self.released_by_peer += other.released_by_peer;
        self.released_by_us += other.released_by_us;
        for (k, v) in &other.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        self.expired += other.expired;
        self.keepalive_reached_in_use += other.keepalive_reached_in_use;
        self.drops += other.drops;
        self.converged += other.converged;
        self.max_handover_drain = self.max_handover_drain.max(other.max_handover_drain);
        self.pairs_survived += other.pairs_survived;
    }
}

struct Node {
    id: PeerId,
    pool: PairPool,
    /// Pairs this node's "connection" holds, with the handover that took
    /// them.
    holding: BTreeMap<PairNonce, HandoverId>,
}

/// A pair as the world knows it: both ends.
#[derive(Clone, Debug)]
struct SimPair {
    nonce: PairNonce,
    ends: [usize; 2],
    addrs: [SocketAddr; 2],
    key: PairKey,
    /// Index into `ends` of the pinger.
    pinger: usize,
}

impl SimPair {
    fn side_of(&self, node: usize) -> Option<usize> {
        self.ends.iter().position(|&e| e == node)
    }

    fn endpoint(&self, side: usize, peer: PeerId) -> EndpointPair {
        EndpointPair {
            nonce: self.nonce,
            local: self.addrs[side],
            remote: self.addrs[1 - side],
            peer,
            key: self.key.clone(),
            role: if side == self.pinger {
                PingRole::Pinger
            } else {
                PingRole::Ponger
            },
        }
    }
}

#[derive(Clone, Debug)]
enum Pending {
    Datagram {
        from_node: Option<usize>,
        to: usize,
        local: SocketAddr,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Signal {
        from_node: Option<usize>,
        to: usize,
        from: PeerId,
        bytes: Vec<u8>,
    },
    /// A held pair's connection closes.
    Release {
        node: usize,
        pair: PairNonce,
        handover: HandoverId,
    },
}

/// One side's view of a pair: its state and its handover's id and state.
type SideView = (PairNonce, PairState, Option<(HandoverId, HandoverState)>);

/// Pool inputs per world before it is declared a runaway.
const MAX_STEPS: u64 = 2_000_000;

/// The address nobody in the world has.
const STRANGER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)), 9);

/// The id nobody in the world has.
const STRANGER: PeerId = PeerId([0xee; 16]);

fn node_addr(node: usize, port: u16) -> SocketAddr {
    let last = u8::try_from(node + 1).unwrap_or(u8::MAX);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
}

fn fmt_h(h: HandoverId) -> String {
    format!("{:?}/{}", h.initiator, h.seq)
}

fn fmt_signal(s: &Signal) -> String {
    format!("{:?} {} {:?}", s.pair, fmt_h(s.handover), s.kind)
}

fn fmt_output(o: &Output) -> String {
    match o {
        Output::Transmit(t) => match KeepaliveFrame::decode(&t.payload) {
            Ok(f) => format!(
                "tx {:?}({}) {:?} {} -> {}",
                f.kind, f.ping, f.pair, t.local, t.remote
            ),
            Err(e) => format!("tx <undecodable: {e}> {} -> {}", t.local, t.remote),
        },
        Output::Signal { to, signal } => format!("signal to {to:?}: {}", fmt_signal(signal)),
        Output::Event(e) => format!("event {}", fmt_event(e)),
    }
}

fn fmt_event(e: &PairEvent) -> String {
    match *e {
        PairEvent::Taken { pair, handover } => format!("Taken {pair:?} {}", fmt_h(handover)),
        PairEvent::Released { pair, by_peer } => format!("Released {pair:?} by_peer={by_peer}"),
        PairEvent::HandoverFailed {
            pair,
            handover,
            reason,
        } => format!("HandoverFailed {pair:?} {} {reason:?}", fmt_h(handover)),
        PairEvent::Expired { pair } => format!("Expired {pair:?}"),
    }
}

/// What an input was, for the bound on its outputs and its checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InputKind {
    /// `handle_timeout`, with the number of pairs due.
    Timeout { due: usize },
    /// Anything else.
    Other,
    /// An injected datagram or signal: it must change nothing and, for a
    /// datagram, be counted as a drop.
    Injected { datagram: bool },
}

/// A simulated world of nodes sharing NAT pairs.
///
/// # Invariants
///
/// Checked after **every** input to any pool (`handle_timeout`,
/// `handle_datagram`, `handle_signal_bytes`, `add`, `take`, `take_pair`,
/// `release`, `remove`), once its outputs are drained. "Side" means one
/// node's view of one pair; "silent" means Locked or InUse.
///
/// Per input:
/// * **O1 bounded outputs**: an input produces fewer than
///   [`MAX_OUTPUTS_PER_INPUT`] outputs (for `handle_timeout`, that many per
///   pair that was due).
/// * **O2 well-formed keepalive**: every `Transmit` decodes, names a pair of
///   the sending node, goes from that pair's local endpoint to its remote
///   one, verifies under the pair key, and is a ping from the pinger or a
///   pong from the ponger.
/// * **S1 silence**: when a side emits a keepalive frame, it is Idle, and
///   the other side of the pair is not InUse.
/// * **O3 addressing**: a signal about a pair the sender holds goes to that
///   pair's peer.
/// * **T1 no spin**: after `handle_timeout(now)`, `poll_timeout()` is later
///   than `now` (or `None`).
/// * **E events agree with state**: after `Taken{h}` the pair's handover is
///   `h` and InUse; after `Released` it has no handover and is Idle or gone;
///   after `HandoverFailed{h}` the handover is no longer `h`, and the pair
///   is still there (rolled back, never lost) unless the reason is
///   `PeerUnreachable`, in which case it is gone; after `Expired` the pair
///   is gone.
///   The holder only ever learns of a pair leaving its hands through
///   `Released{by_peer: true}` or its own release: `Taken` for a pair it
///   holds, `Released{by_peer: false}` or `Expired` while it holds is a
///   violation.
/// * **I injected input is harmless**: a datagram from a stranger, or with a
///   bad MAC, produces nothing and is counted as a drop; a signal from a
///   node that is not the pair's peer changes nothing about the pair.
/// * Commands answer truthfully: `take` says `NoIdlePair` only if no pair of
///   that peer is Idle; `take_pair`'s `NotIdle` names a non-Idle state;
///   `release` succeeds exactly on a held pair.
///
/// After every input, over the whole world:
/// * **L0** every pair in a pool is one the world added, with the right
///   endpoints, key and role for that node.
/// * **L1** a side is Idle exactly when it has no handover.
/// * **L2** a handover is InUse exactly when its entry is InUse.
/// * **L3** a handover in Locked, Taking, Releasing or Aborting has a Locked
///   entry; in Locking, a Locking or Locked one; finished handovers
///   (Done, Failed) and Init are never left in the pool; no entry is
///   Expired.
/// * **L5** a node holds a pair exactly when that pair's handover is InUse,
///   under the same handover id.
/// * **L6** `poll_timeout()` is the earliest deadline of its pairs and
///   handovers (the timer index is never stale).
/// * **S3 one owner, silent peer**: if side X is InUse under handover `h`,
///   the other side Y has either forgotten the pair, or has a handover with
///   the same id `h`, the opposite role, a silent entry, and a state from
///   which it reached or can reach InUse for `h` (responder: InUse or
///   Releasing; initiator: Taking, Aborting, InUse or Releasing). So a pair
///   is never taken by two handovers, and never InUse on one side while the
///   other could send keepalive.
pub struct World {
    now: Instant,
    step: u64,
    nodes: Vec<Node>,
    pairs: Vec<SimPair>,
    by_nonce: BTreeMap<PairNonce, usize>,
    links: BTreeMap<(usize, usize, Lane), Link>,
    queue: BTreeMap<(Instant, u64), Pending>,
    /// The last delivered datagrams and signals, for replays.
    history: VecDeque<Pending>,
    seq: u64,
    net_rng: Rng,
    key_rng: Rng,
    hold_rng: Rng,
    hold: HoldPolicy,
    max_pairs: usize,
    cfg: PairConfig,
    trace: Option<Vec<String>>,
    echo: bool,
    stats: SimStats,
}

impl World {
    /// A world of `cfg.nodes` nodes with no pairs yet, all randomness drawn
    /// from streams of `seed`.
    pub fn new(seed: u64, cfg: &SimConfig) -> Self {
        let mut master = Rng::from_u64(seed);
        let count = cfg.nodes.max(2);
        let nodes = (0..count)
            .map(|i| {
                let id = PeerId::from_u64(i as u64 + 1);
                Node {
                    id,
                    pool: PairPool::new(id, cfg.pair.clone(), Rng::from_u64(master.next_u64())),
                    holding: BTreeMap::new(),
                }
            })
            .collect();
        let mut links = BTreeMap::new();
        for a in 0..count {
            for b in a + 1..count {
                for lane in [Lane::Udp, Lane::Signal] {
                    links.insert(
                        (a, b, lane),
                        Link {
                            params: cfg.link,
                            cut: false,
                        },
                    );
                }
            }
        }
        World {
            now: Instant::ZERO,
            step: 0,
            nodes,
            pairs: Vec::new(),
            by_nonce: BTreeMap::new(),
            links,
            queue: BTreeMap::new(),
            history: VecDeque::new(),
            seq: 0,
            net_rng: Rng::from_u64(master.next_u64()),
            key_rng: Rng::from_u64(master.next_u64()),
            hold_rng: Rng::from_u64(master.next_u64()),
            hold: cfg.hold,
            max_pairs: cfg.max_pairs,
            cfg: cfg.pair.clone(),
            trace: None,
            echo: false,
            stats: SimStats::default(),
        }
    }

    /// Records a readable trace of every input and output; with `echo`,
    /// also prints each line as it happens (so a panic shows its lead-up).
    pub fn with_trace(mut self, echo: bool) -> Self {
        self.trace = Some(Vec::new());
        self.echo = echo;
        self
    }

    /// The trace so far (empty unless [`Self::with_trace`]).
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// What this run exercised.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Node `i`'s pool.
    pub fn pool(&self, i: usize) -> &PairPool {
        &self.nodes[i].pool
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Nonces of every pair added so far, in creation order.
    pub fn pair_nonces(&self) -> Vec<PairNonce> {
        self.pairs.iter().map(|p| p.nonce).collect()
    }

    fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace.as_mut() {
            let line = format!("{:>9.3}s {}", self.now.since_origin().as_secs_f64(), line());
            if self.echo {
                println!("{line}");
            }
            trace.push(line);
        }
    }

    fn violation(&self, what: impl Into<String>) -> Violation {
        Violation {
            at: self.now,
            step: self.step,
            what: what.into(),
        }
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, Violation> {
        Err(self.violation(what))
    }

    // ----- operations -------------------------------------------------

    /// Applies one operation, then checks every invariant.
    pub fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        let n = self.nodes.len();
        let node = |x: u8| usize::from(x) % n;
        if !matches!(op, Op::Advance { .. }) {
            self.log(|| format!("op {op:?}"));
        }
        match op {
            Op::AddPair { a, b, a_pings } => {
                let a = node(*a);
                let mut b = node(*b);
                if a == b {
                    b = (a + 1) % n;
                }
                self.add_pair(a, b, *a_pings)
            }
            Op::Take { node: x, peer } => {
                let x = node(*x);
                let mut peer = node(*peer);
                if peer == x {
                    peer = (x + 1) % n;
                }
                self.take(x, peer)
            }
            Op::TakePair { pair, second } => match self.pick(*pair) {
                Some(p) => self.take_pair(p, usize::from(*second)),
                None => Ok(()),
            },
            Op::Release { pair, second } => match self.pick(*pair) {
                Some(p) => {
                    let side = usize::from(*second);
                    let (x, nonce) = (self.pairs[p].ends[side], self.pairs[p].nonce);
                    self.release(x, nonce)
                }
                None => Ok(()),
            },
            Op::Remove { pair, second } => match self.pick(*pair) {
                Some(p) => self.remove(p, usize::from(*second)),
                None => Ok(()),
            },
            Op::Partition { a, b, channel } => {
                let lanes: &[Lane] = match channel {
                    Channel::Udp => &[Lane::Udp],
                    Channel::Signal => &[Lane::Signal],
                    Channel::Both => &[Lane::Udp, Lane::Signal],
                };
                for &lane in lanes {
                    if let Some(link) = self.link_mut(node(*a), node(*b), lane) {
                        link.cut = true;
                    }
                }
                Ok(())
            }
            Op::Heal { a, b } => {
                for lane in [Lane::Udp, Lane::Signal] {
                    if let Some(link) = self.link_mut(node(*a), node(*b), lane) {
                        link.cut = false;
                    }
                }
                Ok(())
            }
            Op::SetLink { a, b, lane, params } => {
                if let Some(link) = self.link_mut(node(*a), node(*b), *lane) {
                    link.params = *params;
                }
                Ok(())
            }
            Op::Advance { millis } => {
                let until = self.now + Duration::from_millis(u64::from(*millis));
                self.run_until(until)
            }
            Op::DeliverNow { index } => match self.pick_message(*index) {
                Some(key) => {
                    let msg = self.queue.remove(&key).expect("picked key is queued");
                    self.log(|| "network: delivers early".to_string());
                    self.deliver(msg)
                }
                None => Ok(()),
            },
            Op::Duplicate { index } => {
                if let Some(key) = self.pick_message(*index) {
                    let msg = self.queue[&key].clone();
                    let delay = Duration::from_millis(self.net_rng.below(2000));
                    self.log(|| format!("network: duplicates a message, +{delay:?}"));
                    self.schedule(delay, msg);
                }
                Ok(())
            }
            Op::Replay {
                index,
                count,
                delay_ms,
            } => {
                if !self.history.is_empty() {
                    let start = usize::from(*index) % self.history.len();
                    let end = (start + usize::from(count % 8) + 1).min(self.history.len());
                    let batch: Vec<Pending> = self.history.range(start..end).cloned().collect();
                    let delay = Duration::from_millis(u64::from(*delay_ms));
                    self.log(|| {
                        format!("network: replays {} old messages in {delay:?}", batch.len())
                    });
                    for (i, msg) in batch.into_iter().enumerate() {
                        self.schedule(delay + Duration::from_micros(i as u64), msg);
                    }
                }
                Ok(())
            }
            Op::DropMessage { index } => {
                if let Some(key) = self.pick_message(*index) {
                    self.queue.remove(&key);
                    self.stats.lost += 1;
                    self.log(|| "network: loses a message".to_string());
                }
                Ok(())
            }
            Op::InjectDatagram {
                pair,
                second,
                spoof,
                payload,
            } => match self.pick(*pair) {
                Some(p) => self.inject_datagram(p, usize::from(*second), *spoof, payload),
                None => Ok(()),
            },
            Op::Poke { node: x } => {
                let x = node(*x);
                let due = self.due_pairs(x);
                self.log(|| format!("n{x} poked: handle_timeout with {due} due"));
                self.input(x, InputKind::Timeout { due }, |pool, now| {
                    pool.handle_timeout(now)
                })
            }
            Op::InjectSignal {
                pair,
                second,
                from,
                signal,
            } => match self.pick(*pair) {
                Some(p) => self.inject_signal(p, usize::from(*second), usize::from(*from), *signal),
                None => Ok(()),
            },
        }
    }

    fn pick(&self, pair: u8) -> Option<usize> {
        (!self.pairs.is_empty()).then(|| usize::from(pair) % self.pairs.len())
    }

    fn pick_message(&self, index: u8) -> Option<(Instant, u64)> {
        let messages: Vec<_> = self
            .queue
            .iter()
            .filter(|(_, m)| !matches!(m, Pending::Release { .. }))
            .map(|(k, _)| *k)
            .collect();
        (!messages.is_empty()).then(|| messages[usize::from(index) % messages.len()])
    }

    fn link_mut(&mut self, a: usize, b: usize, lane: Lane) -> Option<&mut Link> {
        self.links.get_mut(&(a.min(b), a.max(b), lane))
    }

    fn link(&self, a: usize, b: usize, lane: Lane) -> Option<&Link> {
        self.links.get(&(a.min(b), a.max(b), lane))
    }

    fn add_pair(&mut self, a: usize, b: usize, a_pings: bool) -> Result<(), Violation> {
        if self.pairs.len() >= self.max_pairs.min(60_000) {
            return Ok(());
        }
        let k = self.pairs.len();
        let port = 1000 + u16::try_from(k).unwrap_or(0);
        let mut key = [0u8; 32];
        self.key_rng.fill(&mut key);
        let pair = SimPair {
            nonce: PairNonce(k as u64 + 1),
            ends: [a, b],
            addrs: [node_addr(a, port), node_addr(b, port)],
            key: PairKey(key),
            pinger: if a_pings { 0 } else { 1 },
        };
        self.by_nonce.insert(pair.nonce, k);
        self.pairs.push(pair.clone());
        let nonce = pair.nonce;
        for side in 0..2 {
            let x = pair.ends[side];
            let endpoint = pair.endpoint(side, self.nodes[pair.ends[1 - side]].id);
            let res = self.input(x, InputKind::Other, |pool, now| pool.add(now, endpoint))?;
            self.log(|| format!("  n{x} add {nonce:?} -> {res:?}"));
            match res {
                Ok(()) => {}
                Err(AddError::PeerFull { peer, max }) => {
                    let have = self.nodes[x].pool.pairs_of(peer).count();
                    if have < max {
                        return self.fail(format!(
                            "n{x} refused {nonce:?}: peer full at {have} < {max}"
                        ));
                    }
                }
                Err(AddError::PoolFull { max }) => {
                    if self.nodes[x].pool.len() < max {
                        return self.fail(format!("n{x} refused {nonce:?}: pool full below {max}"));
                    }
                }
                Err(e) => return self.fail(format!("n{x} refused a fresh pair {nonce:?}: {e}")),
            }
            if res.is_err() {
                // The hole punch is wasted: the side that accepted forgets it.
                if side == 1 {
                    let removed =
                        self.input(pair.ends[0], InputKind::Other, |pool, _| pool.remove(nonce))?;
                    if removed.is_none() {
                        return self
                            .fail(format!("n{} lost {nonce:?} before remove", pair.ends[0]));
                    }
                }
                break;
            }
        }
        Ok(())
    }

    fn take(&mut self, x: usize, peer: usize) -> Result<(), Violation> {
        let peer_id = self.nodes[peer].id;
        let res = self.input(x, InputKind::Other, |pool, now| pool.take(now, peer_id))?;
        self.log(|| {
            format!(
                "  n{x} take(peer {peer_id:?}) -> {:?}",
                res.as_ref().map(|(n, h)| (n, fmt_h(*h)))
            )
        });
        let pool = &self.nodes[x].pool;
        match res {
            Ok((nonce, h)) => {
                self.stats.takes += 1;
                let entry = pool.get(nonce);
                if h.initiator != self.nodes[x].id || entry.is_none_or(|e| e.pair().peer != peer_id)
                {
                    return self.fail(format!(
                        "n{x} take for {peer_id:?} claimed {nonce:?} {}",
                        fmt_h(h)
                    ));
                }
                self.check_started(x, nonce, h)
            }
            Err(TakeError::NoIdlePair(p)) if p == peer_id => {
                self.stats.takes_refused += 1;
                if let Some(e) = pool
                    .pairs_of(peer_id)
                    .find(|e| e.state() == PairState::Idle)
                {
                    return self.fail(format!(
                        "n{x} take: NoIdlePair but {:?} is Idle",
                        e.pair().nonce
                    ));
                }
                Ok(())
            }
            Err(e) => self.fail(format!("n{x} take(peer {peer_id:?}) refused wrongly: {e}")),
        }
    }

    fn take_pair(&mut self, p: usize, side: usize) -> Result<(), Violation> {
        let (x, nonce) = (self.pairs[p].ends[side], self.pairs[p].nonce);
        let res = self.input(x, InputKind::Other, |pool, now| pool.take_pair(now, nonce))?;
        self.log(|| {
            format!(
                "  n{x} take_pair({nonce:?}) -> {:?}",
                res.as_ref().map(|h| fmt_h(*h))
            )
        });
        let pool = &self.nodes[x].pool;
        match res {
            Ok(h) => {
                self.stats.takes += 1;
                if h.initiator != self.nodes[x].id {
                    return self.fail(format!("n{x} take_pair gave foreign id {}", fmt_h(h)));
                }
                self.check_started(x, nonce, h)
            }
            Err(TakeError::UnknownPair(n)) if n == nonce && pool.get(nonce).is_none() => {
                self.stats.takes_refused += 1;
                Ok(())
            }
            Err(TakeError::NotIdle { pair, state })
                if pair == nonce
                    && state != PairState::Idle
                    && pool.get(nonce).is_some_and(|e| e.state() == state) =>
            {
                self.stats.takes_refused += 1;
                Ok(())
            }
            Err(e) => self.fail(format!("n{x} take_pair({nonce:?}) refused wrongly: {e}")),
        }
    }

    /// A take just started handover `h` on `nonce` at `x`: it must be there.
    fn check_started(&self, x: usize, nonce: PairNonce, h: HandoverId) -> Result<(), Violation> {
        match self.nodes[x].pool.handover(nonce) {
            Some(ho) if ho.id() == h && ho.role() == HandoverRole::Initiator => Ok(()),
            other => self.fail(format!(
                "n{x} started {} on {nonce:?} but its handover is {:?}",
                fmt_h(h),
                other.map(|o| (fmt_h(o.id()), o.state()))
            )),
        }
    }

    fn release(&mut self, x: usize, nonce: PairNonce) -> Result<(), Violation> {
        let held = self.nodes[x].holding.remove(&nonce);
        let res = self.input(x, InputKind::Other, |pool, now| pool.release(now, nonce))?;
        self.log(|| {
            format!(
                "  n{x} release({nonce:?}) held={} -> {res:?}",
                held.is_some()
            )
        });
        match (held, res) {
            (Some(_), Ok(())) => Ok(()),
            (None, Err(ReleaseError::NotInUse(n))) if n == nonce => Ok(()),
            (None, Err(ReleaseError::UnknownPair(n)))
                if n == nonce && self.nodes[x].pool.get(nonce).is_none() =>
            {
                Ok(())
            }
            (held, res) => self.fail(format!(
                "n{x} release({nonce:?}) while holding={}: {res:?}",
                held.is_some()
            )),
        }
    }

    fn remove(&mut self, p: usize, side: usize) -> Result<(), Violation> {
        let (x, nonce) = (self.pairs[p].ends[side], self.pairs[p].nonce);
        let had = self.nodes[x].pool.get(nonce).is_some();
        // The connection, if any, goes with the pair.
        let held = self.nodes[x].holding.remove(&nonce).is_some();
        let res = self.input(x, InputKind::Other, |pool, _| pool.remove(nonce))?;
        self.log(|| {
            format!(
                "  n{x} remove({nonce:?}) held={held} -> {:?}",
                res.as_ref().map(|e| e.state())
            )
        });
        if res.is_some() != had {
            return self.fail(format!(
                "n{x} remove({nonce:?}) returned {} but had={had}",
                res.is_some()
            ));
        }
        Ok(())
    }

    fn inject_datagram(
        &mut self,
        p: usize,
        side: usize,
        spoof: bool,
        payload: &InjectPayload,
    ) -> Result<(), Violation> {
        let pair = &self.pairs[p];
        let x = pair.ends[side];
        let local = pair.addrs[side];
        let mut from = if spoof {
            pair.addrs[1 - side]
        } else {
            STRANGER_ADDR
        };
        let bytes = match payload {
            InjectPayload::Raw(v) => v.iter().copied().take(256).collect::<Vec<u8>>(),
            InjectPayload::Captured { index } => {
                let captured: Vec<&Vec<u8>> = self
                    .history
                    .iter()
                    .filter_map(|m| match m {
                        Pending::Datagram { payload, .. } => Some(payload),
                        _ => None,
                    })
                    .collect();
                if captured.is_empty() {
                    return Ok(());
                }
                if spoof {
                    // From the right address a capture is just a late
                    // duplicate; `Op::Replay` covers that.
                    from = STRANGER_ADDR;
                }
                captured[usize::from(*index) % captured.len()].clone()
            }
            InjectPayload::Forged { pong, ping } => {
                let mut wrong = pair.key.0;
                wrong[0] ^= 0x80;
                KeepaliveFrame::sealed(
                    &PairKey(wrong),
                    InjectPayload::kind(*pong),
                    pair.nonce,
                    *ping,
                )
                .encode()
                .to_vec()
            }
        };
        self.log(|| format!("  n{x} <- injected datagram from {from}: {bytes:02x?}"));
        self.input(x, InputKind::Injected { datagram: true }, |pool, now| {
            pool.handle_datagram(now, local, from, &bytes)
        })
    }

    fn inject_signal(
        &mut self,
        p: usize,
        side: usize,
        from: usize,
        signal: ArbSignal,
    ) -> Result<(), Violation> {
        let pair = &self.pairs[p];
        let (x, peer) = (pair.ends[side], pair.ends[1 - side]);
        // The channel is authenticated: only a node that is not the pair's
        // peer (or a stranger) can be the sender.
        let sender = if from < self.nodes.len() && from != peer && from != x {
            self.nodes[from].id
        } else {
            STRANGER
        };
        let ids: Vec<PeerId> = self.nodes.iter().map(|n| n.id).collect();
        let signal = signal.to_signal(pair.nonce, &ids, STRANGER);
        self.log(|| {
            format!(
                "  n{x} <- injected signal from {sender:?}: {}",
                fmt_signal(&signal)
            )
        });
        let bytes = signal.encode();
        self.input(x, InputKind::Injected { datagram: false }, |pool, now| {
            pool.handle_signal_bytes(now, sender, &bytes)
        })
    }

    /// Delivers `signal` to node `to` as if node `from` had sent it over
    /// its authenticated channel, bypassing the protocol: a broken or
    /// malicious peer. Only for showing that the invariant checks catch
    /// what such a peer causes; honest runs never call it.
    pub fn forge_signal(
        &mut self,
        to: usize,
        from: usize,
        signal: Signal,
    ) -> Result<(), Violation> {
        let sender = self.nodes[from].id;
        self.log(|| {
            format!(
                "n{to} <- FORGED signal from {sender:?}: {}",
                fmt_signal(&signal)
            )
        });
        let bytes = signal.encode();
        self.input(to, InputKind::Other, |pool, now| {
            pool.handle_signal_bytes(now, sender, &bytes)
        })
    }

    // ----- time and network ---------------------------------------------

    fn schedule(&mut self, delay: Duration, msg: Pending) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), msg);
    }

    /// Sends a message over a link: lost, delivered once, or twice.
    fn send(&mut self, from: usize, to: usize, lane: Lane, msg: Pending) {
        let Some(link) = self.link(from, to, lane).copied() else {
            self.stats.lost += 1;
            return;
        };
        if link.cut {
            self.stats.lost += 1;
            self.log(|| "      (lost: partitioned)".to_string());
            return;
        }
        match link.params.sample(&mut self.net_rng) {
            None => {
                self.stats.lost += 1;
                self.log(|| "      (lost)".to_string());
            }
            Some((delay, dup)) => {
                if let Some(dup) = dup {
                    self.stats.duplicated += 1;
                    self.log(|| format!("      (arrives in {delay:?}, again in {dup:?})"));
                    self.schedule(dup, msg.clone());
                } else if self.tracing() {
                    self.log(|| format!("      (arrives in {delay:?})"));
                }
                self.schedule(delay, msg);
            }
        }
    }

    fn deliver(&mut self, msg: Pending) -> Result<(), Violation> {
        if !matches!(msg, Pending::Release { .. }) {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(msg.clone());
        }
        match msg {
            Pending::Datagram {
                from_node,
                to,
                local,
                from,
                payload,
            } => {
                if let Some(f) = from_node
                    && self.link(f, to, Lane::Udp).is_some_and(|l| l.cut)
                {
                    self.stats.lost += 1;
                    self.log(|| format!("n{to} <- datagram from {from}: lost in a partition"));
                    return Ok(());
                }
                if let Ok(frame) = KeepaliveFrame::decode(&payload)
                    && self.nodes[to]
                        .pool
                        .get(frame.pair)
                        .is_some_and(|e| e.state() == PairState::InUse)
                {
                    self.stats.keepalive_reached_in_use += 1;
                }
                if self.tracing() {
                    let what = match KeepaliveFrame::decode(&payload) {
                        Ok(f) => format!("{:?}({}) {:?}", f.kind, f.ping, f.pair),
                        Err(_) => format!("{payload:02x?}"),
                    };
                    self.log(|| format!("n{to} <- datagram {from} -> {local}: {what}"));
                }
                self.input(to, InputKind::Other, |pool, now| {
                    pool.handle_datagram(now, local, from, &payload)
                })
            }
            Pending::Signal {
                from_node,
                to,
                from,
                bytes,
            } => {
                if let Some(f) = from_node
                    && self.link(f, to, Lane::Signal).is_some_and(|l| l.cut)
                {
                    self.stats.lost += 1;
                    self.log(|| format!("n{to} <- signal from {from:?}: lost in a partition"));
                    return Ok(());
                }
                if self.tracing() {
                    let what = match Signal::decode(&bytes) {
                        Ok(s) => fmt_signal(&s),
                        Err(e) => format!("<undecodable: {e}>"),
                    };
                    self.log(|| format!("n{to} <- signal from {from:?}: {what}"));
                }
                self.input(to, InputKind::Other, |pool, now| {
                    pool.handle_signal_bytes(now, from, &bytes)
                })
            }
            Pending::Release {
                node,
                pair,
                handover,
            } => {
                if self.nodes[node].holding.get(&pair) == Some(&handover) {
                    self.log(|| format!("n{node} connection on {pair:?} closes"));
                    self.release(node, pair)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.pool.poll_timeout())
            .min();
        let queued = self.queue.first_key_value().map(|(k, _)| k.0);
        match (timers, queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles the one thing due first: a node's timer (lowest node first),
    /// else the earliest message. Returns false if nothing is due by
    /// `until`.
    fn fire_one(&mut self, until: Instant) -> Result<bool, Violation> {
        let Some(t) = self.next_due().filter(|&t| t <= until) else {
            return Ok(false);
        };
        self.now = self.now.max(t);
        let now = self.now;
        if let Some(x) = (0..self.nodes.len())
            .find(|&i| self.nodes[i].pool.poll_timeout().is_some_and(|t| t <= now))
        {
            let due = self.due_pairs(x);
            self.log(|| format!("n{x} timeout ({due} due)"));
            self.input(x, InputKind::Timeout { due }, |pool, now| {
                pool.handle_timeout(now)
            })?;
            return Ok(true);
        }
        let (&key, _) = self.queue.first_key_value().expect("something is due");
        let msg = self.queue.remove(&key).expect("first key exists");
        self.deliver(msg)?;
        Ok(true)
    }

    /// Runs every timer and message up to `until`, then sets the clock there.
    pub fn run_until(&mut self, until: Instant) -> Result<(), Violation> {
        while self.fire_one(until)? {}
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), Violation> {
        self.run_until(self.now + d)
    }

    fn due_pairs(&self, x: usize) -> usize {
        let pool = &self.nodes[x].pool;
        pool.pairs()
            .filter(|e| {
                self.deadline(x, e.pair().nonce)
                    .is_some_and(|t| t <= self.now)
            })
            .count()
    }

    /// A pair's own earliest deadline, from its entry and handover.
    fn deadline(&self, x: usize, nonce: PairNonce) -> Option<Instant> {
        let pool = &self.nodes[x].pool;
        let entry = pool.get(nonce)?.poll_timeout(pool.config());
        let handover = pool.handover(nonce).and_then(|h| h.poll_timeout());
        match (entry, handover) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- one input and its checks ---------------------------------------

    /// Feeds one input to node `x`'s pool, drains and routes its outputs,
    /// and checks every invariant.
    fn input<T>(
        &mut self,
        x: usize,
        kind: InputKind,
        f: impl FnOnce(&mut PairPool, Instant) -> T,
    ) -> Result<T, Violation> {
        self.step += 1;
        self.stats.steps += 1;
        if self.step > MAX_STEPS {
            return self.fail("runaway: too many inputs");
        }
        let drops_before = self.nodes[x].pool.drops().total();
        let before = match kind {
            InputKind::Injected { .. } => Some(self.side_snapshot(x)),
            _ => None,
        };
        let now = self.now;
        let result = f(&mut self.nodes[x].pool, now);
        let mut outputs = Vec::new();
        while let Some(o) = self.nodes[x].pool.poll_output() {
            outputs.push(o);
            // A pool that never stops producing is a spin: stop draining.
            if outputs.len() > 4 * MAX_OUTPUTS_PER_INPUT * self.nodes[x].pool.len().max(1) {
                break;
            }
        }
        let drops = self.nodes[x].pool.drops().total() - drops_before;
        self.stats.drops += drops;

        // O1: bounded outputs.
        let bound = match kind {
            InputKind::Timeout { due } => MAX_OUTPUTS_PER_INPUT * due.max(1),
            _ => MAX_OUTPUTS_PER_INPUT,
        };
        if let InputKind::Timeout { due: 0 } = kind
            && !outputs.is_empty()
        {
            return self.fail(format!(
                "n{x}: handle_timeout with nothing due gave {} outputs",
                outputs.len()
            ));
        }
        if outputs.len() >= bound {
            return self.fail(format!(
                "n{x}: {} outputs for one input (bound {bound})",
                outputs.len()
            ));
        }
        if let InputKind::Injected { datagram } = kind {
            if datagram && (!outputs.is_empty() || drops != 1) {
                return self.fail(format!(
                    "n{x}: injected datagram gave {} outputs and {drops} drops",
                    outputs.len()
                ));
            }
            if before != Some(self.side_snapshot(x)) {
                return self.fail(format!("n{x}: injected input changed a pair"));
            }
        }

        let mut transmitted = Vec::new();
        let mut events = Vec::new();
        for o in outputs {
            if self.tracing() {
                self.log(|| format!("    n{x} -> {}", fmt_output(&o)));
            }
            match o {
                Output::Transmit(t) => {
                    self.stats.transmits += 1;
                    let nonce = self.check_transmit(x, &t)?;
                    transmitted.push(nonce);
                    let p = &self.pairs[self.by_nonce[&nonce]];
                    let to = p.ends[1 - p.side_of(x).expect("checked side")];
                    let msg = Pending::Datagram {
                        from_node: Some(x),
                        to,
                        local: t.remote,
                        from: t.local,
                        payload: t.payload.to_vec(),
                    };
                    self.send(x, to, Lane::Udp, msg);
                }
                Output::Signal { to, signal } => {
                    self.stats.signals += 1;
                    if let Some(e) = self.nodes[x].pool.get(signal.pair)
                        && e.pair().peer != to
                    {
                        return self.fail(format!(
                            "O3: n{x} signals {} to {to:?}, not to the pair's peer",
                            fmt_signal(&signal)
                        ));
                    }
                    let bytes = signal.encode().to_vec();
                    if Signal::decode(&bytes) != Ok(signal) {
                        return self.fail(format!("n{x}: signal does not round-trip: {signal:?}"));
                    }
                    match self.nodes.iter().position(|n| n.id == to) {
                        Some(dest) if dest != x => {
                            let msg = Pending::Signal {
                                from_node: Some(x),
                                to: dest,
                                from: self.nodes[x].id,
                                bytes,
                            };
                            self.send(x, dest, Lane::Signal, msg);
                        }
                        _ => self.log(|| "      (to a stranger: dropped)".to_string()),
                    }
                }
                Output::Event(e) => {
                    self.holder_event(x, e)?;
                    events.push(e);
                }
            }
        }

        // T1: no spin.
        if let InputKind::Timeout { .. } = kind
            && let Some(t) = self.nodes[x].pool.poll_timeout()
            && t <= self.now
        {
            return self.fail(format!(
                "T1: n{x} wants another timeout at {t:?} right after handle_timeout({:?})",
                self.now
            ));
        }
        // S1: who sent keepalive is Idle, and its peer is not InUse.
        for nonce in transmitted {
            let p = &self.pairs[self.by_nonce[&nonce]];
            let side = p.side_of(x).expect("checked side");
            let own = self.nodes[x].pool.get(nonce).map(|e| e.state());
            let other = self.nodes[p.ends[1 - side]]
                .pool
                .get(nonce)
                .map(|e| e.state());
            if own != Some(PairState::Idle) || other == Some(PairState::InUse) {
                return self.fail(format!(
                    "S1: n{x} sent keepalive on {nonce:?} in state {own:?} while n{} is {other:?}",
                    p.ends[1 - side]
                ));
            }
        }
        for e in events {
            self.check_event(x, e)?;
        }
        self.check_world()?;
        Ok(result)
    }

    /// O2: a keepalive frame is well formed and properly addressed.
    fn check_transmit(
        &self,
        x: usize,
        t: &wormhole_core::pair::Transmit,
    ) -> Result<PairNonce, Violation> {
        let frame = KeepaliveFrame::decode(&t.payload)
            .map_err(|e| self.violation(format!("O2: n{x} sent an undecodable frame: {e}")))?;
        let Some(p) = self.by_nonce.get(&frame.pair).map(|&i| &self.pairs[i]) else {
            return self.fail(format!(
                "O2: n{x} sent a frame for unknown {:?}",
                frame.pair
            ));
        };
        let Some(side) = p.side_of(x) else {
            return self.fail(format!(
                "O2: n{x} sent a frame for {:?}, not its pair",
                frame.pair
            ));
        };
        let kind_ok = match frame.kind {
            wormhole_core::pair::FrameKind::Ping => side == p.pinger,
            wormhole_core::pair::FrameKind::Pong => side != p.pinger,
        };
        if t.local != p.addrs[side]
            || t.remote != p.addrs[1 - side]
            || !frame.verify(&p.key)
            || !kind_ok
        {
            return self.fail(format!(
                "O2: n{x} sent a bad frame {frame:?} {} -> {}",
                t.local, t.remote
            ));
        }
        Ok(frame.pair)
    }

    /// The holder ("connection") reacts to an event.
    fn holder_event(&mut self, x: usize, e: PairEvent) -> Result<(), Violation> {
        match e {
            PairEvent::Taken { pair, handover } => {
                self.stats.taken += 1;
                if self.nodes[x].holding.insert(pair, handover).is_some() {
                    return self.fail(format!("n{x}: Taken {pair:?} while already holding it"));
                }
                let hold = match self.hold {
                    HoldPolicy::Manual => None,
                    HoldPolicy::Immediate => Some(Duration::ZERO),
                    HoldPolicy::Random { min, max } => {
                        let span =
                            u64::try_from((max.saturating_sub(min)).as_millis()).unwrap_or(0);
                        Some(min + Duration::from_millis(self.hold_rng.below(span + 1)))
                    }
                };
                if let Some(hold) = hold {
                    self.log(|| format!("      (n{x} holds {pair:?} for {hold:?})"));
                    self.schedule(
                        hold,
                        Pending::Release {
                            node: x,
                            pair,
                            handover,
                        },
                    );
                }
            }
            PairEvent::Released { pair, by_peer } => {
                let held = self.nodes[x].holding.remove(&pair).is_some();
                if by_peer {
                    self.stats.released_by_peer += 1;
                } else {
                    self.stats.released_by_us += 1;
                    if held {
                        return self.fail(format!(
                            "n{x}: Released {pair:?} by us while the connection holds it"
                        ));
                    }
                }
            }
            PairEvent::HandoverFailed { reason, .. } => {
                *self.stats.failed.entry(format!("{reason:?}")).or_default() += 1;
            }
            PairEvent::Expired { pair } => {
                self.stats.expired += 1;
                if self.nodes[x].holding.contains_key(&pair) {
                    return self.fail(format!("n{x}: {pair:?} expired under its connection"));
                }
            }
        }
        Ok(())
    }

    /// E: the event agrees with the state after the input.
    fn check_event(&self, x: usize, e: PairEvent) -> Result<(), Violation> {
        let pool = &self.nodes[x].pool;
        let ok = match e {
            PairEvent::Taken { pair, handover } => {
                let peer = pool.get(pair).map(|e| e.pair().peer);
                pool.handover(pair)
                    .is_some_and(|h| h.id() == handover && h.state() == HandoverState::InUse)
                    && (handover.initiator == self.nodes[x].id || Some(handover.initiator) == peer)
            }
            PairEvent::Released { pair, .. } => {
                pool.handover(pair).is_none()
                    && pool.get(pair).is_none_or(|e| e.state() == PairState::Idle)
            }
            PairEvent::HandoverFailed {
                pair,
                handover,
                reason,
            } => {
                pool.handover(pair).is_none_or(|h| h.id() != handover)
                    // Never lose a pair on a failed handover: only a peer
                    // that never confirmed costs the pair.
                    && (reason == FailReason::PeerUnreachable) == pool.get(pair).is_none()
            }
            PairEvent::Expired { pair } => pool.get(pair).is_none(),
        };
        if ok {
            Ok(())
        } else {
            self.fail(format!(
                "E: n{x} reported {} but the pool disagrees",
                fmt_event(&e)
            ))
        }
    }

    /// Everything about node `x`'s pairs that injected input must not
    /// change.
    fn side_snapshot(&self, x: usize) -> Vec<SideView> {
        let pool = &self.nodes[x].pool;
        pool.pairs()
            .map(|e| {
                let n = e.pair().nonce;
                (n, e.state(), pool.handover(n).map(|h| (h.id(), h.state())))
            })
            .collect()
    }

    /// L0–L6 and S3, over the whole world.
    fn check_world(&self) -> Result<(), Violation> {
        for (x, node) in self.nodes.iter().enumerate() {
            let pool = &node.pool;
            let mut earliest: Option<Instant> = None;
            let mut indexed = 0;
            for peer in self.nodes.iter().map(|n| n.id).chain([STRANGER]) {
                indexed += pool
                    .pairs_of(peer)
                    .filter(|e| e.pair().peer == peer)
                    .count();
            }
            if indexed != pool.len() || pool.pairs().count() != pool.len() {
                return self.fail(format!(
                    "L0: n{x} indexes {indexed} of {} pairs by peer",
                    pool.len()
                ));
            }
            for e in pool.pairs() {
                let nonce = e.pair().nonce;
                // L0: a pair the world added, with this node's view of it.
                let expected = self.by_nonce.get(&nonce).and_then(|&i| {
                    let p = &self.pairs[i];
                    let side = p.side_of(x)?;
                    Some(p.endpoint(side, self.nodes[p.ends[1 - side]].id))
                });
                if expected.as_ref() != Some(e.pair()) {
                    return self.fail(format!(
                        "L0: n{x} holds a pair the world did not give it: {:?}",
                        e.pair()
                    ));
                }
                let h = pool.handover(nonce);
                let (es, hs) = (e.state(), h.map(|h| h.state()));
                use HandoverState as H;
                use PairState as P;
                let consistent = match hs {
                    None => es == P::Idle,
                    Some(H::InUse) => es == P::InUse,
                    Some(H::Locked | H::Taking | H::Releasing | H::Aborting) => es == P::Locked,
                    Some(H::Locking) => matches!(es, P::Locking | P::Locked),
                    Some(H::Init | H::Failed | H::Done) => false,
                };
                if !consistent {
                    return self.fail(format!(
                        "L1-L3: n{x} {nonce:?} entry {es:?} with handover {hs:?}"
                    ));
                }
                // L5: the connection holds exactly the InUse pairs.
                let held = node.holding.get(&nonce).copied();
                let in_use = h.filter(|h| h.state() == H::InUse).map(|h| h.id());
                if held != in_use {
                    return self.fail(format!(
                        "L5: n{x} {nonce:?} held under {:?} but in use under {:?}",
                        held.map(fmt_h),
                        in_use.map(fmt_h)
                    ));
                }
                if let Some(d) = self.deadline(x, nonce) {
                    earliest = Some(earliest.map_or(d, |t| t.min(d)));
                }
            }
            if let Some(gone) = node.holding.keys().find(|n| pool.get(**n).is_none()) {
                return self.fail(format!("L5: n{x} holds {gone:?}, which its pool forgot"));
            }
            // L6: the timer index is exact.
            if pool.poll_timeout() != earliest {
                return self.fail(format!(
                    "L6: n{x} poll_timeout {:?} but the earliest deadline is {earliest:?}",
                    pool.poll_timeout()
                ));
            }
        }
        // S3: one owner, and its peer silent.
        for p in &self.pairs {
            for side in 0..2 {
                let (x, y) = (p.ends[side], p.ends[1 - side]);
                let (px, py) = (&self.nodes[x].pool, &self.nodes[y].pool);
                let Some(hx) = px
                    .handover(p.nonce)
                    .filter(|h| h.state() == HandoverState::InUse)
                else {
                    continue;
                };
                let Some(ey) = py.get(p.nonce) else {
                    continue;
                };
                let hy = py.handover(p.nonce);
                let ok = hy.is_some_and(|hy| {
                    use HandoverState as H;
                    hy.id() == hx.id()
                        && hy.role() != hx.role()
                        && matches!(ey.state(), PairState::Locked | PairState::InUse)
                        && match hy.role() {
                            HandoverRole::Responder => {
                                matches!(hy.state(), H::InUse | H::Releasing)
                            }
                            HandoverRole::Initiator => {
                                matches!(
                                    hy.state(),
                                    H::Taking | H::Aborting | H::InUse | H::Releasing
                                )
                            }
                        }
                });
                if !ok {
                    return self.fail(format!(
                        "S3: n{x} has {:?} InUse under {} ({:?}) but n{y} is {:?} with handover {:?}",
                        p.nonce,
                        fmt_h(hx.id()),
                        hx.role(),
                        ey.state(),
                        hy.map(|h| (fmt_h(h.id()), h.role(), h.state()))
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- liveness ----------------------------------------------------------

    /// No handover anywhere, no connection holds a pair, and each pair is
    /// either Idle on both sides or gone from both.
    fn converged(&self) -> Result<(), String> {
        for (x, node) in self.nodes.iter().enumerate() {
            if let Some(n) = node.holding.keys().next() {
                return Err(format!("n{x} still holds {n:?}"));
            }
            for e in node.pool.pairs() {
                if let Some(h) = node.pool.handover(e.pair().nonce) {
                    return Err(format!(
                        "n{x} {:?} still has handover {} in {:?}",
                        e.pair().nonce,
                        fmt_h(h.id()),
                        h.state()
                    ));
                }
            }
        }
        for p in &self.pairs {
            let [a, b] = p
                .ends
                .map(|x| self.nodes[x].pool.get(p.nonce).map(|e| e.state()));
            let agree = matches!(
                (a, b),
                (None, None) | (Some(PairState::Idle), Some(PairState::Idle))
            );
            if !agree {
                return Err(format!(
                    "{:?} disagrees: n{} {a:?}, n{} {b:?}",
                    p.nonce, p.ends[0], p.ends[1]
                ));
            }
        }
        Ok(())
    }

    fn handovers_left(&self) -> bool {
        self.nodes.iter().any(|n| {
            !n.holding.is_empty()
                || n.pool
                    .pairs()
                    .any(|e| n.pool.handover(e.pair().nonce).is_some())
        })
    }

    /// The longest simulated time the liveness phase may take to converge.
    ///
    /// After the network heals and every connection is released, a
    /// handover ends within a few handshakes (both lock steps, then Take),
    /// or after `give_up_timeout` if its peer forgot the pair while it was
    /// silent; then a pair whose other side is gone expires within
    /// `idle_timeout`, and a side that expired makes its peer expire within
    /// another `idle_timeout`. Add a ping interval, some round trips and
    /// whatever was already in flight.
    pub fn liveness_bound(&self) -> Duration {
        let c = &self.cfg;
        let tail = self.in_flight_tail();
        c.handshake_timeout * 2
            + c.give_up_timeout
            + c.idle_timeout * 2
            + c.ping_interval
            + self.healed_one_way() * 8
            + tail
    }

    /// The longest time, once the network is healed and every connection
    /// released, until no handover is left: a responder that was just
    /// asked to lock may wait two handshakes for a Take that never comes;
    /// everything else is answered within a few retransmits and round trips
    /// (a peer that forgot the pair answers for it), plus whatever was
    /// already in flight.
    pub fn handover_bound(&self) -> Duration {
        let c = &self.cfg;
        c.handshake_timeout * 2
            + c.signal_retransmit * 2
            + c.drain_timeout
            + self.healed_one_way() * 8
            + self.in_flight_tail()
    }

    fn in_flight_tail(&self) -> Duration {
        self.queue
            .last_key_value()
            .map_or(Duration::ZERO, |(k, _)| k.0 - self.now)
    }

    /// The longest one-way delay once healed: a round trip stays well
    /// within the keepalive interval.
    fn healed_one_way(&self) -> Duration {
        (self.cfg.ping_interval / 4).min(Duration::from_secs(1))
    }

    /// The liveness phase. Heals the network (no partitions, no loss, no
    /// spikes, short delays; duplication and reordering stay), stops new
    /// takes, releases every held pair (and any pair taken from now on, at
    /// once), then requires:
    ///
    /// * within [`Self::handover_bound`], every handover has ended
    ///   (`handover(n)` is `None` on every node);
    /// * within [`Self::liveness_bound`], both sides of every pair agree:
    ///   Idle on both, or gone from both;
    /// * for one more `idle_timeout + ping_interval`, that stays so, no pair
    ///   is lost, and every surviving pair carries keepalive both ways.
    ///
    /// Safety invariants stay checked throughout. Returns how long it took
    /// until no handover was left.
    pub fn converge(&mut self) -> Result<Duration, Violation> {
        let start = self.now;
        self.log(|| "liveness: heal the network, stop taking, release everything".to_string());
        let one_way = self.healed_one_way();
        for link in self.links.values_mut() {
            link.cut = false;
            link.params = link.params.healed(one_way);
        }
        self.hold = HoldPolicy::Immediate;
        let held: Vec<(usize, PairNonce)> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(x, n)| n.holding.keys().map(move |&p| (x, p)))
            .collect();
        for (x, nonce) in held {
            self.log(|| format!("n{x} connection on {nonce:?} closes"));
            self.release(x, nonce)?;
        }
        let deadline = start + self.liveness_bound();
        let handover_bound = self.handover_bound();
        let mut busy_until = start;
        while self.fire_one(deadline)? {
            if self.handovers_left() {
                busy_until = self.now;
            }
        }
        self.now = deadline;
        if let Err(why) = self.converged() {
            return self.fail(format!(
                "liveness: not converged {:?} after healing: {why}",
                deadline - start
            ));
        }
        let drained = busy_until - start;
        self.log(|| format!("liveness: converged; handovers all ended after {drained:?}"));
        if drained > handover_bound {
            return self.fail(format!(
                "liveness: a handover lasted {drained:?} after healing (bound {handover_bound:?})"
            ));
        }

        // Stability: nothing changes any more and keepalive flows.
        let alive: Vec<(PairNonce, [usize; 2], [u64; 2])> = self
            .pairs
            .iter()
            .filter_map(|p| {
                let heard = p.ends.map(|x| {
                    self.nodes[x]
                        .pool
                        .get(p.nonce)
                        .map(|e| e.stats().frames_accepted)
                });
                Some((p.nonce, p.ends, [heard[0]?, heard[1]?]))
            })
            .collect();
        let window = self.cfg.idle_timeout + self.cfg.ping_interval;
        self.run_for(window)?;
        if let Err(why) = self.converged() {
            return self.fail(format!("liveness: converged, then lost it: {why}"));
        }
        for (nonce, ends, heard) in &alive {
            for side in 0..2 {
                let now_heard = self.nodes[ends[side]]
                    .pool
                    .get(*nonce)
                    .map(|e| e.stats().frames_accepted);
                if now_heard.is_none_or(|h| h <= heard[side]) {
                    return self.fail(format!(
                        "liveness: {nonce:?} at n{} heard nothing for {window:?} on a healed network ({now_heard:?})",
                        ends[side]
                    ));
                }
            }
        }
        self.stats.converged += 1;
        self.stats.max_handover_drain = self.stats.max_handover_drain.max(drained);
        self.stats.pairs_survived += alive.len() as u64;
        self.log(|| format!("liveness: stable, {} pairs alive", alive.len()));
        Ok(drained)
    }
}
