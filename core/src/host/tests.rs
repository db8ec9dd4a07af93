//! Host machine tests, run against the in-memory disk.

use super::memfs::MemFs;
use super::*;
use crate::conn::auth::{self, TicketSecret};
use crate::proto::{
    CHUNK_SIZE, ClientMessage, Errno, FileKind, FileRef, HostMessage, Invalidation, LockKind,
    LockScope, MAX_WRITE_PIECE, Name, NodeId, Reply, Request, RequestId, SetAttr, TxnId,
};
use crate::{Instant, Rng};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;

const SECRET: TicketSecret = TicketSecret([3; 32]);

fn name(s: &str) -> Name {
    Name::new(s).expect("valid")
}

fn path(parts: &[&str]) -> RelPath {
    RelPath::from(parts.iter().map(|p| name(p)).collect::<Vec<_>>())
}

/// A host on a MemFs, with every file operation executed at once and every
/// message kept per connection.
struct Rig {
    host: HostServer,
    disk: MemFs,
    now: Instant,
    inbox: BTreeMap<ConnId, Vec<HostMessage>>,
    closed: Vec<ConnId>,
    events: Vec<HostEvent>,
    next_id: u64,
    /// Hold file operations instead of executing them (to interleave).
    hold: bool,
    held: Vec<(FsOpId, FsOp)>,
}

impl Rig {
    fn new(cfg: HostConfig, disk: MemFs) -> Self {
        let mut rig = Rig {
            host: HostServer::new(cfg, SECRET, Rng::from_u64(9)),
            disk,
            now: Instant::ZERO,
            inbox: BTreeMap::new(),
            closed: Vec::new(),
            events: Vec::new(),
            next_id: 1,
            hold: false,
            held: Vec::new(),
        };
        rig.host.start(rig.now);
        rig.pump();
        assert_eq!(rig.host.state(), HostState::Listening);
        rig
    }

    fn pump(&mut self) {
        while let Some(out) = self.host.poll_output() {
            match out {
                HostOutput::Fs { op, fs } if self.hold => self.held.push((op, fs)),
                HostOutput::Fs { op, fs } => {
                    let result = self.disk.execute(fs);
                    self.host.handle_fs(self.now, op, result);
                }
                HostOutput::Send { conn, msg } => self.inbox.entry(conn).or_default().push(msg),
                HostOutput::Close { conn } => self.closed.push(conn),
                HostOutput::Event(e) => self.events.push(e),
            }
        }
    }

    fn release_held(&mut self) {
        for (op, fs) in std::mem::take(&mut self.held) {
            let result = self.disk.execute(fs);
            self.host.handle_fs(self.now, op, result);
        }
        self.pump();
    }

    /// Opens a connection and authenticates it; returns the conn.
    fn client(&mut self, conn: u64) -> ConnId {
        let conn = ConnId(conn);
        let exporter = [conn.0 as u8; 32];
        self.host.conn_opened(self.now, conn, exporter);
        let reply = self.call(
            conn,
            Request::Hello {
                version: u16::from(crate::codec::PROTOCOL_VERSION),
                proof: auth::proof(&SECRET, &exporter),
                resume: None,
            },
        );
        assert!(matches!(reply, Ok(Reply::HelloAck { .. })), "{reply:?}");
        conn
    }

    /// Sends a request and returns its reply (the last reply with its id).
    fn call(&mut self, conn: ConnId, request: Request) -> Result<Reply, Errno> {
        let id = self.send(conn, request);
        self.reply(conn, id).expect("answered")
    }

    fn send(&mut self, conn: ConnId, request: Request) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let bytes = ClientMessage { id, request }.encode().expect("fits");
        self.host
            .handle_message(self.now, conn, &bytes)
            .expect("decodes");
        self.pump();
        id
    }

    fn reply(&self, conn: ConnId, id: RequestId) -> Option<Result<Reply, Errno>> {
        self.inbox.get(&conn)?.iter().rev().find_map(|m| match m {
            HostMessage::Reply { id: i, result } if *i == id => Some(result.clone()),
            _ => None,
        })
    }

    fn invalidations(&self, conn: ConnId) -> Vec<(NodeId, Invalidation)> {
        self.inbox
            .get(&conn)
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                HostMessage::Invalidate { node, what } => Some((*node, *what)),
                HostMessage::Reply { .. } | HostMessage::Recall { .. } => None,
            })
            .collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.host.handle_timeout(self.now);
        self.pump();
    }

    fn lookup(
        &mut self,
        conn: ConnId,
        parent: NodeId,
        n: &str,
    ) -> Result<crate::proto::Attr, Errno> {
        match self.call(
            conn,
            Request::Lookup {
                parent,
                name: name(n),
            },
        )? {
            Reply::Attr(a) => Ok(a),
            other => panic!("lookup answered {other:?}"),
        }
    }

    fn lock(&mut self, conn: ConnId, node: NodeId) -> crate::proto::LockToken {
        match self.call(
            conn,
            Request::AcquireLock {
                scope: LockScope::File(node),
                kind: LockKind::Exclusive,
                wait: false,
            },
        ) {
            Ok(Reply::LockGranted { token, .. }) => token,
            other => panic!("lock: {other:?}"),
        }
    }

    fn begin(&mut self, conn: ConnId, node: NodeId, token: crate::proto::LockToken) -> TxnId {
        match self.call(
            conn,
            Request::BeginWrite {
                node,
                token,
                base: None,
                append_from: None,
            },
        ) {
            Ok(Reply::WriteBegun { txn }) => txn,
            other => panic!("begin: {other:?}"),
        }
    }

    fn chunk(
        &mut self,
        conn: ConnId,
        txn: TxnId,
        index: u64,
        offset: u32,
        data: &[u8],
    ) -> Result<Reply, Errno> {
        let data = Bytes::copy_from_slice(data);
        self.call(
            conn,
            Request::WriteChunk {
                txn,
                index,
                offset,
                data,
            },
        )
    }
}

fn disk_with(files: &[(&[&str], &[u8])], dirs: &[&[&str]]) -> MemFs {
    let mut disk = MemFs::new(1 << 30);
    for d in dirs {
        disk.execute(FsOp::Mkdir {
            path: path(d),
            mode: 0o755,
            owner: None,
        })
        .expect("mkdir");
    }
    for (p, data) in files {
        disk.local_replace(&path(p), data).expect("seed a file");
    }
    // There before the host started: durable.
    disk.execute(FsOp::Sync).expect("sync");
    disk
}

fn rig() -> Rig {
    Rig::new(
        HostConfig::default(),
        disk_with(&[(&["a.txt"], b"hello"), (&["d", "f"], b"deep")], &[&["d"]]),
    )
}

#[test]
fn start_scans_the_tree_then_listens() {
    let r = rig();
    assert_eq!(r.host.nodes().len(), 4, "root, a.txt, d, d/f");
    let states: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            HostEvent::State(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(states, vec![HostState::Scanning, HostState::Listening]);
}

#[test]
fn a_root_that_is_not_a_directory_stops_the_host() {
    let mut host = HostServer::new(HostConfig::default(), SECRET, Rng::from_u64(1));
    host.start(Instant::ZERO);
    let Some(HostOutput::Event(_)) = host.poll_output() else {
        panic!("state event")
    };
    let Some(HostOutput::Fs { op, .. }) = host.poll_output() else {
        panic!("stat root")
    };
    host.handle_fs(Instant::ZERO, op, Err(Errno::NoEnt));
    assert_eq!(host.state(), HostState::Stopped);
    let outs: Vec<_> = std::iter::from_fn(|| host.poll_output()).collect();
    assert!(outs.contains(&HostOutput::Event(HostEvent::ScanFailed(Errno::NoEnt))));
}

#[test]
fn the_scan_is_bounded_and_the_rest_is_found_on_demand() {
    let files: Vec<Vec<String>> = (0..50).map(|i| vec![format!("f{i:02}")]).collect();
    let mut disk = MemFs::new(1 << 20);
    for f in &files {
        let p = RelPath::from(f.iter().map(|s| name(s)).collect::<Vec<_>>());
        disk.execute(FsOp::Create {
            path: p,
            mode: 0o644,
            exclusive: true,
            open: None,
            owner: None,
        })
        .expect("create");
    }
    let mut r = Rig::new(
        HostConfig {
            scan_limit: 10,
            ..HostConfig::default()
        },
        disk,
    );
    assert_eq!(r.host.nodes().len(), 10);
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "f49").expect("found on demand");
    assert_eq!(a.kind, FileKind::File);
}

