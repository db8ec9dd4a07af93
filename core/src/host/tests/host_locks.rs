//! Clients' record locks held on the host's own files: a program on the
//! host and the clients keep each other out ([`super::server`]'s
//! `host_locks`).

use super::*;
use crate::proto::ByteRange;

fn set_lock(
    r: &mut Rig,
    conn: ConnId,
    node: NodeId,
    range: ByteRange,
    kind: LockKind,
    wait: bool,
) -> RequestId {
    r.send(
        conn,
        Request::SetLock {
            node,
            owner: 7,
            range,
            kind,
            wait,
        },
    )
}

/// Owner 7's unlock of all of `node`.
fn unlock_all(node: NodeId) -> Request {
    Request::Unlock {
        node,
        owner: 7,
        range: ByteRange::WHOLE,
    }
}

fn unlock(r: &mut Rig, conn: ConnId, node: NodeId) -> Result<Reply, Errno> {
    r.call(conn, unlock_all(node))
}

const FIRST_TEN: ByteRange = ByteRange { start: 0, end: 9 };

/// A client's lock keeps a program on the host out of those bytes, and
/// only those, until the client lets go; a commit that puts a new file
/// in the old one's place takes the lock with it.
#[test]
fn a_clients_lock_keeps_a_program_on_the_host_out() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node;
    let p = path(&["a.txt"]);
    let got = set_lock(&mut r, c, a, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c, got), Some(Ok(Reply::Done)));
    assert_eq!(
        r.disk
            .local_lock(&p, ByteRange { start: 5, end: 5 }, LockKind::Shared),
        Ok(false)
    );
    assert_eq!(
        r.disk
            .local_lock(&p, ByteRange { start: 10, end: 20 }, LockKind::Exclusive),
        Ok(true),
        "the bytes beside the client's"
    );
    r.disk.local_unlock(&p).expect("a.txt");

    // A commit by the lock's holder replaces the file: still kept out.
    let token = r.lock(c, a);
    let txn = r.begin(c, a, token);
    r.chunk(c, txn, 0, 0, b"HELLO").expect("staged");
    let committed = r.call(
        c,
        Request::CommitWrite {
            txn,
            size: 5,
            set: SetAttr::default(),
        },
    );
    assert!(matches!(committed, Ok(Reply::Attr(_))), "{committed:?}");
    assert_eq!(
        r.disk.local_lock(&p, FIRST_TEN, LockKind::Shared),
        Ok(false)
    );

    assert_eq!(unlock(&mut r, c, a), Ok(Reply::Done));
    assert!(r.disk.held_locks(&p).is_empty());
    assert_eq!(
        r.disk.local_lock(&p, FIRST_TEN, LockKind::Exclusive),
        Ok(true)
    );
}

/// A program on the host that holds a lock keeps clients out: a request
/// that does not wait is refused with EAGAIN, and one that waits is
/// granted once the program lets go.
#[test]
fn a_program_on_the_host_keeps_clients_out() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node;
    let p = path(&["a.txt"]);
    assert_eq!(r.disk.local_lock(&p, FIRST_TEN, LockKind::Shared), Ok(true));

    let refused = set_lock(&mut r, c, a, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c, refused), Some(Err(Errno::Again)));
    let shared = set_lock(&mut r, c, a, FIRST_TEN, LockKind::Shared, false);
    assert_eq!(r.reply(c, shared), Some(Ok(Reply::Done)), "readers share");
    assert_eq!(unlock(&mut r, c, a), Ok(Reply::Done));

    let waits = set_lock(&mut r, c, a, FIRST_TEN, LockKind::Exclusive, true);
    r.advance(Duration::from_secs(2));
    assert_eq!(r.reply(c, waits), None, "waits for the program");
    program_lets_go_and_the_waiter_has_it(&mut r, c, waits, &p);
}

