//! Hard links: one inode under every name of a file, on every client, and
//! a write through one name read through the others.

use super::*;

fn link(w: &mut World, c: usize, ino: Ino, to: &str) -> Result<(Ino, Attr), Errno> {
    match w.call(
        c,
        Op::Link {
            ino,
            new_parent: Ino::ROOT,
            new_name: name(to),
        },
    )? {
        Answer::Entry { ino, attr, .. } => Ok((ino, attr)),
        other => panic!("{other:?}"),
    }
}

fn getattr(w: &mut World, c: usize, ino: Ino) -> Attr {
    match w.call(c, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => attr,
        other => panic!("getattr: {other:?}"),
    }
}

fn unlink(w: &mut World, c: usize, n: &str) {
    let op = Op::Unlink {
        parent: Ino::ROOT,
        name: name(n),
    };
    assert_eq!(w.call(c, op), Ok(Answer::Done), "unlink {n}");
}

fn path(n: &str) -> RelPath {
    RelPath::from(vec![name(n)])
}

#[test]
fn a_hard_link_is_one_inode_under_both_names_on_every_client() {
    let mut w = world(&[("a", b"one")], 2);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let (b, attr) = link(&mut w, 0, a, "b").expect("link");
    assert_eq!(b, a, "the new name is the same inode");
    assert_eq!(attr.nlink, 2);
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "b").expect("b").0, a);
    // Another client sees one file under both names too.
    let (a1, attr1) = lookup(&mut w, 1, Ino::ROOT, "a").expect("a");
    let (b1, _) = lookup(&mut w, 1, Ino::ROOT, "b").expect("b");
    assert_eq!((b1, attr1.nlink), (a1, 2));

    // Written through one name, read through the other: the host wrote
    // the file in place, so both names still hold one file.
    let fh = open_for_write(&mut w, 0, b, false);
    write(&mut w, 0, fh, 0, b"two, longer");
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    w.call(0, Op::Release { fh }).expect("release");
    for n in ["a", "b"] {
        assert_eq!(w.disk.read_file(&path(n)), Some(&b"two, longer"[..]));
    }
    let fh = open(&mut w, 1, a1);
    assert_eq!(read_all(&mut w, 1, fh, 64), b"two, longer");
    w.call(1, Op::Release { fh }).expect("release");
    assert_eq!(getattr(&mut w, 1, b1).nlink, 2, "still one file");

    // One name goes: the other keeps the inode, one link fewer, on the
    // client that unlinked and (once told) on the other.
    unlink(&mut w, 0, "a");
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "a").err(), Some(Errno::NoEnt));
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "b").expect("b").0, a);
    assert_eq!(getattr(&mut w, 0, a).nlink, 1);
    w.run_for(Duration::from_secs(1));
    assert_eq!(getattr(&mut w, 1, b1).nlink, 1);
    assert_eq!(w.disk.read_file(&path("b")), Some(&b"two, longer"[..]));
}

#[test]
fn renaming_a_name_onto_another_of_the_same_file_changes_nothing() {
    let mut w = world(&[("a", b"x")], 1);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    link(&mut w, 0, a, "b").expect("link");
    let op = Op::Rename {
        parent: Ino::ROOT,
        name: name("a"),
        new_parent: Ino::ROOT,
        new_name: name("b"),
    };
    assert_eq!(w.call(0, op), Ok(Answer::Done));
    for n in ["a", "b"] {
        assert_eq!(lookup(&mut w, 0, Ino::ROOT, n).expect(n).0, a, "{n}");
    }
    assert_eq!(getattr(&mut w, 0, a).nlink, 2);
}

#[test]
fn directories_and_taken_names_are_not_linked() {
    let mut w = world(&[("a", b"x"), ("b", b"y")], 1);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    assert_eq!(link(&mut w, 0, a, "b").err(), Some(Errno::Exist));
    let r = w.call(
        0,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: name("d"),
            mode: 0o755,
            caller: None,
        },
    );
    let Ok(Answer::Entry { ino: d, .. }) = r else {
        panic!("mkdir: {r:?}")
    };
    assert_eq!(link(&mut w, 0, d, "e").err(), Some(Errno::Perm));
}

/// Every change of a directory's entries answers with the directory's
/// new attributes: a getattr right after shows its new mtime and link
/// count, as a local disk would, without asking the host again.
#[test]
fn a_directory_shows_its_new_times_right_after_each_change_in_it() {
    let mut w = world(&[("a", b"x")], 1);
    let root_on_disk = |w: &mut World| match w.disk.execute(FsOp::Stat {
        path: RelPath::root(),
    }) {
        Ok(crate::host::FsOk::Attr(a)) => (a.mtime, a.nlink),
        other => panic!("{other:?}"),
    };
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let mkdir = Op::Mkdir {
        parent: Ino::ROOT,
        name: name("d"),
        mode: 0o755,
        caller: None,
    };
    let rename = Op::Rename {
        parent: Ino::ROOT,
        name: name("b"),
        new_parent: Ino::ROOT,
        new_name: name("c"),
    };
    for i in 0..5 {
        // The directory's attributes are cached, then its entries change
        // (the world's clock moves between operations).
        getattr(&mut w, 0, Ino::ROOT);
        w.run_for(Duration::from_millis(5));
        match i {
            0 => {
                let _ = create(&mut w, 0, "new");
            }
            1 => {
                link(&mut w, 0, a, "b").expect("link");
            }
            2 => {
                w.call(0, mkdir.clone()).expect("mkdir");
            }
            3 => {
                w.call(0, rename.clone()).expect("rename");
            }
            _ => unlink(&mut w, 0, "c"),
        }
        w.record_fs = true;
        let seen = getattr(&mut w, 0, Ino::ROOT);
        w.record_fs = false;
        assert!(
            std::mem::take(&mut w.fs_log).is_empty(),
            "change {i}: answered from the cache"
        );
        assert_eq!((seen.mtime, seen.nlink), root_on_disk(&mut w), "change {i}");
    }
}

