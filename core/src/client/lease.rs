//! Directory leases, the client side (docs/filesystem.md, "Asynchronous
//! directory operations").
//!
//! A client that creates several files in one directory asks the host for
//! a lease on it: an exclusive lock on the directory's entries and a
//! range of node ids. While it holds one, nobody else can look at the
//! directory without the host recalling the lease first, so the client
//! answers there itself, without a round trip:
//!
//! * a lookup of a name its listing lacks (ENOENT), and the create of
//!   such a name ([`ClientCore::create_locally`]): the new file gets a
//!   node id of the range and attributes made here;
//! * the file's writes, mode and times go to its write transaction as any
//!   file's; its whole write, at close, becomes a `CreateFile` in the
//!   directory's *stream* and the close is answered at once
//!   ([`ClientCore::stream_whole`]);
//! * the unlink of a name its listing holds, if the name is a file of the
//!   host's that is not a directory and not open here
//!   ([`ClientCore::unlink_locally`]): an `Unlink` in the stream;
//! * the `rmdir` of a directory whose lease it holds too and whose names
//!   it has all removed ([`ClientCore::rmdir_locally`]): an `Rmdir` in
//!   the parent's stream, sent once that directory's own stream is
//!   applied;
//! * the directory's own mode and times ([`ClientCore::setattr_locally`]):
//!   a `SetAttr` in its stream, after the files made there, as tar sets
//!   them once it has made a directory's files.
//!
//! The stream goes to the host in order as [`Request::Apply`] batches, one
//! at a time per directory; what closes while one is out gathers into the
//! next. Until the host has applied a file, every request about it (or
//! about its name, or a listing or `fsync` that must include it) waits
//! ([`ClientCore::hold_for_leases`]); a request waiting on a file still
//! open sends that file's create first, empty, and its writes then go the
//! ordinary way. A file the host refuses (a local program took the name,
//! the disk is full) is a delayed error: the next flush, fsync or close
//! of a handle on it reports it, or, with none left, the mount reports
//! [`ClientEvent::CreateLost`] and forgets the name.
//!
//! An unlink the host refuses (another client's lock on the file, a
//! disk error) puts the name back: the mount reports
//! [`ClientEvent::RemoveLost`]; a mode or times it refuses,
//! [`ClientEvent::AttrLost`].
//!
//! A create, unlink or `rmdir` in a directory whose lease is being taken
//! (asked for, or its listing read) waits for it, at most
//! [`WAIT_FOR_LEASE`] ([`ClientCore::wait_for_lease`]), and is then
//! answered under it. Sent the ordinary way meanwhile, its name could be
//! in the lease's listing or not (the host may read the listing before
//! or after it applies the unlink), so the lease's set of names would
//! keep it, and the directory would never look empty here: `rm -r`'s
//! `rmdir` then waited for the host.
//!
//! A recalled, idle or lost lease is given back once its stream is
//! applied. The node ids outlive a lost lease at the host, so what was
//! answered is still sent; a name taken meanwhile is refused, never
//! overwritten.

use super::{Answer, ClientCore, ClientEvent, ClientOutput, Op, Purpose, Req};
use crate::Instant;
use crate::cache::{CacheKey, Miss, Value};
use crate::proto::{
    Attr, DirEntry, Errno, FileKey, FileKind, FileRef, Invalidation, LeaseGrant, LeaseOp,
    LockScope, LockToken, Name, NodeId, NodeRange, OpenFor, Reply, Request, SetAttr, SetTime,
    Timestamp,
};
use crate::vfs::Ino;
use crate::write::WriteOp;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Creates or unlinks sent the ordinary way in one directory within
/// [`HOT_WINDOW`] before a lease is asked for: one is not worth a lease.
const HOT_CHANGES: u32 = 2;

/// See [`HOT_CHANGES`].
const HOT_WINDOW: Duration = Duration::from_secs(2);

/// A lease with no local create or unlink for this long is given back,
/// so other clients need not recall it.
const IDLE: Duration = Duration::from_secs(2);

/// After a refused lease, how long before asking again for that
/// directory.
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);

/// How long a create, unlink or `rmdir` waits for its directory's lease
/// to be taken before it goes the ordinary way (two round trips, unless
/// the host or the link is slow).
const WAIT_FOR_LEASE: Duration = Duration::from_millis(500);

/// Kernel requests waiting for leases at most; beyond, they go the
/// ordinary way.
const MAX_WAITING: usize = 64;

/// Leases held at once.
const MAX_LEASES: usize = 16;

/// Files, unlinks and directory modes or times answered here and not
/// yet applied, in all: beyond, they go the ordinary way until the host
/// catches up.
const MAX_UNAPPLIED: usize = 4096;

/// Largest file whose content goes in the stream; a larger one is
/// created empty and written the ordinary way.
const MAX_STREAMED_FILE: u64 = 256 << 10;

/// Bytes of file content in one batch (the message is bounded by
/// [`crate::proto::MAX_WRITE_PIECE`]), and operations in one batch.
const MAX_BATCH_BYTES: usize = 768 << 10;
const MAX_BATCH_OPS: usize = 512;

/// Directories a sweep's leases are asked for ahead of it
/// ([`ClientCore::listing_begins`]).
const SWEEP_AHEAD: usize = 4;

/// Entries of the parent's listing past the directory being listed that
/// a sweep looks through for the next subdirectories, at most (a
/// directory of many files is not scanned to its end for every
/// subdirectory).
const SWEEP_SCAN: usize = 1024;

/// Recalls of leases not known yet kept ([`Leases::recalled_early`]).
const MAX_EARLY_RECALLS: usize = 32;

/// Ask for more node ids when fewer than this are left.
const LOW_IDS: u64 = 64;

/// The device number of attributes made here: no host file has it, so a
/// file's made-up identity never names another.
const LOCAL_DEV: u64 = u64::MAX;

/// A lease's request, for its reply.
#[derive(Clone, Debug)]
pub(super) enum LeaseStep {
    /// [`Request::Lease`]: the first, or more ids for a held lease.
    Take,
    /// The directory's listing, taken once the lease is granted.
    Listing { acc: Vec<DirEntry> },
    /// A batch of the stream (kept to be sent again, same tag, if its
    /// answer does not come in time: the host answers a batch it ran from
    /// its record).
    Apply { tag: u64, ops: Vec<LeaseOp> },
    /// [`Request::RefreshLock`].
    Refresh,
    /// [`Request::ReleaseLock`].
    Release,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Lease asked for.
    Asking,
    /// Granted; its listing is being read.
    Listing,
    /// Creates and unlinks are answered here.
    Held,
    /// Recalled, idle or lost: the stream is finished, then the lease
    /// given back; no new local create or unlink.
    Returning,
}

#[derive(Debug)]
struct DirLease {
    state: State,
    token: Option<LockToken>,
    /// Unused ids: `next..end` of the current range, then the ranges
    /// granted after it.
    next: u64,
    end: u64,
    more: VecDeque<NodeRange>,
    asking_more: bool,
    /// Every name the directory may hold (a superset): its listing when
    /// the lease began, plus every name this client made or asked to make
    /// there since. A name not in it does not exist.
    names: BTreeSet<Name>,
    /// Files closed and names unlinked, waiting to be sent, in order.
    stream: VecDeque<LeaseOp>,
    /// The batch the host is applying.
    in_flight: bool,
    /// The lock is valid until then (a conservative estimate).
    expires_at: Instant,
    refresh_at: Instant,
    refreshing: bool,
    /// The last create or unlink answered here.
    last_local: Instant,
    /// The last unlink or `rmdir` here, answered here or by the host: a
    /// sweep (`rm -r`) under way, whose next directory's lease is asked
    /// for as it is listed, and the few after it ahead
    /// ([`ClientCore::listing_begins`]).
    removed_at: Option<Instant>,
    /// Where in this directory's cached listing the sweep was last: the
    /// next directory it lists is looked for from there.
    swept_to: usize,
    /// The lock is gone at the host (expired, or the session's).
    lost: bool,
}

impl DirLease {
    /// A lease just asked for.
    fn asking(now: Instant) -> Self {
        DirLease {
            state: State::Asking,
            token: None,
            next: 0,
            end: 0,
            more: VecDeque::new(),
            asking_more: false,
            names: BTreeSet::new(),
            stream: VecDeque::new(),
            in_flight: false,
            expires_at: now,
            refresh_at: now,
            refreshing: false,
            last_local: now,
            removed_at: None,
            swept_to: 0,
            lost: false,
        }
    }

    /// The lease's grant came: its lock and its first ids.
    fn granted(&mut self, now: Instant, grant: &LeaseGrant) {
        let ttl = Duration::from_millis(u64::from(grant.ttl_ms));
        self.token = Some(grant.token);
        self.next = grant.nodes.first.0;
        self.end = grant.nodes.first.0 + u64::from(grant.nodes.count);
        self.expires_at = now + ttl;
        self.refresh_at = now + ttl / 2;
    }
}

/// A file answered here and not yet applied by the host.
#[derive(Debug)]
struct Unapplied {
    dir: NodeId,
    name: Name,
    ino: Ino,
    parent: Ino,
    mode: u32,
    /// The owner to ask the host for ([`ClientCore::owner_for_host`]).
    owner: Option<crate::proto::Owner>,
    /// Its create is in the stream or sent.
    queued: bool,
}

