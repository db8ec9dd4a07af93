//! Advisory record locks across clients: one client's lock keeps the
//! others out, waiters are woken, closes and ended sessions release, and
//! data follows the locks (a holder reads what the last holder wrote).

use super::*;
use crate::proto::{ByteRange, LockKind, OpenFor, RangeHeld};

fn open_rw(w: &mut World, c: usize, ino: Ino) -> Fh {
    let op = Op::Open {
        ino,
        mode: OpenFor::Write,
        truncate: false,
    };
    match w.call(c, op) {
        Ok(Answer::Opened { fh, .. }) => fh,
        other => panic!("{other:?}"),
    }
}

fn set(fh: Fh, owner: u64, kind: Option<LockKind>, wait: bool) -> Op {
    Op::SetLock {
        fh,
        owner,
        range: ByteRange::WHOLE,
        kind,
        wait,
    }
}

const W: Option<LockKind> = Some(LockKind::Exclusive);
const R: Option<LockKind> = Some(LockKind::Shared);

/// Two clients with `f` open on each, read-write.
fn two_open(content: &[u8]) -> (World, [Fh; 2]) {
    let mut w = world(&[("f", content)], 2);
    let fhs = [0, 1].map(|c| {
        let (ino, _) = lookup(&mut w, c, Ino::ROOT, "f").expect("f");
        open_rw(&mut w, c, ino)
    });
    (w, fhs)
}

#[test]
fn a_lock_on_one_client_keeps_the_others_out_until_it_goes() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    assert_eq!(w.call(1, set(b, 1, R, false)), Err(Errno::Again));
    let test = Op::GetLock {
        fh: b,
        owner: 1,
        range: ByteRange { start: 5, end: 5 },
        kind: LockKind::Shared,
    };
    assert_eq!(
        w.call(1, test),
        Ok(Answer::Lock(Some(RangeHeld {
            range: ByteRange::WHOLE,
            kind: LockKind::Exclusive
        })))
    );
    // A waiter waits, however long, and goes when the lock does.
    let waiting = w.op(1, set(b, 1, W, true));
    w.run_for(Duration::from_secs(300));
    assert_eq!(w.answer(1, waiting), None, "still held");
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    assert_eq!(w.wait(1, waiting), Ok(Answer::Done));
    assert_eq!(w.call(0, set(a, 2, R, false)), Err(Errno::Again));
    // Two owners on one client exclude each other too.
    assert_eq!(w.call(1, set(b, 2, R, false)), Err(Errno::Again));
}

#[test]
fn a_close_releases_the_closing_owners_locks_and_only_its() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    let other = Op::Flush {
        fh: a,
        owner: Some(2),
    };
    assert_eq!(w.call(0, other), Ok(Answer::Done));
    w.settle();
    assert_eq!(w.call(1, set(b, 9, R, false)), Err(Errno::Again));
    let mine = Op::Flush {
        fh: a,
        owner: Some(1),
    };
    assert_eq!(w.call(0, mine), Ok(Answer::Done));
    w.settle();
    assert_eq!(w.call(1, set(b, 9, R, false)), Ok(Answer::Done));
}

#[test]
fn a_flock_goes_with_its_open_file() {
    let (mut w, [a, b]) = two_open(b"x");
    // A flock's owner is its open file; no flush names it.
    assert_eq!(w.call(0, set(a, 77, W, false)), Ok(Answer::Done));
    assert_eq!(w.call(0, Op::Release { fh: a }), Ok(Answer::Done));
    w.settle();
    assert_eq!(w.call(1, set(b, 9, W, false)), Ok(Answer::Done));
}

#[test]
fn a_client_that_dies_frees_its_locks_after_its_grace() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    let waiting = w.op(1, set(b, 1, W, true));
    w.crash_client(0);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.answer(1, waiting), None, "the session may still resume");
    w.run_for(HostConfig::default().session_grace);
    assert_eq!(w.wait(1, waiting), Ok(Answer::Done));
}

