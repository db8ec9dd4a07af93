//! The client against a real host machine and an in-memory disk.

use super::*;
use crate::conn::DisconnectReason;
use crate::host::memfs::MemFs;
use crate::host::{FsOp, HostConfig, RelPath};
use crate::proto::{CHUNK_SIZE, FileKind, Name, OpenFor, SetTime};
use crate::testkit::World;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid")
}

fn disk(files: &[(&str, &[u8])]) -> MemFs {
    let mut d = MemFs::new(1 << 30);
    for (f, data) in files {
        let p = RelPath::from(vec![name(f)]);
        d.local_replace(&p, data).expect("seed a file");
    }
    d
}

fn world(files: &[(&str, &[u8])], clients: usize) -> World {
    World::new(
        7,
        disk(files),
        clients,
        HostConfig::default(),
        ClientConfig::default(),
    )
}

fn lookup(w: &mut World, c: usize, parent: Ino, n: &str) -> Result<(Ino, Attr), Errno> {
    match w.call(
        c,
        Op::Lookup {
            parent,
            name: name(n),
        },
    )? {
        Answer::Entry { ino, attr, .. } => Ok((ino, attr)),
        other => panic!("{other:?}"),
    }
}

fn open(w: &mut World, c: usize, ino: Ino) -> Fh {
    match w.call(c, Op::open(ino)) {
        Ok(Answer::Opened { fh, .. }) => fh,
        other => panic!("{other:?}"),
    }
}

/// Client `c` opens `ino` for writing (with `O_TRUNC` if `truncate`).
fn open_for_write(w: &mut World, c: usize, ino: Ino, truncate: bool) -> Fh {
    open_with(w, c, ino, OpenFor::Write, truncate)
}

/// Client `c` opens `ino` for `mode` (`O_TRUNC` with `truncate`).
pub(super) fn open_with(w: &mut World, c: usize, ino: Ino, mode: OpenFor, truncate: bool) -> Fh {
    match w.call(
        c,
        Op::Open {
            ino,
            mode,
            truncate,
        },
    ) {
        Ok(Answer::Opened { fh, .. }) => fh,
        other => panic!("{other:?}"),
    }
}

/// Client `c` rewrites the top-level file `n` with `data` (`O_TRUNC`,
/// write, close) and the world settles: another version in its place.
fn replace_from(w: &mut World, c: usize, n: &str, data: &[u8]) {
    let (ino, _) = lookup(w, c, Ino::ROOT, n).expect("the file");
    let fh = open_for_write(w, c, ino, true);
    write(w, c, fh, 0, data);
    w.call(c, Op::Release { fh }).expect("the commit at close");
    w.settle();
}

fn create(w: &mut World, c: usize, n: &str) -> (Ino, Fh) {
    match w.call(
        c,
        Op::Create {
            parent: Ino::ROOT,
            name: name(n),
            mode: 0o644,
            exclusive: false,
            truncate: false,
            caller: None,
        },
    ) {
        Ok(Answer::Created { ino, fh, .. }) => (ino, fh),
        other => panic!("{other:?}"),
    }
}

fn read_all(w: &mut World, c: usize, fh: Fh, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let size = 131_072u32;
        match w.call(
            c,
            Op::Read {
                fh,
                offset: out.len() as u64,
                size,
            },
        ) {
            Ok(Answer::Data(d)) if d.is_empty() => return out,
            Ok(Answer::Data(d)) => {
                out.extend_from_slice(&d);
                if out.len() >= len {
                    return out;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

fn write(w: &mut World, c: usize, fh: Fh, offset: u64, data: &[u8]) {
    write_as(w, c, fh, offset, data, false);
}

/// A write through an `O_APPEND` file, sent at `offset` (its kernel's
/// idea of the size).
fn append(w: &mut World, c: usize, fh: Fh, offset: u64, data: &[u8]) {
    write_as(w, c, fh, offset, data, true);
}

fn write_as(w: &mut World, c: usize, fh: Fh, offset: u64, data: &[u8], append: bool) {
    // The kernel writes at most 128 KiB at a time.
    for (i, piece) in data.chunks(CHUNK_SIZE).enumerate() {
        let at = offset + (i * CHUNK_SIZE) as u64;
        let r = w.call(
            c,
            Op::Write {
                fh,
                offset: at,
                data: Bytes::copy_from_slice(piece),
                append,
            },
        );
        assert_eq!(r, Ok(Answer::Written(piece.len() as u32)));
    }
}

/// Client 0's kernel reads the root directory from `offset`: the
/// entries, without `.` and `..`.
fn read_root(w: &mut World, offset: u64) -> Vec<DirItem> {
    match w.call(
        0,
        Op::ReadDir {
            ino: Ino::ROOT,
            offset,
        },
    ) {
        Ok(Answer::Dir(items)) => items
            .into_iter()
            .filter(|i| i.name.entry().is_some())
            .collect(),
        other => panic!("readdir: {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn connects_and_answers_repeated_getattrs_from_the_cache() {
    let mut w = world(&[("a", b"hello")], 1);
    assert!(w.clients[0].core.is_ready());
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    assert_eq!(attr.size, 5);
    assert_eq!(attr.kind, FileKind::File);
    let sent = w.clients[0].sent;
    for _ in 0..100 {
        assert!(matches!(
            w.call(0, Op::GetAttr { ino }),
            Ok(Answer::Attr { .. })
        ));
    }
    assert_eq!(w.clients[0].sent, sent, "all hits: nothing sent");
    // Past the 1 s attribute TTL, the next one asks the host again.
    w.run_for(Duration::from_millis(1100));
    w.call(0, Op::GetAttr { ino }).expect("attr");
    assert_eq!(w.clients[0].sent, sent + 1);
}

#[test]
fn missing_names_are_cached_negatively() {
    let mut w = world(&[], 1);
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "nope").err(),
        Some(Errno::NoEnt)
    );
    let sent = w.clients[0].sent;
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "nope").err(),
        Some(Errno::NoEnt)
    );
    assert_eq!(w.clients[0].sent, sent, "negative hit");
    // Creating the name here drops the negative entry at once.
    create(&mut w, 0, "nope");
    assert!(lookup(&mut w, 0, Ino::ROOT, "nope").is_ok());
}

#[test]
fn files_of_every_boundary_size_round_trip() {
    let mut w = world(&[], 2);
    for (i, len) in [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 7,
    ]
    .into_iter()
    .enumerate()
    {
        let n = format!("f{i}");
        let data = pattern(len, i as u8);
        let (_, fh) = create(&mut w, 0, &n);
        write(&mut w, 0, fh, 0, &data);
        assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
        assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
        // Another client opens after the close: it sees the new content.
        let (ino, attr) = lookup(&mut w, 1, Ino::ROOT, &n).expect("lookup");
        assert_eq!(attr.size, len as u64);
        let fh = open(&mut w, 1, ino);
        assert_eq!(read_all(&mut w, 1, fh, len), data, "size {len}");
        w.call(1, Op::Release { fh }).expect("release");
    }
}

#[test]
fn the_writer_reads_its_own_uncommitted_writes() {
    let mut w = world(&[("a", b"0123456789")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open_for_write(&mut w, 0, ino, false);
    write(&mut w, 0, fh, 8, b"XYZ");
    assert_eq!(read_all(&mut w, 0, fh, 11), b"01234567XYZ");
    let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::GetAttr { ino }) else {
        panic!("attr")
    };
    assert_eq!(attr.size, 11, "uncommitted size is visible to the writer");
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("a")])),
        Some(&b"0123456789"[..])
    );
    w.call(0, Op::Fsync { fh }).expect("fsync");
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("a")])),
        Some(&b"01234567XYZ"[..])
    );
}

#[test]
fn a_truncate_through_setattr_commits() {
    let mut w = world(&[("a", b"0123456789")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let set = SetAttr {
        size: Some(3),
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::SetAttr { ino, set }) else {
        panic!("setattr")
    };
    assert_eq!((attr.size, attr.mode), (3, 0o600));
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("a")])),
        Some(&b"012"[..])
    );
}

#[test]
fn a_large_directory_is_listed_completely() {
    let mut w = world(&[], 1);
    for i in 0..1300 {
        let (_, fh) = create(&mut w, 0, &format!("e{i:04}"));
        w.call(0, Op::Release { fh }).expect("release");
    }
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let items = read_root(&mut w, offset);
        if items.is_empty() {
            break;
        }
        // Each answer is bounded (building the rest of a huge listing on
        // every call was quadratic); the kernel takes what fits in its
        // buffer and comes back.
        assert!(items.len() <= super::dispatch::DIR_ITEMS_PER_ANSWER);
        for it in items.iter().take(100) {
            names.push(it.name.clone());
            offset = it.next;
        }
    }
    assert_eq!(names.len(), 1300);
    names.dedup();
    assert_eq!(names.len(), 1300);
}

#[test]
fn an_unlinked_open_file_stays_readable_until_released() {
    let mut w = world(&[("a", b"still here")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open(&mut w, 0, ino);
    assert_eq!(
        w.call(
            0,
            Op::Unlink {
                parent: Ino::ROOT,
                name: name("a")
            }
        ),
        Ok(Answer::Done)
    );
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "a").err(), Some(Errno::NoEnt));
    // Past every TTL, so nothing can come from the cache.
    w.run_for(Duration::from_secs(400));
    assert_eq!(read_all(&mut w, 0, fh, 10), b"still here");
    w.call(0, Op::Release { fh }).expect("release");
    w.forget_all(0, ino);
    assert!(
        w.clients[0].core.vfs().expect("vfs").get(ino).is_none(),
        "freed after release and forget"
    );
}

