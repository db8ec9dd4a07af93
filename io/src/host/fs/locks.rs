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

use rustix::fs::Stat;

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use rustix::fs::{self as rfs, OFlags};
use wormhole_core::host::{FsOk, FsResult, LockHolder, RelPath};
use wormhole_core::proto::FileKey;
use wormhole_core::proto::{ByteRange, Errno, LockKind};

use super::{HostFs, lock, sys};

/// One holder's descriptor and what it holds.
#[derive(Debug)]
pub(super) struct Holder {
    file: File,
    locks: Vec<(ByteRange, LockKind)>,
}

/// The holders, each with its descriptor.
pub(super) type Holders = HashMap<LockHolder, Holder>;

/// Descriptors kept open, holding nothing, for holders that let go. A
/// descriptor open for writing is reported by the watcher when it is
/// closed, as if the file had changed (`IN_CLOSE_WRITE`), and the host
/// would tell every client so; a program that locks and unlocks a file
/// over and over (SQLite) keeps its owner's descriptor instead. Beyond
/// this many, idle ones are closed.
const MAX_IDLE: usize = 64;

/// What a range is locked as, or unlocked.
#[derive(Clone, Copy)]
enum Set {
    Lock(LockKind),
    Unlock,
}

/// The `struct flock` of `range`, to lock as `how`.
fn flock_of(range: ByteRange, how: Set) -> Result<libc::flock, Errno> {
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
    Ok(fl)
}

