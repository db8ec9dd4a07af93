//! End to end with every real piece, on loopback: the host driver serving
//! a real directory (HostFs through FsPool, the tree watcher) over QUIC,
//! and the FUSE mount driving the client core through [`QuicTransport`].
//! One test body, run on both shells (tokio and smol).
//!
//! Needs root and `/dev/fuse` (CI has both); if the mount cannot be made
//! the test fails and says why, it never skips. Every wait has a limit:
//! file-system calls run on a worker thread the test waits for with a
//! timeout, naming the step that hung.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wormhole_tests::e2e::{Steps, pattern, run_bounded, wait_until};

use wormhole_core::client::ClientEvent;
use wormhole_core::codec::frame;
use wormhole_core::conn::auth;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::proto::{Checksum, Reply, Request, RequestId};
use wormhole_io::host::{Host, HostOptions};
use wormhole_io::transport::{self, MAX_REQUEST_FRAME};
use wormhole_io::{Identity, Mount, MountOptions, QuicTransport, Shell, Ticket, timeout};
use wormhole_smol::SmolShell;
use wormhole_tokio::TokioShell;

/// The limit on connecting, probing and stopping.
const STEP: Duration = Duration::from_secs(20);
/// The limit on the whole file-system workout.
const SUITE: Duration = Duration::from_secs(300);
/// The limit on binding a stopped host's address again.
const REBIND: Duration = Duration::from_secs(60);
const CHUNK: usize = 128 * 1024;
const SECRET: TicketSecret = TicketSecret([0x5a; 32]);

#[test]
fn quic_mount_on_tokio() {
    quic_mount(TokioShell::new().expect("start a tokio runtime"));
}

#[test]
fn quic_mount_on_smol() {
    quic_mount(SmolShell::new().expect("start smol"));
}

#[test]
fn refusals_on_tokio() {
    refusals(TokioShell::new().expect("start a tokio runtime"));
}

#[test]
fn refusals_on_smol() {
    refusals(SmolShell::new().expect("start smol"));
}

#[test]
fn host_restart_on_tokio() {
    host_restart(TokioShell::new().expect("start a tokio runtime"));
}

#[test]
fn host_restart_on_smol() {
    host_restart(SmolShell::new().expect("start smol"));
}

#[test]
fn read_only_host_on_tokio() {
    read_only(&TokioShell::new().expect("start a tokio runtime"));
}

#[test]
fn read_only_host_on_smol() {
    read_only(&SmolShell::new().expect("start smol"));
}

#[test]
fn bad_frames_reset_one_stream_on_tokio() {
    let shell = TokioShell::new().expect("start a tokio runtime");
    bad_frames(&shell);
}

#[test]
fn bad_frames_reset_one_stream_on_smol() {
    let shell = SmolShell::new().expect("start smol");
    bad_frames(&shell);
}

/// Unmounts on drop and removes the scratch directory, so a failing test
/// leaves nothing behind.
struct Guard {
    mount: Option<Mount>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.mount.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn scratch(what: &str, runtime: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "wormhole-quic-{what}-{runtime}-{}-{nanos}",
        std::process::id()
    ));
    for sub in ["share", "mnt", "cache"] {
        fs::create_dir_all(dir.join(sub)).expect("make the scratch directories");
    }
    dir
}

/// Starts a host on 127.0.0.1 (any port) serving `dir/share`.
fn start_host<S: Shell>(shell: &S, dir: &Path, identity: &Identity) -> Host {
    start_host_with(shell, dir, identity, false)
}

fn start_host_with<S: Shell>(shell: &S, dir: &Path, identity: &Identity, read_only: bool) -> Host {
    let socket = shell
        .bind_udp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind the host's UDP socket");
    let mut options = HostOptions::new(dir.join("share"), identity.clone(), SECRET);
    options.config.read_only = read_only;
    shell
        .block_on(async { Host::spawn(shell.runtime(), socket, options) })
        .expect("start the host")
}

