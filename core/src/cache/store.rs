//! The cache machine: entries, coalescing, invalidation and eviction.

use super::{
    CacheConfig, CacheError, CacheKey, ChunkKey, EntryState, Lookup, Miss, Output, Value, WaiterId,
};
use crate::Instant;
use crate::proto::{
    Attr, CHUNK_SIZE, Checksum, DirEntry, Errno, FileKey, FileKind, Invalidation, Name, NodeId,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;

/// A fixed (unseeded) multiply-rotate hasher in the style of rustc's
/// FxHash: hits must be fast (≥ 1 M/s with 100k entries, where an ordered
/// map's pointer chasing costs several cache misses per lookup), and a
/// fixed hasher keeps runs deterministic. Nothing observable depends on
/// the map's iteration order: whatever is collected from it is sorted
/// first. (Keys come from the host and the local kernel; a host crafting
/// collisions could only slow its own clients, which it can do anyway by
/// answering slowly.)
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::K).rotate_left(26);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FixedState = BuildHasherDefault<FxHasher>;

/// Where an in-flight fetch gets its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A request to the host.
    Network,
    /// A read of the disk (L2) cache.
    Disk,
}

/// An in-flight fetch. Boxed in [`Entry`] so that the many idle entries do
/// not carry its size.
#[derive(Debug)]
struct Fetch {
    /// Everyone to answer, in arrival order.
    waiters: Vec<WaiterId>,
    /// When the fetch times out (its key in the timer index).
    deadline: Instant,
    source: Source,
    /// The host invalidated the key while this fetch was in flight: its
    /// result may predate the change, so it answers the waiters but is not
    /// cached.
    poisoned: bool,
}

/// One key in memory. Invariant: `value` or `fetch` (or both) is set.
#[derive(Debug)]
struct Entry {
    /// The data; while Fetching, the old data being revalidated, if any.
    value: Option<Value>,
    /// Fresh while `now < expires`.
    expires: Instant,
    last_access: Instant,
    access_count: u64,
    /// Bytes charged to the L1 budget.
    charge: u64,
    fetch: Option<Box<Fetch>>,
    /// Fetched by read-ahead rather than for a reader: a chunk of a
    /// sequential scan, which the disk cache takes only if it is read
    /// more than once (see [`Self::worth_disk`]).
    streamed: bool,
}

impl Entry {
    fn touch(&mut self, now: Instant) {
        self.last_access = self.last_access.max(now);
        self.access_count = self.access_count.saturating_add(1);
    }

    /// Whether a chunk leaving memory is worth a disk write. A chunk a
    /// sequential scan read once is not (scan resistance): a long read
    /// would otherwise push everything reused out of the disk cache, and
    /// writing a stream to disk costs about as much CPU as receiving it
    /// (reading 1 GiB over loopback took 60 % longer with it). Filling
    /// counts as one access and the scan's read as another, so a third
    /// means a reader came back.
    fn worth_disk(&self) -> bool {
        !self.streamed || self.access_count > 2
    }
}

/// One chunk in the disk cache (the data is the shell's).
#[derive(Debug)]
struct L2Entry {
    size: u64,
    /// Freshness carried over from memory; `None` when unknown (found on
    /// disk at startup: the fetch time did not survive the remount), which
    /// counts as stale.
    expires: Option<Instant>,
    last_access: Instant,
    access_count: u64,
}

/// The largest listing the client's own creates keep whole and that
/// answers lookups of missing names ([`Cache::add_entry`],
/// [`Cache::lacks`]): each is a scan, and each added entry a copy, of the
/// whole listing, so a directory of many thousands would make an untar
/// into it quadratic. Larger listings are marked stale by a create, as
/// before.
pub(super) const SMALL_LISTING: usize = 512;

/// Bookkeeping charged to L1 for every entry besides its data, so that a
/// flood of tiny entries is bounded by the byte budget too.
const ENTRY_OVERHEAD: u64 = (size_of::<CacheKey>() + size_of::<Entry>()) as u64;

/// Counters, for tests, metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered with fresh data.
    pub hits: u64,
    /// Lookups (and attribute prefetches) that found stale data and
    /// started a revalidation.
    pub stale: u64,
    /// Lookups (and prefetches) that started a fetch.
    pub misses: u64,
    /// Lookups that joined a fetch already in flight.
    pub coalesced: u64,
    /// Fetches served by a disk read.
    pub l2_reads: u64,
    /// Values filled in (fetched, pushed or revalidated).
    pub fills: u64,
    /// Fetches that ended in an error (timeouts included).
    pub failures: u64,
    /// Fetches that timed out.
    pub timeouts: u64,
    /// Fetches answered with stale data because the host was unreachable.
    pub stale_served: u64,
    /// Chunks from the disk cache refused for a bad checksum.
    pub bad_checksums: u64,
    /// Entries evicted from memory.
    pub l1_evictions: u64,
    /// Chunks demoted to disk.
    pub l2_writes: u64,
    /// Chunks of a sequential scan, read once, not demoted to disk.
    pub scan_skips: u64,
    /// Chunks deleted from disk.
    pub l2_deletes: u64,
    /// Host invalidations handled.
    pub invalidations: u64,
}

