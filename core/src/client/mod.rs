//! The mount client, sans-IO: kernel file operations in, protocol requests
//! and kernel replies out. It composes the client machines: the
//! [`Connection`], the inode table ([`Vfs`]), the [`Cache`] (with
//! read-ahead) and one [`WriteTxn`] per file being written.
//!
//! * **Replies come from wherever the core answers**: a cache hit replies
//!   within the call; a miss replies when the host answers (or the
//!   request times out). Many kernel requests are in flight at once, and
//!   concurrent misses for one key make one request.
//! * **Writes are write-back**: a write is acknowledged once buffered in its
//!   transaction; flush, fsync and close commit it and report the outcome,
//!   so an error is never lost (it surfaces at the next flush).
//! * **Close-to-open**: open asks the host for the file's current version;
//!   chunks are cached per version, so a file committed elsewhere is never
//!   read from old chunks after it is opened again. The one relaxation is
//!   open-ahead ([`ahead`]): a sweep through a directory's small files is
//!   answered from opens made a moment earlier, trusted exactly as long as
//!   the attributes they brought.
//! * **Losing the host** ([`offline`]): a silent host is probed, and once
//!   it is unreachable (or the connection is gone) the cache answers what
//!   it holds, past its TTL; misses wait for the host at most
//!   `unreachable_wait`, then fail with ETIMEDOUT, and a waiting request
//!   cuts a reconnect's backoff short. A resumed
//!   session re-sends what was in flight; a new session (host restarted)
//!   re-binds every inode by path first, and aborts open write
//!   transactions, whose errors surface at flush.

mod ahead;
mod api;
mod dispatch;
#[cfg(test)]
mod integrity;
mod lease;
mod locks;
mod offline;
mod owners;
#[cfg(test)]
mod regressions;
mod reply;
#[cfg(test)]
mod tests;

pub use api::{
    Allocate, Answer, ClientConfig, ClientEvent, ClientOutput, DirItem, Fh, ListedName, Op, Req,
};

use crate::cache::{Cache, CacheKey, ChunkKey, ReadAhead, WaiterId};
use crate::conn::auth::TicketSecret;
use crate::conn::{ConnEvent, ConnOutput, Connection};
use crate::proto::{
    Attr, Checksum, ClientMessage, Errno, FileKey, HandleId, NodeId, Request, RequestId, SetAttr,
};
use crate::vfs::{Ino, Vfs};
use crate::write::{WriteOp, WriteTxn};
use crate::{Instant, Rng};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// The node of a handle whose file is not (yet) bound in the current host
/// session. Hosts number nodes from the root (1) up, so 0 names nothing and
/// every request on it fails with ESTALE.
const UNBOUND: NodeId = NodeId(0);

/// How long a move to a better path holds new requests back while those
/// in flight are answered over the old path: long enough for the answers
/// a working path gives, short enough that the wait is not noticed.
const MOVE_DRAIN: Duration = Duration::from_secs(1);

/// Whether inode `ino` was set aside (`Vfs::set_aside`): its handles
/// hold a file another commit replaced, and are no longer handles on
/// their node's file as it is now.
fn set_aside(vfs: Option<&Vfs>, ino: Ino) -> bool {
    vfs.and_then(|v| v.get(ino)).is_some_and(|i| i.replaced)
}

/// Whether `h` is a handle on `node`'s file as it is now (not one set
/// aside with a file that was replaced).
fn on_file(vfs: Option<&Vfs>, h: &Handle, node: NodeId) -> bool {
    h.node == node && !set_aside(vfs, h.ino)
}

/// An open file.
#[derive(Clone, Debug)]
struct Handle {
    ino: Ino,
    node: NodeId,
    /// The host's handle (keeps an unlinked file readable).
    host: Option<HandleId>,
    /// Opened for writing (or made by a create): its writes follow the
    /// file, so it is never set aside with an old version.
    write: bool,
    /// The first request id not sent yet when it was opened: a reply to
    /// an older request may show the file as it was before this open.
    opened_at: u64,
    /// The file's attributes as last learned (version keys its chunks).
    attr: Attr,
    /// A write failure this handle has not reported yet: its next flush,
    /// fsync or close answers it. Like Linux's per-file error sequence,
    /// every handle open on a file when its writes were lost reports the
    /// loss once, whichever handle wrote them.
    error: Option<Errno>,
    /// A commit of its file was applied since this handle's last fsync:
    /// if the host restarts before one, that commit may not have reached
    /// its disk, and the handle reports EIO once (a delayed write error,
    /// as a local disk's writeback failure would be).
    unsynced: bool,
    /// A record lock taken through this handle went with the host
    /// session that held it (the host restarted, or this client was away
    /// past the session grace), and its program was not told: writes
    /// through the handle fail with EIO until the program lets go of its
    /// locks on the file (an unlock of the whole file, or a close), so
    /// nothing written in the belief that the lock still excludes others
    /// reaches the file (docs/filesystem.md, "Advisory locks"). The
    /// lock owner whose lock was lost: only its letting go clears it (a
    /// forked child closing its copy of the descriptor does not).
    lock_lost: Option<u64>,
}

