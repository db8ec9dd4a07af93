//! Results: a finished file operation's outcome learned into the file
//! index and turned into the reply its request waits for.

use super::*;
use crate::host::split_dirs;
use bytes::Bytes;

impl HostServer {
    /// The shell finished file operation `op`.
    pub fn handle_fs(&mut self, now: Instant, op: FsOpId, result: FsResult) {
        let Some(purpose) = self.ops.remove(&op) else {
            return;
        };
        let hold = self.applied(now, op);
        for path in self.echoes.done(now, op, &result) {
            self.check_report(now, &path);
        }
        match purpose {
            Purpose::Echo { path } => {
                if !self.echoes.is_echo(now, &path, &result) {
                    self.announce(&path);
                }
            }
            Purpose::ScanRoot | Purpose::ScanList { .. } => {
                let result = if self.cfg.allow_device_nodes {
                    result
                } else {
                    hide_devices(result)
                };
                self.scan_result(purpose, result);
            }
            Purpose::Housekeeping => {}
            Purpose::Sync => self.synced(now, op, result),
            Purpose::Whole { session, txn, step } => {
                self.whole_step(now, op, session, txn, step, result);
            }
            Purpose::Follow { parent, name } => self.follow(parent, name, result),
            Purpose::CheckName { node, parent, name } => {
                self.check_name(node, parent, name, result);
            }
            Purpose::TakeOnHost(taking) => self.taken_on_host(now, taking, result),
            Purpose::Applied {
                session,
                dir,
                tag,
                steps,
            } => {
                let (ids, reply) = self.lease_applied(session, dir, tag, steps, result);
                for id in ids {
                    if hold {
                        self.after_sync(now, session, id, reply.clone());
                    } else {
                        self.answer(session, id, reply.clone());
                    }
                }
                // The lease may have ended while its batch ran.
                self.settle_leases(now);
            }
            Purpose::NewDirListed {
                session,
                id,
                made: (attr, dirs),
                grant,
                hold,
            } => {
                let lease = self.new_dir_listed(now, session, attr.node, grant, &result);
                let reply = Reply::Made { attr, dirs, lease };
                self.reply_held(now, session, id, Ok(reply), hold);
            }
            Purpose::Answer { session, id, then } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.ops = s.ops.saturating_sub(1);
                }
                let outcome = Outcome {
                    op,
                    session,
                    id,
                    then,
                    result,
                    hold,
                };
                if self.races_own_commit(&outcome.then, &outcome.result) {
                    self.racing.push(outcome);
                } else {
                    self.finish(now, outcome);
                }
            }
        }
        self.rerun_racing(now);
        self.sync_due(now);
        if !self.recommitted.is_empty() {
            self.forget_old_commits();
        }
    }

    pub(super) fn reply_held(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        reply: Result<Reply, Errno>,
        hold: bool,
    ) {
        if hold {
            self.after_sync(now, session, id, reply);
        } else {
            self.answer(session, id, reply);
        }
    }

    /// Whether a lookup's or listing's result found, at a node whose
    /// commit is under way, a file of another identity than the node's:
    /// the commit's new file (the worker ran after its rename) or a local
    /// program's. Only the commit's result can tell, so the result waits
    /// for it ([`Self::rerun_racing`]). Judged now, the new file would
    /// look like a local program's, and the node, forgotten, would fail
    /// the writer's next request with ESTALE.
    fn races_own_commit(&self, then: &ReplyAs, result: &FsResult) -> bool {
        let committing = |node: NodeId| {
            self.txns
                .values()
                .any(|t| t.node == node && t.phase == TxnPhase::Committing)
        };
        if !self.txns.values().any(|t| t.phase == TxnPhase::Committing) {
            return false;
        }
        let differs = |parent: NodeId, name: &Name, key: FileKey| {
            self.nodes
                .child(parent, name)
                .is_some_and(|n| self.nodes.key(n) != Some(key) && committing(n))
        };
        match (then, result) {
            (ReplyAs::Lookup { parent, name }, Ok(FsOk::Attr(a))) => differs(*parent, name, a.key),
            (ReplyAs::ReadDir { dir }, Ok(FsOk::Listing { entries, .. })) => {
                entries.iter().any(|(n, a)| differs(*dir, n, a.key))
            }
            _ => false,
        }
    }

    /// Completes the held results whose racing commits have ended.
    fn rerun_racing(&mut self, now: Instant) {
        if self.racing.is_empty() {
            return;
        }
        for r in std::mem::take(&mut self.racing) {
            if self.races_own_commit(&r.then, &r.result) {
                self.racing.push(r);
                continue;
            }
            self.finish(now, r);
        }
    }

    /// Answers `o`'s request with its operation's result; a new directory
    /// whose lease was asked for is leased first.
    fn finish(&mut self, now: Instant, o: Outcome) {
        let lease = matches!(o.then, ReplyAs::Created { lease: true, .. });
        match self.complete(now, o.op, o.session, o.then, o.result) {
            Ok(Reply::Made { attr, dirs, .. }) if lease => {
                self.lease_new_dir(now, o.session, o.id, (attr, dirs), o.hold);
            }
            reply => self.reply_held(now, o.session, o.id, reply, o.hold),
        }
    }

    fn learn(&mut self, parent: NodeId, name: &Name, attr: &FsAttr) -> Result<Attr, Errno> {
        let id = self
            .nodes
            .learn(parent, name, attr.key, attr.kind, attr.nlink)
            .ok_or(Errno::NoSpc)?;
        Ok(to_attr(id, attr))
    }

    /// A list of extended attribute names (each NUL-ended), keeping only
    /// the namespaces the host serves.
    fn served_xattrs(&self, names: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(names.len());
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if self.cfg.owners.serves_xattr(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        out
    }

    /// `parent/name` was removed by `session`: other sessions learn which
    /// nodes went with it, or, where the file keeps other names, that
    /// its link count changed.
    pub(super) fn unnamed(&mut self, session: SessionId, parent: NodeId, name: &Name) {
        let node = self.nodes.child(parent, name);
        let gone = self.nodes.remove(parent, name);
        self.told_gone(session, node, gone);
    }

    fn told_gone(&mut self, session: SessionId, node: Option<NodeId>, gone: Vec<NodeId>) {
        if let Some(node) = node
            && !gone.contains(&node)
        {
            self.broadcast(Some(session), node, Invalidation::Attr);
        }
        for gone in gone {
            self.broadcast(Some(session), gone, Invalidation::Gone);
        }
    }

    /// A handle opened for `session`: kept, and the answer to its open;
    /// closed again if the session ended while the file was opening.
    fn opened(
        &mut self,
        session: SessionId,
        handle: HandleId,
        fs: FsHandle,
        attr: Attr,
        inline: Bytes,
        dirs: Vec<Attr>,
    ) -> Result<Reply, Errno> {
        let Some(s) = self.sessions.get_mut(&session) else {
            self.fs(Purpose::Housekeeping, FsOp::Close { handle: fs });
            return Err(Errno::BadF);
        };
        s.handles.insert(handle);
        self.handles.insert(handle, Handle { session, fs });
        Ok(Reply::Opened {
            handle,
            attr,
            inline,
            dirs,
        })
    }

    /// The directories' attributes a result carried, as the nodes
    /// `dirs` (in [`FsOp::dirs_changed`]'s order, a rename's two
    /// directories one if they are the same); none if they do not match.
    fn dir_attrs(dirs: &[NodeId], attrs: Vec<FsAttr>) -> Vec<Attr> {
        let mut nodes = dirs.to_vec();
        nodes.dedup();
        if nodes.len() != attrs.len() {
            return Vec::new();
        }
        nodes
            .iter()
            .zip(&attrs)
            .map(|(n, a)| to_attr(*n, a))
            .collect()
    }

    /// The node whose file a result describes, for results by path.
    fn described(&self, then: &ReplyAs) -> Option<NodeId> {
        match then {
            ReplyAs::Stat { node, .. }
            | ReplyAs::Open { node, .. }
            | ReplyAs::Read {
                node: Some((node, _)),
            } => Some(*node),
            ReplyAs::StageBegin { txn, .. } => self.txns.get(txn).map(|t| t.node),
            _ => None,
        }
    }

    /// The node whose file a result of `op` shows replaced by a file no
    /// commit of this host put there, or that was forgotten meanwhile, if
    /// any. A file this host's own
    /// commit put there, or the one it replaced, is the node's: a worker
    /// may run an operation while a commit renames (and report the new
    /// file before the commit's result arrives), or before it (and report
    /// the old file after). A local save that races one of this host's
    /// commits is then caught by the node's next operation instead.
    fn replaced_meanwhile(&self, op: FsOpId, then: &ReplyAs, result: &FsResult) -> Option<NodeId> {
        let found = match result {
            Ok(FsOk::Attr(a) | FsOk::Opened(a, _) | FsOk::Data(_, a)) => a.key,
            _ => return None,
        };
        let node = self.described(then)?;
        // A node forgotten meanwhile (another result found a new file at
        // its path) names no file any more.
        let Some(key) = self.nodes.key(node) else {
            return Some(node);
        };
        (key != found && !self.own_version(node, op, found)).then_some(node)
    }

    /// Whether `found`, reported for `node` by operation `op`, may be one
    /// of the node's own versions: a commit of it is under way (the
    /// file may be its new one, or the one it replaces), or a commit
    /// ended after `op` was issued and replaced exactly `found`.
    fn own_version(&self, node: NodeId, op: FsOpId, found: FileKey) -> bool {
        // (Checked in order of cost: this runs for every result by path.)
        self.recommitted
            .get(&node)
            .is_some_and(|(m, replaced)| op.0 < *m && replaced.contains(&found))
            || self
                .txns
                .values()
                .any(|t| t.node == node && t.phase == TxnPhase::Committing)
    }

    /// Learns what a lookup or listing (operation `op`) found at
    /// `parent/name`. A file of another identity than the node's is
    /// another file (the node is forgotten; the file gets a new one),
    /// unless it is the file one of this host's commits replaced and the
    /// operation may have run before that commit's rename.
    fn learn_found(
        &mut self,
        op: FsOpId,
        parent: NodeId,
        name: &Name,
        attr: &FsAttr,
    ) -> Result<Attr, Errno> {
        if let Some(node) = self.nodes.child(parent, name)
            && self.nodes.key(node).is_some_and(|k| k != attr.key)
            && self.nodes.kind(node) == Some(attr.kind)
            && self
                .recommitted
                .get(&node)
                .is_some_and(|(m, replaced)| op.0 < *m && replaced.contains(&attr.key))
        {
            return Ok(to_attr(node, attr));
        }
        self.learn(parent, name, attr)
    }

    /// Forgets own commits that no operation still out (or held racing
    /// one) was issued before.
    fn forget_old_commits(&mut self) {
        let oldest = self
            .ops
            .keys()
            .chain(self.racing.iter().map(|r| &r.op))
            .map(|o| o.0)
            .min()
            .unwrap_or(u64::MAX);
        self.recommitted.retain(|_, (mark, _)| oldest < *mark);
    }

    pub(super) fn complete(
        &mut self,
        now: Instant,
        op: FsOpId,
        session: SessionId,
        then: ReplyAs,
        result: FsResult,
    ) -> Result<Reply, Errno> {
        let (result, dirs) = split_dirs(result);
        let result = if self.cfg.allow_device_nodes {
            result
        } else {
            hide_devices(result)
        };
        if let Some(node) = self.replaced_meanwhile(op, &then, &result) {
            // Another file is at the path the operation went to: ESTALE.
            let now_at = self.nodes.path(node);
            let went = issued_path(&then);
            if went.is_some() && now_at.is_some() && went != now_at.as_ref() {
                // The node's path changed since the operation went out (a
                // rename over the name it was built from, or that name's
                // removal, whose result came first; a file with several
                // names keeps its others): what the old path holds says
                // nothing of the node's file, and the node stays.
                // Forgotten, a file still at its other name would have no
                // node, and a client's lock on it would be decided in the
                // clients' table alone, over a program's lock on the
                // host's file (fs_sim, seed 6255 with links to the locked
                // file).
            } else if self.nodes.names(node) > 1
                && let Some((parent, name)) = self.nodes.link(node)
            {
                // One of several names holds another file (a program on
                // the host saved or moved one there): that name goes, as
                // the watcher's report would have it go (`check_name`),
                // and the file keeps its others.
                self.drop_name(node, parent, &name);
            } else {
                // A local program saved another file over the node's
                // (or moved one there). The node's file is gone, as after
                // an unlink, and the new file gets a node of its own at
                // its next lookup, so a client never takes one file for
                // the other (an inode that changes identity, a handle
                // that reads another file's bytes, a rewrite that
                // replaces a file it never opened).
                self.nodes.forget_node(node);
            }
            if let (ReplyAs::Open { fs, .. }, Ok(FsOk::Opened(..))) = (&then, &result) {
                self.fs(Purpose::Housekeeping, FsOp::Close { handle: *fs });
            }
            return self.complete(now, op, session, then, Err(Errno::Stale));
        }
        match (then, result) {
            (ReplyAs::Lookup { parent, name }, Ok(FsOk::Attr(a))) => {
                Ok(Reply::Attr(self.learn_found(op, parent, &name, &a)?))
            }
            (ReplyAs::Lookup { parent, name }, Err(Errno::NoEnt)) => {
                self.nodes.remove(parent, &name);
                Err(Errno::NoEnt)
            }
            (ReplyAs::Stat { node, .. }, Ok(FsOk::Attr(a))) => Ok(Reply::Attr(to_attr(node, &a))),
            (ReplyAs::ReadDir { dir }, Ok(FsOk::Listing { entries, next })) => {
                let mut out = Vec::with_capacity(entries.len());
                for (name, attr) in entries {
                    if is_reserved(&name) {
                        continue;
                    }
                    if let Ok(attr) = self.learn_found(op, dir, &name, &attr) {
                        out.push(DirEntry { name, attr });
                    }
                }
                Ok(Reply::DirPage { entries: out, next })
            }
            (
                ReplyAs::Open {
                    node, handle, fs, ..
                },
                Ok(FsOk::Opened(a, inline)),
            ) => {
                let attr = to_attr(node, &a);
                self.opened(session, handle, fs, attr, inline, Vec::new())
            }
            (ReplyAs::Close { handle }, Ok(_)) => {
                if let Some(h) = self.handles.remove(&handle)
                    && let Some(s) = self.sessions.get_mut(&h.session)
                {
                    s.handles.remove(&handle);
                }
                Ok(Reply::Done)
            }
            (ReplyAs::Read { .. }, Ok(FsOk::Data(data, attr))) => {
                let version = to_attr(NodeId::ROOT, &attr).version;
                Ok(Reply::Data { data, version })
            }
            (
                ReplyAs::Created {
                    parent,
                    name,
                    open: None,
                    ..
                },
                Ok(FsOk::Attr(a)),
            ) => {
                let attr = self.learn(parent, &name, &a)?;
                self.broadcast(Some(session), parent, Invalidation::Entries);
                Ok(Reply::Made {
                    attr,
                    dirs: Self::dir_attrs(&[parent], dirs),
                    lease: None,
                })
            }
            (
                ReplyAs::Created {
                    parent,
                    name,
                    open: Some((handle, fs)),
                    ..
                },
                Ok(FsOk::Opened(a, inline)),
            ) => {
                self.broadcast(Some(session), parent, Invalidation::Entries);
                match self.learn(parent, &name, &a) {
                    Ok(attr) => {
                        let dirs = Self::dir_attrs(&[parent], dirs);
                        self.opened(session, handle, fs, attr, inline, dirs)
                    }
                    Err(e) => {
                        self.fs(Purpose::Housekeeping, FsOp::Close { handle: fs });
                        Err(e)
                    }
                }
            }
            (ReplyAs::Linked { node, parent, name }, Ok(FsOk::Attr(a))) => {
                // The host linked the very file it knew the node as
                // (`FsOp::Link` checks its identity): the new name is the
                // node's. Learned by name, a record left there of the same
                // identity would answer instead: a file a local program
                // moved away keeps its node under its old name (files are
                // not followed), and linked back to that name it was one
                // file under two nodes, the client's new name another
                // inode than the one it linked (fs_sim, seed 33039). That
                // record goes.
                let named = if self.nodes.key(node) == Some(a.key) {
                    self.nodes.add_name(node, parent, &name)
                } else {
                    None
                };
                let attr = match named {
                    Some(gone) => {
                        for gone in gone {
                            self.broadcast(None, gone, Invalidation::Gone);
                        }
                        to_attr(node, &a)
                    }
                    // The node was forgotten meanwhile (an unlink or
                    // rename of its other name ran first), or a commit
                    // gave it a new file: the name is learned as any.
                    None => self.learn(parent, &name, &a)?,
                };
                self.broadcast(Some(session), parent, Invalidation::Entries);
                // Every name shows the new link count and ctime.
                self.broadcast(Some(session), attr.node, Invalidation::Attr);
                if attr.node != node {
                    // The node no longer stands for the file linked.
                    self.broadcast(Some(session), node, Invalidation::Attr);
                }
                Ok(Reply::Made {
                    attr,
                    dirs: Self::dir_attrs(&[parent], dirs),
                    lease: None,
                })
            }
            (ReplyAs::Removed { parent, name }, Ok(_)) => {
                self.unnamed(session, parent, &name);
                self.broadcast(Some(session), parent, Invalidation::Entries);
                Ok(Reply::Unnamed {
                    dirs: Self::dir_attrs(&[parent], dirs),
                })
            }
            (
                ReplyAs::Renamed {
                    parent,
                    name,
                    new_parent,
                    new_name,
                },
                Ok(_),
            ) => {
                let target = self.nodes.child(new_parent, &new_name);
                let gone = self.nodes.rename(parent, &name, new_parent, &new_name);
                self.told_gone(session, target, gone);
                self.broadcast(Some(session), parent, Invalidation::Entries);
                if new_parent != parent {
                    self.broadcast(Some(session), new_parent, Invalidation::Entries);
                }
                Ok(Reply::Unnamed {
                    dirs: Self::dir_attrs(&[parent, new_parent], dirs),
                })
            }
            (ReplyAs::Readlink, Ok(FsOk::Link(target))) => Ok(Reply::Link(target)),
            (ReplyAs::Xattr { list: false }, Ok(FsOk::Xattr(value))) => Ok(Reply::Xattr(value)),
            (ReplyAs::Xattr { list: true }, Ok(FsOk::Xattr(names))) => {
                Ok(Reply::Xattr(self.served_xattrs(&names)))
            }
            (ReplyAs::Statfs, Ok(FsOk::StatFs(s))) => Ok(Reply::StatFs(s)),
            (ReplyAs::StageBegin { txn, expect }, Ok(FsOk::Attr(a))) => {
                // The writes were made to the version the client holds;
                // staged from any other, they would make a version that
                // never was (a local save or another client's commit came
                // in between): refused, the file keeps what it holds.
                // Appends are the exception: they go at the end of
                // whatever version is there (`Request::BeginWrite`).
                let moved = expect.is_some_and(|v| v != to_attr(NodeId::ROOT, &a).version);
                match self.txns.get_mut(&txn) {
                    Some(t) if !moved || t.appends_from.is_some() => {
                        t.phase = TxnPhase::Open;
                        t.last_activity = now;
                        t.base = Some(FileStamp::from(&a));
                        t.moved_to = moved.then_some(a.size);
                        Ok(Reply::WriteBegun { txn })
                    }
                    _ => {
                        // Changed, or dropped meanwhile (lock expired,
                        // session ended).
                        self.drop_txn(txn);
                        self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
                        Err(Errno::Stale)
                    }
                }
            }
            (ReplyAs::StageWrite { txn }, Ok(_)) => {
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes = t.writes.saturating_sub(1);
                    t.last_activity = now;
                }
                Ok(Reply::Done)
            }
            (ReplyAs::Commit { txn }, Ok(FsOk::Attr(a))) => {
                let node = self.txns.get(&txn).map(|t| t.node);
                self.drop_txn(txn);
                let Some(node) = node else {
                    return Err(Errno::Stale);
                };
                // The commit put a new file (identity) at the node's path:
                // the index follows, so the next lookup keeps the node id
                // (and the writer's lock and handles stay valid).
                let old_key = self.nodes.key(node);
                if let Some(replaced) = old_key {
                    let mark = self.next_op;
                    let e = self.recommitted.entry(node).or_default();
                    e.0 = mark;
                    e.1.insert(replaced);
                }
                self.nodes.rekey(node, a.key);
                let attr = to_attr(node, &a);
                if let Some(s) = self.sessions.get_mut(&session) {
                    if s.committed.len() == COMMITTED_MEMORY {
                        s.committed.pop_front();
                    }
                    s.committed.push_back((txn, attr.clone()));
                }
                // A new file in the old one's place, unless the commit
                // wrote in place (a file with several names).
                let what = if old_key.is_some_and(|k| k != attr.key) {
                    Invalidation::Replaced
                } else {
                    Invalidation::Data
                };
                self.broadcast(Some(session), node, what);
                self.file_replaced_on_host(node);
                Ok(Reply::Attr(attr))
            }
            (ReplyAs::Abort, Ok(_)) => Ok(Reply::Done),
            (then, Err(e)) => {
                match then {
                    ReplyAs::StageBegin { txn, .. } | ReplyAs::Commit { txn } => {
                        self.drop_txn(txn);
                        self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
                    }
                    ReplyAs::StageWrite { txn } => {
                        if let Some(t) = self.txns.get_mut(&txn) {
                            t.writes = t.writes.saturating_sub(1);
                        }
                    }
                    // Deleted behind our back: forget it, unless the
                    // node's path changed since (a rename away, whose
                    // result came first: the file is at its new name).
                    ReplyAs::Stat { node, path: went }
                        if e == Errno::NoEnt && self.nodes.path(node).as_ref() == Some(&went) =>
                    {
                        let parent = self.nodes.ancestors(node).first().copied();
                        let path = self.nodes.path(node);
                        if let (Some(parent), Some((_, name))) =
                            (parent, path.as_ref().and_then(RelPath::split_last))
                        {
                            let name = name.clone();
                            self.nodes.remove(parent, &name);
                        }
                    }
                    _ => {}
                }
                Err(e)
            }
            // A result of the wrong shape is a shell bug; fail the request
            // rather than guess.
            (_, Ok(_)) => Err(Errno::Io),
        }
    }
}

/// The path an operation by path went to (the node's path when it was
/// issued), where the reply keeps it.
fn issued_path(then: &ReplyAs) -> Option<&RelPath> {
    match then {
        ReplyAs::Stat { path, .. }
        | ReplyAs::Open { path, .. }
        | ReplyAs::Read {
            node: Some((_, path)),
        } => Some(path),
        _ => None,
    }
}

/// A device node a local program put in the share, where the host does
/// not allow them: not there, for clients (`docs/permissions.md`).
fn hide_devices(result: FsResult) -> FsResult {
    match result {
        Ok(FsOk::Attr(a) | FsOk::Opened(a, _) | FsOk::Data(_, a)) if a.kind.is_device() => {
            Err(Errno::NoEnt)
        }
        Ok(FsOk::Listing { mut entries, next }) => {
            entries.retain(|(_, a)| !a.kind.is_device());
            Ok(FsOk::Listing { entries, next })
        }
        other => other,
    }
}
