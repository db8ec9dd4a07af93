//! The operations on the shared tree: listing, opening and reading, and
//! every change (create, mkdir, symlink, remove, rename, set attributes),
//! each durable before it is reported.

use bytes::Bytes;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno as SysErrno;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use wormhole_core::host::{FsHandle, FsOk, FsResult, OpenAs, RESERVED_PREFIX, ReadFrom, RelPath};
use wormhole_core::proto::{Errno, FileKey, FileKind, Name, OpenFor, Owner, SetAttr};

use super::staging::purge_staging;
use super::{HostFs, attr, fd_attr, kind_of, lock, os, sys, times};

impl HostFs {
    pub(super) fn list(&self, path: &RelPath, cookie: u64, max: u32) -> FsResult {
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
            // Every type has a kind now; a file system that does not
            // fill d_type is asked.
            let shown = entry.file_type() != FileType::Unknown
                || rfs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .and_then(|st| kind_of(&st))
                    .is_some();
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
    /// ELOOP, a special file EPERM and never opened: [`HostFs::regular`]).
    pub(super) fn open_file(&self, path: &RelPath) -> Result<(File, Stat), Errno> {
        let probe = self.open_beneath(path, OFlags::PATH)?;
        let (fd, st) = self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY)?;
        Ok((File::from(fd), st))
    }

    /// Opens `path` as `handle`; `Ok(None)` if its inline bytes would
    /// wait for the disk and `reading` says they may not. An open `for`
    /// writing is refused now with what an open for writing would answer
    /// (EACCES, EPERM of an immutable file, ETXTBSY…), not at the commit.
    pub(super) fn open_handle(
        &self,
        path: &RelPath,
        mode: OpenFor,
        handle: FsHandle,
        inline_max: u32,
        reading: Reading,
    ) -> Result<Option<FsOk>, Errno> {
        let write = match mode {
            OpenFor::Read => None,
            OpenFor::Write => Some(OFlags::WRONLY),
            OpenFor::Append => Some(OFlags::WRONLY | OFlags::APPEND),
        };
        if let Some(flags) = write {
            // Opened only to ask; closed at once. Writes go to a staging
            // copy, never through a descriptor of the file itself.
            let probe = self.open_beneath(path, OFlags::PATH)?;
            drop(self.regular(&probe, flags | OFlags::NOCTTY)?);
        }
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
        self.keep_handle(handle, file)?;
        let a = attr(&st).ok_or(Errno::NoEnt)?;
        Ok(Some(FsOk::Opened(a, inline)))
    }

    /// Keeps `file` open as `handle`, within the handle limit.
    fn keep_handle(&self, handle: FsHandle, file: File) -> Result<(), Errno> {
        let mut handles = lock(&self.handles);
        if !handles.contains_key(&handle) && handles.len() >= self.cfg.max_handles {
            return Err(Errno::Again);
        }
        handles.insert(handle, Arc::new(file));
        Ok(())
    }

    /// The open file behind `handle`.
    pub(super) fn handle(&self, handle: FsHandle) -> Result<Arc<File>, Errno> {
        lock(&self.handles).get(&handle).cloned().ok_or(Errno::BadF)
    }

    pub(super) fn read(&self, from: ReadFrom, offset: u64, len: u32) -> FsResult {
        let file = match from {
            ReadFrom::Path(p) => Arc::new(self.open_file(&p)?.0),
            ReadFrom::Handle(h) => self.handle(h)?,
        };
        waited(self.read_through(&file, offset, len, Reading::Wait))
    }

