//! The body of the locks test, shared by both binaries: advisory locks
//! taken through one mount are seen through another mount of the same
//! host, as two machines sharing a folder would need, and data follows
//! the locks so SQLite can share a database between them; and appends
//! of both land at the log's end, neither lost nor overwritten.
//!
//! Two mounts on one machine are two clients of the host, each with its
//! own kernel inodes and page cache, so nothing here is settled by the
//! local kernel: every lock goes through the host.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::fs::{FlockOperation, fcntl_lock, flock};
use rustix::io::Errno;

use super::procs::{
    ANY_PORT, STEP, WAIT_FOR_LOCK, exited, in_fcntl, mounted, scratch, start_host, ticket_of,
};

/// Long enough for a lock request to cross to the host and back many
/// times over: a blocked taker that has not got its lock by then is
/// waiting, not slow.
const BLOCKED: Duration = Duration::from_millis(700);

/// A path as the text a program takes (the scratch paths are UTF-8).
fn text(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// Runs a Python program (the standard library's `fcntl` and `sqlite3`
/// speak POSIX byte-range locks, which Rust's standard library does not).
fn python(script: &str, args: &[&str]) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3")
}

pub(crate) fn locks_across_mounts(bin: &Path) {
    let mut cleanup = scratch("locks", bin);
    let dir = cleanup.dir.clone();
    let (mnt1, mnt2) = (dir.join("mnt"), dir.join("mnt2"));
    std::fs::create_dir_all(&mnt2).expect("second mount point");
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &[]);
    cleanup.children.push(host);
    let ticket = ticket_of(&host_out);
    cleanup.children.push(mounted(bin, &ticket, &mnt1).0);
    cleanup.children.push(mounted(bin, &ticket, &mnt2).0);
    std::fs::write(mnt1.join("f"), "shared").expect("write f");

    flock_excludes_and_waits(&mnt1, &mnt2);
    a_signal_ends_a_wait(&mnt1, &mnt2);
    ofd_locks_share_and_exclude(&mnt1, &mnt2);
    posix_byte_ranges(&mnt1, &mnt2);
    programs_on_the_host(&dir.join("share"), &mnt1);
    sqlite_from_both_mounts(&mnt1, &mnt2);
    appends_from_both_mounts(&mnt1, &mnt2);
}

/// `flock`: one mount's exclusive lock keeps the other out; a blocked
/// taker there gets it when the holder closes its file.
fn flock_excludes_and_waits(mnt1: &Path, mnt2: &Path) {
    let held = rw(&mnt1.join("f"));
    flock(&held, FlockOperation::LockExclusive).expect("flock on mount 1");
    let other = rw(&mnt2.join("f"));
    assert_eq!(
        flock(&other, FlockOperation::NonBlockingLockShared),
        Err(Errno::WOULDBLOCK),
        "the lock is seen through the other mount"
    );
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let got = flock(&other, FlockOperation::LockExclusive);
        let _ = tx.send(got);
        other
    });
    assert!(rx.recv_timeout(BLOCKED).is_err(), "the taker waits");
    drop(held);
    assert_eq!(rx.recv_timeout(STEP), Ok(Ok(())), "woken by the close");
    let other = waiter.join().expect("waiter");
    let again = rw(&mnt1.join("f"));
    assert_eq!(
        flock(&again, FlockOperation::NonBlockingLockExclusive),
        Err(Errno::WOULDBLOCK)
    );
    flock(&other, FlockOperation::Unlock).expect("unlock");
    flock(&again, FlockOperation::NonBlockingLockExclusive).expect("free again");
}

