//! The host machine: sessions, requests, file operations and replies.

use super::fsop::{FsAttr, FsHandle, FsOk, FsOp, FsResult, OpId, ReadFrom, RelPath};
use super::nodes::NodeTable;
use crate::codec::CodecError;
use crate::conn::auth::{self, TicketSecret};
use crate::lock::{Acquired, LockConfig, LockOutput, LockRequest, LockTable, scope_node};
use crate::proto::{
    Attr, CHUNK_SIZE, ClientMessage, DirEntry, Errno, FileKey, FileKind, FileRef, HandleId,
    HostMessage, Invalidation, Limits, LockScope, LockToken, MAX_DIR_PAGE, MAX_SYMLINK_LEN,
    MAX_WRITE_PIECE, Name, NodeId, Reply, Request, RequestId, SessionId, TxnId,
};
use crate::{Instant, Rng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Names with this prefix belong to the host (staging files of write
/// transactions): clients can neither see nor create them.
pub const RESERVED_PREFIX: &[u8] = b".wormhole.";

/// A transport connection, numbered by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Host policy and bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct HostConfig {
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// The lock table's lifetimes and bounds.
    pub lock: LockConfig,
    /// Nodes in the index.
    pub max_nodes: usize,
    /// Nodes indexed by the start-up scan; the rest on demand.
    pub scan_limit: usize,
    /// Directory listings in flight during the scan.
    pub scan_parallel: usize,
    /// Client sessions at once.
    pub max_sessions: usize,
    /// File operations in flight per session; more get EAGAIN.
    pub max_ops_per_session: usize,
    /// Open handles per session.
    pub max_handles_per_session: usize,
    /// Write transactions per session.
    pub max_txns_per_session: usize,
    /// How long a disconnected session keeps its locks, handles and
    /// transactions for a reconnect to resume them. Equal to the lock ttl:
    /// longer would block other clients beyond what a lock may.
    pub session_grace: Duration,
    /// A transaction with no activity for this long is aborted.
    pub txn_idle_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            read_only: false,
            lock: LockConfig::default(),
            max_nodes: 1 << 20,
            scan_limit: 100_000,
            scan_parallel: 4,
            max_sessions: 64,
            max_ops_per_session: 256,
            max_handles_per_session: 4096,
            max_txns_per_session: 64,
            session_grace: Duration::from_secs(30),
            txn_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The host session's state (spec §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Not hosting.
    Stopped,
    /// Building the file index.
    Scanning,
    /// Ready, no client yet.
    Listening,
    /// Clients connected.
    Hosting,
    /// Clients came and went; still listening.
    Idle,
}

/// What the host reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// The state changed.
    State(HostState),
    /// The shared folder could not be scanned; the host stopped.
    ScanFailed(Errno),
    /// A client proved the ticket secret.
    Authenticated {
        /// Its connection.
        conn: ConnId,
        /// Its session.
        session: SessionId,
        /// Whether an earlier session was resumed.
        resumed: bool,
    },
    /// A connection failed authentication and is being closed.
    AuthRefused {
        /// The connection.
        conn: ConnId,
    },
    /// A session ended: its locks, handles and transactions are released.
    SessionEnded {
        /// The session.
        session: SessionId,
    },
}

/// What the host asks the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostOutput {
    /// Execute a file operation beneath the shared root (no-follow) and
    /// report its result with [`HostServer::handle_fs`].
    Fs {
        /// Its id, for the result.
        op: OpId,
        /// The operation.
        fs: FsOp,
    },
    /// Send a message to a client.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: HostMessage,
    },
    /// Close a connection.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Something to report.
    Event(HostEvent),
}

#[derive(Debug)]
struct Conn {
    exporter: [u8; 32],
    session: Option<SessionId>,
}

#[derive(Debug, Default)]
struct Session {
    conn: Option<ConnId>,
    /// When it lost its connection; it ends `session_grace` later.
    detached_at: Option<Instant>,
    handles: BTreeSet<HandleId>,
    txns: BTreeSet<TxnId>,
    /// Results of recent commits, so a commit retried after a lost reply
    /// gets its answer instead of an error (bounded).
    committed: VecDeque<(TxnId, Attr)>,
    ops: usize,
}

/// Commit results remembered per session for retried commits.
const COMMITTED_MEMORY: usize = 64;

