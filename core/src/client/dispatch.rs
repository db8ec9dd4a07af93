//! Kernel operations: answer from the cache or turn into requests.

use super::ahead::Take;
use super::{
    AfterCommit, Allocate, Answer, Blocked, CacheWait, ClientCore, Fh, Handle, ListedName, Op,
    Purpose, ReadJob, Req,
};
use crate::Instant;
use crate::cache::{CacheKey, ChunkKey, EntryState, Kind, Lookup, Miss, Value};
use crate::proto::{
    Attr, CHUNK_SIZE, Errno, FileKind, FileRef, MAX_XATTR_NAME, MAX_XATTR_SIZE, NodeId, OpenFor,
    Request, SetAttr, SetTime,
};
use crate::vfs::Ino;
use crate::write::{WriteError, WriteTxn};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

impl ClientCore {
    /// A kernel operation. Its answer comes as [`super::ClientOutput::Reply`]
    /// with `req`, now (cache hit) or later.
    pub fn op(&mut self, now: Instant, req: Req, op: Op) {
        if self.phase.redial_at().is_some() {
            // Someone is waiting: try the host now rather than at the next
            // redial; the request waits for the try.
            self.connect(now);
        }
        if self.phase.gave_up() {
            // For good (a refused ticket): the cache answers what it can
            // (lookups and opens here; attributes, listings and reads in
            // `run`, which serves stale entries while unreachable).
            if self.vfs.is_none() || self.rebinding.is_some() {
                self.reply(req, Err(Errno::NotConn));
                return;
            }
            if self.answer_from_cache(now, req, &op) {
                self.drain(now);
                return;
            }
            if !matches!(
                op,
                Op::GetAttr { .. } | Op::ReadDir { .. } | Op::Read { .. }
            ) {
                self.reply(req, Err(Errno::NotConn));
                return;
            }
        }
        if self.vfs.is_none() || self.rebinding.is_some() {
            // Not connected yet, or re-binding after a host restart: run it
            // once the inodes mean something again.
            if self.deferred.len() >= self.cfg.max_queued {
                self.reply(req, Err(Errno::Again));
            } else {
                self.deferred.push_back((req, op));
            }
            return;
        }
        if let Err(e) = self.run(now, req, op) {
            self.reads.remove(&req);
            self.reply(req, Err(e));
        }
        self.drain(now);
    }

    pub(super) fn node(&self, ino: Ino) -> Result<NodeId, Errno> {
        let vfs = self.vfs.as_ref().ok_or(Errno::NotConn)?;
        match vfs.get(ino) {
            None => Err(Errno::Stale),
            // Another file has its name now: the kernel looks it up again.
            Some(i) if i.replaced => Err(Errno::Stale),
            Some(_) => vfs.node(ino).ok_or(Errno::NoEnt),
        }
    }

    /// An extended attribute name the host serves (its namespace, as the
    /// host announced how it treats owners): ERANGE for a name of no or
    /// too many bytes, EOPNOTSUPP for another namespace.
    fn xattr_served(&self, name: &[u8]) -> Result<(), Errno> {
        if name.is_empty() || name.len() > MAX_XATTR_NAME {
            return Err(Errno::Range);
        }
        if self.owners.ok_or(Errno::NotConn)?.serves_xattr(name) {
            Ok(())
        } else {
            Err(Errno::NotSup)
        }
    }

    fn handle(&self, fh: Fh) -> Result<&Handle, Errno> {
        self.handles.get(&fh).ok_or(Errno::BadF)
    }

    /// Handle `fh`, if it was opened for writing: EBADF otherwise, as the
    /// kernel answers a program itself. Nothing else is written through:
    /// a handle open only for reading may be set aside with the version
    /// it opened when another commit replaces its file, and a write
    /// through it would change a file its mount no longer follows (fs_sim,
    /// seed 16557, whose workload wrote through any handle).
    fn writable(&self, fh: Fh) -> Result<&Handle, Errno> {
        self.fenced(fh)?;
        let h = Some(self.handle(fh)?)
            .filter(|h| h.write)
            .ok_or(Errno::BadF)?;
        debug_assert!(
            !super::set_aside(self.vfs.as_ref(), h.ino),
            "a handle open for writing was set aside"
        );
        Ok(h)
    }

    /// After the kernel opened `ino`: opens ahead the small files that
    /// follow it in its directory's listing, if the opens sweep through it.
    fn open_ahead(&mut self, now: Instant, ino: Ino) {
        let Some((parent, name)) = self
            .vfs
            .as_ref()
            .and_then(|v| v.get(ino))
            .and_then(|i| i.link().cloned())
        else {
            return;
        };
        let Ok(dir) = self.node(parent) else {
            return;
        };
        let Some(entries) = self.cache.peek_dir(dir) else {
            return;
        };
        for node in self.ahead.next(dir, &name, entries) {
            let request = Request::Open {
                node,
                mode: OpenFor::Read,
            };
            self.send(now, Purpose::OpenAhead { node }, request);
        }
    }