/// An unlink answered here and not yet applied by the host.
#[derive(Debug)]
struct Unlinked {
    dir: NodeId,
    name: Name,
    parent: Ino,
}

/// A leased directory's own mode or times set here, not yet applied.
#[derive(Debug)]
struct Setting {
    /// How many such changes are out.
    out: usize,
    /// What they set, the later over the earlier (times as this
    /// client's clock had them), laid over every answer about the
    /// directory until the host has them (`ClientCore::with_local_changes`).
    set: SetAttr,
    /// When the last was made, by this client's clock.
    ctime: Timestamp,
}

/// A request waiting for files or unlinks to be applied.
#[derive(Debug)]
struct Held {
    waiting_for: BTreeSet<NodeId>,
    purpose: Purpose,
    request: Request,
}

/// The client's leases (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Leases {
    dirs: BTreeMap<NodeId, DirLease>,
    unapplied: BTreeMap<NodeId, Unapplied>,
    /// Unlinks answered here, by the node the name held.
    unlinking: BTreeMap<NodeId, Unlinked>,
    /// Leased directories whose own mode or times were set here and not
    /// yet applied.
    setting: BTreeMap<NodeId, Setting>,
    held: Vec<Held>,
    /// Kernel requests waiting for the lease of a directory to be taken
    /// ([`ClientCore::wait_for_lease`]), with the directory and until
    /// when they wait.
    waiting: Vec<(Req, Op, NodeId, Instant)>,
    /// Requests being run after their wait ran out: they do not wait
    /// again.
    waited_out: BTreeSet<Req>,
    /// Ordinary creates per directory: since when, how many.
    recent: BTreeMap<NodeId, (Instant, u32)>,
    refused_until: BTreeMap<NodeId, Instant>,
    /// Recalls of leases not known here yet: a recall can overtake its
    /// lease's grant on the wire (another stream); the grant, when it
    /// comes, is given back at once. The most recent few only.
    recalled_early: VecDeque<LockToken>,
    next_tag: u64,
    /// Wall-clock time at an instant, for the times of files made here
    /// (`None`: the instant itself, for simulations).
    wall: Option<(Instant, Timestamp)>,
}

impl Leases {
    /// Whether a request held for files or unlinks to be applied is one
    /// `which` picks (by its purpose and itself).
    pub(super) fn holds(&self, which: &impl Fn(&Purpose, &Request) -> bool) -> bool {
        self.held.iter().any(|h| which(&h.purpose, &h.request))
    }

    /// Files answered here and not yet applied.
    pub(super) fn unapplied(&self) -> usize {
        self.unapplied.len()
    }

    /// Whether `node` is a file answered here, not yet applied.
    pub(super) fn is_unapplied(&self, node: NodeId) -> bool {
        self.unapplied.contains_key(&node)
    }

    /// Whether `node` has a create, an unlink or (a directory) a mode or
    /// times change answered here and not yet applied.
    fn pending(&self, node: NodeId) -> bool {
        self.unapplied.contains_key(&node)
            || self.unlinking.contains_key(&node)
            || self.setting.contains_key(&node)
    }

    /// Operations answered here and not yet applied, in all.
    fn answered(&self) -> usize {
        let set: usize = self.setting.values().map(|s| s.out).sum();
        self.unapplied.len() + self.unlinking.len() + set
    }

    /// Fewer than [`MAX_LEASES`] leases held or being taken, and room
    /// in the map (those being given back count up to twice the limit).
    fn free_place(&self) -> bool {
        let active = self.dirs.values().filter(|l| l.state != State::Returning);
        self.dirs.len() < 2 * MAX_LEASES && active.count() < MAX_LEASES
    }

    /// Room for a lease a sweep asks for ahead of it: at most half the
    /// places, so that a sweep deep in a tree, which asks ahead at every
    /// level, leaves places for the directories it lists and for their
    /// parents, whose `rmdir`s it needs (a full table gives back the
    /// coldest, often such a parent: `ClientCore::room_for_lease`).
    fn room_ahead(&self) -> bool {
        let active = self.dirs.values().filter(|l| l.state != State::Returning);
        self.dirs.len() < MAX_LEASES && active.count() < MAX_LEASES / 2
    }

    /// Operations answered here in `dir`'s stream, not yet applied: by
    /// the nodes they are about (`dir` itself for its mode or times).
    fn pending_in(&self, dir: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let made = self.unapplied.iter().filter(move |(_, u)| u.dir == dir);
        let gone = self.unlinking.iter().filter(move |(_, u)| u.dir == dir);
        let set = self.setting.contains_key(&dir).then_some(dir);
        made.map(|(n, _)| *n)
            .chain(gone.map(|(n, _)| *n))
            .chain(set)
    }

    /// The earliest lease timer.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        // A lost lease has no timer: it only finishes its stream.
        let leases = self
            .dirs
            .values()
            .filter(|l| l.token.is_some() && !l.lost)
            .map(|l| match l.state {
                State::Held if !l.refreshing => l.refresh_at.min(l.last_local + IDLE),
                _ if !l.refreshing => l.refresh_at,
                _ => l.expires_at,
            });
        let waiting = self.waiting.iter().map(|(.., until)| *until);
        leases.chain(waiting).min()
    }

    /// Whether the lease of `dir` is being taken: asked for, or its
    /// listing read.
    fn taking(&self, dir: NodeId) -> bool {
        self.dirs
            .get(&dir)
            .is_some_and(|l| matches!(l.state, State::Asking | State::Listing))
    }

    /// The invariants: every unapplied file and unlink belongs to a
    /// lease, and no node is both; every held request waits for something
    /// unapplied.
    pub(super) fn check(&self) -> Result<(), String> {
        for (node, u) in &self.unapplied {
            if !self.dirs.contains_key(&u.dir) {
                return Err(format!("{node:?} unapplied without its lease"));
            }
            if self.unlinking.contains_key(node) {
                return Err(format!("{node:?} both made and unlinked here"));
            }
        }
        if let Some((node, _)) = self
            .unlinking
            .iter()
            .find(|(_, u)| !self.dirs.contains_key(&u.dir))
        {
            return Err(format!("unlink of {node:?} without its lease"));
        }
        if let Some((dir, n)) = self
            .setting
            .iter()
            .find(|(d, s)| s.out == 0 || !self.dirs.contains_key(d))
        {
            let held = self.dirs.contains_key(dir);
            return Err(format!(
                "{} changes of {dir:?} set here (lease held: {held})",
                n.out
            ));
        }
        for h in &self.held {
            if h.waiting_for.is_empty() || h.waiting_for.iter().any(|n| !self.pending(*n)) {
                return Err(format!("a held request waits for nothing: {:?}", h.request));
            }
        }
        if self.waiting.len() > MAX_WAITING {
            return Err(format!("{} requests wait for leases", self.waiting.len()));
        }
        if self.dirs.len() > 2 * MAX_LEASES {
            return Err(format!("{} leases", self.dirs.len()));
        }
        for (dir, l) in &self.dirs {
            if l.next > l.end {
                return Err(format!("lease of {dir:?} past its ids"));
            }
            // Every set in the stream is counted (those in a batch out
            // are too, and are not seen here).
            let sets = l
                .stream
                .iter()
                .filter(|op| matches!(op, LeaseOp::SetAttr { .. }));
            if sets.count() > self.setting.get(dir).map_or(0, |s| s.out) {
                return Err(format!("sets of {dir:?} in its stream not counted"));
            }
        }
        Ok(())
    }

    /// The wall-clock time at `now`, as this client's machine tells it.
    pub(super) fn wall(&self, now: Instant) -> Timestamp {
        let (at, wall) = self.wall.unwrap_or((Instant::ZERO, Timestamp::default()));
        let d = now.saturating_duration_since(at);
        let nanos = u64::from(wall.nanos) + u64::from(d.subsec_nanos());
        Timestamp {
            secs: wall.secs + d.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
            nanos: (nanos % 1_000_000_000) as u32,
        }
    }
}

/// The attributes of a file made here, until the host's replace them.
fn local_attr(node: NodeId, size: u64, mode: u32, t: Timestamp, owner: Option<(u32, u32)>) -> Attr {
    Attr {
        node,
        key: FileKey {
            dev: LOCAL_DEV,
            ino: node.0,
        },
        kind: FileKind::File,
        size,
        mode: 0o100000 | (mode & 0o7777),
        nlink: 1,
        uid: owner.map_or(0, |o| o.0),
        gid: owner.map_or(0, |o| o.1),
        atime: t,
        mtime: t,
        ctime: t,
        rdev: 0,
        version: local_version(node, size),
    }
}

/// A made-up content version: never a host's (those hash real file
/// identities), different per file and size.
fn local_version(node: NodeId, size: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"wormhole local file");
    h.update(&node.0.to_le_bytes());
    h.update(&size.to_le_bytes());
    let mut v = [0u8; 8];
    v.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(v)
}

impl ClientCore {
    /// Tells the client the wall-clock time at `now`, for the times of
    /// files it creates under a lease until the host has them.
    pub fn set_wall_clock(&mut self, now: Instant, wall: Timestamp) {
        self.leases.wall = Some((now, wall));
    }