/// A signal ends a wait for another mount's lock, as on a local disk: a
/// handled signal makes `F_SETLKW` fail with EINTR, and SIGKILL ends
/// the waiting process. (Without FUSE interrupts neither would, until
/// the holder let go.) Neither takes the lock behind anyone's back.
fn a_signal_ends_a_wait(mnt1: &Path, mnt2: &Path) {
    let held = rw(&mnt1.join("f"));
    flock(&held, FlockOperation::LockExclusive).expect("flock on mount 1");

    let waiter = python(WAIT_FOR_LOCK, &[text(&mnt2.join("f"))]);
    in_fcntl(waiter.id());
    let sent = Command::new("kill")
        .args(["-USR1", &waiter.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let out = exited(waiter, STEP, "a waiter sent SIGUSR1");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "interrupted");

    let mut killed = python(WAIT_FOR_LOCK, &[text(&mnt2.join("f"))]);
    in_fcntl(killed.id());
    killed.kill().expect("SIGKILL");
    exited(killed, STEP, "a waiter sent SIGKILL");

    drop(held);
    let free = python(
        "import fcntl, sys\nfcntl.lockf(open(sys.argv[1], 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB)",
        &[text(&mnt2.join("f"))],
    )
    .wait()
    .expect("after the holder");
    assert!(free.success(), "the interrupted waits took nothing");
}

/// Open file description locks (`F_OFD_SETLK`): shared locks share
/// across mounts, an exclusive one is refused while they are held and
/// granted once their files are closed.
fn ofd_locks_share_and_exclude(mnt1: &Path, mnt2: &Path) {
    let (a, b) = (rw(&mnt1.join("f")), rw(&mnt2.join("f")));
    fcntl_lock(&a, FlockOperation::NonBlockingLockShared).expect("shared on mount 1");
    fcntl_lock(&b, FlockOperation::NonBlockingLockShared).expect("shared on mount 2");
    let c = rw(&mnt2.join("f"));
    assert_eq!(
        fcntl_lock(&c, FlockOperation::NonBlockingLockExclusive),
        Err(Errno::AGAIN)
    );
    drop((a, b));
    // FUSE releases a closed file in the background (close(2) returns
    // first), so the locks go a moment after the close: a blocking take
    // waits for that.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fcntl_lock(&c, FlockOperation::LockExclusive));
    });
    assert_eq!(rx.recv_timeout(STEP), Ok(Ok(())), "free once both closed");
}

/// POSIX `fcntl` byte-range locks, through Python's `fcntl` module: a
/// holder on mount 1 locks bytes 0..10; on mount 2 the bytes beside them
/// lock, the bytes over them do not, F_GETLK names the holder's lock
/// (pid 0: a process of another machine), and the holder's exit frees
/// them.
fn posix_byte_ranges(mnt1: &Path, mnt2: &Path) {
    const HOLD: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
print("locked", flush=True)
sys.stdin.readline()
"#;
    const PROBE: &str = r#"
import errno, fcntl, struct, sys
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)
try:
    fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 5)
    print("overlap locked")
except OSError as e:
    print("overlap refused", errno.errorcode[e.errno])
# struct flock: l_type, l_whence, l_start, l_len, l_pid
q = struct.pack("hhqqi", fcntl.F_RDLCK, 0, 3, 1, 0)
t, _, start, length, pid = struct.unpack("hhqqi", fcntl.fcntl(f, fcntl.F_GETLK, q))
print("getlk", "write" if t == fcntl.F_WRLCK else t, start, length, pid)
"#;
    let mut holder = python(HOLD, &[text(&mnt1.join("f"))]);
    let mut out = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut out,
    )
    .expect("holder's line");
    assert_eq!(out.trim(), "locked");
    let probe = python(PROBE, &[text(&mnt2.join("f"))])
        .wait_with_output()
        .expect("probe");
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "{said}");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        ["overlap refused EAGAIN", "getlk write 0 10 0"],
        "bytes 10..20 lock beside the holder's 0..10, 5..15 do not"
    );
    holder
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"\n")
        .expect("release the holder");
    assert!(holder.wait().expect("holder").success());
    let free = python(
        "import fcntl, sys\nfcntl.lockf(open(sys.argv[1], 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)",
        &[text(&mnt2.join("f"))],
    )
    .wait()
    .expect("after the holder");
    assert!(free.success(), "the holder's exit freed its bytes");
}

