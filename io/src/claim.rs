//! An exclusive claim on a directory for this process's lifetime: an
//! `flock` on it, which the kernel drops when the process ends, however it
//! ends. A host claims the folder it shares (one folder, one host: two
//! hosts would keep two lock tables, so their clients could write one
//! file at once, and each would take the other's staging files for a
//! crash's leftovers); a mount claims its mountpoint before mounting (two
//! mounts started at once on one directory would stack, and one unmount
//! would remove both).
//!
//! (Two hosts of nested folders, one sharing a subfolder of the other's,
//! are not detected.)

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};

/// The exclusive claim on a directory; released when dropped.
#[derive(Debug)]
pub(crate) struct DirClaim {
    _dir: OwnedFd,
}

/// Why a directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// Another process holds it now.
    #[error("claimed by another process")]
    Busy,
    /// It cannot be opened or locked.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl DirClaim {
    /// Claims `dir` for this process, unless another process has it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirClaim, ClaimError> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirClaim { _dir: fd }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(ClaimError::Busy),
            Err(e) => Err(ClaimError::Io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_one_claim_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirClaim::acquire(dir.path()).expect("the first claims it");
        let second = DirClaim::acquire(dir.path()).expect_err("a second is refused");
        assert!(matches!(second, ClaimError::Busy), "{second}");
        drop(first);
        DirClaim::acquire(dir.path()).expect("free again once the first is gone");
    }
}
