//! Regressions found by the file system simulation (`tests/src/fs_sim`),
//! each reduced to the few steps that showed it.

use super::*;
use crate::host::memfs::MemFs;
use crate::host::{HostConfig, RelPath};
use crate::proto::{CHUNK_SIZE, Name};
use crate::testkit::World;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid")
}

fn path(s: &str) -> RelPath {
    RelPath::from(vec![name(s)])
}

fn world(files: &[(&str, &[u8])], clients: usize) -> World {
    let mut d = MemFs::new(1 << 30);
    for (f, data) in files {
        let p = path(f);
        d.local_replace(&p, data).expect("seed the disk");
    }
    World::new(
        11,
        d,
        clients,
        HostConfig::default(),
        ClientConfig::default(),
    )
}

fn lookup(w: &mut World, c: usize, n: &str) -> Ino {
    match w.call(
        c,
        Op::Lookup {
            parent: Ino::ROOT,
            name: name(n),
        },
    ) {
        Ok(Answer::Entry { ino, .. }) => ino,
        other => panic!("lookup {n}: {other:?}"),
    }
}

/// Client `c` opens `n` for reading and writing.
fn open(w: &mut World, c: usize, n: &str) -> (Ino, Fh) {
    let ino = lookup(w, c, n);
    let open = Op::Open {
        ino,
        mode: crate::proto::OpenFor::Write,
        truncate: false,
    };
    match w.call(c, open) {
        Ok(Answer::Opened { fh, .. }) => (ino, fh),
        other => panic!("open {n}: {other:?}"),
    }
}

fn write(w: &mut World, c: usize, fh: Fh, data: &[u8]) {
    let r = w.call(
        c,
        Op::Write {
            fh,
            offset: 0,
            data: Bytes::copy_from_slice(data),
            append: false,
        },
    );
    assert_eq!(r, Ok(Answer::Written(data.len() as u32)));
}

/// Operations sent before the first connection completed were parked and
/// never run: their requests were never answered.
#[test]
fn operations_sent_before_the_first_connection_are_answered() {
    let mut w = world(&[], 1);
    // A fresh mount, not yet connected.
    w.crash_client(0);
    let req = w.op(0, Op::GetAttr { ino: Ino::ROOT });
    let now = w.now;
    w.clients[0].core.connect(now);
    w.pump();
    assert!(matches!(w.wait(0, req), Ok(Answer::Attr { .. })));
}

/// The host committed to the path the file had at BeginWrite: after the
/// writer renamed another file over it, the commit replaced that other
/// file's content.
#[test]
fn a_commit_never_lands_on_a_file_renamed_over_the_written_one() {
    let mut w = world(&[("a", b"old a"), ("d", b"dddd")], 1);
    let (_, fh) = open(&mut w, 0, "a");
    write(&mut w, 0, fh, b"NEW");
    let rename = Op::Rename {
        parent: Ino::ROOT,
        name: name("d"),
        new_parent: Ino::ROOT,
        new_name: name("a"),
    };
    assert_eq!(w.call(0, rename), Ok(Answer::Done));
    // The written file has no name any more: its commit fails, and the
    // file now called "a" keeps its own content.
    assert!(w.call(0, Op::Flush { fh, owner: None }).is_err());
    assert_eq!(w.disk.read_file(&path("a")), Some(&b"dddd"[..]));
}

/// A file renamed by its own writer is committed where it is now.
#[test]
fn a_commit_follows_its_writers_own_rename() {
    let mut w = world(&[("a", b"old a")], 1);
    let (_, fh) = open(&mut w, 0, "a");
    write(&mut w, 0, fh, b"NEW");
    let rename = Op::Rename {
        parent: Ino::ROOT,
        name: name("a"),
        new_parent: Ino::ROOT,
        new_name: name("e"),
    };
    assert_eq!(w.call(0, rename), Ok(Answer::Done));
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(w.disk.read_file(&path("e")), Some(&b"NEW a"[..]));
    assert_eq!(w.disk.read_file(&path("a")), None);
}

