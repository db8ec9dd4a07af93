//! Advisory record locks: the host's table of `fcntl`/`flock` locks that
//! every client's programs share (docs/filesystem.md, "Advisory locks").
//!
//! These are not the lock table's locks ([`super::LockTable`], which
//! fence write transactions and leases and expire with a ttl). They are
//! POSIX's: held by an *owner* (a kernel lock owner on one client: a
//! process for `fcntl`, an open file for `flock` and OFD locks) on a
//! byte range of one file, for as long as the owner wants, and released
//! by the owner, by a close, or when the owner's session ends. Their
//! rules are the kernel's:
//!
//! * Two locks conflict when they belong to different owners, share a
//!   byte, and one is exclusive (a write lock).
//! * An owner never conflicts with itself: its new lock replaces its own
//!   on the same bytes (splitting or merging ranges), so a read lock
//!   turns into a write lock in one step.
//! * A lock that conflicts fails with EAGAIN, or waits (F_SETLKW). Waiters
//!   are woken in arrival order whenever a lock on their file goes; a
//!   waiter whose lock's holder waits, through others, for something the
//!   waiter's owner holds gets EDEADLK instead of waiting forever.
//!
//! Bounds: each session holds at most `max_per_session` ranges and
//! waiters together (ENOLCK beyond), and the deadlock search looks at
//! most `MAX_DEADLOCK_DEPTH` owners deep.
//!
//! The table is pure: grants for waiters come out of [`RangeLocks::poll_grant`].

use crate::proto::{ByteRange, Errno, LockKind, NodeId, RangeHeld, RequestId, SessionId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How far the deadlock search follows owners waiting for owners.
const MAX_DEADLOCK_DEPTH: usize = 16;

/// Who holds a record lock: a kernel lock owner on one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeOwner {
    /// The client's session.
    pub session: SessionId,
    /// The kernel's lock owner there.
    pub owner: u64,
}

/// Bounds of the record-lock table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeLockConfig {
    /// Ranges held plus requests waiting, per session.
    pub max_per_session: usize,
}

impl Default for RangeLockConfig {
    fn default() -> Self {
        RangeLockConfig {
            max_per_session: 4096,
        }
    }
}

/// What became of a request to lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Held now.
    Granted,
    /// Waiting; its grant comes from [`RangeLocks::poll_grant`].
    Queued,
}

/// The answer to a request that waited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeGrant {
    /// The requester's session.
    pub session: SessionId,
    /// The requester.
    pub owner: RangeOwner,
    /// The file.
    pub node: NodeId,
    /// What it asked for.
    pub range: ByteRange,
    /// How.
    pub kind: LockKind,
    /// What the owner held on the file before ([`RangeLocks::restore`]).
    pub before: Vec<(ByteRange, LockKind)>,
    /// Its request.
    pub request: RequestId,
    /// Held, or why not after all (ENOLCK: the session's bound).
    pub result: Result<(), Errno>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    owner: RangeOwner,
    range: ByteRange,
    kind: LockKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    owner: RangeOwner,
    range: ByteRange,
    kind: LockKind,
    request: RequestId,
}

#[derive(Clone, Debug, Default)]
struct FileLocks {
    /// Every owner's ranges; one owner's never overlap each other.
    held: Vec<Held>,
    /// Requests waiting, oldest first.
    waiting: VecDeque<Waiter>,
}

/// The host's record locks, per file.
#[derive(Clone, Debug, Default)]
pub struct RangeLocks {
    cfg: RangeLockConfig,
    files: BTreeMap<NodeId, FileLocks>,
    /// Ranges held plus waiters, per session.
    used: BTreeMap<SessionId, usize>,
    grants: VecDeque<RangeGrant>,
}

fn conflicts(a: LockKind, b: LockKind) -> bool {
    !matches!((a, b), (LockKind::Shared, LockKind::Shared))
}

impl FileLocks {
    /// The first lock of another owner in the way of `kind` on `range`.
    fn blocker(&self, owner: RangeOwner, range: ByteRange, kind: LockKind) -> Option<&Held> {
        self.held
            .iter()
            .find(|h| h.owner != owner && h.range.overlaps(&range) && conflicts(h.kind, kind))
    }

