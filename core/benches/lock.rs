//! Benchmarks of the host lock table: acquire and release must stay cheap
//! (O(depth · log n)) however many locks are held, because every write a
//! client makes starts with one.
//!
//! Run: `cargo bench -p wormhole-core --bench lock`.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::time::Duration;
use wormhole_core::lock::{Acquired, LockConfig, LockError, LockRequest, LockTable};
use wormhole_core::proto::{LockKind, LockScope, NodeId, RequestId, SessionId};
use wormhole_core::{Instant, Rng};

/// Locks held while measuring.
const HELD: u64 = 10_000;
/// Sessions holding them (100 locks each).
const SESSIONS: u64 = 100;

fn session(n: u64) -> SessionId {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    SessionId(id)
}

/// A tree of 10 top directories × 10 subdirectories × files: a file's
/// ancestor chain is (subdirectory, top directory, root).
fn ancestors(file: u64) -> [NodeId; 3] {
    let sub = file % 100;
    [NodeId(100 + sub), NodeId(10 + sub / 10), NodeId::ROOT]
}

fn file_node(file: u64) -> NodeId {
    NodeId(1_000_000 + file)
}

/// A table holding `HELD` exclusive file locks spread over the tree.
fn table() -> LockTable {
    let mut t = LockTable::new(LockConfig::default(), Rng::from_u64(1));
    for f in 0..HELD {
        let anc = ancestors(f);
        let r = t.acquire(
            Instant::ZERO,
            &LockRequest {
                session: session(f % SESSIONS),
                request: RequestId(f),
                scope: LockScope::File(file_node(f)),
                kind: LockKind::Exclusive,
                wait: false,
                ancestors: &anc,
            },
        );
        assert!(matches!(r, Ok(Acquired::Granted(_))));
    }
    assert_eq!(t.len() as u64, HELD);
    t
}

/// One acquire of a free file (beside the held ones) and its release.
fn acquire_release(t: &mut LockTable, now: Instant, i: u64) {
    let f = HELD + i % 1000;
    let anc = ancestors(f);
    let s = session(i % SESSIONS);
    let r = t.acquire(
        now,
        &LockRequest {
            session: s,
            request: RequestId(i),
            scope: LockScope::File(file_node(f)),
            kind: LockKind::Exclusive,
            wait: false,
            ancestors: &anc,
        },
    );
    let Ok(Acquired::Granted(g)) = r else {
        panic!("free file refused: {r:?}")
    };
    t.release(now, s, black_box(g.token)).expect("held");
}

fn lock_ops(c: &mut Criterion) {
    let now = Instant::ZERO + Duration::from_secs(1);
    let mut group = c.benchmark_group("lock");
    group.throughput(Throughput::Elements(1));

    let mut t = table();
    let mut i = 0u64;
    group.bench_function("acquire_release_10k_held", |b| {
        b.iter(|| {
            i += 1;
            acquire_release(&mut t, now, i);
        });
    });

    // A subtree request over held files: refused after the index lookups,
    // without visiting the files.
    let mut t = table();
    group.bench_function("subtree_conflict_10k_held", |b| {
        b.iter(|| {
            let r = t.acquire(
                now,
                &LockRequest {
                    session: session(0),
                    request: RequestId(0),
                    scope: LockScope::Subtree(NodeId(10)),
                    kind: LockKind::Shared,
                    wait: false,
                    ancestors: &[NodeId::ROOT],
                },
            );
            assert_eq!(r, Err(LockError::WouldBlock));
        });
    });
    group.finish();
}

/// The headline figure, measured directly so it prints as a plain number.
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the benchmark, not the core, reads the clock"
)]
fn headline() {
    let mut t = table();
    let now = Instant::ZERO + Duration::from_secs(1);
    const OPS: u64 = 1_000_000;
    // Warm the caches and the allocator first.
    for i in 0..OPS / 10 {
        acquire_release(&mut t, now, i);
    }
    let start = std::time::Instant::now();
    for i in 0..OPS {
        acquire_release(&mut t, now, i);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "lock/acquire+release with {HELD} held locks: {:.0} pairs/s ({:.0} ns per acquire+release)",
        OPS as f64 / secs,
        secs * 1e9 / OPS as f64
    );
}

criterion_group!(benches, lock_ops);

fn main() {
    headline();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
