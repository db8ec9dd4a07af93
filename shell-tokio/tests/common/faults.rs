//! Fault injection, end to end: the real binaries (`host` and `mount`, on
//! the shell under test) on a real folder and a real FUSE mount, with the
//! faults that once corrupted files (issue 16): a host-side save racing a
//! client's write, a host killed with `kill -9` in the middle of a rewrite
//! and started again, a full disk, errors that belong to `open`, two hosts
//! of one folder. After each, the rule: every file on the host is whole
//! (its old content or exactly what a client committed, never a mix, never
//! padding), nothing acknowledged is lost, and no staging file outlives a
//! restart's first scan.
//!
//! Needs root and /dev/fuse (it fails, never skips, without them).
//!
//! The tests take turns ([`serial`]), and a writer that must keep a file
//! open while the test starts processes is itself a process (`dd`): a
//! fork copies every open descriptor, and its exec closes the copies,
//! which the kernel reports to FUSE as a FLUSH of the file, a commit the
//! writer never asked for.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use super::procs::{
    ANY_PORT, Cleanup, STEP, exit_of, exited, line_where, line_within, mounted, one_error_line,
    scratch, start_host, ticket_of,
};

/// Errnos the tests expect, as `raw_os_error` gives them.
const EPERM: i32 = 1;
const EROFS: i32 = 30;
const ESTALE: i32 = 116;

/// One fault test at a time (see the module's docs).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `dd` writing `mib` MiB of `from` to `to` (truncating it, as a
/// shell's `>` does), with an fsync at the end.
fn dd(from: &str, to: &Path, mib: u32) -> Child {
    dd_with(from, to, mib, &["conv=fsync"])
}

/// [`dd`] with other flags (`oflag=append conv=notrunc,fsync` appends).
fn dd_with(from: &str, to: &Path, mib: u32, flags: &[&str]) -> Child {
    Command::new("dd")
        .arg(format!("if={from}"))
        .arg(format!("of={}", to.display()))
        .args(["bs=1M", &format!("count={mib}"), "status=none"])
        .args(flags)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dd")
}

/// Waits at most `limit` for `child` to end; its status and stderr.
fn ended(child: Child, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
    let out = exited(child, limit, what);
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A host process and what it printed: its ticket and its address.
struct HostProc {
    ticket: String,
    addr: String,
}

/// Starts `bin host` on `share` bound to `bind`; returns its ticket and
/// address once it has printed them.
fn host(cleanup: &mut Cleanup, bin: &Path, bind: &str) -> HostProc {
    let (child, out) = start_host(bin, &cleanup.dir, bind, &[]);
    cleanup.children.push(child);
    let first = line_where(&out, "the host's first line", |l| l.starts_with("Sharing "));
    // "Sharing DIR on ADDR."
    let addr = first
        .rsplit(" on ")
        .next()
        .map(|a| a.trim_end_matches('.').to_owned())
        .expect("the address");
    let ticket = ticket_of(&out);
    HostProc { ticket, addr }
}

/// `kill -9` of the host started last: no Goodbye, no cleanup, as a power
/// cut would leave it (the disk keeps what was durable).
fn kill_host(cleanup: &mut Cleanup) {
    let mut child: Child = cleanup.children.remove(0);
    child.kill().expect("kill -9 the host");
    child.wait().expect("reap the host");
}

/// Waits up to `limit` for `check` on the host's files beneath `dir`,
/// checking again at each change inotify reports there.
fn wait_for(dir: &Path, limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let (tx, rx) = mpsc::channel();
    use notify::Watcher;
    let mut watcher = notify::INotifyWatcher::new(
        move |event| {
            let _ = tx.send(event);
        },
        notify::Config::default(),
    )
    .expect("inotify");
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .expect("watch the share");
    let end = Instant::now() + limit;
    while !check() {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {limit:?} waiting for {what}"
        );
        let _ = rx.recv_timeout(left);
    }
}

/// The staging files (`.wormhole.*`) beneath `dir`.
fn staging(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".wormhole.") {
            out.push(p);
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(staging(&p));
        }
    }
    out
}

/// Whether the file at `path` holds exactly `want` (compared, not
/// printed: a failed comparison of megabytes would bury the message).
fn holds(path: &Path, want: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|got| got == want)
}

