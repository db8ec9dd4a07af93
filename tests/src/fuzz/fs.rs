//! Fuzz bodies of the file system: the protocol decoders, the host machine
//! and the client machine (in a [`World`]).

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use wormhole_core::client::{ClientConfig, Op, Req};
use wormhole_core::host::memfs::MemFs;
use wormhole_core::host::{
    ConnId, FsOp, FsOpId, FsResult, HostConfig, HostEvent, HostIo, HostServer, RESERVED_PREFIX,
};
use wormhole_core::proto::{
    ClientMessage, Errno, HostMessage, Name, OpenFor, Request, RequestId, SessionId, SetAttr,
};
use wormhole_core::testkit::{SECRET, World};
use wormhole_core::vfs::Ino;
use wormhole_core::{Instant, Rng};

/// `proto_client_message`: decoding arbitrary bytes never panics; what
/// decodes re-encodes and decodes to the same value.
pub fn proto_client_message(data: &[u8]) {
    if let Ok(msg) = ClientMessage::decode(data) {
        let bytes = msg.encode().expect("a decoded message encodes");
        assert_eq!(
            ClientMessage::decode(&bytes).as_ref(),
            Ok(&msg),
            "encode∘decode"
        );
    }
}

/// `proto_host_message`: the same for host messages.
pub fn proto_host_message(data: &[u8]) {
    if let Ok(msg) = HostMessage::decode(data) {
        let bytes = msg.encode().expect("a decoded message encodes");
        assert_eq!(
            HostMessage::decode(&bytes).as_ref(),
            Ok(&msg),
            "encode∘decode"
        );
    }
}

/// One input to the host machine.
#[derive(Arbitrary, Debug, Clone)]
pub enum HostInput {
    /// A connection opens (connections are numbered 0–3).
    Open(u8),
    /// It closes.
    Close(u8),
    /// Hello with the right proof (or a wrong one), resuming a session
    /// seen before (by index) or not.
    Hello {
        /// Connection.
        conn: u8,
        /// Prove the secret.
        good: bool,
        /// Resume the n-th session seen.
        resume: Option<u8>,
    },
    /// A decoded request.
    Request {
        /// Connection.
        conn: u8,
        /// The message.
        msg: ClientMessage,
    },
    /// Raw bytes.
    Raw {
        /// Connection.
        conn: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Time passes (milliseconds × 100) and timers fire.
    Advance(u16),
    /// The next file operations fail with this errno (none: executed).
    FailFs(Option<Errno>),
}

/// The host machine's input list.
#[derive(Arbitrary, Debug, Clone)]
pub struct HostFuzz {
    /// Seed of its RNG.
    pub seed: u64,
    /// Inputs, in order (at most 256 are used).
    pub inputs: Vec<HostInput>,
}

fn exporter(conn: u8) -> [u8; 32] {
    [conn.wrapping_add(1); 32]
}

/// `host_machine`: a [`HostServer`] over a [`MemFs`] driven by arbitrary
/// connections, Hellos with right and wrong proofs, decoded requests, raw
/// bytes, file operation failures and time. No panic; after every input
/// the lock table's invariants hold and every file operation it asks for
/// names paths of valid, non-reserved names only (and no staging name).
pub fn host_machine(data: &[u8]) {
    let Ok(input) = HostFuzz::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut disk = MemFs::new(1 << 20);
    for f in ["a", "b"] {
        let path = wormhole_core::host::RelPath::from(vec![Name::new(f).expect("name")]);
        let _ = disk.execute(FsOp::Create {
            path,
            mode: 0o644,
            exclusive: true,
            open: None,
            owner: None,
        });
    }
    let mut host = HostServer::new(HostConfig::default(), SECRET, Rng::from_u64(input.seed));
    let mut now = Instant::ZERO;
    let mut sessions: Vec<SessionId> = Vec::new();
    let mut fail: Option<Errno> = None;
    host.start(now);
    drain_host(&mut host, &mut disk, now, fail, &mut sessions);
    // Two authenticated sessions to start with, so arbitrary requests
    // reach the file protocol rather than only the Hello check.
    let preamble = (0..2u8).flat_map(|c| {
        [
            HostInput::Open(c),
            HostInput::Hello {
                conn: c,
                good: true,
                resume: None,
            },
        ]
    });
    let inputs: Vec<HostInput> = preamble
        .chain(input.inputs.iter().take(256).cloned())
        .collect();
    for i in &inputs {
        match i {
            HostInput::Open(c) => host.conn_opened(now, ConnId(u64::from(c % 4)), exporter(c % 4)),
            HostInput::Close(c) => host.conn_closed(now, ConnId(u64::from(c % 4))),
            HostInput::Hello { conn, good, resume } => {
                let c = conn % 4;
                let proof = if *good {
                    World::proof(&exporter(c))
                } else {
                    [0; 32]
                };
                let resume = resume.and_then(|r| sessions.get(usize::from(r)).copied());
                let msg = ClientMessage {
                    id: RequestId(0),
                    request: Request::Hello {
                        version: u16::from(wormhole_core::codec::PROTOCOL_VERSION),
                        proof,
                        resume,
                    },
                };
                host.handle_request(now, ConnId(u64::from(c)), msg);
            }
            HostInput::Request { conn, msg } => {
                host.handle_request(now, ConnId(u64::from(conn % 4)), msg.clone())
            }
            HostInput::Raw { conn, bytes } => {
                let _ = host.handle_message(
                    now,
                    ConnId(u64::from(conn % 4)),
                    &bytes::Bytes::copy_from_slice(bytes),
                );
            }
            HostInput::Advance(t) => {
                now += Duration::from_millis(u64::from(*t) * 100);
                host.handle_timeout(now);
            }
            HostInput::FailFs(e) => fail = *e,
        }
        drain_host(&mut host, &mut disk, now, fail, &mut sessions);
        if let Err(e) = host.locks().check_invariants() {
            panic!("lock table: {e}\ninput: {input:?}");
        }
    }
}

/// The fuzzed host's disk: answers every file operation at once (or
/// fails it with `fail`), and notes the sessions it authenticated.
struct FuzzHostIo<'a> {
    disk: &'a mut MemFs,
    fail: Option<Errno>,
    sessions: &'a mut Vec<SessionId>,
}

