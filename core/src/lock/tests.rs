//! Unit tests of the lock subsystem: the host table (matrix, scopes,
//! expiry, FIFO waiting, sessions, fencing, bounds, and a randomized
//! invariant check), the client machine (every transition and timeout), and
//! both together over a hand-operated network with a traced partition.

use super::*;
use crate::proto::{
    Errno, LockKind, LockScope, LockToken, NodeId, Reply, Request, RequestId, SessionId,
};
use crate::{Instant, Rng};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use LockKind::{Exclusive as X, Shared as S};

// The test tree:
//
//   1 (root)
//   ├── 2 /a
//   │   └── 3 /a/b
//   │       └── 4 /a/b/f
//   └── 5 /c
//       └── 6 /c/g
const ROOT: NodeId = NodeId(1);
const A: NodeId = NodeId(2);
const AB: NodeId = NodeId(3);
const ABF: NodeId = NodeId(4);
const C: NodeId = NodeId(5);
const CG: NodeId = NodeId(6);

/// The ancestor chain of a test node, parent first, as a host's path map
/// would give it.
fn ancestors(node: NodeId) -> &'static [NodeId] {
    match node.0 {
        1 => &[],
        2 => &[ROOT],
        3 => &[A, ROOT],
        4 => &[AB, A, ROOT],
        5 => &[ROOT],
        6 => &[C, ROOT],
        _ => panic!("node {node:?} is not in the test tree"),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}
fn at(s: u64) -> Instant {
    Instant::ZERO + secs(s)
}
fn at_ms(m: u64) -> Instant {
    Instant::ZERO + ms(m)
}
fn sess(n: u8) -> SessionId {
    SessionId([n; 16])
}
fn file(n: NodeId) -> LockScope {
    LockScope::File(n)
}
fn dir(n: NodeId) -> LockScope {
    LockScope::Directory(n)
}
fn tree(n: NodeId) -> LockScope {
    LockScope::Subtree(n)
}

fn table() -> LockTable {
    LockTable::new(LockConfig::default(), Rng::from_u64(1))
}

fn acquire(
    t: &mut LockTable,
    now: Instant,
    session: SessionId,
    scope: LockScope,
    kind: LockKind,
    wait: bool,
) -> Result<Acquired, LockError> {
    let r = t.acquire(
        now,
        &LockRequest {
            session,
            request: RequestId(u64::from(session.0[0])),
            scope,
            kind,
            wait,
            ancestors: ancestors(scope_node(scope)),
        },
    );
    t.check_invariants().expect("invariants");
    r
}

