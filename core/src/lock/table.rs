//! The host's lock table.

use super::{compatible, millis, scope_node};
use crate::proto::{Errno, LockKind, LockScope, LockToken, NodeId, Reply, RequestId, SessionId};
use crate::{Instant, Rng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use thiserror::Error;

/// Lifetimes and capacity of a [`LockTable`].
///
/// * `ttl` 30 s and `wait_timeout` 30 s are the specification's (docs/filesystem.md, "Locks": Held "30s (must
///   refresh)", Waiting "30s"). The ttl is what a partitioned client can
///   block others for; the client refreshes at 5/6 of it, so one lost
///   refresh round trip of up to 5 s is survivable.
/// * The capacities keep one session (or all of them) from growing the
///   table without limit. A waiter reserves its lock's slot, so a queued
///   request can always be granted when its turn comes.
/// * `max_depth` bounds the ancestor chain copied into each entry: a Linux
///   path of PATH_MAX (4096) bytes has at most 2048 components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockConfig {
    /// Lifetime of a grant or refresh.
    pub ttl: Duration,
    /// How long a waiting request queues before it is refused.
    pub wait_timeout: Duration,
    /// Locks plus waiters in the table.
    pub max_locks: usize,
    /// Locks plus waiters of one session.
    pub max_locks_per_session: usize,
    /// Waiters in the table.
    pub max_waiters: usize,
    /// Waiters of one session.
    pub max_waiters_per_session: usize,
    /// Longest ancestor chain accepted.
    pub max_depth: usize,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            ttl: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(30),
            max_locks: 1 << 16,
            max_locks_per_session: 4096,
            max_waiters: 4096,
            max_waiters_per_session: 256,
            max_depth: 2048,
        }
    }
}

/// A waiting request, numbered in arrival order: FIFO order is id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaitId(pub u64);

/// One acquire request, as the host decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest<'a> {
    /// The session asking (the lock's owner).
    pub session: SessionId,
    /// The request to answer, echoed in [`LockOutput`] if it queues.
    pub request: RequestId,
    /// What to lock.
    pub scope: LockScope,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// Queue behind conflicting locks instead of failing with EAGAIN.
    pub wait: bool,
    /// The scope node's ancestors, parent first, up to and including the
    /// root; empty for the root itself. The node must not be in it.
    pub ancestors: &'a [NodeId],
}

/// A live lock: what the host replies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The fencing token.
    pub token: LockToken,
    /// Time until expiry unless refreshed.
    pub ttl: Duration,
    /// When it expires unless refreshed.
    pub expires_at: Instant,
}

impl Grant {
    /// The wire reply for this grant.
    pub fn reply(&self) -> Reply {
        Reply::LockGranted {
            token: self.token,
            ttl_ms: millis(self.ttl),
        }
    }
}

/// What [`LockTable::acquire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Granted at once.
    Granted(Grant),
    /// Queued; the answer comes later as a [`LockOutput`] for this wait.
    Queued(WaitId),
}

/// A lock as the table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// Its token.
    pub token: LockToken,
    /// Its owner.
    pub session: SessionId,
    /// What it covers.
    pub scope: LockScope,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// When it was granted.
    pub granted_at: Instant,
    /// When it expires unless refreshed.
    pub expires_at: Instant,
}

/// What the table tells the host, drained with [`LockTable::poll_output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutput {
    /// A queued request got its lock: reply to it with the grant.
    Granted {
        /// The owner.
        session: SessionId,
        /// The request to answer.
        request: RequestId,
        /// The wait that ended.
        wait: WaitId,
        /// What it covers.
        scope: LockScope,
        /// Shared or exclusive.
        kind: LockKind,
        /// The grant.
        grant: Grant,
    },
    /// A queued request waited `wait_timeout` in vain: reply EAGAIN.
    ///
    /// EAGAIN rather than ETIMEDOUT because the host did answer: the
    /// resource is still busy and the client may try again. ETIMEDOUT is
    /// what the client machine reports when the host does not answer at
    /// all, so the two cases stay apart.
    WaitTimedOut {
        /// The session that waited.
        session: SessionId,
        /// The request to answer.
        request: RequestId,
        /// The wait that ended.
        wait: WaitId,
    },
    /// A lock was not refreshed in time and is gone; writes carrying its
    /// token are refused from now on. The host may tell its owner.
    Expired {
        /// The former owner.
        session: SessionId,
        /// The dead token.
        token: LockToken,
        /// What it covered.
        scope: LockScope,
        /// Shared or exclusive.
        kind: LockKind,
    },
}

