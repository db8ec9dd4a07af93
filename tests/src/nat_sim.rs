//! The deterministic simulation of hole punching: two peers, each behind a
//! simulated NAT of one of the four behaviours the kernel matrix builds
//! (public, full cone, port-restricted, symmetric), a rendezvous answering
//! STUN, candidates exchanged through signalling, and a network that
//! delays, loses, duplicates and reorders. Seed `s` runs cell `s % 16`.
//!
//! Checked at every step: each input makes a bounded number of datagrams;
//! nothing is ever sent to a third party that injects checks under a wrong
//! key (no forged check is answered, no forged candidate is tried); a side
//! connects only on a path that answered (the machine's own
//! `debug_assert!`s). Checked at the end (liveness): both sides have ended
//! (connected or failed) within the deadline; on a loss-free network both
//! agree, on the same path, and the outcome is the one the cell's NAT pair
//! allows (without birthday punching: no path between an endpoint-dependent
//! NAT and an address-and-port-dependent filter, or two endpoint-dependent
//! NATs).

use crate::seeds::Simulation;
use bytes::Bytes;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::BTreeMap;
use std::fmt;
use wormhole_core::nat::model::NatModel;
use wormhole_core::nat::stun::CheckKey;
use wormhole_core::nat::{
    Candidate, Filtering, Mapping, Role, Traversal, TraversalConfig, TraversalEvent, TraversalState,
};
use wormhole_core::rendezvous::{Rendezvous, ServerAddrs};
use wormhole_core::{Instant, Rng};

/// The four router behaviours of the kernel matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Router {
    /// No NAT.
    Public,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping.
    Symmetric,
}

impl Router {
    /// All four.
    pub const ALL: [Router; 4] = [
        Router::Public,
        Router::FullCone,
        Router::PortRestricted,
        Router::Symmetric,
    ];

    fn model(self, public: IpAddr, inside: IpAddr) -> NatModel {
        let (mapping, filtering, ip) = match self {
            Router::Public => (Mapping::None, Filtering::EndpointIndependent, inside),
            Router::FullCone => (
                Mapping::EndpointIndependent,
                Filtering::EndpointIndependent,
                public,
            ),
            Router::PortRestricted => (
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
                public,
            ),
            Router::Symmetric => (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
                public,
            ),
        };
        NatModel::new(mapping, filtering, ip, 20000)
    }

    /// Whether a direct path exists between these two routers without
    /// birthday punching.
    pub fn punchable(a: Router, b: Router) -> bool {
        use Router::*;
        !matches!(
            (a, b),
            (Symmetric, Symmetric) | (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
        )
    }
}

/// Datagrams one input may make at most: an answer, a triggered check, a
/// retransmission or paced check, and the rendezvous request.
const MAX_PER_INPUT: usize = 4;
/// Where forged checks come from.
const ATTACKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)), 6666);

/// What a run counted, summed over seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatSimStats {
    /// Seeds whose liveness check ran.
    pub converged: u64,
    /// Per cell (controlled router, controlling router): runs, connected.
    pub cells: BTreeMap<(u8, u8), (u64, u64)>,
    /// Datagrams lost, duplicated.
    pub lost: u64,
    /// Datagrams duplicated.
    pub duplicated: u64,
    /// Forged checks injected.
    pub forged: u64,
    /// Runs on a lossy network where the two sides disagreed at the end.
    pub lossy_disagreements: u64,
    /// Runs connected through a peer-reflexive address (a punched hole
    /// found from the other side's check).
    pub via_peer_reflexive: u64,
}

/// A broken property.
#[derive(Debug)]
pub struct NatViolation(String);

impl fmt::Display for NatViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

enum Ev {
    /// A datagram arrives at a public address.
    Packet {
        from: SocketAddr,
        to: SocketAddr,
        payload: Bytes,
    },
    /// Candidates arrive at peer `to` through signalling.
    Candidates {
        to: usize,
        candidates: Vec<Candidate>,
    },
    /// A forged check arrives at peer `to`'s socket.
    Forged { to: usize },
}

