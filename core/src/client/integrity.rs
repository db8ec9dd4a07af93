//! Never lose or corrupt a byte: what a writer gets when the file changes
//! under it, when the disk fills up or fails, and when the host dies in
//! the middle of a rewrite. Each test is one case of the fault injection
//! that found the bug (issue 16), reduced to the client and host
//! machines over the in-memory disk.

use super::*;
use crate::host::memfs::MemFs;
use crate::host::{HostConfig, RelPath};
use crate::proto::{Name, OpenFor};
use crate::testkit::World;
use std::time::Duration;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid")
}

fn path(s: &str) -> RelPath {
    RelPath::from(vec![name(s)])
}

fn world(files: &[(&str, &[u8])], capacity: Option<u64>) -> World {
    let mut d = MemFs::new(1 << 30);
    for (f, data) in files {
        d.local_replace(&path(f), data).expect("seed a file");
    }
    d.set_capacity(capacity);
    World::new(7, d, 1, HostConfig::default(), ClientConfig::default())
}

fn lookup(w: &mut World, n: &str) -> Ino {
    match w.call(
        0,
        Op::Lookup {
            parent: Ino::ROOT,
            name: name(n),
        },
    ) {
        Ok(Answer::Entry { ino, .. }) => ino,
        other => panic!("lookup {n}: {other:?}"),
    }
}

fn open(w: &mut World, ino: Ino, mode: OpenFor, truncate: bool) -> Fh {
    super::tests::open_with(w, 0, ino, mode, truncate)
}

fn write(w: &mut World, fh: Fh, offset: u64, data: &[u8]) -> Result<Answer, Errno> {
    w.call(
        0,
        Op::Write {
            fh,
            offset,
            data: Bytes::copy_from_slice(data),
            append: false,
        },
    )
}

/// What a local program does to the host's folder, and the watcher's
/// report of it.
fn locally(w: &mut World, file: &str, change: impl FnOnce(&mut MemFs, &RelPath)) {
    change(&mut w.disk, &path(file));
    let now = w.now;
    w.host.local_change(now, &path(file));
    w.pump();
    w.settle();
}

fn on_disk(w: &World, file: &str) -> Vec<u8> {
    w.disk.read_file(&path(file)).expect("the file").to_vec()
}

/// Case 1: a client has `doc` open for writing when an editor on the host
/// saves it atomically (a new file renamed over it). The client's write
/// was made to the version it opened, which no longer has the name: its
/// fsync fails (ESTALE), and the host keeps the editor's version whole,
/// never the client's bytes laid over it and padded to the old size.
#[test]
fn a_write_to_a_file_the_host_replaced_fails_and_the_new_file_stays_whole() {
    let mut w = world(&[("doc", b"version2 longer\n")], None);
    let ino = lookup(&mut w, "doc");
    let fh = open(&mut w, ino, OpenFor::Write, false);
    locally(&mut w, "doc", |d, p| {
        d.local_replace(p, b"version3\n").expect("save")
    });
    assert_eq!(write(&mut w, fh, 0, b"CLIENT"), Ok(Answer::Written(6)));
    assert_eq!(w.call(0, Op::Fsync { fh }), Err(Errno::Stale));
    assert_eq!(on_disk(&w, "doc"), b"version3\n");
    assert_eq!(w.disk.staged(), 0, "the refused transaction left nothing");
}

/// The same when the save comes after the transaction began (its staging
/// copy was made from the old version): the commit is refused.
#[test]
fn a_commit_over_a_file_replaced_since_it_began_is_refused() {
    let mut w = world(&[("doc", b"version2 longer\n")], None);
    // The ordinary path's steps are what this checks.
    for c in &mut w.clients {
        c.core.cfg.write.whole_writes = false;
    }
    let ino = lookup(&mut w, "doc");
    let fh = open(&mut w, ino, OpenFor::Write, false);
    assert_eq!(write(&mut w, fh, 0, b"CLIENT"), Ok(Answer::Written(6)));
    w.settle();
    assert!(w.disk.staged() > 0, "the transaction has begun");
    locally(&mut w, "doc", |d, p| {
        d.local_replace(p, b"version3\n").expect("save")
    });
    assert_eq!(w.call(0, Op::Fsync { fh }), Err(Errno::Stale));
    assert_eq!(on_disk(&w, "doc"), b"version3\n");
}