#[test]
fn a_wrong_proof_gets_eacces_and_nothing_else() {
    let mut r = rig();
    let conn = ConnId(5);
    r.host.conn_opened(r.now, conn, [5; 32]);
    let reply = r.call(
        conn,
        Request::Hello {
            version: u16::from(crate::codec::PROTOCOL_VERSION),
            proof: auth::proof(&SECRET, &[6; 32]),
            resume: None,
        },
    );
    assert_eq!(reply, Err(Errno::Acces));
    assert_eq!(r.closed, vec![conn]);
    assert_eq!(r.host.sessions().count(), 0);
    // The connection is gone: later requests are ignored entirely.
    r.send(conn, Request::GetAttr { node: NodeId::ROOT });
    assert_eq!(r.inbox[&conn].len(), 1);
}

#[test]
fn a_request_before_hello_is_refused_and_closes_the_connection() {
    let mut r = rig();
    let conn = ConnId(5);
    r.host.conn_opened(r.now, conn, [5; 32]);
    assert_eq!(
        r.call(
            conn,
            Request::Lookup {
                parent: NodeId::ROOT,
                name: name("a.txt")
            }
        ),
        Err(Errno::Acces)
    );
    assert_eq!(r.closed, vec![conn]);
    assert!(r.events.contains(&HostEvent::AuthRefused { conn }));
}

#[test]
fn hosting_and_idle_follow_clients_and_sessions_end_after_grace() {
    let mut r = rig();
    let c = r.client(1);
    assert_eq!(r.host.state(), HostState::Hosting);
    let token = r.lock(c, NodeId::ROOT);
    let _ = token;
    r.host.conn_closed(r.now, c);
    r.pump();
    assert_eq!(r.host.state(), HostState::Idle);
    assert_eq!(r.host.locks().len(), 1, "kept for a resume");
    r.advance(Duration::from_secs(30));
    assert_eq!(
        r.host.locks().len(),
        0,
        "released when the grace period ends"
    );
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, HostEvent::SessionEnded { .. }))
    );
    let c2 = r.client(2);
    let _ = c2;
    assert_eq!(r.host.state(), HostState::Hosting);
    r.host.stop(r.now);
    r.pump();
    assert_eq!(r.host.state(), HostState::Stopped);
}

#[test]
fn a_reconnect_resumes_its_session_with_its_locks() {
    let mut r = rig();
    let c = r.client(1);
    let Some(HostMessage::Reply {
        result: Ok(Reply::HelloAck { session, .. }),
        ..
    }) = r.inbox[&c].first().cloned()
    else {
        panic!("hello ack")
    };
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c, a.node);
    r.host.conn_closed(r.now, c);
    r.advance(Duration::from_secs(10));
    let c2 = ConnId(2);
    r.host.conn_opened(r.now, c2, [2; 32]);
    let reply = r.call(
        c2,
        Request::Hello {
            version: u16::from(crate::codec::PROTOCOL_VERSION),
            proof: auth::proof(&SECRET, &[2; 32]),
            resume: Some(session),
        },
    );
    assert!(matches!(reply, Ok(Reply::HelloAck { session: s, .. }) if s == session));
    assert!(matches!(
        r.call(c2, Request::RefreshLock { token }),
        Ok(Reply::LockGranted { .. })
    ));
}

/// A client that moved to a new path says Hello there before this host
/// saw its old connection close: the session (and its locks) moves with
/// it, the old connection is closed, and its answers go to the new one.
#[test]
fn a_hello_resuming_a_session_still_connected_takes_it_over() {
    let mut r = rig();
    let c = r.client(1);
    let Some(HostMessage::Reply {
        result: Ok(Reply::HelloAck { session, .. }),
        ..
    }) = r.inbox[&c].first().cloned()
    else {
        panic!("hello ack")
    };
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c, a.node);
    let c2 = ConnId(2);
    r.host.conn_opened(r.now, c2, [2; 32]);
    let reply = r.call(
        c2,
        Request::Hello {
            version: u16::from(crate::codec::PROTOCOL_VERSION),
            proof: auth::proof(&SECRET, &[2; 32]),
            resume: Some(session),
        },
    );
    assert!(matches!(reply, Ok(Reply::HelloAck { session: s, .. }) if s == session));
    assert_eq!(r.closed, vec![c], "the old connection is closed");
    assert!(matches!(
        r.call(c2, Request::RefreshLock { token }),
        Ok(Reply::LockGranted { .. })
    ));
    // The old connection's late close does not detach the session.
    r.host.conn_closed(r.now, c);
    r.pump();
    assert_eq!(r.host.state(), HostState::Hosting);
    // Past the grace a detached session gets: it would end, and its lock
    // with it.
    for _ in 0..3 {
        r.advance(Duration::from_secs(14));
        assert!(matches!(
            r.call(c2, Request::RefreshLock { token }),
            Ok(Reply::LockGranted { .. })
        ));
    }
    assert_eq!(r.host.locks().len(), 1, "the session lives on");
}

#[test]
fn reserved_names_are_invisible_and_untouchable() {
    let mut r = Rig::new(
        HostConfig::default(),
        disk_with(&[(&[".wormhole.staging"], b"x"), (&["a"], b"y")], &[]),
    );
    let c = r.client(1);
    assert_eq!(
        r.lookup(c, NodeId::ROOT, ".wormhole.staging"),
        Err(Errno::Acces)
    );
    let Ok(Reply::DirPage { entries, .. }) = r.call(
        c,
        Request::ReadDir {
            dir: NodeId::ROOT,
            cookie: 0,
        },
    ) else {
        panic!("page")
    };
    let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, vec![name("a")]);
    assert_eq!(
        r.call(
            c,
            Request::Create {
                parent: NodeId::ROOT,
                name: name(".wormhole.x"),
                mode: 0o644,
                exclusive: true,
                open: false,
                owner: None,
            }
        ),
        Err(Errno::Acces)
    );
}

#[test]
fn symlinks_are_reported_never_followed() {
    let mut r = rig();
    let c = r.client(1);
    let l = match r.call(
        c,
        Request::Symlink {
            parent: NodeId::ROOT,
            name: name("up"),
            target: b"/etc".to_vec(),
            owner: None,
        },
    ) {
        Ok(Reply::Made { attr: a, .. }) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(
        r.call(c, Request::Readlink { node: l.node }),
        Ok(Reply::Link(b"/etc".to_vec()))
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(
        r.call(
            c,
            Request::SetAttr {
                node: l.node,
                set: chmod,
                token: None
            }
        ),
        Err(Errno::NotSup),
        "Linux symlinks have no mode"
    );
    // Looking "through" it is refused by the disk layer (no-follow).
    assert_eq!(r.lookup(c, l.node, "passwd"), Err(Errno::NotDir));
    assert_eq!(
        r.call(
            c,
            Request::Open {
                node: l.node,
                mode: crate::proto::OpenFor::Read,
            }
        )
        .err(),
        Some(Errno::Loop)
    );
    assert_eq!(
        r.call(
            c,
            Request::Read {
                file: FileRef::Node(l.node),
                offset: 0,
                len: 10
            }
        ),
        Err(Errno::Loop)
    );
}

#[test]
fn large_directories_are_paged_completely() {
    let mut disk = MemFs::new(1 << 20);
    disk.execute(FsOp::Mkdir {
        path: path(&["big"]),
        mode: 0o755,
        owner: None,
    })
    .expect("mkdir");
    for i in 0..1300 {
        disk.execute(FsOp::Create {
            path: path(&["big", &format!("e{i:04}")]),
            mode: 0o644,
            exclusive: true,
            open: None,
            owner: None,
        })
        .expect("create");
    }
    let mut r = Rig::new(HostConfig::default(), disk);
    let c = r.client(1);
    let big = r.lookup(c, NodeId::ROOT, "big").expect("big");
    let (mut cookie, mut seen, mut pages) = (0, Vec::new(), 0);
    loop {
        let Ok(Reply::DirPage { entries, next }) = r.call(
            c,
            Request::ReadDir {
                dir: big.node,
                cookie,
            },
        ) else {
            panic!("page")
        };
        pages += 1;
        assert!(entries.len() <= crate::proto::MAX_DIR_PAGE);
        seen.extend(entries.into_iter().map(|e| e.name));
        match next {
            Some(n) => cookie = n,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 1300);
    seen.dedup();
    assert_eq!(seen.len(), 1300, "no duplicates");
}

#[test]
fn a_write_transaction_commits_atomically() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c, a.node);
    let txn = r.begin(c, a.node, token);
    assert_eq!(r.chunk(c, txn, 0, 0, b"HE"), Ok(Reply::Done));
    assert_eq!(r.chunk(c, txn, 1, 5, b"!"), Ok(Reply::Done));
    assert_eq!(
        r.disk.read_file(&path(&["a.txt"])),
        Some(&b"hello"[..]),
        "nothing visible yet"
    );
    let size = (CHUNK_SIZE + 6) as u64;
    let committed = r.call(
        c,
        Request::CommitWrite {
            txn,
            size,
            set: SetAttr::default(),
        },
    );
    let Ok(Reply::Attr(attr)) = committed.clone() else {
        panic!("{committed:?}")
    };
    assert_eq!(attr.size, size);
    let data = r.disk.read_file(&path(&["a.txt"])).expect("file");
    assert_eq!(&data[..5], b"HEllo");
    assert_eq!(data[CHUNK_SIZE + 5], b'!');
    assert_eq!(r.disk.staged(), 0);
    // A retried commit (lost reply) gets the same answer.
    assert_eq!(
        r.call(
            c,
            Request::CommitWrite {
                txn,
                size,
                set: SetAttr::default(),
            }
        ),
        committed
    );
    assert_ne!(attr.version, a.version, "the version changed");
}

#[test]
fn writes_are_fenced_by_a_live_exclusive_token() {
    let mut r = rig();
    let c1 = r.client(1);
    let c2 = r.client(2);
    let a = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a");
    r.lookup(c2, NodeId::ROOT, "a.txt").expect("a");
    let t1 = r.lock(c1, a.node);
    // Another session cannot use c1's token.
    assert_eq!(
        r.call(
            c2,
            Request::BeginWrite {
                node: a.node,
                token: t1,
                base: None,
                append_from: None,
            }
        ),
        Err(Errno::Stale)
    );
    let txn = r.begin(c1, a.node, t1);
    // c1 is partitioned past its lock's expiry; c2 takes the lock.
    r.advance(Duration::from_secs(31));
    let t2 = r.lock(c2, a.node);
    assert_ne!(t1, t2);
    assert_eq!(
        r.chunk(c1, txn, 0, 0, b"stale"),
        Err(Errno::Stale),
        "stale token refused"
    );
    assert_eq!(
        r.call(
            c1,
            Request::CommitWrite {
                txn,
                size: 5,
                set: SetAttr::default(),
            }
        ),
        Err(Errno::Stale)
    );
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"hello"[..]));
    assert_eq!(r.disk.staged(), 0, "the dead transaction's staging is gone");
}

