//! The bodies of the fuzz targets in `fuzz/`, as plain functions, so that
//! `cargo test` replays the checked-in corpus through exactly the code the
//! fuzzer runs (`tests/tests/fuzz_corpus.rs`).
//!
//! Each function panics on a broken property; that is how a fuzzer learns of
//! a failure.

mod fs;
mod nat;

pub use fs::{
    ClientFuzz, ClientInput, HostFuzz, HostInput, client_machine, host_machine,
    proto_client_message, proto_host_message,
};
pub use nat::{
    TraversalFuzz, TraversalInput, rendezvous_signalling, stun, traversal_machine, turn_client,
    turn_client_relays,
};

use crate::pair_sim::{FuzzWorld, HoldPolicy, LinkParams, SimConfig, World};
use arbitrary::{Arbitrary, Unstructured};
use wormhole_core::pair::{KeepaliveFrame, PairConfig, Signal};

/// `keepalive_frame`: decoding arbitrary bytes never panics, and whatever
/// decodes re-encodes to a frame that decodes to the same value, in at most
/// [`wormhole_core::codec::WireMessage::MAX_SIZE`] bytes.
pub fn keepalive_frame(data: &[u8]) {
    if let Ok(frame) = KeepaliveFrame::decode(data) {
        let bytes = frame.encode();
        assert!(!bytes.is_empty(), "a decoded frame must encode");
        assert!(
            bytes.len() <= data.len(),
            "re-encoding grew: {} > {}",
            bytes.len(),
            data.len()
        );
        assert_eq!(
            KeepaliveFrame::decode(&bytes).as_ref(),
            Ok(&frame),
            "encode∘decode"
        );
        assert_eq!(
            KeepaliveFrame::decode(&bytes).map(|f| f.encode()),
            Ok(bytes),
            "stable bytes"
        );
    }
}

/// `signal`: the same for handover signals.
pub fn signal(data: &[u8]) {
    if let Ok(signal) = Signal::decode(data) {
        let bytes = signal.encode();
        assert!(!bytes.is_empty(), "a decoded signal must encode");
        assert!(
            bytes.len() <= data.len(),
            "re-encoding grew: {} > {}",
            bytes.len(),
            data.len()
        );
        assert_eq!(Signal::decode(&bytes), Ok(signal), "encode∘decode");
        assert_eq!(
            Signal::decode(&bytes).map(|s| s.encode()),
            Ok(bytes),
            "stable bytes"
        );
    }
}

/// `pair_machines`: a simulated world (2–4 nodes, pools, lossy links)
/// driven by an arbitrary list of [`crate::pair_sim::Op`]s, with every
/// invariant of [`World`] checked after each input, then the liveness
/// phase. Panics with the violation and the trace's tail.
pub fn pair_machines(data: &[u8]) {
    let Ok(input) = FuzzWorld::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    if let Err(v) = run_fuzz_world(&input, false) {
        // Run again with a trace to show what happened.
        let trace = match run_fuzz_world_traced(&input) {
            (_, Err(_), trace) => trace,
            (_, Ok(()), _) => vec!["(not reproduced with tracing on!)".to_string()],
        };
        let tail = trace.len().saturating_sub(200);
        panic!(
            "pair_machines: {v}\ninput: {input:?}\ntrace (last 200 lines):\n{}",
            trace[tail..].join("\n")
        );
    }
}

/// The world a fuzz input describes: its seed, 2–4 nodes, default or stress
/// timing, its link (delays clamped to 5 s so a run stays short), connections
/// released only by ops.
pub fn fuzz_world(input: &FuzzWorld) -> World {
    let link = LinkParams {
        delay_ms: input.link.delay_ms % 2000,
        jitter_ms: input.link.jitter_ms % 2000,
        spike_ms: input.link.spike_ms % 5000,
        ..input.link
    };
    let config = SimConfig {
        nodes: 2 + usize::from(input.nodes % 3),
        pair: if input.stress {
            SimConfig::stress_pair_config()
        } else {
            PairConfig::default()
        },
        link,
        hold: HoldPolicy::Manual,
        max_pairs: 12,
    };
    World::new(input.seed, &config)
}

fn run_fuzz_world(input: &FuzzWorld, trace: bool) -> Result<(), crate::pair_sim::Violation> {
    let mut world = fuzz_world(input);
    if trace {
        world = world.with_trace(false);
    }
    crate::pair_sim::workload::run_world(
        &mut world,
        &input.ops[..input.ops.len().min(FuzzWorld::MAX_OPS)],
    )
}

/// Runs a fuzz input with a trace; returns the world, the outcome and the
/// trace.
pub fn run_fuzz_world_traced(
    input: &FuzzWorld,
) -> (World, Result<(), crate::pair_sim::Violation>, Vec<String>) {
    let mut world = fuzz_world(input).with_trace(false);
    let res = crate::pair_sim::workload::run_world(
        &mut world,
        &input.ops[..input.ops.len().min(FuzzWorld::MAX_OPS)],
    );
    let trace = world.trace().to_vec();
    (world, res, trace)
}
