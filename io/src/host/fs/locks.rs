//! Clients' record locks held on the host's own files
//! ([`FsOp::HoldLocks`](wormhole_core::host::FsOp::HoldLocks)), so that
//! the host's local programs and the clients keep each other out
//! (docs/filesystem.md, "Programs on the host").
//!
//! Each holder (a client's lock owner on one file) has a descriptor of
//! its own on the file: an open file description, whose `F_OFD_SETLK`
//! locks conflict with any other description's and any process's
//! `fcntl` locks, as the kernel's rules say, and go when it is closed.
//! The core decides between clients; this only holds what it says.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use rustix::fs::{self as rfs, OFlags};
use wormhole_core::host::{FsOk, FsResult, LockHolder, RelPath};
use wormhole_core::proto::{ByteRange, Errno, LockKind};

use super::{HostFs, lock};

/// One holder's descriptor and what it holds.
#[derive(Debug)]
pub(super) struct Holder {
    file: File,
    locks: Vec<(ByteRange, LockKind)>,
}

/// The holders, each with its descriptor.
pub(super) type Holders = HashMap<LockHolder, Holder>;

/// What a range is locked as, or unlocked.
#[derive(Clone, Copy)]
enum Set {
    Lock(LockKind),
    Unlock,
}

/// `F_OFD_SETLK` of `range` on `file`.
fn set(file: &File, range: ByteRange, how: Set) -> Result<(), Errno> {
    let start = i64::try_from(range.start).map_err(|_| Errno::Inval)?;
    // To the end of every file, however it grows: length 0.
    let len = if range.end >= i64::MAX as u64 {
        0
    } else {
        i64::try_from(range.end - range.start + 1).map_err(|_| Errno::Inval)?
    };
    let l_type = match how {
        Set::Lock(LockKind::Shared) => libc::F_RDLCK,
        Set::Lock(LockKind::Exclusive) => libc::F_WRLCK,
        Set::Unlock => libc::F_UNLCK,
    };
    let mut fl = unlocked();
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&fl))
        .map(|_| ())
        .map_err(|e| match e {
            nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES => Errno::Again,
            other => Errno::from_raw(other as i32),
        })
}

/// A `struct flock` of zeros (`l_pid` must be 0 for OFD locks).
fn unlocked() -> libc::flock {
    libc::flock {
        l_type: 0,
        l_whence: 0,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// The bytes `locks` (in order, disjoint) leave out.
fn gaps(locks: &[(ByteRange, LockKind)]) -> Vec<ByteRange> {
    let end = i64::MAX as u64;
    let mut out = Vec::new();
    let mut from = 0u64;
    for (r, _) in locks {
        if r.start > from {
            out.push(ByteRange {
                start: from,
                end: r.start - 1,
            });
        }
        if r.end >= end {
            return out;
        }
        from = r.end + 1;
    }
    out.push(ByteRange { start: from, end });
    out
}

/// Makes `file` hold exactly `locks`, from `held`. If a lock is in the
/// way (EAGAIN), `held` is put back.
fn hold(
    file: &File,
    held: &[(ByteRange, LockKind)],
    locks: &[(ByteRange, LockKind)],
) -> Result<(), Errno> {
    let apply = |locks: &[(ByteRange, LockKind)]| -> Result<(), Errno> {
        for &(r, k) in locks {
            set(file, r, Set::Lock(k))?;
        }
        for g in gaps(locks) {
            set(file, g, Set::Unlock)?;
        }
        Ok(())
    };
    apply(locks).inspect_err(|_| {
        // Back to what was held: this takes nothing new, so only a lock
        // held here before and given up above could now be in the way.
        let _ = apply(held);
    })
}

impl HostFs {
    /// [`FsOp::HoldLocks`](wormhole_core::host::FsOp::HoldLocks).
    pub(super) fn hold_locks(
        &self,
        path: Option<RelPath>,
        holder: LockHolder,
        locks: Vec<(ByteRange, LockKind)>,
    ) -> FsResult {
        let mut holders = lock(&self.held_locks);
        if locks.is_empty() {
            // Closing the descriptor lets go of all it holds.
            holders.remove(&holder);
            return Ok(FsOk::Done);
        }
        let path = path.ok_or(Errno::NoEnt)?;
        // Never a special file (the host opens none for a client); for
        // writing where it may, as a write lock needs.
        let probe = self.open_beneath(&path, OFlags::PATH)?;
        let (fd, st) = match self.regular(&probe, OFlags::RDWR | OFlags::NOCTTY) {
            Err(Errno::Acces | Errno::Perm | Errno::RoFs) => {
                self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY)?
            }
            other => other?,
        };
        let same = holders.get(&holder).is_some_and(|h| {
            rfs::fstat(&h.file)
                .is_ok_and(|held| (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino))
        });
        match holders.get_mut(&holder) {
            Some(h) if same => {
                hold(&h.file, &h.locks, &locks)?;
                h.locks = locks;
            }
            _ => {
                // A new file at the path (or a first lock): held on a
                // descriptor of it; the old one's close lets go of the
                // file the path no longer names.
                let file = File::from(fd);
                hold(&file, &[], &locks)?;
                holders.insert(holder, Holder { file, locks });
            }
        }
        Ok(FsOk::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_the_bytes_left_out() {
        let r = |start, end| ByteRange { start, end };
        let s = LockKind::Shared;
        let max = i64::MAX as u64;
        assert_eq!(gaps(&[]), vec![r(0, max)]);
        assert_eq!(gaps(&[(r(0, max), s)]), vec![]);
        assert_eq!(
            gaps(&[(r(5, 9), s), (r(20, 29), s)]),
            vec![r(0, 4), r(10, 19), r(30, max)]
        );
        assert_eq!(gaps(&[(r(0, 4), s), (r(5, max), s)]), vec![]);
    }
}
