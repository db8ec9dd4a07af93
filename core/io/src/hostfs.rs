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
//! A result is reported only once it is on disk: every mutation fsyncs what
//! it changed (the new file or directory and its parent directory; both
//! parents of a rename). Staging files are volatile: a crash may leave one
//! behind (invisible to clients: `.wormhole.` names are reserved), and the
//! next `StageBegin` of the same transaction number replaces it. A commit
//! sets the staged copy's size and mode, fsyncs it, renames it over the
//! target and fsyncs the directory, in that order, so a crash at any point
//! leaves the old content or the new one.
//!
//! # Threads
//!
//! Every call blocks (fsync can take long), so it must not run on an async
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

use bytes::Bytes;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno as SysErrno;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use wormhole_core::host::{
    FsAttr, FsHandle, FsOk, FsOp, FsResult, OpId, RESERVED_PREFIX, ReadFrom, RelPath,
};
use wormhole_core::proto::{
    Errno, FileKey, FileKind, Name, SetAttr, SetTime, StatFs, Timestamp, TxnId,
};

/// Every path walk: stay beneath the root, take no symlink and no
/// `/proc` magic link, anywhere in the path.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` answers EAGAIN when a rename raced with a `RESOLVE_BENEATH`
/// walk; it is safe to retry, a few times.
const RESOLVE_RETRIES: usize = 8;

/// Bounds of a [`HostFs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFsConfig {
    /// Largest file a write transaction may produce (EFBIG beyond).
    pub max_file: u64,
    /// Open handles at once (EAGAIN beyond): each holds a file descriptor.
    pub max_handles: usize,
    /// Staging files at once (EAGAIN beyond): each holds a descriptor.
    pub max_staged: usize,
}

impl Default for HostFsConfig {
    fn default() -> Self {
        HostFsConfig {
            max_file: 1 << 44,
            max_handles: 4096,
            max_staged: 1024,
        }
    }
}

/// A staged new version of a file: a hidden file beside it.
struct Staged {
    /// The directory holding the staging file (and, when it was begun, the
    /// target: same directory, so the commit's rename is atomic).
    dir: OwnedFd,
    /// `.wormhole.<txn>`.
    name: Vec<u8>,
    file: File,
    /// The file's old content still to be copied in, and how much of it:
    /// copied at the first write or the commit, not at begin, so that a
    /// transaction that starts by truncating (a rewrite with `O_TRUNC`)
    /// copies only what the truncate keeps.
    base: Mutex<Option<(File, u64)>>,
    /// Set once renamed over the target, so dropping it unlinks nothing.
    committed: std::sync::atomic::AtomicBool,
    /// Where bytes were written since their disk write was last started,
    /// and how many ([`Staged::wrote`]).
    behind: Mutex<Behind>,
}

/// Written bytes whose disk write has not been started yet.
#[derive(Default)]
struct Behind {
    /// The range they lie in.
    range: Option<(u64, u64)>,
    /// How many.
    bytes: u64,
}

/// Staged bytes after which their disk write is started ([`Staged::wrote`]).
const WRITE_BEHIND: u64 = 8 << 20;

impl Staged {
    /// Copies in the old content still owed (once; concurrent writes wait
    /// for it, so none lands before the copy).
    fn settle(&self) -> std::io::Result<()> {
        let mut base = lock(&self.base);
        if let Some((src, len)) = base.take() {
            // A truncate may have extended the staging file past `len`
            // (zeros), which a clone would undo.
            let size = self.file.metadata()?.len();
            copy_content(&src, &self.file, len)?;
            if size > len {
                self.file.set_len(size)?;
            }
        }
        Ok(())
    }

    /// Notes `len` bytes written at `offset`, and every [`WRITE_BEHIND`]
    /// bytes starts the disk write of the range they were written in,
    /// without waiting for it. Otherwise a long write sits in the page
    /// cache until the commit's fsync writes all of it (the kernel's own
    /// writeback starts only at a share of memory, gigabytes on a large
    /// machine), and the disk idles while the network works, then the
    /// other way round.
    ///
    /// `DONTNEED` advice is how to start it without `unsafe` (rustix has
    /// no `sync_file_range`): Linux begins the writeback of the range's
    /// dirty pages and does not wait for it (`generic_fadvise`,
    /// `WB_SYNC_NONE`), and drops only pages already clean, which pages
    /// just written are not. It is advice: if it fails, the fsync at the
    /// commit still writes everything.
    fn wrote(&self, offset: u64, len: u64) {
        let (start, end) = {
            let mut b = lock(&self.behind);
            let end = offset.saturating_add(len);
            let (lo, hi) = b.range.unwrap_or((offset, end));
            b.range = Some((lo.min(offset), hi.max(end)));
            b.bytes += len;
            if b.bytes < WRITE_BEHIND {
                return;
            }
            let range = b.range.take().unwrap_or_default();
            b.bytes = 0;
            range
        };
        let _ = rfs::fadvise(
            &self.file,
            start,
            std::num::NonZeroU64::new(end - start),
            rfs::Advice::DontNeed,
        );
    }