#[test]
fn bad_chunks_are_refused() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c, a.node);
    let txn = r.begin(c, a.node, token);
    let data = Bytes::from_static(b"abc");
    // An offset is within its chunk, and a piece holds at most
    // MAX_WRITE_PIECE bytes.
    let past = Request::WriteChunk {
        txn,
        index: 0,
        offset: CHUNK_SIZE as u32,
        data: data.clone(),
    };
    assert_eq!(r.call(c, past), Err(Errno::Inval));
    let long = Request::WriteChunk {
        txn,
        index: 0,
        offset: 0,
        data: Bytes::from(vec![0; MAX_WRITE_PIECE + 1]),
    };
    assert_eq!(r.call(c, long), Err(Errno::Inval));
    let huge = Request::WriteChunk {
        txn,
        index: u64::MAX,
        offset: 0,
        data: data.clone(),
    };
    assert_eq!(r.call(c, huge), Err(Errno::FBig));
    assert_eq!(r.call(c, Request::AbortWrite { txn }), Ok(Reply::Done));
    assert_eq!(r.disk.staged(), 0);
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"hello"[..]));
}

#[test]
fn a_crash_mid_transaction_leaves_the_old_content() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c, a.node);
    let txn = r.begin(c, a.node, token);
    r.chunk(c, txn, 0, 0, b"NEW!!").expect("chunk");
    r.disk.crash(usize::MAX);
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"hello"[..]));
    assert_eq!(r.disk.staged(), 0);
}

#[test]
fn read_only_hosts_refuse_every_change() {
    let mut r = Rig::new(
        HostConfig {
            read_only: true,
            ..HostConfig::default()
        },
        disk_with(&[(&["a"], b"x")], &[]),
    );
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a").expect("a");
    let token = r.lock(c, a.node);
    for req in [
        Request::Create {
            parent: NodeId::ROOT,
            name: name("n"),
            mode: 0o644,
            exclusive: true,
            open: false,
            owner: None,
        },
        Request::Mkdir {
            parent: NodeId::ROOT,
            name: name("n"),
            mode: 0o755,
            owner: None,
            lease: false,
        },
        Request::Unlink {
            parent: NodeId::ROOT,
            name: name("a"),
        },
        Request::Rmdir {
            parent: NodeId::ROOT,
            name: name("a"),
        },
        Request::Rename {
            parent: NodeId::ROOT,
            name: name("a"),
            new_parent: NodeId::ROOT,
            new_name: name("b"),
        },
        Request::Symlink {
            parent: NodeId::ROOT,
            name: name("l"),
            target: b"a".to_vec(),
            owner: None,
        },
        Request::SetAttr {
            node: a.node,
            set: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
            token: None,
        },
        Request::BeginWrite {
            node: a.node,
            token,
            base: None,
            append_from: None,
        },
    ] {
        assert_eq!(r.call(c, req.clone()), Err(Errno::RoFs), "{req:?}");
    }
    assert!(matches!(
        r.call(
            c,
            Request::Read {
                file: FileRef::Node(a.node),
                offset: 0,
                len: 1
            }
        ),
        Ok(Reply::Data { .. })
    ));
}

