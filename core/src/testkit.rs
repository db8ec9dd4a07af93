//! A whole Wormhole in memory: one host on a [`MemFs`] disk and any number
//! of mount clients, joined by a simulated network, all driven by one
//! simulated clock. Deterministic: the same seed and the same calls give
//! the same run.
//!
//! It is what the client's unit tests and the simulations in `tests/` are
//! built on. The network carries each message after a seeded delay, so
//! replies to concurrent requests arrive in any order (QUIC runs each
//! request on its own stream); a message is never lost or duplicated while
//! its connection lives. Partitions and crashes are what break
//! connections, as in real life.

use crate::client::{Answer, ClientConfig, ClientCore, ClientEvent, ClientOutput, Op, Req};
use crate::conn::auth::{self, TicketSecret};
use crate::host::memfs::MemFs;
use crate::host::{
    ConnId, FsOk, FsOp, FsOpId, FsResult, HostConfig, HostEvent, HostIo, HostServer,
};
use crate::lock::LockInfo;
use crate::proto::{
    Attr, ClientMessage, Errno, FileKey, HostMessage, LockToken, NodeId, Reply, SessionId,
};
use crate::{Instant, Rng};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The ticket secret of every simulated host.
pub const SECRET: TicketSecret = TicketSecret([0x5e; 32]);

/// One simulated mount.
#[derive(Debug)]
pub struct SimClient {
    /// The client machine.
    pub core: ClientCore,
    /// Its connection to the host, while it has one.
    pub conn: Option<ConnId>,
    /// Answers to kernel requests, by request.
    pub answers: BTreeMap<Req, Result<Answer, Errno>>,
    /// Its disk cache.
    pub l2: BTreeMap<crate::cache::ChunkKey, (Bytes, crate::proto::Checksum)>,
    /// Kernel invalidations received.
    pub invalidations: usize,
    /// The inodes of those that were `InvalidateInode`, in order.
    pub invalidated: Vec<crate::vfs::Ino>,
    /// Messages sent to the host.
    pub sent: u64,
    /// Kernel replies produced, counted before [`Self::answers`] keeps
    /// the last one per request (so a double reply stays visible).
    pub replies: u64,
    /// What the client told its user, in order.
    pub events: Vec<crate::client::ClientEvent>,
    /// Answers given while the client found its host unreachable (from
    /// its cache, past the TTL; see `client/offline.rs`).
    pub offline_answers: BTreeSet<Req>,
}

/// One file operation the host had its disk execute, kept (when
/// [`World::record_fs`] is on) so a simulation can judge the host's
/// decisions against what it saw at that very moment, not later: was a
/// staging write fenced by a live lock, what did a commit make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsRecord {
    /// When it ran.
    pub at: Instant,
    /// When the host issued it (earlier than `at` if a worker ran it
    /// late); what the record says of its transaction is as of then.
    pub issued_at: Instant,
    /// The operation.
    pub op: FsOp,
    /// For a staging operation: the transaction's owner, file and fencing
    /// token as the host knew them when it issued the operation (`None`
    /// if it no longer knew the transaction).
    pub txn: Option<(SessionId, NodeId, LockToken)>,
    /// The lock that token names, as the host's lock table held it.
    pub lock: Option<LockInfo>,
    /// The transaction's file's ancestors (for subtree coverage).
    pub ancestors: Vec<NodeId>,
    /// For a commit: the identity of the file it replaced.
    pub replaced: Option<FileKey>,
    /// For a commit: the content of the file it replaced, right before.
    pub replaced_content: Option<Vec<u8>>,
    /// For a successful StageBegin: the identity and content of the file
    /// the transaction is staged from.
    pub staged_from: Option<(FileKey, Vec<u8>)>,
    /// For a staging operation: the client whose session owns the
    /// transaction.
    pub writer: Option<usize>,
    /// For a successful commit: the file's content right after it.
    pub committed: Option<Vec<u8>>,
    /// What the disk answered.
    pub result: FsResult,
}

