//! The body of the permissions test, shared by both binaries: who may
//! use a mount, and what the kernel lets each user do there.
//!
//! As root (the tests' user) it shares a folder, mounts it, and runs
//! programs as `nobody` (uid and gid 65534, no other groups) against the
//! mount: refused outright without `--allow-other`; with it, let in and
//! checked against the owners and modes the mount shows, as on a local
//! disk. Also: a chown to another user is refused where every client
//! acts as the host's user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::procs::{
    ANY_PORT, Cleanup, exit_of, interrupt, mounted_with, scratch, start_host, ticket_of,
};

const NOBODY: u32 = 65534;

/// A scratch directory for `test`: its cleanup, the folder to share and
/// the mount point.
fn scratch_share(test: &str, bin: &Path) -> (Cleanup, PathBuf, PathBuf) {
    let cleanup = scratch(test, bin);
    let (share, mnt) = (cleanup.dir.join("share"), cleanup.dir.join("mnt"));
    (cleanup, share, mnt)
}

/// Starts a host of the scratch share (with `host_flags`) and, unless
/// `mount_flags` is `None`, a mount of it (with those flags); both stop
/// with `cleanup`. Returns the ticket.
fn serve(
    cleanup: &mut Cleanup,
    bin: &Path,
    host_flags: &[&str],
    mount_flags: Option<&[&str]>,
) -> String {
    let (host, host_out) = start_host(bin, &cleanup.dir, ANY_PORT, host_flags);
    cleanup.children.push(host);
    let ticket = ticket_of(&host_out);
    if let Some(flags) = mount_flags {
        let mount = mounted_with(bin, &ticket, &cleanup.dir.join("mnt"), flags).0;
        cleanup.children.push(mount);
    }
    ticket
}

/// Stops the process started last, as Ctrl-C does.
fn stop_last(cleanup: &mut Cleanup, what: &str) {
    let child = cleanup.children.pop().expect("a process to stop");
    interrupt(child, what);
}

/// Runs `program` with `args` as root.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// The command failed with EPERM.
fn not_permitted(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Operation not permitted"),
        "{what}: EPERM, got {out:?}"
    );
}

/// Runs `sh -c script` as nobody.
fn as_nobody(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run sh as nobody")
}

fn refused(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "{what}: refused with EACCES, got {out:?}"
    );
}