/// A commit gives the file a new disk identity; the host's index kept the
/// old one, so the next lookup (by anyone) made a new node and the
/// writer's handle went stale: its next flush failed with ESTALE.
#[test]
fn a_writer_keeps_writing_after_its_commit_is_looked_up() {
    let mut w = world(&[("a", b"old a")], 2);
    let (_, fh) = open(&mut w, 0, "a");
    write(&mut w, 0, fh, b"one");
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    lookup(&mut w, 1, "a");
    write(&mut w, 0, fh, b"two");
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(w.disk.read_file(&path("a")), Some(&b"two a"[..]));
}

/// After a host restart, handles kept node ids of the old host run, which
/// name other files in the new one: a handle on a file deleted meanwhile
/// read another file's bytes.
#[test]
fn a_handle_never_reads_another_file_after_a_host_restart() {
    let mut w = world(&[("a", b"AAAA"), ("b", b"BBBB")], 2);
    let (_, fh) = open(&mut w, 0, "a");
    let unlink = Op::Unlink {
        parent: Ino::ROOT,
        name: name("a"),
    };
    assert_eq!(w.call(1, unlink), Ok(Answer::Done));
    w.crash_host();
    w.restart_host();
    w.run_for(Duration::from_secs(40));
    assert!(w.clients[0].core.is_ready());
    let read = w.call(
        0,
        Op::Read {
            fh,
            offset: 0,
            size: 4,
        },
    );
    assert!(
        !matches!(&read, Ok(Answer::Data(d)) if &d[..] == b"BBBB"),
        "{read:?}"
    );
}

/// A close while a flush's commit was in flight failed with EINVAL (the
/// transaction refused a second commit); it now waits for that commit.
#[test]
fn a_close_during_a_commit_waits_for_it() {
    let mut w = world(&[("a", b"old a")], 1);
    w.max_delay = Duration::from_millis(20);
    let (_, fh) = open(&mut w, 0, "a");
    write(&mut w, 0, fh, b"NEW");
    let flush = w.op(0, Op::Flush { fh, owner: None });
    w.run_for(Duration::from_millis(45));
    let release = w.op(0, Op::Release { fh });
    assert_eq!(w.wait(0, flush), Ok(Answer::Done));
    assert_eq!(w.wait(0, release), Ok(Answer::Done));
    assert_eq!(w.disk.read_file(&path("a")), Some(&b"NEW a"[..]));
}

/// A file its writer committed and another client then replaced by a
/// rename: reads through the writer's handle went through its host handle,
/// which still held the pre-commit file, and returned bytes the file never
/// held (zeros).
#[test]
fn a_replaced_file_reads_its_own_commit_or_fails() {
    let mut w = world(&[("b", b"bbbb")], 2);
    let fh = match w.call(
        0,
        Op::Create {
            parent: Ino::ROOT,
            name: name("d"),
            mode: 0o644,
            exclusive: false,
            truncate: false,
            caller: None,
        },
    ) {
        Ok(Answer::Created { fh, .. }) => fh,
        other => panic!("{other:?}"),
    };
    write(&mut w, 0, fh, b"mine");
    assert_eq!(w.call(0, Op::Fsync { fh }), Ok(Answer::Done));
    // The transaction's lock goes after the commit.
    w.run_for(Duration::from_secs(1));
    let rename = Op::Rename {
        parent: Ino::ROOT,
        name: name("b"),
        new_parent: Ino::ROOT,
        new_name: name("d"),
    };
    assert_eq!(w.call(1, rename), Ok(Answer::Done));
    w.run_for(Duration::from_secs(2));
    let read = w.call(
        0,
        Op::Read {
            fh,
            offset: 0,
            size: 100,
        },
    );
    assert!(
        read.is_err() || matches!(&read, Ok(Answer::Data(d)) if &d[..] == b"mine"),
        "{read:?}"
    );
}

