//! End to end with every real piece, on loopback: the host driver serving
//! a real directory (HostFs through FsPool, the tree watcher) over QUIC,
//! and the FUSE mount driving the client core through [`QuicTransport`].
//! One test body, run on both shells (tokio and smol).
//!
//! Needs root and `/dev/fuse` (CI has both); if the mount cannot be made
//! the test fails and says why, it never skips. Every wait has a limit:
//! file-system calls run on a worker thread the test waits for with a
//! timeout, naming the step that hung.
//!
//! [`QuicTransport`]: wormhole_io::QuicTransport

use std::fs;
use std::path::Path;
use std::time::Duration;
use wormhole_tests::e2e::{Steps, pattern, run_bounded, wait_until};
use wormhole_tests::quic::{
    Guard, RawClient, SECRET, STEP, mount, next_event, scratch, start_host, start_host_with,
    stop_host, ticket, transport, within,
};

use wormhole_core::client::ClientEvent;
use wormhole_core::codec::frame;
use wormhole_core::conn::DisconnectReason;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::proto::{
    CHUNK_SIZE, Checksum, Errno, HostMessage, Name, NodeId, Reply, Request, TxnId,
};
use wormhole_io::host::{Host, HostOptions};
use wormhole_io::net::frame::MAX_REQUEST_FRAME;
use wormhole_io::{Identity, MountOptions, Shell, Ticket};

/// The limit on the whole file-system workout (64 MiB each way and a
/// 10,000-entry directory included).
const SUITE: Duration = Duration::from_secs(300);
/// The limit on binding a stopped host's address again.
const REBIND: Duration = Duration::from_secs(60);
const CHUNK: usize = 128 * 1024;
/// The large file of the workout.
const BIG: usize = 64 << 20;
/// Entries of the large directory.
const MANY: usize = 10_000;

wormhole_tests::both_shells! {
    quic_mount: quic_mount;

    refusals: refusals;

    host_restart: host_restart;

    host_gone: host_gone;

    read_only_host: read_only;

    bad_frames_reset_one_stream: bad_frames;

    a_path_found_after_its_connect_gave_up_is_kept: renewal_outlives_its_connect;
}