impl HostIo for FuzzHostIo<'_> {
    fn fs(&mut self, _: &HostServer, _: FsOpId, fs: FsOp) -> Option<FsResult> {
        check_paths(&fs);
        Some(match self.fail {
            Some(e) => Err(e),
            None => self.disk.execute(fs),
        })
    }

    fn send(&mut self, _: ConnId, _: HostMessage) {}

    fn close(&mut self, _: ConnId) {}

    fn event(&mut self, event: HostEvent) {
        if let HostEvent::Authenticated { session, .. } = event
            && !self.sessions.contains(&session)
            && self.sessions.len() < 16
        {
            self.sessions.push(session);
        }
    }
}

fn drain_host(
    host: &mut HostServer,
    disk: &mut MemFs,
    now: Instant,
    fail: Option<Errno>,
    sessions: &mut Vec<SessionId>,
) {
    let mut io = FuzzHostIo {
        disk,
        fail,
        sessions,
    };
    host.pump(now, &mut io);
    assert!(
        host.poll_output().is_none(),
        "the host never stops producing outputs"
    );
}

/// Every path the host builds is made of valid names that are not the
/// host's own (staging files are named by the shell from the transaction).
fn check_paths(fs: &FsOp) {
    let paths = match fs {
        FsOp::Stat { path }
        | FsOp::List { path, .. }
        | FsOp::Open { path, .. }
        | FsOp::Create { path, .. }
        | FsOp::Mkdir { path, .. }
        | FsOp::Unlink { path }
        | FsOp::Rmdir { path }
        | FsOp::Symlink { path, .. }
        | FsOp::Readlink { path }
        | FsOp::SetAttr { path, .. }
        | FsOp::StageBegin { path, .. }
        | FsOp::StageCommit { path, .. } => vec![path],
        FsOp::Rename { from, to } | FsOp::Link { path: from, to, .. } => vec![from, to],
        _ => vec![],
    };
    for p in paths {
        for n in p.names() {
            let b = n.as_bytes();
            assert!(Name::new(b.to_vec()).is_ok(), "invalid name in {fs:?}");
            assert!(!b.starts_with(RESERVED_PREFIX), "reserved name in {fs:?}");
        }
    }
}