/// Bytes that differ per seed and position.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// A host and a mount of it, in a fresh scratch directory.
fn rig(test: &str, bin: &Path) -> (Cleanup, HostProc, PathBuf, PathBuf) {
    let mut cleanup = scratch(test, bin);
    let share = cleanup.dir.join("share");
    let mnt = cleanup.dir.join("mnt");
    let h = host(&mut cleanup, bin, ANY_PORT);
    let (mount, _) = mounted(bin, &h.ticket, &mnt);
    cleanup.children.push(mount);
    (cleanup, h, share, mnt)
}

/// Case 1: a client has `doc.txt` open for writing when a program on the
/// host saves it atomically (a new file renamed over it), before and
/// after the client's first write. The client's fsync fails (ESTALE): its
/// writes were made to a version that is gone. The host keeps the
/// program's version whole.
pub(crate) fn a_host_side_save_during_a_write_keeps_one_whole_version(bin: &Path) {
    let _turn = serial();
    let (_cleanup, _h, share, mnt) = rig("save-race", bin);
    for write_first in [false, true] {
        std::fs::write(share.join("doc.txt"), b"version2 longer\n").expect("seed");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join("doc.txt"))
            .expect("open r+ through the mount");
        let save = || {
            std::fs::write(share.join("doc.tmp"), b"version3\n").expect("temp");
            std::fs::rename(share.join("doc.tmp"), share.join("doc.txt")).expect("rename");
        };
        if write_first {
            // More than a whole write holds, so the transaction locks and
            // begins at the host before the save (a small write would
            // wait for its flush, and be refused there the same way).
            f.write_all(&LARGE_WRITE[..]).expect("write");
            // Let the transaction begin at the host before the save.
            wait_for(&share, STEP, "the transaction to begin", || {
                !staging(&share).is_empty()
            });
            save();
        } else {
            save();
            f.write_all(b"CLIENT").expect("write");
        }
        let synced = f.sync_all();
        assert_eq!(
            synced.as_ref().map_err(std::io::Error::raw_os_error),
            Err(Some(ESTALE)),
            "write_first {write_first}: the writer is told"
        );
        drop(f);
        assert_eq!(
            std::fs::read(share.join("doc.txt")).expect("read"),
            b"version3\n",
            "write_first {write_first}: the host program's version, whole"
        );
        wait_for(&share, STEP, "no staging file", || {
            staging(&share).is_empty()
        });
    }
}

/// Case 2: a rewrite with `O_TRUNC` of a 20 MB file, the host killed with
/// `kill -9` in the middle and started again on its address. Until the
/// rewrite commits the host keeps the old content; after the crash the
/// file is the old content, whole; the restart's first scan removes the
/// staging file; the writer gets an error instead of hanging.
pub(crate) fn an_o_trunc_rewrite_survives_kill_9_of_the_host(bin: &Path) {
    // dd's `of=` truncates: the rewrite of 400 MiB starts with O_TRUNC.
    killed_during_a_write(bin, "kill9", &["conv=fsync"]);
}

/// The same with an append (`>>`): 400 MiB appended to the 20 MB file,
/// the host killed in the middle. The file stays its 20 MB, whole: an
/// append commits as a whole too.
pub(crate) fn an_append_survives_kill_9_of_the_host(bin: &Path) {
    killed_during_a_write(bin, "kill9-append", &["oflag=append", "conv=notrunc,fsync"]);
}

fn killed_during_a_write(bin: &Path, test: &str, flags: &[&str]) {
    let _turn = serial();
    let (mut cleanup, h, share, mnt) = rig(test, bin);
    let old = pattern(20 << 20, 1);
    std::fs::write(share.join("big.bin"), &old).expect("seed");
    // A file written through the mount and fsynced before the crash: the
    // host acknowledged it durable, so it must survive kill -9.
    let acked = pattern(3 << 20, 2);
    let mut f = std::fs::File::create(mnt.join("acked.bin")).expect("create");
    f.write_all(&acked).expect("write");
    f.sync_all().expect("fsync");
    let writer = dd_with("/dev/urandom", &mnt.join("big.bin"), 400, flags);
    wait_for(&share, STEP, "the write to be staged", || {
        staging(&share)
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 28 << 20))
    });
    assert!(
        holds(&share.join("big.bin"), &old),
        "the old content until the write commits"
    );
    kill_host(&mut cleanup);
    assert!(
        holds(&share.join("big.bin"), &old),
        "after kill -9: the old content, whole"
    );
    let _h2 = host(&mut cleanup, bin, &h.addr);
    wait_for(
        &share,
        STEP,
        "the restart's scan to sweep the staging file",
        || staging(&share).is_empty(),
    );
    let (status, err) = ended(writer, Duration::from_secs(120), "the writer");
    assert!(
        !status.success(),
        "the lost write is reported, not hidden: {err}"
    );
    assert!(holds(&share.join("big.bin"), &old), "still the old content");
    drop(f);
    assert!(
        holds(&share.join("acked.bin"), &acked),
        "what fsync acknowledged survived kill -9, whole"
    );
}

