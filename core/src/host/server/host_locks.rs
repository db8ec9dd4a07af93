//! Clients' record locks held on the host's own files too, so that a
//! program on the host that locks a shared file (SQLite, a mail tool) is
//! kept out of what a client locks, and keeps clients out of what it
//! locks (docs/filesystem.md, "Programs on the host").
//!
//! The clients' table ([`RangeLocks`]) stays the one that decides between
//! clients. The host holds each client lock owner's ranges on a file of
//! its own ([`FsOp::HoldLocks`]: the shell gives every holder an open file
//! description, so these are OFD locks, which conflict with a local
//! program's `fcntl` locks as another process's would):
//!
//! * **Before** a lock is granted at once, the host takes it on its file.
//!   A local program's lock in the way makes it EAGAIN, or, for a waiting
//!   request, a wait: nothing announces that a local program let go, so
//!   the request is tried again every [`LOCAL_RETRY`].
//! * **After** every other change of an owner's ranges (an unlock, a
//!   waiter's grant, the session's end, a commit that put a new file in
//!   the old one's place), the host holds what the table says.
//!
//! A waiter the table grants as another client lets go is answered only
//! once the host's file holds it too; if a local program took the bytes
//! in between, the grant goes back ([`RangeLocks::restore`]) and the
//! request waits for the program. A commit's rename carries the locks to
//! the new file (the shell takes them on the staged file first), so no
//! local program can lock the new file in between. The limit: `flock`
//! (Linux keeps `flock` and `fcntl` locks apart: a local program using
//! `flock` is neither kept out nor keeps clients out).

use super::*;
use crate::host::fsop::LockHolder;
use crate::lock::range::{RangeOutcome, RangeOwner};
use crate::proto::{ByteRange, LockKind};

/// How often a request a local program's lock keeps waiting is tried
/// again.
pub(super) const LOCAL_RETRY: Duration = Duration::from_millis(200);

/// A client's lock request (`F_SETLK`, `F_SETLKW`, `flock`, OFD).
#[derive(Clone, Copy, Debug)]
pub(super) struct LockAsk {
    pub(super) session: SessionId,
    pub(super) id: RequestId,
    pub(super) owner: RangeOwner,
    pub(super) node: NodeId,
    pub(super) range: ByteRange,
    pub(super) kind: LockKind,
    pub(super) wait: bool,
}

/// A lock request waiting for a local program's lock.
#[derive(Clone, Debug)]
pub(super) struct Blocked {
    ask: LockAsk,
    /// When it is tried again.
    at: Instant,
}

/// A lock request whose range the host is taking on its own file: before
/// the table grants it, or, for a waiter the table granted, before it is
/// answered.
#[derive(Clone, Debug)]
pub(super) struct Taking {
    ask: LockAsk,
    /// The path the take went to (the node's first name then).
    path: Option<RelPath>,
    /// A waiter the table granted: what its owner held before, put back
    /// if a local program's lock is in the way.
    granted_over: Option<Vec<(ByteRange, LockKind)>>,
}

/// An owner's lock requests on a file, parked while a take is under way.
type Parked = VecDeque<(RequestId, Request)>;

/// The requests waiting for local programs, and the takes under way.
#[derive(Debug, Default)]
pub(super) struct HostLocks {
    blocked: Vec<Blocked>,
    /// Per owner and file with takes under way: how many, and the owner's
    /// lock requests on the file that came meanwhile, parked in order.
    /// The host's file and the table then change in the order the owner
    /// asked: a take and an unlock, each sending the whole set the owner
    /// holds, would otherwise undo each other on the file. (Two takes at
    /// once come only from one pass of waiters granted together.)
    taking: BTreeMap<(RangeOwner, NodeId), (usize, Parked)>,
}

impl HostLocks {
    /// When the next blocked request is tried again.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.blocked.iter().map(|b| b.at).min()
    }
}

impl HostServer {
    /// A client's lock request.
    pub(super) fn set_lock(&mut self, ask: LockAsk) -> Result<(), Errno> {
        let LockAsk {
            owner,
            node,
            range,
            kind,
            ..
        } = ask;
        if ask.wait {
            // It replaces one of the same that waits for a local program
            // (a client asks again when it heard nothing for a while).
            self.host_locks
                .blocked
                .retain(|b| !(b.ask.owner == owner && b.ask.node == node && b.ask.range == range));
        }
        if self.cfg.lock_host_files
            && let Some(locks) = self.ranges.would_hold(owner, node, range, kind)
            && let Ok(path) = self.path_of(node)
        {
            let taking = Taking {
                ask,
                path: Some(path.clone()),
                granted_over: None,
            };
            self.hold(Purpose::TakeOnHost(taking), Some(path), owner, node, locks);
            return Ok(());
        }
        self.lock_in_table(ask, false)
    }

