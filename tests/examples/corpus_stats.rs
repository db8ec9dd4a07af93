//! Prints what the checked-in `pair_machines` corpus exercises.
//!
//! `cargo run -p wormhole-tests --example corpus_stats`
use arbitrary::{Arbitrary, Unstructured};
use wormhole_tests::pair_sim::{FuzzWorld, SimStats};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/pair_machines");
    let mut total = SimStats::default();
    let mut files = 0;
    let mut with_pairs = 0;
    for entry in std::fs::read_dir(dir).expect("corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read");
        files += 1;
        let Ok(input) = FuzzWorld::arbitrary_take_rest(Unstructured::new(&data)) else {
            continue;
        };
        let (world, res, _) = wormhole_tests::fuzz::run_fuzz_world_traced(&input);
        assert!(res.is_ok(), "{res:?}");
        if !world.pair_nonces().is_empty() {
            with_pairs += 1;
        }
        total.merge(world.stats());
    }
    println!("{files} files, {with_pairs} with pairs\n{total:#?}");
}
