//! Regression tests for bugs the deterministic simulation
//! (`tests/src/pair_sim`) found.

use super::*;
use crate::{Instant, Rng};
use std::time::Duration;

fn pinger_pool() -> PairPool {
    let mut pool = PairPool::new(PeerId::from_u64(1), PairConfig::default(), Rng::from_u64(1));
    pool.add(
        Instant::ZERO,
        EndpointPair {
            nonce: PairNonce(7),
            local: "10.0.0.1:1000".parse().expect("addr"),
            remote: "10.0.0.2:1000".parse().expect("addr"),
            peer: PeerId::from_u64(2),
            key: PairKey([3; 32]),
            role: PingRole::Pinger,
        },
    )
    .expect("add");
    pool
}

/// Sim seed 31 (and many others): a take whose Lock goes unanswered times
/// out, rolls the pair back to Idle and makes its resumption ping due at
/// that very instant. `handle_timeout(now)` visited the pair only once, so
/// it returned with `poll_timeout() == now`: the shell had to call again at
/// the same instant (a no-spin violation). The ping now goes out in the
/// same call.
#[test]
fn handover_timeout_sends_the_resumption_ping_in_the_same_call() {
    let mut pool = pinger_pool();
    let nonce = PairNonce(7);
    pool.take_pair(Instant::ZERO, nonce).expect("take");
    let deadline = Instant::ZERO + PairConfig::default().handshake_timeout;
    let mut now = Instant::ZERO;
    let mut outputs = Vec::new();
    while now < deadline {
        now = pool.poll_timeout().expect("a handover is running");
        pool.handle_timeout(now);
        outputs.clear();
        while let Some(o) = pool.poll_output() {
            outputs.push(o);
        }
        assert!(
            pool.poll_timeout().is_none_or(|t| t > now),
            "poll_timeout {:?} after handle_timeout({now:?})",
            pool.poll_timeout()
        );
    }
    assert_eq!(now, deadline);
    assert!(pool.handover(nonce).is_none());
    assert_eq!(pool.get(nonce).map(PairEntry::state), Some(PairState::Idle));
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::Event(PairEvent::HandoverFailed {
                reason: FailReason::Timeout,
                ..
            })
        )),
        "{outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| matches!(o, Output::Transmit(_))),
        "the resumption ping goes out with the rollback: {outputs:?}"
    );
    assert_eq!(
        pool.poll_timeout(),
        Some(deadline + Duration::from_secs(10))
    );
}