    /// Sets the staged size; of the old content still owed, only what
    /// fits is copied later.
    fn truncate(&self, size: u64) -> std::io::Result<()> {
        let mut base = lock(&self.base);
        if let Some((_, len)) = base.as_mut() {
            *len = (*len).min(size);
        }
        self.file.set_len(size)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Abort, a failed commit, a replaced transaction and a host that
        // shuts down all end here: a staging file that will never be
        // committed is removed (best effort; a crash leaves it for the next
        // StageBegin of the same number).
        if !self.committed.load(std::sync::atomic::Ordering::Acquire) {
            let _ = rfs::unlinkat(&self.dir, os(&self.name), AtFlags::empty());
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
}

impl std::fmt::Debug for HostFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFs")
            .field("root", &self.root)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

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
        Ok(HostFs {
            root: fd,
            cfg,
            staging_prefix,
            handles: Mutex::new(HashMap::new()),
            staged: Mutex::new(HashMap::new()),
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
    /// * an open runs if the bytes it brings along (a small file's) are in
    ///   the page cache, and a read through a handle if its bytes are;
    /// * everything else (listings, which stat a whole page of entries,
    ///   reads by path, and every change, since changes fsync) is given
    ///   back.
    ///
    /// A result is final, exactly as [`HostFs::execute`] would give it.
    pub fn try_execute(&self, op: FsOp) -> Result<FsResult, FsOp> {
        let done = match op {
            FsOp::Stat { .. } | FsOp::Close { .. } | FsOp::Readlink { .. } | FsOp::StatFs => {
                return Ok(self.execute(op));
            }
            FsOp::Open {
                ref path,
                handle,
                inline_max,
            } => self.open_handle(path, handle, inline_max, Reading::CachedOnly),
            FsOp::Read {
                from: ReadFrom::Handle(h),
                offset,
                len,
            } => self
                .handle(h)
                .and_then(|file| self.read_through(&file, offset, len, Reading::CachedOnly)),
            other => return Err(other),
        };
        done.transpose().ok_or(op)
    }

    /// Executes one operation; blocks (see the module docs).
    pub fn execute(&self, op: FsOp) -> FsResult {
        match op {
            FsOp::Stat { path } => self.stat(&path).map(FsOk::Attr),
            FsOp::List { path, cookie, max } => self.list(&path, cookie, max),
            FsOp::Open {
                path,
                handle,
                inline_max,
            } => waited(self.open_handle(&path, handle, inline_max, Reading::Wait)),
            FsOp::Close { handle } => {
                lock(&self.handles).remove(&handle).ok_or(Errno::BadF)?;
                Ok(FsOk::Done)
            }
            FsOp::Read { from, offset, len } => self.read(from, offset, len),
            FsOp::Create {
                path,
                mode,
                exclusive,
            } => self.create(&path, mode, exclusive),
            FsOp::Mkdir { path, mode } => self.mkdir(&path, mode),
            FsOp::Unlink { path } => self.remove(&path, AtFlags::empty()),
            FsOp::Rmdir { path } => self.remove(&path, AtFlags::REMOVEDIR),
            FsOp::Rename { from, to } => self.rename(&from, &to),
            FsOp::Symlink { path, target } => self.symlink(&path, &target),
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
                staged.file.write_all_at(&data, offset).map_err(io)?;
                staged.wrote(offset, data.len() as u64);
                Ok(FsOk::Done)
            }
            FsOp::StageTruncate { txn, size } => {
                if size > self.cfg.max_file {
                    return Err(Errno::FBig);
                }
                self.staging(txn)?.truncate(size).map_err(io)?;
                Ok(FsOk::Done)
            }
            FsOp::StageCommit { txn, path, size } => self.stage_commit(txn, &path, size),
            FsOp::StageAbort { txn } => {
                // Dropping the last reference unlinks the staging file.
                lock(&self.staged).remove(&txn);
                Ok(FsOk::Done)
            }
        }
    }

    // ------------------------------------------------------------ walking

    /// Opens `path` beneath the root, following no symlink at all.
    fn open_beneath(&self, path: &RelPath, flags: OFlags) -> Result<OwnedFd, Errno> {
        self.open_raw(path, flags | OFlags::NOFOLLOW)
    }

    /// `openat2` beneath the root; without `O_NOFOLLOW` a final symlink is
    /// still not taken (`RESOLVE_NO_SYMLINKS`), and is ELOOP rather than
    /// the ENOTDIR that `O_NOFOLLOW | O_DIRECTORY` would give.
    fn open_raw(&self, path: &RelPath, flags: OFlags) -> Result<OwnedFd, Errno> {
        let flags = flags | OFlags::CLOEXEC;
        // A path longer than the kernel takes at once (PATH_MAX) is walked
        // in pieces, each a directory opened beneath the one before with
        // the same rules, so deep trees work and nothing is looser.
        let pieces = pieces(path.names());
        let (last, dirs) = pieces.split_last().ok_or(Errno::Inval)?;
        let mut at: Option<OwnedFd> = None;
        for piece in dirs {
            let dir = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = match &at {
                None => openat2_retry(&self.root, piece, dir)?,
                Some(fd) => openat2_retry(fd, piece, dir)?,
            };
            at = Some(fd);
        }
        match &at {
            None => openat2_retry(&self.root, last, flags),
            Some(fd) => openat2_retry(fd, last, flags),
        }
    }

    /// The directory `path` (a symlink there is ELOOP, a file ENOTDIR).
    fn dir(&self, path: &RelPath) -> Result<OwnedFd, Errno> {
        self.open_raw(path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The parent directory of `path` and the last name, or `None` for the
    /// root.
    fn parent<'p>(&self, path: &'p RelPath) -> Result<Option<(OwnedFd, &'p Name)>, Errno> {
        match path.split_last() {
            None => Ok(None),
            Some((parent, name)) => Ok(Some((self.dir(&parent)?, name))),
        }
    }

    /// Like [`Self::parent`], for operations on an entry: the root is
    /// EBUSY, as in MemFs.
    fn entry<'p>(&self, path: &'p RelPath) -> Result<(OwnedFd, &'p Name), Errno> {
        self.parent(path)?.ok_or(Errno::Busy)
    }

    /// lstat of `path`.
    fn lstat(&self, path: &RelPath) -> Result<Stat, Errno> {
        match self.parent(path)? {
            None => rfs::fstat(&self.root).map_err(sys),
            Some((dir, name)) => {
                rfs::statat(&dir, os(name.as_bytes()), AtFlags::SYMLINK_NOFOLLOW).map_err(sys)
            }
        }
    }

    fn stat(&self, path: &RelPath) -> Result<FsAttr, Errno> {
        attr(&self.lstat(path)?).ok_or(Errno::NoEnt)
    }

    // ------------------------------------------------------------- reading

    fn list(&self, path: &RelPath, cookie: u64, max: u32) -> FsResult {
        let fd = match self.dir(path) {
            Ok(fd) => fd,
            // MemFs: listing a symlink is ENOTDIR (it is found, and is not
            // a directory); ELOOP stays for a symlink on the way there.
            Err(Errno::Loop) if kind_of(&self.lstat(path)?) == Some(FileKind::Symlink) => {
                return Err(Errno::NotDir);
            }
            Err(e) => return Err(e),
        };
        // The page's attributes are read through this descriptor, so a
        // rename of the directory meanwhile cannot send them elsewhere.
        let dir = rfs::Dir::read_from(&fd).map_err(sys)?;
        let mut names: Vec<Name> = Vec::new();
        for entry in dir {
            let entry = entry.map_err(sys)?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            if bytes.starts_with(RESERVED_PREFIX) {
                self.sweep_leftover(&fd, entry.file_name());
                continue;
            }
            let shown = match entry.file_type() {
                FileType::RegularFile | FileType::Directory | FileType::Symlink => true,
                // Some file systems do not fill d_type: ask.
                FileType::Unknown => rfs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .and_then(|st| kind_of(&st))
                    .is_some(),
                _ => false,
            };
            if shown && let Ok(name) = Name::new(bytes) {
                names.push(name);
            }
        }
        // Name order, as MemFs: cookies are positions in it, stable between
        // pages while the directory does not change.
        names.sort_unstable();
        let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
        let entries = names
            .iter()
            .skip(skip)
            .take(max as usize)
            .filter_map(|n| {
                let st = rfs::statat(&fd, os(n.as_bytes()), AtFlags::SYMLINK_NOFOLLOW).ok()?;
                Some((n.clone(), attr(&st)?))
            })
            .collect();
        let end = skip.saturating_add(max as usize);
        let next = (end < names.len()).then_some(end as u64);
        Ok(FsOk::Listing { entries, next })
    }

    /// Opens a regular file for reading (a directory is EISDIR, a symlink
    /// ELOOP, anything else invisible).
    fn open_file(&self, path: &RelPath) -> Result<(File, Stat), Errno> {
        // NONBLOCK: opening a fifo a local program left in the share must
        // not hang a worker; it is then refused as invisible.
        let fd = self.open_beneath(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        let st = rfs::fstat(&fd).map_err(sys)?;
        match kind_of(&st) {
            Some(FileKind::File) => Ok((File::from(fd), st)),
            Some(FileKind::Dir) => Err(Errno::IsDir),
            Some(FileKind::Symlink) => Err(Errno::Loop),
            None => Err(Errno::NoEnt),
        }
    }

    /// Opens `path` as `handle`; `Ok(None)` if its inline bytes would
    /// wait for the disk and `reading` says they may not.
    fn open_handle(
        &self,
        path: &RelPath,
        handle: FsHandle,
        inline_max: u32,
        reading: Reading,
    ) -> Result<Option<FsOk>, Errno> {
        let (file, st) = self.open_file(path)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // A small file's bytes come with its open, read through the same
        // descriptor as its attributes.
        let inline = if size <= u64::from(inline_max) {
            match reading.read(&file, 0, size as usize)? {
                Some(bytes) => bytes,
                None => return Ok(None),
            }
        } else {
            Bytes::new()
        };
        let mut handles = lock(&self.handles);
        if !handles.contains_key(&handle) && handles.len() >= self.cfg.max_handles {
            return Err(Errno::Again);
        }
        handles.insert(handle, Arc::new(file));
        drop(handles);
        let a = attr(&st).ok_or(Errno::NoEnt)?;
        Ok(Some(FsOk::Opened(a, inline)))
    }

    /// The open file behind `handle`.
    fn handle(&self, handle: FsHandle) -> Result<Arc<File>, Errno> {
        lock(&self.handles).get(&handle).cloned().ok_or(Errno::BadF)
    }

    fn read(&self, from: ReadFrom, offset: u64, len: u32) -> FsResult {
        let file = match from {
            ReadFrom::Path(p) => Arc::new(self.open_file(&p)?.0),
            ReadFrom::Handle(h) => self.handle(h)?,
        };
        waited(self.read_through(&file, offset, len, Reading::Wait))
    }

    /// Up to `len` bytes of `file` from `offset`, with the attributes of
    /// the same open file; `Ok(None)` if they would wait for the disk and
    /// `reading` says they may not.
    fn read_through(
        &self,
        file: &File,
        offset: u64,
        len: u32,
        reading: Reading,
    ) -> Result<Option<FsOk>, Errno> {
        let st = rfs::fstat(file).map_err(sys)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // Allocate what the file holds, not what the request asks for.
        let want = u64::from(len).min(size.saturating_sub(offset)) as usize;
        let Some(data) = reading.read(file, offset, want)? else {
            return Ok(None);
        };
        let a = attr(&st).ok_or(Errno::NoEnt)?;
        Ok(Some(FsOk::Data(data, a)))
    }

    // ------------------------------------------------------------ changing

    fn create(&self, path: &RelPath, mode: u32, exclusive: bool) -> FsResult {
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        let flags = OFlags::RDONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK;
        match rfs::openat(&dir, n, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => {
                // Exactly the requested bits: the client's umask was applied
                // on the client; the host's must not be applied again.
                rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
                rfs::fsync(&fd).map_err(sys)?;
                rfs::fsync(&dir).map_err(sys)?;
                fd_attr(&fd)
            }
            Err(SysErrno::EXIST) if !exclusive => {
                let st = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
                match kind_of(&st) {
                    Some(FileKind::File) => attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt),
                    Some(FileKind::Dir) => Err(Errno::IsDir),
                    Some(FileKind::Symlink) => Err(Errno::Loop),
                    None => Err(Errno::Exist),
                }
            }
            Err(e) => Err(sys(e)),
        }
    }

    fn mkdir(&self, path: &RelPath, mode: u32) -> FsResult {
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        rfs::mkdirat(&dir, n, Mode::from_raw_mode(0o700)).map_err(sys)?;
        let fd = rfs::openat(
            &dir,
            n,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
        rfs::fsync(&fd).map_err(sys)?;
        rfs::fsync(&dir).map_err(sys)?;
        fd_attr(&fd)
    }

    fn symlink(&self, path: &RelPath, target: &[u8]) -> FsResult {
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        // The text is stored, never resolved.
        rfs::symlinkat(os(target), &dir, n).map_err(sys)?;
        rfs::fsync(&dir).map_err(sys)?;
        let st = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
        attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt)
    }

    fn remove(&self, path: &RelPath, flags: AtFlags) -> FsResult {
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        // unlink(2) of a directory is EISDIR on Linux and rmdir(2) of a
        // non-directory ENOTDIR, as in MemFs; a symlink itself is removed.
        match rfs::unlinkat(&dir, n, flags) {
            // Empty but for staging files: empty as clients see it.
            Err(SysErrno::NOTEMPTY) if flags == AtFlags::REMOVEDIR && purge_staging(&dir, n) => {
                rfs::unlinkat(&dir, n, flags).map_err(sys)?;
            }
            r => r.map_err(sys)?,
        }
        rfs::fsync(&dir).map_err(sys)?;
        Ok(FsOk::Done)
    }

    fn rename(&self, from: &RelPath, to: &RelPath) -> FsResult {
        let (fdir, fname) = self.entry(from)?;
        let (tdir, tname) = self.entry(to)?;
        let (fname, tname) = (os(fname.as_bytes()), os(tname.as_bytes()));
        // MemFs decides in this order; the kernel would find the same
        // errors, but not always in the same order, so ask first. The
        // rename itself still checks everything again, atomically.
        let src = rfs::statat(&fdir, fname, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
        if to.starts_with(from) && to != from {
            return Err(Errno::Inval);
        }
        if from == to {
            return Ok(FsOk::Done);
        }
        let moving_dir = kind_of(&src) == Some(FileKind::Dir);
        if let Ok(t) = rfs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW) {
            match (moving_dir, kind_of(&t) == Some(FileKind::Dir)) {
                (true, false) => return Err(Errno::NotDir),
                (false, true) => return Err(Errno::IsDir),
                _ => {}
            }
        }
        match rfs::renameat(&fdir, fname, &tdir, tname) {
            // A target directory empty but for staging files is empty as
            // clients see it.
            Err(SysErrno::NOTEMPTY) if moving_dir && purge_staging(&tdir, tname) => {
                rfs::renameat(&fdir, fname, &tdir, tname).map_err(sys)?;
            }
            r => r.map_err(sys)?,
        }
        rfs::fsync(&tdir).map_err(sys)?;
        if !same_file(&fdir, &tdir) {
            rfs::fsync(&fdir).map_err(sys)?;
        }
        Ok(FsOk::Done)
    }

    fn set_attr(&self, path: &RelPath, set: SetAttr) -> FsResult {
        let st = self.lstat(path)?;
        let kind = kind_of(&st).ok_or(Errno::NoEnt)?;
        if let Some(size) = set.size {
            if kind != FileKind::File {
                return Err(Errno::IsDir);
            }
            if size > self.cfg.max_file {
                return Err(Errno::FBig);
            }
        }
        let times = (set.atime.is_some() || set.mtime.is_some()).then(|| rfs::Timestamps {
            last_access: timespec(set.atime),
            last_modification: timespec(set.mtime),
        });
        if kind == FileKind::Symlink {
            // Linux keeps a symlink's mode at 0777 and cannot change it.
            if set.mode.is_some() {
                return Err(Errno::NotSup);
            }
            let (dir, name) = self.entry(path)?;
            let n = os(name.as_bytes());
            if let Some(t) = &times {
                rfs::utimensat(&dir, n, t, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
                rfs::fsync(&dir).map_err(sys)?;
            }
            let st = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
            return attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt);
        }
        // A file or directory: change it through a descriptor (O_NOFOLLOW:
        // if it became a symlink meanwhile, this is ELOOP, not a detour).
        let access = if set.size.is_some() {
            OFlags::WRONLY
        } else {
            OFlags::RDONLY
        };
        let fd = self.open_beneath(path, access | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        if let Some(size) = set.size {
            rfs::ftruncate(&fd, size).map_err(sys)?;
        }
        if let Some(mode) = set.mode {
            rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
        }
        if let Some(t) = &times {
            rfs::futimens(&fd, t).map_err(sys)?;
        }
        rfs::fsync(&fd).map_err(sys)?;
        fd_attr(&fd)
    }

    // ------------------------------------------------------------- staging

    fn staging(&self, txn: TxnId) -> Result<Arc<Staged>, Errno> {
        lock(&self.staged).get(&txn).cloned().ok_or(Errno::BadF)
    }

    fn stage_begin(&self, txn: TxnId, path: &RelPath) -> FsResult {
        // MemFs: the root is found, and is not a file.
        let (dir, name) = self.parent(path)?.ok_or(Errno::IsDir)?;
        let src = match rfs::openat(
            &dir,
            os(name.as_bytes()),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            // MemFs: staging anything but a regular file is EISDIR.
            Err(SysErrno::LOOP) => return Err(Errno::IsDir),
            Err(e) => return Err(sys(e)),
        };
        let st = rfs::fstat(&src).map_err(sys)?;
        if kind_of(&st) != Some(FileKind::File) {
            return Err(Errno::IsDir);
        }
        // A transaction begun again starts over: its old staging file goes
        // now (outside the lock: dropping it unlinks), before the new one
        // takes its name.
        let old = lock(&self.staged).remove(&txn);
        drop(old);
        if lock(&self.staged).len() >= self.cfg.max_staged {
            return Err(Errno::Again);
        }
        let sname = self.staging_name(txn);
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rfs::openat(&dir, os(&sname), flags, Mode::from_raw_mode(0o600)) {
            Err(SysErrno::EXIST) => {
                // Left by a crash (or an earlier run that used the same
                // number): it was never committed, so it is garbage.
                let _ = rfs::unlinkat(&dir, os(&sname), AtFlags::empty());
                rfs::openat(&dir, os(&sname), flags, Mode::from_raw_mode(0o600)).map_err(sys)?
            }
            r => r.map_err(sys)?,
        };
        let staged = Arc::new(Staged {
            dir,
            name: sname,
            file: File::from(fd),
            base: Mutex::new(None),
            committed: false.into(),
            behind: Mutex::default(),
        });
        // From here on, dropping `staged` on an error removes the file.
        // Keep the owner: a commit must not hand a user's file to the
        // host's account. Only root can; otherwise the host owns both.
        let _ = rfs::fchown(
            &staged.file,
            Some(rfs::Uid::from_raw(st.st_uid)),
            Some(rfs::Gid::from_raw(st.st_gid)),
        );
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // The old content is owed, copied when first needed.
        *lock(&staged.base) = Some((src, size));
        let mut map = lock(&self.staged);
        // Checked again: others may have begun meanwhile. Refused, the
        // staging file goes with `staged`.
        if map.len() >= self.cfg.max_staged {
            drop(map);
            return Err(Errno::Again);
        }
        map.insert(txn, staged);
        Ok(FsOk::Done)
    }

    fn stage_commit(&self, txn: TxnId, path: &RelPath, size: u64) -> FsResult {
        if size > self.cfg.max_file {
            return Err(Errno::FBig);
        }
        // Taken out first: whatever happens next, the transaction is over
        // (as in MemFs), and on an error the drop removes the file.
        let staged = lock(&self.staged).remove(&txn).ok_or(Errno::BadF)?;
        staged.settle().map_err(io)?;
        staged.file.set_len(size).map_err(io)?;
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        let old = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
        if kind_of(&old) == Some(FileKind::Dir) {
            return Err(Errno::IsDir);
        }
        // The file keeps its permissions, as MemFs: those of the file at
        // commit time.
        rfs::fchmod(&staged.file, Mode::from_raw_mode(old.st_mode & 0o7777)).map_err(sys)?;
        // Content and size on disk before the name points at them: after a
        // crash the name shows the old file or the complete new one.
        staged.file.sync_all().map_err(io)?;
        rfs::renameat(&staged.dir, os(&staged.name), &dir, n).map_err(sys)?;
        staged
            .committed
            .store(true, std::sync::atomic::Ordering::Release);
        // The rename itself is durable only once the directory is.
        rfs::fsync(&dir).map_err(sys)?;
        if !same_file(&staged.dir, &dir) {
            rfs::fsync(&staged.dir).map_err(sys)?;
        }
        fd_attr(&staged.file)
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

// ------------------------------------------------------------------ helpers

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another worker does not make the maps wrong: every
    // update to them is a single insert or remove.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Bytes of path in one `openat2` call at most: well under PATH_MAX
/// (4096, the terminating NUL included).
const PIECE_MAX: usize = 2048;

/// The path as `a/b/c` pieces of at most [`PIECE_MAX`] bytes each (one
/// piece, `.`, for the root). Names hold no `/` and no NUL and are never
/// `.` or `..`, so each piece is a relative path that cannot climb.
fn pieces(names: &[Name]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for n in names {
        let n = n.as_bytes();
        if !cur.is_empty() && cur.len() + 1 + n.len() > PIECE_MAX {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(b'/');
        }
        cur.extend_from_slice(n);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(if cur.is_empty() { b".".to_vec() } else { cur });
    }
    out
}

/// Up to `want` bytes of `file` from `offset` (fewer at end of file),
/// read into a recycled buffer: zeroing or faulting in a fresh buffer for
/// each read cost as much as the read.
fn read_from(file: &File, offset: u64, want: usize) -> Result<Bytes, Errno> {
    crate::recycle::fill(want, |buf| {
        let mut done = 0;
        while done < want {
            match rustix::io::pread(file, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(SysErrno::INTR) => {}
                Err(e) => return Err(sys(e)),
            }
        }
        Ok(done)
    })
}

/// How an operation may get file bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// From the disk if need be (the pool's way).
    Wait,
    /// Only what the page cache holds (the caller must not block).
    CachedOnly,
}

impl Reading {
    /// Up to `want` bytes of `file` from `offset`; `None` only for
    /// [`Reading::CachedOnly`], when they would wait for the disk.
    fn read(self, file: &File, offset: u64, want: usize) -> Result<Option<Bytes>, Errno> {
        match self {
            Reading::Wait => read_from(file, offset, want).map(Some),
            Reading::CachedOnly => read_cached(file, offset, want),
        }
    }
}

/// The answer of an operation allowed to wait (so never "would wait").
fn waited(done: Result<Option<FsOk>, Errno>) -> FsResult {
    done.transpose().unwrap_or(Err(Errno::Io))
}

/// Like [`read_from`], but only what the page cache holds: `None` as soon
/// as a read would wait for the disk (`RWF_NOWAIT` answers EAGAIN, or the
/// kernel or file system does not support it). A miss is not wasted: the
/// kernel starts reading what was missed before it answers EAGAIN, so the
/// pool's read that follows often finds it cached.
fn read_cached(file: &File, offset: u64, want: usize) -> Result<Option<Bytes>, Errno> {
    /// Why a read from the page cache gave nothing.
    enum Miss {
        WouldWait,
        Failed(Errno),
    }
    let read = crate::recycle::fill(want, |buf| {
        let mut done = 0;
        while done < want {
            let mut slice = [std::io::IoSliceMut::new(&mut buf[done..])];
            let at = offset + done as u64;
            match rustix::io::preadv2(file, &mut slice, at, rustix::io::ReadWriteFlags::NOWAIT) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(SysErrno::INTR) => {}
                Err(SysErrno::AGAIN | SysErrno::OPNOTSUPP | SysErrno::NOSYS) => {
                    return Err(Miss::WouldWait);
                }
                Err(e) => return Err(Miss::Failed(sys(e))),
            }
        }
        Ok(done)
    });
    match read {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Miss::WouldWait) => Ok(None),
        Err(Miss::Failed(e)) => Err(e),
    }
}

/// `openat2` beneath `dir`, retried while a concurrent rename makes the
/// kernel answer EAGAIN.
fn openat2_retry(dir: impl AsFd, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    for _ in 0..RESOLVE_RETRIES {
        match rfs::openat2(dir.as_fd(), os(path), flags, Mode::empty(), RESOLVE) {
            Err(SysErrno::AGAIN) => continue,
            r => return r.map_err(sys),
        }
    }
    Err(Errno::Again)
}

/// How old a staging file of another run must be before a listing that
/// meets it removes it: a host that crashed left it, but another host
/// serving the same folder right now may still be writing one.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(600);

impl HostFs {
    /// The name of `txn`'s staging file: reserved, so clients never see
    /// it, and marked with this run.
    fn staging_name(&self, txn: TxnId) -> Vec<u8> {
        let mut n = self.staging_prefix.clone();
        n.extend_from_slice(txn.0.to_string().as_bytes());
        n
    }

    /// A staging file met while listing: if an earlier run left it (a
    /// crash between staging and commit) and it has not been touched for
    /// [`LEFTOVER_AGE`], it is garbage and goes, so crashes do not fill
    /// the disk. The first scan lists every directory, so a restart
    /// sweeps the whole share.
    fn sweep_leftover(&self, dir: &OwnedFd, name: &std::ffi::CStr) {
        if name.to_bytes().starts_with(&self.staging_prefix) {
            return;
        }
        let Ok(st) = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let age = now.saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0));
        if kind_of(&st) == Some(FileKind::File) && age >= LEFTOVER_AGE.as_secs() {
            match rfs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => {
                    tracing::info!(name = ?name, "removed a staging file left by an earlier run")
                }
                Err(e) => {
                    tracing::debug!(name = ?name, error = %e, "could not remove a leftover staging file")
                }
            }
        }
    }
}