    /// Up to `len` bytes of `file` from `offset`, with the attributes of
    /// the same open file; `Ok(None)` if they would wait for the disk and
    /// `reading` says they may not.
    pub(super) fn read_through(
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

    /// Creates a regular file, and opens it with `open`; `Ok(None)` if a
    /// file made first by someone else is small and its bytes would wait
    /// for the disk while `reading` says they may not (as an open).
    pub(super) fn create(
        &self,
        path: &RelPath,
        mode: u32,
        owner: Option<Owner>,
        exclusive: bool,
        open: Option<OpenAs>,
        reading: Reading,
    ) -> Result<Option<FsOk>, Errno> {
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
                give(&fd, &dir, owner)?;
                // Exactly the requested bits: the client's umask was applied
                // on the client; the host's must not be applied again.
                rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
                let Some(open) = open else {
                    return fd_attr(&fd).map(Some);
                };
                // The descriptor that made it is the handle (read-only, as
                // every handle: writes go to staging copies).
                let st = rfs::fstat(&fd).map_err(sys)?;
                let a = attr(&st).ok_or(Errno::NoEnt)?;
                self.keep_handle(open.handle, File::from(fd))?;
                Ok(Some(FsOk::Opened(a, Bytes::new())))
            }
            Err(SysErrno::EXIST) if !exclusive => {
                let st = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
                match kind_of(&st) {
                    Some(FileKind::File) => {}
                    Some(FileKind::Dir) => return Err(Errno::IsDir),
                    Some(FileKind::Symlink) => return Err(Errno::Loop),
                    // The client's kernel opens a FIFO or socket itself,
                    // once it has looked it up.
                    Some(
                        FileKind::Fifo
                        | FileKind::Socket
                        | FileKind::CharDevice
                        | FileKind::BlockDevice,
                    )
                    | None => return Err(Errno::Exist),
                }
                match open {
                    None => attr(&st).map(|a| Some(FsOk::Attr(a))).ok_or(Errno::NoEnt),
                    // Someone made it first: opened as it is.
                    Some(open) => {
                        self.open_handle(path, OpenFor::Read, open.handle, open.inline_max, reading)
                    }
                }
            }
            Err(e) => Err(sys(e)),
        }
    }

    pub(super) fn mkdir(&self, path: &RelPath, mode: u32, owner: Option<Owner>) -> FsResult {
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
        give(&fd, &dir, owner)?;
        // A directory made in one with the set-group-ID bit inherits it
        // (Linux sets it at mkdir; the exact mode set here must keep it).
        let inherited = if set_gid(&dir) { 0o2000 } else { 0 };
        rfs::fchmod(&fd, Mode::from_raw_mode((mode & 0o7777) | inherited)).map_err(sys)?;
        fd_attr(&fd)
    }

    pub(super) fn symlink(&self, path: &RelPath, target: &[u8], owner: Option<Owner>) -> FsResult {
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        // The text is stored, never resolved.
        rfs::symlinkat(os(target), &dir, n).map_err(sys)?;
        if let Some(o) = owner {
            let gid = (!set_gid(&dir)).then_some(rfs::Gid::from_raw(o.gid));
            rfs::chownat(
                &dir,
                n,
                Some(rfs::Uid::from_raw(o.uid)),
                gid,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys)?;
        }
        let st = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
        attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt)
    }

    /// A second name for the file at `path` if it is the file `key`
    /// (never a directory: the kernel refuses with EPERM). The file is
    /// pinned first (an `O_PATH` descriptor, not following a symlink, so
    /// a symlink is linked itself) and its identity checked; the link is
    /// then made to that descriptor's file through `/proc/self/fd`, so no
    /// file put at the name meanwhile can get the new name. Nothing is
    /// opened and nothing outside the share is reached.
    pub(super) fn link(&self, path: &RelPath, to: &RelPath, key: FileKey) -> FsResult {
        let probe = self.open_beneath(path, OFlags::PATH)?;
        let st = rfs::fstat(&probe).map_err(sys)?;
        if attr(&st).map(|a| a.key) != Some(key) {
            return Err(Errno::Stale);
        }
        let (to_dir, to) = self.entry(to)?;
        let to = os(to.as_bytes());
        rfs::linkat(
            self.proc_fds(),
            self.fd_name(&probe).as_str(),
            &to_dir,
            to,
            AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(sys)?;
        let st = rfs::statat(&to_dir, to, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
        attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt)
    }

    /// A FIFO, a socket's name, a device node (the host core allows it
    /// or not) or an empty regular file, exactly `mode` (set after,
    /// through its /proc/self/fd link: `mknodat` applies the host's
    /// umask), given to `owner` first.
    pub(super) fn mknod(
        &self,
        path: &RelPath,
        kind: FileKind,
        mode: u32,
        rdev: u64,
        owner: Option<Owner>,
    ) -> FsResult {
        let file_type = match kind {
            FileKind::Fifo => FileType::Fifo,
            FileKind::Socket => FileType::Socket,
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            FileKind::File => FileType::RegularFile,
            FileKind::Dir | FileKind::Symlink => return Err(Errno::Inval),
        };
        let rdev = if kind.is_device() { rdev } else { 0 };
        let (dir, name) = self.entry(path)?;
        let n = os(name.as_bytes());
        rfs::mknodat(&dir, n, file_type, Mode::from_raw_mode(0o600), rdev).map_err(sys)?;
        let probe = rfs::openat(
            &dir,
            n,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        if FileType::from_raw_mode(rfs::fstat(&probe).map_err(sys)?.st_mode) != file_type {
            // Replaced in the instant since: not ours to change.
            return Err(Errno::Exist);
        }
        let (fds, link) = (self.proc_fds(), self.fd_name(&probe));
        if let Some(o) = owner {
            let gid = (!set_gid(&dir)).then_some(rfs::Gid::from_raw(o.gid));
            rfs::chownat(
                fds,
                link.as_str(),
                Some(rfs::Uid::from_raw(o.uid)),
                gid,
                AtFlags::empty(),
            )
            .map_err(sys)?;
        }
        rfs::chmodat(
            fds,
            link.as_str(),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(sys)?;
        fd_attr(&probe)
    }

    pub(super) fn remove(&self, path: &RelPath, flags: AtFlags) -> FsResult {
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
        Ok(FsOk::Done)
    }

    pub(super) fn rename(&self, from: &RelPath, to: &RelPath) -> FsResult {
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
        Ok(FsOk::Done)
    }

    pub(super) fn set_attr(&self, path: &RelPath, set: SetAttr) -> FsResult {
        // One O_PATH descriptor names the file throughout: it opens
        // nothing (a FIFO gets no reader), and a name swapped meanwhile
        // changes nothing here.
        let probe = self.open_beneath(path, OFlags::PATH)?;
        let st = rfs::fstat(&probe).map_err(sys)?;
        let kind = kind_of(&st).ok_or(Errno::NoEnt)?;
        if let Some(size) = set.size {
            kind.truncatable()?;
            if size > self.cfg.max_file {
                return Err(Errno::FBig);
            }
        }
        let times = times(&set);
        if kind == FileKind::Symlink {
            // Linux keeps a symlink's mode at 0777 and cannot change it.
            if set.mode.is_some() {
                return Err(Errno::NotSup);
            }
            let (dir, name) = self.entry(path)?;
            let n = os(name.as_bytes());
            if set.chowns() {
                rfs::chownat(
                    &dir,
                    n,
                    uid(set.uid),
                    gid(set.gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(sys)?;
            }
            if let Some(t) = &times {
                rfs::utimensat(&dir, n, t, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
            }
            let st = rfs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW).map_err(sys)?;
            return attr(&st).map(FsOk::Attr).ok_or(Errno::NoEnt);
        }
        if kind.is_special() {
            // Changed through its /proc/self/fd link, which reaches the
            // inode without opening it.
            let (fds, n) = (self.proc_fds(), self.fd_name(&probe));
            if set.chowns() {
                rfs::chownat(
                    fds,
                    n.as_str(),
                    uid(set.uid),
                    gid(set.gid),
                    AtFlags::empty(),
                )
                .map_err(sys)?;
            }
            if let Some(mode) = set.mode {
                rfs::chmodat(
                    fds,
                    n.as_str(),
                    Mode::from_raw_mode(mode & 0o7777),
                    AtFlags::empty(),
                )
                .map_err(sys)?;
            }
            if let Some(t) = &times {
                rfs::utimensat(fds, n.as_str(), t, AtFlags::empty()).map_err(sys)?;
            }
            return fd_attr(&probe);
        }
        // A file or directory: changed through a descriptor of the same
        // file.
        let access = if set.size.is_some() {
            OFlags::WRONLY
        } else {
            OFlags::RDONLY
        };
        let fd = self.reopen(&probe, access | OFlags::NOCTTY)?;
        if let Some(size) = set.size {
            rfs::ftruncate(&fd, size).map_err(sys)?;
        }
        // Owner before mode: a chown clears the set-id bits, a mode set
        // with it is meant to hold after it.
        if set.chowns() {
            rfs::fchown(&fd, uid(set.uid), gid(set.gid)).map_err(sys)?;
        }
        if let Some(mode) = set.mode {
            rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(sys)?;
        }
        if let Some(t) = &times {
            rfs::futimens(&fd, t).map_err(sys)?;
        }
        fd_attr(&fd)
    }
}

/// Gives the new file `fd`, made in `dir`, to `owner` (where the host
/// preserves owners): before its mode is set, as a chown clears the
/// set-id bits. Its group stays the directory's where the directory has
/// the set-group-ID bit, as Linux made it.
pub(super) fn give(fd: impl AsFd, dir: impl AsFd, owner: Option<Owner>) -> Result<(), Errno> {
    let Some(o) = owner else {
        return Ok(());
    };
    let gid = (!set_gid(dir)).then_some(rfs::Gid::from_raw(o.gid));
    rfs::fchown(fd, Some(rfs::Uid::from_raw(o.uid)), gid).map_err(sys)
}

/// Whether directory `dir` has the set-group-ID bit.
fn set_gid(dir: impl AsFd) -> bool {
    rfs::fstat(dir).is_ok_and(|st| st.st_mode & 0o2000 != 0)
}

fn uid(id: Option<u32>) -> Option<rfs::Uid> {
    id.map(rfs::Uid::from_raw)
}

fn gid(id: Option<u32>) -> Option<rfs::Gid> {
    id.map(rfs::Gid::from_raw)
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
pub(super) enum Reading {
    /// From the disk if need be (the pool's way).
    Wait,
    /// Only what the page cache holds (the caller must not block).
    CachedOnly,
}

impl Reading {
    /// Up to `want` bytes of `file` from `offset`; `None` only for
    /// [`Reading::CachedOnly`], when they would wait for the disk.
    pub(super) fn read(
        self,
        file: &File,
        offset: u64,
        want: usize,
    ) -> Result<Option<Bytes>, Errno> {
        match self {
            Reading::Wait => read_from(file, offset, want).map(Some),
            Reading::CachedOnly => read_cached(file, offset, want),
        }
    }
}

/// The answer of an operation allowed to wait (so never "would wait").
pub(super) fn waited(done: Result<Option<FsOk>, Errno>) -> FsResult {
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