impl LockOutput {
    /// The reply the host sends for this output, and to whom: `None` for
    /// [`LockOutput::Expired`], which answers no request.
    pub fn reply(&self) -> Option<(SessionId, RequestId, Result<Reply, Errno>)> {
        match *self {
            LockOutput::Granted {
                session,
                request,
                grant,
                ..
            } => Some((session, request, Ok(grant.reply()))),
            LockOutput::WaitTimedOut {
                session, request, ..
            } => Some((session, request, Err(Errno::Again))),
            LockOutput::Expired { .. } => None,
        }
    }
}

/// Why the table refused an operation. [`LockError::errno`] is the reply.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LockError {
    /// A conflicting lock is held, or a conflicting request is queued
    /// earlier, and the request asked not to wait.
    #[error("a conflicting lock is held or queued")]
    WouldBlock,
    /// The table holds its maximum of locks and waiters.
    #[error("lock table is full ({max} locks and waiters)")]
    TableFull {
        /// The limit.
        max: usize,
    },
    /// The session holds its maximum of locks and waiters.
    #[error("session has its maximum of {max} locks and waiters")]
    SessionFull {
        /// The limit.
        max: usize,
    },
    /// The wait queue is full.
    #[error("lock wait queue is full ({max})")]
    QueueFull {
        /// The limit.
        max: usize,
    },
    /// The session has its maximum of waiting requests.
    #[error("session has its maximum of {max} waiting requests")]
    SessionQueueFull {
        /// The limit.
        max: usize,
    },
    /// The ancestor chain is longer than `max_depth`.
    #[error("ancestor chain of {len} nodes exceeds {max}")]
    TooDeep {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The ancestor chain contains the node itself.
    #[error("ancestor chain contains the locked node")]
    BadAncestry,
    /// No live lock of this session has this token (never granted, released,
    /// expired, or another session's).
    #[error("no live lock with this token")]
    UnknownToken,
    /// No waiting request of this session has this id.
    #[error("no such waiting request")]
    UnknownWait,
}

impl LockError {
    /// The errno the host replies with.
    ///
    /// Capacity errors are ENOLCK ("no locks available"); a dead token is
    /// ESTALE, like a handle that names no file: the client treats it as a
    /// lost lock.
    pub fn errno(&self) -> Errno {
        match self {
            LockError::WouldBlock => Errno::Again,
            LockError::TableFull { .. }
            | LockError::SessionFull { .. }
            | LockError::QueueFull { .. }
            | LockError::SessionQueueFull { .. } => Errno::NoLck,
            LockError::TooDeep { .. } | LockError::BadAncestry | LockError::UnknownWait => {
                Errno::Inval
            }
            LockError::UnknownToken => Errno::Stale,
        }
    }
}

impl From<LockError> for Errno {
    fn from(e: LockError) -> Errno {
        e.errno()
    }
}

/// Why [`LockTable::validate`] refused a token for a write.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum FenceError {
    /// No live lock of this session has the token: released, expired and
    /// reaped, superseded, or never granted.
    #[error("token names no live lock")]
    Unknown,
    /// The lock's lifetime has passed (not yet reaped by a timeout).
    #[error("lock has expired")]
    Expired,
    /// The lock is shared; writes need an exclusive lock.
    #[error("lock is shared, not exclusive")]
    NotExclusive,
    /// The lock does not cover the node written.
    #[error("lock does not cover the node")]
    NotCovered,
}