/// One input to the client world.
#[derive(Arbitrary, Debug, Clone)]
pub enum ClientInput {
    /// A kernel operation from client `c % 3`.
    Op {
        /// Client.
        c: u8,
        /// Which operation.
        kind: u8,
        /// Inode number (small).
        ino: u8,
        /// Handle (small).
        fh: u8,
        /// Name index.
        name: u8,
        /// Offset / size.
        n: u16,
    },
    /// The kernel forgets an inode.
    Forget {
        /// Client.
        c: u8,
        /// Inode.
        ino: u8,
    },
    /// Client partitioned away.
    Partition(u8),
    /// All partitions end.
    Heal,
    /// Host crash.
    CrashHost,
    /// Host restart.
    RestartHost,
    /// Client crash (and remount).
    CrashClient(u8),
    /// Time passes (milliseconds × 50).
    Advance(u16),
}

/// The client world's input list.
#[derive(Arbitrary, Debug, Clone)]
pub struct ClientFuzz {
    /// Seed of the world.
    pub seed: u64,
    /// Inputs, in order (at most 200 are used).
    pub inputs: Vec<ClientInput>,
}

fn fuzz_op(kind: u8, ino: u8, fh: u8, name: u8, n: u16) -> Op {
    let ino = Ino(u64::from(ino % 8) + 1);
    let fh = wormhole_core::client::Fh(u64::from(fh % 6) + 1);
    let name = Name::new(["a", "b", "c", "d"][usize::from(name % 4)]).expect("name");
    let n64 = u64::from(n);
    let range = wormhole_core::proto::ByteRange {
        start: n64 % 64,
        end: (n64 % 64) + n64 / 1024,
    };
    let lock_kind = [
        wormhole_core::proto::LockKind::Shared,
        wormhole_core::proto::LockKind::Exclusive,
    ][usize::from(n % 2)];
    match kind % 19 {
        0 => Op::Lookup {
            parent: Ino::ROOT,
            name,
        },
        1 => Op::GetAttr { ino },
        2 => Op::SetAttr {
            ino,
            set: SetAttr {
                size: Some(n64),
                ..SetAttr::default()
            },
        },
        3 => Op::ReadDir {
            ino,
            offset: n64 % 8,
        },
        // For reading or writing: the client takes writes only through
        // a handle open for writing.
        4 => Op::Open {
            ino,
            mode: if n.is_multiple_of(2) {
                OpenFor::Read
            } else {
                OpenFor::Write
            },
            truncate: false,
        },
        5 => Op::Read {
            fh,
            offset: n64,
            size: 4096,
        },
        6 => Op::Write {
            fh,
            offset: n64,
            data: Bytes::from(vec![name.as_bytes()[0]; usize::from(n % 3000) + 1]),
            append: n.is_multiple_of(5),
        },
        7 => Op::Flush { fh, owner: None },
        8 => Op::Fsync { fh },
        9 => Op::Release { fh },
        10 => Op::Create {
            parent: Ino::ROOT,
            name,
            mode: 0o644,
            exclusive: n.is_multiple_of(2),
            truncate: false,
            caller: None,
        },
        11 => Op::Mkdir {
            parent: Ino::ROOT,
            name,
            mode: 0o755,
            caller: None,
        },
        12 => Op::Unlink {
            parent: Ino::ROOT,
            name,
        },
        13 => Op::Rmdir {
            parent: Ino::ROOT,
            name,
        },
        14 => Op::Rename {
            parent: Ino::ROOT,
            name,
            new_parent: ino,
            new_name: Name::new("e").expect("name"),
        },
        // Record locks never wait here: a wait for a holder that never
        // lets go would rightly never be answered.
        15 => Op::SetLock {
            fh,
            owner: u64::from(name.as_bytes()[0] % 2),
            range,
            kind: (!n.is_multiple_of(3)).then_some(lock_kind),
            wait: false,
        },
        16 => Op::GetLock {
            fh,
            owner: u64::from(name.as_bytes()[0] % 2),
            range,
            kind: lock_kind,
        },
        17 => Op::Flush {
            fh,
            owner: Some(u64::from(name.as_bytes()[0] % 2)),
        },
        _ => Op::Statfs,
    }
}

