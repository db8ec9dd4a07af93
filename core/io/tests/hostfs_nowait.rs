//! [`HostFs::try_execute`], what the host driver runs on its own thread:
//! it answers exactly as [`HostFs::execute`] would when it needs no disk
//! wait, and gives the operation back when it would (the bytes are not in
//! the page cache) or when it changes something.

use std::os::unix::fs::FileExt;
use wormhole_core::host::{FsHandle, FsOk, FsOp, ReadFrom, RelPath};
use wormhole_core::proto::Name;
use wormhole_io::hostfs::{HostFs, HostFsConfig};

fn path(name: &str) -> RelPath {
    RelPath::from(vec![Name::new(name.as_bytes()).expect("name")])
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

/// Drops the file's (clean) pages from the page cache. `DONTNEED` is
/// advice: a page another CPU still holds in its LRU batch stays. So it is
/// repeated until a read that must not wait for the disk (`RWF_NOWAIT`,
/// the probe `try_execute` itself uses) finds the first page gone.
fn evict(f: &std::fs::File) {
    for _ in 0..1000 {
        rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        let mut byte = [0u8; 1];
        let mut slice = [std::io::IoSliceMut::new(&mut byte)];
        match rustix::io::preadv2(f, &mut slice, 0, rustix::io::ReadWriteFlags::NOWAIT) {
            Err(rustix::io::Errno::AGAIN) => return,
            Ok(_) => std::thread::yield_now(),
            Err(e) => panic!("probe read: {e}"),
        }
    }
    panic!("the page cache kept the file's pages through 1000 DONTNEED advices");
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
    evict(&big_file);
    let back = disk
        .try_execute(read)
        .expect_err("a read of evicted pages must go to the pool");
    match disk.execute(back) {
        Ok(FsOk::Data(bytes, _)) => assert_eq!(&bytes[..], &big[4096..4096 + 65536]),
        other => panic!("pool read: {other:?}"),
    }
    // The same for a small file's open whose bytes were evicted: nothing
    // is kept of the attempt (the handle is free for the pool's open).
    let small_file = std::fs::File::open(tmp.path().join("small")).expect("open");
    evict(&small_file);
    let open_again = FsOp::Open {
        path: path("small"),
        handle: FsHandle(3),
        inline_max: 128 << 10,
    };
    let back = disk
        .try_execute(open_again)
        .expect_err("an open whose bytes were evicted must go to the pool");
    assert_eq!(
        disk.open_handles(),
        2,
        "the given-back open keeps no handle"
    );
    assert!(matches!(disk.execute(back), Ok(FsOk::Opened(_, ref b)) if b[..] == small[..]));

    // Closing runs at once.
    assert!(matches!(
        disk.try_execute(FsOp::Close {
            handle: FsHandle(3)
        }),
        Ok(Ok(FsOk::Done))
    ));
    assert_eq!(disk.open_handles(), 2);

    // Listings and changes always go to the pool.
    for op in [
        FsOp::List {
            path: RelPath::root(),
            cookie: 0,
            max: 10,
        },
        FsOp::Mkdir {
            path: path("d"),
            mode: 0o755,
        },
        FsOp::Unlink {
            path: path("small"),
        },
        FsOp::Read {
            from: ReadFrom::Path(path("small")),
            offset: 0,
            len: 10,
        },
    ] {
        let back = disk.try_execute(op.clone());
        assert_eq!(back, Err(op), "given back untouched");
    }
    assert!(tmp.path().join("small").exists());
    assert!(!tmp.path().join("d").exists());
}