/// Another client's commit puts a new, shorter version in the place of
/// a file a reader here has open: the reader keeps the old file whole
/// under its inode (the kernel is told only that the name changed, so
/// its size and pages stay the old version's), and the name leads to a
/// new inode with the new version, as on a local disk after a rename
/// over an open file. With one inode for both, the new size cut the old
/// version's read short (`quic_clients::reads_during_the_race`).
#[test]
fn a_file_replaced_while_open_here_keeps_its_old_version_for_the_reader() {
    let old = pattern(5 * CHUNK_SIZE / 2, 1);
    let new = pattern(CHUNK_SIZE, 2);
    let mut w = world(&[("f", &old)], 2);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let reader = open(&mut w, 0, ino);
    replace_from(&mut w, 1, "f", &new);

    assert!(
        !w.clients[0].invalidated.contains(&ino),
        "the reader's inode keeps its size and pages"
    );
    assert_eq!(
        read_all(&mut w, 0, reader, old.len()),
        old,
        "the old version, whole"
    );
    match w.call(0, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => {
            assert_eq!((attr.size, attr.nlink), (old.len() as u64, 0));
        }
        other => panic!("{other:?}"),
    }
    let (now_ino, attr) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    assert_ne!(now_ino, ino, "the name leads to a new inode");
    assert_eq!(attr.size, new.len() as u64);
    let fh = open(&mut w, 0, now_ino);
    assert_eq!(read_all(&mut w, 0, fh, new.len()), new);

    w.call(0, Op::Release { fh: reader }).expect("release");
    // The kernel may still reach the old inode through the name until it
    // drops it: ESTALE makes it look the name up again (ENOENT would
    // fail the open of a file that exists).
    assert_eq!(w.call(0, Op::open(ino)).err(), Some(Errno::Stale));
    assert_eq!(w.call(0, Op::GetAttr { ino }).err(), Some(Errno::Stale));
    w.forget_all(0, ino);
    let vfs = w.clients[0].core.vfs().expect("vfs");
    assert!(vfs.get(ino).is_none(), "the old inode is freed");
    assert_eq!(vfs.ino_of(attr.node), Some(now_ino));
}

/// Client 0, with `a` ("old") open for reading, sends `op(a)`, which
/// reaches the host only after client 1's commit replaced `a` with
/// `new`. Returns the world, `a`'s inode, the reader's handle and
/// client 0's request.
pub(super) fn sent_across_a_replace(
    new: &[u8],
    op: impl FnOnce(Ino) -> Op,
) -> (World, Ino, Fh, Req) {
    let mut w = world(&[("a", b"old")], 2);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let reader = open(&mut w, 0, a);
    w.holding.insert(0);
    let req = w.op(0, op(a));
    w.holding.clear();
    replace_from(&mut w, 1, "a", new);
    w.let_through();
    (w, a, reader, req)
}

/// A file open here only for reading, with an open for writing on its
/// way when another client's commit replaces it, is not set aside: a
/// handle open for writing follows its file, and one made on an inode
/// set aside would write a file this mount no longer follows (review,
/// 2026-12-07). So does an `O_RDONLY|O_TRUNC` open, which truncates.
#[test]
fn an_open_for_writing_on_its_way_keeps_the_inode_following() {
    let open_as = |mode, truncate| {
        move |ino| Op::Open {
            ino,
            mode,
            truncate,
        }
    };
    let (mut w, a, _, truncating) = sent_across_a_replace(b"newer", open_as(OpenFor::Read, true));
    assert!(matches!(w.wait(0, truncating), Ok(Answer::Opened { .. })));
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "a").expect("a").0,
        a,
        "O_TRUNC: not set aside"
    );

    let (mut w, a, _, opening) = sent_across_a_replace(b"newer", open_as(OpenFor::Write, false));
    let Ok(Answer::Opened { fh, .. }) = w.wait(0, opening) else {
        panic!("the open for writing");
    };
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "a").expect("a").0,
        a,
        "not set aside"
    );
    write(&mut w, 0, fh, 0, b"N");
    // The write builds on what its handle opened, not on the reader's
    // older version (which would have the commit refused as stale).
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("a")])),
        Some(&b"Newer"[..])
    );
}

/// A reader set aside keeps the old file through this client's own
/// later commit of the new one: that commit's handles are the new
/// inode's, and the writer builds on the new version, not on the
/// reader's.
#[test]
fn a_reader_set_aside_keeps_the_old_file_through_a_commit_here() {
    let old = pattern(2 * CHUNK_SIZE, 1);
    let mut w = world(&[("f", &old)], 2);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let reader = open(&mut w, 0, ino);
    replace_from(&mut w, 1, "f", b"theirs");
    let (now_ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    assert_ne!(now_ino, ino, "set aside");
    let mine = open_for_write(&mut w, 0, now_ino, false);
    write(&mut w, 0, mine, 0, b"MINE");
    w.call(0, Op::Release { fh: mine })
        .expect("my commit builds on theirs");
    w.settle();
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("f")])),
        Some(&b"MINErs"[..])
    );
    assert_eq!(
        read_all(&mut w, 0, reader, old.len()),
        old,
        "still the old file"
    );
}

/// A file open here for writing is not set aside when replaced: to this
/// client's programs it is written in place (SQLite keeps its database
/// open and would take a file with no links for one moved away), so its
/// handles follow it and read the new version, and a write through one
/// then builds on it.
#[test]
fn a_file_replaced_while_open_here_for_writing_is_followed_in_place() {
    let mut w = world(&[("f", b"old content")], 2);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let mine = open_for_write(&mut w, 0, ino, false);
    replace_from(&mut w, 1, "f", b"new");
    assert!(w.clients[0].invalidated.contains(&ino), "told as before");
    assert_eq!(
        read_all(&mut w, 0, mine, 11),
        b"new",
        "the file as it is now"
    );
    write(&mut w, 0, mine, 0, b"XY");
    w.call(0, Op::Release { fh: mine })
        .expect("commit at close");
    w.settle();
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("f")])),
        Some(&b"XYw"[..])
    );
    let (now_ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    assert_eq!(now_ino, ino);
}

/// Two clients append to one log, each through `O_APPEND` as its kernel
/// sends it (at the size that kernel knows): both lines are in the file,
/// neither over the other, whichever commits first.
#[test]
fn appends_of_two_clients_both_land_at_the_end() {
    let mut w = world(&[("log", b"log\n")], 2);
    let (ino0, _) = lookup(&mut w, 0, Ino::ROOT, "log").expect("log");
    let (ino1, _) = lookup(&mut w, 1, Ino::ROOT, "log").expect("log");
    let first = open_with(&mut w, 0, ino0, OpenFor::Append, false);
    let second = open_with(&mut w, 1, ino1, OpenFor::Append, false);
    // Written before the first commit: made on the version both opened.
    append(&mut w, 1, second, 4, b"second\n");
    append(&mut w, 0, first, 4, b"first\n");
    w.call(0, Op::Release { fh: first }).expect("commit");
    w.settle();
    w.clients[1].invalidated.clear();
    w.call(1, Op::Release { fh: second })
        .expect("appended at the new end, not refused");
    w.settle();
    let p = RelPath::from(vec![name("log")]);
    assert_eq!(w.disk.read_file(&p), Some(&b"log\nfirst\nsecond\n"[..]));
    assert!(
        w.clients[1].invalidated.contains(&ino1),
        "its kernel wrote the line elsewhere: told to drop the inode"
    );
    // Opened and written after the other's commit, at the size its
    // kernel still had (an open tells the kernel no size): the client
    // puts it at the end it knows.
    let again = open_with(&mut w, 0, ino0, OpenFor::Append, false);
    append(&mut w, 0, again, 17, b"third\n");
    w.call(0, Op::Release { fh: again }).expect("commit");
    w.settle();
    let other = open_with(&mut w, 1, ino1, OpenFor::Append, false);
    append(&mut w, 1, other, 17, b"fourth\n");
    w.call(1, Op::Release { fh: other }).expect("commit");
    w.settle();
    assert_eq!(
        w.disk.read_file(&p),
        Some(&b"log\nfirst\nsecond\nthird\nfourth\n"[..])
    );
}

/// An append transaction that also writes below the end it appended
/// to builds on content it saw: if the file moved on meanwhile, it is
/// refused as any stale rewrite, and the other client's line survives.
#[test]
fn a_rewrite_mixed_with_appends_is_still_refused_when_stale() {
    let mut w = world(&[("log", b"log\n")], 2);
    let (ino0, _) = lookup(&mut w, 0, Ino::ROOT, "log").expect("log");
    let (ino1, _) = lookup(&mut w, 1, Ino::ROOT, "log").expect("log");
    let first = open_with(&mut w, 0, ino0, OpenFor::Append, false);
    let second = open_for_write(&mut w, 1, ino1, false);
    write(&mut w, 1, second, 0, b"LOG\n");
    append(&mut w, 0, first, 4, b"first\n");
    w.call(0, Op::Release { fh: first }).expect("commit");
    w.settle();
    assert_eq!(w.call(1, Op::Release { fh: second }), Err(Errno::Stale));
    w.settle();
    let p = RelPath::from(vec![name("log")]);
    assert_eq!(w.disk.read_file(&p), Some(&b"log\nfirst\n"[..]));
}

