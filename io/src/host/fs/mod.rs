//! The host's disk: every [`FsOp`] the core asks for, executed against a
//! real directory and confined beneath it.
//!
//! # Confinement
//!
//! [`HostFs`] holds one directory fd, the shared root, and reaches every
//! file through it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`; final components go through `*at` calls with
//! `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW`. A symlink anywhere in a path is
//! ELOOP and is never followed, the final component included: symlinks are
//! data (`Readlink`). Paths are built from checked
//! [`Name`](wormhole_core::proto::Name)s, so `..` and absolute names cannot
//! be written down in the first place; the kernel refuses them again if a
//! bug ever let one through. This is also why a host cannot deadlock on a
//! symlink that points into a mount of its own share: it never takes it.
//!
//! # Semantics
//!
//! Exactly those of [`MemFs`](wormhole_core::host::memfs::MemFs), the
//! reference, checked by a differential test (`tests/hostfs_diff.rs`):
//! the same errnos, listings in name order with index cookies, only
//! files, directories and symlinks reported (anything else is invisible,
//! as if absent). Known, deliberate differences, which the core never
//! triggers: a symlink's mode cannot be changed on Linux (EOPNOTSUPP);
//! committing over a target that became a directory fails with EISDIR
//! (MemFs replaces it); symlink targets must be non-empty and NUL-free
//! (the core checks that before asking). Paths longer than PATH_MAX work:
//! they are walked in pieces, each beneath the last, by the same rules.
//!
//! # Durability
//!
//! A change is reported once it is made, not once it is on disk: the
//! core's group commit asks for [`FsOp::Sync`] (one `syncfs` of the
//! shared folder's file system) when a client fsyncs or a window after
//! the first unsynced change (docs/filesystem.md, "Durability"). A crash
//! loses what came after the last Sync, never part of a file: a commit
//! sets the staged copy's size and mode and renames it over the target,
//! and the staged bytes reach the disk before the rename does, by the file
//! system's own ordering where it promises it (ext4's default,
//! [`durability`]) or by an fsync of the staged copy first. Staging files
//! are volatile: a crash may leave one behind (invisible to clients:
//! `.wormhole.` names are reserved), and the first listing that meets it
//! removes it.
//!
//! # Threads
//!
//! Many calls block (a read from disk, a Sync), so they must not run on an async
//! executor's threads. [`FsPool`] is a small bounded pool of threads for
//! that, shared by both shells; [`HostFs`] itself is `Sync` and may also be
//! called from a runtime's own blocking pool. Operations sent at the same
//! time may complete in any order, as concurrent system calls would; the
//! core only sends an operation after the results it depends on.
//!
//! [`HostFs::try_execute`] is the exception that keeps most requests off
//! the pool: the metadata calls and the reads the page cache can answer
//! (`RWF_NOWAIT`) run at once, on the caller's thread. Handing an
//! operation to a pool thread and its result back costs two thread
//! wake-ups, which on a virtual machine whose idle vCPUs halt is most of a
//! request's time (measured here: about 0.35 ms per wake-up across vCPUs,
//! against a few microseconds for a `stat` of a cached inode).
//!
//! Here: [`HostFs`] and its dispatch (this file), confined path walking
//! (`walk`), the operations (`ops`), staging and write-behind
//! (`staging`), and the thread pool ([`FsPool`]).

mod durability;
mod locks;
mod ops;
mod pool;
mod staging;
mod walk;
mod xattr;

pub use pool::{FsPool, PoolClosed};
pub use staging::LEFTOVER_AGE;

use ops::{Reading, waited};
use staging::Staged;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno as SysErrno;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use wormhole_core::host::{
    FsAttr, FsHandle, FsOk, FsOp, FsResult, RESERVED_PREFIX, ReadFrom, with_dirs,
};
use wormhole_core::proto::{Errno, FileKey, FileKind, SetAttr, SetTime, StatFs, Timestamp, TxnId};

/// Bounds of a [`HostFs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFsConfig {
    /// Largest file a write transaction may produce (EFBIG beyond).
    pub max_file: u64,
    /// Open handles at once (EAGAIN beyond): each holds a file descriptor.
    pub max_handles: usize,
    /// Staging files at once (EAGAIN beyond): each holds a descriptor.
    pub max_staged: usize,
    /// No other host serves this folder (the caller holds its
    /// `DirClaim` in `claim.rs`): staging files of other runs
    /// are a crash's leftovers and go as soon as a listing meets them.
    /// Otherwise they go only once [`LEFTOVER_AGE`] old.
    pub sole_host: bool,
}

impl Default for HostFsConfig {
    fn default() -> Self {
        HostFsConfig {
            max_file: 1 << 44,
            max_handles: 4096,
            max_staged: 1024,
            sole_host: false,
        }
    }
}