/// Case 3: a disk that fills up. A share on a 20 MB tmpfs: overwriting a
/// 5 MB file with 50 MB fails with ENOSPC (at a write, or at fsync or
/// close) and leaves the 5 MB whole; a new 50 MB file fails the same way
/// and stays empty, not full-sized and full of holes; nothing is left
/// staged. The 50 MB are random: runs of zeros become holes on the host
/// (docs/filesystem.md, "fallocate") and would fit.
pub(crate) fn a_full_disk_fails_the_writer_and_keeps_the_old_content(bin: &Path) {
    let _turn = serial();
    let mut cleanup = scratch("full", bin);
    let share = cleanup.dir.join("share");
    let mnt = cleanup.dir.join("mnt");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=20m", "wormhole-full"])
        .arg(&share)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a 20 MB tmpfs (needs root)");
    let _tmpfs = Unmount(share.clone());
    let old = pattern(5 << 20, 3);
    std::fs::write(share.join("old.bin"), &old).expect("seed");
    let h = host(&mut cleanup, bin, ANY_PORT);
    let (mount, _) = mounted(bin, &h.ticket, &mnt);
    cleanup.children.push(mount);
    let (status, err) = ended(dd("/dev/urandom", &mnt.join("old.bin"), 50), STEP, "dd");
    assert!(!status.success(), "50 MB do not fit");
    assert!(err.contains("No space left on device"), "{err}");
    let len = std::fs::metadata(share.join("old.bin")).map_or(0, |m| m.len());
    assert!(
        holds(&share.join("old.bin"), &old),
        "the old content, whole (the file holds {len} bytes)"
    );
    let (status, err) = ended(dd("/dev/urandom", &mnt.join("fill.bin"), 50), STEP, "dd");
    assert!(!status.success(), "50 MB do not fit");
    assert!(err.contains("No space left on device"), "{err}");
    let len = std::fs::metadata(share.join("fill.bin")).map_or(0, |m| m.len());
    assert_eq!(len, 0, "the new file stays empty, not 50 MB of holes");
    wait_for(&share, STEP, "no staging file", || {
        staging(&share).is_empty()
    });
    // The disk has room again: the same write succeeds, whole.
    std::fs::remove_file(share.join("old.bin")).expect("make room");
    let mut f = std::fs::File::create(mnt.join("fill.bin")).expect("create");
    f.write_all(&pattern(8 << 20, 5)).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    assert!(
        holds(&share.join("fill.bin"), &pattern(8 << 20, 5)),
        "written whole"
    );
}