#[test]
fn owners_change_only_where_the_host_preserves_them() {
    let chown = |node| Request::SetAttr {
        node,
        set: SetAttr {
            uid: Some(1000),
            gid: Some(100),
            ..SetAttr::default()
        },
        token: None,
    };
    // Acting as its user for every client, the host gives nothing away,
    // whatever a client asks (a well-behaved mount refuses first); a
    // commit never carries owners.
    let mut r = Rig::new(HostConfig::default(), disk_with(&[(&["a"], b"x")], &[]));
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a").expect("a");
    assert_eq!(r.call(c, chown(a.node)), Err(Errno::Perm));
    assert_eq!(r.disk.owner(&path(&["a"])), Some((0, 0)));
    let (mut r, c, _, _, txn) = commit_ready();
    let commit = Request::CommitWrite {
        txn,
        size: 5,
        set: SetAttr {
            uid: Some(1000),
            ..SetAttr::default()
        },
    };
    assert_eq!(r.call(c, commit), Err(Errno::Inval));
    assert_eq!(r.disk.owner(&path(&["a.txt"])), Some((0, 0)));
    // Preserving owners, a chown is carried out.
    let mut r = Rig::new(
        HostConfig {
            owners: crate::proto::Owners::Preserved,
            ..HostConfig::default()
        },
        disk_with(&[(&["a"], b"x")], &[]),
    );
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a").expect("a");
    match r.call(c, chown(a.node)) {
        Ok(Reply::Attr(attr)) => assert_eq!((attr.uid, attr.gid), (1000, 100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.disk.owner(&path(&["a"])), Some((1000, 100)));
}

#[test]
fn device_nodes_only_where_the_host_allows_them() {
    let mknod = |name_: &str| Request::Mknod {
        parent: NodeId::ROOT,
        name: name(name_),
        kind: FileKind::CharDevice,
        mode: 0o600,
        rdev: 0x105,
        owner: None,
    };
    let mut planted = disk_with(&[], &[]);
    planted
        .execute(FsOp::Mknod {
            path: path(&["zero"]),
            kind: FileKind::CharDevice,
            mode: 0o666,
            rdev: 0x105,
            owner: None,
        })
        .expect("a local mknod");
    // By default: refused, and one already on the disk is not there.
    let mut r = Rig::new(
        HostConfig {
            owners: crate::proto::Owners::Preserved,
            ..HostConfig::default()
        },
        planted.clone(),
    );
    let c = r.client(1);
    assert_eq!(r.call(c, mknod("dev")), Err(Errno::Perm));
    assert_eq!(r.lookup(c, NodeId::ROOT, "zero").err(), Some(Errno::NoEnt));
    match r.call(
        c,
        Request::ReadDir {
            dir: NodeId::ROOT,
            cookie: 0,
        },
    ) {
        Ok(Reply::DirPage { entries, .. }) => assert!(entries.is_empty(), "{entries:?}"),
        other => panic!("{other:?}"),
    }
    // Allowed (with owners preserved): made and shown with its number.
    let mut r = Rig::new(
        HostConfig {
            owners: crate::proto::Owners::Preserved,
            allow_device_nodes: true,
            ..HostConfig::default()
        },
        planted,
    );
    let c = r.client(1);
    match r.call(c, mknod("dev")) {
        Ok(Reply::Made { attr: a, .. }) => {
            assert_eq!((a.kind, a.rdev), (FileKind::CharDevice, 0x105))
        }
        other => panic!("{other:?}"),
    }
    let zero = r.lookup(c, NodeId::ROOT, "zero").expect("shown");
    assert_eq!((zero.kind, zero.rdev), (FileKind::CharDevice, 0x105));
}

#[test]
fn an_unlinked_open_file_stays_readable_through_its_handle() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let Ok(Reply::Opened { handle, .. }) = r.call(
        c,
        Request::Open {
            node: a.node,
            mode: crate::proto::OpenFor::Read,
        },
    ) else {
        panic!("open")
    };
    assert!(matches!(
        r.call(
            c,
            Request::Unlink {
                parent: NodeId::ROOT,
                name: name("a.txt")
            }
        ),
        Ok(Reply::Unnamed { .. })
    ));
    assert_eq!(r.lookup(c, NodeId::ROOT, "a.txt"), Err(Errno::NoEnt));
    let read = r.call(
        c,
        Request::Read {
            file: FileRef::Handle(handle),
            offset: 0,
            len: 100,
        },
    );
    assert!(
        matches!(read, Ok(Reply::Data { ref data, .. }) if &data[..] == b"hello"),
        "{read:?}"
    );
    assert_eq!(r.call(c, Request::Close { handle }), Ok(Reply::Done));
    assert_eq!(
        r.call(
            c,
            Request::Read {
                file: FileRef::Handle(handle),
                offset: 0,
                len: 1
            }
        ),
        Err(Errno::BadF)
    );
    // Another session cannot use someone else's handle.
    let d = r.lookup(c, NodeId::ROOT, "d").expect("d");
    let f = r.lookup(c, d.node, "f").expect("f");
    let Ok(Reply::Opened { handle: h2, .. }) = r.call(
        c,
        Request::Open {
            node: f.node,
            mode: crate::proto::OpenFor::Read,
        },
    ) else {
        panic!("open")
    };
    let c2 = r.client(2);
    assert_eq!(
        r.call(
            c2,
            Request::Read {
                file: FileRef::Handle(h2),
                offset: 0,
                len: 1
            }
        ),
        Err(Errno::BadF)
    );
}

#[test]
fn rename_replaces_the_target_and_tells_other_clients() {
    let mut r = Rig::new(
        HostConfig::default(),
        disk_with(&[(&["a"], b"A"), (&["b"], b"B")], &[]),
    );
    let c1 = r.client(1);
    let c2 = r.client(2);
    let b = r.lookup(c2, NodeId::ROOT, "b").expect("b");
    r.lookup(c1, NodeId::ROOT, "a").expect("a");
    let reply = r.call(
        c1,
        Request::Rename {
            parent: NodeId::ROOT,
            name: name("a"),
            new_parent: NodeId::ROOT,
            new_name: name("b"),
        },
    );
    // The reply carries the directory's attributes after the rename.
    let Ok(Reply::Unnamed { dirs }) = &reply else {
        panic!("{reply:?}")
    };
    let Ok(FsOk::Attr(root)) = r.disk.execute(FsOp::Stat {
        path: RelPath::root(),
    }) else {
        panic!("stat the root")
    };
    assert_eq!(
        dirs.iter().map(|d| (d.node, d.mtime)).collect::<Vec<_>>(),
        vec![(NodeId::ROOT, root.mtime)]
    );
    assert_eq!(r.disk.read_file(&path(&["b"])), Some(&b"A"[..]));
    let seen = r.invalidations(c2);
    assert!(seen.contains(&(b.node, Invalidation::Gone)), "{seen:?}");
    assert!(seen.contains(&(NodeId::ROOT, Invalidation::Entries)));
    assert!(
        r.invalidations(c1).is_empty(),
        "the actor is not told its own change"
    );
    assert!(matches!(
        r.call(
            c1,
            Request::Rename {
                parent: NodeId::ROOT,
                name: name("b"),
                new_parent: NodeId::ROOT,
                new_name: name("b")
            }
        ),
        Ok(Reply::Unnamed { .. })
    ));
}

#[test]
fn a_directory_lock_blocks_other_sessions_entry_changes() {
    let mut r = rig();
    let c1 = r.client(1);
    let c2 = r.client(2);
    let d = r.lookup(c1, NodeId::ROOT, "d").expect("d");
    r.lookup(c2, NodeId::ROOT, "d").expect("d");
    let got = r.call(
        c1,
        Request::AcquireLock {
            scope: LockScope::Directory(d.node),
            kind: LockKind::Exclusive,
            wait: false,
        },
    );
    assert!(matches!(got, Ok(Reply::LockGranted { .. })));
    assert_eq!(
        r.call(
            c2,
            Request::Create {
                parent: d.node,
                name: name("x"),
                mode: 0o644,
                exclusive: true,
                open: false,
                owner: None,
            }
        ),
        Err(Errno::Busy)
    );
    assert!(matches!(
        r.call(
            c1,
            Request::Create {
                parent: d.node,
                name: name("x"),
                mode: 0o644,
                exclusive: true,
                open: false,
                owner: None,
            }
        ),
        Ok(Reply::Made { .. })
    ));
    // Goodbye releases c1's lock at once.
    assert_eq!(r.call(c1, Request::Goodbye), Ok(Reply::Done));
    assert!(matches!(
        r.call(
            c2,
            Request::Create {
                parent: d.node,
                name: name("y"),
                mode: 0o644,
                exclusive: true,
                open: false,
                owner: None,
            }
        ),
        Ok(Reply::Made { .. })
    ));
}

#[test]
fn waiting_lock_requests_are_answered_when_the_holder_leaves() {
    let mut r = Rig::new(
        HostConfig {
            session_grace: Duration::from_secs(10),
            ..HostConfig::default()
        },
        disk_with(&[(&["a.txt"], b"hello")], &[]),
    );
    let c1 = r.client(1);
    let c2 = r.client(2);
    let a = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a");
    r.lock(c1, a.node);
    let id = r.send(
        c2,
        Request::AcquireLock {
            scope: LockScope::File(a.node),
            kind: LockKind::Exclusive,
            wait: true,
        },
    );
    assert_eq!(r.reply(c2, id), None, "queued");
    r.host.conn_closed(r.now, c1);
    r.advance(Duration::from_secs(9));
    assert_eq!(r.reply(c2, id), None, "still within c1's grace period");
    r.advance(Duration::from_secs(1));
    assert!(matches!(
        r.reply(c2, id),
        Some(Ok(Reply::LockGranted { .. }))
    ));
}

#[test]
fn local_changes_reach_every_client() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    r.host.local_change(r.now, &path(&["a.txt"]));
    r.host.local_change(r.now, &path(&["new-file"]));
    r.pump();
    let seen = r.invalidations(c);
    assert!(seen.contains(&(a.node, Invalidation::Data)));
    assert!(
        seen.iter()
            .filter(|s| **s == (NodeId::ROOT, Invalidation::Entries))
            .count()
            >= 2
    );
}

/// A local program writes a file while the host's own `chmod` of it
/// waits for a worker: the `chmod`'s result already shows the write, so
/// the watcher's report must be announced, not taken for the host's
/// echo.
#[test]
fn a_local_write_during_the_hosts_own_chmod_is_announced() {
    let mut r = rig();
    let writer = r.client(1);
    let reader = r.client(2);
    let a = r.lookup(writer, NodeId::ROOT, "a.txt").expect("a");
    r.lookup(reader, NodeId::ROOT, "a.txt").expect("a");
    r.hold = true;
    r.send(
        writer,
        Request::SetAttr {
            node: a.node,
            set: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
            token: None,
        },
    );
    r.disk
        .local_append(&path(&["a.txt"]), b" and more")
        .expect("a local write");
    r.host.local_change(r.now, &path(&["a.txt"]));
    r.pump();
    let chmod = r.run_held(|fs| matches!(fs, FsOp::SetAttr { .. }));
    r.deliver(chmod);
    r.hold = false;
    r.release_held();
    assert!(
        r.invalidations(reader)
            .contains(&(a.node, Invalidation::Data)),
        "the reader never hears of the local write: {:?}",
        r.invalidations(reader)
    );
}

#[test]
fn malformed_messages_fail_alone() {
    let mut r = rig();
    let c = r.client(1);
    assert!(
        r.host
            .handle_message(r.now, c, &Bytes::from_static(b"\x01\xff\xff\xff"))
            .is_err()
    );
    assert!(r.host.handle_message(r.now, c, &Bytes::new()).is_err());
    assert!(
        matches!(r.call(c, Request::Statfs), Ok(Reply::StatFs(_))),
        "the connection still works"
    );
    assert_eq!(
        r.call(
            c,
            Request::Read {
                file: FileRef::Node(NodeId::ROOT),
                offset: 0,
                len: (CHUNK_SIZE + 1) as u32
            }
        ),
        Err(Errno::Inval)
    );
    assert_eq!(
        r.call(c, Request::GetAttr { node: NodeId(9999) }),
        Err(Errno::Stale)
    );
    assert_eq!(r.lookup(c, NodeId(2), "x").err(), Some(Errno::NotDir));
}