    /// `owner`'s ranges with `range` cut out of them (what an unlock, or
    /// the first half of a lock, leaves).
    fn without(&self, owner: RangeOwner, range: ByteRange) -> Vec<Held> {
        let mut out = Vec::with_capacity(self.held.len() + 1);
        for h in &self.held {
            if h.owner != owner || !h.range.overlaps(&range) {
                out.push(*h);
                continue;
            }
            if h.range.start < range.start {
                out.push(Held {
                    range: ByteRange {
                        start: h.range.start,
                        end: range.start - 1,
                    },
                    ..*h
                });
            }
            if h.range.end > range.end {
                out.push(Held {
                    range: ByteRange {
                        start: range.end + 1,
                        end: h.range.end,
                    },
                    ..*h
                });
            }
        }
        out
    }

    /// The ranges after `owner` takes `kind` on `range`: its own locks on
    /// those bytes replaced, and merged with its touching locks of the
    /// same kind, as the kernel merges them.
    fn with(&self, owner: RangeOwner, range: ByteRange, kind: LockKind) -> Vec<Held> {
        let mut held = self.without(owner, range);
        let mut new = Held { owner, range, kind };
        held.retain(|h| {
            let touches = h.owner == owner
                && h.kind == kind
                && h.range.start <= new.range.end.saturating_add(1)
                && new.range.start <= h.range.end.saturating_add(1);
            if touches {
                new.range.start = new.range.start.min(h.range.start);
                new.range.end = new.range.end.max(h.range.end);
            }
            !touches
        });
        held.push(new);
        held
    }
}

impl RangeLocks {
    /// An empty table.
    pub fn new(cfg: RangeLockConfig) -> Self {
        RangeLocks {
            cfg,
            ..RangeLocks::default()
        }
    }

    /// Takes `kind` on `range` of `node` for `owner`: granted, queued
    /// (with `wait`, answered later through [`RangeLocks::poll_grant`]),
    /// or refused: EAGAIN (held by another, no wait), EDEADLK, ENOLCK
    /// (the session's bound), EINVAL (an empty range).
    pub fn lock(
        &mut self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
        kind: LockKind,
        wait: Option<RequestId>,
    ) -> Result<RangeOutcome, Errno> {
        if range.start > range.end {
            return Err(Errno::Inval);
        }
        let file = self.files.entry(node).or_default();
        let outcome = if file.blocker(owner, range, kind).is_none() {
            let held = file.with(owner, range, kind);
            self.replace(owner.session, node, held)?;
            // A lock that turned from exclusive to shared may let
            // readers in.
            self.wake(node);
            RangeOutcome::Granted
        } else {
            let Some(request) = wait else {
                self.drop_if_empty(node);
                return Err(Errno::Again);
            };
            if let Some(w) = self.files.get_mut(&node).and_then(|f| {
                f.waiting
                    .iter_mut()
                    .find(|w| w.owner == owner && w.range == range && w.kind == kind)
            }) {
                // Asked again (the client heard nothing for a while): the
                // waiter keeps its place and answers the new request.
                w.request = request;
                return Ok(RangeOutcome::Queued);
            }
            let refused = if self.would_deadlock(owner, node, range, kind) {
                Some(Errno::DeadLk)
            } else if self.used(owner.session) >= self.cfg.max_per_session {
                Some(Errno::NoLck)
            } else {
                None
            };
            if let Some(e) = refused {
                self.drop_if_empty(node);
                return Err(e);
            }
            *self.used.entry(owner.session).or_default() += 1;
            self.files
                .entry(node)
                .or_default()
                .waiting
                .push_back(Waiter {
                    owner,
                    range,
                    kind,
                    request,
                });
            RangeOutcome::Queued
        };
        debug_assert!(self.consistent());
        Ok(outcome)
    }

    /// Releases `owner`'s locks on `range` of `node` (all of them with
    /// [`ByteRange::WHOLE`]) and wakes the waiters that can now go.
    /// Releasing what is not held is no error, as in POSIX. The owner's
    /// own requests waiting for those bytes are withdrawn: an owner that
    /// unlocks is not waiting (a client that gave up on a wait says so
    /// this way, and a grant it would never hear of cannot linger).
    /// Returns the requests taken back, which the host answers (EINTR),
    /// as for [`RangeLocks::withdraw`].
    pub fn unlock(&mut self, owner: RangeOwner, node: NodeId, range: ByteRange) -> Vec<RequestId> {
        let taken = self.take_back(owner, node, |w| w.overlaps(&range));
        if let Some(file) = self.files.get(&node) {
            let held = file.without(owner, range);
            // Removing never splits more than one range in two, and an
            // unlock that splits one still frees bytes: it may exceed the
            // bound by one rather than fail, as the kernel's may.
            let before = file
                .held
                .iter()
                .filter(|h| h.owner.session == owner.session)
                .count();
            let after = held
                .iter()
                .filter(|h| h.owner.session == owner.session)
                .count();
            self.adjust(owner.session, before, after);
            if let Some(file) = self.files.get_mut(&node) {
                file.held = held;
            }
            self.wake(node);
        }
        debug_assert!(self.consistent());
        taken
    }