impl FenceError {
    /// The errno the host replies with: ESTALE for a dead token (the write
    /// comes from a client that lost its lock), EACCES for a live token that
    /// does not permit this write.
    pub fn errno(&self) -> Errno {
        match self {
            FenceError::Unknown | FenceError::Expired => Errno::Stale,
            FenceError::NotExclusive | FenceError::NotCovered => Errno::Acces,
        }
    }
}

impl From<FenceError> for Errno {
    fn from(e: FenceError) -> Errno {
        e.errno()
    }
}

/// What [`LockTable::release_session`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRelease {
    /// Locks released.
    pub locks: usize,
    /// Waiting requests cancelled.
    pub waiters: usize,
}

/// What a lock or waiter claims: a node, its ancestors, a kind, and
/// whether it reaches beneath the node.
#[derive(Clone, Debug)]
struct Claim {
    node: NodeId,
    ancestors: Box<[NodeId]>,
    kind: LockKind,
    subtree: bool,
}

impl Claim {
    /// Whether two claims conflict, from first principles (no index): used
    /// by [`LockTable::check_invariants`] to cross-check the index.
    fn conflicts(&self, other: &Claim) -> bool {
        if compatible(self.kind, other.kind) {
            return false;
        }
        self.node == other.node
            || (self.subtree && other.ancestors.contains(&self.node))
            || (other.subtree && self.ancestors.contains(&other.node))
    }
}

#[derive(Debug)]
struct Lock {
    claim: Claim,
    session: SessionId,
    scope: LockScope,
    granted_at: Instant,
    expires_at: Instant,
}

#[derive(Debug)]
struct Waiter {
    claim: Claim,
    session: SessionId,
    request: RequestId,
    scope: LockScope,
    deadline: Instant,
}

fn kind_index(kind: LockKind) -> usize {
    match kind {
        LockKind::Shared => 0,
        LockKind::Exclusive => 1,
    }
}

/// Holders by kind.
#[derive(Clone, Copy, Debug, Default)]
struct Counts([u32; 2]);

impl Counts {
    /// Whether a holder here conflicts with a request of `kind`.
    fn blocks(&self, kind: LockKind) -> bool {
        match kind {
            LockKind::Shared => self.0[1] > 0,
            LockKind::Exclusive => self.0[0] > 0 || self.0[1] > 0,
        }
    }

    fn add(&mut self, kind: LockKind) {
        self.0[kind_index(kind)] += 1;
    }

    fn remove(&mut self, kind: LockKind) {
        let c = &mut self.0[kind_index(kind)];
        *c = c.saturating_sub(1);
    }

    fn is_empty(&self) -> bool {
        self.0 == [0, 0]
    }
}

/// Waiters by kind, in arrival order.
#[derive(Debug, Default)]
struct Queue([BTreeSet<WaitId>; 2]);

impl Queue {
    /// Whether a waiter that arrived before `before` and conflicts with
    /// `kind` is queued here. Only the earliest of each kind matters, so
    /// this is O(1) per kind.
    fn blocks(&self, kind: LockKind, before: WaitId) -> bool {
        let earlier = |s: &BTreeSet<WaitId>| s.first().is_some_and(|&f| f < before);
        match kind {
            LockKind::Shared => earlier(&self.0[1]),
            LockKind::Exclusive => earlier(&self.0[0]) || earlier(&self.0[1]),
        }
    }

    fn add(&mut self, kind: LockKind, id: WaitId) {
        self.0[kind_index(kind)].insert(id);
    }

    fn remove(&mut self, kind: LockKind, id: WaitId) {
        self.0[kind_index(kind)].remove(&id);
    }

    /// The waiters here whose kind conflicts with a lock of `kind`: the only
    /// ones that lock's departure can unblock.
    fn conflicting<'a>(&'a self, kind: LockKind) -> impl Iterator<Item = WaitId> + 'a {
        let shared = match kind {
            LockKind::Shared => None,
            LockKind::Exclusive => Some(self.0[0].iter()),
        };
        shared.into_iter().flatten().chain(&self.0[1]).copied()
    }

    fn is_empty(&self) -> bool {
        self.0[0].is_empty() && self.0[1].is_empty()
    }
}

