//! Host messages, cache completions and write-transaction outputs.

use super::ahead::{Answered, Opened};
use super::{
    AfterCommit, Answer, Blocked, CacheWait, ClientCore, ClientOutput, Fh, Handle, Op, OpPart,
    Purpose, Req,
};
use crate::Instant;
use crate::cache::{self, CacheKey, ChunkKey, Kind, Value};
use crate::proto::{
    Attr, CHUNK_SIZE, DirEntry, Errno, FileKind, HandleId, HostMessage, Invalidation, Name, NodeId,
    OpenFor, Reply, Request, RequestId,
};
use crate::vfs::Ino;
use crate::write::{WriteOutput, WriteTxn};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;

impl ClientCore {
    /// A message from the host arrived.
    pub fn handle_message(&mut self, now: Instant, msg: HostMessage) {
        self.heard(now);
        match msg {
            HostMessage::Reply { id, result } => self.on_reply(now, id, result),
            HostMessage::Invalidate { node, what } => self.on_invalidate(now, node, what),
            HostMessage::Recall { token } => self.on_recall(now, token),
        }
        self.drain(now);
    }

    /// Decodes and handles a message; a message that does not decode is
    /// dropped (the shell resets its stream) and its request times out.
    pub fn handle_message_bytes(
        &mut self,
        now: Instant,
        bytes: &Bytes,
    ) -> Result<(), crate::codec::CodecError> {
        let msg = HostMessage::decode_shared(bytes)?;
        self.handle_message(now, msg);
        Ok(())
    }

    fn on_invalidate(&mut self, now: Instant, node: crate::proto::NodeId, what: Invalidation) {
        let root = self.vfs.as_ref().and_then(|v| v.node(Ino::ROOT));
        if what == Invalidation::Data && Some(node) == root {
            // "The whole tree may have changed" (the host's watcher lost
            // track): nothing cached is trusted.
            self.cache.mark_all_stale(now);
            let spoiled = self.ahead.spoil_all();
            self.close_host_handles(now, spoiled);
        }
        if what != Invalidation::Entries
            && let Some(handle) = self.ahead.spoil(node)
        {
            self.close_host_handles(now, vec![handle]);
        }
        self.cache.invalidate(now, node, what);
        let set_aside = what == Invalidation::Replaced && self.may_set_aside(node);
        let writing = self.writes.get(&node).is_some_and(|w| !w.is_finished());
        if what == Invalidation::Replaced && !set_aside && !writing {
            // Open for writing here (or beside such a handle): the file is
            // written in place as far as this client's programs can tell,
            // so its handles follow it and read the new version, as after
            // this client's own commit, not the file that was replaced.
            self.follow_file(now, node);
        }
        let Some(vfs) = self.vfs.as_mut() else {
            return;
        };
        let Some(ino) = vfs.ino_of(node) else {
            return;
        };
        if set_aside || what == Invalidation::Gone {
            // The kernel drops the names: they lead nowhere (gone), or to
            // a new inode while the readers keep the old file under the
            // one the kernel gave them (`Vfs::set_aside`).
            for (parent, name) in vfs.get(ino).map(|i| i.links.clone()).unwrap_or_default() {
                self.out
                    .push_back(ClientOutput::InvalidateEntry { parent, name });
            }
        }
        if set_aside {
            vfs.set_aside(ino);
            return;
        }
        if what == Invalidation::Gone {
            vfs.node_gone(node);
        }
        self.out.push_back(ClientOutput::InvalidateInode { ino });
    }

    /// The host's handles on `node` hold a file a commit replaced (it
    /// renames a new one over it): reading through them would show the
    /// old bytes. They are closed; the handles read by node from then on,
    /// and fail with ESTALE rather than return old bytes if it is gone.
    /// Handles set aside keep theirs: the old file is what they read.
    fn follow_file(&mut self, now: Instant, node: crate::proto::NodeId) {
        let vfs = self.vfs.as_ref();
        let stale: Vec<_> = self
            .handles
            .values_mut()
            .filter(|h| super::on_file(vfs, h, node))
            .filter_map(|h| h.host.take())
            .collect();
        for handle in stale {
            self.send(
                now,
                Purpose::Forget,
                crate::proto::Request::Close { handle },
            );
        }
    }

    /// Whether `node` is a file open here only for reading, each handle
    /// through a host handle of its own (which keeps the file it opened
    /// when another takes its place), with no write or lock of this
    /// client on it: what may be set aside when it is replaced.
    fn may_set_aside(&self, node: crate::proto::NodeId) -> bool {
        let vfs = self.vfs.as_ref();
        let mut handles = self
            .handles
            .values()
            .filter(|h| super::on_file(vfs, h, node))
            .peekable();
        handles.peek().is_some()
            && handles.all(|h| !h.write && h.host.is_some() && h.attr.kind == FileKind::File)
            && self.writes.get(&node).is_none_or(|w| w.is_finished())
            && !self.lock_state_on(node)
            && !self.on_its_way(|p, r| match r {
                // The host links whatever file the node is when it runs
                // the link (after a replace, the new one), and the kernel
                // must get back the inode it linked (fs_sim, seeds 36225
                // and 49497, where it came back as a new one).
                Request::Link { node: n, .. } => *n == node,
                // A handle open for writing is never set aside (nor one
                // opened `O_RDONLY|O_TRUNC`, which truncates: a write).
                Request::Open { node: n, mode } => {
                    let truncating = matches!(
                        p,
                        Purpose::Op {
                            op: Op::Open { truncate: true, .. },
                            ..
                        }
                    );
                    *n == node && (*mode != OpenFor::Read || truncating)
                }
                _ => false,
            })
    }

    /// Whether any lock of this client on `node` is held, being asked
    /// for or being let go: its owners' closes let it go by node, so the
    /// node must stay the one their handles name.
    fn lock_state_on(&self, node: crate::proto::NodeId) -> bool {
        self.lockers.keys().any(|&(n, _)| n == node)
            || self.locking.values().any(|&(n, _, _)| n == node)
            || self.unlocking.keys().any(|&(n, _)| n == node)
    }

    /// Whether a request that `which` picks (by its purpose and itself)
    /// is on its way to the host: sent, waiting for the connection, or
    /// held for a lease's changes.
    fn on_its_way(&self, which: impl Fn(&Purpose, &Request) -> bool) -> bool {
        self.in_flight
            .values()
            .any(|f| which(&f.purpose, &f.request))
            || self.queued.iter().any(|(p, r, _)| which(p, r))
            || self.leases.holds(&which)
    }

