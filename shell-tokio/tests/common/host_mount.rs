//! The body of the `host` / `mount` / `unmount` command-line test, shared
//! by both binaries (`wormhole` on tokio, `wormhole-smol` on smol): each
//! shell's test calls [`host_and_mount`] with its own binary.
//!
//! It runs the binaries as a person would: a host on a temporary folder
//! (its identity in a temporary config directory), a FUSE mount of its
//! ticket (needs root and /dev/fuse; fails, never skips, without them), a
//! file written through the mount and found on the host, `unmount`, and
//! the one-line errors for bad and wrong tickets. Every wait has a limit.

use std::path::Path;
use std::process::Command;

use super::procs::{
    ANY_PORT, exit_of, interrupt, line_where, line_within, mounted, one_error_line, refused_mount,
    scratch, start_host, ticket_of,
};

use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::HostConfig;
use wormhole_io::Ticket;

/// The whole command-line story for the binary `bin`.
pub(crate) fn host_and_mount(bin: &Path) {
    let name = bin
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    let mut cleanup = scratch("cli", bin);
    let dir = cleanup.dir.clone();
    let mnt = dir.join("mnt");

    // Each command explains itself.
    for (cmd, words) in [
        (
            "host",
            &[
                "ticket",
                "--new-identity",
                "--read-only",
                "--bind",
                "--preserve-owners",
            ][..],
        ),
        (
            "mount",
            &[
                "TICKET",
                "MOUNTPOINT",
                "--cache-dir",
                "--cache-size",
                "--allow-other",
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
    let mount = cleanup.children.pop().expect("the mount process");
    let status = exit_of(mount, "mount after unmount");
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
    let mount = cleanup.children.pop().expect("the mount process");
    interrupt(mount, "mount on Ctrl-C");
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
    let host = cleanup.children.pop().expect("the host process");
    cleanup.children.push(mount);
    interrupt(host, "the host");
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
    let mount = cleanup.children.pop().expect("the mount process");
    cleanup.children.push(host);
    interrupt(mount, "mount after the reconnect");

    // A restart keeps the identity and secret; --new-identity changes them.
    let host = cleanup.children.pop().expect("the host process");
    interrupt(host, "the host");
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &[]);
    cleanup.children.push(host);
    let again = Ticket::parse(&ticket_of(&host_out)).expect("parses");
    assert_eq!(again.fingerprint, parsed.fingerprint);
    assert_eq!(again.secret, parsed.secret);
    let host = cleanup.children.pop().expect("the host process");
    interrupt(host, "the restarted host");
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &["--new-identity"]);
    cleanup.children.push(host);
    let fresh = Ticket::parse(&ticket_of(&host_out)).expect("parses");
    assert_ne!(fresh.fingerprint, parsed.fingerprint);
    assert_ne!(fresh.secret, parsed.secret);
    let host = cleanup.children.pop().expect("the host process");
    interrupt(host, "the host with a new identity");
}