/// The pattern of SQLite and of every program that shares a file by
/// locking it: lock, read, write, unlock. The second client's handle was
/// opened (and its data read) before the first one's writes.
#[test]
fn a_lock_holder_reads_what_the_last_holder_wrote() {
    let (mut w, [a, b]) = two_open(b"version one");
    assert_eq!(read_all(&mut w, 1, b, 64), b"version one");

    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    write(&mut w, 0, a, 0, b"version two, longer");
    // The unlock publishes the writes: no close, no fsync.
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("f")])),
        Some(&b"version two, longer"[..])
    );

    let before = w.clients[1].invalidations;
    assert_eq!(w.call(1, set(b, 1, R, false)), Ok(Answer::Done));
    assert!(
        w.clients[1].invalidations > before,
        "the kernel's pages of the file are dropped"
    );
    assert_eq!(read_all(&mut w, 1, b, 64), b"version two, longer");
    let ino = lookup(&mut w, 1, Ino::ROOT, "f").expect("f").0;
    match w.call(1, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => assert_eq!(attr.size, 19),
        other => panic!("{other:?}"),
    }
}

/// A lock lost with its session (here to a host restart) is not kept
/// in secret: the program that held it still believes it does, and what
/// it writes back, computed from what it read under the lock, must not
/// land over the update of the client that took the lock meanwhile.
#[test]
fn writes_under_a_lock_lost_with_its_session_are_refused() {
    let f = || RelPath::from(vec![name("f")]);
    let (mut w, [a, b]) = two_open(b"counter 1");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    assert_eq!(read_all(&mut w, 0, a, 64), b"counter 1");
    w.crash_host();
    w.restart_host();
    // Both clients are back, in new sessions.
    w.run_for(Duration::from_secs(30));
    // The restart freed the lock: the other client takes it and updates.
    assert_eq!(w.call(1, set(b, 1, W, false)), Ok(Answer::Done));
    write(&mut w, 1, b, 0, b"counter 2");
    assert_eq!(w.call(1, set(b, 1, None, false)), Ok(Answer::Done));
    // The first program's increment of what it read is refused.
    let stale = Op::Write {
        fh: a,
        offset: 0,
        data: Bytes::from_static(b"counter 2"),
        append: false,
    };
    assert_eq!(w.call(0, stale), Err(Errno::Io));
    assert_eq!(w.disk.read_file(&f()), Some(&b"counter 2"[..]));
    // Once it lets go of its lock, it locks again, reads the other's
    // update, and writes under the new lock.
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    assert_eq!(read_all(&mut w, 0, a, 64), b"counter 2");
    write(&mut w, 0, a, 0, b"counter 3");
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    assert_eq!(w.disk.read_file(&f()), Some(&b"counter 3"[..]));
}

/// Only a lock that was held is fenced when its session ends: a request
/// the host refused took nothing to lose, and its program's writes go
/// on; and the fence is lifted by its own owner's letting go only.
#[test]
fn only_locks_that_were_held_are_fenced() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(1, set(b, 1, W, false)), Ok(Answer::Done));
    assert_eq!(w.call(0, set(a, 1, W, false)), Err(Errno::Again));
    assert_eq!(w.call(0, set(a, 2, R, false)), Err(Errno::Again));
    w.crash_host();
    w.restart_host();
    w.run_for(Duration::from_secs(30));
    // Client 0 never held a lock: it writes.
    write(&mut w, 0, a, 0, b"written");
    // Client 1 held one: fenced, and another owner's close does not
    // lift it.
    let write_b = |w: &mut World| {
        w.call(
            1,
            Op::Write {
                fh: b,
                offset: 0,
                data: Bytes::from_static(b"late"),
                append: false,
            },
        )
    };
    assert_eq!(write_b(&mut w), Err(Errno::Io));
    let other = Op::Flush {
        fh: b,
        owner: Some(7),
    };
    assert_eq!(w.call(1, other), Ok(Answer::Done));
    assert_eq!(write_b(&mut w), Err(Errno::Io));
    let own = Op::Flush {
        fh: b,
        owner: Some(1),
    };
    assert_eq!(w.call(1, own), Ok(Answer::Done));
    assert_eq!(write_b(&mut w), Ok(Answer::Written(4)));
}

