//! Time, and changes from outside: local changes pushed to clients, and
//! the timers (lock expiry, ended grace periods, idle transactions).

use super::*;

impl HostServer {
    /// A local program changed `path` on the host (from the shell's file
    /// watcher): tell every client, unless it is the echo of the host's
    /// own change ([`echo`]).
    pub fn local_change(&mut self, now: Instant, path: &RelPath) {
        if !self.echoes.defer(path) {
            self.check_report(now, path);
        }
    }

    /// A report of `path` from the watcher, no operation of the host's
    /// changing it now: announced unless it may be the host's own echo.
    pub(super) fn check_report(&mut self, now: Instant, path: &RelPath) {
        if self.echoes.expected(now, path) {
            let look = Purpose::Echo { path: path.clone() };
            self.fs(look, FsOp::Stat { path: path.clone() });
            return;
        }
        self.announce(path);
    }

    /// Tells every client that `path` changed.
    pub(super) fn announce(&mut self, path: &RelPath) {
        let mut at = NodeId::ROOT;
        let mut parent = NodeId::ROOT;
        let names = path.names();
        for (i, name) in names.iter().enumerate() {
            match self.nodes.child(at, name) {
                Some(child) => (parent, at) = (at, child),
                None => {
                    // Not indexed: its directory's listing changed, and it
                    // may be a directory moved here (see `follow`).
                    if i + 1 == names.len() {
                        self.recall(at);
                        self.broadcast(None, at, Invalidation::Entries);
                        let follow = Purpose::Follow {
                            parent: at,
                            name: name.clone(),
                        };
                        self.fs(follow, FsOp::Stat { path: path.clone() });
                    }
                    return;
                }
            }
        }
        if self.nodes.names(at) > 1
            && let Some(name) = names.last()
        {
            // One of several names: if it no longer holds the file, the
            // node's path must not be built from it (the host would look
            // for the file where it is not; a lock taken on the host's
            // file there found nothing, and the clients' table granted
            // alone over a program's lock on another name).
            let check = Purpose::CheckName {
                node: at,
                parent,
                name: name.clone(),
            };
            self.fs(check, FsOp::Stat { path: path.clone() });
        }
        self.broadcast(None, at, Invalidation::Data);
        if let Some(parent) = self.nodes.ancestors(at).first().copied() {
            // The lease holder's idea of the entries is out of date.
            self.recall(parent);
            self.broadcast(None, parent, Invalidation::Entries);
        }
    }

    /// A local program's change put `result`'s file at `parent/name`. If
    /// it is an indexed directory that was elsewhere, a local program
    /// moved it: its node follows (with everything beneath it), so a
    /// client working in it (a shell's current directory, an open
    /// listing) goes on as on a local disk instead of meeting ESTALE.
    /// A directory has one name, so the identity says which it is.
    /// Files are not followed: a client's handles on a moved file keep
    /// working, and its next lookup finds the new name.
    pub(super) fn follow(&mut self, parent: NodeId, name: Name, result: FsResult) {
        let Ok(FsOk::Attr(a)) = result else {
            return;
        };
        let Some(moved) = self
            .nodes
            .dir_by_key(a.key)
            .filter(|_| a.kind == FileKind::Dir)
        else {
            return;
        };
        let Some((old_parent, old_name)) = self.nodes.link(moved) else {
            return;
        };
        let into_itself = parent == moved || self.nodes.ancestors(parent).contains(&moved);
        if (old_parent, &old_name) == (parent, &name) || !self.nodes.contains(parent) || into_itself
        {
            return;
        }
        for gone in self.nodes.rename(old_parent, &old_name, parent, &name) {
            self.broadcast(None, gone, Invalidation::Gone);
        }
        self.broadcast(None, old_parent, Invalidation::Entries);
        self.broadcast(None, parent, Invalidation::Entries);
    }

    /// What a local program left at `parent/name`, one of `node`'s
    /// several names: if it is not the node's file any more (moved away,
    /// or another file put there), that name goes from the node, whose
    /// other names stay (a file at the name is learned at its next
    /// lookup, as any a local program makes).
    pub(super) fn check_name(
        &mut self,
        node: NodeId,
        parent: NodeId,
        name: Name,
        result: FsResult,
    ) {
        let elsewhere = match &result {
            Ok(FsOk::Attr(a)) => Some(a.key) != self.nodes.key(node),
            // (Not a disk that failed to answer: the name may hold it.)
            Err(e) => matches!(e, Errno::NoEnt | Errno::NotDir),
            Ok(_) => false,
        };
        if elsewhere {
            self.drop_name(node, parent, &name);
        }
    }

    /// `parent/name`, one of `node`'s several names, no longer holds its
    /// file: the name goes from the node (whose path is then built from
    /// another), and the directory's listing is news.
    pub(super) fn drop_name(&mut self, node: NodeId, parent: NodeId, name: &Name) {
        if self.nodes.child(parent, name) != Some(node) || self.nodes.names(node) < 2 {
            return;
        }
        self.nodes.remove(parent, name);
        self.recall(parent);
        self.broadcast(None, parent, Invalidation::Entries);
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
        [
            grace,
            txn,
            self.locks.poll_timeout(),
            self.sync_timeout(),
            self.leases.poll_timeout(),
            self.host_locks.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires due timers: lock expiry and waits, ended grace periods, idle
    /// transactions, the group commit.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sync_due(now);
        self.locks.handle_timeout(now);
        self.drain_locks(now);
        self.retry_blocked(now);
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
