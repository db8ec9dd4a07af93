//! Extended attributes ([`FsOp::GetXattr`] and its kin): read and written
//! through a descriptor of the file itself, opened only if it is a
//! regular file or a directory. Anything else is never opened (as for
//! content, [`HostFs::regular`]): a special file or symlink has nothing
//! to read (ENODATA, an empty list) and takes nothing (EPERM), which is
//! what Linux answers for the `user.` namespace.
//!
//! [`FsOp::GetXattr`]: wormhole_core::host::FsOp::GetXattr

use rustix::fs::{self as rfs, FileType, OFlags, XattrFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use wormhole_core::host::{FsOk, FsResult, RelPath};
use wormhole_core::proto::{CAPABILITY_XATTR, Errno, FileKey, MAX_XATTR_SIZE, XattrSet};

use super::{HostFs, attr, fd_attr, os, sys};

/// Gives the staged copy of the file `name` in `dir` the file's
/// extended attributes, as they are at its commit: all but the
/// capability, which a write drops ([`CAPABILITY_XATTR`]). Read by path
/// through the directory's descriptor, without following a symlink and
/// without opening the file: one system call when it has none, the
/// usual case. Best effort, as `cp --preserve=xattr`: one the host may
/// not read or write (another namespace, as an ordinary user) is left
/// behind.
pub(super) fn copy_xattrs(dir: &OwnedFd, name: &[u8], to: &File) {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = os(&path);
    let mut names = [0u8; 4096];
    let len = match rfs::llistxattr(path, &mut names[..]) {
        Ok(0) => return,
        Ok(len) => len,
        // More names than fit here: read them all.
        Err(rustix::io::Errno::RANGE) => {
            let mut all = vec![0u8; MAX_XATTR_SIZE];
            let Ok(len) = rfs::llistxattr(path, &mut all[..]) else {
                return;
            };
            return copy_named(path, &all[..len], to);
        }
        Err(_) => return,
    };
    copy_named(path, &names[..len], to);
}

fn copy_named(path: &std::ffi::OsStr, names: &[u8], to: &File) {
    let mut value = vec![0u8; MAX_XATTR_SIZE];
    for name in names.split(|&b| b == 0) {
        if name.is_empty() || name == CAPABILITY_XATTR {
            continue;
        }
        if let Ok(n) = rfs::lgetxattr(path, os(name), &mut value[..]) {
            let _ = rfs::fsetxattr(to, os(name), &value[..n], XattrFlags::empty());
        }
    }
}

impl HostFs {
    /// The regular file or directory at `path` (not following a final
    /// symlink), opened for reading; ESTALE if it is not the file `key`
    /// names (another was renamed there), EPERM for anything else.
    fn xattr_fd(&self, path: &RelPath, key: Option<FileKey>) -> Result<OwnedFd, Errno> {
        let probe = self.open_beneath(path, OFlags::PATH)?;
        let st = rfs::fstat(&probe).map_err(sys)?;
        if key.is_some() && attr(&st).map(|a| a.key) != key {
            return Err(Errno::Stale);
        }
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY)?.0),
            FileType::Directory => self.reopen(&probe, OFlags::RDONLY | OFlags::DIRECTORY),
            _ => Err(Errno::Perm),
        }
    }

    pub(super) fn get_xattr(&self, path: &RelPath, key: Option<FileKey>, name: &[u8]) -> FsResult {
        let fd = match self.xattr_fd(path, key) {
            Err(Errno::Perm) => return Err(Errno::NoData),
            other => other?,
        };
        let mut buf = vec![0u8; MAX_XATTR_SIZE];
        let len = rfs::fgetxattr(&fd, os(name), &mut buf[..]).map_err(sys)?;
        buf.truncate(len);
        Ok(FsOk::Xattr(buf))
    }

    pub(super) fn list_xattr(&self, path: &RelPath, key: Option<FileKey>) -> FsResult {
        let fd = match self.xattr_fd(path, key) {
            Err(Errno::Perm) => return Ok(FsOk::Xattr(Vec::new())),
            other => other?,
        };
        let mut buf = vec![0u8; MAX_XATTR_SIZE];
        let len = rfs::flistxattr(&fd, &mut buf[..]).map_err(sys)?;
        buf.truncate(len);
        Ok(FsOk::Xattr(buf))
    }

    pub(super) fn set_xattr(
        &self,
        path: &RelPath,
        key: Option<FileKey>,
        name: &[u8],
        value: &[u8],
        how: XattrSet,
    ) -> FsResult {
        let fd = self.xattr_fd(path, key)?;
        let flags = match how {
            XattrSet::Either => XattrFlags::empty(),
            XattrSet::Create => XattrFlags::CREATE,
            XattrSet::Replace => XattrFlags::REPLACE,
        };
        rfs::fsetxattr(&fd, os(name), value, flags).map_err(sys)?;
        fd_attr(&fd)
    }

    pub(super) fn remove_xattr(
        &self,
        path: &RelPath,
        key: Option<FileKey>,
        name: &[u8],
    ) -> FsResult {
        let fd = self.xattr_fd(path, key)?;
        rfs::fremovexattr(&fd, os(name)).map_err(sys)?;
        fd_attr(&fd)
    }
}