/// A local program appending in place while a client's transaction is
/// open: the commit would drop the appended bytes, so it is refused.
#[test]
fn a_commit_over_a_file_changed_in_place_is_refused() {
    let mut w = world(&[("log", b"one\n")], None);
    let ino = lookup(&mut w, "log");
    let fh = open(&mut w, ino, OpenFor::Write, false);
    assert_eq!(write(&mut w, fh, 0, b"ONE\n"), Ok(Answer::Written(4)));
    w.settle();
    locally(&mut w, "log", |d, p| {
        d.local_append(p, b"two\n").expect("append")
    });
    assert_eq!(w.call(0, Op::Fsync { fh }), Err(Errno::Stale));
    assert_eq!(on_disk(&w, "log"), b"one\ntwo\n");
    // A new open sees the local change and writes over it.
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    let fh = open(&mut w, ino, OpenFor::Write, false);
    assert_eq!(write(&mut w, fh, 0, b"ONE\n"), Ok(Answer::Written(4)));
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "log"), b"ONE\ntwo\n");
}

/// Case 2: `O_TRUNC` is part of the rewrite's transaction. Until the
/// writer's first flush, fsync or close the host keeps the old content,
/// and a host that dies meanwhile comes back with it, whole: never an
/// empty or half-written file.
#[test]
fn o_trunc_keeps_the_old_content_until_the_rewrite_commits() {
    let old = vec![b'o'; 300_000];
    let mut w = world(&[("big", &old[..])], None);
    let ino = lookup(&mut w, "big");
    let fh = open(&mut w, ino, OpenFor::Write, true);
    match w.call(0, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => assert_eq!(attr.size, 0, "the writer sees it empty"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        write(&mut w, fh, 0, &[b'n'; 100_000]),
        Ok(Answer::Written(100_000))
    );
    w.settle();
    assert_eq!(on_disk(&w, "big"), old, "the old content until the commit");
    w.crash_host();
    w.run_for(Duration::from_secs(1));
    w.restart_host();
    w.run_for(Duration::from_secs(20));
    assert_eq!(on_disk(&w, "big"), old, "the old content after the crash");
    assert_eq!(w.disk.staged(), 0);
    // The writer learns that its rewrite was lost.
    assert!(w.call(0, Op::Fsync { fh }).is_err());
}

/// A rewrite with `O_TRUNC` that commits leaves exactly what was written:
/// no tail of the old content.
#[test]
fn a_rewrite_with_o_trunc_leaves_exactly_the_new_content() {
    let mut w = world(&[("f", b"a much longer old content")], None);
    let ino = lookup(&mut w, "f");
    let fh = open(&mut w, ino, OpenFor::Write, true);
    assert_eq!(write(&mut w, fh, 0, b"new"), Ok(Answer::Written(3)));
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "f"), b"new");
    // Truncated and closed without a write: empty, once closed.
    let fh = open(&mut w, ino, OpenFor::Write, true);
    assert_eq!(on_disk(&w, "f"), b"new");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "f"), b"");
}

