//! Random workloads: a seed becomes a world shape and a list of [`Op`]s,
//! and [`run_seed`] runs them followed by the liveness phase.

use super::net::LinkParams;
use super::op::{ArbSignal, Channel, InjectPayload, Op};
use super::world::{HoldPolicy, SimConfig, SimStats, Violation, World};
use crate::seeds::Simulation;
use std::time::Duration;
use wormhole_core::Rng;
use wormhole_core::pair::PairConfig;

fn chance(rng: &mut Rng, pct: u64) -> bool {
    rng.below(100) < pct
}

fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

fn u8_of(x: u64) -> u8 {
    u8::try_from(x).unwrap_or(u8::MAX)
}

fn u16_of(x: u64) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}

/// A random link: mostly calm, sometimes rough (heavy loss, duplication,
/// jitter and delay spikes beyond the drain timeout).
fn random_link(rng: &mut Rng, rough: bool) -> LinkParams {
    if rough {
        LinkParams {
            delay_ms: u16_of(range(rng, 5, 300)),
            jitter_ms: u16_of(range(rng, 0, 600)),
            loss_pct: u8_of(range(rng, 0, 30)),
            dup_pct: u8_of(range(rng, 0, 10)),
            spike_pct: u8_of(range(rng, 0, 5)),
            spike_ms: u16_of(range(rng, 500, 4000)),
        }
    } else {
        LinkParams {
            delay_ms: u16_of(range(rng, 1, 50)),
            jitter_ms: u16_of(range(rng, 0, 20)),
            loss_pct: u8_of(range(rng, 0, 2)),
            dup_pct: u8_of(range(rng, 0, 1)),
            spike_pct: 0,
            spike_ms: 0,
        }
    }
}

/// The world a seed runs in, and the operations it applies.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The world's shape.
    pub config: SimConfig,
    /// The operations: first `SetLink`s that give links their own
    /// behaviour, then the initial pairs, then the timed workload.
    pub ops: Vec<Op>,
}

/// Turns a seed into a scenario: 2–4 nodes, default or stress timing,
/// random links, and 60–240 s of random workload.
pub fn scenario(seed: u64) -> Scenario {
    let mut rng = Rng::from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
    let nodes = usize::from(u8_of(range(&mut rng, 2, 4)));
    let stress = chance(&mut rng, 40);
    let mut pair = if stress {
        SimConfig::stress_pair_config()
    } else {
        PairConfig::default()
    };
    if chance(&mut rng, 30) {
        pair.max_pairs_per_peer = usize::from(u8_of(range(&mut rng, 1, 3)));
    }
    let rough = chance(&mut rng, 60);
    let link = random_link(&mut rng, rough);
    let hold_max = if stress { 8_000 } else { 30_000 };
    let config = SimConfig {
        nodes,
        pair: pair.clone(),
        link,
        hold: HoldPolicy::Random {
            min: Duration::ZERO,
            max: Duration::from_millis(hold_max),
        },
        max_pairs: 200,
    };
    let n = u8_of(nodes as u64);
    let node = |rng: &mut Rng| u8_of(rng.below(u64::from(n)));
    let mut ops = Vec::new();

    // Each link its own behaviour.
    for a in 0..n {
        for b in a + 1..n {
            for lane in [super::net::Lane::Udp, super::net::Lane::Signal] {
                if chance(&mut rng, 50) {
                    let rough = chance(&mut rng, 50);
                    ops.push(Op::SetLink {
                        a,
                        b,
                        lane,
                        params: random_link(&mut rng, rough),
                    });
                }
            }
        }
    }
    for _ in 0..range(&mut rng, 1, 3) {
        let (a, b) = (node(&mut rng), node(&mut rng));
        ops.push(Op::AddPair {
            a,
            b,
            a_pings: chance(&mut rng, 50),
        });
    }

    // The workload, in a timescale of the pair config.
    let unit = u64::try_from(pair.ping_interval.as_millis()).unwrap_or(10_000) / 10;
    let total = unit * range(&mut rng, 60, 240);
    let mut t = 0;
    let mut heals: Vec<(u64, u8, u8)> = Vec::new();
    let mut pairs = 0u64;
    while t < total {
        let gap = match rng.below(100) {
            0..70 => rng.below(3 * unit),
            70..92 => rng.below(12 * unit),
            _ => range(&mut rng, 12 * unit, 45 * unit),
        };
        t += gap;
        // Advance in steps an op can carry.
        let mut left = gap;
        while left > 0 {
            let step = left.min(60_000);
            ops.push(Op::Advance {
                millis: u16_of(step),
            });
            left -= step;
        }
        heals.retain(|&(at, a, b)| {
            if at <= t {
                ops.push(Op::Heal { a, b });
                false
            } else {
                true
            }
        });
        let pair = u8_of(rng.below(pairs.max(1)));
        let second = chance(&mut rng, 50);
        let op = match rng.below(100) {
            0..12 => {
                pairs += 1;
                Op::AddPair {
                    a: node(&mut rng),
                    b: node(&mut rng),
                    a_pings: chance(&mut rng, 50),
                }
            }
            12..42 => Op::Take {
                node: node(&mut rng),
                peer: node(&mut rng),
            },
            42..60 => Op::TakePair { pair, second },
            60..66 => Op::Release { pair, second },
            66..68 => Op::Remove { pair, second },
            68..69 => Op::Poke {
                node: node(&mut rng),
            },
            69..79 => {
                let (a, b) = (node(&mut rng), node(&mut rng));
                let channel = match rng.below(3) {
                    0 => Channel::Udp,
                    1 => Channel::Signal,
                    _ => Channel::Both,
                };
                // Short blips, and partitions long enough to expire pairs.
                let len = if chance(&mut rng, 60) {
                    rng.below(8 * unit)
                } else {
                    range(&mut rng, 20 * unit, 60 * unit)
                };
                heals.push((t + len, a, b));
                Op::Partition { a, b, channel }
            }
            79..83 => {
                let (a, b) = (node(&mut rng), node(&mut rng));
                let lane = if chance(&mut rng, 50) {
                    super::net::Lane::Udp
                } else {
                    super::net::Lane::Signal
                };
                let rough = chance(&mut rng, 50);
                Op::SetLink {
                    a,
                    b,
                    lane,
                    params: random_link(&mut rng, rough),
                }
            }
            83..87 => Op::DeliverNow {
                index: u8_of(rng.below(256)),
            },
            87..89 => Op::Duplicate {
                index: u8_of(rng.below(256)),
            },
            89..90 => Op::DropMessage {
                index: u8_of(rng.below(256)),
            },
            90..94 => Op::Replay {
                index: u8_of(rng.below(256)),
                count: u8_of(rng.below(8)),
                delay_ms: u16_of(rng.below(20 * unit)),
            },
            94..97 => Op::InjectDatagram {
                pair,
                second,
                spoof: chance(&mut rng, 50),
                payload: if chance(&mut rng, 30) {
                    InjectPayload::Captured {
                        index: u8_of(rng.below(256)),
                    }
                } else if chance(&mut rng, 50) {
                    InjectPayload::Forged {
                        pong: chance(&mut rng, 50),
                        ping: rng.below(20),
                    }
                } else {
                    let len = rng.below(48) as usize;
                    let mut v = vec![0u8; len];
                    rng.fill(&mut v);
                    if let Some(b) = v.first_mut() {
                        *b = 1;
                    }
                    InjectPayload::Raw(v)
                },
            },
            _ => {
                let signal = ArbSignal {
                    initiator: u8_of(rng.below(u64::from(n) + 1)),
                    seq: rng.below(4),
                    kind: u8_of(rng.below(12)),
                };
                Op::InjectSignal {
                    pair,
                    second,
                    from: node(&mut rng),
                    signal,
                }
            }
        };
        ops.push(op);
    }
    Scenario { config, ops }
}