/// A signal ends a wait for another client's lock with EINTR, as on a
/// local disk, and the withdrawn request is never granted behind the
/// program's back: the lock is free for others once its holder lets go.
#[test]
fn an_interrupted_lock_wait_ends_with_eintr_and_takes_nothing() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    let waiting = w.op(1, set(b, 1, W, true));
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.answer(1, waiting), None, "waits for the holder");
    let now = w.now;
    w.clients[1].core.interrupt(now, waiting);
    w.pump();
    assert_eq!(w.wait(1, waiting), Err(Errno::Intr));
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    w.settle();
    // Nobody holds it: the first client takes it again, and the second
    // client's owner finds it taken.
    assert_eq!(w.call(0, set(a, 2, W, false)), Ok(Answer::Done));
    assert_eq!(w.call(1, set(b, 1, W, false)), Err(Errno::Again));
    // An interrupt that comes after the grant changes nothing.
    assert_eq!(w.call(0, set(a, 2, None, false)), Ok(Answer::Done));
    let granted = w.op(1, set(b, 1, W, true));
    assert_eq!(w.wait(1, granted), Ok(Answer::Done));
    let now = w.now;
    w.clients[1].core.interrupt(now, granted);
    w.pump();
    assert_eq!(w.call(0, set(a, 1, W, false)), Err(Errno::Again));
}

/// Client 0 holds the lock through `a`; client 1's wait for it through
/// `b` is interrupted, and its withdrawal reaches the host first: the
/// host queues the wait after all.
fn overtaken_wait() -> (World, [Fh; 2]) {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    w.holding.insert(1);
    let waiting = w.op(1, set(b, 1, W, true));
    w.holding.clear();
    let now = w.now;
    w.clients[1].core.interrupt(now, waiting);
    w.settle();
    assert_eq!(w.wait(1, waiting), Err(Errno::Intr));
    w.let_through();
    (w, [a, b])
}

/// A wait whose withdrawal overtakes it on the way (another stream, its
/// packets lost) waits at the host after all. The client keeps it until
/// the host answers it, withdrawing it again at the request timeout, so
/// it is never granted to nobody (fs_sim, seed 14573: the lock was then
/// held for good, and the next client waited forever).
#[test]
fn a_wait_its_withdrawal_overtook_is_withdrawn_again() {
    let (mut w, [a, _]) = overtaken_wait();
    w.run_for(Duration::from_secs(90));
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    w.settle();
    assert_eq!(
        w.call(0, set(a, 2, W, false)),
        Ok(Answer::Done),
        "the withdrawn wait was not granted when the holder let go"
    );
}

/// An interrupted wait whose withdrawal overtook it, taken back by its
/// owner's unlock at close, is over once the host says so: the client
/// stops withdrawing it.
#[test]
fn a_wait_taken_back_by_its_owners_unlock_is_over() {
    let (mut w, [_, b]) = overtaken_wait();
    w.settle();
    let sent = w.clients[1].sent;
    assert_eq!(w.call(1, set(b, 1, None, false)), Ok(Answer::Done));
    w.run_for(Duration::from_secs(300));
    assert_eq!(
        w.clients[1].sent,
        sent + 1,
        "the unlock, nothing to withdraw"
    );
}

/// A wait its owner's other thread takes back at the host (an unlock of
/// the same bytes) goes on: the program was not interrupted, and the
/// client asks for the lock again rather than answer EINTR.
#[test]
fn a_wait_another_thread_unlocked_under_goes_on() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    let waiting = w.op(1, set(b, 1, W, true));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.call(1, set(b, 1, None, false)), Ok(Answer::Done));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.answer(1, waiting), None, "still waits");
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.answer(1, waiting), Some(Ok(Answer::Done)));
    // Granted after its owner's unlock: its close lets it go.
    let close = Op::Flush {
        fh: b,
        owner: Some(1),
    };
    assert_eq!(w.call(1, close), Ok(Answer::Done));
    w.settle();
    assert_eq!(w.call(0, set(a, 2, W, false)), Ok(Answer::Done));
}