    /// Files this client answered the kernel for under a lease and the
    /// host has not applied yet.
    pub fn unapplied(&self) -> usize {
        self.leases.unapplied()
    }

    /// Whether `node` is a file this client made under a lease and the
    /// host has not applied yet, or a leased directory whose mode or
    /// times were set here and not yet applied: either's attributes are
    /// this client's own (for simulations, which check that every other
    /// answer's came from the host within their time to live).
    pub fn is_unapplied(&self, node: NodeId) -> bool {
        self.leases.is_unapplied(node) || self.leases.setting.contains_key(&node)
    }

    /// Changes of leased directories' own mode or times answered here
    /// and not yet applied or reported lost (for simulations).
    pub fn sets_unapplied(&self) -> usize {
        self.leases.setting.values().map(|s| s.out).sum()
    }

    /// What this client set of leased directory `node`'s own mode and
    /// times and the host has not applied yet, and when, by this
    /// client's clock.
    pub(super) fn set_here(&self, node: NodeId) -> Option<(&SetAttr, Timestamp)> {
        let s = self.leases.setting.get(&node)?;
        Some((&s.set, s.ctime))
    }

    /// Whether this client holds the lease of directory `dir` and answers
    /// creates there itself (for simulations).
    pub fn holds_lease(&self, dir: NodeId) -> bool {
        self.leases
            .dirs
            .get(&dir)
            .is_some_and(|l| l.state == State::Held)
    }

    /// The node of the file this client made as `name` in `dir` under a
    /// lease, if the host has not applied it yet (for simulations).
    pub fn unapplied_node(&self, dir: NodeId, name: &Name) -> Option<NodeId> {
        self.leases
            .unapplied
            .iter()
            .find(|(_, u)| u.dir == dir && u.name == *name)
            .map(|(n, _)| *n)
    }

    fn lease_send(&mut self, now: Instant, dir: NodeId, step: LeaseStep, request: Request) {
        self.send(now, Purpose::Lease { dir, step }, request);
    }

    /// Whether another lease may be asked for, giving back the least
    /// recently used one to make room: a program that works through a
    /// tree (tar, `rm -r`, a build) moves on from a directory and seldom
    /// comes back, and leases kept until they idle out would leave every
    /// directory after the first [`MAX_LEASES`] without one. Leases being
    /// given back still count, up to twice the limit, so a burst of
    /// directories cannot grow the map without bound.
    fn room_for_lease(&mut self, now: Instant) -> bool {
        if self.leases.dirs.len() >= 2 * MAX_LEASES {
            return false;
        }
        if self.leases.free_place() {
            return true;
        }
        let coldest = self
            .leases
            .dirs
            .iter()
            .filter(|(_, l)| l.state == State::Held)
            .min_by_key(|(_, l)| l.last_local)
            .map(|(d, _)| *d);
        match coldest {
            Some(dir) => {
                self.return_lease(now, dir);
                true
            }
            None => false,
        }
    }

    /// An ordinary create or unlink in `dir` succeeded: the second within
    /// [`HOT_WINDOW`] asks for a lease there.
    pub(super) fn changed_remotely(&mut self, now: Instant, dir: NodeId) {
        if !self.cfg.leases || self.leases.dirs.contains_key(&dir) {
            return;
        }
        if self
            .leases
            .refused_until
            .get(&dir)
            .is_some_and(|&t| now < t)
        {
            return;
        }
        let (since, n) = self.leases.recent.entry(dir).or_insert((now, 0));
        if now.saturating_duration_since(*since) > HOT_WINDOW {
            *since = now;
            *n = 0;
        }
        *n += 1;
        if *n < HOT_CHANGES || !self.room_for_lease(now) {
            return;
        }
        self.leases.recent.remove(&dir);
        self.ask_lease(now, dir);
    }

    /// An ordinary unlink or `rmdir` in `dir` succeeded (after
    /// [`Self::changed_remotely`]): a lease there, held or asked for,
    /// notes a sweep under way (`removed_at`).
    pub(super) fn removed_remotely(&mut self, now: Instant, dir: NodeId) {
        if let Some(l) = self.leases.dirs.get_mut(&dir) {
            l.removed_at = Some(now);
        }
    }

    /// Gives back at once a lease on `dir` granted with a mkdir that
    /// nobody here will hold.
    pub(super) fn give_back_grant(&mut self, now: Instant, dir: NodeId, grant: LeaseGrant) {
        let token = grant.token;
        self.lease_send(now, dir, LeaseStep::Release, Request::ReleaseLock { token });
    }

    /// Whether a directory made now asks for its lease with its mkdir
    /// ([`Request::Mkdir`]'s `lease`): files usually follow a new
    /// directory (tar, `cp -r`, a checkout), and so the lease comes at
    /// once, with no round trip of its own, instead of after two ordinary
    /// creates there (each a round trip for the create and one for the
    /// close), or after asking for it and reading its listing (two more).
    pub(super) fn lease_with_mkdir(&self, now: Instant) -> bool {
        // A host that refused a lease lately (read-only, or leases off)
        // is not asked again for every directory made.
        let refused = self.leases.refused_until.values().any(|&t| now < t);
        let room =
            self.leases.free_place() || self.leases.dirs.values().any(|l| l.state == State::Held);
        self.cfg.leases && !refused && self.leases.dirs.len() < 2 * MAX_LEASES && room
    }

    /// A directory this client just made came with its lease: held from
    /// now on, with no names (the host read it empty once it granted the
    /// lease). Given back at once if there is no room for it after all.
    pub(super) fn made_dir_leased(&mut self, now: Instant, dir: NodeId, grant: LeaseGrant) {
        if self.recalled_early(grant.token) {
            // Recalled before this answer: a change there may have come
            // before it too, its invalidation unheeded (the directory was
            // unknown here), so it is not taken for empty either.
            self.cache.remove(&CacheKey::Dir(dir));
            return self.give_back_grant(now, dir, grant);
        }
        if self.leases.dirs.contains_key(&dir) || !self.room_for_lease(now) {
            return self.give_back_grant(now, dir, grant);
        }
        let mut l = DirLease::asking(now);
        l.granted(now, &grant);
        l.state = State::Held;
        self.leases.dirs.insert(dir, l);
    }

    /// A program begins to list directory `ino`. If this client holds
    /// the lease of its parent and removed something there within
    /// [`HOT_WINDOW`], a sweep (`rm -r`, `find -delete`) is under way,
    /// and it lists a directory to remove everything in it next: its
    /// lease is asked for now, beside the listing, so that those unlinks
    /// wait for it and are answered here. Otherwise the first two of
    /// them went to the host (each applied there before its answer) to
    /// earn it, in every directory of the tree. The leases of the next
    /// [`SWEEP_AHEAD`] subdirectories in the parent's listing are asked
    /// for as well, ahead of the sweep.
    pub(super) fn listing_begins(&mut self, now: Instant, ino: Ino) {
        let Some(v) = self.vfs.as_ref() else {
            return;
        };
        let Some(inode) = v.get(ino) else {
            return;
        };
        let (dir, pino, parent) = match inode.link() {
            Some((pino, _)) if inode.kind == FileKind::Dir && inode.bound => {
                let Some(parent) = v.node(*pino) else {
                    return;
                };
                (inode.node, *pino, parent)
            }
            _ => return,
        };
        let sweeping = self.leases.dirs.get(&parent).is_some_and(|l| {
            l.state == State::Held
                && l.removed_at
                    .is_some_and(|t| now.saturating_duration_since(t) <= HOT_WINDOW)
        });
        if !self.cfg.leases || !sweeping {
            return;
        }
        // The sweep goes through the parent's subdirectories in the order
        // of its listing (GNU `rm -r` sorts none below 10,000 entries), so the next few are
        // asked for too: each one's lease and the listing read under it
        // come while the sweep empties this one, and its own listing and
        // unlinks are then answered here. Without, every directory waited
        // two round trips for the host (the listing beside the lease).
        // `dir` is looked for from where the sweep was last (from the
        // start each time, a sweep of n subdirectories scanned the
        // listing n times), and only directories still there as far as
        // this client knows are guessed (one removed here out of the
        // listing's order is still in the cached listing).
        let entries = self.cache.peek_dir(parent).unwrap_or_default();
        let hint = self
            .leases
            .dirs
            .get(&parent)
            .map_or(0, |l| l.swept_to)
            .min(entries.len());
        let at = entries[hint..]
            .iter()
            .position(|e| e.attr.node == dir)
            .map(|i| hint + i)
            .or_else(|| entries[..hint].iter().position(|e| e.attr.node == dir));
        let ahead: Vec<NodeId> = match (at, self.vfs.as_ref()) {
            (Some(at), Some(v)) => entries[at + 1..]
                .iter()
                .take(SWEEP_SCAN)
                .filter(|e| e.attr.kind == FileKind::Dir)
                .filter(|e| v.child(pino, &e.name).and_then(|c| v.node(c)) == Some(e.attr.node))
                .map(|e| e.attr.node)
                .take(SWEEP_AHEAD)
                .collect(),
            _ => Vec::new(),
        };
        if let (Some(at), Some(l)) = (at, self.leases.dirs.get_mut(&parent)) {
            l.swept_to = at + 1;
        }
        // `rm` `fstat`s each directory it lists (the kernel, having
        // dropped the atime the listing changed, asks here), so the
        // attributes are fetched ahead too, with the listing. (Ahead of a
        // slow sweep, of large directories, they may be past their ttl
        // when it comes, and the `fstat` asks the host as before.)
        let attrs_ahead = !self.unreachable();
        for (i, next) in std::iter::once(dir).chain(ahead).enumerate() {
            // Not where this client already answers unlinks itself: one
            // answered while the fetch is out poisons it, but a `stat`
            // that joins it still gets the times from before the unlink
            // (where its own fetch would wait for the unlink to be
            // applied). Elsewhere the lease is asked for below, and the
            // unlinks wait for it, behind the fetch.
            let held = self
                .leases
                .dirs
                .get(&next)
                .is_some_and(|l| l.state == State::Held);
            if attrs_ahead
                && !held
                && let Ok(Some(Miss::Fetch)) = self.cache.prefetch_attr(now, next)
            {
                self.send(
                    now,
                    Purpose::Fetch(CacheKey::Attr(next)),
                    Request::GetAttr { node: next },
                );
            }
            let refused = self
                .leases
                .refused_until
                .get(&next)
                .is_some_and(|&t| now < t);
            // A guess: it takes a free place, never another lease's (which
            // may be the parent's, whose `rmdir`s the sweep needs next);
            // one ahead only while half the places are free.
            let room = if i == 0 {
                self.leases.free_place()
            } else {
                self.leases.room_ahead()
            };
            if !refused && !self.leases.dirs.contains_key(&next) && room {
                self.ask_lease(now, next);
            }
        }
    }

