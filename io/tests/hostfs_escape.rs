//! Confinement and durability of [`HostFs`] on a real directory:
//!
//! * symlinks placed in the share, pointing to `/`, to `..`, to an
//!   absolute path outside, and to a mount point, are never followed by
//!   any operation (they stay data: Stat reports them, Readlink reads
//!   them, Unlink removes the link itself);
//! * `..` and absolute names cannot even be written down (`Name`);
//! * a commit replaces the file (new content read back, old handles keep
//!   the old content), an interrupted transaction leaves the old content,
//!   and a staging file a crash left behind is invisible, kept while it
//!   may be another host's, and swept by a listing once it is old.
//!
//! The mount-point case needs root (to mount a tmpfs); without root it
//! fails and says why, rather than skipping.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::Command;
use wormhole_core::host::{FileStamp, FsHandle, FsOk, FsOp, ReadFrom, RelPath, split_dirs};
use wormhole_core::proto::{
    Errno, FileKey, FileKind, Name, OpenFor, SetAttr, SetTime, Timestamp, TxnId,
};
use wormhole_io::host::fs::{HostFs, HostFsConfig};

/// Begins staging `path` as `txn`, returning what its commit replaces.
fn begin(fs: &HostFs, txn: TxnId, path: &str) -> FileStamp {
    match fs.execute(FsOp::StageBegin {
        txn,
        path: rel(path),
    }) {
        Ok(FsOk::Attr(a)) => FileStamp::from(&a),
        other => panic!("begin {path}: {other:?}"),
    }
}

fn rel(p: &str) -> RelPath {
    RelPath::from(
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| Name::new(s).expect("name"))
            .collect::<Vec<_>>(),
    )
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Everything outside the share, to check nothing there changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let md = std::fs::symlink_metadata(e.path()).expect("lstat");
            let data = if md.is_file() {
                std::fs::read(e.path()).expect("read")
            } else {
                Vec::new()
            };
            if md.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), data, md.permissions().mode()));
        }
    }
    out.sort();
    out
}

#[test]
fn names_cannot_climb_or_be_absolute() {
    assert!(Name::new("..").is_err());
    assert!(Name::new(".").is_err());
    assert!(Name::new("/etc").is_err());
    assert!(Name::new("a/../../b").is_err());
    assert!(Name::new("a\0b").is_err());
    // The only way to build a path is from names, so every RelPath is a
    // downward path.
    assert_eq!(rel("a/b").names().len(), 2);
}

