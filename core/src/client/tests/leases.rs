//! Directory leases: creates answered without a round trip, applied in
//! order, recalled for other clients, refused names reported late.

use super::*;

fn leasing(clients: usize) -> World {
    leasing_with(
        disk(&[("old", b"here before")]),
        clients,
        HostConfig::default(),
    )
}

/// A world whose clients take directory leases, over `disk` and `host`.
fn leasing_with(disk: MemFs, clients: usize, host: HostConfig) -> World {
    let client = ClientConfig {
        leases: true,
        ..ClientConfig::default()
    };
    World::new(7, disk, clients, host, client)
}

fn create_in(w: &mut World, c: usize, n: &str) -> Result<(Ino, Fh), Errno> {
    create_at(w, c, Ino::ROOT, n)
}

fn create_at(w: &mut World, c: usize, parent: Ino, n: &str) -> Result<(Ino, Fh), Errno> {
    match w.call(
        c,
        Op::Create {
            parent,
            name: name(n),
            mode: 0o640,
            exclusive: true,
            truncate: false,
            caller: None,
        },
    )? {
        Answer::Created { ino, fh, .. } => Ok((ino, fh)),
        other => panic!("{other:?}"),
    }
}

/// Writes `data` to a new file and closes it, as `tar` does.
fn save(w: &mut World, c: usize, n: &str, data: &[u8]) -> Result<Ino, Errno> {
    save_at(w, c, Ino::ROOT, n, data)
}

fn save_at(w: &mut World, c: usize, parent: Ino, n: &str, data: &[u8]) -> Result<Ino, Errno> {
    let (ino, fh) = create_at(w, c, parent, n)?;
    write(w, c, fh, 0, data);
    let at = SetTime::At(crate::proto::Timestamp {
        secs: 1_600_000_000,
        nanos: 0,
    });
    w.call(
        c,
        Op::SetAttr {
            ino,
            set: SetAttr {
                mtime: Some(at),
                ..SetAttr::default()
            },
        },
    )?;
    w.call(c, Op::Flush { fh, owner: None })?;
    w.call(c, Op::Release { fh })?;
    Ok(ino)
}

/// A directory made by client 0 (leased with it, see `lease_with_mkdir`).
fn mkdir_at(w: &mut World, parent: Ino, n: &str) -> Ino {
    let made = w.call(
        0,
        Op::Mkdir {
            parent,
            name: name(n),
            mode: 0o755,
            caller: None,
        },
    );
    match made {
        Ok(Answer::Entry { ino, .. }) => ino,
        other => panic!("mkdir {n}: {other:?}"),
    }
}

fn on_disk(w: &World, n: &str) -> Option<Vec<u8>> {
    w.disk
        .read_file(&RelPath::from(vec![name(n)]))
        .map(<[u8]>::to_vec)
}

/// Files saved until the client holds a lease (the first two go the
/// ordinary way and earn it).
fn warm_up(w: &mut World) {
    save(w, 0, "w1", b"1").expect("w1");
    save(w, 0, "w2", b"2").expect("w2");
    w.settle();
    assert_eq!(w.host.leases(), 1, "two creates earn a lease");
}

#[test]
fn creates_in_a_leased_directory_need_no_round_trip_and_arrive_whole() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let sent = w.clients[0].sent;
    for i in 0..20 {
        // A lookup of the new name is answered too (ENOENT).
        assert_eq!(
            lookup(&mut w, 0, Ino::ROOT, &format!("f{i}")).map(|_| ()),
            Err(Errno::NoEnt)
        );
        save(&mut w, 0, &format!("f{i}"), &pattern(1000 + i, i as u8)).expect("saved");
    }
    let during = w.clients[0].sent - sent;
    assert!(during < 20, "{during} requests for 20 files: batched");
    w.settle();
    for i in 0..20 {
        assert_eq!(
            on_disk(&w, &format!("f{i}")),
            Some(pattern(1000 + i, i as u8)),
            "f{i}"
        );
    }
    assert_eq!(w.clients[0].core.unapplied(), 0);
    // The file is the node the client gave it: its attributes now are
    // the host's, its content reads back.
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "f3").expect("f3");
    assert_eq!(
        (attr.size, attr.mode & 0o7777, attr.mtime.secs),
        (1003, 0o640, 1_600_000_000)
    );
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 1003), pattern(1003, 3));
}

#[test]
fn a_tree_of_more_directories_than_leases_gets_a_lease_in_each() {
    let mut w = leasing(1);
    // As tar unpacks a tree: a directory, its files, the next directory;
    // none of them idle long enough for its lease to be given back.
    for d in 0..40 {
        let dir = mkdir_at(&mut w, Ino::ROOT, &format!("d{d}"));
        for i in 0..2 {
            save_at(&mut w, 0, dir, &format!("w{i}"), b"w").expect("earns the lease");
        }
        // Time for the grant and the listing, far from the idle timeout.
        w.run_for(Duration::from_millis(50));
        let sent = w.clients[0].sent;
        for i in 0..10 {
            save_at(&mut w, 0, dir, &format!("f{i}"), b"f").expect("saved");
        }
        let during = w.clients[0].sent - sent;
        assert!(during < 10, "directory {d}: {during} requests for 10 files");
    }
    w.settle();
    assert!(w.host.leases() <= 16, "{} leases held", w.host.leases());
    let f = RelPath::from(vec![name("d39"), name("f9")]);
    assert_eq!(
        w.disk.read_file(&f).map(<[u8]>::to_vec),
        Some(b"f".to_vec())
    );
}

/// A file saved under a lease reaches the host as one create, no commit
/// renames anything over it, and the kernel dropped the directory's
/// attributes itself when it sent the create: telling it again per file
/// cost the mount a thread wake-up and a system call each (an untar's
/// 10,000 of them).
#[test]
fn a_file_saved_under_a_lease_tells_the_kernel_nothing_more() {
    let mut w = leasing(1);
    warm_up(&mut w);
    w.clients[0].invalidated.clear();
    for i in 0..5 {
        save(&mut w, 0, &format!("f{i}"), b"x").expect("saved");
    }
    w.settle();
    assert_eq!(on_disk(&w, "f4"), Some(b"x".to_vec()));
    assert_eq!(w.clients[0].invalidated, vec![], "nothing to tell");
    // A file of the host's rewritten here is a commit: its rename moved
    // the directory's times, which the kernel learns from the mount.
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "old").expect("old");
    let fh = open_for_write(&mut w, 0, ino, false);
    write(&mut w, 0, fh, 0, b"new");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    w.settle();
    assert!(w.clients[0].invalidated.contains(&Ino::ROOT));
}

/// A directory made here comes with its lease: its first files need no
/// round trip either (tar makes a directory, then fills it), and the
/// lease none of its own (no `Lease`, no listing: the mkdir brings it).
#[test]
fn a_directory_made_here_is_leased_with_its_mkdir() {
    let mut w = leasing(1);
    let sent = w.clients[0].sent;
    let dir = mkdir_at(&mut w, Ino::ROOT, "d");
    assert_eq!(w.host.leases(), 1, "leased with the mkdir's answer");
    for i in 0..5 {
        save_at(&mut w, 0, dir, &format!("f{i}"), b"f").expect("saved");
    }
    let during = w.clients[0].sent - sent;
    assert!(
        during <= 2,
        "{during} requests for a directory and 5 files: the mkdir and one batch"
    );
    w.settle();
    let f = RelPath::from(vec![name("d"), name("f0")]);
    assert_eq!(
        w.disk.read_file(&f).map(<[u8]>::to_vec),
        Some(b"f".to_vec())
    );
}

