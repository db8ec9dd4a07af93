//! POSIX error numbers, one-to-one on the wire.

use serde::{Deserialize, Serialize};

/// An error a file operation can return. Each variant is one POSIX errno
/// (Linux numbering), so the client hands it to the kernel unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Errno {
    /// EPERM: operation not permitted.
    #[error("operation not permitted")]
    Perm,
    /// ENOENT: no such file or directory.
    #[error("no such file or directory")]
    NoEnt,
    /// EIO: input/output error.
    #[error("input/output error")]
    Io,
    /// EBADF: bad file handle.
    #[error("bad file handle")]
    BadF,
    /// EAGAIN: try again (a lock is held and the request asked not to wait).
    #[error("resource temporarily unavailable")]
    Again,
    /// EACCES: permission denied.
    #[error("permission denied")]
    Acces,
    /// EBUSY: resource busy.
    #[error("resource busy")]
    Busy,
    /// EEXIST: file exists.
    #[error("file exists")]
    Exist,
    /// EXDEV: cross-device link.
    #[error("cross-device link")]
    XDev,
    /// ENOTDIR: not a directory.
    #[error("not a directory")]
    NotDir,
    /// EISDIR: is a directory.
    #[error("is a directory")]
    IsDir,
    /// EINVAL: invalid argument.
    #[error("invalid argument")]
    Inval,
    /// EFBIG: file too large.
    #[error("file too large")]
    FBig,
    /// ENOSPC: no space left on device.
    #[error("no space left on device")]
    NoSpc,
    /// EROFS: read-only file system.
    #[error("read-only file system")]
    RoFs,
    /// ENAMETOOLONG: file name too long.
    #[error("file name too long")]
    NameTooLong,
    /// ENOLCK: no locks available.
    #[error("no locks available")]
    NoLck,
    /// ENOTEMPTY: directory not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// ELOOP: too many levels of symbolic links (or a symlink where none
    /// may be followed).
    #[error("too many levels of symbolic links")]
    Loop,
    /// EOPNOTSUPP: operation not supported.
    #[error("operation not supported")]
    NotSup,
    /// ENOTCONN: not connected to the host.
    #[error("not connected")]
    NotConn,
    /// ETIMEDOUT: the host did not answer in time.
    #[error("timed out")]
    TimedOut,
    /// ESTALE: the file handle no longer names a file (host restarted or
    /// the file was replaced).
    #[error("stale file handle")]
    Stale,
    /// E2BIG: an extended attribute's value is too large.
    #[error("argument list too long")]
    TooBig,
    /// ERANGE: an extended attribute's name is too long, or its value or
    /// list larger than the buffer asked with.
    #[error("result out of range")]
    Range,
    /// ENODATA: no such extended attribute.
    #[error("no data available")]
    NoData,
    /// EDEADLK: waiting for this record lock would deadlock (its holder
    /// waits, through others, for a lock the caller holds).
    #[error("resource deadlock avoided")]
    DeadLk,
    /// EINTR: a signal interrupted the wait (a lock request waiting for
    /// another's lock). Never sent by a host: the client answers it.
    #[error("interrupted system call")]
    Intr,
}

impl Errno {
    /// Every errno, for tests and tables.
    pub const ALL: [Errno; 28] = [
        Errno::Perm,
        Errno::NoEnt,
        Errno::Io,
        Errno::BadF,
        Errno::Again,
        Errno::Acces,
        Errno::Busy,
        Errno::Exist,
        Errno::XDev,
        Errno::NotDir,
        Errno::IsDir,
        Errno::Inval,
        Errno::FBig,
        Errno::NoSpc,
        Errno::RoFs,
        Errno::NameTooLong,
        Errno::NoLck,
        Errno::NotEmpty,
        Errno::Loop,
        Errno::NotSup,
        Errno::NotConn,
        Errno::TimedOut,
        Errno::Stale,
        Errno::TooBig,
        Errno::Range,
        Errno::NoData,
        Errno::DeadLk,
        Errno::Intr,
    ];

    /// The Linux errno number.
    pub const fn raw(self) -> i32 {
        match self {
            Errno::Perm => 1,
            Errno::NoEnt => 2,
            Errno::Io => 5,
            Errno::BadF => 9,
            Errno::Again => 11,
            Errno::Acces => 13,
            Errno::Busy => 16,
            Errno::Exist => 17,
            Errno::XDev => 18,
            Errno::NotDir => 20,
            Errno::IsDir => 21,
            Errno::Inval => 22,
            Errno::FBig => 27,
            Errno::NoSpc => 28,
            Errno::RoFs => 30,
            Errno::NameTooLong => 36,
            Errno::NoLck => 37,
            Errno::NotEmpty => 39,
            Errno::Loop => 40,
            Errno::NotSup => 95,
            Errno::NotConn => 107,
            Errno::TimedOut => 110,
            Errno::Stale => 116,
            Errno::TooBig => 7,
            Errno::Range => 34,
            Errno::NoData => 61,
            Errno::DeadLk => 35,
            Errno::Intr => 4,
        }
    }

    /// The errno for a Linux errno number; numbers with no variant map to
    /// EIO, so a host error never reaches a client as something milder.
    /// So does EINTR: only a client answers it, for a wait a signal
    /// ended; a host's interrupted system call is an I/O error to its
    /// clients, not a signal they got.
    pub fn from_raw(raw: i32) -> Errno {
        Errno::ALL
            .into_iter()
            .filter(|&e| e != Errno::Intr)
            .find(|e| e.raw() == raw)
            .unwrap_or(Errno::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_are_one_to_one() {
        for e in Errno::ALL.into_iter().filter(|&e| e != Errno::Intr) {
            assert_eq!(Errno::from_raw(e.raw()), e);
        }
        assert_eq!(Errno::from_raw(4), Errno::Io, "EINTR from a host");
        let mut raws: Vec<i32> = Errno::ALL.iter().map(|e| e.raw()).collect();
        raws.sort_unstable();
        raws.dedup();
        assert_eq!(raws.len(), Errno::ALL.len());
        assert_eq!(Errno::from_raw(9999), Errno::Io);
        assert_eq!(Errno::NotEmpty.raw(), 39);
    }
}