/// Client 1 appends to a log, through `O_APPEND`, more than one whole
/// write holds, after client 0's line committed: its transaction begins
/// at the version client 1 opened, and the host moves it past "first".
/// Gives the world, client 1's inode and handle, and the end it wrote
/// to.
fn append_moved_after_it_began() -> (World, Ino, Fh, u64) {
    let mut w = world(&[("log", b"log\n")], 2);
    let (ino0, _) = lookup(&mut w, 0, Ino::ROOT, "log").expect("log");
    let (ino1, _) = lookup(&mut w, 1, Ino::ROOT, "log").expect("log");
    let first = open_with(&mut w, 0, ino0, OpenFor::Append, false);
    let second = open_with(&mut w, 1, ino1, OpenFor::Append, false);
    append(&mut w, 0, first, 4, b"first\n");
    w.call(0, Op::Release { fh: first }).expect("commit");
    w.settle();
    let big = pattern(crate::proto::MAX_WRITE_PIECE + 1, 7);
    append(&mut w, 1, second, 4, &big);
    w.settle();
    (w, ino1, second, 4 + big.len() as u64)
}

/// The same when the rewrite comes after the append transaction began:
/// the host moved it to the end of the other client's commit, and would
/// have moved the rewrite with it, away from where the program wrote it
/// (fs_sim, seed 16895). It is refused; the other client's line
/// survives.
#[test]
fn a_rewrite_after_a_moved_append_began_is_refused() {
    let (mut w, _, second, end) = append_moved_after_it_began();
    write(&mut w, 1, second, end + 10, b"tail");
    assert_eq!(w.call(1, Op::Release { fh: second }), Err(Errno::Stale));
    w.settle();
    let p = RelPath::from(vec![name("log")]);
    assert_eq!(w.disk.read_file(&p), Some(&b"log\nfirst\n"[..]));
}

/// The same when the size is set, even to the size the file has
/// (`ftruncate(fd, st_size)`, found in review): that is no append
/// either, and is refused.
#[test]
fn a_size_set_after_a_moved_append_began_is_refused() {
    let (mut w, ino1, _, end) = append_moved_after_it_began();
    let same_size = Op::SetAttr {
        ino: ino1,
        set: SetAttr {
            size: Some(end),
            ..SetAttr::default()
        },
    };
    // Refused as soon as the host sees it: the transaction was moved.
    assert_eq!(w.call(1, same_size), Err(Errno::Stale));
    w.settle();
    let p = RelPath::from(vec![name("log")]);
    assert_eq!(w.disk.read_file(&p), Some(&b"log\nfirst\n"[..]));
}

/// A range zeroed through an `O_APPEND` file (`fallocate`) is zeroed in
/// place: only a program's own writes go to the end.
#[test]
fn a_range_zeroed_through_an_append_file_stays_in_place() {
    let mut w = world(&[("log", b"abcdefgh")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "log").expect("log");
    let fh = open_with(&mut w, 0, ino, OpenFor::Append, false);
    let zeroed = w.call(
        0,
        Op::Allocate {
            fh,
            offset: 2,
            length: 3,
            how: crate::client::Allocate::ZeroRange { keep_size: true },
        },
    );
    assert_eq!(zeroed, Ok(Answer::Done));
    append(&mut w, 0, fh, 8, b"!");
    w.call(0, Op::Release { fh }).expect("commit");
    w.settle();
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("log")])),
        Some(&b"ab\0\0\0fgh!"[..])
    );
}

/// A file written and kept open while more files than the host
/// remembers whole writes for are written and closed: its own whole
/// write, sent last, is not taken for an old one sent again.
#[test]
fn a_file_kept_open_past_many_whole_writes_still_commits() {
    // Without directory leases: files made under one are streamed with
    // their creates, not written whole.
    let cfg = ClientConfig {
        leases: false,
        ..ClientConfig::default()
    };
    let mut w = World::new(7, disk(&[]), 1, HostConfig::default(), cfg);
    let (_, first) = create(&mut w, 0, "first");
    write(&mut w, 0, first, 0, b"kept open");
    for i in 0..80 {
        let (_, fh) = create(&mut w, 0, &format!("f{i}"));
        write(&mut w, 0, fh, 0, b"small");
        w.call(0, Op::Release { fh }).expect("commit");
    }
    w.settle();
    w.call(0, Op::Release { fh: first })
        .expect("committed, not refused as a repeat");
    w.settle();
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("first")])),
        Some(&b"kept open"[..])
    );
}

#[test]
fn rename_over_an_existing_file_replaces_it() {
    let mut w = world(&[("a", b"AAA"), ("b", b"BBB")], 2);
    let (b_ino, _) = lookup(&mut w, 1, Ino::ROOT, "b").expect("b");
    lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let r = w.call(
        0,
        Op::Rename {
            parent: Ino::ROOT,
            name: name("a"),
            new_parent: Ino::ROOT,
            new_name: name("b"),
        },
    );
    assert_eq!(r, Ok(Answer::Done));
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "b").expect("b");
    assert_eq!(attr.size, 3);
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 3), b"AAA");
    assert!(w.clients[1].invalidations > 0, "the other client was told");
    assert!(w.clients[1].core.vfs().expect("vfs").node(b_ino).is_none());
}

#[test]
fn of_two_writers_of_one_version_the_first_commits_and_the_second_is_told() {
    let mut w = world(&[("f", b"")], 2);
    let a = pattern(3 * CHUNK_SIZE, 1);
    let b = pattern(3 * CHUNK_SIZE, 2);
    let (ia, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let (ib, _) = lookup(&mut w, 1, Ino::ROOT, "f").expect("f");
    let fa = open_for_write(&mut w, 0, ia, false);
    let fb = open_for_write(&mut w, 1, ib, false);
    // Interleave the writes, then close both at once.
    for i in 0..3 {
        let s = i * CHUNK_SIZE;
        write(&mut w, 0, fa, s as u64, &a[s..s + CHUNK_SIZE]);
        write(&mut w, 1, fb, s as u64, &b[s..s + CHUNK_SIZE]);
    }
    let ra = w.op(
        0,
        Op::Flush {
            fh: fa,
            owner: None,
        },
    );
    let rb = w.op(
        1,
        Op::Flush {
            fh: fb,
            owner: None,
        },
    );
    let (da, db) = (w.wait(0, ra), w.wait(1, rb));
    let on_disk = w
        .disk
        .read_file(&RelPath::from(vec![name("f")]))
        .expect("f")
        .to_vec();
    // Both wrote to the version they opened: the first commit wins, and
    // the second, whose writes build on a version that is gone, is told
    // (ESTALE) instead of being laid over the first.
    match (da, db) {
        (Ok(Answer::Done), Err(Errno::Stale)) => assert!(on_disk == a, "a's whole version"),
        (Err(Errno::Stale), Ok(Answer::Done)) => assert!(on_disk == b, "b's whole version"),
        other => panic!("one commit and one ESTALE, not {other:?}"),
    }
}

#[test]
fn a_change_on_the_host_reaches_the_client() {
    let mut w = world(&[("a", b"old")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 3), b"old");
    w.call(0, Op::Release { fh }).expect("release");
    // A local program rewrites the file on the host.
    let p = RelPath::from(vec![name("a")]);
    w.disk.set_time(crate::proto::Timestamp {
        secs: 100,
        nanos: 0,
    });
    w.disk.local_replace(&p, b"new!").expect("a local save");
    let now = w.now;
    w.host.local_change(now, &p);
    w.settle();
    assert!(w.clients[0].invalidations > 0);
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    assert_eq!(attr.size, 4);
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 4), b"new!");
}

#[test]
fn the_mount_survives_a_host_restart_and_keeps_acknowledged_data() {
    let mut w = world(&[], 1);
    let (_, fh) = create(&mut w, 0, "kept");
    write(&mut w, 0, fh, 0, b"acknowledged");
    // Durable once fsync says so (a close only makes it visible).
    assert_eq!(w.call(0, Op::Fsync { fh }), Ok(Answer::Done));
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "kept").expect("kept");
    w.crash_host();
    // While the host is down, an uncached request waits (a while:
    // `unreachable_wait`)…
    let req = w.op(0, Op::Statfs);
    w.run_for(Duration::from_millis(500));
    assert_eq!(w.answer(0, req), None, "waiting, not failed");
    w.restart_host();
    // …and is answered after the reconnect.
    assert!(matches!(w.wait(0, req), Ok(Answer::StatFs(_))));
    assert!(w.clients[0].core.is_ready());
    // The same inode works again (re-bound by path).
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 12), b"acknowledged");
}