fn quic_mount<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("mount", shell.name());
    let mut guard = Guard::new(&dir);
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    // The ticket round-trips through its text, as a person would paste it.
    let ticket = Ticket::parse(&ticket(&host, &identity).encode()).expect("the ticket parses");
    let transport = transport(shell, &ticket);
    within(shell, STEP, "the probe", transport.probe(&ticket.secret))
        .expect("the host accepts the ticket");

    let mut options = MountOptions::new(ticket.secret.clone()).expect("randomness");
    // Long attribute times: a local change must arrive by invalidation,
    // not by expiry.
    options.client.cache.attr_ttl = Duration::from_secs(60);
    options.cache_dir = Some(dir.join("cache"));
    let mount = mount(shell, transport, &dir.join("mnt"), options);
    guard.mounts.push(mount);
    assert_eq!(
        next_event(shell, &guard.mounts[0], "the mount to connect"),
        ClientEvent::Connected { resumed: false }
    );

    run_bounded(&dir, SUITE, workout);

    guard.unmount_all(shell);
    stop_host(shell, host);
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
    // A directory made through the mount is leased at its mkdir, so its
    // files reach the host's disk just after their close, not before it
    // returns (docs/filesystem.md, "Asynchronous directory operations").
    wait_until(
        Duration::from_secs(10),
        "the leaf on the host's disk",
        || fs::read(share.join("a/b/c/leaf")).is_ok_and(|d| d == b"leaf"),
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

    steps.at("a 64 MiB file written through the mount");
    let big = pattern(BIG, 64);
    let want = Checksum::of(&big);
    fs::write(mnt.join("big"), &big).expect("write 64 MiB through the mount");
    drop(big);
    steps.at("the 64 MiB file read back through the mount");
    let got = fs::read(mnt.join("big")).expect("read 64 MiB through the mount");
    assert_eq!(got.len(), BIG, "its length through the mount");
    assert_eq!(Checksum::of(&got), want, "its BLAKE3 through the mount");
    drop(got);
    steps.at("the 64 MiB file on the host's disk");
    let on_disk = fs::read(share.join("big")).expect("read 64 MiB on the host");
    assert_eq!(on_disk.len(), BIG, "its length on the host's disk");
    assert_eq!(
        Checksum::of(&on_disk),
        want,
        "its BLAKE3 on the host's disk"
    );
    drop(on_disk);
    steps.at("a 64 MiB file made on the host, read through the mount");
    // Never seen by the mount before: every chunk crosses QUIC.
    let big = pattern(BIG, 65);
    let want = Checksum::of(&big);
    fs::write(share.join("big-from-host"), &big).expect("write 64 MiB on the host");
    drop(big);
    let got = fs::read(mnt.join("big-from-host")).expect("read 64 MiB through the mount");
    assert_eq!(got.len(), BIG, "its length through the mount");
    assert_eq!(Checksum::of(&got), want, "its BLAKE3 through the mount");
    drop(got);

    steps.at("a directory of 10,000 entries made on the host");
    let many = share.join("many");
    fs::create_dir(&many).expect("mkdir on the host");
    for i in 0..MANY {
        fs::File::create(many.join(format!("entry-{i:05}"))).expect("create an entry");
    }
    steps.at("the 10,000 entries listed through the mount");
    let want: Vec<String> = (0..MANY).map(|i| format!("entry-{i:05}")).collect();
    // The mount learns of the new directory from the host's watcher, so
    // it may take a moment to appear; but every listing it gives is
    // exact: no entry twice, none that is not on the host.
    let mut seen = 0;
    wait_until(
        Duration::from_secs(60),
        "the mount to list all 10,000 entries",
        || {
            let Ok(dir) = fs::read_dir(mnt.join("many")) else {
                return false;
            };
            let mut names: Vec<String> = dir
                .map(|e| {
                    e.expect("readdir")
                        .file_name()
                        .into_string()
                        .expect("utf-8")
                })
                .collect();
            names.sort();
            let listed = names.len();
            names.dedup();
            assert_eq!(names.len(), listed, "an entry listed twice");
            assert!(
                names.iter().all(|n| want.binary_search(n).is_ok()),
                "a listing with a name the host does not have"
            );
            seen = listed;
            names == want
        },
    );
    assert_eq!(seen, MANY, "every entry listed once");
    steps.at("done");
}

fn refusals<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("refuse", shell.name());
    let mut guard = Guard::new(&dir);
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let good = ticket(&host, &identity);

    // A wrong secret: the host answers EACCES and nothing else.
    let wrong_secret = Ticket {
        secret: TicketSecret([0x11; 32]),
        ..good.clone()
    };
    let t = transport(shell, &wrong_secret);
    let err = within(
        shell,
        STEP,
        "the wrong-secret probe",
        t.probe(&wrong_secret.secret),
    )
    .expect_err("a wrong secret is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("EACCES"), "{err}");

    // Mounted anyway (no probe): the host's EACCES makes the client give
    // up for good (ClientEvent::Disconnected with no redial: a refused
    // secret stays refused) and file operations
    // fail at once (the core answers ENOTCONN once it has given up)
    // rather than hang.
    let t = transport(shell, &wrong_secret);
    let options = MountOptions::new(wrong_secret.secret.clone()).expect("randomness");
    guard
        .mounts
        .push(mount(shell, t, &dir.join("mnt"), options));
    let event = next_event(shell, &guard.mounts[0], "the refused mount's event");
    assert_eq!(
        event,
        ClientEvent::Disconnected {
            reason: DisconnectReason::AuthFailed,
            redial_in: None
        },
        "auth refused: given up for good"
    );
    run_bounded(&dir, SUITE, |dir, _| {
        let err = fs::metadata(dir.join("mnt/anything")).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");
    });
    guard.unmount_all(shell);

    // A wrong certificate fingerprint: the handshake itself fails.
    let other = Identity::generate().expect("identity");
    let wrong_cert = Ticket {
        fingerprint: other.fingerprint(),
        ..good.clone()
    };
    let t = transport(shell, &wrong_cert);
    let err = within(shell, STEP, "the wrong-certificate probe", t.probe(&SECRET))
        .expect_err("a host with another certificate is refused");
    assert!(
        err.to_string().contains("cannot reach the host"),
        "a clear error: {err}"
    );
    let mut t2 = t.clone();
    let link = within(
        shell,
        STEP,
        "the wrong-certificate connect",
        wormhole_io::Transport::connect(&mut t2),
    );
    assert!(link.is_err(), "the mount's transport refuses it too");

    // The right ticket still works after all that.
    let t = transport(shell, &good);
    within(shell, STEP, "the good probe", t.probe(&SECRET)).expect("the right ticket is accepted");
    stop_host(shell, host);
}

