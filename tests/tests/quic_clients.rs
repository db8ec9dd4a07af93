//! Several clients of one host, end to end over QUIC on loopback with a
//! real shared directory; one body per test, run on both shells.
//!
//! * `two_writers_*`: two FUSE mounts of the same host overwrite the same
//!   file concurrently, again and again, each with its own large pattern.
//!   The host's file is always one writer's whole content (never a mix,
//!   never a wrong length), and after the race each mount reads exactly
//!   what the host has.
//! * `killed_client_*`: a raw-protocol client in a child process takes a
//!   file's exclusive lock, stages a write, and is killed (SIGKILL: no
//!   Goodbye, no QUIC close). Another client gets the lock within the
//!   lock's lifetime, and its write commits; the host then notices the
//!   dead connection by itself and ends the dead session, its staged
//!   write removed.
//!
//! Needs root and `/dev/fuse` (the mounts); fails, never skips, without
//! them. Every wait has a limit.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wormhole_core::host::{HostEvent, RESERVED_PREFIX};
use wormhole_core::proto::{CHUNK_SIZE, Errno, LockToken, Reply, Request, SessionId};
use wormhole_io::{Identity, Shell, Ticket};
use wormhole_tests::doomed::{
    self, LOCK_TTL, VICTIM, attr_of, chunk, exclusive, look_up_victim, token_of, txn_of, unhex16,
};
use wormhole_tests::e2e::{Steps, run_bounded, wait_until};
use wormhole_tests::quic::{
    Guard, RawClient, STEP, mount_connected, scratch, start_host, stop_host, ticket, transport,
    within,
};

/// The limit on the writers' race.
const RACE: Duration = Duration::from_secs(240);
/// Overwrites per writer.
const ROUNDS: usize = 12;
/// Writer A's file: 1 MiB of `A` (eight whole chunks).
const LEN_A: usize = 8 * CHUNK_SIZE;
/// Writer B's file: a different length, ending inside a chunk, all `B`,
/// so a size taken from one writer and bytes from the other show.
const LEN_B: usize = 9 * CHUNK_SIZE + CHUNK_SIZE / 2 + 7;

/// Slack on top of the promised times: scheduling on a busy CI machine.
const SLACK: Duration = Duration::from_secs(15);
/// QUIC idle timeout (`transport_config`) plus the session grace period
/// (`HostConfig::session_grace`): when the host ends a dead session.
const DEAD_SESSION_END: Duration = Duration::from_secs(30 + 30);

wormhole_tests::both_shells! {
    two_writers: two_writers;

    /// An open file read while another client replaces it reads one whole
    /// version (see [`torn_reads`]).
    reads_during_the_race: torn_reads;

    killed_client: killed_client;
}

// ------------------------------------------------------------ two writers

fn two_writers<S: Shell>(shell: &S) {
    writers_race(shell, "writers", race);
}

/// The race again, each writer also reading the file back through its
/// own mount after every write (one open, read to the end, close), which
/// must give one whole version, as it would on a local disk where a
/// commit's rename leaves an open file its old content.
///
/// It failed before the client read chunks through the open's own host
/// handle (which keeps the replaced file): one open read the first
/// chunks of one version and the rest of another (seen: 512 KiB of `B`
/// then 512 KiB of `A`), stopped early, or got zeros where the kernel's
/// size was still the old one. The host's file is never torn:
/// `two_writers` checks that.
fn torn_reads<S: Shell>(shell: &S) {
    writers_race(shell, "torn-reads", race_reading_back);
}

fn writers_race<S: Shell>(shell: &S, what: &str, body: fn(&Path, &Steps)) {
    wormhole_io::cli::init_tracing();
    let dir = scratch(what, shell.name());
    let mut guard = Guard::new(&dir);
    for sub in ["mnt2", "cache2"] {
        fs::create_dir_all(dir.join(sub)).expect("scratch directories");
    }
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = ticket(&host, &identity);
    guard.mounts.push(mount_connected(
        shell,
        &ticket,
        &dir.join("mnt"),
        Some(dir.join("cache")),
    ));
    guard.mounts.push(mount_connected(
        shell,
        &ticket,
        &dir.join("mnt2"),
        Some(dir.join("cache2")),
    ));

    run_bounded(&dir, RACE, body);

    guard.unmount_all(shell);
    stop_host(shell, host);
}

/// What a reader may find in the shared file: nothing yet, an empty file
/// (an `O_TRUNC` open commits the truncation first, as on a local disk),
/// or one writer's complete content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Empty,
    A,
    B,
}

