//! Benchmarks of the pair subsystem (filled in below).
fn main() {}
