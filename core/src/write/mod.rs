//! The client's write transaction (docs/filesystem.md, "Write transactions"): lock, chunks, commit, release.
//!
//! ```text
//! Idle ─write─► Locking ─granted─► Writing ─commit, all chunks acked─► Committing ─► Complete
//!                  │ refused/timeout   │ lock lost / error / abort          │ failed
//!                  └───────────────────┴────────────────────────────► Aborted(reason)
//! ```
//!
//! Writes are buffered as [`Extents`] the moment the application makes
//! them, so `write(2)` never waits for the network. Once the exclusive lock
//! is held and the host has begun the transaction, pending extents stream
//! to the host's staging copy as pieces of up to [`MAX_WRITE_PIECE`] that
//! do not cross a multiple of it, several in flight at once. A piece is sent only if it overlaps no piece still in
//! flight, so the host may apply pieces in any order and still end with the
//! newest bytes. A truncate is a barrier: it goes out alone, after every
//! earlier piece is acknowledged.
//!
//! Commit (on flush, fsync or close) waits for the last acknowledgement,
//! sends CommitWrite and, once the host confirms (the data is fsynced and
//! renamed into place), releases the lock. Every failure aborts: the host
//! drops its staging copy and the file keeps its old content. The machine
//! keeps every uncommitted byte until the commit is confirmed, so the
//! writer reads its own writes ([`WriteTxn::overlay`]) and nothing is lost
//! if the host asks for a retry.

mod extents;

pub use extents::Extents;

use crate::Instant;
use crate::lock::{
    ClientLock, ClientLockConfig, ClientLockEvent, ClientLockOutput, ClientLockState, LockOpId,
};
use crate::proto::{
    Attr, CHUNK_SIZE, Errno, FileRef, LockKind, LockScope, LockToken, MAX_WRITE_PIECE, NodeId,
    Reply, Request, SetAttr, TxnId,
};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use thiserror::Error;

/// Pacing and bounds of a write transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteConfig {
    /// Pieces in flight at once.
    pub max_in_flight: usize,
    /// Uncommitted bytes a transaction may hold; writes beyond are refused
    /// until a commit frees them.
    pub max_dirty: usize,
    /// Bytes the host acknowledged that the transaction keeps for the
    /// writer's own reads; past this, acknowledged pieces are dropped (the
    /// host's staging copy has them) and a read of them commits first.
    pub keep_acked: usize,
    /// With no reply for this long, the transaction is aborted.
    pub stall_timeout: Duration,
    /// Small transactions commit as one request
    /// ([`WriteTxn::allow_whole`]); off, every transaction locks at its
    /// first write.
    pub whole_writes: bool,
    /// The lock machine's timing.
    pub lock: ClientLockConfig,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            max_in_flight: 16,
            max_dirty: 256 << 20,
            keep_acked: 32 << 20,
            stall_timeout: Duration::from_secs(60),
            whole_writes: true,
            lock: ClientLockConfig::default(),
        }
    }
}

/// Where a transaction is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Nothing written yet.
    Idle,
    /// Waiting for the exclusive lock (and the host's BeginWrite).
    Locking,
    /// Streaming pieces to the host.
    Writing,
    /// CommitWrite sent.
    Committing,
    /// Committed and released.
    Complete,
    /// Ended without committing; the file is unchanged.
    Aborted(AbortReason),
}

/// Why a transaction aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// The lock was refused or never granted.
    LockFailed(Errno),
    /// The lock was lost (not refreshed in time, or refused by the host).
    LockLost,
    /// The host refused a step.
    Host(Errno),
    /// No progress for `stall_timeout`.
    Stalled,
    /// The user aborted.
    Requested,
}

impl AbortReason {
    /// The errno to return to the application (from flush, fsync or close).
    pub fn errno(self) -> Errno {
        match self {
            AbortReason::LockFailed(e) | AbortReason::Host(e) => e,
            AbortReason::LockLost => Errno::Stale,
            AbortReason::Stalled => Errno::TimedOut,
            AbortReason::Requested => Errno::Io,
        }
    }
}