/// A file made here shows the host's times from its first `stat`: its
/// `stat` waits for the host to apply it, and the kernel is not given
/// the client's guess to keep. Shown, the guess would jump to the host's
/// times when the file is applied, as if a program had changed them
/// (pjdfstest's `utimensat::utime_omit` saw exactly that).
#[test]
fn a_stat_of_a_file_made_here_shows_the_hosts_times_from_the_first() {
    let mut w = leasing(1);
    warm_up(&mut w);
    w.run_for(Duration::from_millis(1));
    let (ino, fh) = create_in(&mut w, 0, "t").expect("made here");
    // While it is open (`cp` stats the file it is about to write), at
    // once: its times move with its writes anyway.
    let open = w.op(0, Op::GetAttr { ino });
    assert!(w.answer(0, open).is_some(), "answered here while open");
    assert_eq!(w.call(0, Op::Release { fh }), Ok(Answer::Done));
    let req = w.op(0, Op::GetAttr { ino });
    assert_eq!(w.answer(0, req), None, "waits for the host once closed");
    let Ok(Answer::Attr { attr: first, .. }) = w.wait(0, req) else {
        panic!("attributes");
    };
    let on_host = match w.disk.execute(crate::host::FsOp::Stat {
        path: RelPath::from(vec![name("t")]),
    }) {
        Ok(crate::host::FsOk::Attr(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!((first.mtime, first.ctime), (on_host.mtime, on_host.ctime));
    w.settle();
    let Ok(Answer::Attr { attr: later, .. }) = w.call(0, Op::GetAttr { ino }) else {
        panic!("attributes");
    };
    assert_eq!((later.mtime, later.ctime), (first.mtime, first.ctime));
}

#[test]
fn an_exclusive_create_of_a_name_there_is_eexist_without_asking() {
    let mut w = leasing(1);
    warm_up(&mut w);
    save(&mut w, 0, "mine", b"x").expect("made here");
    assert_eq!(create_in(&mut w, 0, "mine").map(|_| ()), Err(Errno::Exist));
    assert_eq!(create_in(&mut w, 0, "old").map(|_| ()), Err(Errno::Exist));
    w.settle();
    assert_eq!(on_disk(&w, "mine"), Some(b"x".to_vec()));
}

#[test]
fn another_client_sees_every_closed_file_the_holder_answered() {
    let mut w = leasing(2);
    warm_up(&mut w);
    for i in 0..10 {
        save(&mut w, 0, &format!("n{i}"), &[i as u8; 100]).expect("saved");
    }
    // Close-to-open across clients: the other client's lookup recalls the
    // lease, which sends what is left first.
    for i in 0..10 {
        let (ino, attr) = lookup(&mut w, 1, Ino::ROOT, &format!("n{i}")).expect("seen");
        assert_eq!(attr.size, 100);
        let fh = open(&mut w, 1, ino);
        assert_eq!(read_all(&mut w, 1, fh, 100), vec![i as u8; 100]);
    }
    w.settle();
    assert_eq!(w.host.leases(), 0, "recalled and given back");
    // The holder goes on the ordinary way, and earns a lease again.
    save(&mut w, 0, "after", b"a").expect("after");
    assert_eq!(on_disk(&w, "after"), Some(b"a".to_vec()));
}

#[test]
fn an_fsync_answers_once_the_file_is_applied_and_durable() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let (_, fh) = create_in(&mut w, 0, "sync-me").expect("created");
    write(&mut w, 0, fh, 0, b"durable");
    assert_eq!(w.call(0, Op::Fsync { fh }), Ok(Answer::Done));
    let mut crashed = w.disk.clone();
    crashed.crash(0);
    assert_eq!(
        crashed.read_file(&RelPath::from(vec![name("sync-me")])),
        Some(&b"durable"[..])
    );
    // Its later writes go the ordinary way.
    write(&mut w, 0, fh, 7, b"!");
    w.call(0, Op::Release { fh }).expect("closed");
    w.settle();
    assert_eq!(on_disk(&w, "sync-me"), Some(b"durable!".to_vec()));
}

#[test]
fn a_file_read_or_reopened_before_it_is_applied_waits_for_it() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let ino = save(&mut w, 0, "back", &pattern(3000, 9)).expect("saved");
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 3000), pattern(3000, 9));
    // A second handle while the first is still writing.
    let (ino2, fh2) = create_in(&mut w, 0, "two-handles").expect("created");
    write(&mut w, 0, fh2, 0, b"first");
    let fh3 = open(&mut w, 0, ino2);
    w.call(0, Op::Release { fh: fh2 }).expect("closed");
    assert_eq!(read_all(&mut w, 0, fh3, 5), b"first".to_vec());
    w.call(0, Op::Release { fh: fh3 }).expect("closed");
    // An empty file, never written (`touch`).
    let (_, fh4) = create_in(&mut w, 0, "empty").expect("created");
    w.call(0, Op::Release { fh: fh4 }).expect("closed");
    w.run_for(Duration::from_secs(3));
    assert_eq!(on_disk(&w, "empty"), Some(Vec::new()));
    assert_eq!(w.host.leases(), 0, "idle, given back");
}

#[test]
fn a_name_a_host_program_took_is_reported_at_the_next_close() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let (_, fh) = create_in(&mut w, 0, "clash").expect("created here");
    write(&mut w, 0, fh, 0, b"client");
    // A program on the host makes the same name (and the watcher's
    // report recalls the lease).
    w.disk
        .local_replace(&RelPath::from(vec![name("clash")]), b"host")
        .expect("local");
    w.local_change(RelPath::from(vec![name("clash")]));
    w.settle();
    let flushed = w.call(0, Op::Flush { fh, owner: None });
    let closed = w.call(0, Op::Release { fh });
    assert!(
        flushed.is_err() || closed.is_err(),
        "flush {flushed:?}, close {closed:?}: the loss is reported"
    );
    assert_eq!(
        on_disk(&w, "clash"),
        Some(b"host".to_vec()),
        "never overwritten"
    );
}

#[test]
fn a_refused_file_with_no_handle_left_is_an_event() {
    let mut w = leasing(1);
    warm_up(&mut w);
    // The host's disk fills: the batch is refused after the close was
    // answered.
    w.disk.set_capacity(Some(w.disk.used()));
    save(&mut w, 0, "too-big", &[1; 4096]).expect("answered here");
    w.settle();
    assert!(
        w.clients[0].events.iter().any(|e| matches!(
            e,
            ClientEvent::CreateLost {
                errno: Errno::NoSpc,
                ..
            }
        )),
        "{:?}",
        w.clients[0].events
    );
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "too-big").map(|_| ()),
        Err(Errno::NoEnt),
        "the name is forgotten"
    );
}

/// `tar` sets a file's times through its descriptor before closing it;
/// however long after its create that comes, the times reach the host.
#[test]
fn times_set_before_the_close_reach_the_host_whenever_they_come() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let at = crate::proto::Timestamp {
        secs: 1_600_000_000,
        nanos: 0,
    };
    for i in 0..15 {
        let (ino, fh) = create_in(&mut w, 0, &format!("s{i}")).expect("created");
        write(&mut w, 0, fh, 0, &[1; 1024]);
        // Past the attribute ttl for the later ones.
        w.run_for(Duration::from_millis(150 * i));
        let set = SetAttr {
            mtime: Some(SetTime::At(at)),
            ..SetAttr::default()
        };
        let r = w.call(0, Op::SetAttr { ino, set });
        assert!(r.is_ok(), "{i}: {r:?}");
        w.call(0, Op::Flush { fh, owner: None }).expect("flush");
        w.call(0, Op::Release { fh }).expect("release");
    }
    w.settle();
    for i in 0..15 {
        let path = RelPath::from(vec![name(&format!("s{i}"))]);
        match w.disk.execute(FsOp::Stat { path }) {
            Ok(crate::host::FsOk::Attr(a)) => assert_eq!(a.mtime, at, "s{i}"),
            other => panic!("s{i}: {other:?}"),
        }
    }
}

