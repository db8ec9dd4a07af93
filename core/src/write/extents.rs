//! Byte ranges written but not yet committed: a sparse overlay on a file.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;

/// Non-overlapping extents, newest data wins. Each extent is one `Bytes`
/// keyed by its start offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extents {
    map: BTreeMap<u64, Bytes>,
    bytes: usize,
}

impl Extents {
    /// No extents.
    pub fn new() -> Self {
        Extents::default()
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// One past the last byte held, or 0.
    pub fn end(&self) -> u64 {
        self.map
            .iter()
            .next_back()
            .map_or(0, |(&s, d)| s + d.len() as u64)
    }

    /// Writes `data` at `offset`, replacing whatever overlapped it.
    pub fn write(&mut self, offset: u64, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.cut(offset, offset + data.len() as u64);
        self.bytes += data.len();
        self.map.insert(offset, data);
    }

    /// Removes every byte in `[start, end)`, splitting extents that cross
    /// the edges.
    pub fn cut(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Extents are disjoint and sorted, so their ends are sorted too:
        // walking back from `end`, the first one ending at or before
        // `start` ends the overlap.
        let overlapping: Vec<u64> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(s, d)| *s + d.len() as u64 > start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            let Some(d) = self.map.remove(&s) else {
                continue;
            };
            self.bytes -= d.len();
            let e = s + d.len() as u64;
            if s < start {
                let keep = d.slice(..(start - s) as usize);
                self.bytes += keep.len();
                self.map.insert(s, keep);
            }
            if e > end {
                let keep = d.slice((end - s) as usize..);
                self.bytes += keep.len();
                self.map.insert(end, keep);
            }
        }
    }

    /// Drops everything at or beyond `size`.
    pub fn truncate(&mut self, size: u64) {
        self.cut(size, u64::MAX);
    }

    /// Copies the held bytes that fall in `[offset, offset + buf.len())`
    /// over `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self
            .map
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&s, _)| s);
        for (&s, d) in self.map.range(first..end) {
            let e = s + d.len() as u64;
            let (from, to) = (s.max(offset), e.min(end));
            if from >= to {
                continue;
            }
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&d[(from - s) as usize..(to - s) as usize]);
        }
    }

    /// Whether any held byte lies in `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        if let Some((&s, d)) = self.map.range(..start).next_back()
            && s + d.len() as u64 > start
        {
            return true;
        }
        self.map.range(start..end).next().is_some()
    }

    /// Takes the first piece of at most `max` bytes that does not cross a
    /// multiple of `align` and whose range passes `ok`; the rest stays.
    pub fn take_piece(
        &mut self,
        align: u64,
        max: usize,
        mut ok: impl FnMut(u64, u64) -> bool,
    ) -> Option<(u64, Bytes)> {
        let (start, len) = self.map.iter().find_map(|(&s, d)| {
            let boundary = (s / align + 1) * align;
            let len = (d.len() as u64).min(boundary - s).min(max as u64);
            ok(s, s + len).then_some((s, len as usize))
        })?;
        let d = self.map.remove(&start)?;
        self.bytes -= d.len();
        let piece = d.slice(..len);
        if d.len() > len {
            let rest = d.slice(len..);
            self.bytes += rest.len();
            self.map.insert(start + len as u64, rest);
        }
        Some((start, piece))
    }

    /// Moves every extent of `other` into `self` (newer data wins).
    pub fn absorb(&mut self, other: Extents) {
        for (s, d) in other.map {
            self.write(s, d);
        }
    }

    /// Everything held as one run of bytes, if the extents leave no gap
    /// between them (a gap must not become zeros over the file's own
    /// bytes), with its start.
    pub fn contiguous(&self) -> Option<(u64, Bytes)> {
        let (&start, first) = self.map.iter().next()?;
        if self.map.len() == 1 {
            return Some((start, first.clone()));
        }
        let mut run = BytesMut::with_capacity(self.bytes);
        let mut at = start;
        for (&s, d) in &self.map {
            if s != at {
                return None;
            }
            run.extend_from_slice(d);
            at += d.len() as u64;
        }
        Some((start, run.freeze()))
    }

    /// The extents, in order (for tests and checks).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Bytes)> + '_ {
        self.map.iter().map(|(&s, d)| (s, d))
    }

    /// Flattens `[0, len)` over zeros (for tests).
    pub fn to_vec(&self, len: usize) -> Vec<u8> {
        let mut buf = BytesMut::zeroed(len);
        self.overlay(0, &mut buf);
        buf.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn newer_writes_replace_overlapping_bytes() {
        let mut e = Extents::new();
        e.write(0, b(b"aaaaaaaa"));
        e.write(2, b(b"bb"));
        e.write(6, b(b"cccc"));
        assert_eq!(e.to_vec(10), b"aabbaacccc");
        assert_eq!(e.bytes(), 10);
        assert_eq!(e.end(), 10);
        e.write(1, b(b"dddddddd"));
        assert_eq!(e.to_vec(10), b"addddddddc");
        assert_eq!(e.bytes(), 10);
    }

    #[test]
    fn cut_and_truncate_split_extents() {
        let mut e = Extents::new();
        e.write(0, b(b"0123456789"));
        e.cut(3, 5);
        assert_eq!(e.to_vec(10), b"012\x00\x0056789");
        assert_eq!(e.bytes(), 8);
        e.truncate(7);
        assert_eq!(e.end(), 7);
        assert_eq!(e.bytes(), 5);
        assert!(e.overlaps(6, 8));
        assert!(!e.overlaps(3, 5));
        assert!(!e.overlaps(7, 100));
    }

    #[test]
    fn pieces_never_cross_chunk_boundaries() {
        let mut e = Extents::new();
        e.write(6, b(b"abcdefghij"));
        let mut pieces = Vec::new();
        while let Some(p) = e.take_piece(8, 100, |_, _| true) {
            pieces.push(p);
        }
        assert_eq!(pieces, vec![(6, b(b"ab")), (8, b(b"cdefghij"))]);
        assert!(e.is_empty());
        assert_eq!(e.bytes(), 0);
    }

    #[test]
    fn pieces_respect_the_filter_and_size() {
        let mut e = Extents::new();
        e.write(0, b(b"xxxx"));
        e.write(10, b(b"yyyy"));
        let p = e.take_piece(1 << 20, 3, |s, _| s >= 10);
        assert_eq!(p, Some((10, b(b"yyy"))));
        assert_eq!(e.to_vec(14), b"xxxx\0\0\0\0\0\0\0\0\0y");
    }
}
