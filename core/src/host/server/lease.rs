//! Directory leases (docs/filesystem.md, "Asynchronous directory
//! operations"): the host side.
//!
//! A lease is an exclusive [`LockScope::Directory`] lock plus a range of
//! node ids for the files its holder creates there. Its lifetime is its
//! lock's: refreshed, released and expired by the lock table, and ended
//! with its session. What the lease adds:
//!
//! * **Parking.** A request of another session that would look at or
//!   change the directory's entries (a lookup, a listing, a create, an
//!   unlink or rename there, a lock that conflicts), or set the
//!   directory's own attributes (its holder may have set them too, in its
//!   stream), does not fail with
//!   EBUSY: it waits, in arrival order, while the holder is sent
//!   [`HostMessage::Recall`]. Once the lease is gone the waiting requests
//!   run as if they had just arrived. They wait at most the lock table's
//!   `wait_timeout` (then EAGAIN, as a lock wait), and at most
//!   [`MAX_PARKED`] wait in all.
//! * **Recall** also when a local program changes the directory: the
//!   holder's idea of its entries is then out of date.
//! * **Node ids.** Each lease comes with a range of ids, reserved for its
//!   session. The range is the session's, not the lease's: it outlives a
//!   lease that expired, so a holder cut off for longer than the lease
//!   still sends what it answered (a name taken meanwhile is EEXIST,
//!   never overwritten). It ends when the holder releases the lease (it
//!   does so once everything is applied) or with the session; ranges
//!   count against [`MAX_LEASES_PER_SESSION`].
//! * **Apply.** The holder's batches of operations it answered itself,
//!   run in order as one file operation ([`FsOp::Batch`]); each new
//!   file becomes the node the holder gave it, each unlinked name is
//!   forgotten. A batch is a change of the
//!   directory's entries: it waits while another session leases it.

use super::*;
use crate::host::fsop::{BatchOp, NewFile};
use crate::proto::{LeaseGrant, LeaseOp, NodeRange};

/// Node ids reserved per lease. A holder that uses them up takes a new
/// lease (or creates the ordinary way).
pub(super) const LEASE_NODES: u32 = 1024;

/// Leases one session may hold, counting the ranges of its expired ones.
pub(super) const MAX_LEASES_PER_SESSION: usize = 64;

/// Requests waiting for leases to end, in all.
pub(super) const MAX_PARKED: usize = 4096;

/// Applied batches remembered per session, for a batch sent again after
/// a lost reply.
const APPLIED_MEMORY: usize = 16;

/// One operation of a batch being applied, for its result.
#[derive(Debug)]
pub(crate) enum BatchStep {
    /// A new file, to become this node.
    Made(NodeId, Name),
    /// A name removed, which held this node.
    Unnamed(NodeId, Name),
    /// The directory's own mode or times set.
    Set,
    /// Refused before it ran.
    Refused(Errno),
}

/// One lease.
#[derive(Debug)]
pub(super) struct Lease {
    session: SessionId,
    token: LockToken,
    /// Its ranges of node ids (their first ids; [`Reserved`] in the
    /// session).
    ranges: Vec<NodeId>,
    /// Recall sent.
    recalled: bool,
}

/// A range of node ids reserved for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reserved {
    /// One past its last id.
    end: u64,
    /// The lowest id of the range still unused: a holder gives its files
    /// ids in increasing order, so one id can never name two files.
    unused: u64,
}

/// A request waiting for a lease to end.
#[derive(Debug)]
struct Parked {
    session: SessionId,
    id: RequestId,
    request: Request,
    deadline: Instant,
}

/// Every lease, and the requests waiting for them.
#[derive(Debug, Default)]
pub(super) struct Leases {
    by_dir: BTreeMap<NodeId, Lease>,
    by_token: BTreeMap<LockToken, NodeId>,
    /// Batches being applied, by session and directory, and their tags.
    /// A lease outlives its lock until its holder's batch is done, so
    /// what waits for the directory runs after it.
    applying: BTreeMap<(SessionId, NodeId), u64>,
    parked: BTreeMap<NodeId, VecDeque<Parked>>,
    parked_count: usize,
}

impl Leases {
    /// Leases held.
    pub(super) fn len(&self) -> usize {
        self.by_dir.len()
    }

    /// Requests waiting.
    pub(super) fn parked(&self) -> usize {
        self.parked_count
    }

