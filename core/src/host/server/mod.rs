//! The host machine: sessions, requests, file operations and replies.
//!
//! Here the machine's types, its lifecycle and its outputs; the inputs
//! each have a module: [`conns`] (connections and sessions), [`requests`],
//! [`results`] (finished file operations) and [`time`] (timers and local
//! changes); [`sync`] decides when what was applied becomes durable.

mod conns;
mod echo;
mod host_locks;
mod lease;
mod requests;
mod results;
mod sync;
mod time;
mod whole;

use super::fsop::{
    FileStamp, FsAttr, FsHandle, FsOk, FsOp, FsOpId, FsResult, OpenAs, ReadFrom, RelPath,
};
use super::nodes::NodeTable;
use crate::codec::CodecError;
use crate::conn::auth::{self, TicketSecret};
use crate::lock::range::{RangeLockConfig, RangeLocks};
use crate::lock::{Acquired, LockConfig, LockOutput, LockRequest, LockTable, scope_node};
use crate::proto::{
    Attr, CHUNK_SIZE, ClientMessage, DirEntry, Errno, FileKey, FileKind, FileRef, HandleId,
    HostMessage, Invalidation, Limits, LockScope, LockToken, MAX_DIR_PAGE, MAX_SYMLINK_LEN,
    MAX_WRITE_PIECE, Name, NodeId, OpenFor, Owners, Reply, Request, RequestId, SessionId, TxnId,
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
    /// Group commit: changes are applied (visible to every client) at
    /// once and made durable together at most this long after the first
    /// of them; a client's fsync makes them durable at once. Zero: every
    /// change is durable before its reply (docs/filesystem.md,
    /// "Durability").
    pub sync_window: Duration,
    /// Whose the files are, announced to clients: the shell sets the
    /// user it runs as, or [`Owners::Preserved`] if asked.
    pub owners: Owners,
    /// Bounds of the advisory record locks (`fcntl`, `flock`).
    pub record_locks: RangeLockConfig,
    /// Let clients make device nodes, and show those on the disk (only
    /// with owners preserved: `--allow-device-nodes`). Otherwise a
    /// client's mknod of one is EPERM and one on the disk is invisible.
    pub allow_device_nodes: bool,
    /// Hold clients' record locks on the host's own files too, so that
    /// the host's local programs and the clients keep each other out
    /// ([`host_locks`]).
    pub lock_host_files: bool,
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
            sync_window: Duration::from_secs(1),
            owners: Owners::HostUser { uid: 0, gid: 0 },
            allow_device_nodes: false,
            record_locks: RangeLockConfig::default(),
            lock_host_files: true,
        }
    }
}

/// The host session's state (docs/filesystem.md, "Host session").
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
        op: FsOpId,
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
    /// The same for whole writes, by the client's tag.
    wholes: VecDeque<(u64, Attr)>,
    /// The highest tag dropped from `wholes` to bound it: a whole write
    /// sent again with a tag no higher, and no longer remembered, may have
    /// run, and is refused rather than run twice (a second run of an
    /// append would be moved to the end and add its bytes again).
    wholes_forgotten: Option<u64>,
    /// The same for lease batches ([`lease`]), by the client's tag.
    applied: VecDeque<(u64, Vec<Result<Attr, Errno>>)>,
    /// Lease batches being applied, and the requests that asked for each
    /// (more than one if the client sent it again meanwhile).
    applying: BTreeMap<u64, Vec<RequestId>>,
    /// Node ids reserved for this session's leases, by first id.
    reserved: BTreeMap<u64, lease::Reserved>,
    ops: usize,
}

/// Commit results remembered per session for retried commits.
pub(crate) const COMMITTED_MEMORY: usize = 64;

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
    /// The content staged from, once StageBegin has answered: the commit
    /// replaces only that.
    base: Option<FileStamp>,
    /// A whole write the host runs itself ([`whole`]).
    whole: Option<whole::Whole>,
    /// The client's writes only append, from this offset (the end of the
    /// version it wrote to: `append_from` of [`Request::BeginWrite`]).
    appends_from: Option<u64>,
    /// Staged from a newer version than the client's, ending here: its
    /// appends go here instead ([`Txn::place`]).
    moved_to: Option<u64>,
}

impl Txn {
    /// Where the client's byte `at` goes in the staged content: where it
    /// says, unless its appends were moved to a newer version's end.
    /// Below the appends of a moved transaction is content the client
    /// never saw: ESTALE.
    fn place(&self, at: u64) -> Result<u64, Errno> {
        match (self.appends_from, self.moved_to) {
            (Some(from), Some(to)) => at
                .checked_sub(from)
                .ok_or(Errno::Stale)?
                .checked_add(to)
                .ok_or(Errno::FBig),
            _ => Ok(at),
        }
    }