/// The client's cache.
///
/// Inputs: [`Self::lookup`] / [`Self::prefetch`] (consumers),
/// [`Self::fill`], [`Self::revalidated`], [`Self::fail`] (fetch results),
/// [`Self::l2_loaded`], [`Self::l2_read_failed`], [`Self::l2_write_failed`],
/// [`Self::load_l2`] (the disk cache), [`Self::invalidate`] (host pushes),
/// [`Self::handle_timeout`]. Outputs: [`Self::poll_output`] until `None`.
///
/// Memory is one hash map under a fixed hasher (hits are O(1)) plus
/// ordered indices for the range walks invalidation needs; every other
/// map is ordered. Nothing that reaches an output depends on hash order
/// (what is collected from the hash map is sorted), so runs are
/// deterministic. Lookups and fills cost O(1) or O(log n), invalidations
/// O(log n) plus the keys they touch, and eviction one scan and sort per
/// batch.
#[derive(Debug)]
pub struct Cache {
    cfg: CacheConfig,
    /// Everything in memory, for O(1) hits.
    l1: HashMap<CacheKey, Entry, FixedState>,
    /// The chunk keys of `l1`, ordered by file: invalidating a file is a
    /// range walk.
    l1_chunks: BTreeSet<ChunkKey>,
    /// The negative keys of `l1`, ordered by parent: invalidating a
    /// directory's entries is a range walk.
    l1_negatives: BTreeSet<(NodeId, Name)>,
    l1_bytes: u64,
    /// Entries of `l1` with a fetch in flight (never evictable): when all
    /// are, an eviction batch is skipped rather than scanning for nothing.
    in_flight: usize,
    l2: BTreeMap<ChunkKey, L2Entry>,
    l2_bytes: u64,
    /// Node → file identity, learned from attributes, so that a host
    /// invalidation (which names a node) finds the file's chunks (which
    /// are keyed by file). Least recently learned first out, capped at
    /// `max_entries`: losing a mapping only means an invalidated file's
    /// chunks wait for eviction instead of leaving at once (they are keyed
    /// by the old version, so they are unreachable anyway).
    files: BTreeMap<NodeId, (FileKey, u64)>,
    files_order: BTreeMap<u64, NodeId>,
    files_seq: u64,
    /// In-flight fetches by deadline.
    timers: BTreeSet<(Instant, CacheKey)>,
    /// Chunks whose [`Output::L2Write`] is still queued.
    unpolled_writes: BTreeSet<ChunkKey>,
    out: VecDeque<Output>,
    stats: CacheStats,
}