#[derive(Debug)]
struct Handle {
    session: SessionId,
    fs: FsHandle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnPhase {
    /// StageBegin in flight.
    Staging,
    /// Accepting chunks.
    Open,
    /// StageCommit in flight.
    Committing,
}

#[derive(Debug)]
struct Txn {
    session: SessionId,
    node: NodeId,
    token: LockToken,
    phase: TxnPhase,
    /// StageWrites in flight: a commit waits for none.
    writes: usize,
    last_activity: Instant,
}

/// What an operation in flight is for.
#[derive(Debug)]
enum Purpose {
    ScanRoot,
    ScanList {
        dir: NodeId,
    },
    /// Clean-up with no one to answer (closing handles, dropping staging).
    Housekeeping,
    Answer {
        session: SessionId,
        id: RequestId,
        then: Then,
    },
}

/// How to turn an operation's result into a reply.
#[derive(Debug)]
enum Then {
    Lookup {
        parent: NodeId,
        name: Name,
    },
    Stat {
        node: NodeId,
    },
    ReadDir {
        dir: NodeId,
    },
    Open {
        node: NodeId,
        handle: HandleId,
        fs: FsHandle,
    },
    Close {
        handle: HandleId,
    },
    Read,
    Created {
        parent: NodeId,
        name: Name,
    },
    Removed {
        parent: NodeId,
        name: Name,
    },
    Renamed {
        parent: NodeId,
        name: Name,
        new_parent: NodeId,
        new_name: Name,
    },
    Readlink,
    Statfs,
    StageBegin {
        txn: TxnId,
    },
    StageWrite {
        txn: TxnId,
    },
    Commit {
        txn: TxnId,
    },
    Abort,
}

/// The host.
#[derive(Debug)]
pub struct HostServer {
    cfg: HostConfig,
    secret: TicketSecret,
    rng: Rng,
    state: HostState,
    nodes: NodeTable,
    root: Option<FsAttr>,
    locks: LockTable,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<SessionId, Session>,
    handles: BTreeMap<HandleId, Handle>,
    txns: BTreeMap<TxnId, Txn>,
    ops: BTreeMap<OpId, Purpose>,
    scan_queue: VecDeque<(NodeId, u64)>,
    next_op: u64,
    next_handle: u64,
    next_txn: u64,
    out: VecDeque<HostOutput>,
}

impl HostServer {
    /// A stopped host that admits clients proving `secret`.
    pub fn new(cfg: HostConfig, secret: TicketSecret, mut rng: Rng) -> Self {
        let lock_rng = Rng::from_u64(rng.next_u64());
        HostServer {
            locks: LockTable::new(cfg.lock.clone(), lock_rng),
            nodes: NodeTable::new(FileKey { dev: 0, ino: 0 }, cfg.max_nodes),
            cfg,
            secret,
            rng,
            state: HostState::Stopped,
            root: None,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            handles: BTreeMap::new(),
            txns: BTreeMap::new(),
            ops: BTreeMap::new(),
            scan_queue: VecDeque::new(),
            next_op: 1,
            next_handle: 1,
            next_txn: 1,
            out: VecDeque::new(),
        }
    }

    /// The lifecycle state.
    pub fn state(&self) -> HostState {
        self.state
    }

    /// The file index.
    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    /// The lock table.
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// Sessions alive (connected or within their grace period).
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.keys().copied()
    }

    /// Write transactions open.
    pub fn open_txns(&self) -> usize {
        self.txns.len()
    }

    /// A transaction's owner, file and fencing token (for simulations that
    /// check every commit against the lock table).
    pub fn txn_info(&self, txn: TxnId) -> Option<(SessionId, NodeId, LockToken)> {
        self.txns.get(&txn).map(|t| (t.session, t.node, t.token))
    }

    fn set_state(&mut self, state: HostState) {
        if self.state != state {
            self.state = state;
            self.out
                .push_back(HostOutput::Event(HostEvent::State(state)));
        }
    }