/// Why a request was sent: what to do with its reply.
#[derive(Clone, Debug)]
enum Purpose {
    Hello,
    /// Fill a cache key.
    Fetch(CacheKey),
    /// Collect a directory's pages.
    DirPage {
        node: NodeId,
        acc: Vec<crate::proto::DirEntry>,
    },
    /// A kernel operation's own request.
    Op {
        req: Req,
        op: Op,
        part: OpPart,
    },
    /// A write transaction's request.
    Write {
        node: NodeId,
        op: WriteOp,
    },
    /// Re-bind an inode after the host restarted.
    Rebind {
        ino: Ino,
    },
    /// Open a file ahead of the kernel ([`ahead`]).
    OpenAhead {
        node: NodeId,
    },
    /// A directory lease's request ([`lease`]).
    Lease {
        dir: NodeId,
        step: lease::LeaseStep,
    },
    /// Nobody waits (closing a host handle).
    Forget,
    /// An unlock the client sends on its own (at a close, or withdrawing a
    /// lock request the kernel was failed for): the owner's next lock
    /// request on the file waits for its answer ([`locks`]).
    Withdraw {
        node: NodeId,
        owner: u64,
    },
    /// Is the silent host still there? ([`offline`])
    Probe,
    /// One chunk of a read served through its open's host handle,
    /// unversioned (a file changing in place; see `read_through`).
    ReadThrough {
        req: Req,
        slot: usize,
    },
    /// A kernel request answered without this request's reply (from the
    /// cache, the host being unreachable, or failed for waiting too
    /// long): a handle its reply opens is closed.
    Abandoned,
}

impl Purpose {
    /// A kernel operation's own (first) request.
    fn kernel_op(req: Req, op: &Op) -> Purpose {
        Purpose::Op {
            req,
            op: op.clone(),
            part: OpPart::First,
        }
    }
}

/// Which request of a multi-request operation this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpPart {
    /// The operation's own request (for most, the only one).
    First,
    /// Fsync's second request, once its commit is applied: make it
    /// durable.
    Sync,
    /// SetAttr's mode/time part after its size part committed.
    Rest,
    /// A read's attributes refresh after its chunks changed version.
    RefreshRead,
    /// A lock's open of the file's current version, for the handles to
    /// read ([`locks`]).
    Repoint,
}

#[derive(Clone, Debug)]
struct InFlight {
    request: Request,
    purpose: Purpose,
    deadline: Instant,
}

/// What a cache waiter is for.
#[derive(Clone, Debug)]
enum CacheWait {
    GetAttr { req: Req, ino: Ino },
    ReadPart { req: Req, slot: usize, attempt: u8 },
    ReadDir { req: Req, ino: Ino, offset: u64 },
}

/// A read being assembled from chunks.
#[derive(Clone, Debug)]
struct ReadJob {
    fh: Fh,
    offset: u64,
    size: u32,
    /// `(chunk index, bytes)` per slot, filled as chunks arrive.
    parts: Vec<(u64, Option<Bytes>)>,
    retries: u8,
    /// Read through the host handle, unversioned (`read_through`): the
    /// file may have shrunk since its size was learned, and a short chunk
    /// is its end.
    through: bool,
    /// The handle's file and version when its chunks were asked for, and
    /// whether a write of this client's was open: a read finished against
    /// another (a commit came while its chunks did) is read again.
    planned: Option<(crate::proto::FileKey, u64, bool)>,
}

/// Kernel requests waiting for a write transaction's commit.
#[derive(Clone, Debug)]
enum AfterCommit {
    /// Answer the request (a flush, fsync or close of this handle) with
    /// the commit's result.
    Reply(Req, Fh),
    /// Set the attributes other than the size once the commit is over.
    /// `truncated`: the size was part of the commit, whose failure is the
    /// answer then; otherwise (a mode or time change that waited for the
    /// writes before it) they are set whatever the commit's outcome (a
    /// loss is the writers' to report).
    SetAttr {
        req: Req,
        ino: Ino,
        rest: SetAttr,
        truncated: bool,
    },
    /// Nobody waits (a close already answered): a failure waits for the
    /// next flush.
    Quiet,
    /// Send a record-lock request ([`locks`]), whatever the commit's
    /// outcome: for the kernel's lock request `kernel`, or for none (the
    /// release at a close).
    Lock {
        kernel: Option<(Req, Op)>,
        request: Request,
    },
}

/// A file's operation that must wait for the commit under way (or for
/// buffer space) and then run in the order the kernel sent it: a flush
/// must cover every write sent before it, and a truncate must land
/// between the writes around it.
#[derive(Clone, Debug)]
enum Blocked {
    /// A write through `fh`.
    Write {
        req: Req,
        fh: Fh,
        offset: u64,
        data: Bytes,
        append: bool,
    },
    /// A `copy_file_range` into the file through `fh`, from another file
    /// as the host holds it.
    Copy {
        req: Req,
        fh: Fh,
        from: crate::proto::FileRef,
        from_offset: u64,
        offset: u64,
        len: u64,
    },
    /// A size change (with the other attributes to set after it).
    Truncate {
        req: Req,
        ino: Ino,
        size: u64,
        rest: SetAttr,
    },
    /// A read of bytes this client wrote that only the host's staging
    /// copy holds: after the commit, it reads the committed file.
    Read { req: Req },
    /// A flush, fsync or close: commit, then answer.
    Commit {
        then: AfterCommit,
        /// A commit that ended while this waited lost writes sent before
        /// it: the answer is this error.
        lost: Option<Errno>,
    },
}

impl Blocked {
    /// The kernel request waiting, if one does.
    fn req(&self) -> Option<Req> {
        match self {
            Blocked::Write { req, .. }
            | Blocked::Copy { req, .. }
            | Blocked::Truncate { req, .. }
            | Blocked::Read { req }
            | Blocked::Commit {
                then:
                    AfterCommit::Reply(req, _)
                    | AfterCommit::SetAttr { req, .. }
                    | AfterCommit::Lock {
                        kernel: Some((req, _)),
                        ..
                    },
                ..
            } => Some(*req),
            Blocked::Commit {
                then: AfterCommit::Quiet | AfterCommit::Lock { kernel: None, .. },
                ..
            } => None,
        }
    }
}