/// Unmounts a tmpfs on drop (after the scratch directory's own cleanup
/// would fail to remove a mounted directory).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Case 4: what the host's open would refuse fails the client's `open`,
/// not its `close` (which shells ignore): appending to a file made
/// immutable on the host is EPERM at open (`echo X >> f` exits non-zero),
/// and writing to a share the host may only read is EROFS at open.
pub(crate) fn errors_that_belong_to_open_come_at_open(bin: &Path) {
    let _turn = serial();
    let (_cleanup, _h, share, mnt) = rig("open-errors", bin);
    std::fs::write(share.join("imm.txt"), b"keep\n").expect("seed");
    let chattr = Command::new("chattr")
        .arg("+i")
        .arg(share.join("imm.txt"))
        .status()
        .expect("run chattr");
    assert!(
        chattr.success(),
        "chattr +i (needs root and a file system with the flag)"
    );
    let _mutable = Chattr(share.join("imm.txt"));
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("imm.txt"))
        .expect_err("an immutable file cannot be opened to append");
    assert_eq!(err.raw_os_error(), Some(EPERM), "{err}");
    let sh = Command::new("sh")
        .arg("-c")
        .arg(format!("echo X >> '{}'", mnt.join("imm.txt").display()))
        .status()
        .expect("run sh");
    assert!(!sh.success(), "the shell sees the refusal");
    assert_eq!(
        std::fs::read(share.join("imm.txt")).expect("read"),
        b"keep\n"
    );
    // Reading it still works.
    let mut text = String::new();
    std::fs::File::open(mnt.join("imm.txt"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("read through the mount");
    assert_eq!(text, "keep\n");
    // A read-only bind of the share: EROFS at open.
    let ro = share.join("ro");
    std::fs::create_dir_all(&ro).expect("mkdir");
    std::fs::write(ro.join("f.txt"), b"ro\n").expect("seed");
    for args in [
        vec![
            "--bind".to_owned(),
            ro.display().to_string(),
            ro.display().to_string(),
        ],
        vec![
            "-o".to_owned(),
            "remount,bind,ro".to_owned(),
            ro.display().to_string(),
        ],
    ] {
        let status = Command::new("mount").args(&args).status().expect("mount");
        assert!(status.success(), "mount {args:?}");
    }
    let _ro = Unmount(ro.clone());
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("ro").join("f.txt"))
        .expect_err("a read-only folder cannot be opened to write");
    assert_eq!(err.raw_os_error(), Some(EROFS), "{err}");
    let mut f = std::fs::File::open(mnt.join("ro").join("f.txt")).expect("open to read");
    let mut text = String::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_string(&mut text).expect("read");
    assert_eq!(text, "ro\n");
}

/// Clears the immutable flag on drop, so the scratch directory can go.
struct Chattr(PathBuf);

impl Drop for Chattr {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// One folder, one host: a second host of the same folder is refused with
/// a clear line (two lock tables over one directory would let their
/// clients overwrite each other's writes); once the first is gone, a new
/// one starts.
pub(crate) fn a_folder_has_one_host_at_a_time(bin: &Path) {
    let _turn = serial();
    let mut cleanup = scratch("one-host", bin);
    let share = cleanup.dir.join("share");
    let _first = host(&mut cleanup, bin, ANY_PORT);
    let out = Command::new(bin)
        .arg("host")
        .arg(&share)
        .args(["--bind", ANY_PORT])
        .env("XDG_CONFIG_HOME", cleanup.dir.join("config"))
        .output()
        .expect("run a second host");
    let line = one_error_line(&out);
    assert!(line.contains("already shared"), "{line}");
    kill_host(&mut cleanup);
    // Gone with its process: a new host starts (it prints its ticket).
    let _second = host(&mut cleanup, bin, ANY_PORT);
}

/// Case 7: a file open for reading keeps its content when a program on
/// the host saves a new version (a new file renamed over it), as an open
/// file on a local disk does; a new open reads the new version.
pub(crate) fn an_open_file_keeps_its_content_when_the_host_saves_a_new_one(bin: &Path) {
    let _turn = serial();
    let (_cleanup, _h, share, mnt) = rig("open-keeps", bin);
    // Several chunks, so the held handle needs the host for the rest.
    let old = pattern(3 << 20, 7);
    std::fs::write(share.join("doc.bin"), &old).expect("seed");
    let mut held = std::fs::File::open(mnt.join("doc.bin")).expect("open through the mount");
    let mut start = vec![0u8; 4096];
    held.read_exact(&mut start).expect("read the start");
    assert_eq!(start, old[..4096]);
    std::fs::write(share.join("doc.tmp"), b"new version\n").expect("temp");
    std::fs::rename(share.join("doc.tmp"), share.join("doc.bin")).expect("save");
    // A new open asks the host (close-to-open): the saved version.
    assert_eq!(
        std::fs::read(mnt.join("doc.bin")).expect("a new open"),
        b"new version\n"
    );
    let mut all = Vec::new();
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.read_to_end(&mut all)
        .expect("read through the held handle");
    assert!(
        all == old,
        "the held handle reads the old content, whole ({} bytes)",
        all.len()
    );
}

/// Case 6: a shell standing in a directory of the mount goes on working
/// there when a program on the host renames the directory: `ls`, `cat`
/// and creating a file work (as a current directory on a local disk
/// follows a rename), and the file lands in the renamed directory.
pub(crate) fn a_directory_renamed_on_the_host_keeps_the_shell_in_it(bin: &Path) {
    let _turn = serial();
    let (cleanup, _h, share, mnt) = rig("dir-rename", bin);
    std::fs::create_dir(share.join("dir")).expect("mkdir");
    std::fs::write(share.join("dir").join("a.txt"), b"A\n").expect("seed");
    // The shell waits on a FIFO (outside the mount) between `cd` and the
    // rest, so the rename happens while it stands in the directory.
    let fifo = cleanup.dir.join("go");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && read go < '{}' && ls && cat a.txt && echo new > b.txt",
            mnt.join("dir").display(),
            fifo.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sh");
    // Opening the FIFO to write waits for the shell to open it to read,
    // which it does after its `cd`.
    let mut go = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    std::fs::rename(share.join("dir"), share.join("dir2")).expect("rename on the host");
    // The host learns of the move from its watcher, or (if that event is
    // not in yet) from this lookup of the new name, which finds the
    // directory's own node either way.
    assert!(mnt.join("dir2").exists(), "the mount sees the new name");
    go.write_all(b"go\n").expect("signal the shell");
    drop(go);
    let out = shell.wait_with_output().expect("wait for sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the shell works on in the renamed directory: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a.txt") && stdout.contains("A"), "{stdout}");
    assert_eq!(
        std::fs::read(share.join("dir2").join("b.txt")).expect("the new file"),
        b"new\n"
    );
}