    /// The earliest deadline of a waiting request.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.parked
            .values()
            .filter_map(|q| q.iter().map(|p| p.deadline).min())
            .min()
    }

    /// The invariants: both indexes name the same leases; the count is
    /// the queues' length; no queue waits for a lease that is gone.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.by_dir.len() != self.by_token.len() {
            return Err("lease indexes differ in size".into());
        }
        for (dir, l) in &self.by_dir {
            if self.by_token.get(&l.token) != Some(dir) {
                return Err(format!("lease of {dir:?} not indexed by its token"));
            }
        }
        let count: usize = self.parked.values().map(VecDeque::len).sum();
        if count != self.parked_count || count > MAX_PARKED {
            return Err(format!("{count} parked, counted {}", self.parked_count));
        }
        if let Some(dir) = self.parked.keys().find(|d| !self.by_dir.contains_key(d)) {
            return Err(format!("requests wait for {dir:?}, which has no lease"));
        }
        Ok(())
    }
}

impl HostServer {
    /// Leases held (for tests and simulations).
    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// Requests waiting for a lease to end.
    pub fn parked(&self) -> usize {
        self.leases.parked()
    }

    /// [`Request::Lease`].
    pub(super) fn take_lease(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        dir: NodeId,
    ) -> Result<(), Errno> {
        self.writable()?;
        match self.nodes.kind(dir) {
            None => return Err(Errno::Stale),
            Some(FileKind::Dir) => {}
            Some(_) => return Err(Errno::NotDir),
        }
        self.may_lease(session)?;
        // Asked again by its holder: more ids, the same lease.
        if let Some(l) = self
            .leases
            .by_dir
            .get(&dir)
            .filter(|l| l.session == session)
        {
            let token = l.token;
            let lock = self.locks.lock(token).ok_or(Errno::Stale)?;
            let ttl = lock.expires_at.saturating_duration_since(now);
            let nodes = self.reserve(session, dir)?;
            self.answer(
                session,
                id,
                Ok(Reply::Leased(LeaseGrant {
                    token,
                    ttl_ms: crate::lock::millis(ttl),
                    nodes,
                })),
            );
            return Ok(());
        }
        let grant = self.grant_lease(now, session, id, dir)?;
        self.answer(session, id, Ok(Reply::Leased(grant)));
        Ok(())
    }

    /// Whether `session` may be granted another lease.
    fn may_lease(&self, session: SessionId) -> Result<(), Errno> {
        let held = self
            .sessions
            .get(&session)
            .map_or(usize::MAX, |s| s.reserved.len());
        // While any request waits for a lease, none is granted: a new one
        // could be in its way again and starve it. Leases only save round
        // trips; waiting requests are rare.
        if held >= MAX_LEASES_PER_SESSION || self.leases.parked_count > 0 {
            return Err(Errno::Again);
        }
        Ok(())
    }

    /// A new lease on `dir` for `session`, if its lock can be taken now.
    fn grant_lease(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        dir: NodeId,
    ) -> Result<LeaseGrant, Errno> {
        let ancestors = self.nodes.ancestors(dir);
        let req = LockRequest {
            session,
            request: id,
            scope: LockScope::Directory(dir),
            kind: crate::proto::LockKind::Exclusive,
            wait: false,
            ancestors: &ancestors,
        };
        let Acquired::Granted(grant) = self.locks.acquire(now, &req)? else {
            // A request that does not wait is never queued.
            return Err(Errno::Again);
        };
        self.leases.by_token.insert(grant.token, dir);
        self.leases.by_dir.insert(
            dir,
            Lease {
                session,
                token: grant.token,
                ranges: Vec::new(),
                recalled: false,
            },
        );
        let nodes = match self.reserve(session, dir) {
            Ok(nodes) => nodes,
            Err(e) => {
                let _ = self.locks.release(now, session, grant.token);
                self.settle_leases(now);
                return Err(e);
            }
        };
        Ok(LeaseGrant {
            token: grant.token,
            ttl_ms: crate::lock::millis(grant.ttl),
            nodes,
        })
    }