    /// Refuses what only makes sense on the client's own version (a
    /// truncate, a copy) once the appends were moved.
    fn unmoved(&self) -> Result<(), Errno> {
        match self.moved_to {
            Some(_) => Err(Errno::Stale),
            None => Ok(()),
        }
    }
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
    /// The group commit's flush ([`sync`]).
    Sync,
    /// A step of a whole write ([`whole`]).
    Whole {
        session: SessionId,
        txn: TxnId,
        step: whole::WholeStep,
    },
    /// A look at a path the watcher reported, to tell the echo of the
    /// host's own change from a local program's ([`echo`]).
    Echo {
        path: RelPath,
    },
    /// What a local program put at `parent/name`, where no node is: a
    /// directory it moved there is followed ([`HostServer::local_change`]).
    Follow {
        parent: NodeId,
        name: Name,
    },
    /// A name of a file with several names, which a local program's
    /// change reported: dropped from the node unless it still holds the
    /// file ([`HostServer::local_change`]).
    CheckName {
        node: NodeId,
        parent: NodeId,
        name: Name,
    },
    Answer {
        session: SessionId,
        id: RequestId,
        then: ReplyAs,
    },
    /// A lock request's range taken on the host's file before the
    /// clients' table grants it ([`host_locks`]).
    TakeOnHost(host_locks::Taking),
    /// The listing of a directory leased with its mkdir, and the
    /// mkdir's reply waiting for it ([`HostServer::lease_new_dir`]).
    NewDirListed {
        session: SessionId,
        id: RequestId,
        made: (Attr, Vec<Attr>),
        grant: crate::proto::LeaseGrant,
        /// Its reply waits for the disk (the group commit's `hold`).
        hold: bool,
    },
    /// A lease holder's batch ([`lease`]): what each operation was.
    Applied {
        session: SessionId,
        dir: NodeId,
        tag: u64,
        steps: Vec<lease::BatchStep>,
    },
}

/// An operation's result and the request it answers: finished at once,
/// or held until a commit racing it has ended ([`HostServer::racing`]).
#[derive(Debug)]
struct Outcome {
    op: FsOpId,
    session: SessionId,
    id: RequestId,
    then: ReplyAs,
    result: FsResult,
    /// Its reply waits for the disk (the group commit's `hold`).
    hold: bool,
}

/// How to turn an operation's result into a reply.
#[derive(Debug)]
enum ReplyAs {
    Lookup {
        parent: NodeId,
        name: Name,
    },
    Stat {
        node: NodeId,
        /// The path the operation went to (the node's when issued).
        path: RelPath,
    },
    ReadDir {
        dir: NodeId,
    },
    Open {
        node: NodeId,
        handle: HandleId,
        fs: FsHandle,
        /// The path the open went to (the node's when issued).
        path: RelPath,
    },
    Close {
        handle: HandleId,
    },
    /// By path (`node`, and the path the read went to) or through a
    /// handle (`None`).
    Read {
        node: Option<(NodeId, RelPath)>,
    },
    /// A create, mkdir or symlink; a create that opens too names the
    /// handle it opens, a mkdir that asks for the new directory's lease
    /// says so.
    Created {
        parent: NodeId,
        name: Name,
        open: Option<(HandleId, FsHandle)>,
        lease: bool,
    },
    /// A hard link of `node` made at `parent/name`.
    Linked {
        node: NodeId,
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
    /// An extended attribute's value, or (`list`) a list of names.
    Xattr {
        list: bool,
    },
    Statfs,
    StageBegin {
        txn: TxnId,
        /// The version the client's writes build on, if they do.
        expect: Option<u64>,
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
    /// Programs' advisory record locks, shared by every client.
    ranges: RangeLocks,
    /// The same held on the host's files, and requests local programs'
    /// locks keep waiting.
    host_locks: host_locks::HostLocks,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<SessionId, Session>,
    handles: BTreeMap<HandleId, Handle>,
    txns: BTreeMap<TxnId, Txn>,
    ops: BTreeMap<FsOpId, Purpose>,
    /// Files this host's own commits replaced, each with the first
    /// operation id issued after its latest commit's result and the
    /// identities its commits replaced: an operation issued earlier may
    /// still report one of them (workers run operations in any order).
    /// Kept while such an operation is out.
    recommitted: BTreeMap<NodeId, (u64, BTreeSet<FileKey>)>,
    /// Lookup and listing results that found a file of another identity
    /// at a node whose commit was under way: they wait for the commit's
    /// result, which says whether that file was the commit's own
    /// ([`results`]).
    racing: Vec<Outcome>,
    scan_queue: VecDeque<(NodeId, u64)>,
    /// What is applied and what durable ([`sync`]).
    group: sync::GroupCommit,
    /// The host's own changes, to know their echoes from the watcher.
    echoes: echo::Echoes,
    /// Directory leases and the requests waiting for them.
    leases: lease::Leases,
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
            ranges: RangeLocks::new(cfg.record_locks.clone()),
            host_locks: host_locks::HostLocks::default(),
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
            recommitted: BTreeMap::new(),
            racing: Vec::new(),
            scan_queue: VecDeque::new(),
            group: sync::GroupCommit::default(),
            echoes: echo::Echoes::default(),
            leases: lease::Leases::default(),
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

    /// The advisory record locks.
    pub fn record_locks(&self) -> &RangeLocks {
        &self.ranges
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

    fn fs(&mut self, purpose: Purpose, fs: FsOp) -> FsOpId {
        let op = FsOpId(self.next_op);
        self.next_op += 1;
        if let Purpose::Answer { session, .. } = &purpose
            && let Some(s) = self.sessions.get_mut(session)
        {
            s.ops += 1;
        }
        self.ops.insert(op, purpose);
        self.group.issued(op, &fs);
        self.echoes.issued(op, &fs);
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
        self.forget_syncs();
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
                    if let Some(id) = self
                        .nodes
                        .learn(dir, &name, attr.key, attr.kind, attr.nlink)
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
        rdev: a.rdev,
    }
}
