//! Benchmarks of the client cache: hits must cost far less than the FUSE
//! round trip around them (target: ≥ 1,000,000 attribute hits/s on one
//! core), and an entry's bookkeeping must be small next to the 128 KiB
//! chunk it holds.
//!
//! Run: `cargo bench -p wormhole-core --bench cache`.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use wormhole_core::Instant;
use wormhole_core::cache::{Cache, CacheConfig, CacheKey, ChunkKey, Lookup, Value, WaiterId};
use wormhole_core::proto::{Attr, CHUNK_SIZE, FileKey, FileKind, NodeId, Timestamp};

fn attr(node: u64) -> Attr {
    Attr {
        node: NodeId(node),
        key: FileKey { dev: 1, ino: node },
        kind: FileKind::File,
        size: 4096,
        mode: 0o644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        version: 1,
        rdev: 0,
    }
}

fn chunk_key(n: u64) -> ChunkKey {
    ChunkKey {
        file: FileKey {
            dev: 1,
            ino: n / 64,
        },
        version: 1,
        index: n % 64,
    }
}

/// Budgets large enough that nothing is evicted.
fn roomy() -> CacheConfig {
    CacheConfig {
        l1_max_bytes: u64::MAX / 2,
        max_entries: usize::MAX / 2,
        ..CacheConfig::default()
    }
}

/// A cache holding attributes of nodes `1..=n`, filled at time zero.
fn attrs(n: u64) -> Cache {
    let mut cache = Cache::new(roomy());
    for node in 1..=n {
        cache
            .fill(
                Instant::ZERO,
                CacheKey::Attr(NodeId(node)),
                Value::Attr(Arc::new(attr(node))),
            )
            .expect("fill");
    }
    cache
}

/// Attribute hits (getattr answered from the cache) at two cache sizes.
fn attr_hits(c: &mut Criterion) {
    const LOOKUPS: u64 = 10_000;
    let mut group = c.benchmark_group("attr_hit");
    group.throughput(Throughput::Elements(LOOKUPS));
    for entries in [1_000u64, 100_000] {
        let mut cache = attrs(entries);
        // Spread the lookups over the whole key range (a stride coprime
        // with `entries`), so the benchmark is not one hot path.
        let keys: Vec<CacheKey> = (0..LOOKUPS)
            .map(|i| CacheKey::Attr(NodeId(1 + (i * 7919) % entries)))
            .collect();
        let now = Instant::ZERO + Duration::from_millis(500);
        group.bench_function(format!("{entries}_entries"), |b| {
            b.iter(|| {
                for key in &keys {
                    match cache.lookup(now, key, WaiterId(0)) {
                        Ok(Lookup::Hit(v)) => {
                            black_box(v);
                        }
                        other => panic!("expected a hit, got {other:?}"),
                    }
                }
            });
        });
    }
    group.finish();
}

/// Chunk hits: the read path (a reference-counted `Bytes` handed out).
fn chunk_hits(c: &mut Criterion) {
    const ENTRIES: u64 = 10_000;
    let data = Bytes::from(vec![7u8; CHUNK_SIZE]);
    let mut cache = Cache::new(roomy());
    for n in 0..ENTRIES {
        cache
            .fill(
                Instant::ZERO,
                CacheKey::Chunk(chunk_key(n)),
                Value::Chunk(data.clone()),
            )
            .expect("fill");
    }
    let keys: Vec<CacheKey> = (0..ENTRIES)
        .map(|i| CacheKey::Chunk(chunk_key((i * 7919) % ENTRIES)))
        .collect();
    let now = Instant::ZERO + Duration::from_secs(1);
    let mut group = c.benchmark_group("chunk_hit");
    group.throughput(Throughput::Elements(ENTRIES));
    group.bench_function("10000_entries", |b| {
        b.iter(|| {
            for key in &keys {
                black_box(cache.lookup(now, key, WaiterId(0)).expect("hit"));
            }
        });
    });
    group.finish();
}