/// `client_machine`: a [`World`] (host, disk, three clients) driven by
/// arbitrary kernel operations and faults. No panic; after healing and
/// letting time run, every request was answered exactly once.
pub fn client_machine(data: &[u8]) {
    let Ok(input) = ClientFuzz::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut w = World::new(
        input.seed,
        MemFs::new(1 << 20),
        3,
        HostConfig::default(),
        ClientConfig::default(),
    );
    // Requests each client's current kernel is owed an answer for.
    let mut owed: Vec<BTreeMap<Req, u32>> = vec![BTreeMap::new(); 3];
    let mut expected_replies = [0u64; 3];
    for i in input.inputs.iter().take(200) {
        match *i {
            ClientInput::Op {
                c,
                kind,
                ino,
                fh,
                name,
                n,
            } => {
                let c = usize::from(c % 3);
                let req = w.op(c, fuzz_op(kind, ino, fh, name, n));
                owed[c].insert(req, 0);
                expected_replies[c] += 1;
            }
            ClientInput::Forget { c, ino } => {
                w.forget_all(usize::from(c % 3), Ino(u64::from(ino % 8) + 1))
            }
            ClientInput::Partition(c) => w.partition(usize::from(c % 3)),
            ClientInput::Heal => w.heal(),
            ClientInput::CrashHost => {
                if w.host_up {
                    w.crash_host();
                }
            }
            ClientInput::RestartHost => {
                if !w.host_up {
                    w.restart_host();
                }
            }
            ClientInput::CrashClient(c) => {
                let c = usize::from(c % 3);
                w.crash_client(c);
                owed[c].clear();
                expected_replies[c] = 0;
                let now = w.now;
                w.clients[c].core.connect(now);
                w.pump();
            }
            ClientInput::Advance(t) => w.run_for(Duration::from_millis(u64::from(t) * 50)),
        }
        collect(&mut w, &mut owed);
    }
    // Liveness: heal, restart, reconnect, and let every timeout run.
    w.heal();
    if !w.host_up {
        w.restart_host();
    }
    for _ in 0..4 {
        let now = w.now;
        for c in 0..3 {
            if !w.clients[c].core.is_ready() {
                w.clients[c].core.connect(now);
            }
        }
        w.pump();
        w.run_for(Duration::from_secs(120));
        collect(&mut w, &mut owed);
    }
    for c in 0..3 {
        let missing: Vec<&Req> = owed[c]
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(r, _)| r)
            .collect();
        assert!(
            missing.is_empty(),
            "client {c} never answered {missing:?}\ninput: {input:?}"
        );
        assert_eq!(
            w.clients[c].replies, expected_replies[c],
            "client {c} replied more than once to some request\ninput: {input:?}"
        );
    }
}

fn collect(w: &mut World, owed: &mut [BTreeMap<Req, u32>]) {
    for (c, owed) in owed.iter_mut().enumerate() {
        for (req, _) in std::mem::take(&mut w.clients[c].answers) {
            let n = owed
                .get_mut(&req)
                .unwrap_or_else(|| panic!("client {c} answered unknown {req:?}"));
            *n += 1;
        }
    }
}
