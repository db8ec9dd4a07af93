//! Advisory record locks (`fcntl`, `flock`) for the kernel: held at the
//! host ([`crate::lock::range`]), so programs on every client exclude each
//! other (docs/filesystem.md, "Advisory locks").
//!
//! Data follows the locks, as on NFS, or a database two mounts share
//! would be corrupted: every lock request waits for the file's writes to
//! be committed first (an unlock publishes what was written under the
//! lock), and a lock taken drops what this client cached of the file (the
//! kernel's pages and attributes, and the version its open handles read)
//! so its holder reads every write committed before it.
//!
//! The client remembers which owners may hold locks on which file, so a
//! close releases them (POSIX: closing any descriptor of a file releases
//! the process's locks on it; a `flock` goes with its open file) without
//! a round trip for the files nobody locked.

use super::{AfterCommit, Answer, ClientCore, Fh, OpPart, Purpose, Req};
use crate::Instant;
use crate::proto::{ByteRange, Errno, Invalidation, NodeId, OpenFor, Reply, Request};
use crate::vfs::Ino;
use std::collections::BTreeSet;

use super::Op;

/// A lock request held until the client's own unlocks of its owner on
/// its file are answered: the kernel's request, and the host's.
pub(super) type Parked = (Req, Op, Request);

/// Owners that may hold locks on files, at most: a program that takes
/// locks under more owners than this gets ENOLCK.
pub(super) const MAX_LOCKERS: usize = 4096;

impl ClientCore {
    /// [`Op::SetLock`] and [`Op::GetLock`].
    pub(super) fn record_lock(&mut self, now: Instant, req: Req, op: &Op) -> Result<(), Errno> {
        let (fh, owner) = match op {
            Op::SetLock { fh, owner, .. } | Op::GetLock { fh, owner, .. } => (*fh, *owner),
            _ => return Err(Errno::Inval),
        };
        let node = self.handles.get(&fh).ok_or(Errno::BadF)?.node;
        if node == super::UNBOUND {
            return Err(Errno::Stale);
        }
        let request = match *op {
            Op::GetLock { range, kind, .. } => {
                check(range)?;
                let request = Request::TestLock {
                    node,
                    owner,
                    range,
                    kind,
                };
                self.send(now, Purpose::kernel_op(req, op), request);
                return Ok(());
            }
            Op::SetLock {
                range,
                kind: Some(kind),
                wait,
                ..
            } => {
                check(range)?;
                if !self.lockers.contains_key(&(node, owner)) && self.lockers.len() >= MAX_LOCKERS {
                    return Err(Errno::NoLck);
                }
                self.lockers.insert((node, owner), fh);
                self.locking.insert(req, (node, owner, range));
                Request::SetLock {
                    node,
                    owner,
                    range,
                    kind,
                    wait,
                }
            }
            Op::SetLock {
                range, kind: None, ..
            } => {
                check(range)?;
                if range == ByteRange::WHOLE {
                    self.lockers.remove(&(node, owner));
                    self.granted.remove(&(node, owner));
                    self.let_go_of_lost_locks(fh, owner);
                }
                // Crossed and counted from now, not from when it is sent
                // after the file's commit: a grant that comes meanwhile
                // is asked for again too, and the owner's lock requests
                // wait, behind it, until the kernel has its answer. (A
                // request run again in a new session comes here again,
                // perhaps on another node: counted once, under the node
                // it is sent for.)
                self.cross(node, owner, range);
                match self.kernel_unlocks.insert(req, (node, owner)) {
                    Some(before) if before == (node, owner) => {}
                    before => {
                        self.unlocks_over.extend(before);
                        self.unlocking.entry((node, owner)).or_default().0 += 1;
                    }
                }
                Request::Unlock { node, owner, range }
            }
            _ => return Err(Errno::Inval),
        };
        // After the file's writes, whatever became of them (a loss is for
        // the writers' next flush to report).
        let then = AfterCommit::Lock {
            kernel: Some((req, op.clone())),
            request,
        };
        self.commit_then(now, node, then)
    }