    fn on_reply(&mut self, now: Instant, id: RequestId, result: Result<Reply, Errno>) {
        let Some(flight) = self.in_flight.remove(&id) else {
            return;
        };
        match flight.purpose {
            Purpose::Hello => match result {
                Ok(Reply::HelloAck {
                    session,
                    root,
                    limits,
                }) => self.conn.hello_ack(now, session, root, limits),
                Ok(_) => self.conn.hello_refused(now, Errno::Io),
                Err(e) => self.conn.hello_refused(now, e),
            },
            Purpose::Forget => {}
            Purpose::Withdraw { node, owner } => self.unlocked(now, node, owner),
            Purpose::Lease { dir, step } => self.on_lease_reply(now, dir, step, result),
            Purpose::Probe => self.probing = false,
            Purpose::ReadThrough { req, slot } => match result {
                Ok(Reply::Data { data, .. }) => {
                    if let Some(part) = self.reads.get_mut(&req).and_then(|j| j.parts.get_mut(slot))
                    {
                        part.1 = Some(data);
                    }
                    self.finish_read(now, req);
                }
                other => {
                    if self.reads.remove(&req).is_some() {
                        self.reply(req, Err(other.err().unwrap_or(Errno::Io)));
                    }
                }
            },
            Purpose::Abandoned => match (result, flight.request) {
                (Ok(Reply::Opened { handle, .. }), _) => {
                    self.close_host_handles(now, vec![handle]);
                }
                // A directory's lease that came with a mkdir the kernel
                // gave up on: nobody here knows the directory, so it is
                // given back rather than held until it expires, with the
                // host recalling it in vain meanwhile.
                (
                    Ok(Reply::Made {
                        attr,
                        lease: Some(grant),
                        ..
                    }),
                    _,
                ) => self.give_back_grant(now, attr.node, grant),
                // A lock granted after its kernel request gave up (its
                // withdrawal may have reached the host first): let it go.
                (
                    Ok(Reply::Done),
                    crate::proto::Request::SetLock {
                        node, owner, range, ..
                    },
                ) => {
                    let request = crate::proto::Request::Unlock { node, owner, range };
                    self.send_unlock(now, request);
                }
                _ => {}
            },
            Purpose::OpenAhead { node } => self.on_open_ahead(now, id, node, result),
            Purpose::Fetch(key) => self.on_fetch(now, id, key, result),
            Purpose::DirPage { node, mut acc } => match result {
                Ok(Reply::DirPage { entries, next }) => {
                    acc.extend(entries);
                    if acc.len() > self.cfg.max_dir_entries {
                        let _ = self.cache.fail(now, &CacheKey::Dir(node), Errno::FBig);
                        return;
                    }
                    match next {
                        Some(cookie) => self.send(
                            now,
                            Purpose::DirPage { node, acc },
                            crate::proto::Request::ReadDir { dir: node, cookie },
                        ),
                        None => {
                            let _ =
                                self.cache
                                    .fill(now, CacheKey::Dir(node), Value::Dir(acc.into()));
                        }
                    }
                }
                Ok(_) => {
                    let _ = self.cache.fail(now, &CacheKey::Dir(node), Errno::Io);
                }
                Err(e) => {
                    let _ = self.cache.fail(now, &CacheKey::Dir(node), e);
                }
            },
            Purpose::Write { node, op } => {
                if let Some(w) = self.writes.get_mut(&node) {
                    w.handle_reply(now, op, result);
                }
                self.drain_write(now, node);
                // An acknowledgement may have made room for a waiting write.
                if self.blocked.contains_key(&node) {
                    self.retry_blocked(now, node);
                }
            }
            Purpose::Rebind { ino } => {
                self.rebind_answered();
                match (result, self.vfs.as_mut()) {
                    // The same file as before (same identity): re-bound, and
                    // so are the handles open on it.
                    (Ok(Reply::Attr(attr)), Some(v))
                        if v.get(ino).is_some_and(|i| i.key == attr.key) =>
                    {
                        v.rebind(ino, attr.node);
                        for h in self.handles.values_mut() {
                            if h.ino == ino && h.attr.key == attr.key {
                                h.node = attr.node;
                                self.files.insert(attr.key, attr.node);
                            }
                        }
                    }
                    // Another file under the name now (or none): the inode
                    // must not silently stand for it.
                    (_, Some(v)) => v.unbind_gone(ino),
                    (_, None) => {}
                }
                if self.rebinding == Some(0) {
                    self.rebind_next(now);
                }
            }
            Purpose::Op { req, op, part } => {
                let dirs = result.as_ref().map_or(&[][..], Reply::dirs).to_vec();
                let answer = self.on_op_reply(now, id, req, &op, part, result);
                // After the answer's own invalidations: the directories'
                // new times stand, and the kernel's getattr (it drops its
                // copy of a changed directory's attributes) needs no
                // round trip.
                self.dirs_changed(now, &dirs);
                if let Some(answer) = answer {
                    self.reply(req, answer);
                }
            }
        }
    }

    fn on_fetch(
        &mut self,
        now: Instant,
        id: RequestId,
        key: CacheKey,
        result: Result<Reply, Errno>,
    ) {
        match (&key, result) {
            (CacheKey::Attr(_), Ok(Reply::Attr(a))) => {
                self.notice_replaced(now, id, &a);
                self.learn_attr(&a);
                let _ = self.cache.fill(now, key, Value::Attr(Arc::new(a)));
            }
            (CacheKey::Chunk(ck), Ok(Reply::Data { data, version })) => {
                if version != ck.version {
                    // The file changed since we learned its version (or the
                    // bytes came through a host handle that still holds the
                    // file a commit replaced): these bytes are not of this
                    // key. Readers refresh and retry.
                    let _ = self.cache.fail(now, &key, Errno::Stale);
                } else {
                    let _ = self.cache.fill(now, key, Value::Chunk(data));
                }
            }
            (CacheKey::Chunk(_), Err(Errno::BadF)) => {
                // Asked through a host handle this client closed before
                // the host read it (its own commit re-pointed the file's
                // readers at the new version): readers refresh and retry,
                // as for bytes of another version.
                let _ = self.cache.fail(now, &key, Errno::Stale);
            }
            (_, Err(e)) => {
                let _ = self.cache.fail(now, &key, e);
            }
            (_, Ok(_)) => {
                let _ = self.cache.fail(now, &key, Errno::Io);
            }
        }
    }