/// Everything indexed under one node. "On" means claims whose node is this
/// one; "below" means claims whose node is a strict descendant.
#[derive(Debug, Default)]
struct NodeIndex {
    held: Counts,
    held_subtree: Counts,
    held_below: Counts,
    queued: Queue,
    queued_subtree: Queue,
    queued_below: Queue,
}

impl NodeIndex {
    fn is_empty(&self) -> bool {
        self.held.is_empty()
            && self.held_subtree.is_empty()
            && self.held_below.is_empty()
            && self.queued.is_empty()
            && self.queued_subtree.is_empty()
            && self.queued_below.is_empty()
    }
}

#[derive(Debug, Default)]
struct SessionEntry {
    locks: BTreeSet<LockToken>,
    waiters: BTreeSet<WaitId>,
}

impl SessionEntry {
    fn load(&self) -> usize {
        self.locks.len() + self.waiters.len()
    }
}

/// The host's lock table: locks of every session, their waiters and
/// expiries.
///
/// Commands ([`Self::acquire`], [`Self::refresh`], [`Self::release`],
/// [`Self::cancel`], [`Self::release_session`]) answer at once; queued
/// requests are answered later through [`Self::poll_output`], as are
/// expiries. Every command first fires the timers due at its `now`, so a
/// lock past its expiry is never granted, refreshed or honoured, however
/// late the shell calls [`Self::handle_timeout`].
///
/// Waiting is strict FIFO among conflicting requests: a request queues if
/// it conflicts with a holder *or with an earlier waiter*, so a stream of
/// readers that are compatible with the current readers still lines up
/// behind a waiting writer and cannot starve it.
#[derive(Debug)]
pub struct LockTable {
    cfg: LockConfig,
    rng: Rng,
    locks: BTreeMap<LockToken, Lock>,
    waiters: BTreeMap<WaitId, Waiter>,
    nodes: BTreeMap<NodeId, NodeIndex>,
    sessions: BTreeMap<SessionId, SessionEntry>,
    expiries: BTreeSet<(Instant, LockToken)>,
    deadlines: BTreeSet<(Instant, WaitId)>,
    next_wait: u64,
    out: VecDeque<LockOutput>,
    /// Waiters to re-examine after locks or waiters left; reused so a
    /// release allocates nothing in the steady state.
    wake: Vec<WaitId>,
}