    /// A close by `owner` of a descriptor of `node`, or the release of
    /// handle `fh`: the record locks the owner holds on the file, or those
    /// taken through the handle (on whatever node it was bound to then),
    /// go once the commit queued before this is over.
    pub(super) fn release_locks(
        &mut self,
        now: Instant,
        node: Option<NodeId>,
        owner: Option<u64>,
        fh: Option<Fh>,
    ) -> Result<(), Errno> {
        let gone: Vec<(NodeId, u64)> = self
            .lockers
            .iter()
            .filter(|&(&(n, o), &f)| (Some(n) == node && Some(o) == owner) || Some(f) == fh)
            .map(|(&k, _)| k)
            .collect();
        for (node, owner) in gone {
            self.lockers.remove(&(node, owner));
            self.granted.remove(&(node, owner));
            // On a local disk the close came before any grant that comes
            // while its commit runs (`record_lock`'s unlocks, the same).
            self.cross(node, owner, ByteRange::WHOLE);
            let then = AfterCommit::Lock {
                kernel: None,
                request: Request::Unlock {
                    node,
                    owner,
                    range: ByteRange::WHOLE,
                },
            };
            self.commit_then(now, node, then)?;
        }
        Ok(())
    }

    /// The kernel interrupted request `req`: a signal reached the program
    /// waiting for it. A lock request that still waits (for another
    /// owner's lock, for the file's commit, or for the host) ends with
    /// EINTR, as `F_SETLKW` and `flock` do on a local disk, and is
    /// withdrawn at the host (as a wait the host took too long for is,
    /// see [`ClientCore::reply`]); a grant already on its way is let go
    /// when it comes. Any other request goes on: each ends by itself, and
    /// FUSE lets a file system finish an interrupted request.
    pub fn interrupt(&mut self, now: Instant, req: Req) {
        if !self.locking.contains_key(&req) {
            return;
        }
        let ours = |p: &Purpose| matches!(p, Purpose::Op { req: r, .. } if *r == req);
        let mut sent = false;
        for f in self.in_flight.values_mut() {
            if ours(&f.purpose) {
                f.purpose = Purpose::Abandoned;
                sent = true;
            }
        }
        // Not sent yet: never sent (granted later, it would be let go
        // with an unlock of its bytes, and so of what the owner holds).
        self.queued.retain(|q| !ours(&q.0));
        self.deferred.retain(|(r, _)| *r != req);
        for (_, parked) in self.unlocking.values_mut() {
            parked.retain(|(r, _, _)| *r != req);
        }
        // Waiting behind the file's commit: sent as nothing when it ends.
        let unhook = |then: &mut AfterCommit| {
            if let AfterCommit::Lock { kernel, .. } = then
                && kernel.as_ref().is_some_and(|(r, _)| *r == req)
            {
                *kernel = None;
            }
        };
        for waiting in self.after_commit.values_mut() {
            waiting.iter_mut().for_each(unhook);
        }
        for queue in self.blocked.values_mut() {
            for b in queue.iter_mut() {
                if let super::Blocked::Commit { then, .. } = b {
                    unhook(then);
                }
            }
        }
        // Taken back, not unlocked: what the owner already held of those
        // bytes (a read lock it waited to upgrade) stays held, as an
        // interrupted F_SETLKW leaves it on a local disk.
        self.crossed.remove(&req);
        if let Some((node, owner, range)) = self.locking.remove(&req)
            && sent
        {
            self.send_unlock(now, Request::Withdraw { node, owner, range });
        }
        self.reply(req, Err(Errno::Intr));
        self.drain(now);
    }

    /// A new session holds none of the old one's record locks, and the
    /// programs that took them were not told (POSIX has no way to): the
    /// handles they were taken through refuse writes from now on (see
    /// `Handle::lock_lost`). Otherwise a program that read a file under
    /// its lock, lost the lock to a host restart while another client
    /// took and changed the file, would write back what it computed from
    /// the old content over the other's change: the update the lock
    /// exists to prevent (fs_sim's invariant 14). Linux's NFS client
    /// does the same with a lock it cannot reclaim. Only owners that were
    /// granted a lock count (a request refused or given up took nothing
    /// to lose), including one whose further request still waits (SQLite
    /// holding SHARED while it asks for RESERVED: what it read under the
    /// lost SHARED lock is as stale as any). A waiting owner keeps its
    /// place in `lockers`: its request is asked again in the new session
    /// as it is, and what it is granted there it must release at close.
    pub(super) fn record_locks_lost(&mut self) {
        let waiting: BTreeSet<(NodeId, u64)> =
            self.locking.values().map(|&(n, o, _)| (n, o)).collect();
        let granted = std::mem::take(&mut self.granted);
        let known: Vec<((NodeId, u64), Fh)> =
            self.lockers.iter().map(|(&key, &fh)| (key, fh)).collect();
        for (key, fh) in known {
            if granted.contains(&key)
                && let Some(h) = self.handles.get_mut(&fh)
            {
                h.lock_lost = Some(key.1);
            }
            if !waiting.contains(&key) {
                self.lockers.remove(&key);
            }
        }
    }

