//! Fuzz target `pair_machines`: the body is `wormhole_tests::fuzz::pair_machines`, which
//! `cargo test` also runs over the checked-in corpus.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wormhole_tests::fuzz::pair_machines(data));
