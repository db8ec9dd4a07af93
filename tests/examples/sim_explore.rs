//! Runs many simulation seeds fast (build with `--release`) and prints what
//! they exercised; with a count of 0, replays one seed with its trace.
//!
//! `cargo run --release -p wormhole-tests --example sim_explore -- <first> <count>`
fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (from, count) = (arg(1, 0), arg(2, 1000));
    if count == 0 {
        let (_world, res) = wormhole_tests::pair_sim::workload::run_seed(from, true, true);
        println!("{res:?}");
        return;
    }
    let (stats, failures) = wormhole_tests::pair_sim::workload::run_seeds(from..from + count);
    println!("{stats:#?}\n{} of {count} seeds failed", failures.len());
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
