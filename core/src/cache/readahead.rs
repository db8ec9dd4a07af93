//! Sequential-read detection: which chunks to prefetch ahead of a reader.

use std::collections::BTreeMap;
use std::ops::Range;

/// Read-ahead limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAheadConfig {
    /// Most chunks prefetched ahead of a sequential reader. The window
    /// doubles with each sequential read up to this, so a reader that
    /// only looked sequential for a moment costs one or two extra chunks,
    /// and a long stream keeps this many requests in flight (8 × 128 KiB
    /// = 1 MiB, about one bandwidth-delay product of a 100 Mbit/s, 80 ms
    /// path).
    pub max_window: u64,
    /// Streams (open file handles) tracked at most; the least recently
    /// read is forgotten first.
    pub max_streams: usize,
}

impl Default for ReadAheadConfig {
    fn default() -> Self {
        ReadAheadConfig {
            max_window: 8,
            max_streams: 4096,
        }
    }
}

#[derive(Debug)]
struct Stream {
    /// The chunk a sequential reader reads next.
    next: u64,
    /// Chunks to keep ahead; 0 until the reader proves sequential.
    window: u64,
    /// Prefetch already asked for up to here (exclusive).
    ahead_until: u64,
    /// Position in the recency order.
    seq: u64,
}

/// Tracks readers (one stream per open file handle, identified by the
/// caller) and says which chunk indexes to prefetch with
/// [`super::Cache::prefetch`] after each read.
///
/// A read that starts where the previous one ended (the chunk after it,
/// or the same chunk, since the kernel's reads are often smaller than a
/// chunk) is sequential and grows the window; any other read (a seek)
/// resets it, so random readers cause no prefetch traffic.
#[derive(Debug)]
pub struct ReadAhead {
    cfg: ReadAheadConfig,
    streams: BTreeMap<u64, Stream>,
    order: BTreeMap<u64, u64>,
    seq: u64,
}

impl ReadAhead {
    /// No streams yet.
    pub fn new(cfg: ReadAheadConfig) -> Self {
        ReadAhead {
            cfg,
            streams: BTreeMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Stream `stream` read chunks `first..=last`. Returns the chunk
    /// indexes to prefetch now (empty for a non-sequential read or a
    /// window already requested). The caller clips the range to the
    /// file's size.
    pub fn on_read(&mut self, stream: u64, first: u64, last: u64) -> Range<u64> {
        let last = last.max(first);
        self.seq += 1;
        let seq = self.seq;
        let max_window = self.cfg.max_window;
        let s = match self.streams.get_mut(&stream) {
            Some(s) => {
                self.order.remove(&s.seq);
                let sequential = first == s.next || first + 1 == s.next;
                if sequential {
                    s.window = (s.window * 2).clamp(1, max_window);
                } else {
                    s.window = 0;
                    s.ahead_until = 0;
                }
                s
            }
            None => {
                // The first read of a handle at chunk 0 is the most common
                // start of a sequential read: treat it as one.
                let window = u64::from(first == 0).min(max_window);
                self.streams.entry(stream).or_insert(Stream {
                    next: 0,
                    window,
                    ahead_until: 0,
                    seq,
                })
            }
        };
        s.seq = seq;
        s.next = last.saturating_add(1);
        let end = s.next.saturating_add(s.window);
        let start = s.next.max(s.ahead_until);
        let range = if s.window == 0 || start >= end {
            start..start
        } else {
            s.ahead_until = end;
            start..end
        };
        self.order.insert(seq, stream);
        while self.streams.len() > self.cfg.max_streams {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.streams.remove(&oldest);
        }
        range
    }

    /// The handle was closed.
    pub fn close(&mut self, stream: u64) {
        if let Some(s) = self.streams.remove(&stream) {
            self.order.remove(&s.seq);
        }
    }

    /// Streams tracked.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is tracked.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ra() -> ReadAhead {
        ReadAhead::new(ReadAheadConfig::default())
    }

    #[test]
    fn a_sequential_reader_gets_a_doubling_window() {
        let mut r = ra();
        assert_eq!(r.on_read(1, 0, 0), 1..2);
        assert_eq!(r.on_read(1, 1, 1), 2..4);
        assert_eq!(r.on_read(1, 2, 2), 4..7);
        assert_eq!(r.on_read(1, 3, 3), 7..12);
        assert_eq!(r.on_read(1, 4, 4), 12..13);
        // The window stops at max_window (8) ahead of the reader.
        assert_eq!(r.on_read(1, 5, 5), 13..14);
    }

    #[test]
    fn reads_smaller_than_a_chunk_stay_sequential() {
        let mut r = ra();
        assert_eq!(r.on_read(1, 0, 0), 1..2);
        // The kernel reads chunk 0 in several pieces.
        assert_eq!(r.on_read(1, 0, 0), 2..3);
        assert_eq!(r.on_read(1, 0, 0), 3..5);
    }

    #[test]
    fn a_seek_resets_the_window_and_random_reads_prefetch_nothing() {
        let mut r = ra();
        r.on_read(1, 0, 0);
        r.on_read(1, 1, 1);
        assert!(r.on_read(1, 50, 50).is_empty());
        assert!(r.on_read(1, 7, 7).is_empty());
        assert!(r.on_read(1, 90, 90).is_empty());
        // Sequential again from the new position.
        assert_eq!(r.on_read(1, 91, 91), 92..93);
        // A first read not at the start is not presumed sequential.
        assert!(r.on_read(2, 40, 40).is_empty());
    }

    #[test]
    fn streams_are_independent_and_bounded() {
        let mut r = ReadAhead::new(ReadAheadConfig {
            max_window: 4,
            max_streams: 2,
        });
        assert_eq!(r.on_read(1, 0, 0), 1..2);
        assert_eq!(r.on_read(2, 0, 0), 1..2);
        assert_eq!(r.on_read(1, 1, 1), 2..4);
        r.on_read(3, 0, 0);
        assert_eq!(r.len(), 2, "stream 2 was least recently read");
        assert!(r.on_read(2, 1, 1).is_empty(), "forgotten: starts over");
        r.close(2);
        r.close(3);
        r.close(1);
        assert!(r.is_empty());
    }
}
