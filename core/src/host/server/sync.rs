//! Group commit: when what the host applied becomes durable.
//!
//! A change is *applied* when its file operation reports back: from then
//! on every client sees it (close-to-open). It is *durable* once a
//! [`FsOp::Sync`] issued after that report has succeeded. The host issues
//! one Sync for everything applied within [`HostConfig::sync_window`] of
//! the first unsynced change, and at once when a client's
//! [`Request::Sync`] (its fsync, fdatasync or fsyncdir) waits for one. At
//! most one Sync is out at a time; whatever is applied meanwhile waits for
//! the next, so a burst of fsyncs costs the disk one flush per round, not
//! one per request.
//!
//! With a zero window every change's reply is held until a Sync covering
//! it succeeds (`wormhole host --sync-every-close`): a close then answers
//! only once its commit is on disk, as before group commit existed.

use super::*;

/// A reply held until the changes it depends on are durable.
#[derive(Debug)]
pub(super) struct SyncWaiter {
    /// Applied changes it needs durable.
    need: u64,
    session: SessionId,
    id: RequestId,
    /// The reply to send once they are (a failed Sync sends its error
    /// instead).
    reply: Result<Reply, Errno>,
}

/// The group commit's bookkeeping.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    /// Changes applied so far (completed mutating file operations).
    applied: u64,
    /// Of those, how many are known durable.
    durable: u64,
    /// The Sync out, and how many applied changes it covers.
    syncing: Option<(FsOpId, u64)>,
    /// When the oldest change not yet covered by a Sync was applied.
    dirty_since: Option<Instant>,
    /// Replies waiting for durability, in arrival order.
    waiters: Vec<SyncWaiter>,
    /// Mutating file operations out.
    mutations: BTreeSet<FsOpId>,
}

impl GroupCommit {
    /// Notes an operation issued, if it changes the disk.
    pub(super) fn issued(&mut self, op: FsOpId, fs: &FsOp) {
        if fs.mutates() {
            self.mutations.insert(op);
        }
    }

    fn check(&self) {
        debug_assert!(self.durable <= self.applied, "durable beyond applied");
        debug_assert!(
            self.syncing
                .is_none_or(|(_, c)| self.durable <= c && c <= self.applied),
            "a sync covers what was applied before it, and more than is durable"
        );
        debug_assert!(
            self.waiters.iter().all(|w| w.need <= self.applied),
            "a waiter needs only what was applied"
        );
        debug_assert!(
            (self.applied > self.durable) || self.dirty_since.is_none(),
            "nothing unsynced, yet dirty"
        );
    }
}

impl HostServer {
    /// A file operation finished: if it changed the disk, count it. True
    /// when it did and its reply must wait for the disk (zero window).
    pub(super) fn applied(&mut self, now: Instant, op: FsOpId) -> bool {
        let g = &mut self.group;
        if !g.mutations.remove(&op) {
            return false;
        }
        // Counted whatever its outcome: a failed operation may have
        // changed part of what it touched.
        g.applied += 1;
        g.dirty_since.get_or_insert(now);
        g.check();
        self.cfg.sync_window.is_zero()
    }

    /// Holds `reply` until everything applied so far is durable.
    pub(super) fn after_sync(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        reply: Result<Reply, Errno>,
    ) {
        let need = self.group.applied;
        if need <= self.group.durable {
            return self.answer(session, id, reply);
        }
        self.group.waiters.push(SyncWaiter {
            need,
            session,
            id,
            reply,
        });
        self.sync_due(now);
    }

    /// Issues a Sync if one is due: someone waits for one, or the oldest
    /// unsynced change is a window old.
    pub(super) fn sync_due(&mut self, now: Instant) {
        let g = &self.group;
        if g.syncing.is_some() || g.applied == g.durable {
            return;
        }
        let waited_for = g.waiters.iter().any(|w| w.need > g.durable);
        let window_over = g
            .dirty_since
            .is_some_and(|t| now >= t + self.cfg.sync_window);
        if waited_for || window_over {
            let covers = g.applied;
            let op = self.fs(Purpose::Sync, FsOp::Sync);
            let g = &mut self.group;
            g.syncing = Some((op, covers));
            g.dirty_since = None;
            g.check();
        }
    }

    /// When the window of the oldest unsynced change ends.
    pub(super) fn sync_timeout(&self) -> Option<Instant> {
        let g = &self.group;
        if g.syncing.is_some() {
            return None;
        }
        g.dirty_since.map(|t| t + self.cfg.sync_window)
    }

    /// A Sync finished: answer those it covers (with its error, if the
    /// disk gave one: their changes may be lost, and fsync says so).
    pub(super) fn synced(&mut self, now: Instant, op: FsOpId, result: FsResult) {
        let g = &mut self.group;
        let Some((out, covers)) = g.syncing else {
            return;
        };
        if out != op {
            return;
        }
        g.syncing = None;
        let failed = result.err();
        if failed.is_none() {
            g.durable = covers;
        }
        if g.applied > covers {
            // Applied while the Sync was out: the next one's.
            g.dirty_since.get_or_insert(now);
        } else if failed.is_some() {
            // Nothing new, but nothing made durable either: try again
            // after a window.
            g.dirty_since = Some(now);
        }
        let (done, waiting): (Vec<SyncWaiter>, Vec<SyncWaiter>) = std::mem::take(&mut g.waiters)
            .into_iter()
            .partition(|w| w.need <= covers);
        g.waiters = waiting;
        g.check();
        for w in done {
            let reply = match failed {
                Some(e) => Err(e),
                None => w.reply,
            };
            self.answer(w.session, w.id, reply);
        }
        self.sync_due(now);
    }

    /// Stopping: nobody is left to answer.
    pub(super) fn forget_syncs(&mut self) {
        self.group.waiters.clear();
    }
}