/// Names this client makes while its lease's listing is being read count
/// as there, whatever the listing says: an exclusive create of one of
/// them is EEXIST.
#[test]
fn a_name_made_while_the_lease_was_taken_is_not_made_again() {
    let mut w = leasing(1);
    save(&mut w, 0, "w1", b"1").expect("w1");
    save(&mut w, 0, "w2", b"2").expect("w2");
    // The lease is being asked for and its listing read: these go the
    // ordinary way, racing the listing at the host.
    for n in ["r1", "r2", "r3"] {
        save(&mut w, 0, n, b"r").expect("made");
    }
    w.settle();
    for n in ["w1", "w2", "r1", "r2", "r3"] {
        assert_eq!(
            create_in(&mut w, 0, n).map(|_| ()),
            Err(Errno::Exist),
            "{n}"
        );
    }
}

/// A listing shows what a getattr would: a file made and written under
/// the lease has its written size in a readdirplus answer, also before
/// the host applied it (the kernel takes an entry's size as the file's:
/// a stale 0 made a file read back empty, quic_e2e's `quic_mount`).
#[test]
fn a_listing_shows_the_size_of_files_written_here() {
    let mut w = leasing(1);
    let list = |w: &mut World| {
        w.call(
            0,
            Op::ReadDir {
                ino: Ino::ROOT,
                offset: 0,
            },
        )
    };
    let data: Vec<Vec<u8>> = (0..6).map(|i| vec![b'x'; 10 + i]).collect();
    for (i, d) in data.iter().enumerate() {
        // Listed between files, as `ls` in another window would: the
        // listing is cached, and the next files join it.
        list(&mut w).expect("readdir");
        save(&mut w, 0, &format!("f{i}"), d).expect("save");
    }
    let Ok(Answer::Dir(items)) = w.call(
        0,
        Op::ReadDir {
            ino: Ino::ROOT,
            offset: 0,
        },
    ) else {
        panic!("readdir")
    };
    for (i, d) in data.iter().enumerate() {
        let n = format!("f{i}");
        let item = items
            .iter()
            .find(|it| it.name.as_bytes() == n.as_bytes())
            .unwrap_or_else(|| panic!("{n} listed: {items:?}"));
        assert_eq!(item.attr.size, d.len() as u64, "{n}'s size as listed");
    }
}

fn unlink(w: &mut World, c: usize, parent: Ino, n: &str) -> Result<Answer, Errno> {
    w.call(
        c,
        Op::Unlink {
            parent,
            name: name(n),
        },
    )
}

#[test]
fn unlinks_in_a_leased_directory_need_no_round_trip_and_reach_the_host() {
    let names: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let mut w = leasing_with(disk(&files), 2, HostConfig::default());
    // `rm` looks each name up first (the kernel does).
    for n in &names {
        lookup(&mut w, 0, Ino::ROOT, n).expect("there");
    }
    // Two unlinks the ordinary way earn a lease.
    for n in &names[..2] {
        assert_eq!(unlink(&mut w, 0, Ino::ROOT, n), Ok(Answer::Done));
    }
    w.settle();
    assert_eq!(w.host.leases(), 1, "two unlinks earn a lease");
    let sent = w.clients[0].sent;
    for n in &names[2..] {
        assert_eq!(unlink(&mut w, 0, Ino::ROOT, n), Ok(Answer::Done));
        assert_eq!(
            lookup(&mut w, 0, Ino::ROOT, n).map(|_| ()),
            Err(Errno::NoEnt),
            "{n} is gone here at once"
        );
    }
    let during = w.clients[0].sent - sent;
    assert!(during < 18, "{during} requests for 18 unlinks: batched");
    // A name unlinked here can be made again here: after the unlink.
    save(&mut w, 0, "u7", b"new").expect("saved");
    w.settle();
    for n in &names {
        let want = (n == "u7").then(|| b"new".to_vec());
        assert_eq!(on_disk(&w, n), want, "{n} on the host");
    }
    // Another client's look recalls the lease: it sees the host's truth.
    assert_eq!(
        lookup(&mut w, 1, Ino::ROOT, "u3").map(|_| ()),
        Err(Errno::NoEnt)
    );
    assert!(lookup(&mut w, 1, Ino::ROOT, "u7").is_ok());
}

#[test]
fn a_directory_emptied_here_is_removed_once_its_unlinks_are_applied() {
    let mut w = leasing(1);
    let d = mkdir_at(&mut w, Ino::ROOT, "d");
    let mut saved = Vec::new();
    for i in 0..6 {
        let n = format!("f{i}");
        let (ino, fh) = match w.call(
            0,
            Op::Create {
                parent: d,
                name: name(&n),
                mode: 0o644,
                exclusive: true,
                truncate: false,
                caller: None,
            },
        ) {
            Ok(Answer::Created { ino, fh, .. }) => (ino, fh),
            other => panic!("{other:?}"),
        };
        write(&mut w, 0, fh, 0, b"data");
        w.call(0, Op::Release { fh }).expect("closed");
        saved.push((n, ino));
    }
    w.settle();
    assert_eq!(w.clients[0].core.unapplied(), 0);
    let sent = w.clients[0].sent;
    for (n, _) in &saved {
        assert_eq!(unlink(&mut w, 0, d, n), Ok(Answer::Done));
    }
    assert!(w.clients[0].sent - sent < 6, "answered under the lease");
    // rmdir waits for the stream: the host would find the files there.
    assert_eq!(
        w.call(
            0,
            Op::Rmdir {
                parent: Ino::ROOT,
                name: name("d"),
            }
        ),
        Ok(Answer::Done)
    );
    let gone = w.disk.execute(crate::host::FsOp::Stat {
        path: RelPath::from(vec![name("d")]),
    });
    assert_eq!(gone, Err(Errno::NoEnt));
}

