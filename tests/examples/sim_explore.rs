//! Runs many simulation seeds fast (build with `--release`) and prints what
//! they exercised; with a count of 0, replays one seed with its trace.
//!
//! `cargo run --release -p wormhole-tests --example sim_explore -- <pair|fs> <first> <count>`
use wormhole_tests::fs_sim::workload::FsSim;
use wormhole_tests::pair_sim::workload::PairSim;
use wormhole_tests::seeds::{Simulation, run_sim_seeds};

fn explore<S: Simulation>(from: u64, count: u64) -> bool {
    if count == 0 {
        let (_world, res) = S::run_seed(from, true, true);
        println!("{res:?}");
        return res.is_ok();
    }
    let (stats, failures) = run_sim_seeds::<S>(from..from + count);
    println!("{stats:#?}\n{} of {count} seeds failed", failures.len());
    failures.is_empty()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (from, count) = (num(2, 0), num(3, 1000));
    let ok = match args.get(1).map(String::as_str) {
        Some("pair") => explore::<PairSim>(from, count),
        Some("fs") => explore::<FsSim>(from, count),
        _ => {
            eprintln!("usage: sim_explore <pair|fs> <first seed> <count>");
            std::process::exit(2);
        }
    };
    if !ok {
        std::process::exit(1);
    }
}