/// Classifies `data`, failing the test on a torn file.
fn whole(data: &[u8], where_: &str) -> Seen {
    let letter = |c: u8| data.iter().all(|&b| b == c);
    match data.len() {
        0 => Seen::Empty,
        LEN_A if letter(b'A') => Seen::A,
        LEN_B if letter(b'B') => Seen::B,
        len => {
            let a = data.iter().filter(|&&b| b == b'A').count();
            let b = data.iter().filter(|&&b| b == b'B').count();
            panic!(
                "torn file {where_}: {len} bytes ({a} × 'A', {b} × 'B', {} other); \
                 want {LEN_A} × 'A' or {LEN_B} × 'B'",
                len - a - b
            )
        }
    }
}

fn race(dir: &Path, steps: &Steps) {
    race_with(dir, steps, false);
}

fn race_reading_back(dir: &Path, steps: &Steps) {
    race_with(dir, steps, true);
}

/// Both writers at once, the host's file sampled meanwhile; with
/// `read_back`, each writer reads its mount's file after every write.
fn race_with(dir: &Path, steps: &Steps, read_back: bool) {
    steps.at("two mounts overwrite one file, again and again");
    let on_host = dir.join("share/shared");
    let writer = |mnt: std::path::PathBuf, letter: u8, len: usize| {
        std::thread::spawn(move || {
            let data = vec![letter; len];
            let path = mnt.join("shared");
            for round in 0..ROUNDS {
                fs::write(&path, &data)
                    .unwrap_or_else(|e| panic!("writer {} round {round}: {e}", letter as char));
                if !read_back {
                    continue;
                }
                // What this mount reads right after its own close: a whole
                // version (its own, or the other writer's if that
                // committed since), never a mix.
                let back = fs::read(&path).unwrap_or_else(|e| {
                    panic!("writer {} reads back in round {round}: {e}", letter as char)
                });
                whole(
                    &back,
                    &format!("read back through mount {}", letter as char),
                );
            }
        })
    };
    let a = writer(dir.join("mnt"), b'A', LEN_A);
    let b = writer(dir.join("mnt2"), b'B', LEN_B);
    // Meanwhile, what a program on the host sees: commits are atomic
    // renames, so every read finds one whole version. (Reading paces
    // the loop; it stops when both writers are done.)
    let mut samples = [0usize; 3];
    while !(a.is_finished() && b.is_finished()) {
        match fs::read(&on_host) {
            Ok(data) => samples[whole(&data, "on the host during the race") as usize] += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("read the host's file: {e}"),
        }
    }
    for (name, w) in [("A", a), ("B", b)] {
        if let Err(panic) = w.join() {
            eprintln!("writer {name} failed");
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("host-side samples during the race (empty, A, B): {samples:?}");

    steps.at("the host has one writer's whole file");
    let final_data = fs::read(&on_host).expect("the host's file");
    let last = whole(&final_data, "on the host after the race");
    assert_ne!(last, Seen::Empty, "the last commit was a full write");

    steps.at("each mount reads what the host has, after a close and open");
    for mnt in ["mnt", "mnt2"] {
        let got = fs::read(dir.join(mnt).join("shared")).expect("read through the mount");
        assert_eq!(
            whole(&got, &format!("through {mnt} after the race")),
            last,
            "{mnt} reads what the host has"
        );
        let meta = fs::metadata(dir.join(mnt).join("shared")).expect("stat through the mount");
        assert_eq!(
            meta.len(),
            final_data.len() as u64,
            "{mnt}: the host's size"
        );
    }
    steps.at("done");
}

// ---------------------------------------------------------- killed client

/// A child process; killed (SIGKILL) and reaped on drop, so a failing
/// test leaves none behind.
struct Doomed(Child);

impl Drop for Doomed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the doomed client and waits until it holds the lock; returns
/// it with its session and lock token.
fn spawn_doomed<S: Shell>(shell: &S, ticket: &Ticket) -> (Doomed, SessionId, LockToken) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wormhole-doomed-client"))
        .args([shell.name(), &ticket.encode()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the doomed client");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    for (pipe, tag) in [
        (Box::new(stdout) as Box<dyn Read + Send>, "out"),
        (Box::new(stderr), "err"),
    ] {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(format!("[child {tag}] {line}")).is_err() {
                    break;
                }
            }
        });
    }
    drop(lines_tx);
    let child = Doomed(child);
    let end = Instant::now() + STEP;
    let mut said = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.split(doomed::MARKER).nth(1) {
                    let mut words = rest.split_whitespace();
                    let session = SessionId(unhex16(words.next().expect("session")));
                    let token = LockToken(unhex16(words.next().expect("token")));
                    return (child, session, token);
                }
                said.push(line);
            }
            Err(e) => panic!(
                "the doomed client never said it holds the lock ({e:?}); it said:\n{}",
                said.join("\n")
            ),
        }
    }
}

