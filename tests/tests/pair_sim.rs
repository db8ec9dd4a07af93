//! The deterministic simulation of the pair subsystem (see
//! `wormhole_tests::pair_sim`): thousands of seeds, each a random world and
//! workload with every safety invariant checked after every input, then a
//! liveness phase.
//!
//! * `WORMHOLE_SIM_SEED=<n>` replays one seed with its trace printed (add
//!   `-- --nocapture` to see it even when it passes); the seed shards then
//!   skip.
//! * `WORMHOLE_SIM_SEEDS=<count>` runs more (or fewer) seeds than the
//!   default 10,000.

use std::time::Duration;
use wormhole_core::pair::PairConfig;
use wormhole_tests::pair_sim::workload::{
    SEED_VAR, replay_command, run_seed, run_seeds, scenario, trace_hash,
};
use wormhole_tests::pair_sim::{HoldPolicy, LinkParams, Op, SimConfig, SimStats, World};
use wormhole_tests::seeds::env_u64;

const DEFAULT_SEEDS: u64 = 10_000;
const SHARDS: u64 = 4;

/// Runs shard `shard` of the seeds and checks that the workload reached
/// every corner it is meant to.
fn shard(shard: u64) {
    if env_u64(SEED_VAR).is_some() {
        eprintln!("{SEED_VAR} is set: only the replay test runs");
        return;
    }
    let total = env_u64("WORMHOLE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let per = total.div_ceil(SHARDS);
    let seeds = shard * per..((shard + 1) * per).min(total);
    let count = seeds.end.saturating_sub(seeds.start);
    let (stats, failures) = run_seeds(seeds.clone());
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        panic!(
            "{} of {count} seeds failed:\n{}",
            failures.len(),
            list.join("\n")
        );
    }
    eprintln!("seeds {seeds:?}: {stats:#?}");
    assert_eq!(stats.converged, count, "every seed ran its liveness phase");
    if count >= 1000 {
        assert_coverage(&stats);
    }
}

/// The random workload is only worth its seeds if it exercises every
/// outcome: these prove it does (per 1000 seeds, each happens many times).
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

#[test]
fn seeds_shard_0() {
    shard(0);
}

#[test]
fn seeds_shard_1() {
    shard(1);
}

#[test]
fn seeds_shard_2() {
    shard(2);
}

#[test]
fn seeds_shard_3() {
    shard(3);
}

/// `WORMHOLE_SIM_SEED=<n>`: replays seed `n`, printing its trace as it
/// runs. Without it, replays seed 0 the same way.
#[test]
fn replay_one_seed() {
    let seed = env_u64(SEED_VAR).unwrap_or(0);
    let sc = scenario(seed);
    println!("seed {seed}: {:?}", sc.config);
    println!("replay with: {}", replay_command(seed));
    let (world, res) = run_seed(seed, true, true);
    println!("stats: {:#?}", world.stats());
    if let Err(v) = res {
        panic!(
            "seed {seed} failed: {v}\n  replay: {}",
            replay_command(seed)
        );
    }
    assert!(!world.trace().is_empty());
}

#[test]
fn same_seed_same_trace_and_different_seeds_differ() {
    let hashes: Vec<u64> = (0..5)
        .map(|seed| {
            let (a, ra) = run_seed(seed, true, false);
            let (b, rb) = run_seed(seed, true, false);
            assert!(ra.is_ok() && rb.is_ok(), "seed {seed}: {ra:?} {rb:?}");
            assert!(a.trace().len() > 50, "seed {seed} did something");
            assert_eq!(a.trace(), b.trace(), "seed {seed} replays byte for byte");
            assert_eq!(a.stats(), b.stats());
            trace_hash(a.trace())
        })
        .collect();
    for i in 0..hashes.len() {
        for j in i + 1..hashes.len() {
            assert_ne!(
                hashes[i], hashes[j],
                "seeds {i} and {j} gave the same trace"
            );
        }
    }
    // Tracing observes; it does not steer: the same seed without a trace
    // does exactly the same things.
    let (traced, _) = run_seed(3, true, false);
    let (silent, _) = run_seed(3, false, false);
    assert_eq!(traced.stats(), silent.stats());
}

/// One short, readable run, pinned: a take, a release, a simultaneous take
/// from both sides decided by the tie-break, and a take under a signalling
/// partition that times out.
#[test]
fn readable_trace_snapshot() {
    let cfg = SimConfig {
        nodes: 2,
        pair: PairConfig::default(),
        link: LinkParams::CLEAN,
        hold: HoldPolicy::Manual,
        max_pairs: 4,
    };
    let mut world = World::new(42, &cfg).with_trace(false);
    let ms = |millis| Op::Advance { millis };
    let ops = [
        Op::AddPair {
            a: 0,
            b: 1,
            a_pings: true,
        },
        ms(12_000),
        Op::Take { node: 1, peer: 0 },
        ms(1_000),
        Op::Release {
            pair: 0,
            second: true,
        },
        ms(1_000),
        // Both sides take at once: the lower peer id (node 0) wins.
        Op::TakePair {
            pair: 0,
            second: false,
        },
        Op::TakePair {
            pair: 0,
            second: true,
        },
        ms(1_000),
        Op::Release {
            pair: 0,
            second: false,
        },
        ms(1_000),
        Op::Partition {
            a: 0,
            b: 1,
            channel: wormhole_tests::pair_sim::Channel::Signal,
        },
        Op::Take { node: 0, peer: 1 },
        ms(6_000),
        Op::Heal { a: 0, b: 1 },
        ms(1_000),
    ];
    for op in &ops {
        world.apply(op).expect("no invariant breaks");
    }
    insta::assert_snapshot!("pair_sim_trace", world.trace().join("\n"));
    let drained = world.converge().expect("converges");
    assert!(
        drained <= Duration::from_secs(1),
        "nothing was left to drain: {drained:?}"
    );
}

/// The checks have teeth: a peer that breaks the protocol (here, a forged
/// Release for a handover the sender still uses) is caught at once, as a
/// pair InUse on one side while the other side is back in keepalive.
#[test]
fn invariants_catch_a_peer_that_breaks_the_protocol() {
    use wormhole_core::pair::{HandoverId, PairNonce, PeerId, Signal, SignalKind};
    let cfg = SimConfig {
        nodes: 2,
        pair: PairConfig::default(),
        link: LinkParams::CLEAN,
        hold: HoldPolicy::Manual,
        max_pairs: 4,
    };
    let mut world = World::new(7, &cfg).with_trace(false);
    for op in [
        Op::AddPair {
            a: 0,
            b: 1,
            a_pings: true,
        },
        Op::Advance { millis: 12_000 },
        Op::Take { node: 1, peer: 0 },
        Op::Advance { millis: 1_000 },
    ] {
        world.apply(&op).expect("an honest run");
    }
    let nonce = PairNonce(1);
    let handover = world.pool(1).handover(nonce).expect("taken").id();
    assert_eq!(
        handover,
        HandoverId {
            initiator: PeerId::from_u64(2),
            seq: 1
        }
    );
    let forged = Signal {
        pair: nonce,
        handover,
        kind: SignalKind::Release,
    };
    let violation = world
        .forge_signal(0, 1, forged)
        .expect_err("node 1 still uses the pair node 0 just released");
    assert!(violation.what.starts_with("S3:"), "{violation}");
}