    /// A reply may overtake the host's news that a file was replaced
    /// (another stream): attributes of `a.node` showing another file than
    /// the one a handle here reads through its own host handle mean the
    /// file was replaced. Taken as that news (`Invalidation::Replaced`)
    /// before the attributes are used, so that a reader set aside never
    /// has its kernel learn the new file's size: one version's bytes cut
    /// at another's length (fs_sim, seed 57718). Only handles opened
    /// before request `id` was sent count (a reply older than the open
    /// may show the file the open replaced); this client's own commits
    /// drop their host handles as they land; and a file this client is
    /// writing waits for the news itself (nothing is set aside or
    /// followed then, so each reply would only drop the cache again).
    fn notice_replaced(&mut self, now: Instant, id: RequestId, a: &Attr) {
        if self.writes.get(&a.node).is_some_and(|w| !w.is_finished()) {
            return;
        }
        let vfs = self.vfs.as_ref();
        let replaced = self.handles.values().any(|h| {
            super::on_file(vfs, h, a.node)
                && h.host.is_some()
                && h.opened_at <= id.0
                && h.attr.key != a.key
        });
        if replaced {
            self.on_invalidate(now, a.node, Invalidation::Replaced);
        }
    }

    /// `fstat(2)` of a file unlinked (or replaced, `Vfs::set_aside`) while
    /// open works (POSIX); only its handles know it now.
    pub(super) fn orphan_attr(&self, ino: Ino) -> Option<Answer> {
        let h = self.handles.values().find(|h| h.ino == ino)?;
        // A set-aside file has no writes here (its node's have another).
        let mut attr = if super::set_aside(self.vfs.as_ref(), ino) {
            h.attr.clone()
        } else {
            self.with_local_changes(&h.attr)
        };
        attr.nlink = 0;
        let ttl = std::time::Duration::ZERO;
        Some(Answer::Attr { attr, ttl })
    }

    /// Nodes [`ClientCore::fill_changed_attr`] remembers at most.
    const CHANGED_AFTER_MAX: usize = 1024;

    /// Fills the attributes a reply about this client's own change
    /// carries (a commit, a setattr, an xattr change, a directory's times
    /// after a change of its names). A getattr sent before the change may
    /// be answered after it, with the attributes the change replaced (the
    /// host ran it first): the fill answers that fetch's waiters, and its
    /// late reply is dropped rather than put the old attributes back.
    /// (fs_sim, seed 54283: a commit's size was lost that way, and once
    /// the host was out of reach the cache's old size cut reads of the
    /// new version.)
    pub(super) fn fill_changed_attr(&mut self, now: Instant, attr: Attr) {
        if self.changed_after.len() >= Self::CHANGED_AFTER_MAX {
            let oldest = self.in_flight.keys().next().map_or(u64::MAX, |r| r.0);
            self.changed_after.retain(|_, &mut at| at > oldest);
            // A request that stays in flight (a lock wait of hours) keeps
            // everything younger: forget the older half, whose nodes then
            // take a late reply's attributes as before (bounded memory,
            // and a prune per half-bound of inserts, not per insert).
            if self.changed_after.len() >= Self::CHANGED_AFTER_MAX {
                let mut ats: Vec<u64> = self.changed_after.values().copied().collect();
                let (_, &mut median, _) = ats.select_nth_unstable(Self::CHANGED_AFTER_MAX / 2);
                self.changed_after.retain(|_, &mut at| at > median);
            }
        }
        self.changed_after.insert(attr.node, self.next_id);
        let key = CacheKey::Attr(attr.node);
        if self.cache.state(now, &key) == cache::EntryState::Fetching {
            for f in self.in_flight.values_mut() {
                if matches!(&f.purpose, Purpose::Fetch(k) if *k == key) {
                    f.purpose = Purpose::Abandoned;
                }
            }
        }
        let _ = self.cache.fill(now, key, Value::Attr(Arc::new(attr)));
    }

    /// Attributes `a` a reply to request `id` brought, unless this
    /// client's own change of the node was answered after `id` was sent:
    /// then the newer ones that change brought. (A lookup the host ran
    /// before this client's commit, answered after it, gave the kernel
    /// and the cache the replaced version's size, which cut the next read
    /// of the new version: fs_sim, seed 10667.) Only while the newer
    /// ones are fresh: past their TTL they are no answer either, and the
    /// reply's are the host's last word. And only if the reply's are no
    /// newer by the host's clock: another client's commit after this
    /// client's, which the host ran the request after, is the newer one
    /// (its news may still be on its way).
    ///
    /// Returns the attributes, and whether they are the reply's: the
    /// cache's newer ones stand as they are, their age counted from when
    /// they came (filled again, they would be served past their TTL:
    /// fs_sim, seed 76230).
    fn not_older(&self, now: Instant, id: RequestId, a: Attr) -> (Attr, bool) {
        let fresh = self.cache.state(now, &CacheKey::Attr(a.node)) == cache::EntryState::Cached;
        match (
            self.changed_after.get(&a.node),
            self.cache.peek_attr(a.node),
        ) {
            // (Of the same clock tick, the same version and file: the
            // reply may carry a change made in that tick, a chmod.)
            (Some(&at), Some(newer))
                if id.0 < at
                    && fresh
                    && (a.ctime < newer.ctime
                        || (a.ctime == newer.ctime
                            && (a.key, a.version) != (newer.key, newer.version))) =>
            {
                (newer.clone(), false)
            }
            _ => (a, true),
        }
    }

    /// New attributes of a file: open handles on it learn them if its
    /// content is unchanged for them (same version: e.g. a chmod); a new
    /// version waits for the next open (close-to-open).
    fn learn_attr(&mut self, a: &Attr) {
        for h in self.handles.values_mut() {
            if h.node == a.node && h.attr.version == a.version {
                h.attr = a.clone();
            }
        }
    }

    pub(super) fn entry(
        &mut self,
        now: Instant,
        parent: Ino,
        op: &Op,
        attr: Attr,
        lookup: bool,
        from_reply: bool,
    ) -> Result<Ino, Errno> {
        let name = match op {
            Op::Lookup { name, .. }
            | Op::Create { name, .. }
            | Op::Mkdir { name, .. }
            | Op::Symlink { name, .. }
            | Op::Mknod { name, .. }
            | Op::Link { new_name: name, .. } => name.clone(),
            _ => return Err(Errno::Io),
        };
        let vfs = self.vfs.as_mut().ok_or(Errno::NotConn)?;
        let pnode = vfs.node(parent).ok_or(Errno::Stale)?;
        let ino = vfs
            .learn(parent, name.clone(), &attr, lookup)
            .map_err(|_| Errno::NoSpc)?;
        self.cache.remove(&CacheKey::Negative {
            parent: pnode,
            name,
        });
        if from_reply {
            let _ = self
                .cache
                .fill(now, CacheKey::Attr(attr.node), Value::Attr(Arc::new(attr)));
        }
        Ok(ino)
    }