    /// Withdraws `owner`'s request waiting for exactly `range` of `node`,
    /// leaving the locks it holds (a wait its program gave up on,
    /// interrupted by a signal), and wakes the waiters that can now go.
    /// Exactly: another thread of an owner (OFD locks, threads sharing a
    /// process's locks) may wait for other bytes meanwhile. Returns the
    /// requests taken back, which the host answers (EINTR): the client
    /// keeps a withdrawn wait until it hears how it ended.
    pub fn withdraw(
        &mut self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
    ) -> Vec<RequestId> {
        let taken = self.take_back(owner, node, |w| w == range);
        self.wake(node);
        debug_assert!(self.consistent());
        taken
    }

    /// Drops `owner`'s waiting requests on `node` for the bytes `which`
    /// accepts, and returns them.
    fn take_back(
        &mut self,
        owner: RangeOwner,
        node: NodeId,
        which: impl Fn(ByteRange) -> bool,
    ) -> Vec<RequestId> {
        let Some(file) = self.files.get_mut(&node) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        file.waiting.retain(|w| {
            let ours = w.owner == owner && which(w.range);
            if ours {
                taken.push(w.request);
            }
            !ours
        });
        self.adjust(owner.session, taken.len(), 0);
        taken
    }

    /// The ranges `owner` would hold on `node` once it took `kind` on
    /// `range`, if no other owner's lock is in the way (what the host
    /// takes on its own file first, so that its local programs are
    /// excluded too).
    pub fn would_hold(
        &self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
        kind: LockKind,
    ) -> Option<Vec<(ByteRange, LockKind)>> {
        let empty = FileLocks::default();
        let file = self.files.get(&node).unwrap_or(&empty);
        if range.start > range.end || file.blocker(owner, range, kind).is_some() {
            return None;
        }
        let mut v: Vec<(ByteRange, LockKind)> = file
            .with(owner, range, kind)
            .into_iter()
            .filter(|h| h.owner == owner)
            .map(|h| (h.range, h.kind))
            .collect();
        v.sort_by_key(|(r, _)| r.start);
        Some(v)
    }

    /// Takes back `grant`, which the host could not also hold on its own
    /// file (a local program's lock was in the way): on the bytes it
    /// covered, `owner` holds again what it held before (`before`, its
    /// ranges then); its other ranges stay as they are now (another
    /// grant of its own may have changed them since). Bytes where a lock
    /// granted meanwhile on the strength of the grant (after a
    /// downgrade) conflicts with what was held before keep the granted
    /// kind: weaker than before, but never two conflicting holders. Wakes
    /// the waiters that can now go.
    pub fn restore(
        &mut self,
        owner: RangeOwner,
        node: NodeId,
        grant: (ByteRange, LockKind),
        before: &[(ByteRange, LockKind)],
    ) {
        let (range, granted) = grant;
        let file = self.files.entry(node).or_default();
        let mut back = FileLocks {
            held: file.without(owner, range),
            waiting: VecDeque::new(),
        };
        for &(r, kind) in before {
            let start = r.start.max(range.start);
            let end = r.end.min(range.end);
            if start > end {
                continue;
            }
            let part = ByteRange { start, end };
            let in_the_way: Vec<ByteRange> = back
                .held
                .iter()
                .filter(|h| h.owner != owner && h.range.overlaps(&part) && conflicts(h.kind, kind))
                .map(|h| h.range)
                .collect();
            if !in_the_way.is_empty() {
                back.held = back.with(owner, part, granted);
            }
            for free in part.minus(&in_the_way) {
                back.held = back.with(owner, free, kind);
            }
        }
        let held = back.held;
        let mine = |h: &&Held| h.owner.session == owner.session;
        let was = file.held.iter().filter(mine).count();
        let now = held.iter().filter(mine).count();
        file.held = held;
        self.adjust(owner.session, was, now);
        self.wake(node);
        debug_assert!(self.consistent());
    }

