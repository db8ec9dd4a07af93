//! The transport's own speed, as the reference a cold read through a
//! mount is measured against (issue 19: cold sequential read ≥ 70 % of
//! raw QUIC): one QUIC stream carrying 1 GiB over loopback with the file
//! protocol's exact configuration, on both shells, three runs each.
//! `cargo bench -p wormhole-tests --bench quic_raw`; `QUIC_RAW_MB` sets
//! the size. Prints MB/s; nothing here passes or fails on speed.

use wormhole_io::Shell;
use wormhole_io::net::quic::loopback_stream_time;
use wormhole_tests::e2e::{SmolShell, TokioShell};

fn main() {
    let mb: usize = std::env::var("QUIC_RAW_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    println!(
        "{:<6} {:>10} {:>10} {:>10}",
        "shell", "run 1", "run 2", "run 3"
    );
    run(&TokioShell::new().expect("tokio"), mb);
    run(&SmolShell::new().expect("smol"), mb);
}

fn run<S: Shell>(shell: &S, mb: usize) {
    let bytes = mb << 20;
    let runs: Vec<String> = (0..3)
        .map(|_| {
            let took = shell
                .block_on(loopback_stream_time(shell.runtime(), bytes))
                .expect("a stream over loopback");
            format!("{:.0} MB/s", bytes as f64 / took.as_secs_f64() / 1e6)
        })
        .collect();
    println!(
        "{:<6} {:>10} {:>10} {:>10}",
        shell.name(),
        runs[0],
        runs[1],
        runs[2]
    );
}