#[derive(Clone, Debug)]
enum Wire {
    ToHost(ConnId, Bytes),
    ToClient(usize, ConnId, Bytes),
    /// A file operation a host worker thread starts now.
    FsRun(FsOpId, FsOp, Option<Box<Issued>>),
    /// A worker's result reaching the host's loop.
    FsDone(FsOpId, FsResult),
    /// The host's file watcher reporting a local program's change.
    Watched(crate::host::RelPath),
    /// The host learns that a connection its client left for a new path
    /// has closed (late: the close travels the old path).
    Closed(ConnId),
}

/// The simulated world.
#[derive(Debug)]
pub struct World {
    /// Simulated time.
    pub now: Instant,
    /// The host machine.
    pub host: HostServer,
    /// The host's disk.
    pub disk: MemFs,
    /// The mounts.
    pub clients: Vec<SimClient>,
    host_cfg: HostConfig,
    client_cfg: ClientConfig,
    rng: Rng,
    /// Largest network delay; each message takes a seeded delay up to it.
    pub max_delay: Duration,
    /// Clients cut off from the host.
    pub partitioned: BTreeSet<usize>,
    /// Clients cut off without their connection noticing (a partition
    /// inside QUIC's idle timeout): every message between them and the
    /// host is lost.
    pub silenced: BTreeSet<usize>,
    /// Clients whose connect attempt waits for the host.
    dialing: BTreeSet<usize>,
    /// Clients moving to a new path: their next closed connection lingers
    /// at the host (what is on its way there still arrives) until its
    /// close gets there.
    moving: BTreeSet<usize>,
    /// Moves to a new path made.
    pub path_moves: u64,
    /// Moves that ended in a new session although the host ran on: the
    /// client's locks and transactions were lost (a bug: the old
    /// connection's late close must not cost the session).
    pub sessions_lost_by_moves: u64,
    /// The host run each moving client started its move in.
    move_runs: BTreeMap<usize, u64>,
    /// Whether the host process is running.
    pub host_up: bool,
    /// Percent of file operations the host hands to its worker pool, as
    /// the real host does with those that wait for the disk: each runs
    /// after a seeded delay and its result reaches the host's loop after
    /// another (both up to `max_delay`), so operations run and complete
    /// in any order, and a result may describe the disk as it was before
    /// results already handled (0 by default: in order, at once).
    pub fs_late_percent: u64,
    wire: BTreeMap<(Instant, u64), Wire>,
    /// Clients whose messages to the host wait in [`Self::held_back`]
    /// until [`Self::let_through`]: a stream that lost packets while
    /// the ones sent after it got through.
    pub holding: BTreeSet<usize>,
    held_back: Vec<Wire>,
    seq: u64,
    conns: BTreeMap<ConnId, usize>,
    next_conn: u64,
    next_req: u64,
    host_runs: u64,
    /// Record every executed file operation in [`Self::fs_log`] (off by
    /// default: unit tests need no log).
    pub record_fs: bool,
    /// Executed file operations, oldest first, while [`Self::record_fs`];
    /// the reader drains it.
    pub fs_log: Vec<FsRecord>,
    /// Which client each host session belongs to.
    sessions: BTreeMap<SessionId, usize>,
    /// Record every file attribute the host's messages bring to a client
    /// in [`Self::attr_log`] (off by default).
    pub record_attrs: bool,
    /// Attributes delivered to clients, oldest first, while
    /// [`Self::record_attrs`]; the reader drains it.
    pub attr_log: Vec<AttrDelivery>,
}

/// File attributes the host's message brought to a client: what a cache
/// entry's age is measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrDelivery {
    /// When the client received them.
    pub at: Instant,
    /// The client.
    pub client: usize,
    /// The node they describe.
    pub node: NodeId,
    /// Their content version.
    pub version: u64,
}