impl Cache {
    /// An empty cache (call [`Self::load_l2`] with what is on disk).
    pub fn new(cfg: CacheConfig) -> Self {
        Cache {
            cfg,
            l1: HashMap::with_hasher(FixedState::default()),
            l1_chunks: BTreeSet::new(),
            l1_negatives: BTreeSet::new(),
            l1_bytes: 0,
            in_flight: 0,
            l2: BTreeMap::new(),
            l2_bytes: 0,
            files: BTreeMap::new(),
            files_order: BTreeMap::new(),
            files_seq: 0,
            timers: BTreeSet::new(),
            unpolled_writes: BTreeSet::new(),
            out: VecDeque::new(),
            stats: CacheStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Entries in memory (all kinds, in-flight ones included).
    pub fn len(&self) -> usize {
        self.l1.len()
    }

    /// Whether memory holds no entry.
    pub fn is_empty(&self) -> bool {
        self.l1.is_empty()
    }

    /// Bytes charged to the memory budget.
    pub fn l1_bytes(&self) -> u64 {
        self.l1_bytes
    }

    /// Chunks in the disk cache index.
    pub fn l2_len(&self) -> usize {
        self.l2.len()
    }

    /// Bytes in the disk cache.
    pub fn l2_bytes(&self) -> u64 {
        self.l2_bytes
    }

    /// Whether the disk cache holds this chunk.
    pub fn l2_contains(&self, key: &ChunkKey) -> bool {
        self.l2.contains_key(key)
    }

    /// The key's state at `now`.
    pub fn state(&self, now: Instant, key: &CacheKey) -> EntryState {
        match self.l1.get(key) {
            Some(e) if e.fetch.is_some() => EntryState::Fetching,
            Some(e) if now < e.expires => EntryState::Cached,
            Some(_) => EntryState::Stale,
            None => match key {
                CacheKey::Chunk(ck) if self.l2.contains_key(ck) => EntryState::Evicted,
                _ => EntryState::Unknown,
            },
        }
    }

    /// The attributes held for `node`, fresh or not, without touching
    /// the entry (for sizes and version comparisons, never to answer a
    /// request).
    pub fn peek_attr(&self, node: NodeId) -> Option<&Attr> {
        self.l1
            .get(&CacheKey::Attr(node))
            .and_then(|e| e.value.as_ref())
            .and_then(Value::as_attr)
    }

    /// The listing held for directory `node`, fresh or not, without
    /// touching the entry (to guess what will be opened next, never to
    /// answer a request).
    pub fn peek_dir(&self, node: NodeId) -> Option<&[DirEntry]> {
        self.l1
            .get(&CacheKey::Dir(node))
            .and_then(|e| e.value.as_ref())
            .and_then(Value::as_dir)
    }

    /// A consumer (`waiter`) wants `key` at `now`.
    ///
    /// Fresh data is a [`Lookup::Hit`]. Otherwise the waiter is registered
    /// and answered later by [`Output::Ready`]; the first consumer of a
    /// missing or stale key is told to fetch or revalidate it, everyone
    /// else waits for that one fetch.
    pub fn lookup(
        &mut self,
        now: Instant,
        key: &CacheKey,
        waiter: WaiterId,
    ) -> Result<Lookup, CacheError> {
        if let Some(entry) = self.l1.get_mut(key) {
            if let Some(fetch) = entry.fetch.as_mut() {
                if fetch.waiters.len() >= self.cfg.max_waiters {
                    return Err(CacheError::TooManyWaiters {
                        max: self.cfg.max_waiters,
                    });
                }
                fetch.waiters.push(waiter);
                entry.touch(now);
                self.stats.coalesced += 1;
                return Ok(Lookup::Miss(Miss::Wait));
            }
            entry.touch(now);
            if let Some(value) = entry.value.as_ref() {
                if now < entry.expires {
                    self.stats.hits += 1;
                    return Ok(Lookup::Hit(value.clone()));
                }
                // Stale → Fetching: this consumer revalidates, with the old
                // value in hand to compare against.
                let value = value.clone();
                self.revalidate(now, key, Some(waiter));
                return Ok(Lookup::Stale(value));
            }
            // An entry with neither data nor fetch cannot exist; should it
            // ever, it is treated as Unknown rather than trusted.
            self.remove_entry(key);
        }
        self.start_fetch(now, key.clone(), Some(waiter))
            .map(Lookup::Miss)
    }

    /// Starts fetching a chunk nobody waits for yet (sequential-read
    /// prefetch). `None` if it is already in memory or in flight;
    /// otherwise what to do, as for a lookup that missed.
    pub fn prefetch(&mut self, now: Instant, key: ChunkKey) -> Result<Option<Miss>, CacheError> {
        let key = CacheKey::Chunk(key);
        if self.l1.contains_key(&key) {
            return Ok(None);
        }
        self.start_fetch(now, key, None).map(Some)
    }

    /// Starts fetching `node`'s attributes nobody waits for yet (a
    /// `stat` expected soon): [`Miss::Fetch`] if the caller is to ask the
    /// host, `None` if they are fresh or in flight already. Stale ones are
    /// fetched anew as a lookup would.
    pub fn prefetch_attr(
        &mut self,
        now: Instant,
        node: NodeId,
    ) -> Result<Option<Miss>, CacheError> {
        let key = CacheKey::Attr(node);
        match self.l1.get(&key) {
            None => self.start_fetch(now, key, None).map(Some),
            Some(e) if e.fetch.is_some() || now < e.expires || e.value.is_none() => Ok(None),
            Some(_) => {
                self.revalidate(now, &key, None);
                Ok(Some(Miss::Fetch))
            }
        }
    }

    /// Stale → Fetching from the host, for `waiter` if any.
    fn revalidate(&mut self, now: Instant, key: &CacheKey, waiter: Option<WaiterId>) {
        let Some(entry) = self.l1.get_mut(key) else {
            return;
        };
        let deadline = now + self.cfg.fetch_timeout;
        self.in_flight += 1;
        entry.fetch = Some(Box::new(Fetch {
            waiters: waiter.into_iter().collect(),
            deadline,
            source: Source::Network,
            poisoned: false,
        }));
        self.timers.insert((deadline, key.clone()));
        self.stats.stale += 1;
    }

    /// Unknown → Fetching: a new in-flight entry, from disk if L2 has it.
    fn start_fetch(
        &mut self,
        now: Instant,
        key: CacheKey,
        waiter: Option<WaiterId>,
    ) -> Result<Miss, CacheError> {
        if self.l1.len() >= self.cfg.max_entries {
            self.evict_l1(now);
            if self.l1.len() >= self.cfg.max_entries {
                return Err(CacheError::Full {
                    max: self.cfg.max_entries,
                });
            }
        }
        let source = match &key {
            CacheKey::Chunk(ck) => match self.l2.get_mut(ck) {
                Some(l2) => {
                    l2.last_access = l2.last_access.max(now);
                    l2.access_count = l2.access_count.saturating_add(1);
                    Source::Disk
                }
                None => Source::Network,
            },
            _ => Source::Network,
        };
        let deadline = now + self.cfg.fetch_timeout;
        let charge = charge(&key, None);
        self.timers.insert((deadline, key.clone()));
        self.l1_insert(
            key,
            Entry {
                value: None,
                expires: now,
                last_access: now,
                access_count: u64::from(waiter.is_some()),
                charge,
                streamed: waiter.is_none(),
                fetch: Some(Box::new(Fetch {
                    waiters: waiter.into_iter().collect(),
                    deadline,
                    source,
                    poisoned: false,
                })),
            },
        );
        self.stats.misses += 1;
        Ok(match source {
            Source::Disk => {
                self.stats.l2_reads += 1;
                Miss::L2Read
            }
            Source::Network => Miss::Fetch,
        })
    }

    /// Data for `key` arrived (a fetch's reply, or data the client learned
    /// otherwise, e.g. attributes from a directory listing): it is cached
    /// fresh for the kind's TTL and every waiter is answered.
    ///
    /// A chunk longer than [`CHUNK_SIZE`] is not cached, its waiters get
    /// EIO, and the error says so. (Chunks from the host are not hashed:
    /// QUIC's AEAD authenticated every byte on the way.)
    pub fn fill(&mut self, now: Instant, key: CacheKey, value: Value) -> Result<(), CacheError> {
        if key.kind() != value.kind() {
            return Err(CacheError::KindMismatch {
                key: key.kind(),
                value: value.kind(),
            });
        }
        if let Value::Chunk(chunk) = &value
            && chunk.len() > CHUNK_SIZE
        {
            let len = chunk.len();
            self.finish_err(&key, Errno::Io);
            return Err(CacheError::TooLarge { len });
        }
        match &value {
            Value::Attr(attr) => self.learn_attr(attr),
            Value::Dir(entries) => {
                for e in entries.iter() {
                    self.learn_file(&e.attr);
                }
            }
            Value::Chunk(_) | Value::Negative => {}
        }
        self.stats.fills += 1;
        let expires = now + self.cfg.ttl(key.kind());
        self.complete(now, key, value, expires);
        self.enforce_l1(now);
        Ok(())
    }

    /// The revalidator found the stale data still current (same version):
    /// it is fresh again for a full TTL and every waiter gets it.
    pub fn revalidated(&mut self, now: Instant, key: &CacheKey) -> Result<(), CacheError> {
        let value = match self.l1.get(key) {
            Some(Entry {
                fetch: Some(_),
                value: Some(value),
                ..
            }) => value.clone(),
            _ => return Err(CacheError::NotFetching(key.clone())),
        };
        let expires = now + self.cfg.ttl(key.kind());
        if let CacheKey::Chunk(ck) = key {
            // The disk copy is the same bytes: it is as fresh now.
            if let Some(l2) = self.l2.get_mut(ck) {
                l2.expires = Some(expires);
            }
        }
        self.stats.fills += 1;
        self.complete(now, key.clone(), value, expires);
        Ok(())
    }

    /// The host cannot be reached: the fetch of `key` under way ends with
    /// the data held, which stays stale (the first lookup once the host is
    /// back fetches again). False, and nothing changes, if there is no
    /// fetch or no data.
    pub fn serve_stale(&mut self, now: Instant, key: &CacheKey) -> bool {
        let value = match self.l1.get(key) {
            Some(Entry {
                fetch: Some(_),
                value: Some(value),
                ..
            }) => value.clone(),
            _ => return false,
        };
        self.stats.stale_served += 1;
        self.complete(now, key.clone(), value, now);
        true
    }

    /// The fetch of `key` failed with `errno`: every waiter gets the error.
    /// Old data stays Stale (for a later revalidation); a first fetch
    /// leaves the key Unknown.
    pub fn fail(&mut self, now: Instant, key: &CacheKey, errno: Errno) -> Result<(), CacheError> {
        let _ = now;
        if self.finish_err(key, errno) {
            Ok(())
        } else {
            Err(CacheError::NotFetching(key.clone()))
        }
    }

    /// Every fetch in flight fails with `errno` (the connection is gone).
    pub fn fail_all(&mut self, now: Instant, errno: Errno) {
        let _ = now;
        let mut keys: Vec<CacheKey> = self
            .l1
            .iter()
            .filter(|(_, e)| e.fetch.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        // Answers in key order, not hash order.
        keys.sort_unstable();
        for key in keys {
            self.finish_err(&key, errno);
        }
    }

    /// Nothing in the cache may be trusted without revalidation (after a
    /// reconnect the host may have changed anything): every entry becomes
    /// Stale, every fetch in flight is poisoned, every disk chunk stale.
    pub fn mark_all_stale(&mut self, now: Instant) {
        for entry in self.l1.values_mut() {
            entry.expires = entry.expires.min(now);
            if let Some(fetch) = entry.fetch.as_mut() {
                fetch.poisoned = true;
            }
        }
        for l2 in self.l2.values_mut() {
            l2.expires = None;
        }
    }

    /// A new host run: node ids name other files now. What is keyed by
    /// node (attributes, listings, negative entries) goes, so that nothing
    /// of the old run is ever served, not even while the host is
    /// unreachable; a fetch in flight for such a key keeps its waiters but
    /// loses its old data and is poisoned (its answer is not kept).
    /// Chunks, keyed by file identity, stay.
    pub fn forget_nodes(&mut self) {
        let keys: Vec<CacheKey> = self
            .l1
            .keys()
            .filter(|k| !matches!(k, CacheKey::Chunk(_)))
            .cloned()
            .collect();
        for key in keys {
            let fetching = self.l1.get(&key).is_some_and(|e| e.fetch.is_some());
            if !fetching {
                self.remove_entry(&key);
                continue;
            }
            if let Some(entry) = self.l1.get_mut(&key) {
                let bare = charge(&key, None);
                self.l1_bytes = self.l1_bytes - entry.charge + bare;
                entry.charge = bare;
                entry.value = None;
                if let Some(fetch) = entry.fetch.as_mut() {
                    fetch.poisoned = true;
                }
            }
        }
    }

    /// The shell read `key` from disk (after [`Miss::L2Read`]): verified
    /// and fresh, it answers the waiters; past its TTL, it is handed out
    /// for revalidation ([`Output::Revalidate`]); corrupt, it is deleted
    /// and fetched from the host ([`Output::Fetch`]) and the error says so.
    pub fn l2_loaded(
        &mut self,
        now: Instant,
        key: ChunkKey,
        data: Bytes,
        checksum: Checksum,
    ) -> Result<(), CacheError> {
        let ckey = CacheKey::Chunk(key);
        if !self.is_disk_fetch(&ckey) {
            return Err(CacheError::NotFetching(ckey));
        }
        if data.len() > CHUNK_SIZE || !checksum.verifies(&data) {
            self.stats.bad_checksums += 1;
            self.l2_fallback(now, key);
            return Err(CacheError::BadChecksum(key));
        }
        let l2_expires = self.l2.get(&key).and_then(|e| e.expires);
        let value = Value::Chunk(data);
        match l2_expires {
            Some(expires) if now < expires => {
                self.stats.fills += 1;
                self.complete(now, ckey, value, expires);
            }
            _ => {
                // Past its TTL (or of unknown age): never served as is. It
                // becomes the old value of a network revalidation, which a
                // new fetch may do even if the disk read was poisoned.
                let new_deadline = now + self.cfg.fetch_timeout;
                let Some(entry) = self.l1.get_mut(&ckey) else {
                    return Err(CacheError::NotFetching(ckey));
                };
                if let Some(fetch) = entry.fetch.as_mut() {
                    self.timers.remove(&(fetch.deadline, ckey.clone()));
                    fetch.deadline = new_deadline;
                    fetch.source = Source::Network;
                    fetch.poisoned = false;
                    self.timers.insert((new_deadline, ckey.clone()));
                }
                let new_charge = charge(&ckey, Some(&value));
                self.l1_bytes = self.l1_bytes - entry.charge + new_charge;
                entry.charge = new_charge;
                entry.value = Some(value.clone());
                entry.expires = now;
                self.out.push_back(Output::Revalidate { key: ckey, value });
            }
        }
        self.enforce_l1(now);
        Ok(())
    }

    /// The shell could not read `key` from disk: it is dropped from the
    /// disk index and fetched from the host instead ([`Output::Fetch`]).
    pub fn l2_read_failed(&mut self, now: Instant, key: ChunkKey) -> Result<(), CacheError> {
        let ckey = CacheKey::Chunk(key);
        if !self.is_disk_fetch(&ckey) {
            return Err(CacheError::NotFetching(ckey));
        }
        self.l2_fallback(now, key);
        Ok(())
    }

    /// The shell could not write `key` to disk: forget it (and have any
    /// partial file deleted).
    pub fn l2_write_failed(&mut self, key: ChunkKey) {
        self.l2_remove(key);
    }

    /// Indexes the chunks the shell found in its disk cache directory at
    /// startup (key and size). Their age did not survive the remount, so
    /// they are stale until revalidated, and they score lowest for
    /// eviction. Oversized entries are deleted; if the index is over
    /// budget (a smaller `--cache-size`), a batch is evicted at once.
    /// Returns the number of chunks indexed.
    pub fn load_l2(
        &mut self,
        now: Instant,
        found: impl IntoIterator<Item = (ChunkKey, u64)>,
    ) -> usize {
        let mut indexed = 0;
        for (key, size) in found {
            if size > CHUNK_SIZE as u64 || self.cfg.l2_max_bytes == 0 {
                self.stats.l2_deletes += 1;
                self.out.push_back(Output::L2Delete { key });
                continue;
            }
            match self.l2.get_mut(&key) {
                Some(e) => {
                    self.l2_bytes = self.l2_bytes - e.size + size;
                    e.size = size;
                }
                None => {
                    self.l2.insert(
                        key,
                        L2Entry {
                            size,
                            expires: None,
                            last_access: now,
                            access_count: 0,
                        },
                    );
                    self.l2_bytes += size;
                }
            }
            indexed += 1;
        }
        self.enforce_l2(now);
        indexed
    }

    /// The host says `node` changed:
    ///
    /// * `Attr`: its attributes become Stale.
    /// * `Data`: its attributes become Stale and every chunk of its file
    ///   (all versions, memory and disk) is dropped: a change that kept
    ///   the version (coarse timestamps) must not serve old bytes.
    /// * `Entries`: its listing becomes Stale and every negative entry
    ///   under it is dropped (a name may exist now).
    /// * `Gone`: everything about it is dropped.
    ///
    /// Fetches in flight for these keys are poisoned (answered, not
    /// cached).
    pub fn invalidate(&mut self, now: Instant, node: NodeId, what: Invalidation) {
        self.stats.invalidations += 1;
        match what {
            Invalidation::Attr => self.mark_stale(now, &CacheKey::Attr(node)),
            Invalidation::Data | Invalidation::Replaced => {
                self.mark_stale(now, &CacheKey::Attr(node));
                if let Some(file) = self.file_of(node) {
                    self.drop_chunks(file, None);
                }
            }
            Invalidation::Entries => {
                // A change of entries moves the directory's times too.
                self.mark_stale(now, &CacheKey::Attr(node));
                self.mark_stale(now, &CacheKey::Dir(node));
                self.drop_negatives(node);
            }
            Invalidation::Gone => {
                if let Some(file) = self.file_of(node) {
                    self.drop_chunks(file, None);
                }
                self.drop_key(&CacheKey::Attr(node));
                self.drop_key(&CacheKey::Dir(node));
                self.drop_negatives(node);
                if let Some((_, seq)) = self.files.remove(&node) {
                    self.files_order.remove(&seq);
                }
            }
        }
    }

    /// The client itself added `entry` to directory `dir` (a create,
    /// mkdir or symlink the host confirmed): a listing held fresh, of at
    /// most [`SMALL_LISTING`] entries, takes it (appended, so a readdir
    /// under way keeps its offsets; replacing an entry of the same name)
    /// and stays fresh for what is left of its ttl, so the next lookups
    /// of new names there are answered from it. Any other listing is
    /// marked stale instead. The name's negative entry goes either way.
    pub fn add_entry(&mut self, now: Instant, dir: NodeId, entry: DirEntry) {
        self.drop_key(&CacheKey::Negative {
            parent: dir,
            name: entry.name.clone(),
        });
        let key = CacheKey::Dir(dir);
        let small = |e: &Entry| matches!(&e.value, Some(Value::Dir(d)) if d.len() < SMALL_LISTING);
        if self.state(now, &key) != EntryState::Cached || !self.l1.get(&key).is_some_and(small) {
            self.mark_stale(now, &key);
            return;
        }
        let Some(e) = self.l1.get_mut(&key) else {
            return;
        };
        let Some(Value::Dir(old)) = e.value.take() else {
            return;
        };
        let mut entries: Vec<DirEntry> = old
            .iter()
            .filter(|d| d.name != entry.name)
            .cloned()
            .collect();
        self.learn_file(&entry.attr);
        entries.push(entry);
        let value = Value::Dir(entries.into());
        let charge = charge(&key, Some(&value));
        if let Some(e) = self.l1.get_mut(&key) {
            self.l1_bytes = self.l1_bytes - e.charge + charge;
            e.charge = charge;
            e.value = Some(value);
        }
        self.enforce_l1(now);
    }

    /// Whether `dir`'s listing, held fresh and of at most
    /// [`SMALL_LISTING`] entries, has no entry `name`: a lookup of it is
    /// then answered ENOENT without asking the host.
    pub fn lacks(&self, now: Instant, dir: NodeId, name: &Name) -> bool {
        let key = CacheKey::Dir(dir);
        self.state(now, &key) == EntryState::Cached
            && matches!(
                self.l1.get(&key).and_then(|e| e.value.as_ref()),
                Some(Value::Dir(entries))
                    if entries.len() <= SMALL_LISTING && !entries.iter().any(|d| &d.name == name)
            )
    }

    /// Drops one key (the client changed it itself, e.g. created the name
    /// of a negative entry). A fetch in flight is poisoned instead, and
    /// the old value it revalidates dropped (a chunk's kept).
    pub fn remove(&mut self, key: &CacheKey) {
        self.drop_key(key);
    }

    /// When [`Self::handle_timeout`] is next needed: the earliest fetch
    /// deadline. (TTLs need no timer: freshness is decided at lookup.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fails every fetch whose deadline has passed with ETIMEDOUT. Calling
    /// it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.timers.pop_first() else {
                break;
            };
            self.stats.timeouts += 1;
            self.finish_err(&key, Errno::TimedOut);
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.out.pop_front();
        if let Some(Output::L2Write { key, .. }) = &out {
            self.unpolled_writes.remove(key);
        }
        out
    }

    // ----- completion -------------------------------------------------

    /// Fetching → Cached with `value` fresh until `expires` (or a plain
    /// insert/replace when nothing was in flight). Waiters are answered
    /// whether or not the value can be kept.
    fn complete(&mut self, now: Instant, key: CacheKey, value: Value, expires: Instant) {
        let new_charge = charge(&key, Some(&value));
        let fits = new_charge <= self.cfg.l1_max_bytes;
        if let Some(entry) = self.l1.get_mut(&key) {
            let mut keep = fits;
            if let Some(fetch) = entry.fetch.take() {
                self.in_flight -= 1;
                self.timers.remove(&(fetch.deadline, key.clone()));
                keep &= !fetch.poisoned;
                if !fetch.waiters.is_empty() {
                    self.out.push_back(Output::Ready {
                        key: key.clone(),
                        waiters: fetch.waiters,
                        result: Ok(value.clone()),
                    });
                }
            }
            if keep {
                self.l1_bytes = self.l1_bytes - entry.charge + new_charge;
                entry.charge = new_charge;
                entry.value = Some(value);
                entry.expires = expires;
                entry.access_count = entry.access_count.max(1);
            } else {
                self.remove_entry(&key);
            }
            return;
        }
        if !fits {
            return;
        }
        if self.l1.len() >= self.cfg.max_entries {
            self.evict_l1(now);
            if self.l1.len() >= self.cfg.max_entries {
                // Everything is in flight: an unsolicited value is simply
                // not kept.
                return;
            }
        }
        self.l1_insert(
            key,
            Entry {
                value: Some(value),
                expires,
                last_access: now,
                // Inserting counts as one use, so a value just fetched (or
                // prefetched) does not score below everything else.
                access_count: 1,
                charge: new_charge,
                fetch: None,
                streamed: false,
            },
        );
    }

    /// Adds a new entry and indexes it.
    fn l1_insert(&mut self, key: CacheKey, entry: Entry) {
        match &key {
            CacheKey::Chunk(ck) => {
                self.l1_chunks.insert(*ck);
            }
            CacheKey::Negative { parent, name } => {
                self.l1_negatives.insert((*parent, name.clone()));
            }
            CacheKey::Attr(_) | CacheKey::Dir(_) => {}
        }
        self.l1_bytes += entry.charge;
        self.in_flight += usize::from(entry.fetch.is_some());
        if let Some(old) = self.l1.insert(key, entry) {
            // Callers insert only absent keys; keep the books right anyway.
            self.l1_bytes -= old.charge;
            self.in_flight -= usize::from(old.fetch.is_some());
        }
    }

    /// Ends the fetch of `key` with `errno` for every waiter. False if it
    /// was not in flight.
    fn finish_err(&mut self, key: &CacheKey, errno: Errno) -> bool {
        let Some(entry) = self.l1.get_mut(key) else {
            return false;
        };
        let Some(fetch) = entry.fetch.take() else {
            return false;
        };
        self.in_flight -= 1;
        self.timers.remove(&(fetch.deadline, key.clone()));
        self.stats.failures += 1;
        if !fetch.waiters.is_empty() {
            self.out.push_back(Output::Ready {
                key: key.clone(),
                waiters: fetch.waiters,
                result: Err(errno),
            });
        }
        if fetch.poisoned || entry.value.is_none() {
            self.remove_entry(key);
        }
        true
    }

    // ----- the disk cache ----------------------------------------------

    fn is_disk_fetch(&self, key: &CacheKey) -> bool {
        self.l1
            .get(key)
            .and_then(|e| e.fetch.as_deref())
            .is_some_and(|f| f.source == Source::Disk)
    }

    /// A disk read failed: delete the chunk from disk and fetch it from
    /// the host.
    fn l2_fallback(&mut self, now: Instant, key: ChunkKey) {
        self.l2_remove(key);
        let ckey = CacheKey::Chunk(key);
        let new_deadline = now + self.cfg.fetch_timeout;
        if let Some(fetch) = self.l1.get_mut(&ckey).and_then(|e| e.fetch.as_mut()) {
            self.timers.remove(&(fetch.deadline, ckey.clone()));
            fetch.deadline = new_deadline;
            fetch.source = Source::Network;
            fetch.poisoned = false;
            self.timers.insert((new_deadline, ckey.clone()));
            self.out.push_back(Output::Fetch { key: ckey });
        }
    }

    fn l2_remove(&mut self, key: ChunkKey) {
        self.l2_remove_all([key]);
    }

    /// Drops chunks from the disk index. A chunk whose [`Output::L2Write`]
    /// the shell has not even polled yet is cancelled by removing that
    /// output (one pass over the queue for the whole batch) instead of
    /// being written and deleted right after.
    fn l2_remove_all(&mut self, keys: impl IntoIterator<Item = ChunkKey>) {
        let mut cancelled = BTreeSet::new();
        for key in keys {
            let Some(e) = self.l2.remove(&key) else {
                continue;
            };
            self.l2_bytes -= e.size;
            if self.unpolled_writes.remove(&key) {
                self.stats.l2_writes -= 1;
                cancelled.insert(key);
            } else {
                self.stats.l2_deletes += 1;
                self.out.push_back(Output::L2Delete { key });
            }
        }
        if !cancelled.is_empty() {
            self.out
                .retain(|o| !matches!(o, Output::L2Write { key, .. } if cancelled.contains(key)));
        }
    }

    /// A chunk left memory: keep it on disk (one write; none if the disk
    /// already has it).
    fn demote(&mut self, key: ChunkKey, chunk: Bytes, entry: &Entry) {
        let size = chunk.len() as u64;
        if size > self.cfg.l2_max_bytes {
            return;
        }
        if !entry.worth_disk() && !self.l2.contains_key(&key) {
            self.stats.scan_skips += 1;
            return;
        }
        match self.l2.get_mut(&key) {
            Some(l2) => {
                l2.expires = l2.expires.max(Some(entry.expires));
                l2.last_access = l2.last_access.max(entry.last_access);
                l2.access_count = l2.access_count.max(entry.access_count);
            }
            None => {
                self.l2.insert(
                    key,
                    L2Entry {
                        size,
                        expires: Some(entry.expires),
                        last_access: entry.last_access,
                        access_count: entry.access_count,
                    },
                );
                self.l2_bytes += size;
                self.stats.l2_writes += 1;
                self.unpolled_writes.insert(key);
                self.out.push_back(Output::L2Write {
                    key,
                    checksum: Checksum::of(&chunk),
                    data: chunk,
                });
            }
        }
    }

    // ----- eviction ----------------------------------------------------

    fn enforce_l1(&mut self, now: Instant) {
        if self.l1_bytes > self.cfg.l1_max_bytes || self.l1.len() > self.cfg.max_entries {
            self.evict_l1(now);
        }
    }

    /// One eviction batch: the lowest-scoring idle entries leave memory
    /// until bytes and entries are at the target ratio. Chunks go to disk.
    fn evict_l1(&mut self, now: Instant) {
        if self.in_flight == self.l1.len() {
            return;
        }
        let target_bytes = self.cfg.target(self.cfg.l1_max_bytes);
        let target_len = self.cfg.target(self.cfg.max_entries as u64) as usize;
        let mut candidates: Vec<(f64, Instant, &CacheKey, u64)> = self
            .l1
            .iter()
            .filter(|(_, e)| e.fetch.is_none())
            .map(|(k, e)| {
                (
                    score(now, e.last_access, e.access_count),
                    e.last_access,
                    k,
                    e.charge,
                )
            })
            .collect();
        sort_by_score(&mut candidates);
        let (mut bytes, mut len) = (self.l1_bytes, self.l1.len());
        let mut victims = Vec::new();
        for (_, _, key, charge) in candidates {
            if bytes <= target_bytes && len <= target_len {
                break;
            }
            bytes -= charge;
            len -= 1;
            victims.push(key.clone());
        }
        for key in victims {
            let Some(entry) = self.remove_entry(&key) else {
                continue;
            };
            self.stats.l1_evictions += 1;
            if let (CacheKey::Chunk(ck), Some(Value::Chunk(chunk))) = (&key, entry.value.clone()) {
                self.demote(*ck, chunk, &entry);
            }
        }
        self.enforce_l2(now);
    }

    fn enforce_l2(&mut self, now: Instant) {
        if self.l2_bytes > self.cfg.l2_max_bytes || self.l2.len() > self.cfg.max_l2_entries {
            self.evict_l2(now);
        }
    }

    /// One disk eviction batch, as [`Self::evict_l1`]; a chunk being read
    /// back right now stays.
    fn evict_l2(&mut self, now: Instant) {
        let target_bytes = self.cfg.target(self.cfg.l2_max_bytes);
        let target_len = self.cfg.target(self.cfg.max_l2_entries as u64) as usize;
        let mut candidates: Vec<(f64, Instant, &ChunkKey, u64)> = self
            .l2
            .iter()
            .filter(|(k, _)| !self.is_disk_fetch(&CacheKey::Chunk(**k)))
            .map(|(k, e)| {
                (
                    score(now, e.last_access, e.access_count),
                    e.last_access,
                    k,
                    e.size,
                )
            })
            .collect();
        sort_by_score(&mut candidates);
        let (mut bytes, mut len) = (self.l2_bytes, self.l2.len());
        let mut victims = Vec::new();
        for (_, _, key, size) in candidates {
            if bytes <= target_bytes && len <= target_len {
                break;
            }
            bytes -= size;
            len -= 1;
            victims.push(*key);
        }
        self.l2_remove_all(victims);
    }

    // ----- invalidation helpers ------------------------------------------

    fn remove_entry(&mut self, key: &CacheKey) -> Option<Entry> {
        let entry = self.l1.remove(key)?;
        self.l1_bytes -= entry.charge;
        self.in_flight -= usize::from(entry.fetch.is_some());
        match key {
            CacheKey::Chunk(ck) => {
                self.l1_chunks.remove(ck);
            }
            CacheKey::Negative { parent, name } => {
                self.l1_negatives.remove(&(*parent, name.clone()));
            }
            CacheKey::Attr(_) | CacheKey::Dir(_) => {}
        }
        if let Some(fetch) = &entry.fetch {
            self.timers.remove(&(fetch.deadline, key.clone()));
        }
        Some(entry)
    }

    /// Cached → Stale now; an in-flight fetch is poisoned.
    fn mark_stale(&mut self, now: Instant, key: &CacheKey) {
        if let Some(entry) = self.l1.get_mut(key) {
            entry.expires = entry.expires.min(now);
            if let Some(fetch) = entry.fetch.as_mut() {
                fetch.poisoned = true;
            }
        }
    }

    /// Removes an idle entry (no demotion: its data is known to be wrong);
    /// an in-flight one is poisoned and goes when its fetch ends. The old
    /// value a fetch revalidates goes at once, except a chunk's (keyed by
    /// version, its bytes are that version's, and a revalidation compares
    /// against them): kept, [`Self::serve_stale`] would hand it out while
    /// the host is unreachable. (fs_sim, seed 27083: a listing
    /// under revalidation kept the attributes this client had made up
    /// for files created under a lease, after those files were gone, and
    /// served them once the host crashed.)
    fn drop_key(&mut self, key: &CacheKey) {
        let Some(entry) = self.l1.get_mut(key) else {
            return;
        };
        let Some(fetch) = entry.fetch.as_mut() else {
            self.remove_entry(key);
            return;
        };
        fetch.poisoned = true;
        if !matches!(key, CacheKey::Chunk(_)) && entry.value.take().is_some() {
            let charge = charge(key, None);
            self.l1_bytes = self.l1_bytes - entry.charge + charge;
            entry.charge = charge;
        }
    }

    /// Drops the chunks of `file` in memory and on disk, except those of
    /// version `keep`.
    fn drop_chunks(&mut self, file: FileKey, keep: Option<u64>) {
        let (lo, hi) = ChunkKey::file_bounds(file);
        let in_memory: Vec<CacheKey> = self
            .l1_chunks
            .range(lo..=hi)
            .filter(|k| Some(k.version) != keep)
            .map(|k| CacheKey::Chunk(*k))
            .collect();
        for key in in_memory {
            self.drop_key(&key);
        }
        let on_disk: Vec<ChunkKey> = self
            .l2
            .range(lo..=hi)
            .map(|(k, _)| *k)
            .filter(|k| Some(k.version) != keep)
            .collect();
        self.l2_remove_all(on_disk);
    }

    /// Drops every negative entry under `parent`: one range of the index.
    fn drop_negatives(&mut self, parent: NodeId) {
        // Names are non-empty and contain no NUL byte, so "\x01" sorts
        // before every valid name: the range starts at the parent's first
        // negative entry.
        let Ok(first) = Name::new([1u8]) else {
            return;
        };
        let keys: Vec<CacheKey> = self
            .l1_negatives
            .range((parent, first)..)
            .take_while(|(p, _)| *p == parent)
            .map(|(parent, name)| CacheKey::Negative {
                parent: *parent,
                name: name.clone(),
            })
            .collect();
        for key in keys {
            self.drop_key(&key);
        }
    }

    fn file_of(&self, node: NodeId) -> Option<FileKey> {
        if let Some((file, _)) = self.files.get(&node) {
            return Some(*file);
        }
        self.l1
            .get(&CacheKey::Attr(node))
            .and_then(|e| e.value.as_ref())
            .and_then(Value::as_attr)
            .map(|a| a.key)
    }

    /// New attributes for a node: remember its file, and if its version
    /// moved on, drop the chunks of other versions (unreachable from now
    /// on, so only taking space).
    fn learn_attr(&mut self, attr: &Attr) {
        let old_version = self
            .l1
            .get(&CacheKey::Attr(attr.node))
            .and_then(|e| e.value.as_ref())
            .and_then(Value::as_attr)
            .filter(|old| old.key == attr.key)
            .map(|old| old.version);
        if old_version.is_some_and(|v| v != attr.version) {
            self.drop_chunks(attr.key, Some(attr.version));
        }
        self.learn_file(attr);
    }

    fn learn_file(&mut self, attr: &Attr) {
        if attr.kind != FileKind::File {
            return;
        }
        self.files_seq += 1;
        let seq = self.files_seq;
        if let Some((_, old)) = self.files.insert(attr.node, (attr.key, seq)) {
            self.files_order.remove(&old);
        }
        self.files_order.insert(seq, attr.node);
        while self.files.len() > self.cfg.max_entries {
            let Some((_, node)) = self.files_order.pop_first() else {
                break;
            };
            self.files.remove(&node);
        }
    }
}

/// The spec's eviction score: accesses over (seconds since the last
/// access + 1). Lower is evicted first.
fn score(now: Instant, last_access: Instant, access_count: u64) -> f64 {
    let age = now.saturating_duration_since(last_access).as_secs_f64();
    access_count as f64 / (age + 1.0)
}

/// Lowest score first; ties by older access, then key, so the order is a
/// total order and eviction is deterministic.
fn sort_by_score<K: Ord>(candidates: &mut [(f64, Instant, &K, u64)]) {
    candidates.sort_unstable_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then_with(|| a.2.cmp(b.2))
    });
}

