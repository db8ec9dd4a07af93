//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the
//! very functions the fuzz targets call, so `cargo test` (and CI, which has
//! no nightly toolchain for libFuzzer) keeps every corpus input passing.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Runs every corpus file of `target` through `body`; names the file that
/// fails. Returns how many files there were.
fn replay(target: &str, body: fn(&[u8])) -> usize {
    let files = corpus(target);
    for (path, data) in &files {
        if std::panic::catch_unwind(|| body(data)).is_err() {
            panic!(
                "fuzz corpus file {} fails target {target}\n  reproduce: cargo fuzz run {target} {}",
                path.display(),
                path.display()
            );
        }
    }
    files.len()
}

#[test]
fn keepalive_frame_corpus() {
    let n = replay("keepalive_frame", wormhole_tests::fuzz::keepalive_frame);
    assert!(n >= 10, "the corpus has only {n} files");
    // The corpus is worth replaying only if some of it decodes.
    let valid = corpus("keepalive_frame")
        .iter()
        .filter(|(_, d)| wormhole_core::pair::KeepaliveFrame::decode(d).is_ok())
        .count();
    assert!(valid >= 5, "only {valid} corpus files decode");
}

#[test]
fn signal_corpus() {
    let n = replay("signal", wormhole_tests::fuzz::signal);
    assert!(n >= 10, "the corpus has only {n} files");
    let valid = corpus("signal")
        .iter()
        .filter(|(_, d)| wormhole_core::pair::Signal::decode(d).is_ok())
        .count();
    assert!(valid >= 12, "only {valid} corpus files decode");
}

#[test]
fn pair_machines_corpus() {
    use arbitrary::{Arbitrary, Unstructured};
    let n = replay("pair_machines", wormhole_tests::fuzz::pair_machines);
    assert!(n >= 10, "the corpus has only {n} files");
    // The corpus is worth replaying only if it reaches the handover: sum
    // what its worlds did.
    let mut stats = wormhole_tests::pair_sim::SimStats::default();
    for (_, data) in corpus("pair_machines") {
        if let Ok(input) =
            wormhole_tests::pair_sim::FuzzWorld::arbitrary_take_rest(Unstructured::new(&data))
        {
            let (world, res, _) = wormhole_tests::fuzz::run_fuzz_world_traced(&input);
            assert!(res.is_ok(), "{res:?}");
            stats.merge(world.stats());
        }
    }
    assert!(
        stats.taken >= 10 && stats.expired >= 10 && stats.released_by_peer > 0,
        "{stats:#?}"
    );
    assert!(
        stats.failed.len() >= 3,
        "few kinds of failed handover: {stats:#?}"
    );
}

/// The fuzz bodies do catch what they claim to: a world whose ops break
/// nothing passes, and the decoders' round-trip holds on real encodings.
#[test]
fn fuzz_bodies_accept_valid_input() {
    use wormhole_core::pair::*;
    let frame = KeepaliveFrame::sealed(&PairKey([1; 32]), FrameKind::Pong, PairNonce(9), 77);
    wormhole_tests::fuzz::keepalive_frame(&frame.encode());
    let signal = Signal {
        pair: PairNonce(9),
        handover: HandoverId {
            initiator: PeerId::from_u64(3),
            seq: 4,
        },
        kind: SignalKind::LockBusy(BusyReason::Contended),
    };
    wormhole_tests::fuzz::signal(&signal.encode());
    // Garbage and empty input are fine too.
    for data in [&[][..], &[1, 2, 3], &[0xff; 70]] {
        wormhole_tests::fuzz::keepalive_frame(data);
        wormhole_tests::fuzz::signal(data);
        wormhole_tests::fuzz::pair_machines(data);
    }
}

#[test]
fn proto_client_message_corpus() {
    let n = replay(
        "proto_client_message",
        wormhole_tests::fuzz::proto_client_message,
    );
    assert!(n >= 10, "the corpus has only {n} files");
    let valid = corpus("proto_client_message")
        .iter()
        .filter(|(_, d)| wormhole_core::proto::ClientMessage::decode(d).is_ok())
        .count();
    assert!(valid >= 10, "only {valid} corpus files decode");
}

#[test]
fn proto_host_message_corpus() {
    let n = replay(
        "proto_host_message",
        wormhole_tests::fuzz::proto_host_message,
    );
    assert!(n >= 10, "the corpus has only {n} files");
    let valid = corpus("proto_host_message")
        .iter()
        .filter(|(_, d)| wormhole_core::proto::HostMessage::decode(d).is_ok())
        .count();
    assert!(valid >= 10, "only {valid} corpus files decode");
}

#[test]
fn host_machine_corpus() {
    let n = replay("host_machine", wormhole_tests::fuzz::host_machine);
    assert!(n >= 10, "the corpus has only {n} files");
}

#[test]
fn client_machine_corpus() {
    let n = replay("client_machine", wormhole_tests::fuzz::client_machine);
    assert!(n >= 10, "the corpus has only {n} files");
}

/// The machine bodies run real sessions, not only refusals: a hand-made
/// host input authenticates and writes; a client input gets answers.
#[test]
fn fs_fuzz_bodies_accept_valid_input() {
    use arbitrary::{Arbitrary, Unstructured};
    for data in [&[][..], &[1, 2, 3], &[0xff; 300]] {
        wormhole_tests::fuzz::proto_client_message(data);
        wormhole_tests::fuzz::proto_host_message(data);
        wormhole_tests::fuzz::host_machine(data);
        wormhole_tests::fuzz::client_machine(data);
    }
    // Every decodable corpus input of the machines parses into inputs.
    for (path, data) in corpus("client_machine") {
        let input = wormhole_tests::fuzz::ClientFuzz::arbitrary_take_rest(Unstructured::new(&data));
        assert!(input.is_ok(), "{}", path.display());
    }
}

#[test]
fn stun_corpus() {
    let n = replay("stun", wormhole_tests::fuzz::stun);
    assert!(n >= 10, "the corpus has only {n} files");
    let valid = corpus("stun")
        .iter()
        .filter(|(_, d)| wormhole_core::nat::stun::decode(d).is_ok())
        .count();
    assert!(valid >= 8, "only {valid} corpus files decode");
}

#[test]
fn turn_client_corpus() {
    let n = replay("turn_client", wormhole_tests::fuzz::turn_client);
    assert!(n >= 10, "the corpus has only {n} files");
    // Worth replaying only if peers' data (ChannelData and Data
    // indications) gets through in some of it.
    let relaying = corpus("turn_client")
        .iter()
        .filter(|(_, d)| wormhole_tests::fuzz::turn_client_relays(d) > 0)
        .count();
    assert!(relaying >= 3, "only {relaying} corpus files relay data");
}

#[test]
fn rendezvous_signalling_corpus() {
    let n = replay(
        "rendezvous_signalling",
        wormhole_tests::fuzz::rendezvous_signalling,
    );
    assert!(n >= 8, "the corpus has only {n} files");
    let valid = corpus("rendezvous_signalling")
        .iter()
        .filter(|(_, d)| wormhole_core::rendezvous::wire::Signalling::decode(d).is_ok())
        .count();
    assert!(valid >= 6, "only {valid} corpus files decode");
}

#[test]
fn traversal_machine_corpus() {
    let n = replay("traversal_machine", wormhole_tests::fuzz::traversal_machine);
    assert!(n >= 10, "the corpus has only {n} files");
}