    /// Asks the host for a lease on `dir`.
    fn ask_lease(&mut self, now: Instant, dir: NodeId) {
        // Bounded: one entry per directory created in, pruned here.
        if self.leases.recent.len() > 1024 {
            self.leases
                .recent
                .retain(|_, (t, _)| now.saturating_duration_since(*t) <= HOT_WINDOW);
        }
        if self.leases.refused_until.len() > 1024 {
            self.leases.refused_until.retain(|_, &mut t| now < t);
        }
        self.leases.dirs.insert(dir, DirLease::asking(now));
        self.lease_send(now, dir, LeaseStep::Take, Request::Lease { dir });
    }

    /// Holds a create, unlink or `rmdir` in a directory whose lease is
    /// being taken, to be answered under it (see the module docs).
    /// Returns whether it did.
    pub(super) fn wait_for_lease(&mut self, now: Instant, req: Req, op: &Op) -> bool {
        let (Op::Create { parent, .. } | Op::Unlink { parent, .. } | Op::Rmdir { parent, .. }) = op
        else {
            return false;
        };
        let Some(dir) = self.vfs.as_ref().and_then(|v| v.node(*parent)) else {
            return false;
        };
        if !self.leases.taking(dir)
            || self.leases.waiting.len() >= MAX_WAITING
            || self.leases.waited_out.contains(&req)
        {
            return false;
        }
        let until = now + WAIT_FOR_LEASE;
        self.leases.waiting.push((req, op.clone(), dir, until));
        true
    }

    /// Runs the requests whose lease is taken (or refused, or given up
    /// on) or whose wait is over, in the order they came. Returns whether
    /// it ran any.
    pub(super) fn resume_waiting(&mut self, now: Instant) -> bool {
        let leases = &self.leases;
        let ready =
            |(_, _, dir, until): &(Req, Op, NodeId, Instant)| now >= *until || !leases.taking(*dir);
        if !leases.waiting.iter().any(ready) {
            return false;
        }
        let (go, stay): (Vec<_>, Vec<_>) = leases.waiting.iter().cloned().partition(ready);
        self.leases.waiting = stay;
        for (req, op, dir, _) in go {
            if self.vfs.is_none() || self.rebinding.is_some() {
                // A new session began: node ids mean something again
                // once its inodes are re-bound, and it runs then.
                self.deferred.push_back((req, op));
                continue;
            }
            // Past its wait, it goes the ordinary way even if the lease
            // comes later; it never waits twice.
            let waited_out = self.leases.taking(dir);
            if waited_out {
                self.leases.waited_out.insert(req);
            }
            if let Err(e) = self.run(now, req, op) {
                self.reply(req, Err(e));
            }
            self.leases.waited_out.remove(&req);
        }
        true
    }

    /// Answers a lookup of a name the leased directory cannot hold, or of
    /// a file made here. Returns whether it answered.
    pub(super) fn lookup_locally(
        &mut self,
        now: Instant,
        req: Req,
        pnode: NodeId,
        name: &Name,
    ) -> bool {
        let Some(l) = self.leases.dirs.get(&pnode) else {
            return false;
        };
        if !matches!(l.state, State::Held | State::Returning) {
            return false;
        }
        if !l.names.contains(name) {
            let _ = self.cache.fill(
                now,
                CacheKey::Negative {
                    parent: pnode,
                    name: name.clone(),
                },
                Value::Negative,
            );
            self.reply(req, Err(Errno::NoEnt));
            return true;
        }
        false
    }

    /// Answers the kernel's create of `name` in `parent` here, if a held
    /// lease lets it (see the module docs). Returns whether it did.
    pub(super) fn create_locally(&mut self, now: Instant, req: Req, op: &Op) -> bool {
        let Op::Create {
            parent,
            name,
            mode,
            caller,
            ..
        } = op
        else {
            return false;
        };
        let Some(pnode) = self.vfs.as_ref().and_then(|v| v.node(*parent)) else {
            return false;
        };
        let full = self.leases.answered() >= MAX_UNAPPLIED;
        let Some(l) = self.leases.dirs.get_mut(&pnode) else {
            return false;
        };
        if l.state != State::Held || l.names.contains(name) || full {
            return false;
        }
        if l.next == l.end {
            match l.more.pop_front() {
                Some(r) => {
                    l.next = r.first.0;
                    l.end = r.first.0 + u64::from(r.count);
                }
                None => return false,
            }
        }
        let node = NodeId(l.next);
        l.next += 1;
        l.last_local = now;
        l.names.insert(name.clone());
        let more = l.end - l.next + l.more.iter().map(|r| u64::from(r.count)).sum::<u64>();
        let ask_more = more < LOW_IDS && !l.asking_more && !l.lost;
        if ask_more {
            l.asking_more = true;
        }
        let shown = self.new_file_owner(pnode, *caller);
        let mode = mode & 0o7777;
        let attr = local_attr(node, 0, mode, self.leases.wall(now), shown);
        self.entry_added(now, *parent, name, &attr);
        // The directory's times move: its attributes come from the host
        // once the stream is applied (a `stat` of it waits for that).
        self.cache.invalidate(now, pnode, Invalidation::Attr);
        let ino = match self.entry(now, *parent, op, attr.clone(), true, true) {
            Ok(ino) => ino,
            Err(e) => {
                self.reply(req, Err(e));
                return true;
            }
        };
        self.leases.unapplied.insert(
            node,
            Unapplied {
                dir: pnode,
                name: name.clone(),
                ino,
                parent: *parent,
                mode,
                owner: self.owner_for_host(*caller),
                queued: false,
            },
        );
        let fh = self.open_handle(now, ino, None, attr.clone(), Bytes::new(), OpenFor::Write);
        // Not for the kernel to keep: its `stat` must come here, to wait
        // for the host's times (see `Op::GetAttr`).
        let ttl = Duration::ZERO;
        self.reply(req, Ok(Answer::Created { ino, attr, ttl, fh }));
        if ask_more {
            self.lease_send(now, pnode, LeaseStep::Take, Request::Lease { dir: pnode });
        }
        true
    }

    /// Answers the kernel's unlink of `name` in `parent` here, if a held
    /// lease lets it: the name is in the listing, holds a file of the
    /// host's that is no directory, has no create or unlink of its own
    /// under way, and is not open here (its writes would race the
    /// unlink). Returns whether it did.
    pub(super) fn unlink_locally(&mut self, now: Instant, req: Req, op: &Op) -> bool {
        let Op::Unlink { parent, name } = op else {
            return false;
        };
        let Some(v) = self.vfs.as_ref() else {
            return false;
        };
        let (Some(pnode), Some(inode)) = (
            v.node(*parent),
            v.child(*parent, name).and_then(|c| v.get(c)),
        ) else {
            return false;
        };
        let node = inode.node;
        let busy = inode.kind == FileKind::Dir
            || !inode.bound
            || inode.open > 0
            || self.leases.pending(node)
            || self.handles.values().any(|h| h.node == node)
            || self.writes.get(&node).is_some_and(|w| !w.is_finished())
            || self.leases.answered() >= MAX_UNAPPLIED;
        let Some(l) = self.leases.dirs.get_mut(&pnode) else {
            return false;
        };
        if busy || l.state != State::Held || !l.names.remove(name) {
            return false;
        }
        l.last_local = now;
        let op = LeaseOp::Unlink {
            node,
            name: name.clone(),
        };
        self.removed_locally(now, req, (pnode, *parent), name, op);
        self.pump_stream(now, pnode);
        true
    }

