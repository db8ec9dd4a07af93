//! End to end through a real FUSE mount: the kernel, fuser, the FUSE
//! adapter and mount driver of `wormhole-io`, the client core, and an
//! in-process host on the in-memory disk, with one test body run on both
//! shells (tokio and smol).
//!
//! The test drives the mount with plain `std::fs` calls, as any program
//! would. It needs root and `/dev/fuse` (CI has both); if the mount
//! cannot be made it fails and says why, it never skips. Every wait has a
//! limit: the file-system calls run on a worker thread that the test
//! waits for with a timeout, naming the step that hung.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wormhole_tests::e2e::{Steps, pattern, run_bounded, wait_until};

use wormhole_core::client::ClientEvent;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::memfs::MemFs;
use wormhole_core::host::{FileStamp, FsOk, FsOp, HostConfig, RelPath};
use wormhole_core::proto::{Checksum, Name, TxnId};
use wormhole_io::testkit::LocalHost;
use wormhole_io::{Mount, MountOptions, Shell, timeout};
use wormhole_tokio::TokioShell;

/// The limit on connecting and on stopping.
const STEP: Duration = Duration::from_secs(20);
/// The limit on the whole file-system workout.
const SUITE: Duration = Duration::from_secs(300);
const CHUNK: usize = 128 * 1024;
const BIG: usize = 3 * 1024 * 1024 + 7;
const SECRET: TicketSecret = TicketSecret([0x42; 32]);

