//! Simulation harness.

pub mod fuzz;
pub mod pair_sim;