/// The same, when the host grants the wait before the other thread's
/// unlock reaches it: the unlock was made while the wait waited, so on a
/// local disk it let go of nothing and the grant that came after stands.
/// At the host it comes after the grant and lets go of it; the client
/// must not tell the program it holds a lock the host let go.
#[test]
fn a_grant_that_crosses_another_threads_unlock_still_holds() {
    granted_across(|_, b| set(b, 1, None, false));
}

/// The same for a close of another descriptor of the file by the same
/// process (POSIX: it lets go of the process's locks on the file), whose
/// unlock waits for the file's commit: a grant that comes meanwhile was
/// made after the close, and holds.
#[test]
fn a_grant_that_comes_while_a_close_commits_still_holds() {
    granted_across(|w, _| {
        let (ino, _) = lookup(w, 1, Ino::ROOT, "f").expect("f");
        let other = open_rw(w, 1, ino);
        super::write(w, 1, other, 0, b"y");
        Op::Flush {
            fh: other,
            owner: Some(1),
        }
    });
}

/// Client 1's program waits for client 0's lock (owner 1 on both), then
/// makes `crossing` (through the handle it waits through), which is held
/// back until client 0 has let go and the host has granted the wait:
/// the program must hold the lock it is told it holds.
fn granted_across(crossing: impl FnOnce(&mut World, Fh) -> Op) {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    let waiting = w.op(1, set(b, 1, W, true));
    w.run_for(Duration::from_secs(1));
    let op = crossing(&mut w, b);
    w.holding.insert(1);
    let crossing = w.op(1, op);
    assert_eq!(w.call(0, set(a, 1, None, false)), Ok(Answer::Done));
    w.run_for(Duration::from_secs(1));
    w.holding.clear();
    w.let_through();
    assert_eq!(w.wait(1, crossing), Ok(Answer::Done));
    assert_eq!(w.wait(1, waiting), Ok(Answer::Done));
    assert_eq!(
        w.call(0, set(a, 2, W, false)),
        Err(Errno::Again),
        "client 1's program holds the lock"
    );
}

/// Two clients with `f` open for reading and writing; client 1 also
/// knows a file three names deep, so that re-binding after a host restart
/// takes three round trips and a lock wait (one) is answered meanwhile.
/// Client 0 holds the write lock on `f`.
fn locked_before_a_restart() -> (World, Fh, Fh) {
    let path = |names: &[&str]| RelPath::from(names.iter().map(|n| name(n)).collect::<Vec<_>>());
    let mut d = disk(&[("f", b"x")]);
    for dir in [&["d"][..], &["d", "e"]] {
        let _ = d.execute(FsOp::Mkdir {
            path: path(dir),
            mode: 0o755,
            owner: None,
        });
    }
    d.local_replace(&path(&["d", "e", "g"]), b"y").expect("g");
    let mut w = World::new(7, d, 2, HostConfig::default(), ClientConfig::default());
    let [a, b] = [0, 1].map(|c| {
        let (ino, _) = lookup(&mut w, c, Ino::ROOT, "f").expect("f");
        open_rw(&mut w, c, ino)
    });
    let mut parent = Ino::ROOT;
    for n in ["d", "e", "g"] {
        parent = lookup(&mut w, 1, parent, n).expect(n).0;
    }
    assert_eq!(w.call(0, set(a, 1, W, false)), Ok(Answer::Done));
    (w, a, b)
}

/// [`locked_before_a_restart`]'s host restarted with client 1's wait
/// `again` out: client 0 re-binds first (so that the old node id of `f`
/// names it in the new run too, as in fs_sim's seed), then client 1,
/// and while it re-binds another thread of its program lets go of the
/// bytes. The wait was made first, and holds.
fn unlocked_while_rebinding(mut w: World, a: Fh, b: Fh, again: Req) {
    w.partition(1);
    w.restart_host();
    w.run_for(Duration::from_secs(2));
    w.clients[1].events.clear();
    w.heal();
    let limit = w.now + Duration::from_secs(120);
    while !w.clients[1]
        .events
        .contains(&ClientEvent::Connected { resumed: false })
    {
        assert!(w.step(limit), "client 1 reconnects");
    }
    let unlock = w.op(1, set(b, 1, None, false));
    assert_eq!(w.wait(1, unlock), Ok(Answer::Done));
    assert_eq!(w.wait(1, again), Ok(Answer::Done));
    w.settle();
    assert_eq!(
        w.call(0, set(a, 2, W, false)),
        Err(Errno::Again),
        "client 1's program holds the lock"
    );
}