#[test]
fn symlinks_in_the_share_are_never_followed() {
    if !is_root() {
        panic!(
            "NOT ROOT: this test mounts a tmpfs to check that a symlink to a mount \
             point is not followed; run it as root (CI does). Failing rather than \
             skipping."
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-escape")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let share = tmp.path().join("share");
    let outside = tmp.path().join("outside");
    let mnt = tmp.path().join("mnt");
    for d in [&share, &outside, &mnt] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::write(outside.join("secret.txt"), b"SECRET").expect("write");
    std::fs::create_dir(outside.join("sub")).expect("mkdir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "wormhole-escape"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount -t tmpfs failed");
    let _mounted = Mounted(mnt.clone());
    std::fs::write(mnt.join("secret.txt"), b"IN MOUNT").expect("write");
    std::fs::create_dir(mnt.join("sub")).expect("mkdir");

    std::fs::write(share.join("own.txt"), b"own").expect("write");
    std::fs::create_dir(share.join("d")).expect("mkdir");
    let links: Vec<(&str, PathBuf)> = vec![
        ("to_root", PathBuf::from("/")),
        ("to_parent", PathBuf::from("..")),
        ("to_outside", outside.clone()),
        ("to_secret", outside.join("secret.txt")),
        ("to_mount", mnt.clone()),
        ("d/up", PathBuf::from("../..")),
    ];
    for (l, target) in &links {
        std::os::unix::fs::symlink(target, share.join(l)).expect("symlink");
    }
    let before_outside = snapshot(&outside);
    let before_mount = snapshot(&mnt);

    let fs = HostFs::open(&share, HostFsConfig::default()).expect("open share");
    let mut checked = 0;
    for (i, (l, target)) in links.iter().enumerate() {
        let link = rel(l);
        let through = |rest: &str| rel(&format!("{l}/{rest}"));
        let expect = |op: FsOp, want: Result<(), Errno>| {
            let got = fs.execute(op.clone()).map(|_| ());
            assert_eq!(got, want, "{op:?}");
        };
        // The link itself is data.
        match fs.execute(FsOp::Stat { path: link.clone() }) {
            Ok(FsOk::Attr(a)) => {
                assert_eq!(a.kind, FileKind::Symlink, "{l}");
                assert_eq!(a.size, target.as_os_str().len() as u64, "{l}");
            }
            other => panic!("stat {l}: {other:?}"),
        }
        assert_eq!(
            fs.execute(FsOp::Readlink { path: link.clone() }),
            Ok(FsOk::Link(target.as_os_str().as_encoded_bytes().to_vec()))
        );
        // Nothing goes through it.
        for rest in ["secret.txt", "sub", "etc/passwd", "share/own.txt"] {
            let p = through(rest);
            expect(FsOp::Stat { path: p.clone() }, Err(Errno::Loop));
            expect(
                FsOp::List {
                    path: p.clone(),
                    cookie: 0,
                    max: 10,
                },
                Err(Errno::Loop),
            );
            expect(
                FsOp::Open {
                    mode: wormhole_core::proto::OpenFor::Read,
                    path: p.clone(),
                    handle: FsHandle(1),
                    inline_max: 0,
                },
                Err(Errno::Loop),
            );
            expect(
                FsOp::Read {
                    from: ReadFrom::Path(p.clone()),
                    offset: 0,
                    len: 100,
                },
                Err(Errno::Loop),
            );
            expect(FsOp::Unlink { path: p.clone() }, Err(Errno::Loop));
            expect(FsOp::Rmdir { path: p.clone() }, Err(Errno::Loop));
            expect(
                FsOp::Rename {
                    from: p.clone(),
                    to: rel("stolen"),
                },
                Err(Errno::Loop),
            );
            expect(
                FsOp::SetAttr {
                    path: p.clone(),
                    set: SetAttr {
                        mode: Some(0o777),
                        ..SetAttr::default()
                    },
                },
                Err(Errno::Loop),
            );
            expect(
                FsOp::StageBegin {
                    txn: TxnId(9),
                    path: p.clone(),
                },
                Err(Errno::Loop),
            );
            checked += 9;
        }
        let new = through("new");
        expect(
            FsOp::Create {
                path: new.clone(),
                mode: 0o644,
                exclusive: false,
                open: None,
                owner: None,
            },
            Err(Errno::Loop),
        );
        expect(
            FsOp::Mkdir {
                path: new.clone(),
                mode: 0o755,
                owner: None,
            },
            Err(Errno::Loop),
        );
        expect(
            FsOp::Symlink {
                path: new.clone(),
                target: b"x".to_vec(),
                owner: None,
            },
            Err(Errno::Loop),
        );
        expect(
            FsOp::Rename {
                from: rel("own.txt"),
                to: new.clone(),
            },
            Err(Errno::Loop),
        );
        // Operations on the link's own name act on the link, or refuse.
        expect(
            FsOp::List {
                path: link.clone(),
                cookie: 0,
                max: 10,
            },
            Err(Errno::NotDir),
        );
        expect(
            FsOp::Open {
                mode: wormhole_core::proto::OpenFor::Read,
                path: link.clone(),
                handle: FsHandle(1),
                inline_max: 0,
            },
            Err(Errno::Loop),
        );
        expect(
            FsOp::Read {
                from: ReadFrom::Path(link.clone()),
                offset: 0,
                len: 100,
            },
            Err(Errno::Loop),
        );
        expect(
            FsOp::Create {
                path: link.clone(),
                mode: 0o644,
                exclusive: false,
                open: None,
                owner: None,
            },
            Err(Errno::Loop),
        );
        expect(
            FsOp::Create {
                path: link.clone(),
                mode: 0o644,
                exclusive: true,
                open: None,
                owner: None,
            },
            Err(Errno::Exist),
        );
        expect(
            FsOp::Mkdir {
                path: link.clone(),
                mode: 0o755,
                owner: None,
            },
            Err(Errno::Exist),
        );
        expect(FsOp::Rmdir { path: link.clone() }, Err(Errno::NotDir));
        expect(
            FsOp::SetAttr {
                path: link.clone(),
                set: SetAttr {
                    mode: Some(0o777),
                    ..SetAttr::default()
                },
            },
            Err(Errno::NotSup),
        );
        // Times of the link itself (utimensat with AT_SYMLINK_NOFOLLOW).
        expect(
            FsOp::SetAttr {
                path: link.clone(),
                set: SetAttr {
                    mtime: Some(SetTime::At(Timestamp {
                        secs: 1_000_000_000,
                        nanos: 0,
                    })),
                    ..SetAttr::default()
                },
            },
            Ok(()),
        );
        expect(
            FsOp::StageBegin {
                txn: TxnId(9),
                path: link.clone(),
            },
            Err(Errno::IsDir),
        );
        // A commit onto the link's name replaces the link, never writes
        // through it.
        let txn = TxnId(100 + i as u64);
        let base = begin(&fs, txn, "own.txt");
        expect(
            FsOp::StageWrite {
                txn,
                offset: 0,
                data: Bytes::from_static(b"OVERWRITTEN"),
            },
            Ok(()),
        );
        // A commit onto the link's name is refused (the link is not the
        // file staged from) and writes nothing anywhere: the link stays.
        expect(
            FsOp::StageCommit {
                txn,
                path: link.clone(),
                size: 11,
                base,
                set: Default::default(),
            },
            Err(Errno::Stale),
        );
        assert!(
            std::fs::symlink_metadata(share.join(l))
                .expect("the link")
                .file_type()
                .is_symlink(),
            "the link is still a link"
        );
        // Put the link back and remove it with Unlink: the link goes, not
        // its target.
        std::fs::remove_file(share.join(l)).expect("rm");
        std::os::unix::fs::symlink(target, share.join(l)).expect("symlink");
        expect(FsOp::Unlink { path: link.clone() }, Ok(()));
        assert!(std::fs::symlink_metadata(share.join(l)).is_err());
        checked += 20;
    }
    assert_eq!(snapshot(&outside), before_outside, "outside changed");
    assert_eq!(snapshot(&mnt), before_mount, "mount changed");
    assert!(!tmp.path().join("stolen").exists());
    assert!(!Path::new("/new").exists());
    println!(
        "{checked} operations through or on {} symlinks (to /, .., an absolute path, \
         a file outside, a tmpfs mount point, ../.. from a subdirectory): none followed",
        links.len()
    );
}

fn read_all(fs: &HostFs, path: &str) -> Vec<u8> {
    match fs.execute(FsOp::Read {
        from: ReadFrom::Path(rel(path)),
        offset: 0,
        len: 1 << 20,
    }) {
        Ok(FsOk::Data(b, _)) => b.to_vec(),
        other => panic!("read {path}: {other:?}"),
    }
}

fn staging_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".wormhole."))
        .collect()
}

