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