/// A handle cut off from its file by a host restart (the file was
/// rewritten meanwhile, so it cannot be re-bound) answered Done to flush
/// and close while another handle's writes to the file stayed buffered; it
/// now reports ESTALE.
#[test]
fn a_cut_off_handle_flushes_with_estale() {
    let mut w = world(&[("a", b"old a")], 2);
    let (_, fh) = open(&mut w, 0, "a");
    let (_, other) = open(&mut w, 1, "a");
    write(&mut w, 1, other, b"new");
    // Durable, so the crash cannot take the rewrite back.
    assert_eq!(w.call(1, Op::Fsync { fh: other }), Ok(Answer::Done));
    assert_eq!(w.call(1, Op::Release { fh: other }), Ok(Answer::Done));
    w.crash_host();
    w.restart_host();
    w.run_for(Duration::from_secs(40));
    assert!(w.clients[0].core.is_ready());
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Err(Errno::Stale));
    assert_eq!(w.call(0, Op::Release { fh }), Err(Errno::Stale));
}

/// Found by fs_sim seeds 6614, 8017 and 8731: a read learned the file's
/// new version by node, then (its name taken meanwhile by a new file, so
/// the inode looked unlinked) fetched through its host handle, which still
/// holds the file a commit replaced; the old bytes were accepted under the
/// new version's key and padded to the new size. Bytes are only ever cached
/// under the version they came with, and a read through a handle whose
/// inode lost its name keeps the version the handle holds: the read
/// returns one committed content whole.
#[test]
fn a_read_never_mixes_two_versions_of_a_file() {
    let old: &[u8] = b"old";
    let new: &[u8] = b"the new, longer content";
    let mut w = world(&[("a", old)], 2);
    let (_, fh) = open(&mut w, 0, "a");
    let (_, writer) = open(&mut w, 1, "a");
    write(&mut w, 1, writer, new);
    assert_eq!(w.call(1, Op::Release { fh: writer }), Ok(Answer::Done));
    let rename = Op::Rename {
        parent: Ino::ROOT,
        name: name("a"),
        new_parent: Ino::ROOT,
        new_name: name("b"),
    };
    assert_eq!(w.call(1, rename), Ok(Answer::Done));
    // The read and a create of the old name race on the wire.
    let read = w.op(
        0,
        Op::Read {
            fh,
            offset: 0,
            size: 1 << 16,
        },
    );
    let create = w.op(
        0,
        Op::Create {
            parent: Ino::ROOT,
            name: name("a"),
            mode: 0o644,
            exclusive: false,
            truncate: false,
            caller: None,
        },
    );
    assert!(matches!(w.wait(0, create), Ok(Answer::Created { .. })));
    // The handle was opened before the commit, so either content is
    // right; an error would not be (the file exists).
    match w.wait(0, read) {
        Ok(Answer::Data(data)) => assert!(
            data[..] == *old || data[..] == *new,
            "read gave {data:?}, neither version"
        ),
        other => panic!("read answered {other:?}"),
    }
}

/// Found by fs_sim seed 2541: a write sent while a flush's commit was in
/// flight waited for the next transaction, but the close sent after it
/// answered with the running commit. The write then started a transaction
/// no handle would ever commit: its lock was refreshed forever, and the
/// close reported success for a write that never reached the disk.
#[test]
fn a_close_covers_a_write_that_waited_for_a_commit() {
    let mut w = world(&[("a", b"old a")], 1);
    // The ordinary path's steps are what this checks.
    for c in &mut w.clients {
        c.core.cfg.write.whole_writes = false;
    }
    w.max_delay = Duration::from_millis(20);
    let (_, fh) = open(&mut w, 0, "a");
    write(&mut w, 0, fh, b"one");
    let flush = w.op(0, Op::Flush { fh, owner: None });
    w.run_for(Duration::from_millis(45));
    assert!(
        w.answer(0, flush).is_none(),
        "the commit is still in flight"
    );
    let second = w.op(
        0,
        Op::Write {
            fh,
            offset: 0,
            data: Bytes::from_static(b"TWO"),
            append: false,
        },
    );
    let release = w.op(0, Op::Release { fh });
    assert_eq!(w.wait(0, flush), Ok(Answer::Done));
    assert_eq!(w.wait(0, second), Ok(Answer::Written(3)));
    assert_eq!(w.wait(0, release), Ok(Answer::Done));
    assert_eq!(w.disk.read_file(&path("a")), Some(&b"TWO a"[..]));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.clients[0].core.open_writes(), 0);
    assert_eq!(w.host.locks().len(), 0, "the lock was released");
}

