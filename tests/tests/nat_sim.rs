//! The deterministic simulation of hole punching (see
//! `wormhole_tests::nat_sim`): the 16 cells of host NAT × mount NAT over
//! thousands of seeds with loss, delay, duplication, reordering and a
//! forger.
//!
//! * `WORMHOLE_NAT_SEED=<n>` replays one seed with its trace printed.
//! * `WORMHOLE_NAT_SEEDS=<count>` runs more (or fewer) than 10,000 seeds.

wormhole_tests::simulation_tests!(wormhole_tests::nat_sim::NatSim);
