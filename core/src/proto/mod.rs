//! The file protocol between a client and the host: typed requests,
//! replies and host pushes, over the [`crate::codec`].
//!
//! * Every request carries a client-chosen [`RequestId`]; its reply echoes
//!   it. Requests are independent (the transport runs each on its own
//!   stream), so a slow read never holds up a lookup.
//! * Errors are [`Errno`] values, one-to-one with POSIX, so the client
//!   passes them to the kernel unchanged.
//! * File data moves in [`CHUNK_SIZE`] chunks addressed by (file, chunk
//!   index), each with a BLAKE3 [`Checksum`] the receiver verifies.
//! * Every message type has a size limit ([`crate::codec::WireMessage`]); a
//!   malformed or oversized message is a typed error that fails its own
//!   request only.

mod errno;
mod message;
mod name;

pub use errno::Errno;
pub use message::*;
pub use name::{MAX_NAME_LEN, Name, NameError};

use serde::{Deserialize, Serialize};

/// Size of a data chunk: the unit of reads, writes, caching and checksums.
pub const CHUNK_SIZE: usize = 128 * 1024;

/// The most data one [`Request::WriteChunk`] carries: eight chunks.
///
/// A write piece is larger than a chunk because every request has a cost
/// of its own that does not depend on its size: a stream, a reply, a task
/// and a `pwrite` at the host. A sequential write sent as one request per
/// chunk spent a fifth of its time on that (1 GiB on loopback, alternating
/// builds: 717–749 MB/s with 128 KiB pieces, 864–914 MB/s with 1 MiB).
pub const MAX_WRITE_PIECE: usize = 8 * CHUNK_SIZE;

/// The most bytes one [`Request::CopyWrite`] copies: enough that a copy
/// costs few requests, little enough that one host thread is not held
/// for long (the kernel asks again for the rest).
pub const MAX_COPY: u64 = 64 << 20;

/// Directory entries per [`Reply::DirPage`] at most.
pub const MAX_DIR_PAGE: usize = 512;

/// Longest symlink target accepted (Linux PATH_MAX).
pub const MAX_SYMLINK_LEN: usize = 4096;

/// Longest extended attribute name, namespace included (Linux
/// XATTR_NAME_MAX); a longer one is ERANGE.
pub const MAX_XATTR_NAME: usize = 255;

/// The extended attribute that grants a program file capabilities. A
/// write drops it, as Linux's does for anyone but root: the host's
/// commits never carry it to the new content, and a mount answers that
/// no file has it (the kernel asks before every write), so the kernel
/// never waits on the host for it. Not served in any mode.
pub const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Largest extended attribute value, and largest list of a file's
/// attribute names (Linux XATTR_SIZE_MAX); a larger value is E2BIG.
pub const MAX_XATTR_SIZE: usize = 65536;

/// A BLAKE3 hash of a chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// The checksum of `data`.
    pub fn of(data: &[u8]) -> Self {
        Checksum(*blake3::hash(data).as_bytes())
    }

    /// Whether `data` has this checksum.
    pub fn verifies(&self, data: &[u8]) -> bool {
        // Not secret: a plain comparison is fine.
        Checksum::of(data) == *self
    }
}

impl core::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Checksum(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}
