//! The transport's own speed, as the reference a cold read through a
//! mount is measured against (issue 19: cold sequential read ≥ 70 % of
//! raw QUIC): one QUIC stream carrying 1 GiB over loopback with the file
//! protocol's exact configuration, on both shells, three runs each.
//! `cargo bench -p wormhole-tests --bench quic_raw`; `QUIC_RAW_MB` sets
//! the size, `QUIC_RAW_SHELLS` which shells (`tokio,smol`). Prints MB/s
//! per run and a `median SHELL MB/s` line per shell (`bench/sshfs.sh`
//! reads it); nothing here passes or fails on speed.

use wormhole_io::Shell;
use wormhole_io::net::quic::loopback_stream_time;
use wormhole_tests::e2e::{SmolShell, TokioShell};

fn main() {
    let mb: usize = std::env::var("QUIC_RAW_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let shells = std::env::var("QUIC_RAW_SHELLS").unwrap_or_else(|_| "tokio,smol".into());
    println!(
        "{:<6} {:>10} {:>10} {:>10}",
        "shell", "run 1", "run 2", "run 3"
    );
    let mut medians = Vec::new();
    for name in shells.split(',') {
        match name {
            "tokio" => medians.push(run(&TokioShell::new().expect("tokio"), mb)),
            // Each shell as the command line makes it.
            "smol" => medians.push(run(&SmolShell::on_this_thread().expect("smol"), mb)),
            other => eprintln!("unknown shell {other:?} (tokio or smol)"),
        }
    }
    for (shell, median) in medians {
        println!("median {shell} {median:.0}");
    }
}

/// Three runs; prints them and gives the median, MB/s.
fn run<S: Shell>(shell: &S, mb: usize) -> (&'static str, f64) {
    let bytes = mb << 20;
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let took = shell
                .block_on(loopback_stream_time(shell.runtime(), bytes))
                .expect("a stream over loopback");
            bytes as f64 / took.as_secs_f64() / 1e6
        })
        .collect();
    println!(
        "{:<6} {:>10} {:>10} {:>10}",
        shell.name(),
        format!("{:.0} MB/s", runs[0]),
        format!("{:.0} MB/s", runs[1]),
        format!("{:.0} MB/s", runs[2])
    );
    runs.sort_by(f64::total_cmp);
    (shell.name(), runs[1])
}