    /// The removal `op` of `name` in `parent` (node `pnode`), answered
    /// here: it joins the stream, and what the host's answer would have
    /// done is done now.
    fn removed_locally(
        &mut self,
        now: Instant,
        req: Req,
        (pnode, parent): (NodeId, Ino),
        name: &Name,
        op: LeaseOp,
    ) {
        let node = match &op {
            LeaseOp::Unlink { node, .. } | LeaseOp::Rmdir { node, .. } => *node,
            LeaseOp::CreateFile { .. } | LeaseOp::SetAttr { .. } => return,
        };
        if let Some(l) = self.leases.dirs.get_mut(&pnode) {
            l.stream.push_back(op);
            l.removed_at = Some(now);
        }
        let name = name.clone();
        self.leases.unlinking.insert(
            node,
            Unlinked {
                dir: pnode,
                name: name.clone(),
                parent,
            },
        );
        self.entries_changed(now, parent);
        self.name_removed(now, parent, &name);
        if let Some(v) = self.vfs.as_mut() {
            v.unlink(parent, &name);
        }
        self.reply(req, Ok(Answer::Done));
    }

    /// Answers `rmdir` in a directory whose lease this client holds if it
    /// can vouch for the result: the name is in its listing and holds a
    /// directory of the host's that this client holds the lease of too,
    /// and whose names this client has all removed (its set is a superset
    /// of what is there, so empty means empty once its own stream is
    /// applied). The `Rmdir` joins the parent's stream, sent only after
    /// the directory's own stream is applied (its unlinks first, as `rm
    /// -r` issued them); the directory's lease is given back. Returns
    /// whether it answered.
    pub(super) fn rmdir_locally(&mut self, now: Instant, req: Req, op: &Op) -> bool {
        let Op::Rmdir { parent, name } = op else {
            return false;
        };
        let Some(v) = self.vfs.as_ref() else {
            return false;
        };
        let (Some(pnode), Some(inode)) = (
            v.node(*parent),
            v.child(*parent, name).and_then(|c| v.get(c)),
        ) else {
            return false;
        };
        let node = inode.node;
        let emptied = self.leases.dirs.get(&node).is_some_and(|l| {
            matches!(l.state, State::Held | State::Returning) && !l.lost && l.names.is_empty()
        });
        let busy = inode.kind != FileKind::Dir
            || !inode.bound
            || !emptied
            || self.leases.pending(node)
            || self.leases.answered() >= MAX_UNAPPLIED;
        let Some(l) = self.leases.dirs.get_mut(&pnode) else {
            return false;
        };
        if busy || l.state != State::Held || !l.names.remove(name) {
            return false;
        }
        l.last_local = now;
        let op = LeaseOp::Rmdir {
            node,
            name: name.clone(),
        };
        self.removed_locally(now, req, (pnode, *parent), name, op);
        // Nothing more is made in it here; its stream goes first.
        self.return_lease(now, node);
        self.pump_stream(now, pnode);
        true
    }

    /// Answers the kernel's change of directory `ino`'s own mode or
    /// times (`set`, owners already mapped) here, if this client holds its
    /// lease and knows its attributes: a `SetAttr` in its stream, after
    /// what was made there. tar sets each directory's times (and mode)
    /// once it has made its files; over a slow link each waited for the
    /// directory's stream to be applied, then for a round trip. Owner and
    /// size changes go the ordinary way, and so does a time "now" (the
    /// host's clock, which this client cannot read: shown from this
    /// one's, the time would jump once applied, as `fold_into_commit`
    /// knows). The kernel gets the attributes this change gives, with
    /// the ordinary time to live; what was set is laid over every answer
    /// until the host has it (`with_local_changes`). Returns whether it
    /// answered.
    pub(super) fn setattr_locally(
        &mut self,
        now: Instant,
        req: Req,
        ino: Ino,
        set: &SetAttr,
    ) -> bool {
        let now_time = [set.atime, set.mtime].contains(&Some(SetTime::Now));
        if set.size.is_some() || set.chowns() || now_time {
            return false;
        }
        let Some(inode) = self.vfs.as_ref().and_then(|v| v.get(ino)) else {
            return false;
        };
        let node = inode.node;
        let busy =
            inode.kind != FileKind::Dir || !inode.bound || self.leases.answered() >= MAX_UNAPPLIED;
        // The answer is made here, as a file's made here is, from the
        // attributes last known with what was set here laid over them
        // (`with_local_changes`).
        let Some(known) = self.cache.peek_attr(node).cloned() else {
            return false;
        };
        // Attributes made stale by a create or unlink here have the
        // mtime from before it: filled fresh with a mode alone, a `stat`
        // showed that old mtime, then the host's (`touch d/f; chmod 700
        // d; stat d`). Unless an mtime set here covers it (tar sets the
        // times first), such a change waits for the host's.
        let fresh =
            self.cache.state(now, &CacheKey::Attr(node)) == crate::cache::EntryState::Cached;
        let mtime_set = set.mtime.is_some()
            || self
                .leases
                .setting
                .get(&node)
                .is_some_and(|s| s.set.mtime.is_some());
        if !fresh && !mtime_set {
            return false;
        }
        let Some(l) = self.leases.dirs.get_mut(&node) else {
            return false;
        };
        if busy || l.state != State::Held || l.lost {
            return false;
        }
        l.last_local = now;
        l.stream.push_back(LeaseOp::SetAttr { set: *set });
        // What the host will hold once it applies it: the times set, and
        // a change time of this machine's clock (the host's, a little
        // later if the clocks agree).
        let t = self.leases.wall(now);
        let s = self.leases.setting.entry(node).or_insert(Setting {
            out: 0,
            set: SetAttr::default(),
            ctime: t,
        });
        s.out += 1;
        s.set.mode = set.mode.or(s.set.mode);
        s.set.atime = set.atime.or(s.set.atime);
        s.set.mtime = set.mtime.or(s.set.mtime);
        s.ctime = t;
        let attr = self.with_local_changes(&known);
        // As the host's answer would: the cache and the kernel take
        // them, fetches under way are dropped (`fill_changed_attr`). Once
        // applied, the host's replace them (`on_applied`).
        self.fill_changed_attr(now, attr.clone());
        let ttl = self.kernel_ttl(crate::cache::Kind::Attr);
        self.reply(req, Ok(Answer::Attr { attr, ttl }));
        self.pump_stream(now, node);
        true
    }

    /// Whether directory `ino` was removed here and its rmdir is not yet
    /// applied.
    pub(super) fn removed_here(&self, ino: Ino) -> bool {
        let node = self.vfs.as_ref().and_then(|v| v.node(ino));
        node.is_some_and(|n| self.leases.unlinking.contains_key(&n))
    }

    /// The directories in `dir` whose own mode or times were set here
    /// and are not yet applied.
    fn set_beneath(&self, dir: NodeId) -> Vec<NodeId> {
        let Some(v) = self.vfs.as_ref() else {
            return Vec::new();
        };
        let parent_of = |node: NodeId| {
            let (parent, _) = v.get(v.ino_of(node)?)?.link()?;
            v.node(*parent)
        };
        self.leases
            .setting
            .keys()
            .copied()
            .filter(|&n| parent_of(n) == Some(dir))
            .collect()
    }

    /// The node named `name` in directory `dir` here, if known.
    fn child_of(&self, dir: NodeId, name: &Name) -> Option<NodeId> {
        let v = self.vfs.as_ref()?;
        let c = v.child(v.ino_of(dir)?, name)?;
        v.get(c).map(|i| i.node)
    }

    /// A write transaction's request for `node`: if it is the whole write
    /// of a file made here and not yet sent, it becomes the file's
    /// `CreateFile` in the stream and is answered at once (the commit is
    /// applied here; the host applies it in order). Otherwise the request
    /// is given back, to be sent (and held, if it must wait).
    pub(super) fn stream_whole(
        &mut self,
        now: Instant,
        node: NodeId,
        op: WriteOp,
        request: Request,
    ) -> Option<Request> {
        let Request::WriteWhole {
            truncate,
            offset,
            data,
            size,
            set,
            ..
        } = &request
        else {
            return Some(request);
        };
        let Some(u) = self.leases.unapplied.get(&node).filter(|u| !u.queued) else {
            return Some(request);
        };
        let end = offset.saturating_add(data.len() as u64);
        if *size > MAX_STREAMED_FILE || end > *size {
            return Some(request);
        }
        // The new file's content: empty, cut or extended to `truncate`,
        // then `data` at `offset`, `size` bytes in all.
        let mut content = vec![0u8; *size as usize];
        let _ = truncate;
        content[*offset as usize..end as usize].copy_from_slice(data);
        let mode = set.mode.map_or(u.mode, |m| m & 0o7777);
        let times = SetAttr {
            size: None,
            mode: None,
            atime: set.atime,
            mtime: set.mtime,
            uid: None,
            gid: None,
        };
        let (dir, name, owner) = (u.dir, u.name.clone(), u.owner);
        let create = LeaseOp::CreateFile {
            node,
            name,
            mode,
            times,
            data: Bytes::from(content),
            owner,
        };
        if let Some(u) = self.leases.unapplied.get_mut(&node) {
            u.queued = true;
        }
        if let Some(l) = self.leases.dirs.get_mut(&dir) {
            l.stream.push_back(create);
        }
        // Answered now: what the host will hold once it applies the file.
        let t = self.leases.wall(now);
        let time = |s: Option<SetTime>| match s {
            Some(SetTime::At(at)) => at,
            _ => t,
        };
        let owner = self.cache.peek_attr(node).map(|a| (a.uid, a.gid));
        let mut attr = local_attr(node, *size, mode, t, owner);
        attr.atime = time(set.atime);
        attr.mtime = time(set.mtime);
        if let Some(w) = self.writes.get_mut(&node) {
            w.handle_reply(now, op, Ok(Reply::Attr(attr)));
        }
        self.pump_stream(now, dir);
        None
    }

