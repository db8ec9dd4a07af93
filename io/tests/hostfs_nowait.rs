//! [`HostFs::try_execute`], what the host driver runs on its own thread:
//! it answers exactly as [`HostFs::execute`] would when it needs no disk
//! wait, and gives the operation back when it would (the bytes are not in
//! the page cache, or it may write or flush data).

use std::os::unix::fs::FileExt;
use wormhole_core::host::{
    FileStamp, FsHandle, FsOk, FsOp, FsResult, OpenAs, ReadFrom, RelPath, split_dirs,
};
use wormhole_core::proto::{Name, SetAttr, TxnId};
use wormhole_io::host::fs::{HostFs, HostFsConfig, INLINE_STAGE_WRITE};

fn path(name: &str) -> RelPath {
    RelPath::from(vec![Name::new(name.as_bytes()).expect("name")])
}

/// A result offered at once, without the directories' attributes that
/// come with a change of names.
fn without_dirs(r: Result<FsResult, FsOp>) -> Result<FsResult, FsOp> {
    r.map(|r| split_dirs(r).0)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Writes `bytes` to `name`, durably, so its pages are clean and can be
/// dropped from the page cache.
fn write_synced(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))
        .expect("create");
    f.write_all_at(bytes, 0).expect("write");
    f.sync_all().expect("fsync");
    f
}

/// Advises the kernel to drop the file's (clean) pages from the page cache.
fn evict(f: &std::fs::File) {
    rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
}

/// Evicts `f` and offers `op()` to `try_execute` until it is given back,
/// and returns what was given back. One eviction is not always enough:
/// `DONTNEED` is advice (a page another CPU holds in its LRU batch stays),
/// and a `RWF_NOWAIT` read that misses starts the readahead of what it
/// missed (the kernel's `filemap_get_pages`) before it answers EAGAIN, so
/// the pages can be back before the next attempt. An attempt that ran
/// anyway must have answered correctly (`check`).
fn given_back_once_evicted(
    disk: &HostFs,
    f: &std::fs::File,
    mut op: impl FnMut(u32) -> FsOp,
    mut check: impl FnMut(FsResult),
) -> FsOp {
    for attempt in 0..1000 {
        evict(f);
        match disk.try_execute(op(attempt)) {
            Err(back) => return back,
            Ok(answer) => check(answer),
        }
    }
    panic!("1000 evictions, and the operation never had to wait for the disk");
}