/// A client's wait for a program on the host ends with its session (a
/// crashed client) or its withdrawal (a signal), and takes nothing.
#[test]
fn a_wait_for_a_program_on_the_host_ends_with_the_client() {
    let (mut r, [c1, c2], a, p) = two_clients_on_a();
    assert_eq!(
        r.disk.local_lock(&p, FIRST_TEN, LockKind::Exclusive),
        Ok(true)
    );
    let waits = set_lock(&mut r, c1, a, FIRST_TEN, LockKind::Exclusive, true);
    let withdrawn = r.call(
        c1,
        Request::Withdraw {
            node: a,
            owner: 7,
            range: FIRST_TEN,
        },
    );
    assert_eq!(withdrawn, Ok(Reply::Done));
    assert_eq!(r.reply(c1, waits), Some(Err(Errno::Intr)), "answered");
    let other = set_lock(&mut r, c2, a, FIRST_TEN, LockKind::Exclusive, true);
    r.host.conn_closed(r.now, c2);
    r.advance(Duration::from_secs(60));
    r.disk.local_unlock(&p).expect("a.txt");
    r.advance(Duration::from_secs(1));
    assert_eq!(
        r.reply(c1, waits),
        Some(Err(Errno::Intr)),
        "withdrawn: never granted"
    );
    assert_eq!(r.reply(c2, other), None, "its session ended");
    assert!(r.disk.held_locks(&p).is_empty());
    assert!(r.host.record_locks().is_empty());
}

/// A client's lock on a host that does not hold them on its files
/// (`lock_host_files` off) leaves the host's programs alone.
#[test]
fn a_host_may_leave_its_files_unlocked() {
    let disk = disk_with(&[(&["a.txt"], b"hello")], &[]);
    let cfg = HostConfig {
        lock_host_files: false,
        ..HostConfig::default()
    };
    let mut r = Rig::new(cfg, disk);
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node;
    let got = set_lock(&mut r, c, a, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c, got), Some(Ok(Reply::Done)));
    let p = path(&["a.txt"]);
    assert_eq!(
        r.disk.local_lock(&p, FIRST_TEN, LockKind::Exclusive),
        Ok(true)
    );
}

/// Runs the first file operation the rig holds back.
fn run_first_held(r: &mut Rig) {
    let (op, fs) = r.held.remove(0);
    let result = r.disk.execute(fs);
    r.host.handle_fs(r.now, op, result);
}

/// A waiter the table grants as another client lets go is answered only
/// once the host's file holds it: a program on the host that took the
/// bytes in between keeps it waiting, and the grant goes back.
#[test]
fn a_waiter_granted_as_a_program_on_the_host_takes_the_bytes_waits_for_it() {
    let (mut r, [c1, c2], a, p) = two_clients_on_a();
    let held = set_lock(&mut r, c1, a, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c1, held), Some(Ok(Reply::Done)));
    let waits = set_lock(&mut r, c2, a, FIRST_TEN, LockKind::Exclusive, true);
    assert_eq!(r.reply(c2, waits), None);

    r.hold = true;
    let unlocked = r.send(c1, unlock_all(a));
    assert_eq!(r.reply(c1, unlocked), Some(Ok(Reply::Done)));
    // The host lets go of client 1's lock on its file; a program there
    // takes the bytes before the host takes them for client 2.
    run_first_held(&mut r);
    assert_eq!(r.disk.local_lock(&p, FIRST_TEN, LockKind::Shared), Ok(true));
    r.hold = false;
    r.release_held();
    assert_eq!(r.reply(c2, waits), None, "waits for the program");
    let c1_again = set_lock(&mut r, c1, a, FIRST_TEN, LockKind::Shared, false);
    assert_eq!(
        r.reply(c1, c1_again),
        Some(Ok(Reply::Done)),
        "the grant went back: the bytes are free among clients"
    );
    assert_eq!(unlock(&mut r, c1, a), Ok(Reply::Done));

    program_lets_go_and_the_waiter_has_it(&mut r, c2, waits, &p);
}