impl LockTable {
    /// An empty table. `rng` draws the tokens: seed it from the OS in a
    /// real host, so tokens are unguessable.
    pub fn new(cfg: LockConfig, rng: Rng) -> Self {
        LockTable {
            cfg,
            rng,
            locks: BTreeMap::new(),
            waiters: BTreeMap::new(),
            nodes: BTreeMap::new(),
            sessions: BTreeMap::new(),
            expiries: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            next_wait: 1,
            out: VecDeque::new(),
            wake: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LockConfig {
        &self.cfg
    }

    /// Takes a lock for `req.session`: granted at once if nothing
    /// conflicting is held or queued earlier; otherwise queued (if
    /// `req.wait`) or refused with [`LockError::WouldBlock`].
    pub fn acquire(&mut self, now: Instant, req: &LockRequest<'_>) -> Result<Acquired, LockError> {
        self.handle_timeout(now);
        let node = scope_node(req.scope);
        if req.ancestors.len() > self.cfg.max_depth {
            return Err(LockError::TooDeep {
                len: req.ancestors.len(),
                max: self.cfg.max_depth,
            });
        }
        if req.ancestors.contains(&node) {
            return Err(LockError::BadAncestry);
        }
        // A waiter reserves its lock's slot, so both count against the
        // lock limits.
        if self.locks.len() + self.waiters.len() >= self.cfg.max_locks {
            return Err(LockError::TableFull {
                max: self.cfg.max_locks,
            });
        }
        let session_load = self
            .sessions
            .get(&req.session)
            .map_or(0, SessionEntry::load);
        if session_load >= self.cfg.max_locks_per_session {
            return Err(LockError::SessionFull {
                max: self.cfg.max_locks_per_session,
            });
        }
        let claim = Claim {
            node,
            ancestors: req.ancestors.into(),
            kind: req.kind,
            subtree: matches!(req.scope, LockScope::Subtree(_)),
        };
        // Every queued waiter is earlier than a new request.
        let next = WaitId(self.next_wait);
        if !self.held_conflict(&claim) && !self.queued_conflict(&claim, next) {
            let grant = self.grant(now, req.session, req.scope, claim);
            return Ok(Acquired::Granted(grant));
        }
        if !req.wait {
            return Err(LockError::WouldBlock);
        }
        if self.waiters.len() >= self.cfg.max_waiters {
            return Err(LockError::QueueFull {
                max: self.cfg.max_waiters,
            });
        }
        let session_waiters = self
            .sessions
            .get(&req.session)
            .map_or(0, |s| s.waiters.len());
        if session_waiters >= self.cfg.max_waiters_per_session {
            return Err(LockError::SessionQueueFull {
                max: self.cfg.max_waiters_per_session,
            });
        }
        self.next_wait += 1;
        let deadline = now + self.cfg.wait_timeout;
        self.index_queued(&claim, next, true);
        self.deadlines.insert((deadline, next));
        self.sessions
            .entry(req.session)
            .or_default()
            .waiters
            .insert(next);
        self.waiters.insert(
            next,
            Waiter {
                claim,
                session: req.session,
                request: req.request,
                scope: req.scope,
                deadline,
            },
        );
        Ok(Acquired::Queued(next))
    }

    /// Extends a live lock of `session` by another ttl from `now`. The token
    /// stays the same.
    pub fn refresh(
        &mut self,
        now: Instant,
        session: SessionId,
        token: LockToken,
    ) -> Result<Grant, LockError> {
        self.handle_timeout(now);
        let ttl = self.cfg.ttl;
        let lock = self
            .locks
            .get_mut(&token)
            .filter(|l| l.session == session)
            .ok_or(LockError::UnknownToken)?;
        self.expiries.remove(&(lock.expires_at, token));
        lock.expires_at = now + ttl;
        self.expiries.insert((lock.expires_at, token));
        Ok(Grant {
            token,
            ttl,
            expires_at: lock.expires_at,
        })
    }

    /// Gives a lock of `session` back; waiters it blocked are served.
    pub fn release(
        &mut self,
        now: Instant,
        session: SessionId,
        token: LockToken,
    ) -> Result<(), LockError> {
        self.handle_timeout(now);
        if self.locks.get(&token).is_none_or(|l| l.session != session) {
            return Err(LockError::UnknownToken);
        }
        self.wake.clear();
        self.remove_lock(token);
        self.serve(now);
        Ok(())
    }

    /// Withdraws a waiting request of `session` (its client gave up); the
    /// host answers that request itself. Waiters it held up are served.
    pub fn cancel(
        &mut self,
        now: Instant,
        session: SessionId,
        wait: WaitId,
    ) -> Result<(), LockError> {
        self.handle_timeout(now);
        if self.waiters.get(&wait).is_none_or(|w| w.session != session) {
            return Err(LockError::UnknownWait);
        }
        self.wake.clear();
        self.remove_waiter(wait);
        self.serve(now);
        Ok(())
    }

    /// The session is gone (disconnect, Goodbye): frees all its locks and
    /// drops its waiting requests, without outputs for them, then serves
    /// the waiters they held up.
    pub fn release_session(&mut self, now: Instant, session: SessionId) -> SessionRelease {
        self.handle_timeout(now);
        let Some(entry) = self.sessions.remove(&session) else {
            return SessionRelease::default();
        };
        self.wake.clear();
        for &wait in &entry.waiters {
            self.remove_waiter(wait);
        }
        for &token in &entry.locks {
            self.remove_lock(token);
        }
        self.serve(now);
        SessionRelease {
            locks: entry.locks.len(),
            waiters: entry.waiters.len(),
        }
    }

    /// The fencing check: may a write by `session` to `node` (whose
    /// ancestors are `ancestors`, as for [`Self::acquire`]) carrying `token`
    /// proceed? Only if the token names a live, unexpired, exclusive lock of
    /// that session covering the node. A token whose lock expired, was
    /// released, or was superseded by another session's lock is refused,
    /// so a client that was partitioned away and still believes it holds
    /// the lock cannot change the file.
    pub fn validate(
        &self,
        now: Instant,
        session: SessionId,
        token: LockToken,
        node: NodeId,
        ancestors: &[NodeId],
    ) -> Result<(), FenceError> {
        let lock = self
            .locks
            .get(&token)
            .filter(|l| l.session == session)
            .ok_or(FenceError::Unknown)?;
        if now >= lock.expires_at {
            return Err(FenceError::Expired);
        }
        if lock.claim.kind != LockKind::Exclusive {
            return Err(FenceError::NotExclusive);
        }
        let covers =
            lock.claim.node == node || (lock.claim.subtree && ancestors.contains(&lock.claim.node));
        if covers {
            Ok(())
        } else {
            Err(FenceError::NotCovered)
        }
    }

    /// Whether any lock is held on `node` or beneath it, or a subtree lock
    /// above it: what the host checks before it moves `node` in the tree.
    pub fn is_locked(&self, node: NodeId, ancestors: &[NodeId]) -> bool {
        let here = self
            .nodes
            .get(&node)
            .is_some_and(|n| !n.held.is_empty() || !n.held_below.is_empty());
        here || ancestors.iter().any(|a| {
            self.nodes
                .get(a)
                .is_some_and(|n| !n.held_subtree.is_empty())
        })
    }

    /// The lock with this token, if live (not yet reaped).
    pub fn lock(&self, token: LockToken) -> Option<LockInfo> {
        self.locks.get(&token).map(|l| info(token, l))
    }

    /// All locks, by token.
    pub fn locks(&self) -> impl Iterator<Item = LockInfo> + '_ {
        self.locks.iter().map(|(&t, l)| info(t, l))
    }

    /// The locks of one session, by token.
    pub fn locks_of(&self, session: SessionId) -> impl Iterator<Item = LockInfo> + '_ {
        self.sessions
            .get(&session)
            .into_iter()
            .flat_map(|s| &s.locks)
            .filter_map(|t| self.lock(*t))
    }