struct Peer {
    traversal: Traversal,
    inside: SocketAddr,
    nat: NatModel,
    router: Router,
    outcome: Option<TraversalEvent>,
}

/// One run's world.
pub struct NatWorld {
    rng: Rng,
    now: Instant,
    peers: [Peer; 2],
    rendezvous: Rendezvous,
    rendezvous_addrs: Vec<SocketAddr>,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    loss: u64,
    dup: u64,
    trace: Vec<String>,
    tracing: bool,
    echo: bool,
    stats: NatSimStats,
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

impl NatWorld {
    fn new(seed: u64, trace: bool, echo: bool) -> Self {
        let mut rng = Rng::from_u64(seed);
        let cell = seed % 16;
        let routers = [
            Router::ALL[(cell / 4) as usize],
            Router::ALL[(cell % 4) as usize],
        ];
        let lossless = seed.is_multiple_of(3);
        let (loss, dup) = if lossless {
            (0, 0)
        } else {
            (rng.below(11), rng.below(6))
        };
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let key = CheckKey::new(&secret);
        let addrs = ServerAddrs::one_ip(ip(198, 18, 0, 1), [3478, 3479]);
        let peer = |i: usize, rng: &mut Rng| {
            let router = routers[i];
            let k = u8::try_from(i).unwrap_or(0) + 1;
            let inside_ip = if router == Router::Public {
                ip(198, 19, k, 2)
            } else {
                ip(10, k, 0, 2)
            };
            let inside = SocketAddr::new(inside_ip, 40000 + u16::from(k));
            let role = if i == 0 {
                Role::Controlled
            } else {
                Role::Controlling
            };
            Peer {
                traversal: Traversal::new(
                    TraversalConfig::default(),
                    role,
                    key.clone(),
                    inside,
                    vec![inside],
                    Rng::from_u64(rng.next_u64()),
                ),
                inside,
                nat: router.model(ip(198, 18, k, 1), inside_ip),
                router,
                outcome: None,
            }
        };
        let peers = [peer(0, &mut rng), peer(1, &mut rng)];
        NatWorld {
            rng,
            now: Instant::ZERO,
            peers,
            rendezvous: Rendezvous::new(addrs),
            rendezvous_addrs: addrs.sockets(),
            queue: BTreeMap::new(),
            seq: 0,
            loss,
            dup,
            trace: Vec::new(),
            tracing: trace,
            echo,
            stats: NatSimStats::default(),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.tracing {
            let line = format!("{:>8.3}s {}", self.now.since_origin().as_secs_f64(), line());
            if self.echo {
                println!("{line}");
            }
            self.trace.push(line);
        }
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    /// Sends a datagram over the lossy network: lost, delayed (1–40 ms, so
    /// reordered), sometimes duplicated.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: Bytes) {
        if self.rng.below(100) < self.loss {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.below(100) < self.dup { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let delay = Duration::from_millis(1 + self.rng.below(40));
            self.schedule(
                delay,
                Ev::Packet {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Carries out what peer `i` asked for after one input.
    fn drain(&mut self, i: usize) -> Result<(), NatViolation> {
        let mut sent = 0;
        while let Some(t) = self.peers[i].traversal.poll_transmit() {
            sent += 1;
            if t.remote == ATTACKER {
                return Err(NatViolation(format!("peer {i} answered a forged check")));
            }
            let now = self.now;
            let src = self.peers[i].nat.outbound(now, t.local, t.remote);
            self.log(|| format!("peer {i} {src} -> {} ({} bytes)", t.remote, t.payload.len()));
            self.send(src, t.remote, t.payload);
        }
        if sent > MAX_PER_INPUT {
            return Err(NatViolation(format!(
                "peer {i} sent {sent} datagrams for one input"
            )));
        }
        while let Some(event) = self.peers[i].traversal.poll_event() {
            self.log(|| format!("peer {i} {event:?}"));
            match event {
                TraversalEvent::LocalCandidates(candidates) => {
                    let delay = Duration::from_millis(20 + self.rng.below(200));
                    self.schedule(
                        delay,
                        Ev::Candidates {
                            to: 1 - i,
                            candidates,
                        },
                    );
                }
                done => {
                    if self.peers[i].outcome.is_some() {
                        return Err(NatViolation(format!("peer {i} ended twice")));
                    }
                    self.peers[i].outcome = Some(done);
                }
            }
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> Result<(), NatViolation> {
        if self.rendezvous_addrs.contains(&to) {
            let now = self.now;
            self.rendezvous.handle_datagram(now, to, from, payload);
            while let Some(t) = self.rendezvous.poll_transmit() {
                self.send(t.local, t.remote, t.payload);
            }
            return Ok(());
        }
        let now = self.now;
        for i in 0..2 {
            if self.peers[i].nat.public_ip != to.ip() {
                continue;
            }
            let Some(inside) = self.peers[i].nat.inbound(now, from, to.port()) else {
                self.log(|| format!("peer {i}'s NAT filters {from} -> {to}"));
                return Ok(());
            };
            if inside == self.peers[i].inside {
                self.peers[i].traversal.handle_datagram(now, from, payload);
                self.drain(i)?;
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), NatViolation> {
        let rendezvous = self.rendezvous_addrs[0];
        for i in 0..2 {
            // The host starts at once, the mount a little later.
            self.peers[i].traversal.start(self.now, Some(rendezvous));
            self.drain(i)?;
        }
        for to in 0..2 {
            let at = Duration::from_millis(self.rng.below(3000));
            self.schedule(at, Ev::Forged { to });
        }
        let end = Instant::ZERO + TraversalConfig::default().deadline + Duration::from_secs(2);
        loop {
            let timers = self
                .peers
                .iter()
                .filter_map(|p| p.traversal.poll_timeout())
                .min();
            let next_ev = self.queue.keys().next().map(|(t, _)| *t);
            let Some(next) = [timers, next_ev].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_ev == Some(next) {
                let Some((_, ev)) = self.queue.pop_first() else {
                    break;
                };
                match ev {
                    Ev::Packet { from, to, payload } => self.deliver(from, to, &payload)?,
                    Ev::Candidates { to, candidates } => {
                        let now = self.now;
                        self.peers[to]
                            .traversal
                            .add_remote_candidates(now, &candidates);
                        self.drain(to)?;
                    }
                    Ev::Forged { to } => {
                        self.stats.forged += 1;
                        let forged = wormhole_core::nat::stun::check_request(
                            wormhole_core::nat::TxId::new(u128::from(self.rng.next_u64())),
                            &CheckKey::new(&[0xee; 32]),
                            1,
                            true,
                        );
                        let now = self.now;
                        self.peers[to]
                            .traversal
                            .handle_datagram(now, ATTACKER, &forged);
                        self.drain(to)?;
                    }
                }
            } else {
                for i in 0..2 {
                    if self.peers[i]
                        .traversal
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now)
                    {
                        let now = self.now;
                        self.peers[i].traversal.handle_timeout(now);
                        self.drain(i)?;
                    }
                }
            }
        }
        self.liveness()
    }

    fn liveness(&mut self) -> Result<(), NatViolation> {
        let routers = (self.peers[0].router, self.peers[1].router);
        let states = [
            self.peers[0].traversal.state(),
            self.peers[1].traversal.state(),
        ];
        for (i, s) in states.iter().enumerate() {
            if matches!(
                s,
                TraversalState::Initial | TraversalState::Probing | TraversalState::Candidates
            ) {
                return Err(NatViolation(format!("peer {i} never ended: {s:?}")));
            }
        }
        let connected = states.map(|s| matches!(s, TraversalState::Connected { .. }));
        let cell = (routers.0 as u8, routers.1 as u8);
        let entry = self.stats.cells.entry(cell).or_default();
        entry.0 += 1;
        entry.1 += u64::from(connected[0] && connected[1]);
        if self.peers.iter().any(|p| {
            matches!(
                p.outcome,
                Some(TraversalEvent::Connected {
                    kind: wormhole_core::nat::CandidateKind::PeerReflexive,
                    ..
                })
            )
        }) {
            self.stats.via_peer_reflexive += 1;
        }
        self.stats.converged += 1;
        let lossless = self.loss == 0;
        if connected[0] != connected[1] {
            if lossless {
                return Err(NatViolation(format!(
                    "the sides disagree on a clean network: {states:?}"
                )));
            }
            self.stats.lossy_disagreements += 1;
            return Ok(());
        }
        if lossless && connected[0] != Router::punchable(routers.0, routers.1) {
            return Err(NatViolation(format!(
                "{routers:?}: connected = {}, but the NATs {} a direct path",
                connected[0],
                if connected[0] {
                    "do not allow"
                } else {
                    "allow"
                }
            )));
        }
        Ok(())
    }
}

/// The NAT traversal simulation, for the shared seed runner.
#[derive(Debug)]
pub struct NatSim;

impl Simulation for NatSim {
    const TEST: &'static str = "nat_sim";
    const SEED_VAR: &'static str = "WORMHOLE_NAT_SEED";
    const SEEDS_VAR: &'static str = "WORMHOLE_NAT_SEEDS";
    const COVERAGE_FROM: u64 = 500;
    const MIN_TRACE: usize = 10;

    type Stats = NatSimStats;
    type World = NatWorld;
    type Violation = NatViolation;

    fn run_seed(seed: u64, trace: bool, echo: bool) -> (NatWorld, Result<(), NatViolation>) {
        let mut world = NatWorld::new(seed, trace, echo);
        let result = world.run();
        (world, result)
    }

    fn trace(world: &NatWorld) -> &[String] {
        &world.trace
    }

    fn stats(world: &NatWorld) -> &NatSimStats {
        &world.stats
    }

    fn merge(into: &mut NatSimStats, from: &NatSimStats) {
        into.converged += from.converged;
        for (cell, (runs, ok)) in &from.cells {
            let e = into.cells.entry(*cell).or_default();
            e.0 += runs;
            e.1 += ok;
        }
        into.lost += from.lost;
        into.duplicated += from.duplicated;
        into.forged += from.forged;
        into.lossy_disagreements += from.lossy_disagreements;
        into.via_peer_reflexive += from.via_peer_reflexive;
    }

    fn converged(stats: &NatSimStats) -> u64 {
        stats.converged
    }

    fn assert_coverage(stats: &NatSimStats) {
        assert_eq!(stats.cells.len(), 16, "every cell ran: {:?}", stats.cells);
        for ((a, b), (runs, ok)) in &stats.cells {
            let punchable = Router::punchable(Router::ALL[*a as usize], Router::ALL[*b as usize]);
            if punchable {
                // Lossy runs may fail now and then; most connect.
                assert!(
                    *ok * 10 >= *runs * 9,
                    "cell {a}×{b}: {ok} of {runs} connected"
                );
            } else {
                assert_eq!(*ok, 0, "cell {a}×{b} connected without a path");
            }
        }
        assert!(stats.lost > 0 && stats.duplicated > 0 && stats.forged > 0);
        assert!(
            stats.via_peer_reflexive > 0,
            "no hole was found from the other side"
        );
        assert!(
            stats.lossy_disagreements * 100 <= stats.converged,
            "the sides disagreed in {} of {} runs",
            stats.lossy_disagreements,
            stats.converged
        );
    }

    fn describe(seed: u64) -> Option<String> {
        let cell = seed % 16;
        Some(format!(
            "host behind {:?}, mount behind {:?}",
            Router::ALL[(cell / 4) as usize],
            Router::ALL[(cell % 4) as usize]
        ))
    }
}
