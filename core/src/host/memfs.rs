//! An in-memory disk that executes [`FsOp`]s exactly as the shell must:
//! beneath the root, never following a symlink, staging files volatile
//! until committed, mutations durable at the next [`FsOp::Sync`].
//!
//! It is the reference for the shell's file executor and the disk of the
//! simulations: [`MemFs::crash`] throws away everything a real crash could
//! and nothing else: open handles, staging files, and the mutations since
//! the last sync beyond some prefix of them. A journaling file system
//! (ext4's jbd2) commits metadata in order, so what a crash keeps is the
//! state after some prefix of the operations; each of those states holds
//! every file at one whole version, because a commit's bytes reach the
//! disk before its rename does (docs/filesystem.md, "Durability"). For the simulations it
//! also plays what happens to a real disk behind the core's back: local
//! programs ([`MemFs::local_replace`] and its neighbours), a disk that
//! fills up ([`MemFs::set_capacity`]) and one that fails
//! ([`MemFs::fail_next`]).
//!
//! Its clock ticks: every operation happens at a later time than the one
//! before (at least by a nanosecond), so a change in place always moves
//! the file's modification time, as a [`FileStamp`] needs.

use super::fsop::{
    BatchOp, FileStamp, FsAttr, FsHandle, FsOk, FsOp, FsResult, LockHolder, NewFile, ReadFrom,
    RelPath,
};
use crate::proto::{
    ByteRange, CAPABILITY_XATTR, Errno, FileKey, FileKind, LockKind, Name, Owner, SetTime, StatFs,
    Timestamp, TxnId, XattrSet,
};
use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Inode {
    kind: FileKind,
    data: Vec<u8>,
    target: Vec<u8>,
    mode: u32,
    nlink: u32,
    /// Owner and group: those of the host's user (0) unless changed.
    uid: u32,
    gid: u32,
    /// The device of a device node.
    rdev: u64,
    atime: Timestamp,
    mtime: Timestamp,
    ctime: Timestamp,
    children: BTreeMap<Name, u64>,
    /// Extended attributes.
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// An in-memory file system.
#[derive(Clone, Debug)]
pub struct MemFs {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Open handles: they keep an inode alive after unlink.
    handles: BTreeMap<FsHandle, u64>,
    /// Staged copies, by transaction (volatile).
    staged: BTreeMap<TxnId, Vec<u8>>,
    /// The time of the operation under way.
    now: Timestamp,
    /// No operation happens before this (see [`MemFs::set_time`]).
    floor: Timestamp,
    /// Largest file accepted (keeps a hostile size from allocating).
    max_file: u64,
    /// Bytes of file data (files and staging copies) the disk holds at
    /// most; `None`: unlimited.
    capacity: Option<u64>,
    /// The next this many data writes fail with this errno.
    failing: Option<(Errno, u32)>,
    /// What the disk holds for certain: the tree at the last sync.
    durable: Tree,
    /// The tree after each mutation since the last sync, oldest first
    /// (thinned out past [`MAX_CRASH_POINTS`]): the states a crash may
    /// leave beside `durable`.
    since_sync: Vec<Tree>,
    /// Record locks on files (volatile, as the kernel's): the clients'
    /// the host holds ([`FsOp::HoldLocks`]), by holder: the inode and the
    /// ranges.
    held: BTreeMap<LockHolder, (u64, Locks)>,
    /// Local programs' record locks, by inode ([`MemFs::local_lock`]).
    local_locks: BTreeMap<u64, Locks>,
}

/// Record locks of one owner on one file.
type Locks = Vec<(ByteRange, LockKind)>;

/// Whether two sets of record locks of different owners conflict.
fn locks_conflict(a: &[(ByteRange, LockKind)], b: &[(ByteRange, LockKind)]) -> bool {
    a.iter().any(|(ra, ka)| {
        b.iter().any(|(rb, kb)| {
            ra.overlaps(rb) && !matches!((ka, kb), (LockKind::Shared, LockKind::Shared))
        })
    })
}

/// The persistent part of the disk: inodes and the next inode number.
#[derive(Clone, Debug)]
struct Tree {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
}

/// Crash points kept between syncs: when more accumulate, every other one
/// is dropped, so a long window costs bounded memory and a crash still
/// lands anywhere in it.
const MAX_CRASH_POINTS: usize = 32;

const ROOT: u64 = 1;
const DEV: u64 = 7;

impl MemFs {
    /// An empty root directory; files may grow to `max_file` bytes.
    pub fn new(max_file: u64) -> Self {
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::new(FileKind::Dir, 0o755, Timestamp::default()));
        MemFs {
            durable: Tree {
                inodes: inodes.clone(),
                next_ino: ROOT + 1,
            },
            since_sync: Vec::new(),
            inodes,
            next_ino: ROOT + 1,
            handles: BTreeMap::new(),
            staged: BTreeMap::new(),
            now: Timestamp::default(),
            floor: Timestamp::default(),
            max_file,
            capacity: None,
            failing: None,
            held: BTreeMap::new(),
            local_locks: BTreeMap::new(),
        }
    }

    /// A local program locks `range` of the file at `path` (`fcntl`
    /// `F_SETLK`, one program per file): `Ok(false)` if a lock the host
    /// holds for a client is in the way.
    pub fn local_lock(
        &mut self,
        path: &RelPath,
        range: ByteRange,
        kind: LockKind,
    ) -> Result<bool, Errno> {
        let ino = self.resolve(path)?;
        let wanted = [(range, kind)];
        if self
            .held
            .values()
            .any(|(i, locks)| *i == ino && locks_conflict(locks, &wanted))
        {
            return Ok(false);
        }
        self.local_locks.entry(ino).or_default().push((range, kind));
        Ok(true)
    }

    /// Whether a local program holds a lock on the file now at `path`
    /// (one it took on a file since replaced there is on that file).
    pub fn local_locked(&self, path: &RelPath) -> bool {
        self.resolve(path)
            .is_ok_and(|ino| self.local_locks.get(&ino).is_some_and(|l| !l.is_empty()))
    }

    /// The local program of the file at `path` lets go of its locks.
    pub fn local_unlock(&mut self, path: &RelPath) -> Result<(), Errno> {
        let ino = self.resolve(path)?;
        self.local_locks.remove(&ino);
        Ok(())
    }

    /// The ranges the host holds for client lock owners on the file at
    /// `path`, all owners together.
    pub fn held_locks(&self, path: &RelPath) -> Vec<(ByteRange, LockKind)> {
        let Ok(ino) = self.resolve(path) else {
            return Vec::new();
        };
        self.held
            .values()
            .filter(|(i, _)| *i == ino)
            .flat_map(|(_, locks)| locks.iter().copied())
            .collect()
    }

    /// [`FsOp::HoldLocks`].
    fn hold_locks(
        &mut self,
        path: Option<RelPath>,
        holder: LockHolder,
        key: Option<FileKey>,
        locks: Vec<(ByteRange, LockKind)>,
    ) -> FsResult {
        if locks.is_empty() {
            self.held.remove(&holder);
            return Ok(FsOk::Done);
        }
        let ino = self.resolve(path.as_ref().ok_or(Errno::NoEnt)?)?;
        match self.inodes.get(&ino).map(|n| n.kind) {
            Some(FileKind::File) => {}
            Some(FileKind::Dir) => return Err(Errno::IsDir),
            Some(FileKind::Symlink) => return Err(Errno::Loop),
            // Never opened: a special file is no file to lock.
            _ => return Err(Errno::Perm),
        }
        if key.is_some_and(|k| k != (FileKey { dev: DEV, ino })) {
            return Err(Errno::Stale);
        }
        // Another holder's locks are another open file description's, and
        // conflict as the kernel's do (the host core never asks for such
        // a conflict between clients, whose table decides first).
        let others = self
            .held
            .iter()
            .filter(|(h, (i, _))| **h != holder && *i == ino)
            .any(|(_, (_, l))| locks_conflict(l, &locks));
        if others
            || self
                .local_locks
                .get(&ino)
                .is_some_and(|l| locks_conflict(l, &locks))
        {
            return Err(Errno::Again);
        }
        self.held.insert(holder, (ino, locks));
        Ok(FsOk::Done)
    }

    /// Sets the clock used for file times: operations from now on happen
    /// at `now` or later (each still a tick after the one before).
    pub fn set_time(&mut self, now: Timestamp) {
        self.floor = now;
    }

    /// The time of the next operation: the floor, or a nanosecond after
    /// the last one.
    fn tick(&mut self) {
        let next = if self.now.nanos >= 999_999_999 {
            Timestamp {
                secs: self.now.secs.saturating_add(1),
                nanos: 0,
            }
        } else {
            Timestamp {
                secs: self.now.secs,
                nanos: self.now.nanos + 1,
            }
        };
        self.now = next.max(self.floor);
    }

    /// A disk of `bytes` bytes of file data (files and staging copies
    /// together): a write beyond fails with ENOSPC. `None`: unlimited.
    pub fn set_capacity(&mut self, bytes: Option<u64>) {
        self.capacity = bytes;
    }

    /// The next `count` data writes (to a staging copy, or a commit) fail
    /// with `errno`, as a failing disk's would.
    pub fn fail_next(&mut self, errno: Errno, count: u32) {
        self.failing = (count > 0).then_some((errno, count));
    }

    /// Bytes of file data held, staging copies included.
    pub fn used(&self) -> u64 {
        let files: usize = self
            .inodes
            .values()
            .filter(|n| n.kind == FileKind::File)
            .map(|n| n.data.len())
            .sum();
        let staged: usize = self.staged.values().map(Vec::len).sum();
        (files + staged) as u64
    }

    /// Fails a data write that would take the disk from `before` to
    /// `after` bytes of data, if the disk is full or failing.
    fn room(&mut self, before: usize, after: usize) -> Result<(), Errno> {
        if let Some((errno, left)) = self.failing {
            self.failing = (left > 1).then_some((errno, left - 1));
            return Err(errno);
        }
        let grow = after.saturating_sub(before) as u64;
        match self.capacity {
            Some(cap) if grow > 0 && self.used().saturating_add(grow) > cap => Err(Errno::NoSpc),
            _ => Ok(()),
        }
    }

    // ------------------------------------------------ local programs

    /// A local program saves `path` atomically, as editors do: writes a new
    /// file beside it and renames it over (a new identity). The parent
    /// must exist; a directory there is left alone (EISDIR).
    pub fn local_replace(&mut self, path: &RelPath, data: &[u8]) -> Result<(), Errno> {
        self.tick();
        let (dir, name) = self.parent_of(path)?;
        let mode = match self.inodes.get(&dir).and_then(|d| d.children.get(name)) {
            Some(&old) => {
                let n = self.inodes.get(&old).ok_or(Errno::NoEnt)?;
                if n.kind == FileKind::Dir {
                    return Err(Errno::IsDir);
                }
                let mode = n.mode;
                self.detach(dir, name);
                mode
            }
            None => 0o644,
        };
        let mut node = Inode::new(FileKind::File, mode, self.now);
        node.data = data.to_vec();
        self.add(dir, name, node)?;
        self.collect();
        Ok(())
    }

    /// A local program appends to `path` in place.
    pub fn local_append(&mut self, path: &RelPath, data: &[u8]) -> Result<(), Errno> {
        self.tick();
        let ino = self.resolve(path)?;
        let now = self.now;
        let n = self.inodes.get_mut(&ino).ok_or(Errno::NoEnt)?;
        if n.kind != FileKind::File {
            return Err(Errno::IsDir);
        }
        n.data.extend_from_slice(data);
        n.mtime = now;
        n.ctime = now;
        Ok(())
    }

    /// A local program truncates `path` in place.
    pub fn local_truncate(&mut self, path: &RelPath, size: u64) -> Result<(), Errno> {
        self.execute(FsOp::SetAttr {
            path: path.clone(),
            set: crate::proto::SetAttr {
                size: Some(size),
                ..Default::default()
            },
        })
        .map(|_| ())
    }

    /// A local program deletes `path` (a file or symlink).
    pub fn local_delete(&mut self, path: &RelPath) -> Result<(), Errno> {
        self.execute(FsOp::Unlink { path: path.clone() })
            .map(|_| ())
    }

    /// A local program gives the file at `from` another name, `to` (a
    /// hard link).
    pub fn local_link(&mut self, from: &RelPath, to: &RelPath) -> Result<(), Errno> {
        let key = match self.execute(FsOp::Stat { path: from.clone() })? {
            FsOk::Attr(a) => a.key,
            _ => return Err(Errno::Io),
        };
        self.execute(FsOp::Link {
            path: from.clone(),
            to: to.clone(),
            key,
        })
        .map(|_| ())
    }

    /// A local program renames `from` to `to`.
    pub fn local_rename(&mut self, from: &RelPath, to: &RelPath) -> Result<(), Errno> {
        self.execute(FsOp::Rename {
            from: from.clone(),
            to: to.clone(),
        })
        .map(|_| ())
    }

    /// Mutations since the last sync: a crash keeps some prefix of them
    /// (see [`MemFs::crash`]).
    pub fn unsynced(&self) -> usize {
        self.since_sync.len()
    }

    /// A power cut: open handles and staging files vanish (unlinked-but-open
    /// files with them), and of the mutations since the last sync only the
    /// first `keep` survive (of those still recorded: at most
    /// [`MemFs::unsynced`]; more keeps them all).
    pub fn crash(&mut self, keep: usize) {
        let tree = match keep.checked_sub(1) {
            None => self.durable.clone(),
            Some(i) => self.since_sync.get(i).cloned().unwrap_or_else(|| Tree {
                inodes: self.inodes.clone(),
                next_ino: self.next_ino,
            }),
        };
        self.inodes = tree.inodes;
        // Inode numbers are never reused within the disk's life, crash or
        // not: a file made after the kept state must not share its number
        // with one made again later.
        self.next_ino = self.next_ino.max(tree.next_ino);
        self.handles.clear();
        self.staged.clear();
        // The processes went with the power.
        self.held.clear();
        self.local_locks.clear();
        self.collect();
        self.synced();
    }

    /// Everything so far is durable.
    fn synced(&mut self) {
        self.since_sync.clear();
        self.durable = Tree {
            inodes: self.inodes.clone(),
            next_ino: self.next_ino,
        };
    }

    /// Records the state after a mutation as a point a crash may leave.
    fn mutated(&mut self) {
        if self.since_sync.len() >= MAX_CRASH_POINTS {
            let mut i = 0;
            self.since_sync.retain(|_| {
                i += 1;
                i % 2 == 0
            });
        }
        self.since_sync.push(Tree {
            inodes: self.inodes.clone(),
            next_ino: self.next_ino,
        });
    }

    /// The content of a regular file, following no symlink (for checks).
    pub fn read_file(&self, path: &RelPath) -> Option<&[u8]> {
        let ino = self.resolve(path).ok()?;
        let node = self.inodes.get(&ino)?;
        (node.kind == FileKind::File).then_some(&node.data[..])
    }

    /// The owner and group of `path`.
    pub fn owner(&self, path: &RelPath) -> Option<(u32, u32)> {
        let node = self.inodes.get(&self.resolve(path).ok()?)?;
        Some((node.uid, node.gid))
    }

    /// Number of open handles (the host closes what it no longer needs).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Number of staging files (for checks).
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    fn resolve(&self, path: &RelPath) -> Result<u64, Errno> {
        let mut at = ROOT;
        for name in path.names() {
            let node = self.inodes.get(&at).ok_or(Errno::NoEnt)?;
            match node.kind {
                FileKind::Dir => {}
                // RESOLVE_NO_SYMLINKS: a symlink inside a path is an error,
                // never a detour.
                FileKind::Symlink => return Err(Errno::Loop),
                FileKind::File
                | FileKind::Fifo
                | FileKind::Socket
                | FileKind::CharDevice
                | FileKind::BlockDevice => return Err(Errno::NotDir),
            }
            at = *node.children.get(name).ok_or(Errno::NoEnt)?;
        }
        Ok(at)
    }

    fn parent_of<'p>(&self, path: &'p RelPath) -> Result<(u64, &'p Name), Errno> {
        let (parent, name) = path.split_last().ok_or(Errno::Busy)?;
        let dir = self.resolve(&parent)?;
        match self.inodes.get(&dir).map(|n| n.kind) {
            Some(FileKind::Dir) => Ok((dir, name)),
            Some(FileKind::Symlink) => Err(Errno::Loop),
            _ => Err(Errno::NotDir),
        }
    }

    fn attr(&self, ino: u64) -> Result<FsAttr, Errno> {
        let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
        Ok(FsAttr {
            key: FileKey { dev: DEV, ino },
            kind: n.kind,
            size: match n.kind {
                FileKind::File => n.data.len() as u64,
                FileKind::Symlink => n.target.len() as u64,
                FileKind::Dir => 4096,
                FileKind::Fifo
                | FileKind::Socket
                | FileKind::CharDevice
                | FileKind::BlockDevice => 0,
            },
            mode: n.mode,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            rdev: n.rdev,
        })
    }

    fn add(&mut self, dir: u64, name: &Name, node: Inode) -> Result<u64, Errno> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, node);
        let now = self.now;
        let d = self.inodes.get_mut(&dir).ok_or(Errno::NoEnt)?;
        d.children.insert(name.clone(), ino);
        d.mtime = now;
        d.ctime = now;
        Ok(ino)
    }

    fn detach(&mut self, dir: u64, name: &Name) -> Option<u64> {
        let now = self.now;
        let d = self.inodes.get_mut(&dir)?;
        let ino = d.children.remove(name)?;
        d.mtime = now;
        d.ctime = now;
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.nlink = n.nlink.saturating_sub(1);
            n.ctime = now;
        }
        Some(ino)
    }

    /// Drops inodes that no directory and no handle reaches.
    fn collect(&mut self) {
        let mut reached = std::collections::BTreeSet::new();
        let mut stack = vec![ROOT];
        stack.extend(self.handles.values().copied());
        while let Some(ino) = stack.pop() {
            if reached.insert(ino)
                && let Some(n) = self.inodes.get(&ino)
            {
                stack.extend(n.children.values().copied());
            }
        }
        self.inodes.retain(|ino, _| reached.contains(ino));
    }

    fn time(&self, t: SetTime) -> Timestamp {
        match t {
            SetTime::Now => self.now,
            SetTime::At(t) => t,
        }
    }

    /// The regular file `from` names (a path, no-follow, or a handle).
    fn file_of(&self, from: &ReadFrom) -> Result<u64, Errno> {
        let ino = match from {
            ReadFrom::Path(p) => self.resolve(p)?,
            ReadFrom::Handle(h) => *self.handles.get(h).ok_or(Errno::BadF)?,
        };
        match self.inodes.get(&ino).ok_or(Errno::NoEnt)?.kind {
            FileKind::File => Ok(ino),
            FileKind::Dir => Err(Errno::IsDir),
            FileKind::Symlink => Err(Errno::Loop),
            // The host never opens one (`docs/permissions.md`).
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => {
                Err(Errno::Perm)
            }
        }
    }

    /// Executes one operation.
    pub fn execute(&mut self, op: FsOp) -> FsResult {
        self.tick();
        if let FsOp::Batch { dir, ops } = op {
            // A directory that is not there fails the whole batch.
            let parent = self.resolve(&dir)?;
            match self.inodes.get(&parent).map(|d| d.kind) {
                Some(FileKind::Dir) => {}
                // Never followed, as on the disk.
                Some(FileKind::Symlink) => return Err(Errno::Loop),
                _ => return Err(Errno::NotDir),
            }
            // Each operation is its own mutation: a crash keeps a prefix
            // of them, as of any other operations.
            let items = ops
                .into_iter()
                .map(|op| {
                    self.tick();
                    let done = match op {
                        BatchOp::Create(f) => self.create_file(parent, f),
                        BatchOp::Unlink { name, key } => self.unlink_in(parent, &name, key),
                        BatchOp::Rmdir { name, key } => self.rmdir_in(parent, &name, key),
                        BatchOp::SetAttr(set) => match self.run(FsOp::SetAttr {
                            path: dir.clone(),
                            set,
                        }) {
                            Ok(FsOk::Attr(a)) => Ok(a),
                            Ok(_) => Err(Errno::Io),
                            Err(e) => Err(e),
                        },
                    };
                    if done.is_ok() {
                        self.mutated();
                    }
                    done
                })
                .collect();
            return Ok(FsOk::Batch(items));
        }
        let mutation = op.mutates();
        let dirs = op.dirs_changed();
        let result = self.run(op);
        if mutation && result.is_ok() {
            self.mutated();
        }
        super::fsop::with_dirs(result, &dirs, |d| {
            self.resolve(d).and_then(|ino| self.attr(ino))
        })
    }

    /// The extended attributes a commit of `ino` keeps: all but the
    /// capability, which a write drops.
    fn carried_xattrs(&self, ino: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut xattrs = self
            .inodes
            .get(&ino)
            .map(|n| n.xattrs.clone())
            .unwrap_or_default();
        xattrs.remove(CAPABILITY_XATTR);
        xattrs
    }

    /// The regular file or directory at `path`, whose extended
    /// attributes the host reads and writes: anything else is EPERM, as
    /// Linux answers for the `user.` namespace (the host never opens a
    /// special file, and a symlink is not followed).
    fn xattr_holder(&self, path: &RelPath, key: Option<FileKey>) -> Result<&Inode, Errno> {
        let ino = self.resolve(path)?;
        if key.is_some_and(|k| k != (FileKey { dev: DEV, ino })) {
            return Err(Errno::Stale);
        }
        let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
        match n.kind {
            FileKind::File | FileKind::Dir => Ok(n),
            _ => Err(Errno::Perm),
        }
    }

    /// The parent directory and name of `path`, a name not taken yet
    /// (EEXIST otherwise), as mkdir, symlink and mknod want it.
    fn free_name<'p>(&self, path: &'p RelPath) -> Result<(u64, &'p Name), Errno> {
        let (dir, name) = self.parent_of(path)?;
        if self
            .inodes
            .get(&dir)
            .is_some_and(|d| d.children.contains_key(name))
        {
            return Err(Errno::Exist);
        }
        Ok((dir, name))
    }

    /// A new inode for directory `dir`, owned as Linux would own it made
    /// by a process of `owner` (or by the host's user, root here): the
    /// group the directory's where it has the set-group-ID bit, which a
    /// new directory inherits too.
    fn born(&self, dir: u64, kind: FileKind, mode: u32, owner: Option<Owner>) -> Inode {
        let mut node = Inode::new(kind, mode, self.now);
        if let Some(o) = owner {
            node.uid = o.uid;
            node.gid = o.gid;
        }
        if let Some(d) = self.inodes.get(&dir)
            && d.mode & 0o2000 != 0
        {
            node.gid = d.gid;
            if kind == FileKind::Dir {
                node.mode |= 0o2000;
            }
        }
        node
    }

    /// A [`BatchOp::Unlink`]: the attributes the file had, its link count
    /// less one.
    fn unlink_in(&mut self, parent: u64, name: &Name, key: FileKey) -> Result<FsAttr, Errno> {
        let d = self.inodes.get(&parent).ok_or(Errno::NoEnt)?;
        let ino = *d.children.get(name).ok_or(Errno::NoEnt)?;
        let mut attr = self.attr(ino)?;
        if attr.kind == FileKind::Dir {
            return Err(Errno::IsDir);
        }
        if attr.key != key {
            return Err(Errno::Stale);
        }
        attr.nlink = attr.nlink.saturating_sub(1);
        self.detach(parent, name);
        self.collect();
        Ok(attr)
    }

    /// A [`BatchOp::Rmdir`]: the empty directory `name` of `parent`, if
    /// it is the directory `key`.
    fn rmdir_in(&mut self, parent: u64, name: &Name, key: FileKey) -> Result<FsAttr, Errno> {
        let d = self.inodes.get(&parent).ok_or(Errno::NoEnt)?;
        let ino = *d.children.get(name).ok_or(Errno::NoEnt)?;
        let attr = self.attr(ino)?;
        if attr.kind != FileKind::Dir {
            return Err(Errno::NotDir);
        }
        if attr.key != key {
            return Err(Errno::Stale);
        }
        if self
            .inodes
            .get(&ino)
            .is_some_and(|n| !n.children.is_empty())
        {
            return Err(Errno::NotEmpty);
        }
        self.detach(parent, name);
        self.collect();
        Ok(attr)
    }

    /// A [`BatchOp::Create`]: a new inode with its content,
    /// at its name only if the name is free.
    fn create_file(&mut self, parent: u64, f: NewFile) -> Result<FsAttr, Errno> {
        if f.data.len() as u64 > self.max_file {
            return Err(Errno::FBig);
        }
        let d = self.inodes.get(&parent).ok_or(Errno::NoEnt)?;
        if d.children.contains_key(&f.name) {
            return Err(Errno::Exist);
        }
        self.room(0, f.data.len())?;
        let mut node = self.born(parent, FileKind::File, f.mode & 0o7777, f.owner);
        node.data = f.data.to_vec();
        if let Some(t) = f.times.atime {
            node.atime = self.time(t);
        }
        if let Some(t) = f.times.mtime {
            node.mtime = self.time(t);
        }
        let ino = self.add(parent, &f.name, node)?;
        self.attr(ino)
    }

    fn run(&mut self, op: FsOp) -> FsResult {
        match op {
            FsOp::Stat { path } => Ok(FsOk::Attr(self.attr(self.resolve(&path)?)?)),
            FsOp::List { path, cookie, max } => {
                let dir = self.resolve(&path)?;
                let node = self.inodes.get(&dir).ok_or(Errno::NoEnt)?;
                if node.kind != FileKind::Dir {
                    return Err(Errno::NotDir);
                }
                let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
                let all: Vec<(Name, u64)> =
                    node.children.iter().map(|(n, &i)| (n.clone(), i)).collect();
                let page: Vec<(Name, FsAttr)> = all
                    .iter()
                    .skip(skip)
                    .take(max as usize)
                    .filter_map(|(n, i)| self.attr(*i).ok().map(|a| (n.clone(), a)))
                    .collect();
                let end = skip.saturating_add(max as usize);
                let next = (end < all.len()).then_some(end as u64);
                Ok(FsOk::Listing {
                    entries: page,
                    next,
                })
            }
            // No permission model: the host's user may open every file
            // for writing (the real executor asks the kernel).
            FsOp::Open {
                path,
                handle,
                inline_max,
                mode: _,
            } => {
                let ino = self.resolve(&path)?;
                let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
                match n.kind {
                    FileKind::File => {}
                    FileKind::Dir => return Err(Errno::IsDir),
                    // O_NOFOLLOW on a symlink.
                    FileKind::Symlink => return Err(Errno::Loop),
                    FileKind::Fifo
                    | FileKind::Socket
                    | FileKind::CharDevice
                    | FileKind::BlockDevice => return Err(Errno::Perm),
                }
                let inline = if n.data.len() <= inline_max as usize {
                    Bytes::copy_from_slice(&n.data)
                } else {
                    Bytes::new()
                };
                self.handles.insert(handle, ino);
                Ok(FsOk::Opened(self.attr(ino)?, inline))
            }
            FsOp::Close { handle } => {
                self.handles.remove(&handle).ok_or(Errno::BadF)?;
                self.collect();
                Ok(FsOk::Done)
            }
            FsOp::Read { from, offset, len } => {
                let ino = self.file_of(&from)?;
                let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(n.data.len());
                let end = start.saturating_add(len as usize).min(n.data.len());
                Ok(FsOk::Data(
                    Bytes::copy_from_slice(&n.data[start..end]),
                    self.attr(ino)?,
                ))
            }
            FsOp::Create {
                path,
                mode,
                owner,
                exclusive,
                open,
            } => {
                let (dir, name) = self.parent_of(&path)?;
                let ino = match self.inodes.get(&dir).and_then(|d| d.children.get(name)) {
                    Some(&ino) => match (exclusive, self.inodes.get(&ino).map(|n| n.kind)) {
                        (true, _) => return Err(Errno::Exist),
                        (false, Some(FileKind::File)) => ino,
                        (false, Some(FileKind::Dir)) => return Err(Errno::IsDir),
                        (
                            false,
                            Some(
                                FileKind::Fifo
                                | FileKind::Socket
                                | FileKind::CharDevice
                                | FileKind::BlockDevice,
                            ),
                        ) => {
                            return Err(Errno::Exist);
                        }
                        (false, _) => return Err(Errno::Loop),
                    },
                    None => {
                        let node = self.born(dir, FileKind::File, mode, owner);
                        self.add(dir, name, node)?
                    }
                };
                let Some(open) = open else {
                    return Ok(FsOk::Attr(self.attr(ino)?));
                };
                let data = &self.inodes.get(&ino).ok_or(Errno::NoEnt)?.data;
                let inline = if data.len() <= open.inline_max as usize {
                    Bytes::copy_from_slice(data)
                } else {
                    Bytes::new()
                };
                self.handles.insert(open.handle, ino);
                Ok(FsOk::Opened(self.attr(ino)?, inline))
            }
            FsOp::Mkdir { path, mode, owner } => {
                let (dir, name) = self.free_name(&path)?;
                let node = self.born(dir, FileKind::Dir, mode, owner);
                let ino = self.add(dir, name, node)?;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::Symlink {
                path,
                target,
                owner,
            } => {
                let (dir, name) = self.free_name(&path)?;
                let mut node = self.born(dir, FileKind::Symlink, 0o777, owner);
                node.target = target;
                let ino = self.add(dir, name, node)?;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::Mknod {
                path,
                kind,
                mode,
                rdev,
                owner,
            } => {
                let (dir, name) = self.free_name(&path)?;
                if kind == FileKind::Dir || kind == FileKind::Symlink {
                    return Err(Errno::Inval);
                }
                let mut node = self.born(dir, kind, mode, owner);
                node.rdev = if kind.is_device() { rdev } else { 0 };
                let ino = self.add(dir, name, node)?;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            // Of anything else, as Linux reads the `user.` namespace:
            // nothing there.
            FsOp::GetXattr { path, name, key } => match self.xattr_holder(&path, key) {
                Ok(n) => n
                    .xattrs
                    .get(&name)
                    .cloned()
                    .map(FsOk::Xattr)
                    .ok_or(Errno::NoData),
                Err(Errno::Perm) => Err(Errno::NoData),
                Err(e) => Err(e),
            },
            FsOp::ListXattr { path, key } => {
                let n = match self.xattr_holder(&path, key) {
                    Err(Errno::Perm) => return Ok(FsOk::Xattr(Vec::new())),
                    other => other?,
                };
                let mut list = Vec::new();
                for name in n.xattrs.keys() {
                    list.extend_from_slice(name);
                    list.push(0);
                }
                Ok(FsOk::Xattr(list))
            }
            FsOp::SetXattr {
                path,
                name,
                value,
                how,
                key,
            } => {
                let ino = self.resolve(&path)?;
                self.xattr_holder(&path, key)?;
                let now = self.now;
                let n = self.inodes.get_mut(&ino).ok_or(Errno::NoEnt)?;
                match (how, n.xattrs.contains_key(&name)) {
                    (XattrSet::Create, true) => return Err(Errno::Exist),
                    (XattrSet::Replace, false) => return Err(Errno::NoData),
                    _ => {}
                }
                n.xattrs.insert(name, value);
                n.ctime = now;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::RemoveXattr { path, name, key } => {
                let ino = self.resolve(&path)?;
                self.xattr_holder(&path, key)?;
                let now = self.now;
                let n = self.inodes.get_mut(&ino).ok_or(Errno::NoEnt)?;
                n.xattrs.remove(&name).ok_or(Errno::NoData)?;
                n.ctime = now;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::Link { path, to, key } => {
                // In the disk's order: the source (and that it is the
                // file meant), the target's directory and free name, then
                // the source's kind (linkat(2) itself).
                let ino = self.resolve(&path)?;
                if (FileKey { dev: DEV, ino }) != key {
                    return Err(Errno::Stale);
                }
                let (dir, name) = self.free_name(&to)?;
                if self.inodes.get(&ino).map(|n| n.kind) == Some(FileKind::Dir) {
                    return Err(Errno::Perm);
                }
                let now = self.now;
                let d = self.inodes.get_mut(&dir).ok_or(Errno::NoEnt)?;
                d.children.insert(name.clone(), ino);
                d.mtime = now;
                d.ctime = now;
                let n = self.inodes.get_mut(&ino).ok_or(Errno::NoEnt)?;
                n.nlink += 1;
                n.ctime = now;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::Unlink { path } => {
                let (dir, name) = self.parent_of(&path)?;
                let ino = *self
                    .inodes
                    .get(&dir)
                    .and_then(|d| d.children.get(name))
                    .ok_or(Errno::NoEnt)?;
                if self.inodes.get(&ino).map(|n| n.kind) == Some(FileKind::Dir) {
                    return Err(Errno::IsDir);
                }
                self.detach(dir, name);
                self.collect();
                Ok(FsOk::Done)
            }
            FsOp::Rmdir { path } => {
                let (dir, name) = self.parent_of(&path)?;
                let ino = *self
                    .inodes
                    .get(&dir)
                    .and_then(|d| d.children.get(name))
                    .ok_or(Errno::NoEnt)?;
                let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
                if n.kind != FileKind::Dir {
                    return Err(Errno::NotDir);
                }
                if !n.children.is_empty() {
                    return Err(Errno::NotEmpty);
                }
                self.detach(dir, name);
                self.collect();
                Ok(FsOk::Done)
            }
            FsOp::Rename { from, to } => {
                let (fdir, fname) = self.parent_of(&from)?;
                let (tdir, tname) = self.parent_of(&to)?;
                let ino = *self
                    .inodes
                    .get(&fdir)
                    .and_then(|d| d.children.get(fname))
                    .ok_or(Errno::NoEnt)?;
                if to.starts_with(&from) && to != from {
                    return Err(Errno::Inval);
                }
                if from == to {
                    return Ok(FsOk::Done);
                }
                let moving_dir = self.inodes.get(&ino).map(|n| n.kind) == Some(FileKind::Dir);
                let target = self.inodes.get(&tdir).and_then(|d| d.children.get(tname));
                // Two names of one file: rename(2) does nothing at all.
                if target == Some(&ino) {
                    return Ok(FsOk::Done);
                }
                if let Some(&target) = target {
                    let t = self.inodes.get(&target).ok_or(Errno::NoEnt)?;
                    match (moving_dir, t.kind == FileKind::Dir) {
                        (true, false) => return Err(Errno::NotDir),
                        (false, true) => return Err(Errno::IsDir),
                        (true, true) if !t.children.is_empty() => return Err(Errno::NotEmpty),
                        _ => {}
                    }
                    self.detach(tdir, tname);
                }
                self.detach(fdir, fname);
                if let Some(n) = self.inodes.get_mut(&ino) {
                    n.nlink += 1;
                }
                let now = self.now;
                let d = self.inodes.get_mut(&tdir).ok_or(Errno::NoEnt)?;
                d.children.insert(tname.clone(), ino);
                d.mtime = now;
                self.collect();
                Ok(FsOk::Done)
            }
            FsOp::Readlink { path } => {
                let ino = self.resolve(&path)?;
                let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
                if n.kind != FileKind::Symlink {
                    return Err(Errno::Inval);
                }
                Ok(FsOk::Link(n.target.clone()))
            }
            FsOp::SetAttr { path, set } => {
                let ino = self.resolve(&path)?;
                let now = self.now;
                let max = self.max_file;
                let atime = set.atime.map(|t| self.time(t));
                let mtime = set.mtime.map(|t| self.time(t));
                let n = self.inodes.get_mut(&ino).ok_or(Errno::NoEnt)?;
                if let Some(size) = set.size {
                    n.kind.truncatable()?;
                    if size > max {
                        return Err(Errno::FBig);
                    }
                    n.data.resize(size as usize, 0);
                    n.mtime = now;
                }
                if set.mode.is_some() && n.kind == FileKind::Symlink {
                    // Linux has no mode on a symlink (fchmodat with
                    // AT_SYMLINK_NOFOLLOW refuses).
                    return Err(Errno::NotSup);
                }
                // As root does: any owner (the host core refuses chown
                // unless owners are preserved). Linux's chown of anything
                // but a directory drops its set-user-ID bit, and
                // its set-group-ID bit where group execution is on, even
                // for root; a mode set with it comes after, as the host
                // does it.
                if set.chowns() {
                    n.uid = set.uid.unwrap_or(n.uid);
                    n.gid = set.gid.unwrap_or(n.gid);
                    if n.kind != FileKind::Dir {
                        n.mode &= !0o4000;
                        if n.mode & 0o010 != 0 {
                            n.mode &= !0o2000;
                        }
                    }
                }
                if let Some(mode) = set.mode {
                    n.mode = mode & 0o7777;
                }
                if let Some(t) = atime {
                    n.atime = t;
                }
                if let Some(t) = mtime {
                    n.mtime = t;
                }
                n.ctime = now;
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::StatFs => Ok(FsOk::StatFs(StatFs {
                blocks: 1 << 20,
                bfree: 1 << 19,
                bavail: 1 << 19,
                files: 1 << 16,
                ffree: (1u64 << 16).saturating_sub(self.inodes.len() as u64),
                bsize: 4096,
                namelen: 255,
            })),
            FsOp::StageBegin { txn, path } => {
                let ino = self.resolve(&path)?;
                let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
                match n.kind {
                    FileKind::File => {}
                    FileKind::Fifo
                    | FileKind::Socket
                    | FileKind::CharDevice
                    | FileKind::BlockDevice => return Err(Errno::Perm),
                    FileKind::Dir | FileKind::Symlink => return Err(Errno::IsDir),
                }
                let copy = n.data.clone();
                self.room(0, copy.len())?;
                self.staged.insert(txn, copy);
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::StageWrite { txn, offset, data } => {
                let max = self.max_file;
                let len = self.staged.get(&txn).ok_or(Errno::BadF)?.len();
                let end = offset.checked_add(data.len() as u64).ok_or(Errno::FBig)?;
                if end > max {
                    return Err(Errno::FBig);
                }
                let (start, end) = (offset as usize, end as usize);
                self.room(len, len.max(end))?;
                let buf = self.staged.get_mut(&txn).ok_or(Errno::BadF)?;
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(&data);
                Ok(FsOk::Done)
            }
            FsOp::StageCopy {
                txn,
                from,
                from_offset,
                offset,
                len,
            } => {
                // Checked in the shell's order: the target, the staging,
                // the source.
                let to = offset.checked_add(len).ok_or(Errno::FBig)?;
                if to > self.max_file {
                    return Err(Errno::FBig);
                }
                let staged_len = self.staged.get(&txn).ok_or(Errno::BadF)?.len();
                let ino = self.file_of(&from)?;
                let n = self.inodes.get(&ino).ok_or(Errno::NoEnt)?;
                let end = from_offset.saturating_add(len);
                if len == 0 {
                    return Ok(FsOk::Done);
                }
                if end > n.data.len() as u64 {
                    // Fewer bytes than promised.
                    return Err(Errno::Io);
                }
                let bytes = n.data[from_offset as usize..end as usize].to_vec();
                self.room(staged_len, staged_len.max(to as usize))?;
                let buf = self.staged.get_mut(&txn).ok_or(Errno::BadF)?;
                if buf.len() < to as usize {
                    buf.resize(to as usize, 0);
                }
                buf[offset as usize..to as usize].copy_from_slice(&bytes);
                Ok(FsOk::Done)
            }
            FsOp::StageTruncate { txn, size } => {
                if size > self.max_file {
                    return Err(Errno::FBig);
                }
                let len = self.staged.get(&txn).ok_or(Errno::BadF)?.len();
                self.room(len, size as usize)?;
                let buf = self.staged.get_mut(&txn).ok_or(Errno::BadF)?;
                buf.resize(size as usize, 0);
                Ok(FsOk::Done)
            }
            FsOp::StageCommit {
                txn,
                path,
                size,
                base,
                set,
            } => {
                if size > self.max_file {
                    return Err(Errno::FBig);
                }
                let mut data = self.staged.remove(&txn).ok_or(Errno::BadF)?;
                // A failing or full disk fails the commit (its fsync, or
                // the size it sets); the staging is gone either way.
                self.room(data.len(), size as usize)?;
                data.resize(size as usize, 0);
                // The rename replaces the file by a new inode, as on disk:
                // open handles keep the old content.
                let (dir, name) = self.parent_of(&path)?;
                let old = *self
                    .inodes
                    .get(&dir)
                    .and_then(|d| d.children.get(name))
                    .ok_or(Errno::NoEnt)?;
                // rename(2) of a file over a directory fails; the staging
                // is gone either way.
                if self.inodes.get(&old).map(|n| n.kind) == Some(FileKind::Dir) {
                    return Err(Errno::IsDir);
                }
                // Only over the content it was staged from: a file replaced
                // or changed since keeps what it holds.
                if FileStamp::from(&self.attr(old)?) != base {
                    return Err(Errno::Stale);
                }
                let mode = set
                    .mode
                    .unwrap_or_else(|| self.inodes.get(&old).map_or(0o644, |n| n.mode));
                let atime = set.atime.map(|t| self.time(t));
                let mtime = set.mtime.map(|t| self.time(t));
                // A file with other names is written in place, so that
                // every name keeps showing one file.
                let now = self.now;
                let xattrs = self.carried_xattrs(old);
                if let Some(n) = self.inodes.get_mut(&old)
                    && n.nlink > 1
                {
                    n.data = data;
                    n.xattrs = xattrs;
                    n.mode = mode & 0o7777;
                    n.atime = atime.unwrap_or(n.atime);
                    n.mtime = mtime.unwrap_or(now);
                    n.ctime = now;
                    return Ok(FsOk::Attr(self.attr(old)?));
                }
                let (uid, gid) = self.inodes.get(&old).map_or((0, 0), |n| (n.uid, n.gid));
                let xattrs = self.carried_xattrs(old);
                self.detach(dir, name);
                // The new content keeps the file's owner and extended
                // attributes, as the host's staging file does.
                let mut node = Inode::new(FileKind::File, mode, self.now);
                (node.uid, node.gid) = (uid, gid);
                node.xattrs = xattrs;
                node.data = data;
                node.atime = atime.unwrap_or(node.atime);
                node.mtime = mtime.unwrap_or(node.mtime);
                let ino = self.add(dir, name, node)?;
                // Locks the host holds on the file go to the new one with
                // the rename, as the shell's do.
                for (i, _) in self.held.values_mut() {
                    if *i == old {
                        *i = ino;
                    }
                }
                self.collect();
                Ok(FsOk::Attr(self.attr(ino)?))
            }
            FsOp::StageAbort { txn } => {
                self.staged.remove(&txn);
                Ok(FsOk::Done)
            }
            // Run by `execute`, file by file.
            FsOp::Batch { .. } => Err(Errno::Inval),
            FsOp::Sync => {
                if let Some((errno, left)) = self.failing {
                    // A failing disk fails the flush too; nothing is
                    // known durable.
                    self.failing = (left > 1).then_some((errno, left - 1));
                    return Err(errno);
                }
                self.synced();
                Ok(FsOk::Done)
            }
            FsOp::HoldLocks {
                path,
                holder,
                key,
                locks,
            } => self.hold_locks(path, holder, key, locks),
        }
    }
}

impl Inode {
    fn new(kind: FileKind, mode: u32, now: Timestamp) -> Self {
        Inode {
            kind,
            data: Vec::new(),
            target: Vec::new(),
            mode: mode & 0o7777,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            children: BTreeMap::new(),
            xattrs: BTreeMap::new(),
        }
    }
}