#[test]
fn in_flight_operations_per_session_are_bounded() {
    let mut r = Rig::new(
        HostConfig {
            max_ops_per_session: 2,
            ..HostConfig::default()
        },
        disk_with(&[], &[]),
    );
    let c = r.client(1);
    r.hold = true;
    let ids: Vec<RequestId> = (0..3).map(|_| r.send(c, Request::Statfs)).collect();
    assert_eq!(r.reply(c, ids[2]), Some(Err(Errno::Again)));
    r.hold = false;
    r.release_held();
    assert!(matches!(r.reply(c, ids[0]), Some(Ok(Reply::StatFs(_)))));
    assert!(matches!(r.call(c, Request::Statfs), Ok(Reply::StatFs(_))));
}

#[test]
fn a_truncate_inside_a_transaction_zeroes_what_it_cut() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c, a.node);
    let txn = r.begin(c, a.node, token);
    assert_eq!(
        r.call(c, Request::TruncateWrite { txn, size: 2 }),
        Ok(Reply::Done)
    );
    r.chunk(c, txn, 0, 4, b"Z").expect("chunk");
    assert!(matches!(
        r.call(
            c,
            Request::CommitWrite {
                txn,
                size: 5,
                set: SetAttr::default(),
            }
        ),
        Ok(Reply::Attr(_))
    ));
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"he\0\0Z"[..]));
}

/// One client's whole write, as the host's outputs show it.
#[test]
fn write_session_trace() {
    use std::fmt::Write as _;
    let mut host = HostServer::new(HostConfig::default(), SECRET, Rng::from_u64(1));
    let mut disk = disk_with(&[(&["a"], b"old")], &[]);
    let mut trace = String::new();
    let now = Instant::ZERO;
    let mut run = |host: &mut HostServer, trace: &mut String, what: &str| {
        writeln!(trace, "> {what}").expect("write");
        while let Some(o) = host.poll_output() {
            match o {
                HostOutput::Fs { op, fs } => {
                    let result = disk.execute(fs.clone());
                    let shown = match &result {
                        Ok(FsOk::Attr(a)) => format!("Attr(size {})", a.size),
                        Ok(FsOk::Listing { entries, next }) => {
                            format!("Listing({} entries, next {next:?})", entries.len())
                        }
                        Ok(other) => format!("{other:?}"),
                        Err(e) => format!("Err({e:?})"),
                    };
                    writeln!(trace, "  fs {fs:?} -> {shown}").expect("write");
                    host.handle_fs(now, op, result);
                }
                HostOutput::Send {
                    msg: HostMessage::Reply { result, .. },
                    ..
                } => {
                    let shown = match result {
                        Ok(Reply::HelloAck { .. }) => "HelloAck".to_string(),
                        Ok(Reply::Attr(a)) => format!("Attr(node {:?}, size {})", a.node, a.size),
                        Ok(Reply::LockGranted { .. }) => "LockGranted".to_string(),
                        other => format!("{other:?}"),
                    };
                    writeln!(trace, "  reply {shown}").expect("write");
                }
                other => writeln!(trace, "  {other:?}").expect("write"),
            }
        }
    };
    host.start(now);
    run(&mut host, &mut trace, "start");
    let conn = ConnId(1);
    host.conn_opened(now, conn, [1; 32]);
    let mut id = 0;
    let mut send = |host: &mut HostServer, request: Request| {
        id += 1;
        host.handle_request(
            now,
            conn,
            ClientMessage {
                id: RequestId(id),
                request,
            },
        );
    };
    send(
        &mut host,
        Request::Hello {
            version: u16::from(crate::codec::PROTOCOL_VERSION),
            proof: auth::proof(&SECRET, &[1; 32]),
            resume: None,
        },
    );
    run(&mut host, &mut trace, "Hello");
    send(
        &mut host,
        Request::Lookup {
            parent: NodeId::ROOT,
            name: name("a"),
        },
    );
    run(&mut host, &mut trace, "Lookup a");
    let node = host
        .nodes()
        .child(NodeId::ROOT, &name("a"))
        .expect("indexed");
    send(
        &mut host,
        Request::AcquireLock {
            scope: LockScope::File(node),
            kind: LockKind::Exclusive,
            wait: true,
        },
    );
    run(&mut host, &mut trace, "AcquireLock");
    let token = host.locks().locks().next().expect("granted").token;
    send(
        &mut host,
        Request::BeginWrite {
            node,
            token,
            base: None,
            append_from: None,
        },
    );
    run(&mut host, &mut trace, "BeginWrite");
    let data = Bytes::from_static(b"new");
    send(
        &mut host,
        Request::WriteChunk {
            txn: TxnId(1),
            index: 0,
            offset: 0,
            data: data.clone(),
        },
    );
    run(&mut host, &mut trace, "WriteChunk");
    send(
        &mut host,
        Request::CommitWrite {
            txn: TxnId(1),
            size: 3,
            set: SetAttr::default(),
        },
    );
    run(&mut host, &mut trace, "CommitWrite");
    send(&mut host, Request::ReleaseLock { token });
    run(&mut host, &mut trace, "ReleaseLock");
    send(&mut host, Request::Goodbye);
    run(&mut host, &mut trace, "Goodbye");
    insta::assert_snapshot!("write_session_trace", trace);
}

impl Rig {
    /// Takes the held operation that `pick` selects, executes it on the
    /// disk and returns its id and result, undelivered.
    fn run_held(&mut self, pick: impl Fn(&FsOp) -> bool) -> (FsOpId, FsResult) {
        let at = self
            .held
            .iter()
            .position(|(_, fs)| pick(fs))
            .expect("the operation is held");
        let (op, fs) = self.held.remove(at);
        (op, self.disk.execute(fs))
    }

    /// Delivers a result a worker finished.
    fn deliver(&mut self, (op, result): (FsOpId, FsResult)) {
        self.host.handle_fs(self.now, op, result);
        self.pump();
    }
}

fn is_open(fs: &FsOp) -> bool {
    matches!(fs, FsOp::Open { .. })
}

fn is_commit(fs: &FsOp) -> bool {
    matches!(fs, FsOp::StageCommit { .. })
}

/// c1 has a write of "HELLO" over `a.txt` ready to commit; c2 knows the
/// file. Returns the rig, both connections, the node and the transaction.
fn commit_ready() -> (Rig, ConnId, ConnId, NodeId, TxnId) {
    let mut r = rig();
    let c1 = r.client(1);
    let c2 = r.client(2);
    let a = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a");
    r.lookup(c2, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c1, a.node);
    let txn = r.begin(c1, a.node, token);
    r.chunk(c1, txn, 0, 0, b"HELLO").expect("staged");
    (r, c1, c2, a.node, txn)
}

fn open_for_read(r: &mut Rig, conn: ConnId, node: NodeId) -> RequestId {
    r.send(
        conn,
        Request::Open {
            node,
            mode: crate::proto::OpenFor::Read,
        },
    )
}

/// Workers run a commit's rename and another client's open in any order,
/// and report them in any order: the open finds the file the commit put
/// there (before the commit's result arrived) or the one it replaced
/// (after). Both are the node's own versions, not a local program's
/// file, so neither is ESTALE.
#[test]
fn an_open_racing_the_hosts_own_commit_is_not_stale() {
    // The rename runs first; the open's result arrives first.
    let (mut r, c1, c2, node, txn) = commit_ready();
    r.hold = true;
    let commit = r.send(
        c1,
        Request::CommitWrite {
            txn,
            size: 5,
            set: SetAttr::default(),
        },
    );
    let open = open_for_read(&mut r, c2, node);
    let renamed = r.run_held(is_commit);
    let opened = r.run_held(is_open);
    r.deliver(opened);
    assert!(
        matches!(r.reply(c2, open), Some(Ok(Reply::Opened { .. }))),
        "open before the commit's result: {:?}",
        r.reply(c2, open)
    );
    r.deliver(renamed);
    assert!(matches!(r.reply(c1, commit), Some(Ok(Reply::Attr(_)))));

    // The open runs first; its result arrives after the commit's.
    let (mut r, c1, c2, node, txn) = commit_ready();
    r.hold = true;
    let open = open_for_read(&mut r, c2, node);
    let commit = r.send(
        c1,
        Request::CommitWrite {
            txn,
            size: 5,
            set: SetAttr::default(),
        },
    );
    let opened = r.run_held(is_open);
    let renamed = r.run_held(is_commit);
    r.deliver(renamed);
    assert!(matches!(r.reply(c1, commit), Some(Ok(Reply::Attr(_)))));
    r.deliver(opened);
    assert!(
        matches!(r.reply(c2, open), Some(Ok(Reply::Opened { .. }))),
        "open of the replaced version: {:?}",
        r.reply(c2, open)
    );

    // The node keeps its id: the next lookup finds it, the next open too.
    r.hold = false;
    assert_eq!(
        r.lookup(c2, NodeId::ROOT, "a.txt").map(|a| a.node),
        Ok(node)
    );
    assert!(matches!(
        r.call(
            c2,
            Request::Open {
                node,
                mode: crate::proto::OpenFor::Read
            }
        ),
        Ok(Reply::Opened { .. })
    ));
}

