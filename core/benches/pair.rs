//! Benchmarks of the pair subsystem's core cost: the core must never be the
//! bottleneck of a node. Results and the machine they came from are kept in
//! `bench/README.md`.
//!
//! Run: `cargo bench -p wormhole-core --bench pair`.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;
use wormhole_core::pair::{
    EndpointPair, FrameKind, KeepaliveFrame, Output, PairConfig, PairEvent, PairKey, PairNonce,
    PairPool, PeerId, PingRole,
};
use wormhole_core::{Instant, Rng};

const KEY: PairKey = PairKey([7; 32]);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn remote() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 9))
}

/// A pool of `n` pairs with one peer per 64 pairs (the per-peer limit).
fn pool(n: u64, role: PingRole) -> PairPool {
    let cfg = PairConfig {
        max_pairs_per_peer: 64,
        ..PairConfig::default()
    };
    let mut pool = PairPool::new(PeerId::from_u64(0), cfg, Rng::from_u64(1));
    for i in 1..=n {
        pool.add(
            Instant::ZERO,
            EndpointPair {
                nonce: PairNonce(i),
                local: addr((i % 60_000) as u16),
                remote: remote(),
                peer: PeerId::from_u64(1 + i / 64),
                key: KEY.clone(),
                role,
            },
        )
        .expect("capacity");
    }
    pool
}

/// Pings arriving at a ponger: decode, verify the MAC, seal and encode the
/// pong, and drain it.
fn keepalive_events(c: &mut Criterion) {
    const PAIRS: u64 = 1_000;
    const ROUNDS: u64 = 16;
    let frames: Vec<(SocketAddr, bytes::Bytes)> = (1..=ROUNDS)
        .flat_map(|seq| {
            (1..=PAIRS).map(move |i| {
                let f = KeepaliveFrame::sealed(&KEY, FrameKind::Ping, PairNonce(i), seq);
                (addr((i % 60_000) as u16), f.encode())
            })
        })
        .collect();
    let mut group = c.benchmark_group("keepalive");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("ping_to_pong_1000_pairs", |b| {
        b.iter_batched_ref(
            || pool(PAIRS, PingRole::Ponger),
            |pool| {
                let now = Instant::ZERO + Duration::from_secs(1);
                for (local, bytes) in &frames {
                    pool.handle_datagram(now, *local, remote(), bytes);
                    black_box(pool.poll_output());
                }
                assert_eq!(pool.drops().total(), 0);
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// One ping interval of a pinger with 100,000 idle pairs: every pair's
/// timer fires once and sends a ping.
fn timeouts(c: &mut Criterion) {
    const PAIRS: u64 = 100_000;
    let mut group = c.benchmark_group("timeouts");
    group.throughput(Throughput::Elements(PAIRS));
    group.sample_size(10);
    group.bench_function("one_interval_100k_idle_pairs", |b| {
        b.iter_batched_ref(
            || pool(PAIRS, PingRole::Pinger),
            |pool| {
                let end = Instant::ZERO + Duration::from_secs(10);
                let mut pings = 0u64;
                while let Some(t) = pool.poll_timeout().filter(|&t| t < end) {
                    pool.handle_timeout(t);
                    while let Some(out) = pool.poll_output() {
                        pings += u64::from(matches!(out, Output::Transmit(_)));
                    }
                }
                assert_eq!(pings, PAIRS);
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// A complete handover between two in-memory pools: Lock, LockOk, Take,
/// TakeOk, Release, ReleaseOk, with every signal through the wire codec.
fn handover(c: &mut Criterion) {
    fn pump(a: &mut PairPool, b: &mut PairPool, now: Instant) -> usize {
        let mut events = 0;
        loop {
            let mut moved = false;
            for a_to_b in [true, false] {
                let (src, dst) = if a_to_b {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                while let Some(out) = src.poll_output() {
                    moved = true;
                    match out {
                        Output::Signal { signal, .. } => {
                            dst.handle_signal_bytes(now, src.local_id(), &signal.encode());
                        }
                        Output::Transmit(t) => {
                            dst.handle_datagram(now, t.remote, t.local, &t.payload)
                        }
                        Output::Event(PairEvent::Taken { .. } | PairEvent::Released { .. }) => {
                            events += 1;
                        }
                        Output::Event(_) => {}
                    }
                }
            }
            if !moved {
                return events;
            }
        }
    }
    let (a_id, b_id) = (PeerId::from_u64(1), PeerId::from_u64(2));
    let pair = |local, remote, peer, role| EndpointPair {
        nonce: PairNonce(1),
        local,
        remote,
        peer,
        key: KEY.clone(),
        role,
    };
    let mut a = PairPool::new(a_id, PairConfig::default(), Rng::from_u64(1));
    let mut b = PairPool::new(b_id, PairConfig::default(), Rng::from_u64(2));
    a.add(
        Instant::ZERO,
        pair(addr(1), remote(), b_id, PingRole::Pinger),
    )
    .expect("add");
    b.add(
        Instant::ZERO,
        pair(remote(), addr(1), a_id, PingRole::Ponger),
    )
    .expect("add");
    let now = Instant::ZERO + Duration::from_secs(1);
    c.bench_function("handover/take_and_release", |bench| {
        bench.iter(|| {
            let (nonce, _) = a.take(now, b_id).expect("idle");
            assert_eq!(pump(&mut a, &mut b, now), 2);
            a.release(now, nonce).expect("in use");
            assert_eq!(pump(&mut a, &mut b, now), 2);
        });
    });
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

/// Memory per idle pair at two pool sizes: constant if the two agree.
fn memory_per_pair() {
    for n in [100_000u64, 1_000_000] {
        let before = rss_bytes().unwrap_or(0);
        let pool = pool(n, PingRole::Pinger);
        let after = rss_bytes().unwrap_or(0);
        println!(
            "memory/idle_pair ({n} pairs): {} bytes per pair (RSS delta)",
            after.saturating_sub(before) / n
        );
        drop(black_box(pool));
    }
}

criterion_group!(benches, keepalive_events, timeouts, handover);

fn main() {
    memory_per_pair();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