/// `rm -r` of a tree this client holds the leases of: every unlink and
/// every `rmdir` is answered at once, and the host applies them bottom
/// up (a directory's removal waits for what was removed in it).
#[test]
fn a_tree_removed_here_is_answered_at_once_and_removed_bottom_up() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let d = mkdir_at(&mut w, Ino::ROOT, "d");
    w.run_for(Duration::from_millis(50));
    let e = mkdir_at(&mut w, d, "e");
    w.run_for(Duration::from_millis(50));
    for i in 0..4 {
        save_at(&mut w, 0, d, &format!("f{i}"), b"d").expect("saved in d");
        save_at(&mut w, 0, e, &format!("g{i}"), b"e").expect("saved in e");
    }
    // Applied, well within the leases' idle time.
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.clients[0].core.unapplied(), 0);
    assert_eq!(w.host.leases(), 3, "root, d and e leased");
    // As rm -r: the deepest first, each directory emptied then removed.
    let at_once = |w: &mut World, op: Op| {
        let req = w.op(0, op);
        w.answer(0, req)
    };
    for i in 0..4 {
        let op = Op::Unlink {
            parent: e,
            name: name(&format!("g{i}")),
        };
        assert_eq!(at_once(&mut w, op), Some(Ok(Answer::Done)), "g{i}");
    }
    let rmdir = |parent, n: &str| Op::Rmdir {
        parent,
        name: name(n),
    };
    assert_eq!(at_once(&mut w, rmdir(d, "e")), Some(Ok(Answer::Done)));
    for i in 0..4 {
        let op = Op::Unlink {
            parent: d,
            name: name(&format!("f{i}")),
        };
        assert_eq!(at_once(&mut w, op), Some(Ok(Answer::Done)), "f{i}");
    }
    assert_eq!(
        at_once(&mut w, rmdir(Ino::ROOT, "d")),
        Some(Ok(Answer::Done))
    );
    // A program whose working directory it was makes nothing there.
    assert_eq!(
        create_at(&mut w, 0, d, "late").map(|_| ()),
        Err(Errno::NoEnt),
        "nothing is made in a directory removed here"
    );
    assert_eq!(
        lookup(&mut w, 0, Ino::ROOT, "d").map(|_| ()),
        Err(Errno::NoEnt),
        "gone here at once"
    );
    w.settle();
    let d_on_host = w.disk.execute(crate::host::FsOp::Stat {
        path: RelPath::from(vec![name("d")]),
    });
    assert_eq!(d_on_host, Err(Errno::NoEnt), "gone at the host");
    assert!(
        !w.clients[0]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::RemoveLost { .. })),
        "nothing refused: {:?}",
        w.clients[0].events
    );
    assert_eq!(w.clients[0].core.unapplied(), 0);
}

/// `rm -r` of a tree whose top this client did not make: two ordinary
/// `rmdir`s in a directory earn its lease, as two unlinks do.
#[test]
fn two_rmdirs_earn_the_lease() {
    let mut w = leasing(1);
    for n in ["a1", "a2", "a3"] {
        w.disk
            .execute(crate::host::FsOp::Mkdir {
                path: RelPath::from(vec![name(n)]),
                mode: 0o755,
                owner: None,
            })
            .expect("a directory");
    }
    for n in ["a1", "a2"] {
        lookup(&mut w, 0, Ino::ROOT, n).expect("there");
        let rm = Op::Rmdir {
            parent: Ino::ROOT,
            name: name(n),
        };
        assert_eq!(w.call(0, rm), Ok(Answer::Done));
    }
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.host.leases(), 1, "the root is leased");
}

/// A disk holding `top/<d>/f0…` for each of `dirs`, `files` files in
/// each, made by a program on the host (not by a client).
fn tree_made_elsewhere(dirs: &[&str], files: usize) -> MemFs {
    let mut disk = MemFs::new(1 << 30);
    let at = |parts: &[&str]| RelPath::from(parts.iter().map(|p| name(p)).collect::<Vec<_>>());
    let mut mkdir = |path: RelPath| {
        disk.execute(crate::host::FsOp::Mkdir {
            path,
            mode: 0o755,
            owner: None,
        })
        .expect("a directory");
    };
    mkdir(at(&["top"]));
    for d in dirs {
        mkdir(at(&["top", d]));
    }
    for d in dirs {
        for f in 0..files {
            let f = format!("f{f}");
            disk.local_replace(&at(&["top", d, &f]), b"made elsewhere")
                .expect("a file");
        }
    }
    disk
}

/// `rm -r` of a tree made elsewhere, as it runs: each directory's first
/// two unlinks go the ordinary way and earn its lease, the next waits
/// for the lease to be taken, the rest are answered here; after two
/// ordinary `rmdir`s the parent is leased too, and each later `rmdir` is
/// answered at once (its directory emptied under its lease), never
/// waiting for the host.
#[test]
fn rm_r_of_a_tree_made_elsewhere_is_answered_here_after_the_first_directories() {
    let dirs = ["s0", "s1", "s2", "s3", "s4"];
    let files: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let disk = tree_made_elsewhere(&dirs, files.len());
    let mut w = leasing_with(disk, 1, HostConfig::default());
    let (top, _) = lookup(&mut w, 0, Ino::ROOT, "top").expect("top");
    let mut at_once = Vec::new();
    for d in dirs {
        let (sub, _) = lookup(&mut w, 0, top, d).expect("a directory");
        for f in &files {
            lookup(&mut w, 0, sub, f).expect("a file");
        }
        for f in &files {
            assert_eq!(unlink(&mut w, 0, sub, f), Ok(Answer::Done), "{d}/{f}");
        }
        let req = w.op(
            0,
            Op::Rmdir {
                parent: top,
                name: name(d),
            },
        );
        let now = w.answer(0, req);
        at_once.push(now.is_some());
        w.settle();
        let answer = now.or_else(|| w.answer(0, req));
        assert_eq!(answer, Some(Ok(Answer::Done)), "rmdir {d}");
    }
    assert_eq!(
        at_once,
        [false, false, true, true, true],
        "rmdirs answered without the host"
    );
    w.settle();
    let gone = w.disk.execute(crate::host::FsOp::Stat {
        path: RelPath::from(vec![name("top"), name("s4")]),
    });
    assert_eq!(gone, Err(Errno::NoEnt), "removed at the host too");
    assert!(
        !w.clients[0]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::RemoveLost { .. })),
        "{:?}",
        w.clients[0].events
    );
}

/// `rm -r` lists each directory before it empties it. Once it removes
/// under the parent's lease (after two ordinary `rmdir`s earned it), each
/// directory's listing asks for that directory's lease, so none of its
/// unlinks goes to the host the ordinary way; before, the first two of
/// every directory did, to earn the lease. A listing outside a sweep
/// asks for nothing.
#[test]
fn a_sweep_asks_each_directorys_lease_as_it_lists_it() {
    let dirs = ["s0", "s1", "s2", "s3", "s4", "t"];
    let files: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    let disk = tree_made_elsewhere(&dirs, files.len());
    let at = |parts: &[&str]| RelPath::from(parts.iter().map(|p| name(p)).collect::<Vec<_>>());
    let mut w = leasing_with(disk, 1, HostConfig::default());
    w.record_fs = true;
    let (top, _) = lookup(&mut w, 0, Ino::ROOT, "top").expect("top");
    let list = |w: &mut World, ino: Ino| {
        let listed = w.call(0, Op::ReadDir { ino, offset: 0 });
        assert!(matches!(listed, Ok(Answer::Dir(_))), "{listed:?}");
    };
    // Listed outside a sweep: no lease.
    let (t, _) = lookup(&mut w, 0, top, "t").expect("t");
    list(&mut w, t);
    w.settle();
    assert_eq!(w.host.leases(), 0, "a listing alone asks for no lease");
    let mut ordinary = Vec::new();
    for d in &dirs[..5] {
        let (sub, _) = lookup(&mut w, 0, top, d).expect("a directory");
        list(&mut w, sub);
        for f in &files {
            lookup(&mut w, 0, sub, f).expect("a file");
        }
        let before = w.fs_log.len();
        for f in &files {
            assert_eq!(unlink(&mut w, 0, sub, f), Ok(Answer::Done), "{d}/{f}");
        }
        let rmdir = Op::Rmdir {
            parent: top,
            name: name(d),
        };
        assert_eq!(w.call(0, rmdir), Ok(Answer::Done), "rmdir {d}");
        w.settle();
        let unlinks = w.fs_log[before..]
            .iter()
            .filter(|r| matches!(r.op, crate::host::FsOp::Unlink { .. }))
            .count();
        ordinary.push(unlinks);
    }
    assert_eq!(
        ordinary,
        [2, 2, 0, 0, 0],
        "ordinary unlinks per directory: after the first two earn the \
         parent's lease, each listing earns its directory's"
    );
    for d in &dirs[..5] {
        let gone = w.disk.execute(crate::host::FsOp::Stat {
            path: at(&["top", d]),
        });
        assert_eq!(gone, Err(Errno::NoEnt), "{d} removed at the host too");
    }
}