/// Case 8: two `wormhole mount`s started at the same moment on one empty
/// mountpoint: one mounts, the other is refused with a line that says
/// the directory is a wormhole mount already (they used to stack, and one
/// unmount removed both). A later one is refused the same way.
pub(crate) fn one_mountpoint_has_one_mount(bin: &Path) {
    let _turn = serial();
    let (cleanup, h, _share, _mnt) = rig("double-mount", bin);
    let at = cleanup.dir.join("mnt-twice");
    std::fs::create_dir(&at).expect("mkdir");
    let start = || {
        Command::new(bin)
            .arg("mount")
            .arg(&h.ticket)
            .arg(&at)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run mount")
    };
    // Both mounts' standard output, line by line, on one channel: the
    // refused one's ends (it exited), the other says it is mounted.
    let mut both = [start(), start()];
    let (tx, rx) = mpsc::channel();
    for (i, child) in both.iter_mut().enumerate() {
        let out = child.stdout.take().expect("stdout piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                let Ok(line) = line else { break };
                let _ = tx.send((i, Some(line)));
            }
            let _ = tx.send((i, None));
        });
    }
    let (mut refused, mut mounted_by) = (None, None);
    while refused.is_none() || mounted_by.is_none() {
        match rx.recv_timeout(STEP) {
            Ok((i, None)) => refused = refused.or(Some(i)),
            Ok((i, Some(line))) if line.starts_with("Mounted at") => mounted_by = Some(i),
            Ok(_) => {}
            Err(e) => panic!("one mount refused and one mounted, not within {STEP:?}: {e}"),
        }
    }
    assert_ne!(refused, mounted_by, "one mounts, the other is refused");
    let [a, b] = both;
    let (loser, winner) = if refused == Some(0) { (a, b) } else { (b, a) };
    let out = exited(loser, STEP, "the refused mount");
    let line = one_error_line(&out);
    assert!(line.contains("already a wormhole mount"), "{line}");
    // Later, the same answer, not "not empty".
    let out = Command::new(bin)
        .arg("mount")
        .arg(&h.ticket)
        .arg(&at)
        .output()
        .expect("run a third mount");
    let line = one_error_line(&out);
    assert!(line.contains("already a wormhole mount"), "{line}");
    let unmounted = Command::new(bin)
        .arg("unmount")
        .arg(&at)
        .status()
        .expect("unmount");
    assert!(unmounted.success());
    let status = exit_of(winner, "the mount after unmount");
    assert!(status.success(), "{status:?}");
}

/// Drops the host's UDP traffic on loopback (both ways) until dropped:
/// a partition, as a home router losing its uplink makes one.
struct Partition {
    port: String,
}

