//! Recycled buffers for file data.
//!
//! Three places make a large buffer per message: a received frame (a
//! `WriteChunk` at the host, a `Data` reply at the mount), which arrives
//! in one piece per QUIC packet and is joined, and the host's read of a
//! file. Fresh buffers cost a page fault per page (the allocator returns
//! large blocks to the kernel at once) and a `memset` per read; these
//! are zeroed once, when first made, and come back when the last slice of
//! the bytes made in them is dropped. The measurements are in
//! `bench/README.md`, "Session of 2026-12-03".

use bytes::Bytes;
use std::sync::{Mutex, MutexGuard, PoisonError};
use wormhole_core::proto::{CHUNK_SIZE, MAX_WRITE_PIECE};

/// Buffers of one size, and how many of them are kept when free.
struct Class {
    /// Length of every buffer of the class.
    capacity: usize,
    /// Free buffers kept at most; more are freed.
    max_kept: usize,
    /// Free buffers, each `capacity` long and initialised, shared by every
    /// connection of the process (buffers are taken on one thread and
    /// often given back on another).
    free: Mutex<Vec<Vec<u8>>>,
}

/// The sizes recycled, smallest first: a chunk (a read, a `Data` reply)
/// and a write piece, each with room for its message around it. Kept at
/// most: about 33 MiB of chunks, enough for the data in flight of a fast
/// read; 33 MiB of pieces, twice the pieces a writer has in flight.
static CLASSES: [Class; 2] = [
    Class {
        capacity: CHUNK_SIZE + 4096,
        max_kept: 256,
        free: Mutex::new(Vec::new()),
    },
    Class {
        capacity: MAX_WRITE_PIECE + 4096,
        max_kept: 32,
        free: Mutex::new(Vec::new()),
    },
];

/// The class for `want` bytes: the smallest that holds them, if they fill
/// at least half of it. Shorter data goes into a plain allocation of its
/// own size: small buffers come from the allocator's caches without
/// faults, and a short file's bytes kept in the mount's cache must not
/// pin a whole buffer (at most twice the bytes are held this way).
fn class_for(want: usize) -> Option<&'static Class> {
    CLASSES
        .iter()
        .find(|c| want <= c.capacity)
        .filter(|c| want >= c.capacity / 2)
}

/// `pieces`, `len` bytes in all, joined into one buffer.
pub(crate) fn join(mut pieces: Vec<Bytes>, len: usize) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    let joined: Result<Bytes, std::convert::Infallible> = fill(len, |buf| {
        let mut at = 0;
        for p in &pieces {
            let n = p.len().min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&p[..n]);
            at += n;
        }
        Ok(at)
    });
    joined.unwrap_or_else(|never| match never {})
}

/// The bytes `write` puts into a buffer of `want` bytes, whose contents
/// it must not read; it answers how many it wrote (at most `want`).
pub(crate) fn fill<E>(
    want: usize,
    write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<Bytes, E> {
    let Some(class) = class_for(want) else {
        let mut buf = vec![0u8; want];
        let n = write(&mut buf)?.min(want);
        buf.truncate(n);
        return Ok(Bytes::from(buf));
    };
    let mut buf = class
        .free()
        .pop()
        .unwrap_or_else(|| vec![0u8; class.capacity]);
    // A failed fill drops `buf` here; it was never shared, so it is
    // simply freed.
    let len = write(&mut buf[..want])?.min(want);
    Ok(Bytes::from_owner(Recycled { buf, len, class }))
}

impl Class {
    fn free(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding the lock leaves a valid list.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A filled buffer, of which the first `len` bytes are the data; back to
/// its class's free list when the last slice of it goes.
struct Recycled {
    buf: Vec<u8>,
    len: usize,
    class: &'static Class,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.class.free();
        if free.len() < self.class.max_kept {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8], piece: usize) -> Vec<Bytes> {
        data.chunks(piece).map(Bytes::copy_from_slice).collect()
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i + seed) % 251) as u8).collect()
    }

    /// One test, so that no other test of this module takes buffers from
    /// the list while it looks (nothing else in the crate's unit tests
    /// joins frames or reads files through here).
    #[test]
    fn bytes_are_what_was_written_and_a_buffer_is_reused_once_its_last_slice_goes() {
        let [chunks, pieces] = &CLASSES;
        for len in [
            1,
            5000,
            chunks.capacity / 2 - 1,
            chunks.capacity / 2,
            CHUNK_SIZE,
            chunks.capacity,
            chunks.capacity + 1,
            pieces.capacity / 2 - 1,
            pieces.capacity / 2,
            MAX_WRITE_PIECE,
            pieces.capacity,
            pieces.capacity + 1,
        ] {
            let data = pattern(len, 0);
            assert_eq!(join(split(&data, 4000), len), data, "len {len}");
        }
        assert!(class_for(chunks.capacity / 2 - 1).is_none());
        assert!(class_for(CHUNK_SIZE).is_some_and(|c| std::ptr::eq(c, chunks)));
        assert!(class_for(chunks.capacity + 1).is_none());
        assert!(class_for(MAX_WRITE_PIECE).is_some_and(|c| std::ptr::eq(c, pieces)));
        assert!(class_for(pieces.capacity + 1).is_none());

        let data = pattern(CHUNK_SIZE, 3);
        let frame = join(split(&data, 4000), data.len());
        let slice = frame.slice(100..200);
        let at = frame.as_ptr();
        drop(frame);
        assert_eq!(slice, data[100..200], "a slice keeps its bytes");
        assert!(
            !chunks.free().iter().any(|b| b.as_ptr() == at),
            "still in use"
        );
        drop(slice);
        assert!(chunks.free().iter().any(|b| b.as_ptr() == at), "given back");

        // A reused buffer still holds the old bytes; only what the new
        // fill wrote is seen, even when it wrote less than it asked for.
        let short: Result<Bytes, ()> = fill(CHUNK_SIZE, |buf| {
            buf[..10].copy_from_slice(b"0123456789");
            Ok(10)
        });
        assert_eq!(short, Ok(Bytes::from_static(b"0123456789")));
        let failed: Result<Bytes, &str> = fill(CHUNK_SIZE, |_| Err("eof"));
        assert_eq!(failed, Err("eof"));
        let again = pattern(CHUNK_SIZE, 7);
        assert_eq!(join(split(&again, 1500), again.len()), again);
    }
}
