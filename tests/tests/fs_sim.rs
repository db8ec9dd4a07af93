//! The deterministic simulation of the file system (see
//! `wormhole_tests::fs_sim`): thousands of seeds, each one host and 3–4
//! clients under a random workload and faults, every safety invariant
//! checked after every event, then a liveness phase.
//!
//! * `WORMHOLE_FS_SEED=<n>` replays one seed with its trace printed (add
//!   `-- --nocapture` to see it even when it passes); the seed shards then
//!   skip.
//! * `WORMHOLE_FS_SEEDS=<count>` runs more (or fewer) seeds than the
//!   default 10,000.

use wormhole_tests::fs_sim::workload::FsSim;

wormhole_tests::simulation_tests!(FsSim);