    /// Takes the lock in the clients' table; then the host's file holds
    /// the owner's ranges as the table says (`taken`: the host took what
    /// a grant makes them first, and only a refusal changes them back).
    fn lock_in_table(&mut self, ask: LockAsk, taken: bool) -> Result<(), Errno> {
        let LockAsk {
            session,
            id,
            owner,
            node,
            ..
        } = ask;
        let outcome = self
            .ranges
            .lock(owner, node, ask.range, ask.kind, ask.wait.then_some(id));
        let granted = outcome == Ok(RangeOutcome::Granted);
        if granted {
            self.answer(session, id, Ok(Reply::Done));
        }
        if !(granted && taken) {
            self.mirror(owner, node);
        }
        self.drain_record_locks();
        outcome.map(|_| ())
    }

    /// A waiter the table granted: held on the host's file first, then
    /// answered ([`Self::taken_on_host`]).
    pub(super) fn hold_granted(&mut self, g: crate::lock::range::RangeGrant) {
        let locks = self.ranges.held_by(g.owner, g.node);
        let path = self.path_of(g.node).ok();
        let taking = Taking {
            path: path.clone(),
            ask: LockAsk {
                session: g.session,
                id: g.request,
                owner: g.owner,
                node: g.node,
                range: g.range,
                kind: g.kind,
                wait: true,
            },
            granted_over: Some(g.before),
        };
        self.hold(Purpose::TakeOnHost(taking), path, g.owner, g.node, locks);
    }

    /// Parks `request` if it is a lock request of an owner on a file with
    /// a take under way ([`HostLocks::taking`]); gives it back otherwise.
    pub(super) fn park_if_taking(
        &mut self,
        session: SessionId,
        id: RequestId,
        request: Request,
    ) -> Option<Request> {
        let (Request::SetLock { node, owner, .. }
        | Request::Unlock { node, owner, .. }
        | Request::Withdraw { node, owner, .. }) = request
        else {
            return Some(request);
        };
        let owner = RangeOwner { session, owner };
        match self.host_locks.taking.get_mut(&(owner, node)) {
            Some((_, parked)) => {
                parked.push_back((id, request));
                None
            }
            None => Some(request),
        }
    }

    /// The host's file answered a take.
    pub(super) fn taken_on_host(&mut self, now: Instant, t: Taking, result: FsResult) {
        let session = t.ask.session;
        let key = (t.ask.owner, t.ask.node);
        let last = match self.host_locks.taking.get_mut(&key) {
            Some((n, _)) => {
                *n -= 1;
                *n == 0
            }
            None => true,
        };
        let parked = if last {
            self.host_locks
                .taking
                .remove(&key)
                .map(|(_, p)| p)
                .unwrap_or_default()
        } else {
            VecDeque::new()
        };
        self.take_answered(now, t, result);
        for (id, request) in parked {
            if !self.sessions.contains_key(&session) {
                break;
            }
            if let Err(e) = self.dispatch(now, session, id, request) {
                self.answer(session, id, Err(e));
            }
        }
    }

    fn take_answered(&mut self, now: Instant, t: Taking, result: FsResult) {
        let ask = t.ask;
        if !self.sessions.contains_key(&ask.session) {
            // Gone meanwhile: let go of what was taken for it.
            self.mirror(ask.owner, ask.node);
            return;
        }
        if matches!(result, Err(Errno::Stale | Errno::NoEnt))
            && let Some(went) = t.path.clone()
            && let Ok(now_at) = self.path_of(ask.node)
            && (went != now_at || self.nodes.names(ask.node) > 1)
        {
            if went == now_at
                && let Some((parent, name)) = self.nodes.link(ask.node)
            {
                // Not the file at the name the node's path was built from
                // (a program on the host moved it, or saved another file
                // over it, and the watcher has not said so yet): that
                // name goes, as the report would have it go
                // (`check_name`), and the take goes to the file's other
                // name.
                self.drop_name(ask.node, parent, &name);
            }
            // Otherwise the node's path changed since the take went out
            // (a rename over the name it went through, or that name's
            // removal, whose result came first): the take goes to the
            // path now. Either way, deciding in the table alone would
            // grant over a program's lock on the file.
            let path = self.path_of(ask.node).ok();
            let locks = self.ranges.held_by(ask.owner, ask.node);
            let again = Taking {
                path: path.clone(),
                ..t
            };
            match again.granted_over {
                // Granted in the table already: held again, then answered.
                Some(_) => self.hold(Purpose::TakeOnHost(again), path, ask.owner, ask.node, locks),
                None => {
                    if let Err(e) = self.set_lock(ask) {
                        self.answer(ask.session, ask.id, Err(e));
                    }
                }
            }
            return;
        }
        if let Some(before) = &t.granted_over {
            if result != Err(Errno::Again) {
                // Held (or the host cannot hold it: the table decides).
                self.answer(ask.session, ask.id, Ok(Reply::Done));
                return;
            }
            // A local program took the bytes as the other client let go:
            // the grant goes back, and the request waits for the program.
            // (The failed take changed nothing on the host's file; it is
            // brought to what the table now says.)
            self.ranges
                .restore(ask.owner, ask.node, (ask.range, ask.kind), before);
            self.mirror(ask.owner, ask.node);
            self.drain_record_locks();
        }
        if result == Err(Errno::Again) {
            if !ask.wait {
                self.answer(ask.session, ask.id, Err(Errno::Again));
                return;
            }
            // Within the session's bound of locks, with those it holds
            // and waits for among clients.
            let waiting = self
                .host_locks
                .blocked
                .iter()
                .filter(|b| b.ask.session == ask.session)
                .count();
            if waiting + self.ranges.used_by(ask.session) >= self.cfg.record_locks.max_per_session {
                self.answer(ask.session, ask.id, Err(Errno::NoLck));
                return;
            }
            self.host_locks.blocked.push(Blocked {
                ask,
                at: now + LOCAL_RETRY,
            });
            return;
        }
        // Held; or the host cannot hold it (a file it may not open): the
        // clients' table decides alone then.
        if let Err(e) = self.lock_in_table(ask, result.is_ok()) {
            self.answer(ask.session, ask.id, Err(e));
        }
    }