fn allowed(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: allowed, got {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole story for the binary `bin`.
pub(crate) fn other_users(bin: &Path) {
    let (mut cleanup, share, mnt) = scratch_share("perm", bin);
    for d in [&cleanup.dir, &share, &mnt] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for (name, mode, text) in [
        ("public.txt", 0o644, "for everyone to read"),
        ("private.txt", 0o600, "for the owner only"),
        ("open.txt", 0o666, "anyone may write"),
    ] {
        let path = share.join(name);
        std::fs::write(&path, text).expect("a shared file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let dropbox = share.join("dropbox");
    std::fs::create_dir(&dropbox).expect("mkdir");
    std::fs::set_permissions(&dropbox, std::fs::Permissions::from_mode(0o777)).expect("chmod");

    let ticket = serve(&mut cleanup, bin, &[], Some(&[]));
    let m = mnt.display();

    // Without --allow-other, nobody else gets in at all.
    refused(&as_nobody(&format!("ls {m}")), "ls without --allow-other");
    stop_last(&mut cleanup, "the first mount on Ctrl-C");

    // With it, everyone gets in, as the modes say.
    let (mount, out) = mounted_with(bin, &ticket, &mnt, &["--allow-other"]);
    cleanup.children.push(mount);
    let said = out
        .recv_timeout(super::procs::STEP)
        .expect("the mount says who may use it");
    assert!(said.contains("Every user of this machine"), "{said}");
    let listing = allowed(&as_nobody(&format!("ls -a {m}")), "ls -a");
    let names: Vec<&str> = listing.lines().collect();
    for name in [
        ".",
        "..",
        "public.txt",
        "private.txt",
        "open.txt",
        "dropbox",
    ] {
        assert!(names.contains(&name), "{name} listed: {listing}");
    }
    let text = allowed(&as_nobody(&format!("cat {m}/public.txt")), "read 0644");
    assert_eq!(text, "for everyone to read");
    refused(&as_nobody(&format!("cat {m}/private.txt")), "read 0600");
    refused(
        &as_nobody(&format!("echo more >> {m}/public.txt")),
        "append to 0644",
    );
    refused(
        &as_nobody(&format!("echo new > {m}/new.txt")),
        "create in a 0755 directory of another user",
    );
    allowed(
        &as_nobody(&format!("echo mine > {m}/open.txt")),
        "write to 0666",
    );
    assert_eq!(
        std::fs::read_to_string(share.join("open.txt")).expect("on the host"),
        "mine\n"
    );
    allowed(
        &as_nobody(&format!("echo dropped > {m}/dropbox/note.txt")),
        "create in a 0777 directory",
    );
    assert_eq!(
        std::fs::read_to_string(dropbox.join("note.txt")).expect("on the host"),
        "dropped\n"
    );
    // The owners shown are the mounting user's (root here, with no
    // sudo), for every file of the host's user.
    let long = allowed(&as_nobody(&format!("ls -ln {m}")), "ls -ln");
    for line in long.lines().skip(1) {
        let owner: Vec<&str> = line.split_whitespace().skip(2).take(2).collect();
        assert_eq!(owner, ["0", "0"], "{line}");
    }

    // Every client acts as the host's user: giving a file away is
    // refused, even to the mount's root.
    let public = format!("{m}/public.txt");
    not_permitted(&run("chown", &["1234", &public]), "chown to another user");
    let out = run("chown", &["0:0", &public]);
    assert!(out.status.success(), "chown to the owner it has: {out:?}");

    stop_last(&mut cleanup, "the second mount on Ctrl-C");
    stop_last(&mut cleanup, "the host on Ctrl-C");

    // A host that preserves owners: what a user makes is theirs on the
    // host, and root's chown through the mount is carried out.
    serve(
        &mut cleanup,
        bin,
        &["--preserve-owners"],
        Some(&["--allow-other"]),
    );
    allowed(
        &as_nobody(&format!(
            "echo made > {m}/dropbox/made.txt && mkdir {m}/dropbox/sub && ln -s made.txt {m}/dropbox/link"
        )),
        "create, mkdir, symlink in a 0777 directory",
    );
    for name in ["made.txt", "sub", "link"] {
        let meta = std::fs::symlink_metadata(dropbox.join(name)).expect("on the host");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (NOBODY, NOBODY),
            "{name} belongs to its maker on the host"
        );
    }
    let long = allowed(&as_nobody(&format!("ls -ln {m}/dropbox")), "ls -ln");
    assert!(
        long.lines()
            .filter(|l| l.contains("made.txt"))
            .all(|l| l.split_whitespace().nth(2) == Some("65534")),
        "the mount shows the real owner: {long}"
    );
    let out = run("chown", &["1234:1234", &public]);
    assert!(out.status.success(), "root's chown: {out:?}");
    let meta = std::fs::metadata(share.join("public.txt")).expect("on the host");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1234, 1234),
        "chowned on the host"
    );
    refused(
        &as_nobody(&format!("cat {m}/private.txt")),
        "a private file, with owners preserved",
    );
    stop_last(&mut cleanup, "the third mount on Ctrl-C");
}

/// Special files through a mount: a FIFO carries data between two
/// programs on the client (the kernel opens it there; the host holds
/// only its name), a socket's name works as one, and a device node is
/// refused.
pub(crate) fn special_files(bin: &Path) {
    use std::io::{Read, Write};
    use std::os::unix::fs::FileTypeExt;
    let (mut cleanup, share, mnt) = scratch_share("special", bin);
    serve(&mut cleanup, bin, &[], Some(&[]));
    let m = mnt.display();

    let out = run("mkfifo", &[&format!("{m}/pipe")]);
    assert!(out.status.success(), "mkfifo: {out:?}");
    assert!(
        std::fs::symlink_metadata(share.join("pipe"))
            .expect("on the host")
            .file_type()
            .is_fifo(),
        "a FIFO on the host"
    );
    let writer = Command::new("sh")
        .args(["-c", &format!("echo through the pipe > {m}/pipe")])
        .spawn()
        .expect("run the writer");
    let read = Command::new("cat")
        .arg(mnt.join("pipe"))
        .output()
        .expect("run the reader");
    assert_eq!(String::from_utf8_lossy(&read.stdout), "through the pipe\n");
    let status = exit_of(writer, "the FIFO's writer");
    assert!(status.success(), "{status:?}");

    let sock = mnt.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind in the mount");
    assert!(
        std::fs::symlink_metadata(share.join("sock"))
            .expect("on the host")
            .file_type()
            .is_socket(),
        "a socket on the host"
    );
    let mut client = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"hello").expect("write");
    let mut got = [0u8; 5];
    server.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hello");
    // A bound socket holds the mount (as on any file system).
    drop((listener, client, server));

    let zero = format!("{m}/zero");
    not_permitted(&run("mknod", &[&zero, "c", "1", "5"]), "a device node");
    assert!(!share.join("zero").exists());

    stop_last(&mut cleanup, "the mount on Ctrl-C");
}