impl World {
    /// A running host on `disk` and `clients` connected mounts. What
    /// `disk` holds was there before the host started: it is durable.
    pub fn new(
        seed: u64,
        mut disk: MemFs,
        clients: usize,
        host_cfg: HostConfig,
        client_cfg: ClientConfig,
    ) -> Self {
        let _ = disk.execute(crate::host::FsOp::Sync);
        let mut rng = Rng::from_u64(seed);
        let host = HostServer::new(host_cfg.clone(), SECRET, Rng::from_u64(rng.next_u64()));
        let mut w = World {
            now: Instant::ZERO,
            host,
            disk,
            clients: Vec::new(),
            host_cfg,
            client_cfg,
            rng,
            max_delay: Duration::from_millis(5),
            partitioned: BTreeSet::new(),
            silenced: BTreeSet::new(),
            dialing: BTreeSet::new(),
            moving: BTreeSet::new(),
            path_moves: 0,
            sessions_lost_by_moves: 0,
            move_runs: BTreeMap::new(),
            host_up: true,
            fs_late_percent: 0,
            wire: BTreeMap::new(),
            holding: BTreeSet::new(),
            held_back: Vec::new(),
            seq: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            next_req: 1,
            host_runs: 1,
            record_fs: false,
            fs_log: Vec::new(),
            sessions: BTreeMap::new(),
            record_attrs: false,
            attr_log: Vec::new(),
        };
        w.host.start(w.now);
        w.settle();
        for _ in 0..clients {
            w.add_client();
        }
        w
    }

    /// Adds a mount and connects it.
    pub fn add_client(&mut self) -> usize {
        let core = ClientCore::new(
            self.client_cfg.clone(),
            SECRET,
            Rng::from_u64(self.rng.next_u64()),
        );
        self.clients.push(SimClient {
            core,
            conn: None,
            answers: BTreeMap::new(),
            l2: BTreeMap::new(),
            invalidations: 0,
            invalidated: Vec::new(),
            sent: 0,
            replies: 0,
            events: Vec::new(),
            offline_answers: BTreeSet::new(),
        });
        let c = self.clients.len() - 1;
        let now = self.now;
        self.clients[c].core.connect(now);
        self.settle();
        c
    }

    fn post(&mut self, wire: Wire) {
        let delay = self.rng.below(self.max_delay.as_nanos() as u64 + 1);
        self.seq += 1;
        self.wire
            .insert((self.now + Duration::from_nanos(delay), self.seq), wire);
    }

    /// Sends a kernel operation from client `c`; returns its request.
    pub fn op(&mut self, c: usize, op: Op) -> Req {
        let req = Req(self.next_req);
        self.next_req += 1;
        let now = self.now;
        self.clients[c].core.op(now, req, op);
        self.pump();
        req
    }

    /// Runs `op` and waits (in simulated time) for its answer.
    pub fn call(&mut self, c: usize, op: Op) -> Result<Answer, Errno> {
        let req = self.op(c, op);
        self.wait(c, req)
    }

    /// Waits for the answer to `req`, for up to ten simulated minutes.
    pub fn wait(&mut self, c: usize, req: Req) -> Result<Answer, Errno> {
        let limit = self.now + Duration::from_secs(600);
        loop {
            if let Some(a) = self.clients[c].answers.remove(&req) {
                return a;
            }
            if !self.step(limit) {
                panic!("request {req:?} of client {c} never answered");
            }
        }
    }

    /// The answer to `req`, if it has come.
    pub fn answer(&mut self, c: usize, req: Req) -> Option<Result<Answer, Errno>> {
        self.clients[c].answers.remove(&req)
    }

