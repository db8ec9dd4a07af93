//! Directory leases: grant, parking and recall, batches applied in order,
//! and what ends a lease.

use super::*;
use crate::proto::{LeaseOp, LockToken, NodeRange};

fn lease(r: &mut Rig, conn: ConnId, dir: NodeId) -> Result<(LockToken, NodeRange), Errno> {
    match r.call(conn, Request::Lease { dir })? {
        Reply::Leased(g) => Ok((g.token, g.nodes)),
        other => panic!("lease answered {other:?}"),
    }
}

fn new_file(node: NodeId, n: &str, data: &[u8]) -> LeaseOp {
    LeaseOp::CreateFile {
        node,
        name: name(n),
        mode: 0o640,
        times: SetAttr::default(),
        data: Bytes::copy_from_slice(data),
        owner: None,
    }
}

fn nth(nodes: NodeRange, i: u64) -> NodeId {
    NodeId(nodes.first.0 + i)
}

fn recalls(r: &Rig, conn: ConnId) -> Vec<LockToken> {
    r.inbox
        .get(&conn)
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            HostMessage::Recall { token } => Some(*token),
            _ => None,
        })
        .collect()
}

fn applied(reply: Result<Reply, Errno>) -> Vec<Result<crate::proto::Attr, Errno>> {
    match reply {
        Ok(Reply::Applied(results)) => results,
        other => panic!("apply answered {other:?}"),
    }
}

#[test]
fn a_batch_makes_each_file_whole_as_the_node_the_holder_gave_it() {
    let mut r = rig();
    let c = r.client(1);
    let d = r.lookup(c, NodeId::ROOT, "d").expect("d");
    let (_, nodes) = lease(&mut r, c, d.node).expect("leased");
    assert!(nodes.count > 2);
    let ops = vec![
        new_file(nth(nodes, 0), "one", b"first"),
        new_file(nth(nodes, 1), "f", b"taken"),
        new_file(nth(nodes, 2), "two", b""),
    ];
    let results = applied(r.call(
        c,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops,
        },
    ));
    assert_eq!(results.len(), 3);
    let one = results[0].clone().expect("one made");
    assert_eq!(
        (one.node, one.size, one.mode & 0o7777),
        (nth(nodes, 0), 5, 0o640)
    );
    assert_eq!(
        results[1],
        Err(Errno::Exist),
        "a name already there is kept"
    );
    assert_eq!(results[2].as_ref().map(|a| a.node), Ok(nth(nodes, 2)));
    assert_eq!(r.disk.read_file(&path(&["d", "one"])), Some(&b"first"[..]));
    assert_eq!(r.disk.read_file(&path(&["d", "f"])), Some(&b"deep"[..]));
    // The holder may use the node at once, as any other.
    assert_eq!(
        r.lookup(c, d.node, "one").map(|a| a.node),
        Ok(nth(nodes, 0))
    );
    assert_eq!(
        r.host.nodes().path(nth(nodes, 2)),
        Some(path(&["d", "two"]))
    );
    // Applied, not yet durable: a crash may lose the batch, never a part
    // of a file.
    assert_eq!(after_crash(&r.disk, &["d", "one"]), None);
    assert_eq!(r.call(c, Request::Sync), Ok(Reply::Done));
    assert_eq!(
        after_crash(&r.disk, &["d", "one"]).as_deref(),
        Some(&b"first"[..])
    );
}

#[test]
fn a_batch_sent_again_is_answered_from_its_record_and_runs_once() {
    let mut r = rig();
    let c = r.client(1);
    let (_, nodes) = lease(&mut r, c, NodeId::ROOT).expect("leased");
    let batch = Request::Apply {
        dir: NodeId::ROOT,
        tag: 7,
        ops: vec![new_file(nth(nodes, 0), "x", b"1")],
    };
    let first = r.call(c, batch.clone());
    assert!(applied(first.clone())[0].is_ok());
    assert_eq!(r.call(c, batch), first, "the same answer, not EEXIST");
}

