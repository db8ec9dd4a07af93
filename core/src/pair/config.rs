//! Pair timing and capacity, with defaults justified against real NATs.

use std::time::Duration;

/// Timing and capacity of a [`super::PairPool`].
///
/// The defaults, and why (see `docs/pairs.md` for the long form):
///
/// * `ping_interval` 10 s: RFC 4787 asks NATs to keep idle UDP mappings for
///   at least 2 minutes, but many do not: Linux conntrack drops an
///   unreplied UDP flow after 30 s, and home routers with 30 s mappings are
///   common. A ping every 10 s refreshes a 30 s mapping even when two pings
///   in a row are lost. Each ping/pong is ~40 bytes: 8 bytes/s per pair.
/// * `idle_timeout` 30 s: after three missed intervals the mapping is, on the
///   strictest common NATs, already gone, so keeping the pair only delays
///   the discovery that it is dead. Both roles apply it: the pinger to
///   pongs, the ponger to pings, so a side that never hears from its peer
///   expires too.
/// * `drain_timeout` 2 s: how long a locking pinger waits for the pong of a
///   ping already in flight. An RTT beyond 2 s means the pong is lost.
/// * `signal_retransmit` 500 ms and `handshake_timeout` 5 s: signals may
///   travel over a lossy channel; the initiator repeats its request every
///   500 ms and gives up on a step after 5 s (about 10 tries).
/// * `give_up_timeout` = `idle_timeout`: a side that must hear its peer's
///   confirmation before resuming keepalive (after Take or Release went
///   unanswered) waits this long, then declares the pair expired, exactly
///   as an idle pair with a silent peer would be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairConfig {
    /// Time between two pings of a pinger.
    pub ping_interval: Duration,
    /// Silence after which an idle pair expires.
    pub idle_timeout: Duration,
    /// Age at which an unanswered in-flight ping stops blocking a lock.
    pub drain_timeout: Duration,
    /// Interval between repeats of an unanswered handover signal.
    pub signal_retransmit: Duration,
    /// Time allowed for each step of a handover (lock, take).
    pub handshake_timeout: Duration,
    /// Time a side holding a silent pair waits for its peer before it
    /// declares the pair expired.
    pub give_up_timeout: Duration,
    /// Pairs per peer.
    pub max_pairs_per_peer: usize,
    /// Pairs in the pool.
    pub max_pairs: usize,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(2),
            signal_retransmit: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(5),
            give_up_timeout: Duration::from_secs(30),
            max_pairs_per_peer: 64,
            max_pairs: 1 << 20,
        }
    }
}
