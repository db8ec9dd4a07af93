//! Writes the hand-made seed inputs of the fuzz corpus: valid keepalive
//! frames and signals, their truncations and single-bit mutations, and
//! random worlds for `pair_machines`.
//!
//! `cargo run -p wormhole-tests --example fuzz_seeds -- fuzz/corpus`

use std::path::Path;
use wormhole_core::Rng;
use wormhole_core::pair::{
    BusyReason, FrameKind, HandoverId, KeepaliveFrame, PairKey, PairNonce, PeerId, Signal,
    SignalKind,
};

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    std::fs::write(dir.join(name), data).expect("write seed");
}

/// The value, a truncation and a bit flip of each encoding.
fn variants(dir: &Path, prefix: &str, encodings: &[Vec<u8>], rng: &mut Rng) {
    for (i, bytes) in encodings.iter().enumerate() {
        write(dir, &format!("{prefix}-{i:02}"), bytes);
        let cut = usize::try_from(rng.below(bytes.len() as u64)).unwrap_or(0);
        write(dir, &format!("{prefix}-{i:02}-cut{cut}"), &bytes[..cut]);
        let mut flipped = bytes.clone();
        let bit = usize::try_from(rng.below(flipped.len() as u64 * 8)).unwrap_or(0);
        flipped[bit / 8] ^= 1 << (bit % 8);
        write(dir, &format!("{prefix}-{i:02}-flip{bit}"), &flipped);
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".to_string());
    let root = Path::new(&root);
    let mut rng = Rng::from_u64(2024);

    let frames: Vec<Vec<u8>> = [
        (FrameKind::Ping, 1, 1),
        (FrameKind::Pong, 1, 1),
        (FrameKind::Ping, 0xdead_beef, 300),
        (FrameKind::Pong, u64::MAX, u64::MAX),
        (FrameKind::Ping, 250, 251),
        (FrameKind::Pong, 1 << 32, 1 << 16),
    ]
    .iter()
    .map(|&(kind, nonce, ping)| {
        KeepaliveFrame::sealed(&PairKey([7; 32]), kind, PairNonce(nonce), ping)
            .encode()
            .to_vec()
    })
    .collect();
    variants(&root.join("keepalive_frame"), "frame", &frames, &mut rng);

    use BusyReason as B;
    use SignalKind as K;
    let kinds = [
        K::Lock,
        K::LockOk,
        K::LockBusy(B::UnknownPair),
        K::LockBusy(B::AlreadyLocked),
        K::LockBusy(B::Contended),
        K::LockBusy(B::NoSuchHandover),
        K::Take,
        K::TakeOk,
        K::Release,
        K::ReleaseOk,
        K::Abort,
        K::AbortOk,
    ];
    let signals: Vec<Vec<u8>> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            Signal {
                pair: PairNonce(1 << (i * 5)),
                handover: HandoverId {
                    initiator: PeerId::from_u64(i as u64 + 1),
                    seq: (i as u64) << (i * 4),
                },
                kind,
            }
            .encode()
            .to_vec()
        })
        .collect();
    variants(&root.join("signal"), "signal", &signals, &mut rng);

    for i in 0..16 {
        let len = 64 + rng.below(1024) as usize;
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        write(
            &root.join("pair_machines"),
            &format!("random-{i:02}"),
            &bytes,
        );
    }
}