    /// Holds `request` if it must wait for files made here to be applied
    /// (see the module docs); gives it back otherwise.
    pub(super) fn hold_for_leases(
        &mut self,
        now: Instant,
        purpose: Purpose,
        request: Request,
    ) -> Option<(Purpose, Request)> {
        if matches!(purpose, Purpose::Lease { .. }) {
            return Some((purpose, request));
        }
        // (A directory's mode or times set here is waited for too: with
        // only those out, a `mkdir`, `rmdir`, rename, `fsync` or fetch
        // of the directory went at once, ahead of its stream.)
        if self.leases.unapplied.is_empty()
            && self.leases.unlinking.is_empty()
            && self.leases.setting.is_empty()
        {
            self.note_names(&request);
            return Some((purpose, request));
        }
        let waiting_for = self.waits_for(&request);
        if waiting_for.is_empty() {
            self.note_names(&request);
            return Some((purpose, request));
        }
        // What it waits for must be on its way: a file still open sends
        // its create now, empty; its writes follow the ordinary way.
        let mut dirs = BTreeSet::new();
        for node in &waiting_for {
            dirs.extend(self.queue_empty(*node));
        }
        self.leases.held.push(Held {
            waiting_for,
            purpose,
            request,
        });
        for dir in dirs {
            self.pump_stream(now, dir);
        }
        None
    }

    /// Puts the create of unapplied `node`, if not yet on its way, in its
    /// directory's stream as it stands (empty: the writes of a file still
    /// open follow the ordinary way once the host has it). Returns the
    /// directory.
    fn queue_empty(&mut self, node: NodeId) -> Option<NodeId> {
        let u = self.leases.unapplied.get_mut(&node)?;
        if !u.queued {
            u.queued = true;
            let create = LeaseOp::CreateFile {
                node,
                name: u.name.clone(),
                mode: u.mode,
                times: SetAttr::default(),
                data: Bytes::new(),
                owner: u.owner,
            };
            if let Some(l) = self.leases.dirs.get_mut(&u.dir) {
                l.stream.push_back(create);
            }
        }
        Some(u.dir)
    }

    /// The last handle on `node` closed: a file made here that nothing
    /// wrote (`touch`) goes in the stream as it is.
    pub(super) fn closed_locally(&mut self, now: Instant, node: NodeId) {
        let open = self.handles.values().any(|h| h.node == node);
        let writing = self.writes.get(&node).is_some_and(|w| !w.is_finished());
        if open || writing {
            return;
        }
        if let Some(dir) = self.queue_empty(node) {
            self.pump_stream(now, dir);
        }
    }

