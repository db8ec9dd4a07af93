//! Recycled buffers for received frames.
//!
//! A frame of file data (a `WriteChunk` at the host, a `Data` reply at the
//! mount) arrives in one piece per QUIC packet and is joined into one
//! buffer of up to a chunk. Allocating that buffer fresh for every frame
//! cost page faults: glibc hands the top of a heap back to the kernel as
//! soon as it is free, so a stream of 128 KiB buffers kept faulting in
//! new zeroed pages (up to 180,000 faults per GiB written at the host, on
//! the thread that drives its connection). Buffers come back here when
//! the last slice of their frame is dropped and are reused.

use bytes::Bytes;
use std::sync::Mutex;
use wormhole_core::proto::CHUNK_SIZE;

/// The size class recycled: a chunk and its message around it.
const CAPACITY: usize = CHUNK_SIZE + 4096;

/// Frames smaller than this are joined into a plain allocation (small
/// buffers come from the allocator's caches, without faults).
const MIN_POOLED: usize = 16 * 1024;

/// Buffers kept at most (about 33 MiB): enough for the frames in flight
/// of a fast stream; more are freed.
const MAX_KEPT: usize = 256;

/// Free buffers of [`CAPACITY`], shared by every connection of the
/// process (buffers are taken on one thread and often freed on another).
static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// `pieces`, `len` bytes in all, joined into one buffer; a frame that
/// fits the size class goes into a recycled one.
pub(crate) fn join(mut pieces: Vec<Bytes>, len: usize) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    if !(MIN_POOLED..=CAPACITY).contains(&len) {
        return Bytes::from(pieces.concat());
    }
    let mut buf = lock().pop().unwrap_or_else(|| Vec::with_capacity(CAPACITY));
    for p in &pieces {
        buf.extend_from_slice(p);
    }
    Bytes::from_owner(Recycled(buf))
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // A panic while holding the lock leaves a valid list.
    FREE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A joined frame's buffer; back to [`FREE`] when its last slice goes.
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let mut free = lock();
        if free.len() < MAX_KEPT && buf.capacity() == CAPACITY {
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

    /// One test, so that no other test of this module takes buffers from
    /// the list while it looks (nothing else in the crate's unit tests
    /// joins frames).
    #[test]
    fn joins_to_the_same_bytes_and_reuses_a_buffer_once_its_last_slice_goes() {
        for len in [1, 5000, MIN_POOLED, CHUNK_SIZE, CAPACITY, CAPACITY + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(join(split(&data, 4000), len), data, "len {len}");
        }
        let data = vec![7u8; CHUNK_SIZE];
        let frame = join(split(&data, 4000), data.len());
        let slice = frame.slice(100..200);
        let at = frame.as_ptr();
        drop(frame);
        assert_eq!(slice, data[100..200], "a slice keeps its bytes");
        assert!(!lock().iter().any(|b| b.as_ptr() == at), "still in use");
        drop(slice);
        assert!(lock().iter().any(|b| b.as_ptr() == at), "given back");
        let again = join(split(&data, 4000), data.len());
        assert_eq!(again, data);
    }
}