/// The host stops and starts again on the same address with the same
/// identity (as `wormhole host` after a restart): the mount reconnects by
/// itself and what was written before is there.
fn host_restart<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("restart", shell.name());
    let mut guard = Guard::new(&dir);
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let addr = host.local_addr();
    let ticket = ticket(&host, &identity);
    let options = MountOptions::new(SECRET).expect("randomness");
    let t = transport(shell, &ticket);
    guard
        .mounts
        .push(mount(shell, t, &dir.join("mnt"), options));
    assert_eq!(
        next_event(shell, &guard.mounts[0], "the first connect"),
        ClientEvent::Connected { resumed: false }
    );
    run_bounded(&dir, SUITE, |dir, _| {
        fs::write(dir.join("mnt/before"), b"written before the restart").expect("write");
    });

    stop_host(shell, host);
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
    while !matches!(
        next_event(shell, &guard.mounts[0], "the mount to reconnect"),
        ClientEvent::Connected { .. }
    ) {}
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
    guard.unmount_all(shell);
    stop_host(shell, host);
}

/// A renewing transport whose path fails asks for a fresh one; the
/// connect that asked is given up (as the connection machine gives up an
/// attempt that outlives its timeout) before the path is found. The path
/// found is kept: the next connect goes over it without asking again.
fn renewal_outlives_its_connect<S: Shell>(shell: &S) {
    use futures_lite::future;
    use wormhole_io::net::{QuicTransport, RenewingTransport, Transport};
    wormhole_io::cli::init_tracing();
    let dir = scratch("renewal", shell.name());
    let _guard = Guard::new(&dir);
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let good = ticket(&host, &identity);
    // The same host under another pin: every handshake fails at once.
    let mut wrong = good.clone();
    wrong.fingerprint = Identity::generate().expect("identity").fingerprint();
    let (renew_tx, renew_rx) = async_channel::bounded(1);
    let mut t = RenewingTransport::new(transport(shell, &wrong), renew_tx);
    within(shell, STEP, "the first connect", t.connect())
        .expect_err("the wrong pin fails the first connect");
    let renewal = within(shell, STEP, "a renewal is asked for", async {
        let asking = t.connect();
        future::or(
            async {
                let _ = asking.await;
                None
            },
            async { renew_rx.recv().await.ok() },
        )
        .await
    })
    .expect("the second connect asks for a new path");
    // The asking connect is gone; its path arrives now.
    let fresh: QuicTransport = transport(shell, &good);
    renewal.found(Ok(fresh));
    within(shell, STEP, "the connect after the renewal", t.connect())
        .expect("the next connect goes over the path found");
    assert!(
        renew_rx.try_recv().is_err(),
        "no new search for a path that was found"
    );
    stop_host(shell, host);
}

/// How long a request may wait for a lost host in `host_gone`.
const GONE_TIMEOUT: Duration = Duration::from_secs(5);
/// Content of the file `host_gone` reads before the host goes.
const KEPT: usize = 3 * CHUNK + 5;