/// Given up on the host: what the cache holds still answers; anything
/// else brings the next try forward, waits for it at most
/// `unreachable_wait`, and fails (ETIMEDOUT, or ENOTCONN when the try
/// fails first); with no tries left (a refused ticket, or redial off) it
/// fails at once with ENOTCONN.
#[test]
fn a_mount_that_cannot_reconnect_answers_from_its_cache() {
    for redial in [true, false] {
        let mut w = world(&[("a", b"x")], 1);
        if !redial {
            w.clients[0].core.cfg.redial = None;
        }
        let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
        w.crash_host();
        // Five attempts with backoff: 1+2+4+8+16 s plus connect timeouts.
        w.run_for(Duration::from_secs(120));
        assert!(!w.clients[0].core.is_ready());
        let attr = w.call(0, Op::GetAttr { ino });
        assert!(
            matches!(attr, Ok(Answer::Attr { ref attr, .. }) if attr.size == 1),
            "redial {redial}: the cached attributes: {attr:?}"
        );
        let (ino2, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a cached lookup");
        assert_eq!(ino2, ino);
        let start = w.now;
        let statfs = w.call(0, Op::Statfs).err();
        if redial {
            // The try ends at the connect timeout, 10 s, as the wait does.
            assert!(
                matches!(statfs, Some(Errno::TimedOut | Errno::NotConn)),
                "{statfs:?}"
            );
            let waited = w.now - start;
            let limit = ClientConfig::default().unreachable_wait;
            assert!(
                waited <= limit,
                "failed after {waited:?}, not within {limit:?}"
            );
        } else {
            assert_eq!(statfs, Some(Errno::NotConn));
            assert_eq!(w.now, start, "at once");
        }
    }
}

/// A mount outlives a host that is down for longer than the connection
/// machine's retries: given up, it answers ENOTCONN at once, tries again
/// every `redial`, and is whole again once the host is back.
#[test]
fn a_mount_that_gave_up_redials_until_the_host_is_back() {
    let mut w = world(&[("a", b"x")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    w.crash_host();
    w.run_for(Duration::from_secs(120));
    let redial = ClientConfig::default().redial.expect("on by default");
    let gave_up = |e: &ClientEvent| {
        matches!(
            e,
            ClientEvent::Disconnected {
                reason: DisconnectReason::RetriesExhausted,
                redial_in: Some(d),
            } if *d == redial
        )
    };
    assert!(
        w.clients[0].events.iter().any(gave_up),
        "{:?}",
        w.clients[0].events
    );
    // Down for an hour: every redial fails and says so again.
    w.run_for(Duration::from_secs(3600));
    let tries = w.clients[0]
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Disconnected {
                    redial_in: Some(_),
                    ..
                }
            )
        })
        .count();
    assert!(
        tries >= 3600 / (redial.as_secs() as usize + 10),
        "{tries} redials in an hour"
    );
    assert!(!w.clients[0].core.is_ready());
    w.restart_host();
    w.run_for(redial + Duration::from_secs(11));
    assert!(
        w.clients[0].core.is_ready(),
        "{:?}",
        w.clients[0].events.last()
    );
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 1), b"x");
}

#[test]
fn a_crashed_client_releases_its_locks_at_the_host() {
    let mut w = world(&[("f", b"")], 2);
    // The ordinary path's steps are what this checks.
    for c in &mut w.clients {
        c.core.cfg.write.whole_writes = false;
    }
    let (i0, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let f0 = open_for_write(&mut w, 0, i0, false);
    write(&mut w, 0, f0, 0, b"never committed");
    w.settle();
    assert_eq!(w.host.locks().len(), 1, "client 0 holds the write lock");
    w.crash_client(0);
    let (i1, _) = lookup(&mut w, 1, Ino::ROOT, "f").expect("f");
    let f1 = open_for_write(&mut w, 1, i1, false);
    write(&mut w, 1, f1, 0, b"second");
    // The lock frees when client 0's session grace ends; the flush waits.
    assert_eq!(
        w.call(
            1,
            Op::Flush {
                fh: f1,
                owner: None
            }
        ),
        Ok(Answer::Done)
    );
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("f")])),
        Some(&b"second"[..])
    );
}

#[test]
fn symlinks_round_trip_and_are_not_followed() {
    let mut w = world(&[], 1);
    let r = w.call(
        0,
        Op::Symlink {
            parent: Ino::ROOT,
            name: name("l"),
            target: b"../../etc/passwd".to_vec(),
            caller: None,
        },
    );
    let Ok(Answer::Entry { ino, attr, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(attr.kind, FileKind::Symlink);
    assert_eq!(
        w.call(0, Op::Readlink { ino }),
        Ok(Answer::Link(b"../../etc/passwd".to_vec()))
    );
    assert_eq!(w.call(0, Op::open(ino)).err(), Some(Errno::Loop));
}

#[test]
fn mkdir_rmdir_and_errno_behaviour() {
    let mut w = world(&[("f", b"x")], 1);
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
        panic!("{r:?}")
    };
    assert_eq!(
        w.call(
            0,
            Op::Mkdir {
                parent: Ino::ROOT,
                name: name("d"),
                mode: 0o755,
                caller: None,
            }
        )
        .err(),
        Some(Errno::Exist)
    );
    let Ok(Answer::Created { fh, .. }) = w.call(
        0,
        Op::Create {
            parent: d,
            name: name("x"),
            mode: 0o644,
            exclusive: false,
            truncate: false,
            caller: None,
        },
    ) else {
        panic!("create")
    };
    w.call(0, Op::Release { fh }).expect("release");
    assert_eq!(
        w.call(
            0,
            Op::Rmdir {
                parent: Ino::ROOT,
                name: name("d")
            }
        )
        .err(),
        Some(Errno::NotEmpty)
    );
    assert_eq!(
        w.call(
            0,
            Op::Unlink {
                parent: Ino::ROOT,
                name: name("d")
            }
        )
        .err(),
        Some(Errno::IsDir)
    );
    assert_eq!(
        w.call(
            0,
            Op::Rmdir {
                parent: Ino::ROOT,
                name: name("f")
            }
        )
        .err(),
        Some(Errno::NotDir)
    );
    assert_eq!(
        w.call(
            0,
            Op::Unlink {
                parent: d,
                name: name("x")
            }
        ),
        Ok(Answer::Done)
    );
    assert_eq!(
        w.call(
            0,
            Op::Rmdir {
                parent: Ino::ROOT,
                name: name("d")
            }
        ),
        Ok(Answer::Done)
    );
    assert_eq!(lookup(&mut w, 0, Ino::ROOT, "d").err(), Some(Errno::NoEnt));
}

#[test]
fn a_resumed_session_revalidates_its_cache_and_locks() {
    let mut w = world(&[("a", b"0123")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open_for_write(&mut w, 0, ino, false);
    write(&mut w, 0, fh, 0, b"AB");
    w.settle();
    // A short partition: the session survives at the host (grace period).
    w.partition(0);
    w.heal();
    w.run_for(Duration::from_secs(3));
    assert!(w.clients[0].core.is_ready());
    let sent = w.clients[0].sent;
    // Nothing cached is trusted after a reconnect: getattr asks the host.
    w.call(0, Op::GetAttr { ino }).expect("attr");
    assert!(w.clients[0].sent > sent);
    // The transaction (and its lock) survived: the commit succeeds.
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("a")])),
        Some(&b"AB23"[..])
    );
}

/// A move to a better path keeps the session, its transaction and lock:
/// the request in flight is answered over the old path, the one asked
/// meanwhile waits and goes over the new one, and nothing is sent twice.
#[test]
fn a_move_to_a_new_path_loses_and_repeats_nothing() {
    let mut w = world(&[("a", b"0123"), ("b", b"4567")], 1);
    // The ordinary path's steps are what this checks.
    for c in &mut w.clients {
        c.core.cfg.write.whole_writes = false;
    }
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open_for_write(&mut w, 0, a, false);
    write(&mut w, 0, fh, 0, b"AB");
    w.settle();
    let sent = w.clients[0].sent;
    // In flight when the move starts: a lookup nobody has cached.
    let first = w.op(
        0,
        Op::Lookup {
            parent: Ino::ROOT,
            name: name("b"),
        },
    );
    w.move_path(0);
    let second = w.op(0, Op::GetAttr { ino: a });
    assert_eq!(
        w.clients[0].sent,
        sent + 1,
        "the getattr waits for the move"
    );
    assert!(matches!(w.wait(0, first), Ok(Answer::Entry { .. })));
    assert!(matches!(w.wait(0, second), Ok(Answer::Attr { .. })));
    w.settle();
    assert_eq!(w.path_moves, 1);
    // The lookup, the Hello on the new path, the getattr: nothing twice.
    assert_eq!(w.clients[0].sent, sent + 3);
    assert!(
        w.clients[0]
            .events
            .contains(&ClientEvent::Moved { resumed: true }),
        "{:?}",
        w.clients[0].events
    );
    assert!(!w.clients[0].events.contains(&ClientEvent::Lost));
    // The transaction (and its lock) moved along: the commit succeeds.
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("a")])),
        Some(&b"AB23"[..])
    );
}

/// A request the host is slow to answer does not hold the others back
/// for long, and is not sent twice: the move waits for a quiet moment.
#[test]
fn a_move_waits_for_a_slow_answer_without_holding_requests_back() {
    let mut w = world(&[("a", b"0123")], 1);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    w.settle();
    // Everything toward the host is lost for a while: the lookup below
    // stays in flight past the move's drain.
    w.silence(0);
    let slow = w.op(
        0,
        Op::Lookup {
            parent: Ino::ROOT,
            name: name("slow"),
        },
    );
    w.move_path(0);
    let held = w.op(0, Op::GetAttr { ino: a });
    let sent = w.clients[0].sent;
    w.run_for(MOVE_DRAIN + Duration::from_millis(1));
    assert!(
        w.clients[0].sent > sent,
        "held requests go out once the drain is given up"
    );
    w.heal();
    let _ = w.wait(0, slow);
    let _ = w.wait(0, held);
    w.run_for(Duration::from_secs(60));
    assert!(w.clients[0].core.is_ready());
}

