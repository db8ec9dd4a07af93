//! The seed runner both simulations (`pair_sim`, `fs_sim`) share: run
//! seeds one after another, catch panics, sum the statistics of the
//! passing ones, and report each failure with the command that replays
//! it.

use std::fmt;

/// Why a seed failed.
#[derive(Debug, Clone)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// The broken invariant, or the panic message.
    pub what: String,
    /// The command that replays it with its trace printed.
    pub replay: String,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed: {}\n  replay: {}",
            self.seed, self.what, self.replay
        )
    }
}

/// Runs `run` for every seed, catching panics; returns the passing
/// seeds' statistics summed with `merge`, and the failures (each printed
/// as it happens, with `replay(seed)`).
pub fn run_seeds<S: Default, E: fmt::Display>(
    seeds: impl IntoIterator<Item = u64>,
    replay: fn(u64) -> String,
    run: impl Fn(u64) -> (S, Result<(), E>),
    merge: impl Fn(&mut S, &S),
) -> (S, Vec<SeedFailure>) {
    let mut stats = S::default();
    let mut failures = Vec::new();
    for seed in seeds {
        let what = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed))) {
            Ok((s, Ok(()))) => {
                merge(&mut stats, &s);
                continue;
            }
            Ok((_, Err(v))) => v.to_string(),
            Err(panic) => format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_string())
            ),
        };
        let f = SeedFailure {
            seed,
            what,
            replay: replay(seed),
        };
        eprintln!("{f}");
        failures.push(f);
    }
    (stats, failures)
}

/// A number from the environment variable `name`, if set; a value that
/// is not a number fails the test, saying so.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// A deterministic simulation, as the shared runner and its tests see it:
/// [`simulation_tests!`](crate::simulation_tests) gives each simulation its
/// seed shards, its replay test and its determinism test.
pub trait Simulation {
    /// The test target that runs it (`cargo test --test NAME`).
    const TEST: &'static str;
    /// The environment variable that replays one seed.
    const SEED_VAR: &'static str;
    /// The environment variable that sets how many seeds the shards run.
    const SEEDS_VAR: &'static str;
    /// A shard of at least this many seeds must show full coverage.
    const COVERAGE_FROM: u64;
    /// A traced seed writes at least this many trace lines.
    const MIN_TRACE: usize;
    /// Seeds the determinism test runs twice each.
    const DETERMINISM_SEEDS: u64 = 4;

    /// What a run counts, summed over seeds.
    type Stats: Default + Clone + fmt::Debug + PartialEq;
    /// The simulated world after a run.
    type World;
    /// A broken invariant.
    type Violation: fmt::Display + fmt::Debug;

    /// Runs `seed`: random world and workload, then the liveness phase.
    /// With `trace`, records the trace (printing it as it goes if `echo`).
    fn run_seed(seed: u64, trace: bool, echo: bool) -> (Self::World, Result<(), Self::Violation>);
    /// The trace a run recorded.
    fn trace(world: &Self::World) -> &[String];
    /// What a run counted.
    fn stats(world: &Self::World) -> &Self::Stats;
    /// Adds `from` to `into`.
    fn merge(into: &mut Self::Stats, from: &Self::Stats);
    /// Seeds whose liveness phase ran.
    fn converged(stats: &Self::Stats) -> u64;
    /// Fails unless the workload reached every corner it is meant to.
    fn assert_coverage(stats: &Self::Stats);
    /// A line about the seed's world, printed when it is replayed.
    fn describe(_seed: u64) -> Option<String> {
        None
    }
}

/// Seeds the shards run unless the environment says otherwise.
const DEFAULT_SEEDS: u64 = 10_000;
/// Tests the seeds are spread over (they run in parallel).
pub const SHARDS: u64 = 4;

/// The command that replays `seed` of simulation `S` with its trace.
pub fn replay_command<S: Simulation>(seed: u64) -> String {
    format!(
        "{}={seed} cargo test -p wormhole-tests --test {} -- --nocapture",
        S::SEED_VAR,
        S::TEST
    )
}