    /// Lets time pass, delivering and firing everything due.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.step(end) {}
        self.now = self.now.max(end);
        self.fire(self.now);
    }

    /// Runs until nothing is in flight on the wire or due before `limit`.
    pub fn settle(&mut self) {
        let limit = self.now + Duration::from_secs(1);
        while self.step(limit) {}
    }

    /// Advances to the next event (message or timer) no later than
    /// `limit`; false if there is none.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.pump();
        let next_wire = self.wire.keys().next().map(|(t, _)| *t);
        let next_timer = self.next_timer();
        let next = [next_wire, next_timer].into_iter().flatten().min();
        let Some(at) = next.filter(|&t| t <= limit) else {
            return false;
        };
        self.now = self.now.max(at);
        if next_wire == Some(at) {
            if let Some((_, w)) = self.wire.pop_first() {
                self.deliver(w);
            }
        } else {
            self.fire(at);
        }
        self.pump();
        true
    }

    fn next_timer(&self) -> Option<Instant> {
        let host = if self.host_up {
            self.host.poll_timeout()
        } else {
            None
        };
        self.clients
            .iter()
            .filter_map(|c| c.core.poll_timeout())
            .chain(host)
            .min()
    }

    fn fire(&mut self, now: Instant) {
        if self.host_up {
            self.host.handle_timeout(now);
        }
        for c in &mut self.clients {
            c.core.handle_timeout(now);
        }
    }

    fn deliver(&mut self, w: Wire) {
        let now = self.now;
        match w {
            Wire::ToHost(conn, _) | Wire::ToClient(_, conn, _)
                if self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| self.silenced.contains(c)) => {}
            Wire::ToHost(conn, bytes) => {
                if self.host_up && self.conns.contains_key(&conn) {
                    // A message that does not decode fails alone.
                    let _ = self.host.handle_message(now, conn, &bytes);
                }
            }
            Wire::FsRun(op, fs, issued) => {
                let watched = watched_paths(&fs);
                let result = match issued {
                    None => self.disk.execute(fs),
                    Some(issued) => {
                        let record = execute_recorded(*issued, &mut self.disk, now, fs);
                        let result = record.result.clone();
                        self.fs_log.push(record);
                        result
                    }
                };
                for path in reported(watched, &result) {
                    self.post(Wire::Watched(path));
                }
                self.post(Wire::FsDone(op, result));
            }
            Wire::FsDone(op, result) => {
                if self.host_up {
                    self.host.handle_fs(now, op, result);
                }
            }
            Wire::Watched(path) => {
                if self.host_up {
                    self.host.local_change(now, &path);
                }
            }
            Wire::Closed(conn) => {
                if self.conns.remove(&conn).is_some() && self.host_up {
                    self.host.conn_closed(now, conn);
                }
            }
            Wire::ToClient(c, conn, bytes) => {
                if self.clients[c].conn == Some(conn) {
                    if self.record_attrs {
                        self.log_attrs(c, &bytes);
                    }
                    let _ = self.clients[c].core.handle_message_bytes(now, &bytes);
                }
            }
        }
    }

    fn log_attrs(&mut self, client: usize, bytes: &[u8]) {
        let Ok(HostMessage::Reply {
            result: Ok(reply), ..
        }) = HostMessage::decode(bytes)
        else {
            return;
        };
        let mut attrs: Vec<&Attr> = match &reply {
            Reply::Attr(a)
            | Reply::Opened { attr: a, .. }
            | Reply::Made { attr: a, .. }
            | Reply::HelloAck { root: a, .. } => {
                vec![a]
            }
            Reply::DirPage { entries, .. } => entries.iter().map(|e| &e.attr).collect(),
            Reply::Applied(results) => results.iter().filter_map(|r| r.as_ref().ok()).collect(),
            _ => Vec::new(),
        };
        attrs.extend(reply.dirs());
        for a in attrs {
            self.attr_log.push(AttrDelivery {
                at: self.now,
                client,
                node: a.node,
                version: a.version,
            });
        }
    }

    /// Carries out every output until all machines are quiet.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            if self.host_up {
                let mut io = SimHostIo {
                    now: self.now,
                    disk: &mut self.disk,
                    log: self.record_fs.then_some(&mut self.fs_log),
                    conns: &self.conns,
                    sessions: &mut self.sessions,
                    rng: &mut self.rng,
                    late_percent: self.fs_late_percent,
                    late: Vec::new(),
                    wire: Vec::new(),
                    watched: Vec::new(),
                };
                moved |= self.host.pump(self.now, &mut io) > 0;
                let (late, wire) = (io.late, io.wire);
                for path in io.watched {
                    self.post(Wire::Watched(path));
                }
                for (op, fs, issued) in late {
                    self.post(Wire::FsRun(op, fs, issued.map(Box::new)));
                }
                for (conn, msg) in wire {
                    match msg {
                        Some(msg) => {
                            if let Some(&c) = self.conns.get(&conn) {
                                let bytes = encode_host(&msg);
                                self.post(Wire::ToClient(c, conn, bytes));
                            }
                        }
                        None => self.drop_conn(conn),
                    }
                }
            }
            for c in 0..self.clients.len() {
                while let Some(o) = self.clients[c].core.poll_output() {
                    moved = true;
                    self.client_output(c, o);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn client_output(&mut self, c: usize, o: ClientOutput) {
        let now = self.now;
        match o {
            ClientOutput::Reply { req, result } => {
                if self.clients[c].core.host_unreachable() {
                    self.clients[c].offline_answers.insert(req);
                }
                self.clients[c].replies += 1;
                self.clients[c].answers.insert(req, result);
            }
            ClientOutput::Send(msg) => {
                self.clients[c].sent += 1;
                if let Some(conn) = self.clients[c].conn {
                    let bytes = msg.encode().unwrap_or_default();
                    if self.holding.contains(&c) {
                        self.held_back.push(Wire::ToHost(conn, bytes));
                    } else {
                        self.post(Wire::ToHost(conn, bytes));
                    }
                }
            }
            ClientOutput::OpenTransport => {
                if !self.host_up || self.partitioned.contains(&c) {
                    // Nothing answers yet: the handshake goes on (QUIC
                    // sends its first packet again and again) until the
                    // host is back, or the client's connect times out.
                    self.dialing.insert(c);
                    return;
                }
                self.open_transport(c);
            }
            ClientOutput::CloseTransport if self.moving.remove(&c) => {
                self.dialing.remove(&c);
                if let Some(conn) = self.clients[c].conn.take() {
                    self.path_moves += 1;
                    self.post(Wire::Closed(conn));
                }
            }
            ClientOutput::CloseTransport => {
                self.dialing.remove(&c);
                if let Some(conn) = self.clients[c].conn.take() {
                    self.conns.remove(&conn);
                    if self.host_up {
                        self.host.conn_closed(now, conn);
                    }
                }
            }
            ClientOutput::L2Write {
                key,
                data,
                checksum,
            } => {
                self.clients[c].l2.insert(key, (data, checksum));
            }
            ClientOutput::L2Delete { key } => {
                self.clients[c].l2.remove(&key);
            }
            ClientOutput::L2Read { key } => match self.clients[c].l2.get(&key).cloned() {
                Some((data, checksum)) => self.clients[c].core.l2_loaded(now, key, data, checksum),
                None => self.clients[c].core.l2_read_failed(now, key),
            },
            ClientOutput::InvalidateInode { ino } => {
                self.clients[c].invalidations += 1;
                self.clients[c].invalidated.push(ino);
            }
            ClientOutput::InvalidateEntry { .. } => {
                self.clients[c].invalidations += 1;
            }
            ClientOutput::Event(e) => {
                if let ClientEvent::Moved { resumed } = e
                    && self.move_runs.remove(&c) == Some(self.host_runs)
                    && !resumed
                {
                    self.sessions_lost_by_moves += 1;
                }
                self.clients[c].events.push(e);
            }
        }
    }

    /// Both ends notice a connection is gone.
    fn drop_conn(&mut self, conn: ConnId) {
        let now = self.now;
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if self.host_up {
            self.host.conn_closed(now, conn);
        }
        if self.clients[c].conn == Some(conn) {
            self.clients[c].conn = None;
            self.clients[c].core.transport_lost(now);
        }
    }

    /// A better path to the host appears for client `c` (a direct one
    /// while relayed): the client moves its session there. The old
    /// connection closes at the client at once, while the host keeps it
    /// until the close reaches it (after a seeded delay, like every
    /// message): what was on its way still arrives, and the new
    /// connection's Hello may come first.
    pub fn move_path(&mut self, c: usize) {
        let now = self.now;
        if self.clients[c].core.is_ready() {
            self.moving.insert(c);
            self.move_runs.insert(c, self.host_runs);
        }
        self.clients[c].core.move_path(now);
        self.pump();
    }

    /// Sends now the messages [`Self::holding`] kept back.
    pub fn let_through(&mut self) {
        for wire in std::mem::take(&mut self.held_back) {
            self.post(wire);
        }
        self.pump();
    }

    /// Cuts client `c` off: its connection drops now and reconnects fail
    /// until [`Self::heal`].
    pub fn partition(&mut self, c: usize) {
        self.partitioned.insert(c);
        if let Some(conn) = self.clients[c].conn {
            self.drop_conn(conn);
        }
        self.pump();
    }

    /// Ends every partition. A client's connect attempt under way gets
    /// through; the others reconnect at their next attempt.
    pub fn heal(&mut self) {
        self.partitioned.clear();
        self.silenced.clear();
        self.finish_dialing();
    }

    /// Connect attempts that waited for the host (down, or cut off) and
    /// can reach it now complete.
    fn finish_dialing(&mut self) {
        if !self.host_up {
            return;
        }
        let ready: Vec<usize> = self
            .dialing
            .iter()
            .copied()
            .filter(|c| !self.partitioned.contains(c))
            .collect();
        for c in ready {
            self.dialing.remove(&c);
            self.open_transport(c);
        }
        self.pump();
    }

    /// Client `c`'s transport reaches the host.
    fn open_transport(&mut self, c: usize) {
        let now = self.now;
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let exporter = *blake3::hash(&conn.0.to_le_bytes()).as_bytes();
        self.conns.insert(conn, c);
        self.clients[c].conn = Some(conn);
        self.host.conn_opened(now, conn, exporter);
        self.clients[c].core.transport_established(now, &exporter);
    }

    /// A local program changed `path` on the host's disk: the host's
    /// watcher reports it after a seeded delay (up to `max_delay`), so
    /// requests may meet the change before the host hears of it. A crash
    /// loses the report (the restart's scan sees the disk anew).
    pub fn local_change(&mut self, path: crate::host::RelPath) {
        self.post(Wire::Watched(path));
    }

    /// Cuts client `c` off without its connection noticing: what it sends
    /// and what is sent to it is lost until [`Self::heal`].
    pub fn silence(&mut self, c: usize) {
        self.silenced.insert(c);
    }

    /// The host process dies: its disk loses what was not durable, every
    /// connection drops.
    pub fn crash_host(&mut self) {
        self.host_up = false;
        // The disk keeps what was synced and some prefix of what came
        // after, any prefix as likely as another.
        let keep = self.rng.below(self.disk.unsynced() as u64 + 1) as usize;
        self.disk.crash(keep);
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.drop_conn(conn);
        }
        self.wire.clear();
        self.pump();
    }

    /// The host starts again on the same disk, with a new identity for
    /// nothing but its sessions (the ticket stays valid).
    pub fn restart_host(&mut self) {
        self.host_runs += 1;
        let seed = self.rng.next_u64();
        self.host = HostServer::new(self.host_cfg.clone(), SECRET, Rng::from_u64(seed));
        self.host_up = true;
        let now = self.now;
        self.host.start(now);
        self.pump();
        self.finish_dialing();
    }

    /// Client `c` dies: the host sees its connection close.
    pub fn crash_client(&mut self, c: usize) {
        self.dialing.remove(&c);
        self.moving.remove(&c);
        if let Some(conn) = self.clients[c].conn.take() {
            self.conns.remove(&conn);
            if self.host_up {
                let now = self.now;
                self.host.conn_closed(now, conn);
            }
        }
        let core = ClientCore::new(
            self.client_cfg.clone(),
            SECRET,
            Rng::from_u64(self.rng.next_u64()),
        );
        self.clients[c] = SimClient {
            core,
            conn: None,
            answers: BTreeMap::new(),
            l2: BTreeMap::new(),
            invalidations: 0,
            invalidated: Vec::new(),
            sent: 0,
            replies: 0,
            events: Vec::new(),
            offline_answers: BTreeSet::new(),
        };
        self.pump();
    }

    /// The kernel forgets every lookup of `ino` at client `c`.
    pub fn forget_all(&mut self, c: usize, ino: crate::vfs::Ino) {
        let n = self.clients[c]
            .core
            .vfs()
            .and_then(|v| v.get(ino))
            .map_or(0, |i| i.nlookup);
        self.clients[c].core.forget(ino, n);
    }

    /// Proof that the secret is what the clients use (for tests of refusal).
    pub fn proof(exporter: &[u8; 32]) -> [u8; 32] {
        auth::proof(&SECRET, exporter)
    }
}

