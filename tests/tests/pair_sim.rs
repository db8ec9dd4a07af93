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
use wormhole_tests::pair_sim::workload::PairSim;
use wormhole_tests::pair_sim::{HoldPolicy, LinkParams, Op, SimConfig, World};

wormhole_tests::simulation_tests!(PairSim);

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