    fn on_op_reply(
        &mut self,
        now: Instant,
        id: RequestId,
        req: Req,
        op: &Op,
        part: OpPart,
        result: Result<Reply, Errno>,
    ) -> Option<Result<Answer, Errno>> {
        if matches!(op, Op::SetLock { .. } | Op::GetLock { .. }) {
            return self.on_lock_reply(now, req, op, part, result);
        }
        let attr_ttl = self.kernel_ttl(Kind::Attr);
        match (op, part, result) {
            (Op::Lookup { parent, name }, _, Ok(Reply::Attr(a))) => {
                let _ = name;
                let (a, from_reply) = self.not_older(now, id, a);
                Some(
                    self.entry(now, *parent, op, a.clone(), true, from_reply)
                        .map(|ino| Answer::Entry {
                            ino,
                            attr: self.with_local_changes(&a),
                            ttl: attr_ttl,
                        }),
                )
            }
            (Op::Lookup { parent, name }, _, Err(Errno::NoEnt)) => {
                if let Some(pnode) = self.vfs.as_ref().and_then(|v| v.node(*parent)) {
                    let key = CacheKey::Negative {
                        parent: pnode,
                        name: name.clone(),
                    };
                    let _ = self.cache.fill(now, key, Value::Negative);
                }
                Some(Err(Errno::NoEnt))
            }
            (
                Op::Mkdir { parent, name, .. }
                | Op::Symlink { parent, name, .. }
                | Op::Mknod { parent, name, .. },
                _,
                Ok(Reply::Made { attr: a, lease, .. }),
            ) => {
                self.entry_added(now, *parent, name, &a);
                // Made empty just now: lookups of new names in it need not
                // ask (another client's create there comes as an
                // invalidation, as for any listing). Not where a lease was
                // asked for and not granted: the host may have found the
                // directory filled by a program on the host before its
                // answer, whose invalidation came before it, unheeded.
                if matches!(op, Op::Mkdir { .. }) && (lease.is_some() || !self.cfg.leases) {
                    let empty = Value::Dir(Arc::from(Vec::new()));
                    let _ = self.cache.fill(now, CacheKey::Dir(a.node), empty);
                }
                let entry = self.entry(now, *parent, op, a.clone(), true, true);
                if let Some(grant) = lease {
                    if entry.is_ok() {
                        self.made_dir_leased(now, a.node, grant);
                    } else {
                        self.give_back_grant(now, a.node, grant);
                    }
                }
                Some(entry.map(|ino| Answer::Entry {
                    ino,
                    attr: a,
                    ttl: attr_ttl,
                }))
            }
            (
                Op::Create { parent, name, .. },
                _,
                Ok(Reply::Opened {
                    handle,
                    attr,
                    inline,
                    ..
                }),
            ) => {
                self.entry_added(now, *parent, name, &attr);
                if let Some(pnode) = self.vfs.as_ref().and_then(|v| v.node(*parent)) {
                    self.changed_remotely(now, pnode);
                }
                let (host, attr, inline) = self.not_older_open(
                    now,
                    id,
                    Opened {
                        handle,
                        attr,
                        inline,
                    },
                );
                let ino = match self.entry(now, *parent, op, attr.clone(), true, host.is_some()) {
                    Ok(ino) => ino,
                    Err(e) => {
                        self.close_host_handles(now, host.into_iter().collect());
                        return Some(Err(e));
                    }
                };
                let (node, size) = (attr.node, attr.size);
                let fh = self.open_handle(now, ino, host, attr.clone(), inline, OpenFor::Write);
                let truncate = matches!(op, Op::Create { truncate: true, .. }) && size > 0;
                if let Err(e) = self.truncate_at_open(now, node, truncate, Ok(Answer::Done)) {
                    return Some(Err(e));
                }
                Some(Ok(Answer::Created {
                    ino,
                    attr: self.with_local_changes(&attr),
                    ttl: attr_ttl,
                    fh,
                }))
            }
            (
                Op::Open {
                    ino,
                    truncate,
                    mode,
                },
                _,
                Ok(Reply::Opened {
                    handle,
                    attr,
                    inline,
                    ..
                }),
            ) => {
                let opened = self.not_older_open(
                    now,
                    id,
                    Opened {
                        handle,
                        attr,
                        inline,
                    },
                );
                let (node, size) = (opened.1.node, opened.1.size);
                let just_came = opened.0.is_some();
                let answer = self.opened(
                    now,
                    *ino,
                    opened,
                    // (`O_RDONLY|O_TRUNC` truncates: a write.)
                    match (*mode, *truncate) {
                        (OpenFor::Read, true) => OpenFor::Write,
                        (mode, _) => mode,
                    },
                    just_came,
                );
                Some(self.truncate_at_open(now, node, *truncate && size > 0, Ok(answer)))
            }
            (Op::SetAttr { .. }, _, Ok(Reply::Attr(a))) => {
                // Run before this client's own commit, answered after it
                // (a chmod sent while the commit was on its way): the
                // commit's attributes stand, for the cache and for the
                // handles, whose next transaction builds on them.
                let (a, from_reply) = self.not_older(now, id, a);
                if from_reply {
                    self.fill_changed_attr(now, a.clone());
                }
                // Our own change (a new mtime is a new version): the
                // handles on the same file learn it, so that their next
                // transaction builds on it rather than fail as stale.
                for h in self.handles.values_mut() {
                    if h.node == a.node && h.attr.key == a.key {
                        h.attr = a.clone();
                    }
                }
                Some(Ok(Answer::Attr {
                    attr: self.with_local_changes(&a),
                    ttl: attr_ttl,
                }))
            }
            (
                Op::Link {
                    ino,
                    new_parent,
                    new_name,
                },
                _,
                Ok(Reply::Made { attr: a, .. }),
            ) => {
                // The host linked the very file it knew the node as (it
                // checks), and the kernel's inode follows the node while
                // its link is on the way (`may_set_aside`); if the host answers
                // another node, it forgot the old one meanwhile (an
                // unlink or rename of the file's other name ran first):
                // the kernel's inode is that file, now this node. (Not by
                // key: the inode's may predate another client's commit,
                // whose news brings none: fs_sim, seed 95558.)
                if let Some(v) = self.vfs.as_mut()
                    && let Some(old) = v.get(*ino).filter(|i| !i.replaced).map(|i| i.node)
                    && old != a.node
                    && v.ino_of(a.node).is_none()
                {
                    v.rebind(*ino, a.node);
                    // Its handles follow the file too (a writer's, which
                    // kept the inode from being set aside); but not while
                    // writes of theirs are still to commit: those belong
                    // to the old node's transaction, and its commit tells
                    // them how it went (moved, the handles' next flush
                    // committed without them: fs_sim, seed 125426); nor
                    // while locks are held or asked through them on the
                    // old node, which their close lets go by node.
                    if self.writes.get(&old).is_none_or(WriteTxn::is_finished)
                        && !self.lock_state_on(old)
                    {
                        for h in self.handles.values_mut() {
                            if h.ino == *ino && h.node == old {
                                h.node = a.node;
                            }
                        }
                        self.files.insert(a.key, a.node);
                    }
                }
                self.entry_added(now, *new_parent, new_name, &a);
                self.learn_attr(&a);
                Some(
                    self.entry(now, *new_parent, op, a.clone(), true, true)
                        .map(|ino| Answer::Entry {
                            ino,
                            attr: self.with_local_changes(&a),
                            ttl: attr_ttl,
                        }),
                )
            }
            (
                Op::Unlink { parent, name } | Op::Rmdir { parent, name },
                _,
                Ok(Reply::Unnamed { .. }),
            ) => {
                if let Some(pnode) = self.vfs.as_ref().and_then(|v| v.node(*parent)) {
                    self.changed_remotely(now, pnode);
                    self.removed_remotely(now, pnode);
                }
                self.entries_changed(now, *parent);
                self.name_removed(now, *parent, name);
                if let Some(v) = self.vfs.as_mut() {
                    v.unlink(*parent, name);
                }
                Some(Ok(Answer::Done))
            }
            (
                Op::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                },
                _,
                Ok(Reply::Unnamed { .. }),
            ) => {
                self.entries_changed(now, *parent);
                self.entries_changed(now, *new_parent);
                let moved = self.child_node(*parent, name);
                if moved.is_none() || moved != self.child_node(*new_parent, new_name) {
                    self.name_removed(now, *new_parent, new_name);
                }
                if let Some(node) = moved {
                    // A rename moves the file's ctime.
                    self.cache.invalidate(now, node, Invalidation::Attr);
                }
                if let Some(v) = self.vfs.as_mut() {
                    v.rename(*parent, name, *new_parent, new_name.clone());
                }
                Some(Ok(Answer::Done))
            }
            (Op::Readlink { .. }, _, Ok(Reply::Link(target))) => Some(Ok(Answer::Link(target))),
            (
                Op::GetXattr { size, .. } | Op::ListXattr { size, .. },
                _,
                Ok(Reply::Xattr(bytes)),
            ) => Some(sized(bytes, *size)),
            (Op::SetXattr { .. } | Op::RemoveXattr { .. }, _, Ok(Reply::Attr(a))) => {
                // Its ctime moved; the content did not. Run before this
                // client's own commit and answered after it, it brings
                // the old size: the commit's attributes stand (fs_sim,
                // seed 48011, as for lookups in seed 10667).
                let (a, from_reply) = self.not_older(now, id, a);
                if from_reply {
                    self.learn_attr(&a);
                    self.fill_changed_attr(now, a);
                }
                Some(Ok(Answer::Done))
            }
            (Op::Statfs, _, Ok(Reply::StatFs(s))) => Some(Ok(Answer::StatFs(s))),
            (Op::SyncAll, _, Ok(Reply::Done)) => Some(Ok(Answer::Done)),
            (Op::Fsync { fh }, OpPart::Sync, Ok(Reply::Done)) => {
                if let Some(h) = self.handles.get_mut(fh) {
                    h.unsynced = false;
                }
                Some(Ok(Answer::Done))
            }
            (Op::Read { .. }, OpPart::RefreshRead, Ok(Reply::Attr(a))) => {
                self.notice_replaced(now, id, &a);
                // Handles on this file now read the new version: those that
                // read by node, and those whose host handle holds that very
                // file (changed in place). A host handle on a file that was
                // replaced keeps reading the file it opened.
                for h in self.handles.values_mut() {
                    if h.node == a.node && (h.host.is_none() || h.attr.key == a.key) {
                        h.attr = a.clone();
                    }
                }
                let _ = self
                    .cache
                    .fill(now, CacheKey::Attr(a.node), Value::Attr(Arc::new(a)));
                match self.start_read(now, req) {
                    Ok(()) => None,
                    Err(e) => {
                        self.reads.remove(&req);
                        Some(Err(e))
                    }
                }
            }
            (_, _, Err(e)) => {
                self.reads.remove(&req);
                Some(Err(e))
            }
            (_, _, Ok(_)) => Some(Err(Errno::Io)),
        }
    }

    /// This client changed a directory's entries: its listing is stale.
    /// This client added `name` to `dir` (the host confirmed it): a
    /// fresh listing of `dir` takes it ([`crate::cache::Cache::add_entry`]).
    pub(super) fn entry_added(&mut self, now: Instant, dir: Ino, name: &Name, attr: &Attr) {
        if let Some(node) = self.vfs.as_ref().and_then(|v| v.node(dir)) {
            let entry = DirEntry {
                name: name.clone(),
                attr: attr.clone(),
            };
            self.cache.add_entry(now, node, entry);
        }
    }

    /// New attributes of directories a reply said changed, up to two
    /// (more would be a host's bug: ignored).
    fn dirs_changed(&mut self, now: Instant, dirs: &[Attr]) {
        for d in dirs.iter().take(2).filter(|d| d.kind == FileKind::Dir) {
            self.learn_attr(d);
            self.fill_changed_attr(now, d.clone());
        }
    }

    /// The node named `parent/name` here, if known.
    fn child_node(&self, parent: Ino, name: &Name) -> Option<NodeId> {
        let v = self.vfs.as_ref()?;
        v.child(parent, name).and_then(|c| v.get(c)).map(|i| i.node)
    }

    /// `parent/name` is about to lose its file (unlink, rmdir, a rename
    /// over it): the file is gone, or, where it has other names, its
    /// link count and ctime changed.
    pub(super) fn name_removed(&mut self, now: Instant, parent: Ino, name: &Name) {
        let Some(node) = self.child_node(parent, name) else {
            return;
        };
        let names = self.vfs.as_ref().map_or(0, |v| {
            v.child(parent, name)
                .and_then(|c| v.get(c))
                .map_or(0, |i| i.links.len())
        });
        let linked = names > 1
            || self
                .cache
                .peek_attr(node)
                .is_some_and(|a| a.kind != FileKind::Dir && a.nlink > 1);
        let what = if linked {
            Invalidation::Attr
        } else {
            Invalidation::Gone
        };
        self.cache.invalidate(now, node, what);
    }

    pub(super) fn entries_changed(&mut self, now: Instant, dir: Ino) {
        if let Some(node) = self.vfs.as_ref().and_then(|v| v.node(dir)) {
            self.cache.invalidate(now, node, Invalidation::Entries);
        }
    }

    /// The kernel's open of `ino` is answered by the host's `opened`
    /// (asked for it or ahead of it), `write` if it opens for writing.
    /// The cache takes its attributes if they `just_came` from the host:
    /// not the cache's own kept over a late reply (`not_older_open`), nor
    /// an open-ahead's, which came earlier and keep the age they have.
    pub(super) fn opened(
        &mut self,
        now: Instant,
        ino: Ino,
        (host, attr, inline): (Option<HandleId>, Attr, Bytes),
        access: OpenFor,
        just_came: bool,
    ) -> Answer {
        // Close-to-open: the kernel keeps its cached pages only if the
        // file is at the version it last saw.
        let keep_cache = self
            .cache
            .peek_attr(attr.node)
            .is_some_and(|c| c.version == attr.version);
        let fh = self.open_handle(now, ino, host, attr.clone(), inline, access);
        if just_came {
            let _ = self
                .cache
                .fill(now, CacheKey::Attr(attr.node), Value::Attr(Arc::new(attr)));
        }
        Answer::Opened { fh, keep_cache }
    }

    /// What an open's reply to request `id` gives the new handle: the
    /// host's handle, the file's attributes and its inline bytes; unless
    /// this client's own commit of the file was answered after `id` was
    /// sent. The host then opened the version that commit replaced, and
    /// its size, given to the kernel, cut the next read of the new
    /// version through the writer's own handle (fs_sim, seed 11778). The
    /// new handle follows the file instead, as the writer's handles do
    /// ([`ClientCore::follow_file`]): it takes the commit's attributes and
    /// reads by node, and the host's handle on the replaced file is
    /// closed. (The open and the commit raced: the program may see either
    /// version, so long as it is a whole one.) Without the host's handle,
    /// then, the attributes are the cache's own.
    fn not_older_open(
        &mut self,
        now: Instant,
        id: RequestId,
        o: Opened,
    ) -> (Option<HandleId>, Attr, Bytes) {
        let (attr, _) = self.not_older(now, id, o.attr.clone());
        if attr.key == o.attr.key && attr.version == o.attr.version {
            return (Some(o.handle), o.attr, o.inline);
        }
        self.send(
            now,
            Purpose::Forget,
            crate::proto::Request::Close { handle: o.handle },
        );
        (None, attr, Bytes::new())
    }

    /// The host answered the open-ahead `id` of `node`.
    fn on_open_ahead(
        &mut self,
        now: Instant,
        id: RequestId,
        node: NodeId,
        result: Result<Reply, Errno>,
    ) {
        let Some(opened) = result.ok().and_then(Opened::from_reply) else {
            if let Some((req, ino)) = self.ahead.failed(node) {
                self.open_at_host(now, req, ino);
            }
            return;
        };
        let expires = now + self.kernel_ttl(Kind::Attr);
        match self.ahead.answered(node, opened, expires) {
            Answered::Waiting(req, ino, opened) => {
                let opened = self.not_older_open(now, id, opened);
                let just_came = opened.0.is_some();
                let answer = self.opened(now, ino, opened, OpenFor::Read, just_came);
                self.reply(req, Ok(answer));
            }
            Answered::Kept => {}
            Answered::Spoiled(handle, waiting) => {
                self.close_host_handles(now, vec![handle]);
                if let Some((req, ino)) = waiting {
                    self.open_at_host(now, req, ino);
                }
            }
        }
    }

    /// The kernel's open `req` of `ino` asks the host itself (its
    /// open-ahead could not answer it).
    fn open_at_host(&mut self, now: Instant, req: Req, ino: Ino) {
        let op = Op::open(ino);
        match self.vfs.as_ref().and_then(|v| v.node(ino)) {
            Some(node) => self.send(
                now,
                Purpose::Op {
                    req,
                    op,
                    part: OpPart::First,
                },
                crate::proto::Request::Open {
                    node,
                    mode: crate::proto::OpenFor::Read,
                },
            ),
            None => self.reply(req, Err(Errno::Stale)),
        }
    }

    /// A file the host opened: a new handle. A small file's bytes that
    /// came with the open (`inline`) are its one chunk, cached under the
    /// version they were read at, so the read that follows needs no
    /// request.
    pub(super) fn open_handle(
        &mut self,
        now: Instant,
        ino: Ino,
        host: Option<crate::proto::HandleId>,
        attr: Attr,
        inline: Bytes,
        access: OpenFor,
    ) -> Fh {
        if !inline.is_empty() && inline.len() as u64 == attr.size {
            let key = CacheKey::Chunk(ChunkKey {
                file: attr.key,
                version: attr.version,
                index: 0,
            });
            let _ = self.cache.fill(now, key, Value::Chunk(inline));
        }
        let fh = Fh(self.next_fh);
        self.next_fh += 1;
        if let Some(v) = self.vfs.as_mut() {
            let _ = v.open(ino);
        }
        self.files.insert(attr.key, attr.node);
        self.handles.insert(
            fh,
            Handle {
                ino,
                node: attr.node,
                host,
                write: access != OpenFor::Read,
                opened_at: self.next_id,
                attr,
                error: None,
                unsynced: false,
                lock_lost: None,
            },
        );
        fh
    }

    /// A cache output.
    pub(super) fn on_cache(&mut self, now: Instant, o: cache::Output) {
        match o {
            cache::Output::Fetch { key } => self.fetch_key(now, key),
            cache::Output::Revalidate { key, .. } => match key {
                CacheKey::Chunk(ck) => self.revalidate_chunk(now, ck),
                other => self.fetch_key(now, other),
            },
            cache::Output::L2Write {
                key,
                data,
                checksum,
            } => {
                self.out.push_back(ClientOutput::L2Write {
                    key,
                    data,
                    checksum,
                });
            }
            cache::Output::L2Delete { key } => self.out.push_back(ClientOutput::L2Delete { key }),
            cache::Output::Ready {
                waiters, result, ..
            } => {
                for w in waiters {
                    if let Some(cont) = self.waits.remove(&w) {
                        self.resume(now, cont, result.clone());
                    }
                }
            }
        }
    }

    fn fetch_key(&mut self, now: Instant, key: CacheKey) {
        match key {
            CacheKey::Attr(node) => self.send(
                now,
                Purpose::Fetch(key),
                crate::proto::Request::GetAttr { node },
            ),
            CacheKey::Chunk(ck) => self.fetch_chunk(now, ck),
            CacheKey::Dir(node) => self.fetch_dir(now, node),
            CacheKey::Negative { .. } => {
                let _ = self.cache.fail(now, &key, Errno::NoEnt);
            }
        }
    }

    /// A cache key a request waited for is ready.
    fn resume(&mut self, now: Instant, cont: CacheWait, result: Result<Value, Errno>) {
        match (cont, result) {
            (CacheWait::GetAttr { req, ino }, Ok(Value::Attr(a))) => {
                // Set aside meanwhile (see `on_fetch`): its readers' file.
                if super::set_aside(self.vfs.as_ref(), ino)
                    && let Some(answer) = self.orphan_attr(ino)
                {
                    self.reply(req, Ok(answer));
                    return;
                }
                let attr = self.with_local_changes(&a);
                let ttl = self.kernel_ttl(Kind::Attr);
                self.reply(req, Ok(Answer::Attr { attr, ttl }));
            }
            (CacheWait::ReadDir { req, ino, offset }, Ok(Value::Dir(entries))) => {
                self.answer_dir(now, req, ino, offset, &entries);
            }
            (CacheWait::ReadPart { req, slot, attempt }, Ok(Value::Chunk(c))) => {
                // Answers for an attempt that was restarted are ignored.
                if let Some(job) = self.reads.get_mut(&req).filter(|j| j.retries == attempt)
                    && let Some(part) = job.parts.get_mut(slot)
                {
                    part.1 = Some(c);
                }
                self.finish_read(now, req);
            }
            (CacheWait::ReadPart { req, attempt, .. }, result) => {
                if self.reads.get(&req).is_some_and(|j| j.retries == attempt) {
                    match result {
                        Err(Errno::Stale) => self.refresh_read(now, req),
                        Err(e) => {
                            self.reads.remove(&req);
                            self.reply(req, Err(e));
                        }
                        Ok(_) => {
                            self.reads.remove(&req);
                            self.reply(req, Err(Errno::Io));
                        }
                    }
                }
            }
            (CacheWait::GetAttr { req, .. } | CacheWait::ReadDir { req, .. }, Err(e)) => {
                self.reply(req, Err(e))
            }
            (CacheWait::GetAttr { req, .. } | CacheWait::ReadDir { req, .. }, Ok(_)) => {
                self.reply(req, Err(Errno::Io));
            }
        }
    }

    /// A read found its chunks at a newer version than its handle knew:
    /// learn the file's attributes and read again (twice at most).
    fn refresh_read(&mut self, now: Instant, req: Req) {
        let Some(job) = self.reads.get_mut(&req) else {
            return;
        };
        if job.retries >= 2 {
            return self.read_through(now, req);
        }
        job.retries += 1;
        let fh = job.fh;
        let (offset, size) = (job.offset, job.size);
        let Some(node) = self.handles.get(&fh).map(|h| h.node) else {
            self.reads.remove(&req);
            return self.reply(req, Err(Errno::BadF));
        };
        // Only one resume per read: later chunk answers find no job slot
        // change to make until the retry restarts it.
        job.parts.clear();
        self.send(
            now,
            Purpose::Op {
                req,
                op: Op::Read { fh, offset, size },
                part: OpPart::RefreshRead,
            },
            crate::proto::Request::GetAttr { node },
        );
    }

    /// A read planned against a version its handle no longer has: planned
    /// again against the current one (twice at most, then read through).
    pub(super) fn replan_read(&mut self, now: Instant, req: Req) {
        let Some(job) = self.reads.get_mut(&req) else {
            return;
        };
        if job.retries >= 2 {
            return self.read_through(now, req);
        }
        job.retries += 1;
        job.parts.clear();
        if let Err(e) = self.start_read(now, req) {
            self.reads.remove(&req);
            self.reply(req, Err(e));
        }
    }

    /// A read whose chunks changed version on every try: the file keeps
    /// changing in place (a log a program appends to) faster than a
    /// refresh's round trip. Its bytes are read through the open's host
    /// handle, which holds this very file (never another's bytes), and
    /// handed over unversioned and uncached, as a local disk's read racing
    /// a writer would give them. Without a host handle: ESTALE.
    fn read_through(&mut self, now: Instant, req: Req) {
        let Some(job) = self.reads.get(&req) else {
            return;
        };
        let Some((host, size)) = self
            .handles
            .get(&job.fh)
            .and_then(|h| h.host.map(|host| (host, h.attr.size)))
        else {
            self.reads.remove(&req);
            return self.reply(req, Err(Errno::Stale));
        };
        let size = self
            .handles
            .get(&job.fh)
            .and_then(|h| self.writes.get(&h.node))
            .filter(|w| !w.is_finished())
            .map_or(size, WriteTxn::size);
        let end = job.offset.saturating_add(u64::from(job.size)).min(size);
        if job.offset >= end {
            self.reads.remove(&req);
            return self.reply(req, Ok(Answer::Data(Bytes::new())));
        }
        let chunk = CHUNK_SIZE as u64;
        let parts: Vec<(u64, Option<Bytes>)> = (job.offset / chunk..=(end - 1) / chunk)
            .map(|index| (index, None))
            .collect();
        let indexes: Vec<u64> = parts.iter().map(|(i, _)| *i).collect();
        if let Some(j) = self.reads.get_mut(&req) {
            j.parts = parts;
            j.through = true;
        }
        for (slot, index) in indexes.into_iter().enumerate() {
            self.send(
                now,
                Purpose::ReadThrough { req, slot },
                crate::proto::Request::Read {
                    file: crate::proto::FileRef::Handle(host),
                    offset: index * chunk,
                    len: CHUNK_SIZE as u32,
                },
            );
        }
    }

    /// Carries out a write transaction's outputs.
    pub(super) fn drain_write(&mut self, now: Instant, node: crate::proto::NodeId) {
        self.drain_write_outputs(now, node);
        // A spent transaction goes: kept, every timer and scan would visit
        // each file this mount ever wrote (an untar of 10,000 files spent
        // most of its CPU in them).
        if self.writes.get(&node).is_some_and(WriteTxn::is_spent) {
            self.writes.remove(&node);
        }
    }

    fn drain_write_outputs(&mut self, now: Instant, node: crate::proto::NodeId) {
        loop {
            let Some(o) = self.writes.get_mut(&node).and_then(|w| w.poll_output()) else {
                break;
            };
            match o {
                WriteOutput::Send { op, request } => {
                    if let Some(request) = self.stream_whole(now, node, op, request) {
                        self.send(now, Purpose::Write { node, op }, request);
                    }
                }
                WriteOutput::Committed(attr) => {
                    let moved = self
                        .writes
                        .get(&node)
                        .is_some_and(|t| t.moved_appends(&attr));
                    // The commit gave the file a new identity.
                    if let Some(v) = self.vfs.as_mut()
                        && let Some(ino) = v.ino_of(node)
                    {
                        v.set_key(ino, attr.key);
                        if moved {
                            // Its appends are not where the kernel wrote
                            // them (docs/filesystem.md, "Appends").
                            self.out.push_back(ClientOutput::InvalidateInode { ino });
                        }
                    }
                    let vfs = self.vfs.as_ref();
                    for h in self.handles.values_mut() {
                        if super::on_file(vfs, h, node) {
                            h.attr = attr.clone();
                        }
                    }
                    self.follow_file(now, node);
                    self.files.insert(attr.key, node);
                    self.fill_changed_attr(now, attr.clone());
                    // A file made here under a lease commits into its
                    // create in the stream: no rename at the host, and the
                    // kernel dropped the directory's attributes itself
                    // when it sent the create.
                    if !self.leases.is_unapplied(node) {
                        self.commit_moved_dirs(now, node);
                    }
                    self.finish_commit(now, node, Ok(attr));
                }
                WriteOutput::Aborted(reason) => self.finish_commit(now, node, Err(reason.errno())),
            }
        }
    }

    /// A commit renamed a new version of `node` over the old one in its
    /// directory, which moves that directory's times on the host (a
    /// local disk's write would not: docs/filesystem.md, "Write
    /// transactions"). Its cached attributes, and the kernel's, are out
    /// of date: the next `stat` of it asks the host.
    fn commit_moved_dirs(&mut self, now: Instant, node: crate::proto::NodeId) {
        let Some(v) = self.vfs.as_ref() else {
            return;
        };
        let Some(parents) = v.ino_of(node).and_then(|i| v.get(i)).map(|i| {
            i.links
                .iter()
                .filter_map(|(p, _)| v.node(*p).map(|n| (*p, n)))
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        for (ino, dir) in parents {
            self.cache.invalidate(now, dir, Invalidation::Attr);
            self.out.push_back(ClientOutput::InvalidateInode { ino });
        }
    }

    /// `O_TRUNC`: the file's content goes in a transaction of its own
    /// that commits with the handle's first flush, fsync or close, so that
    /// until then (and after a crash) the file keeps its old content. A
    /// file already empty needs none.
    fn truncate_at_open(
        &mut self,
        now: Instant,
        node: crate::proto::NodeId,
        truncate: bool,
        answer: Result<Answer, Errno>,
    ) -> Result<Answer, Errno> {
        if truncate {
            self.txn(node, now)?
                .empty_at_open(now)
                .map_err(super::dispatch::write_errno)?;
            self.drain_write(now, node);
        }
        answer
    }

    /// Sends the mode and time changes of the kernel's SetAttr `req`.
    pub(super) fn set_rest(
        &mut self,
        now: Instant,
        req: Req,
        ino: Ino,
        node: crate::proto::NodeId,
        rest: crate::proto::SetAttr,
    ) {
        self.send(
            now,
            Purpose::Op {
                req,
                op: Op::SetAttr { ino, set: rest },
                part: OpPart::Rest,
            },
            crate::proto::Request::SetAttr {
                node,
                set: rest,
                token: None,
            },
        );
    }

    fn finish_commit(
        &mut self,
        now: Instant,
        node: crate::proto::NodeId,
        result: Result<Attr, Errno>,
    ) {
        let waiting = self.after_commit.remove(&node).unwrap_or_default();
        // (Handles set aside hold a file this commit did not write.)
        let vfs = self.vfs.as_ref();
        if result.is_ok() {
            for h in self
                .handles
                .values_mut()
                .filter(|h| super::on_file(vfs, h, node))
            {
                h.unsynced = true;
            }
        }
        if let Err(e) = result {
            // Every handle open on the file reports the loss once: the
            // flushes waiting for this commit, or queued behind it, now;
            // the others at their next flush, fsync or close. (A truncate
            // that shared the transaction learns it too, but it is no
            // report to the writers.)
            let mut told: BTreeSet<Fh> = waiting
                .iter()
                .filter_map(|w| match w {
                    AfterCommit::Reply(_, fh) => Some(*fh),
                    _ => None,
                })
                .collect();
            for b in self.blocked.get_mut(&node).into_iter().flatten() {
                if let Blocked::Commit {
                    then: AfterCommit::Reply(_, fh),
                    lost,
                } = b
                {
                    *lost = lost.or(Some(e));
                    told.insert(*fh);
                }
            }
            for (fh, h) in &mut self.handles {
                if super::on_file(vfs, h, node) && !told.contains(fh) {
                    h.error.get_or_insert(e);
                }
            }
        }
        let ttl = self.kernel_ttl(Kind::Attr);
        for w in waiting {
            match (w, &result) {
                (AfterCommit::Reply(req, _), Ok(_)) => self.reply(req, Ok(Answer::Done)),
                (AfterCommit::Reply(req, _), Err(e)) => self.reply(req, Err(*e)),
                (AfterCommit::SetAttr { req, rest, .. }, Ok(attr))
                    if rest == crate::proto::SetAttr::default() =>
                {
                    self.reply(
                        req,
                        Ok(Answer::Attr {
                            attr: attr.clone(),
                            ttl,
                        }),
                    );
                }
                (
                    AfterCommit::SetAttr {
                        req,
                        truncated: true,
                        ..
                    },
                    Err(e),
                ) => self.reply(req, Err(*e)),
                (AfterCommit::SetAttr { req, ino, rest, .. }, _) => {
                    self.set_rest(now, req, ino, node, rest);
                }
                // A failure is kept for the next flush above.
                (AfterCommit::Quiet, _) => {}
                (AfterCommit::Lock { kernel, request }, _) => {
                    self.send_lock(now, kernel, request);
                }
            }
        }
        // Writes that waited for room start the next transaction.
        self.retry_blocked(now, node);
    }
}

/// An extended attribute's value or list for a caller's buffer of `size`
/// bytes: the size it needs when it asks with none, ERANGE when it is too
/// small, as getxattr(2) and listxattr(2) say.
fn sized(bytes: Vec<u8>, size: u32) -> Result<Answer, Errno> {
    let len = u32::try_from(bytes.len()).map_err(|_| Errno::Range)?;
    if size == 0 {
        Ok(Answer::XattrSize(len))
    } else if len > size {
        Err(Errno::Range)
    } else {
        Ok(Answer::Xattr(bytes))
    }
}
