//! One host per shared folder. Two hosts over one directory would keep
//! two lock tables, so their clients could write one file at once, and
//! each would take the other's staging files for a crash's leftovers. A
//! host holds an exclusive `flock` on the folder for its lifetime; the
//! kernel drops it when the process ends, however it ends.
//!
//! (Two hosts of nested folders, one sharing a subfolder of the other's,
//! are not detected.)

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};

/// The exclusive claim on a shared folder; released when dropped.
#[derive(Debug)]
pub struct ShareLock {
    _dir: OwnedFd,
}

/// Why a folder could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ShareLockError {
    /// Another host shares it now.
    #[error(
        "{0} is already shared by another wormhole host on this machine (one folder, one host: \
         two would let their clients overwrite each other's writes)"
    )]
    Busy(String),
    /// It cannot be opened or locked.
    #[error("cannot lock {dir} for sharing: {source}")]
    Io {
        /// The folder.
        dir: String,
        /// Why.
        source: io::Error,
    },
}

impl ShareLock {
    /// Claims `root` for this process, or says who has it.
    pub fn acquire(root: &Path) -> Result<ShareLock, ShareLockError> {
        let shown = || root.display().to_string();
        let io = |e: rustix::io::Errno| ShareLockError::Io {
            dir: shown(),
            source: e.into(),
        };
        let dir = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        match rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(ShareLock { _dir: dir }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(ShareLockError::Busy(shown())),
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_has_one_host_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ShareLock::acquire(dir.path()).expect("the first host claims it");
        let second = ShareLock::acquire(dir.path()).expect_err("a second host is refused");
        assert!(second.to_string().contains("already shared"), "{second}");
        drop(first);
        ShareLock::acquire(dir.path()).expect("free again once the first host is gone");
    }
}
