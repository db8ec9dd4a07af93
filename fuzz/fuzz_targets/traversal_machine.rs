//! Fuzz target `traversal_machine`: the body is
//! `wormhole_tests::fuzz::traversal_machine`, which `cargo test` also runs
//! over the checked-in corpus.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wormhole_tests::fuzz::traversal_machine(data));