/// A listing (or lookup) a worker ran while a commit renamed its new
/// file into place shows that file before the commit's result: its
/// answer waits for the commit's, and the node stays (the writer's next
/// request on it is not ESTALE). Run before the rename and answered
/// after, it shows the replaced file: the node stays too.
#[test]
fn a_listing_racing_the_hosts_own_commit_keeps_the_node() {
    for (lookup, rename_first) in [(false, true), (true, true), (false, false), (true, false)] {
        let case = format!("lookup {lookup}, rename first {rename_first}");
        let (mut r, c1, _c2, node, txn) = commit_ready();
        r.hold = true;
        let commit = r.send(
            c1,
            Request::CommitWrite {
                txn,
                size: 5,
                set: SetAttr::default(),
            },
        );
        let look = if lookup {
            r.send(
                c1,
                Request::Lookup {
                    parent: NodeId::ROOT,
                    name: name("a.txt"),
                },
            )
        } else {
            r.send(
                c1,
                Request::ReadDir {
                    dir: NodeId::ROOT,
                    cookie: 0,
                },
            )
        };
        let is_look = |fs: &FsOp| matches!(fs, FsOp::List { .. } | FsOp::Stat { .. });
        if rename_first {
            let renamed = r.run_held(is_commit);
            let seen = r.run_held(is_look);
            r.deliver(seen);
            assert_eq!(r.reply(c1, look), None, "{case}: waits for the commit");
            r.deliver(renamed);
        } else {
            let seen = r.run_held(is_look);
            let renamed = r.run_held(is_commit);
            r.deliver(renamed);
            r.deliver(seen);
        }
        assert!(
            matches!(r.reply(c1, commit), Some(Ok(Reply::Attr(_)))),
            "{case}"
        );
        let seen_node = match r.reply(c1, look) {
            Some(Ok(Reply::DirPage { entries, .. })) => entries
                .iter()
                .find(|e| e.name == name("a.txt"))
                .map(|e| e.attr.node),
            Some(Ok(Reply::Attr(a))) => Some(a.node),
            other => panic!("{case}: {other:?}"),
        };
        assert_eq!(seen_node, Some(node), "{case}: the same node");
        r.hold = false;
        let next = r.call(
            c1,
            Request::SetAttr {
                node,
                set: SetAttr {
                    mode: Some(0o600),
                    ..SetAttr::default()
                },
                token: None,
            },
        );
        assert!(matches!(next, Ok(Reply::Attr(_))), "{case}: {next:?}");
    }
}

/// A local program's save that races one of this host's commits is not
/// taken for the commit's file: a lookup that found it gives it a node
/// of its own.
#[test]
fn a_local_save_racing_a_commit_is_another_file() {
    let (mut r, c1, _c2, node, txn) = commit_ready();
    r.hold = true;
    let commit = r.send(
        c1,
        Request::CommitWrite {
            txn,
            size: 5,
            set: SetAttr::default(),
        },
    );
    let look = r.send(
        c1,
        Request::Lookup {
            parent: NodeId::ROOT,
            name: name("a.txt"),
        },
    );
    // The commit's rename, then a local save over it, then the lookup.
    let renamed = r.run_held(is_commit);
    r.disk
        .local_replace(&path(&["a.txt"]), b"local")
        .expect("local save");
    let seen = r.run_held(|fs| matches!(fs, FsOp::Stat { .. }));
    r.deliver(seen);
    r.deliver(renamed);
    assert!(matches!(r.reply(c1, commit), Some(Ok(Reply::Attr(_)))));
    match r.reply(c1, look) {
        Some(Ok(Reply::Attr(a))) => {
            assert_ne!(a.node, node, "the local file is another file");
            assert_eq!(a.size, 5);
        }
        other => panic!("{other:?}"),
    }
}

/// A lookup that found a local program's file at a node's path gives the
/// path a new node; an open of the old node that a worker ran meanwhile
/// is ESTALE even when its result comes after (it opened the new file).
#[test]
fn an_open_of_a_node_forgotten_meanwhile_is_stale() {
    let mut r = rig();
    let c1 = r.client(1);
    let c2 = r.client(2);
    let old = r.lookup(c2, NodeId::ROOT, "a.txt").expect("a");
    r.disk
        .local_replace(&path(&["a.txt"]), b"saved by an editor")
        .expect("local save");
    r.hold = true;
    let open = open_for_read(&mut r, c2, old.node);
    let lookup = r.send(
        c1,
        Request::Lookup {
            parent: NodeId::ROOT,
            name: name("a.txt"),
        },
    );
    let opened = r.run_held(is_open);
    let found = r.run_held(|fs| matches!(fs, FsOp::Stat { .. }));
    r.deliver(found);
    let Some(Ok(Reply::Attr(new))) = r.reply(c1, lookup) else {
        panic!("lookup: {:?}", r.reply(c1, lookup))
    };
    assert_ne!(new.node, old.node, "the new file has a node of its own");
    r.deliver(opened);
    assert_eq!(r.reply(c2, open), Some(Err(Errno::Stale)));
    r.hold = false;
    r.release_held();
    assert_eq!(
        r.disk.open_handles(),
        0,
        "the disk handle of the refused open is closed"
    );
}

/// A local program renames a directory a client works in: the client's
/// node follows it (lookups, listings and creates there go on), while a
/// directory really deleted stays gone. On a local disk a shell's
/// current directory follows a rename.
#[test]
fn a_directory_moved_on_the_host_is_followed() {
    let mut r = Rig::new(
        HostConfig::default(),
        disk_with(
            &[(&["dir", "a.txt"], b"a"), (&["gone", "b.txt"], b"b")],
            &[&["dir"], &["gone"]],
        ),
    );
    let c = r.client(1);
    let dir = r.lookup(c, NodeId::ROOT, "dir").expect("dir");
    let a = r.lookup(c, dir.node, "a.txt").expect("a");
    let gone = r.lookup(c, NodeId::ROOT, "gone").expect("gone");
    r.disk
        .local_rename(&path(&["dir"]), &path(&["dir2"]))
        .expect("local mv");
    r.disk.local_delete(&path(&["gone", "b.txt"])).expect("rm");
    r.disk
        .execute(FsOp::Rmdir {
            path: path(&["gone"]),
        })
        .expect("rmdir");
    for changed in [&["dir"][..], &["dir2"], &["gone"]] {
        r.host.local_change(r.now, &path(changed));
    }
    r.pump();
    let seen = r.invalidations(c);
    assert!(
        seen.contains(&(NodeId::ROOT, Invalidation::Entries)),
        "{seen:?}"
    );
    // Everything beneath the moved directory keeps its node.
    assert_eq!(r.lookup(c, dir.node, "a.txt").map(|x| x.node), Ok(a.node));
    assert_eq!(
        r.lookup(c, NodeId::ROOT, "dir2").map(|x| x.node),
        Ok(dir.node)
    );
    assert_eq!(r.lookup(c, NodeId::ROOT, "dir").err(), Some(Errno::NoEnt));
    let created = r.call(
        c,
        Request::Create {
            parent: dir.node,
            name: name("new.txt"),
            mode: 0o644,
            exclusive: true,
            open: false,
            owner: None,
        },
    );
    assert!(created.is_ok(), "{created:?}");
    assert!(r.disk.read_file(&path(&["dir2", "new.txt"])).is_some());
    // The deleted one is not followed anywhere.
    assert!(r.lookup(c, gone.node, "b.txt").is_err());
}

/// The same move, met first by a lookup of the new name (the watcher's
/// event not in yet): the lookup finds the directory's own node.
#[test]
fn a_directory_moved_on_the_host_is_followed_at_its_next_lookup() {
    let mut r = Rig::new(
        HostConfig::default(),
        disk_with(&[(&["dir", "a.txt"], b"a")], &[&["dir"]]),
    );
    let c = r.client(1);
    let dir = r.lookup(c, NodeId::ROOT, "dir").expect("dir");
    let a = r.lookup(c, dir.node, "a.txt").expect("a");
    r.disk
        .local_rename(&path(&["dir"]), &path(&["dir2"]))
        .expect("local mv");
    assert_eq!(
        r.lookup(c, NodeId::ROOT, "dir2").map(|x| x.node),
        Ok(dir.node)
    );
    assert_eq!(r.lookup(c, dir.node, "a.txt").map(|x| x.node), Ok(a.node));
    // The watcher's events, late, change nothing.
    for changed in [&["dir"][..], &["dir2"]] {
        r.host.local_change(r.now, &path(changed));
    }
    r.pump();
    assert_eq!(
        r.lookup(c, NodeId::ROOT, "dir2").map(|x| x.node),
        Ok(dir.node)
    );
    assert_eq!(r.lookup(c, NodeId::ROOT, "dir").err(), Some(Errno::NoEnt));
}