/// Time enough for a few round trips of the test world.
const BRIEFLY: Duration = Duration::from_millis(40);

/// A sweep asks the leases of the directories it will come to next, in
/// the parent's listing's order, and their attributes: their listings are
/// read at the host while it empties the one before, and when `rm -r`
/// lists and `fstat`s them both are answered here, without waiting for
/// the host. (Each step runs the world for [`BRIEFLY`], as `rm` comes to
/// the next directory within milliseconds: leases idle for two seconds
/// are given back.)
#[test]
fn a_sweep_reads_the_next_directories_ahead() {
    let dirs = ["s0", "s1", "s2", "s3", "s4", "s5"];
    let files: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    let disk = tree_made_elsewhere(&dirs, files.len());
    let mut w = leasing_with(disk, 1, HostConfig::default());
    w.record_fs = true;
    let (top, _) = lookup(&mut w, 0, Ino::ROOT, "top").expect("top");
    let subs: Vec<Ino> = dirs
        .iter()
        .map(|d| lookup(&mut w, 0, top, d).expect("a directory").0)
        .collect();
    // The attributes the lookups brought are stale by the time `rm`
    // comes to each directory, as those of a listing long read.
    w.run_for(Duration::from_millis(1500));
    let at_host = |w: &World, before: usize, d: &str, list: bool| {
        w.fs_log[before..].iter().any(|r| match &r.op {
            crate::host::FsOp::List { path, .. } if list => path.names().last() == Some(&name(d)),
            crate::host::FsOp::Stat { path } if !list => path.names().last() == Some(&name(d)),
            _ => false,
        })
    };
    let (mut listed_at_host, mut statted_at_host) = (Vec::new(), Vec::new());
    for (d, &sub) in dirs.iter().zip(&subs) {
        for (op, list, waited) in [
            (
                Op::ReadDir {
                    ino: sub,
                    offset: 0,
                },
                true,
                &mut listed_at_host,
            ),
            (Op::GetAttr { ino: sub }, false, &mut statted_at_host),
        ] {
            let before = w.fs_log.len();
            let req = w.op(0, op);
            let at_once = w.answer(0, req);
            w.run_for(BRIEFLY);
            let answer = at_once.clone().or_else(|| w.answer(0, req));
            assert!(
                matches!(answer, Some(Ok(Answer::Dir(_) | Answer::Attr { .. }))),
                "{d}: {answer:?}"
            );
            waited.push(at_once.is_none() || at_host(&w, before, d, list));
        }
        for f in &files {
            lookup(&mut w, 0, sub, f).expect("a file");
            assert_eq!(unlink(&mut w, 0, sub, f), Ok(Answer::Done), "{d}/{f}");
        }
        let rmdir = Op::Rmdir {
            parent: top,
            name: name(d),
        };
        assert_eq!(w.call(0, rmdir), Ok(Answer::Done), "rmdir {d}");
        w.run_for(BRIEFLY);
    }
    assert_eq!(
        listed_at_host,
        [true, true, true, false, false, false],
        "listings that waited for the host: once the sweep holds the \
         parent's lease (from the third), the next ones are read ahead"
    );
    assert_eq!(
        statted_at_host,
        [true, true, false, false, false, false],
        "`fstat`s that waited for the host: from the third, fetched with \
         the listing or ahead of it"
    );
    w.settle();
    for d in dirs {
        let gone = w.disk.execute(crate::host::FsOp::Stat {
            path: RelPath::from(vec![name("top"), name(d)]),
        });
        assert_eq!(gone, Err(Errno::NoEnt), "{d} removed at the host too");
    }
}

/// A sweep deep in a tree asks ahead at every level, but leaves places
/// for the directories it lists: `rm -r` of three levels of five
/// directories (two files in each of the deepest) is answered, removes
/// everything at the host, and sends no more unlinks the ordinary way
/// than a sweep that asks nothing ahead (70 of 250: in each middle
/// directory the first leaves' unlinks, and their `rmdir`s, earn the
/// leases the rest are answered under). Leases asked ahead at each level
/// while any place was free filled the table, and more went the
/// ordinary way (76).
#[test]
fn a_deep_sweep_leaves_room_for_the_directories_it_lists() {
    const WIDE: usize = 5;
    let mut disk = MemFs::new(1 << 30);
    let path = |parts: &[String]| RelPath::from(parts.iter().map(|p| name(p)).collect::<Vec<_>>());
    let mut tree = vec![vec!["top".to_string()]];
    for level in 0..3 {
        let mut next = Vec::new();
        for parent in tree.iter().filter(|p| p.len() == level + 1) {
            for i in 0..WIDE {
                let mut d = parent.clone();
                d.push(format!("d{level}{i}"));
                next.push(d);
            }
        }
        tree.extend(next);
    }
    for d in &tree {
        disk.execute(crate::host::FsOp::Mkdir {
            path: path(d),
            mode: 0o755,
            owner: None,
        })
        .expect("a directory");
        if d.len() == 4 {
            for f in ["f0", "f1"] {
                let mut p = d.clone();
                p.push(f.to_string());
                disk.local_replace(&path(&p), b"made elsewhere")
                    .expect("a file");
            }
        }
    }
    let mut w = leasing_with(disk, 1, HostConfig::default());
    w.record_fs = true;
    let (top, _) = lookup(&mut w, 0, Ino::ROOT, "top").expect("top");
    // `rm -r`: list a directory, `fstat` it, remove what is in it
    // (directories first, depth first), then the directory itself.
    fn sweep(w: &mut World, dir: Ino) {
        let listed = w.op(
            0,
            Op::ReadDir {
                ino: dir,
                offset: 0,
            },
        );
        w.run_for(BRIEFLY);
        let entries = match w.answer(0, listed) {
            Some(Ok(Answer::Dir(items))) => items,
            other => panic!("a listing: {other:?}"),
        };
        let names: Vec<String> = entries
            .iter()
            .filter_map(|e| {
                std::str::from_utf8(e.name.as_bytes())
                    .ok()
                    .map(str::to_string)
            })
            .filter(|n| n != "." && n != "..")
            .collect();
        let stat = w.op(0, Op::GetAttr { ino: dir });
        w.run_for(BRIEFLY);
        assert!(matches!(w.answer(0, stat), Some(Ok(Answer::Attr { .. }))));
        for n in names {
            let (ino, attr) = lookup(w, 0, dir, &n).expect("an entry");
            if attr.kind == FileKind::Dir {
                sweep(w, ino);
                let rmdir = w.op(
                    0,
                    Op::Rmdir {
                        parent: dir,
                        name: name(&n),
                    },
                );
                w.run_for(BRIEFLY);
                assert_eq!(w.answer(0, rmdir), Some(Ok(Answer::Done)), "rmdir {n}");
            } else {
                let req = w.op(
                    0,
                    Op::Unlink {
                        parent: dir,
                        name: name(&n),
                    },
                );
                w.run_for(Duration::from_millis(1));
                let answer = w.answer(0, req).or_else(|| {
                    w.run_for(BRIEFLY);
                    w.answer(0, req)
                });
                assert_eq!(answer, Some(Ok(Answer::Done)), "unlink {n}");
            }
        }
    }
    sweep(&mut w, top);
    w.settle();
    let ordinary = w
        .fs_log
        .iter()
        .filter(|r| matches!(r.op, crate::host::FsOp::Unlink { .. }))
        .count();
    let files = WIDE * WIDE * WIDE * 2;
    assert!(
        ordinary <= 70,
        "{ordinary} of {files} unlinks went the ordinary way: the deepest \
         directories found no place for their leases"
    );
    let gone = w.disk.execute(crate::host::FsOp::Stat {
        path: RelPath::from(vec![name("top"), name("d00")]),
    });
    assert_eq!(gone, Err(Errno::NoEnt), "removed at the host too");
}