/// On a real disk, unlinking a file moves its ctime (its link count
/// changed), so the host reports a new version for the very same bytes.
/// The orphan has no name to refresh its attributes through: its reads
/// must still succeed (they used to fail with ESTALE).
#[test]
fn an_unlinked_open_file_stays_readable_when_its_ctime_moves() {
    let data: Vec<u8> = (0..CHUNK_SIZE * 2 + 17).map(|i| (i % 251) as u8).collect();
    let mut w = world(&[("a", &data)], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open(&mut w, 0, ino);
    w.disk.set_time(crate::proto::Timestamp {
        secs: 100,
        nanos: 0,
    });
    assert_eq!(
        w.call(
            0,
            Op::Unlink {
                parent: Ino::ROOT,
                name: name("a")
            }
        ),
        Ok(Answer::Done)
    );
    w.run_for(Duration::from_secs(400));
    // fstat(2) on the open descriptor (programs size their reads by it).
    match w.call(0, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => {
            assert_eq!((attr.size, attr.nlink), (data.len() as u64, 0));
        }
        other => panic!("getattr of an open unlinked file: {other:?}"),
    }
    assert_eq!(read_all(&mut w, 0, fh, data.len()), data);
    w.call(0, Op::Release { fh }).expect("release");
}

/// `O_EXCL` reaches the host: the kernel asks only when its cache says the
/// name is free, and another client may have taken it since.
#[test]
fn an_exclusive_create_of_an_existing_name_fails_with_eexist() {
    let mut w = world(&[("a", b"kept")], 1);
    let exclusive = Op::Create {
        parent: Ino::ROOT,
        name: name("a"),
        mode: 0o644,
        exclusive: true,
        truncate: false,
        caller: None,
    };
    assert_eq!(w.call(0, exclusive), Err(Errno::Exist));
    let (_, fh) = create(&mut w, 0, "a");
    assert_eq!(read_all(&mut w, 0, fh, 4), b"kept");
}

/// A lost host gives a clear error within `request_timeout`, not a hang
/// until the connection machine gives up (which, with connect timeouts,
/// takes longer); what is cached is still served meanwhile.
#[test]
fn a_lost_host_fails_requests_within_the_request_timeout() {
    let mut w = world(&[("a", b"aaaa"), ("b", b"bbbb")], 1);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    w.crash_host();
    let attr = w.call(0, Op::GetAttr { ino: a });
    assert!(matches!(attr, Ok(Answer::Attr { .. })), "cached: {attr:?}");
    let asked = w.now;
    let miss = w.call(
        0,
        Op::Lookup {
            parent: Ino::ROOT,
            name: name("b"),
        },
    );
    assert_eq!(miss, Err(Errno::TimedOut));
    let timeout = ClientConfig::default().request_timeout;
    assert!(
        w.now.saturating_duration_since(asked) <= timeout + Duration::from_secs(1),
        "answered after {:?}",
        w.now.saturating_duration_since(asked)
    );
}

/// A readdirplus entry is a lookup reference the kernel takes (the shell
/// says which entries fit in its buffer); its forget gives it back, and
/// the number is free again only then.
#[test]
fn readdirplus_entries_are_counted_lookups() {
    let mut w = world(&[("a", b"1"), ("b", b"2")], 1);
    let items = read_root(&mut w, 0);
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i.ttl == ClientConfig::default().cache.attr_ttl)
    );
    let a = items[0].ino;
    let nlookup = |w: &World, ino| {
        w.clients[0]
            .core
            .vfs
            .as_ref()
            .and_then(|v| v.get(ino))
            .map(|i| i.nlookup)
    };
    assert_eq!(
        nlookup(&w, a),
        Some(0),
        "a listing alone takes no reference"
    );
    w.clients[0].core.kernel_took(a);
    assert_eq!(nlookup(&w, a), Some(1));
    w.clients[0].core.forget(a, 1);
    assert_eq!(nlookup(&w, a), None, "forgotten and freed");
}

/// A small file's bytes come with its open: reading it asks the host for
/// nothing more.
#[test]
fn a_small_file_is_read_with_its_open() {
    let small: &[u8] = b"twelve bytes";
    let mut w = world(&[("small", small)], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "small").expect("lookup");
    w.record_fs = true;
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, small.len()), small);
    let ops: Vec<&FsOp> = w.fs_log.iter().map(|r| &r.op).collect();
    assert!(matches!(&ops[..], [FsOp::Open { .. }]), "{ops:?}");
}

/// A write that outgrew `keep_acked` no longer holds its acknowledged
/// bytes: the writer reading them back first commits (once), then reads
/// the committed file, and sees exactly what it wrote.
#[test]
fn reading_back_bytes_only_the_host_holds_commits_first() {
    let mut cfg = ClientConfig::default();
    cfg.write.keep_acked = 0;
    let mut w = World::new(7, disk(&[]), 1, HostConfig::default(), cfg);
    // The ordinary path's steps are what this checks.
    for c in &mut w.clients {
        c.core.cfg.write.whole_writes = false;
    }
    let (_, fh) = create(&mut w, 0, "f");
    let data = pattern(3 * CHUNK_SIZE + 5, 3);
    write(&mut w, 0, fh, 0, &data);
    w.settle();
    w.record_fs = true;
    assert_eq!(read_all(&mut w, 0, fh, data.len()), data);
    let commits = w
        .fs_log
        .iter()
        .filter(|r| matches!(r.op, FsOp::StageCommit { .. }))
        .count();
    assert_eq!(commits, 1, "the read committed the staged bytes first");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    let path = RelPath::from(vec![name("f")]);
    assert_eq!(w.disk.read_file(&path), Some(&data[..]));
}

/// A write longer than the buffer waits for the host's acknowledgements
/// instead of committing midway: one commit for the whole file, so the
/// host never copies the file into a second staging copy.
#[test]
fn a_long_write_is_one_transaction() {
    let mut cfg = ClientConfig::default();
    cfg.write.max_dirty = 2 * CHUNK_SIZE;
    cfg.write.keep_acked = CHUNK_SIZE;
    let mut w = World::new(7, disk(&[]), 1, HostConfig::default(), cfg);
    let (_, fh) = create(&mut w, 0, "f");
    w.record_fs = true;
    // Acknowledgements take a while, so the writes outrun them.
    w.max_delay = Duration::from_millis(5);
    let data = pattern(10 * CHUNK_SIZE + 3, 9);
    // All at once, as the kernel does: most find the buffer full.
    let reqs: Vec<(Req, usize)> = data
        .chunks(CHUNK_SIZE)
        .enumerate()
        .map(|(i, piece)| {
            let op = Op::Write {
                fh,
                offset: (i * CHUNK_SIZE) as u64,
                data: Bytes::copy_from_slice(piece),
                append: false,
            };
            (w.op(0, op), piece.len())
        })
        .collect();
    for (req, len) in reqs {
        assert_eq!(w.wait(0, req), Ok(Answer::Written(len as u32)));
    }
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    let count = |w: &World, f: fn(&FsOp) -> bool| w.fs_log.iter().filter(|r| f(&r.op)).count();
    assert_eq!(count(&w, |o| matches!(o, FsOp::StageBegin { .. })), 1);
    assert_eq!(count(&w, |o| matches!(o, FsOp::StageCommit { .. })), 1);
    let path = RelPath::from(vec![name("f")]);
    assert_eq!(w.disk.read_file(&path), Some(&data[..]));
}

// ----- open-ahead -------------------------------------------------------

/// A folder of `n` small files `f00`, `f01`, …, listed by client 0 the way
/// `find` or `ls` lists it; returns the files' inodes in listing order.
fn listed_world(n: usize, clients: usize) -> (World, Vec<Ino>) {
    let names: Vec<String> = (0..n).map(|i| format!("f{i:02}")).collect();
    let data: Vec<Vec<u8>> = (0..n).map(content).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let mut w = world(&files, clients);
    // readdirplus: every entry comes with its inode, as `find` gets them.
    let inos = read_root(&mut w, 0).iter().map(|it| it.ino).collect();
    w.record_fs = true;
    (w, inos)
}

/// Time a program spends between files in these tests: long enough for
/// the simulated wire (at most 5 ms each way) to answer, far shorter than
/// the attribute TTL.
const THINK: Duration = Duration::from_millis(20);

/// The content of file `i` of a [`listed_world`].
fn content(i: usize) -> Vec<u8> {
    pattern(100 + i, i as u8)
}

/// [`cat`] of file `i` of a [`listed_world`].
fn cat_nth(w: &mut World, inos: &[Ino], i: usize) -> bool {
    cat(w, inos[i], &content(i))
}

/// Host opens and closes recorded since `listed_world`.
fn host_opens_and_closes(w: &World) -> (usize, usize) {
    let count = |f: fn(&FsOp) -> bool| w.fs_log.iter().filter(|r| f(&r.op)).count();
    (
        count(|o| matches!(o, FsOp::Open { .. })),
        count(|o| matches!(o, FsOp::Close { .. })),
    )
}

