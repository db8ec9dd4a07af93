//! Time, and changes from outside: local changes pushed to clients, and
//! the timers (lock expiry, ended grace periods, idle transactions).

use super::*;

impl HostServer {
    /// A local program changed `path` on the host (from the shell's file
    /// watcher): tell every client.
    pub fn local_change(&mut self, _now: Instant, path: &RelPath) {
        let mut at = NodeId::ROOT;
        let names = path.names();
        for (i, name) in names.iter().enumerate() {
            match self.nodes.child(at, name) {
                Some(child) => at = child,
                None => {
                    // Not indexed: only its directory's listing changed.
                    if i + 1 == names.len() {
                        self.broadcast(None, at, Invalidation::Entries);
                    }
                    return;
                }
            }
        }
        self.broadcast(None, at, Invalidation::Data);
        if let Some(parent) = self.nodes.ancestors(at).first().copied() {
            self.broadcast(None, parent, Invalidation::Entries);
        }
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let grace = self
            .sessions
            .values()
            .filter_map(|s| s.detached_at)
            .map(|t| t + self.cfg.session_grace)
            .min();
        let txn = self
            .txns
            .values()
            .filter(|t| t.phase == TxnPhase::Open)
            .map(|t| t.last_activity + self.cfg.txn_idle_timeout)
            .min();
        [grace, txn, self.locks.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers: lock expiry and waits, ended grace periods, idle
    /// transactions.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.locks.handle_timeout(now);
        self.drain_locks();
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.detached_at
                    .is_some_and(|t| now >= t + self.cfg.session_grace)
            })
            .map(|(&id, _)| id)
            .collect();
        for s in expired {
            self.end_session(now, s);
        }
        let idle: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                t.phase == TxnPhase::Open && now >= t.last_activity + self.cfg.txn_idle_timeout
            })
            .map(|(&id, _)| id)
            .collect();
        for txn in idle {
            self.drop_txn(txn);
            self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
        }
    }
}
