//! Requests: each client request checked (session, confinement, locks,
//! transactions) and turned into file operations or an answer.

use super::whole::WholeRest;
use super::*;
use crate::lock::range::RangeOwner;
use crate::proto::{MAX_XATTR_NAME, MAX_XATTR_SIZE};
use crate::proto::{Owner, SetAttr};

/// The owner a client asks a new file to have: only where owners are
/// preserved; acting as its user, the host gives nothing away.
pub(super) fn owner_to_give(owners: Owners, owner: Option<Owner>) -> Result<Option<Owner>, Errno> {
    match owner {
        Some(_) if owners != Owners::Preserved => Err(Errno::Perm),
        owner => Ok(owner),
    }
}

impl HostServer {
    pub(super) fn path_of(&self, node: NodeId) -> Result<RelPath, Errno> {
        self.nodes.path(node).ok_or(Errno::Stale)
    }

    pub(super) fn dir_path(&self, node: NodeId) -> Result<RelPath, Errno> {
        match self.nodes.kind(node) {
            None => Err(Errno::Stale),
            Some(FileKind::Dir) => self.path_of(node),
            Some(_) => Err(Errno::NotDir),
        }
    }

    /// What every request that makes a name checks first: the host takes
    /// changes, the owner asked for may be given, the name is one a client
    /// may make, and no other session's lock covers the directory's
    /// entries. Gives the new entry's path and its owner.
    fn new_entry(
        &self,
        session: SessionId,
        parent: NodeId,
        name: &Name,
        owner: Option<Owner>,
    ) -> Result<(RelPath, Option<Owner>), Errno> {
        self.writable()?;
        let owner = owner_to_give(self.cfg.owners, owner)?;
        let path = self.dir_path(parent)?.join(visible(name)?);
        self.guard(session, parent, true)?;
        Ok((path, owner))
    }

    /// An extended attribute name clients may use: of valid length, in
    /// a namespace the host serves (`user.`; `trusted.` and `security.`
    /// too where it preserves owners, as root). Others are EOPNOTSUPP.
    fn xattr_name(&self, name: &[u8]) -> Result<(), Errno> {
        if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains(&0) {
            return Err(Errno::Range);
        }
        if self.cfg.owners.serves_xattr(name) {
            Ok(())
        } else {
            Err(Errno::NotSup)
        }
    }

    pub(super) fn writable(&self) -> Result<(), Errno> {
        if self.cfg.read_only {
            Err(Errno::RoFs)
        } else {
            Ok(())
        }
    }

    /// Refuses a change to `node` while another session holds a lock that
    /// covers it: with `entries`, a directory-entry change (a Directory or
    /// Subtree lock on it, or a subtree lock above it, blocks it); without,
    /// a change to the node itself (any lock on it or a subtree above).
    pub(super) fn guard(
        &self,
        session: SessionId,
        node: NodeId,
        entries: bool,
    ) -> Result<(), Errno> {
        let ancestors = self.nodes.ancestors(node);
        for lock in self.locks.locks() {
            if lock.session == session {
                continue;
            }
            let blocks = match lock.scope {
                LockScope::Subtree(n) => n == node || ancestors.contains(&n),
                LockScope::Directory(n) => entries && n == node,
                LockScope::File(n) => !entries && n == node,
            };
            if blocks {
                return Err(Errno::Busy);
            }
        }
        Ok(())
    }