/// An unlink waiting for its directory's lease when the host restarts
/// is answered, and removes the file in its own directory although the
/// new host numbers the tree anew. (Here the lost connection ends the
/// wait and the unlink is queued for the next session; a wait ended by
/// the new session itself is deferred the same way, `leases_lost`.)
#[test]
fn a_change_waiting_for_a_lease_runs_after_a_host_restart_in_the_right_place() {
    let mut disk = MemFs::new(1 << 30);
    let at = |parts: &[&str]| RelPath::from(parts.iter().map(|p| name(p)).collect::<Vec<_>>());
    disk.execute(crate::host::FsOp::Mkdir {
        path: at(&["d"]),
        mode: 0o755,
        owner: None,
    })
    .expect("d");
    for f in ["f0", "f1", "f2"] {
        disk.local_replace(&at(&["d", f]), b"x").expect("a file");
    }
    let mut w = leasing_with(disk, 1, HostConfig::default());
    let (d, _) = lookup(&mut w, 0, Ino::ROOT, "d").expect("d");
    for f in ["f0", "f1", "f2"] {
        lookup(&mut w, 0, d, f).expect("a file");
    }
    for f in ["f0", "f1"] {
        assert_eq!(unlink(&mut w, 0, d, f), Ok(Answer::Done), "{f}");
    }
    let req = w.op(
        0,
        Op::Unlink {
            parent: d,
            name: name("f2"),
        },
    );
    assert_eq!(w.answer(0, req), None, "waits for the lease");
    // The new host numbers the tree anew, a directory made meanwhile
    // first.
    w.crash_host();
    for p in [&["a"][..], &["a", "f2"][..]] {
        let made = if p.len() == 1 {
            w.disk.execute(crate::host::FsOp::Mkdir {
                path: at(p),
                mode: 0o755,
                owner: None,
            })
        } else {
            w.disk
                .local_replace(&at(p), b"not yours")
                .map(|_| crate::host::FsOk::Done)
        };
        made.expect("made while the host was down");
    }
    w.restart_host();
    w.run_for(Duration::from_secs(3));
    assert_eq!(w.answer(0, req), Some(Ok(Answer::Done)));
    assert!(
        w.disk.read_file(&at(&["d", "f2"])).is_none(),
        "d/f2 removed"
    );
    assert_eq!(
        w.disk.read_file(&at(&["a", "f2"])),
        Some(&b"not yours"[..]),
        "another directory's file kept"
    );
}

/// A directory renamed over one that holds a file made here under its
/// lease is refused with ENOTEMPTY, as on a local disk: the rename waits
/// until the host has the file (pjdfstest's
/// `rename::eexist_enotempty_to_non_empty`).
#[test]
fn a_rename_over_a_directory_with_a_file_made_here_is_enotempty() {
    let mut w = leasing(1);
    warm_up(&mut w);
    mkdir_at(&mut w, Ino::ROOT, "from");
    let to = mkdir_at(&mut w, Ino::ROOT, "to");
    w.run_for(Duration::from_millis(50));
    let (_, fh) = create_at(&mut w, 0, to, "f").expect("a file made under to's lease");
    w.call(0, Op::Release { fh }).expect("closed");
    assert_eq!(w.clients[0].core.unapplied(), 1, "the host has no f yet");
    let renamed = w.call(
        0,
        Op::Rename {
            parent: Ino::ROOT,
            name: name("from"),
            new_parent: Ino::ROOT,
            new_name: name("to"),
        },
    );
    assert!(
        matches!(renamed, Err(Errno::NotEmpty | Errno::Exist)),
        "{renamed:?}"
    );
}

/// A directory a program on the host put a file in after this client
/// emptied it: the `rmdir` answered here is refused (ENOTEMPTY), the
/// name comes back and the mount says so.
#[test]
fn a_directory_refilled_on_the_host_comes_back_and_is_reported() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let d = mkdir_at(&mut w, Ino::ROOT, "d");
    w.run_for(Duration::from_millis(50));
    save_at(&mut w, 0, d, "f", b"d").expect("saved");
    // Applied, well within the leases' idle time.
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.host.leases(), 2, "root and d leased");
    assert_eq!(unlink(&mut w, 0, d, "f"), Ok(Answer::Done));
    // A host program's file, before its watcher has told anyone (the
    // recall would come too late for this rmdir anyway).
    let late = RelPath::from(vec![name("d"), name("local")]);
    w.disk
        .local_replace(&late, b"host")
        .expect("a host program's file");
    let req = w.op(
        0,
        Op::Rmdir {
            parent: Ino::ROOT,
            name: name("d"),
        },
    );
    assert_eq!(w.answer(0, req), Some(Ok(Answer::Done)), "answered here");
    w.settle();
    assert!(
        w.clients[0].events.iter().any(|e| matches!(
            e,
            ClientEvent::RemoveLost {
                errno: Errno::NotEmpty,
                ..
            }
        )),
        "{:?}",
        w.clients[0].events
    );
    assert!(
        lookup(&mut w, 0, Ino::ROOT, "d").is_ok(),
        "the name is back"
    );
    assert_eq!(
        w.disk.read_file(&late).map(<[u8]>::to_vec),
        Some(b"host".to_vec())
    );
}

#[test]
fn an_unlink_the_host_never_applied_brings_the_name_back_and_is_reported() {
    let mut w = leasing(1);
    warm_up(&mut w);
    lookup(&mut w, 0, Ino::ROOT, "old").expect("old");
    // Answered here while the batch cannot reach the host, which then
    // restarts: the old session, its lease and the unlink are gone.
    w.silence(0);
    assert_eq!(unlink(&mut w, 0, Ino::ROOT, "old"), Ok(Answer::Done));
    w.crash_host();
    w.restart_host();
    w.heal();
    w.run_for(Duration::from_secs(30));
    let events = std::mem::take(&mut w.clients[0].events);
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::RemoveLost { name: n, errno: Errno::Io } if n.as_bytes() == b"old"
        )),
        "reported: {events:?}"
    );
    assert_eq!(on_disk(&w, "old"), Some(b"here before".to_vec()));
    // The name is back: looked up at the host again.
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "old").expect("back");
    assert_eq!(attr.size, 11);
    let fh = open(&mut w, 0, ino);
    assert_eq!(read_all(&mut w, 0, fh, 11), b"here before".to_vec());
}