    pub(super) fn run(&mut self, now: Instant, req: Req, op: Op) -> Result<(), Errno> {
        match &op {
            Op::Lookup { parent, name } => {
                let pnode = self.node(*parent)?;
                if self.lookup_locally(now, req, pnode, name) {
                    return Ok(());
                }
                let neg = CacheKey::Negative {
                    parent: pnode,
                    name: name.clone(),
                };
                if self.cache.state(now, &neg) == crate::cache::EntryState::Cached
                    || self.cache.lacks(now, pnode, name)
                {
                    return Err(Errno::NoEnt);
                }
                if self.unreachable() && self.answer_from_cache(now, req, &op) {
                    return Ok(());
                }
                let request = Request::Lookup {
                    parent: pnode,
                    name: name.clone(),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::GetAttr { ino } => {
                let node = match self.node(*ino) {
                    Ok(node) => node,
                    Err(e @ (Errno::NoEnt | Errno::Stale)) => {
                        let answer = self.orphan_attr(*ino).ok_or(e)?;
                        self.reply(req, Ok(answer));
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                if self.leases.is_unapplied(node) && !self.handles.values().any(|h| h.node == node)
                {
                    // Made under a lease, closed and not yet applied: its
                    // times so far are this client's clock, and the
                    // host's differ. Shown, they would jump when it is
                    // applied (a time a program left alone would look
                    // changed), so a stat waits for the host's. Not while
                    // it is open: `cp` stats the file it is about to
                    // write, whose times move anyway, and waiting there
                    // would send its create ahead of its content.
                    self.cache
                        .invalidate(now, node, crate::proto::Invalidation::Attr);
                }
                let w = self.waiter(CacheWait::GetAttr { req, ino: *ino });
                match self.cache.lookup(now, &CacheKey::Attr(node), w) {
                    Ok(Lookup::Hit(Value::Attr(a))) => {
                        self.waits.remove(&w);
                        let attr = self.with_local_changes(&a);
                        // This client's guess, while the file is not yet
                        // applied: not for the kernel to keep past the
                        // close (it sends the release after `close`
                        // returns).
                        let ttl = if self.leases.is_unapplied(node) {
                            std::time::Duration::ZERO
                        } else {
                            self.kernel_ttl(Kind::Attr)
                        };
                        self.reply(req, Ok(Answer::Attr { attr, ttl }));
                    }
                    Ok(Lookup::Hit(_)) => return Err(Errno::Io),
                    Ok(Lookup::Stale(_))
                        if self.unreachable()
                            && self.cache.serve_stale(now, &CacheKey::Attr(node)) => {}
                    Ok(Lookup::Stale(_) | Lookup::Miss(Miss::Fetch)) => {
                        self.send(
                            now,
                            Purpose::Fetch(CacheKey::Attr(node)),
                            Request::GetAttr { node },
                        );
                    }
                    Ok(Lookup::Miss(_)) => {}
                    Err(_) => {
                        self.waits.remove(&w);
                        return Err(Errno::Again);
                    }
                }
            }
            Op::SetAttr { ino, set } => {
                let node = self.node(*ino)?;
                let set = &self.chown_for_host(set, self.cache.peek_attr(node))?;
                match set.size {
                    Some(size) => {
                        let b = Blocked::Truncate {
                            req,
                            ino: *ino,
                            size,
                            rest: SetAttr { size: None, ..*set },
                        };
                        if !self.wait_for_commit(node, b.clone()) {
                            self.run_blocked(now, node, b)?;
                        }
                    }
                    None if self.setattr_locally(now, req, *ino, set) => {}
                    None if let Some(attr) = self.fold_into_commit(now, node, set) => {
                        let ttl = self.kernel_ttl(Kind::Attr);
                        self.reply(req, Ok(Answer::Attr { attr, ttl }));
                    }
                    None if self.writes.get(&node).is_some_and(|w| !w.is_finished()) => {
                        // Mode and times apply to the content the writer
                        // made: after its commit (a new time set on the
                        // old file would be lost with it).
                        let then = AfterCommit::SetAttr {
                            req,
                            ino: *ino,
                            rest: *set,
                            truncated: false,
                        };
                        self.commit_then(now, node, then)?;
                    }
                    None => {
                        let request = Request::SetAttr {
                            node,
                            set: *set,
                            token: None,
                        };
                        self.send(now, Purpose::kernel_op(req, &op), request);
                    }
                }
            }
            Op::ReadDir { ino, offset } => {
                let node = self.node(*ino)?;
                if *offset == 0 {
                    self.listing_begins(now, *ino);
                }
                let w = self.waiter(CacheWait::ReadDir {
                    req,
                    ino: *ino,
                    offset: *offset,
                });
                match self.cache.lookup(now, &CacheKey::Dir(node), w) {
                    Ok(Lookup::Hit(Value::Dir(entries))) => {
                        self.waits.remove(&w);
                        self.answer_dir(now, req, *ino, *offset, &entries);
                    }
                    Ok(Lookup::Hit(_)) => return Err(Errno::Io),
                    Ok(Lookup::Stale(_))
                        if self.unreachable()
                            && self.cache.serve_stale(now, &CacheKey::Dir(node)) => {}
                    Ok(Lookup::Stale(_) | Lookup::Miss(Miss::Fetch)) => {
                        self.fetch_dir(now, node);
                    }
                    Ok(Lookup::Miss(_)) => {}
                    Err(_) => {
                        self.waits.remove(&w);
                        return Err(Errno::Again);
                    }
                }
            }
            Op::Open {
                ino,
                mode,
                truncate,
            } if *mode != OpenFor::Read || *truncate => {
                // An open for writing asks the host itself (open-ahead
                // opens only read): it checks what it would refuse.
                let node = self.node(*ino)?;
                let request = Request::Open { node, mode: *mode };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Open { .. } if self.unreachable() && self.answer_from_cache(now, req, &op) => {}
            Op::Open { ino, .. } => {
                let node = self.node(*ino)?;
                // Read before `take` borrows `self.ahead`, so that the
                // check it runs borrows nothing of `self`.
                let known = self.cache.peek_attr(node).map(|a| a.version);
                let writing = self.writes.contains_key(&node);
                let valid = |a: &Attr| !writing && known.is_none_or(|v| v == a.version);
                let mut stale = Vec::new();
                match self.ahead.take(now, node, req, *ino, valid, &mut stale) {
                    Take::Ready(opened) => {
                        // `valid` checked it is not older than what this
                        // client knows.
                        let opened = (Some(opened.handle), opened.attr, opened.inline);
                        let answer = self.opened(now, *ino, opened, OpenFor::Read, false);
                        self.reply(req, Ok(answer));
                    }
                    Take::Joined => {}
                    Take::Miss => {
                        let request = Request::Open {
                            node,
                            mode: OpenFor::Read,
                        };
                        self.send(now, Purpose::kernel_op(req, &op), request);
                    }
                }
                self.close_host_handles(now, stale);
                self.open_ahead(now, *ino);
            }
            Op::Read { fh, offset, size } => {
                let node = self.handle(*fh)?.node;
                self.reads.insert(
                    req,
                    ReadJob {
                        fh: *fh,
                        offset: *offset,
                        size: *size,
                        parts: Vec::new(),
                        retries: 0,
                        through: false,
                        planned: None,
                    },
                );
                let end = offset.saturating_add(u64::from(*size));
                if self.spilled(node, *offset, end) {
                    let b = Blocked::Read { req };
                    if !self.wait_for_commit(node, b.clone()) {
                        self.run_blocked(now, node, b)?;
                    }
                } else {
                    self.start_read(now, req)?;
                }
            }
            Op::Write {
                fh,
                offset,
                data,
                append,
            } => {
                let node = self.writable(*fh)?.node;
                let b = Blocked::Write {
                    req,
                    fh: *fh,
                    offset: *offset,
                    data: data.clone(),
                    append: *append,
                };
                if !self.wait_for_commit(node, b.clone()) {
                    self.run_blocked(now, node, b)?;
                }
            }
            Op::Allocate {
                fh,
                offset,
                length,
                how,
            } => {
                let h = self.writable(*fh)?;
                let (ino, node) = (h.ino, h.node);
                let known = self.cache.peek_attr(node).unwrap_or(&h.attr).clone();
                let size = self.with_local_changes(&known).size;
                let Some(inner) = allocation(*fh, ino, size, *offset, *length, *how)? else {
                    self.reply(req, Ok(Answer::Done));
                    return Ok(());
                };
                self.allocating.insert(req);
                return self.run(now, req, inner);
            }
            Op::CopyRange {
                fh_in,
                offset_in,
                fh_out,
                offset_out,
                len,
            } => {
                let node = self.writable(*fh_out)?.node;
                let src = self.handle(*fh_in)?;
                let (src_node, src_host, src_size) = (src.node, src.host, src.attr.size);
                // The host can copy only what it holds: a source with
                // writes of this mount not yet committed, or a copy within
                // one file, goes through the kernel's own copy (it reads
                // and writes) when told EOPNOTSUPP.
                let dirty = self.writes.get(&src_node).is_some_and(|w| !w.is_finished())
                    || self.blocked.contains_key(&src_node);
                if src_node == node || dirty || src_node == super::UNBOUND {
                    return Err(Errno::NotSup);
                }
                // What the source holds in the version this handle reads.
                let n = (*len)
                    .min(src_size.saturating_sub(*offset_in))
                    .min(crate::proto::MAX_COPY);
                if n == 0 {
                    self.reply(req, Ok(Answer::Written(0)));
                    return Ok(());
                }
                let from = match src_host {
                    Some(h) => crate::proto::FileRef::Handle(h),
                    None => crate::proto::FileRef::Node(src_node),
                };
                let b = Blocked::Copy {
                    req,
                    fh: *fh_out,
                    from,
                    from_offset: *offset_in,
                    offset: *offset_out,
                    len: n,
                };
                if !self.wait_for_commit(node, b.clone()) {
                    self.run_blocked(now, node, b)?;
                }
            }
            Op::Flush { fh, .. } | Op::Fsync { fh } => {
                if let Some(e) = self.handles.get_mut(fh).and_then(|h| h.error.take()) {
                    return Err(e);
                }
                let node = self.handle(*fh)?.node;
                if node == super::UNBOUND {
                    // Cut off from its file by a host restart: nothing it
                    // wrote can be made durable, so say so.
                    return Err(Errno::Stale);
                }
                // (Nothing waiting either: a write queued behind a commit
                // must be covered by this flush.)
                let bare_truncate = self.blocked.get(&node).is_none_or(VecDeque::is_empty)
                    && self.writes.get(&node).is_some_and(|w| {
                        !w.is_finished() && !w.is_committing() && w.only_emptied()
                    });
                if matches!(op, Op::Flush { .. }) && bare_truncate {
                    // A FLUSH comes at every close of a descriptor,
                    // including the copies a fork makes (closed at exec):
                    // a rewrite with O_TRUNC that has written nothing yet
                    // would commit an empty file the writer never meant.
                    // It commits at its next write's flush, at fsync, or at
                    // the release (`: > f` truncates at close).
                    self.reply(req, Ok(Answer::Done));
                    return Ok(());
                }
                if matches!(op, Op::Fsync { .. }) {
                    self.fsyncs.insert(req, *fh);
                }
                self.commit_then(now, node, AfterCommit::Reply(req, *fh))?;
                if let Op::Flush {
                    owner: Some(owner), ..
                } = op
                {
                    self.let_go_of_lost_locks(*fh, owner);
                    self.release_locks(now, Some(node), Some(owner), None)?;
                }
            }
            Op::Release { fh } => {
                let h = self.handles.remove(fh).ok_or(Errno::BadF)?;
                self.read_ahead.close(fh.0);
                if let Some(v) = self.vfs.as_mut() {
                    let _ = v.close(h.ino);
                }
                if let Some(host) = h.host {
                    self.send(now, Purpose::Forget, Request::Close { handle: host });
                }
                if !self.handles.values().any(|o| o.node == h.node) {
                    self.files.remove(&h.attr.key);
                }
                if let Some(e) = h.error {
                    // An earlier loss is this close's answer; what was
                    // written since still commits (a failure of that is
                    // for the file's other handles to report).
                    let _ = self.commit_then(now, h.node, AfterCommit::Quiet);
                    let _ = self.release_locks(now, None, None, Some(*fh));
                    return Err(e);
                }
                if h.node == super::UNBOUND {
                    let _ = self.release_locks(now, None, None, Some(*fh));
                    return Err(Errno::Stale);
                }
                self.commit_then(now, h.node, AfterCommit::Reply(req, *fh))?;
                // A `flock` goes with its open file.
                self.release_locks(now, None, None, Some(*fh))?;
                if self.leases.is_unapplied(h.node) {
                    self.closed_locally(now, h.node);
                }
            }
            // A directory removed here, its rmdir not yet applied: nothing
            // is made in it (a program whose working directory it is
            // gets ENOENT, as on a local disk, not a late ENOTEMPTY).
            Op::Create { parent, .. }
            | Op::Mkdir { parent, .. }
            | Op::Mknod { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Link {
                new_parent: parent, ..
            } if self.removed_here(*parent) => return Err(Errno::NoEnt),
            Op::Create { .. } if self.create_locally(now, req, &op) => {}
            Op::Unlink { .. } if self.unlink_locally(now, req, &op) => {}
            Op::Rmdir { .. } if self.rmdir_locally(now, req, &op) => {}
            Op::Create { .. } | Op::Unlink { .. } | Op::Rmdir { .. }
                if self.wait_for_lease(now, req, &op) => {}
            Op::Create {
                parent,
                name,
                mode,
                caller,
                exclusive,
                truncate: _,
            } => {
                let pnode = self.node(*parent)?;
                let request = Request::Create {
                    parent: pnode,
                    name: name.clone(),
                    mode: *mode,
                    exclusive: *exclusive,
                    open: true,
                    owner: self.owner_for_host(*caller),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Mkdir {
                parent,
                name,
                mode,
                caller,
            } => {
                let pnode = self.node(*parent)?;
                let request = Request::Mkdir {
                    parent: pnode,
                    name: name.clone(),
                    mode: *mode,
                    owner: self.owner_for_host(*caller),
                    lease: self.lease_with_mkdir(now),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Symlink {
                parent,
                name,
                target,
                caller,
            } => {
                let pnode = self.node(*parent)?;
                let request = Request::Symlink {
                    parent: pnode,
                    name: name.clone(),
                    target: target.clone(),
                    owner: self.owner_for_host(*caller),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::GetXattr { ino, name, .. } => {
                // Namespaces the host does not serve have nothing in
                // them, answered here: `ls -l` asks every file for its
                // security label and ACL.
                self.xattr_served(name).map_err(|_| Errno::NoData)?;
                let request = Request::GetXattr {
                    node: self.node(*ino)?,
                    name: name.clone(),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::ListXattr { ino, .. } => {
                let request = Request::ListXattr {
                    node: self.node(*ino)?,
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::SetXattr {
                ino,
                name,
                value,
                how,
            } => {
                self.xattr_served(name)?;
                if value.len() > MAX_XATTR_SIZE {
                    return Err(Errno::TooBig);
                }
                let request = Request::SetXattr {
                    node: self.node(*ino)?,
                    name: name.clone(),
                    value: value.clone(),
                    how: *how,
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::RemoveXattr { ino, name } => {
                self.xattr_served(name)?;
                let request = Request::RemoveXattr {
                    node: self.node(*ino)?,
                    name: name.clone(),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let request = Request::Link {
                    node: self.node(*ino)?,
                    parent: self.node(*new_parent)?,
                    name: new_name.clone(),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Mknod {
                parent,
                name,
                kind,
                mode,
                rdev,
                caller,
            } => {
                if !kind.is_special() && *kind != FileKind::File {
                    return Err(Errno::Inval);
                }
                let pnode = self.node(*parent)?;
                let request = Request::Mknod {
                    parent: pnode,
                    name: name.clone(),
                    kind: *kind,
                    mode: *mode,
                    rdev: *rdev,
                    owner: self.owner_for_host(*caller),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Unlink { parent, name } | Op::Rmdir { parent, name } => {
                let pnode = self.node(*parent)?;
                let request = if matches!(op, Op::Unlink { .. }) {
                    Request::Unlink {
                        parent: pnode,
                        name: name.clone(),
                    }
                } else {
                    Request::Rmdir {
                        parent: pnode,
                        name: name.clone(),
                    }
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
            } => {
                let request = Request::Rename {
                    parent: self.node(*parent)?,
                    name: name.clone(),
                    new_parent: self.node(*new_parent)?,
                    new_name: new_name.clone(),
                };
                self.send(now, Purpose::kernel_op(req, &op), request);
            }
            Op::Readlink { ino } => {
                let node = self.node(*ino)?;
                self.send(
                    now,
                    Purpose::kernel_op(req, &op),
                    Request::Readlink { node },
                );
            }
            Op::Statfs => self.send(now, Purpose::kernel_op(req, &op), Request::Statfs),
            Op::SetLock { .. } | Op::GetLock { .. } => self.record_lock(now, req, &op)?,
            Op::SyncAll => self.send(now, Purpose::kernel_op(req, &op), Request::Sync),
        }
        Ok(())
    }

    /// The file's open transaction, started if there is none.
    pub(super) fn txn(&mut self, node: NodeId, now: Instant) -> Result<&mut WriteTxn, Errno> {
        if node == super::UNBOUND {
            // A handle cut off by a host restart: nothing to lock or write
            // (and one shared node 0 would mix up files' transactions).
            return Err(Errno::Stale);
        }
        if self.writes.get(&node).is_some_and(WriteTxn::is_finished) {
            // Whatever it still has to send (its lock's release) goes
            // before it does: a lost release would hold the next
            // transaction's lock request until the lock expired.
            self.drain_write(now, node);
            self.writes.remove(&node);
        }
        if !self.writes.contains_key(&node) {
            let (size, base) = self.current_content(node);
            let mut txn = WriteTxn::new(node, size, base, self.cfg.write.clone());
            txn.allow_whole(self.next_tag);
            self.next_tag += 1;
            self.writes.insert(node, txn);
        }
        self.writes.get_mut(&node).ok_or(Errno::Io)
    }

    /// Commits `node`'s transaction, if it has one. A whole write is
    /// named when it is sent, not when its transaction began (a file may
    /// stay open, written, while many others are written whole): the host
    /// refuses a name no higher than one it has forgotten, taking it for
    /// one sent again that may have run.
    fn commit_write(&mut self, now: Instant, node: NodeId) -> Result<(), Errno> {
        let tag = self.next_tag;
        let Some(txn) = self.writes.get_mut(&node) else {
            return Ok(());
        };
        self.next_tag += 1;
        txn.allow_whole(tag);
        txn.commit(now).map_err(write_errno)
    }

    /// The file's size and content version as this client's writes see
    /// it: its open handles' (their reads show that version), else the
    /// cached attributes'. A file never seen has no version to build on.
    /// Of several handles, one open for writing gives it, the one whose
    /// version changed last (by the host's ctime): a
    /// reader keeps the version it opened until it opens again
    /// (close-to-open), and when another client replaced the file in
    /// between, the writer's commit would be refused as stale on the
    /// reader's account.
    fn current_content(&self, node: NodeId) -> (u64, Option<u64>) {
        if self.leases.is_unapplied(node) {
            // Made here, empty at first: its version is not the host's,
            // and nothing but this client's writes can be in it.
            return (
                self.handles
                    .values()
                    .find(|h| h.node == node)
                    .map_or(0, |h| h.attr.size),
                None,
            );
        }
        // (Not a handle set aside: it reads a file that was replaced, and
        // nothing writes through it.)
        let vfs = self.vfs.as_ref();
        let on_it = || {
            self.handles
                .values()
                .filter(move |h| super::on_file(vfs, h, node))
        };
        on_it()
            .filter(|h| h.write)
            .max_by_key(|h| h.attr.ctime)
            .or_else(|| on_it().max_by_key(|h| h.attr.ctime))
            .map(|h| (h.attr.size, Some(h.attr.version)))
            .or_else(|| {
                self.cache
                    .peek_attr(node)
                    .map(|a| (a.size, Some(a.version)))
            })
            .unwrap_or((0, None))
    }

    /// Joins `set` (no size) to the file's open transaction
    /// ([`WriteTxn::set_at_commit`]) if it can be answered at once, and
    /// gives the attributes to answer with: a write is open and not
    /// committing, nothing waits for its commit, no time is "now" (the
    /// host's clock, which this client cannot read), and the cache holds
    /// the file's attributes fresh.
    fn fold_into_commit(&mut self, now: Instant, node: NodeId, set: &SetAttr) -> Option<Attr> {
        let queued = self.blocked.get(&node).is_some_and(|q| !q.is_empty());
        let now_time = [set.atime, set.mtime].contains(&Some(SetTime::Now));
        if queued || now_time || set.size.is_some() || set.chowns() {
            return None;
        }
        let attr = self.fresh_attr(now, node)?;
        let w = self
            .writes
            .get_mut(&node)
            .filter(|w| !w.is_finished() && !w.is_committing())?;
        w.set_at_commit(*set).ok()?;
        Some(self.with_local_changes(&attr))
    }

    /// The file's attributes, if the cache holds them fresh (within the
    /// ttl the kernel may serve them for).
    fn fresh_attr(&self, now: Instant, node: NodeId) -> Option<Attr> {
        let key = CacheKey::Attr(node);
        (self.cache.state(now, &key) == EntryState::Cached)
            .then(|| self.cache.peek_attr(node).cloned())
            .flatten()
    }

    /// Attributes with this client's uncommitted size, mode and times
    /// laid over them, and a leased directory's mode and times set here
    /// and not yet applied.
    pub(super) fn with_local_changes(&self, attr: &Attr) -> Attr {
        let mut a = attr.clone();
        if let Some((set, ctime)) = self.set_here(attr.node) {
            // A leased directory's mode and times set here: every answer
            // shows them until the host has them (the host's own, until
            // then, are older).
            if let Some(mode) = set.mode {
                a.mode = (a.mode & !0o7777) | (mode & 0o7777);
            }
            if let Some(SetTime::At(t)) = set.atime {
                a.atime = t;
            }
            if let Some(SetTime::At(t)) = set.mtime {
                a.mtime = t;
            }
            a.ctime = a.ctime.max(ctime);
        }
        if let Some(w) = self.writes.get(&attr.node).filter(|w| !w.is_finished()) {
            a.size = w.size();
            let set = w.pending_set();
            if let Some(mode) = set.mode {
                a.mode = (a.mode & !0o7777) | (mode & 0o7777);
            }
            if let Some(SetTime::At(t)) = set.atime {
                a.atime = t;
            }
            if let Some(at) = w.changed_at() {
                // Its times as a local disk's would be until the host's
                // replace them at the commit (a truncating open commits
                // only at the release, which the kernel sends after
                // `close` returns). Always later than the host's: this
                // client's clock may lag the host's.
                let t = self.leases.wall(at);
                let later = |old: crate::proto::Timestamp| {
                    if t > old { t } else { old.plus_nanos(1) }
                };
                a.mtime = later(a.mtime);
                a.ctime = later(a.ctime);
            }
            if let Some(SetTime::At(t)) = set.mtime {
                a.mtime = t;
            }
        }
        a
    }

    /// Commits the file's transaction (if any) and runs `then` when it is
    /// durable; with no transaction, `then` runs now with the last write
    /// error, if one is unreported. Behind a commit under way (or
    /// operations waiting for it) it waits its turn, so that it covers
    /// every write sent before it.
    pub(super) fn commit_then(
        &mut self,
        now: Instant,
        node: NodeId,
        then: AfterCommit,
    ) -> Result<(), Errno> {
        let b = Blocked::Commit { then, lost: None };
        if self.wait_for_commit(node, b.clone()) {
            return Ok(());
        }
        self.run_blocked(now, node, b)
    }

    /// Queues `b` behind the file's commit under way or the operations
    /// already waiting for it; false if it may run now.
    fn wait_for_commit(&mut self, node: NodeId, b: Blocked) -> bool {
        let busy = self.blocked.get(&node).is_some_and(|q| !q.is_empty())
            || self.writes.get(&node).is_some_and(WriteTxn::is_committing);
        if busy {
            self.blocked.entry(node).or_default().push_back(b);
        }
        busy
    }

    /// The kernel request first in `node`'s queue.
    fn blocked_front(&self, node: NodeId) -> Option<Req> {
        self.blocked.get(&node)?.front()?.req()
    }

    /// Whether this client's write transaction on `node` dropped bytes of
    /// `[start, end)` it had written (see `WriteConfig::keep_acked`).
    fn spilled(&self, node: NodeId, start: u64, end: u64) -> bool {
        self.writes
            .get(&node)
            .is_some_and(|w| !w.is_finished() && w.spilled_overlaps(start, end))
    }

    /// Runs one of a file's operations now. A write that finds the buffer
    /// full commits what is there and waits, first in line, for that
    /// commit to end; so does a read of bytes only the host's staging copy
    /// holds.
    fn run_blocked(&mut self, now: Instant, node: NodeId, b: Blocked) -> Result<(), Errno> {
        match b {
            Blocked::Read { req } => {
                let range = self
                    .reads
                    .get(&req)
                    .map(|j| (j.offset, j.offset + u64::from(j.size)));
                match range {
                    Some((start, end)) if self.spilled(node, start, end) => {
                        self.txn(node, now)?;
                        self.commit_write(now, node)?;
                        self.blocked
                            .entry(node)
                            .or_default()
                            .push_front(Blocked::Read { req });
                    }
                    Some(_) => self.start_read(now, req)?,
                    None => {}
                }
            }
            Blocked::Copy {
                req,
                fh,
                from,
                from_offset,
                offset,
                len,
            } => {
                // As for a write: a handle with a loss to report first,
                // and none after its release.
                match self.handles.get(&fh).map(|h| h.error) {
                    None => return Err(Errno::BadF),
                    Some(Some(e)) => return Err(e),
                    Some(None) => {}
                }
                self.txn(node, now)?
                    .copy(now, from, from_offset, offset, len)
                    .map_err(write_errno)?;
                // At most MAX_COPY, which fits.
                self.reply(req, Ok(Answer::Written(len as u32)));
            }
            Blocked::Write {
                req,
                fh,
                offset,
                data,
                append,
            } => {
                // A handle whose earlier writes were lost (a full or
                // failing disk, a refused transaction) fails its writes
                // until it has reported the loss: a write after them must
                // not start a new transaction that commits it without
                // them, over holes. A write that waited past its
                // handle's release (only a caller that does not wait for
                // its writes sends one) fails too: a transaction started
                // now would know neither the file's size nor its version,
                // and could commit the write over a version it never saw,
                // cut to its own idea of the size (fs_sim, seed 58600).
                match self.handles.get(&fh).map(|h| h.error) {
                    None => return Err(Errno::BadF),
                    Some(Some(e)) => return Err(e),
                    Some(None) => {}
                }
                let len = data.len() as u32;
                let txn = self.txn(node, now)?;
                let written = if append {
                    txn.append(now, offset, data.clone())
                } else {
                    txn.write(now, offset, data.clone())
                };
                match written {
                    Ok(()) => self.reply(req, Ok(Answer::Written(len))),
                    Err(WriteError::Full) => {
                        // Room comes back with the host's acknowledgements
                        // (see `WriteConfig::keep_acked`); only when none
                        // will free any does a commit make room.
                        if !txn.frees_on_ack() {
                            self.commit_write(now, node)?;
                        }
                        self.blocked
                            .entry(node)
                            .or_default()
                            .push_front(Blocked::Write {
                                req,
                                fh,
                                offset,
                                data,
                                append,
                            });
                    }
                    Err(WriteError::Ended(e)) => return Err(e),
                }
            }
            Blocked::Truncate {
                req,
                ino,
                size,
                rest,
            } => {
                // A size change is a write: it joins (or starts) the
                // file's transaction and answers after the commit.
                let txn = self.txn(node, now)?;
                txn.set_size(now, size).map_err(write_errno)?;
                self.commit_write(now, node)?;
                self.after_commit
                    .entry(node)
                    .or_default()
                    .push(AfterCommit::SetAttr {
                        req,
                        ino,
                        rest,
                        truncated: true,
                    });
            }
            Blocked::Commit { then, lost } => {
                // Writes before it were lost already: it says so now, and
                // what was written since still commits.
                let then = match (lost, then) {
                    (Some(e), AfterCommit::Reply(req, _)) => {
                        self.reply(req, Err(e));
                        AfterCommit::Quiet
                    }
                    (_, then) => then,
                };
                if self.writes.get(&node).is_none_or(WriteTxn::is_finished) {
                    // Nothing to commit: every write before it is durable,
                    // or its loss was reported to this handle already.
                    match then {
                        AfterCommit::Reply(req, _) => self.reply(req, Ok(Answer::Done)),
                        AfterCommit::Quiet => {}
                        AfterCommit::Lock { kernel, request } => {
                            self.send_lock(now, kernel, request);
                        }
                        // A mode or time change that waited for a commit
                        // already over.
                        AfterCommit::SetAttr { req, ino, rest, .. } => {
                            self.set_rest(now, req, ino, node, rest);
                        }
                    }
                    return Ok(());
                }
                self.commit_write(now, node)?;
                self.after_commit.entry(node).or_default().push(then);
            }
        }
        self.drain_write(now, node);
        Ok(())
    }

    pub(super) fn fetch_dir(&mut self, now: Instant, node: NodeId) {
        self.send(
            now,
            Purpose::DirPage {
                node,
                acc: Vec::new(),
            },
            Request::ReadDir {
                dir: node,
                cookie: 0,
            },
        );
    }

    /// Replies to a ReadDir from a complete listing: the entries from
    /// `offset`, at most [`DIR_ITEMS_PER_ANSWER`] of them, each learned in
    /// the inode table (without a kernel reference).
    pub(super) fn answer_dir(
        &mut self,
        now: Instant,
        req: Req,
        ino: Ino,
        offset: u64,
        entries: &[crate::proto::DirEntry],
    ) {
        let ttl = self.kernel_ttl(Kind::Attr);
        let Some(vfs) = self.vfs.as_mut() else {
            return self.reply(req, Err(Errno::NotConn));
        };
        let mut items = Vec::new();
        // `.` at offset 0 and `..` at 1, as a local disk lists them; the
        // entries follow from offset 2.
        let parent = vfs.get(ino).and_then(|i| i.link()).map_or(ino, |(p, _)| *p);
        for (at, dot, of) in [(0, ListedName::Dot, ino), (1, ListedName::DotDot, parent)] {
            let attr = vfs
                .node(of)
                .and_then(|n| self.cache.peek_attr(n))
                .filter(|_| offset <= at);
            if let Some(attr) = attr {
                items.push(super::DirItem {
                    ino: of,
                    next: at + 1,
                    kind: FileKind::Dir,
                    name: dot,
                    attr: attr.clone(),
                    ttl,
                });
            }
        }
        let skip = usize::try_from(offset.saturating_sub(DOTS)).unwrap_or(usize::MAX);
        let page: Vec<(usize, &crate::proto::DirEntry)> = entries
            .iter()
            .enumerate()
            .skip(skip)
            .take(DIR_ITEMS_PER_ANSWER)
            .collect();
        // What the kernel is told of each entry is what a getattr would
        // answer: the file's own attributes where the cache holds them
        // fresh (a listing entry is as old as the listing: a file this
        // client wrote since, under a lease or not, has grown), with this
        // client's uncommitted changes laid over them. The kernel takes a
        // readdirplus entry's size as the file's.
        let shown: Vec<Attr> = page
            .iter()
            .map(|(_, e)| {
                let own = self.fresh_attr(now, e.attr.node);
                self.with_local_changes(own.as_ref().unwrap_or(&e.attr))
            })
            .collect();
        let Some(vfs) = self.vfs.as_mut() else {
            return self.reply(req, Err(Errno::NotConn));
        };
        for ((i, e), attr) in page.into_iter().zip(shown) {
            match vfs.learn(ino, e.name.clone(), &attr, false) {
                Ok(child) => items.push(super::DirItem {
                    ino: child,
                    next: i as u64 + 1 + DOTS,
                    kind: attr.kind,
                    name: ListedName::Entry(e.name.clone()),
                    attr,
                    ttl,
                }),
                Err(_) => break,
            }
        }
        self.reply(req, Ok(Answer::Dir(items)));
    }

    /// (Re)starts assembling read `req` from chunks.
    pub(super) fn start_read(&mut self, now: Instant, req: Req) -> Result<(), Errno> {
        let job = self.reads.get(&req).cloned().ok_or(Errno::Io)?;
        let h = self.handles.get(&job.fh).cloned().ok_or(Errno::BadF)?;
        let writing = self.writes.get(&h.node).filter(|w| !w.is_finished());
        let size = writing.map_or(h.attr.size, WriteTxn::size);
        let planned = Some((h.attr.key, h.attr.version, writing.is_some()));
        let end = job.offset.saturating_add(u64::from(job.size)).min(size);
        if job.offset >= end {
            self.reads.remove(&req);
            self.reply(req, Ok(Answer::Data(Bytes::new())));
            return Ok(());
        }
        let chunk = CHUNK_SIZE as u64;
        let (first, last) = (job.offset / chunk, (end - 1) / chunk);
        // Chunks wholly beyond what the host has (the writer's own
        // extension) need no fetch: they are zeros under the overlay.
        let host_size = h.attr.size;
        let mut parts = Vec::new();
        let mut to_fetch = Vec::new();
        for (slot, index) in (first..=last).enumerate() {
            if index * chunk >= host_size {
                parts.push((index, Some(Bytes::new())));
            } else {
                parts.push((index, None));
                to_fetch.push((slot, index));
            }
        }
        if let Some(j) = self.reads.get_mut(&req) {
            j.parts = parts;
            j.planned = planned;
        }
        self.files.insert(h.attr.key, h.node);
        for (slot, index) in to_fetch {
            let key = ChunkKey {
                file: h.attr.key,
                version: h.attr.version,
                index,
            };
            let w = self.waiter(CacheWait::ReadPart {
                req,
                slot,
                attempt: job.retries,
            });
            match self.cache.lookup(now, &CacheKey::Chunk(key), w) {
                Ok(Lookup::Hit(Value::Chunk(c))) => {
                    self.waits.remove(&w);
                    if let Some(j) = self.reads.get_mut(&req) {
                        j.parts[slot].1 = Some(c);
                    }
                }
                Ok(Lookup::Hit(_)) => return Err(Errno::Io),
                Ok(Lookup::Stale(_)) => self.revalidate_chunk(now, key),
                Ok(Lookup::Miss(Miss::Fetch)) => self.fetch_chunk(now, key),
                Ok(Lookup::Miss(Miss::L2Read)) => {
                    self.out.push_back(super::ClientOutput::L2Read { key })
                }
                Ok(Lookup::Miss(Miss::Wait)) => {}
                Err(_) => {
                    self.waits.remove(&w);
                    return Err(Errno::Again);
                }
            }
        }
        // Sequential readers get the next chunks fetched ahead.
        let ahead = self.read_ahead.on_read(job.fh.0, first, last);
        let chunks = host_size.div_ceil(chunk);
        for index in ahead.start..ahead.end.min(chunks) {
            let key = ChunkKey {
                file: h.attr.key,
                version: h.attr.version,
                index,
            };
            match self.cache.prefetch(now, key) {
                Ok(Some(Miss::Fetch)) => self.fetch_chunk(now, key),
                Ok(Some(Miss::L2Read)) => self.out.push_back(super::ClientOutput::L2Read { key }),
                _ => {}
            }
        }
        self.finish_read(now, req);
        Ok(())
    }

    /// Replies to a read whose chunks have all arrived.
    pub(super) fn finish_read(&mut self, now: Instant, req: Req) {
        let done = self
            .reads
            .get(&req)
            .is_some_and(|j| !j.parts.is_empty() && j.parts.iter().all(|(_, p)| p.is_some()));
        if !done {
            return;
        }
        let Some(job) = self.reads.remove(&req) else {
            return;
        };
        let Some(h) = self.handles.get(&job.fh) else {
            return self.reply(req, Err(Errno::BadF));
        };
        let writing = self.writes.get(&h.node).filter(|w| !w.is_finished());
        if !job.through && job.planned != Some((h.attr.key, h.attr.version, writing.is_some())) {
            // Its chunks are of the version it was planned against, its
            // size and overlay would be the new one's: a commit came
            // meanwhile (this client's own, or one it was told of). Read
            // again, as a read whose chunks changed version is.
            self.reads.insert(req, job);
            return self.replan_read(now, req);
        }
        let size = writing.map_or(h.attr.size, WriteTxn::size);
        let chunk = CHUNK_SIZE as u64;
        let mut end = job.offset.saturating_add(u64::from(job.size)).min(size);
        if job.through
            && writing.is_none()
            && let Some(eof) = job.parts.iter().find_map(|(index, data)| {
                data.as_ref()
                    .filter(|d| (d.len() as u64) < chunk)
                    .map(|d| index * chunk + d.len() as u64)
            })
        {
            end = end.min(eof.max(job.offset));
        }
        let len = end.saturating_sub(job.offset) as usize;
        // The common read, within one chunk that holds all of it and with
        // no write of ours to lay over it, is a slice of the cached bytes:
        // no buffer to zero and fill.
        if let ([(index, Some(data))], None) = (&job.parts[..], writing) {
            let from = job.offset - index * chunk;
            if let Some(bytes) = data.get(from as usize..from as usize + len) {
                let slice = data.slice_ref(bytes);
                return self.reply(req, Ok(Answer::Data(slice)));
            }
        }
        let mut buf = BytesMut::zeroed(len);
        for (index, data) in &job.parts {
            let Some(data) = data else { continue };
            let start = index * chunk;
            let from = start.max(job.offset);
            let to = (start + data.len() as u64).min(end);
            if from < to {
                buf[(from - job.offset) as usize..(to - job.offset) as usize]
                    .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
            }
        }
        if let Some(w) = writing {
            w.overlay(job.offset, &mut buf);
        }
        self.reply(req, Ok(Answer::Data(buf.freeze())));
    }

    /// Requests one chunk from the host.
    pub(super) fn fetch_chunk(&mut self, now: Instant, key: ChunkKey) {
        let Some(&node) = self.files.get(&key.file) else {
            let _ = self.cache.fail(now, &CacheKey::Chunk(key), Errno::Stale);
            return;
        };
        // Through a host handle open on exactly this version, if there is
        // one: it keeps the file it opened even after a commit renames a
        // new one over its name (as an open file on a local disk does), so
        // one open never reads two versions. Otherwise by node.
        let file = self
            .handles
            .values()
            .filter(|h| h.attr.key == key.file && h.attr.version == key.version)
            .find_map(|h| h.host)
            .map_or(FileRef::Node(node), FileRef::Handle);
        let request = Request::Read {
            file,
            offset: key.index * CHUNK_SIZE as u64,
            len: CHUNK_SIZE as u32,
        };
        self.send(now, Purpose::Fetch(CacheKey::Chunk(key)), request);
    }

    /// A chunk past its TTL is still good if the file is still at its
    /// version, which an open handle learned at open (close-to-open).
    pub(super) fn revalidate_chunk(&mut self, now: Instant, key: ChunkKey) {
        let current = self
            .handles
            .values()
            .any(|h| h.attr.key == key.file && h.attr.version == key.version);
        if !current && self.unreachable() && self.cache.serve_stale(now, &CacheKey::Chunk(key)) {
            // A chunk is its version's bytes: stale only in that the file
            // may be at another version by now, which the host cannot say.
        } else if current {
            let _ = self.cache.revalidated(now, &CacheKey::Chunk(key));
        } else {
            self.fetch_chunk(now, key);
        }
    }

    /// Runs the file's waiting operations, in order, until one has to wait
    /// again (for a commit, or for buffer room).
    pub(super) fn retry_blocked(&mut self, now: Instant, node: NodeId) {
        while !self.writes.get(&node).is_some_and(WriteTxn::is_committing)
            && let Some(b) = self.blocked.get_mut(&node).and_then(VecDeque::pop_front)
        {
            let req = b.req();
            match self.run_blocked(now, node, b) {
                Err(e) => {
                    if let Some(req) = req {
                        self.reply(req, Err(e));
                    }
                }
                // Put back in front: it waits on.
                Ok(()) if req.is_some() && self.blocked_front(node) == req => break,
                Ok(()) => {}
            }
        }
        if self.blocked.get(&node).is_some_and(VecDeque::is_empty) {
            self.blocked.remove(&node);
        }
    }
}

/// The most entries one ReadDir answer carries. The kernel's buffer (a
/// page: about a hundred entries) takes what fits and asks again from the
/// last offset it took, until an answer is empty; building the whole rest
/// of a 10,000-entry listing on every call made reading it quadratic.
pub(super) const DIR_ITEMS_PER_ANSWER: usize = 256;

/// Offsets a listing gives `.` and `..` before its entries.
const DOTS: u64 = 2;

/// The errno a refused write command reports.
pub(super) fn write_errno(e: WriteError) -> Errno {
    match e {
        WriteError::Full => Errno::Again,
        WriteError::Ended(e) => e,
    }
}

/// Most bytes a punched hole or zeroed range may cover: they are written
/// as zeros through the write transaction (beyond, EOPNOTSUPP, which
/// programs treat as "not here" and work around).
const MAX_ZEROED: u64 = 16 << 20;

/// The kernel operation a `fallocate` of `[offset, offset + length)` on
/// a file of `size` bytes amounts to (see [`Allocate`]), if any.
fn allocation(
    fh: Fh,
    ino: Ino,
    size: u64,
    offset: u64,
    length: u64,
    how: Allocate,
) -> Result<Option<Op>, Errno> {
    if length == 0 {
        return Err(Errno::Inval);
    }
    let end = offset.checked_add(length).ok_or(Errno::FBig)?;
    let zeros = |to: u64| -> Result<Option<Op>, Errno> {
        if to <= offset {
            return Ok(None);
        }
        if to - offset > MAX_ZEROED {
            return Err(Errno::NotSup);
        }
        // In place, even through an `O_APPEND` handle.
        Ok(Some(Op::Write {
            fh,
            offset,
            data: Bytes::from(vec![0u8; (to - offset) as usize]),
            append: false,
        }))
    };
    match how {
        Allocate::KeepSize => Ok(None),
        Allocate::Extend if end <= size => Ok(None),
        Allocate::Extend => Ok(Some(Op::SetAttr {
            ino,
            set: SetAttr {
                size: Some(end),
                ..SetAttr::default()
            },
        })),
        Allocate::PunchHole | Allocate::ZeroRange { keep_size: true } => zeros(end.min(size)),
        Allocate::ZeroRange { keep_size: false } => zeros(end),
    }
}
