//! Deterministic simulations, fuzz target bodies and end-to-end test
//! helpers of Wormhole.

pub mod coturn;
pub mod doomed;
pub mod e2e;
pub mod fs_sim;
pub mod fuzz;
pub mod nat_sim;
pub mod pair_sim;
pub mod quic;
pub mod seeds;