impl Partition {
    fn rules(&self, op: &str) -> bool {
        ["--dport", "--sport"].iter().all(|side| {
            Command::new("iptables")
                .args([
                    op, "INPUT", "-i", "lo", "-p", "udp", side, &self.port, "-j", "DROP",
                ])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    fn start(addr: &str) -> Partition {
        let port = addr.rsplit(':').next().expect("a port").to_owned();
        let p = Partition { port };
        assert!(p.rules("-A"), "iptables -A (needs root and iptables)");
        p
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.rules("-D");
    }
}

/// Case 5: a partition (the host's packets dropped) that the connection
/// does not notice at first. A file read before it is read again from the
/// cache within a few seconds (it used to block for the whole partition);
/// a listing never fetched fails with ETIMEDOUT within the documented
/// 13 s (3 s of silence, then 10 s), not after a minute; once the path
/// is back, the next request is answered at once, whether the partition
/// outlived QUIC's idle timeout (a reconnect) or not.
pub(crate) fn a_partition_is_answered_from_the_cache_and_heals_at_once(bin: &Path) {
    const ETIMEDOUT: i32 = 110;
    let _turn = serial();
    let mut cleanup = scratch("partition", bin);
    let share = cleanup.dir.join("share");
    let mnt = cleanup.dir.join("mnt");
    let h = host(&mut cleanup, bin, ANY_PORT);
    let (mount, news) = mounted(bin, &h.ticket, &mnt);
    cleanup.children.push(mount);
    std::fs::write(share.join("f.txt"), b"cached\n").expect("seed");
    for dir in ["d", "e"] {
        std::fs::create_dir(share.join(dir)).expect("mkdir");
        std::fs::write(share.join(dir).join("g.txt"), b"g\n").expect("seed");
    }
    assert_eq!(std::fs::read(mnt.join("f.txt")).expect("read"), b"cached\n");
    for (dir, outlive_quic) in [("d", false), ("e", true)] {
        let cut = Partition::start(&h.addr);
        let start = Instant::now();
        assert_eq!(
            std::fs::read(mnt.join("f.txt")).expect("the cached file"),
            b"cached\n"
        );
        let cached_after = start.elapsed();
        assert!(
            cached_after < Duration::from_secs(8),
            "the cache answered after {cached_after:?}"
        );
        let start = Instant::now();
        let err = std::fs::read_dir(mnt.join(dir))
            .and_then(|mut entries| entries.next().transpose())
            .expect_err("a listing never fetched cannot be answered");
        let failed_after = start.elapsed();
        assert_eq!(err.raw_os_error(), Some(ETIMEDOUT), "{err}");
        assert!(
            failed_after < Duration::from_secs(20),
            "failed after {failed_after:?}"
        );
        line_within(&news, "\"The host is not answering\"", STEP, |l| {
            l.starts_with("The host is not answering")
        });
        if outlive_quic {
            // Past QUIC's idle timeout (30 s): the connection is gone, and
            // the mount reconnects with backoff.
            line_within(&news, "\"Reconnect attempt 2\"", STEP * 2, |l| {
                l.starts_with("Reconnect attempt 2 ")
            });
        }
        drop(cut);
        let start = Instant::now();
        let names: Vec<String> = std::fs::read_dir(mnt.join(dir))
            .expect("the listing, once healed")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["g.txt"]);
        let healed_after = start.elapsed();
        assert!(
            healed_after < Duration::from_secs(5),
            "answered {healed_after:?} after the heal (outlive_quic {outlive_quic})"
        );
        let back = if outlive_quic {
            "Reconnected"
        } else {
            "The host answers again"
        };
        line_within(&news, back, STEP, |l| l.starts_with(back));
    }
}

/// Renames under `kill -9`: a client renames fifty files one after the
/// other while the host is killed and started again. Every file is then
/// on the host under exactly one of its two names, whole; nothing is lost
/// or doubled, and no staging file is left.
pub(crate) fn renames_survive_kill_9_of_the_host(bin: &Path) {
    let _turn = serial();
    let (mut cleanup, h, share, mnt) = rig("kill9-rename", bin);
    const FILES: usize = 50;
    for i in 0..FILES {
        std::fs::write(share.join(format!("r{i}")), pattern(64 << 10, i as u8)).expect("seed");
    }
    let renamer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && i=0; while [ $i -lt {FILES} ]; do mv r$i s$i; i=$((i+1)); done",
            mnt.display()
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sh");
    wait_for(&share, STEP, "some renames to be done", || {
        share.join("s5").exists()
    });
    kill_host(&mut cleanup);
    let _h2 = host(&mut cleanup, bin, &h.addr);
    let _ = ended(renamer, Duration::from_secs(120), "the renamer");
    for i in 0..FILES {
        let (r, s) = (share.join(format!("r{i}")), share.join(format!("s{i}")));
        let want = pattern(64 << 10, i as u8);
        match (r.exists(), s.exists()) {
            (true, false) => assert!(holds(&r, &want), "r{i} whole"),
            (false, true) => assert!(holds(&s, &want), "s{i} whole"),
            other => panic!("file {i} under one name, not {other:?}"),
        }
    }
    wait_for(&share, STEP, "no staging file", || {
        staging(&share).is_empty()
    });
}

/// A host-side delete racing a client: a file a client is writing is
/// deleted on the host; the client's fsync fails and the file is not
/// brought back by its commit.
pub(crate) fn a_host_side_delete_during_a_write_is_not_undone(bin: &Path) {
    let _turn = serial();
    let (_cleanup, _h, share, mnt) = rig("delete-race", bin);
    for write_first in [false, true] {
        std::fs::write(share.join("doomed.txt"), b"old\n").expect("seed");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join("doomed.txt"))
            .expect("open r+");
        if write_first {
            f.write_all(&LARGE_WRITE[..]).expect("write");
            wait_for(&share, STEP, "the transaction to begin", || {
                !staging(&share).is_empty()
            });
        }
        std::fs::remove_file(share.join("doomed.txt")).expect("delete on the host");
        if !write_first {
            f.write_all(b"CLIENT").expect("write");
        }
        let synced = f.sync_all();
        assert!(
            synced.is_err(),
            "write_first {write_first}: the writer is told its file is gone"
        );
        drop(f);
        assert!(
            !share.join("doomed.txt").exists(),
            "write_first {write_first}: a deleted file is not brought back by a commit"
        );
        wait_for(&share, STEP, "no staging file", || {
            staging(&share).is_empty()
        });
    }
}

/// Files and folders the host may not touch: with the host running as an
/// ordinary user (`nobody`), a file it cannot read fails the client's
/// open with EACCES, and a folder it cannot write refuses a new file with
/// EACCES, at the call that asks, not later.
pub(crate) fn what_the_host_may_not_touch_is_refused_at_once(bin: &Path) {
    const EACCES: i32 = 13;
    let _turn = serial();
    let mut cleanup = scratch("unreadable", bin);
    let share = cleanup.dir.join("share");
    let mnt = cleanup.dir.join("mnt");
    std::fs::write(share.join("secret.txt"), b"secret\n").expect("seed");
    std::fs::create_dir(share.join("locked")).expect("mkdir");
    std::fs::write(share.join("open.txt"), b"open\n").expect("seed");
    let own = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&cleanup.dir)
        .status()
        .expect("chown");
    assert!(own.success());
    for (path, mode) in [("secret.txt", 0o000), ("locked", 0o555)] {
        let set = Command::new("chmod")
            .arg(format!("{mode:o}"))
            .arg(share.join(path))
            .status()
            .expect("chmod");
        assert!(set.success());
    }
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin)
        .arg("host")
        .arg(&share)
        .args(["--bind", ANY_PORT])
        .env("XDG_CONFIG_HOME", cleanup.dir.join("config"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the host as nobody");
    let out = super::procs::lines(&mut child);
    cleanup.children.push(child);
    let ticket = ticket_of(&out);
    let (mount, _) = mounted(bin, &ticket, &mnt);
    cleanup.children.push(mount);
    let err = std::fs::read(mnt.join("secret.txt")).expect_err("the host cannot read it");
    assert_eq!(err.raw_os_error(), Some(EACCES), "{err}");
    let err = std::fs::write(mnt.join("locked").join("new.txt"), b"x")
        .expect_err("the host cannot write there");
    assert_eq!(err.raw_os_error(), Some(EACCES), "{err}");
    assert_eq!(
        std::fs::read(mnt.join("open.txt")).expect("what it may read"),
        b"open\n"
    );
}

/// Host-side appends racing a client's reads: a program on the host
/// appends to a log while a client reads it again and again. Every read
/// succeeds and is a prefix of what the log ends up holding (an append
/// never changes earlier bytes, so a mix of two states, or bytes of
/// another file, would show as a difference). It used to fail with
/// ESTALE when the log changed faster than a refresh's round trip.
pub(crate) fn a_log_appended_on_the_host_reads_as_a_prefix(bin: &Path) {
    let _turn = serial();
    let (_cleanup, _h, share, mnt) = rig("append-race", bin);
    let log = share.join("log.txt");
    std::fs::write(&log, b"first line\n").expect("seed the log");
    let mut appender = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while [ $i -lt 50000 ]; do \
             echo \"line $i of the log, padded to some length\" >> '{}'; i=$((i+1)); done",
            log.display()
        ))
        .spawn()
        .expect("run the appender");
    // Reads of at most two chunks: a read to the end would chase the
    // growing log for as long as it grows.
    let mut reads = Vec::new();
    while appender.try_wait().expect("wait").is_none() {
        let n = reads.len();
        let mut r = Vec::new();
        std::fs::File::open(mnt.join("log.txt"))
            .and_then(|f| f.take(256 << 10).read_to_end(&mut r))
            .unwrap_or_else(|e| panic!("read {n} of the log while it grows: {e}"));
        reads.push(r);
    }
    let last = std::fs::read(&log).expect("the whole log");
    for (n, r) in reads.iter().enumerate() {
        assert!(
            last.starts_with(r),
            "read {n} ({} bytes) is not a prefix of the log ({} bytes)",
            r.len(),
            last.len()
        );
    }
    assert!(!reads.is_empty(), "a read started while the log grew");
}