/// If the directory `name` in `parent` holds nothing but staging files,
/// removes them and says so. Their transactions are doomed with the
/// directory: their commits will find no target, as in MemFs, whose
/// staging lives outside the tree.
fn purge_staging(parent: impl AsFd, name: &OsStr) -> bool {
    let Ok(fd) = rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(dir) = rfs::Dir::read_from(&fd) else {
        return false;
    };
    let mut staging = Vec::new();
    for entry in dir {
        let Ok(entry) = entry else {
            return false;
        };
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if !bytes.starts_with(RESERVED_PREFIX) {
            return false;
        }
        staging.push(bytes.to_vec());
    }
    staging
        .iter()
        .all(|n| rfs::unlinkat(&fd, os(n), AtFlags::empty()).is_ok())
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
    })
}

fn fd_attr(fd: impl AsFd) -> FsResult {
    let st = rfs::fstat(fd).map_err(sys)?;
    attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt)
}

fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
    match (rfs::fstat(a), rfs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
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

/// Copies `len` bytes of `src` into the empty `dst`: a reflink where the
/// file system shares blocks (btrfs, xfs), else an in-kernel copy, else
/// through a buffer.
fn copy_content(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if rfs::ioctl_ficlone(dst, src).is_ok() {
        // A clone takes the whole file, which may have grown since the
        // stat: cut it to what was seen.
        return dst.set_len(len);
    }
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < len {
        let chunk = usize::try_from(len - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rfs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => return Ok(()), // the file shrank meanwhile
            Ok(_) => {}
            Err(SysErrno::INTR) => {}
            Err(
                SysErrno::XDEV
                | SysErrno::NOSYS
                | SysErrno::INVAL
                | SysErrno::OPNOTSUPP
                | SysErrno::PERM,
            ) => return copy_buffered(src, dst, off_in, len),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_buffered(src: &File, dst: &File, mut off: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 128 * 1024];
    while off < len {
        let want = usize::try_from(len - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match src.read_at(&mut buf[..want], off) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

// --------------------------------------------------------------- the pool

/// A small bounded pool of threads executing [`FsOp`]s for an async shell:
/// [`FsPool::submit`] waits for room in the queue (backpressure), results
/// come back on the channel [`FsPool::new`] returns, to be fed to
/// `HostServer::handle_fs`. Runtime-agnostic (async-channel), so both
/// shells use it as is.
#[derive(Debug)]
pub struct FsPool {
    jobs: async_channel::Sender<(OpId, FsOp)>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// The pool is gone (shut down).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("the file operation pool is shut down")]
pub struct PoolClosed;

impl FsPool {
    /// Starts `workers` threads (at least one) serving `fs`, with room for
    /// `queue` operations waiting. The results channel is unbounded: what
    /// is in it is bounded by what was submitted, which the core bounds
    /// (operations in flight per session).
    pub fn new(
        fs: Arc<HostFs>,
        workers: usize,
        queue: usize,
    ) -> std::io::Result<(FsPool, async_channel::Receiver<(OpId, FsResult)>)> {
        let (jobs, rx) = async_channel::bounded::<(OpId, FsOp)>(queue.max(1));
        let (done, results) = async_channel::unbounded();
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let (rx, done, fs) = (rx.clone(), done.clone(), fs.clone());
            let h = std::thread::Builder::new()
                .name(format!("wormhole-fs-{i}"))
                .spawn(move || {
                    while let Ok((op, fsop)) = rx.recv_blocking() {
                        let result = fs.execute(fsop);
                        if done.send_blocking((op, result)).is_err() {
                            break;
                        }
                    }
                })?;
            handles.push(h);
        }
        Ok((
            FsPool {
                jobs,
                workers: handles,
            },
            results,
        ))
    }

    /// Queues an operation, waiting while the queue is full.
    pub async fn submit(&self, op: OpId, fs: FsOp) -> Result<(), PoolClosed> {
        self.jobs.send((op, fs)).await.map_err(|_| PoolClosed)
    }

    /// Queues an operation if there is room; gives it back if not.
    pub fn try_submit(&self, op: OpId, fs: FsOp) -> Result<(), (OpId, FsOp)> {
        self.jobs.try_send((op, fs)).map_err(|e| e.into_inner())
    }

    /// Stops taking operations, lets the workers finish what is queued and
    /// waits for them (blocks: call it from a blocking context).
    pub fn shutdown(mut self) {
        self.jobs.close();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for FsPool {
    fn drop(&mut self) {
        // Workers end once the queue is drained; nobody waits for them here
        // (this may run on an executor thread).
        self.jobs.close();
    }
}
