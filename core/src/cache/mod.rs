//! The client's cache (docs/filesystem.md, "Cache"): file chunks, attributes, directory
//! listings and negative lookups, with TTLs, request coalescing, host
//! invalidation and score-based eviction over a memory (L1) and a disk (L2)
//! budget. Sans-IO: the disk is the shell's; the core only decides.
//!
//! ## States
//!
//! Every key is in one of the spec's states ([`EntryState`]):
//!
//! * **Unknown**: nothing in memory. A lookup starts a fetch.
//! * **Fetching**: one request is in flight; every later lookup of the key
//!   waits for it (coalescing), and all waiters are answered at once by one
//!   [`Output::Ready`] when [`Cache::fill`], [`Cache::revalidated`] or
//!   [`Cache::fail`] completes it (or its fetch times out).
//! * **Cached**: fresh data. A lookup at `now` is a [`Lookup::Hit`] only
//!   while `now < filled + ttl`: freshness is computed from `now` on every
//!   lookup, never by a timer that could fire late, so no entry is ever
//!   served past its TTL.
//! * **Stale**: the TTL is over (or the host invalidated it), the data is
//!   kept only so that it can be revalidated cheaply: the first lookup gets
//!   [`Lookup::Stale`] with the old value and becomes the revalidator (for a
//!   chunk, "is the file still at this version?"; for attributes, "is
//!   `Attr::version` unchanged?"), then confirms with
//!   [`Cache::revalidated`] or replaces with [`Cache::fill`].
//! * **Evicted**: gone from memory. A chunk evicted from L1 is demoted to
//!   the disk cache ([`Output::L2Write`]) and reported as `Evicted` while
//!   it is there; anything else evicted is simply Unknown again. Scan
//!   resistance: a chunk that read-ahead fetched and a reader read only
//!   once is not demoted (counted in [`CacheStats::scan_skips`]): a long
//!   sequential read would otherwise push everything reused off the disk,
//!   and writing a stream costs about as much as receiving it.
//!
//! ## Keys and the disk cache
//!
//! Chunks are keyed by [`ChunkKey`]: the file's identity on the host's disk
//! ([`FileKey`]), its content version ([`Attr::version`]) and the chunk
//! index, never by session node or inode numbers. Chunk data for one key
//! therefore never changes, and the disk cache stays valid across
//! remounts: the shell lists what it finds on disk at startup and feeds it
//! to [`Cache::load_l2`]. The shell carries out [`Output::L2Write`] and
//! [`Output::L2Delete`] in order, reads a chunk when a lookup answers
//! [`Miss::L2Read`], and reports the bytes with [`Cache::l2_loaded`] (the
//! checksum taken when the chunk went to disk is verified: disks corrupt
//! data).
//!
//! ## Eviction
//!
//! The spec's score `frequency / (age + 1)` (access count over seconds
//! since the last access; lower is evicted first). When the L1 byte budget
//! or entry cap is exceeded, one batch evicts the lowest-scoring entries
//! down to `target_ratio` (80 %) of both; the same for L2. One batch is
//! one scan and one sort, O(n log n), and leaves 20 % of headroom, so the
//! cost per insert is amortised and nothing is rescanned per insert.
//! Entries being fetched are never evicted (their waiters need them).
//!
//! ## Read-ahead
//!
//! [`ReadAhead`] watches each open handle's reads; a sequential reader gets
//! a window of chunks ahead (doubling up to `max_window`) to pass to
//! [`Cache::prefetch`], which fetches each at most once and answers nobody
//! until a reader asks for it.
//!
//! ## Deviations from the spec, and why
//!
//! * Invalidation marks an entry Stale or drops it, but does not start a
//!   refetch by itself: the core fetches only for a consumer (a lookup or a
//!   prefetch), so an invalidation storm costs no traffic.
//! * A failed fetch leaves old data Stale (the spec's Fetching → Stale on
//!   error) and a first fetch Unknown; either way the waiters get the error.
//! * `batch_size` is not a separate knob: a batch is "down to the target
//!   ratio", which is what the spec's `target_ratio` asks for.
//! * A fetch that started before a host invalidation of its key still
//!   answers its waiters (they asked before the change) but its result is
//!   not cached, since it may predate the change.