    pub(super) fn dispatch(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        request: Request,
    ) -> Result<(), Errno> {
        let Some(request) = self.park_if_leased(now, session, id, request)? else {
            return Ok(());
        };
        let Some(request) = self.park_if_taking(session, id, request) else {
            return Ok(());
        };
        let answer = |then| Purpose::Answer { session, id, then };
        match request {
            Request::Hello { .. } => return Err(Errno::Inval),
            Request::Lookup { parent, name } => {
                let path = self.dir_path(parent)?.join(visible(&name)?);
                self.fs(
                    answer(ReplyAs::Lookup { parent, name }),
                    FsOp::Stat { path },
                );
            }
            Request::GetAttr { node } => {
                let path = self.path_of(node)?;
                let then = ReplyAs::Stat {
                    node,
                    path: path.clone(),
                };
                self.fs(answer(then), FsOp::Stat { path });
            }
            Request::SetAttr { node, set, token } => {
                self.writable()?;
                if set.chowns() && self.cfg.owners != Owners::Preserved {
                    // Every client acts as the host's user, who may not
                    // give a file away (a client's mount refuses first;
                    // this is for clients that do not).
                    return Err(Errno::Perm);
                }
                let path = self.path_of(node)?;
                match token {
                    Some(token) => {
                        let ancestors = self.nodes.ancestors(node);
                        self.locks.validate(now, session, token, node, &ancestors)?;
                    }
                    None => self.guard(session, node, false)?,
                }
                let then = ReplyAs::Stat {
                    node,
                    path: path.clone(),
                };
                self.fs(answer(then), FsOp::SetAttr { path, set });
            }
            Request::ReadDir { dir, cookie } => {
                let path = self.dir_path(dir)?;
                self.fs(
                    answer(ReplyAs::ReadDir { dir }),
                    FsOp::List {
                        path,
                        cookie,
                        max: MAX_DIR_PAGE as u32,
                    },
                );
            }
            Request::Open { node, mode } => {
                if mode != OpenFor::Read {
                    self.writable()?;
                }
                let path = self.path_of(node)?;
                let (handle, fs) = self.new_handle(session)?;
                self.fs(
                    answer(ReplyAs::Open {
                        node,
                        handle,
                        fs,
                        path: path.clone(),
                    }),
                    FsOp::Open {
                        path,
                        mode,
                        handle: fs,
                        inline_max: CHUNK_SIZE as u32,
                    },
                );
            }
            Request::Close { handle } => {
                let h = self.own_handle(session, handle)?;
                self.fs(answer(ReplyAs::Close { handle }), FsOp::Close { handle: h });
            }
            Request::Read { file, offset, len } => {
                if len as usize > CHUNK_SIZE {
                    return Err(Errno::Inval);
                }
                let (from, node) = match file {
                    FileRef::Node(node) => {
                        let path = self.path_of(node)?;
                        (ReadFrom::Path(path.clone()), Some((node, path)))
                    }
                    FileRef::Handle(handle) => {
                        (ReadFrom::Handle(self.own_handle(session, handle)?), None)
                    }
                };
                self.fs(
                    answer(ReplyAs::Read { node }),
                    FsOp::Read { from, offset, len },
                );
            }
            Request::Create {
                parent,
                name,
                mode,
                owner,
                exclusive,
                open,
            } => {
                let (path, owner) = self.new_entry(session, parent, &name, owner)?;
                let open = if open {
                    let (handle, fs) = self.new_handle(session)?;
                    Some((handle, fs))
                } else {
                    None
                };
                self.fs(
                    answer(ReplyAs::Created {
                        parent,
                        name,
                        open,
                        lease: false,
                    }),
                    FsOp::Create {
                        path,
                        mode: mode & 0o7777,
                        exclusive,
                        open: open.map(|(_, handle)| OpenAs {
                            handle,
                            inline_max: CHUNK_SIZE as u32,
                        }),
                        owner,
                    },
                );
            }
            Request::Mkdir {
                parent,
                name,
                mode,
                owner,
                lease,
            } => {
                let (path, owner) = self.new_entry(session, parent, &name, owner)?;
                self.fs(
                    answer(ReplyAs::Created {
                        parent,
                        name,
                        open: None,
                        lease,
                    }),
                    FsOp::Mkdir {
                        path,
                        mode: mode & 0o7777,
                        owner,
                    },
                );
            }
            Request::Symlink {
                parent,
                name,
                target,
                owner,
            } => {
                let (path, owner) = self.new_entry(session, parent, &name, owner)?;
                if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                    return Err(Errno::Inval);
                }
                self.fs(
                    answer(ReplyAs::Created {
                        parent,
                        name,
                        open: None,
                        lease: false,
                    }),
                    FsOp::Symlink {
                        path,
                        target,
                        owner,
                    },
                );
            }
            Request::Mknod {
                parent,
                name,
                kind,
                mode,
                rdev,
                owner,
            } => {
                let (path, owner) = self.new_entry(session, parent, &name, owner)?;
                if !kind.is_special() && kind != FileKind::File {
                    return Err(Errno::Inval);
                }
                if kind.is_device()
                    && !(self.cfg.allow_device_nodes && self.cfg.owners == Owners::Preserved)
                {
                    return Err(Errno::Perm);
                }
                self.fs(
                    answer(ReplyAs::Created {
                        parent,
                        name,
                        open: None,
                        lease: false,
                    }),
                    FsOp::Mknod {
                        path,
                        kind,
                        mode: mode & 0o7777,
                        rdev: if kind.is_device() { rdev } else { 0 },
                        owner,
                    },
                );
            }
            Request::Unlink { parent, name } => self.remove(session, id, parent, name, false)?,
            Request::Rmdir { parent, name } => self.remove(session, id, parent, name, true)?,
            Request::Rename {
                parent,
                name,
                new_parent,
                new_name,
            } => {
                self.writable()?;
                let from = self.dir_path(parent)?.join(visible(&name)?);
                let to = self.dir_path(new_parent)?.join(visible(&new_name)?);
                if to.starts_with(&from) && to != from {
                    return Err(Errno::Inval);
                }
                self.guard(session, parent, true)?;
                self.guard(session, new_parent, true)?;
                for (p, n) in [(parent, &name), (new_parent, &new_name)] {
                    if let Some(child) = self.nodes.child(p, n)
                        && self.locked_below_by_other(session, child)
                    {
                        return Err(Errno::Busy);
                    }
                }
                self.fs(
                    answer(ReplyAs::Renamed {
                        parent,
                        name,
                        new_parent,
                        new_name,
                    }),
                    FsOp::Rename { from, to },
                );
            }
            Request::GetXattr { node, name } => {
                // A namespace not served has nothing in it (`ls` asks
                // for security labels and ACLs of every file).
                self.xattr_name(&name).map_err(|_| Errno::NoData)?;
                let path = self.path_of(node)?;
                let key = self.nodes.key(node);
                self.fs(
                    answer(ReplyAs::Xattr { list: false }),
                    FsOp::GetXattr { path, name, key },
                );
            }
            Request::ListXattr { node } => {
                let path = self.path_of(node)?;
                let key = self.nodes.key(node);
                self.fs(
                    answer(ReplyAs::Xattr { list: true }),
                    FsOp::ListXattr { path, key },
                );
            }
            Request::SetXattr {
                node,
                name,
                value,
                how,
            } => {
                self.writable()?;
                self.xattr_name(&name)?;
                if value.len() > MAX_XATTR_SIZE {
                    return Err(Errno::TooBig);
                }
                let path = self.path_of(node)?;
                self.guard(session, node, false)?;
                self.fs(
                    answer(ReplyAs::Stat {
                        node,
                        path: path.clone(),
                    }),
                    FsOp::SetXattr {
                        path,
                        name,
                        value,
                        how,
                        key: self.nodes.key(node),
                    },
                );
            }
            Request::RemoveXattr { node, name } => {
                self.writable()?;
                self.xattr_name(&name)?;
                let path = self.path_of(node)?;
                self.guard(session, node, false)?;
                self.fs(
                    answer(ReplyAs::Stat {
                        node,
                        path: path.clone(),
                    }),
                    FsOp::RemoveXattr {
                        path,
                        name,
                        key: self.nodes.key(node),
                    },
                );
            }
            Request::Link { node, parent, name } => {
                let (to, _) = self.new_entry(session, parent, &name, None)?;
                if self.nodes.kind(node) == Some(FileKind::Dir) {
                    return Err(Errno::Perm);
                }
                let path = self.path_of(node)?;
                let key = self.nodes.key(node).ok_or(Errno::Stale)?;
                // Its link count and ctime change: a change to the file.
                self.guard(session, node, false)?;
                self.fs(
                    answer(ReplyAs::Linked { node, parent, name }),
                    FsOp::Link { path, to, key },
                );
            }
            Request::Readlink { node } => {
                let path = self.path_of(node)?;
                self.fs(answer(ReplyAs::Readlink), FsOp::Readlink { path });
            }
            Request::Statfs => {
                self.fs(answer(ReplyAs::Statfs), FsOp::StatFs);
            }
            Request::AcquireLock { scope, kind, wait } => {
                let node = scope_node(scope);
                match (scope, self.nodes.kind(node)) {
                    (_, None) => return Err(Errno::Stale),
                    (LockScope::Directory(_) | LockScope::Subtree(_), Some(k))
                        if k != FileKind::Dir =>
                    {
                        return Err(Errno::NotDir);
                    }
                    _ => {}
                }
                let ancestors = self.nodes.ancestors(node);
                let req = LockRequest {
                    session,
                    request: id,
                    scope,
                    kind,
                    wait,
                    ancestors: &ancestors,
                };
                match self.locks.acquire(now, &req)? {
                    Acquired::Granted(grant) => self.answer(session, id, Ok(grant.reply())),
                    Acquired::Queued(_) => {}
                }
                self.drain_locks(now);
            }
            Request::RefreshLock { token } => {
                let grant = self.locks.refresh(now, session, token)?;
                self.answer(session, id, Ok(grant.reply()));
            }
            Request::ReleaseLock { token } => {
                self.locks.release(now, session, token)?;
                self.lease_returned(session, token);
                self.answer(session, id, Ok(Reply::Done));
                self.drain_locks(now);
            }
            Request::SetLock {
                node,
                owner,
                range,
                kind,
                wait,
            } => {
                if self.nodes.kind(node).is_none() {
                    return Err(Errno::Stale);
                }
                let owner = RangeOwner { session, owner };
                self.set_lock(host_locks::LockAsk {
                    session,
                    id,
                    owner,
                    node,
                    range,
                    kind,
                    wait,
                })?;
            }
            Request::Unlock { node, owner, range } => {
                // Never refused: a file gone from the index (unlinked
                // while open) still has its locks released at close.
                let owner = RangeOwner { session, owner };
                let mut taken = self.ranges.unlock(owner, node, range);
                taken.extend(self.stop_waiting_on_host(owner, node, range, true));
                self.mirror(owner, node);
                self.took_back(session, taken);
                self.answer(session, id, Ok(Reply::Done));
                self.drain_record_locks();
            }
            Request::Withdraw { node, owner, range } => {
                let owner = RangeOwner { session, owner };
                let mut taken = self.ranges.withdraw(owner, node, range);
                taken.extend(self.stop_waiting_on_host(owner, node, range, false));
                self.took_back(session, taken);
                self.answer(session, id, Ok(Reply::Done));
                self.drain_record_locks();
            }
            Request::TestLock {
                node,
                owner,
                range,
                kind,
            } => {
                let held = self
                    .ranges
                    .test(RangeOwner { session, owner }, node, range, kind);
                self.answer(session, id, Ok(Reply::LockTest(held)));
            }
            Request::BeginWrite {
                node,
                token,
                base,
                append_from,
            } => {
                self.writable()?;
                if self.nodes.kind(node) != Some(FileKind::File) {
                    return Err(if self.nodes.kind(node).is_none() {
                        Errno::Stale
                    } else {
                        Errno::IsDir
                    });
                }
                let ancestors = self.nodes.ancestors(node);
                self.locks.validate(now, session, token, node, &ancestors)?;
                let s = self.sessions.get(&session).ok_or(Errno::BadF)?;
                if s.txns.len() >= self.cfg.max_txns_per_session {
                    return Err(Errno::Again);
                }
                let path = self.path_of(node)?;
                let txn = self.new_txn(now, session, node, token, append_from, None);
                self.fs(
                    answer(ReplyAs::StageBegin { txn, expect: base }),
                    FsOp::StageBegin { txn, path },
                );
            }
            Request::WriteChunk {
                txn,
                index,
                offset,
                data,
            } => {
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open {
                    return Err(Errno::Inval);
                }
                if offset as usize >= CHUNK_SIZE || data.len() > MAX_WRITE_PIECE {
                    return Err(Errno::Inval);
                }
                let at = index
                    .checked_mul(CHUNK_SIZE as u64)
                    .and_then(|b| b.checked_add(u64::from(offset)))
                    .ok_or(Errno::FBig)?;
                let at = t.place(at)?;
                at.checked_add(data.len() as u64).ok_or(Errno::FBig)?;
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes += 1;
                    t.last_activity = now;
                }
                self.fs(
                    answer(ReplyAs::StageWrite { txn }),
                    FsOp::StageWrite {
                        txn,
                        offset: at,
                        data,
                    },
                );
            }
            Request::CopyWrite {
                txn,
                from,
                from_offset,
                offset,
                len,
            } => {
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open || t.writes > 0 {
                    // A barrier, like a truncate: nothing else in flight.
                    return Err(Errno::Busy);
                }
                t.unmoved()?;
                if len > crate::proto::MAX_COPY {
                    return Err(Errno::Inval);
                }
                offset
                    .checked_add(len)
                    .zip(from_offset.checked_add(len))
                    .ok_or(Errno::FBig)?;
                let from = match from {
                    FileRef::Node(node) => ReadFrom::Path(self.path_of(node)?),
                    FileRef::Handle(handle) => ReadFrom::Handle(self.own_handle(session, handle)?),
                };
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes += 1;
                    t.last_activity = now;
                }
                self.fs(
                    answer(ReplyAs::StageWrite { txn }),
                    FsOp::StageCopy {
                        txn,
                        from,
                        from_offset,
                        offset,
                        len,
                    },
                );
            }
            Request::TruncateWrite { txn, size } => {
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open || t.writes > 0 {
                    // A truncate is a barrier between the chunks before and
                    // after it: the client sends it with none in flight.
                    return Err(Errno::Busy);
                }
                t.unmoved()?;
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.writes += 1;
                    t.last_activity = now;
                }
                self.fs(
                    answer(ReplyAs::StageWrite { txn }),
                    FsOp::StageTruncate { txn, size },
                );
            }
            // A commit's mode and times come with its content; owners
            // never do (a client sends a chown as a SetAttr of its own).
            Request::CommitWrite { set, .. } | Request::WriteWhole { set, .. } if set.chowns() => {
                return Err(Errno::Inval);
            }
            Request::CommitWrite { txn, size, set } => {
                if let Some(attr) = self.sessions.get(&session).and_then(|s| {
                    s.committed
                        .iter()
                        .find(|(t, _)| *t == txn)
                        .map(|(_, a)| a.clone())
                }) {
                    self.answer(session, id, Ok(Reply::Attr(attr)));
                    return Ok(());
                }
                let t = self.live_txn(now, session, txn)?;
                if t.phase != TxnPhase::Open || t.writes > 0 {
                    // Chunks still in flight: the client commits only after
                    // every chunk is acknowledged.
                    return Err(Errno::Busy);
                }
                let size = t.place(size)?;
                self.commit_txn(now, txn, size, set, answer(ReplyAs::Commit { txn }))?;
            }
            Request::AbortWrite { txn } => {
                let t = self
                    .txns
                    .get(&txn)
                    .filter(|t| t.session == session)
                    .ok_or(Errno::Stale)?;
                if t.phase == TxnPhase::Committing {
                    return Err(Errno::Busy);
                }
                self.drop_txn(txn);
                self.fs(answer(ReplyAs::Abort), FsOp::StageAbort { txn });
            }
            Request::Goodbye => {
                self.answer(session, id, Ok(Reply::Done));
                self.end_session(now, session);
            }
            Request::Ping => self.answer(session, id, Ok(Reply::Done)),
            Request::Sync => self.after_sync(now, session, id, Ok(Reply::Done)),
            Request::WriteWhole {
                node,
                base,
                append_from,
                tag,
                truncate,
                offset,
                data,
                size,
                set,
            } => self.write_whole(
                now,
                session,
                id,
                node,
                (base, append_from),
                tag,
                WholeRest {
                    truncate,
                    offset,
                    data,
                    size,
                    set,
                },
            )?,
            Request::Lease { dir } => self.take_lease(now, session, id, dir)?,
            Request::Apply { dir, tag, ops } => self.apply(session, id, dir, tag, ops)?,
        }
        Ok(())
    }

    /// Unlink (`dir` false) or rmdir: refused while another session's lock
    /// covers the directory's entries or the node itself (or anything
    /// beneath it).
    fn remove(
        &mut self,
        session: SessionId,
        id: RequestId,
        parent: NodeId,
        name: Name,
        dir: bool,
    ) -> Result<(), Errno> {
        self.writable()?;
        let path = self.dir_path(parent)?.join(visible(&name)?);
        self.guard(session, parent, true)?;
        if let Some(child) = self.nodes.child(parent, &name) {
            self.guard(session, child, false)?;
            if self.locked_below_by_other(session, child) {
                return Err(Errno::Busy);
            }
        }
        let fs = if dir {
            FsOp::Rmdir { path }
        } else {
            FsOp::Unlink { path }
        };
        self.fs(
            Purpose::Answer {
                session,
                id,
                then: ReplyAs::Removed { parent, name },
            },
            fs,
        );
        Ok(())
    }

    /// Whether a session other than `session` holds a lock on `node` or on
    /// anything beneath it (what moving or removing `node` would disturb).
    pub(super) fn locked_below_by_other(&self, session: SessionId, node: NodeId) -> bool {
        self.locks.locks().any(|l| {
            l.session != session && {
                let n = scope_node(l.scope);
                n == node || self.nodes.ancestors(n).contains(&node)
            }
        })
    }

    /// Numbers for a handle `session` is about to open, within its limit.
    fn new_handle(&mut self, session: SessionId) -> Result<(HandleId, FsHandle), Errno> {
        let s = self.sessions.get(&session).ok_or(Errno::BadF)?;
        if s.handles.len() >= self.cfg.max_handles_per_session {
            return Err(Errno::Again);
        }
        let n = self.next_handle;
        self.next_handle += 1;
        Ok((HandleId(n), FsHandle(n)))
    }

    fn own_handle(&self, session: SessionId, handle: HandleId) -> Result<FsHandle, Errno> {
        self.handles
            .get(&handle)
            .filter(|h| h.session == session)
            .map(|h| h.fs)
            .ok_or(Errno::BadF)
    }

    /// A transaction of `session` whose token is still a live exclusive
    /// lock on its file: the fencing check, made at every step.
    fn live_txn(&self, now: Instant, session: SessionId, txn: TxnId) -> Result<&Txn, Errno> {
        let t = self
            .txns
            .get(&txn)
            .filter(|t| t.session == session)
            .ok_or(Errno::Stale)?;
        let ancestors = self.nodes.ancestors(t.node);
        self.locks
            .validate(now, session, t.token, t.node, &ancestors)?;
        Ok(t)
    }

    /// A transaction of `session` on `node` under the lock `token`, about
    /// to stage (a client's own, or a whole write the host runs).
    pub(super) fn new_txn(
        &mut self,
        now: Instant,
        session: SessionId,
        node: NodeId,
        token: LockToken,
        appends_from: Option<u64>,
        whole: Option<super::whole::Whole>,
    ) -> TxnId {
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        self.txns.insert(
            txn,
            Txn {
                session,
                node,
                token,
                phase: TxnPhase::Staging,
                writes: 0,
                last_activity: now,
                base: None,
                whole,
                appends_from,
                moved_to: None,
            },
        );
        if let Some(s) = self.sessions.get_mut(&session) {
            s.txns.insert(txn);
        }
        txn
    }

    /// Renames `txn`'s staged copy over its file, giving it `set`'s mode
    /// and times first. At the file's path now, not at BeginWrite: the
    /// writer itself may have renamed it since (its lock does not stop
    /// its own renames), and committing to the old path would replace
    /// whatever file is there now.
    pub(super) fn commit_txn(
        &mut self,
        now: Instant,
        txn: TxnId,
        size: u64,
        set: SetAttr,
        purpose: Purpose,
    ) -> Result<(), Errno> {
        let t = self.txns.get(&txn).ok_or(Errno::BadF)?;
        let base = t.base.ok_or(Errno::Inval)?;
        let path = self.path_of(t.node)?;
        if let Some(t) = self.txns.get_mut(&txn) {
            t.phase = TxnPhase::Committing;
            t.last_activity = now;
        }
        let set = Box::new(set);
        let commit = FsOp::StageCommit {
            txn,
            path,
            size,
            base,
            set,
        };
        self.fs(purpose, commit);
        Ok(())
    }

    pub(super) fn drop_txn(&mut self, txn: TxnId) {
        if let Some(t) = self.txns.remove(&txn)
            && let Some(s) = self.sessions.get_mut(&t.session)
        {
            s.txns.remove(&txn);
        }
    }

    /// Answers the record-lock requests that waited and are now granted.
    pub(super) fn drain_record_locks(&mut self) {
        while let Some(g) = self.ranges.poll_grant() {
            if g.result.is_ok() && self.cfg.lock_host_files {
                // Answered once the host's file holds it too.
                self.hold_granted(g);
            } else {
                self.answer(g.session, g.request, g.result.map(|()| Reply::Done));
            }
        }
    }

    pub(super) fn drain_locks(&mut self, now: Instant) {
        while let Some(out) = self.locks.poll_output() {
            if let Some((session, id, result)) = out.reply() {
                self.answer(session, id, result);
            }
            if let LockOutput::Expired { token, .. } = out {
                // A transaction fenced by a dead lock can never commit:
                // drop its staging now rather than at its idle timeout.
                let dead: Vec<TxnId> = self
                    .txns
                    .iter()
                    .filter(|(_, t)| t.token == token && t.phase != TxnPhase::Committing)
                    .map(|(&id, _)| id)
                    .collect();
                for txn in dead {
                    self.drop_txn(txn);
                    self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
                }
            }
        }
        // A lease ends with its lock.
        self.settle_leases(now);
    }
}