#[test]
fn node_ids_outside_the_range_or_reused_are_refused_whole() {
    let mut r = rig();
    let c = r.client(1);
    let (token, nodes) = lease(&mut r, c, NodeId::ROOT).expect("leased");
    let outside = NodeId(nodes.first.0 + u64::from(nodes.count));
    for ops in [
        vec![new_file(outside, "x", b"")],
        vec![
            new_file(nth(nodes, 1), "x", b""),
            new_file(nth(nodes, 1), "y", b""),
        ],
        vec![new_file(nth(nodes, 0), ".wormhole.x", b"")],
    ] {
        let got = r.call(
            c,
            Request::Apply {
                dir: NodeId::ROOT,
                tag: 1,
                ops,
            },
        );
        assert!(matches!(got, Err(Errno::Inval | Errno::Acces)), "{got:?}");
    }
    assert_eq!(r.disk.read_file(&path(&["x"])), None, "nothing of them ran");
    // Ids go up: one used cannot name a second file.
    let ok = r.call(
        c,
        Request::Apply {
            dir: NodeId::ROOT,
            tag: 2,
            ops: vec![new_file(nth(nodes, 3), "x", b"")],
        },
    );
    assert!(applied(ok)[0].is_ok());
    let again = r.call(
        c,
        Request::Apply {
            dir: NodeId::ROOT,
            tag: 3,
            ops: vec![new_file(nth(nodes, 3), "y", b"")],
        },
    );
    assert_eq!(again, Err(Errno::Inval));
    // Another session cannot use the holder's ids (its batch waits for
    // the lease like any change there, then is refused).
    let other = r.client(2);
    let stolen = r.send(
        other,
        Request::Apply {
            dir: NodeId::ROOT,
            tag: 1,
            ops: vec![new_file(nth(nodes, 4), "z", b"")],
        },
    );
    assert_eq!(r.reply(other, stolen), None, "parked");
    r.call(c, Request::ReleaseLock { token }).expect("released");
    assert_eq!(r.reply(other, stolen), Some(Err(Errno::Inval)));
    // Released, the range is gone with the lease.
    let late = r.call(
        c,
        Request::Apply {
            dir: NodeId::ROOT,
            tag: 4,
            ops: vec![new_file(nth(nodes, 5), "w", b"")],
        },
    );
    assert_eq!(late, Err(Errno::Inval));
}

#[test]
fn a_holder_cut_off_past_its_lease_still_applies_and_never_overwrites() {
    let mut r = Rig::new(
        HostConfig {
            lock: crate::lock::LockConfig {
                ttl: Duration::from_secs(5),
                ..crate::lock::LockConfig::default()
            },
            session_grace: Duration::from_secs(60),
            ..HostConfig::default()
        },
        disk_with(&[], &[&["d"]]),
    );
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    r.lookup(other, NodeId::ROOT, "d").expect("d");
    let (_, nodes) = lease(&mut r, holder, d.node).expect("leased");
    // The lease expires; meanwhile another client creates one of the
    // names the holder answered itself.
    r.advance(Duration::from_secs(5));
    assert_eq!(r.host.leases(), 0);
    let theirs = r.call(
        other,
        Request::Create {
            parent: d.node,
            name: name("both"),
            mode: 0o644,
            exclusive: true,
            open: false,
            owner: None,
        },
    );
    assert!(theirs.is_ok(), "{theirs:?}");
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops: vec![
                new_file(nth(nodes, 0), "both", b"mine"),
                new_file(nth(nodes, 1), "only-mine", b"mine"),
            ],
        },
    ));
    assert_eq!(results[0], Err(Errno::Exist), "theirs is kept");
    assert!(results[1].is_ok());
    assert_eq!(r.disk.read_file(&path(&["d", "both"])), Some(&b""[..]));
    assert_eq!(
        r.disk.read_file(&path(&["d", "only-mine"])),
        Some(&b"mine"[..])
    );
}