    /// A directory `session` just made with [`Request::Mkdir`] asking
    /// for its lease: granted if it can be now, then the directory is
    /// read. The holder of a lease knows every name there; this one will
    /// take the directory for empty, and a local program may have made a
    /// file in it between the mkdir and the grant, whose watcher report
    /// recalled nothing (there was no lease yet). So the reply waits for
    /// that listing, as a [`Request::Lease`]'s holder reads its own.
    pub(super) fn lease_new_dir(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        made: (Attr, Vec<Attr>),
        hold: bool,
    ) {
        let dir = made.0.node;
        let path = self.dir_path(dir);
        // A reply held for the disk (`--sync-every-close`) comes after a
        // recall sent meanwhile, which its holder, not knowing the lease
        // yet, could not heed: no lease then.
        let grant = if hold {
            Err(Errno::Again)
        } else {
            self.may_lease(session)
                .and_then(|()| path.clone())
                .and_then(|_| self.grant_lease(now, session, id, dir))
        };
        match (grant, path) {
            (Ok(grant), Ok(path)) => {
                self.fs(
                    Purpose::NewDirListed {
                        session,
                        id,
                        made,
                        grant,
                        hold,
                    },
                    FsOp::List {
                        path,
                        cookie: 0,
                        max: 2,
                    },
                );
            }
            _ => {
                let (attr, dirs) = made;
                let reply = Reply::Made {
                    attr,
                    dirs,
                    lease: None,
                };
                self.reply_held(now, session, id, Ok(reply), hold);
            }
        }
    }

    /// The listing of a directory leased with its mkdir
    /// ([`Self::lease_new_dir`]): the lease goes with the reply if the
    /// directory is empty and the lease still unrecalled; it is given back
    /// otherwise, and the holder learns the directory the ordinary way.
    pub(super) fn new_dir_listed(
        &mut self,
        now: Instant,
        session: SessionId,
        dir: NodeId,
        grant: LeaseGrant,
        result: &FsResult,
    ) -> Option<LeaseGrant> {
        let empty = matches!(result, Ok(FsOk::Listing { entries, next: None })
            if entries.iter().all(|(name, _)| is_reserved(name)));
        let held = self
            .leases
            .by_dir
            .get(&dir)
            .is_some_and(|l| l.token == grant.token && l.session == session && !l.recalled);
        if let Some(lock) = self.locks.lock(grant.token)
            && empty
            && held
        {
            let ttl = lock.expires_at.saturating_duration_since(now);
            return Some(LeaseGrant {
                ttl_ms: crate::lock::millis(ttl),
                ..grant
            });
        }
        if self.locks.release(now, session, grant.token).is_ok() {
            self.lease_returned(session, grant.token);
            self.drain_locks(now);
        }
        // The holder never learns of the range: it ends here, even if the
        // lock expired meanwhile.
        if let Some(s) = self.sessions.get_mut(&session) {
            s.reserved.remove(&grant.nodes.first.0);
        }
        None
    }

    /// A new range of ids for `session`'s lease on `dir`.
    fn reserve(&mut self, session: SessionId, dir: NodeId) -> Result<NodeRange, Errno> {
        let first = self.nodes.reserve(LEASE_NODES).ok_or(Errno::Again)?;
        let s = self.sessions.get_mut(&session).ok_or(Errno::BadF)?;
        s.reserved.insert(
            first.0,
            Reserved {
                end: first.0 + u64::from(LEASE_NODES),
                unused: first.0,
            },
        );
        if let Some(l) = self.leases.by_dir.get_mut(&dir) {
            l.ranges.push(first);
        }
        Ok(NodeRange {
            first,
            count: LEASE_NODES,
        })
    }

    /// The leased directory `request` of `session` has to wait for, if
    /// any: another session's lease on a directory whose entries it reads
    /// or changes, or beneath a directory it moves, removes or locks whole.
    fn lease_in_the_way(&self, session: SessionId, request: &Request) -> Option<NodeId> {
        if self.leases.by_dir.is_empty() {
            return None;
        }
        let other = |dir: &NodeId| {
            self.leases
                .by_dir
                .get(dir)
                .is_some_and(|l| l.session != session)
        };
        // Another session's lease on `node` or anywhere beneath it.
        let beneath = |node: NodeId| {
            self.leases.by_dir.iter().find_map(|(&dir, l)| {
                (l.session != session && (dir == node || self.nodes.ancestors(dir).contains(&node)))
                    .then_some(dir)
            })
        };
        let entries: &[NodeId] = match request {
            Request::Lookup { parent, .. }
            | Request::Create { parent, .. }
            | Request::Mkdir { parent, .. }
            | Request::Symlink { parent, .. }
            | Request::Link { parent, .. }
            | Request::Mknod { parent, .. } => &[*parent],
            Request::ReadDir { dir, .. } | Request::Apply { dir, .. } => &[*dir],
            // A leased directory's own mode and times: its holder may
            // have set them too, and its change, applied later, would
            // undo this one.
            Request::SetAttr { node, .. } => &[*node],
            Request::Unlink { parent, name } | Request::Rmdir { parent, name } => {
                if other(parent) {
                    return Some(*parent);
                }
                return self.nodes.child(*parent, name).and_then(beneath);
            }
            Request::Rename {
                parent,
                name,
                new_parent,
                new_name,
            } => {
                for dir in [parent, new_parent] {
                    if other(dir) {
                        return Some(*dir);
                    }
                }
                return [(parent, name), (new_parent, new_name)]
                    .into_iter()
                    .find_map(|(p, n)| self.nodes.child(*p, n).and_then(beneath));
            }
            Request::AcquireLock { scope, .. } => match *scope {
                LockScope::Directory(dir) => &[dir],
                LockScope::Subtree(node) => return beneath(node),
                LockScope::File(_) => return None,
            },
            _ => return None,
        };
        entries.iter().copied().find(other)
    }