/// Ten readers of one missing attribute: one fetch, one fill, one
/// answer for all ten (coalescing), repeated over fresh keys.
fn coalesced_miss(c: &mut Criterion) {
    const KEYS: u64 = 1_000;
    let mut group = c.benchmark_group("miss");
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("10_waiters_fetch_fill_answer", |b| {
        b.iter_batched_ref(
            || Cache::new(roomy()),
            |cache| {
                let now = Instant::ZERO;
                for node in 1..=KEYS {
                    let key = CacheKey::Attr(NodeId(node));
                    for w in 0..10 {
                        black_box(cache.lookup(now, &key, WaiterId(w)).expect("miss"));
                    }
                    cache
                        .fill(now, key, Value::Attr(Arc::new(attr(node))))
                        .expect("fill");
                    black_box(cache.poll_output());
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// Inserts into a full cache: every insert past the budget pays its share
/// of eviction batches (scan + sort, down to 80 %) and L2 demotion.
fn churn(c: &mut Criterion) {
    const INSERTS: u64 = 20_000;
    let data = Bytes::from_static(&[1u8; 1024]);
    let cfg = CacheConfig {
        max_entries: 10_000,
        l2_max_bytes: 10_000 * 1024,
        ..CacheConfig::default()
    };
    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(INSERTS));
    group.sample_size(10);
    group.bench_function("20000_chunk_inserts_10000_cap", |b| {
        b.iter_batched_ref(
            || Cache::new(cfg.clone()),
            |cache| {
                for n in 0..INSERTS {
                    let now = Instant::from_nanos(n * 1_000_000);
                    cache
                        .fill(
                            now,
                            CacheKey::Chunk(chunk_key(n)),
                            Value::Chunk(data.clone()),
                        )
                        .expect("fill");
                    while let Some(out) = cache.poll_output() {
                        black_box(out);
                    }
                }
                assert!(cache.len() <= 10_000);
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Resident memory, from the kernel's own accounting.
#[allow(
    clippy::disallowed_methods,
    reason = "the benchmark, not the core, reads /proc"
)]
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory per cached chunk entry, data excluded: every entry shares one
/// static buffer, so the RSS growth is the bookkeeping alone (key, entry,
/// map slots, index, checksum). Also the disk cache index per chunk.
/// Every cache is kept until the end, so no measurement reuses memory
/// another one freed.
fn memory_per_entry() {
    let mut keep = Vec::new();
    let data = Bytes::from_static(b"x");
    for n in [100_000u64, 1_000_000] {
        let before = rss_bytes().unwrap_or(0);
        let mut cache = Cache::new(roomy());
        for i in 0..n {
            cache
                .fill(
                    Instant::ZERO,
                    CacheKey::Chunk(chunk_key(i)),
                    Value::Chunk(data.clone()),
                )
                .expect("fill");
        }
        let after = rss_bytes().unwrap_or(0);
        println!(
            "memory/chunk_entry ({n} entries): {} bytes per entry (RSS delta; charged to the L1 budget: {} bytes)",
            after.saturating_sub(before) / n,
            cache.l1_bytes() / n - 1,
        );
        keep.push(black_box(cache));
    }
    for n in [100_000u64, 1_000_000] {
        let before = rss_bytes().unwrap_or(0);
        let mut cache = Cache::new(CacheConfig {
            max_l2_entries: usize::MAX / 2,
            l2_max_bytes: u64::MAX / 2,
            ..roomy()
        });
        cache.load_l2(Instant::ZERO, (0..n).map(|i| (chunk_key(i), 131_072)));
        let after = rss_bytes().unwrap_or(0);
        println!(
            "memory/l2_index_entry ({n} chunks on disk): {} bytes per chunk (RSS delta)",
            after.saturating_sub(before) / n
        );
        keep.push(black_box(cache));
    }
}

criterion_group!(benches, attr_hits, chunk_hits, coalesced_miss, churn);

fn main() {
    memory_per_entry();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
