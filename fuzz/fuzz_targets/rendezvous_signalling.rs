//! Fuzz target `rendezvous_signalling`: the body is
//! `wormhole_tests::fuzz::rendezvous_signalling`, which `cargo test` also
//! runs over the checked-in corpus.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wormhole_tests::fuzz::rendezvous_signalling(data));