/// Hard links through the mount: `ln` makes a host hard link, both names
/// show one inode and link count, a write through one name is read
/// through the other (on the mount and on the host's disk), and `rm` of
/// one name leaves the other.
pub(crate) fn hard_links(bin: &Path) {
    let (mut cleanup, share, mnt) = scratch_share("links", bin);
    serve(&mut cleanup, bin, &[], Some(&[]));

    std::fs::write(mnt.join("a"), "one").expect("write a");
    std::fs::hard_link(mnt.join("a"), mnt.join("b")).expect("ln a b");
    let (a, b) = (
        std::fs::metadata(mnt.join("a")).expect("stat a"),
        std::fs::metadata(mnt.join("b")).expect("stat b"),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one inode, two names");
    let on_host = |n: &str| std::fs::metadata(share.join(n)).expect("on the host");
    assert_eq!(on_host("a").ino(), on_host("b").ino(), "a host hard link");

    std::fs::write(mnt.join("b"), "two, through b").expect("write b");
    assert_eq!(
        std::fs::read_to_string(mnt.join("a")).expect("read a"),
        "two, through b"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("a")).expect("read a on the host"),
        "two, through b"
    );
    assert_eq!(
        (on_host("a").ino(), on_host("a").nlink()),
        (on_host("b").ino(), 2),
        "still one file on the host"
    );

    std::fs::remove_file(mnt.join("a")).expect("rm a");
    assert_eq!(std::fs::metadata(mnt.join("b")).expect("stat b").nlink(), 1);
    assert_eq!(
        std::fs::read_to_string(mnt.join("b")).expect("read b"),
        "two, through b"
    );
    std::fs::create_dir(mnt.join("d")).expect("mkdir");
    let err = std::fs::hard_link(mnt.join("d"), mnt.join("e")).expect_err("ln of a directory");
    const EPERM: i32 = 1;
    assert_eq!(err.raw_os_error(), Some(EPERM), "{err}");
}

/// Extended attributes through the mount: a `user.` attribute set on the
/// mount is on the host's file and reads back, a list shows it, a write
/// of the file keeps it, a removal removes it, and a namespace the host
/// does not serve is refused with EOPNOTSUPP.
pub(crate) fn extended_attributes(bin: &Path) {
    use rustix::fs::{XattrFlags, getxattr, listxattr, removexattr, setxattr};
    let (mut cleanup, share, mnt) = scratch_share("xattr", bin);
    std::fs::write(share.join("f"), "data").expect("a shared file");
    serve(&mut cleanup, bin, &[], Some(&[]));
    let (f, on_host) = (mnt.join("f"), share.join("f"));

    setxattr(&f, "user.colour", b"blue", XattrFlags::empty()).expect("setxattr");
    let mut buf = [0u8; 64];
    let n = getxattr(&on_host, "user.colour", &mut buf[..]).expect("on the host");
    assert_eq!(&buf[..n], b"blue");
    let n = getxattr(&f, "user.colour", &mut buf[..]).expect("through the mount");
    assert_eq!(&buf[..n], b"blue");
    let n = listxattr(&f, &mut buf[..]).expect("listxattr");
    assert_eq!(&buf[..n], b"user.colour\0");
    let err = setxattr(&f, "user.colour", b"red", XattrFlags::CREATE).expect_err("exists");
    assert_eq!(err, rustix::io::Errno::EXIST);
    // A write through the mount (a new version of the file on the host)
    // keeps them.
    std::fs::write(&f, "new data").expect("write through the mount");
    assert_eq!(
        std::fs::read(&on_host).expect("read on the host"),
        b"new data"
    );
    let n = getxattr(&on_host, "user.colour", &mut buf[..]).expect("kept by the write");
    assert_eq!(&buf[..n], b"blue");
    removexattr(&f, "user.colour").expect("removexattr");
    let err = getxattr(&on_host, "user.colour", &mut buf[..]).expect_err("gone on the host");
    assert_eq!(err, rustix::io::Errno::NODATA);
    let err = setxattr(&f, "trusted.x", b"1", XattrFlags::empty()).expect_err("not served");
    assert_eq!(err, rustix::io::Errno::NOTSUP);
}