/// Runs seeds of `S`, catching panics; returns the summed stats and the
/// failures (each printed with its replay command as it happens).
pub fn run_sim_seeds<S: Simulation>(
    seeds: impl IntoIterator<Item = u64>,
) -> (S::Stats, Vec<SeedFailure>) {
    run_seeds(
        seeds,
        replay_command::<S>,
        |seed| {
            let (world, res) = S::run_seed(seed, false, false);
            (S::stats(&world).clone(), res)
        },
        S::merge,
    )
}

/// Runs shard `shard` of the seeds and checks coverage. Skipped while one
/// seed is being replayed.
pub fn shard<S: Simulation>(shard: u64) {
    if env_u64(S::SEED_VAR).is_some() {
        eprintln!("{} is set: only the replay test runs", S::SEED_VAR);
        return;
    }
    let total = env_u64(S::SEEDS_VAR).unwrap_or(DEFAULT_SEEDS);
    let per = total.div_ceil(SHARDS);
    let seeds = shard * per..((shard + 1) * per).min(total);
    let count = seeds.end.saturating_sub(seeds.start);
    let (stats, failures) = run_sim_seeds::<S>(seeds.clone());
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
        panic!(
            "{} of {count} seeds failed:\n{}",
            failures.len(),
            list.join("\n")
        );
    }
    eprintln!("seeds {seeds:?}: {stats:#?}");
    assert_eq!(
        S::converged(&stats),
        count,
        "every seed ran its liveness phase"
    );
    if count >= S::COVERAGE_FROM {
        S::assert_coverage(&stats);
    }
}

/// Replays the seed the environment names (seed 0 without it), printing
/// its trace as it runs.
pub fn replay_one<S: Simulation>() {
    let seed = env_u64(S::SEED_VAR).unwrap_or(0);
    if let Some(line) = S::describe(seed) {
        println!("seed {seed}: {line}");
    }
    println!("replay with: {}", replay_command::<S>(seed));
    let (world, res) = S::run_seed(seed, true, true);
    println!("stats: {:#?}", S::stats(&world));
    if let Err(v) = res {
        panic!(
            "seed {seed} failed: {v}\n  replay: {}",
            replay_command::<S>(seed)
        );
    }
    assert!(!S::trace(&world).is_empty());
}

/// The same seed gives the same trace, line for line; different seeds give
/// different ones; tracing observes and does not steer.
pub fn determinism<S: Simulation>() {
    let hashes: Vec<u64> = (0..S::DETERMINISM_SEEDS)
        .map(|seed| {
            let (a, ra) = S::run_seed(seed, true, false);
            let (b, rb) = S::run_seed(seed, true, false);
            assert!(ra.is_ok() && rb.is_ok(), "seed {seed}: {ra:?} {rb:?}");
            assert!(
                S::trace(&a).len() > S::MIN_TRACE,
                "seed {seed} did something"
            );
            assert_eq!(
                S::trace(&a),
                S::trace(&b),
                "seed {seed} replays line for line"
            );
            assert_eq!(S::stats(&a), S::stats(&b));
            trace_hash(S::trace(&a))
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
    let (traced, _) = S::run_seed(3, true, false);
    let (silent, _) = S::run_seed(3, false, false);
    assert_eq!(S::stats(&traced), S::stats(&silent));
}

/// A stable 64-bit hash (FNV-1a) of bytes.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The hash of a whole trace.
pub fn trace_hash(lines: &[String]) -> u64 {
    hash(lines.join("\n").as_bytes())
}

/// The tests every simulation has: [`SHARDS`] shards of seeds, the replay
/// of one seed, and the determinism check.
#[macro_export]
macro_rules! simulation_tests {
    ($sim:ty) => {
        #[test]
        fn seeds_shard_0() {
            $crate::seeds::shard::<$sim>(0);
        }

        #[test]
        fn seeds_shard_1() {
            $crate::seeds::shard::<$sim>(1);
        }

        #[test]
        fn seeds_shard_2() {
            $crate::seeds::shard::<$sim>(2);
        }

        #[test]
        fn seeds_shard_3() {
            $crate::seeds::shard::<$sim>(3);
        }

        /// Replays the seed the environment names, printing its trace.
        #[test]
        fn replay_one_seed() {
            $crate::seeds::replay_one::<$sim>();
        }

        #[test]
        fn same_seed_same_trace_and_different_seeds_differ() {
            $crate::seeds::determinism::<$sim>();
        }
    };
}