/// Where the client stands with its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a connection (the first, or after a loss): requests
    /// queue until `request_timeout`.
    Connecting,
    /// Connected and authenticated: requests go out.
    Ready,
    /// The connection machine gave up: requests fail at once with
    /// ENOTCONN until the next connect, which comes by itself at
    /// `redial_at` (see [`ClientConfig::redial`]).
    GaveUp { redial_at: Option<Instant> },
}

impl Phase {
    fn gave_up(self) -> bool {
        matches!(self, Phase::GaveUp { .. })
    }

    fn redial_at(self) -> Option<Instant> {
        match self {
            Phase::GaveUp { redial_at } => redial_at,
            _ => None,
        }
    }

    /// The connection is gone; a client that gave up stays given up.
    fn lost(&mut self) {
        if *self == Phase::Ready {
            *self = Phase::Connecting;
        }
    }
}

/// The mount client.
#[derive(Debug)]
pub struct ClientCore {
    cfg: ClientConfig,
    conn: Connection,
    vfs: Option<Vfs>,
    cache: Cache,
    read_ahead: ReadAhead,
    handles: BTreeMap<Fh, Handle>,
    next_fh: u64,
    writes: BTreeMap<NodeId, WriteTxn>,
    after_commit: BTreeMap<NodeId, Vec<AfterCommit>>,
    /// Lock owners that may hold record locks on a file, each with the
    /// handle it last locked through ([`locks`]): released at close.
    lockers: BTreeMap<(NodeId, u64), Fh>,
    /// Of those, the owners granted a lock on the file in this session
    /// and not let go of it since (a whole-file unlock, a close): whose
    /// handles a new session fences ([`locks`]).
    granted: BTreeSet<(NodeId, u64)>,
    /// Per node, the first request id not yet sent when this client's own
    /// change of it last answered with new attributes: replies to older
    /// requests may show the node as it was before (see
    /// `reply::fill_changed_attr`). Pruned of what no request in flight
    /// is older than.
    changed_after: BTreeMap<NodeId, u64>,
    /// What each kernel lock request in progress asks for (file, owner,
    /// bytes): a lock granted after its handle was released is let go at
    /// once, and a request that fails here (the host silent too long)
    /// is withdrawn at the host, which may still hold it waiting.
    locking: BTreeMap<Req, (NodeId, u64, crate::proto::ByteRange)>,
    /// Of those, the ones an unlock of their owner's own (another
    /// thread's, or a close of another descriptor) was sent after: the
    /// host may run it after granting them, and so let go of the grant
    /// ([`locks`]). A subset of `locking`'s keys.
    crossed: BTreeSet<Req>,
    /// Kernel unlocks not answered yet, by file and owner: each counts in
    /// `unlocking` until it is.
    kernel_unlocks: BTreeMap<Req, (NodeId, u64)>,
    /// Those answered since the last drain.
    unlocks_over: Vec<(NodeId, u64)>,
    /// Those withdrawals, sent at the next drain.
    withdraw: Vec<Request>,
    /// Per file and lock owner, the client's own unlocks not answered
    /// yet, and the owner's lock requests held until they are: otherwise
    /// a late unlock could release a lock granted after it.
    unlocking: BTreeMap<(NodeId, u64), (u32, Vec<locks::Parked>)>,
    /// Names the next whole write ([`WriteTxn::allow_whole`]): unique for
    /// the client's life, so within every session.
    next_tag: u64,
    /// Fsyncs whose commit is not over yet: its success is answered by a
    /// Sync, not by the commit.
    fsyncs: BTreeMap<Req, Fh>,
    /// Kernel `fallocate`s running as the write or size change they
    /// amount to: answered [`Answer::Done`] whatever that answers.
    allocating: BTreeSet<Req>,
    /// Fsyncs whose commit succeeded: their Sync goes out at the next
    /// drain.
    to_sync: Vec<(Req, Fh)>,
    /// Per file, operations waiting for a commit to end, in kernel order.
    blocked: BTreeMap<NodeId, VecDeque<Blocked>>,
    in_flight: BTreeMap<RequestId, InFlight>,
    /// Requests waiting for the connection (built from ops, so a new
    /// session can rebuild them), each with the deadline it fails at if
    /// the connection does not come back in time.
    queued: VecDeque<(Purpose, Request, Instant)>,
    /// Operations waiting for a new session's inodes to be re-bound.
    deferred: VecDeque<(Req, Op)>,
    /// Where the client stands with its host.
    phase: Phase,
    /// While a new session's inodes are re-bound by path: the re-binding
    /// lookups not answered yet. Not part of [`Phase`]: the re-binding
    /// outlives a transient loss of the connection (its lookups are
    /// re-sent after the reconnect), so it is orthogonal to it.
    rebinding: Option<usize>,
    next_id: u64,
    waits: BTreeMap<WaiterId, CacheWait>,
    next_waiter: u64,
    reads: BTreeMap<Req, ReadJob>,
    /// Which node stands for a file identity (for chunk fetches).
    files: BTreeMap<FileKey, NodeId>,
    ahead: ahead::OpenAhead,
    /// When the host was last heard from ([`offline`]).
    heard_at: Instant,
    /// A `Ping` to a silent host is out.
    probing: bool,
    /// Since when the host is unreachable: no connection, or silence.
    unreachable_since: Option<Instant>,
    /// A move to a better path in progress ([`Self::move_path`]).
    moving: Option<Moving>,
    /// Directory leases and the files made under them ([`lease`]).
    leases: lease::Leases,
    /// How the host treats owners, from its hello ([`owners`]).
    owners: Option<crate::proto::Owners>,
    out: VecDeque<ClientOutput>,
}