fn killed_client<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("killed", shell.name());
    let _cleanup = Guard::new(&dir);
    let share = dir.join("share");
    fs::write(share.join(VICTIM), b"before").expect("the victim file");
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = ticket(&host, &identity);

    let (mut doomed, dead_session, dead_token) = spawn_doomed(shell, &ticket);
    let t = transport(shell, &ticket);
    let (mut c, victim) = within(shell, STEP, "the survivor's first steps", async {
        let (mut c, session) = RawClient::authenticated(&t).await;
        assert_ne!(session, dead_session);
        let victim = look_up_victim(&mut c).await;
        // The doomed client really holds the lock (so what follows is a
        // release, not a lock that was never taken).
        assert_eq!(
            c.call(exclusive(victim.node, false)).await,
            Err(Errno::Again),
            "the lock is taken while its holder lives"
        );
        (c, victim.node)
    });
    assert!(
        share.read_dir().expect("list the share").any(|e| e
            .expect("entry")
            .file_name()
            .as_encoded_bytes()
            .starts_with(RESERVED_PREFIX)),
        "the doomed client's write is staged on the host"
    );

    // SIGKILL, as the OOM killer or a crash would: the process sends
    // nothing more, neither Goodbye nor a QUIC CONNECTION_CLOSE, and its
    // UDP socket is gone. (Dropping a quinn connection or endpoint in
    // this process would not do: quinn sends a close frame for a dropped
    // connection, which the host would hear at once.)
    doomed.0.kill().expect("kill the doomed client");
    let status = doomed.0.wait().expect("reap it");
    assert!(!status.success(), "it was killed: {status}");
    let killed = Instant::now();

    // The design's promise (docs/filesystem.md, Locks): a lock nobody
    // refreshes expires at its ttl, whatever became of its holder's
    // connection. Waiting in the queue, the survivor gets it then.
    let token = within(
        shell,
        LOCK_TTL + SLACK,
        "the dead client's lock to expire",
        c.call(exclusive(victim, true)),
    );
    let token = token_of(token, "the survivor's lock");
    let waited = killed.elapsed();
    assert!(
        waited <= LOCK_TTL + SLACK,
        "the lock came {waited:?} after the kill"
    );
    eprintln!("the survivor got the lock {waited:?} after the kill");

    let content: Vec<u8> = (0..2 * CHUNK_SIZE + 99).map(|i| (i % 251) as u8).collect();
    let committed = within(shell, STEP, "the survivor's write", async {
        // The dead client's token is worth nothing to anyone else.
        let stolen = c
            .call(Request::BeginWrite {
                node: victim,
                token: dead_token,
                base: None,
                append_from: None,
            })
            .await;
        assert!(stolen.is_err(), "a dead session's token: {stolen:?}");
        let txn = txn_of(
            c.call(Request::BeginWrite {
                node: victim,
                token,
                base: None,
                append_from: None,
            })
            .await,
            "begin the survivor's write",
        );
        for (i, piece) in content.chunks(CHUNK_SIZE).enumerate() {
            let reply = c.call(chunk(txn, i as u64, piece)).await;
            assert_eq!(reply, Ok(Reply::Done), "chunk {i}");
        }
        let attr = attr_of(
            c.call(Request::CommitWrite {
                txn,
                size: content.len() as u64,
                set: Default::default(),
            })
            .await,
            "commit",
        );
        assert_eq!(attr.size, content.len() as u64);
        let reply = c.call(Request::ReleaseLock { token }).await;
        assert_eq!(reply, Ok(Reply::Done), "release");
        attr
    });
    assert_eq!(committed.node, victim);
    assert!(
        fs::read(share.join("victim")).expect("the victim on disk") == content,
        "the host's file is exactly the survivor's write (none of the dead client's K's)"
    );

    // The host also notices the dead connection by itself (QUIC idle
    // timeout) and, after the grace period in which a reconnect could
    // have resumed it, ends the session: nothing of it lingers.
    let ends_by = DEAD_SESSION_END + SLACK;
    let left = ends_by.saturating_sub(killed.elapsed());
    within(shell, left, "the host to end the dead session", async {
        loop {
            match host.events().recv().await {
                Ok(HostEvent::SessionEnded { session }) if session == dead_session => break,
                Ok(_) => {}
                Err(_) => panic!("the host stopped"),
            }
        }
    });
    eprintln!(
        "the host ended the dead session {:?} after the kill",
        killed.elapsed()
    );
    wait_until(STEP, "the dead client's staging file to go", || {
        !share.read_dir().expect("list the share").any(|e| {
            e.expect("entry")
                .file_name()
                .as_encoded_bytes()
                .starts_with(RESERVED_PREFIX)
        })
    });
    within(shell, STEP, "goodbye", async {
        assert_eq!(c.call(Request::Goodbye).await, Ok(Reply::Done));
    });
    stop_host(shell, host);
}