/// The shared folder on the real disk, executing [`FsOp`]s beneath it.
pub struct HostFs {
    root: OwnedFd,
    cfg: HostFsConfig,
    /// Starts this run's staging names: a reserved file without it was
    /// left by an earlier run, and a listing sweeps it.
    staging_prefix: Vec<u8>,
    handles: Mutex<HashMap<FsHandle, Arc<File>>>,
    staged: Mutex<HashMap<TxnId, Arc<Staged>>>,
    /// Clients' record locks held on the files ([`locks`]).
    held_locks: Mutex<locks::Holders>,
    /// The file system writes a file's data before a rename over another
    /// file is durable ([`durability`]); otherwise a commit flushes the
    /// staged copy before its rename.
    ordered: bool,
    /// Numbers the staging names of [`FsOp::Batch`]'s new files.
    next_new: std::sync::atomic::AtomicU64,
    /// `/proc/self/fd`: an `O_PATH` descriptor is opened again through
    /// it, once its type is known ([`HostFs::regular`]).
    proc_fds: OwnedFd,
}

impl std::fmt::Debug for HostFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFs")
            .field("root", &self.root)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The largest staging write (and staged size at commit) run at once on
/// the caller's thread ([`HostFs::try_execute`]).
pub const INLINE_STAGE_WRITE: u64 = 64 << 10;

