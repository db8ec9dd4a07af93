//! The deterministic simulation of the file system (see
//! `wormhole_tests::fs_sim`): thousands of seeds, each one host and 3–4
//! clients under a random workload and faults, every safety invariant
//! checked after every event, then a liveness phase.
//!
//! * `WORMHOLE_FS_SEED=<n>` replays one seed with its trace printed (add
//!   `-- --nocapture` to see it even when it passes); the seed shards then
//!   skip.
//! * `WORMHOLE_FS_SEEDS=<count>` runs more (or fewer) seeds than the
//!   default 10,000.

use wormhole_tests::fs_sim::FsStats;
use wormhole_tests::fs_sim::workload::{SEED_VAR, replay_command, run_seed, run_seeds, trace_hash};
use wormhole_tests::seeds::env_u64;

const DEFAULT_SEEDS: u64 = 10_000;
const SHARDS: u64 = 4;

fn shard(shard: u64) {
    if env_u64(SEED_VAR).is_some() {
        eprintln!("{SEED_VAR} is set: only the replay test runs");
        return;
    }
    let total = env_u64("WORMHOLE_FS_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let per = total.div_ceil(SHARDS);
    let seeds = shard * per..((shard + 1) * per).min(total);
    let count = seeds.end - seeds.start;
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
    if count >= 200 {
        assert_coverage(&stats);
    }
}

/// The workload is worth its seeds only if the checks had something to
/// check: every kind of fault, commits, acknowledged closes followed by
/// opens elsewhere.
fn assert_coverage(s: &FsStats) {
    let checks = [
        ("commits", s.commits),
        ("fenced staging operations", s.fenced),
        ("acknowledged flushes checked", s.acks_checked),
        ("whole-file reads checked", s.reads_checked),
        ("attributes checked against the ttl", s.attrs_checked),
        ("reads after an acknowledged close", s.reads_after_ack),
        ("short partitions", s.short_partitions),
        ("long partitions", s.long_partitions),
        ("host crashes", s.host_crashes),
        ("client crashes", s.client_crashes),
    ];
    for (what, n) in checks {
        assert!(n > 0, "the workload never produced {what}: {s:#?}");
    }
    assert!(s.ok > s.ops / 2, "most operations should succeed: {s:#?}");
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

/// `WORMHOLE_FS_SEED=<n>`: replays seed `n`, printing its trace as it runs.
/// Without it, replays seed 0.
#[test]
fn replay_one_seed() {
    let seed = env_u64(SEED_VAR).unwrap_or(0);
    println!("replay with: {}", replay_command(seed));
    let (sim, res) = run_seed(seed, true, true);
    println!("stats: {:#?}", sim.stats());
    if let Err(v) = res {
        panic!(
            "seed {seed} failed: {v}\n  replay: {}",
            replay_command(seed)
        );
    }
    assert!(!sim.trace().is_empty());
}

#[test]
fn same_seed_same_trace_and_different_seeds_differ() {
    let hashes: Vec<u64> = (0..4)
        .map(|seed| {
            let (a, ra) = run_seed(seed, true, false);
            let (b, rb) = run_seed(seed, true, false);
            assert!(ra.is_ok() && rb.is_ok(), "seed {seed}: {ra:?} {rb:?}");
            assert!(a.trace().len() > 100, "seed {seed} did something");
            assert_eq!(a.trace(), b.trace(), "seed {seed} replays line for line");
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
    // Tracing observes; it does not steer.
    let (traced, _) = run_seed(3, true, false);
    let (silent, _) = run_seed(3, false, false);
    assert_eq!(traced.stats(), silent.stats());
}