/// Case 3: a disk that fills up. The writer learns ENOSPC at the earliest
/// honest point (a later write, else the flush) and the file keeps its old
/// content whole: never a file of the full size that is mostly holes.
#[test]
fn a_full_disk_fails_the_writer_and_keeps_the_old_content() {
    let old = vec![b'o'; 200_000];
    let mut w = world(&[("f", &old[..])], Some(1_000_000));
    let ino = lookup(&mut w, "f");
    let fh = open(&mut w, ino, OpenFor::Write, true);
    let piece = vec![b'n'; 128 * 1024];
    let mut failed = None;
    for i in 0..40u64 {
        match write(&mut w, fh, i * piece.len() as u64, &piece) {
            Ok(_) => w.settle(),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert_eq!(failed, Some(Errno::NoSpc), "a write after the loss fails");
    assert_eq!(w.call(0, Op::Release { fh }), Err(Errno::NoSpc));
    assert_eq!(on_disk(&w, "f"), old);
    assert_eq!(w.disk.staged(), 0);
}

/// The same for a new file: it stays what its create made (empty), not a
/// file of holes with the tail written after the failure.
#[test]
fn a_full_disk_leaves_a_new_file_empty_not_full_of_holes() {
    let mut w = world(&[], Some(500_000));
    let (ino, fh) = match w.call(
        0,
        Op::Create {
            parent: Ino::ROOT,
            name: name("fill"),
            mode: 0o644,
            exclusive: true,
            truncate: true,
            caller: None,
        },
    ) {
        Ok(Answer::Created { ino, fh, .. }) => (ino, fh),
        other => panic!("{other:?}"),
    };
    let piece = vec![b'x'; 128 * 1024];
    let mut results = Vec::new();
    for i in 0..10u64 {
        results.push(write(&mut w, fh, i * piece.len() as u64, &piece));
        w.settle();
    }
    assert!(results.contains(&Err(Errno::NoSpc)), "{results:?}");
    let after_loss = results.iter().position(Result::is_err).expect("a loss");
    assert!(
        results[after_loss..].iter().all(Result::is_err),
        "no write after the loss starts a transaction of its own: {results:?}"
    );
    assert!(w.call(0, Op::Release { fh }).is_err());
    assert_eq!(on_disk(&w, "fill"), b"");
    assert_eq!(w.disk.staged(), 0);
    let _ = ino;
}

/// A disk that fails a write (EIO): the same, and once the loss is
/// reported, the handle writes again, on the file's intact content.
#[test]
fn after_a_reported_loss_a_handle_writes_again_on_the_intact_file() {
    let mut w = world(&[("f", b"0123456789")], None);
    // The ordinary path's steps are what this checks.
    for c in &mut w.clients {
        c.core.cfg.write.whole_writes = false;
    }
    let ino = lookup(&mut w, "f");
    let fh = open(&mut w, ino, OpenFor::Write, false);
    w.disk.fail_next(Errno::Io, 1);
    assert_eq!(write(&mut w, fh, 0, b"AB"), Ok(Answer::Written(2)));
    w.settle();
    assert_eq!(
        write(&mut w, fh, 4, b"CD"),
        Err(Errno::Io),
        "fails until told"
    );
    assert_eq!(
        w.call(0, Op::Fsync { fh }),
        Err(Errno::Io),
        "the loss, once"
    );
    assert_eq!(write(&mut w, fh, 4, b"CD"), Ok(Answer::Written(2)));
    assert_eq!(w.call(0, Op::Fsync { fh }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "f"), b"0123CD6789");
}

/// A FLUSH comes at every close of a descriptor, the copies a fork makes
/// included: one that comes between a truncating open and the first write
/// does not commit an empty file; the rewrite commits whole at its close.
#[test]
fn a_flush_before_the_first_write_of_a_rewrite_commits_nothing() {
    let mut w = world(&[("f", b"old content")], None);
    let ino = lookup(&mut w, "f");
    let fh = open(&mut w, ino, OpenFor::Write, true);
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "f"), b"old content", "nothing committed yet");
    assert_eq!(write(&mut w, fh, 0, b"new"), Ok(Answer::Written(3)));
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "f"), b"new");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    // `: > f`: truncated at its close.
    let fh = open(&mut w, ino, OpenFor::Write, true);
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    assert_eq!(on_disk(&w, "f"), b"");
}