/// Opens, reads and closes `ino` like `cat`; whether the open was answered
/// within the call (no round trip).
fn cat(w: &mut World, ino: Ino, want: &[u8]) -> bool {
    let req = w.op(0, Op::open(ino));
    let at_once = w.answer(0, req);
    let answered_at_once = at_once.is_some();
    let fh = match at_once.unwrap_or_else(|| w.wait(0, req)) {
        Ok(Answer::Opened { fh, .. }) => fh,
        other => panic!("{other:?}"),
    };
    assert_eq!(read_all(w, 0, fh, want.len()), want);
    w.call(0, Op::Release { fh }).expect("release");
    answered_at_once
}

#[test]
fn a_sweep_through_a_listing_is_answered_from_open_aheads() {
    let (mut w, inos) = listed_world(20, 1);
    let mut at_once = Vec::new();
    for (i, &ino) in inos.iter().enumerate() {
        at_once.push(cat(&mut w, ino, &content(i)));
        // The program's own time between files: the open-aheads arrive.
        w.run_for(THINK);
    }
    // The first two opens make the sweep; every later one was opened
    // ahead and answered without a round trip.
    assert_eq!(at_once[..2], [false, false]);
    assert!(at_once[2..].iter().all(|&a| a), "{at_once:?}");
    // Each file was opened at the host once, and every handle closed.
    w.run_for(Duration::from_secs(2));
    assert_eq!(host_opens_and_closes(&w), (20, 20));
}

#[test]
fn an_open_that_comes_while_its_open_ahead_is_in_flight_joins_it() {
    let (mut w, inos) = listed_world(10, 1);
    cat_nth(&mut w, &inos, 0);
    // f01's open sends the open-aheads; f02's comes before any answer.
    let first = w.op(0, Op::open(inos[1]));
    let second = w.op(0, Op::open(inos[2]));
    assert_eq!(w.answer(0, second), None, "not answered before the host");
    for (req, i) in [(first, 1), (second, 2)] {
        let Ok(Answer::Opened { fh, .. }) = w.wait(0, req) else {
            panic!("open f{i:02}")
        };
        assert_eq!(read_all(&mut w, 0, fh, 100 + i), content(i));
        w.call(0, Op::Release { fh }).expect("release");
    }
    w.run_for(Duration::from_secs(2));
    let (opens, closes) = host_opens_and_closes(&w);
    assert_eq!(opens, closes, "every handle closed");
    // f00, f01, then the window f02..f09: f02's open joined its
    // open-ahead instead of opening the file a second time.
    assert_eq!(opens, 10);
}

#[test]
fn a_single_open_opens_nothing_ahead() {
    let (mut w, inos) = listed_world(10, 1);
    cat_nth(&mut w, &inos, 4);
    cat_nth(&mut w, &inos, 0);
    w.run_for(Duration::from_secs(2));
    assert_eq!(host_opens_and_closes(&w), (2, 2));
}

#[test]
fn unused_open_aheads_are_closed_when_they_expire() {
    let (mut w, inos) = listed_world(10, 1);
    cat_nth(&mut w, &inos, 0);
    cat_nth(&mut w, &inos, 1);
    w.run_for(THINK);
    assert_eq!(host_opens_and_closes(&w), (10, 2), "f02..f09 opened ahead");
    // Past the attribute TTL an open-ahead no longer stands for an open.
    w.run_for(Duration::from_millis(1100));
    assert_eq!(host_opens_and_closes(&w), (10, 10));
    assert!(!cat_nth(&mut w, &inos, 2), "asked the host");
}

#[test]
fn a_file_changed_after_its_open_ahead_is_read_as_it_is_now() {
    let (mut w, inos) = listed_world(10, 2);
    cat_nth(&mut w, &inos, 0);
    cat_nth(&mut w, &inos, 1);
    w.run_for(THINK);
    // Another client rewrites f02 (opened ahead by client 0) and closes.
    let (ino, _) = lookup(&mut w, 1, Ino::ROOT, "f02").expect("f02");
    let fh = open_for_write(&mut w, 1, ino, false);
    write(&mut w, 1, fh, 0, b"new content");
    assert_eq!(w.call(1, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    w.call(1, Op::Release { fh }).expect("release");
    w.run_for(THINK);
    let mut want = content(2);
    want[..11].copy_from_slice(b"new content");
    // The host's invalidation spoiled the open-ahead: the open asks.
    assert!(!cat(&mut w, inos[2], &want));
    // The others still stand.
    assert!(cat_nth(&mut w, &inos, 3));
}

#[test]
fn open_aheads_do_not_outlive_the_host_session() {
    let (mut w, inos) = listed_world(10, 1);
    cat_nth(&mut w, &inos, 0);
    cat_nth(&mut w, &inos, 1);
    w.run_for(THINK);
    let answered = w.now;
    w.crash_host();
    w.restart_host();
    assert!(matches!(w.call(0, Op::Statfs), Ok(Answer::StatFs(_))));
    assert!(
        w.now < answered + Duration::from_secs(1),
        "reconnected while the open-aheads were still fresh"
    );
    // Their handles died with the session: the open asks the new host.
    assert!(!cat_nth(&mut w, &inos, 2));
    assert!(!cat_nth(&mut w, &inos, 3));
}

/// A partition the connection does not notice (inside QUIC's idle
/// timeout): a request that meets silence probes the host, and after
/// `unreachable_after` the cache answers what it holds, past its TTL (a
/// lookup, the file's attributes, an open and the reads of a file it
/// holds whole, a listing), while what it cannot answer fails with
/// ETIMEDOUT within `unreachable_wait`, not the request timeout. Once the
/// host answers again, so does everything else, at once.
#[test]
fn a_silent_partition_is_answered_from_the_cache_then_healed() {
    let cfg = ClientConfig::default();
    let mut w = world(&[("a", b"cached"), ("b", b"never read")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 6), b"cached");
    w.call(0, Op::Release { fh }).expect("release");
    assert!(matches!(
        w.call(
            0,
            Op::ReadDir {
                ino: Ino::ROOT,
                offset: 0
            }
        ),
        Ok(Answer::Dir(_))
    ));
    // Everything cached is past its TTL when the partition starts.
    w.run_for(Duration::from_secs(60));
    w.silence(0);
    let start = w.now;
    let (again, attr) = lookup(&mut w, 0, Ino::ROOT, "a").expect("the cached entry");
    assert_eq!((again, attr.size), (ino, 6));
    let waited = w.now - start;
    assert!(
        waited >= cfg.unreachable_after && waited <= cfg.unreachable_after + Duration::from_secs(1),
        "answered once the host was found unreachable, after {waited:?}"
    );
    assert!(
        w.clients[0].events.contains(&ClientEvent::Unreachable),
        "{:?}",
        w.clients[0].events
    );
    // From now on at once, from the cache.
    let start = w.now;
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 6), b"cached");
    w.call(0, Op::Release { fh }).expect("release");
    assert!(matches!(
        w.call(0, Op::GetAttr { ino }),
        Ok(Answer::Attr { .. })
    ));
    assert!(matches!(
        w.call(
            0,
            Op::ReadDir {
                ino: Ino::ROOT,
                offset: 0
            }
        ),
        Ok(Answer::Dir(_))
    ));
    assert_eq!(w.now, start, "the cache answered at once");
    // What it does not hold fails, within `unreachable_wait`.
    let (b, _) = lookup(&mut w, 0, Ino::ROOT, "b").expect("listed, so cached");
    let start = w.now;
    let opened = w.call(0, Op::open(b));
    assert_eq!(
        opened.err(),
        Some(Errno::TimedOut),
        "b's bytes were never read"
    );
    assert!(w.now - start <= cfg.unreachable_wait);
    let created = w.call(
        0,
        Op::Create {
            parent: Ino::ROOT,
            name: name("new"),
            mode: 0o644,
            exclusive: false,
            truncate: false,
            caller: None,
        },
    );
    assert_eq!(created.err(), Some(Errno::TimedOut));
    // Healed: the next request goes to the host and is answered.
    w.heal();
    let start = w.now;
    let fh = open(&mut w, 0, b);
    assert_eq!(read_all(&mut w, 0, fh, 10), b"never read");
    assert!(w.now - start < Duration::from_secs(1), "at once");
    assert!(w.clients[0].events.contains(&ClientEvent::Reachable));
}

/// fsync answers only once the host's disk has what it covers; a close
/// answers once the commit is applied (docs/filesystem.md,
/// "Durability").
#[test]
fn an_fsync_answers_once_the_hosts_disk_has_the_commit() {
    let mut w = world(&[], 1);
    let (_, fh) = create(&mut w, 0, "f");
    write(&mut w, 0, fh, 0, b"data");
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("f")])),
        Some(&b"data"[..]),
        "visible"
    );
    assert!(w.disk.unsynced() > 0, "not yet durable");
    assert_eq!(w.call(0, Op::Fsync { fh }), Ok(Answer::Done));
    assert_eq!(w.disk.unsynced(), 0, "durable when fsync answers");
}

/// A commit applied by a host run that crashed before syncing it may be
/// gone: the handle it was made through says so once (EIO), as a local
/// disk's failed writeback would, instead of a silent success.
#[test]
fn a_commit_a_host_crash_may_have_lost_is_reported_once() {
    let mut w = world(&[("f", b"old")], 1);
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let fh = open_for_write(&mut w, 0, ino, false);
    write(&mut w, 0, fh, 0, b"new");
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    w.crash_host();
    w.restart_host();
    w.run_for(Duration::from_secs(40));
    assert!(w.clients[0].core.is_ready());
    assert_eq!(w.call(0, Op::Fsync { fh }), Err(Errno::Io));
    assert_ne!(
        w.call(0, Op::Fsync { fh }),
        Err(Errno::Io),
        "reported once, not forever"
    );
}