/// A lock wait the program makes while the host is down, held behind
/// the withdrawal of a wait that timed out before it, is asked again in
/// the new session after a host restart as every waiting request is:
/// once inodes are re-bound, in the order the kernel made them. An
/// unlock another thread makes while the client re-binds (deferred too)
/// then crosses it, and the grant stands (fs_sim, seed 129542: the held
/// wait went out at once, on its old node id, ahead of the re-binding;
/// granted before the deferred unlock ran, it was not crossed, and the
/// unlock let go of a lock the program was told it holds).
#[test]
fn a_wait_held_over_a_host_restart_is_crossed_by_an_unlock_made_while_rebinding() {
    let (mut w, a, b) = locked_before_a_restart();
    let first = w.op(1, set(b, 1, W, true));
    w.run_for(Duration::from_secs(1));
    w.crash_host();
    // The wait fails while the host is unreachable; its withdrawal waits
    // for the host, and the program's next wait is held behind it.
    assert_eq!(w.wait(1, first), Err(Errno::TimedOut));
    let again = w.op(1, set(b, 1, W, true));
    unlocked_while_rebinding(w, a, b, again);
}

/// The same for a wait held behind the file's commit when the host
/// restarts: the commit fails in the new session, and the wait, sent
/// then, went out ahead of the re-binding too.
#[test]
fn a_wait_behind_a_commit_over_a_host_restart_is_crossed_by_an_unlock_made_while_rebinding() {
    let (mut w, a, b) = locked_before_a_restart();
    write(&mut w, 1, b, 0, b"written");
    let again = w.op(1, set(b, 1, W, true));
    w.crash_host();
    unlocked_while_rebinding(w, a, b, again);
}

/// An interrupted wait to upgrade a read lock to a write lock leaves the
/// read lock held, as on a local disk: the wait is taken back, not the
/// bytes unlocked.
#[test]
fn an_interrupted_upgrade_keeps_the_lock_held_before() {
    let (mut w, [a, b]) = two_open(b"x");
    assert_eq!(w.call(0, set(a, 1, R, false)), Ok(Answer::Done));
    assert_eq!(w.call(1, set(b, 1, R, false)), Ok(Answer::Done));
    let upgrade = w.op(0, set(a, 1, W, true));
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.answer(0, upgrade), None, "waits for the other reader");
    let now = w.now;
    w.clients[0].core.interrupt(now, upgrade);
    w.pump();
    assert_eq!(w.wait(0, upgrade), Err(Errno::Intr));
    w.settle();
    assert_eq!(
        w.call(1, set(b, 1, W, false)),
        Err(Errno::Again),
        "the first client still holds its read lock"
    );
    // A wait asked again at once (SA_RESTART) is not taken back by the
    // withdrawal before it: it waits, and gets the lock when it is free.
    let again = w.op(0, set(a, 1, W, true));
    assert_eq!(w.call(1, set(b, 1, None, false)), Ok(Answer::Done));
    assert_eq!(w.wait(0, again), Ok(Answer::Done));
}

#[test]
fn a_lock_request_with_no_bytes_is_refused() {
    let (mut w, [a, _]) = two_open(b"x");
    let op = Op::SetLock {
        fh: a,
        owner: 1,
        range: ByteRange { start: 9, end: 3 },
        kind: W,
        wait: false,
    };
    assert_eq!(w.call(0, op), Err(Errno::Inval));
    assert_eq!(w.call(0, set(Fh(999), 1, W, false)), Err(Errno::BadF));
}