    /// Parks `request` if a lease is in its way (and recalls the lease):
    /// gives it back otherwise, to run now.
    pub(super) fn park_if_leased(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        request: Request,
    ) -> Result<Option<Request>, Errno> {
        let Some(dir) = self.lease_in_the_way(session, &request) else {
            return Ok(Some(request));
        };
        let mine = self
            .leases
            .parked
            .values()
            .flatten()
            .filter(|p| p.session == session)
            .count();
        if self.leases.parked_count >= MAX_PARKED || mine >= self.cfg.max_ops_per_session {
            return Err(Errno::Again);
        }
        self.leases
            .parked
            .entry(dir)
            .or_default()
            .push_back(Parked {
                session,
                id,
                request,
                deadline: now + self.cfg.lock.wait_timeout,
            });
        self.leases.parked_count += 1;
        self.recall(dir);
        debug_assert_eq!(self.leases.check(), Ok(()));
        Ok(None)
    }

    /// Asks the holder of `dir`'s lease, if any, to give it back.
    pub(super) fn recall(&mut self, dir: NodeId) {
        let Some(l) = self.leases.by_dir.get_mut(&dir) else {
            return;
        };
        if l.recalled {
            return;
        }
        l.recalled = true;
        let (session, token) = (l.session, l.token);
        self.push(session, HostMessage::Recall { token });
    }

    /// A resumed session hears again the recalls it may have missed.
    pub(super) fn recall_again(&mut self, session: SessionId) {
        let tokens: Vec<LockToken> = self
            .leases
            .by_dir
            .values()
            .filter(|l| l.session == session && l.recalled)
            .map(|l| l.token)
            .collect();
        for token in tokens {
            self.push(session, HostMessage::Recall { token });
        }
    }