wormhole_tests::both_shells! {
    fuse_mount: fuse_mount;
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Guard {
    mount: Option<Mount>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Mount's own drop unmounts (lazily if something is still open).
        drop(self.mount.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn scratch(runtime: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "wormhole-fuse-{runtime}-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(dir.join("mnt")).expect("make the mountpoint");
    fs::create_dir_all(dir.join("cache")).expect("make the cache directory");
    dir
}

fn mount_at<S: Shell>(shell: &S, host: &LocalHost, dir: &Path, attr_ttl: Duration) -> Mount {
    let mut options = MountOptions::new(SECRET).expect("randomness");
    options.client.cache.attr_ttl = attr_ttl;
    options.cache_dir = Some(dir.join("cache"));
    // A small memory cache, so chunks move on to the disk cache.
    options.client.cache.l1_max_bytes = 2 << 20;
    let mountpoint = dir.join("mnt");
    let mount = shell
        .block_on(async { Mount::new(shell.runtime(), host.transport(), &mountpoint, options) })
        .unwrap_or_else(|e| {
            panic!(
                "FUSE mount failed on {} (this test needs root and /dev/fuse; it does not \
                 skip): {e}",
                shell.name()
            )
        });
    let rt = shell.runtime();
    let event = shell
        .block_on(timeout(
            &*rt,
            STEP,
            "the mount to connect",
            mount.events().recv(),
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the mount driver is running");
    assert_eq!(event, ClientEvent::Connected { resumed: false });
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(mountpoint.to_str().unwrap_or("?")) && l.contains("fuse")),
        "{} is not a FUSE mount:\n{mounts}",
        mountpoint.display()
    );
    mount
}

fn unmount<S: Shell>(shell: &S, guard: &mut Guard) {
    let mount = guard.mount.take().expect("mounted");
    let stopped = mount.stopped();
    mount.unmount().expect("unmount cleanly");
    let rt = shell.runtime();
    shell
        .block_on(timeout(&*rt, STEP, "the mount driver to stop", stopped))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The in-memory disk, counting the bytes that reach staging copies by
/// each way: sent by a client (`StageWrite`) or copied on the host
/// (`StageCopy`).
struct Counting {
    disk: MemFs,
    written: Arc<AtomicU64>,
    copied: Arc<AtomicU64>,
}

impl wormhole_io::testkit::FsExecutor for Counting {
    fn execute(&mut self, op: FsOp) -> wormhole_core::host::FsResult {
        match &op {
            FsOp::StageWrite { data, .. } => {
                self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            FsOp::StageCopy { len, .. } => {
                self.copied.fetch_add(*len, Ordering::Relaxed);
            }
            _ => {}
        }
        wormhole_io::testkit::FsExecutor::execute(&mut self.disk, op)
    }
}

fn fuse_mount<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch(shell.name());
    let (written, copied) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let disk = Counting {
        disk: MemFs::new(1 << 30),
        written: written.clone(),
        copied: copied.clone(),
    };
    let host = shell.block_on(async {
        LocalHost::spawn(shell.runtime(), disk, SECRET, HostConfig::default(), 7)
    });
    let mut guard = Guard {
        mount: Some(mount_at(shell, &host, &dir, Duration::from_secs(1))),
        dir: dir.clone(),
    };
    let root = dir.join("mnt");
    run_bounded(&root, SUITE, workout);
    // What tar and rm -r do: the mount takes the directory's lease and
    // answers the creates and unlinks itself, streaming them in order.
    run_bounded(&root, SUITE, |root, steps| {
        let tree = root.join("tree");
        for round in 0..2 {
            steps.at("tree: files made in a new directory");
            fs::create_dir(&tree).expect("mkdir tree");
            for i in 0..200 {
                fs::write(tree.join(format!("f{i}")), format!("{round}/{i}")).expect("write");
            }
            steps.at("tree: the same names unlinked and made again");
            for i in 0..100 {
                fs::remove_file(tree.join(format!("f{i}"))).expect("unlink");
                expect_errno(fs::metadata(tree.join(format!("f{i}"))), ENOENT, "unlinked");
            }
            for i in 0..50 {
                fs::write(tree.join(format!("f{i}")), format!("again {i}")).expect("write");
            }
            let mut names: Vec<String> = fs::read_dir(&tree)
                .expect("readdir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let mut want: Vec<String> = (0..50).chain(100..200).map(|i| format!("f{i}")).collect();
            want.sort();
            assert_eq!(names, want, "listed after the unlinks");
            assert_eq!(fs::read(tree.join("f7")).expect("read"), b"again 7");
            assert_eq!(
                fs::read(tree.join("f150")).expect("read"),
                format!("{round}/150").as_bytes()
            );
            steps.at("tree: rm -r");
            fs::remove_dir_all(&tree).expect("rm -r tree");
            expect_errno(fs::metadata(&tree), ENOENT, "removed tree");
        }
        // The rmdir may have been answered under the root's lease (two
        // ordinary changes there, the first round's rmdir and the second
        // round's mkdir, earn it) and streamed after the tree's unlinks:
        // an fsync of the root returns once the host applied that stream.
        steps.at("tree: fsync of the root");
        fs::File::open(root)
            .and_then(|r| r.sync_all())
            .expect("fsync the root");
    });
    // So the host has removed the directory, and every unlink in it.
    let (seen, gone) = async_channel::bounded(1);
    shell.block_on(host.local_change(RelPath::from(vec![]), move |fs| {
        let tree = RelPath::from(vec![Name::new("tree").expect("name")]);
        let _ = seen.try_send(fs.execute(FsOp::Stat { path: tree }));
    }));
    let stat = shell.block_on(gone.recv()).expect("the host looked");
    assert_eq!(
        stat,
        Err(wormhole_core::proto::Errno::NoEnt),
        "tree on the host"
    );
    // copy_file_range within the mount (what `cp` and `std::fs::copy`
    // use): the host copies, the bytes do not cross the network.
    run_bounded(&root, SUITE, |root, steps| {
        steps.at("copy: the source");
        fs::write(root.join("copy-src"), pattern(BIG, 99)).expect("write the source");
    });
    let (written_before, copied_before) = (
        written.load(Ordering::Relaxed),
        copied.load(Ordering::Relaxed),
    );
    run_bounded(&root, SUITE, |root, steps| {
        steps.at("copy: std::fs::copy within the mount");
        let n = fs::copy(root.join("copy-src"), root.join("copy-dst")).expect("copy");
        assert_eq!(n, BIG as u64);
        assert!(
            fs::read(root.join("copy-dst")).expect("read the copy") == pattern(BIG, 99),
            "copy differs"
        );
    });
    assert_eq!(
        copied.load(Ordering::Relaxed) - copied_before,
        BIG as u64,
        "the host copied every byte"
    );
    assert_eq!(
        written.load(Ordering::Relaxed),
        written_before,
        "no byte of the copy was sent"
    );
    unmount(shell, &mut guard);

    // The disk cache survives: the remount finds the chunks the first
    // mount stored, and reads what the host holds.
    let chunks = fs::read_dir(dir.join("cache").join("chunks"))
        .expect("the disk cache directory")
        .count();
    assert!(chunks > 0, "no chunk reached the disk cache");
    // Attributes cached for a minute: only an invalidation pushed by the
    // host and passed on to the kernel can show a change sooner.
    guard.mount = Some(mount_at(shell, &host, &dir, Duration::from_secs(60)));
    run_bounded(&root, SUITE, |root, _| {
        for len in [CHUNK + 1, BIG] {
            let data = fs::read(root.join(format!("sizes/{len}"))).expect("read after remount");
            assert!(
                data == pattern(len, len as u64),
                "{len} B file after remount"
            );
        }
        assert_eq!(fs::metadata(root.join("old")).expect("stat").len(), 11);
    });
    let stats = shell
        .block_on(guard.mount.as_ref().expect("mounted").cache_stats())
        .expect("the driver runs");
    assert!(
        stats.l2_reads > 0 && stats.bad_checksums == 0,
        "the remount reads chunks from the disk cache: {stats:?}"
    );
    let changed = b"changed on the host by a local program";
    shell.block_on(
        host.local_change(RelPath::from(vec![Name::new("old").expect("name")]), |fs| {
            let path = || RelPath::from(vec![Name::new("old").expect("name")]);
            let txn = TxnId(1 << 40);
            let Ok(FsOk::Attr(was)) = fs.execute(FsOp::StageBegin { txn, path: path() }) else {
                panic!("stage");
            };
            fs.execute(FsOp::StageWrite {
                txn,
                offset: 0,
                data: changed.to_vec().into(),
            })
            .expect("write");
            fs.execute(FsOp::StageCommit {
                txn,
                path: path(),
                size: changed.len() as u64,
                base: FileStamp::from(&was),
                set: Default::default(),
            })
            .expect("commit");
        }),
    );
    run_bounded(&root, SUITE, |root, _| {
        let want = b"changed on the host by a local program";
        wait_until(
            Duration::from_secs(10),
            "the host's change to reach the kernel",
            || fs::metadata(root.join("old")).is_ok_and(|m| m.len() == want.len() as u64),
        );
        assert_eq!(fs::read(root.join("old")).expect("read"), want);
    });
    unmount(shell, &mut guard);
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn expect_errno<T: std::fmt::Debug>(result: std::io::Result<T>, want: i32, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected errno {want}, got Ok({v:?})"),
        Err(e) => assert_eq!(errno(&e), want, "{what}: {e}"),
    }
}

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;
const ENOTEMPTY: i32 = 39;
const EOPNOTSUPP: i32 = 95;

fn workout(root: &Path, steps: &Steps) {
    steps.at("sizes: write and read back");
    let sizes = root.join("sizes");
    fs::create_dir(&sizes).expect("mkdir sizes");
    let lens = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, BIG];
    for len in lens {
        let data = pattern(len, len as u64);
        let path = sizes.join(len.to_string());
        fs::write(&path, &data).unwrap_or_else(|e| panic!("write {len} B: {e}"));
        assert_eq!(fs::metadata(&path).expect("stat").len(), len as u64);
        let back = fs::read(&path).unwrap_or_else(|e| panic!("read {len} B: {e}"));
        assert_eq!(back.len(), len, "length of the {len} B file");
        assert!(
            Checksum::of(&back) == Checksum::of(&data),
            "content of the {len} B file differs"
        );
    }
    steps.at("sizes: a read across a chunk boundary");
    let big = pattern(BIG, BIG as u64);
    let mut f = File::open(sizes.join(big.len().to_string())).expect("open big");
    let at = 2 * CHUNK as u64 - 100;
    f.seek(SeekFrom::Start(at)).expect("seek");
    let mut buf = vec![0; 4096];
    f.read_exact(&mut buf).expect("read across chunks");
    assert_eq!(buf, big[at as usize..at as usize + 4096]);
    drop(f);

    steps.at("concurrent readers");
    // Many requests in flight at once: each thread reads its own file
    // while the others wait on the host.
    std::thread::scope(|scope| {
        for len in lens {
            let path = sizes.join(len.to_string());
            scope.spawn(move || {
                for _ in 0..3 {
                    let back = fs::read(&path).unwrap_or_else(|e| panic!("read {len} B: {e}"));
                    assert!(
                        back == pattern(len, len as u64),
                        "{len} B file read concurrently"
                    );
                }
            });
        }
    });

    steps.at("overwrite in place");
    let mut f = OpenOptions::new()
        .write(true)
        .open(sizes.join(CHUNK.to_string()))
        .expect("open for writing");
    f.seek(SeekFrom::Start(1000)).expect("seek");
    f.write_all(b"hello").expect("write in the middle");
    f.sync_all().expect("fsync");
    drop(f);
    let mut want = pattern(CHUNK, CHUNK as u64);
    want[1000..1005].copy_from_slice(b"hello");
    assert!(fs::read(sizes.join(CHUNK.to_string())).expect("read") == want);

    steps.at("mkdir -p a deep tree");
    let mut deep = root.join("deep");
    for level in 0..24 {
        deep.push(format!("level-{level}"));
    }
    fs::create_dir_all(&deep).expect("mkdir -p");
    fs::write(deep.join("leaf"), b"bottom").expect("write at the bottom");
    assert_eq!(fs::read(deep.join("leaf")).expect("read"), b"bottom");
    assert!(fs::metadata(&deep).expect("stat").is_dir());

    steps.at("a directory of 10,000 entries");
    let many = root.join("many");
    fs::create_dir(&many).expect("mkdir many");
    for i in 0..10_000 {
        File::create(many.join(format!("entry-{i:05}"))).expect("create an entry");
    }
    let mut names: Vec<String> = fs::read_dir(&many)
        .expect("opendir")
        .map(|e| {
            e.expect("readdir")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 10_000, "every entry listed once");
    let want: Vec<String> = (0..10_000).map(|i| format!("entry-{i:05}")).collect();
    assert_eq!(names, want);

    steps.at("rename over an existing file");
    fs::write(root.join("old"), b"old content").expect("write old");
    fs::write(root.join("new"), b"new content").expect("write new");
    fs::rename(root.join("new"), root.join("old")).expect("rename over");
    assert_eq!(fs::read(root.join("old")).expect("read"), b"new content");
    expect_errno(fs::metadata(root.join("new")), ENOENT, "the source is gone");

    steps.at("unlink an open file");
    let doomed = pattern(CHUNK * 2 + 17, 99);
    fs::write(root.join("doomed"), &doomed).expect("write doomed");
    let mut open = File::open(root.join("doomed")).expect("open doomed");
    let mut first = vec![0; 10];
    open.read_exact(&mut first).expect("read before unlink");
    fs::remove_file(root.join("doomed")).expect("unlink");
    expect_errno(fs::metadata(root.join("doomed")), ENOENT, "unlinked name");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).expect("read after unlink");
    first.extend(rest);
    assert!(first == doomed, "an unlinked file reads whole until close");
    drop(open);

    steps.at("truncate");
    let t = root.join("trunc");
    let data = pattern(300_000, 5);
    fs::write(&t, &data).expect("write");
    let f = OpenOptions::new().write(true).open(&t).expect("open");
    f.set_len(1000).expect("shrink");
    // Attributes from setattr and getattr replies carry the inode number
    // (the kernel reports it as st_ino).
    let ino = f.metadata().expect("fstat").ino();
    assert_ne!(ino, 0, "st_ino after setattr");
    assert_eq!(fs::metadata(&t).expect("stat").ino(), ino);
    drop(f);
    assert_eq!(fs::read(&t).expect("read"), data[..1000]);
    let f = OpenOptions::new().write(true).open(&t).expect("open");
    f.set_len(200_000).expect("grow");
    drop(f);
    let back = fs::read(&t).expect("read");
    assert_eq!(back.len(), 200_000);
    assert_eq!(back[..1000], data[..1000]);
    assert!(back[1000..].iter().all(|&b| b == 0), "grown bytes are zero");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&t)
        .expect("open with O_TRUNC");
    assert_eq!(fs::metadata(&t).expect("stat").len(), 0);

    steps.at("chmod and utimens");
    fs::set_permissions(&t, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        fs::metadata(&t).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options()
        .write(true)
        .open(&t)
        .expect("open")
        .set_modified(when)
        .expect("set mtime");
    assert_eq!(
        fs::metadata(&t).expect("stat").modified().expect("mtime"),
        when
    );

    steps.at("symlink and readlink");
    std::os::unix::fs::symlink("some/where/else", root.join("link")).expect("symlink");
    assert_eq!(
        fs::read_link(root.join("link")).expect("readlink"),
        Path::new("some/where/else")
    );
    assert!(
        fs::symlink_metadata(root.join("link"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );

    steps.at("errno");
    expect_errno(
        fs::read(root.join("missing")),
        ENOENT,
        "read a missing file",
    );
    expect_errno(
        fs::create_dir(root.join("deep")),
        EEXIST,
        "mkdir an existing dir",
    );
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(root.join("old")),
        EEXIST,
        "O_EXCL on an existing file",
    );
    expect_errno(
        fs::remove_dir(root.join("many")),
        ENOTEMPTY,
        "rmdir non-empty",
    );
    expect_errno(
        OpenOptions::new().write(true).open(root.join("deep")),
        EISDIR,
        "open a directory for writing",
    );
    expect_errno(
        fs::read(root.join("old/x")),
        ENOTDIR,
        "a file as a directory",
    );
    expect_errno(fs::remove_dir(root.join("old")), ENOTDIR, "rmdir a file");
    let e = fs::read_dir(root.join("old")).expect_err("opendir a file");
    assert_eq!(errno(&e), ENOTDIR, "{e}");
    assert_eq!(e.kind(), ErrorKind::NotADirectory);

    steps.at("fallocate");
    {
        use rustix::fs::{FallocateFlags, fallocate};
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("alloc"))
            .expect("create alloc");
        f.write_all(b"0123456789").expect("write");
        fallocate(&f, FallocateFlags::empty(), 0, 100).expect("posix_fallocate");
        assert_eq!(f.metadata().expect("fstat").len(), 100);
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        fallocate(&f, punch, 2, 3).expect("punch a hole");
        assert_eq!(f.metadata().expect("fstat").len(), 100);
        let err = fallocate(&f, FallocateFlags::COLLAPSE_RANGE, 0, 4096).expect_err("collapse");
        assert_eq!(err.raw_os_error(), EOPNOTSUPP, "collapse: {err}");
        drop(f);
        let mut want = b"01\0\0\x0056789".to_vec();
        want.resize(100, 0);
        assert_eq!(fs::read(root.join("alloc")).expect("read alloc"), want);
        fs::remove_file(root.join("alloc")).expect("unlink alloc");
    }

    steps.at("rmdir and unlink");
    fs::remove_file(deep.join("leaf")).expect("unlink leaf");
    fs::remove_dir(&deep).expect("rmdir the deepest");
    expect_errno(fs::metadata(&deep), ENOENT, "removed dir");
}

/// A mount that cannot be made says where and why, in one line.
#[test]
fn a_failed_mount_names_the_mountpoint() {
    let shell = TokioShell::new().expect("start a tokio runtime");
    let host = shell.block_on(async {
        LocalHost::spawn(
            shell.runtime(),
            MemFs::new(1 << 20),
            SECRET,
            HostConfig::default(),
            1,
        )
    });
    let missing = std::env::temp_dir().join("wormhole-no-such-mountpoint/deeper");
    let options = MountOptions::new(SECRET).expect("randomness");
    let err = shell
        .block_on(async { Mount::new(shell.runtime(), host.transport(), &missing, options) })
        .expect_err("no such mountpoint");
    let text = err.to_string();
    assert!(
        matches!(err, wormhole_io::MountError::Fuse { .. })
            && text.contains(missing.to_str().unwrap_or("?")),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}