/// An ordinary user mounts without sudo where the system lets users use
/// FUSE (`/dev/fuse` readable and writable by all, as most distributions
/// ship it: fusermount3 does the mount), and reads and writes there as
/// itself. Where only root may open `/dev/fuse`, even fusermount3
/// cannot (it opens it as the user), and the mount says so and what to
/// do instead of a bare "Permission denied".
pub(crate) fn ordinary_user_mounts(bin: &Path) {
    let (mut cleanup, share, mnt) = scratch_share("user", bin);
    let dir = cleanup.dir.clone();
    let home = dir.join("nobody");
    std::fs::write(share.join("hello"), "hi").expect("a shared file");
    std::fs::create_dir(&home).expect("nobody's home");
    for d in [&mnt, &home] {
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A copy nobody may run wherever the build is.
    let prog = dir.join("wormhole");
    std::fs::copy(bin, &prog).expect("copy the program");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ticket = serve(&mut cleanup, bin, &[], None);
    let nobody_runs = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(&prog);
        c.args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", &home)
            .env("XDG_CACHE_HOME", &home)
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID");
        c
    };
    let mut mount = nobody_runs(&["mount".as_ref(), ticket.as_ref(), mnt.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the mount as nobody");
    let users_may =
        std::fs::metadata("/dev/fuse").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006);
    if !users_may {
        let out = mount.wait_with_output().expect("the mount's end");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "no mount: {out:?}");
        assert!(
            said.contains("only root may use /dev/fuse") && said.contains("chmod 0666 /dev/fuse"),
            "the refusal says why and what to do: {said}"
        );
        return;
    }
    let out = super::procs::lines(&mut mount);
    cleanup.children.push(mount);
    super::procs::line_where(&out, "\"Mounted at\"", |l| l.starts_with("Mounted at"));
    let m = mnt.display();
    let read = allowed(
        &as_nobody(&format!("cat {m}/hello && echo mine > {m}/made")),
        "nobody's mount, used by nobody",
    );
    assert_eq!(read, "hi");
    assert_eq!(
        std::fs::read_to_string(share.join("made")).expect("on the host"),
        "mine\n"
    );
    a_signal_ends_a_wait_on_a_users_mount(&mnt.join("made"));
    let unmounted = nobody_runs(&["unmount".as_ref(), mnt.as_os_str()])
        .output()
        .expect("run unmount as nobody");
    assert!(unmounted.status.success(), "{unmounted:?}");
    let mount = cleanup.children.pop().expect("the mount");
    let status = exit_of(mount, "nobody's mount after its unmount");
    assert!(status.success(), "{status:?}");
}

/// On an ordinary user's mount, a signal ends that user's wait for a
/// lock another of its programs holds: the kernel's FUSE_INTERRUPT,
/// which carries no uid, reaches the file system (fuser refused it as
/// coming from another user; `io/vendor/fuser`).
fn a_signal_ends_a_wait_on_a_users_mount(file: &Path) {
    const HOLD: &str = "import fcntl, sys\nf = open(sys.argv[1], 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.readline()";
    let as_nobody = |script: &str| {
        Command::new("python3")
            .args(["-c", script])
            .arg(file)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run python3 as nobody")
    };
    let mut holder = as_nobody(HOLD);
    let said = super::procs::lines(&mut holder);
    super::procs::line_where(&said, "the holder's \"locked\"", |l| l == "locked");
    let waiter = as_nobody(super::procs::WAIT_FOR_LOCK);
    super::procs::in_fcntl(waiter.id());
    let sent = Command::new("kill")
        .args(["-USR1", &waiter.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let out = super::procs::exited(waiter, super::procs::STEP, "nobody's waiter sent SIGUSR1");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "interrupted");
    drop(holder.stdin.take());
    let status = exit_of(holder, "the lock's holder");
    assert!(status.success(), "{status:?}");
}
