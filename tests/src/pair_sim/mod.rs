//! A deterministic simulation of the NAT pair subsystem.
//!
//! Several nodes, each with its own [`wormhole_core::pair::PairPool`] and
//! [`wormhole_core::pair::PeerId`], share NAT pairs. Between every two nodes
//! there is a simulated UDP path (for keepalive frames) and a simulated
//! signalling channel (for handover signals), each with its own seeded
//! delay, jitter (so reordering), loss, duplication, rare delay spikes and
//! partitions that start and heal. Time is a simulated
//! [`wormhole_core::Instant`]; nothing here reads a clock or sleeps.
//!
//! The world is driven by a list of [`Op`]s. [`workload`] turns a seed into
//! such a list (random workloads: add pairs, take from either side, hold a
//! taken pair for a while and release it, partitions long enough to expire
//! pairs, removals), and the `pair_machines` fuzz target feeds arbitrary
//! lists. Either way, [`World`] checks its safety invariants after every
//! single input to a pool (they are listed, precisely, on [`World`]), and
//! [`World::converge`] then runs the liveness phase: heal the network, stop
//! taking, release everything, and require every handover to end and both
//! sides of every pair to agree within a bound derived from the
//! [`wormhole_core::pair::PairConfig`].
//!
//! Determinism: all randomness comes from [`wormhole_core::Rng::from_u64`]
//! streams derived from the seed, and every map is a `BTreeMap`, so the
//! same seed gives a byte-identical [`World::trace`].
//!
//! Replaying a failing seed:
//! `WORMHOLE_SIM_SEED=<n> cargo test -p wormhole-tests --test pair_sim -- --nocapture`
//! prints the seed's whole trace.

mod net;
mod op;
pub mod workload;
mod world;

pub use net::{Lane, LinkParams};
pub use op::{ArbSignal, Channel, FuzzWorld, InjectPayload, Op};
pub use world::{HoldPolicy, SimConfig, SimStats, Violation, World};

/// Outputs a single input may produce, per pair it touches, before the
/// simulation calls it a spin.
pub const MAX_OUTPUTS_PER_INPUT: usize = 16;

/// Delivered messages kept for [`Op::Replay`].
pub const HISTORY: usize = 64;
