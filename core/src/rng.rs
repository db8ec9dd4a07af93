//! The core's randomness: a seeded PRNG owned by each machine.
//!
//! The shell seeds it from the operating system; simulations seed it from the
//! test seed, so the same seed and the same inputs give byte-identical
//! outputs. ChaCha12 is a cryptographic generator, so values drawn from it
//! (lock tokens, handover identifiers) are unguessable when the seed is.

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};
use std::time::Duration;

/// A deterministic, seedable random number generator.
#[derive(Clone, Debug)]
pub struct Rng(ChaCha12Rng);

impl Rng {
    /// A generator from a 32-byte seed (the shell passes OS randomness).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Rng(ChaCha12Rng::from_seed(seed))
    }

    /// A generator from a small seed, for tests and simulations.
    pub fn from_u64(seed: u64) -> Self {
        Rng(ChaCha12Rng::seed_from_u64(seed))
    }

    /// A uniformly random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Fills `dest` with random bytes.
    pub fn fill(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    /// A uniformly random value in `0..bound` (`0` when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the tiny bias is irrelevant for timers and
        // workloads, and it never loops.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A uniformly random float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `base` scaled by a random factor in `[1 - spread/2, 1 + spread/2)`.
    ///
    /// `spread` 0.1 gives the ±5 % band the connection spec calls "10 %
    /// jitter" (`capped * jitter * (random - 0.5)`).
    pub fn jitter(&mut self, base: Duration, spread: f64) -> Duration {
        let factor = 1.0 + spread * (self.unit() - 0.5);
        base.mul_f64(factor.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::from_u64(7);
        let mut b = Rng::from_u64(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::from_u64(8).next_u64(), xs[0]);
    }

    #[test]
    fn below_and_jitter_stay_in_range() {
        let mut rng = Rng::from_u64(1);
        assert_eq!(rng.below(0), 0);
        for _ in 0..1000 {
            assert!(rng.below(10) < 10);
            let d = rng.jitter(Duration::from_secs(10), 0.1);
            assert!(d >= Duration::from_millis(9500) && d < Duration::from_millis(10500));
        }
    }
}