/// `copy_file_range` within the mount runs on the host: the copied bytes
/// never travel, and the destination's writes before and after the copy
/// land in the order they were made.
#[test]
fn a_copy_runs_on_the_host_in_order_with_the_writes_around_it() {
    let src: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = world(&[("src", &src)], 1);
    w.record_fs = true;
    let (sino, _) = lookup(&mut w, 0, Ino::ROOT, "src").expect("src");
    let sfh = open(&mut w, 0, sino);
    let (_, dfh) = create(&mut w, 0, "dst");
    write(&mut w, 0, dfh, 0, &[b'a'; 20]); // partly replaced by the copy
    let copy = Op::CopyRange {
        fh_in: sfh,
        offset_in: 5,
        fh_out: dfh,
        offset_out: 10,
        len: 1 << 40, // to the end of the source
    };
    let n = src.len() - 5;
    assert_eq!(w.call(0, copy), Ok(Answer::Written(n as u32)));
    write(&mut w, 0, dfh, 100, b"after"); // lands over the copy
    let mut want = vec![b'a'; 10];
    want.extend_from_slice(&src[5..]);
    want[100..105].copy_from_slice(b"after");
    // The writer reads what it made (the copied bytes are only on the
    // host, so this commits first).
    assert!(
        read_all(&mut w, 0, dfh, want.len() + 1) == want,
        "read back"
    );
    assert_eq!(w.call(0, Op::Release { fh: dfh }), Ok(Answer::Done));
    assert!(
        w.disk.read_file(&RelPath::from(vec![name("dst")])) == Some(&want[..]),
        "on the host's disk"
    );
    let (mut written, mut copied) = (0, 0);
    for r in &w.fs_log {
        match &r.op {
            FsOp::StageWrite { data, .. } => written += data.len(),
            FsOp::StageCopy { len, .. } => copied += *len as usize,
            _ => {}
        }
    }
    assert_eq!(
        written,
        10 + 5,
        "only the bytes written crossed the network"
    );
    assert_eq!(copied, n, "the rest the host copied");
}

/// The host can copy only what it holds: from a file with uncommitted
/// writes of this mount, the kernel is told to copy through reads and
/// writes itself.
#[test]
fn a_copy_from_a_file_with_uncommitted_writes_is_left_to_the_kernel() {
    let mut w = world(&[("src", b"0123456789")], 1);
    let (sino, _) = lookup(&mut w, 0, Ino::ROOT, "src").expect("src");
    let sfh = open_for_write(&mut w, 0, sino, false);
    write(&mut w, 0, sfh, 0, b"X");
    let (_, dfh) = create(&mut w, 0, "dst");
    let copy = Op::CopyRange {
        fh_in: sfh,
        offset_in: 0,
        fh_out: dfh,
        offset_out: 0,
        len: 10,
    };
    assert_eq!(w.call(0, copy), Err(Errno::NotSup));
}

/// A small file written and closed costs one request for its content
/// (a whole write), not a lock, a begin, a piece, a commit and a release.
#[test]
fn a_small_write_commits_in_one_request() {
    let mut w = world(&[], 1);
    let (_, fh) = create(&mut w, 0, "small");
    write(&mut w, 0, fh, 0, &[7; 512]);
    write(&mut w, 0, fh, 512, &[8; 512]);
    let before = w.clients[0].sent;
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    // The whole write, and the close of the host handle the commit left
    // on the old file (sent without waiting for it).
    assert_eq!(w.clients[0].sent - before, 2, "one round trip");
    let mut want = vec![7; 512];
    want.extend_from_slice(&[8; 512]);
    assert!(w.disk.read_file(&RelPath::from(vec![name("small")])) == Some(&want[..]));
    // A large one goes the ordinary way.
    write(&mut w, 0, fh, 0, &vec![9; 2 << 20]);
    let before = w.clients[0].sent;
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert!(
        w.clients[0].sent - before > 3,
        "locked, begun, pieces, committed"
    );
}

/// A small write to a file another client has locked waits for the lock
/// as any write does (the host's EBUSY is not the writer's answer).
#[test]
fn a_small_write_to_a_locked_file_waits_for_the_lock() {
    let mut w = world(&[("f", b"old")], 2);
    let (ino1, _) = lookup(&mut w, 1, Ino::ROOT, "f").expect("f");
    let fh1 = open_for_write(&mut w, 1, ino1, false);
    write(&mut w, 1, fh1, 0, &vec![1; 2 << 20]); // locks: large
    w.run_for(Duration::from_millis(100));
    let (ino0, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let fh0 = open_for_write(&mut w, 0, ino0, false);
    write(&mut w, 0, fh0, 0, b"mine");
    let flush = w.op(
        0,
        Op::Flush {
            fh: fh0,
            owner: None,
        },
    );
    w.run_for(Duration::from_millis(500));
    assert_eq!(w.answer(0, flush), None, "waiting for the other's lock");
    assert_eq!(w.call(1, Op::Release { fh: fh1 }), Ok(Answer::Done));
    // Then it runs; the other's commit replaced the version it wrote to.
    assert_eq!(w.wait(0, flush), Err(Errno::Stale));
}

/// Times and mode set on a file being written are answered at once and
/// reach the host with the commit, applied after the last byte: `tar`,
/// `cp -p` and `rsync` pay no round trip for them.
#[test]
fn times_and_mode_set_while_writing_go_with_the_commit() {
    let mut w = world(&[], 1);
    let (ino, fh) = create(&mut w, 0, "f");
    write(&mut w, 0, fh, 0, b"hello");
    let at = crate::proto::Timestamp {
        secs: 1_600_000_000,
        nanos: 7,
    };
    let set = SetAttr {
        size: None,
        mode: Some(0o600),
        atime: None,
        mtime: Some(SetTime::At(at)),
        uid: None,
        gid: None,
    };
    w.record_fs = true;
    let req = w.op(0, Op::SetAttr { ino, set });
    let Some(Ok(Answer::Attr { attr, .. })) = w.answer(0, req) else {
        panic!("not answered at once");
    };
    assert_eq!((attr.size, attr.mode & 0o7777, attr.mtime), (5, 0o600, at));
    let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::GetAttr { ino }) else {
        panic!("getattr");
    };
    assert_eq!(
        (attr.mode & 0o7777, attr.mtime),
        (0o600, at),
        "stat sees them"
    );
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    w.settle();
    let ops: Vec<&FsOp> = w.fs_log.iter().map(|r| &r.op).collect();
    assert!(
        !ops.iter().any(|o| matches!(o, FsOp::SetAttr { .. })),
        "no separate SetAttr: {ops:?}"
    );
    let path = RelPath::from(vec![name("f")]);
    assert_eq!(w.disk.read_file(&path), Some(&b"hello"[..]));
    let Ok(crate::host::FsOk::Attr(a)) = w.disk.execute(FsOp::Stat { path }) else {
        panic!("stat on the host");
    };
    assert_eq!((a.mode, a.mtime, a.size), (0o600, at, 5));
}

/// A time of "now" is the host's clock: it is set after the commit, as
/// before, not guessed by the client.
#[test]
fn a_time_of_now_set_while_writing_waits_for_the_commit() {
    let mut w = world(&[], 1);
    let (ino, fh) = create(&mut w, 0, "f");
    write(&mut w, 0, fh, 0, b"hello");
    let set = SetAttr {
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    w.record_fs = true;
    let req = w.op(0, Op::SetAttr { ino, set });
    assert_eq!(w.answer(0, req), None, "not answered before the host");
    assert!(matches!(w.wait(0, req), Ok(Answer::Attr { .. })));
    let ops: Vec<&FsOp> = w.fs_log.iter().map(|r| &r.op).collect();
    let at = |f: fn(&FsOp) -> bool| ops.iter().position(|o| f(o));
    let commit = at(|o| matches!(o, FsOp::StageCommit { .. }));
    let set = at(|o| matches!(o, FsOp::SetAttr { .. }));
    assert!(commit.is_some() && set > commit, "{ops:?}");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
}

/// A truncating open empties the file at its commit, which waits for the
/// release (the kernel sends it after `close` returns); until then a
/// `stat` shows the times moved, as a local disk's truncation would
/// (pjdfstest's `open::open_trunc`).
#[test]
fn a_truncating_open_moves_the_times_before_its_commit() {
    let mut w = world(&[("f", b"data")], 1);
    let stat = |w: &mut World, ino: Ino| match w.call(0, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => attr,
        other => panic!("{other:?}"),
    };
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "f").expect("f");
    let before = stat(&mut w, ino);
    w.run_for(Duration::from_secs(1));
    let fh = open_for_write(&mut w, 0, ino, true);
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    let open = stat(&mut w, ino);
    assert_eq!(open.size, 0);
    assert!(open.mtime > before.mtime, "{open:?} after {before:?}");
    assert!(open.ctime > before.ctime, "{open:?} after {before:?}");
    assert_eq!(stat(&mut w, ino), open, "the same until the commit");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    w.settle();
    let committed = stat(&mut w, ino);
    assert_eq!(committed.size, 0);
    assert!(committed.mtime > before.mtime && committed.ctime > before.ctime);
}