    fn fs(&mut self, purpose: Purpose, fs: FsOp) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        if let Purpose::Answer { session, .. } = &purpose
            && let Some(s) = self.sessions.get_mut(session)
        {
            s.ops += 1;
        }
        self.ops.insert(op, purpose);
        self.out.push_back(HostOutput::Fs { op, fs });
        op
    }

    // ------------------------------------------------------------ lifecycle

    /// Starts hosting: scan the shared folder, then listen.
    pub fn start(&mut self, _now: Instant) {
        if self.state != HostState::Stopped {
            return;
        }
        self.set_state(HostState::Scanning);
        self.fs(
            Purpose::ScanRoot,
            FsOp::Stat {
                path: RelPath::root(),
            },
        );
    }

    /// Stops hosting: every connection is closed and every session ends.
    pub fn stop(&mut self, now: Instant) {
        if self.state == HostState::Stopped {
            return;
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.out.push_back(HostOutput::Close { conn });
        }
        self.conns.clear();
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for s in sessions {
            self.end_session(now, s);
        }
        self.scan_queue.clear();
        self.set_state(HostState::Stopped);
    }

    fn scan_more(&mut self) {
        let in_flight = self
            .ops
            .values()
            .filter(|p| matches!(p, Purpose::ScanList { .. } | Purpose::ScanRoot))
            .count();
        let mut room = self.cfg.scan_parallel.saturating_sub(in_flight);
        while room > 0 {
            let Some((dir, cookie)) = self.scan_queue.pop_front() else {
                break;
            };
            let Some(path) = self.nodes.path(dir) else {
                continue;
            };
            self.fs(
                Purpose::ScanList { dir },
                FsOp::List {
                    path,
                    cookie,
                    max: MAX_DIR_PAGE as u32,
                },
            );
            room -= 1;
        }
        if self.state == HostState::Scanning
            && self.scan_queue.is_empty()
            && !self
                .ops
                .values()
                .any(|p| matches!(p, Purpose::ScanList { .. } | Purpose::ScanRoot))
        {
            self.set_state(HostState::Listening);
        }
    }

    fn scan_result(&mut self, purpose: Purpose, result: FsResult) {
        match (purpose, result) {
            (Purpose::ScanRoot, Ok(FsOk::Attr(attr))) if attr.kind == FileKind::Dir => {
                self.nodes = NodeTable::new(attr.key, self.cfg.max_nodes);
                self.root = Some(attr);
                self.scan_queue.push_back((NodeId::ROOT, 0));
            }
            (Purpose::ScanRoot, Ok(_)) => return self.scan_failed(Errno::NotDir),
            (Purpose::ScanRoot, Err(e)) => return self.scan_failed(e),
            (Purpose::ScanList { dir, .. }, Ok(FsOk::Listing { entries, next })) => {
                for (name, attr) in entries {
                    if is_reserved(&name) || self.nodes.len() >= self.cfg.scan_limit {
                        continue;
                    }
                    if let Some(id) = self.nodes.learn(dir, &name, attr.key, attr.kind)
                        && attr.kind == FileKind::Dir
                    {
                        self.scan_queue.push_back((id, 0));
                    }
                }
                if let Some(cookie) = next
                    && self.nodes.len() < self.cfg.scan_limit
                {
                    self.scan_queue.push_front((dir, cookie));
                }
            }
            // A directory that vanished or cannot be read mid-scan is simply
            // not indexed; lookups find what is there later.
            (Purpose::ScanList { .. }, _) => {}
            _ => {}
        }
        self.scan_more();
    }

    fn scan_failed(&mut self, errno: Errno) {
        self.out
            .push_back(HostOutput::Event(HostEvent::ScanFailed(errno)));
        self.scan_queue.clear();
        self.set_state(HostState::Stopped);
    }

    fn accepting(&self) -> bool {
        matches!(
            self.state,
            HostState::Listening | HostState::Hosting | HostState::Idle
        )
    }

    // ---------------------------------------------------------- connections

    /// A client connected; `exporter` is its TLS session's keying material
    /// under [`auth::EXPORTER_LABEL`]. Its first message must be Hello.
    pub fn conn_opened(&mut self, _now: Instant, conn: ConnId, exporter: [u8; 32]) {
        if !self.accepting() || self.conns.len() >= self.cfg.max_sessions * 2 {
            self.out.push_back(HostOutput::Close { conn });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                exporter,
                session: None,
            },
        );
    }

    /// A connection closed. Its session keeps its locks, handles and
    /// transactions for `session_grace`, so a reconnect can resume it.
    pub fn conn_closed(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(sid) = c.session
            && let Some(s) = self.sessions.get_mut(&sid)
            && s.conn == Some(conn)
        {
            s.conn = None;
            s.detached_at = Some(now);
        }
        self.update_hosting();
    }

    fn update_hosting(&mut self) {
        let connected = self.sessions.values().any(|s| s.conn.is_some());
        match (self.state, connected) {
            (HostState::Listening | HostState::Idle, true) => self.set_state(HostState::Hosting),
            (HostState::Hosting, false) => self.set_state(HostState::Idle),
            _ => {}
        }
    }

    /// A message arrived on `conn`. A message that does not decode fails
    /// alone: the error goes back to the shell, which resets that stream.
    pub fn handle_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        bytes: &bytes::Bytes,
    ) -> Result<(), CodecError> {
        let msg = ClientMessage::decode_shared(bytes)?;
        self.handle_request(now, conn, msg);
        Ok(())
    }

    /// A decoded request arrived on `conn`.
    pub fn handle_request(&mut self, now: Instant, conn: ConnId, msg: ClientMessage) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ClientMessage { id, request } = msg;
        let Some(session) = c.session else {
            return self.hello(now, conn, id, request);
        };
        if let Request::Hello { .. } = request {
            return self.send(conn, id, Err(Errno::Inval));
        }
        let over = self
            .sessions
            .get(&session)
            .is_none_or(|s| s.ops >= self.cfg.max_ops_per_session);
        if over {
            return self.send(conn, id, Err(Errno::Again));
        }
        if let Err(e) = self.dispatch(now, session, id, request) {
            self.send(conn, id, Err(e));
        }
    }

    fn hello(&mut self, now: Instant, conn: ConnId, id: RequestId, request: Request) {
        let Some(exporter) = self.conns.get(&conn).map(|c| c.exporter) else {
            return;
        };
        let Request::Hello {
            version,
            proof,
            resume,
        } = request
        else {
            return self.refuse(conn, id);
        };
        if !auth::verify(&self.secret, &exporter, &proof) {
            return self.refuse(conn, id);
        }
        if version != u16::from(crate::codec::PROTOCOL_VERSION) {
            self.send(conn, id, Err(Errno::NotSup));
            self.out.push_back(HostOutput::Close { conn });
            self.conns.remove(&conn);
            return;
        }
        let resumable = resume.filter(|s| self.sessions.get(s).is_some_and(|s| s.conn.is_none()));
        let (session, resumed) = match resumable {
            Some(s) => (s, true),
            None => {
                if self.sessions.len() >= self.cfg.max_sessions {
                    self.send(conn, id, Err(Errno::Busy));
                    self.out.push_back(HostOutput::Close { conn });
                    self.conns.remove(&conn);
                    return;
                }
                let mut sid = [0u8; 16];
                self.rng.fill(&mut sid);
                let sid = SessionId(sid);
                self.sessions.insert(sid, Session::default());
                (sid, false)
            }
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.conn = Some(conn);
            s.detached_at = None;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session);
        }
        let _ = now;
        // Hello is only accepted once the scan has read the root.
        let Some(root) = self.root.as_ref().map(|r| to_attr(NodeId::ROOT, r)) else {
            return self.send(conn, id, Err(Errno::Io));
        };
        self.send(
            conn,
            id,
            Ok(Reply::HelloAck {
                session,
                root,
                limits: Limits {
                    chunk_size: CHUNK_SIZE as u32,
                    max_dir_page: MAX_DIR_PAGE as u32,
                    lock_ttl_ms: u32::try_from(self.cfg.lock.ttl.as_millis()).unwrap_or(u32::MAX),
                    read_only: self.cfg.read_only,
                },
            }),
        );
        self.out
            .push_back(HostOutput::Event(HostEvent::Authenticated {
                conn,
                session,
                resumed,
            }));
        self.update_hosting();
    }

    /// A wrong proof (or anything but Hello first) gets EACCES and nothing
    /// else: no session, no data, and the connection closes.
    fn refuse(&mut self, conn: ConnId, id: RequestId) {
        self.send(conn, id, Err(Errno::Acces));
        self.out.push_back(HostOutput::Close { conn });
        self.out
            .push_back(HostOutput::Event(HostEvent::AuthRefused { conn }));
        self.conns.remove(&conn);
    }

    fn send(&mut self, conn: ConnId, id: RequestId, result: Result<Reply, Errno>) {
        self.out.push_back(HostOutput::Send {
            conn,
            msg: HostMessage::Reply { id, result },
        });
    }

    /// Replies to a session's request on its current connection; a session
    /// without one will re-ask after it resumes.
    fn answer(&mut self, session: SessionId, id: RequestId, result: Result<Reply, Errno>) {
        if let Some(conn) = self.sessions.get(&session).and_then(|s| s.conn) {
            self.send(conn, id, result);
        }
    }

    /// Tells every connected session but `except` that `node` changed.
    fn broadcast(&mut self, except: Option<SessionId>, node: NodeId, what: Invalidation) {
        let conns: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(sid, _)| Some(**sid) != except)
            .filter_map(|(_, s)| s.conn)
            .collect();
        for conn in conns {
            self.out.push_back(HostOutput::Send {
                conn,
                msg: HostMessage::Invalidate { node, what },
            });
        }
    }

    fn end_session(&mut self, now: Instant, session: SessionId) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        self.locks.release_session(now, session);
        for h in s.handles {
            if let Some(handle) = self.handles.remove(&h) {
                self.fs(Purpose::Housekeeping, FsOp::Close { handle: handle.fs });
            }
        }
        for t in s.txns {
            if self.txns.remove(&t).is_some() {
                self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn: t });
            }
        }
        if let Some(conn) = s.conn {
            self.conns.remove(&conn);
            self.out.push_back(HostOutput::Close { conn });
        }
        self.out
            .push_back(HostOutput::Event(HostEvent::SessionEnded { session }));
        self.drain_locks();
        self.update_hosting();
    }

    // ------------------------------------------------------------- requests

    fn path_of(&self, node: NodeId) -> Result<RelPath, Errno> {
        self.nodes.path(node).ok_or(Errno::Stale)
    }

    fn dir_path(&self, node: NodeId) -> Result<RelPath, Errno> {
        match self.nodes.kind(node) {
            None => Err(Errno::Stale),
            Some(FileKind::Dir) => self.path_of(node),
            Some(_) => Err(Errno::NotDir),
        }
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.cfg.read_only {
            Err(Errno::RoFs)
        } else {
            Ok(())
        }
    }

    /// Refuses a change to `node` while another session holds a lock that
    /// covers it: with `entries`, a directory-entry change (a Directory or
    /// Subtree lock on it, or a subtree lock above it, blocks it); without,
    /// a change to the node itself (any lock on it or a subtree above).
    fn guard(&self, session: SessionId, node: NodeId, entries: bool) -> Result<(), Errno> {
        let ancestors = self.nodes.ancestors(node);
        for lock in self.locks.locks() {
            if lock.session == session {
                continue;
            }
            let blocks = match lock.scope {
                LockScope::Subtree(n) => n == node || ancestors.contains(&n),
                LockScope::Directory(n) => entries && n == node,
                LockScope::File(n) => !entries && n == node,
            };
            if blocks {
                return Err(Errno::Busy);
            }
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        request: Request,
    ) -> Result<(), Errno> {
        let answer = |then| Purpose::Answer { session, id, then };
        match request {
            Request::Hello { .. } => return Err(Errno::Inval),
            Request::Lookup { parent, name } => {
                let path = self.dir_path(parent)?.join(visible(&name)?);
                self.fs(answer(Then::Lookup { parent, name }), FsOp::Stat { path });
            }
            Request::GetAttr { node } => {
                let path = self.path_of(node)?;
                self.fs(answer(Then::Stat { node }), FsOp::Stat { path });
            }
            Request::SetAttr { node, set, token } => {
                self.writable()?;
                let path = self.path_of(node)?;
                match token {
                    Some(token) => {
                        let ancestors = self.nodes.ancestors(node);
                        self.locks.validate(now, session, token, node, &ancestors)?;
                    }
                    None => self.guard(session, node, false)?,
                }
                self.fs(answer(Then::Stat { node }), FsOp::SetAttr { path, set });
            }
            Request::ReadDir { dir, cookie } => {
                let path = self.dir_path(dir)?;
                self.fs(
                    answer(Then::ReadDir { dir }),
                    FsOp::List {
                        path,
                        cookie,
                        max: MAX_DIR_PAGE as u32,
                    },
                );
            }
            Request::Open { node } => {
                let path = self.path_of(node)?;
                let s = self.sessions.get(&session).ok_or(Errno::BadF)?;
                if s.handles.len() >= self.cfg.max_handles_per_session {
                    return Err(Errno::Again);
                }
                let handle = HandleId(self.next_handle);
                let fs = FsHandle(self.next_handle);
                self.next_handle += 1;
                self.fs(
                    answer(Then::Open { node, handle, fs }),
                    FsOp::Open {
                        path,
                        handle: fs,
                        inline_max: CHUNK_SIZE as u32,
                    },
                );
            }
            Request::Close { handle } => {
                let h = self.own_handle(session, handle)?;
                self.fs(answer(Then::Close { handle }), FsOp::Close { handle: h });
            }
            Request::Read { file, offset, len } => {
                if len as usize > CHUNK_SIZE {
                    return Err(Errno::Inval);
                }
                let from = match file {
                    FileRef::Node(node) => ReadFrom::Path(self.path_of(node)?),
                    FileRef::Handle(handle) => ReadFrom::Handle(self.own_handle(session, handle)?),
                };
                self.fs(answer(Then::Read), FsOp::Read { from, offset, len });
            }
            Request::Create {
                parent,
                name,
                mode,
                exclusive,
            } => {
                self.writable()?;
                let path = self.dir_path(parent)?.join(visible(&name)?);
                self.guard(session, parent, true)?;
                self.fs(
                    answer(Then::Created { parent, name }),
                    FsOp::Create {
                        path,
                        mode: mode & 0o7777,
                        exclusive,
                    },
                );
            }
            Request::Mkdir { parent, name, mode } => {
                self.writable()?;
                let path = self.dir_path(parent)?.join(visible(&name)?);
                self.guard(session, parent, true)?;
                self.fs(
                    answer(Then::Created { parent, name }),
                    FsOp::Mkdir {
                        path,
                        mode: mode & 0o7777,
                    },
                );
            }
            Request::Symlink {
                parent,
                name,
                target,
            } => {
                self.writable()?;
                if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                    return Err(Errno::Inval);
                }
                let path = self.dir_path(parent)?.join(visible(&name)?);
                self.guard(session, parent, true)?;
                self.fs(
                    answer(Then::Created { parent, name }),
                    FsOp::Symlink { path, target },
                );
            }
            Request::Unlink { parent, name } => self.remove(session, id, parent, name, false)?,
            Request::Rmdir { parent, name } => self.remove(session, id, parent, name, true)?,
            Request::Rename {
                parent,
                name,
                new_parent,
                new_name,
            } => {
                self.writable()?;
                let from = self.dir_path(parent)?.join(visible(&name)?);
                let to = self.dir_path(new_parent)?.join(visible(&new_name)?);
                if to.starts_with(&from) && to != from {
                    return Err(Errno::Inval);
                }
                self.guard(session, parent, true)?;
                self.guard(session, new_parent, true)?;
                for (p, n) in [(parent, &name), (new_parent, &new_name)] {
                    if let Some(child) = self.nodes.child(p, n)
                        && self.locked_below_by_other(session, child)
                    {
                        return Err(Errno::Busy);
                    }
                }
                self.fs(
                    answer(Then::Renamed {
                        parent,
                        name,
                        new_parent,
                        new_name,
                    }),
                    FsOp::Rename { from, to },
                );
            }
            Request::Readlink { node } => {
                let path = self.path_of(node)?;
                self.fs(answer(Then::Readlink), FsOp::Readlink { path });
            }
            Request::Statfs => {
                self.fs(answer(Then::Statfs), FsOp::StatFs);
            }
            Request::AcquireLock { scope, kind, wait } => {
                let node = scope_node(scope);
                match (scope, self.nodes.kind(node)) {
                    (_, None) => return Err(Errno::Stale),
                    (LockScope::Directory(_) | LockScope::Subtree(_), Some(k))
                        if k != FileKind::Dir =>
                    {
                        return Err(Errno::NotDir);
                    }
                    _ => {}
                }
                let ancestors = self.nodes.ancestors(node);
                let req = LockRequest {
                    session,
                    request: id,
                    scope,
                    kind,
                    wait,
                    ancestors: &ancestors,
                };
                match self.locks.acquire(now, &req)? {
                    Acquired::Granted(grant) => self.answer(session, id, Ok(grant.reply())),
                    Acquired::Queued(_) => {}
                }
                self.drain_locks();
            }
            Request::RefreshLock { token } => {
                let grant = self.locks.refresh(now, session, token)?;
                self.answer(session, id, Ok(grant.reply()));
            }
            Request::ReleaseLock { token } => {
                self.locks.release(now, session, token)?;
                self.answer(session, id, Ok(Reply::Done));
                self.drain_locks();
            }
            Request::BeginWrite { node, token } => {
                self.writable()?;
                if self.nodes.kind(node) != Some(FileKind::File) {
                    return Err(if self.nodes.kind(node).is_none() {
                        Errno::Stale
                    } else {
                        Errno::IsDir
                    });
                }
                let ancestors = self.nodes.ancestors(node);
                self.locks.validate(now, session, token, node, &ancestors)?;
                let s = self.sessions.get(&session).ok_or(Errno::BadF)?;
                if s.txns.len() >= self.cfg.max_txns_per_session {
                    return Err(Errno::Again);
                }
                let path = self.path_of(node)?;
                let txn = TxnId(self.next_txn);
                self.next_txn += 1;
                self.txns.insert(
                    txn,
                    Txn {
                        session,
                        node,
                        token,
                        phase: TxnPhase::Staging,
                        writes: 0,
                        last_activity: now,
                    },
                );
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.txns.insert(txn);
                }
                self.fs(
                    answer(Then::StageBegin { txn }),
                    FsOp::StageBegin { txn, path },
                );
            }
            Request::WriteChunk {
                txn,
                index,
                offset,
                data,
            } => {
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open {
                    return Err(Errno::Inval);
                }
                if offset as usize >= CHUNK_SIZE || data.len() > MAX_WRITE_PIECE {
                    return Err(Errno::Inval);
                }
                let at = index
                    .checked_mul(CHUNK_SIZE as u64)
                    .and_then(|b| b.checked_add(u64::from(offset)))
                    .ok_or(Errno::FBig)?;
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes += 1;
                    t.last_activity = now;
                }
                self.fs(
                    answer(Then::StageWrite { txn }),
                    FsOp::StageWrite {
                        txn,
                        offset: at,
                        data,
                    },
                );
            }
            Request::TruncateWrite { txn, size } => {
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open || t.writes > 0 {
                    // A truncate is a barrier between the chunks before and
                    // after it: the client sends it with none in flight.
                    return Err(Errno::Busy);
                }
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes += 1;
                    t.last_activity = now;
                }
                self.fs(
                    answer(Then::StageWrite { txn }),
                    FsOp::StageTruncate { txn, size },
                );
            }
            Request::CommitWrite { txn, size } => {
                if let Some(attr) = self.sessions.get(&session).and_then(|s| {
                    s.committed
                        .iter()
                        .find(|(t, _)| *t == txn)
                        .map(|(_, a)| a.clone())
                }) {
                    self.answer(session, id, Ok(Reply::Attr(attr)));
                    return Ok(());
                }
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open || t.writes > 0 {
                    // Chunks still in flight: the client commits only after
                    // every chunk is acknowledged.
                    return Err(Errno::Busy);
                }
                // The file's path now, not at BeginWrite: the writer itself
                // may have renamed it since (its lock does not stop its own
                // renames), and committing to the old path would replace
                // whatever file is there now.
                let path = self.path_of(t.node)?;
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.phase = TxnPhase::Committing;
                    t.last_activity = now;
                }
                self.fs(
                    answer(Then::Commit { txn }),
                    FsOp::StageCommit { txn, path, size },
                );
            }
            Request::AbortWrite { txn } => {
                let t = self
                    .txns
                    .get(&txn)
                    .filter(|t| t.session == session)
                    .ok_or(Errno::Stale)?;
                if t.phase == TxnPhase::Committing {
                    return Err(Errno::Busy);
                }
                self.drop_txn(txn);
                self.fs(answer(Then::Abort), FsOp::StageAbort { txn });
            }
            Request::Goodbye => {
                self.answer(session, id, Ok(Reply::Done));
                self.end_session(now, session);
            }
        }
        Ok(())
    }

    /// Unlink (`dir` false) or rmdir: refused while another session's lock
    /// covers the directory's entries or the node itself (or anything
    /// beneath it).
    fn remove(
        &mut self,
        session: SessionId,
        id: RequestId,
        parent: NodeId,
        name: Name,
        dir: bool,
    ) -> Result<(), Errno> {
        self.writable()?;
        let path = self.dir_path(parent)?.join(visible(&name)?);
        self.guard(session, parent, true)?;
        if let Some(child) = self.nodes.child(parent, &name) {
            self.guard(session, child, false)?;
            if self.locked_below_by_other(session, child) {
                return Err(Errno::Busy);
            }
        }
        let fs = if dir {
            FsOp::Rmdir { path }
        } else {
            FsOp::Unlink { path }
        };
        self.fs(
            Purpose::Answer {
                session,
                id,
                then: Then::Removed { parent, name },
            },
            fs,
        );
        Ok(())
    }

    /// Whether a session other than `session` holds a lock on `node` or on
    /// anything beneath it (what moving or removing `node` would disturb).
    fn locked_below_by_other(&self, session: SessionId, node: NodeId) -> bool {
        self.locks.locks().any(|l| {
            l.session != session && {
                let n = scope_node(l.scope);
                n == node || self.nodes.ancestors(n).contains(&node)
            }
        })
    }

    fn own_handle(&self, session: SessionId, handle: HandleId) -> Result<FsHandle, Errno> {
        self.handles
            .get(&handle)
            .filter(|h| h.session == session)
            .map(|h| h.fs)
            .ok_or(Errno::BadF)
    }

    /// A transaction of `session` whose token is still a live exclusive
    /// lock on its file: the fencing check, made at every step.
    fn live_txn(&self, now: Instant, session: SessionId, txn: TxnId) -> Result<&Txn, Errno> {
        let t = self
            .txns
            .get(&txn)
            .filter(|t| t.session == session)
            .ok_or(Errno::Stale)?;
        let ancestors = self.nodes.ancestors(t.node);
        self.locks
            .validate(now, session, t.token, t.node, &ancestors)?;
        Ok(t)
    }

    fn drop_txn(&mut self, txn: TxnId) {
        if let Some(t) = self.txns.remove(&txn)
            && let Some(s) = self.sessions.get_mut(&t.session)
        {
            s.txns.remove(&txn);
        }
    }

    fn drain_locks(&mut self) {
        while let Some(out) = self.locks.poll_output() {
            if let Some((session, id, result)) = out.reply() {
                self.answer(session, id, result);
            }
            if let LockOutput::Expired { token, .. } = out {
                // A transaction fenced by a dead lock can never commit:
                // drop its staging now rather than at its idle timeout.
                let dead: Vec<TxnId> = self
                    .txns
                    .iter()
                    .filter(|(_, t)| t.token == token && t.phase != TxnPhase::Committing)
                    .map(|(&id, _)| id)
                    .collect();
                for txn in dead {
                    self.drop_txn(txn);
                    self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
                }
            }
        }
    }

    // ------------------------------------------------------------ results

    /// The shell finished file operation `op`.
    pub fn handle_fs(&mut self, now: Instant, op: OpId, result: FsResult) {
        let Some(purpose) = self.ops.remove(&op) else {
            return;
        };
        match purpose {
            Purpose::ScanRoot | Purpose::ScanList { .. } => self.scan_result(purpose, result),
            Purpose::Housekeeping => {}
            Purpose::Answer { session, id, then } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.ops = s.ops.saturating_sub(1);
                }
                let reply = self.complete(now, session, then, result);
                self.answer(session, id, reply);
            }
        }
    }

    fn learn(&mut self, parent: NodeId, name: &Name, attr: &FsAttr) -> Result<Attr, Errno> {
        let id = self
            .nodes
            .learn(parent, name, attr.key, attr.kind)
            .ok_or(Errno::NoSpc)?;
        Ok(to_attr(id, attr))
    }

    fn complete(
        &mut self,
        now: Instant,
        session: SessionId,
        then: Then,
        result: FsResult,
    ) -> Result<Reply, Errno> {
        match (then, result) {
            (Then::Lookup { parent, name }, Ok(FsOk::Attr(a))) => {
                Ok(Reply::Attr(self.learn(parent, &name, &a)?))
            }
            (Then::Lookup { parent, name }, Err(Errno::NoEnt)) => {
                self.nodes.remove(parent, &name);
                Err(Errno::NoEnt)
            }
            (Then::Stat { node }, Ok(FsOk::Attr(a))) => Ok(Reply::Attr(to_attr(node, &a))),
            (Then::ReadDir { dir }, Ok(FsOk::Listing { entries, next })) => {
                let mut out = Vec::with_capacity(entries.len());
                for (name, attr) in entries {
                    if is_reserved(&name) {
                        continue;
                    }
                    if let Ok(attr) = self.learn(dir, &name, &attr) {
                        out.push(DirEntry { name, attr });
                    }
                }
                Ok(Reply::DirPage { entries: out, next })
            }
            (Then::Open { node, handle, fs }, Ok(FsOk::Opened(a, inline))) => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.handles.insert(handle);
                    self.handles.insert(handle, Handle { session, fs });
                    Ok(Reply::Opened {
                        handle,
                        attr: to_attr(node, &a),
                        inline,
                    })
                } else {
                    // The session ended while the file was opening.
                    self.fs(Purpose::Housekeeping, FsOp::Close { handle: fs });
                    Err(Errno::BadF)
                }
            }
            (Then::Close { handle }, Ok(_)) => {
                if let Some(h) = self.handles.remove(&handle)
                    && let Some(s) = self.sessions.get_mut(&h.session)
                {
                    s.handles.remove(&handle);
                }
                Ok(Reply::Done)
            }
            (Then::Read, Ok(FsOk::Data(data, attr))) => {
                let version = to_attr(NodeId::ROOT, &attr).version;
                Ok(Reply::Data { data, version })
            }
            (Then::Created { parent, name }, Ok(FsOk::Attr(a))) => {
                let attr = self.learn(parent, &name, &a)?;
                self.broadcast(Some(session), parent, Invalidation::Entries);
                Ok(Reply::Attr(attr))
            }
            (Then::Removed { parent, name }, Ok(_)) => {
                for gone in self.nodes.remove(parent, &name) {
                    self.broadcast(Some(session), gone, Invalidation::Gone);
                }
                self.broadcast(Some(session), parent, Invalidation::Entries);
                Ok(Reply::Done)
            }
            (
                Then::Renamed {
                    parent,
                    name,
                    new_parent,
                    new_name,
                },
                Ok(_),
            ) => {
                for gone in self.nodes.rename(parent, &name, new_parent, &new_name) {
                    self.broadcast(Some(session), gone, Invalidation::Gone);
                }
                self.broadcast(Some(session), parent, Invalidation::Entries);
                if new_parent != parent {
                    self.broadcast(Some(session), new_parent, Invalidation::Entries);
                }
                Ok(Reply::Done)
            }
            (Then::Readlink, Ok(FsOk::Link(target))) => Ok(Reply::Link(target)),
            (Then::Statfs, Ok(FsOk::StatFs(s))) => Ok(Reply::StatFs(s)),
            (Then::StageBegin { txn }, Ok(_)) => match self.txns.get_mut(&txn) {
                Some(t) => {
                    t.phase = TxnPhase::Open;
                    t.last_activity = now;
                    Ok(Reply::WriteBegun { txn })
                }
                None => {
                    // Dropped meanwhile (lock expired, session ended).
                    self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
                    Err(Errno::Stale)
                }
            },
            (Then::StageWrite { txn }, Ok(_)) => {
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes = t.writes.saturating_sub(1);
                    t.last_activity = now;
                }
                Ok(Reply::Done)
            }
            (Then::Commit { txn }, Ok(FsOk::Attr(a))) => {
                let node = self.txns.get(&txn).map(|t| t.node);
                self.drop_txn(txn);
                let Some(node) = node else {
                    return Err(Errno::Stale);
                };
                // The commit put a new file (identity) at the node's path:
                // the index follows, so the next lookup keeps the node id
                // (and the writer's lock and handles stay valid).
                self.nodes.rekey(node, a.key);
                let attr = to_attr(node, &a);
                if let Some(s) = self.sessions.get_mut(&session) {
                    if s.committed.len() == COMMITTED_MEMORY {
                        s.committed.pop_front();
                    }
                    s.committed.push_back((txn, attr.clone()));
                }
                self.broadcast(Some(session), node, Invalidation::Data);
                Ok(Reply::Attr(attr))
            }
            (Then::Abort, Ok(_)) => Ok(Reply::Done),
            (then, Err(e)) => {
                match then {
                    Then::StageBegin { txn } | Then::Commit { txn } => {
                        self.drop_txn(txn);
                        self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
                    }
                    Then::StageWrite { txn } => {
                        if let Some(t) = self.txns.get_mut(&txn) {
                            t.writes = t.writes.saturating_sub(1);
                        }
                    }
                    Then::Stat { node } if e == Errno::NoEnt => {
                        // Deleted behind our back: forget it.
                        let parent = self.nodes.ancestors(node).first().copied();
                        let path = self.nodes.path(node);
                        if let (Some(parent), Some((_, name))) =
                            (parent, path.as_ref().and_then(RelPath::split_last))
                        {
                            let name = name.clone();
                            self.nodes.remove(parent, &name);
                        }
                    }
                    _ => {}
                }
                Err(e)
            }
            // A result of the wrong shape is a shell bug; fail the request
            // rather than guess.
            (_, Ok(_)) => Err(Errno::Io),
        }
    }

    // --------------------------------------------------------- host changes

    /// A local program changed `path` on the host (from the shell's file
    /// watcher): tell every client.
    pub fn local_change(&mut self, _now: Instant, path: &RelPath) {
        let mut at = NodeId::ROOT;
        let names = path.names();
        for (i, name) in names.iter().enumerate() {
            match self.nodes.child(at, name) {
                Some(child) => at = child,
                None => {
                    // Not indexed: only its directory's listing changed.
                    if i + 1 == names.len() {
                        self.broadcast(None, at, Invalidation::Entries);
                    }
                    return;
                }
            }
        }
        self.broadcast(None, at, Invalidation::Data);
        if let Some(parent) = self.nodes.ancestors(at).first().copied() {
            self.broadcast(None, parent, Invalidation::Entries);
        }
    }

    // ---------------------------------------------------------------- time

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let grace = self
            .sessions
            .values()
            .filter_map(|s| s.detached_at)
            .map(|t| t + self.cfg.session_grace)
            .min();
        let txn = self
            .txns
            .values()
            .filter(|t| t.phase == TxnPhase::Open)
            .map(|t| t.last_activity + self.cfg.txn_idle_timeout)
            .min();
        [grace, txn, self.locks.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers: lock expiry and waits, ended grace periods, idle
    /// transactions.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.locks.handle_timeout(now);
        self.drain_locks();
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.detached_at
                    .is_some_and(|t| now >= t + self.cfg.session_grace)
            })
            .map(|(&id, _)| id)
            .collect();
        for s in expired {
            self.end_session(now, s);
        }
        let idle: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                t.phase == TxnPhase::Open && now >= t.last_activity + self.cfg.txn_idle_timeout
            })
            .map(|(&id, _)| id)
            .collect();
        for txn in idle {
            self.drop_txn(txn);
            self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<HostOutput> {
        self.out.pop_front()
    }
}

fn is_reserved(name: &Name) -> bool {
    name.as_bytes().starts_with(RESERVED_PREFIX)
}

/// A name a client may use: not one of the host's own.
fn visible(name: &Name) -> Result<&Name, Errno> {
    if is_reserved(name) {
        Err(Errno::Acces)
    } else {
        Ok(name)
    }
}

/// The protocol attributes of a node. The version names the *content*:
/// it changes when the identity, size or mtime do (every write moves
/// mtime; a commit makes a new file), not on chmod, rename or unlink, so
/// those keep cached chunks and the kernel's page cache.
fn to_attr(node: NodeId, a: &FsAttr) -> Attr {
    let mut h = blake3::Hasher::new();
    h.update(&a.key.dev.to_le_bytes());
    h.update(&a.key.ino.to_le_bytes());
    h.update(&a.size.to_le_bytes());
    h.update(&a.mtime.secs.to_le_bytes());
    h.update(&a.mtime.nanos.to_le_bytes());
    let mut v = [0u8; 8];
    v.copy_from_slice(&h.finalize().as_bytes()[..8]);
    Attr {
        node,
        key: a.key,
        kind: a.kind,
        size: a.size,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        version: u64::from_le_bytes(v),
    }
}