/// A truncate sent while a commit was in flight failed with EINVAL; it now
/// waits for the commit and lands after the writes sent before it.
#[test]
fn a_truncate_during_a_commit_waits_for_it() {
    let mut w = world(&[("a", b"old a")], 1);
    w.max_delay = Duration::from_millis(20);
    let (ino, fh) = open(&mut w, 0, "a");
    write(&mut w, 0, fh, b"one two");
    let flush = w.op(0, Op::Flush { fh, owner: None });
    let limit = w.now + Duration::from_secs(5);
    while !w.clients[0]
        .core
        .writes
        .values()
        .any(WriteTxn::is_committing)
    {
        assert!(w.step(limit), "the commit starts");
    }
    let truncate = w.op(
        0,
        Op::SetAttr {
            ino,
            set: SetAttr {
                size: Some(3),
                ..SetAttr::default()
            },
        },
    );
    assert_eq!(w.wait(0, flush), Ok(Answer::Done));
    assert!(
        matches!(w.wait(0, truncate), Ok(Answer::Attr { ref attr, .. }) if attr.size == 3),
        "the truncate succeeds"
    );
    assert_eq!(w.disk.read_file(&path("a")), Some(&b"one"[..]));
}

/// Found by fs_sim seed 31357: writes lost with a failed transaction were
/// reported to the first flush on the file only; another handle that had
/// written some of them then flushed with success. Every handle open on
/// the file reports the loss once.
#[test]
fn every_handle_reports_lost_writes_once() {
    let mut w = world(&[("a", b"old a"), ("d", b"dddd")], 2);
    let (_, first) = open(&mut w, 0, "a");
    let (_, second) = open(&mut w, 0, "a");
    write(&mut w, 0, second, b"lost");
    // The written file loses its name: its commit fails.
    let rename = Op::Rename {
        parent: Ino::ROOT,
        name: name("d"),
        new_parent: Ino::ROOT,
        new_name: name("a"),
    };
    assert_eq!(w.call(1, rename), Ok(Answer::Done));
    assert!(
        w.call(
            0,
            Op::Flush {
                fh: first,
                owner: None
            }
        )
        .is_err()
    );
    assert!(
        w.call(
            0,
            Op::Flush {
                fh: second,
                owner: None
            }
        )
        .is_err()
    );
    assert_eq!(
        w.call(
            0,
            Op::Flush {
                fh: first,
                owner: None
            }
        ),
        Ok(Answer::Done)
    );
    assert_eq!(
        w.call(
            0,
            Op::Flush {
                fh: second,
                owner: None
            }
        ),
        Ok(Answer::Done)
    );
    assert_eq!(w.disk.read_file(&path("a")), Some(&b"dddd"[..]));
}

