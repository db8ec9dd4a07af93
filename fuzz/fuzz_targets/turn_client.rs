//! Fuzz target `turn_client`: the body is `wormhole_tests::fuzz::turn_client`,
//! which `cargo test` also runs over the checked-in corpus.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wormhole_tests::fuzz::turn_client(data));
