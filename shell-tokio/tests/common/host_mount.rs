//! The body of the `host` / `mount` / `unmount` command-line test, shared
//! by both binaries (`wormhole` on tokio, `wormhole-smol` on smol): each
//! shell's test calls [`host_and_mount`] with its own binary.
//!
//! It runs the binaries as a person would: a host on a temporary folder
//! (its identity in a temporary config directory), a FUSE mount of its
//! ticket (needs root and /dev/fuse; fails, never skips, without them), a
//! file written through the mount and found on the host, `unmount`, and
//! the one-line errors for bad and wrong tickets. Every wait has a limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::HostConfig;
use wormhole_io::Ticket;

/// A host's `--bind` for any free port.
const ANY_PORT: &str = "127.0.0.1:0";

/// The limit on any one step.
const STEP: Duration = Duration::from_secs(30);

/// Kills a child on drop (a failing test leaves no process behind), and
/// removes the scratch directory after unmounting whatever is left.
struct Cleanup {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mnt = self.dir.join("mnt");
        let _ = Command::new("umount").arg("-l").arg(&mnt).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `child`'s stdout lines on a thread, so they can be awaited with
/// a limit.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
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
fn line_where(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
    line_within(rx, what, STEP, want)
}

/// Waits at most `limit` for a line satisfying `want`, returning it.
fn line_within(
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

/// Waits for `child` to exit, at most `STEP`.
fn exit_of(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < end, "{what} did not exit within {STEP:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `host` on `bind` (`127.0.0.1:0`: any port).
fn start_host(
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
fn mounted(bin: &Path, ticket: &str, mnt: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut mount = Command::new(bin)
        .arg("mount")
        .arg(ticket)
        .arg(mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mount");
    let out = lines(&mut mount);
    line_where(&out, "\"Mounted at\"", |l| l.starts_with("Mounted at"));
    (mount, out)
}

fn ticket_of(rx: &mpsc::Receiver<String>) -> String {
    line_where(rx, "the ticket", |l| {
        l.trim_start().starts_with("wormhole1-")
    })
    .trim()
    .to_owned()
}

fn interrupt(child: &mut Child, what: &str) {
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
fn one_error_line(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    errors[0].to_owned()
}

/// Runs a `mount` that must fail, returning its one error line.
fn refused_mount(bin: &Path, ticket: &str, mnt: &Path) -> String {
    let out = Command::new(bin)
        .arg("mount")
        .arg(ticket)
        .arg(mnt)
        .output()
        .expect("run mount");
    one_error_line(&out)
}

/// The whole command-line story for the binary `bin`.
pub(crate) fn host_and_mount(bin: &Path) {
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
        "wormhole-cli-{name}-{}-{nanos}",
        std::process::id()
    ));
    for sub in ["share", "mnt", "config"] {
        std::fs::create_dir_all(dir.join(sub)).expect("scratch directories");
    }
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let mnt = dir.join("mnt");

    // Each command explains itself.
    for (cmd, words) in [
        (
            "host",
            &["ticket", "--new-identity", "--read-only", "--bind"][..],
        ),
        (
            "mount",
            &[
                "TICKET",
                "MOUNTPOINT",
                "--cache-dir",
                "--cache-size",
                "unmount",
            ][..],
        ),
        ("unmount", &["MOUNTPOINT"][..]),
    ] {
        let out = Command::new(bin)
            .args([cmd, "--help"])
            .output()
            .expect("run --help");
        assert!(out.status.success(), "{cmd} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        for w in words {
            assert!(help.contains(w), "{cmd} --help mentions {w}:\n{help}");
        }
    }

    // The host prints its ticket and the exact mount command.
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &[]);
    cleanup.children.push(host);
    let ticket = ticket_of(&host_out);
    let command = line_where(&host_out, "the mount command", |l| l.contains(" mount "));
    assert!(
        command.contains(&format!("{name} mount {ticket} ")),
        "the exact command: {command}"
    );
    let parsed = Ticket::parse(&ticket).expect("the printed ticket parses");

    // Mount it, write through it, find the file on the host.
    cleanup.children.push(mounted(bin, &ticket, &mnt).0);
    std::fs::write(mnt.join("hello.txt"), b"through the wormhole")
        .expect("write through the mount");
    // The host says who came: the mount's check of the ticket, which
    // leaves at once, then the mount itself.
    for (what, line) in [
        ("the ticket check", "A client connected (1 client now)"),
        ("the end of the ticket check", "A client left"),
        ("the mount's arrival", "A client connected (1 client now)"),
    ] {
        line_where(&host_out, what, |l| l.starts_with(line));
    }
    assert_eq!(
        std::fs::read(dir.join("share/hello.txt")).expect("the file on the host"),
        b"through the wormhole"
    );
    let out = Command::new(bin)
        .arg("unmount")
        .arg(&mnt)
        .output()
        .expect("run unmount");
    assert!(out.status.success(), "unmount: {out:?}");
    let mut mount = cleanup.children.pop().expect("the mount process");
    let status = exit_of(&mut mount, "mount after unmount");
    assert!(status.success(), "mount exits 0 after unmount: {status:?}");
    // Its Goodbye arrived before it exited: the host let its session go at
    // once, not after the grace period a vanished client gets.
    let grace = HostConfig::default().session_grace;
    line_within(&host_out, "the mount's goodbye", grace / 3, |l| {
        l.starts_with("A client left")
    });

    // Ctrl-C unmounts as well.
    cleanup.children.push(mounted(bin, &ticket, &mnt).0);
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).expect("read through the second mount"),
        b"through the wormhole"
    );
    let mut mount = cleanup.children.pop().expect("the mount process");
    interrupt(&mut mount, "mount on Ctrl-C");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let at = mnt.to_string_lossy().into_owned();
    assert!(
        !mounts.lines().any(|l| l.contains(&at)),
        "Ctrl-C unmounted {at}:\n{mounts}"
    );

    // Tickets people get wrong: one clear line each.
    let line = refused_mount(bin, "wormhole1-notaticket", &mnt);
    assert!(line.starts_with("error: bad ticket: "), "{line}");
    let wrong = Ticket {
        secret: TicketSecret([0; 32]),
        ..parsed.clone()
    };
    let line = refused_mount(bin, &wrong.encode(), &mnt);
    assert!(line.contains("refused the ticket's secret"), "{line}");

    // Paths that are not there: named, with what to do.
    let missing = cleanup.dir.join("no-such-dir");
    let line = refused_mount(bin, &ticket, &missing);
    assert!(
        line.contains(&format!("{} does not exist", missing.display()))
            && line.contains("mkdir -p"),
        "{line}"
    );
    let out = Command::new(bin)
        .arg("host")
        .arg(&missing)
        .output()
        .expect("run host");
    let line = one_error_line(&out);
    assert!(
        line.contains(&format!(
            "cannot share {}: there is no such folder",
            missing.display()
        )) && line.contains("mkdir -p"),
        "{line}"
    );

    // Mountpoints a mount would make a mess of: one clear line each.
    std::fs::write(mnt.join("stray"), b"x").expect("a file in the mountpoint");
    let line = refused_mount(bin, &ticket, &mnt);
    assert!(line.contains("is not empty"), "{line}");
    std::fs::remove_file(mnt.join("stray")).expect("remove the stray file");
    // A killed mount leaves a dead one behind (ENOTCONN on every access).
    let (mut mount, _) = mounted(bin, &ticket, &mnt);
    mount.kill().expect("kill the mount");
    mount.wait().expect("reap the mount");
    let line = refused_mount(bin, &ticket, &mnt);
    assert!(
        line.contains("lost its process") && line.contains("umount -l"),
        "{line}"
    );
    let out = Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .output()
        .expect("run umount");
    assert!(out.status.success(), "umount -l of the dead mount: {out:?}");

    // The host goes and comes back on its address: the mount says so, and
    // carries on by itself.
    let (mount, mount_out) = mounted(bin, &ticket, &mnt);
    // Read through it first, so that it is connected (not still making
    // its first connection) when the host goes.
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).expect("read through the mount"),
        b"through the wormhole"
    );
    let mut host = cleanup.children.pop().expect("the host process");
    cleanup.children.push(mount);
    interrupt(&mut host, "the host");
    line_where(&mount_out, "the lost host", |l| {
        l.starts_with("Lost the connection to the host")
    });
    let addr = parsed.addrs[0].to_string();
    let (host, _) = start_host(bin, &dir, &addr, &[]);
    line_where(&mount_out, "the reconnect", |l| {
        l.starts_with("Reconnected to the host")
    });
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).expect("read after the reconnect"),
        b"through the wormhole"
    );
    let mut mount = cleanup.children.pop().expect("the mount process");
    cleanup.children.push(host);
    interrupt(&mut mount, "mount after the reconnect");

    // A restart keeps the identity and secret; --new-identity changes them.
    let mut host = cleanup.children.pop().expect("the host process");
    interrupt(&mut host, "the host");
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &[]);
    cleanup.children.push(host);
    let again = Ticket::parse(&ticket_of(&host_out)).expect("parses");
    assert_eq!(again.fingerprint, parsed.fingerprint);
    assert_eq!(again.secret, parsed.secret);
    let mut host = cleanup.children.pop().expect("the host process");
    interrupt(&mut host, "the restarted host");
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &["--new-identity"]);
    cleanup.children.push(host);
    let fresh = Ticket::parse(&ticket_of(&host_out)).expect("parses");
    assert_ne!(fresh.fingerprint, parsed.fingerprint);
    assert_ne!(fresh.secret, parsed.secret);
    let mut host = cleanup.children.pop().expect("the host process");
    interrupt(&mut host, "the host with a new identity");
}