/// Found by the sshfs benchmark (1 GiB written at 11 MB/s, stalling for
/// 20–30 s at a time): a file's next transaction started the moment the
/// previous one reported its commit, and dropped it with its lock's
/// release still unsent; the new lock request then waited for the old
/// lock to expire (30 s) at every commit forced by a full write buffer.
#[test]
fn a_long_write_never_waits_for_its_own_old_lock() {
    let mut cfg = ClientConfig::default();
    cfg.write.max_dirty = 1 << 20;
    let mut w = World::new(7, MemFs::new(1 << 30), 1, HostConfig::default(), cfg);
    let fh = match w.call(
        0,
        Op::Create {
            parent: Ino::ROOT,
            name: name("big"),
            mode: 0o644,
            exclusive: false,
            truncate: false,
            caller: None,
        },
    ) {
        Ok(Answer::Created { fh, .. }) => fh,
        other => panic!("{other:?}"),
    };
    let start = w.now;
    // 8 MiB through a 1 MiB buffer: seven commits on the way.
    let piece = Bytes::from(vec![7u8; 128 << 10]);
    for i in 0..64u64 {
        let r = w.call(
            0,
            Op::Write {
                fh,
                offset: i * (128 << 10),
                data: piece.clone(),
                append: false,
            },
        );
        assert_eq!(r, Ok(Answer::Written(128 << 10)));
    }
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    let took = w.now.saturating_duration_since(start);
    assert!(
        took < Duration::from_secs(5),
        "8 MiB took {took:?} of simulated time (a lock expiry is 30 s)"
    );
    assert_eq!(
        w.disk.read_file(&path("big")).map(<[u8]>::len),
        Some(8 << 20)
    );
}

/// One client with `f` ("old") open and `data` written to it, not yet
/// committed, on a wire whose delays (up to 20 ms) reorder replies.
fn written_with_slow_wire(seed: u64, data: &[u8]) -> (World, Ino, Fh) {
    let mut d = MemFs::new(1 << 30);
    d.local_replace(&path("f"), b"old").expect("seed the disk");
    let mut w = World::new(seed, d, 1, HostConfig::default(), ClientConfig::default());
    w.max_delay = std::time::Duration::from_millis(20);
    let (ino, fh) = open(&mut w, 0, "f");
    write(&mut w, 0, fh, data);
    (w, ino, fh)
}

/// A getattr the host ran before this client's commit, answered after
/// it, put the replaced version's attributes back in the cache: the
/// writer's next `stat` showed the old size, and once the host was out
/// of reach the cache's old size cut reads of the new version (fs_sim,
/// seed 54283). The wire's random delays order the two replies
/// differently from seed to seed.
#[test]
fn a_getattr_answered_after_the_commit_keeps_the_commits_size() {
    for seed in 0..8 {
        let (mut w, ino) = sent_before_the_commit(seed, |w, ino| {
            // Past the attributes' TTL: the getattr goes to the host.
            w.run_for(std::time::Duration::from_secs(2));
            Op::GetAttr { ino }
        });
        w.settle();
        assert_eq!(size_served(&mut w, ino), NEW.len() as u64, "seed {seed}");
    }
}

/// The same for an extended attribute's change and a chmod: their
/// replies carry the file's attributes as the host saw them when it ran
/// them (fs_sim, seed 48011, through `setxattr`).
#[test]
fn metadata_changes_answered_after_the_commit_keep_the_commits_size() {
    for seed in 0..8 {
        for which in [1, 2] {
            let (mut w, ino) = sent_before_the_commit(seed, |_, ino| late_reply(which, ino));
            w.settle();
            let size = size_served(&mut w, ino);
            assert_eq!(size, NEW.len() as u64, "seed {seed}, change {which}");
        }
    }
}