/// The host's side of the simulated world: its disk, its log, and what it
/// sends, carried out (in order) once its pump returns.
struct SimHostIo<'w> {
    now: Instant,
    disk: &'w mut MemFs,
    log: Option<&'w mut Vec<FsRecord>>,
    conns: &'w BTreeMap<ConnId, usize>,
    sessions: &'w mut BTreeMap<SessionId, usize>,
    rng: &'w mut Rng,
    /// See [`World::fs_late_percent`].
    late_percent: u64,
    /// Operations handed to the worker pool.
    late: Vec<(FsOpId, FsOp, Option<Issued>)>,
    /// Messages to send (`Some`) and connections to close (`None`).
    wire: Vec<(ConnId, Option<HostMessage>)>,
    /// Paths the host's own changes touched, which its watcher reports
    /// back as it does a local program's ([`watched_paths`], [`reported`]).
    watched: Vec<crate::host::RelPath>,
}

/// The paths a watcher may report after `fs` runs, each with the item of
/// a batch it belongs to: inotify cannot tell the host's own changes from
/// anyone else's. [`reported`] keeps those the result says happened.
fn watched_paths(fs: &FsOp) -> Vec<(crate::host::RelPath, Option<usize>)> {
    match fs {
        FsOp::Create { path, .. }
        | FsOp::Mkdir { path, .. }
        | FsOp::Symlink { path, .. }
        | FsOp::Mknod { path, .. }
        | FsOp::SetAttr { path, .. }
        | FsOp::StageCommit { path, .. }
        | FsOp::Unlink { path }
        | FsOp::Rmdir { path } => vec![(path.clone(), None)],
        FsOp::Rename { from, to } | FsOp::Link { path: from, to, .. } => {
            vec![(from.clone(), None), (to.clone(), None)]
        }
        // A lease's batch: each create, unlink and rmdir is reported as
        // it happens, often before the batch's result is back, and so is
        // the directory's own mode or times set.
        FsOp::Batch { dir, ops } => ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let path = match op {
                    crate::host::BatchOp::Create(f) => dir.join(&f.name),
                    crate::host::BatchOp::Unlink { name, .. }
                    | crate::host::BatchOp::Rmdir { name, .. } => dir.join(name),
                    crate::host::BatchOp::SetAttr(_) => dir.clone(),
                };
                (path, Some(i))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The watched paths of an operation that gave `result`: none if it
/// failed, and of a batch only the items that succeeded.
fn reported(
    watched: Vec<(crate::host::RelPath, Option<usize>)>,
    result: &FsResult,
) -> Vec<crate::host::RelPath> {
    let ok = match result {
        Ok(FsOk::InDirs { ok, .. }) => &**ok,
        Ok(ok) => ok,
        Err(_) => return Vec::new(),
    };
    watched
        .into_iter()
        .filter(|(_, item)| match (item, ok) {
            (None, _) => true,
            (Some(i), FsOk::Batch(items)) => items.get(*i).is_some_and(|r| r.is_ok()),
            (Some(_), _) => false,
        })
        .map(|(path, _)| path)
        .collect()
}

impl HostIo for SimHostIo<'_> {
    fn fs(&mut self, host: &HostServer, op: FsOpId, fs: FsOp) -> Option<FsResult> {
        let issued = self
            .log
            .is_some()
            .then(|| Issued::now(host, self.sessions, self.now, &fs));
        // (Held locks never wait: the shell runs them at once, in order,
        // as `FsOp::HoldLocks` asks.)
        let at_once = matches!(fs, FsOp::HoldLocks { .. });
        if !at_once && self.late_percent > 0 && self.rng.below(100) < self.late_percent {
            self.late.push((op, fs, issued));
            return None;
        }
        let watched = watched_paths(&fs);
        let result = match (self.log.as_deref_mut(), issued) {
            (Some(log), Some(issued)) => {
                let record = execute_recorded(issued, self.disk, self.now, fs);
                let result = record.result.clone();
                log.push(record);
                result
            }
            _ => self.disk.execute(fs),
        };
        self.watched.extend(reported(watched, &result));
        Some(result)
    }

    fn send(&mut self, conn: ConnId, msg: HostMessage) {
        self.wire.push((conn, Some(msg)));
    }

    fn close(&mut self, conn: ConnId) {
        self.wire.push((conn, None));
    }

    fn event(&mut self, event: HostEvent) {
        if let HostEvent::Authenticated { conn, session, .. } = event
            && let Some(&c) = self.conns.get(&conn)
        {
            self.sessions.insert(session, c);
        }
    }
}

/// What the host knew of a file operation's transaction when it issued
/// the operation (a worker may run it later, when the host knows less).
#[derive(Clone, Debug)]
struct Issued {
    at: Instant,
    txn: Option<(SessionId, NodeId, LockToken)>,
    lock: Option<LockInfo>,
    ancestors: Vec<NodeId>,
    writer: Option<usize>,
}

impl Issued {
    fn now(
        host: &HostServer,
        sessions: &BTreeMap<SessionId, usize>,
        now: Instant,
        fs: &FsOp,
    ) -> Self {
        let txn_id = match fs {
            FsOp::StageBegin { txn, .. }
            | FsOp::StageWrite { txn, .. }
            | FsOp::StageCopy { txn, .. }
            | FsOp::StageTruncate { txn, .. }
            | FsOp::StageCommit { txn, .. }
            | FsOp::StageAbort { txn } => Some(*txn),
            _ => None,
        };
        let txn = txn_id.and_then(|t| host.txn_info(t));
        Issued {
            at: now,
            txn,
            lock: txn.and_then(|(_, _, token)| host.locks().lock(token)),
            ancestors: txn
                .map(|(_, node, _)| host.nodes().ancestors(node))
                .unwrap_or_default(),
            writer: txn.and_then(|(session, _, _)| sessions.get(&session).copied()),
        }
    }
}

/// Executes `fs` on the disk and records it with what the host knew of
/// its transaction when it issued it.
fn execute_recorded(issued: Issued, disk: &mut MemFs, now: Instant, fs: FsOp) -> FsRecord {
    let commit_path = match &fs {
        FsOp::StageCommit { path, .. } => Some(path.clone()),
        _ => None,
    };
    // Stat has no side effect on the disk: it only reads the identity
    // the commit is about to replace.
    let replaced = commit_path.as_ref().and_then(|path| {
        match disk.execute(FsOp::Stat { path: path.clone() }) {
            Ok(FsOk::Attr(a)) => Some(a.key),
            _ => None,
        }
    });
    let replaced_content = commit_path
        .as_ref()
        .and_then(|path| disk.read_file(path).map(<[u8]>::to_vec));
    let begin_path = match &fs {
        FsOp::StageBegin { path, .. } => Some(path.clone()),
        _ => None,
    };
    let begin_content = begin_path
        .as_ref()
        .and_then(|path| disk.read_file(path).map(<[u8]>::to_vec));
    let result = disk.execute(fs.clone());
    let staged_from = match (&result, begin_content) {
        (Ok(FsOk::Attr(a)), Some(content)) if begin_path.is_some() => Some((a.key, content)),
        _ => None,
    };
    let committed = match (&commit_path, &result) {
        (Some(path), Ok(_)) => disk.read_file(path).map(<[u8]>::to_vec),
        _ => None,
    };
    FsRecord {
        at: now,
        issued_at: issued.at,
        op: fs,
        txn: issued.txn,
        lock: issued.lock,
        ancestors: issued.ancestors,
        replaced,
        replaced_content,
        staged_from,
        writer: issued.writer,
        committed,
        result,
    }
}

fn encode_host(msg: &HostMessage) -> Bytes {
    msg.encode().unwrap_or_default()
}

/// Decodes what a client sent (for tests inspecting traffic).
pub fn decode_client(bytes: &[u8]) -> Option<ClientMessage> {
    ClientMessage::decode(bytes).ok()
}