/// `F_OFD_SETLK` of `range` on `file`.
fn set(file: &File, range: ByteRange, how: Set) -> Result<(), Errno> {
    let fl = flock_of(range, how)?;
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

/// Makes `file` hold exactly `locks`, from `held`, changing only what
/// differs (an owner may hold thousands of ranges, and each request
/// sends them all). If a lock is in the way (EAGAIN), `held` is put
/// back.
fn hold(
    file: &File,
    held: &[(ByteRange, LockKind)],
    locks: &[(ByteRange, LockKind)],
) -> Result<(), Errno> {
    // Both in order and disjoint: one range per start.
    let within = |set: &[(ByteRange, LockKind)], l: &(ByteRange, LockKind)| {
        set.binary_search_by_key(&l.0.start, |(r, _)| r.start)
            .is_ok_and(|i| set[i] == *l)
    };
    let change = || -> Result<(), Errno> {
        for l in locks.iter().filter(|l| !within(held, l)) {
            set(file, l.0, Set::Lock(l.1))?;
        }
        // A range no longer held as it was: its bytes the new set does
        // not cover go (those it covers were set above).
        for l in held.iter().filter(|l| !within(locks, l)) {
            let from = locks.partition_point(|(r, _)| r.end < l.0.start);
            let over: Vec<ByteRange> = locks[from..]
                .iter()
                .take_while(|(r, _)| r.start <= l.0.end)
                .map(|(r, _)| *r)
                .collect();
            for part in l.0.minus(&over) {
                set(file, part, Set::Unlock)?;
            }
        }
        Ok(())
    };
    change().inspect_err(|_| {
        // Back to what was held, every range: this takes nothing new, so
        // only a lock held here before and given up above could now be
        // in the way.
        let _ = held
            .iter()
            .try_for_each(|&(r, k)| set(file, r, Set::Lock(k)))
            .and_then(|()| {
                gaps(held)
                    .into_iter()
                    .try_for_each(|g| set(file, g, Set::Unlock))
            });
    })
}

/// Gives the holders the descriptors [`HostFs::locks_onto`] locked, once
/// the rename put their file in place.
pub(super) fn moved(holders: &mut Holders, moving: Vec<(LockHolder, File)>) {
    for (holder, file) in moving {
        if let Some(h) = holders.get_mut(&holder) {
            h.file = file;
        }
    }
}

impl HostFs {
    /// Before a commit's rename puts `staged` in the place of the file
    /// `old`: each holder's locks on `old` taken on `staged` through a
    /// new description of it, for [`moved`] once the rename is done
    /// (dropped if it fails, which lets go of them). A holder whose
    /// locks cannot be taken there (nothing else has the staged file
    /// open) keeps the old file; the core holds its locks again after
    /// the commit.
    pub(super) fn locks_onto(
        &self,
        holders: &Holders,
        old: &Stat,
        staged: &File,
    ) -> Vec<(LockHolder, File)> {
        holders
            .iter()
            .filter(|(_, h)| {
                !h.locks.is_empty()
                    && rfs::fstat(&h.file)
                        .is_ok_and(|s| (s.st_dev, s.st_ino) == (old.st_dev, old.st_ino))
            })
            .filter_map(|(&holder, h)| {
                let fd = self
                    .reopen(staged, OFlags::RDWR)
                    .or_else(|_| self.reopen(staged, OFlags::RDONLY))
                    .ok()?;
                let file = File::from(fd);
                hold(&file, &[], &h.locks).ok()?;
                Some((holder, file))
            })
            .collect()
    }

    /// [`FsOp::HoldLocks`](wormhole_core::host::FsOp::HoldLocks).
    pub(super) fn hold_locks(
        &self,
        path: Option<RelPath>,
        holder: LockHolder,
        key: Option<FileKey>,
        locks: Vec<(ByteRange, LockKind)>,
    ) -> FsResult {
        let mut holders = lock(&self.held_locks);
        if locks.is_empty() {
            if let Some(h) = holders.get_mut(&holder) {
                // Kept open, holding nothing ([`MAX_IDLE`]).
                if hold(&h.file, &h.locks, &[]).is_err() {
                    holders.remove(&holder);
                } else {
                    h.locks.clear();
                }
            }
            let idle: Vec<LockHolder> = holders
                .iter()
                .filter(|(_, h)| h.locks.is_empty())
                .map(|(&k, _)| k)
                .collect();
            for k in idle.iter().skip(MAX_IDLE) {
                holders.remove(k);
            }
            return Ok(FsOk::Done);
        }
        let path = path.ok_or(Errno::NoEnt)?;
        let probe = self.open_beneath(&path, OFlags::PATH)?;
        let st = rfs::fstat(&probe).map_err(sys)?;
        if key.is_some_and(|k| (k.dev, k.ino) != (st.st_dev, st.st_ino)) {
            return Err(Errno::Stale);
        }
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
                // Asked first through a descriptor that is not for
                // writing: a refused take then closes nothing the
                // watcher reports (every retry of a wait would otherwise
                // tell every client the file changed).
                let (reader, _) = self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY)?;
                if in_the_way(&File::from(reader), &locks)? {
                    return Err(Errno::Again);
                }
                // For writing where it may, as a write lock needs. A
                // new file at the path (or a first lock): held on a
                // descriptor of it; the old one's close lets go of the
                // file the path no longer names.
                let (fd, _) = match self.regular(&probe, OFlags::RDWR | OFlags::NOCTTY) {
                    Err(Errno::Acces | Errno::Perm | Errno::RoFs) => {
                        self.regular(&probe, OFlags::RDONLY | OFlags::NOCTTY)?
                    }
                    other => other?,
                };
                let file = File::from(fd);
                hold(&file, &[], &locks)?;
                holders.insert(holder, Holder { file, locks });
            }
        }
        Ok(FsOk::Done)
    }
}

/// Whether another description's or process's lock is in the way of
/// `locks` (`F_OFD_GETLK`, which any descriptor may ask).
fn in_the_way(file: &File, locks: &[(ByteRange, LockKind)]) -> Result<bool, Errno> {
    for &(range, kind) in locks {
        let mut fl = flock_of(range, Set::Lock(kind))?;
        fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl))
            .map_err(|e| Errno::from_raw(e as i32))?;
        if i32::from(fl.l_type) != libc::F_UNLCK {
            return Ok(true);
        }
    }
    Ok(false)
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