/// The commit's attributes that such a late reply leaves standing keep
/// their age: served from the cache only within the TTL of the reply
/// that brought them (fs_sim, seed 76230: filled again at the late
/// lookup's answer, they were served past it).
#[test]
fn attributes_kept_over_a_late_reply_keep_their_age() {
    let ttl = crate::cache::CacheConfig::default().attr_ttl;
    for seed in 0..16 {
        for which in 0..3 {
            let (mut w, ino) = sent_before_the_commit(seed, |_, ino| late_reply(which, ino));
            let deadline = w.now + (ttl - std::time::Duration::from_millis(1));
            while w.now < deadline {
                let sent = w.clients[0].sent;
                let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::GetAttr { ino }) else {
                    panic!("seed {seed}: getattr");
                };
                if w.clients[0].sent == sent {
                    let came = w
                        .attr_log
                        .iter()
                        .filter(|d| d.client == 0 && d.node == attr.node)
                        .filter(|d| d.version == attr.version)
                        .map(|d| d.at)
                        .max();
                    assert!(
                        came.is_some_and(|at| w.now.saturating_duration_since(at) <= ttl),
                        "seed {seed}, late reply {which}: served {:?} after they came",
                        came.map(|at| w.now.saturating_duration_since(at))
                    );
                }
                w.run_for(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// What the writer's uncommitted write holds: longer than "old".
const NEW: &[u8] = b"a longer, newer content";

/// A request whose reply carries `f`'s attributes: a lookup (0), an
/// extended attribute's change (1), a chmod (2).
fn late_reply(which: u8, ino: Ino) -> Op {
    match which {
        0 => Op::Lookup {
            parent: Ino::ROOT,
            name: name("f"),
        },
        1 => Op::SetXattr {
            ino,
            name: b"user.t".to_vec(),
            value: b"v".to_vec(),
            how: crate::proto::XattrSet::Either,
        },
        _ => Op::SetAttr {
            ino,
            set: crate::proto::SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        },
    }
}

/// [`written_with_slow_wire`]'s file with [`NEW`] written, and the
/// request `late` makes sent just before the flush that commits it: the
/// wire's delays answer it before or after the commit, by seed. Both
/// are answered, with attribute deliveries recorded.
fn sent_before_the_commit(seed: u64, late: impl FnOnce(&mut World, Ino) -> Op) -> (World, Ino) {
    let (mut w, ino, fh) = written_with_slow_wire(seed, NEW);
    w.record_attrs = true;
    let op = late(&mut w, ino);
    let late = w.op(0, op);
    let flush = w.op(0, Op::Flush { fh, owner: None });
    assert_eq!(w.wait(0, flush), Ok(Answer::Done), "seed {seed}");
    assert!(w.wait(0, late).is_ok(), "seed {seed}");
    (w, ino)
}

/// The size client 0 answers a `stat` of `ino` with.
fn size_served(w: &mut World, ino: Ino) -> u64 {
    match w.call(0, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => attr.size,
        other => panic!("{other:?}"),
    }
}

/// The same for a lookup the host ran before the commit, answered after
/// it: its attributes (the replaced version's size) went to the kernel
/// and the cache (fs_sim, seed 10667).
#[test]
fn a_lookup_answered_after_the_commit_keeps_the_commits_size() {
    for seed in 0..8 {
        let (mut w, ino, fh) = written_with_slow_wire(seed, NEW);
        let flush = w.op(0, Op::Flush { fh, owner: None });
        let look = w.op(
            0,
            Op::Lookup {
                parent: Ino::ROOT,
                name: name("f"),
            },
        );
        assert_eq!(w.wait(0, flush), Ok(Answer::Done));
        match w.wait(0, look) {
            Ok(Answer::Entry { attr, .. }) => {
                assert_eq!(attr.size, NEW.len() as u64, "seed {seed}: the lookup");
            }
            other => panic!("seed {seed}: {other:?}"),
        }
        w.settle();
        let size = size_served(&mut w, ino);
        assert_eq!(size, NEW.len() as u64, "seed {seed}: the cache");
    }
}

/// What `fill_changed_attr` remembers stays bounded even while a request
/// stays in flight all along (here a lock wait), which keeps every later
/// entry from being pruned as answered.
#[test]
fn the_memory_of_own_changes_is_bounded_under_a_long_wait() {
    let names: Vec<String> = (0..1100).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let mut w = world(&files, 2);
    let (_, held) = open(&mut w, 0, "f0");
    let (_, waits) = open(&mut w, 1, "f0");
    let lock = |fh| Op::SetLock {
        fh,
        owner: 1,
        range: crate::proto::ByteRange::WHOLE,
        kind: Some(crate::proto::LockKind::Exclusive),
        wait: true,
    };
    assert_eq!(w.call(0, lock(held)), Ok(Answer::Done));
    let waiting = w.op(1, lock(waits));
    for n in &names {
        let ino = lookup(&mut w, 1, n);
        let chmod = Op::SetAttr {
            ino,
            set: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        };
        assert!(matches!(w.call(1, chmod), Ok(Answer::Attr { .. })));
    }
    assert_eq!(w.answer(1, waiting), None, "still waiting");
    let remembered = w.clients[1].core.changed_after.len();
    assert!(remembered < 1024, "{remembered} nodes remembered");
}

/// The same for a non-exclusive create of the file (an open of it) sent
/// before the commit and answered after it: the host opened the replaced
/// version, whose size went to the kernel and cut the next read of the
/// new version through the writer's own handle (fs_sim, seed 11778). The
/// new handle now follows the file: it shows and reads the new version.
#[test]
fn an_open_answered_after_the_commit_reads_the_commits_version() {
    for seed in 0..8 {
        let (mut w, _, fh) = written_with_slow_wire(seed, NEW);
        let flush = w.op(0, Op::Flush { fh, owner: None });
        let create = w.op(
            0,
            Op::Create {
                parent: Ino::ROOT,
                name: name("f"),
                mode: 0o644,
                exclusive: false,
                truncate: false,
                caller: None,
            },
        );
        assert_eq!(w.wait(0, flush), Ok(Answer::Done));
        let opened = match w.wait(0, create) {
            Ok(Answer::Created { attr, fh, .. }) => {
                assert_eq!(
                    attr.size,
                    NEW.len() as u64,
                    "seed {seed}: the kernel's size"
                );
                fh
            }
            other => panic!("seed {seed}: {other:?}"),
        };
        let read = Op::Read {
            fh: opened,
            offset: 0,
            size: 100,
        };
        match w.call(0, read) {
            Ok(Answer::Data(d)) => assert_eq!(&d[..], NEW, "seed {seed}: the new handle"),
            other => panic!("seed {seed}: {other:?}"),
        }
    }
}

/// A read whose chunks were asked for before the file's own commit, and
/// came after it: it was assembled from the old version's chunks to the
/// new version's size, with zeros where this client's committed write
/// was (fs_sim, seed 130784 of 150,000). Planned against one version and
/// finished against another, it is now read again. The wire's delays
/// order the read's chunks and the commit differently from seed to seed;
/// a chunk asked through a host handle the commit closed meanwhile is
/// read again too (it was answered EBADF).
#[test]
fn a_read_across_the_writers_own_commit_is_one_version() {
    let old = vec![b'o'; CHUNK_SIZE + 1000];
    let mut new = old.clone();
    new.extend(vec![b'n'; CHUNK_SIZE]);
    for seed in 0..32 {
        let mut d = MemFs::new(1 << 30);
        d.local_replace(&path("f"), &old).expect("seed the disk");
        let mut w = World::new(seed, d, 1, HostConfig::default(), ClientConfig::default());
        w.max_delay = std::time::Duration::from_millis(20);
        let (ino, fh) = open(&mut w, 0, "f");
        let Ok(Answer::Opened { fh: reader, .. }) = w.call(0, Op::open(ino)) else {
            panic!("open f for reading");
        };
        let read = w.op(
            0,
            Op::Read {
                fh: reader,
                offset: 0,
                size: 4 * CHUNK_SIZE as u32,
            },
        );
        let append = w.op(
            0,
            Op::Write {
                fh,
                offset: old.len() as u64,
                data: Bytes::from(vec![b'n'; CHUNK_SIZE]),
                append: true,
            },
        );
        let fsync = w.op(0, Op::Fsync { fh });
        assert_eq!(w.wait(0, append), Ok(Answer::Written(CHUNK_SIZE as u32)));
        assert_eq!(w.wait(0, fsync), Ok(Answer::Done), "seed {seed}");
        let answer = w.wait(0, read);
        let Ok(Answer::Data(data)) = answer else {
            panic!("seed {seed}: the read: {answer:?}");
        };
        assert!(
            data[..] == old[..] || data[..] == new[..],
            "seed {seed}: {} bytes, the first that is neither at {:?}",
            data.len(),
            data.iter().zip(&new).position(|(a, b)| a != b)
        );
    }
}