mod config;
mod readahead;
mod store;
#[cfg(test)]
mod tests;

pub use config::CacheConfig;
pub use readahead::{ReadAhead, ReadAheadConfig};
pub use store::{Cache, CacheStats};

use crate::proto::{Attr, Checksum, DirEntry, Errno, FileKey, Name, NodeId};
use bytes::Bytes;
use std::sync::Arc;
use thiserror::Error;

/// A chunk's stable identity: which file on the host's disk, which content
/// version of it, which [`crate::proto::CHUNK_SIZE`] chunk.
///
/// Ordered by file first, so all chunks of a file are one range of an
/// ordered map (invalidating a file is a range walk, not a scan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ChunkKey {
    /// The file's identity (device, inode) on the host.
    pub file: FileKey,
    /// The file's [`Attr::version`] the chunk was read at.
    pub version: u64,
    /// Chunk index (byte offset / chunk size).
    pub index: u64,
}

impl ChunkKey {
    /// The first and last possible chunk keys of `file`.
    pub(crate) fn file_bounds(file: FileKey) -> (ChunkKey, ChunkKey) {
        (
            ChunkKey {
                file,
                version: 0,
                index: 0,
            },
            ChunkKey {
                file,
                version: u64::MAX,
                index: u64::MAX,
            },
        )
    }
}

/// What a cache entry is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum CacheKey {
    /// A chunk of file data.
    Chunk(ChunkKey),
    /// A node's attributes.
    Attr(NodeId),
    /// A directory's complete listing.
    Dir(NodeId),
    /// "`name` does not exist in `parent`".
    Negative {
        /// The directory.
        parent: NodeId,
        /// The missing name.
        name: Name,
    },
}

impl CacheKey {
    /// What kind of entry the key names.
    pub fn kind(&self) -> Kind {
        match self {
            CacheKey::Chunk(_) => Kind::Chunk,
            CacheKey::Attr(_) => Kind::Attr,
            CacheKey::Dir(_) => Kind::Dir,
            CacheKey::Negative { .. } => Kind::Negative,
        }
    }
}

/// The four kinds of cache entry; each has its own TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// File data.
    Chunk,
    /// Attributes.
    Attr,
    /// Directory listing.
    Dir,
    /// Negative lookup.
    Negative,
}

/// Cached data. Attributes and listings are behind `Arc` so that a hit is
/// a reference-count increment, not a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A chunk of file data: at most [`crate::proto::CHUNK_SIZE`] bytes
    /// (shorter at end of file).
    Chunk(Bytes),
    /// A node's attributes.
    Attr(Arc<Attr>),
    /// A directory's complete listing, in the host's order.
    Dir(Arc<[DirEntry]>),
    /// The name does not exist (answer ENOENT).
    Negative,
}

impl Value {
    /// What kind of entry this value fits.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Chunk(_) => Kind::Chunk,
            Value::Attr(_) => Kind::Attr,
            Value::Dir(_) => Kind::Dir,
            Value::Negative => Kind::Negative,
        }
    }

    /// The chunk, if this is one.
    pub fn as_chunk(&self) -> Option<&Bytes> {
        match self {
            Value::Chunk(c) => Some(c),
            _ => None,
        }
    }

    /// The attributes, if these are.
    pub fn as_attr(&self) -> Option<&Attr> {
        match self {
            Value::Attr(a) => Some(a),
            _ => None,
        }
    }

    /// The listing, if this is one.
    pub fn as_dir(&self) -> Option<&[DirEntry]> {
        match self {
            Value::Dir(d) => Some(d),
            _ => None,
        }
    }
}

/// Identifies one consumer waiting for a key (for the FUSE shell, the
/// kernel request's unique id). Chosen by the caller; echoed in
/// [`Output::Ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