/// An owner's unlock that comes while the host is still taking its lock
/// on its own file waits for the take: the lock is granted, then let go,
/// in the order the owner asked, on the file as in the table.
#[test]
fn an_unlock_during_a_take_waits_for_it() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node;
    let p = path(&["a.txt"]);
    r.hold = true;
    let got = set_lock(&mut r, c, a, FIRST_TEN, LockKind::Exclusive, false);
    let let_go = r.send(c, unlock_all(a));
    assert_eq!(r.reply(c, let_go), None, "parked behind the take");
    r.hold = false;
    r.release_held();
    assert_eq!(r.reply(c, got), Some(Ok(Reply::Done)));
    assert_eq!(r.reply(c, let_go), Some(Ok(Reply::Done)));
    assert!(r.host.record_locks().is_empty());
    assert!(r.disk.held_locks(&p).is_empty());
    assert_eq!(
        r.disk.local_lock(&p, FIRST_TEN, LockKind::Exclusive),
        Ok(true)
    );
}

/// The program on the host lets go of `p`: within the host's retry the
/// client's wait `waits` is granted, and the program is kept out.
fn program_lets_go_and_the_waiter_has_it(r: &mut Rig, c: ConnId, waits: RequestId, p: &RelPath) {
    r.disk.local_unlock(p).expect("a.txt");
    r.advance(Duration::from_secs(1));
    assert_eq!(r.reply(c, waits), Some(Ok(Reply::Done)));
    assert_eq!(r.disk.local_lock(p, FIRST_TEN, LockKind::Shared), Ok(false));
}

/// A rig with two clients that both looked up `a.txt`: the clients, its
/// node and its path.
fn two_clients_on_a() -> (Rig, [ConnId; 2], NodeId, RelPath) {
    let mut r = rig();
    let (c1, c2) = (r.client(1), r.client(2));
    let a = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a").node;
    r.lookup(c2, NodeId::ROOT, "a.txt").expect("a");
    (r, [c1, c2], a, path(&["a.txt"]))
}

/// A withdrawal answers the wait it takes back (EINTR), so that a client
/// whose withdrawal overtook its wait on the way learns, when it
/// withdraws again, that the wait is over; one that finds nothing to
/// take back answers only itself.
#[test]
fn a_withdrawal_answers_the_wait_it_takes_back() {
    let (mut r, [c1, c2], a, _) = two_clients_on_a();
    let held = set_lock(&mut r, c1, a, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c1, held), Some(Ok(Reply::Done)));
    let withdraw = Request::Withdraw {
        node: a,
        owner: 7,
        range: FIRST_TEN,
    };
    assert_eq!(r.call(c2, withdraw.clone()), Ok(Reply::Done), "overtook");
    let waits = set_lock(&mut r, c2, a, FIRST_TEN, LockKind::Exclusive, true);
    assert_eq!(r.reply(c2, waits), None, "waits after all");
    assert_eq!(r.call(c2, withdraw), Ok(Reply::Done));
    assert_eq!(r.reply(c2, waits), Some(Err(Errno::Intr)));
    assert_eq!(unlock(&mut r, c1, a), Ok(Reply::Done));
    assert!(r.host.record_locks().is_empty(), "granted to nobody");
}

/// A file with two names, the name the host builds its path from moved
/// away by a program on the host: the host finds the file by its other
/// name once the watcher reports the move (a link of it works), and a
/// client's lock on it is still taken on the host's file, so a program's
/// lock there keeps the client out.
/// (The host built the path from the moved name, found nothing there,
/// and let the clients' table grant alone: fs_sim, with links to the
/// locked file, 2026-12-07.)
#[test]
fn a_lock_on_a_file_whose_other_name_moved_is_still_taken_on_the_host() {
    let (mut r, c, node, a, b) = two_names();
    r.disk.local_rename(&b, &path(&["e"])).expect("moved");
    r.host.local_change(r.now, &b);
    r.host.local_change(r.now, &path(&["e"]));
    r.pump();
    // The host finds the file by its path: a link of it works.
    let link = Request::Link {
        node,
        parent: NodeId::ROOT,
        name: Name::new("g").expect("g"),
    };
    let linked = r.call(c, link);
    assert!(matches!(linked, Ok(Reply::Made { .. })), "{linked:?}");
    assert_eq!(
        r.disk.local_lock(&a, ByteRange::WHOLE, LockKind::Exclusive),
        Ok(true)
    );
    let asked = set_lock(&mut r, c, node, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c, asked), Some(Err(Errno::Again)));
}