impl HostFs {
    /// Opens `root` (a directory; this one path is resolved normally, as
    /// the person sharing it named it) and serves beneath it.
    pub fn open(root: &Path, cfg: HostFsConfig) -> std::io::Result<Self> {
        let fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Unique enough per run: the clock and the process id.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 40);
        let mut staging_prefix = RESERVED_PREFIX.to_vec();
        staging_prefix.extend_from_slice(format!("{run:016x}.").as_bytes());
        let proc_fds = rfs::open(
            "/proc/self/fd",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open /proc/self/fd, which the host needs (is /proc mounted?): {e}"),
            )
        })?;
        let ordered = durability::orders_data_before_rename(&fd);
        tracing::debug!(
            ordered,
            "staged data before a replacing rename, by the file system"
        );
        Ok(HostFs {
            ordered,
            next_new: 0.into(),
            proc_fds,
            root: fd,
            cfg,
            staging_prefix,
            handles: Mutex::new(HashMap::new()),
            staged: Mutex::new(HashMap::new()),
            held_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Open handles (for checks and metrics).
    pub fn open_handles(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Staging files held (for checks and metrics).
    pub fn staged(&self) -> usize {
        lock(&self.staged).len()
    }

    /// Executes `op` now if it does not wait for file data from the disk,
    /// and gives it back (for [`FsPool`]) if it would:
    ///
    /// * attributes, link texts, file-system statistics and closes run:
    ///   they read inodes, which a busy share keeps in memory (an inode
    ///   that is not costs one small read, as a `stat` does);
    /// * so do the changes of names and attributes (create, mkdir, unlink,
    ///   rmdir, rename, symlink, setattr without a size, and beginning a
    ///   transaction): they change inodes and directories in memory; the
    ///   disk sees them at the next [`FsOp::Sync`];
    /// * an open runs if the bytes it brings along (a small file's) are in
    ///   the page cache, and a read through a handle if its bytes are;
    /// * so do a small file's staging: a write of at most
    ///   [`INLINE_STAGE_WRITE`] bytes and the commit of at most that many,
    ///   into a staging copy that owes no old content (a new file, or one
    ///   rewritten from empty), on a file system that orders data before
    ///   the rename (no fdatasync at commit): they fill the page cache and
    ///   rename. Handing each to a worker thread and back cost more than
    ///   the work (untar of 10,000 files of 1 KiB: the host's threads
    ///   spent most of their time switching);
    /// * everything else (listings, which stat a whole page of entries,
    ///   reads by path, larger staging writes and commits, which may copy
    ///   or flush data, truncation and Sync) is given back.
    ///
    /// A result is final, exactly as [`HostFs::execute`] would give it.
    pub fn try_execute(&self, op: FsOp) -> Result<FsResult, FsOp> {
        let dirs = op.dirs_changed();
        let done = match op {
            FsOp::StageWrite { txn, ref data, .. }
                if data.len() as u64 <= INLINE_STAGE_WRITE && self.owes_nothing(txn) =>
            {
                return Ok(self.execute(op));
            }
            FsOp::StageCommit { txn, size, .. }
                if self.ordered && size <= INLINE_STAGE_WRITE && self.owes_nothing(txn) =>
            {
                return Ok(self.execute(op));
            }
            FsOp::Stat { .. }
            | FsOp::Close { .. }
            | FsOp::Readlink { .. }
            | FsOp::StatFs
            | FsOp::Mkdir { .. }
            | FsOp::Unlink { .. }
            | FsOp::Rmdir { .. }
            | FsOp::Rename { .. }
            | FsOp::Symlink { .. }
            | FsOp::Link { .. }
            | FsOp::StageBegin { .. }
            // A few non-blocking `fcntl`s, in order per holder.
            | FsOp::HoldLocks { .. } => {
                return Ok(self.execute(op));
            }
            FsOp::SetAttr { ref set, .. } if set.size.is_none() => return Ok(self.execute(op)),
            FsOp::Open {
                ref path,
                mode,
                handle,
                inline_max,
            } => self.open_handle(path, mode, handle, inline_max, Reading::CachedOnly),
            // Given back only if the file existed and its bytes would
            // wait: then it exists when the pool creates it again, and is
            // opened there.
            FsOp::Create {
                ref path,
                mode,
                owner,
                exclusive,
                open,
            } => self.create(path, mode, owner, exclusive, open, Reading::CachedOnly),
            FsOp::Read {
                from: ReadFrom::Handle(h),
                offset,
                len,
            } => self
                .handle(h)
                .and_then(|file| self.read_through(&file, offset, len, Reading::CachedOnly)),
            other => return Err(other),
        };
        let done = done.transpose().ok_or(op)?;
        Ok(with_dirs(done, &dirs, |d| self.stat(d)))
    }

    /// Whether `txn`'s staging copy owes none of the old content (so a
    /// write or commit copies nothing first).
    fn owes_nothing(&self, txn: TxnId) -> bool {
        self.staging(txn)
            .is_ok_and(|s| lock(&s.base).as_ref().is_none_or(|(_, len)| *len == 0))
    }

    /// Executes one operation; blocks (see the module docs).
    pub fn execute(&self, op: FsOp) -> FsResult {
        let dirs = op.dirs_changed();
        let result = self.run(op);
        with_dirs(result, &dirs, |d| self.stat(d))
    }

    fn run(&self, op: FsOp) -> FsResult {
        match op {
            FsOp::Stat { path } => self.stat(&path).map(FsOk::Attr),
            FsOp::List { path, cookie, max } => self.list(&path, cookie, max),
            FsOp::Open {
                path,
                mode,
                handle,
                inline_max,
            } => waited(self.open_handle(&path, mode, handle, inline_max, Reading::Wait)),
            FsOp::Close { handle } => {
                lock(&self.handles).remove(&handle).ok_or(Errno::BadF)?;
                Ok(FsOk::Done)
            }
            FsOp::Read { from, offset, len } => self.read(from, offset, len),
            FsOp::Create {
                path,
                mode,
                owner,
                exclusive,
                open,
            } => waited(self.create(&path, mode, owner, exclusive, open, Reading::Wait)),
            FsOp::Mkdir { path, mode, owner } => self.mkdir(&path, mode, owner),
            FsOp::Unlink { path } => self.remove(&path, AtFlags::empty()),
            FsOp::Rmdir { path } => self.remove(&path, AtFlags::REMOVEDIR),
            FsOp::Rename { from, to } => self.rename(&from, &to),
            FsOp::Symlink {
                path,
                target,
                owner,
            } => self.symlink(&path, &target, owner),
            FsOp::Mknod {
                path,
                kind,
                mode,
                rdev,
                owner,
            } => self.mknod(&path, kind, mode, rdev, owner),
            FsOp::Link { path, to, key } => self.link(&path, &to, key),
            FsOp::GetXattr { path, name, key } => self.get_xattr(&path, key, &name),
            FsOp::ListXattr { path, key } => self.list_xattr(&path, key),
            FsOp::SetXattr {
                path,
                name,
                value,
                how,
                key,
            } => self.set_xattr(&path, key, &name, &value, how),
            FsOp::RemoveXattr { path, name, key } => self.remove_xattr(&path, key, &name),
            FsOp::Readlink { path } => {
                let Some((dir, name)) = self.parent(&path)? else {
                    return Err(Errno::Inval);
                };
                let text = rfs::readlinkat(&dir, os(name.as_bytes()), Vec::new()).map_err(sys)?;
                Ok(FsOk::Link(text.into_bytes()))
            }
            FsOp::SetAttr { path, set } => self.set_attr(&path, set),
            FsOp::StatFs => {
                let v = rfs::fstatvfs(&self.root).map_err(sys)?;
                let unit = if v.f_frsize > 0 {
                    v.f_frsize
                } else {
                    v.f_bsize
                };
                Ok(FsOk::StatFs(StatFs {
                    blocks: v.f_blocks,
                    bfree: v.f_bfree,
                    bavail: v.f_bavail,
                    files: v.f_files,
                    ffree: v.f_ffree,
                    bsize: u32::try_from(unit).unwrap_or(u32::MAX),
                    namelen: u32::try_from(v.f_namemax).unwrap_or(u32::MAX),
                }))
            }
            FsOp::StageBegin { txn, path } => self.stage_begin(txn, &path),
            FsOp::StageWrite { txn, offset, data } => {
                let staged = self.staging(txn)?;
                let end = offset.checked_add(data.len() as u64).ok_or(Errno::FBig)?;
                if end > self.cfg.max_file {
                    return Err(Errno::FBig);
                }
                staged.settle().map_err(io)?;
                staged.write_at(&data, offset).map_err(io)?;
                staged.wrote(offset, data.len() as u64);
                Ok(FsOk::Done)
            }
            FsOp::StageCopy {
                txn,
                from,
                from_offset,
                offset,
                len,
            } => self.stage_copy(txn, from, from_offset, offset, len),
            FsOp::StageTruncate { txn, size } => {
                if size > self.cfg.max_file {
                    return Err(Errno::FBig);
                }
                self.staging(txn)?.truncate(size).map_err(io)?;
                Ok(FsOk::Done)
            }
            FsOp::StageCommit {
                txn,
                path,
                size,
                base,
                set,
            } => self.stage_commit(txn, &path, size, base, *set),
            FsOp::StageAbort { txn } => {
                // Dropping the last reference unlinks the staging file.
                lock(&self.staged).remove(&txn);
                Ok(FsOk::Done)
            }
            FsOp::Batch { dir, ops } => self.batch(&dir, ops),
            FsOp::HoldLocks {
                path,
                holder,
                key,
                locks,
            } => self.hold_locks(path, holder, key, locks),
            FsOp::Sync => {
                rfs::syncfs(&self.root).map_err(sys)?;
                Ok(FsOk::Done)
            }
        }
    }
}

impl Drop for HostFs {
    fn drop(&mut self) {
        // Uncommitted staging files go with the host (see `Staged`'s drop).
        lock(&self.staged).clear();
    }
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard
/// limit and returns the new soft limit. Every open handle and staging file
/// holds a descriptor, and the usual soft limit of 1024 is below
/// [`HostFsConfig`]'s defaults; a host calls this once at start and may
/// size `max_handles` from the result.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another worker does not make the maps wrong: every
    // update to them is a single insert or remove.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn sys(e: SysErrno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn io(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::Io, Errno::from_raw)
}

fn kind_of(st: &Stat) -> Option<FileKind> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Some(FileKind::File),
        FileType::Directory => Some(FileKind::Dir),
        FileType::Symlink => Some(FileKind::Symlink),
        FileType::Fifo => Some(FileKind::Fifo),
        FileType::Socket => Some(FileKind::Socket),
        // Shown to clients only where the host allows them (the host
        // core hides them otherwise).
        FileType::CharacterDevice => Some(FileKind::CharDevice),
        FileType::BlockDevice => Some(FileKind::BlockDevice),
        _ => None,
    }
}

