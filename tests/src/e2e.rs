//! Helpers shared by the end-to-end tests (`fuse_e2e`, `quic_e2e`).

use std::time::Duration;

/// Polls `check` until it holds, for at most `limit`. Only for what no
/// event announces to the test's thread (the kernel's view of a file, a
/// port becoming free); everything else is awaited.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes that differ per file and per position (xorshift), so a misplaced
/// or stale chunk never matches by accident.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