#[test]
fn cached_reads_and_metadata_run_at_once_the_rest_is_given_back() {
    // On the machine's disk, not a tmpfs: only a real page cache can miss.
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-nowait")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let small = pattern(3000, 1);
    let big = pattern(1 << 20, 2);
    write_synced(tmp.path(), "small", &small);
    let big_file = write_synced(tmp.path(), "big", &big);
    let disk = HostFs::open(tmp.path(), HostFsConfig::default()).expect("share");

    // Metadata runs.
    let stat = disk.try_execute(FsOp::Stat {
        path: path("small"),
    });
    assert!(
        matches!(&stat, Ok(Ok(FsOk::Attr(a))) if a.size == small.len() as u64),
        "{stat:?}"
    );
    assert!(matches!(
        disk.try_execute(FsOp::StatFs),
        Ok(Ok(FsOk::StatFs(_)))
    ));
    // A missing file is a final answer too, not a retry on the pool.
    assert!(matches!(
        disk.try_execute(FsOp::Stat { path: path("nope") }),
        Ok(Err(_))
    ));

    // A small file just written is in the page cache: its open brings its
    // bytes at once.
    let open = FsOp::Open {
        mode: wormhole_core::proto::OpenFor::Read,
        path: path("small"),
        handle: FsHandle(1),
        inline_max: 128 << 10,
    };
    match disk.try_execute(open) {
        Ok(Ok(FsOk::Opened(a, bytes))) => {
            assert_eq!(a.size, small.len() as u64);
            assert_eq!(&bytes[..], &small[..]);
        }
        other => panic!("open of a cached small file: {other:?}"),
    }

    // A read through a handle: at once while cached...
    let open_big = FsOp::Open {
        mode: wormhole_core::proto::OpenFor::Read,
        path: path("big"),
        handle: FsHandle(2),
        inline_max: 128 << 10,
    };
    assert!(matches!(
        disk.try_execute(open_big),
        Ok(Ok(FsOk::Opened(_, ref b))) if b.is_empty()
    ));
    let read = FsOp::Read {
        from: ReadFrom::Handle(FsHandle(2)),
        offset: 4096,
        len: 65536,
    };
    match disk.try_execute(read.clone()) {
        Ok(Ok(FsOk::Data(bytes, _))) => assert_eq!(&bytes[..], &big[4096..4096 + 65536]),
        other => panic!("cached read: {other:?}"),
    }
    // ...given back once the bytes would come from the disk, and then the
    // pool's way reads them.
    let back = given_back_once_evicted(
        &disk,
        &big_file,
        |_| read.clone(),
        |answer| match answer {
            Ok(FsOk::Data(bytes, _)) => assert_eq!(&bytes[..], &big[4096..4096 + 65536]),
            other => panic!("read that ran anyway: {other:?}"),
        },
    );
    assert_eq!(back, read, "given back untouched");
    match disk.execute(back) {
        Ok(FsOk::Data(bytes, _)) => assert_eq!(&bytes[..], &big[4096..4096 + 65536]),
        other => panic!("pool read: {other:?}"),
    }
    // The same for a small file's open whose bytes were evicted: nothing
    // is kept of the attempt (the handle is free for the pool's open).
    let small_file = std::fs::File::open(tmp.path().join("small")).expect("open");
    // Each attempt opens a fresh handle; one that ran anyway is closed.
    let open_small = |attempt: u32| FsOp::Open {
        mode: wormhole_core::proto::OpenFor::Read,
        path: path("small"),
        handle: FsHandle(3 + u64::from(attempt)),
        inline_max: 128 << 10,
    };
    let mut ran = 0;
    let back = given_back_once_evicted(&disk, &small_file, open_small, |answer| match answer {
        Ok(FsOk::Opened(_, bytes)) => {
            assert_eq!(&bytes[..], &small[..]);
            ran += 1;
        }
        other => panic!("open that ran anyway: {other:?}"),
    });
    let FsOp::Open { handle, .. } = back else {
        panic!("given back as another operation: {back:?}");
    };
    for h in 3..handle.0 {
        assert_eq!(
            disk.try_execute(FsOp::Close {
                handle: FsHandle(h)
            }),
            Ok(Ok(FsOk::Done))
        );
    }
    assert_eq!(ran, handle.0 - 3, "every attempt that ran was counted");
    assert_eq!(
        disk.open_handles(),
        2,
        "the given-back open keeps no handle"
    );
    assert!(matches!(disk.execute(back), Ok(FsOk::Opened(_, ref b)) if b[..] == small[..]));

    // Closing runs at once.
    assert!(matches!(
        disk.try_execute(FsOp::Close { handle }),
        Ok(Ok(FsOk::Done))
    ));
    assert_eq!(disk.open_handles(), 2);

    // Listings, reads by path, size changes and flushes always go to the
    // pool: they may wait for the disk.
    for op in [
        FsOp::List {
            path: RelPath::root(),
            cookie: 0,
            max: 10,
        },
        FsOp::Read {
            from: ReadFrom::Path(path("small")),
            offset: 0,
            len: 10,
        },
        FsOp::SetAttr {
            path: path("small"),
            set: SetAttr {
                size: Some(1),
                ..SetAttr::default()
            },
        },
        FsOp::Sync,
    ] {
        let back = disk.try_execute(op.clone());
        assert_eq!(back, Err(op), "given back untouched");
    }
    assert_eq!(
        std::fs::metadata(tmp.path().join("small"))
            .expect("small")
            .len(),
        small.len() as u64
    );

    // Changes of names run at once: no fsync in them any more (the group
    // commit makes them durable), only inodes and directories in memory.
    assert!(matches!(
        without_dirs(disk.try_execute(FsOp::Mkdir {
            path: path("d"),
            mode: 0o755,
            owner: None,
        })),
        Ok(Ok(FsOk::Attr(_)))
    ));
    assert!(tmp.path().join("d").is_dir());
    assert!(matches!(
        without_dirs(disk.try_execute(FsOp::Unlink {
            path: path("small"),
        })),
        Ok(Ok(FsOk::Done))
    ));
    assert!(!tmp.path().join("small").exists());
}