/// Case 8, ioctls: programs probe files with ioctls (a terminal's TCGETS
/// from `stty`, `isatty`); the mount answers ENOTTY, as a local file
/// system does for a file that is not a terminal, and logs nothing about
/// it (it used to print a three-line warning per open).
pub(crate) fn an_ioctl_is_answered_enotty_quietly(bin: &Path) {
    let _turn = serial();
    let mut cleanup = scratch("ioctl", bin);
    let share = cleanup.dir.join("share");
    let mnt = cleanup.dir.join("mnt");
    std::fs::write(share.join("f.txt"), b"f\n").expect("seed");
    let h = host(&mut cleanup, bin, ANY_PORT);
    let log = cleanup.dir.join("mount.log");
    let mut mount = Command::new(bin)
        .arg("mount")
        .arg(&h.ticket)
        .arg(&mnt)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("the mount's log"))
        .spawn()
        .expect("run mount");
    let out = super::procs::lines(&mut mount);
    cleanup.children.push(mount);
    line_where(&out, "\"Mounted at\"", |l| l.starts_with("Mounted at"));
    let stty = Command::new("stty")
        .arg("-F")
        .arg(mnt.join("f.txt"))
        .output()
        .expect("run stty");
    assert!(!stty.status.success(), "not a terminal");
    let err = String::from_utf8_lossy(&stty.stderr);
    assert!(err.contains("Inappropriate ioctl for device"), "{err}");
    // Still a working file, and nothing logged about the ioctl.
    assert_eq!(std::fs::read(mnt.join("f.txt")).expect("read"), b"f\n");
    let logged = std::fs::read_to_string(&log).expect("the mount's log");
    assert!(!logged.to_lowercase().contains("ioctl"), "{logged}");
}