    /// The holder gives lease `token` back ([`Request::ReleaseLock`]): it
    /// has applied everything, so its range of ids ends too.
    pub(super) fn lease_returned(&mut self, session: SessionId, token: LockToken) {
        let Some(ranges) = self
            .leases
            .by_token
            .get(&token)
            .and_then(|dir| self.leases.by_dir.get(dir))
            .filter(|l| l.session == session)
            .map(|l| l.ranges.clone())
        else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            for first in ranges {
                s.reserved.remove(&first.0);
            }
        }
    }

    /// Ends every lease whose lock is gone (released, expired, or its
    /// session's), then runs what waited for it; and refuses with EAGAIN
    /// what waited too long.
    pub(super) fn settle_leases(&mut self, now: Instant) {
        let ended: Vec<NodeId> = self
            .leases
            .by_dir
            .iter()
            .filter(|(dir, l)| {
                !self.leases.applying.contains_key(&(l.session, **dir))
                    && self.locks.lock(l.token).is_none()
            })
            .map(|(&dir, _)| dir)
            .collect();
        for dir in &ended {
            if let Some(l) = self.leases.by_dir.remove(dir) {
                self.leases.by_token.remove(&l.token);
            }
        }
        let mut runnable = Vec::new();
        let mut late = Vec::new();
        let dirs: Vec<NodeId> = self.leases.parked.keys().copied().collect();
        for dir in dirs {
            let gone = !self.leases.by_dir.contains_key(&dir);
            let Some(queue) = self.leases.parked.get_mut(&dir) else {
                continue;
            };
            if gone {
                self.leases.parked_count -= queue.len();
                runnable.extend(self.leases.parked.remove(&dir).into_iter().flatten());
                continue;
            }
            let before = queue.len();
            let (due, waiting): (VecDeque<Parked>, VecDeque<Parked>) =
                queue.drain(..).partition(|p| now >= p.deadline);
            *queue = waiting;
            self.leases.parked_count -= before - queue.len();
            late.extend(due);
            if queue.is_empty() {
                self.leases.parked.remove(&dir);
            }
        }
        for p in late {
            self.answer(p.session, p.id, Err(Errno::Again));
        }
        // In arrival order across directories too (request ids are per
        // session, so by deadline: all waited the same timeout).
        runnable.sort_by_key(|p| p.deadline);
        for p in runnable {
            if !self.sessions.contains_key(&p.session) {
                continue;
            }
            if let Err(e) = self.dispatch(now, p.session, p.id, p.request) {
                self.answer(p.session, p.id, Err(e));
            }
        }
        debug_assert_eq!(self.leases.check(), Ok(()));
        debug_assert!(
            self.leases.by_dir.iter().all(|(dir, l)| {
                self.leases.applying.contains_key(&(l.session, *dir))
                    || self
                        .locks
                        .lock(l.token)
                        .is_some_and(|k| k.session == l.session)
            }),
            "a lease outlived its lock with no batch running"
        );
    }

    /// [`Request::Apply`].
    pub(super) fn apply(
        &mut self,
        session: SessionId,
        id: RequestId,
        dir: NodeId,
        tag: u64,
        ops: Vec<LeaseOp>,
    ) -> Result<(), Errno> {
        self.writable()?;
        let path = self.dir_path(dir)?;
        let s = self.sessions.get_mut(&session).ok_or(Errno::BadF)?;
        if let Some(results) = s
            .applied
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, r)| r.clone())
        {
            self.answer(session, id, Ok(Reply::Applied(results)));
            return Ok(());
        }
        match self.leases.applying.get(&(session, dir)) {
            Some(&t) if t == tag => {
                s.applying.entry(tag).or_default().push(id);
                return Ok(());
            }
            // One batch at a time: the next builds on this one's outcome.
            Some(_) => return Err(Errno::Busy),
            None => {}
        }
        let owners = self.cfg.owners;
        let mut reserved = s.reserved.clone();
        let mut fs_ops = Vec::with_capacity(ops.len());
        let mut steps = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                LeaseOp::CreateFile {
                    node,
                    name,
                    mode,
                    owner,
                    times,
                    data,
                } => {
                    let owner = super::requests::owner_to_give(owners, owner)?;
                    let r = reserved
                        .range_mut(..=node.0)
                        .next_back()
                        .map(|(_, r)| r)
                        .filter(|r| node.0 >= r.unused && node.0 < r.end)
                        .ok_or(Errno::Inval)?;
                    r.unused = node.0 + 1;
                    visible(&name)?;
                    if times.chowns() || times.size.is_some() || times.mode.is_some() {
                        return Err(Errno::Inval);
                    }
                    steps.push(BatchStep::Made(node, name.clone()));
                    fs_ops.push(BatchOp::Create(NewFile {
                        name,
                        mode: mode & 0o7777,
                        times,
                        data,
                        owner,
                    }));
                }
                LeaseOp::Unlink { node, name } => {
                    visible(&name)?;
                    match self.removal_key(session, dir, node, &name, false) {
                        Ok(key) => {
                            steps.push(BatchStep::Unnamed(node, name.clone()));
                            fs_ops.push(BatchOp::Unlink { name, key });
                        }
                        Err(e) => steps.push(BatchStep::Refused(e)),
                    }
                }
                LeaseOp::Rmdir { node, name } => {
                    visible(&name)?;
                    match self.removal_key(session, dir, node, &name, true) {
                        Ok(key) => {
                            steps.push(BatchStep::Unnamed(node, name.clone()));
                            fs_ops.push(BatchOp::Rmdir { name, key });
                        }
                        Err(e) => steps.push(BatchStep::Refused(e)),
                    }
                }
                LeaseOp::SetAttr { set } => {
                    if set.chowns() || set.size.is_some() {
                        return Err(Errno::Inval);
                    }
                    // Only under the lease it was answered under: once it
                    // is gone (expired while its holder was cut off),
                    // another client or a program may have set the mode
                    // or times since, and this late one would undo that
                    // (a late create is refused rather than overwrite a
                    // name, a late unlink rather than take another file).
                    // And, as an ordinary setattr, not while another
                    // session holds a lock on the directory.
                    let leased = self
                        .leases
                        .by_dir
                        .get(&dir)
                        .is_some_and(|l| l.session == session);
                    let allowed = if leased {
                        self.guard(session, dir, false)
                    } else {
                        Err(Errno::Stale)
                    };
                    match allowed {
                        Ok(()) => {
                            steps.push(BatchStep::Set);
                            fs_ops.push(BatchOp::SetAttr(set));
                        }
                        Err(e) => steps.push(BatchStep::Refused(e)),
                    }
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return Err(Errno::BadF);
        };
        s.reserved = reserved;
        s.applying.insert(tag, vec![id]);
        self.leases.applying.insert((session, dir), tag);
        self.fs(
            Purpose::Applied {
                session,
                dir,
                tag,
                steps,
            },
            FsOp::Batch {
                dir: path,
                ops: fs_ops,
            },
        );
        Ok(())
    }

    /// The identity the disk must find at `name` in `dir` for a holder's
    /// unlink (or, `tree`, rmdir) of `node` to run: only the file the
    /// holder saw there (applied late, after its lease was lost, a
    /// removal must not take a file made since: ESTALE), and, as an
    /// ordinary removal, not while another session holds a lock on it
    /// (or, for a directory, beneath it: EBUSY).
    fn removal_key(
        &self,
        session: SessionId,
        dir: NodeId,
        node: NodeId,
        name: &Name,
        tree: bool,
    ) -> Result<FileKey, Errno> {
        match self.nodes.child(dir, name) {
            None => Err(Errno::NoEnt),
            Some(c) if c != node => Err(Errno::Stale),
            Some(c) if tree && self.locked_below_by_other(session, c) => Err(Errno::Busy),
            Some(c) => self
                .guard(session, c, false)
                .and_then(|()| self.nodes.key(c).ok_or(Errno::Stale)),
        }
    }

    /// A batch of [`Self::apply`] finished: its new files become their
    /// nodes, its removed names are forgotten. Returns the requests that
    /// asked for it and their reply.
    pub(super) fn lease_applied(
        &mut self,
        session: SessionId,
        dir: NodeId,
        tag: u64,
        steps: Vec<BatchStep>,
        result: FsResult,
    ) -> (Vec<RequestId>, Result<Reply, Errno>) {
        let ran = steps
            .iter()
            .filter(|s| !matches!(s, BatchStep::Refused(_)))
            .count();
        let mut items = match result {
            Ok(FsOk::Batch(items)) if items.len() == ran => items.into_iter().map(Some).collect(),
            Ok(_) => vec![Some(Err(Errno::Io)); ran],
            Err(e) => vec![Some(Err(e)); ran],
        }
        .into_iter();
        let (mut changed, mut set) = (false, false);
        let mut results = Vec::with_capacity(steps.len());
        for step in steps {
            let r = match step {
                BatchStep::Refused(e) => Err(e),
                BatchStep::Made(node, name) => {
                    items.next().flatten().unwrap_or(Err(Errno::Io)).map(|a| {
                        changed = true;
                        self.nodes.bind(node, dir, &name, a.key, a.kind);
                        to_attr(node, &a)
                    })
                }
                BatchStep::Unnamed(node, name) => {
                    items.next().flatten().unwrap_or(Err(Errno::Io)).map(|a| {
                        changed = true;
                        self.unnamed(session, dir, &name);
                        to_attr(node, &a)
                    })
                }
                BatchStep::Set => items.next().flatten().unwrap_or(Err(Errno::Io)).map(|a| {
                    set = true;
                    to_attr(dir, &a)
                }),
            };
            results.push(r);
        }
        if changed {
            self.broadcast(Some(session), dir, Invalidation::Entries);
        }
        if set {
            self.broadcast(Some(session), dir, Invalidation::Attr);
        }
        self.leases.applying.remove(&(session, dir));
        let mut ids = Vec::new();
        if let Some(s) = self.sessions.get_mut(&session) {
            ids = s.applying.remove(&tag).unwrap_or_default();
            if s.applied.len() == APPLIED_MEMORY {
                s.applied.pop_front();
            }
            s.applied.push_back((tag, results.clone()));
        }
        (ids, Ok(Reply::Applied(results)))
    }
}