/// The host goes away for good while mounted: what is cached (attributes,
/// an open file's bytes, a new open of a file cached whole) is still
/// served, what needs the host fails with
/// a clear errno within the request timeout instead of hanging, and the
/// mount still unmounts cleanly.
fn host_gone<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("gone", shell.name());
    let mut guard = Guard::new(&dir);
    fs::write(dir.join("share/kept"), pattern(KEPT, 7)).expect("the kept file");
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = ticket(&host, &identity);
    let mut options = MountOptions::new(SECRET).expect("randomness");
    options.client.request_timeout = GONE_TIMEOUT;
    options.client.cache.attr_ttl = Duration::from_secs(600);
    let m = mount(shell, transport(shell, &ticket), &dir.join("mnt"), options);
    guard.mounts.push(m);
    assert_eq!(
        next_event(shell, &guard.mounts[0], "the mount to connect"),
        ClientEvent::Connected { resumed: false }
    );
    // Opened and read while the host is there: the handle stays open
    // across the loss (its bytes are in the kernel's and the core's
    // caches).
    // On a thread of its own, so that a hung mount fails the test at the
    // limit instead of hanging it; the handle comes back on a channel.
    let (opened, open) = std::sync::mpsc::channel();
    let mnt = dir.join("mnt");
    let opener = std::thread::spawn(move || {
        let f = fs::File::open(mnt.join("kept")).expect("open the kept file");
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut all).expect("read it");
        assert_eq!(all, pattern(KEPT, 7));
        let _ = opened.send(f);
    });
    let kept = match open.recv_timeout(STEP) {
        Ok(f) => f,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("timed out after {STEP:?} waiting for the kept file to be opened and read")
        }
        // The opener failed: its panic says why.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            opener.join().expect("the opener");
            unreachable!("the opener ended without sending the file")
        }
    };
    opener.join().expect("the opener");
    stop_host(shell, host);
    run_bounded(&dir, SUITE, gone_workout);
    drop(kept);
    guard.unmount_all(shell);
}

fn gone_workout(dir: &Path, steps: &Steps) {
    let mnt = dir.join("mnt");
    steps.at("stat a cached file");
    let meta = fs::metadata(mnt.join("kept")).expect("cached attributes are served");
    assert_eq!(meta.len(), KEPT as u64);
    steps.at("look up a name never seen");
    let asked = std::time::Instant::now();
    let err = fs::metadata(mnt.join("never-seen")).expect_err("no host to ask");
    let waited = asked.elapsed();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(code) if code == Errno::TimedOut.raw() || code == Errno::NotConn.raw()
        ),
        "a clear errno, not {err:?}"
    );
    assert!(
        waited <= GONE_TIMEOUT + STEP,
        "answered after {waited:?}, the request timeout is {GONE_TIMEOUT:?}"
    );
    steps.at("open the file again");
    // With the host unreachable, the cache answers an open of a file it
    // holds whole, with the version last seen (docs/filesystem.md,
    // "Partition"): close-to-open waits for the host to be back.
    let mut again = Vec::new();
    let f = fs::File::open(mnt.join("kept")).expect("open from the cache");
    std::io::Read::read_to_end(&mut &f, &mut again).expect("read from the cache");
    assert_eq!(again, pattern(KEPT, 7), "the whole version last seen");
}

/// A read-only host answers every change with EROFS and still serves
/// reads.
fn read_only<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("ro", shell.name());
    let _cleanup = Guard::new(&dir);
    fs::write(dir.join("share/existing"), b"x").expect("a file");
    let identity = Identity::generate().expect("identity");
    let host = start_host_with(shell, &dir, &identity, true);
    let t = transport(shell, &ticket(&host, &identity));
    within(shell, STEP, "the read-only exchange", async {
        let (mut c, _) = RawClient::authenticated(&t).await;
        let reply = c
            .call(Request::Mkdir {
                parent: NodeId::ROOT,
                name: Name::new(b"new".to_vec()).expect("name"),
                mode: 0o755,
                owner: None,
                lease: true,
            })
            .await;
        assert_eq!(reply, Err(Errno::RoFs));
        let reply = c
            .call(Request::Lookup {
                parent: NodeId::ROOT,
                name: Name::new(b"existing".to_vec()).expect("name"),
            })
            .await;
        assert!(matches!(reply, Ok(Reply::Attr(_))), "{reply:?}");
    });
    assert!(!dir.join("share/new").exists());
    stop_host(shell, host);
}

