//! The core's cost per relayed packet: a QUIC-sized datagram wrapped in
//! ChannelData for the TURN server, and one unwrapped from it, by a
//! [`TurnClient`] allocated (with a bound channel) on the modelled
//! server. Results are kept in `bench/README.md`.
//!
//! Run: `cargo bench -p wormhole-core --features testkit --bench turn`.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::net::SocketAddr;
use wormhole_core::nat::BindingConfig;
use wormhole_core::turn::server_model::TurnServerModel;
use wormhole_core::turn::{TurnClient, TurnCredentials};
use wormhole_core::{Instant, Rng};

/// A full-sized QUIC datagram.
const DATAGRAM: usize = 1200;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("bench address")
}

fn relayed_packets(c: &mut Criterion) {
    let (local, server_addr, peer) = (
        addr("192.0.2.20:5000"),
        addr("198.51.100.5:3478"),
        addr("203.0.113.9:7000"),
    );
    let mut server = TurnServerModel::new(server_addr, b"relay");
    let now = Instant::ZERO;
    let mut client = TurnClient::new(
        now,
        BindingConfig::interactive(),
        local,
        server_addr,
        TurnCredentials::mint(b"relay", 2_000_000_000, "bench"),
        Rng::from_u64(1),
    );
    client.bind(now, peer);
    for _ in 0..16 {
        while let Some(t) = client.poll_transmit() {
            server.handle_client(t.local, &t.payload);
        }
        while let Some(t) = server.poll_transmit() {
            let _ = client.handle_datagram(now, t.local, &t.payload);
        }
    }
    let relayed = client.relayed().expect("allocated on the model");
    let payload = vec![0x5a; DATAGRAM];
    server.handle_peer(peer, relayed, &payload);
    let incoming = server
        .poll_transmit()
        .expect("relayed to the client")
        .payload;
    assert_eq!(incoming.len(), DATAGRAM + 4, "as ChannelData");
    let mut g = c.benchmark_group("turn");
    g.throughput(Throughput::Elements(1));
    g.bench_function("channel_data_out", |b| {
        b.iter(|| black_box(client.send(peer, black_box(&payload))));
    });
    g.bench_function("channel_data_in", |b| {
        b.iter(|| black_box(client.handle_datagram(now, server_addr, black_box(&incoming))));
    });
    g.finish();
}

criterion_group!(benches, relayed_packets);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