/// The same before the watcher reports the change: the take meets
/// another file at the name (ESTALE) and tries the file's other name,
/// rather than let the clients' table grant alone (fs_sim, seed 4715
/// with links to the locked file).
#[test]
fn a_lock_meeting_another_file_at_one_name_is_taken_through_another() {
    let (mut r, c, node, a, b) = two_names();
    r.disk
        .local_replace(&b, b"another file")
        .expect("saved over");
    assert_eq!(
        r.disk.local_lock(&a, ByteRange::WHOLE, LockKind::Exclusive),
        Ok(true)
    );
    let asked = set_lock(&mut r, c, node, FIRST_TEN, LockKind::Exclusive, false);
    assert_eq!(r.reply(c, asked), Some(Err(Errno::Again)));
}

/// With file operations held and another operation of client `c` out:
/// `c` renames `from` to `to`, a worker runs the rename, then the held
/// operation `pick` selects, and the rename's result reaches the host
/// first. Returns with nothing held.
fn renamed_first(r: &mut Rig, c: ConnId, from: &str, to: &str, pick: impl Fn(&FsOp) -> bool) {
    let rename = Request::Rename {
        parent: NodeId::ROOT,
        name: name(from),
        new_parent: NodeId::ROOT,
        new_name: name(to),
    };
    r.send(c, rename);
    let renamed = r.run_held(|fs| matches!(fs, FsOp::Rename { .. }));
    let other = r.run_held(pick);
    r.deliver(renamed);
    r.deliver(other);
    r.hold = false;
    r.release_held();
}

/// [`two_names`]'s file locked whole by a program on the host (through
/// `a.txt`, returned), and another file `x` the client knows, to rename
/// over `b`.
fn locked_on_the_host_beside_x() -> (Rig, ConnId, NodeId, RelPath) {
    let (mut r, c, node, a, _) = two_names();
    assert_eq!(
        r.disk.local_lock(&a, ByteRange::WHOLE, LockKind::Exclusive),
        Ok(true)
    );
    r.disk
        .local_replace(&path(&["x"]), b"another file")
        .expect("x");
    r.lookup(c, NodeId::ROOT, "x").expect("x");
    (r, c, node, a)
}

/// A client renames another file over `b`, the name the node's path is
/// built from, while an open of the node through `b` is out; a worker
/// runs the open after the rename, and the rename's result comes first.
/// The open met another file (ESTALE), but the file keeps its node under
/// `a.txt`, and a client's wait for a program's lock on it goes on
/// waiting. (The open's result forgot the node, and the wait, tried
/// again with no path to take it on, was granted in the clients' table
/// alone: fs_sim, seed 6255 with links to the locked file.)
#[test]
fn an_open_through_a_name_renamed_over_keeps_the_files_other_name() {
    let (mut r, c, node, a) = locked_on_the_host_beside_x();
    let waits = set_lock(&mut r, c, node, FIRST_TEN, LockKind::Exclusive, true);
    assert_eq!(r.reply(c, waits), None, "waits for the program");

    r.hold = true;
    let open = open_for_read(&mut r, c, node);
    renamed_first(&mut r, c, "x", "b", is_open);
    assert_eq!(r.reply(c, open), Some(Err(Errno::Stale)));

    r.advance(Duration::from_secs(2));
    assert_eq!(r.reply(c, waits), None, "still waits for the program");
    assert_eq!(
        r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node,
        node,
        "the file keeps its node"
    );
    program_lets_go_and_the_waiter_has_it(&mut r, c, waits, &a);
}