/// Takes a POSIX lock of `len` bytes at `start` on `path` and holds it
/// until told (a line on its stdin); prints "locked", or the errno.
const HOLD_AT: &str = r#"
import errno, fcntl, sys
f = open(sys.argv[1], "r+")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
    print("locked", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
    sys.exit(0)
sys.stdin.readline()
"#;

/// The first line a program prints, within [`STEP`].
fn first_line(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut out);
        let _ = tx.send(out);
    });
    match rx.recv_timeout(STEP) {
        Ok(line) => line.trim().to_string(),
        Err(_) => panic!("pid {} printed nothing within {STEP:?}", child.id()),
    }
}

/// Tells a holder to let go, and waits for it.
fn let_go(mut holder: std::process::Child) {
    holder
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"\n")
        .expect("tell the holder");
    assert!(holder.wait().expect("holder").success());
}

/// A program on the host itself and a program on a mount keep each
/// other out of the bytes they lock, as two programs on one disk do:
/// the host holds the mount's locks on its own file. A write committed
/// through the mount (which puts a new file in the old one's place)
/// keeps the lock on the host; a wait on the mount for the host
/// program's lock ends when it lets go.
fn programs_on_the_host(share: &Path, mnt: &Path) {
    let (on_host, on_mount) = (share.join("f"), mnt.join("f"));
    let hold = |p: &Path, start: &str, len: &str| python(HOLD_AT, &[text(p), start, len]);

    let mut host_program = hold(&on_host, "0", "10");
    assert_eq!(first_line(&mut host_program), "locked");
    let mut refused = hold(&on_mount, "5", "10");
    assert_eq!(
        first_line(&mut refused),
        "EAGAIN",
        "the host program's bytes"
    );
    assert!(refused.wait().expect("refused").success());
    let mut beside = hold(&on_mount, "10", "10");
    assert_eq!(first_line(&mut beside), "locked", "the bytes beside them");
    let_go(beside);

    // A blocking take on the mount waits for the host program.
    let waiter = python(
        // (The file kept open: closing any of its descriptors ends a
        // process's POSIX locks.)
        "import fcntl, sys\nf = open(sys.argv[1], 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX, 10, 0)\nprint('got', flush=True)\nsys.stdin.readline()",
        &[text(&on_mount)],
    );
    in_fcntl(waiter.id());
    let_go(host_program);
    let mut waiter = waiter;
    assert_eq!(
        first_line(&mut waiter),
        "got",
        "woken once the host program let go"
    );
    let mut kept_out = hold(&on_host, "0", "1");
    assert_eq!(
        first_line(&mut kept_out),
        "EAGAIN",
        "the mount's lock, on the host"
    );
    assert!(kept_out.wait().expect("kept out").success());
    let_go(waiter);

    // Locked through the mount, written and committed (fsync) while
    // held: the host's new file is locked too.
    let mut writer = python(
        r#"
import fcntl, os, sys
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX, 0, 0)
f.write("rewritten under the lock")
f.flush()
os.fsync(f.fileno())
print("committed", flush=True)
sys.stdin.readline()
"#,
        &[text(&on_mount)],
    );
    assert_eq!(first_line(&mut writer), "committed");
    let mut after = hold(&on_host, "0", "1");
    assert_eq!(
        first_line(&mut after),
        "EAGAIN",
        "the new file is locked too"
    );
    assert!(after.wait().expect("after").success());
    // The writer's exit lets go (its release reaches the host a moment
    // later): a host program waiting for the lock gets it.
    let host_waiter = python(
        "import fcntl, sys\nfcntl.lockf(open(sys.argv[1], 'r+'), fcntl.LOCK_EX, 1, 0)\nprint('got')",
        &[text(&on_host)],
    );
    let_go(writer);
    let out = exited(
        host_waiter,
        STEP,
        "a host program waiting for the mount's lock",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got");
}