/// A link answered after another client's commit replaced the file
/// answers the inode the kernel linked, which follows the file, rather
/// than a new one (fs_sim, seeds 36225 and 49497: a reader's inode was
/// set aside while its link was on the way).
#[test]
fn a_link_racing_another_clients_commit_answers_the_inode_linked() {
    let (mut w, a, reader, link) = sent_across_a_replace(b"new", |ino| Op::Link {
        ino,
        new_parent: Ino::ROOT,
        new_name: name("b"),
    });
    match w.wait(0, link) {
        Ok(Answer::Entry { ino, attr, .. }) => {
            assert_eq!((ino, attr.nlink), (a, 2), "the inode the kernel linked");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "b").expect("b").0, a);
    assert_eq!(read_all(&mut w, 0, reader, 64), b"new", "follows the file");
}

/// Client 0 links `a` (open for writing here, with `pending` written
/// through it and not yet committed; replaced by client 1 first if
/// `replaced`), and the host forgets `a`'s node before the link's result
/// reaches its loop (client 1 renames the new name over the old one):
/// the link is answered with a new node. Returns the world, `a`'s inode,
/// the writer's handle and the link's answer.
fn link_of_a_forgotten_node(
    pending: &[u8],
    replaced: bool,
) -> (World, Ino, Fh, Result<Answer, Errno>) {
    let mut w = world(&[("a", b"old")], 2);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    // Open for writing here: the inode follows its file through the
    // other client's commit, whose news brings no key.
    let writer = open_for_write(&mut w, 0, a, false);
    if !pending.is_empty() {
        write(&mut w, 0, writer, 0, pending);
    }
    if replaced {
        replace_from(&mut w, 1, "a", b"newer");
    }
    // The link runs on the disk, its result late to the host's loop.
    w.max_delay = Duration::from_secs(1);
    w.fs_late_percent = 100;
    let link = w.op(
        0,
        Op::Link {
            ino: a,
            new_parent: Ino::ROOT,
            new_name: name("b"),
        },
    );
    let limit = w.now + Duration::from_secs(10);
    while w.disk.read_file(&path("b")).is_none() {
        assert!(w.step(limit), "the link never ran");
    }
    assert!(w.answer(0, link).is_none());
    // The rename's result comes first: the host forgets a's node.
    w.fs_late_percent = 0;
    w.max_delay = Duration::ZERO;
    let rename = w.op(
        1,
        Op::Rename {
            parent: Ino::ROOT,
            name: name("b"),
            new_parent: Ino::ROOT,
            new_name: name("a"),
        },
    );
    assert_eq!(w.wait(1, rename), Ok(Answer::Done));
    w.max_delay = Duration::from_millis(5);
    let answer = w.wait(0, link);
    (w, a, writer, answer)
}

/// A link the host answers with a new node, having forgotten the file's
/// old one meanwhile, after another client's commit gave the file a new
/// key, answers the inode linked (fs_sim, seed 95558: the inode's key,
/// older than that commit, no longer matched, and the link came back as
/// a new inode); the writer's handle goes with it.
#[test]
fn a_link_whose_node_the_host_forgot_answers_the_inode_linked() {
    let (mut w, a, writer, answer) = link_of_a_forgotten_node(b"", true);
    match answer {
        Ok(Answer::Entry { ino, attr, .. }) => assert_eq!((ino, attr.nlink), (a, 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "a").expect("a").0, a);
    // The writer's handle went with the inode to the new node: it reads
    // the file the other client committed.
    assert_eq!(read_all(&mut w, 0, writer, 64), b"newer");
}

/// The same, not replaced, with writes through the writer's handle still
/// to commit: they stay with the old node's transaction, and its flush
/// reports how they went (here ESTALE: the host forgot that node); an
/// acknowledged flush would have them on the disk (fs_sim, seed 125426:
/// with the handle moved, the flush committed the later write without
/// them, and said Done).
#[test]
fn a_link_whose_node_the_host_forgot_loses_no_write_to_commit() {
    let (mut w, _, writer, answer) = link_of_a_forgotten_node(b"mine, not yet committed", false);
    assert!(answer.is_ok(), "{answer:?}");
    write(&mut w, 0, writer, 0, b"MINE");
    let flushed = w.call(
        0,
        Op::Flush {
            fh: writer,
            owner: None,
        },
    );
    match flushed {
        Ok(Answer::Done) => {
            let on_disk = [w.disk.read_file(&path("a")), w.disk.read_file(&path("b"))];
            assert!(
                on_disk.contains(&Some(&b"MINE, not yet committed"[..])),
                "acknowledged, so committed whole: {on_disk:?}"
            );
        }
        Err(e) => assert!(matches!(e, Errno::Stale | Errno::Io), "{e:?}"),
        Ok(other) => panic!("{other:?}"),
    }
}