    /// Number of locks held.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// Number of waiting requests.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// The next instant a lock expires or a wait times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.expiries.first().map(|&(at, _)| at);
        let deadline = self.deadlines.first().map(|&(at, _)| at);
        expiry.into_iter().chain(deadline).min()
    }

    /// Expires locks and times out waiters due at `now`, then serves the
    /// waiters that freed. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.wake.clear();
        let mut fired = false;
        while let Some(&(at, token)) = self.expiries.first() {
            if at > now {
                break;
            }
            fired = true;
            if let Some(lock) = self.remove_lock(token) {
                self.out.push_back(LockOutput::Expired {
                    session: lock.session,
                    token,
                    scope: lock.scope,
                    kind: lock.claim.kind,
                });
            }
        }
        while let Some(&(at, wait)) = self.deadlines.first() {
            if at > now {
                break;
            }
            fired = true;
            if let Some(w) = self.remove_waiter(wait) {
                self.out.push_back(LockOutput::WaitTimedOut {
                    session: w.session,
                    request: w.request,
                    wait,
                });
            }
        }
        if fired {
            self.serve(now);
        }
    }

    /// The next output for the host, until `None`.
    pub fn poll_output(&mut self) -> Option<LockOutput> {
        self.out.pop_front()
    }

    /// Checks the table against its definition, by brute force (O(n²)):
    /// no two live locks conflict, every waiter is blocked by a holder or
    /// an earlier waiter (so none was forgotten), and the indexes agree
    /// with the entries. For tests, fuzzing and simulations.
    pub fn check_invariants(&self) -> Result<(), String> {
        let locks: Vec<(&LockToken, &Lock)> = self.locks.iter().collect();
        for (i, (ta, a)) in locks.iter().enumerate() {
            for (tb, b) in &locks[i + 1..] {
                if a.claim.conflicts(&b.claim) {
                    return Err(format!("locks {ta:?} and {tb:?} conflict"));
                }
            }
        }
        for (&id, w) in &self.waiters {
            let by_holder = self.locks.values().any(|l| l.claim.conflicts(&w.claim));
            let by_waiter = self
                .waiters
                .range(..id)
                .any(|(_, e)| e.claim.conflicts(&w.claim));
            if !by_holder && !by_waiter {
                return Err(format!("waiter {id:?} is blocked by nothing"));
            }
            if by_holder != self.held_conflict(&w.claim)
                || by_waiter != self.queued_conflict(&w.claim, id)
            {
                return Err(format!("index disagrees about waiter {id:?}"));
            }
        }
        let in_sessions: usize = self.sessions.values().map(SessionEntry::load).sum();
        if in_sessions != self.locks.len() + self.waiters.len()
            || self.expiries.len() != self.locks.len()
            || self.deadlines.len() != self.waiters.len()
            || self.sessions.values().any(|s| s.load() == 0)
            || self.nodes.values().any(NodeIndex::is_empty)
        {
            return Err("bookkeeping out of step".into());
        }
        Ok(())
    }

    /// Whether a lock held now conflicts with `claim`.
    fn held_conflict(&self, claim: &Claim) -> bool {
        let kind = claim.kind;
        let here = self
            .nodes
            .get(&claim.node)
            .is_some_and(|n| n.held.blocks(kind) || (claim.subtree && n.held_below.blocks(kind)));
        here || claim.ancestors.iter().any(|a| {
            self.nodes
                .get(a)
                .is_some_and(|n| n.held_subtree.blocks(kind))
        })
    }

    /// Whether a waiter queued before `before` conflicts with `claim`.
    fn queued_conflict(&self, claim: &Claim, before: WaitId) -> bool {
        let kind = claim.kind;
        let here = self.nodes.get(&claim.node).is_some_and(|n| {
            n.queued.blocks(kind, before) || (claim.subtree && n.queued_below.blocks(kind, before))
        });
        here || claim.ancestors.iter().any(|a| {
            self.nodes
                .get(a)
                .is_some_and(|n| n.queued_subtree.blocks(kind, before))
        })
    }

    fn grant(&mut self, now: Instant, session: SessionId, scope: LockScope, claim: Claim) -> Grant {
        let token = loop {
            let mut bytes = [0u8; 16];
            self.rng.fill(&mut bytes);
            let token = LockToken(bytes);
            // A repeat is astronomically unlikely, but a duplicate token
            // would alias two locks, so draw again rather than assume.
            if !self.locks.contains_key(&token) {
                break token;
            }
        };
        let expires_at = now + self.cfg.ttl;
        self.index_held(&claim, true);
        self.expiries.insert((expires_at, token));
        self.sessions
            .entry(session)
            .or_default()
            .locks
            .insert(token);
        self.locks.insert(
            token,
            Lock {
                claim,
                session,
                scope,
                granted_at: now,
                expires_at,
            },
        );
        Grant {
            token,
            ttl: self.cfg.ttl,
            expires_at,
        }
    }

    /// Removes a lock and notes the waiters its departure may unblock.
    fn remove_lock(&mut self, token: LockToken) -> Option<Lock> {
        let lock = self.locks.remove(&token)?;
        self.expiries.remove(&(lock.expires_at, token));
        if let Some(s) = self.sessions.get_mut(&lock.session) {
            s.locks.remove(&token);
            if s.load() == 0 {
                self.sessions.remove(&lock.session);
            }
        }
        self.index_held(&lock.claim, false);
        self.note_wake(&lock.claim);
        Some(lock)
    }

    /// Removes a waiter and notes the later waiters it may have held up.
    fn remove_waiter(&mut self, id: WaitId) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        self.deadlines.remove(&(w.deadline, id));
        if let Some(s) = self.sessions.get_mut(&w.session) {
            s.waiters.remove(&id);
            if s.load() == 0 {
                self.sessions.remove(&w.session);
            }
        }
        self.index_queued(&w.claim, id, false);
        self.note_wake(&w.claim);
        Some(w)
    }

    /// Adds to `wake` every waiter that `claim` could have blocked: those
    /// overlapping it with a conflicting kind.
    fn note_wake(&mut self, claim: &Claim) {
        let kind = claim.kind;
        if let Some(n) = self.nodes.get(&claim.node) {
            self.wake.extend(n.queued.conflicting(kind));
            if claim.subtree {
                self.wake.extend(n.queued_below.conflicting(kind));
            }
        }
        for a in claim.ancestors.iter() {
            if let Some(n) = self.nodes.get(a) {
                self.wake.extend(n.queued_subtree.conflicting(kind));
            }
        }
    }

    /// Grants, in FIFO order, each noted waiter that nothing blocks any more.
    fn serve(&mut self, now: Instant) {
        let mut wake = std::mem::take(&mut self.wake);
        wake.sort_unstable();
        wake.dedup();
        for &id in &wake {
            let Some(w) = self.waiters.get(&id) else {
                continue;
            };
            if self.held_conflict(&w.claim) || self.queued_conflict(&w.claim, id) {
                continue;
            }
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            self.deadlines.remove(&(w.deadline, id));
            if let Some(s) = self.sessions.get_mut(&w.session) {
                s.waiters.remove(&id);
            }
            self.index_queued(&w.claim, id, false);
            let kind = w.claim.kind;
            let grant = self.grant(now, w.session, w.scope, w.claim);
            self.out.push_back(LockOutput::Granted {
                session: w.session,
                request: w.request,
                wait: id,
                scope: w.scope,
                kind,
                grant,
            });
        }
        wake.clear();
        self.wake = wake;
    }

    fn index_held(&mut self, claim: &Claim, add: bool) {
        let kind = claim.kind;
        let apply = |c: &mut Counts| {
            if add { c.add(kind) } else { c.remove(kind) }
        };
        self.update_node(claim.node, |n| {
            apply(&mut n.held);
            if claim.subtree {
                apply(&mut n.held_subtree);
            }
        });
        for &a in claim.ancestors.iter() {
            self.update_node(a, |n| apply(&mut n.held_below));
        }
    }

    fn index_queued(&mut self, claim: &Claim, id: WaitId, add: bool) {
        let kind = claim.kind;
        let apply = |q: &mut Queue| {
            if add {
                q.add(kind, id)
            } else {
                q.remove(kind, id)
            }
        };
        self.update_node(claim.node, |n| {
            apply(&mut n.queued);
            if claim.subtree {
                apply(&mut n.queued_subtree);
            }
        });
        for &a in claim.ancestors.iter() {
            self.update_node(a, |n| apply(&mut n.queued_below));
        }
    }

    /// Applies `f` to a node's index, dropping the index when it empties so
    /// the map only holds nodes that have locks or waiters at or below.
    fn update_node(&mut self, node: NodeId, f: impl FnOnce(&mut NodeIndex)) {
        let n = self.nodes.entry(node).or_default();
        f(n);
        if n.is_empty() {
            self.nodes.remove(&node);
        }
    }
}

fn info(token: LockToken, l: &Lock) -> LockInfo {
    LockInfo {
        token,
        session: l.session,
        scope: l.scope,
        kind: l.claim.kind,
        granted_at: l.granted_at,
        expires_at: l.expires_at,
    }
}