/// Where a move to a better path stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moving {
    /// New requests wait while those in flight are answered over the old
    /// path, until `deadline` at most.
    Draining { deadline: Instant },
    /// Requests were still in flight at the deadline (a slow host
    /// operation): they flow normally until `until`, then the move drains
    /// again.
    Postponed { until: Instant },
    /// The old transport is closed and the new one opening.
    Switching,
}

impl ClientCore {
    /// A disconnected client that will prove `secret` to the host.
    pub fn new(cfg: ClientConfig, secret: TicketSecret, mut rng: Rng) -> Self {
        let conn_rng = Rng::from_u64(rng.next_u64());
        ClientCore {
            conn: Connection::new(cfg.conn.clone(), secret, conn_rng),
            cache: Cache::new(cfg.cache.clone()),
            read_ahead: ReadAhead::new(cfg.read_ahead.clone()),
            cfg,
            vfs: None,
            handles: BTreeMap::new(),
            next_fh: 1,
            writes: BTreeMap::new(),
            after_commit: BTreeMap::new(),
            lockers: BTreeMap::new(),
            granted: BTreeSet::new(),
            changed_after: BTreeMap::new(),
            locking: BTreeMap::new(),
            crossed: BTreeSet::new(),
            kernel_unlocks: BTreeMap::new(),
            unlocks_over: Vec::new(),
            withdraw: Vec::new(),
            unlocking: BTreeMap::new(),
            next_tag: 1,
            fsyncs: BTreeMap::new(),
            allocating: BTreeSet::new(),
            to_sync: Vec::new(),
            blocked: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            queued: VecDeque::new(),
            deferred: VecDeque::new(),
            phase: Phase::Connecting,
            rebinding: None,
            next_id: 1,
            waits: BTreeMap::new(),
            next_waiter: 1,
            reads: BTreeMap::new(),
            files: BTreeMap::new(),
            ahead: ahead::OpenAhead::default(),
            heard_at: Instant::ZERO,
            probing: false,
            unreachable_since: None,
            moving: None,
            owners: None,
            leases: lease::Leases::default(),
            out: VecDeque::new(),
        }
    }

