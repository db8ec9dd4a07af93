//! A staging write of zeros leaves a hole on the host where the file
//! system can punch one (docs/filesystem.md, "fallocate"): the content a
//! program reads back is the same, the space is not taken.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use wormhole_core::host::{FileStamp, FsOk, FsOp, RelPath};
use wormhole_core::proto::{Name, TxnId};
use wormhole_io::host::fs::{HostFs, HostFsConfig};

const KIB: usize = 1 << 10;

fn path(name: &str) -> RelPath {
    RelPath::from(vec![Name::new(name.as_bytes()).expect("name")])
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

/// Whether the file system under `dir` punches holes (ext4, xfs, btrfs
/// and tmpfs do).
fn punches_holes(dir: &Path) -> bool {
    let probe = std::fs::File::create(dir.join("probe")).expect("probe");
    probe.set_len(1 << 20).expect("size the probe");
    let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    let punched = rustix::fs::fallocate(&probe, punch, 0, 4096).is_ok();
    std::fs::remove_file(dir.join("probe")).expect("remove the probe");
    punched
}

#[test]
fn zeros_written_over_a_file_become_a_hole_with_the_same_content() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-holes")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let old = pattern(1024 * KIB, 7);
    std::fs::write(tmp.path().join("image"), &old).expect("old content");
    let disk = HostFs::open(tmp.path(), HostFsConfig::default()).expect("open");
    let txn = TxnId(1);
    let base = match disk.execute(FsOp::StageBegin {
        txn,
        path: path("image"),
    }) {
        Ok(FsOk::Attr(a)) => FileStamp::from(&a),
        other => panic!("begin: {other:?}"),
    };
    // A punched hole inside the file, and zeros past its end.
    for (offset, len) in [(256 * KIB, 512 * KIB), (1024 * KIB, 256 * KIB)] {
        let write = FsOp::StageWrite {
            txn,
            offset: offset as u64,
            data: vec![0; len].into(),
        };
        assert_eq!(disk.execute(write), Ok(FsOk::Done));
    }
    // A short run of zeros is written as data.
    let short = FsOp::StageWrite {
        txn,
        offset: 0,
        data: vec![0; 4 * KIB].into(),
    };
    assert_eq!(disk.execute(short), Ok(FsOk::Done));
    let size = 1280 * KIB;
    let commit = FsOp::StageCommit {
        txn,
        path: path("image"),
        size: size as u64,
        base,
        set: Default::default(),
    };
    match disk.execute(commit) {
        Ok(FsOk::Attr(a)) => assert_eq!(a.size, size as u64),
        other => panic!("commit: {other:?}"),
    }
    let mut want = old;
    want[..4 * KIB].fill(0);
    want[256 * KIB..768 * KIB].fill(0);
    want.resize(size, 0);
    let got = std::fs::read(tmp.path().join("image")).expect("read back");
    assert!(got == want, "the content changed");
    if punches_holes(tmp.path()) {
        let used = std::fs::metadata(tmp.path().join("image"))
            .expect("stat")
            .blocks()
            * 512;
        // 512 KiB of data stays (the first 4 KiB written as zeros among
        // it); the 768 KiB of zeros take nothing, give or take a block.
        assert!(
            used <= (512 + 64) as u64 * KIB as u64,
            "{used} bytes allocated for 512 KiB of data"
        );
    }
}