/// Acquires without waiting; the lock must be granted.
fn take(
    t: &mut LockTable,
    now: Instant,
    s: SessionId,
    scope: LockScope,
    kind: LockKind,
) -> LockToken {
    match acquire(t, now, s, scope, kind, false) {
        Ok(Acquired::Granted(g)) => g.token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Acquires with waiting; the request must queue.
fn queue(
    t: &mut LockTable,
    now: Instant,
    s: SessionId,
    scope: LockScope,
    kind: LockKind,
) -> WaitId {
    match acquire(t, now, s, scope, kind, true) {
        Ok(Acquired::Queued(w)) => w,
        other => panic!("expected to queue, got {other:?}"),
    }
}

fn outputs(t: &mut LockTable) -> Vec<LockOutput> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

/// The (session, wait, token) of every grant among the outputs.
fn grants(outs: &[LockOutput]) -> Vec<(SessionId, WaitId, LockToken)> {
    outs.iter()
        .filter_map(|o| match *o {
            LockOutput::Granted {
                session,
                wait,
                grant,
                ..
            } => Some((session, wait, grant.token)),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------ host: matrix

#[test]
fn compatibility_matrix() {
    for held in [S, X] {
        for asked in [S, X] {
            let mut t = table();
            take(&mut t, at(0), sess(1), file(ABF), held);
            let r = acquire(&mut t, at(0), sess(2), file(ABF), asked, false);
            if held == S && asked == S {
                assert!(matches!(r, Ok(Acquired::Granted(_))), "{held:?}/{asked:?}");
            } else {
                assert_eq!(r, Err(LockError::WouldBlock), "{held:?}/{asked:?}");
                assert_eq!(LockError::WouldBlock.errno(), Errno::Again);
            }
        }
    }
    // The owner does not matter: a session conflicts with itself too.
    let mut t = table();
    take(&mut t, at(0), sess(1), file(ABF), S);
    assert_eq!(
        acquire(&mut t, at(0), sess(1), file(ABF), X, false),
        Err(LockError::WouldBlock)
    );
}

#[test]
fn file_and_directory_locks_cover_their_node_only() {
    let mut t = table();
    take(&mut t, at(0), sess(1), dir(AB), X);
    // A directory lock guards the entries, not a child's content.
    take(&mut t, at(0), sess(2), file(ABF), X);
    // Nor does it reach its ancestors.
    take(&mut t, at(0), sess(2), dir(A), X);
    // The same node conflicts whatever the scope.
    assert_eq!(
        acquire(&mut t, at(0), sess(3), dir(AB), S, false),
        Err(LockError::WouldBlock)
    );
    assert_eq!(
        acquire(&mut t, at(0), sess(3), file(AB), S, false),
        Err(LockError::WouldBlock)
    );
}

#[test]
fn subtree_lock_blocks_conflicting_locks_beneath_it() {
    let mut t = table();
    take(&mut t, at(0), sess(1), tree(A), X);
    for scope in [file(ABF), dir(AB), tree(AB), file(A)] {
        for kind in [S, X] {
            assert_eq!(
                acquire(&mut t, at(0), sess(2), scope, kind, false),
                Err(LockError::WouldBlock),
                "{scope:?} {kind:?}"
            );
        }
    }
    // Another branch is free, and so is the parent as a plain node.
    take(&mut t, at(0), sess(2), file(CG), X);
    take(&mut t, at(0), sess(2), dir(ROOT), X);
    // But not a subtree above it.
    assert_eq!(
        acquire(&mut t, at(0), sess(2), tree(ROOT), S, false),
        Err(LockError::WouldBlock)
    );

    // A shared subtree lock admits shared locks beneath and refuses
    // exclusive ones.
    let mut t = table();
    take(&mut t, at(0), sess(1), tree(A), S);
    take(&mut t, at(0), sess(2), file(ABF), S);
    take(&mut t, at(0), sess(2), tree(AB), S);
    assert_eq!(
        acquire(&mut t, at(0), sess(2), file(ABF), X, false),
        Err(LockError::WouldBlock)
    );
}

#[test]
fn lock_beneath_blocks_a_conflicting_subtree_lock_above() {
    let mut t = table();
    take(&mut t, at(0), sess(1), file(ABF), S);
    assert_eq!(
        acquire(&mut t, at(0), sess(2), tree(A), X, false),
        Err(LockError::WouldBlock)
    );
    assert_eq!(
        acquire(&mut t, at(0), sess(2), tree(ROOT), X, false),
        Err(LockError::WouldBlock)
    );
    take(&mut t, at(0), sess(2), tree(A), S);
    take(&mut t, at(0), sess(2), tree(C), X);
    // A directory lock on an ancestor is not a subtree lock.
    take(&mut t, at(0), sess(2), dir(ROOT), X);
    // Once the lock beneath goes, the subtree lock is free to take.
    let mut t = table();
    let f = take(&mut t, at(0), sess(1), file(ABF), X);
    t.release(at(1), sess(1), f).expect("held");
    take(&mut t, at(1), sess(2), tree(ROOT), X);
}

#[test]
fn is_locked_sees_locks_at_beneath_and_above() {
    let mut t = table();
    assert!(!t.is_locked(AB, ancestors(AB)));
    take(&mut t, at(0), sess(1), file(ABF), S);
    assert!(t.is_locked(ABF, ancestors(ABF)));
    assert!(t.is_locked(AB, ancestors(AB)), "a lock beneath");
    assert!(!t.is_locked(C, ancestors(C)));
    take(&mut t, at(0), sess(1), tree(C), S);
    assert!(t.is_locked(CG, ancestors(CG)), "a subtree lock above");
}

// ------------------------------------------------------------ host: tokens

#[test]
fn tokens_are_random_unique_and_seeded() {
    let draw = |seed| {
        let mut t = LockTable::new(LockConfig::default(), Rng::from_u64(seed));
        (0..50)
            .map(|i| take(&mut t, at(0), sess(i), file(ABF), S))
            .collect::<Vec<_>>()
    };
    let a = draw(7);
    let mut sorted = a.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), a.len(), "unique");
    assert_eq!(draw(7), a, "same seed, same tokens");
    assert!(
        draw(8).iter().all(|t| !a.contains(t)),
        "another seed, others"
    );
    // 128 random bits: no token is mostly zero.
    assert!(
        a.iter()
            .all(|t| t.0.iter().filter(|&&b| b == 0).count() < 8)
    );
}

// ------------------------------------------------- host: expiry and refresh

#[test]
fn lock_expires_after_ttl_and_reports_it() {
    let mut t = table();
    let tok = take(&mut t, at(0), sess(1), file(ABF), X);
    assert_eq!(t.poll_timeout(), Some(at(30)));
    let info = t.lock(tok).expect("live");
    assert_eq!((info.granted_at, info.expires_at), (at(0), at(30)));
    t.handle_timeout(at_ms(29999));
    assert_eq!(t.len(), 1);
    assert!(outputs(&mut t).is_empty());
    t.handle_timeout(at(30));
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(
        outputs(&mut t),
        vec![LockOutput::Expired {
            session: sess(1),
            token: tok,
            scope: file(ABF),
            kind: X
        }]
    );
    assert_eq!(outputs(&mut t).first().and_then(LockOutput::reply), None);
    // Harmless to call again.
    t.handle_timeout(at(30));
    assert!(outputs(&mut t).is_empty());
    take(&mut t, at(30), sess(2), file(ABF), X);
}

#[test]
fn acquire_reaps_expired_locks_without_a_timeout_call() {
    let mut t = table();
    take(&mut t, at(0), sess(1), file(ABF), X);
    // The shell is late with handle_timeout: the acquire itself sees the
    // lock has expired.
    take(&mut t, at(31), sess(2), file(ABF), X);
    assert!(matches!(outputs(&mut t)[..], [LockOutput::Expired { .. }]));
}

#[test]
fn refresh_extends_from_now_and_keeps_the_token() {
    let mut t = table();
    let tok = take(&mut t, at(0), sess(1), file(ABF), X);
    let g = t.refresh(at(20), sess(1), tok).expect("live");
    assert_eq!(g.token, tok);
    assert_eq!(g.ttl, secs(30));
    assert_eq!(g.expires_at, at(50));
    assert_eq!(
        g.reply(),
        Reply::LockGranted {
            token: tok,
            ttl_ms: 30_000
        }
    );
    assert_eq!(t.poll_timeout(), Some(at(50)));
    t.handle_timeout(at(30));
    assert_eq!(t.len(), 1, "refreshed past the first expiry");
    // Only the owner refreshes.
    assert_eq!(
        t.refresh(at(21), sess(2), tok),
        Err(LockError::UnknownToken)
    );
    t.handle_timeout(at(50));
    assert!(t.is_empty());
    // A dead token cannot be revived.
    let err = t.refresh(at(51), sess(1), tok).expect_err("expired");
    assert_eq!(err, LockError::UnknownToken);
    assert_eq!(err.errno(), Errno::Stale);
}

#[test]
fn release_frees_the_lock_and_is_owner_only() {
    let mut t = table();
    let tok = take(&mut t, at(0), sess(1), file(ABF), X);
    assert_eq!(t.release(at(1), sess(2), tok), Err(LockError::UnknownToken));
    t.release(at(1), sess(1), tok).expect("held");
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.release(at(1), sess(1), tok), Err(LockError::UnknownToken));
    take(&mut t, at(1), sess(2), file(ABF), X);
    assert!(outputs(&mut t).is_empty(), "a release is answered directly");
}

// ----------------------------------------------------------- host: waiting

#[test]
fn waiter_is_granted_when_the_holder_releases() {
    let mut t = table();
    let tok = take(&mut t, at(0), sess(1), file(ABF), X);
    let w = queue(&mut t, at(1), sess(2), file(ABF), X);
    assert_eq!(t.waiting(), 1);
    assert_eq!(
        t.poll_timeout(),
        Some(at(30)),
        "the lock's expiry comes first"
    );
    t.release(at(5), sess(1), tok).expect("held");
    let outs = outputs(&mut t);
    let [
        LockOutput::Granted {
            session,
            request,
            wait,
            scope,
            kind,
            grant,
        },
    ] = outs[..]
    else {
        panic!("{outs:?}")
    };
    assert_eq!(
        (session, request, wait, scope, kind),
        (sess(2), RequestId(2), w, file(ABF), X)
    );
    assert_eq!(grant.expires_at, at(35), "the lifetime starts at the grant");
    assert_eq!(
        outs[0].reply(),
        Some((sess(2), RequestId(2), Ok(grant.reply())))
    );
    assert_eq!(t.waiting(), 0);
    assert_eq!(t.lock(grant.token).map(|l| l.session), Some(sess(2)));
}

#[test]
fn waiter_is_granted_when_the_holder_expires() {
    let mut t = table();
    take(&mut t, at(0), sess(1), file(ABF), X);
    let w = queue(&mut t, at(10), sess(2), file(ABF), S);
    t.handle_timeout(at(30));
    let outs = outputs(&mut t);
    assert!(matches!(outs[0], LockOutput::Expired { .. }), "{outs:?}");
    assert_eq!(grants(&outs).len(), 1);
    assert_eq!(grants(&outs)[0].1, w);
}

#[test]
fn waiter_times_out_with_eagain() {
    let mut t = table();
    let tok = take(&mut t, at(0), sess(1), file(ABF), X);
    let w = queue(&mut t, at(10), sess(2), file(ABF), X);
    t.refresh(at(25), sess(1), tok).expect("live");
    assert_eq!(t.poll_timeout(), Some(at(40)));
    t.handle_timeout(at_ms(39999));
    assert!(outputs(&mut t).is_empty());
    t.handle_timeout(at(40));
    let outs = outputs(&mut t);
    assert_eq!(
        outs,
        vec![LockOutput::WaitTimedOut {
            session: sess(2),
            request: RequestId(2),
            wait: w
        }]
    );
    assert_eq!(
        outs[0].reply(),
        Some((sess(2), RequestId(2), Err(Errno::Again)))
    );
    assert_eq!(t.waiting(), 0);
    assert_eq!(t.cancel(at(41), sess(2), w), Err(LockError::UnknownWait));
}

#[test]
fn a_waiting_writer_is_not_starved_by_a_stream_of_readers() {
    let mut t = table();
    let r1 = take(&mut t, at(0), sess(1), file(ABF), S);
    let w = queue(&mut t, at(1), sess(2), file(ABF), X);
    // Compatible with the reader that holds the file, but a writer waits
    // first: no overtaking.
    assert_eq!(
        acquire(&mut t, at(2), sess(3), file(ABF), S, false),
        Err(LockError::WouldBlock)
    );
    // A stream of readers lines up behind the writer.
    let readers: Vec<WaitId> = (3..8)
        .map(|i| queue(&mut t, at(u64::from(i)), sess(i), file(ABF), S))
        .collect();
    t.release(at(10), sess(1), r1).expect("held");
    let outs = outputs(&mut t);
    assert_eq!(
        grants(&outs).iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![w]
    );
    let wtok = grants(&outs)[0].2;
    // When the writer is done, all the readers get in together.
    t.release(at(11), sess(2), wtok).expect("held");
    let outs = outputs(&mut t);
    assert_eq!(
        grants(&outs).iter().map(|g| g.1).collect::<Vec<_>>(),
        readers
    );
}

#[test]
fn fifo_batches_readers_between_writers() {
    let mut t = table();
    let x1 = take(&mut t, at(0), sess(1), file(ABF), X);
    let s2 = queue(&mut t, at(1), sess(2), file(ABF), S);
    let s3 = queue(&mut t, at(2), sess(3), file(ABF), S);
    let x4 = queue(&mut t, at(3), sess(4), file(ABF), X);
    let s5 = queue(&mut t, at(4), sess(5), file(ABF), S);
    t.release(at(5), sess(1), x1).expect("held");
    let g = grants(&outputs(&mut t));
    assert_eq!(g.iter().map(|g| g.1).collect::<Vec<_>>(), vec![s2, s3]);
    t.release(at(6), sess(2), g[0].2).expect("held");
    assert!(outputs(&mut t).is_empty(), "s3 still reads");
    t.release(at(6), sess(3), g[1].2).expect("held");
    let g = grants(&outputs(&mut t));
    assert_eq!(g.iter().map(|g| g.1).collect::<Vec<_>>(), vec![x4]);
    t.release(at(7), sess(4), g[0].2).expect("held");
    let g = grants(&outputs(&mut t));
    assert_eq!(g.iter().map(|g| g.1).collect::<Vec<_>>(), vec![s5]);
}

#[test]
fn fifo_holds_across_scopes() {
    let mut t = table();
    let f = take(&mut t, at(0), sess(1), file(ABF), S);
    // A subtree writer waits for the reader beneath it.
    let sub = queue(&mut t, at(1), sess(2), tree(A), X);
    // Unrelated nodes are not held up by it.
    take(&mut t, at(2), sess(3), file(CG), S);
    // A reader beneath the waiting subtree writer is compatible with the
    // holder, yet queues behind the writer.
    let r = queue(&mut t, at(3), sess(4), file(AB), S);
    // And a later subtree request above the waiting writer as well.
    let top = queue(&mut t, at(4), sess(5), tree(ROOT), S);
    t.release(at(5), sess(1), f).expect("held");
    let g = grants(&outputs(&mut t));
    assert_eq!(g.iter().map(|g| g.1).collect::<Vec<_>>(), vec![sub]);
    t.release(at(6), sess(2), g[0].2).expect("held");
    let g = grants(&outputs(&mut t));
    assert_eq!(g.iter().map(|g| g.1).collect::<Vec<_>>(), vec![r, top]);
}

#[test]
fn a_waiter_leaving_lets_the_ones_behind_it_in() {
    for cancel in [false, true] {
        let mut t = table();
        let tok = take(&mut t, at(0), sess(1), file(ABF), S);
        let w = queue(&mut t, at(0), sess(2), file(ABF), X);
        let r = queue(&mut t, at(1), sess(3), file(ABF), S);
        t.refresh(at(20), sess(1), tok).expect("live");
        let outs = if cancel {
            t.cancel(at(10), sess(2), w).expect("queued");
            outputs(&mut t)
        } else {
            t.handle_timeout(at(30));
            outputs(&mut t)
        };
        if !cancel {
            assert!(matches!(outs[0], LockOutput::WaitTimedOut { wait, .. } if wait == w));
        }
        // The reader behind the writer is compatible with the holder.
        assert_eq!(
            grants(&outs).iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![r]
        );
        t.check_invariants().expect("invariants");
    }
}

#[test]
fn cancel_is_owner_only() {
    let mut t = table();
    take(&mut t, at(0), sess(1), file(ABF), X);
    let w = queue(&mut t, at(0), sess(2), file(ABF), X);
    assert_eq!(t.cancel(at(1), sess(3), w), Err(LockError::UnknownWait));
    assert_eq!(LockError::UnknownWait.errno(), Errno::Inval);
    t.cancel(at(1), sess(2), w).expect("queued");
    assert!(outputs(&mut t).is_empty());
}

// ---------------------------------------------------------- host: sessions

#[test]
fn release_session_frees_locks_and_cancels_waiters() {
    let mut t = table();
    let s1 = sess(1);
    take(&mut t, at(0), s1, file(ABF), X);
    take(&mut t, at(0), s1, tree(C), S);
    take(&mut t, at(0), s1, dir(A), S);
    take(&mut t, at(0), sess(9), file(ROOT), X);
    queue(&mut t, at(0), s1, file(ROOT), S);
    let w2 = queue(&mut t, at(1), sess(2), file(ABF), S);
    let w3 = queue(&mut t, at(2), sess(3), file(CG), X);
    assert_eq!(t.locks_of(s1).count(), 3);
    let freed = t.release_session(at(3), s1);
    assert_eq!(
        freed,
        SessionRelease {
            locks: 3,
            waiters: 1
        }
    );
    t.check_invariants().expect("invariants");
    // No answer for the gone session's own waiter; the others get in.
    let outs = outputs(&mut t);
    assert_eq!(
        grants(&outs).iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![w2, w3]
    );
    assert_eq!(outs.len(), 2);
    assert_eq!(t.locks_of(s1).count(), 0);
    assert_eq!(t.release_session(at(3), s1), SessionRelease::default());
    assert_eq!(t.len(), 3);
}

// ---------------------------------------------------------- host: fencing

#[test]
fn fencing_accepts_only_a_live_exclusive_lock_covering_the_node() {
    let mut t = table();
    let x = take(&mut t, at(0), sess(1), file(ABF), X);
    let v = |t: &LockTable, s, tok, node| t.validate(at(1), s, tok, node, ancestors(node));
    assert_eq!(v(&t, sess(1), x, ABF), Ok(()));
    assert_eq!(v(&t, sess(1), x, CG), Err(FenceError::NotCovered));
    assert_eq!(
        v(&t, sess(2), x, ABF),
        Err(FenceError::Unknown),
        "another session's token"
    );
    let sh = take(&mut t, at(0), sess(1), file(CG), S);
    assert_eq!(v(&t, sess(1), sh, CG), Err(FenceError::NotExclusive));
    assert_eq!(FenceError::NotExclusive.errno(), Errno::Acces);
    // A subtree lock covers its node and everything beneath.
    let sub = take(&mut t, at(0), sess(2), tree(C), S);
    assert_eq!(v(&t, sess(2), sub, CG), Err(FenceError::NotExclusive));
    let mut t = table();
    let sub = take(&mut t, at(0), sess(2), tree(A), X);
    assert_eq!(v(&t, sess(2), sub, A), Ok(()));
    assert_eq!(v(&t, sess(2), sub, ABF), Ok(()));
    assert_eq!(v(&t, sess(2), sub, C), Err(FenceError::NotCovered));
    // A released token is dead at once.
    t.release(at(1), sess(2), sub).expect("held");
    assert_eq!(v(&t, sess(2), sub, ABF), Err(FenceError::Unknown));
    assert_eq!(FenceError::Unknown.errno(), Errno::Stale);
}

#[test]
fn fencing_rejects_an_expired_token_after_another_session_took_the_lock() {
    let mut t = table();
    let old = take(&mut t, at(0), sess(1), file(ABF), X);
    // Session 1 is partitioned away and stops refreshing. Before anyone
    // reaps the lock, its expiry alone already fences it off.
    let late = at(30) + ms(500);
    assert_eq!(
        t.validate(late, sess(1), old, ABF, ancestors(ABF)),
        Err(FenceError::Expired)
    );
    // Session 2 takes the file.
    let new = take(&mut t, at(31), sess(2), file(ABF), X);
    // Session 1 comes back believing it still holds the lock: refused.
    assert_eq!(
        t.validate(at(32), sess(1), old, ABF, ancestors(ABF)),
        Err(FenceError::Unknown)
    );
    assert_eq!(
        t.refresh(at(32), sess(1), old),
        Err(LockError::UnknownToken)
    );
    assert_eq!(
        t.validate(at(32), sess(2), new, ABF, ancestors(ABF)),
        Ok(())
    );
}

// ----------------------------------------------------------- host: bounds

#[test]
fn bounds_refuse_with_enolck() {
    let cfg = LockConfig {
        max_locks: 4,
        max_locks_per_session: 2,
        max_waiters: 2,
        max_waiters_per_session: 1,
        max_depth: 2,
        ..LockConfig::default()
    };
    let mut t = LockTable::new(cfg, Rng::from_u64(1));
    take(&mut t, at(0), sess(1), file(A), X);
    take(&mut t, at(0), sess(1), file(C), X);
    let full = acquire(&mut t, at(0), sess(1), file(CG), X, false);
    assert_eq!(full, Err(LockError::SessionFull { max: 2 }));
    assert_eq!(full.expect_err("full").errno(), Errno::NoLck);
    // Session 2 may still queue: one waiter per session...
    queue(&mut t, at(0), sess(2), file(A), X);
    assert_eq!(
        acquire(&mut t, at(0), sess(2), file(C), X, true),
        Err(LockError::SessionQueueFull { max: 1 })
    );
    // ...and the waiter reserved a slot: 3 of 4 are used.
    take(&mut t, at(0), sess(3), file(ROOT), S);
    assert_eq!(
        acquire(&mut t, at(0), sess(4), file(CG), S, false),
        Err(LockError::TableFull { max: 4 })
    );
    assert_eq!(LockError::TableFull { max: 4 }.errno(), Errno::NoLck);

    let cfg = LockConfig {
        max_waiters: 1,
        max_depth: 2,
        ..LockConfig::default()
    };
    let mut t = LockTable::new(cfg, Rng::from_u64(1));
    take(&mut t, at(0), sess(1), file(A), X);
    queue(&mut t, at(0), sess(2), file(A), X);
    assert_eq!(
        acquire(&mut t, at(0), sess(3), file(A), X, true),
        Err(LockError::QueueFull { max: 1 })
    );
    // A refused request that would not have waited is still WouldBlock.
    assert_eq!(
        acquire(&mut t, at(0), sess(3), file(A), X, false),
        Err(LockError::WouldBlock)
    );
    let deep = acquire(&mut t, at(0), sess(3), file(ABF), X, false);
    assert_eq!(deep, Err(LockError::TooDeep { len: 3, max: 2 }));
    assert_eq!(deep.expect_err("deep").errno(), Errno::Inval);
    let bad = t.acquire(
        at(0),
        &LockRequest {
            session: sess(3),
            request: RequestId(0),
            scope: file(AB),
            kind: X,
            wait: false,
            ancestors: &[AB, ROOT],
        },
    );
    assert_eq!(bad, Err(LockError::BadAncestry));
}

// --------------------------------------------------- host: randomized model

/// Thousands of random operations on a small tree; after each, the table
/// must satisfy its invariants (no two conflicting holders, no forgotten
/// waiter, indexes in step). At the end, with time run out, every waiter
/// has had its answer and every lock has expired.
#[test]
fn random_operations_keep_the_invariants() {
    const NODES: [NodeId; 6] = [ROOT, A, AB, ABF, C, CG];
    // (waiters served, waiters timed out) over all seeds: the run must
    // exercise both, or it proves little.
    let mut answered = (0u32, 0u32);
    for seed in 0..20 {
        let mut rng = Rng::from_u64(seed);
        let mut t = LockTable::new(LockConfig::default(), Rng::from_u64(seed));
        let mut now = Instant::ZERO;
        let mut held: Vec<(SessionId, LockToken)> = Vec::new();
        let mut waiting: BTreeMap<WaitId, SessionId> = BTreeMap::new();
        // Processes the outputs of one step against the model.
        fn settle(
            t: &mut LockTable,
            seed: u64,
            held: &mut Vec<(SessionId, LockToken)>,
            waiting: &mut BTreeMap<WaitId, SessionId>,
            answered: &mut (u32, u32),
        ) {
            for out in outputs(t) {
                match out {
                    LockOutput::Granted {
                        session,
                        wait,
                        grant,
                        ..
                    } => {
                        assert_eq!(waiting.remove(&wait), Some(session), "seed {seed}");
                        answered.0 += 1;
                        held.push((session, grant.token));
                    }
                    LockOutput::WaitTimedOut { session, wait, .. } => {
                        assert_eq!(waiting.remove(&wait), Some(session), "seed {seed}");
                        answered.1 += 1;
                    }
                    LockOutput::Expired { .. } => {}
                }
            }
            assert_eq!(waiting.len(), t.waiting(), "seed {seed}");
        }
        for _ in 0..500 {
            now += ms(rng.below(2_000));
            // Fire the timers first, so the model sees timeouts before the
            // step's command (which would otherwise fire them itself).
            t.handle_timeout(now);
            settle(&mut t, seed, &mut held, &mut waiting, &mut answered);
            let s = sess(rng.below(5) as u8);
            match rng.below(10) {
                0..=4 => {
                    let node = NODES[rng.below(6) as usize];
                    let scope = match rng.below(3) {
                        0 => file(node),
                        1 => dir(node),
                        _ => tree(node),
                    };
                    let kind = if rng.below(3) == 0 { X } else { S };
                    match acquire(&mut t, now, s, scope, kind, rng.below(2) == 0) {
                        Ok(Acquired::Granted(g)) => held.push((s, g.token)),
                        Ok(Acquired::Queued(w)) => {
                            waiting.insert(w, s);
                        }
                        Err(LockError::WouldBlock) => {}
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                }
                5 | 6 if !held.is_empty() => {
                    let (s, tok) = held.swap_remove(rng.below(held.len() as u64) as usize);
                    let _ = t.release(now, s, tok);
                }
                7 if !held.is_empty() => {
                    let (s, tok) = held[rng.below(held.len() as u64) as usize];
                    let _ = t.refresh(now, s, tok);
                }
                8 if !waiting.is_empty() => {
                    let (&w, &s) = waiting.iter().next().expect("non-empty");
                    t.cancel(now, s, w).expect("still queued");
                    waiting.remove(&w);
                }
                9 => {
                    let r = t.release_session(now, s);
                    let before = waiting.len();
                    waiting.retain(|_, o| *o != s);
                    assert_eq!(r.waiters, before - waiting.len(), "seed {seed}");
                    held.retain(|(o, _)| *o != s);
                }
                _ => t.handle_timeout(now),
            }
            t.check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            settle(&mut t, seed, &mut held, &mut waiting, &mut answered);
        }
        // Liveness: with nobody refreshing, everything drains.
        while let Some(next) = t.poll_timeout() {
            t.handle_timeout(next);
            for out in outputs(&mut t) {
                if let LockOutput::Granted { wait, .. } | LockOutput::WaitTimedOut { wait, .. } =
                    out
                {
                    waiting.remove(&wait);
                }
            }
            t.check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        assert!(
            waiting.is_empty() && t.is_empty() && t.waiting() == 0,
            "seed {seed}"
        );
    }
    assert!(answered.0 > 100 && answered.1 > 0, "{answered:?}");
}

// ------------------------------------------------------------ client

fn client() -> ClientLock {
    ClientLock::new(file(ABF), X, ClientLockConfig::default())
}

fn drain(c: &mut ClientLock) -> Vec<ClientLockOutput> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn send(op: u64, request: Request) -> ClientLockOutput {
    ClientLockOutput::Send {
        op: LockOpId(op),
        request,
    }
}

fn ev(e: ClientLockEvent) -> ClientLockOutput {
    ClientLockOutput::Event(e)
}

const TOKEN: LockToken = LockToken([0xab; 16]);

fn granted(token: LockToken, ttl: Duration) -> Result<Reply, Errno> {
    Ok(Reply::LockGranted {
        token,
        ttl_ms: millis(ttl),
    })
}

/// A client that acquired at 0 and was granted at 200 ms.
fn held_client() -> ClientLock {
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    c.handle_reply(at_ms(200), LockOpId(1), granted(TOKEN, secs(30)));
    drain(&mut c);
    c
}

#[test]
fn client_acquire_sends_the_request_and_waits() {
    let mut c = client();
    assert_eq!(c.state(), ClientLockState::Unlocked);
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.acquire(at(0), true), Ok(LockOpId(1)));
    assert_eq!(
        drain(&mut c),
        vec![send(
            1,
            Request::AcquireLock {
                scope: file(ABF),
                kind: X,
                wait: true
            }
        )]
    );
    assert_eq!(c.state(), ClientLockState::Waiting);
    assert_eq!(c.poll_timeout(), Some(at(30)));
    assert_eq!(c.token(at(1)), None);
    assert_eq!(
        c.acquire(at(1), true),
        Err(ClientLockError::NotUnlocked(ClientLockState::Waiting))
    );
}

#[test]
fn client_grant_makes_it_held_with_an_expiry_counted_from_the_send() {
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    drain(&mut c);
    c.handle_reply(at_ms(200), LockOpId(1), granted(TOKEN, secs(30)));
    // 30 s from the send (0), minus the 1 s margin: 29 s, not 30.2 s.
    assert_eq!(
        drain(&mut c),
        vec![ev(ClientLockEvent::Granted {
            token: TOKEN,
            expires_at: at(29)
        })]
    );
    assert_eq!(c.state(), ClientLockState::Held);
    assert_eq!(c.expires_at(), Some(at(29)));
    assert_eq!(c.poll_timeout(), Some(at(25)), "refresh at 5/6 of the ttl");
    assert_eq!(c.token(at(1)), Some(TOKEN));
}

#[test]
fn client_refreshes_at_five_sixths_and_extends_on_confirmation() {
    let mut c = held_client();
    c.handle_timeout(at_ms(24999));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(at(25));
    assert_eq!(
        drain(&mut c),
        vec![send(2, Request::RefreshLock { token: TOKEN })]
    );
    assert_eq!(c.poll_timeout(), Some(at(29)), "now only the expiry is due");
    c.handle_timeout(at(26));
    assert!(drain(&mut c).is_empty(), "one refresh in flight at a time");
    c.handle_reply(at(26), LockOpId(2), granted(TOKEN, secs(30)));
    assert_eq!(
        drain(&mut c),
        vec![ev(ClientLockEvent::Refreshed {
            token: TOKEN,
            expires_at: at(25 + 29)
        })]
    );
    assert_eq!(c.poll_timeout(), Some(at(50)));
    assert_eq!(c.token(at(53)), Some(TOKEN));
}

#[test]
fn client_gives_the_lock_up_before_the_host_can_expire_it() {
    let mut c = held_client();
    c.handle_timeout(at(25));
    drain(&mut c); // the refresh is lost in a partition
    // The host granted somewhere in [0, 0.2 s], so it expires the lock at
    // 30 s at the earliest; the client stops believing at 29 s.
    assert_eq!(c.token(at_ms(28999)), Some(TOKEN));
    assert_eq!(c.token(at(29)), None, "even before handle_timeout runs");
    c.handle_timeout(at(29));
    assert_eq!(
        drain(&mut c),
        vec![
            send(3, Request::ReleaseLock { token: TOKEN }),
            ev(ClientLockEvent::Lost {
                token: TOKEN,
                reason: LostReason::Unconfirmed
            })
        ]
    );
    assert_eq!(c.state(), ClientLockState::Unlocked);
    assert_eq!(c.poll_timeout(), None);
    // The refresh's reply limps in afterwards: the lock stays lost (and is
    // released again, harmlessly).
    c.handle_reply(at(30), LockOpId(2), granted(TOKEN, secs(30)));
    assert_eq!(c.state(), ClientLockState::Unlocked);
    assert_eq!(
        drain(&mut c),
        vec![send(4, Request::ReleaseLock { token: TOKEN })]
    );
}

#[test]
fn client_loses_the_lock_when_the_refresh_is_refused() {
    let mut c = held_client();
    c.handle_timeout(at(25));
    drain(&mut c);
    c.handle_reply(at(26), LockOpId(2), Err(Errno::Stale));
    assert_eq!(
        drain(&mut c),
        vec![
            send(3, Request::ReleaseLock { token: TOKEN }),
            ev(ClientLockEvent::Lost {
                token: TOKEN,
                reason: LostReason::Refused(Errno::Stale)
            })
        ]
    );
    assert_eq!(c.state(), ClientLockState::Unlocked);
}

#[test]
fn client_wait_times_out_and_releases_a_late_grant() {
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    drain(&mut c);
    c.handle_timeout(at_ms(29999));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(at(30));
    assert_eq!(drain(&mut c), vec![ev(ClientLockEvent::TimedOut)]);
    assert_eq!(c.state(), ClientLockState::Unlocked);
    // The host's grant crosses the timeout: nobody wants it, give it back.
    c.handle_reply(at(31), LockOpId(1), granted(TOKEN, secs(30)));
    assert_eq!(
        drain(&mut c),
        vec![send(2, Request::ReleaseLock { token: TOKEN })]
    );
    assert_eq!(c.state(), ClientLockState::Unlocked);
}

#[test]
fn client_is_denied_on_an_error_reply() {
    let mut c = client();
    c.acquire(at(0), false).expect("unlocked");
    drain(&mut c);
    c.handle_reply(at(0), LockOpId(1), Err(Errno::Again));
    assert_eq!(
        drain(&mut c),
        vec![ev(ClientLockEvent::Denied(Errno::Again))]
    );
    assert_eq!(c.state(), ClientLockState::Unlocked);
    // A reply that is no grant is a protocol error: EIO.
    c.acquire(at(1), false).expect("unlocked");
    drain(&mut c);
    c.handle_reply(at(1), LockOpId(2), Ok(Reply::Done));
    assert_eq!(drain(&mut c), vec![ev(ClientLockEvent::Denied(Errno::Io))]);
}

#[test]
fn client_release_sends_release_and_unlocks() {
    let mut c = held_client();
    c.release(at(10)).expect("held");
    assert_eq!(
        drain(&mut c),
        vec![send(2, Request::ReleaseLock { token: TOKEN })]
    );
    assert_eq!(c.state(), ClientLockState::Unlocked);
    assert_eq!(c.token(at(10)), None);
    assert_eq!(c.poll_timeout(), None);
    // The release's own reply changes nothing.
    c.handle_reply(at(10), LockOpId(2), Ok(Reply::Done));
    assert!(drain(&mut c).is_empty());
    assert_eq!(
        c.release(at(10)),
        Err(ClientLockError::NotHeld(ClientLockState::Unlocked))
    );
    // And the lock can be taken again.
    assert_eq!(c.acquire(at(11), true), Ok(LockOpId(3)));
}

#[test]
fn client_cancel_while_waiting_releases_a_grant_that_still_arrives() {
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    drain(&mut c);
    c.release(at(5)).expect("waiting");
    assert!(drain(&mut c).is_empty(), "nothing to release yet");
    assert_eq!(c.state(), ClientLockState::Unlocked);
    c.handle_reply(at(6), LockOpId(1), granted(TOKEN, secs(30)));
    assert_eq!(
        drain(&mut c),
        vec![send(2, Request::ReleaseLock { token: TOKEN })]
    );
}

#[test]
fn client_confirms_a_grant_that_arrives_late() {
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    drain(&mut c);
    // Queued at the host for 26 s: the lifetime the client can vouch for
    // (from its send) is nearly gone, so it refreshes before believing.
    c.handle_reply(at(26), LockOpId(1), granted(TOKEN, secs(30)));
    assert_eq!(
        drain(&mut c),
        vec![send(2, Request::RefreshLock { token: TOKEN })]
    );
    assert_eq!(c.state(), ClientLockState::Waiting);
    assert_eq!(c.token(at(26)), None);
    c.handle_reply(at_ms(26_100), LockOpId(2), granted(TOKEN, secs(30)));
    assert_eq!(
        drain(&mut c),
        vec![ev(ClientLockEvent::Granted {
            token: TOKEN,
            expires_at: at(26 + 29)
        })]
    );
    assert_eq!(c.state(), ClientLockState::Held);

    // A confirmation the host refuses: denied.
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    c.handle_reply(at(27), LockOpId(1), granted(TOKEN, secs(30)));
    drain(&mut c);
    c.handle_reply(at(27), LockOpId(2), Err(Errno::Stale));
    assert_eq!(
        drain(&mut c),
        vec![
            send(3, Request::ReleaseLock { token: TOKEN }),
            ev(ClientLockEvent::Denied(Errno::Stale))
        ]
    );

    // A confirmation still pending at the wait timeout: timed out, and the
    // grant is given back.
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    c.handle_reply(at(29), LockOpId(1), granted(TOKEN, secs(30)));
    drain(&mut c);
    c.handle_timeout(at(30));
    assert_eq!(
        drain(&mut c),
        vec![
            send(3, Request::ReleaseLock { token: TOKEN }),
            ev(ClientLockEvent::TimedOut)
        ]
    );
}

#[test]
fn client_never_believes_a_lifetime_shorter_than_its_margin() {
    let mut c = client();
    c.acquire(at(0), true).expect("unlocked");
    drain(&mut c);
    c.handle_reply(at(0), LockOpId(1), granted(TOKEN, ms(500)));
    // Every grant is re-confirmed, none believed, until the wait runs out.
    c.handle_reply(at(1), LockOpId(2), granted(TOKEN, ms(500)));
    assert_eq!(c.state(), ClientLockState::Waiting);
    assert_eq!(
        drain(&mut c),
        vec![
            send(2, Request::RefreshLock { token: TOKEN }),
            send(3, Request::RefreshLock { token: TOKEN })
        ]
    );
    c.handle_timeout(at(30));
    assert_eq!(
        drain(&mut c),
        vec![
            send(4, Request::ReleaseLock { token: TOKEN }),
            ev(ClientLockEvent::TimedOut)
        ]
    );
    // A nonsensical refresh fraction does not panic.
    let cfg = ClientLockConfig {
        refresh_at: f64::NAN,
        ..ClientLockConfig::default()
    };
    let mut c = ClientLock::new(file(ABF), X, cfg);
    c.acquire(at(0), true).expect("unlocked");
    c.handle_reply(at(0), LockOpId(1), granted(TOKEN, secs(30)));
    assert_eq!(c.poll_timeout(), Some(at(25)));
}

#[test]
fn client_refresh_now_revalidates() {
    let mut c = client();
    assert_eq!(
        c.refresh_now(at(0)),
        Err(ClientLockError::NotHeld(ClientLockState::Unlocked))
    );
    let mut c = held_client();
    c.refresh_now(at(3)).expect("held");
    c.refresh_now(at(3)).expect("already refreshing");
    assert_eq!(
        drain(&mut c),
        vec![send(2, Request::RefreshLock { token: TOKEN })]
    );
    c.handle_reply(at(4), LockOpId(2), granted(TOKEN, secs(30)));
    assert_eq!(c.expires_at(), Some(at(3 + 29)));
}

#[test]
fn client_ignores_replies_it_did_not_ask_for() {
    let mut c = held_client();
    // A grant of our own token to an unknown op: ours already, kept.
    c.handle_reply(at(1), LockOpId(77), granted(TOKEN, secs(30)));
    c.handle_reply(at(1), LockOpId(77), Err(Errno::Io));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.state(), ClientLockState::Held);
    assert_eq!(c.expires_at(), Some(at(29)), "unchanged");
    // A refresh reply carrying another token is a protocol error.
    c.refresh_now(at(2)).expect("held");
    drain(&mut c);
    let other = LockToken([1; 16]);
    c.handle_reply(at(2), LockOpId(2), granted(other, secs(30)));
    assert_eq!(
        drain(&mut c),
        vec![
            send(3, Request::ReleaseLock { token: other }),
            send(4, Request::ReleaseLock { token: TOKEN }),
            ev(ClientLockEvent::Lost {
                token: TOKEN,
                reason: LostReason::Refused(Errno::Io)
            })
        ]
    );
}

// --------------------------------------------- host and clients, traced

/// A host table and named clients over a network the test controls: each
/// client's link can be cut, and everything that crosses is traced.
struct World {
    table: LockTable,
    clients: Vec<(char, SessionId, ClientLock)>,
    up: Vec<bool>,
    now: Instant,
    next_request: u64,
    /// Queued host requests: whose, and under which op.
    pending: BTreeMap<RequestId, (usize, LockOpId)>,
    /// Short names for tokens, in order of appearance.
    names: Vec<LockToken>,
    trace: String,
}

impl World {
    fn new(clients: &[(char, LockScope, LockKind)]) -> Self {
        World {
            table: LockTable::new(LockConfig::default(), Rng::from_u64(42)),
            clients: clients
                .iter()
                .enumerate()
                .map(|(i, &(name, scope, kind))| {
                    (
                        name,
                        sess(i as u8 + 1),
                        ClientLock::new(scope, kind, ClientLockConfig::default()),
                    )
                })
                .collect(),
            up: vec![true; clients.len()],
            now: Instant::ZERO,
            next_request: 1,
            pending: BTreeMap::new(),
            names: Vec::new(),
            trace: String::new(),
        }
    }

    fn name(&mut self, token: LockToken) -> String {
        let i = self
            .names
            .iter()
            .position(|&t| t == token)
            .unwrap_or_else(|| {
                self.names.push(token);
                self.names.len() - 1
            });
        format!("T{}", i + 1)
    }

    fn note(&mut self, line: String) {
        let now = format!("{:?}", self.now);
        writeln!(self.trace, "{now:>5} {line}").expect("string write");
    }

    fn request(&mut self, r: &Request) -> String {
        match *r {
            Request::AcquireLock { scope, kind, wait } => {
                format!(
                    "AcquireLock {scope:?} {kind:?}{}",
                    if wait { " wait" } else { "" }
                )
            }
            Request::RefreshLock { token } => format!("RefreshLock {}", self.name(token)),
            Request::ReleaseLock { token } => format!("ReleaseLock {}", self.name(token)),
            ref other => format!("{other:?}"),
        }
    }

    fn reply(&mut self, r: &Result<Reply, Errno>) -> String {
        match *r {
            Ok(Reply::LockGranted { token, ttl_ms }) => {
                format!("LockGranted {} {ttl_ms}ms", self.name(token))
            }
            Ok(ref other) => format!("{other:?}"),
            Err(e) => format!("Err({e:?})"),
        }
    }

    fn event(&mut self, e: ClientLockEvent) -> String {
        match e {
            ClientLockEvent::Granted { token, expires_at } => {
                format!("Granted {} until {expires_at:?}", self.name(token))
            }
            ClientLockEvent::Refreshed { token, expires_at } => {
                format!("Refreshed {} until {expires_at:?}", self.name(token))
            }
            ClientLockEvent::Lost { token, reason } => {
                format!("Lost {} ({reason:?})", self.name(token))
            }
            other => format!("{other:?}"),
        }
    }

    /// Moves outputs until everyone is quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(out) = self.clients[i].2.poll_output() {
                    moved = true;
                    self.carry_request(i, out);
                }
            }
            while let Some(out) = self.table.poll_output() {
                moved = true;
                self.carry_host_output(out);
            }
            self.table.check_invariants().expect("invariants");
            if !moved {
                return;
            }
        }
    }

    fn carry_request(&mut self, i: usize, out: ClientLockOutput) {
        let (name, session, _) = self.clients[i];
        let now = self.now;
        let (op, request) = match out {
            ClientLockOutput::Event(e) => {
                let line = self.event(e);
                self.note(format!("{name} event {line}"));
                return;
            }
            ClientLockOutput::Send { op, request } => (op, request),
        };
        let text = self.request(&request);
        if !self.up[i] {
            self.note(format!("{name} -> host {text} (lost)"));
            return;
        }
        self.note(format!("{name} -> host {text}"));
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let result = match request {
            Request::AcquireLock { scope, kind, wait } => {
                let req = LockRequest {
                    session,
                    request: id,
                    scope,
                    kind,
                    wait,
                    ancestors: ancestors(scope_node(scope)),
                };
                match self.table.acquire(now, &req) {
                    Ok(Acquired::Granted(g)) => Some(Ok(g.reply())),
                    Ok(Acquired::Queued(w)) => {
                        self.note(format!("host queues {name} as {w:?}"));
                        self.pending.insert(id, (i, op));
                        None
                    }
                    Err(e) => Some(Err(e.errno())),
                }
            }
            Request::RefreshLock { token } => Some(
                self.table
                    .refresh(now, session, token)
                    .map(|g| g.reply())
                    .map_err(|e| e.errno()),
            ),
            Request::ReleaseLock { token } => Some(
                self.table
                    .release(now, session, token)
                    .map(|()| Reply::Done)
                    .map_err(|e| e.errno()),
            ),
            _ => Some(Err(Errno::NotSup)),
        };
        if let Some(result) = result {
            self.carry_reply(i, op, result);
        }
    }

    fn carry_host_output(&mut self, out: LockOutput) {
        if let LockOutput::Expired { session, token, .. } = out {
            let name = self
                .clients
                .iter()
                .find(|c| c.1 == session)
                .map_or('?', |c| c.0);
            let t = self.name(token);
            self.note(format!("host expires {name}'s {t}"));
        }
        if let Some((_, request, result)) = out.reply() {
            let (i, op) = self.pending.remove(&request).expect("a queued request");
            self.carry_reply(i, op, result);
        }
    }

    fn carry_reply(&mut self, i: usize, op: LockOpId, result: Result<Reply, Errno>) {
        let name = self.clients[i].0;
        let text = self.reply(&result);
        if !self.up[i] {
            self.note(format!("host -> {name} {text} (lost)"));
            return;
        }
        self.note(format!("host -> {name} {text}"));
        let now = self.now;
        self.clients[i].2.handle_reply(now, op, result);
    }

    /// Runs every timer up to `t`, then sets the clock to `t`.
    fn advance_to(&mut self, t: Instant) {
        loop {
            let next = self
                .clients
                .iter()
                .filter_map(|c| c.2.poll_timeout())
                .chain(self.table.poll_timeout())
                .min();
            match next {
                Some(n) if n <= t => {
                    self.now = self.now.max(n);
                    let now = self.now;
                    self.table.handle_timeout(now);
                    for c in &mut self.clients {
                        c.2.handle_timeout(now);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = t;
    }

    fn acquire(&mut self, i: usize, wait: bool) {
        let now = self.now;
        self.clients[i].2.acquire(now, wait).expect("unlocked");
        self.pump();
    }

    fn release(&mut self, i: usize) {
        let now = self.now;
        self.clients[i].2.release(now).expect("held");
        self.pump();
    }

    fn link(&mut self, i: usize, up: bool) {
        self.up[i] = up;
        let name = self.clients[i].0;
        self.note(format!("{name} link {}", if up { "up" } else { "down" }));
    }

    fn state(&self, i: usize) -> ClientLockState {
        self.clients[i].2.state()
    }
}

/// Three clients contend for one file: A writes first, B queues a write,
/// C queues a read behind it; A refreshes and releases, B gets the lock,
/// is partitioned, gives the lock up itself before the host expires it,
/// and C reads. B's old token is then refused as a fencing token.
#[test]
fn contention_partition_and_fencing_trace() {
    let mut w = World::new(&[
        ('A', file(ABF), X),
        ('B', file(ABF), X),
        ('C', file(ABF), S),
    ]);
    w.acquire(0, true);
    assert_eq!(w.state(0), ClientLockState::Held);
    w.advance_to(at(1));
    w.acquire(1, true);
    w.advance_to(at(2));
    w.acquire(2, true);
    // C's read queues behind A's write and B's waiting write.
    assert_eq!(
        (w.state(1), w.state(2)),
        (ClientLockState::Waiting, ClientLockState::Waiting)
    );
    w.advance_to(at(27));
    w.release(0);
    assert_eq!(w.state(1), ClientLockState::Held);
    assert_eq!(
        w.state(2),
        ClientLockState::Waiting,
        "the reader waits for the writer"
    );
    let b_token = w.clients[1].2.token(w.now).expect("B holds");
    let b_session = w.clients[1].1;
    w.advance_to(at(28));
    w.link(1, false);
    // B's refresh at 52 s is lost; it gives the lock up at 56 s; the host
    // expires it at 57 s and C gets in (C's own wait timed out at 32 s and
    // it asked again, see below).
    w.advance_to(at(32));
    assert_eq!(w.state(2), ClientLockState::Unlocked, "C timed out");
    w.acquire(2, true);
    w.advance_to(at_ms(55999));
    assert_eq!(w.state(1), ClientLockState::Held);
    w.advance_to(at(56));
    assert_eq!(w.state(1), ClientLockState::Unlocked, "B gave up first");
    assert!(w.table.lock(b_token).is_some(), "the host still has it");
    w.advance_to(at(57));
    assert_eq!(w.state(2), ClientLockState::Held);
    w.link(1, true);
    // B's stale write is fenced off.
    let verdict = w
        .table
        .validate(w.now, b_session, b_token, ABF, ancestors(ABF));
    assert_eq!(verdict, Err(FenceError::Unknown));
    let b_name = w.name(b_token);
    w.note(format!("host validates B's {b_name}: {verdict:?}"));
    w.release(2);
    assert!(w.table.is_empty());
    insta::assert_snapshot!("contention_partition_trace", w.trace);
}