// ------------------------------------------------------------ group commit

/// Commits `data` as the whole new content of `node`, releasing the lock.
fn commit(r: &mut Rig, c: ConnId, node: NodeId, data: &[u8]) -> Result<Reply, Errno> {
    let token = r.lock(c, node);
    let txn = r.begin(c, node, token);
    r.chunk(c, txn, 0, 0, data).expect("chunk");
    let reply = r.call(
        c,
        Request::CommitWrite {
            txn,
            size: data.len() as u64,
            set: SetAttr::default(),
        },
    );
    r.call(c, Request::ReleaseLock { token }).expect("release");
    reply
}

/// The content `p` would have after a crash that keeps only what was
/// synced.
fn after_crash(disk: &MemFs, p: &[&str]) -> Option<Vec<u8>> {
    let mut lost = disk.clone();
    lost.crash(0);
    lost.read_file(&path(p)).map(<[u8]>::to_vec)
}

#[test]
fn a_commit_is_answered_before_the_disk_has_it_and_a_sync_after() {
    let mut r = rig();
    let c = r.client(1);
    assert_eq!(r.disk.unsynced(), 0, "the seeded files are durable");
    assert_eq!(r.call(c, Request::Sync), Ok(Reply::Done), "nothing to sync");
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    assert!(matches!(
        commit(&mut r, c, a.node, b"NEW"),
        Ok(Reply::Attr(_))
    ));
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"NEW"[..]));
    assert_eq!(
        after_crash(&r.disk, &["a.txt"]).as_deref(),
        Some(&b"hello"[..]),
        "applied, visible, not yet durable"
    );
    assert_eq!(r.call(c, Request::Sync), Ok(Reply::Done));
    assert_eq!(
        after_crash(&r.disk, &["a.txt"]).as_deref(),
        Some(&b"NEW"[..])
    );
}

#[test]
fn the_group_commit_syncs_a_window_after_the_first_change() {
    let mut r = rig();
    let c = r.client(1);
    r.call(c, Request::Sync).expect("sync");
    let start = r.now;
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    commit(&mut r, c, a.node, b"NEW").expect("commit");
    assert_eq!(
        r.host.poll_timeout(),
        Some(start + HostConfig::default().sync_window),
        "due a window after the change"
    );
    r.advance(Duration::from_millis(999));
    assert!(r.disk.unsynced() > 0, "not before the window ends");
    r.advance(Duration::from_millis(1));
    assert_eq!(r.disk.unsynced(), 0, "synced when it ends");
    assert_eq!(
        after_crash(&r.disk, &["a.txt"]).as_deref(),
        Some(&b"NEW"[..])
    );
}

#[test]
fn with_no_window_a_change_is_answered_only_once_on_disk() {
    let mut r = Rig::new(
        HostConfig {
            sync_window: Duration::ZERO,
            ..HostConfig::default()
        },
        disk_with(&[], &[]),
    );
    let c = r.client(1);
    r.hold = true;
    let id = r.send(
        c,
        Request::Create {
            parent: NodeId::ROOT,
            name: name("new"),
            mode: 0o644,
            exclusive: true,
            open: false,
            owner: None,
        },
    );
    assert!(matches!(r.held[..], [(_, FsOp::Create { .. })]));
    r.release_held();
    assert_eq!(r.reply(c, id), None, "made, but not on disk yet");
    assert!(matches!(r.held[..], [(_, FsOp::Sync)]), "{:?}", r.held);
    r.release_held();
    assert!(matches!(r.reply(c, id), Some(Ok(Reply::Made { .. }))));
    assert!(after_crash(&r.disk, &["new"]).is_some());
}

#[test]
fn fsyncs_waiting_together_share_one_flush() {
    let mut r = rig();
    let (c1, c2) = (r.client(1), r.client(2));
    let a = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a");
    commit(&mut r, c1, a.node, b"NEW").expect("commit");
    r.hold = true;
    let ids = [
        (c1, r.send(c1, Request::Sync)),
        (c2, r.send(c2, Request::Sync)),
        (c1, r.send(c1, Request::Sync)),
    ];
    assert!(matches!(r.held[..], [(_, FsOp::Sync)]), "{:?}", r.held);
    r.release_held();
    for (c, id) in ids {
        assert_eq!(r.reply(c, id), Some(Ok(Reply::Done)));
    }
    assert!(r.held.is_empty(), "nothing left to sync");
}

#[test]
fn a_sync_the_disk_fails_reports_its_error_and_the_next_one_retries() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    commit(&mut r, c, a.node, b"NEW").expect("commit");
    r.disk.fail_next(Errno::Io, 1);
    assert_eq!(r.call(c, Request::Sync), Err(Errno::Io));
    assert_eq!(
        after_crash(&r.disk, &["a.txt"]).as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(r.call(c, Request::Sync), Ok(Reply::Done));
    assert_eq!(
        after_crash(&r.disk, &["a.txt"]).as_deref(),
        Some(&b"NEW"[..])
    );
}

// ------------------------------------------------------------ whole writes

fn whole(node: NodeId, base: Option<u64>, tag: u64, data: &[u8]) -> Request {
    Request::WriteWhole {
        node,
        base,
        append_from: None,
        tag,
        truncate: Some(0),
        offset: 0,
        data: Bytes::copy_from_slice(data),
        size: data.len() as u64,
        set: SetAttr::default(),
    }
}

#[test]
fn a_whole_write_commits_in_one_request_and_releases_its_lock() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let reply = r.call(c, whole(a.node, Some(a.version), 7, b"whole"));
    assert!(
        matches!(reply, Ok(Reply::Attr(ref n)) if n.size == 5),
        "{reply:?}"
    );
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"whole"[..]));
    assert_eq!(r.disk.staged(), 0);
    assert_eq!(r.host.open_txns(), 0);
    // The lock went with it: another session takes it at once.
    let c2 = r.client(2);
    r.lock(c2, a.node);
}

#[test]
fn a_whole_write_sent_again_gets_its_answer_and_runs_once() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let first = r.call(c, whole(a.node, Some(a.version), 7, b"once"));
    let commits = |r: &Rig| r.disk.unsynced();
    let before = commits(&r);
    // The same tag again (a lost reply): staged from the old version,
    // running it again would fail with ESTALE; it is answered instead.
    let again = r.call(c, whole(a.node, Some(a.version), 7, b"once"));
    assert_eq!(again, first);
    assert_eq!(commits(&r), before, "nothing ran twice");
}

#[test]
fn a_whole_write_to_a_locked_file_is_busy_and_to_a_changed_one_stale() {
    let mut r = rig();
    let (c1, c2) = (r.client(1), r.client(2));
    let a = r.lookup(c1, NodeId::ROOT, "a.txt").expect("a");
    let token = r.lock(c2, a.node);
    assert_eq!(
        r.call(c1, whole(a.node, Some(a.version), 1, b"x")),
        Err(Errno::Again),
        "locked by another: the client waits for the lock its own way"
    );
    r.call(c2, Request::ReleaseLock { token }).expect("release");
    assert_eq!(
        r.call(c1, whole(a.node, Some(a.version ^ 1), 2, b"x")),
        Err(Errno::Stale),
        "built on another version"
    );
    assert_eq!(r.disk.read_file(&path(&["a.txt"])), Some(&b"hello"[..]));
    assert_eq!((r.host.open_txns(), r.disk.staged()), (0, 0));
    r.lock(c2, a.node);
}

/// A create that opens answers as an open does: the new file's node and a
/// handle that reads it, counted against the session's handle limit.
#[test]
fn a_create_that_opens_answers_with_a_handle() {
    let mut r = Rig::new(
        HostConfig {
            max_handles_per_session: 1,
            ..HostConfig::default()
        },
        disk_with(&[], &[]),
    );
    let c = r.client(1);
    let create = |n: &str| Request::Create {
        parent: NodeId::ROOT,
        name: name(n),
        mode: 0o640,
        owner: None,
        exclusive: true,
        open: true,
    };
    let Ok(Reply::Opened {
        handle,
        attr,
        inline,
        ..
    }) = r.call(c, create("new"))
    else {
        panic!("create and open");
    };
    assert_eq!((attr.size, attr.mode, inline.len()), (0, 0o640, 0));
    assert_eq!(
        r.lookup(c, NodeId::ROOT, "new").map(|a| a.node),
        Ok(attr.node)
    );
    let read = Request::Read {
        file: crate::proto::FileRef::Handle(handle),
        offset: 0,
        len: 10,
    };
    assert!(matches!(r.call(c, read), Ok(Reply::Data { .. })));
    // The session's one handle is taken: the next create that opens is
    // refused before it touches the disk.
    assert_eq!(r.call(c, create("second")), Err(Errno::Again));
    assert_eq!(r.lookup(c, NodeId::ROOT, "second"), Err(Errno::NoEnt));
    assert_eq!(r.call(c, Request::Close { handle }), Ok(Reply::Done));
    assert!(matches!(
        r.call(c, create("second")),
        Ok(Reply::Opened { .. })
    ));
}