    /// Every owner holding a range of `node`, and every file a session's
    /// owners hold ranges of (`None`: of every session).
    pub fn holders(
        &self,
        node: Option<NodeId>,
        session: Option<SessionId>,
    ) -> BTreeSet<(RangeOwner, NodeId)> {
        self.files
            .iter()
            .filter(|(n, _)| node.is_none_or(|m| m == **n))
            .flat_map(|(&n, f)| f.held.iter().map(move |h| (h.owner, n)))
            .filter(|(o, _)| session.is_none_or(|s| s == o.session))
            .collect()
    }

    /// The first lock of another owner that stops `owner` taking `kind`
    /// on `range` (F_GETLK), if any.
    pub fn test(
        &self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
        kind: LockKind,
    ) -> Option<RangeHeld> {
        let h = self.files.get(&node)?.blocker(owner, range, kind)?;
        Some(RangeHeld {
            range: h.range,
            kind: h.kind,
        })
    }

    /// A session ended: its locks go and its waiters are dropped
    /// (nobody is left to answer), and others' waiters wake.
    pub fn release_session(&mut self, session: SessionId) {
        let nodes: Vec<NodeId> = self.files.keys().copied().collect();
        for node in nodes {
            let Some(file) = self.files.get_mut(&node) else {
                continue;
            };
            let had = file.held.len() + file.waiting.len();
            file.held.retain(|h| h.owner.session != session);
            file.waiting.retain(|w| w.owner.session != session);
            if file.held.len() + file.waiting.len() != had {
                self.wake(node);
            }
        }
        self.used.remove(&session);
        debug_assert!(self.consistent());
    }

    /// The next answer for a request that waited.
    pub fn poll_grant(&mut self) -> Option<RangeGrant> {
        self.grants.pop_front()
    }

    /// Ranges held and requests waiting of `session`.
    pub fn used_by(&self, session: SessionId) -> usize {
        self.used(session)
    }

    /// Ranges held and requests waiting, in all.
    pub fn len(&self) -> usize {
        self.used.values().sum()
    }