/// A refused command.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum WriteError {
    /// More uncommitted bytes than `max_dirty`: commit first.
    #[error("too much uncommitted data; flush first")]
    Full,
    /// The transaction is over.
    #[error("the transaction has ended ({0:?})")]
    Ended(Errno),
}

/// Names one request of this transaction; the shell maps it to a
/// [`crate::proto::RequestId`] and hands the reply back with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteOp(pub u64);

/// What the transaction asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutput {
    /// Send a request; deliver its reply with `op`.
    Send {
        /// The request's name.
        op: WriteOp,
        /// The request.
        request: Request,
    },
    /// The commit is durable at the host: new attributes.
    Committed(Attr),
    /// The transaction ended without committing.
    Aborted(AbortReason),
}

#[derive(Clone, Debug)]
enum Sent {
    Lock(LockOpId),
    Begin,
    Piece {
        start: u64,
        len: u64,
    },
    Truncate,
    Copy {
        start: u64,
        len: u64,
    },
    Commit,
    /// The whole transaction in one request ([`Request::WriteWhole`]).
    Whole,
    Abort,
}

/// A change that goes out alone, after every piece before it is
/// acknowledged and before any written after it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Barrier {
    /// Cut or extend the staged content.
    Truncate(u64),
    /// Copy from another file on the host into the staged content.
    Copy {
        from: FileRef,
        from_offset: u64,
        offset: u64,
        len: u64,
    },
}

/// One write transaction on one file.
#[derive(Debug)]
pub struct WriteTxn {
    node: NodeId,
    cfg: WriteConfig,
    state: WriteState,
    lock: ClientLock,
    txn: Option<TxnId>,
    /// Written, not yet sent.
    pending: Extents,
    /// Sent (in flight or acknowledged), not yet committed.
    sent: Extents,
    /// Ranges acknowledged and dropped (`keep_acked`), start → end:
    /// only the host's staging copy holds them.
    spilled: BTreeMap<u64, u64>,
    /// Truncations and copies not yet sent, in order.
    barriers: VecDeque<Barrier>,
    /// The file's size as the writer sees it.
    size: u64,
    /// Whether anything was written (or a size set other than the first
    /// truncation to nothing).
    written: bool,
    /// It began with the truncation of a truncating open.
    emptied_at_open: bool,
    /// When the content or size last changed here: until the commit, the
    /// file shows that as its mtime and ctime, as a local disk would.
    changed_at: Option<Instant>,
    /// Mode and times set while writing ([`WriteTxn::set_at_commit`]).
    set: SetAttr,
    /// The content version the writes build on (told to the host, which
    /// refuses the transaction if the file holds another); `None` once
    /// the transaction truncates to nothing before anything is written.
    base: Option<u64>,
    /// The base's size, while every change only appended there
    /// ([`WriteTxn::append`]): the host may then move the appends to the
    /// end of a newer version instead of refusing them
    /// ([`Request::BeginWrite`]'s `append_from`).
    appends_from: Option<u64>,
    /// [`Request::BeginWrite`] went out with `append_from`: the host may
    /// have moved the transaction to a newer version's end, and moves
    /// every piece staged in it since ([`WriteTxn::write`]).
    begun_appending: bool,
    /// An append went somewhere other than where the kernel wrote it:
    /// the kernel's pages and size for the file are wrong until its
    /// inode is invalidated ([`WriteTxn::moved_appends`]).
    appends_moved: bool,
    /// Set by `commit`: commit once everything is acknowledged.
    commit_wanted: bool,
    in_flight: BTreeMap<WriteOp, Sent>,
    /// While `Some`: the transaction has not locked yet, and if it is
    /// still small when committed it goes as one [`Request::WriteWhole`]
    /// under this tag instead of a lock, a begin, pieces and a commit
    /// ([`WriteTxn::allow_whole`]).
    whole_tag: Option<u64>,
    next_op: u64,
    last_progress: Instant,
    out: VecDeque<WriteOutput>,
}