mod host_locks;
mod leases;

/// An attribute is read or changed only on the file the host knows its
/// node by: another file renamed onto the node's path since the request
/// was made is ESTALE, never answered for (fs_sim, seed 4900: another
/// file's attribute was read through a node whose file was replaced).
#[test]
fn extended_attributes_are_only_of_the_file_the_node_names() {
    let mut d = disk_with(&[(&["a"], b"x"), (&["b"], b"y")], &[]);
    let key_of = |d: &mut MemFs, p: &[&str]| match d.execute(FsOp::Stat { path: path(p) }) {
        Ok(FsOk::Attr(a)) => a.key,
        other => panic!("{other:?}"),
    };
    let a = key_of(&mut d, &["a"]);
    let tag = |key| FsOp::SetXattr {
        path: path(&["a"]),
        name: b"user.tag".to_vec(),
        value: b"of a".to_vec(),
        how: crate::proto::XattrSet::Either,
        key: Some(key),
    };
    assert!(d.execute(tag(a)).is_ok());
    d.execute(FsOp::Rename {
        from: path(&["b"]),
        to: path(&["a"]),
    })
    .expect("b over a");
    let get = FsOp::GetXattr {
        path: path(&["a"]),
        name: b"user.tag".to_vec(),
        key: Some(a),
    };
    assert_eq!(d.execute(get).err(), Some(Errno::Stale));
    assert_eq!(
        d.execute(FsOp::ListXattr {
            path: path(&["a"]),
            key: Some(a),
        })
        .err(),
        Some(Errno::Stale)
    );
    assert_eq!(d.execute(tag(a)).err(), Some(Errno::Stale));
    let b = key_of(&mut d, &["a"]);
    assert!(matches!(
        d.execute(FsOp::GetXattr {
            path: path(&["a"]),
            name: b"user.tag".to_vec(),
            key: Some(b),
        }),
        Err(Errno::NoData)
    ));
}

/// The host serves `user.` extended attributes to every client, and
/// `trusted.`/`security.` only where it preserves owners; a list shows
/// only what it serves, and no client gets a namespace by asking anyway.
#[test]
fn extended_attributes_only_in_the_namespaces_the_host_serves() {
    let set = |node, name: &[u8]| Request::SetXattr {
        node,
        name: name.to_vec(),
        value: b"1".to_vec(),
        how: crate::proto::XattrSet::Either,
    };
    let disk = || {
        let mut d = disk_with(&[(&["a"], b"x")], &[]);
        // A local program's root-only attribute on the file.
        let put = FsOp::SetXattr {
            path: path(&["a"]),
            name: b"trusted.local".to_vec(),
            value: b"secret".to_vec(),
            how: crate::proto::XattrSet::Either,
            key: None,
        };
        d.execute(put).expect("set on the disk");
        d
    };
    for (owners, trusted) in [
        (crate::proto::Owners::HostUser { uid: 0, gid: 0 }, false),
        (crate::proto::Owners::Preserved, true),
    ] {
        let mut r = Rig::new(
            HostConfig {
                owners,
                ..HostConfig::default()
            },
            disk(),
        );
        let c = r.client(1);
        let a = r.lookup(c, NodeId::ROOT, "a").expect("a");
        assert!(matches!(
            r.call(c, set(a.node, b"user.x")),
            Ok(Reply::Attr(_))
        ));
        let made = r.call(c, set(a.node, b"trusted.y"));
        assert_eq!(made.is_ok(), trusted, "{owners:?}: {made:?}");
        if !trusted {
            assert_eq!(made, Err(Errno::NotSup));
        }
        let read = r.call(
            c,
            Request::GetXattr {
                node: a.node,
                name: b"trusted.local".to_vec(),
            },
        );
        let want = if trusted {
            Ok(Reply::Xattr(b"secret".to_vec()))
        } else {
            Err(Errno::NoData)
        };
        assert_eq!(read, want, "{owners:?}");
        let list = r.call(c, Request::ListXattr { node: a.node });
        let want: &[u8] = if trusted {
            b"trusted.local\0trusted.y\0user.x\0"
        } else {
            b"user.x\0"
        };
        assert_eq!(list, Ok(Reply::Xattr(want.to_vec())), "{owners:?}");
    }
}

/// `a.txt` ("hello") as client 2 learnt it, and client 1's commit of
/// "hello, c1" since: client 2's writes are made to an older version.
fn committed_by_another() -> (Rig, ConnId, crate::proto::Attr) {
    let mut r = rig();
    let c1 = r.client(1);
    let c2 = r.client(2);
    let a = r.lookup(c2, NodeId::ROOT, "a.txt").expect("a");
    r.lookup(c1, NodeId::ROOT, "a.txt").expect("a");
    commit(&mut r, c1, a.node, b"hello, c1").expect("c1's commit");
    (r, c2, a)
}

/// Two clients append to one file: the second one's transaction was
/// made on the version before the first one's commit. Its appends go at
/// the new end instead of being refused, and nothing of it may touch
/// what lies below that end (content it never saw).
#[test]
fn appends_made_to_an_older_version_go_at_the_newer_end() {
    let (mut r, c2, a) = committed_by_another();
    let token = r.lock(c2, a.node);
    let begin = |append_from| Request::BeginWrite {
        node: a.node,
        token,
        base: Some(a.version),
        append_from,
    };
    assert_eq!(
        r.call(c2, begin(None)),
        Err(Errno::Stale),
        "a rewrite of the old version is refused"
    );
    let txn = match r.call(c2, begin(Some(5))) {
        Ok(Reply::WriteBegun { txn }) => txn,
        other => panic!("begin: {other:?}"),
    };
    assert_eq!(r.chunk(c2, txn, 0, 5, b", c2"), Ok(Reply::Done));
    assert_eq!(
        r.chunk(c2, txn, 0, 4, b"!"),
        Err(Errno::Stale),
        "below the appends"
    );
    assert_eq!(
        r.call(c2, Request::TruncateWrite { txn, size: 2 }),
        Err(Errno::Stale)
    );
    match r.call(
        c2,
        Request::CommitWrite {
            txn,
            size: 9,
            set: SetAttr::default(),
        },
    ) {
        Ok(Reply::Attr(attr)) => assert_eq!(attr.size, 13, "moved by c1's four bytes"),
        other => panic!("commit: {other:?}"),
    }
    assert_eq!(
        r.disk.read_file(&path(&["a.txt"])),
        Some(&b"hello, c1, c2"[..])
    );
}

/// The same in one request, as a client sends a small append.
#[test]
fn a_whole_append_to_an_older_version_goes_at_the_newer_end() {
    let (mut r, c2, a) = committed_by_another();
    let whole = |append_from, tag| Request::WriteWhole {
        node: a.node,
        base: Some(a.version),
        append_from,
        tag,
        truncate: None,
        offset: 5,
        data: Bytes::from_static(b", c2"),
        size: 9,
        set: SetAttr::default(),
    };
    assert_eq!(r.call(c2, whole(None, 1)), Err(Errno::Stale));
    match r.call(c2, whole(Some(5), 2)) {
        Ok(Reply::Attr(attr)) => assert_eq!(attr.size, 13),
        other => panic!("whole write: {other:?}"),
    }
    assert_eq!(
        r.disk.read_file(&path(&["a.txt"])),
        Some(&b"hello, c1, c2"[..])
    );
}

/// Whole writes are remembered by tag only so long: one sent again after
/// its record was dropped is refused, never run a second time (an
/// append would land twice).
#[test]
fn a_whole_write_sent_again_after_it_is_forgotten_is_refused() {
    let mut r = rig();
    let c = r.client(1);
    let a = r.lookup(c, NodeId::ROOT, "a.txt").expect("a");
    let whole = |tag: u64| Request::WriteWhole {
        node: a.node,
        base: None,
        append_from: None,
        tag,
        truncate: Some(0),
        offset: 0,
        data: Bytes::from(tag.to_string()),
        size: tag.to_string().len() as u64,
        set: SetAttr::default(),
    };
    for tag in 1..=server::COMMITTED_MEMORY as u64 {
        r.call(c, whole(tag)).expect("whole write");
    }
    assert!(
        matches!(r.call(c, whole(1)), Ok(Reply::Attr(_))),
        "still remembered: its answer again"
    );
    let next = server::COMMITTED_MEMORY as u64 + 1;
    r.call(c, whole(next)).expect("one more");
    assert_eq!(r.call(c, whole(1)), Err(Errno::Stale), "forgotten");
    assert_eq!(
        r.disk.read_file(&path(&["a.txt"])),
        Some(next.to_string().as_bytes())
    );
}
