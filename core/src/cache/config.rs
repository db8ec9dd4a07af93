//! Cache TTLs, budgets and caps, with the spec's defaults.

use super::Kind;
use std::time::Duration;

/// TTLs, budgets and caps of a [`super::Cache`].
///
/// The TTLs are the spec's table (docs/filesystem.md, "Cache"), and why they differ:
///
/// * `chunk_ttl` 5 min: a chunk is keyed by the file's content version, so
///   its bytes can only be wrong if the version check itself is stale;
///   attributes (1 s) and host invalidations catch changes long before.
/// * `dir_ttl`, `attr_ttl` 1 s: metadata changes often and is cheap to
///   revalidate; 1 s is what NFS-style close-to-open tools expect.
/// * `negative_ttl` 5 s: build tools probe many missing names repeatedly;
///   a creation through this client or a host invalidation drops the
///   negative entry at once, so only changes by other clients wait.
///
/// Memory is bounded by `l1_max_bytes` (every entry is charged for its key,
/// its bookkeeping and its data) plus `max_entries` entries, and each
/// in-flight key by `max_waiters` waiters; disk by `l2_max_bytes` and
/// `max_l2_entries`.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    /// Freshness of a file chunk.
    pub chunk_ttl: Duration,
    /// Freshness of a directory listing.
    pub dir_ttl: Duration,
    /// Freshness of attributes.
    pub attr_ttl: Duration,
    /// Freshness of a "no such name".
    pub negative_ttl: Duration,
    /// A fetch not completed after this long answers its waiters with
    /// ETIMEDOUT, so a lost reply can never hang a request forever.
    pub fetch_timeout: Duration,
    /// Memory (L1) budget in bytes.
    pub l1_max_bytes: u64,
    /// Disk (L2) budget in bytes; 0 disables the disk cache.
    pub l2_max_bytes: u64,
    /// Fill ratio an eviction batch brings a budget down to (the spec's
    /// 0.8): the headroom makes eviction a batch now and then, not a scan
    /// per insert.
    pub target_ratio: f64,
    /// Entries in memory at most (all kinds), whatever their size.
    pub max_entries: usize,
    /// Chunks in the disk cache at most.
    pub max_l2_entries: usize,
    /// Waiters per in-flight key at most.
    pub max_waiters: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            chunk_ttl: Duration::from_secs(5 * 60),
            dir_ttl: Duration::from_secs(1),
            attr_ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(60),
            l1_max_bytes: 256 << 20,
            l2_max_bytes: 10 << 30,
            target_ratio: 0.8,
            max_entries: 1 << 20,
            max_l2_entries: 1 << 20,
            max_waiters: 1024,
        }
    }
}

impl CacheConfig {
    /// The TTL of an entry of this kind.
    pub fn ttl(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Chunk => self.chunk_ttl,
            Kind::Attr => self.attr_ttl,
            Kind::Dir => self.dir_ttl,
            Kind::Negative => self.negative_ttl,
        }
    }

    /// `limit` scaled by `target_ratio` (clamped to `[0, 1]`, so a bad
    /// ratio can neither grow a budget nor make eviction loop).
    pub(crate) fn target(&self, limit: u64) -> u64 {
        let ratio = if self.target_ratio.is_nan() {
            0.0
        } else {
            self.target_ratio.clamp(0.0, 1.0)
        };
        (limit as f64 * ratio) as u64
    }
}