/// The same race with the take itself: it goes to `b`, a worker runs it
/// after a client's rename of another file over `b`, and the rename's
/// result comes first (the node's path is `a.txt` by then). The take
/// meets another file and goes to the file's path now, rather than let
/// the clients' table grant alone over the program's lock.
#[test]
fn a_take_through_a_name_renamed_over_goes_to_the_files_path_now() {
    let (mut r, c, node, _) = locked_on_the_host_beside_x();

    r.hold = true;
    let asked = set_lock(&mut r, c, node, FIRST_TEN, LockKind::Exclusive, false);
    renamed_first(&mut r, c, "x", "b", |fs| {
        matches!(fs, FsOp::HoldLocks { .. })
    });
    assert_eq!(r.reply(c, asked), Some(Err(Errno::Again)));
}

/// A client renames `a.txt` away to `c` while a stat of its node
/// through `a.txt` is out; a worker runs the stat after the rename, and
/// the rename's result comes first. The stat finds nothing (ENOENT), but
/// the file is at `c`: its node stays. (Forgotten, its name had none,
/// and the next lookup made it another node.)
#[test]
fn a_stat_through_a_name_renamed_away_keeps_the_node() {
    let mut r = rig();
    let c = r.client(1);
    let node = r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node;
    r.hold = true;
    let stat = r.send(c, Request::GetAttr { node });
    renamed_first(&mut r, c, "a.txt", "c", |fs| {
        matches!(fs, FsOp::Stat { .. })
    });
    assert_eq!(r.reply(c, stat), Some(Err(Errno::NoEnt)));
    assert!(r.host.nodes().contains(node), "the file keeps its node");
    assert_eq!(r.lookup(c, NodeId::ROOT, "c").expect("c").node, node);
}

/// `a.txt` and `b`, one file, its node learned by a client (`b` last, so
/// the host builds the node's path from it).
fn two_names() -> (Rig, ConnId, NodeId, RelPath, RelPath) {
    let mut r = rig();
    let c = r.client(1);
    let (a, b) = (path(&["a.txt"]), path(&["b"]));
    r.disk.local_link(&a, &b).expect("a second name");
    let node = r.lookup(c, NodeId::ROOT, "a.txt").expect("a").node;
    assert_eq!(r.lookup(c, NodeId::ROOT, "b").expect("b").node, node);
    (r, c, node, a, b)
}

/// A program on the host moves `a.txt` to `b`: the file's node stays
/// under `a.txt` (files are not followed), and a lookup of `b` gives it
/// a new one. A client links that back as `a.txt`: the link answers the
/// node it linked, which `a.txt` is then a name of, and the stale record
/// goes, with every client told. (The link was answered with the stale
/// node, which the client knew as another inode: one file under two,
/// fs_sim, seed 33039 with links to the locked file.)
#[test]
fn a_link_back_to_the_name_its_file_was_moved_from_answers_the_linked_node() {
    let mut r = rig();
    let (c1, c2) = (r.client(1), r.client(2));
    let old = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a").node;
    r.lookup(c2, NodeId::ROOT, "a.txt").expect("a");
    let (a, b) = (path(&["a.txt"]), path(&["b"]));
    r.disk.local_rename(&a, &b).expect("moved");
    r.host.local_change(r.now, &a);
    r.host.local_change(r.now, &b);
    r.pump();
    let new = r.lookup(c1, NodeId::ROOT, "b").expect("b").node;
    assert_ne!(new, old, "a file of one name is not joined by identity");
    let link = Request::Link {
        node: new,
        parent: NodeId::ROOT,
        name: Name::new("a.txt").expect("a.txt"),
    };
    match r.call(c1, link) {
        Ok(Reply::Made { attr, .. }) => {
            assert_eq!(attr.node, new, "the node linked");
            assert_eq!(attr.nlink, 2);
        }
        other => panic!("link answered {other:?}"),
    }
    assert_eq!(r.lookup(c2, NodeId::ROOT, "a.txt").expect("a").node, new);
    assert_eq!(r.lookup(c2, NodeId::ROOT, "b").expect("b").node, new);
    assert!(!r.host.nodes().contains(old));
    assert!(r.invalidations(c2).contains(&(old, Invalidation::Gone)));
}