#[test]
fn a_directory_stat_after_creates_and_unlinks_here_shows_their_times() {
    let mut w = leasing(1);
    warm_up(&mut w);
    let mtime = |w: &mut World| match w.call(0, Op::GetAttr { ino: Ino::ROOT }) {
        Ok(Answer::Attr { attr, .. }) => attr.mtime,
        other => panic!("{other:?}"),
    };
    // The directory's mtime as the host's disk has it, once everything
    // answered here is applied.
    let on_host = |w: &mut World| {
        w.settle();
        match w.disk.execute(crate::host::FsOp::Stat {
            path: RelPath::from(vec![]),
        }) {
            Ok(crate::host::FsOk::Attr(a)) => a.mtime,
            other => panic!("{other:?}"),
        }
    };
    lookup(&mut w, 0, Ino::ROOT, "old").expect("old");
    // Fresh in the cache: only what the create does can make it stale.
    let before = mtime(&mut w);
    save(&mut w, 0, "new", b"n").expect("made here");
    let made = mtime(&mut w);
    assert_ne!(made, before, "a create moves the directory's mtime");
    assert_eq!(made, on_host(&mut w), "the host's, after the create");
    assert_eq!(unlink(&mut w, 0, Ino::ROOT, "old"), Ok(Answer::Done));
    let unlinked = mtime(&mut w);
    assert_ne!(unlinked, made, "an unlink moves it again");
    assert_eq!(unlinked, on_host(&mut w), "the host's, after the unlink");
}

#[test]
fn a_late_unlink_leaves_the_file_made_at_the_name_since() {
    let host = HostConfig {
        lock: crate::lock::LockConfig {
            ttl: Duration::from_secs(5),
            ..crate::lock::LockConfig::default()
        },
        session_grace: Duration::from_secs(300),
        ..HostConfig::default()
    };
    let mut w = leasing_with(disk(&[("old", b"here before")]), 2, host);
    warm_up(&mut w);
    lookup(&mut w, 0, Ino::ROOT, "old").expect("old");
    // Answered here; the batch is lost with everything else the holder
    // sends until the heal, so its lease expires at the host.
    w.silence(0);
    assert_eq!(unlink(&mut w, 0, Ino::ROOT, "old"), Ok(Answer::Done));
    // Another client then replaces the name (its look waits for the
    // lease to expire).
    lookup(&mut w, 1, Ino::ROOT, "old").expect("still there for the other client");
    assert_eq!(unlink(&mut w, 1, Ino::ROOT, "old"), Ok(Answer::Done));
    save(&mut w, 1, "old", b"newer").expect("made again");
    w.heal();
    w.run_for(Duration::from_secs(60));
    // The holder's unlink, applied late, leaves the newer file, and the
    // holder's mount says its unlink did not happen.
    assert_eq!(on_disk(&w, "old"), Some(b"newer".to_vec()));
    let events = std::mem::take(&mut w.clients[0].events);
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::RemoveLost { name: n, .. } if n.as_bytes() == b"old"
        )),
        "reported: {events:?}"
    );
    let (_, attr) = lookup(&mut w, 0, Ino::ROOT, "old").expect("the newer file");
    assert_eq!(attr.size, 5);
}

/// A mkdir the kernel was answered for already (the host out of reach
/// past `unreachable_wait`) whose reply comes later with the new
/// directory's lease: the lease is given back at once, not held by
/// nobody until it expires while the host recalls it in vain.
#[test]
fn a_lease_that_comes_with_an_abandoned_mkdir_is_given_back() {
    let mut w = leasing(1);
    w.holding.insert(0);
    let made = w.op(
        0,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: name("late"),
            mode: 0o755,
            caller: None,
        },
    );
    assert_eq!(w.wait(0, made).err(), Some(Errno::TimedOut));
    w.holding.clear();
    w.max_delay = Duration::from_millis(5);
    w.let_through();
    // The host grants it (seen between the steps), then has it back.
    let limit = w.now + Duration::from_secs(10);
    let mut granted = false;
    while w.step(limit) {
        granted |= w.host.leases() == 1;
    }
    assert!(granted, "the mkdir brought a lease");
    w.settle();
    let on_host = RelPath::from(vec![name("late")]);
    assert!(
        matches!(
            w.disk.execute(crate::host::FsOp::Stat { path: on_host }),
            Ok(crate::host::FsOk::Attr(_))
        ),
        "made on the host all the same"
    );
    assert_eq!(w.host.leases(), 0, "its lease given back");
}

/// A recall that overtakes its lease's grant on the wire (it travels
/// another stream) is heeded when the grant comes: the lease is given
/// back at once, not held as if nobody wanted it while the host waits.
#[test]
fn a_recall_that_overtakes_its_grant_gives_the_lease_back() {
    let mut w = leasing(1);
    w.max_delay = Duration::from_millis(5);
    let made = w.op(
        0,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: name("d"),
            mode: 0o755,
            caller: None,
        },
    );
    // Granted with the mkdir at the host; its reply is still on its way
    // (the directory is read first) when the recall gets here.
    let limit = w.now + Duration::from_secs(10);
    while w.host.leases() == 0 {
        assert!(w.step(limit), "the host grants the lease");
    }
    let token = w
        .host
        .locks()
        .locks()
        .next()
        .expect("the lease's lock")
        .token;
    let now = w.now;
    w.clients[0]
        .core
        .handle_message(now, crate::proto::HostMessage::Recall { token });
    let Ok(Answer::Entry { ino, attr, .. }) = w.wait(0, made) else {
        panic!("mkdir");
    };
    assert!(
        !w.clients[0].core.holds_lease(attr.node),
        "the lease is given back"
    );
    // Nor is the directory taken for empty: what was recalled for may be
    // there already (a program on the host, its report not yet heard).
    let on_host = RelPath::from(vec![name("d"), name("f")]);
    w.disk.local_replace(&on_host, b"made there").expect("f");
    assert!(
        lookup(&mut w, 0, ino, "f").is_ok(),
        "f is looked for on the host"
    );
    w.settle();
    assert_eq!(w.host.leases(), 0);
}

/// The attributes of `path` on the host's disk.
fn disk_attr(w: &mut World, path: &[&str]) -> crate::host::FsAttr {
    let path = RelPath::from(path.iter().map(|n| name(n)).collect::<Vec<_>>());
    match w.disk.execute(crate::host::FsOp::Stat { path }) {
        Ok(crate::host::FsOk::Attr(a)) => a,
        other => panic!("{other:?}"),
    }
}

/// Sends `set` for `ino` and returns its answer if it came at once,
/// before anything reached the host.
fn set_at_once(w: &mut World, ino: Ino, set: SetAttr) -> Option<Result<Answer, Errno>> {
    let req = w.op(0, Op::SetAttr { ino, set });
    let at_once = w.answer(0, req);
    if at_once.is_none() {
        // Let it finish, for the caller's later steps.
        let _ = w.wait(0, req);
    }
    at_once
}

