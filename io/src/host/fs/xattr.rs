//! Extended attributes ([`FsOp::GetXattr`] and its kin): read and written
//! through a descriptor of the file itself, opened only if it is a
//! regular file or a directory. Anything else is never opened (as for
//! content, [`HostFs::regular`]): a special file or symlink has nothing
//! to read (ENODATA, an empty list) and takes nothing (EPERM), which is
//! what Linux answers for the `user.` namespace.
//!
//! [`FsOp::GetXattr`]: wormhole_core::host::FsOp::GetXattr

use rustix::fs::{self as rfs, FileType, OFlags, XattrFlags};
use std::os::fd::OwnedFd;
use wormhole_core::host::{FsOk, FsResult, RelPath};
use wormhole_core::proto::{Errno, MAX_XATTR_SIZE, XattrSet};

use super::{HostFs, fd_attr, os, sys};

impl HostFs {
    /// The regular file or directory at `path` (not following a final
    /// symlink), opened for reading; EPERM for anything else.
    fn xattr_fd(&self, path: &RelPath) -> Result<OwnedFd, Errno> {
        let probe = self.open_beneath(path, OFlags::PATH)?;
        let st = rfs::fstat(&probe).map_err(sys)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY)?.0),
            FileType::Directory => self.reopen(&probe, OFlags::RDONLY | OFlags::DIRECTORY),
            _ => Err(Errno::Perm),
        }
    }

    pub(super) fn get_xattr(&self, path: &RelPath, name: &[u8]) -> FsResult {
        let fd = match self.xattr_fd(path) {
            Err(Errno::Perm) => return Err(Errno::NoData),
            other => other?,
        };
        let mut buf = vec![0u8; MAX_XATTR_SIZE];
        let len = rfs::fgetxattr(&fd, os(name), &mut buf[..]).map_err(sys)?;
        buf.truncate(len);
        Ok(FsOk::Xattr(buf))
    }

    pub(super) fn list_xattr(&self, path: &RelPath) -> FsResult {
        let fd = match self.xattr_fd(path) {
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
        name: &[u8],
        value: &[u8],
        how: XattrSet,
    ) -> FsResult {
        let fd = self.xattr_fd(path)?;
        let flags = match how {
            XattrSet::Either => XattrFlags::empty(),
            XattrSet::Create => XattrFlags::CREATE,
            XattrSet::Replace => XattrFlags::REPLACE,
        };
        rfs::fsetxattr(&fd, os(name), value, flags).map_err(sys)?;
        fd_attr(&fd)
    }

    pub(super) fn remove_xattr(&self, path: &RelPath, name: &[u8]) -> FsResult {
        let fd = self.xattr_fd(path)?;
        rfs::fremovexattr(&fd, os(name)).map_err(sys)?;
        fd_attr(&fd)
    }
}