#[test]
fn commit_replaces_durably_and_interruption_keeps_the_old_content() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-commit")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let root = tmp.path();
    std::fs::write(root.join("f"), b"old content").expect("write");
    std::fs::set_permissions(
        root.join("f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod");

    // 1. Interrupted before the commit (the transaction is dropped with the
    //    host): the old content, and no staging file.
    {
        let fs = HostFs::open(root, HostFsConfig::default()).expect("open");
        let txn = TxnId(1);
        fs.execute(FsOp::StageBegin {
            txn,
            path: rel("f"),
        })
        .expect("begin");
        let staged = staging_files(root);
        assert_eq!(staged.len(), 1, "{staged:?}");
        fs.execute(FsOp::StageWrite {
            txn,
            offset: 0,
            data: Bytes::from_static(b"NEW"),
        })
        .expect("write");
        // The staging file holds the file's content with the write on it.
        assert_eq!(
            std::fs::read(root.join(&staged[0])).expect("read staging"),
            b"NEW content"
        );
        // Listings never show it.
        match fs.execute(FsOp::List {
            path: RelPath::root(),
            cookie: 0,
            max: 10,
        }) {
            Ok(FsOk::Listing { entries, .. }) => {
                let names: Vec<_> = entries.iter().map(|(n, _)| n.clone()).collect();
                assert_eq!(names, vec![Name::new("f").expect("name")]);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(std::fs::read(root.join("f")).expect("read"), b"old content");
    assert!(staging_files(root).is_empty(), "dropped staging removed");

    // 2. A crash mid-transaction (nothing runs: the host is leaked, its
    //    staging file stays on disk): the old content; the leftover is
    //    invisible, and once old enough a listing sweeps it.
    {
        let fs = HostFs::open(root, HostFsConfig::default()).expect("open");
        fs.execute(FsOp::StageBegin {
            txn: TxnId(2),
            path: rel("f"),
        })
        .expect("begin");
        fs.execute(FsOp::StageTruncate {
            txn: TxnId(2),
            size: 0,
        })
        .expect("truncate");
        std::mem::forget(fs);
    }
    assert_eq!(std::fs::read(root.join("f")).expect("read"), b"old content");
    let leftover = staging_files(root);
    assert_eq!(leftover.len(), 1, "{leftover:?}");
    let leftover = root.join(&leftover[0]);

    // 3. A commit: new content, the file's mode kept, a new inode (open
    //    handles keep the old content), no staging file left, and a fresh
    //    host (a restart) reads the new content back.
    let old_ino = std::fs::metadata(root.join("f")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    {
        let fs = HostFs::open(root, HostFsConfig::default()).expect("open");
        let h = FsHandle(7);
        fs.execute(FsOp::Open {
            mode: wormhole_core::proto::OpenFor::Read,
            path: rel("f"),
            handle: h,
            inline_max: 0,
        })
        .expect("open handle");
        let txn = TxnId(2);
        let base = begin(&fs, txn, "f");
        // A fresh leftover may be another host's, still writing: kept.
        let list = FsOp::List {
            path: RelPath::root(),
            cookie: 0,
            max: 10,
        };
        assert!(matches!(fs.execute(list.clone()), Ok(FsOk::Listing { .. })));
        assert!(leftover.exists(), "a fresh leftover is kept");
        // Untouched for longer than LEFTOVER_AGE: a crash's garbage.
        std::fs::File::options()
            .write(true)
            .open(&leftover)
            .and_then(|f| {
                f.set_modified(
                    std::time::SystemTime::now()
                        - wormhole_io::host::fs::LEFTOVER_AGE
                        - std::time::Duration::from_secs(60),
                )
            })
            .expect("age the leftover");
        assert!(matches!(fs.execute(list), Ok(FsOk::Listing { .. })));
        assert!(!leftover.exists(), "an old leftover is swept");
        assert_eq!(staging_files(root).len(), 1, "this run's own staging stays");
        fs.execute(FsOp::StageWrite {
            txn,
            offset: 0,
            data: Bytes::from_static(b"new content, longer"),
        })
        .expect("write");
        let attr = match fs.execute(FsOp::StageCommit {
            txn,
            path: rel("f"),
            size: 19,
            base,
            set: Default::default(),
        }) {
            Ok(FsOk::Attr(a)) => a,
            other => panic!("commit: {other:?}"),
        };
        assert_eq!(attr.size, 19);
        assert_eq!(attr.mode, 0o640);
        assert_ne!(Ok(attr.key.ino), old_ino.as_ref().map_err(|_| ()).copied());
        assert_eq!(read_all(&fs, "f"), b"new content, longer");
        match fs.execute(FsOp::Read {
            from: ReadFrom::Handle(h),
            offset: 0,
            len: 100,
        }) {
            Ok(FsOk::Data(b, _)) => assert_eq!(&b[..], b"old content"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fs.execute(FsOp::StageCommit {
                txn,
                path: rel("f"),
                size: 1,
                base,
                set: Default::default(),
            }),
            Err(Errno::BadF),
            "a transaction commits once"
        );
        assert!(staging_files(root).is_empty());
        // Abort leaves the file alone.
        fs.execute(FsOp::StageBegin {
            txn: TxnId(3),
            path: rel("f"),
        })
        .expect("begin");
        fs.execute(FsOp::StageTruncate {
            txn: TxnId(3),
            size: 0,
        })
        .expect("truncate");
        fs.execute(FsOp::StageAbort { txn: TxnId(3) })
            .expect("abort");
        assert!(staging_files(root).is_empty());
    }
    let fs = HostFs::open(root, HostFsConfig::default()).expect("reopen");
    assert_eq!(read_all(&fs, "f"), b"new content, longer");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(root.join("f"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
}

#[test]
fn unlinked_open_files_stay_readable_and_handles_are_bounded() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-handles")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("f"), b"still here").expect("write");
    assert!(wormhole_io::host::fs::raise_fd_limit() >= 1024);
    let fs = HostFs::open(
        tmp.path(),
        HostFsConfig {
            max_handles: 2,
            ..HostFsConfig::default()
        },
    )
    .expect("open");
    for h in 0..2 {
        fs.execute(FsOp::Open {
            mode: wormhole_core::proto::OpenFor::Read,
            path: rel("f"),
            handle: FsHandle(h),
            inline_max: 0,
        })
        .expect("open");
    }
    assert_eq!(
        fs.execute(FsOp::Open {
            mode: wormhole_core::proto::OpenFor::Read,
            path: rel("f"),
            handle: FsHandle(2),
            inline_max: 0,
        }),
        Err(Errno::Again),
        "bounded"
    );
    fs.execute(FsOp::Unlink { path: rel("f") }).expect("unlink");
    match fs.execute(FsOp::Read {
        from: ReadFrom::Handle(FsHandle(0)),
        offset: 6,
        len: 100,
    }) {
        Ok(FsOk::Data(b, a)) => {
            assert_eq!(&b[..], b"here");
            assert_eq!(a.nlink, 0);
        }
        other => panic!("{other:?}"),
    }
    fs.execute(FsOp::Close {
        handle: FsHandle(0),
    })
    .expect("close");
    assert_eq!(
        fs.execute(FsOp::Close {
            handle: FsHandle(0)
        }),
        Err(Errno::BadF)
    );
    assert_eq!(fs.open_handles(), 1);
}

/// An open carries the whole file when it holds at most `inline_max`
/// bytes, and nothing when it holds more.
#[test]
fn small_files_come_with_their_open() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-inline")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("small"), b"twelve bytes").expect("write");
    std::fs::write(tmp.path().join("big"), vec![7u8; 13]).expect("write");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let open = |name: &str, h: u64| {
        fs.execute(FsOp::Open {
            mode: wormhole_core::proto::OpenFor::Read,
            path: rel(name),
            handle: FsHandle(h),
            inline_max: 12,
        })
    };
    match open("small", 1) {
        Ok(FsOk::Opened(a, inline)) => {
            assert_eq!(a.size, 12);
            assert_eq!(&inline[..], b"twelve bytes");
        }
        other => panic!("{other:?}"),
    }
    match open("big", 2) {
        Ok(FsOk::Opened(a, inline)) => {
            assert_eq!(a.size, 13);
            assert!(inline.is_empty(), "{inline:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// A transaction that starts with a truncate copies only what the
/// truncate keeps of the old content (a rewrite with `O_TRUNC` does not
/// copy the file first), and a later extension reads as zeros.
#[test]
fn a_truncating_transaction_keeps_only_what_the_truncate_keeps() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-trunc")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("f"), b"old content").expect("write");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let txn = TxnId(3);
    let run = |op| fs.execute(op).expect("staging op");
    let base = begin(&fs, txn, "f");
    // Nothing copied yet: the first write or the commit copies.
    let staged = staging_files(tmp.path());
    let staged_len = || {
        std::fs::metadata(tmp.path().join(&staged[0]))
            .expect("staging file")
            .len()
    };
    assert_eq!(staged_len(), 0);
    run(FsOp::StageTruncate { txn, size: 3 });
    run(FsOp::StageTruncate { txn, size: 6 });
    assert_eq!(staged_len(), 6, "sized by the truncates, still not copied");
    run(FsOp::StageWrite {
        txn,
        offset: 6,
        data: Bytes::from_static(b"!"),
    });
    run(FsOp::StageCommit {
        txn,
        path: rel("f"),
        size: 7,
        base,
        set: Default::default(),
    });
    assert_eq!(
        std::fs::read(tmp.path().join("f")).expect("read"),
        b"old\0\0\0!"
    );
    // Truncated to nothing: nothing of the old content comes back.
    let txn = TxnId(4);
    let base = begin(&fs, txn, "f");
    run(FsOp::StageTruncate { txn, size: 0 });
    run(FsOp::StageCommit {
        txn,
        path: rel("f"),
        size: 0,
        base,
        set: Default::default(),
    });
    assert_eq!(std::fs::read(tmp.path().join("f")).expect("read"), b"");
}

/// Mode and times a writer set while writing reach the disk with the
/// content, after the last write (which would otherwise move the mtime).
#[test]
fn a_commit_gives_the_new_content_the_mode_and_times_set_while_writing() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-setcommit")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("f"), b"old").expect("write");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let txn = TxnId(5);
    let base = begin(&fs, txn, "f");
    fs.execute(FsOp::StageWrite {
        txn,
        offset: 0,
        data: Bytes::from_static(b"new content"),
    })
    .expect("write");
    let at = Timestamp {
        secs: 1_500_000_000,
        nanos: 250,
    };
    let attr = match fs.execute(FsOp::StageCommit {
        txn,
        path: rel("f"),
        size: 11,
        base,
        set: Box::new(SetAttr {
            size: None,
            mode: Some(0o600),
            atime: None,
            mtime: Some(SetTime::At(at)),
            uid: None,
            gid: None,
        }),
    }) {
        Ok(FsOk::Attr(a)) => a,
        other => panic!("commit: {other:?}"),
    };
    assert_eq!((attr.mode, attr.mtime), (0o600, at));
    let meta = std::fs::metadata(tmp.path().join("f")).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_500_000_000, 250));
    assert_eq!(
        std::fs::read(tmp.path().join("f")).expect("read"),
        b"new content"
    );
}

/// A file with two names, committed through one: written in place, so
/// both names still show one file with the new content (a rename would
/// have left the old content under the other name); the same on MemFs.
#[test]
fn a_commit_of_a_file_with_hard_links_writes_it_in_place() {
    use std::os::unix::fs::MetadataExt;
    use wormhole_core::host::memfs::MemFs;
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-linkcommit")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("a"), b"old content").expect("write");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let mut mem = MemFs::new(1 << 20);
    mem.local_replace(&rel("a"), b"old content").expect("seed");
    let link = |key| FsOp::Link {
        path: rel("a"),
        to: rel("b"),
        key,
    };
    let commit = |base| FsOp::StageCommit {
        txn: TxnId(1),
        path: rel("b"),
        size: 3,
        base,
        set: Box::new(SetAttr::default()),
    };
    let write = FsOp::StageWrite {
        txn: TxnId(1),
        offset: 0,
        data: Bytes::from_static(b"new"),
    };
    for run in [&mut |o: FsOp| fs.execute(o), &mut |o: FsOp| mem.execute(o)]
        as [&mut dyn FnMut(FsOp) -> Result<FsOk, Errno>; 2]
    {
        let Ok(FsOk::Attr(a)) = run(FsOp::Stat { path: rel("a") }) else {
            panic!("stat")
        };
        // Linked only as the file the caller means.
        let other = FileKey {
            ino: a.key.ino + 1,
            ..a.key
        };
        assert_eq!(run(link(other)), Err(Errno::Stale));
        let Ok(FsOk::Attr(linked)) = split_dirs(run(link(a.key))).0 else {
            panic!("link")
        };
        assert_eq!(linked.nlink, 2);
        let Ok(FsOk::Attr(base)) = run(FsOp::StageBegin {
            txn: TxnId(1),
            path: rel("b"),
        }) else {
            panic!("begin")
        };
        run(write.clone()).expect("write");
        let Ok(FsOk::Attr(after)) = run(commit(FileStamp::from(&base))) else {
            panic!("commit")
        };
        assert_eq!((after.key, after.nlink, after.size), (linked.key, 2, 3));
        for n in ["a", "b"] {
            let read = run(FsOp::Read {
                from: ReadFrom::Path(rel(n)),
                offset: 0,
                len: 64,
            });
            let Ok(FsOk::Data(data, _)) = read else {
                panic!("read {n}: {read:?}")
            };
            assert_eq!(&data[..], b"new", "{n}");
        }
    }
    let (a, b) = (
        std::fs::metadata(tmp.path().join("a")).expect("a"),
        std::fs::metadata(tmp.path().join("b")).expect("b"),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one file, two names");
    assert!(
        staging_files(tmp.path()).is_empty(),
        "the staging file is gone"
    );
}

/// A commit makes a new version of the file: it keeps the extended
/// attributes the file has at the commit (one set while writing too),
/// and drops the capability, as a write does; the same on MemFs.
#[test]
fn a_commit_keeps_extended_attributes_but_not_a_capability() {
    use wormhole_core::host::memfs::MemFs;
    use wormhole_core::proto::XattrSet;
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-xattrcommit")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("f"), b"old").expect("write");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let mut mem = MemFs::new(1 << 20);
    mem.local_replace(&rel("f"), b"old").expect("seed");
    let set = |name: &[u8], value: &[u8]| FsOp::SetXattr {
        path: rel("f"),
        name: name.to_vec(),
        value: value.to_vec(),
        how: XattrSet::Either,
        key: None,
    };
    // A capability set as root would be, in the format the kernel checks
    // (VFS_CAP_REVISION_2, no bits).
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    for run in [&mut |o: FsOp| fs.execute(o), &mut |o: FsOp| mem.execute(o)]
        as [&mut dyn FnMut(FsOp) -> Result<FsOk, Errno>; 2]
    {
        run(set(b"user.before", b"1")).expect("set before");
        run(set(b"security.capability", &cap)).expect("set a capability");
        let Ok(FsOk::Attr(base)) = run(FsOp::StageBegin {
            txn: TxnId(1),
            path: rel("f"),
        }) else {
            panic!("begin")
        };
        run(set(b"user.during", b"2")).expect("set while writing");
        let commit = FsOp::StageCommit {
            txn: TxnId(1),
            path: rel("f"),
            size: 3,
            base: FileStamp::from(&base),
            set: Box::new(SetAttr::default()),
        };
        let Ok(FsOk::Attr(after)) = run(commit) else {
            panic!("commit")
        };
        assert_ne!(after.key, base.key, "a new version");
        let Ok(FsOk::Xattr(list)) = run(FsOp::ListXattr {
            path: rel("f"),
            key: None,
        }) else {
            panic!("list")
        };
        let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        names.sort();
        assert_eq!(names, vec![&b"user.before"[..], b"user.during"]);
    }
}

/// An attribute is read or changed only on the file the host knows its
/// node by (the key it sends): another file renamed onto the path is
/// ESTALE, on the real disk as on MemFs.
#[test]
fn extended_attributes_are_only_of_the_file_named() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-xattrkey")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("a"), b"x").expect("write a");
    std::fs::write(tmp.path().join("b"), b"y").expect("write b");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let Ok(FsOk::Attr(a)) = fs.execute(FsOp::Stat { path: rel("a") }) else {
        panic!("stat a")
    };
    let get = || FsOp::GetXattr {
        path: rel("a"),
        name: b"user.tag".to_vec(),
        key: Some(a.key),
    };
    assert_eq!(fs.execute(get()).err(), Some(Errno::NoData));
    std::fs::rename(tmp.path().join("b"), tmp.path().join("a")).expect("b over a");
    assert_eq!(fs.execute(get()).err(), Some(Errno::Stale));
    let set = FsOp::SetXattr {
        path: rel("a"),
        name: b"user.tag".to_vec(),
        value: b"v".to_vec(),
        how: wormhole_core::proto::XattrSet::Either,
        key: Some(a.key),
    };
    assert_eq!(fs.execute(set).err(), Some(Errno::Stale));
}

#[test]
fn the_pool_runs_operations_off_the_caller() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-pool")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let fs = std::sync::Arc::new(HostFs::open(tmp.path(), HostFsConfig::default()).expect("open"));
    let (pool, results) = wormhole_io::host::fs::FsPool::new(fs, 3, 4).expect("pool");
    let n = 50u64;
    futures_lite::future::block_on(async {
        for i in 0..n {
            let name = format!("f{i}");
            pool.submit(
                wormhole_core::host::FsOpId(i),
                FsOp::Create {
                    path: rel(&name),
                    mode: 0o644,
                    exclusive: true,
                    open: None,
                    owner: None,
                },
            )
            .await
            .expect("submit");
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let (op, r) = results.recv().await.expect("result");
            assert!(
                matches!(&r, Ok(FsOk::InDirs { ok, .. }) if matches!(**ok, FsOk::Attr(_))),
                "{op:?}: {r:?}"
            );
            seen.insert(op.0);
        }
        assert_eq!(seen.len() as u64, n);
    });
    pool.shutdown();
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count() as u64, n);
}

#[test]
fn trees_deeper_than_path_max_work_and_stay_confined() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-deep")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let fs = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let long = |i: usize| Name::new(format!("{i:03}{}", "x".repeat(197))).expect("name");
    let mut path = RelPath::root();
    for i in 0..30 {
        path = path.join(&long(i));
        fs.execute(FsOp::Mkdir {
            path: path.clone(),
            mode: 0o755,
            owner: None,
        })
        .unwrap_or_else(|e| panic!("mkdir at depth {i}: {e:?}"));
    }
    let bytes: usize = path.names().iter().map(|n| n.as_bytes().len() + 1).sum();
    assert!(bytes > 4096, "deeper than PATH_MAX: {bytes} bytes");
    let file = path.join(&Name::new("f").expect("name"));
    fs.execute(FsOp::Create {
        path: file.clone(),
        mode: 0o644,
        exclusive: true,
        open: None,
        owner: None,
    })
    .expect("create deep");
    let txn = TxnId(1);
    let base = match fs.execute(FsOp::StageBegin {
        txn,
        path: file.clone(),
    }) {
        Ok(FsOk::Attr(a)) => FileStamp::from(&a),
        other => panic!("begin: {other:?}"),
    };
    fs.execute(FsOp::StageWrite {
        txn,
        offset: 0,
        data: Bytes::from_static(b"deep"),
    })
    .expect("write");
    fs.execute(FsOp::StageCommit {
        txn,
        path: file.clone(),
        size: 4,
        base,
        set: Default::default(),
    })
    .expect("commit");
    match fs.execute(FsOp::Read {
        from: ReadFrom::Path(file.clone()),
        offset: 0,
        len: 10,
    }) {
        Ok(FsOk::Data(b, _)) => assert_eq!(&b[..], b"deep"),
        other => panic!("{other:?}"),
    }
    // A symlink deep down is as refused as one at the top, wherever the
    // path is cut into pieces.
    let mut at = RelPath::root();
    for i in 0..25 {
        at = at.join(&long(i));
    }
    let link = at.join(&Name::new("up").expect("name"));
    fs.execute(FsOp::Symlink {
        path: link.clone(),
        target: b"/".to_vec(),
        owner: None,
    })
    .expect("symlink");
    let mut through = link.clone();
    for n in ["etc", "passwd"] {
        through = through.join(&Name::new(n).expect("name"));
    }
    assert_eq!(fs.execute(FsOp::Stat { path: through }), Err(Errno::Loop));
    let mut long_through = link;
    for i in 0..15 {
        long_through = long_through.join(&long(i));
    }
    assert_eq!(
        fs.execute(FsOp::List {
            path: long_through,
            cookie: 0,
            max: 10
        }),
        Err(Errno::Loop)
    );
}

/// A FIFO and a device node a local program put in the share are never
/// opened by the host, whatever a client asks: an open of a FIFO would
/// release a writer waiting for a reader (or take its data), and an open
/// of a device runs its driver. inotify reports every open of the two
/// (an `O_PATH` probe is none), so the test sees any. Both are shown as
/// what they are (the host core hides the device from clients unless
/// allowed) and the FIFO's mode can change.
#[test]
fn special_files_in_the_share_are_never_opened() {
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::fs::{CWD, FileType, Mode};
    if !is_root() {
        panic!("NOT ROOT: this test makes a device node; run it as root (CI does).");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path();
    let (pipe, zero) = (share.join("pipe"), share.join("zero"));
    rustix::fs::mknodat(CWD, &pipe, FileType::Fifo, Mode::from_raw_mode(0o644), 0).expect("mkfifo");
    let dev = rustix::fs::makedev(1, 5); // /dev/zero
    rustix::fs::mknodat(
        CWD,
        &zero,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        dev,
    )
    .expect("mknod");
    let watch = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).expect("inotify");
    for p in [&pipe, &zero] {
        inotify::add_watch(&watch, p, WatchFlags::OPEN | WatchFlags::ACCESS).expect("watch");
    }
    let fs = HostFs::open(share, HostFsConfig::default()).expect("share");

    let refused = |op: FsOp, want: Errno| {
        let what = format!("{op:?}");
        assert_eq!(fs.execute(op).err(), Some(want), "{what}");
    };
    for (name, absent) in [("pipe", Errno::Perm), ("zero", Errno::Perm)] {
        refused(
            FsOp::SetAttr {
                path: rel(name),
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            },
            Errno::Inval,
        );
        for mode in [OpenFor::Read, OpenFor::Write, OpenFor::Append] {
            refused(
                FsOp::Open {
                    path: rel(name),
                    mode,
                    handle: FsHandle(1),
                    inline_max: 1 << 20,
                },
                absent,
            );
        }
        refused(
            FsOp::Read {
                from: ReadFrom::Path(rel(name)),
                offset: 0,
                len: 4096,
            },
            absent,
        );
        refused(
            FsOp::StageBegin {
                txn: TxnId(1),
                path: rel(name),
            },
            absent,
        );
    }
    // Shown, and changed, without being opened.
    match fs.execute(FsOp::SetAttr {
        path: rel("pipe"),
        set: SetAttr {
            mode: Some(0o600),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        },
    }) {
        Ok(FsOk::Attr(a)) => assert_eq!((a.kind, a.mode & 0o7777), (FileKind::Fifo, 0o600)),
        other => panic!("chmod of the FIFO: {other:?}"),
    }
    match fs.execute(FsOp::List {
        path: RelPath::root(),
        cookie: 0,
        max: 10,
    }) {
        Ok(FsOk::Listing { entries, .. }) => {
            let names: Vec<(&[u8], FileKind)> = entries
                .iter()
                .map(|(n, a)| (n.as_bytes(), a.kind))
                .collect();
            assert_eq!(
                names,
                [
                    (&b"pipe"[..], FileKind::Fifo),
                    (&b"zero"[..], FileKind::CharDevice)
                ]
            );
        }
        other => panic!("list: {other:?}"),
    }
    match fs.execute(FsOp::Stat { path: rel("zero") }) {
        Ok(FsOk::Attr(a)) => assert_eq!((a.kind, a.rdev), (FileKind::CharDevice, dev)),
        other => panic!("stat of the device node: {other:?}"),
    }

    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
    let mut events = inotify::Reader::new(&watch, &mut buf);
    match events.next() {
        Err(rustix::io::Errno::AGAIN) => {}
        Ok(ev) => panic!(
            "the host opened a special file: {:?} (watch {})",
            ev.events() & (ReadFlags::OPEN | ReadFlags::ACCESS),
            ev.wd()
        ),
        Err(e) => panic!("inotify: {e}"),
    }
}