#[test]
fn another_sessions_look_waits_for_the_recalled_lease_and_sees_its_files() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    r.lookup(other, NodeId::ROOT, "d").expect("d");
    let (token, nodes) = lease(&mut r, holder, d.node).expect("leased");
    // A lookup, a listing and a create by the other session all wait.
    let look = r.send(
        other,
        Request::Lookup {
            parent: d.node,
            name: name("new"),
        },
    );
    let list = r.send(
        other,
        Request::ReadDir {
            dir: d.node,
            cookie: 0,
        },
    );
    let make = r.send(
        other,
        Request::Create {
            parent: d.node,
            name: name("new"),
            mode: 0o644,
            exclusive: true,
            open: false,
            owner: None,
        },
    );
    assert_eq!(r.reply(other, look), None, "parked");
    assert_eq!(r.reply(other, list), None, "parked");
    assert_eq!(r.reply(other, make), None, "parked");
    assert_eq!(r.host.parked(), 3);
    assert_eq!(recalls(&r, holder), vec![token], "recalled once");
    // Reads of files the other session already knows do not wait.
    let f = r.call(other, Request::GetAttr { node: NodeId::ROOT });
    assert!(f.is_ok());
    // The holder sends what it answered, then gives the lease back.
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops: vec![new_file(nth(nodes, 0), "new", b"mine")],
        },
    ));
    assert!(results[0].is_ok());
    assert_eq!(r.reply(other, look), None, "still parked until released");
    assert_eq!(
        r.call(holder, Request::ReleaseLock { token }),
        Ok(Reply::Done)
    );
    assert_eq!(r.host.parked(), 0);
    assert_eq!(r.host.leases(), 0);
    match r.reply(other, look) {
        Some(Ok(Reply::Attr(a))) => assert_eq!((a.node, a.size), (nth(nodes, 0), 4)),
        other => panic!("lookup after the recall: {other:?}"),
    }
    match r.reply(other, list) {
        Some(Ok(Reply::DirPage { entries, .. })) => {
            assert!(entries.iter().any(|e| e.name == name("new")));
        }
        other => panic!("listing after the recall: {other:?}"),
    }
    assert_eq!(
        r.reply(other, make),
        Some(Err(Errno::Exist)),
        "O_EXCL holds"
    );
}

#[test]
fn a_lease_is_refused_where_a_lock_is_held_and_a_lock_waits_for_a_lease() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    r.lookup(other, NodeId::ROOT, "d").expect("d");
    let (token, _) = lease(&mut r, holder, d.node).expect("leased");
    assert_eq!(lease(&mut r, other, d.node), Err(Errno::Again));
    // A subtree lock above the leased directory waits for it.
    let wait = r.send(
        other,
        Request::AcquireLock {
            scope: LockScope::Subtree(NodeId::ROOT),
            kind: LockKind::Exclusive,
            wait: true,
        },
    );
    assert_eq!(r.reply(other, wait), None);
    assert_eq!(recalls(&r, holder), vec![token]);
    // While someone waits, no new lease anywhere: it could be in the
    // waiter's way again.
    assert_eq!(lease(&mut r, holder, NodeId::ROOT), Err(Errno::Again));
    r.call(holder, Request::ReleaseLock { token })
        .expect("released");
    assert!(matches!(
        r.reply(other, wait),
        Some(Ok(Reply::LockGranted { .. }))
    ));
    assert_eq!(
        lease(&mut r, holder, d.node),
        Err(Errno::Again),
        "the subtree lock covers the directory"
    );
}

#[test]
fn a_file_lock_in_the_directory_and_a_lease_on_it_do_not_conflict() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    let f = r.lookup(other, d.node, "f").expect("f");
    lease(&mut r, holder, d.node).expect("leased");
    // Writing a file the other session knows needs its lock, not the
    // directory's entries: no wait, no recall.
    r.lock(other, f.node);
    assert_eq!(r.host.parked(), 0);
    assert_eq!(recalls(&r, holder), vec![]);
}

#[test]
fn what_waits_runs_when_the_lease_expires_or_its_session_ends() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    r.lookup(other, NodeId::ROOT, "d").expect("d");
    lease(&mut r, holder, d.node).expect("leased");
    let look = r.send(
        other,
        Request::Lookup {
            parent: d.node,
            name: name("f"),
        },
    );
    // The holder is gone without a word: the lease lasts its lock's ttl
    // (or the session's grace, whichever ends first), then what waited
    // runs.
    r.host.conn_closed(r.now, holder);
    r.advance(Duration::from_secs(29));
    assert_eq!(r.reply(other, look), None);
    r.advance(Duration::from_secs(1));
    assert!(matches!(r.reply(other, look), Some(Ok(Reply::Attr(_)))));
    assert_eq!((r.host.leases(), r.host.parked()), (0, 0));
}