/// tar sets each directory's times and mode once it has made its files.
/// With the directory's lease held both are answered at once, and reach
/// the host after the files, in the directory's stream: the times stay
/// as tar set them.
#[test]
fn a_leased_directorys_times_and_mode_are_answered_here_and_set_after_its_files() {
    let mut w = leasing(1);
    let dir = mkdir_at(&mut w, Ino::ROOT, "d");
    for i in 0..5 {
        save_at(&mut w, 0, dir, &format!("f{i}"), b"f").expect("saved");
    }
    let at = SetTime::At(crate::proto::Timestamp {
        secs: 1_500_000_000,
        nanos: 7,
    });
    let times = SetAttr {
        atime: Some(at),
        mtime: Some(at),
        ..SetAttr::default()
    };
    let Some(Ok(Answer::Attr { attr, .. })) = set_at_once(&mut w, dir, times) else {
        panic!("the times were not answered at once");
    };
    assert_eq!((attr.mtime.secs, attr.mtime.nanos), (1_500_000_000, 7));
    let mode = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    let Some(Ok(Answer::Attr { attr, .. })) = set_at_once(&mut w, dir, mode) else {
        panic!("the mode was not answered at once");
    };
    assert_eq!(attr.mode & 0o7777, 0o700);
    assert_eq!(attr.mtime.secs, 1_500_000_000, "the times set before kept");
    // A stat shows them at once (tar's next `fstat` of the directory
    // waits for nothing), and again once the host has them, after the
    // files.
    let req = w.op(0, Op::GetAttr { ino: dir });
    assert!(
        matches!(w.answer(0, req), Some(Ok(Answer::Attr { attr, .. }))
            if attr.mode & 0o7777 == 0o700 && attr.mtime.secs == 1_500_000_000),
        "a stat of what was set here is answered here"
    );
    w.settle();
    w.run_for(Duration::from_secs(5));
    match w.call(0, Op::GetAttr { ino: dir }) {
        Ok(Answer::Attr { attr, .. }) => assert_eq!(
            (attr.mode & 0o7777, attr.mtime.secs),
            (0o700, 1_500_000_000),
            "the host's"
        ),
        other => panic!("{other:?}"),
    }
    let on_host = disk_attr(&mut w, &["d"]);
    assert_eq!(
        (
            on_host.mode & 0o7777,
            on_host.mtime.secs,
            on_host.mtime.nanos
        ),
        (0o700, 1_500_000_000, 7)
    );
    assert_eq!(
        w.disk
            .read_file(&RelPath::from(vec![name("d"), name("f4")]))
            .map(<[u8]>::to_vec),
        Some(b"f".to_vec())
    );
    assert_eq!(w.clients[0].core.unapplied(), 0);
}

/// A change of a directory's entries that goes to the host after its
/// times were set here reaches the host after them too: the directory's
/// mtime is the later change's, as on a local disk.
#[test]
fn a_mkdir_after_times_set_here_moves_the_directorys_mtime_after_them() {
    let mut w = leasing(1);
    let dir = mkdir_at(&mut w, Ino::ROOT, "d");
    save_at(&mut w, 0, dir, "f", b"f").expect("saved");
    // Nothing else out: only the times wait in the stream (the second
    // behind the first's batch).
    w.settle();
    for secs in [900_000_000, 1_000_000_000] {
        let times = SetAttr {
            mtime: Some(SetTime::At(crate::proto::Timestamp { secs, nanos: 0 })),
            ..SetAttr::default()
        };
        assert!(set_at_once(&mut w, dir, times).is_some(), "answered here");
    }
    // A mkdir goes to the host (it is not answered under a lease).
    mkdir_at(&mut w, dir, "sub");
    w.settle();
    let on_host = disk_attr(&mut w, &["d"]);
    assert_ne!(
        on_host.mtime.secs, 1_000_000_000,
        "the mkdir's mtime, not the one set before it"
    );
}

/// Times set here that the host never applied (it restarted first) are
/// reported, and the directory's attributes are the host's again.
#[test]
fn times_set_here_the_host_never_applied_are_reported() {
    let mut w = leasing(1);
    let dir = mkdir_at(&mut w, Ino::ROOT, "d");
    save_at(&mut w, 0, dir, "f", b"f").expect("saved");
    w.settle();
    let before = disk_attr(&mut w, &["d"]).mtime;
    w.silence(0);
    let at = SetTime::At(crate::proto::Timestamp {
        secs: 1_000_000_000,
        nanos: 0,
    });
    let times = SetAttr {
        mtime: Some(at),
        ..SetAttr::default()
    };
    assert!(set_at_once(&mut w, dir, times).is_some(), "answered here");
    w.crash_host();
    w.restart_host();
    w.heal();
    w.run_for(Duration::from_secs(30));
    let events = std::mem::take(&mut w.clients[0].events);
    let lost: Vec<&ClientEvent> = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::AttrLost { .. }))
        .collect();
    assert!(
        matches!(lost[..], [ClientEvent::AttrLost { name: Some(n), errno: Errno::Io }]
            if n.as_bytes() == b"d"),
        "reported once: {events:?}"
    );
    assert_eq!(disk_attr(&mut w, &["d"]).mtime, before);
    let (_, attr) = lookup(&mut w, 0, Ino::ROOT, "d").expect("d");
    assert_eq!(attr.mtime, before, "the host's times, not those set here");
}

/// Another client's `chmod` of a directory whose holder set its mode
/// here waits for the holder's stream (the host recalls the lease): the
/// later change wins, not the one applied later.
#[test]
fn another_clients_chmod_comes_after_the_holders_mode_set_here() {
    let mut w = leasing(2);
    let dir = mkdir_at(&mut w, Ino::ROOT, "d");
    let (on_1, _) = lookup(&mut w, 1, Ino::ROOT, "d").expect("d seen by 1");
    // The files' batch is out when the mode is set: the change waits in
    // the stream behind it.
    for i in 0..3 {
        save_at(&mut w, 0, dir, &format!("f{i}"), b"f").expect("saved");
    }
    let mode = |m| SetAttr {
        mode: Some(m),
        ..SetAttr::default()
    };
    // With its times, as tar sets them (a mode alone, over attributes
    // the creates made stale, goes to the host).
    let tar_like = SetAttr {
        mtime: Some(SetTime::At(crate::proto::Timestamp {
            secs: 1_500_000_000,
            nanos: 0,
        })),
        ..mode(0o700)
    };
    assert!(
        set_at_once(&mut w, dir, tar_like).is_some(),
        "answered here"
    );
    match w.call(
        1,
        Op::SetAttr {
            ino: on_1,
            set: mode(0o750),
        },
    ) {
        Ok(Answer::Attr { attr, .. }) => assert_eq!(attr.mode & 0o7777, 0o750),
        other => panic!("{other:?}"),
    }
    w.settle();
    assert_eq!(disk_attr(&mut w, &["d"]).mode & 0o7777, 0o750);
}

/// A holder cut off past its lease sends its mode change late: by then
/// another client may have changed the mode, which the late one must
/// not undo. The host refuses it (ESTALE) and the holder reports it.
#[test]
fn a_mode_set_here_that_arrives_after_the_lease_is_gone_is_refused() {
    let mut w = leasing(2);
    let dir = mkdir_at(&mut w, Ino::ROOT, "d");
    w.settle();
    let (on_1, _) = lookup(&mut w, 1, Ino::ROOT, "d").expect("d seen by 1");
    w.silence(0);
    let tar_like = SetAttr {
        mode: Some(0o700),
        mtime: Some(SetTime::At(crate::proto::Timestamp {
            secs: 1_500_000_000,
            nanos: 0,
        })),
        ..SetAttr::default()
    };
    assert!(
        set_at_once(&mut w, dir, tar_like).is_some(),
        "answered here"
    );
    // The recall cannot reach the holder: the change runs once the lease
    // has expired.
    let later = SetAttr {
        mode: Some(0o750),
        ..SetAttr::default()
    };
    assert!(
        w.call(
            1,
            Op::SetAttr {
                ino: on_1,
                set: later
            }
        )
        .is_ok()
    );
    w.heal();
    w.run_for(Duration::from_secs(60));
    assert_eq!(disk_attr(&mut w, &["d"]).mode & 0o7777, 0o750);
    let events = std::mem::take(&mut w.clients[0].events);
    assert!(
        events.iter().any(|e| matches!(
            e,
            ClientEvent::AttrLost { name: Some(n), errno: Errno::Stale } if n.as_bytes() == b"d"
        )),
        "reported: {events:?}"
    );
}