/// The host's watcher reports the host's own changes back like anyone
/// else's (the simulated world does too): the writer hears nothing of
/// its own create, write and close, while a local program's change right
/// after them is announced.
#[test]
fn the_hosts_own_changes_are_not_announced_again() {
    let mut w = world(&[], 1);
    let (_, fh) = create(&mut w, 0, "f");
    write(&mut w, 0, fh, 0, b"hello");
    assert_eq!(w.call(0, Op::Flush { fh, owner: None }), Ok(Answer::Done));
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    w.settle();
    // The commit's rename moved the directory's times, and the client
    // tells its kernel so itself; nothing else comes back.
    assert_eq!(w.clients[0].invalidated, vec![Ino::ROOT]);
    assert_eq!(w.clients[0].invalidations, 1, "own changes came back");
    let path = RelPath::from(vec![name("f")]);
    w.disk.local_replace(&path, b"local").expect("local save");
    w.local_change(path);
    w.settle();
    assert!(w.clients[0].invalidations > 0, "a local save went unseen");
}

/// In a directory this client made, and in one whose listing it holds,
/// its own creates keep the listing whole: the lookup of a new name (what
/// every create begins with) is answered without asking the host, while a
/// name another client creates there is found.
#[test]
fn lookups_of_new_names_in_a_fresh_listing_need_no_round_trip() {
    let mut w = world(&[], 2);
    let dir = match w.call(
        0,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: name("d"),
            mode: 0o755,
            caller: None,
        },
    ) {
        Ok(Answer::Entry { ino, .. }) => ino,
        other => panic!("mkdir: {other:?}"),
    };
    let lookup_now = |w: &mut World, n: &str| {
        let req = w.op(
            0,
            Op::Lookup {
                parent: dir,
                name: name(n),
            },
        );
        w.answer(0, req)
    };
    assert_eq!(
        lookup_now(&mut w, "a"),
        Some(Err(Errno::NoEnt)),
        "empty since made"
    );
    let fh = match w.call(
        0,
        Op::Create {
            parent: dir,
            name: name("a"),
            mode: 0o644,
            exclusive: true,
            truncate: false,
            caller: None,
        },
    ) {
        Ok(Answer::Created { fh, .. }) => fh,
        other => panic!("create: {other:?}"),
    };
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    assert_eq!(
        lookup_now(&mut w, "b"),
        Some(Err(Errno::NoEnt)),
        "b is still new"
    );
    assert!(
        lookup(&mut w, 0, dir, "a").is_ok(),
        "its own create is listed"
    );
    // Another client creates "c" there: the host tells the first.
    let (dir1, _) = lookup(&mut w, 1, Ino::ROOT, "d").expect("d");
    match w.call(
        1,
        Op::Create {
            parent: dir1,
            name: name("c"),
            mode: 0o644,
            exclusive: true,
            truncate: false,
            caller: None,
        },
    ) {
        Ok(Answer::Created { .. }) => {}
        other => panic!("create elsewhere: {other:?}"),
    }
    w.settle();
    assert!(
        lookup(&mut w, 0, dir, "c").is_ok(),
        "another's create is found"
    );
}

mod leases;
mod links;
mod locks;
mod owners;
mod xattrs;

/// Every listing starts with `.` and `..`, as a local disk's: `ls -a`
/// shows them and programs that walk trees expect them.
#[test]
fn listings_start_with_dot_and_dot_dot() {
    let mut w = world(&[("a", b"1")], 1);
    let Ok(Answer::Entry { ino: d, .. }) = w.call(
        0,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: name("d"),
            mode: 0o755,
            caller: None,
        },
    ) else {
        panic!("mkdir")
    };
    create(&mut w, 0, "x");
    let list = |w: &mut World, ino, offset| match w.call(0, Op::ReadDir { ino, offset }) {
        Ok(Answer::Dir(items)) => items
            .iter()
            .map(|i| {
                (
                    String::from_utf8_lossy(i.name.as_bytes()).into_owned(),
                    i.ino,
                    i.next,
                )
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let root = list(&mut w, Ino::ROOT, 0);
    assert_eq!(root[0], (".".to_owned(), Ino::ROOT, 1));
    assert_eq!(
        root[1],
        ("..".to_owned(), Ino::ROOT, 2),
        "the root is its own parent"
    );
    let names: Vec<&str> = root.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names, [".", "..", "a", "d", "x"]);
    let sub = list(&mut w, d, 0);
    assert_eq!(
        sub,
        [(".".to_owned(), d, 1), ("..".to_owned(), Ino::ROOT, 2)],
        "an empty directory lists only its dots"
    );
    // The kernel comes back from any offset it was given.
    let from_one: Vec<String> = list(&mut w, Ino::ROOT, 1)
        .into_iter()
        .map(|(n, ..)| n)
        .collect();
    assert_eq!(from_one, ["..", "a", "d", "x"]);
    let from_three: Vec<String> = list(&mut w, Ino::ROOT, 3)
        .into_iter()
        .map(|(n, ..)| n)
        .collect();
    assert_eq!(from_three, ["d", "x"]);
    assert!(list(&mut w, Ino::ROOT, 5).is_empty(), "past the end");
}

/// `mknod` makes FIFOs and sockets' names on the host as what they are
/// (the kernel opens them locally); they are listed, looked up and
/// removed as any name.
#[test]
fn fifos_and_sockets_are_made_as_what_they_are() {
    let mut w = world(&[], 1);
    for (n, kind) in [("pipe", FileKind::Fifo), ("sock", FileKind::Socket)] {
        let r = w.call(
            0,
            Op::Mknod {
                parent: Ino::ROOT,
                name: name(n),
                kind,
                mode: 0o640,
                rdev: 0,
                caller: None,
            },
        );
        let Ok(Answer::Entry { attr, .. }) = r else {
            panic!("mknod {n}: {r:?}")
        };
        assert_eq!((attr.kind, attr.mode & 0o7777, attr.size), (kind, 0o640, 0));
        let (_, found) = lookup(&mut w, 0, Ino::ROOT, n).expect("found");
        assert_eq!(found.kind, kind);
    }
    let r = w.call(
        0,
        Op::Mknod {
            parent: Ino::ROOT,
            name: name("d"),
            kind: FileKind::Dir,
            mode: 0o755,
            rdev: 0,
            caller: None,
        },
    );
    assert_eq!(r, Err(Errno::Inval), "mknod makes no directory");
    w.call(
        0,
        Op::Unlink {
            parent: Ino::ROOT,
            name: name("pipe"),
        },
    )
    .expect("unlink the FIFO");
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "pipe").err(),
        Some(Errno::NoEnt)
    );
}

#[test]
fn fallocate_changes_size_and_zeros_as_its_mode_says() {
    use super::Allocate;
    let mut w = world(&[], 1);
    let (ino, fh) = create(&mut w, 0, "f");
    write(&mut w, 0, fh, 0, b"0123456789");
    let alloc = |w: &mut World, offset: u64, length: u64, how: Allocate| {
        w.call(
            0,
            Op::Allocate {
                fh,
                offset,
                length,
                how,
            },
        )
    };
    let size = |w: &mut World| match w.call(0, Op::GetAttr { ino }) {
        Ok(Answer::Attr { attr, .. }) => attr.size,
        other => panic!("{other:?}"),
    };
    // posix_fallocate: grows the file, never shrinks it.
    assert_eq!(alloc(&mut w, 4, 16, Allocate::Extend), Ok(Answer::Done));
    assert_eq!(size(&mut w), 20);
    assert_eq!(alloc(&mut w, 0, 5, Allocate::Extend), Ok(Answer::Done));
    assert_eq!(size(&mut w), 20);
    assert_eq!(alloc(&mut w, 0, 100, Allocate::KeepSize), Ok(Answer::Done));
    assert_eq!(size(&mut w), 20);
    // A hole reads as zeros; the size stays, even past the end.
    assert_eq!(alloc(&mut w, 2, 3, Allocate::PunchHole), Ok(Answer::Done));
    assert_eq!(
        alloc(&mut w, 8, 50, Allocate::ZeroRange { keep_size: true }),
        Ok(Answer::Done)
    );
    assert_eq!(size(&mut w), 20);
    assert_eq!(
        alloc(&mut w, 25, 5, Allocate::ZeroRange { keep_size: false }),
        Ok(Answer::Done)
    );
    assert_eq!(size(&mut w), 30);
    assert_eq!(alloc(&mut w, 0, 0, Allocate::Extend), Err(Errno::Inval));
    assert_eq!(
        alloc(&mut w, 0, 1 << 30, Allocate::ZeroRange { keep_size: false }),
        Err(Errno::NotSup),
        "zeros too many to write"
    );
    // A hole is cut to the file's end: a large one in a small file is
    // a few zeros.
    assert_eq!(
        alloc(&mut w, 29, 1 << 30, Allocate::PunchHole),
        Ok(Answer::Done)
    );
    let mut want = b"01\0\0\x00567".to_vec();
    want.resize(30, 0);
    assert_eq!(read_all(&mut w, 0, fh, 30), want);
    w.call(0, Op::Release { fh }).expect("closed");
    w.settle();
    assert_eq!(
        w.disk.read_file(&RelPath::from(vec![name("f")])),
        Some(&want[..])
    );
}