fn ts(secs: i64, nanos: u64) -> Timestamp {
    Timestamp {
        secs,
        nanos: u32::try_from(nanos).unwrap_or(0),
    }
}

/// The attributes of a stat, if it is a kind the core may see.
#[allow(clippy::unnecessary_cast)] // stat field widths differ between targets
fn attr(st: &Stat) -> Option<FsAttr> {
    Some(FsAttr {
        key: FileKey {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        },
        kind: kind_of(st)?,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode as u32 & 0o7777,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        atime: ts(st.st_atime as i64, st.st_atime_nsec as u64),
        mtime: ts(st.st_mtime as i64, st.st_mtime_nsec as u64),
        ctime: ts(st.st_ctime as i64, st.st_ctime_nsec as u64),
        rdev: st.st_rdev,
    })
}

fn fd_attr(fd: impl AsFd) -> FsResult {
    let st = rfs::fstat(fd).map_err(sys)?;
    attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt)
}

/// The times `set` changes, for `utimensat`/`futimens`; `None` if neither.
fn times(set: &SetAttr) -> Option<rfs::Timestamps> {
    (set.atime.is_some() || set.mtime.is_some()).then(|| rfs::Timestamps {
        last_access: timespec(set.atime),
        last_modification: timespec(set.mtime),
    })
}

fn timespec(t: Option<SetTime>) -> rfs::Timespec {
    match t {
        None => rfs::Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        Some(SetTime::Now) => rfs::Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => rfs::Timespec {
            tv_sec: t.secs,
            tv_nsec: i64::from(t.nanos.min(999_999_999)),
        },
    }
}