    /// Lock owner `owner` let go of its locks through handle `fh` (an
    /// unlock of the whole file, or a close): what it writes next it no
    /// longer writes under a lock it lost.
    pub(super) fn let_go_of_lost_locks(&mut self, fh: Fh, owner: u64) {
        if let Some(h) = self.handles.get_mut(&fh)
            && h.lock_lost == Some(owner)
        {
            h.lock_lost = None;
        }
    }

    /// Writes through handle `fh` are refused: a lock taken through it
    /// was lost ([`Self::record_locks_lost`]).
    pub(super) fn fenced(&self, fh: Fh) -> Result<(), Errno> {
        match self.handles.get(&fh) {
            Some(h) if h.lock_lost.is_some() => Err(Errno::Io),
            _ => Ok(()),
        }
    }

    /// The commit before a lock request is over: send it, unless the
    /// owner's lock request must wait for an unlock of the client's own
    /// on the file to be answered first.
    pub(super) fn send_lock(&mut self, now: Instant, kernel: Option<(Req, Op)>, request: Request) {
        let Some((req, op)) = kernel else {
            return self.send_unlock(now, request);
        };
        if let Request::SetLock { node, owner, .. } = request
            && let Some((_, parked)) = self.unlocking.get_mut(&(node, owner))
        {
            parked.push((req, op, request));
            return;
        }
        if let Request::SetLock { node, owner, .. } = request {
            // A grant still on its way for an earlier request of this
            // owner that nobody waits for any more (interrupted, or given
            // up) would be let go with an unlock when it comes, and the
            // unlock would release what this request is granted (fs_sim,
            // seed 7378 of the signals' workload). The owner's newest
            // request decides what it holds; the earlier grant is kept,
            // and goes with the owner's locks at its unlock or close.
            let earlier = |p: &Purpose, r: &Request| {
                matches!(p, Purpose::Abandoned)
                    && matches!(r, Request::SetLock { node: n, owner: o, .. } if *n == node && *o == owner)
            };
            for f in self.in_flight.values_mut() {
                if earlier(&f.purpose, &f.request) {
                    f.purpose = Purpose::Forget;
                }
            }
            for q in &mut self.queued {
                if earlier(&q.0, &q.1) {
                    q.0 = Purpose::Forget;
                }
            }
        }
        self.send(now, Purpose::kernel_op(req, &op), request);
    }

    /// Sends an unlock of the client's own (a close's, a withdrawal), or
    /// the withdrawal of an interrupted wait: the owner's lock requests on
    /// the file wait until it is answered (a late withdrawal would
    /// otherwise take back the request a restarted `F_SETLKW` sends).
    pub(super) fn send_unlock(&mut self, now: Instant, request: Request) {
        let (Request::Unlock { node, owner, .. } | Request::Withdraw { node, owner, .. }) = request
        else {
            return;
        };
        if let Request::Unlock { range, .. } = request {
            self.cross(node, owner, range);
        }
        self.unlocking.entry((node, owner)).or_default().0 += 1;
        self.send(now, Purpose::Withdraw { node, owner }, request);
    }

    /// An unlock of `owner`'s `range` of `node` is made while requests of
    /// the owner for those bytes are out: the host may grant one before
    /// the unlock runs there, and the unlock then lets go of the grant,
    /// where on a local disk the unlock came first and let go of nothing
    /// (`a_grant_that_crosses_another_threads_unlock_still_holds`). Such a
    /// grant is asked for again once the unlock is answered
    /// ([`Self::on_lock_reply`]).
    fn cross(&mut self, node: NodeId, owner: u64, range: ByteRange) {
        for (&r, &(n, o, asked)) in &self.locking {
            if (n, o) == (node, owner) && asked.overlaps(&range) {
                self.crossed.insert(r);
            }
        }
    }

    /// A kernel unlock is answered (by the host, or failed): the owner's
    /// lock requests held for it may go ([`Self::unlocked`], at the next
    /// drain).
    pub(super) fn kernel_unlock_over(&mut self, req: Req) {
        if let Some(key) = self.kernel_unlocks.remove(&req) {
            self.unlocks_over.push(key);
        }
    }