    /// The inode table (once connected).
    pub fn vfs(&self) -> Option<&Vfs> {
        self.vfs.as_ref()
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The host session this client has (or last had): what the host's
    /// record locks are held under.
    pub fn session(&self) -> Option<crate::proto::SessionId> {
        self.conn.session()
    }

    /// Whether connected and authenticated.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Write transactions open (not yet committed or aborted).
    pub fn open_writes(&self) -> usize {
        self.writes.values().filter(|w| !w.is_finished()).count()
    }

    /// Connects to the host.
    pub fn connect(&mut self, now: Instant) {
        if self.phase.gave_up() {
            self.phase = Phase::Connecting;
        }
        self.conn.connect(now);
        self.drain(now);
    }

    /// Disconnects (sends Goodbye when connected).
    pub fn disconnect(&mut self, now: Instant) {
        if self.phase.gave_up() {
            self.phase = Phase::GaveUp { redial_at: None };
        }
        self.conn.disconnect(now);
        self.drain(now);
    }

    /// The transport is up; `exporter` is the TLS keying material.
    pub fn transport_established(&mut self, now: Instant, exporter: &[u8; 32]) {
        self.conn.transport_established(now, exporter);
        self.drain(now);
    }

    /// The transport failed or closed.
    pub fn transport_lost(&mut self, now: Instant) {
        self.phase.lost();
        self.conn.transport_lost(now);
        self.drain(now);
    }

    /// A better path to the host exists (a direct one found while relayed)
    /// and the transport will connect over it: move the session there
    /// without a request failing, being lost or running twice. New
    /// requests wait while those in flight are answered over the old path;
    /// once none is left the transport reconnects at once and resumes the
    /// session. No request is ever in flight across the switch, so none is
    /// sent twice: if some are still out after [`MOVE_DRAIN`] (a slow host
    /// operation), requests flow again and the move drains anew later.
    /// Only when Ready.
    pub fn move_path(&mut self, now: Instant) {
        if self.phase == Phase::Ready && self.moving.is_none() {
            self.moving = Some(Moving::Draining {
                deadline: now + MOVE_DRAIN,
            });
        }
        self.drain(now);
    }

    /// Starts the switch of a draining move once nothing is in flight or
    /// its time is up; a connection lost meanwhile ends the move.
    fn settle_move(&mut self, now: Instant) {
        let deadline = match self.moving {
            Some(Moving::Draining { deadline }) => deadline,
            Some(Moving::Postponed { until }) if now >= until => {
                let deadline = now + MOVE_DRAIN;
                self.moving = Some(Moving::Draining { deadline });
                deadline
            }
            _ => return,
        };
        if self.phase != Phase::Ready {
            self.moving = None;
            return;
        }
        // Pings and answers nobody waits for may be lost with the old path.
        let answered = self
            .in_flight
            .values()
            .all(|f| matches!(f.purpose, Purpose::Probe | Purpose::Abandoned));
        if answered {
            self.moving = Some(Moving::Switching);
            self.requeue_in_flight();
            self.conn.move_path(now);
        } else if now >= deadline {
            self.moving = Some(Moving::Postponed {
                until: now + MOVE_DRAIN,
            });
            self.flush_queue(now);
        }
    }

    /// The shell read a chunk from the disk cache.
    pub fn l2_loaded(&mut self, now: Instant, key: ChunkKey, data: Bytes, checksum: Checksum) {
        let _ = self.cache.l2_loaded(now, key, data, checksum);
        self.drain(now);
    }

    /// The shell could not read a chunk from the disk cache.
    pub fn l2_read_failed(&mut self, now: Instant, key: ChunkKey) {
        let _ = self.cache.l2_read_failed(now, key);
        self.drain(now);
    }

    /// The shell did not write a chunk to the disk cache (its queue was
    /// full, or the write failed): the chunk is no longer in it.
    pub fn l2_write_failed(&mut self, key: ChunkKey) {
        self.cache.l2_write_failed(key);
    }

    /// Chunks found in the disk cache at startup.
    pub fn load_l2(&mut self, now: Instant, found: impl IntoIterator<Item = (ChunkKey, u64)>) {
        self.cache.load_l2(now, found);
        self.drain(now);
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(vfs) = self.vfs.as_mut() {
            let _ = vfs.forget(ino, n);
        }
    }

    /// The kernel took a lookup reference on `ino` from a directory
    /// answer (readdirplus hands out entries as a lookup does, but only
    /// the shell knows which of them fit in the kernel's buffer); its
    /// forget will give it back.
    pub fn kernel_took(&mut self, ino: Ino) {
        if let Some(vfs) = self.vfs.as_mut() {
            let _ = vfs.looked_up(ino);
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self
            .in_flight
            .values()
            .map(|f| f.deadline)
            .chain(
                self.queued
                    .iter()
                    .filter(|q| !matches!(q.0, Purpose::Rebind { .. }) && !locks::never_fails(&q.1))
                    .map(|q| q.2),
            )
            .min();
        let writes = self
            .writes
            .values()
            .filter_map(WriteTxn::poll_timeout)
            .min();
        [
            requests,
            writes,
            self.conn.poll_timeout(),
            self.phase.redial_at(),
            match self.moving {
                Some(Moving::Draining { deadline: at } | Moving::Postponed { until: at }) => {
                    Some(at)
                }
                _ => None,
            },
            self.cache.poll_timeout(),
            self.ahead.poll_timeout(),
            self.watch_timeout(),
            self.leases.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires due timers: request deadlines, the connection's, the cache's
    /// fetch deadlines, the write transactions' lock refreshes, unused
    /// open-aheads.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase.redial_at().is_some_and(|at| now >= at) {
            self.connect(now);
        }
        self.conn.handle_timeout(now);
        self.cache.handle_timeout(now);
        let unused = self.ahead.expire(now);
        self.close_host_handles(now, unused);
        let nodes: Vec<NodeId> = self.writes.keys().copied().collect();
        for node in nodes {
            if let Some(w) = self.writes.get_mut(&node) {
                w.handle_timeout(now);
            }
            self.drain_write(now, node);
        }
        let late: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(f) = self.in_flight.get_mut(&id)
                && let Some(withdrawal) = locks::withdrawn_wait(&f.purpose, &f.request)
            {
                // A wait given up on, and not answered yet: its
                // withdrawal may have overtaken it, so that it waits at
                // the host still. It is withdrawn again (exactly its
                // bytes, and never beside another withdrawal of its
                // owner's, which keeps the owner's next request from
                // being taken back), and kept until the host answers it.
                f.deadline = now + self.cfg.request_timeout;
                if let Request::Withdraw { node, owner, .. } = withdrawal
                    && !self.unlocking.contains_key(&(node, owner))
                {
                    self.send_unlock(now, withdrawal);
                }
                continue;
            }
            match self.in_flight.remove(&id) {
                // A lock that waits for its holder, and an unlock, are
                // asked for again: the host keeps one waiter per request,
                // and unlocks twice as harmlessly as once.
                Some(f)
                    if locks::asked_again(&f.request)
                        && matches!(f.purpose, Purpose::Op { .. } | Purpose::Withdraw { .. }) =>
                {
                    self.send(now, f.purpose, f.request);
                }
                Some(f) => self.fail_purpose(now, f.purpose, Errno::TimedOut),
                None => {}
            }
        }
        // Waiting for a connection counts too: a lost host gives a clear
        // error within `request_timeout`, not a hang until the connection
        // machine gives up.
        // (Re-binding lookups are exempt: a new session redoes them.)
        let late = |q: &(Purpose, Request, Instant)| {
            now >= q.2 && !matches!(q.0, Purpose::Rebind { .. }) && !locks::never_fails(&q.1)
        };
        if self.queued.iter().any(late) {
            let (late, keep) = std::mem::take(&mut self.queued).into_iter().partition(late);
            self.queued = keep;
            for (purpose, _, _) in late {
                self.fail_purpose(now, purpose, Errno::TimedOut);
            }
        }
        self.watch_host(now);
        self.lease_timeout(now);
        self.drain(now);
        debug_assert!(
            self.leases.poll_timeout().is_none_or(|t| t > now),
            "a lease timer that fired is still due"
        );
    }

    // --------------------------------------------------------- plumbing

    fn reply(&mut self, req: Req, mut result: Result<Answer, Errno>) {
        if let Some(fh) = self.fsyncs.remove(&req)
            && result == Ok(Answer::Done)
        {
            // The commit is applied; the fsync answers once it is durable.
            self.to_sync.push((req, fh));
            return;
        }
        if self.allocating.remove(&req) {
            result = result.map(|_| Answer::Done);
        }
        if let Ok(answer) = &mut result {
            self.show_answer(answer);
        }
        // Failed here, not by the host's answer (which took it out of
        // `locking` first): withdraw it, or a grant nobody hears of would
        // hold the lock for as long as the session lives. (This also drops
        // what the owner held of those bytes before: its lock is in doubt
        // anyway once the host has been out of reach this long.)
        self.crossed.remove(&req);
        self.kernel_unlock_over(req);
        if let Some((node, owner, range)) = self.locking.remove(&req) {
            self.withdraw.push(Request::Unlock { node, owner, range });
        }
        self.out.push_back(ClientOutput::Reply { req, result });
    }

    fn waiter(&mut self, cont: CacheWait) -> WaiterId {
        let w = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        self.waits.insert(w, cont);
        w
    }

    /// Sends a request now, or queues it until the connection is ready.
    fn send(&mut self, now: Instant, purpose: Purpose, request: Request) {
        if self.phase.gave_up() {
            return self.fail_purpose(now, purpose, Errno::NotConn);
        }
        let Some((purpose, request)) = self.hold_for_leases(now, purpose, request) else {
            return;
        };
        let restoring = self.rebinding.is_some();
        let draining = matches!(
            self.moving,
            Some(Moving::Draining { .. } | Moving::Switching)
        );
        let waiting = !self.is_ready() || draining;
        if waiting || (restoring && !matches!(purpose, Purpose::Rebind { .. })) {
            if self.queued.len() >= self.cfg.max_queued {
                return self.fail_purpose(now, purpose, Errno::Again);
            }
            if offline::for_the_kernel(&purpose) {
                // A kernel request waits: no backoff (see `retry_now`).
                self.conn.retry_now(now);
            }
            self.queued
                .push_back((purpose, request, now + self.cfg.request_timeout));
            return;
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.out.push_back(ClientOutput::Send(ClientMessage {
            id,
            request: request.clone(),
        }));
        self.in_flight.insert(
            id,
            InFlight {
                request,
                purpose,
                deadline: now + self.cfg.request_timeout,
            },
        );
    }

    /// Runs every machine's outputs to quiescence.
    fn drain(&mut self, now: Instant) {
        self.settle_move(now);
        // Each pass handles what the previous one produced; the machines
        // only produce outputs for inputs, so this ends.
        for _ in 0..64 {
            let mut moved = self.resume_waiting(now);
            for request in std::mem::take(&mut self.withdraw) {
                moved = true;
                self.send_unlock(now, request);
            }
            for (node, owner) in std::mem::take(&mut self.unlocks_over) {
                moved = true;
                self.unlocked(now, node, owner);
            }
            for (req, fh) in std::mem::take(&mut self.to_sync) {
                moved = true;
                let purpose = Purpose::Op {
                    req,
                    op: Op::Fsync { fh },
                    part: OpPart::Sync,
                };
                self.send(now, purpose, Request::Sync);
            }
            while let Some(o) = self.conn.poll_output() {
                moved = true;
                self.on_conn(now, o);
            }
            while let Some(o) = self.cache.poll_output() {
                moved = true;
                self.on_cache(now, o);
            }
            if !moved {
                debug_assert!(
                    self.crossed.iter().all(|r| self.locking.contains_key(r)),
                    "a lock request crossed by an unlock is no longer asked for"
                );
                debug_assert!(
                    self.kernel_unlocks
                        .values()
                        .all(|k| self.unlocking.get(k).is_some_and(|(n, _)| *n > 0)),
                    "a kernel unlock on its way does not hold its owner's requests"
                );
                return;
            }
        }
    }

    fn on_conn(&mut self, now: Instant, o: ConnOutput) {
        match o {
            ConnOutput::OpenTransport => self.out.push_back(ClientOutput::OpenTransport),
            ConnOutput::CloseTransport => {
                self.phase.lost();
                // A move is not a loss: nothing is served stale meanwhile.
                if self.moving != Some(Moving::Switching) {
                    self.connection_gone(now);
                }
                self.out.push_back(ClientOutput::CloseTransport);
            }
            ConnOutput::Send(request @ Request::Hello { .. }) => {
                // Hello goes out on the new transport before anything else.
                let id = RequestId(0);
                self.out.push_back(ClientOutput::Send(ClientMessage {
                    id,
                    request: request.clone(),
                }));
                self.in_flight.insert(
                    id,
                    InFlight {
                        request,
                        purpose: Purpose::Hello,
                        deadline: now + self.cfg.request_timeout,
                    },
                );
            }
            ConnOutput::Send(request) => {
                // Goodbye: fire and forget.
                let id = RequestId(self.next_id);
                self.next_id += 1;
                self.out
                    .push_back(ClientOutput::Send(ClientMessage { id, request }));
            }
            ConnOutput::Event(ConnEvent::Ready {
                resumed,
                root,
                limits,
                ..
            }) => {
                self.owners = Some(limits.owners);
                self.on_ready(now, resumed, root)
            }
            ConnOutput::Event(ConnEvent::Lost) => {
                self.moving = None;
                self.phase.lost();
                self.requeue_in_flight();
                self.connection_gone(now);
                self.out.push_back(ClientOutput::Event(ClientEvent::Lost));
            }
            ConnOutput::Event(ConnEvent::Retrying { attempt, delay }) => {
                // The new path failed: no longer a move but a reconnect.
                if self.moving.take() == Some(Moving::Switching) {
                    self.connection_gone(now);
                }
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::Retrying {
                        attempt,
                        delay,
                    }));
            }
            ConnOutput::Event(ConnEvent::Disconnected(reason)) => {
                self.moving = None;
                self.phase = Phase::GaveUp { redial_at: None };
                self.fail_everything(now, Errno::NotConn);
                let redial_in = self.cfg.redial.filter(|_| reason.may_recover());
                self.phase = Phase::GaveUp {
                    redial_at: redial_in.map(|d| now + d),
                };
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::Disconnected {
                        reason,
                        redial_in,
                    }));
            }
        }
    }

    /// The connection dropped: what was in flight goes back to the queue,
    /// to be re-sent (or rebuilt) after the reconnect.
    fn requeue_in_flight(&mut self) {
        let flights = std::mem::take(&mut self.in_flight);
        // A wait given up on may still wait at the host, in a session
        // resumed: withdrawn there once the client is back.
        self.withdraw.extend(
            flights
                .values()
                .filter_map(|f| locks::withdrawn_wait(&f.purpose, &f.request)),
        );
        let mut back: Vec<(Purpose, Request, Instant)> = flights
            .into_values()
            .filter(|f| {
                !matches!(
                    f.purpose,
                    Purpose::Hello | Purpose::Probe | Purpose::Abandoned
                )
            })
            .map(|f| (f.purpose, f.request, f.deadline))
            .collect();
        back.extend(self.queued.drain(..));
        self.queued = back.into();
    }

    fn fail_everything(&mut self, now: Instant, errno: Errno) {
        let flights: Vec<Purpose> = std::mem::take(&mut self.in_flight)
            .into_values()
            .map(|f| f.purpose)
            .collect();
        let queued: Vec<Purpose> = self.queued.drain(..).map(|(p, _, _)| p).collect();
        for p in flights.into_iter().chain(queued) {
            self.fail_purpose(now, p, errno);
        }
        let deferred: Vec<(Req, Op)> = self.deferred.drain(..).collect();
        for (req, _) in deferred {
            self.reply(req, Err(errno));
        }
        self.cache.fail_all(now, errno);
        self.ahead.forget_answered();
    }

    fn on_ready(&mut self, now: Instant, resumed: bool, root: Attr) {
        self.phase = Phase::Ready;
        self.connection_back(now);
        let event = match self.moving.take() {
            Some(_) => ClientEvent::Moved { resumed },
            None => ClientEvent::Connected { resumed },
        };
        self.out.push_back(ClientOutput::Event(event));
        let first = self.vfs.is_none();
        if first {
            self.vfs = Some(Vfs::new(root.node, self.cfg.max_inodes));
        }
        if !resumed {
            // A new host run may number its nodes differently.
            self.cache.forget_nodes();
        }
        let _ = self.cache.fill(
            now,
            CacheKey::Attr(root.node),
            crate::cache::Value::Attr(root.clone().into()),
        );
        if first {
            self.flush_queue(now);
            // Operations the kernel sent before the first connection
            // completed wait in `deferred`: run them now, or they would
            // never be answered.
            let deferred: Vec<(Req, Op)> = self.deferred.drain(..).collect();
            for (req, op) in deferred {
                self.op(now, req, op);
            }
            return;
        }
        // Invalidations sent while we were away were lost: nothing cached
        // is trusted without revalidation (chunks revalidate cheaply by
        // version).
        self.cache.mark_all_stale(now);
        if resumed {
            let spoiled = self.ahead.spoil_all();
            self.close_host_handles(now, spoiled);
            // Same session: locks and transactions live on at the host, but
            // a lock may have expired meanwhile; confirm each at once.
            let nodes: Vec<NodeId> = self.writes.keys().copied().collect();
            for node in nodes {
                if let Some(w) = self.writes.get_mut(&node) {
                    w.revalidate_lock(now);
                }
                self.drain_write(now, node);
            }
            self.flush_queue(now);
            return;
        }
        // A new session: the host may have restarted, so node ids, locks
        // and transactions are gone; inodes are re-bound by path before any
        // queued operation runs again.
        self.leases_lost(now);
        self.record_locks_lost();
        // Lock requests held behind an unlock of the old session name its
        // node ids: asked again once inodes are re-bound, as the others
        // are, behind the unlocks that run again then (sent as they were,
        // they would lock another file, or none). Taken out before the
        // queued requests below are failed: an unlock of the client's own
        // (a withdrawal) fails there, moot in a new session, and the last
        // one of an owner's would send them at once, on their old node
        // ids and ahead of the re-binding, where an unlock the kernel
        // makes meanwhile (deferred behind it) would not cross them
        // (fs_sim, seed 129542: the grant it let go of was passed on).
        let parked: Vec<(Req, Op)> = self
            .unlocking
            .values_mut()
            .flat_map(|(_, parked)| parked.drain(..))
            .map(|(req, op, _)| (req, op))
            .collect();
        // The same for those waiting for an old transaction's commit: the
        // abort below would send them at once, on their old node ids (a
        // close's unlock, moot in a new session, goes).
        let mut behind_commits: Vec<(Req, Op)> = Vec::new();
        for waiting in self.after_commit.values_mut() {
            waiting.retain(|then| match then {
                AfterCommit::Lock {
                    kernel: Some((req, op)),
                    ..
                } => {
                    behind_commits.push((*req, op.clone()));
                    false
                }
                AfterCommit::Lock { kernel: None, .. } => false,
                _ => true,
            });
        }
        let queued: Vec<(Purpose, Request, Instant)> = self.queued.drain(..).collect();
        for (purpose, request, _) in queued {
            match purpose {
                // What it was to make durable was applied by a host run
                // that is gone, perhaps with it.
                Purpose::Op {
                    req,
                    part: OpPart::Sync,
                    ..
                } => self.reply(req, Err(Errno::Io)),
                Purpose::Op { req, op, .. } => self.deferred.push_back((req, op)),
                Purpose::Write { node, op } => {
                    if let Some(w) = self.writes.get_mut(&node) {
                        w.handle_reply(now, op, Err(Errno::Stale));
                    }
                }
                Purpose::OpenAhead { node } => {
                    // Asked of the old session: the kernel's open that
                    // joined it asks again once inodes are re-bound.
                    if let Some((req, ino)) = self.ahead.failed(node) {
                        self.deferred.push_back((req, Op::open(ino)));
                    }
                }
                Purpose::Rebind { .. } | Purpose::Forget | Purpose::Hello => {}
                other => {
                    let _ = request;
                    self.fail_purpose(now, other, Errno::Stale);
                }
            }
        }
        // In the order the kernel made them (its request ids grow).
        let mut held = parked;
        held.extend(behind_commits);
        held.sort_by_key(|(req, _)| *req);
        self.deferred.extend(held);
        // Commits the old run applied but perhaps never made durable: the
        // handles they were made through say so once.
        for h in self.handles.values_mut() {
            if std::mem::take(&mut h.unsynced) {
                h.error.get_or_insert(Errno::Io);
            }
        }
        // Writes waiting for an old transaction's commit would start a new
        // one on an old node id (another file, perhaps, in this session):
        // they fail with it instead (none of them was acknowledged).
        let blocked = std::mem::take(&mut self.blocked);
        for req in blocked.into_values().flatten().filter_map(|b| b.req()) {
            self.reply(req, Err(Errno::Stale));
        }
        let nodes: Vec<NodeId> = self.writes.keys().copied().collect();
        for node in nodes {
            if let Some(w) = self.writes.get_mut(&node) {
                w.abort(now);
            }
            self.drain_write(now, node);
        }
        if let Some(v) = self.vfs.as_mut() {
            v.unbind_nodes(root.node);
        }
        self.ahead.forget_answered();
        // The host's handles died with its session, and node ids of the
        // old session may name other files in the new one: a handle is
        // cut off until its inode is re-bound to the very same file.
        for h in self.handles.values_mut() {
            h.host = None;
            h.node = UNBOUND;
        }
        self.rebinding = Some(0);
        self.rebind_next(now);
    }

    /// Re-binds, one lookup each, the inodes whose parent is bound; when
    /// none is left, runs what waited.
    fn rebind_next(&mut self, now: Instant) {
        let pending = self.vfs.as_ref().map(Vfs::rebindable).unwrap_or_default();
        for (ino, parent, name) in pending {
            if let Some(n) = self.rebinding.as_mut() {
                *n += 1;
            }
            self.send(
                now,
                Purpose::Rebind { ino },
                Request::Lookup { parent, name },
            );
        }
        if self.rebinding == Some(0) {
            self.rebinding = None;
            self.flush_queue(now);
            let deferred: Vec<(Req, Op)> = self.deferred.drain(..).collect();
            for (req, op) in deferred {
                self.op(now, req, op);
            }
        }
    }

    /// One re-binding lookup is answered (or failed).
    fn rebind_answered(&mut self) {
        if let Some(n) = self.rebinding.as_mut() {
            *n = n.saturating_sub(1);
        }
    }

    fn flush_queue(&mut self, now: Instant) {
        let queued: Vec<(Purpose, Request, Instant)> = self.queued.drain(..).collect();
        for (purpose, request, _) in queued {
            self.send(now, purpose, request);
        }
    }

    /// Answers whoever waits on a request that will never be answered.
    fn fail_purpose(&mut self, now: Instant, purpose: Purpose, errno: Errno) {
        match purpose {
            Purpose::Hello | Purpose::Forget | Purpose::Abandoned => {}
            Purpose::Withdraw { node, owner } => self.unlocked(now, node, owner),
            Purpose::Probe => self.probing = false,
            Purpose::Fetch(key) => {
                let _ = self.cache.fail(now, &key, errno);
            }
            Purpose::DirPage { node, .. } => {
                let _ = self.cache.fail(now, &CacheKey::Dir(node), errno);
            }
            Purpose::Op { req, .. } => {
                self.reads.remove(&req);
                self.reply(req, Err(errno));
            }
            Purpose::ReadThrough { req, .. } => {
                if self.reads.remove(&req).is_some() {
                    self.reply(req, Err(errno));
                }
            }
            Purpose::OpenAhead { node } => {
                if let Some((req, _)) = self.ahead.failed(node) {
                    self.reply(req, Err(errno));
                }
            }
            Purpose::Write { node, op } => {
                if let Some(w) = self.writes.get_mut(&node) {
                    w.handle_reply(now, op, Err(errno));
                }
                self.drain_write(now, node);
            }
            Purpose::Lease { dir, step } => self.lease_failed(now, dir, step, errno),
            Purpose::Rebind { ino } => {
                self.rebind_answered();
                if let Some(v) = self.vfs.as_mut() {
                    v.unbind_gone(ino);
                }
                if self.rebinding == Some(0) {
                    self.rebind_next(now);
                }
            }
        }
        self.drain(now);
    }

    /// Closes host handles nobody holds (unused open-aheads).
    fn close_host_handles(&mut self, now: Instant, handles: Vec<crate::proto::HandleId>) {
        for handle in handles {
            self.send(now, Purpose::Forget, Request::Close { handle });
        }
    }

    fn kernel_ttl(&self, kind: crate::cache::Kind) -> Duration {
        // While the host cannot be reached the cache answers however old
        // its entries are: the kernel must not keep such an answer, or a
        // size it got then would cut the first reads of the file's newer
        // version once the host is back (fs_sim, seed 2227: a `stat`
        // answered from the cache as the link healed, a read of the new
        // version cut at the old size).
        if self.unreachable() {
            return Duration::ZERO;
        }
        self.cache.config().ttl(kind)
    }
}