impl WriteTxn {
    /// A transaction on `node`, whose content is version `base` (see
    /// [`Attr::version`]) of `size` bytes now.
    pub fn new(node: NodeId, size: u64, base: Option<u64>, cfg: WriteConfig) -> Self {
        WriteTxn {
            lock: ClientLock::new(LockScope::File(node), LockKind::Exclusive, cfg.lock.clone()),
            node,
            cfg,
            state: WriteState::Idle,
            txn: None,
            pending: Extents::new(),
            sent: Extents::new(),
            spilled: BTreeMap::new(),
            barriers: VecDeque::new(),
            size,
            written: false,
            emptied_at_open: false,
            changed_at: None,
            set: SetAttr::default(),
            base,
            appends_from: Some(size),
            begun_appending: false,
            appends_moved: false,
            commit_wanted: false,
            in_flight: BTreeMap::new(),
            whole_tag: None,
            next_op: 1,
            last_progress: Instant::ZERO,
            out: VecDeque::new(),
        }
    }

    /// The file.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Current state.
    pub fn state(&self) -> &WriteState {
        &self.state
    }

    /// The file's size including uncommitted writes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Mode and times set while writing, to go with the commit.
    pub fn pending_set(&self) -> &SetAttr {
        &self.set
    }

    /// When a write, truncation or copy last changed the file here, if
    /// one did.
    pub fn changed_at(&self) -> Option<Instant> {
        self.changed_at
    }

    /// Mode and times (never a size: that is [`Self::set_size`]) to give
    /// the new content at commit, answered at once instead of committing
    /// first and setting them after: a program that writes a file and
    /// then sets its times (`tar`, `cp -p`, `rsync`) costs one round trip
    /// instead of two. Later values replace earlier ones. Refused once
    /// the commit is under way: the caller then sets them after it.
    pub fn set_at_commit(&mut self, set: SetAttr) -> Result<(), WriteError> {
        if let Some(e) = self.ended() {
            return Err(WriteError::Ended(e));
        }
        debug_assert!(set.size.is_none(), "a size goes through set_size");
        self.set = SetAttr {
            size: None,
            mode: set.mode.or(self.set.mode),
            atime: set.atime.or(self.set.atime),
            mtime: set.mtime.or(self.set.mtime),
            uid: None,
            gid: None,
        };
        // A change to commit even with no byte written.
        self.written = true;
        Ok(())
    }

    /// Uncommitted bytes held.
    pub fn dirty(&self) -> usize {
        self.pending.bytes() + self.sent.bytes()
    }

    /// Lets the transaction wait to lock until it is committed, and then,
    /// if what it holds is small (one run of at most [`MAX_WRITE_PIECE`]
    /// bytes, after at most one size change), commit it as one
    /// [`Request::WriteWhole`] named `tag` (unique within the session,
    /// and higher than any sent before it: the client names it again as
    /// it commits): one round trip instead of four for the small files
    /// most programs write. A host that finds the file locked by another answers EAGAIN,
    /// and the transaction then waits for the lock as any other.
    pub fn allow_whole(&mut self, tag: u64) {
        if self.state == WriteState::Idle && self.cfg.whole_writes {
            self.whole_tag = Some(tag);
        }
    }

    /// What a whole write would send, if the transaction may and is
    /// small enough: the size change first, then one run of bytes.
    fn whole(&self) -> Option<(Option<u64>, u64, Bytes)> {
        self.whole_tag?;
        if self.state != WriteState::Idle || !self.sent.is_empty() || !self.spilled.is_empty() {
            return None;
        }
        let truncate = match self.barriers.iter().collect::<Vec<_>>()[..] {
            [] => None,
            [Barrier::Truncate(size)] => Some(*size),
            _ => return None,
        };
        // Large, or a good part of the buffer: the ordinary way, which
        // streams pieces while the writer goes on.
        if self.pending.bytes() > MAX_WRITE_PIECE || self.dirty() * 4 > self.cfg.max_dirty {
            return None;
        }
        let (offset, data) = if self.pending.is_empty() {
            (0, Bytes::new())
        } else {
            // Runs with gaps between them go the ordinary way.
            self.pending.contiguous()?
        };
        Some((truncate, offset, data))
    }