/// The answer to [`Cache::lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Fresh data: use it now.
    Hit(Value),
    /// The data is past its TTL and must not be served. The caller is now
    /// the revalidator (the key is Fetching): check it (e.g. the file's
    /// version) and call [`Cache::revalidated`], [`Cache::fill`] or
    /// [`Cache::fail`]. The caller's waiter is registered and is answered by
    /// [`Output::Ready`] like every other waiter.
    Stale(Value),
    /// Not in memory; the caller's waiter is registered and will be
    /// answered by [`Output::Ready`].
    Miss(Miss),
}

/// What the caller of a lookup that missed must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Send one request for the key, then [`Cache::fill`] or
    /// [`Cache::fail`].
    Fetch,
    /// The chunk is in the disk cache: read it and call
    /// [`Cache::l2_loaded`] (or [`Cache::l2_read_failed`]).
    L2Read,
    /// Someone else's request is in flight: nothing to do but wait.
    Wait,
}

/// What the cache asks the shell to do, drained with [`Cache::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send one request for this key and complete it with [`Cache::fill`]
    /// or [`Cache::fail`] (a disk read failed, or was corrupt, and the
    /// chunk must come from the host after all).
    Fetch {
        /// The key.
        key: CacheKey,
    },
    /// Data came back from disk past its TTL: check it is still current
    /// (the file's version) and call [`Cache::revalidated`], or fetch it
    /// again and call [`Cache::fill`] / [`Cache::fail`].
    Revalidate {
        /// The key.
        key: CacheKey,
        /// The data to check.
        value: Value,
    },
    /// Store this chunk in the disk cache (it left memory), with its
    /// checksum, computed here: a chunk is hashed only when it goes to
    /// disk, where corruption is real (on the wire QUIC's AEAD already
    /// authenticates every byte). The shell reports failure with
    /// [`Cache::l2_write_failed`].
    L2Write {
        /// The chunk.
        key: ChunkKey,
        /// Its bytes.
        data: Bytes,
        /// Their checksum, to hand back with [`Cache::l2_loaded`].
        checksum: Checksum,
    },
    /// Delete this chunk from the disk cache.
    L2Delete {
        /// The chunk.
        key: ChunkKey,
    },
    /// A fetch is over: answer every waiter at once.
    Ready {
        /// The key.
        key: CacheKey,
        /// Everyone who asked, in the order they asked.
        waiters: Vec<WaiterId>,
        /// The data, or the error the fetch ended with.
        result: Result<Value, Errno>,
    },
}

/// A key's state as the spec names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Not in memory and (for chunks) not on disk.
    Unknown,
    /// A request (or disk read) is in flight.
    Fetching,
    /// Fresh data in memory.
    Cached,
    /// Data in memory past its TTL or invalidated: must be revalidated.
    Stale,
    /// A chunk evicted from memory that is in the disk cache.
    Evicted,
}

/// Why a cache command was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// Chunk bytes from the disk cache do not match their checksum; they
    /// are not cached, and the chunk is refetched from the host.
    #[error("chunk {0:?} failed its checksum")]
    BadChecksum(ChunkKey),
    /// A chunk longer than [`crate::proto::CHUNK_SIZE`].
    #[error("chunk of {len} bytes is larger than a chunk")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The value's kind does not fit the key.
    #[error("a {value:?} value cannot be stored under a {key:?} key")]
    KindMismatch {
        /// The key's kind.
        key: Kind,
        /// The value's kind.
        value: Kind,
    },
    /// The key already has its maximum of waiters; the caller should fail
    /// its request (EAGAIN) rather than queue without bound.
    #[error("{max} requests already wait for this key")]
    TooManyWaiters {
        /// The per-key limit.
        max: usize,
    },
    /// Every entry is being fetched and the entry cap is reached.
    #[error("cache is full ({max} entries, all in flight)")]
    Full {
        /// The entry cap.
        max: usize,
    },
    /// The key is not being fetched (an answer that came too late, after
    /// a timeout or a second answer).
    #[error("{0:?} is not being fetched")]
    NotFetching(CacheKey),
}
