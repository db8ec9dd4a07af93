//! Confined path walking: every path is resolved beneath the shared root
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, in pieces short enough for the kernel.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno as SysErrno;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use wormhole_core::host::{FsAttr, RelPath};
use wormhole_core::proto::{Errno, Name};

use super::{HostFs, attr, os, sys};

/// Every path walk: stay beneath the root, take no symlink and no
/// `/proc` magic link, anywhere in the path.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` answers EAGAIN when a rename raced with a `RESOLVE_BENEATH`
/// walk; it is safe to retry, a few times.
const RESOLVE_RETRIES: usize = 8;

impl HostFs {
    /// Opens `path` beneath the root, following no symlink at all.
    pub(super) fn open_beneath(&self, path: &RelPath, flags: OFlags) -> Result<OwnedFd, Errno> {
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

    /// Opens the regular file `probe` (an `O_PATH` descriptor, which
    /// opened nothing: no FIFO reader appeared, no device driver ran) for
    /// `flags`, after checking its type: the same file, through
    /// `/proc/self/fd`, so nothing can be swapped in between. The host
    /// never opens anything else a local program may have put in the
    /// share: a FIFO, socket or device node is EPERM, a directory EISDIR,
    /// a symlink ELOOP.
    pub(super) fn regular(&self, probe: &OwnedFd, flags: OFlags) -> Result<(OwnedFd, Stat), Errno> {
        let st = rfs::fstat(probe).map_err(sys)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(Errno::IsDir),
            FileType::Symlink => return Err(Errno::Loop),
            _ => return Err(Errno::Perm),
        }
        Ok((self.reopen(probe, flags)?, st))
    }

    /// `probe`'s file opened again for `flags` (not following: the magic
    /// link is the descriptor's own file).
    pub(super) fn reopen(&self, probe: &impl AsRawFd, flags: OFlags) -> Result<OwnedFd, Errno> {
        let n = self.fd_name(probe);
        rfs::openat(
            &self.proc_fds,
            n.as_str(),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)
    }

    /// The name of `fd` in `/proc/self/fd` ([`Self::proc_fds`]): calls
    /// that take a path reach the descriptor's file through it.
    pub(super) fn fd_name(&self, fd: &impl AsRawFd) -> String {
        fd.as_raw_fd().to_string()
    }

    /// The `/proc/self/fd` directory.
    pub(super) fn proc_fds(&self) -> &OwnedFd {
        &self.proc_fds
    }

    /// The directory `path` (a symlink there is ELOOP, a file ENOTDIR).
    pub(super) fn dir(&self, path: &RelPath) -> Result<OwnedFd, Errno> {
        self.open_raw(path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The parent directory of `path` and the last name, or `None` for the
    /// root.
    pub(super) fn parent<'p>(
        &self,
        path: &'p RelPath,
    ) -> Result<Option<(OwnedFd, &'p Name)>, Errno> {
        match path.split_last() {
            None => Ok(None),
            Some((parent, name)) => Ok(Some((self.dir(&parent)?, name))),
        }
    }

    /// Like [`Self::parent`], for operations on an entry: the root is
    /// EBUSY, as in MemFs.
    pub(super) fn entry<'p>(&self, path: &'p RelPath) -> Result<(OwnedFd, &'p Name), Errno> {
        self.parent(path)?.ok_or(Errno::Busy)
    }

    /// lstat of `path`.
    pub(super) fn lstat(&self, path: &RelPath) -> Result<Stat, Errno> {
        match self.parent(path)? {
            None => rfs::fstat(&self.root).map_err(sys),
            Some((dir, name)) => {
                rfs::statat(&dir, os(name.as_bytes()), AtFlags::SYMLINK_NOFOLLOW).map_err(sys)
            }
        }
    }

    pub(super) fn stat(&self, path: &RelPath) -> Result<FsAttr, Errno> {
        attr(&self.lstat(path)?).ok_or(Errno::NoEnt)
    }
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