#[test]
fn a_parked_request_gives_up_with_eagain_after_the_wait_timeout() {
    let mut r = Rig::new(
        HostConfig {
            lock: crate::lock::LockConfig {
                ttl: Duration::from_secs(60),
                wait_timeout: Duration::from_secs(5),
                ..crate::lock::LockConfig::default()
            },
            session_grace: Duration::from_secs(60),
            ..HostConfig::default()
        },
        disk_with(&[], &[&["d"]]),
    );
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    r.lookup(other, NodeId::ROOT, "d").expect("d");
    let (token, _) = lease(&mut r, holder, d.node).expect("leased");
    let look = r.send(
        other,
        Request::ReadDir {
            dir: d.node,
            cookie: 0,
        },
    );
    r.advance(Duration::from_secs(4));
    assert_eq!(r.reply(other, look), None);
    r.advance(Duration::from_secs(1));
    assert_eq!(r.reply(other, look), Some(Err(Errno::Again)));
    assert_eq!(r.host.parked(), 0);
    assert_eq!(recalls(&r, holder), vec![token]);
}

#[test]
fn a_resumed_holder_hears_the_recall_it_missed() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let hello = r.reply(holder, RequestId(1));
    let Some(Ok(Reply::HelloAck { session, .. })) = hello else {
        panic!("hello: {hello:?}");
    };
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    r.lookup(other, NodeId::ROOT, "d").expect("d");
    let (token, _) = lease(&mut r, holder, d.node).expect("leased");
    r.host.conn_closed(r.now, holder);
    r.send(
        other,
        Request::ReadDir {
            dir: d.node,
            cookie: 0,
        },
    );
    // Recalled while the holder had no connection: it heard nothing.
    assert_eq!(recalls(&r, holder), vec![]);
    let back = ConnId(3);
    let exporter = [3u8; 32];
    r.host.conn_opened(r.now, back, exporter);
    let got = r.call(
        back,
        Request::Hello {
            version: u16::from(crate::codec::PROTOCOL_VERSION),
            proof: auth::proof(&SECRET, &exporter),
            resume: Some(session),
        },
    );
    assert!(matches!(got, Ok(Reply::HelloAck { .. })), "{got:?}");
    assert_eq!(recalls(&r, back), vec![token]);
}

#[test]
fn a_local_change_in_the_leased_directory_recalls_it() {
    let mut r = rig();
    let holder = r.client(1);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    let (token, _) = lease(&mut r, holder, d.node).expect("leased");
    r.disk
        .local_replace(&path(&["d", "local"]), b"by a local program")
        .expect("local write");
    r.host.local_change(r.now, &path(&["d", "local"]));
    r.pump();
    assert_eq!(recalls(&r, holder), vec![token]);
}

#[test]
fn the_holders_own_batch_is_no_local_change() {
    let mut r = rig();
    let holder = r.client(1);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    let (_, nodes) = lease(&mut r, holder, d.node).expect("leased");
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops: vec![new_file(nth(nodes, 0), "mine", b"x")],
        },
    ));
    assert!(results[0].is_ok());
    // The watcher reports the host's own create back: its echo.
    r.host.local_change(r.now, &path(&["d", "mine"]));
    r.pump();
    assert_eq!(recalls(&r, holder), vec![], "no recall for an echo");
}

/// The holder of `d`'s lease sends a batch unlinking `d/f`; the batch
/// runs on the disk, and `between` happens before its result is back
/// (the watcher's report comes while the batch still runs). Returns the
/// recalls the holder got.
fn unlink_reported_while_running(between: impl FnOnce(&mut Rig)) -> Vec<LockToken> {
    let mut r = rig();
    let holder = r.client(1);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    let f = r.lookup(holder, d.node, "f").expect("f");
    lease(&mut r, holder, d.node).expect("leased");
    r.hold = true;
    let id = r.send(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops: vec![LeaseOp::Unlink {
                node: f.node,
                name: name("f"),
            }],
        },
    );
    let ran = r.run_held(|fs| matches!(fs, FsOp::Batch { .. }));
    between(&mut r);
    r.host.local_change(r.now, &path(&["d", "f"]));
    r.pump();
    r.deliver(ran);
    r.hold = false;
    r.release_held();
    assert!(applied(r.reply(holder, id).expect("answered"))[0].is_ok());
    recalls(&r, holder)
}

#[test]
fn a_report_that_comes_while_the_batch_runs_is_its_echo() {
    assert_eq!(
        unlink_reported_while_running(|_| {}),
        vec![],
        "the holder's own unlink recalled its lease"
    );
}