    /// One of the client's own unlocks was answered (or is moot: a new
    /// session holds no locks): the owner's held lock requests go once
    /// none is left.
    pub(super) fn unlocked(&mut self, now: Instant, node: NodeId, owner: u64) {
        let Some((n, _)) = self.unlocking.get_mut(&(node, owner)) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return;
        }
        let parked = self
            .unlocking
            .remove(&(node, owner))
            .map(|(_, p)| p)
            .unwrap_or_default();
        for (req, op, request) in parked {
            self.send_lock(now, Some((req, op)), request);
        }
    }

    /// The host's answer to a lock request: a lock taken drops what is
    /// cached of the file and re-points the open handles at its current
    /// version before the kernel hears of it.
    pub(super) fn on_lock_reply(
        &mut self,
        now: Instant,
        req: Req,
        op: &Op,
        part: OpPart,
        result: Result<Reply, Errno>,
    ) -> Option<Result<Answer, Errno>> {
        let Op::SetLock { fh, kind, wait, .. } = op else {
            return Some(match result {
                Ok(Reply::LockTest(held)) => Ok(Answer::Lock(held)),
                Ok(_) => Err(Errno::Io),
                Err(e) => Err(e),
            });
        };
        // The host answered: nothing to withdraw.
        let (locking, crossed) = match part {
            OpPart::First => (self.locking.remove(&req), self.crossed.remove(&req)),
            _ => (None, false),
        };
        match (part, result) {
            (OpPart::First, Ok(Reply::Done))
                if crossed
                    && self
                        .handles
                        .get(fh)
                        .is_some_and(|h| h.node != super::UNBOUND)
                    && let (Some(asked), Some(kind)) = (locking, *kind) =>
            {
                // Granted, but an unlock of the owner's own sent after the
                // request may have let go of it at the host (a test in the
                // world, `a_grant_that_crosses_another_threads_unlock_still_holds`):
                // asked again, after that unlock, so that what the program
                // is told it holds is held.
                self.reask(now, req, op, asked, kind)
            }
            (OpPart::First, Ok(Reply::Done)) if kind.is_some() => {
                let Some(node) = self.handles.get(fh).map(|h| h.node) else {
                    // Its handle was released while it waited (another
                    // thread closed the file): nobody can unlock it now.
                    if let Some((node, owner, range)) = locking {
                        self.send_unlock(now, Request::Unlock { node, owner, range });
                    }
                    return Some(Ok(Answer::Done));
                };
                if node == super::UNBOUND {
                    // Cut off from its file by a new session while it
                    // waited: it cannot read what the lock protects, so
                    // it does not get the lock either.
                    if let Some((node, owner, range)) = locking {
                        self.send_unlock(now, Request::Unlock { node, owner, range });
                    }
                    return Some(Err(Errno::Stale));
                }
                if let Some((node, owner, _)) = locking {
                    self.granted.insert((node, owner));
                }
                self.cache.invalidate(now, node, Invalidation::Data);
                // The file's inode, and any its handles here were set
                // aside on (`Vfs::set_aside`): every one of them reads the
                // current version once the lock is held (repointed below,
                // at each grant: a set-aside handle is not followed by
                // later commits, but a program that locks to read, as
                // SQLite does, locks again before its next read).
                let mut inos: BTreeSet<Ino> = self
                    .handles
                    .values()
                    .filter(|h| h.node == node)
                    .map(|h| h.ino)
                    .collect();
                inos.extend(self.vfs.as_ref().and_then(|v| v.ino_of(node)));
                for ino in inos {
                    self.out
                        .push_back(super::ClientOutput::InvalidateInode { ino });
                }
                if self.writes.get(&node).is_some_and(|w| !w.is_finished()) {
                    // Written to since the lock was asked for: the handles
                    // keep the version those writes build on.
                    return Some(Ok(Answer::Done));
                }
                let purpose = Purpose::Op {
                    req,
                    op: op.clone(),
                    part: OpPart::Repoint,
                };
                let request = Request::Open {
                    node,
                    mode: OpenFor::Read,
                };
                self.send(now, purpose, request);
                None
            }
            (OpPart::First, Ok(Reply::Done)) => Some(Ok(Answer::Done)),
            (OpPart::First, Ok(_)) => Some(Err(Errno::Io)),
            (OpPart::First, Err(Errno::Intr)) if *wait => {
                // Taken back at the host by an unlock or withdrawal of its
                // owner's own (another thread let go of those bytes, or
                // gave up a wait for the same ones), not by a signal to
                // this program, which still waits: asked again (the host
                // answered it while handling that unlock, so the new
                // request comes after it). The owner locks through its
                // handle again: the unlock may have dropped it from
                // `lockers`, and a grant must go at its close.
                let (Some(asked), Some(kind)) = (locking, *kind) else {
                    return Some(Err(Errno::Intr));
                };
                if !self.handles.contains_key(fh) {
                    return Some(Err(Errno::Intr));
                }
                self.reask(now, req, op, asked, kind)
            }
            (OpPart::First, Err(e)) => Some(Err(e)),
            (_, result) => {
                // The lock is held whatever this open found (a handle open
                // for writing only may not read): the handles that read
                // another version now read the current one.
                if let Ok(Reply::Opened { handle, attr, .. }) = result {
                    self.repoint(now, handle, attr);
                }
                Some(Ok(Answer::Done))
            }
        }
    }

    /// Asks the host again for the lock kernel request `req` (`op`, a
    /// wait or not, as the program asked) wants: the owner's held
    /// requests and its handle's lock state as when it was first sent.
    /// Sent after the owner's unlocks on the file are answered.
    fn reask(
        &mut self,
        now: Instant,
        req: Req,
        op: &Op,
        (node, owner, range): (NodeId, u64, ByteRange),
        kind: crate::proto::LockKind,
    ) -> Option<Result<Answer, Errno>> {
        let Op::SetLock { fh, wait, .. } = *op else {
            return Some(Err(Errno::Inval));
        };
        self.lockers.insert((node, owner), fh);
        self.locking.insert(req, (node, owner, range));
        let request = Request::SetLock {
            node,
            owner,
            range,
            kind,
            wait,
        };
        // Behind whatever waits for the file's commit (an unlock that
        // crossed it, a close's), then behind the owner's unlocks on
        // their way ([`Self::send_lock`]).
        let then = AfterCommit::Lock {
            kernel: Some((req, op.clone())),
            request,
        };
        match self.commit_then(now, node, then) {
            Ok(()) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Open handles on `attr`'s file that read another version read this
    /// one, through the host handle `host` (closed if none needs it).
    fn repoint(&mut self, now: Instant, host: crate::proto::HandleId, attr: crate::proto::Attr) {
        let mut spare = Some(host);
        let mut old = Vec::new();
        for h in self.handles.values_mut().filter(|h| h.node == attr.node) {
            if h.attr.key == attr.key && h.attr.version == attr.version {
                continue;
            }
            old.extend(h.host.take());
            // One host handle keeps the version open; the other handles
            // read it by node while it is current.
            h.host = spare.take();
            h.attr = attr.clone();
        }
        self.files.insert(attr.key, attr.node);
        old.extend(spare);
        self.close_host_handles(now, old);
    }
}

/// A range the kernel could send: its start not past its end.
fn check(range: ByteRange) -> Result<(), Errno> {
    if range.start > range.end {
        Err(Errno::Inval)
    } else {
        Ok(())
    }
}

/// Requests sent again when their answer is late rather than failed: a
/// lock that waits for its holder (the host keeps one waiter per owner and
/// bytes, answering the latest request), and an unlock or withdrawal
/// (harmless twice).
pub(super) fn asked_again(request: &Request) -> bool {
    matches!(
        request,
        Request::SetLock { wait: true, .. } | Request::Unlock { .. } | Request::Withdraw { .. }
    )
}

/// The withdrawal of `request` if it is a lock wait given up on
/// ([`Purpose::Abandoned`]): until the host answers it, it may be waiting
/// there, its first withdrawal having overtaken it.
pub(super) fn withdrawn_wait(purpose: &Purpose, request: &Request) -> Option<Request> {
    match (purpose, request) {
        (
            Purpose::Abandoned,
            &Request::SetLock {
                node,
                owner,
                range,
                wait: true,
                ..
            },
        ) => Some(Request::Withdraw { node, owner, range }),
        _ => None,
    }
}

/// Requests that never fail here, however long the host is out of reach:
/// an unlock, and a withdrawal. Given up, an unlock would leave the lock
/// held at the host for as long as the session lives, and the kernel
/// believing it free; a withdrawal, a wait nobody wants. Each waits for
/// the host like a write does (and the owner's next lock request on the
/// file waits for it, see [`ClientCore::send_unlock`]).
pub(super) fn never_fails(request: &Request) -> bool {
    matches!(request, Request::Unlock { .. } | Request::Withdraw { .. })
}