    /// Whether no lock is held and none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ranges `owner` holds on `node`, in order (for tests and
    /// simulations).
    pub fn held_by(&self, owner: RangeOwner, node: NodeId) -> Vec<(ByteRange, LockKind)> {
        let mut v: Vec<(ByteRange, LockKind)> = self
            .files
            .get(&node)
            .map(|f| {
                f.held
                    .iter()
                    .filter(|h| h.owner == owner)
                    .map(|h| (h.range, h.kind))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|(r, _)| r.start);
        v
    }

    fn used(&self, session: SessionId) -> usize {
        self.used.get(&session).copied().unwrap_or(0)
    }

    fn adjust(&mut self, session: SessionId, before: usize, after: usize) {
        let n = (self.used(session) + after).saturating_sub(before);
        if n == 0 {
            self.used.remove(&session);
        } else {
            self.used.insert(session, n);
        }
    }

    /// Installs `held` as `node`'s ranges if the session stays within its
    /// bound (ENOLCK otherwise, nothing changed).
    fn replace(&mut self, session: SessionId, node: NodeId, held: Vec<Held>) -> Result<(), Errno> {
        let file = self.files.entry(node).or_default();
        let before = file
            .held
            .iter()
            .filter(|h| h.owner.session == session)
            .count();
        let after = held.iter().filter(|h| h.owner.session == session).count();
        if after > before && self.used(session) + after - before > self.cfg.max_per_session {
            self.drop_if_empty(node);
            return Err(Errno::NoLck);
        }
        if let Some(file) = self.files.get_mut(&node) {
            file.held = held;
        }
        self.adjust(session, before, after);
        Ok(())
    }

    /// Grants, in arrival order, every waiter on `node` that nothing
    /// blocks any more.
    fn wake(&mut self, node: NodeId) {
        let mut i = 0;
        loop {
            let Some(file) = self.files.get(&node) else {
                return;
            };
            let Some(&w) = file.waiting.get(i) else {
                break;
            };
            if file.blocker(w.owner, w.range, w.kind).is_some() {
                i += 1;
                continue;
            }
            let held = file.with(w.owner, w.range, w.kind);
            let before = self.held_by(w.owner, node);
            if let Some(file) = self.files.get_mut(&node) {
                file.waiting.remove(i);
            }
            // The waiter's slot is given back; the grant takes its own.
            self.adjust(w.owner.session, 1, 0);
            let result = self.replace(w.owner.session, node, held);
            self.grants.push_back(RangeGrant {
                session: w.owner.session,
                owner: w.owner,
                node,
                range: w.range,
                kind: w.kind,
                before,
                request: w.request,
                result,
            });
            // The grant replaced its owner's own locks on those bytes: a
            // write lock it turned to read may free an earlier waiter.
            i = 0;
        }
        self.drop_if_empty(node);
    }

    fn drop_if_empty(&mut self, node: NodeId) {
        if self
            .files
            .get(&node)
            .is_some_and(|f| f.held.is_empty() && f.waiting.is_empty())
        {
            self.files.remove(&node);
        }
    }

    /// Whether `owner` waiting for `kind` on `range` of `node` would close
    /// a cycle: some owner in its way waits, directly or through others,
    /// for a lock `owner` holds.
    fn would_deadlock(
        &self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
        kind: LockKind,
    ) -> bool {
        let mut frontier: BTreeSet<RangeOwner> = self.blockers(owner, node, range, kind);
        let mut seen = BTreeSet::new();
        for _ in 0..MAX_DEADLOCK_DEPTH {
            if frontier.contains(&owner) {
                return true;
            }
            let mut next = BTreeSet::new();
            for o in frontier {
                if !seen.insert(o) {
                    continue;
                }
                for (&n, file) in &self.files {
                    for w in file.waiting.iter().filter(|w| w.owner == o) {
                        next.extend(self.blockers(o, n, w.range, w.kind));
                    }
                }
            }
            if next.is_empty() {
                return false;
            }
            frontier = next;
        }
        false
    }

    fn blockers(
        &self,
        owner: RangeOwner,
        node: NodeId,
        range: ByteRange,
        kind: LockKind,
    ) -> BTreeSet<RangeOwner> {
        self.files
            .get(&node)
            .map(|f| {
                f.held
                    .iter()
                    .filter(|h| {
                        h.owner != owner && h.range.overlaps(&range) && conflicts(h.kind, kind)
                    })
                    .map(|h| h.owner)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The table's invariants: no two owners' ranges conflict, an owner's
    /// ranges are disjoint and its touching ranges of one kind merged,
    /// every waiter is blocked (one that is not was granted), no file is kept empty, and the per-session
    /// counts are what the table holds.
    pub fn consistent(&self) -> bool {
        let mut used: BTreeMap<SessionId, usize> = BTreeMap::new();
        for file in self.files.values() {
            if file.held.is_empty() && file.waiting.is_empty() {
                return false;
            }
            for (i, a) in file.held.iter().enumerate() {
                if a.range.start > a.range.end {
                    return false;
                }
                *used.entry(a.owner.session).or_default() += 1;
                for b in &file.held[i + 1..] {
                    let clash = if a.owner == b.owner {
                        a.range.overlaps(&b.range)
                            || (a.kind == b.kind
                                && (a.range.end.checked_add(1) == Some(b.range.start)
                                    || b.range.end.checked_add(1) == Some(a.range.start)))
                    } else {
                        a.range.overlaps(&b.range) && conflicts(a.kind, b.kind)
                    };
                    if clash {
                        return false;
                    }
                }
            }
            for w in &file.waiting {
                if file.blocker(w.owner, w.range, w.kind).is_none() {
                    return false;
                }
                *used.entry(w.owner.session).or_default() += 1;
            }
        }
        used == self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn owner(session: u8, owner: u64) -> RangeOwner {
        RangeOwner {
            session: SessionId([session; 16]),
            owner,
        }
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    const F: NodeId = NodeId(7);
    use LockKind::{Exclusive as W, Shared as R};

    #[test]
    fn owners_conflict_only_on_shared_bytes_with_a_writer() {
        let mut t = RangeLocks::default();
        let (a, b) = (owner(1, 1), owner(2, 1));
        assert_eq!(t.lock(a, F, r(0, 9), W, None), Ok(RangeOutcome::Granted));
        assert_eq!(t.lock(b, F, r(5, 5), R, None), Err(Errno::Again));
        assert_eq!(t.lock(b, F, r(10, 19), W, None), Ok(RangeOutcome::Granted));
        assert_eq!(
            t.test(b, F, r(0, u64::MAX), R),
            Some(RangeHeld {
                range: r(0, 9),
                kind: W
            })
        );
        // One's own locks are never in the way.
        assert_eq!(t.test(a, F, r(0, 9), W), None);
        // Readers share.
        t.unlock(a, F, ByteRange::WHOLE);
        assert_eq!(t.lock(a, F, r(0, 9), R, None), Ok(RangeOutcome::Granted));
        assert_eq!(t.lock(b, F, r(0, 9), R, None), Ok(RangeOutcome::Granted));
        assert_eq!(t.lock(b, F, r(0, 9), W, None), Err(Errno::Again));
    }

    #[test]
    fn an_owners_new_lock_replaces_and_splits_its_own() {
        let mut t = RangeLocks::default();
        let a = owner(1, 1);
        t.lock(a, F, r(0, 99), R, None).expect("granted");
        t.lock(a, F, r(40, 59), W, None).expect("granted");
        assert_eq!(
            t.held_by(a, F),
            vec![(r(0, 39), R), (r(40, 59), W), (r(60, 99), R)]
        );
        // Back to shared: the three merge into one.
        t.lock(a, F, r(40, 59), R, None).expect("granted");
        assert_eq!(t.held_by(a, F), vec![(r(0, 99), R)]);
        // An unlock in the middle splits it.
        t.unlock(a, F, r(10, 19));
        assert_eq!(t.held_by(a, F), vec![(r(0, 9), R), (r(20, 99), R)]);
        assert_eq!(t.len(), 2);
        t.unlock(a, F, ByteRange::WHOLE);
        assert!(t.is_empty());
    }

    #[test]
    fn waiters_are_granted_in_order_when_the_holder_lets_go() {
        let mut t = RangeLocks::default();
        let (a, b, c) = (owner(1, 1), owner(2, 1), owner(3, 1));
        t.lock(a, F, ByteRange::WHOLE, W, None).expect("granted");
        assert_eq!(
            t.lock(b, F, r(0, 0), W, Some(RequestId(10))),
            Ok(RangeOutcome::Queued)
        );
        assert_eq!(
            t.lock(c, F, r(0, 0), R, Some(RequestId(11))),
            Ok(RangeOutcome::Queued)
        );
        assert_eq!(t.poll_grant(), None);
        // Turning the write lock into a read lock lets no writer in...
        t.lock(a, F, ByteRange::WHOLE, R, None).expect("granted");
        // ...but the reader behind the writer goes.
        let g = t.poll_grant().expect("a grant");
        assert_eq!(
            (g.session, g.request, g.result),
            (c.session, RequestId(11), Ok(()))
        );
        assert_eq!(t.poll_grant(), None);
        t.unlock(a, F, ByteRange::WHOLE);
        assert_eq!(t.poll_grant(), None, "c's read lock still keeps b out");
        t.unlock(c, F, ByteRange::WHOLE);
        let g = t.poll_grant().expect("a grant");
        assert_eq!(
            (g.session, g.request, g.result),
            (b.session, RequestId(10), Ok(()))
        );
        assert_eq!(t.held_by(b, F), vec![(r(0, 0), W)]);
    }

    #[test]
    fn a_waiter_asked_for_again_keeps_its_place_and_answers_the_new_request() {
        let mut t = RangeLocks::default();
        let (a, b, c) = (owner(1, 1), owner(2, 1), owner(3, 1));
        t.lock(a, F, r(0, 0), W, None).expect("granted");
        t.lock(b, F, r(0, 0), W, Some(RequestId(1)))
            .expect("queued");
        t.lock(c, F, r(0, 0), W, Some(RequestId(2)))
            .expect("queued");
        assert_eq!(
            t.lock(b, F, r(0, 0), W, Some(RequestId(3))),
            Ok(RangeOutcome::Queued)
        );
        assert_eq!(t.len(), 3, "one waiter for b, not two");
        t.unlock(a, F, ByteRange::WHOLE);
        let g = t.poll_grant().expect("a grant");
        assert_eq!((g.session, g.request), (b.session, RequestId(3)));
        assert_eq!(t.poll_grant(), None);
    }

    #[test]
    fn an_unlock_withdraws_the_owners_waits_on_those_bytes() {
        let mut t = RangeLocks::default();
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.lock(a, F, r(0, 9), W, None).expect("granted");
        t.lock(b, F, r(0, 0), W, Some(RequestId(1)))
            .expect("queued");
        t.lock(b, F, r(5, 5), W, Some(RequestId(2)))
            .expect("queued");
        t.unlock(b, F, r(4, 6));
        assert_eq!(t.len(), 2, "the wait on byte 5 is withdrawn");
        t.unlock(a, F, ByteRange::WHOLE);
        let g = t.poll_grant().expect("a grant");
        assert_eq!(g.request, RequestId(1));
        assert_eq!(t.poll_grant(), None);
    }

    #[test]
    fn a_withdrawal_takes_back_the_wait_and_keeps_what_is_held() {
        let mut t = RangeLocks::default();
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.lock(a, F, r(0, 9), R, None).expect("granted");
        t.lock(b, F, r(0, 9), R, None).expect("granted");
        assert_eq!(
            t.lock(a, F, r(0, 9), W, Some(RequestId(1))),
            Ok(RangeOutcome::Queued),
            "an upgrade waits for the other reader"
        );
        t.withdraw(a, F, r(0, 9));
        assert_eq!(t.held_by(a, F), vec![(r(0, 9), R)]);
        t.unlock(b, F, ByteRange::WHOLE);
        assert_eq!(t.poll_grant(), None, "nothing waits any more");
        assert_eq!(
            t.lock(b, F, r(0, 9), W, None),
            Err(Errno::Again),
            "the read lock still keeps writers out"
        );
    }

    /// A waiter's grant taken back (the host could not hold it on its
    /// own file) leaves the owner as it was on those bytes, and nothing
    /// else changed: not its other ranges, not another owner's grant
    /// made on the strength of it, which keeps its kind there.
    #[test]
    fn a_grant_taken_back_restores_only_its_own_bytes() {
        let mut t = RangeLocks::default();
        let (a, b, c) = (owner(1, 1), owner(2, 1), owner(3, 1));
        t.lock(a, F, r(0, 9), W, None).expect("granted");
        t.lock(a, F, r(50, 59), R, None).expect("granted");
        t.lock(b, F, r(10, 19), W, None).expect("granted");
        // A downgrades and extends its lock: it waits for B's bytes; C
        // waits to read A's.
        assert_eq!(
            t.lock(a, F, r(0, 19), R, Some(RequestId(1))),
            Ok(RangeOutcome::Queued)
        );
        assert_eq!(
            t.lock(c, F, r(0, 4), R, Some(RequestId(2))),
            Ok(RangeOutcome::Queued)
        );
        t.unlock(b, F, ByteRange::WHOLE);
        let g = t.poll_grant().expect("A granted");
        assert_eq!((g.owner, g.range, g.kind), (a, r(0, 19), R));
        assert_eq!(g.before, vec![(r(0, 9), W), (r(50, 59), R)]);
        assert_eq!(t.poll_grant().map(|g| g.owner), Some(c), "C reads beside A");
        t.restore(a, F, (g.range, g.kind), &g.before);
        assert!(t.consistent());
        assert_eq!(
            t.held_by(a, F),
            vec![(r(0, 4), R), (r(5, 9), W), (r(50, 59), R)],
            "a write lock again where C does not read; bytes 10..19 free"
        );
        assert_eq!(t.held_by(c, F), vec![(r(0, 4), R)]);
        assert_eq!(t.lock(b, F, r(10, 19), W, None), Ok(RangeOutcome::Granted));
    }

    #[test]
    fn a_wait_that_would_close_a_cycle_is_edeadlk() {
        let mut t = RangeLocks::default();
        let (a, b) = (owner(1, 1), owner(2, 1));
        t.lock(a, F, r(0, 0), W, None).expect("granted");
        t.lock(b, F, r(1, 1), W, None).expect("granted");
        assert_eq!(
            t.lock(a, F, r(1, 1), W, Some(RequestId(1))),
            Ok(RangeOutcome::Queued)
        );
        assert_eq!(
            t.lock(b, F, r(0, 0), W, Some(RequestId(2))),
            Err(Errno::DeadLk)
        );
        // Without waiting it is only busy.
        assert_eq!(t.lock(b, F, r(0, 0), W, None), Err(Errno::Again));
    }

    #[test]
    fn a_session_that_ends_frees_its_locks_for_the_waiters() {
        let mut t = RangeLocks::default();
        let (a, a2, b) = (owner(1, 1), owner(1, 2), owner(2, 1));
        t.lock(a, F, r(0, 9), W, None).expect("granted");
        t.lock(a2, NodeId(8), r(0, 9), R, None).expect("granted");
        t.lock(b, F, r(5, 5), R, Some(RequestId(3)))
            .expect("granted");
        t.lock(a2, F, r(5, 5), W, Some(RequestId(4)))
            .expect("granted");
        t.release_session(a.session);
        let g = t.poll_grant().expect("a grant");
        assert_eq!((g.session, g.request), (b.session, RequestId(3)));
        assert_eq!(t.poll_grant(), None, "the ended session's waiter is gone");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_ranges() {
        let mut t = RangeLocks::new(RangeLockConfig { max_per_session: 3 });
        let a = owner(1, 1);
        for i in 0..3 {
            t.lock(a, F, r(i * 10, i * 10), W, None).expect("granted");
        }
        assert_eq!(t.lock(a, F, r(100, 100), W, None), Err(Errno::NoLck));
        // Merging into an existing range costs nothing.
        assert_eq!(t.lock(a, F, r(1, 1), W, None), Ok(RangeOutcome::Granted));
        assert_eq!(t.len(), 3);
        let b = owner(2, 1);
        assert_eq!(t.lock(a, NodeId(9), r(0, 0), W, None), Err(Errno::NoLck));
        assert_eq!(t.lock(b, F, r(0, 0), W, None), Err(Errno::Again));
    }

    /// A per-byte model of three owners over 12 bytes, driven by random
    /// locks, waits and unlocks: the table agrees on what each owner holds,
    /// which waiters are granted, and in what order.
    #[test]
    fn agrees_with_a_byte_by_byte_model() {
        const BYTES: usize = 12;
        type Model = Vec<[Option<LockKind>; BYTES]>;
        fn blocked(m: &Model, who: usize, s: usize, e: usize, k: LockKind) -> bool {
            m.iter().enumerate().any(|(o, bytes)| {
                o != who
                    && bytes[s..=e]
                        .iter()
                        .any(|b| b.is_some_and(|h| conflicts(h, k)))
            })
        }
        for seed in 0..300 {
            let mut rng = Rng::from_u64(seed);
            let mut t = RangeLocks::default();
            let owners: Vec<RangeOwner> = (0..3).map(|i| owner(i as u8 + 1, 5)).collect();
            let mut model: Model = vec![[None; BYTES]; 3];
            let mut waiting: Vec<(usize, usize, usize, LockKind, u64)> = Vec::new();
            let mut next = 1;
            for _ in 0..60 {
                let who = rng.below(3) as usize;
                let s = rng.below(BYTES as u64) as usize;
                let e = s + rng.below((BYTES - s) as u64) as usize;
                let range = r(s as u64, e as u64);
                let kind = if rng.below(2) == 0 { R } else { W };
                let mut granted = false;
                match rng.below(3) {
                    0 => {
                        t.unlock(owners[who], F, range);
                        model[who][s..=e].fill(None);
                        waiting.retain(|w| w.0 != who || w.2 < s || w.1 > e);
                        granted = true;
                    }
                    op => {
                        let wait = (op == 2).then_some(RequestId(next));
                        let busy = blocked(&model, who, s, e, kind);
                        let got = t.lock(owners[who], F, range, kind, wait);
                        match got {
                            Ok(RangeOutcome::Granted) => {
                                assert!(!busy, "seed {seed}");
                                model[who][s..=e].fill(Some(kind));
                                granted = true;
                            }
                            Ok(RangeOutcome::Queued) => {
                                assert!(busy, "seed {seed}");
                                // The same request again keeps its place.
                                match waiting
                                    .iter_mut()
                                    .find(|w| (w.0, w.1, w.2, w.3) == (who, s, e, kind))
                                {
                                    Some(w) => w.4 = next,
                                    None => waiting.push((who, s, e, kind, next)),
                                }
                            }
                            Err(Errno::Again) => assert!(busy && wait.is_none(), "seed {seed}"),
                            Err(Errno::DeadLk) => assert!(busy, "seed {seed}"),
                            Err(e) => panic!("seed {seed}: {e:?}"),
                        }
                        next += 1;
                    }
                }
                // The model's wake: in order, every waiter nothing blocks.
                let mut expected = Vec::new();
                if granted {
                    let mut i = 0;
                    while i < waiting.len() {
                        let (w, ws, we, wk, id) = waiting[i];
                        if blocked(&model, w, ws, we, wk) {
                            i += 1;
                        } else {
                            model[w][ws..=we].fill(Some(wk));
                            expected.push(id);
                            waiting.remove(i);
                            i = 0;
                        }
                    }
                }
                let got: Vec<u64> = std::iter::from_fn(|| t.poll_grant())
                    .map(|g| g.request.0)
                    .collect();
                assert_eq!(got, expected, "seed {seed}");
                for (o, bytes) in model.iter().enumerate() {
                    let mut have = [None; BYTES];
                    for (range, kind) in t.held_by(owners[o], F) {
                        have[range.start as usize..=range.end as usize].fill(Some(kind));
                    }
                    assert_eq!(&have, bytes, "seed {seed}, owner {o}");
                }
                assert!(t.consistent());
            }
        }
    }
}