#[test]
fn a_local_change_while_the_batch_runs_still_recalls() {
    let recalled = unlink_reported_while_running(|r| {
        r.disk
            .local_replace(&path(&["d", "f"]), b"made again by a local program")
            .expect("local write");
    });
    assert_eq!(recalled.len(), 1, "a local program's file went unseen");
}

#[test]
fn a_batch_unlinks_in_order_and_refuses_a_file_another_session_locked() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    let f = r.lookup(holder, d.node, "f").expect("f");
    let (_, nodes) = lease(&mut r, holder, d.node).expect("leased");
    let one = nth(nodes, 0);
    let unlink = |node, n: &str| LeaseOp::Unlink {
        node,
        name: name(n),
    };
    // Made, then unlinked and made again under the same name: in order.
    let made = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops: vec![new_file(one, "tmp", b"first")],
        },
    ));
    assert!(made[0].is_ok());
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 2,
            ops: vec![
                unlink(one, "tmp"),
                new_file(nth(nodes, 1), "tmp", b"second"),
                unlink(f.node, "f"),
                // Not the file the name holds (the holder's idea is out
                // of date): kept.
                unlink(f.node, "tmp"),
            ],
        },
    ));
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().map(|a| (a.node, a.nlink)), Ok((one, 0)));
    assert!(results[1].is_ok());
    assert_eq!(results[2].as_ref().map(|a| a.node), Ok(f.node));
    assert_eq!(results[3], Err(Errno::Stale));
    assert_eq!(r.disk.read_file(&path(&["d", "tmp"])), Some(&b"second"[..]));
    assert_eq!(r.disk.read_file(&path(&["d", "f"])), None);
    assert_eq!(r.host.nodes().child(d.node, &name("f")), None, "forgotten");
    assert_eq!(
        r.call(holder, Request::GetAttr { node: f.node }),
        Err(Errno::Stale)
    );
    // A file another session holds the lock of is not unlinked, as an
    // ordinary unlink would not be; the rest of the batch runs.
    let tmp = nth(nodes, 1);
    r.lock(other, tmp);
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 3,
            ops: vec![unlink(tmp, "tmp"), unlink(tmp, "gone")],
        },
    ));
    assert_eq!(results, vec![Err(Errno::Busy), Err(Errno::NoEnt)]);
    assert_eq!(r.disk.read_file(&path(&["d", "tmp"])), Some(&b"second"[..]));
    // A directory is not unlinked.
    r.call(
        holder,
        Request::Mkdir {
            parent: d.node,
            name: name("sub"),
            mode: 0o755,
            owner: None,
            lease: false,
        },
    )
    .expect("made");
    let sub = r.lookup(holder, d.node, "sub").expect("sub");
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 4,
            ops: vec![unlink(sub.node, "sub")],
        },
    ));
    assert_eq!(results, vec![Err(Errno::IsDir)]);
}

#[test]
fn a_batch_removes_an_empty_directory_only_if_it_is_the_one_seen() {
    let mut r = rig();
    let holder = r.client(1);
    let d = r.lookup(holder, NodeId::ROOT, "d").expect("d");
    let f = r.lookup(holder, d.node, "f").expect("f");
    let (_, _) = lease(&mut r, holder, d.node).expect("leased");
    let mkdir = |r: &mut Rig, n: &str| {
        r.call(
            holder,
            Request::Mkdir {
                parent: d.node,
                name: name(n),
                mode: 0o755,
                owner: None,
                lease: false,
            },
        )
        .expect("made");
        r.lookup(holder, d.node, n).expect("looked up")
    };
    let empty = mkdir(&mut r, "empty");
    let full = mkdir(&mut r, "full");
    r.disk
        .local_replace(&path(&["d", "full", "x"]), b"x")
        .expect("a file in it");
    let rmdir = |node, n: &str| LeaseOp::Rmdir {
        node,
        name: name(n),
    };
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: d.node,
            tag: 1,
            ops: vec![
                // Not the directory the name holds: kept.
                rmdir(full.node, "empty"),
                rmdir(full.node, "full"),
                rmdir(f.node, "f"),
                rmdir(empty.node, "empty"),
                rmdir(empty.node, "empty"),
            ],
        },
    ));
    assert_eq!(
        results
            .iter()
            .map(|r| r.as_ref().map(|a| a.node).map_err(|e| *e))
            .collect::<Vec<_>>(),
        vec![
            Err(Errno::Stale),
            Err(Errno::NotEmpty),
            Err(Errno::NotDir),
            Ok(empty.node),
            Err(Errno::NoEnt),
        ]
    );
    assert_eq!(
        r.host.nodes().child(d.node, &name("empty")),
        None,
        "forgotten"
    );
    assert_eq!(
        r.disk.read_file(&path(&["d", "full", "x"])),
        Some(&b"x"[..])
    );
}