    /// Tries again the requests local programs kept waiting.
    pub(super) fn retry_blocked(&mut self, now: Instant) {
        let (due, later): (Vec<Blocked>, Vec<Blocked>) =
            std::mem::take(&mut self.host_locks.blocked)
                .into_iter()
                .partition(|b| b.at <= now);
        self.host_locks.blocked = later;
        for Blocked { ask, .. } in due {
            if !self.sessions.contains_key(&ask.session) {
                continue;
            }
            if let Err(e) = self.set_lock(ask) {
                self.answer(ask.session, ask.id, Err(e));
            }
        }
    }

    /// `owner` no longer waits for `range` of `node` (`any`: for any bytes
    /// of it): an unlock or a withdrawal.
    pub(super) fn stop_waiting_on_host(
        &mut self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
        any: bool,
    ) -> Vec<RequestId> {
        let mut taken = Vec::new();
        self.host_locks.blocked.retain(|b| {
            let ours = b.ask.owner == owner
                && b.ask.node == node
                && if any {
                    b.ask.range.overlaps(&range)
                } else {
                    b.ask.range == range
                };
            if ours {
                taken.push(b.ask.id);
            }
            !ours
        });
        taken
    }

    /// Answers the lock waits of `session` an unlock or a withdrawal of
    /// their owner took back (EINTR), before that unlock's own answer:
    /// the client keeps a wait it gave up on until it hears how it ended,
    /// as its withdrawal may have overtaken it on the way (fs_sim, seed
    /// 14573), and asks a wait it still has again.
    pub(super) fn took_back(&mut self, session: SessionId, waits: Vec<RequestId>) {
        for wait in waits {
            self.answer(session, wait, Err(Errno::Intr));
        }
    }

    /// A session ended: its requests stop waiting, and the host lets go
    /// of its locks (`held`: its holders, from before the table let go).
    pub(super) fn session_gone_from_host(
        &mut self,
        session: SessionId,
        held: BTreeSet<(RangeOwner, NodeId)>,
    ) {
        self.host_locks.blocked.retain(|b| b.ask.session != session);
        for (owner, node) in held {
            self.mirror(owner, node);
        }
    }

    /// A commit put a new file at `node`'s path: the locks held on the old
    /// one move to it.
    pub(super) fn file_replaced_on_host(&mut self, node: NodeId) {
        for (owner, node) in self.ranges.holders(Some(node), None) {
            self.mirror(owner, node);
        }
    }

    /// Holds on the host's file what the table says `owner` holds on
    /// `node`.
    pub(super) fn mirror(&mut self, owner: RangeOwner, node: NodeId) {
        if !self.cfg.lock_host_files {
            return;
        }
        let locks = self.ranges.held_by(owner, node);
        let path = self.path_of(node).ok();
        self.hold(Purpose::Housekeeping, path, owner, node, locks);
    }

    fn hold(
        &mut self,
        purpose: Purpose,
        path: Option<RelPath>,
        owner: RangeOwner,
        node: NodeId,
        locks: Vec<(ByteRange, LockKind)>,
    ) {
        if matches!(purpose, Purpose::TakeOnHost(_)) {
            self.host_locks.taking.entry((owner, node)).or_default().0 += 1;
        }
        let op = FsOp::HoldLocks {
            path,
            holder: LockHolder {
                session: owner.session,
                owner: owner.owner,
                node,
            },
            key: self.nodes.key(node),
            locks,
        };
        self.fs(purpose, op);
    }
}
