//! Simulation harness.