fn mkdir_asking(r: &mut Rig, conn: ConnId, n: &str) -> RequestId {
    r.send(
        conn,
        Request::Mkdir {
            parent: NodeId::ROOT,
            name: name(n),
            mode: 0o755,
            owner: None,
            lease: true,
        },
    )
}

/// A mkdir that asks for the new directory's lease gets it with its
/// reply, no round trip of its own: the holder's batch there is applied
/// with the grant's ids, and another session's look into the directory
/// waits for the holder, who is recalled.
#[test]
fn a_mkdir_that_asks_brings_the_new_directorys_lease() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    let id = mkdir_asking(&mut r, holder, "new");
    let Some(Ok(Reply::Made {
        attr: dir,
        lease: Some(grant),
        ..
    })) = r.reply(holder, id)
    else {
        panic!("not leased: {:?}", r.reply(holder, id));
    };
    assert_eq!(r.host.leases(), 1);
    let results = applied(r.call(
        holder,
        Request::Apply {
            dir: dir.node,
            tag: 1,
            ops: vec![new_file(nth(grant.nodes, 0), "f", b"made")],
        },
    ));
    assert_eq!(results[0].as_ref().map(|a| a.node), Ok(nth(grant.nodes, 0)));
    let look = r.send(
        other,
        Request::Lookup {
            parent: dir.node,
            name: name("f"),
        },
    );
    assert_eq!(r.reply(other, look), None, "waits for the holder");
    assert_eq!(recalls(&r, holder), vec![grant.token]);
    let released = r.call(holder, Request::ReleaseLock { token: grant.token });
    assert_eq!(released, Ok(Reply::Done));
    assert!(
        matches!(r.reply(other, look), Some(Ok(Reply::Attr(_)))),
        "{:?}",
        r.reply(other, look)
    );
}

/// A program on the host that makes a file in the new directory before
/// the host has granted its lease: the holder would take the directory
/// for empty, and no recall would tell it otherwise (the watcher's
/// report came while there was no lease). So the reply comes without
/// the lease, which is given back: the holder learns the directory the
/// ordinary way, and another session may lease it.
#[test]
fn a_new_directory_filled_before_its_lease_comes_without_it() {
    let mut r = rig();
    let holder = r.client(1);
    let other = r.client(2);
    r.hold = true;
    let id = mkdir_asking(&mut r, holder, "new");
    let made = r.run_held(|fs| matches!(fs, FsOp::Mkdir { .. }));
    r.disk
        .local_replace(&path(&["new", "local"]), b"mine")
        .expect("a program on the host");
    r.deliver(made);
    let listed = r.run_held(|fs| matches!(fs, FsOp::List { .. }));
    r.hold = false;
    r.deliver(listed);
    let Some(Ok(Reply::Made {
        attr: dir,
        lease: grant,
        ..
    })) = r.reply(holder, id)
    else {
        panic!("{:?}", r.reply(holder, id));
    };
    assert_eq!(grant, None);
    assert_eq!(r.host.leases(), 0, "the lease was given back");
    assert!(lease(&mut r, other, dir.node).is_ok());
}

/// A mkdir whose reply waits for the disk (`--sync-every-close`) does
/// not bring a lease: a recall sent while the reply waits would reach a
/// holder that does not know the lease yet, and be lost.
#[test]
fn a_mkdir_held_for_the_disk_comes_without_a_lease() {
    let cfg = HostConfig {
        sync_window: Duration::ZERO,
        ..HostConfig::default()
    };
    let mut r = Rig::new(cfg, disk_with(&[(&["a.txt"], b"hello")], &[]));
    let holder = r.client(1);
    let id = mkdir_asking(&mut r, holder, "new");
    assert!(
        matches!(
            r.reply(holder, id),
            Some(Ok(Reply::Made { lease: None, .. }))
        ),
        "{:?}",
        r.reply(holder, id)
    );
    assert_eq!(r.host.leases(), 0);
}