/// Bytes an entry is charged: bookkeeping, the key's heap part and the
/// data.
fn charge(key: &CacheKey, value: Option<&Value>) -> u64 {
    let key_heap = match key {
        CacheKey::Negative { name, .. } => name.as_bytes().len(),
        _ => 0,
    };
    let data = match value {
        None | Some(Value::Negative) => 0,
        Some(Value::Chunk(c)) => c.len(),
        Some(Value::Attr(_)) => size_of::<Attr>(),
        Some(Value::Dir(entries)) => entries
            .iter()
            .map(|e| size_of::<DirEntry>() + e.name.as_bytes().len())
            .sum(),
    };
    ENTRY_OVERHEAD + (key_heap + data) as u64
}

#[cfg(test)]
impl Cache {
    /// Asserts the bookkeeping invariants (tests only): byte counters
    /// match the entries, every entry holds data or a fetch, the timer
    /// index holds exactly the in-flight fetches, the budgets hold.
    pub(super) fn check_invariants(&self) {
        let mut bytes = 0;
        let mut fetching = BTreeSet::new();
        for (key, e) in &self.l1 {
            assert!(
                e.value.is_some() || e.fetch.is_some(),
                "{key:?} holds nothing"
            );
            assert_eq!(e.charge, charge(key, e.value.as_ref()), "{key:?} charge");
            if let (CacheKey::Chunk(_), Some(v)) = (key, &e.value) {
                let c = v.as_chunk().expect("chunk value under a chunk key");
                assert!(c.len() <= CHUNK_SIZE, "{key:?} too large");
            }
            bytes += e.charge;
            if let Some(f) = &e.fetch {
                assert!(f.waiters.len() <= self.cfg.max_waiters);
                fetching.insert((f.deadline, key.clone()));
            }
        }
        assert_eq!(bytes, self.l1_bytes, "l1 bytes");
        let chunks: BTreeSet<ChunkKey> = self
            .l1
            .keys()
            .filter_map(|k| match k {
                CacheKey::Chunk(ck) => Some(*ck),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, self.l1_chunks, "chunk index");
        let negatives: BTreeSet<(NodeId, Name)> = self
            .l1
            .keys()
            .filter_map(|k| match k {
                CacheKey::Negative { parent, name } => Some((*parent, name.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(negatives, self.l1_negatives, "negative index");
        assert_eq!(fetching, self.timers, "timers are the fetches");
        assert_eq!(fetching.len(), self.in_flight, "in-flight count");
        assert_eq!(
            self.l2.values().map(|e| e.size).sum::<u64>(),
            self.l2_bytes,
            "l2 bytes"
        );
        // Idle entries fit the budget (in-flight ones cannot be evicted).
        let idle_bytes: u64 = self
            .l1
            .values()
            .filter(|e| e.fetch.is_none())
            .map(|e| e.charge)
            .sum();
        assert!(idle_bytes <= self.cfg.l1_max_bytes, "l1 over budget");
        assert!(self.l1.len() <= self.cfg.max_entries, "l1 over entry cap");
        assert!(self.l2_bytes <= self.cfg.l2_max_bytes, "l2 over budget");
        assert!(
            self.l2.len() <= self.cfg.max_l2_entries,
            "l2 over entry cap"
        );
        assert_eq!(self.files.len(), self.files_order.len());
        let queued: BTreeSet<ChunkKey> = self
            .out
            .iter()
            .filter_map(|o| match o {
                Output::L2Write { key, .. } => Some(*key),
                _ => None,
            })
            .collect();
        assert_eq!(queued, self.unpolled_writes, "queued writes");
        assert!(self.files.len() <= self.cfg.max_entries);
    }

    /// Bytes charged per entry besides data (tests only).
    pub(super) fn entry_overhead() -> u64 {
        ENTRY_OVERHEAD
    }
}
