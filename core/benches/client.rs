//! Benchmark of the mount client: a cache-hit GetAttr through
//! [`ClientCore::op`] (the whole path a FUSE getattr takes in the core:
//! inode → node, cache lookup, the writer's size overlay, the reply) must
//! cost far less than the kernel round trip around it (target: ≥ 1,000,000
//! per second on one core).
//!
//! Run: `cargo bench -p wormhole-core --features testkit --bench client`.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group};
use std::hint::black_box;
use wormhole_core::client::{Answer, ClientConfig, ClientOutput, Op, Req};
use wormhole_core::host::memfs::MemFs;
use wormhole_core::host::{FsOp, HostConfig, RelPath};
use wormhole_core::proto::Name;
use wormhole_core::testkit::World;
use wormhole_core::vfs::Ino;

/// A connected client that has looked up `f` (so its attributes are
/// cached), and the file's inode.
fn warm_client() -> (World, Ino) {
    let mut disk = MemFs::new(1 << 20);
    let name = Name::new("f").expect("valid name");
    disk.execute(FsOp::Create {
        path: RelPath::from(vec![name.clone()]),
        mode: 0o644,
        exclusive: true,
        open: None,
        owner: None,
    })
    .expect("create");
    let mut w = World::new(1, disk, 1, HostConfig::default(), ClientConfig::default());
    let ino = match w.call(
        0,
        Op::Lookup {
            parent: Ino::ROOT,
            name,
        },
    ) {
        Ok(Answer::Entry { ino, .. }) => ino,
        other => panic!("lookup: {other:?}"),
    };
    (w, ino)
}

/// One cache-hit GetAttr: the op and its reply, taken at once.
fn getattr_hit(w: &mut World, ino: Ino, req: u64) {
    let now = w.now;
    let core = &mut w.clients[0].core;
    core.op(now, Req(req), Op::GetAttr { ino });
    match core.poll_output() {
        Some(ClientOutput::Reply { result: Ok(a), .. }) => {
            black_box(a);
        }
        other => panic!("not a hit: {other:?}"),
    }
}

fn getattr_hits(c: &mut Criterion) {
    let (mut w, ino) = warm_client();
    let mut req = 1_000_000u64;
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    g.bench_function("getattr_cache_hit", |b| {
        b.iter(|| {
            req += 1;
            getattr_hit(&mut w, ino, req);
        })
    });
    g.finish();
}

/// The figure itself, printed: hits per second over a fixed batch.
#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the benchmark, not the core, reads the clock"
)]
fn report() {
    let (mut w, ino) = warm_client();
    let n = 2_000_000u64;
    let start = std::time::Instant::now();
    for i in 0..n {
        getattr_hit(&mut w, ino, 10_000_000 + i);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "client/getattr_cache_hit: {:.0} hits/s ({:.0} ns each; target ≥ 1,000,000/s)",
        n as f64 / secs,
        secs * 1e9 / n as f64
    );
}

criterion_group!(benches, getattr_hits);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
