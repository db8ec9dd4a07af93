//! Simulation harness.

pub mod fs_sim;
pub mod fuzz;
pub mod pair_sim;