pub use crate::seeds::SeedFailure;

/// Runs a scenario's ops, then the liveness phase.
pub fn run_world(world: &mut World, ops: &[Op]) -> Result<(), Violation> {
    for op in ops {
        world.apply(op)?;
    }
    world.converge()?;
    Ok(())
}

/// Runs one seed (random phase then liveness). With `trace`, records the
/// trace (and prints it as it goes if `echo`).
pub fn run_seed(seed: u64, trace: bool, echo: bool) -> (World, Result<(), Violation>) {
    let sc = scenario(seed);
    let mut world = World::new(seed, &sc.config);
    if trace {
        world = world.with_trace(echo);
    }
    let res = run_world(&mut world, &sc.ops);
    (world, res)
}

/// The pair simulation, for the shared seed runner
/// ([`simulation_tests!`](crate::simulation_tests)).
#[derive(Debug)]
pub struct PairSim;

impl Simulation for PairSim {
    const TEST: &'static str = "pair_sim";
    const SEED_VAR: &'static str = "WORMHOLE_SIM_SEED";
    const SEEDS_VAR: &'static str = "WORMHOLE_SIM_SEEDS";
    const COVERAGE_FROM: u64 = 1000;
    const MIN_TRACE: usize = 50;
    const DETERMINISM_SEEDS: u64 = 5;

    type Stats = SimStats;
    type World = World;
    type Violation = Violation;

    fn run_seed(seed: u64, trace: bool, echo: bool) -> (World, Result<(), Violation>) {
        run_seed(seed, trace, echo)
    }

    fn trace(world: &World) -> &[String] {
        world.trace()
    }

    fn stats(world: &World) -> &SimStats {
        world.stats()
    }

    fn merge(into: &mut SimStats, from: &SimStats) {
        into.merge(from);
    }

    fn converged(stats: &SimStats) -> u64 {
        stats.converged
    }

    /// The random workload is only worth its seeds if it exercises every
    /// outcome: these prove it does (per 1000 seeds, each happens many
    /// times).
    fn assert_coverage(stats: &SimStats) {
        let failed = |reason: &str| stats.failed.get(reason).copied().unwrap_or(0);
        let checks = [
            ("Taken events", stats.taken),
            ("releases by the peer", stats.released_by_peer),
            ("releases by us", stats.released_by_us),
            ("expiries", stats.expired),
            ("refused takes", stats.takes_refused),
            ("lost messages", stats.lost),
            ("duplicated messages", stats.duplicated),
            ("dropped inputs", stats.drops),
            (
                "keepalive reaching an in-use side",
                stats.keepalive_reached_in_use,
            ),
            ("pairs surviving the liveness phase", stats.pairs_survived),
            ("handover timeouts", failed("Timeout")),
            ("lost tie-breaks", failed("LostTie")),
            ("Busy(Contended)", failed("Busy(Contended)")),
            ("Busy(AlreadyLocked)", failed("Busy(AlreadyLocked)")),
            ("Busy(UnknownPair)", failed("Busy(UnknownPair)")),
            ("aborts", failed("Aborted")),
            ("releases racing a take", failed("ReleasedByPeer")),
            ("unreachable peers", failed("PeerUnreachable")),
        ];
        for (what, count) in checks {
            assert!(count > 0, "the workload never produced {what}: {stats:#?}");
        }
    }

    fn describe(seed: u64) -> Option<String> {
        Some(format!("{:?}", scenario(seed).config))
    }
}