/// A raw-protocol client: oversized and malformed frames are refused on
/// their own stream; the connection, and its Hello, go on.
fn bad_frames<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("frames", shell.name());
    let _cleanup = Guard::new(&dir);
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let t = transport(shell, &ticket(&host, &identity));
    within(shell, STEP, "the raw-protocol exchange", async {
        let mut c = RawClient::connect(&t).await;
        // A length prefix far beyond any request, then more bytes than
        // the host reads from one stream.
        let (mut send, mut recv) = c.conn.open_bi().await.expect("stream");
        let mut big = vec![0xffu8; 4];
        big.extend(std::iter::repeat_n(7u8, MAX_REQUEST_FRAME + 1));
        let _ = send.write_all(&big).await;
        let _ = send.finish();
        assert!(
            recv.read_to_end(1 << 20).await.is_err(),
            "an oversized frame gets its stream reset, no reply"
        );
        // A well-framed message that is not a request.
        let (mut send, mut recv) = c.conn.open_bi().await.expect("stream");
        send.write_all(&frame(b"\x01garbage")).await.expect("write");
        let _ = send.finish();
        assert!(
            recv.read_to_end(1 << 20).await.is_err(),
            "an undecodable request gets its stream reset"
        );
        // The same connection still authenticates (Hello fails the test
        // otherwise).
        c.hello().await;
        streams_not_one_frame(&mut c).await;
        // Many requests at once, each on its own stream.
        let root = NodeId::ROOT;
        let conn = c.conn.clone();
        let replies = futures_lite::future::zip(
            wormhole_io::net::transport::request(
                &conn,
                wormhole_core::proto::RequestId(100),
                Request::GetAttr { node: root },
            ),
            wormhole_io::net::transport::request(
                &conn,
                wormhole_core::proto::RequestId(101),
                Request::Statfs,
            ),
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
    });
    stop_host(shell, host);
}

/// Request streams that do not hold exactly one frame: each is refused
/// alone (the stream is reset, no reply), and the connection goes on.
async fn streams_not_one_frame(c: &mut RawClient) {
    // Large enough to cross the wire in many QUIC packets, so the host
    // joins the frame from pieces; about a transaction never begun, so
    // the answer, when there is one, is an error reply.
    let data = vec![0x33; CHUNK_SIZE];
    let good = c.encode(Request::WriteChunk {
        txn: TxnId(u64::MAX),
        index: 0,
        offset: 0,
        data: data.into(),
    });
    let framed = frame(&good).to_vec();
    let with = |tail: &[u8]| [&framed[..], tail].concat();
    let announced = |len: u32, body: &[u8]| [&len.to_be_bytes()[..], body].concat();
    let too_long = u32::try_from(MAX_REQUEST_FRAME).expect("fits a header");
    let broken: [(&str, Vec<u8>); 6] = [
        ("an empty stream", Vec::new()),
        ("half a header", framed[..2].to_vec()),
        (
            "a payload shorter than its header",
            framed[..framed.len() - 1].to_vec(),
        ),
        ("a byte after the frame", with(&[0])),
        ("a second frame", with(&framed)),
        ("a header beyond the limit", announced(too_long, &good)),
    ];
    for (what, stream) in broken {
        let answer = c.call_stream(&stream).await;
        assert!(answer.is_err(), "{what} got an answer: {answer:?}");
    }
    // The same frame whole: answered (the transaction is unknown).
    let answer = c.call_stream(&framed).await;
    assert!(
        matches!(answer, Ok(HostMessage::Reply { result: Err(_), .. })),
        "{answer:?}"
    );
}
