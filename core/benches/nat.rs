//! Benchmarks of the NAT machines: connectivity checks answered by a
//! traversal (MAC verified, answer signed), STUN Binding requests and
//! signalling messages handled by the rendezvous, and the rendezvous's
//! memory per registered host. Results are kept in `bench/README.md`.
//!
//! Run: `cargo bench -p wormhole-core --bench nat`.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::net::SocketAddr;
use wormhole_core::nat::stun::{self, Change, CheckKey, TxId};
use wormhole_core::nat::{Role, Traversal, TraversalConfig};
use wormhole_core::rendezvous::wire::{HostId, Signalling, Token};
use wormhole_core::rendezvous::{Rendezvous, ServerAddrs};
use wormhole_core::{Instant, Rng};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("bench address")
}

fn server() -> ServerAddrs {
    ServerAddrs::one_ip("198.51.100.1".parse().expect("ip"), [3478, 3479])
}

/// A check arriving at a traversal that is checking: verify its MAC,
/// learn nothing new (the peer is known), sign and queue the answer.
fn checks(c: &mut Criterion) {
    let key = CheckKey::new(&[3; 32]);
    let local = addr("10.0.0.2:5000");
    let peer = addr("203.0.113.9:6000");
    let mut t = Traversal::new(
        TraversalConfig::default(),
        Role::Controlled,
        key.clone(),
        local,
        vec![local],
        Rng::from_u64(1),
    );
    t.start(Instant::ZERO, None);
    let request = stun::check_request(TxId::new(77), &key, 1, false);
    let mut group = c.benchmark_group("nat");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_answered", |b| {
        b.iter(|| {
            t.handle_datagram(Instant::ZERO, local, peer, black_box(&request));
            while let Some(out) = t.poll_transmit() {
                black_box(out);
            }
        })
    });
    let forged = stun::check_request(TxId::new(78), &CheckKey::new(&[4; 32]), 1, false);
    group.bench_function("forged_check_dropped", |b| {
        b.iter(|| t.handle_datagram(Instant::ZERO, local, peer, black_box(&forged)))
    });
    group.finish();
}

/// The rendezvous: a STUN Binding answer, and Register / Connect.
fn rendezvous(c: &mut Criterion) {
    let addrs = server();
    let local = addrs.primary();
    let mut rv = Rendezvous::new(addrs);
    let from = addr("203.0.113.7:40000");
    let binding = stun::binding_request(TxId::new(5), Change::NONE);
    let token = Token([2; 32]);
    let host = HostId([1; 32]);
    let register = Signalling::Register {
        host,
        verifier: token.verifier(),
    }
    .encode();
    let connect = Signalling::Connect {
        host,
        token,
        session: 9,
        offer: Default::default(),
    }
    .encode();
    let mut group = c.benchmark_group("rendezvous");
    group.throughput(Throughput::Elements(1));
    group.bench_function("stun_binding", |b| {
        b.iter(|| {
            rv.handle_datagram(Instant::ZERO, local, from, black_box(&binding));
            black_box(rv.poll_transmit())
        })
    });
    group.bench_function("register", |b| {
        b.iter(|| {
            rv.handle_datagram(
                Instant::ZERO,
                local,
                addr("192.0.2.10:4000"),
                black_box(&register),
            );
            black_box(rv.poll_transmit())
        })
    });
    group.bench_function("connect_put_through", |b| {
        b.iter(|| {
            rv.handle_datagram(Instant::ZERO, local, from, black_box(&connect));
            black_box(rv.poll_transmit())
        })
    });
    group.finish();
}

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

/// Memory per registered host, with the default limit of 100,000 hosts
/// filled (RSS delta). Registration speed is the `register` benchmark.
fn memory_per_host() {
    let n = 100_000u32;
    let addrs = server();
    let local = addrs.primary();
    let mut rv = Rendezvous::new(addrs);
    let messages: Vec<(SocketAddr, bytes::Bytes)> = (0..n)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let from = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
            (
                from,
                Signalling::Register {
                    host: HostId(id),
                    verifier: [7; 32],
                }
                .encode(),
            )
        })
        .collect();
    let before = rss_bytes().unwrap_or(0);
    for (from, msg) in &messages {
        rv.handle_datagram(Instant::ZERO, local, *from, msg);
        black_box(rv.poll_transmit());
    }
    let after = rss_bytes().unwrap_or(0);
    assert_eq!(rv.hosts(), n as usize);
    println!(
        "rendezvous/registered_host ({n} hosts): {} bytes per host (RSS delta)",
        after.saturating_sub(before) / u64::from(n)
    );
    drop(black_box(rv));
}

criterion_group!(benches, checks, rendezvous);

fn main() {
    memory_per_host();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