/// Two processes, one per mount, each add 1 to a counter in one SQLite
/// database (rollback journal, as SQLite's default) in many short
/// transactions at once: every increment lands and the database stays
/// whole. Without locks across mounts, or without data following them,
/// increments are lost or the file is corrupted.
fn sqlite_from_both_mounts(mnt1: &Path, mnt2: &Path) {
    const ROUNDS: u32 = 40;
    const SETUP: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=DELETE")
db.execute("CREATE TABLE c (n INTEGER)")
db.execute("INSERT INTO c VALUES (0)")
db.commit()
"#;
    const ADD: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
for i in range(int(sys.argv[2])):
    db.execute("BEGIN IMMEDIATE")
    (n,) = db.execute("SELECT n FROM c").fetchone()
    db.execute("UPDATE c SET n = ?", (n + 1,))
    db.execute("INSERT INTO log VALUES (?, ?)", (sys.argv[3], i))
    db.execute("COMMIT")
"#;
    let setup = python(SETUP, &[text(&mnt1.join("db"))])
        .wait()
        .expect("setup");
    assert!(setup.success());
    let log = python(
        "import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\ndb.execute('CREATE TABLE log (who TEXT, i INTEGER)')\ndb.commit()",
        &[text(&mnt2.join("db"))],
    )
    .wait()
    .expect("log table");
    assert!(log.success());
    let rounds = ROUNDS.to_string();
    let adders: Vec<_> = [(mnt1, "one"), (mnt2, "two")]
        .into_iter()
        .map(|(m, who)| python(ADD, &[text(&m.join("db")), &rounds, who]))
        .collect();
    for a in adders {
        let out = a.wait_with_output().expect("adder");
        assert!(out.status.success(), "an adder failed");
    }
    const CHECK: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("PRAGMA integrity_check").fetchone()[0])
print(db.execute("SELECT n FROM c").fetchone()[0])
print(db.execute("SELECT count(*) FROM log").fetchone()[0])
"#;
    for m in [mnt1, mnt2] {
        let out = python(CHECK, &[text(&m.join("db"))])
            .wait_with_output()
            .expect("check");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let total = (2 * ROUNDS).to_string();
        assert_eq!(
            said.lines().collect::<Vec<_>>(),
            ["ok", total.as_str(), total.as_str()],
            "every increment, seen from {}",
            m.display()
        );
    }
}

/// Two processes, one per mount, append lines to one log at once, each
/// line an open with `O_APPEND`, a write and a close (as a shell's `>>`
/// or a logger that reopens its file): every line of both is in the log
/// once, whole, and each process's lines in its order. Each kernel sends
/// its appends at the size it knows, older than the other mount's last
/// commit; before appends were placed at the end, one mount's close
/// failed with ESTALE or its line overwrote the other's.
fn appends_from_both_mounts(mnt1: &Path, mnt2: &Path) {
    const LINES: u32 = 150;
    // Python reports a failed close(2) (where a commit's error surfaces)
    // as an exception; Rust's `File` would drop it.
    const APPEND: &str = r#"
import sys
for i in range(int(sys.argv[2])):
    with open(sys.argv[1], "a") as f:
        f.write("%s %d\n" % (sys.argv[3], i))
"#;
    let lines = LINES.to_string();
    let appenders: Vec<_> = [(mnt1, "one"), (mnt2, "two")]
        .into_iter()
        .map(|(m, who)| python(APPEND, &[text(&m.join("log")), &lines, who]))
        .collect();
    for a in appenders {
        let out = a.wait_with_output().expect("appender");
        assert!(out.status.success(), "an appender's write or close failed");
    }
    for m in [mnt1, mnt2] {
        let log = std::fs::read_to_string(m.join("log")).expect("read the log");
        for who in ["one", "two"] {
            let mine: Vec<&str> = log.lines().filter(|l| l.starts_with(who)).collect();
            let want: Vec<String> = (0..LINES).map(|i| format!("{who} {i}")).collect();
            assert_eq!(
                mine,
                want,
                "{who}'s lines, in order, seen from {}",
                m.display()
            );
        }
        assert_eq!(
            log.lines().count(),
            2 * LINES as usize,
            "nothing else in the log"
        );
    }
}
