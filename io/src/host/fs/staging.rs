//! Staging: a write transaction's new version of a file, kept in a hidden
//! file beside it and renamed over it at commit; the write-behind that
//! keeps the disk busy while a long write arrives; and the sweep of
//! staging files an earlier run left.

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat};
use rustix::io::Errno as SysErrno;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use wormhole_core::host::{
    BatchOp, FileStamp, FsAttr, FsOk, FsResult, NewFile, RESERVED_PREFIX, ReadFrom, RelPath,
};
use wormhole_core::proto::{Errno, FileKey, FileKind, Name, SetAttr, TxnId};

use super::{HostFs, attr, fd_attr, io, kind_of, lock, os, sys, times};

/// The shortest run of zeros a staging write leaves as a hole instead of
/// writing: smaller ones save too little to be worth a system call.
const MIN_HOLE: usize = 64 << 10;

/// Whether `data` is all zeros (stops at the first block that is not, so
/// ordinary data costs nothing).
fn all_zeros(data: &[u8]) -> bool {
    data.chunks(512)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// A staged new version of a file: a hidden file beside it.
pub(super) struct Staged {
    /// The directory holding the staging file (and, when it was begun, the
    /// target: same directory, so the commit's rename is atomic).
    dir: OwnedFd,
    /// `.wormhole.<txn>`.
    name: Vec<u8>,
    pub(super) file: File,
    /// The file's old content still to be copied in, and how much of it:
    /// copied at the first write or the commit, not at begin, so that a
    /// transaction that starts by truncating (a rewrite with `O_TRUNC`)
    /// copies only what the truncate keeps.
    pub(super) base: Mutex<Option<(File, u64)>>,
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
    pub(super) fn settle(&self) -> std::io::Result<()> {
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

    /// Writes `data` at `offset` of the staging file. A run of zeros of
    /// at least [`MIN_HOLE`] becomes a hole where the file system can
    /// punch one: a program's punched hole reaches the host as zeros
    /// (docs/filesystem.md, "fallocate"), and a zeroed range of a disk
    /// image or a sparse file takes no space this way, as on a local disk.
    /// The content is the same either way.
    pub(super) fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if data.len() >= MIN_HOLE && all_zeros(data) && self.punch(offset, data.len() as u64)? {
            return Ok(());
        }
        self.file.write_all_at(data, offset)
    }

    /// Makes `len` bytes at `offset` read as zeros without writing them
    /// all; false if the file system cannot punch a hole.
    fn punch(&self, offset: u64, len: u64) -> std::io::Result<bool> {
        // No overflow: the caller bounds `offset + len` by the largest file.
        let last = offset + (len - 1);
        // Its last byte written makes the file at least this long; a
        // positioned write never shortens it, whatever the transaction's
        // other writes (which run concurrently) have made of its size.
        self.file.write_all_at(&[0], last)?;
        Ok(rfs::fallocate(
            &self.file,
            rfs::FallocateFlags::PUNCH_HOLE | rfs::FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )
        .is_ok())
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
    pub(super) fn wrote(&self, offset: u64, len: u64) {
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
    pub(super) fn truncate(&self, size: u64) -> std::io::Result<()> {
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

impl HostFs {
    pub(super) fn staging(&self, txn: TxnId) -> Result<Arc<Staged>, Errno> {
        lock(&self.staged).get(&txn).cloned().ok_or(Errno::BadF)
    }

    pub(super) fn stage_begin(&self, txn: TxnId, path: &RelPath) -> FsResult {
        // MemFs: the root is found, and is not a file.
        let (dir, name) = self.parent(path)?.ok_or(Errno::IsDir)?;
        let probe = rfs::openat(
            &dir,
            os(name.as_bytes()),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        let (src, st) = match self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY) {
            Ok((fd, st)) => (File::from(fd), st),
            // MemFs: staging a directory or symlink is EISDIR; a special
            // file EPERM, never opened.
            Err(Errno::Loop) => return Err(Errno::IsDir),
            Err(e) => return Err(e),
        };
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
        // What the transaction builds on: the core compares it with the
        // version the client wrote to, and the commit with what is there
        // then.
        attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt)
    }

    pub(super) fn stage_commit(
        &self,
        txn: TxnId,
        path: &RelPath,
        size: u64,
        base: FileStamp,
        set: SetAttr,
    ) -> FsResult {
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
        // commit time, unless the writer set others while writing.
        let mode = set.mode.unwrap_or(old.st_mode);
        if old.st_nlink > 1 {
            return self.commit_in_place(&staged, &dir, n, size, (&old, base), &set);
        }
        // Its extended attributes and owner as they are now (a setxattr
        // or chown may have come since the staging began). Only root can
        // give a file away; otherwise the host's user owns both.
        super::xattr::copy_xattrs(&dir, name.as_bytes(), &staged.file);
        let _ = rfs::fchown(
            &staged.file,
            Some(rfs::Uid::from_raw(old.st_uid)),
            Some(rfs::Gid::from_raw(old.st_gid)),
        );
        rfs::fchmod(&staged.file, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
        // Times last: every write and the size are in place (`settle`,
        // `set_len`), so nothing moves the mtime after it.
        if let Some(t) = times(&set) {
            rfs::futimens(&staged.file, &t).map_err(sys)?;
        }
        // Content and size on disk before the name points at them, so a
        // crash shows the old file or the complete new one: the file
        // system orders that itself ([`super::durability`]), or we do.
        if !self.ordered {
            staged.file.sync_data().map_err(io)?;
        }
        // Only over the content it was staged from, checked as late as
        // can be: a local program that saved the file meanwhile (a new
        // identity) or changed it in place (a new size or mtime) keeps
        // its version, and the writer learns ESTALE. (A change inside the
        // microseconds between this check and the rename, or one that
        // keeps size and mtime, is not seen: no system call compares and
        // renames at once.)
        let now = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
        if attr(&now).map(|a| FileStamp::from(&a)) != Some(base) {
            return Err(Errno::Stale);
        }
        // Clients' locks on the file go to the new one with the rename, so
        // that no program on the host can lock it in between.
        let mut holders = lock(&self.held_locks);
        let moving = self.locks_onto(&holders, &now, &staged.file);
        rfs::renameat(&staged.dir, os(&staged.name), &dir, n).map_err(sys)?;
        super::locks::moved(&mut holders, moving);
        drop(holders);
        staged
            .committed
            .store(true, std::sync::atomic::Ordering::Release);
        // The rename is durable at the next Sync (the group commit).
        fd_attr(&staged.file)
    }
}

impl HostFs {
    /// The commit of a file with other hard links: its staged content is
    /// copied into it, since a rename would give this name a new file
    /// and leave the old content under the others. The staging file goes
    /// with `staged`. (Not atomic: a crash may leave a mix, as it may on
    /// a local disk written in place.)
    fn commit_in_place(
        &self,
        staged: &Staged,
        dir: &OwnedFd,
        name: &OsStr,
        size: u64,
        (old, base): (&Stat, FileStamp),
        set: &SetAttr,
    ) -> FsResult {
        let stale = |st: &Stat| attr(st).map(|a| FileStamp::from(&a)) != Some(base);
        if stale(old) {
            return Err(Errno::Stale);
        }
        let probe = rfs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        let (fd, now) = self.regular(&probe, OFlags::WRONLY)?;
        if stale(&now) {
            return Err(Errno::Stale);
        }
        let file = File::from(fd);
        if copy_range(&staged.file, 0, &file, 0, size).map_err(io)? != size {
            return Err(Errno::Io);
        }
        file.set_len(size).map_err(io)?;
        // The mode only if the writer set one: the file keeps its own.
        if let Some(mode) = set.mode {
            rfs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
        }
        if let Some(t) = times(set) {
            rfs::futimens(&file, &t).map_err(sys)?;
        }
        fd_attr(&file)
    }

    /// [`FsOp::Batch`](wormhole_core::host::FsOp::Batch), in order. Each
    /// new file is written whole under a staging name, then linked at its
    /// name with `renameat2(RENAME_NOREPLACE)`, so a name a local program
    /// took meanwhile is EEXIST, not overwritten, and a crash leaves the
    /// whole file or none (its data ordered before the rename as a
    /// commit's).
    ///
    /// Where the file system does not order data before a rename, the
    /// new files of each window of [`STAGED_AT_ONCE`] operations are
    /// written first and one `syncfs` makes all of them durable before
    /// any is linked: a `fdatasync` each, waited for one after another,
    /// made an untar of 10,000 files on an ext4 without a journal wait
    /// for 10,000 disk writes in turn. (As the group commit, this trusts
    /// `syncfs` to report a failed write-back, which Linux does since
    /// 5.8. And a window's new files take their space before its
    /// unlinks free any.)
    pub(super) fn batch(&self, dir: &RelPath, mut ops: Vec<BatchOp>) -> FsResult {
        let dir = self.dir(dir)?;
        let mut items = Vec::with_capacity(ops.len());
        // A window at a time, so that a batch (whose length only the
        // message size bounds) holds at most this many files open.
        while !ops.is_empty() {
            // A window ends at the directory's own mode change too: the
            // files after it are made under it (a set-group-ID bit gives
            // them the directory's group), as they are made one after
            // another on a local disk.
            let end = ops
                .iter()
                .position(|op| matches!(op, BatchOp::SetAttr(_)))
                .map_or(ops.len(), |i| i + 1);
            let rest = ops.split_off(end.min(STAGED_AT_ONCE));
            items.extend(self.batch_window(&dir, ops));
            ops = rest;
        }
        Ok(FsOk::Batch(items))
    }

    /// Part of [`Self::batch`]: its new files staged, synced once if the
    /// file system needs it, then every operation in order.
    fn batch_window(&self, dir: &OwnedFd, ops: Vec<BatchOp>) -> Vec<Result<FsAttr, Errno>> {
        let creates = ops
            .iter()
            .filter(|op| matches!(op, BatchOp::Create(_)))
            .count();
        let sync_once = !self.ordered && creates > 1;
        let mut steps: Vec<Step> = ops
            .into_iter()
            .map(|op| match op {
                BatchOp::Create(f) => Step::Link(self.stage_new(dir, &f, !sync_once), f.name),
                BatchOp::Unlink { name, key } => Step::Unlink(name, key),
                BatchOp::Rmdir { name, key } => Step::Rmdir(name, key),
                BatchOp::SetAttr(set) => Step::SetAttr(set),
            })
            .collect();
        let any_staged = steps.iter().any(|s| matches!(s, Step::Link(Ok(_), _)));
        if sync_once && any_staged && rfs::syncfs(dir).is_err() {
            // Whether their data reached the disk is unknown: none is
            // linked, and each is refused as a failed write would be.
            for step in &mut steps {
                if let Step::Link(staged, _) = step
                    && let Ok(file) = std::mem::replace(staged, Err(Errno::Io))
                {
                    file.discard(dir);
                }
            }
        }
        steps
            .into_iter()
            .map(|step| match step {
                Step::Link(Ok(file), name) => Self::link_new(dir, file, &name),
                Step::Link(Err(e), _) => Err(e),
                Step::Unlink(name, key) => unlink_in(dir, &name, key),
                Step::Rmdir(name, key) => rmdir_in(dir, &name, key),
                Step::SetAttr(set) => set_own_attr(dir, &set),
            })
            .collect()
    }

    /// Writes a new file of a batch whole under a staging name in `dir`,
    /// with its owner, mode and times; its data made durable here if
    /// `sync` (else the caller syncs before linking it).
    fn stage_new(&self, dir: &OwnedFd, f: &NewFile, sync: bool) -> Result<StagedNew, Errno> {
        if f.data.len() as u64 > self.cfg.max_file {
            return Err(Errno::FBig);
        }
        let mut name = self.staging_prefix.clone();
        let n = self
            .next_new
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        name.extend_from_slice(format!("n{n}").as_bytes());
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(dir, os(&name), flags, Mode::from_raw_mode(0o600)).map_err(sys)?;
        let staged = StagedNew {
            name,
            file: File::from(fd),
        };
        let made = (|| {
            staged.file.write_all_at(&f.data, 0).map_err(io)?;
            super::ops::give(&staged.file, dir, f.owner)?;
            // Exactly the requested bits: the client applied its umask.
            rfs::fchmod(&staged.file, Mode::from_raw_mode(f.mode & 0o7777)).map_err(sys)?;
            if let Some(t) = times(&f.times) {
                rfs::futimens(&staged.file, &t).map_err(sys)?;
            }
            if sync && !self.ordered {
                staged.file.sync_data().map_err(io)?;
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(staged),
            Err(e) => {
                staged.discard(dir);
                Err(e)
            }
        }
    }

    /// Links a staged new file at `name`, only if the name is free.
    fn link_new(dir: &OwnedFd, staged: StagedNew, name: &Name) -> Result<FsAttr, Errno> {
        let linked = rfs::renameat_with(
            dir,
            os(&staged.name),
            dir,
            os(name.as_bytes()),
            rfs::RenameFlags::NOREPLACE,
        );
        if let Err(e) = linked {
            staged.discard(dir);
            return Err(sys(e));
        }
        // Durable at the next Sync (the group commit), as every change.
        let st = rfs::fstat(&staged.file).map_err(sys)?;
        attr(&st).ok_or(Errno::Io)
    }

    /// `copy_file_range` into a transaction's staged copy: from a file
    /// beneath the root (by path, no-follow, a regular file only) or an
    /// open handle, on this machine; the bytes never cross the network.
    pub(super) fn stage_copy(
        &self,
        txn: TxnId,
        from: ReadFrom,
        from_offset: u64,
        offset: u64,
        len: u64,
    ) -> FsResult {
        let end = offset.checked_add(len).ok_or(Errno::FBig)?;
        if end > self.cfg.max_file {
            return Err(Errno::FBig);
        }
        let staged = self.staging(txn)?;
        let src = match from {
            ReadFrom::Path(p) => Arc::new(self.open_file(&p)?.0),
            ReadFrom::Handle(h) => self.handle(h)?,
        };
        staged.settle().map_err(io)?;
        let copied = copy_range(&src, from_offset, &staged.file, offset, len).map_err(io)?;
        if copied < len {
            // The client told its kernel all of them were copied.
            return Err(Errno::Io);
        }
        // No write-behind (`Staged::wrote`) for copies: started at once,
        // the disk writes competed with the copy's own reads of the
        // source (1 GiB cold: 1,218-1,742 MB/s with it, 1,658-1,703
        // without, four runs each, 2026-12-05).
        Ok(FsOk::Done)
    }
}

/// How old a staging file of another run must be before a listing that
/// meets it removes it, unless this host is known to be the folder's only
/// one ([`HostFsConfig::sole_host`](super::HostFsConfig::sole_host)): a
/// host that crashed left it, but another host serving the same folder
/// right now may still be writing one.
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
    /// crash between staging and commit), it is garbage and goes, so
    /// crashes do not fill the disk; at once for the folder's only host,
    /// else once untouched for [`LEFTOVER_AGE`]. The first scan lists
    /// every directory, so a restart sweeps the whole share.
    pub(super) fn sweep_leftover(&self, dir: &OwnedFd, name: &std::ffi::CStr) {
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
        let old = self.cfg.sole_host || age >= LEFTOVER_AGE.as_secs();
        if kind_of(&st) == Some(FileKind::File) && old {
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
pub(super) fn purge_staging(parent: impl AsFd, name: &OsStr) -> bool {
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
    // The file may have shrunk meanwhile: what is left is copied.
    copy_range(src, 0, dst, 0, len).map(|_| ())
}

/// Copies up to `len` bytes of `src` at `src_off` to `dst` at `dst_off`,
/// in the kernel where it can (`copy_file_range`: a reflink on file
/// systems that share blocks), else through a buffer. Returns how many
/// were copied: fewer only if `src` ends first.
fn copy_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> std::io::Result<u64> {
    let (mut off_in, mut off_out) = (src_off, dst_off);
    let end = src_off.saturating_add(len);
    while off_in < end {
        let chunk = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rfs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => break, // the source ends here
            Ok(_) => {}
            Err(SysErrno::INTR) => {}
            Err(
                SysErrno::XDEV
                | SysErrno::NOSYS
                | SysErrno::INVAL
                | SysErrno::OPNOTSUPP
                | SysErrno::PERM,
            ) => {
                let done = off_in - src_off;
                return copy_buffered(src, off_in, dst, off_out, len - done).map(|n| done + n);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(off_in - src_off)
}

fn copy_buffered(
    src: &File,
    mut off_in: u64,
    dst: &File,
    mut off_out: u64,
    len: u64,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut done = 0;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match src.read_at(&mut buf[..want], off_in) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], off_out)?;
        off_in += n as u64;
        off_out += n as u64;
        done += n as u64;
    }
    Ok(done)
}

/// New files of a batch staged (and open) at once, at most.
const STAGED_AT_ONCE: usize = 256;

/// A batch's operation, its new file (if any) already staged.
enum Step {
    /// Link the staged file at the name.
    Link(Result<StagedNew, Errno>, Name),
    /// Remove the name if it holds the file of this identity.
    Unlink(Name, FileKey),
    /// Remove the name if it holds the empty directory of this identity.
    Rmdir(Name, FileKey),
    /// Set the directory's own mode and times.
    SetAttr(SetAttr),
}

/// A new file of a batch, written whole under its staging name and not
/// yet linked at its own.
struct StagedNew {
    name: Vec<u8>,
    file: File,
}

impl StagedNew {
    /// Removes the staging name: the file is not made.
    fn discard(self, dir: &OwnedFd) {
        let _ = rfs::unlinkat(dir, os(&self.name), AtFlags::empty());
    }
}

/// A [`BatchOp::SetAttr`]: the mode and times of directory `dir` itself
/// (open for reading, so changed through it as any directory's are),
/// then its attributes.
fn set_own_attr(dir: &OwnedFd, set: &SetAttr) -> Result<FsAttr, Errno> {
    if set.chowns() || set.size.is_some() {
        return Err(Errno::Inval);
    }
    if let Some(mode) = set.mode {
        rfs::fchmod(dir, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
    }
    if let Some(t) = times(set) {
        rfs::futimens(dir, &t).map_err(sys)?;
    }
    let st = rfs::fstat(dir).map_err(sys)?;
    attr(&st).ok_or(Errno::NoEnt)
}

/// A [`BatchOp::Rmdir`]: the attributes the directory had. Asked first,
/// as for an unlink: another file or directory at the name is ENOTDIR or
/// ESTALE.
fn rmdir_in(dir: &OwnedFd, name: &Name, key: FileKey) -> Result<FsAttr, Errno> {
    let n = os(name.as_bytes());
    let st = rfs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
    let a = attr(&st).ok_or(Errno::NoEnt)?;
    if a.kind != FileKind::Dir {
        return Err(Errno::NotDir);
    }
    if a.key != key {
        return Err(Errno::Stale);
    }
    rfs::unlinkat(dir, n, AtFlags::REMOVEDIR).map_err(sys)?;
    Ok(a)
}

/// A [`BatchOp::Unlink`]: the attributes the file had, its link count
/// less one. Asked first, so a directory is EISDIR as unlink(2) says and
/// as [`MemFs`](wormhole_core::host::MemFs) answers, and another file at
/// the name is ESTALE. (A local program may still swap the file between
/// the `stat` and the `unlinkat`; it recalled the lease, so its change is
/// reported, as for any unlink racing a local program.)
fn unlink_in(dir: &OwnedFd, name: &Name, key: FileKey) -> Result<FsAttr, Errno> {
    let n = os(name.as_bytes());
    let st = rfs::statat(dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
    let mut a = attr(&st).ok_or(Errno::NoEnt)?;
    if a.kind == FileKind::Dir {
        return Err(Errno::IsDir);
    }
    if a.key != key {
        return Err(Errno::Stale);
    }
    rfs::unlinkat(dir, n, AtFlags::empty()).map_err(sys)?;
    a.nlink = a.nlink.saturating_sub(1);
    Ok(a)
}