fn transport<S: Shell>(shell: &S, ticket: &Ticket) -> QuicTransport {
    let socket = shell
        .bind_udp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind the client's UDP socket");
    shell
        .block_on(async {
            QuicTransport::new(
                shell.runtime(),
                socket,
                ticket.addrs.clone(),
                ticket.fingerprint,
            )
        })
        .expect("client endpoint")
}

fn quic_mount<S: Shell>(shell: S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("mount", shell.name());
    let identity = Identity::generate().expect("identity");
    let host = start_host(&shell, &dir, &identity);
    // The ticket round-trips through its text, as a person would paste it.
    let ticket = Ticket::parse(
        &Ticket {
            addrs: vec![host.local_addr()],
            fingerprint: identity.fingerprint(),
            secret: SECRET,
        }
        .encode(),
    )
    .expect("the ticket parses");
    let transport = transport(&shell, &ticket);
    let rt = shell.runtime();
    shell
        .block_on(timeout(
            &*rt,
            STEP,
            "the probe",
            transport.probe(&ticket.secret),
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the host accepts the ticket");

    let mut options = MountOptions::new(ticket.secret.clone()).expect("randomness");
    // Long attribute times: a local change must arrive by invalidation,
    // not by expiry.
    options.client.cache.attr_ttl = Duration::from_secs(60);
    options.cache_dir = Some(dir.join("cache"));
    let mountpoint = dir.join("mnt");
    let mount = shell
        .block_on(async { Mount::new(shell.runtime(), transport, &mountpoint, options) })
        .unwrap_or_else(|e| {
            panic!(
                "FUSE mount failed on {} (this test needs root and /dev/fuse; it does not \
                 skip): {e}",
                shell.name()
            )
        });
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
    let mut guard = Guard {
        mount: Some(mount),
        dir: dir.clone(),
    };

    run_bounded(&dir, SUITE, workout);

    let mount = guard.mount.take().expect("mounted");
    let stopped = mount.stopped();
    mount.unmount().expect("unmount cleanly");
    shell
        .block_on(timeout(&*rt, STEP, "the mount driver to stop", stopped))
        .unwrap_or_else(|e| panic!("{e}"));
    shell
        .block_on(timeout(&*rt, STEP, "the host to stop", host.stop()))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn workout(dir: &Path, steps: &Steps) {
    let (mnt, share) = (dir.join("mnt"), dir.join("share"));

    steps.at("write files of chunk-edge sizes");
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 77];
    for (i, &len) in sizes.iter().enumerate() {
        let data = pattern(len, i as u64 + 1);
        fs::write(mnt.join(format!("f{len}")), &data).expect("write through the mount");
    }
    steps.at("read them back, through the mount and on the host's disk");
    for (i, &len) in sizes.iter().enumerate() {
        let want = Checksum::of(&pattern(len, i as u64 + 1));
        let name = format!("f{len}");
        let got = fs::read(mnt.join(&name)).expect("read through the mount");
        assert_eq!(Checksum::of(&got), want, "{name} through the mount");
        let on_disk = fs::read(share.join(&name)).expect("read on the host");
        assert_eq!(Checksum::of(&on_disk), want, "{name} on the host's disk");
    }

    steps.at("a directory tree");
    fs::create_dir_all(mnt.join("a/b/c")).expect("mkdir -p");
    fs::write(mnt.join("a/b/c/leaf"), b"leaf").expect("write a leaf");
    assert_eq!(
        fs::read(share.join("a/b/c/leaf")).expect("on disk"),
        b"leaf"
    );
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .expect("list the root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"a".to_owned()) && names.contains(&"f1".to_owned()),
        "{names:?}"
    );

    steps.at("a change made on the host by a local program");
    let seen = fs::read(mnt.join("f1")).expect("read before the change");
    assert_eq!(seen.len(), 1);
    fs::write(share.join("f1"), b"changed by a local program").expect("local write");
    fs::write(share.join("local-new"), b"new").expect("local create");
    wait_until(
        Duration::from_secs(10),
        "the client to see the host's change",
        || fs::read(mnt.join("f1")).is_ok_and(|d| d == b"changed by a local program"),
    );
    wait_until(
        Duration::from_secs(10),
        "the client to see a new local file",
        || fs::read(mnt.join("local-new")).is_ok_and(|d| d == b"new"),
    );

    steps.at("unlink and rename");
    fs::rename(mnt.join("f0"), mnt.join("renamed")).expect("rename");
    assert!(share.join("renamed").exists() && !share.join("f0").exists());
    fs::remove_file(mnt.join("renamed")).expect("unlink");
    assert!(!share.join("renamed").exists());
    steps.at("done");
}

fn refusals<S: Shell>(shell: S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("refuse", shell.name());
    let _cleanup = Guard {
        mount: None,
        dir: dir.clone(),
    };
    let identity = Identity::generate().expect("identity");
    let host = start_host(&shell, &dir, &identity);
    let rt = shell.runtime();
    let good = Ticket {
        addrs: vec![host.local_addr()],
        fingerprint: identity.fingerprint(),
        secret: SECRET,
    };

    // A wrong secret: the host answers EACCES and nothing else.
    let wrong_secret = Ticket {
        secret: TicketSecret([0x11; 32]),
        ..good.clone()
    };
    let t = transport(&shell, &wrong_secret);
    let err = shell
        .block_on(timeout(
            &*rt,
            STEP,
            "the wrong-secret probe",
            t.probe(&wrong_secret.secret),
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect_err("a wrong secret is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("EACCES"), "{err}");

    // Mounted anyway (no probe): the host's EACCES makes the client give
    // up (ClientEvent::Disconnected, no retry loop) and file operations
    // fail at once (the core answers ENOTCONN once it has given up)
    // rather than hang.
    let t = transport(&shell, &wrong_secret);
    let options = MountOptions::new(wrong_secret.secret.clone()).expect("randomness");
    let mountpoint = dir.join("mnt");
    let mount = shell
        .block_on(async { Mount::new(shell.runtime(), t, &mountpoint, options) })
        .unwrap_or_else(|e| panic!("FUSE mount failed (needs root and /dev/fuse): {e}"));
    let event = shell
        .block_on(timeout(
            &*rt,
            STEP,
            "the refused mount's event",
            mount.events().recv(),
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the mount driver is running");
    assert_eq!(event, ClientEvent::Disconnected, "auth refused: given up");
    let guard = Guard {
        mount: Some(mount),
        dir: dir.clone(),
    };
    run_bounded(&dir, SUITE, |dir, _| {
        let err = fs::metadata(dir.join("mnt/anything")).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");
    });
    let mount = { guard }.mount.take().expect("mounted");
    let stopped = mount.stopped();
    mount.unmount().expect("unmount cleanly");
    shell
        .block_on(timeout(&*rt, STEP, "the refused mount to stop", stopped))
        .unwrap_or_else(|e| panic!("{e}"));

    // A wrong certificate fingerprint: the handshake itself fails.
    let other = Identity::generate().expect("identity");
    let wrong_cert = Ticket {
        fingerprint: other.fingerprint(),
        ..good.clone()
    };
    let t = transport(&shell, &wrong_cert);
    let err = shell
        .block_on(timeout(
            &*rt,
            STEP,
            "the wrong-certificate probe",
            t.probe(&SECRET),
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect_err("a host with another certificate is refused");
    assert!(
        err.to_string().contains("cannot reach the host"),
        "a clear error: {err}"
    );
    let mut t2 = t.clone();
    let link = shell.block_on(timeout(
        &*rt,
        STEP,
        "the wrong-certificate connect",
        wormhole_io::Transport::connect(&mut t2),
    ));
    assert!(
        matches!(link, Ok(Err(_))),
        "the mount's transport refuses it too"
    );

    // The right ticket still works after all that.
    let t = transport(&shell, &good);
    shell
        .block_on(timeout(&*rt, STEP, "the good probe", t.probe(&SECRET)))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the right ticket is accepted");
    shell
        .block_on(timeout(&*rt, STEP, "the host to stop", host.stop()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The host stops and starts again on the same address with the same
/// identity (as `wormhole host` after a restart): the mount reconnects by
/// itself and what was written before is there.
fn host_restart<S: Shell>(shell: S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("restart", shell.name());
    let identity = Identity::generate().expect("identity");
    let host = start_host(&shell, &dir, &identity);
    let addr = host.local_addr();
    let ticket = Ticket {
        addrs: vec![addr],
        fingerprint: identity.fingerprint(),
        secret: SECRET,
    };
    let rt = shell.runtime();
    let options = MountOptions::new(SECRET).expect("randomness");
    let mountpoint = dir.join("mnt");
    let t = transport(&shell, &ticket);
    let mount = shell
        .block_on(async { Mount::new(shell.runtime(), t, &mountpoint, options) })
        .unwrap_or_else(|e| panic!("FUSE mount failed (needs root and /dev/fuse): {e}"));
    let mut guard = Guard {
        mount: Some(mount),
        dir: dir.clone(),
    };
    let events = guard.mount.as_ref().expect("mounted").events().clone();
    let next_event = |what: &str| {
        shell
            .block_on(timeout(&*rt, STEP, what.to_owned(), events.recv()))
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("the mount driver is running")
    };
    assert_eq!(
        next_event("the first connect"),
        ClientEvent::Connected { resumed: false }
    );
    run_bounded(&dir, SUITE, |dir, _| {
        fs::write(dir.join("mnt/before"), b"written before the restart").expect("write");
    });

    shell
        .block_on(timeout(&*rt, STEP, "the host to stop", host.stop()))
        .unwrap_or_else(|e| panic!("{e}"));
    // The old endpoint's socket closes as its runtime task ends, just
    // after the stop; a new process would not wait at all.
    let mut socket = None;
    wait_until(REBIND, "the host's port to be free again", || {
        socket = shell.bind_udp(addr).ok();
        socket.is_some()
    });
    let socket = socket.expect("bound");
    let options = HostOptions::new(dir.join("share"), identity.clone(), SECRET);
    let host = shell
        .block_on(async { Host::spawn(shell.runtime(), socket, options) })
        .expect("restart the host");
    loop {
        match next_event("the mount to reconnect") {
            ClientEvent::Connected { .. } => break,
            _ => continue,
        }
    }
    run_bounded(&dir, SUITE, |dir, _| {
        assert_eq!(
            fs::read(dir.join("mnt/before")).expect("read after the restart"),
            b"written before the restart"
        );
        fs::write(dir.join("mnt/after"), b"and after").expect("write after the restart");
        assert_eq!(
            fs::read(dir.join("share/after")).expect("on disk"),
            b"and after"
        );
    });
    let mount = guard.mount.take().expect("mounted");
    let stopped = mount.stopped();
    mount.unmount().expect("unmount cleanly");
    shell
        .block_on(timeout(&*rt, STEP, "the mount driver to stop", stopped))
        .unwrap_or_else(|e| panic!("{e}"));
    shell
        .block_on(timeout(&*rt, STEP, "the host to stop", host.stop()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A read-only host answers every change with EROFS and still serves
/// reads.
fn read_only<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("ro", shell.name());
    let _cleanup = Guard {
        mount: None,
        dir: dir.clone(),
    };
    fs::write(dir.join("share/existing"), b"x").expect("a file");
    let identity = Identity::generate().expect("identity");
    let host = start_host_with(shell, &dir, &identity, true);
    let ticket = Ticket {
        addrs: vec![host.local_addr()],
        fingerprint: identity.fingerprint(),
        secret: SECRET,
    };
    let t = transport(shell, &ticket);
    let rt = shell.runtime();
    shell
        .block_on(timeout(&*rt, STEP, "the read-only exchange", async {
            let conn = t.connect_quic().await.expect("connect");
            let exporter = transport::exporter(&conn).expect("exporter");
            let hello = Request::Hello {
                version: u16::from(wormhole_core::codec::PROTOCOL_VERSION),
                proof: auth::proof(&SECRET, &exporter),
                resume: None,
            };
            let reply = transport::request(&conn, RequestId(1), hello).await;
            assert!(matches!(reply, Ok(Ok(Reply::HelloAck { .. }))), "{reply:?}");
            let root = wormhole_core::proto::NodeId::ROOT;
            let mkdir = Request::Mkdir {
                parent: root,
                name: wormhole_core::proto::Name::new(b"new".to_vec()).expect("name"),
                mode: 0o755,
            };
            let reply = transport::request(&conn, RequestId(2), mkdir).await;
            assert!(
                matches!(reply, Ok(Err(wormhole_core::proto::Errno::RoFs))),
                "{reply:?}"
            );
            let lookup = Request::Lookup {
                parent: root,
                name: wormhole_core::proto::Name::new(b"existing".to_vec()).expect("name"),
            };
            let reply = transport::request(&conn, RequestId(3), lookup).await;
            assert!(matches!(reply, Ok(Ok(Reply::Attr(_)))), "{reply:?}");
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!dir.join("share/new").exists());
    shell
        .block_on(timeout(&*rt, STEP, "the host to stop", host.stop()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A raw-protocol client: oversized and malformed frames are refused on
/// their own stream; the connection, and its Hello, go on.
fn bad_frames<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("frames", shell.name());
    let _cleanup = Guard {
        mount: None,
        dir: dir.clone(),
    };
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = Ticket {
        addrs: vec![host.local_addr()],
        fingerprint: identity.fingerprint(),
        secret: SECRET,
    };
    let t = transport(shell, &ticket);
    let rt = shell.runtime();
    shell
        .block_on(timeout(&*rt, STEP, "the raw-protocol exchange", async {
            let conn = t.connect_quic().await.expect("connect");
            // A length prefix far beyond any request, then more bytes than
            // the host reads from one stream.
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            let mut big = vec![0xffu8; 4];
            big.extend(std::iter::repeat_n(7u8, MAX_REQUEST_FRAME + 1));
            let _ = send.write_all(&big).await;
            let _ = send.finish();
            assert!(
                recv.read_to_end(1 << 20).await.is_err(),
                "an oversized frame gets its stream reset, no reply"
            );
            // A well-framed message that is not a request.
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            send.write_all(&frame(b"\x01garbage")).await.expect("write");
            let _ = send.finish();
            assert!(
                recv.read_to_end(1 << 20).await.is_err(),
                "an undecodable request gets its stream reset"
            );
            // The same connection still authenticates.
            let exporter = transport::exporter(&conn).expect("exporter");
            let hello = Request::Hello {
                version: u16::from(wormhole_core::codec::PROTOCOL_VERSION),
                proof: auth::proof(&SECRET, &exporter),
                resume: None,
            };
            let reply = transport::request(&conn, RequestId(1), hello)
                .await
                .expect("a reply");
            assert!(
                matches!(reply, Ok(Reply::HelloAck { .. })),
                "Hello after bad frames: {reply:?}"
            );
            // Many requests at once, each on its own stream.
            let root = wormhole_core::proto::NodeId::ROOT;
            let replies = futures_lite::future::zip(
                transport::request(&conn, RequestId(2), Request::GetAttr { node: root }),
                transport::request(&conn, RequestId(3), Request::Statfs),
            )
            .await;
            assert!(
                matches!(replies.0, Ok(Ok(Reply::Attr(_)))),
                "{:?}",
                replies.0
            );
            assert!(
                matches!(replies.1, Ok(Ok(Reply::StatFs(_)))),
                "{:?}",
                replies.1
            );
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    shell
        .block_on(timeout(&*rt, STEP, "the host to stop", host.stop()))
        .unwrap_or_else(|e| panic!("{e}"));
}
