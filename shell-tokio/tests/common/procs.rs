//! Running the binaries as a person would, for the command-line tests of
//! both shells (`host_mount`, `faults`): processes that are killed when a
//! test fails, their output lines awaited with a limit.

// Shared by several test crates, each of which uses a part.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A host's `--bind` for any free port.
pub(crate) const ANY_PORT: &str = "127.0.0.1:0";

/// The limit on any one step.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// Kills a child on drop (a failing test leaves no process behind), and
/// removes the scratch directory after unmounting whatever is left.
pub(crate) struct Cleanup {
    pub(crate) children: Vec<Child>,
    pub(crate) dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Fail what the kernel still waits for from the mounts first: a
        // mount killed while its invalidation thread waits in the kernel
        // for a page a pending read holds locked can never exit (that
        // thread keeps /dev/fuse open, so the read is never failed), and
        // `wait` would wait forever (seen once in CI).
        abort_fuse_connections_under(&self.dir);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A test may mount a second client at `mnt2`. Unmounted whether or
        // not it looks like a directory: the mount of a killed client
        // fails every `stat` (ENOTCONN), so `exists()` says no, and
        // skipping it would leave a dead mount and this directory behind.
        for mnt in ["mnt", "mnt2"].map(|m| self.dir.join(m)) {
            let _ = Command::new("umount").arg("-l").arg(&mnt).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Aborts the FUSE connection of every mount under `dir`: each request
/// it has pending fails, as when its daemon's device is closed. Found by
/// the mount's device number in `/proc/self/mountinfo` (a `stat` of a
/// stuck mount would hang; FUSE's major number is 0, so the minor names
/// the connection), through fusectl, mounted for it if need be (root
/// only, as the mounts are).
fn abort_fuse_connections_under(dir: &Path) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let minors: Vec<String> = info
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (dev, point) = (fields.get(2)?, fields.get(4)?);
            let fuse = line.split(" - ").nth(1)?.starts_with("fuse");
            let minor = dev.split(':').nth(1)?;
            (fuse && Path::new(point).starts_with(&dir)).then(|| minor.to_owned())
        })
        .collect();
    if minors.is_empty() {
        return;
    }
    let connections = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(connections).map_or(true, |mut d| d.next().is_none()) {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(connections)
            .output();
    }
    for minor in minors {
        let _ = std::fs::write(connections.join(minor).join("abort"), b"1");
    }
}

/// Reads `child`'s stdout lines on a thread, so they can be awaited with
/// a limit.
pub(crate) fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        // Drained to the end even when nobody listens any more, so the
        // child never writes into a closed pipe.
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits for a line satisfying `want`, returning it.
pub(crate) fn line_where(
    rx: &mpsc::Receiver<String>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    line_within(rx, what, STEP, want)
}

/// Waits at most `limit` for a line satisfying `want`, returning it.
pub(crate) fn line_within(
    rx: &mpsc::Receiver<String>,
    what: &str,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {what} within {limit:?}: {e}"),
        }
    }
}

/// Waits at most `limit` for `child` to end, its exit awaited on a
/// thread of its own; one still running at the limit is killed and the
/// test fails. Its output is what it wrote to pipes nobody else read.
pub(crate) fn exited(child: Child, limit: Duration, what: &str) -> std::process::Output {
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for the child"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("{what} did not exit within {limit:?}")
        }
    }
}

/// Waits for `child` to exit, at most `STEP`.
pub(crate) fn exit_of(child: Child, what: &str) -> std::process::ExitStatus {
    exited(child, STEP, what).status
}

/// Runs `host` on `bind` (`127.0.0.1:0`: any port).
pub(crate) fn start_host(
    bin: &Path,
    dir: &Path,
    bind: &str,
    extra: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin)
        .arg("host")
        .arg(dir.join("share"))
        .args(["--bind", bind])
        .args(extra)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the host");
    let rx = lines(&mut child);
    (child, rx)
}

/// Runs `mount` and waits until it says it is mounted; its later lines
/// come on the receiver.
pub(crate) fn mounted(bin: &Path, ticket: &str, mnt: &Path) -> (Child, mpsc::Receiver<String>) {
    mounted_with(bin, ticket, mnt, &[])
}

/// [`mounted`] with more arguments. The mount is not told it runs under
/// sudo even if the tests do: the owners it shows are root's.
pub(crate) fn mounted_with(
    bin: &Path,
    ticket: &str,
    mnt: &Path,
    extra: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let mut mount = Command::new(bin)
        .arg("mount")
        .arg(ticket)
        .arg(mnt)
        .args(extra)
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mount");
    let out = lines(&mut mount);
    line_where(&out, "\"Mounted at\"", |l| l.starts_with("Mounted at"));
    (mount, out)
}

pub(crate) fn ticket_of(rx: &mpsc::Receiver<String>) -> String {
    line_where(rx, "the ticket", |l| {
        l.trim_start().starts_with("wormhole1-")
    })
    .trim()
    .to_owned()
}

pub(crate) fn interrupt(child: Child, what: &str) {
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -INT {pid}");
    let status = exit_of(child, what);
    assert!(status.success(), "{what} exits 0 on Ctrl-C: {status:?}");
}

/// One error line on stderr and exit status 1.
pub(crate) fn one_error_line(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    errors[0].to_owned()
}

/// Runs a `mount` that must fail, returning its one error line.
pub(crate) fn refused_mount(bin: &Path, ticket: &str, mnt: &Path) -> String {
    let out = Command::new(bin)
        .arg("mount")
        .arg(ticket)
        .arg(mnt)
        .output()
        .expect("run mount");
    one_error_line(&out)
}

/// A fresh scratch directory with `share`, `mnt` and `config` in it,
/// named after the test and the binary.
pub(crate) fn scratch(test: &str, bin: &Path) -> Cleanup {
    let name = bin
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "wormhole-{test}-{name}-{}-{nanos}",
        std::process::id()
    ));
    for sub in ["share", "mnt", "config"] {
        std::fs::create_dir_all(dir.join(sub)).expect("scratch directories");
    }
    Cleanup {
        children: Vec::new(),
        dir,
    }
}

/// The system call number of `fcntl`, to see a program inside it.
#[cfg(target_arch = "x86_64")]
const SYS_FCNTL: &str = "72";
#[cfg(target_arch = "aarch64")]
const SYS_FCNTL: &str = "25";

/// Waits until process `pid` is inside `fcntl` (its lock request is with
/// the mount): `/proc/PID/syscall` names the call a blocked process is
/// in. Nothing announces that, so it is polled (every 10 ms: the sleep
/// paces the poll, it does not stand in for an event).
pub(crate) fn in_fcntl(pid: u32) {
    let path = format!("/proc/{pid}/syscall");
    let start = std::time::Instant::now();
    loop {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.split_whitespace().next() == Some(SYS_FCNTL) {
            return;
        }
        assert!(start.elapsed() < STEP, "{pid} never waited in fcntl: {now}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Python program that waits for an exclusive `fcntl` lock of the
/// file it is given and prints `locked`, or `interrupted` if SIGUSR1
/// ends the wait (its handler raises, so the call is not restarted).
pub(crate) const WAIT_FOR_LOCK: &str = r#"
import errno, fcntl, signal, sys
class Interrupted(Exception):
    pass
def on_signal(*_):
    raise Interrupted()
signal.signal(signal.SIGUSR1, on_signal)
f = open(sys.argv[1], "r+")
try:
    fcntl.lockf(f, fcntl.LOCK_EX)
    print("locked")
except Interrupted:
    print("interrupted")
"#;