/// A small file's staging runs at once when it owes no old content (a new
/// file): its write and, on a file system that orders data before the
/// rename, its commit. A write into a staging copy that still owes the
/// old content (a copy first) is given back, as is a large one.
#[test]
fn a_small_new_files_staging_runs_at_once() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-nowait-stage")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::write(tmp.path().join("new"), b"").expect("new");
    std::fs::write(tmp.path().join("old"), pattern(10_000, 1)).expect("old");
    let disk = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let begin = |txn: u64, name: &str| match disk.try_execute(FsOp::StageBegin {
        txn: TxnId(txn),
        path: path(name),
    }) {
        Ok(Ok(FsOk::Attr(a))) => FileStamp::from(&a),
        other => panic!("begin: {other:?}"),
    };
    let write = |txn: u64, len: usize| FsOp::StageWrite {
        txn: TxnId(txn),
        offset: 0,
        data: pattern(len, 2).into(),
    };
    let base = begin(1, "new");
    assert_eq!(disk.try_execute(write(1, 1024)), Ok(Ok(FsOk::Done)));
    let big = write(1, (INLINE_STAGE_WRITE + 1) as usize);
    assert_eq!(
        disk.try_execute(big.clone()),
        Err(big),
        "a large write waits"
    );
    let commit = FsOp::StageCommit {
        txn: TxnId(1),
        path: path("new"),
        size: 1024,
        base,
        set: Default::default(),
    };
    match disk.try_execute(commit.clone()) {
        Ok(Ok(FsOk::Attr(a))) => assert_eq!(a.size, 1024),
        // A file system that does not order data before a rename needs an
        // fdatasync at commit, which may wait.
        Err(back) => assert_eq!(back, commit),
        other => panic!("commit: {other:?}"),
    }
    begin(2, "old");
    let owed = write(2, 10);
    assert_eq!(
        disk.try_execute(owed.clone()),
        Err(owed),
        "the old content is copied first"
    );
}

/// A create that opens runs at once; if someone made the file first and
/// its small content would come from the disk, it is given back, like an
/// open, and the pool's run opens the file as it is.
#[test]
fn a_create_of_a_file_someone_made_first_waits_like_an_open() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-nowait-create")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let small = pattern(3000, 3);
    let file = write_synced(tmp.path(), "there", &small);
    let disk = HostFs::open(tmp.path(), HostFsConfig::default()).expect("share");
    let create = |name: &str, handle: u64| FsOp::Create {
        path: path(name),
        mode: 0o644,
        owner: None,
        exclusive: false,
        open: Some(OpenAs {
            handle: FsHandle(handle),
            inline_max: 128 << 10,
        }),
    };
    assert!(matches!(
        without_dirs(disk.try_execute(create("new", 1))),
        Ok(Ok(FsOk::Opened(a, ref b))) if a.size == 0 && b.is_empty()
    ));
    let mut next = 10;
    let back = given_back_once_evicted(
        &disk,
        &file,
        |_| {
            next += 1;
            create("there", next)
        },
        |answer| match answer {
            Ok(FsOk::Opened(_, bytes)) => assert_eq!(&bytes[..], &small[..]),
            other => panic!("create that ran anyway: {other:?}"),
        },
    );
    assert!(matches!(
        split_dirs(disk.execute(back)).0,
        Ok(FsOk::Opened(_, ref b)) if b[..] == small[..]
    ));
}