    /// Starts locking unless the transaction may still go whole.
    fn start_unless_whole(&mut self, now: Instant) {
        if self.whole().is_none() {
            self.whole_tag = None;
            self.start(now);
        }
    }

    /// Whether the transaction has ended (Complete or Aborted).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, WriteState::Complete | WriteState::Aborted(_))
    }

    /// Finished, with nothing in flight, nothing left to send and no lock
    /// held or asked for: forgetting it loses nothing.
    pub fn is_spent(&self) -> bool {
        self.is_finished()
            && self.in_flight.is_empty()
            && self.out.is_empty()
            && self.lock.state() == ClientLockState::Unlocked
    }

    fn ended(&self) -> Option<Errno> {
        match &self.state {
            WriteState::Aborted(r) => Some(r.errno()),
            WriteState::Complete | WriteState::Committing => Some(Errno::Inval),
            _ => None,
        }
    }

    /// Whether all the transaction holds is the truncation of a
    /// truncating open ([`Self::empty_at_open`]), with nothing written
    /// since.
    pub fn only_emptied(&self) -> bool {
        self.emptied_at_open && !self.written
    }

    /// The file this transaction writes became content version `base`
    /// at the host before the transaction asked anything of it (a file
    /// made under a directory lease, applied meanwhile): its writes build
    /// on that version, and the host refuses them if a local program
    /// changed the file since. A truncation to nothing keeps `None`: its
    /// result does not depend on what was there.
    pub fn rebase(&mut self, base: u64) {
        let begun = self.in_flight.values().any(|s| !matches!(s, Sent::Lock(_)));
        if !begun && self.txn.is_none() && !self.emptied_at_open {
            self.base = Some(base);
        }
    }

    /// `O_TRUNC`: the file's content goes, as the transaction's first
    /// change.
    pub fn empty_at_open(&mut self, now: Instant) -> Result<(), WriteError> {
        self.set_size(now, 0)?;
        self.emptied_at_open = true;
        Ok(())
    }

    /// Whether the commit is under way (no more writes join this
    /// transaction).
    pub fn is_committing(&self) -> bool {
        matches!(self.state, WriteState::Committing)
    }

    /// The application wrote `data` at `offset`.
    pub fn write(&mut self, now: Instant, offset: u64, data: Bytes) -> Result<(), WriteError> {
        if self.begun_appending && self.appends_from.is_some() {
            // The host may have moved this transaction to the end of a
            // newer version, and would move this write with it: it would
            // land elsewhere than the program wrote it (fs_sim, seed
            // 16895). A rewrite mixed with appends on a version that
            // moved on is refused, as when it is mixed before the begin;
            // the host refuses a truncate in a moved transaction, so the
            // first write that is not an append restates the size: ESTALE
            // if the transaction was moved, a no-op if not.
            self.barriers.push_back(Barrier::Truncate(self.size));
        }
        self.put(now, offset, data)?;
        self.appends_from = None;
        Ok(())
    }

    /// The application wrote `data` through a handle opened with
    /// `O_APPEND`, which the kernel sent for `offset` (its own idea of the
    /// file's end, which may be older than this client's): it goes at
    /// the end of the file as this transaction sees it. The transaction
    /// stays an append while it only appends, and the host then places
    /// it at the end of whatever version the file holds when it begins
    /// ([`Request::BeginWrite`]), so two clients' appends never overwrite
    /// each other.
    pub fn append(&mut self, now: Instant, offset: u64, data: Bytes) -> Result<(), WriteError> {
        let end = self.size;
        self.put(now, end, data)?;
        if offset != end {
            self.appends_moved = true;
        }
        Ok(())
    }

    /// Whether an append went elsewhere than the kernel sent it, or the
    /// host moved the appends to a newer version's end: the kernel's
    /// cached pages and size of the file are then wrong, and the caller
    /// invalidates its inode once the transaction has committed, when
    /// the pages it wrote are no longer in flight. (A move by zero bytes
    /// is not seen here; the commit that made the newer version told
    /// this client already.)
    pub fn moved_appends(&self, committed: &Attr) -> bool {
        // The host commits the size it is sent, moved only with appends.
        self.appends_moved || committed.size != self.size
    }

    /// What [`Request::BeginWrite`] says of appends: only a transaction
    /// that builds on a version and has only appended to it may move.
    fn append_from(&self) -> Option<u64> {
        self.appends_from.filter(|_| self.base.is_some())
    }

    fn put(&mut self, now: Instant, offset: u64, data: Bytes) -> Result<(), WriteError> {
        if let Some(e) = self.ended() {
            return Err(WriteError::Ended(e));
        }
        if self.dirty() + data.len() > self.cfg.max_dirty {
            return Err(WriteError::Full);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(WriteError::Ended(Errno::FBig))?;
        self.size = self.size.max(end);
        self.written = true;
        self.changed_at = Some(now);
        self.pending.write(offset, data);
        self.start_unless_whole(now);
        self.pump(now);
        Ok(())
    }

    /// The application set the file's size (truncate or extend).
    pub fn set_size(&mut self, now: Instant, size: u64) -> Result<(), WriteError> {
        if let Some(e) = self.ended() {
            return Err(WriteError::Ended(e));
        }
        // Even to the size it has: a size set after an append began is
        // not an append ([`WriteTxn::write`]).
        let restate = self.begun_appending && self.appends_from.is_some();
        self.appends_from = None;
        let from_empty =
            size == 0 && self.pending.is_empty() && self.sent.is_empty() && self.txn.is_none();
        if from_empty {
            // Nothing written yet and nothing kept: what the file holds
            // does not matter to the result (`O_TRUNC`), whatever version
            // it is by the time the transaction begins.
            self.base = None;
        }
        self.pending.truncate(size);
        self.sent.truncate(size);
        // A barrier either way: cutting, so that bytes beyond read as zeros
        // if the file grows again; extending, so that the staging copy
        // holds every size change the commit's size stands for (the commit
        // then only restates it, and the simulation can replay a
        // transaction from its staging operations alone).
        if size != self.size || from_empty || restate {
            self.barriers.push_back(Barrier::Truncate(size));
        }
        // Emptying a file that holds only the open's truncation changes
        // nothing: a bare FLUSH still commits nothing.
        let empties_the_emptied = size == 0 && self.size == 0 && self.only_emptied();
        if !(from_empty || empties_the_emptied) {
            self.written = true;
        }
        // Only a real change: a truncating open of a file already empty
        // (a create with O_TRUNC) moves no times.
        if size != self.size {
            self.changed_at = Some(now);
        }
        self.size = size;
        self.start_unless_whole(now);
        self.pump(now);
        Ok(())
    }

    /// `copy_file_range` into this file: `len` bytes of `from` (another
    /// file on the host, with nothing of this client's uncommitted in
    /// it) at `from_offset` go to `offset`, copied by the host into the
    /// staged content. What was written there before is replaced; the
    /// copied bytes live only in the host's staging copy, so the writer
    /// reading them commits first, as for spilled bytes.
    pub fn copy(
        &mut self,
        now: Instant,
        from: FileRef,
        from_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), WriteError> {
        if let Some(e) = self.ended() {
            return Err(WriteError::Ended(e));
        }
        let end = offset
            .checked_add(len)
            .ok_or(WriteError::Ended(Errno::FBig))?;
        if len == 0 {
            return Ok(());
        }
        self.appends_from = None;
        self.pending.cut(offset, end);
        self.sent.cut(offset, end);
        self.size = self.size.max(end);
        self.written = true;
        self.changed_at = Some(now);
        self.barriers.push_back(Barrier::Copy {
            from,
            from_offset,
            offset,
            len,
        });
        self.whole_tag = None;
        self.start(now);
        self.pump(now);
        Ok(())
    }

    /// Flush, fsync or close: commit when everything is acknowledged.
    pub fn commit(&mut self, now: Instant) -> Result<(), WriteError> {
        if let Some(e) = self.ended() {
            return Err(WriteError::Ended(e));
        }
        self.commit_wanted = true;
        if let (Some(tag), Some((truncate, offset, data))) = (self.whole_tag, self.whole()) {
            self.state = WriteState::Committing;
            self.last_progress = now;
            let request = Request::WriteWhole {
                node: self.node,
                base: self.base,
                append_from: self.append_from(),
                tag,
                truncate,
                offset,
                data,
                size: self.size,
                set: self.set,
            };
            self.send(Sent::Whole, request);
            return Ok(());
        }
        self.whole_tag = None;
        self.start(now);
        self.pump(now);
        Ok(())
    }

    /// After a reconnect that resumed the session: the lock may have
    /// expired at the host while we were away, so confirm it now with a
    /// refresh instead of waiting for the scheduled one (a refusal aborts
    /// the transaction as a lost lock).
    pub fn revalidate_lock(&mut self, now: Instant) {
        if self.lock.state() == ClientLockState::Held && self.lock.refresh_now(now).is_ok() {
            self.drain_lock(now);
        }
    }

    /// Give up: the file keeps its old content.
    pub fn abort(&mut self, now: Instant) {
        if !self.is_finished() {
            self.fail(now, AbortReason::Requested);
        }
    }

    /// Whether an acknowledgement on its way will free buffer room (a
    /// piece is in flight and acknowledged bytes are past `keep_acked`):
    /// a write that found the buffer full can wait for it rather than
    /// force a commit.
    pub fn frees_on_ack(&self) -> bool {
        self.sent.bytes() > self.cfg.keep_acked
            && self
                .in_flight
                .values()
                .any(|s| matches!(s, Sent::Piece { .. }))
    }

    /// Whether some of `[start, end)` was written, acknowledged and
    /// dropped, or copied by the host (or is about to be): only the host's
    /// staging copy has it, so the writer must commit before it reads
    /// there.
    pub fn spilled_overlaps(&self, start: u64, end: u64) -> bool {
        let overlaps = |s: u64, len: u64| s < end && s.saturating_add(len) > start;
        self.spilled
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start)
            || self.barriers.iter().any(|b| match b {
                Barrier::Copy { offset, len, .. } => overlaps(*offset, *len),
                Barrier::Truncate(_) => false,
            })
            || self.in_flight.values().any(|s| match s {
                Sent::Copy { start, len } => overlaps(*start, *len),
                _ => false,
            })
    }

    /// Records `[start, end)` as spilled, merged with its neighbours.
    fn spill(&mut self, mut start: u64, mut end: u64) {
        self.sent.cut(start, end);
        if let Some((&s, &e)) = self.spilled.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let joined: Vec<(u64, u64)> = self
            .spilled
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in joined {
            self.spilled.remove(&s);
            end = end.max(e);
        }
        self.spilled.insert(start, end);
    }

    /// What the writer sees at `offset`: `buf` (read from the host or the
    /// cache) with uncommitted bytes laid over it.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        self.sent.overlay(offset, buf);
        self.pending.overlay(offset, buf);
    }

    fn start(&mut self, now: Instant) {
        if self.state != WriteState::Idle {
            return;
        }
        self.state = WriteState::Locking;
        self.last_progress = now;
        // Queue behind other writers: a busy file is a wait, not an error.
        if self.lock.acquire(now, true).is_err() {
            self.fail(now, AbortReason::LockFailed(Errno::NoLck));
        }
        self.drain_lock(now);
    }

    fn send(&mut self, what: Sent, request: Request) {
        let op = WriteOp(self.next_op);
        self.next_op += 1;
        self.in_flight.insert(op, what);
        self.out.push_back(WriteOutput::Send { op, request });
    }

    fn token(&self, now: Instant) -> Option<LockToken> {
        self.lock.token(now)
    }

    /// Sends what may go now: pieces that overlap nothing in flight, a
    /// truncate once nothing is in flight, the commit once all is done.
    fn pump(&mut self, now: Instant) {
        if self.state != WriteState::Writing {
            return;
        }
        let Some(txn) = self.txn else {
            return;
        };
        loop {
            let busy = self
                .in_flight
                .values()
                .any(|s| matches!(s, Sent::Truncate | Sent::Copy { .. } | Sent::Commit));
            if busy {
                return;
            }
            if self.barriers.front().is_some() {
                // Wait for every piece before it; pending bytes written
                // after a truncate are already trimmed to it, and those
                // written before a copy over them were cut.
                if self.in_flight.is_empty() {
                    match self.barriers.pop_front() {
                        Some(Barrier::Truncate(size)) => {
                            self.send(Sent::Truncate, Request::TruncateWrite { txn, size });
                        }
                        Some(Barrier::Copy {
                            from,
                            from_offset,
                            offset,
                            len,
                        }) => self.send(
                            Sent::Copy { start: offset, len },
                            Request::CopyWrite {
                                txn,
                                from,
                                from_offset,
                                offset,
                                len,
                            },
                        ),
                        None => {}
                    }
                }
                return;
            }
            if self.in_flight.len() >= self.cfg.max_in_flight {
                return;
            }
            let flying: Vec<(u64, u64)> = self
                .in_flight
                .values()
                .filter_map(|s| match s {
                    Sent::Piece { start, len } => Some((*start, start + len)),
                    _ => None,
                })
                .collect();
            let piece = self
                .pending
                .take_piece(MAX_WRITE_PIECE as u64, MAX_WRITE_PIECE, |s, e| {
                    flying.iter().all(|&(fs, fe)| e <= fs || s >= fe)
                });
            match piece {
                Some((start, data)) => {
                    let index = start / CHUNK_SIZE as u64;
                    let offset = (start % CHUNK_SIZE as u64) as u32;
                    let len = data.len() as u64;
                    self.sent.write(start, data.clone());
                    self.send(
                        Sent::Piece { start, len },
                        Request::WriteChunk {
                            txn,
                            index,
                            offset,
                            data,
                        },
                    );
                }
                None => break,
            }
        }
        if self.commit_wanted
            && self.pending.is_empty()
            && self.barriers.is_empty()
            && self.in_flight.is_empty()
        {
            // The lock must still be ours when the host checks the token;
            // the host's fencing makes that final.
            if self.token(now).is_none() {
                return self.fail(now, AbortReason::LockLost);
            }
            self.state = WriteState::Committing;
            let (size, set) = (self.size, self.set);
            self.send(Sent::Commit, Request::CommitWrite { txn, size, set });
        }
    }

    /// A reply to request `op`.
    pub fn handle_reply(&mut self, now: Instant, op: WriteOp, result: Result<Reply, Errno>) {
        let Some(what) = self.in_flight.remove(&op) else {
            return;
        };
        self.last_progress = now;
        match (what, result) {
            (Sent::Lock(lop), result) => {
                self.lock.handle_reply(now, lop, result);
                self.drain_lock(now);
            }
            (Sent::Begin, Ok(Reply::WriteBegun { txn })) if self.state == WriteState::Locking => {
                self.txn = Some(txn);
                self.state = WriteState::Writing;
            }
            (Sent::Piece { start, len }, Ok(Reply::Done)) => {
                // A long write holds what is not yet acknowledged, not the
                // whole file: acknowledged bytes past `keep_acked` leave
                // memory, so no commit is forced midway (each would copy
                // the file into the next staging copy).
                if self.sent.bytes() > self.cfg.keep_acked {
                    self.spill(start, start + len);
                }
            }
            (Sent::Truncate, Ok(Reply::Done)) => {}
            // Only the staging copy holds the copied bytes.
            (Sent::Copy { start, len }, Ok(Reply::Done)) => self.spill(start, start + len),
            (Sent::Whole, Ok(Reply::Attr(attr))) => {
                // Nothing was locked: nothing to release.
                self.state = WriteState::Complete;
                self.pending = Extents::new();
                self.barriers.clear();
                self.out.push_back(WriteOutput::Committed(attr));
            }
            (Sent::Whole, Err(Errno::Again)) => {
                // Another holds the file's lock: wait for it as any
                // transaction does, then commit what is held.
                self.whole_tag = None;
                self.state = WriteState::Idle;
                self.start(now);
            }
            (Sent::Commit, Ok(Reply::Attr(attr))) => {
                self.state = WriteState::Complete;
                self.pending = Extents::new();
                self.sent = Extents::new();
                // The release goes out before the news: whoever hears of
                // the commit may start the file's next transaction, whose
                // lock request must not overtake this release.
                let _ = self.lock.release(now);
                self.drain_lock(now);
                self.out.push_back(WriteOutput::Committed(attr));
            }
            (Sent::Abort, _) => {}
            (_, Err(e)) => return self.fail(now, AbortReason::Host(e)),
            (_, Ok(_)) => return self.fail(now, AbortReason::Host(Errno::Io)),
        }
        self.pump(now);
    }

    fn drain_lock(&mut self, now: Instant) {
        while let Some(out) = self.lock.poll_output() {
            match out {
                ClientLockOutput::Send { op, request } => self.send(Sent::Lock(op), request),
                ClientLockOutput::Event(ClientLockEvent::Granted { token, .. }) => {
                    if self.state == WriteState::Locking {
                        let (node, base) = (self.node, self.base);
                        let append_from = self.append_from();
                        self.begun_appending = append_from.is_some();
                        self.send(
                            Sent::Begin,
                            Request::BeginWrite {
                                node,
                                token,
                                base,
                                append_from,
                            },
                        );
                    }
                }
                ClientLockOutput::Event(ClientLockEvent::Refreshed { .. }) => {}
                ClientLockOutput::Event(ClientLockEvent::Lost { .. }) => {
                    if !self.is_finished() {
                        self.fail(now, AbortReason::LockLost);
                    }
                }
                ClientLockOutput::Event(ClientLockEvent::TimedOut) => {
                    self.fail(now, AbortReason::LockFailed(Errno::TimedOut));
                }
                ClientLockOutput::Event(ClientLockEvent::Denied(e)) => {
                    self.fail(now, AbortReason::LockFailed(e));
                }
            }
        }
    }

    fn fail(&mut self, now: Instant, reason: AbortReason) {
        if self.is_finished() {
            return;
        }
        self.state = WriteState::Aborted(reason);
        if let Some(txn) = self.txn {
            self.send(Sent::Abort, Request::AbortWrite { txn });
        }
        // Replies to what is still in flight no longer matter, except the
        // lock's: the lock machine must see its release through.
        self.in_flight
            .retain(|_, s| matches!(s, Sent::Lock(_) | Sent::Abort));
        if self.lock.state() != ClientLockState::Unlocked {
            let _ = self.lock.release(now);
        }
        self.drain_lock(now);
        self.out.push_back(WriteOutput::Aborted(reason));
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stall = match self.state {
            // Locking is bounded by the lock machine's own wait timeout.
            WriteState::Writing | WriteState::Committing if !self.in_flight.is_empty() => {
                Some(self.last_progress + self.cfg.stall_timeout)
            }
            _ => None,
        };
        [stall, self.lock.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers: the lock's refresh and expiry, the stall limit.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.lock.handle_timeout(now);
        self.drain_lock(now);
        let stalled = matches!(self.state, WriteState::Writing | WriteState::Committing)
            && !self.in_flight.is_empty()
            && now >= self.last_progress + self.cfg.stall_timeout;
        if stalled {
            self.fail(now, AbortReason::Stalled);
        }
        self.pump(now);
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<WriteOutput> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests;