/// One `#[test]` per fault test above, running it on the binary `$bin`;
/// each shell's `tests/faults.rs` invokes it with `faults` in scope, so
/// the list is written once.
macro_rules! fault_tests {
    ($bin:expr) => {
        faults::fault_tests!(@ $bin;
            a_host_side_save_during_a_write_keeps_one_whole_version,
            an_o_trunc_rewrite_survives_kill_9_of_the_host,
            an_append_survives_kill_9_of_the_host,
            renames_survive_kill_9_of_the_host,
            a_full_disk_fails_the_writer_and_keeps_the_old_content,
            errors_that_belong_to_open_come_at_open,
            what_the_host_may_not_touch_is_refused_at_once,
            a_folder_has_one_host_at_a_time,
            one_mountpoint_has_one_mount,
            an_ioctl_is_answered_enotty_quietly,
            an_open_file_keeps_its_content_when_the_host_saves_a_new_one,
            a_directory_renamed_on_the_host_keeps_the_shell_in_it,
            a_host_side_delete_during_a_write_is_not_undone,
            a_log_appended_on_the_host_reads_as_a_prefix,
            a_partition_is_answered_from_the_cache_and_heals_at_once,
        );
    };
    (@ $bin:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                faults::$name(std::path::Path::new($bin));
            }
        )*
    };
}
pub(crate) use fault_tests;

/// A write larger than one whole write (1 MiB): its transaction locks and
/// begins at the host at once instead of at the flush.
static LARGE_WRITE: [u8; (1 << 20) + 1] = [b'C'; (1 << 20) + 1];