    /// The unapplied files `request` must wait for.
    fn waits_for(&self, request: &Request) -> BTreeSet<NodeId> {
        let leases = &self.leases;
        let node = |n: &NodeId| leases.pending(*n).then_some(*n);
        // The file made as `name`, or the file whose unlink as `name` is
        // not yet applied (a new name must wait for the old to go).
        let named = |dir: &NodeId, name: &Name| {
            let made = leases.unapplied.iter().map(|(n, u)| (n, u.dir, &u.name));
            let gone = leases.unlinking.iter().map(|(n, u)| (n, u.dir, &u.name));
            made.chain(gone)
                .filter(|(_, d, nm)| d == dir && *nm == name)
                .map(|(n, _, _)| *n)
                .collect::<BTreeSet<NodeId>>()
        };
        let all_in = |dir: &NodeId| -> BTreeSet<NodeId> { leases.pending_in(*dir).collect() };
        // A change of a directory's entries moves its times: after a
        // mode or times set here, it must reach the host after them.
        let set = |dir: &NodeId| leases.setting.contains_key(dir).then_some(*dir);
        match request {
            // A directory's times and size move with what is made and
            // unlinked in it: its attributes come after those.
            Request::GetAttr { node: n } => {
                let mut w = all_in(n);
                w.extend(node(n));
                w
            }
            Request::Open { node: n, .. }
            | Request::Readlink { node: n }
            | Request::BeginWrite { node: n, .. }
            | Request::WriteWhole { node: n, .. } => node(n).into_iter().collect(),
            Request::SetAttr { node: n, .. } => {
                // Times set on a directory come after the files made in
                // it, as on a local disk (tar sets them last).
                let mut w = all_in(n);
                w.extend(node(n));
                w
            }
            Request::Read {
                file: FileRef::Node(n),
                ..
            } => node(n).into_iter().collect(),
            Request::CopyWrite {
                from: FileRef::Node(n),
                ..
            } => node(n).into_iter().collect(),
            Request::AcquireLock { scope, .. } => match *scope {
                LockScope::File(n) => node(&n).into_iter().collect(),
                LockScope::Directory(d) | LockScope::Subtree(d) => all_in(&d),
            },
            // Its answer carries the attributes the host has: not before
            // it has what was set here (answered after the batch that
            // applies it, it would undo it for the kernel).
            Request::Lookup { parent, name } => {
                let mut w = named(parent, name);
                w.extend(self.child_of(*parent, name).and_then(|c| set(&c)));
                w
            }
            Request::Create { parent, name, .. }
            | Request::Mkdir { parent, name, .. }
            | Request::Symlink { parent, name, .. }
            | Request::Mknod { parent, name, .. }
            | Request::Unlink { parent, name } => {
                let mut w = named(parent, name);
                w.extend(set(parent));
                w
            }
            // A directory is empty at the host once what was unlinked in
            // it here is applied.
            Request::Rmdir { parent, name } => {
                let mut w = named(parent, name);
                w.extend(set(parent));
                if let Some(d) = self.child_of(*parent, name) {
                    w.extend(all_in(&d));
                }
                w
            }
            Request::Rename {
                parent,
                name,
                new_parent,
                new_name,
            } => {
                let mut w = named(parent, name);
                w.extend(named(new_parent, new_name));
                w.extend(set(parent).into_iter().chain(set(new_parent)));
                // A directory the rename replaces must hold at the host
                // what it holds here (a file made in it makes the rename
                // ENOTEMPTY, as on a local disk), and one it moves takes
                // what was made in it along.
                for (dir, n) in [(parent, name), (new_parent, new_name)] {
                    if let Some(d) = self.child_of(*dir, n) {
                        w.extend(all_in(&d));
                    }
                }
                w
            }
            Request::Link {
                node: n,
                parent,
                name,
            } => node(n)
                .into_iter()
                .chain(named(parent, name))
                .chain(set(parent))
                .collect(),
            Request::ReadDir { dir, .. } => {
                let mut w = all_in(dir);
                w.extend(self.set_beneath(*dir));
                w
            }
            // Durable must include everything answered before it.
            Request::Sync => leases
                .unapplied
                .keys()
                .chain(leases.unlinking.keys())
                .chain(leases.setting.keys())
                .copied()
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// A request this client sends about names in a leased directory:
    /// the names join the lease's set (a superset of what is there).
    fn note_names(&mut self, request: &Request) {
        let (dir, name) = match request {
            Request::Create { parent, name, .. }
            | Request::Mkdir { parent, name, .. }
            | Request::Symlink { parent, name, .. }
            | Request::Mknod { parent, name, .. }
            | Request::Link { parent, name, .. } => (parent, name),
            Request::Rename {
                new_parent,
                new_name,
                ..
            } => (new_parent, new_name),
            _ => return,
        };
        if let Some(l) = self.leases.dirs.get_mut(dir) {
            l.names.insert(name.clone());
        }
    }

    /// Sends the next batch of `dir`'s stream if none is out; gives the
    /// lease back once a returning lease's stream is done.
    fn pump_stream(&mut self, now: Instant, dir: NodeId) {
        let Some(l) = self.leases.dirs.get_mut(&dir) else {
            return;
        };
        if l.in_flight {
            return;
        }
        if l.stream.is_empty() {
            if l.state == State::Returning && self.leases.pending_in(dir).next().is_none() {
                self.end_lease(now, dir);
            }
            return;
        }
        let mut ops = Vec::new();
        let mut bytes = 0;
        let pending = |d: NodeId| {
            let made = self.leases.unapplied.values().any(|u| u.dir == d);
            let set = self.leases.setting.contains_key(&d);
            made || set || self.leases.unlinking.values().any(|u| u.dir == d)
        };
        // A set of the directory's own mode or times (or a run of them)
        // ends its batch: the batch's last result is then what the
        // directory is once it is applied, which `on_applied` keeps and
        // the host's check of its watcher's report compares with (a
        // create after it in the same batch moved the mtime past that
        // result: announced, and the parent's lease recalled).
        let mut after_set = false;
        while let Some(op) = l.stream.front() {
            // A directory's removal waits for what was done in it.
            if let LeaseOp::Rmdir { node, .. } = op
                && pending(*node)
            {
                break;
            }
            let is_set = matches!(op, LeaseOp::SetAttr { .. });
            if after_set && !is_set {
                break;
            }
            let size = match op {
                LeaseOp::CreateFile { data, .. } => data.len(),
                LeaseOp::Unlink { .. } | LeaseOp::Rmdir { .. } | LeaseOp::SetAttr { .. } => 0,
            };
            let full = bytes + size > MAX_BATCH_BYTES || ops.len() >= MAX_BATCH_OPS;
            if !ops.is_empty() && full {
                break;
            }
            bytes += size;
            after_set = is_set;
            ops.extend(l.stream.pop_front());
        }
        if ops.is_empty() {
            return;
        }
        l.in_flight = true;
        let tag = self.leases.next_tag;
        self.leases.next_tag += 1;
        let request = Request::Apply {
            dir,
            tag,
            ops: ops.clone(),
        };
        self.lease_send(now, dir, LeaseStep::Apply { tag, ops }, request);
    }

    /// Gives the lease on `dir` back (its stream is applied).
    fn end_lease(&mut self, now: Instant, dir: NodeId) {
        let Some(l) = self.leases.dirs.remove(&dir) else {
            return;
        };
        if let (Some(token), false) = (l.token, l.lost) {
            // Sent after the leases map forgot it: the reply needs no lease.
            self.lease_send(now, dir, LeaseStep::Release, Request::ReleaseLock { token });
        }
    }

    /// Starts giving the lease on `dir` back.
    fn return_lease(&mut self, now: Instant, dir: NodeId) {
        let Some(l) = self.leases.dirs.get_mut(&dir) else {
            return;
        };
        l.state = State::Returning;
        // Files still open go now, empty; their writes follow the
        // ordinary way once the host has them.
        let open: Vec<NodeId> = self
            .leases
            .unapplied
            .iter()
            .filter(|(_, u)| u.dir == dir && !u.queued)
            .map(|(n, _)| *n)
            .collect();
        for node in open {
            self.queue_empty(node);
        }
        self.pump_stream(now, dir);
    }

    /// The host recalls lease `token`.
    pub(super) fn on_recall(&mut self, now: Instant, token: LockToken) {
        let dir = self
            .leases
            .dirs
            .iter()
            .find(|(_, l)| l.token == Some(token))
            .map(|(d, _)| *d);
        match dir {
            Some(dir) => self.return_lease(now, dir),
            None => {
                if self.leases.recalled_early.len() == MAX_EARLY_RECALLS {
                    self.leases.recalled_early.pop_front();
                }
                self.leases.recalled_early.push_back(token);
            }
        }
    }

    /// Whether lease `token`, just granted, was recalled before its grant
    /// came (forgetting the recall).
    fn recalled_early(&mut self, token: LockToken) -> bool {
        let at = self.leases.recalled_early.iter().position(|t| *t == token);
        at.and_then(|i| self.leases.recalled_early.remove(i))
            .is_some()
    }

    /// Lease timers: refreshes, and idle leases given back.
    pub(super) fn lease_timeout(&mut self, now: Instant) {
        let dirs: Vec<NodeId> = self.leases.dirs.keys().copied().collect();
        for dir in dirs {
            let Some(l) = self.leases.dirs.get_mut(&dir) else {
                continue;
            };
            let Some(token) = l.token else {
                continue;
            };
            if l.lost {
                continue;
            }
            if now >= l.expires_at {
                // Not refreshed in time: the host may have given the
                // directory to someone else. What was answered still goes.
                l.lost = true;
                self.return_lease(now, dir);
                continue;
            }
            if now >= l.refresh_at && !l.refreshing {
                l.refreshing = true;
                self.lease_send(now, dir, LeaseStep::Refresh, Request::RefreshLock { token });
            }
            if let Some(l) = self.leases.dirs.get(&dir)
                && l.state == State::Held
                && now >= l.last_local + IDLE
            {
                self.return_lease(now, dir);
            }
        }
    }

    /// The reply to a lease's request.
    pub(super) fn on_lease_reply(
        &mut self,
        now: Instant,
        dir: NodeId,
        step: LeaseStep,
        result: Result<Reply, Errno>,
    ) {
        match step {
            LeaseStep::Take => self.on_granted(now, dir, result),
            LeaseStep::Listing { mut acc } => match result {
                Ok(Reply::DirPage { entries, next }) => {
                    acc.extend(entries);
                    if acc.len() > self.cfg.max_dir_entries {
                        return self.return_lease(now, dir);
                    }
                    match next {
                        Some(cookie) => self.lease_send(
                            now,
                            dir,
                            LeaseStep::Listing { acc },
                            Request::ReadDir { dir, cookie },
                        ),
                        None => self.listed(now, dir, acc),
                    }
                }
                _ => self.return_lease(now, dir),
            },
            LeaseStep::Apply { ops, .. } => self.on_applied(now, dir, &ops, result),
            LeaseStep::Refresh => {
                let Some(l) = self.leases.dirs.get_mut(&dir) else {
                    return;
                };
                l.refreshing = false;
                match result {
                    Ok(Reply::LockGranted { ttl_ms, .. }) => {
                        let ttl = Duration::from_millis(u64::from(ttl_ms));
                        // From when the refresh was due, which its send
                        // (and so the host's new expiry) cannot precede.
                        l.expires_at = l.refresh_at + ttl;
                        l.refresh_at = now + ttl / 2;
                    }
                    _ => {
                        l.lost = true;
                        self.return_lease(now, dir);
                    }
                }
            }
            LeaseStep::Release => {}
        }
    }

    fn on_granted(&mut self, now: Instant, dir: NodeId, result: Result<Reply, Errno>) {
        let Some(l) = self.leases.dirs.get_mut(&dir) else {
            // Given back before the grant came (a new session): release.
            if let Ok(Reply::Leased(LeaseGrant { token, .. })) = result {
                self.lease_send(now, dir, LeaseStep::Release, Request::ReleaseLock { token });
            }
            return;
        };
        match result {
            Ok(Reply::Leased(grant)) if l.token.is_none() || l.token == Some(grant.token) => {
                if l.token.is_none() {
                    l.granted(now, &grant);
                    if self.recalled_early(grant.token) {
                        return self.return_lease(now, dir);
                    }
                    let Some(l) = self.leases.dirs.get_mut(&dir) else {
                        return;
                    };
                    if l.state == State::Returning {
                        return self.pump_stream(now, dir);
                    }
                    l.state = State::Listing;
                    // The listing read under the lease is complete: nobody
                    // can change the entries without recalling it first.
                    self.lease_send(
                        now,
                        dir,
                        LeaseStep::Listing { acc: Vec::new() },
                        Request::ReadDir { dir, cookie: 0 },
                    );
                } else {
                    l.asking_more = false;
                    l.more.push_back(grant.nodes);
                }
            }
            _ if l.token.is_some() => l.asking_more = false,
            _ => {
                self.leases.dirs.remove(&dir);
                self.leases.refused_until.insert(dir, now + REFUSED_BACKOFF);
            }
        }
    }

    /// The lease's listing is read: creates are answered here from now on.
    fn listed(&mut self, now: Instant, dir: NodeId, entries: Vec<DirEntry>) {
        let Some(l) = self.leases.dirs.get_mut(&dir) else {
            return;
        };
        if l.state != State::Listing {
            return self.pump_stream(now, dir);
        }
        // Names this client asked for while the listing was read may be
        // missing from it: they stay in the set. The listing is cached
        // only if there are none (it would lack them).
        let noted = std::mem::take(&mut l.names);
        l.names = entries.iter().map(|e| e.name.clone()).collect();
        let fresh = noted.is_subset(&l.names);
        l.names.extend(noted);
        l.state = State::Held;
        l.last_local = now;
        if fresh {
            let _ = self
                .cache
                .fill(now, CacheKey::Dir(dir), Value::Dir(entries.into()));
        }
    }

    fn on_applied(
        &mut self,
        now: Instant,
        dir: NodeId,
        ops: &[LeaseOp],
        result: Result<Reply, Errno>,
    ) {
        let results: Vec<Result<Attr, Errno>> = match result {
            Ok(Reply::Applied(r)) if r.len() == ops.len() => r,
            Ok(_) => ops.iter().map(|_| Err(Errno::Io)).collect(),
            Err(e) => ops.iter().map(|_| Err(e)).collect(),
        };
        if let Some(l) = self.leases.dirs.get_mut(&dir) {
            l.in_flight = false;
        }
        let last = results.last().cloned();
        for (op, r) in ops.iter().zip(results) {
            match (op, r) {
                (LeaseOp::CreateFile { node, .. }, Ok(attr)) if attr.node == *node => {
                    self.file_applied(now, attr)
                }
                (LeaseOp::CreateFile { node, .. }, Ok(_)) => self.file_refused(*node, Errno::Io),
                (LeaseOp::CreateFile { node, .. }, Err(e)) => self.file_refused(*node, e),
                // Gone either way: the name is not there.
                (
                    LeaseOp::Unlink { node, .. } | LeaseOp::Rmdir { node, .. },
                    Ok(_) | Err(Errno::NoEnt),
                ) => self.unlink_applied(now, *node),
                (LeaseOp::Unlink { node, .. } | LeaseOp::Rmdir { node, .. }, Err(e)) => {
                    self.unlink_refused(now, *node, e)
                }
                (LeaseOp::SetAttr { .. }, r) => self.set_applied(dir, r.err()),
            }
        }
        // The directory's times and link count moved at the host.
        self.cache.invalidate(now, dir, Invalidation::Attr);
        // A batch that ends with its mode or times set says what the
        // directory now is: taken as the answer to a setattr is, so that
        // an answer the host gave before it applied them, arriving late,
        // does not undo them (`not_older`). Only while the lease still
        // holds: a batch re-sent after a reconnect is answered from the
        // host's record, as old as the batch, and once the lease may have
        // lapsed another client may have changed the directory since
        // (its invalidation lost with the connection).
        let held = self.leases.dirs.get(&dir).is_some_and(|l| !l.lost);
        if let (Some(LeaseOp::SetAttr { .. }), Some(Ok(attr)), true) = (ops.last(), &last, held) {
            self.fill_changed_attr(now, attr.clone());
        }
        self.release_held(now);
        self.pump_stream(now, dir);
        // A removal of this directory waiting in its parent's stream.
        let parents: Vec<NodeId> = self
            .leases
            .dirs
            .iter()
            .filter(|(_, l)| {
                l.stream
                    .iter()
                    .any(|op| matches!(op, LeaseOp::Rmdir { node, .. } if *node == dir))
            })
            .map(|(d, _)| *d)
            .collect();
        for parent in parents {
            self.pump_stream(now, parent);
        }
        debug_assert_eq!(self.leases.check(), Ok(()));
    }

    /// The host has `attr`'s file: it is an ordinary file from now on.
    fn file_applied(&mut self, now: Instant, attr: Attr) {
        let node = attr.node;
        let Some(u) = self.leases.unapplied.remove(&node) else {
            return;
        };
        // The listing holds what this client made up at the create: it
        // must not be served again, not even stale while the host is
        // unreachable.
        let entry = DirEntry {
            name: u.name,
            attr: attr.clone(),
        };
        self.cache.add_entry(now, u.dir, entry);
        let listing = CacheKey::Dir(u.dir);
        if self.cache.state(now, &listing) != crate::cache::EntryState::Cached {
            self.cache.remove(&listing);
        }
        // The host's attributes replace those made here, unless a write
        // of this client is under way (its commit brings newer ones).
        self.files.insert(attr.key, node);
        if let Some(v) = self.vfs.as_mut()
            && let Some(ino) = v.ino_of(node)
        {
            v.set_key(ino, attr.key);
        }
        for h in self.handles.values_mut() {
            if h.node == node {
                h.attr = attr.clone();
            }
        }
        if let Some(w) = self.writes.get_mut(&node) {
            w.rebase(attr.version);
        }
        let _ = self
            .cache
            .fill(now, CacheKey::Attr(node), Value::Attr(Arc::new(attr)));
    }

    /// The host refused a file made here: a delayed error (module docs).
    fn file_refused(&mut self, node: NodeId, errno: Errno) {
        let Some(u) = self.leases.unapplied.remove(&node) else {
            return;
        };
        let mut told = false;
        for h in self.handles.values_mut() {
            if h.node == node {
                h.error.get_or_insert(errno);
                told = true;
            }
        }
        if !told {
            self.out
                .push_back(ClientOutput::Event(ClientEvent::CreateLost {
                    name: u.name.clone(),
                    errno,
                }));
        }
        // The name is not what this client said: everyone forgets it.
        self.cache.remove(&CacheKey::Attr(node));
        self.cache.remove(&CacheKey::Dir(u.dir));
        if let Some(v) = self.vfs.as_mut() {
            v.node_gone(node);
        }
        self.out.push_back(ClientOutput::InvalidateEntry {
            parent: u.parent,
            name: u.name,
        });
        self.out
            .push_back(ClientOutput::InvalidateInode { ino: u.ino });
    }

    /// The host removed a name this client unlinked: what it knew of the
    /// file is out of date (its link count moved).
    fn unlink_applied(&mut self, now: Instant, node: NodeId) {
        if self.leases.unlinking.remove(&node).is_some() {
            self.cache.invalidate(now, node, Invalidation::Attr);
        }
    }

    /// The host refused an unlink answered here: the name is back, for
    /// this client and its kernel, and the mount says so.
    fn unlink_refused(&mut self, now: Instant, node: NodeId, errno: Errno) {
        let Some(u) = self.leases.unlinking.remove(&node) else {
            return;
        };
        if let Some(l) = self.leases.dirs.get_mut(&u.dir) {
            l.names.insert(u.name.clone());
        }
        self.out
            .push_back(ClientOutput::Event(ClientEvent::RemoveLost {
                name: u.name.clone(),
                errno,
            }));
        self.cache.invalidate(now, u.dir, Invalidation::Entries);
        self.cache.invalidate(now, node, Invalidation::Attr);
        self.out.push_back(ClientOutput::InvalidateEntry {
            parent: u.parent,
            name: u.name,
        });
    }

    /// The host applied (or, with `refused`, did not) a change of `dir`'s
    /// mode or times answered here: the mount says so if it did not (the
    /// directory's attributes are fetched again either way, see
    /// [`Self::on_applied`]).
    fn set_applied(&mut self, dir: NodeId, refused: Option<Errno>) {
        // Not known: a new session dropped it, and `leases_lost` reported
        // it already (its batch, requeued, fails after that).
        let Some(s) = self.leases.setting.get_mut(&dir) else {
            return;
        };
        s.out -= 1;
        if s.out == 0 {
            self.leases.setting.remove(&dir);
        }
        if let Some(errno) = refused {
            // The cache holds what was answered here (`setattr_locally`):
            // made up, and now refused. Marked stale only, it would be
            // served while the host is unreachable, and taken as the
            // known attributes of the next set here.
            self.cache.remove(&CacheKey::Attr(dir));
            self.attr_lost(dir, errno);
        }
    }

    /// Tells the mount that a mode or times of directory `dir` answered
    /// here was not applied.
    fn attr_lost(&mut self, dir: NodeId, errno: Errno) {
        let v = self.vfs.as_ref();
        let ino = v.and_then(|v| v.ino_of(dir));
        let name = ino
            .and_then(|ino| v.and_then(|v| v.get(ino)))
            .and_then(|i| i.link().map(|(_, n)| n.clone()));
        self.out
            .push_back(ClientOutput::Event(ClientEvent::AttrLost { name, errno }));
        // The kernel keeps what it was answered for its ttl: not what
        // the host refused.
        if let Some(ino) = ino {
            self.out.push_back(ClientOutput::InvalidateInode { ino });
        }
    }

    /// Sends the held requests that no longer wait (in the order held).
    fn release_held(&mut self, now: Instant) {
        let leases = &self.leases;
        let waiting: Vec<BTreeSet<NodeId>> = leases
            .held
            .iter()
            .map(|h| {
                h.waiting_for
                    .iter()
                    .copied()
                    .filter(|n| leases.pending(*n))
                    .collect()
            })
            .collect();
        for (h, w) in self.leases.held.iter_mut().zip(waiting) {
            h.waiting_for = w;
        }
        let (ready, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.leases.held)
            .into_iter()
            .partition(|h| h.waiting_for.is_empty());
        self.leases.held = keep;
        for mut h in ready {
            // A whole write built while the file was this client's alone
            // names no version; it builds on the one the host applied.
            if let Request::WriteWhole {
                node,
                base: base @ None,
                ..
            } = &mut h.request
                && let Some(a) = self.cache.peek_attr(*node)
                && a.key.dev != LOCAL_DEV
            {
                *base = Some(a.version);
            }
            self.send(now, h.purpose, h.request);
        }
    }

    /// A new session (the host restarted): leases, and the files not yet
    /// applied, are gone with the old one.
    pub(super) fn leases_lost(&mut self, now: Instant) {
        let dirs = std::mem::take(&mut self.leases.dirs);
        let _ = dirs;
        // Their node ids are the old session's: they run once inodes are
        // re-bound, with the other requests that waited.
        for (req, op, ..) in std::mem::take(&mut self.leases.waiting) {
            self.deferred.push_back((req, op));
        }
        let nodes: Vec<NodeId> = self.leases.unapplied.keys().copied().collect();
        for node in nodes {
            self.file_refused(node, Errno::Io);
        }
        let gone: Vec<NodeId> = self.leases.unlinking.keys().copied().collect();
        for node in gone {
            self.unlink_refused(now, node, Errno::Io);
        }
        for dir in std::mem::take(&mut self.leases.setting).into_keys() {
            self.cache.invalidate(now, dir, Invalidation::Attr);
            self.attr_lost(dir, Errno::Io);
        }
        for h in std::mem::take(&mut self.leases.held) {
            self.fail_purpose(now, h.purpose, Errno::Stale);
        }
    }

    /// A lease request that will never be answered.
    pub(super) fn lease_failed(
        &mut self,
        now: Instant,
        dir: NodeId,
        step: LeaseStep,
        errno: Errno,
    ) {
        match step {
            // Sent again under its tag: if the host ran it, it answers
            // from its record.
            LeaseStep::Apply { tag, ops } if errno == Errno::TimedOut => {
                let request = Request::Apply {
                    dir,
                    tag,
                    ops: ops.clone(),
                };
                self.lease_send(now, dir, LeaseStep::Apply { tag, ops }, request);
            }
            step => self.on_lease_reply(now, dir, step, Err(errno)),
        }
    }
}
