//! Unit tests of the cache: every transition and TTL boundary, coalescing,
//! errors, invalidation, eviction and the disk cache, plus a randomised
//! run against a model of "never served past its TTL".

use super::*;
use crate::proto::{Checksum, Errno, FileKey, FileKind, Invalidation, Name, NodeId, Timestamp};
use crate::{Instant, Rng};
use std::fmt::Write;
use std::time::Duration;

const W1: WaiterId = WaiterId(1);
const W2: WaiterId = WaiterId(2);

fn at(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}
fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
/// One nanosecond before `t`.
fn just_before(t: Instant) -> Instant {
    Instant::from_nanos(t.as_nanos() - 1)
}

fn file(n: u64) -> FileKey {
    FileKey { dev: 1, ino: n }
}
fn ck(f: u64, version: u64, index: u64) -> ChunkKey {
    ChunkKey {
        file: file(f),
        version,
        index,
    }
}
fn chunk_key(f: u64, version: u64, index: u64) -> CacheKey {
    CacheKey::Chunk(ck(f, version, index))
}
fn attr(node: u64, version: u64) -> Attr {
    Attr {
        node: NodeId(node),
        key: file(node),
        kind: FileKind::File,
        size: 1 << 20,
        mode: 0o644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        version,
        rdev: 0,
    }
}
fn attr_value(node: u64, version: u64) -> Value {
    Value::Attr(Arc::new(attr(node, version)))
}
fn chunk(byte: u8, len: usize) -> Bytes {
    Bytes::from(vec![byte; len])
}
fn chunk_value(byte: u8, len: usize) -> Value {
    Value::Chunk(chunk(byte, len))
}
fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}
fn negative(parent: u64, n: &str) -> CacheKey {
    CacheKey::Negative {
        parent: NodeId(parent),
        name: name(n),
    }
}
fn dir_value(names: &[&str]) -> Value {
    let entries: Vec<DirEntry> = names
        .iter()
        .enumerate()
        .map(|(i, n)| DirEntry {
            name: name(n),
            attr: attr(100 + i as u64, 1),
        })
        .collect();
    Value::Dir(entries.into())
}

fn cache() -> Cache {
    Cache::new(CacheConfig::default())
}

fn drain(c: &mut Cache) -> Vec<Output> {
    c.check_invariants();
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn ready(key: CacheKey, waiters: &[u64], result: Result<Value, Errno>) -> Output {
    Output::Ready {
        key,
        waiters: waiters.iter().map(|&w| WaiterId(w)).collect(),
        result,
    }
}

// ----- states and TTL boundaries ------------------------------------------

#[test]
fn defaults_are_the_spec_table() {
    let cfg = CacheConfig::default();
    assert_eq!(cfg.ttl(Kind::Chunk), Duration::from_secs(300));
    assert_eq!(cfg.ttl(Kind::Dir), secs(1));
    assert_eq!(cfg.ttl(Kind::Attr), secs(1));
    assert_eq!(cfg.ttl(Kind::Negative), secs(5));
    assert_eq!(cfg.target_ratio, 0.8);
}

#[test]
fn unknown_fetching_cached_stale_fetching() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(5));
    assert_eq!(c.state(at(0), &key), EntryState::Unknown);

    assert_eq!(c.lookup(at(0), &key, W1), Ok(Lookup::Miss(Miss::Fetch)));
    assert_eq!(c.state(at(0), &key), EntryState::Fetching);
    assert_eq!(drain(&mut c), vec![]);

    c.fill(at(10), key.clone(), attr_value(5, 1)).expect("fill");
    assert_eq!(c.state(at(10), &key), EntryState::Cached);
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Ok(attr_value(5, 1)))]
    );

    // Fresh strictly before filled + ttl, stale from it on.
    let expiry = at(10) + secs(1);
    assert_eq!(c.state(just_before(expiry), &key), EntryState::Cached);
    assert_eq!(c.state(expiry, &key), EntryState::Stale);

    // Stale → Fetching on access: the accessor revalidates.
    assert_eq!(
        c.lookup(expiry, &key, W2),
        Ok(Lookup::Stale(attr_value(5, 1)))
    );
    assert_eq!(c.state(expiry, &key), EntryState::Fetching);
    assert_eq!(c.stats().stale, 1);
}

/// For every kind: a hit at ttl − 1 ns, stale at exactly ttl.
#[test]
fn every_kind_hits_until_ttl_minus_one_ns_and_is_stale_at_ttl() {
    let cfg = CacheConfig::default();
    let cases = [
        (chunk_key(1, 1, 0), chunk_value(7, 100), cfg.chunk_ttl),
        (CacheKey::Attr(NodeId(2)), attr_value(2, 1), cfg.attr_ttl),
        (
            CacheKey::Dir(NodeId(3)),
            dir_value(&["a", "b"]),
            cfg.dir_ttl,
        ),
        (negative(3, "missing"), Value::Negative, cfg.negative_ttl),
    ];
    for (key, value, ttl) in cases {
        let mut c = cache();
        let filled = at(1000);
        c.fill(filled, key.clone(), value.clone()).expect("fill");
        let last_fresh = just_before(filled + ttl);
        assert_eq!(
            c.lookup(last_fresh, &key, W1),
            Ok(Lookup::Hit(value.clone())),
            "{key:?} at ttl - 1ns"
        );
        assert_eq!(
            c.lookup(filled + ttl, &key, W1),
            Ok(Lookup::Stale(value)),
            "{key:?} at ttl"
        );
        drain(&mut c);
    }
}

#[test]
fn ttls_are_configurable() {
    let mut c = Cache::new(CacheConfig {
        attr_ttl: Duration::from_millis(50),
        ..CacheConfig::default()
    });
    let key = CacheKey::Attr(NodeId(9));
    c.fill(at(0), key.clone(), attr_value(9, 1)).expect("fill");
    assert!(matches!(c.lookup(at(49), &key, W1), Ok(Lookup::Hit(_))));
    assert!(matches!(c.lookup(at(50), &key, W1), Ok(Lookup::Stale(_))));
}

#[test]
fn revalidated_refreshes_the_ttl_and_answers_every_waiter() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(5));
    c.fill(at(0), key.clone(), attr_value(5, 3)).expect("fill");
    assert_eq!(
        c.lookup(at(1500), &key, W1),
        Ok(Lookup::Stale(attr_value(5, 3)))
    );
    // A second consumer during the revalidation waits for it.
    assert_eq!(c.lookup(at(1501), &key, W2), Ok(Lookup::Miss(Miss::Wait)));
    // Same version at the host: confirm, no data moved.
    c.revalidated(at(1600), &key).expect("revalidated");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1, 2], Ok(attr_value(5, 3)))]
    );
    assert_eq!(c.state(at(1600), &key), EntryState::Cached);
    assert!(matches!(c.lookup(at(2599), &key, W1), Ok(Lookup::Hit(_))));
    assert!(matches!(c.lookup(at(2600), &key, W1), Ok(Lookup::Stale(_))));
    // Revalidating something not in flight is refused.
    assert_eq!(
        c.revalidated(at(2600), &CacheKey::Attr(NodeId(77))),
        Err(CacheError::NotFetching(CacheKey::Attr(NodeId(77))))
    );
}

#[test]
fn stale_replaced_by_new_data() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(5));
    c.fill(at(0), key.clone(), attr_value(5, 1)).expect("fill");
    assert!(matches!(c.lookup(at(1000), &key, W1), Ok(Lookup::Stale(_))));
    c.fill(at(1100), key.clone(), attr_value(5, 2))
        .expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Ok(attr_value(5, 2)))]
    );
    assert_eq!(
        c.lookup(at(1100), &key, W1),
        Ok(Lookup::Hit(attr_value(5, 2)))
    );
}

// ----- coalescing and errors --------------------------------------------------

#[test]
fn n_misses_make_one_fetch_and_n_answers() {
    let mut c = cache();
    let key = chunk_key(1, 1, 4);
    let answers: Vec<_> = (1..=8)
        .map(|w| c.lookup(at(w), &key, WaiterId(w)).expect("lookup"))
        .collect();
    assert_eq!(answers[0], Lookup::Miss(Miss::Fetch));
    assert!(answers[1..].iter().all(|a| *a == Lookup::Miss(Miss::Wait)));
    assert_eq!(c.stats().misses, 1);
    assert_eq!(c.stats().coalesced, 7);
    assert_eq!(drain(&mut c), vec![], "nothing until the data arrives");

    c.fill(at(20), key.clone(), chunk_value(1, 4096))
        .expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(
            key.clone(),
            &[1, 2, 3, 4, 5, 6, 7, 8],
            Ok(chunk_value(1, 4096))
        )]
    );
    // The next lookup is a hit: nothing is left waiting.
    assert_eq!(
        c.lookup(at(21), &key, W1),
        Ok(Lookup::Hit(chunk_value(1, 4096)))
    );
}

#[test]
fn an_error_answers_every_waiter() {
    let mut c = cache();
    let key = CacheKey::Dir(NodeId(3));
    for w in 1..=3 {
        c.lookup(at(0), &key, WaiterId(w)).expect("lookup");
    }
    c.fail(at(5), &key, Errno::Acces).expect("in flight");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1, 2, 3], Err(Errno::Acces))]
    );
    // A first fetch that failed leaves nothing behind: the next access
    // fetches again.
    assert_eq!(c.state(at(5), &key), EntryState::Unknown);
    assert_eq!(c.lookup(at(6), &key, W1), Ok(Lookup::Miss(Miss::Fetch)));
    // Failing what is not in flight is refused.
    assert_eq!(
        c.fail(at(6), &CacheKey::Attr(NodeId(1)), Errno::Io),
        Err(CacheError::NotFetching(CacheKey::Attr(NodeId(1))))
    );
}

#[test]
fn a_failed_revalidation_leaves_the_old_data_stale() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(5));
    c.fill(at(0), key.clone(), attr_value(5, 1)).expect("fill");
    assert!(matches!(c.lookup(at(1000), &key, W1), Ok(Lookup::Stale(_))));
    c.fail(at(1001), &key, Errno::NotConn).expect("in flight");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Err(Errno::NotConn))]
    );
    assert_eq!(c.state(at(1001), &key), EntryState::Stale);
    // Never a hit: the next access revalidates again.
    assert!(matches!(c.lookup(at(1002), &key, W1), Ok(Lookup::Stale(_))));
}

#[test]
fn waiters_per_key_are_capped() {
    let mut c = Cache::new(CacheConfig {
        max_waiters: 3,
        ..CacheConfig::default()
    });
    let key = CacheKey::Attr(NodeId(5));
    for w in 1..=3 {
        c.lookup(at(0), &key, WaiterId(w)).expect("lookup");
    }
    assert_eq!(
        c.lookup(at(0), &key, WaiterId(4)),
        Err(CacheError::TooManyWaiters { max: 3 })
    );
    c.check_invariants();
}

#[test]
fn fetches_time_out_with_etimedout() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(5));
    assert_eq!(c.poll_timeout(), None, "no timer without a fetch");
    c.lookup(at(0), &key, W1).expect("lookup");
    c.lookup(at(10), &key, W2).expect("lookup");
    let deadline = at(0) + c.config().fetch_timeout;
    assert_eq!(c.poll_timeout(), Some(deadline));
    c.handle_timeout(just_before(deadline));
    assert_eq!(drain(&mut c), vec![], "early is harmless");
    c.handle_timeout(deadline);
    c.handle_timeout(deadline);
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1, 2], Err(Errno::TimedOut))]
    );
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.stats().timeouts, 1);
    // A reply after the timeout is stale input, not a panic; it is still
    // cached (it is data, just late), answering nobody.
    c.fill(at(61_000), key.clone(), attr_value(5, 1))
        .expect("late fill");
    assert_eq!(drain(&mut c), vec![]);
}

#[test]
fn a_fill_cancels_the_timer() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(5));
    c.lookup(at(0), &key, W1).expect("lookup");
    c.fill(at(1), key, attr_value(5, 1)).expect("fill");
    assert_eq!(c.poll_timeout(), None);
}

// ----- sizes and kinds ------------------------------------------------

#[test]
fn oversized_chunks_and_mismatched_kinds_are_refused() {
    let mut c = cache();
    let key = chunk_key(1, 1, 0);
    assert_eq!(
        c.fill(
            at(0),
            key.clone(),
            chunk_value(1, crate::proto::CHUNK_SIZE + 1)
        ),
        Err(CacheError::TooLarge {
            len: crate::proto::CHUNK_SIZE + 1
        })
    );
    assert_eq!(
        c.fill(at(0), key, attr_value(1, 1)),
        Err(CacheError::KindMismatch {
            key: Kind::Chunk,
            value: Kind::Attr
        })
    );
    assert!(c.is_empty());
}

// ----- invalidation ----------------------------------------------------------

/// A cache holding node 10 (a file with two chunks in memory and one on
/// disk), directory 1 listing it, and negative entries under 1 and 2.
fn populated() -> Cache {
    let mut c = Cache::new(CacheConfig {
        // Room for exactly one chunk in memory, so the first one demotes.
        l1_max_bytes: 10_000 + 5 * Cache::entry_overhead(),
        ..CacheConfig::default()
    });
    c.fill(at(0), CacheKey::Attr(NodeId(10)), attr_value(10, 1))
        .expect("attr");
    c.fill(at(0), chunk_key(10, 1, 0), chunk_value(0, 6000))
        .expect("chunk 0");
    c.fill(at(1), chunk_key(10, 1, 1), chunk_value(1, 6000))
        .expect("chunk 1");
    c.fill(at(2), CacheKey::Dir(NodeId(1)), dir_value(&["f"]))
        .expect("dir");
    c.fill(at(2), negative(1, "nope"), Value::Negative)
        .expect("neg");
    c.fill(at(2), negative(1, "zzz"), Value::Negative)
        .expect("neg");
    c.fill(at(2), negative(2, "other"), Value::Negative)
        .expect("neg");
    let outputs = drain(&mut c);
    assert!(
        matches!(&outputs[..], [Output::L2Write { key, .. }] if *key == ck(10, 1, 0)),
        "{outputs:?}"
    );
    assert_eq!(c.state(at(3), &chunk_key(10, 1, 0)), EntryState::Evicted);
    assert_eq!(c.state(at(3), &chunk_key(10, 1, 1)), EntryState::Cached);
    c
}

#[test]
fn invalidate_attr_marks_attributes_stale_at_once() {
    let mut c = populated();
    c.invalidate(at(3), NodeId(10), Invalidation::Attr);
    assert_eq!(
        c.state(at(3), &CacheKey::Attr(NodeId(10))),
        EntryState::Stale
    );
    assert_eq!(c.state(at(3), &chunk_key(10, 1, 1)), EntryState::Cached);
    assert_eq!(drain(&mut c), vec![]);
    // Still revalidatable cheaply: the stale value is handed out.
    assert_eq!(
        c.lookup(at(3), &CacheKey::Attr(NodeId(10)), W1),
        Ok(Lookup::Stale(attr_value(10, 1)))
    );
}

#[test]
fn invalidate_data_drops_the_files_chunks_in_memory_and_on_disk() {
    let mut c = populated();
    c.invalidate(at(3), NodeId(10), Invalidation::Data);
    assert_eq!(
        c.state(at(3), &CacheKey::Attr(NodeId(10))),
        EntryState::Stale
    );
    assert_eq!(c.state(at(3), &chunk_key(10, 1, 1)), EntryState::Unknown);
    assert_eq!(c.state(at(3), &chunk_key(10, 1, 0)), EntryState::Unknown);
    assert_eq!(drain(&mut c), vec![Output::L2Delete { key: ck(10, 1, 0) }]);
    // Other entries are untouched.
    assert_eq!(
        c.state(at(3), &CacheKey::Dir(NodeId(1))),
        EntryState::Cached
    );
}

#[test]
fn invalidate_entries_marks_the_listing_stale_and_drops_its_negatives() {
    let mut c = populated();
    c.invalidate(at(3), NodeId(1), Invalidation::Entries);
    assert_eq!(c.state(at(3), &CacheKey::Dir(NodeId(1))), EntryState::Stale);
    assert_eq!(c.state(at(3), &negative(1, "nope")), EntryState::Unknown);
    assert_eq!(c.state(at(3), &negative(1, "zzz")), EntryState::Unknown);
    assert_eq!(c.state(at(3), &negative(2, "other")), EntryState::Cached);
    assert_eq!(
        c.state(at(3), &CacheKey::Attr(NodeId(10))),
        EntryState::Cached
    );
}

#[test]
fn invalidate_gone_drops_everything_about_the_node() {
    let mut c = populated();
    c.invalidate(at(3), NodeId(10), Invalidation::Gone);
    for key in [
        CacheKey::Attr(NodeId(10)),
        chunk_key(10, 1, 0),
        chunk_key(10, 1, 1),
    ] {
        assert_eq!(c.state(at(3), &key), EntryState::Unknown, "{key:?}");
    }
    assert_eq!(drain(&mut c), vec![Output::L2Delete { key: ck(10, 1, 0) }]);
    // A directory that is gone takes its listing and negatives with it.
    c.invalidate(at(3), NodeId(1), Invalidation::Gone);
    assert_eq!(
        c.state(at(3), &CacheKey::Dir(NodeId(1))),
        EntryState::Unknown
    );
    assert_eq!(c.state(at(3), &negative(1, "nope")), EntryState::Unknown);
    assert_eq!(c.state(at(3), &negative(2, "other")), EntryState::Cached);
    assert_eq!(c.stats().invalidations, 2);
}

#[test]
fn data_invalidation_finds_chunks_after_the_attr_left_memory() {
    let mut c = cache();
    c.fill(at(0), CacheKey::Attr(NodeId(10)), attr_value(10, 1))
        .expect("attr");
    c.fill(at(0), chunk_key(10, 1, 0), chunk_value(0, 100))
        .expect("chunk");
    c.remove(&CacheKey::Attr(NodeId(10)));
    c.invalidate(at(1), NodeId(10), Invalidation::Data);
    assert_eq!(c.state(at(1), &chunk_key(10, 1, 0)), EntryState::Unknown);
}

#[test]
fn a_fetch_in_flight_during_invalidation_answers_but_is_not_cached() {
    let mut c = cache();
    let key = CacheKey::Attr(NodeId(7));
    c.lookup(at(0), &key, W1).expect("lookup");
    c.invalidate(at(1), NodeId(7), Invalidation::Attr);
    c.fill(at(2), key.clone(), attr_value(7, 1)).expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Ok(attr_value(7, 1)))]
    );
    assert_eq!(c.state(at(2), &key), EntryState::Unknown);
    // Likewise for Gone on a chunk being fetched.
    c.fill(at(2), key.clone(), attr_value(7, 1)).expect("attr");
    let chunk = chunk_key(7, 1, 0);
    c.lookup(at(2), &chunk, W2).expect("lookup");
    c.invalidate(at(3), NodeId(7), Invalidation::Gone);
    c.fill(at(4), chunk.clone(), chunk_value(3, 10))
        .expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(chunk.clone(), &[2], Ok(chunk_value(3, 10)))]
    );
    assert_eq!(c.state(at(4), &chunk), EntryState::Unknown);
}

#[test]
fn a_new_attr_version_drops_chunks_of_other_versions() {
    let mut c = cache();
    c.fill(at(0), CacheKey::Attr(NodeId(10)), attr_value(10, 1))
        .expect("attr");
    c.fill(at(0), chunk_key(10, 1, 0), chunk_value(0, 100))
        .expect("chunk");
    c.fill(at(1), CacheKey::Attr(NodeId(10)), attr_value(10, 1))
        .expect("same");
    assert_eq!(c.state(at(1), &chunk_key(10, 1, 0)), EntryState::Cached);
    c.fill(at(2), CacheKey::Attr(NodeId(10)), attr_value(10, 2))
        .expect("new");
    c.fill(at(2), chunk_key(10, 2, 0), chunk_value(9, 100))
        .expect("chunk");
    assert_eq!(c.state(at(2), &chunk_key(10, 1, 0)), EntryState::Unknown);
    assert_eq!(c.state(at(2), &chunk_key(10, 2, 0)), EntryState::Cached);
}

#[test]
fn reconnect_helpers_fail_fetches_and_distrust_everything() {
    let mut c = populated();
    let key = CacheKey::Attr(NodeId(99));
    c.lookup(at(3), &key, W1).expect("lookup");
    c.fail_all(at(4), Errno::NotConn);
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Err(Errno::NotConn))]
    );
    c.mark_all_stale(at(4));
    for key in [
        CacheKey::Attr(NodeId(10)),
        chunk_key(10, 1, 1),
        CacheKey::Dir(NodeId(1)),
        negative(2, "other"),
    ] {
        assert_eq!(c.state(at(4), &key), EntryState::Stale, "{key:?}");
    }
    // The disk copy is of unknown freshness too: it comes back for
    // revalidation.
    let key = chunk_key(10, 1, 0);
    assert_eq!(c.lookup(at(5), &key, W1), Ok(Lookup::Miss(Miss::L2Read)));
    c.l2_loaded(
        at(6),
        ck(10, 1, 0),
        Bytes::from(vec![0; 6000]),
        Checksum::of(&chunk(0, 6000)),
    )
    .expect("loaded");
    // (Bringing it into memory pushes chunk 1 out to disk.)
    let out = drain(&mut c);
    assert!(
        matches!(&out[..], [Output::Revalidate { key: k, .. }, Output::L2Write { .. }] if *k == key),
        "{out:?}"
    );
}

// ----- eviction ------------------------------------------------------------------

/// A cache with room for `n` 1000-byte chunks.
fn room_for(n: u64, l2_chunks: u64) -> Cache {
    Cache::new(CacheConfig {
        l1_max_bytes: n * (1000 + Cache::entry_overhead()),
        l2_max_bytes: l2_chunks * 1000,
        ..CacheConfig::default()
    })
}

#[test]
fn eviction_takes_the_lowest_score_first() {
    let mut c = room_for(4, 0);
    // Four chunks: index i filled at i s.
    for i in 0..4 {
        c.fill(at(i * 1000), chunk_key(1, 1, i), chunk_value(i as u8, 1000))
            .expect("fill");
    }
    // At 10 s: chunk 0 used 5 times at 9 s (score 6/2 = 3), chunk 1 never
    // again (1/(9+1) = 0.1), chunk 2 once at 10 s (2/1 = 2), chunk 3 never
    // (1/(7+1) = 0.125).
    for _ in 0..5 {
        c.lookup(at(9000), &chunk_key(1, 1, 0), W1).expect("hit");
    }
    c.lookup(at(10_000), &chunk_key(1, 1, 2), W1).expect("hit");
    // A fifth chunk goes over budget: the batch evicts down to 80 % of 4
    // chunks' worth (3.2), so two leave: the scores 0.1 and 0.125.
    c.fill(at(10_000), chunk_key(1, 1, 4), chunk_value(4, 1000))
        .expect("fill");
    let left: Vec<u64> = (0..5)
        .filter(|&i| c.state(at(10_000), &chunk_key(1, 1, i)) == EntryState::Unknown)
        .collect();
    assert_eq!(left, vec![1, 3]);
    assert_eq!(c.stats().l1_evictions, 2);
    drain(&mut c);
}

#[test]
fn a_batch_evicts_down_to_the_target_ratio_and_no_further() {
    let mut c = room_for(10, 0);
    for i in 0..10 {
        c.fill(at(i), chunk_key(1, 1, i), chunk_value(1, 1000))
            .expect("fill");
    }
    assert_eq!(c.stats().l1_evictions, 0, "at the budget is not over it");
    let per = 1000 + Cache::entry_overhead();
    assert_eq!(c.l1_bytes(), 10 * per);
    c.fill(at(10), chunk_key(1, 1, 10), chunk_value(1, 1000))
        .expect("fill");
    // 11 entries, target 8: exactly three evicted, in one batch.
    assert_eq!(c.stats().l1_evictions, 3);
    assert_eq!(c.len(), 8);
    assert!(c.l1_bytes() <= c.config().l1_max_bytes * 8 / 10);
    // The next inserts need no eviction until the budget is exceeded again.
    c.fill(at(11), chunk_key(1, 1, 11), chunk_value(1, 1000))
        .expect("fill");
    c.fill(at(12), chunk_key(1, 1, 12), chunk_value(1, 1000))
        .expect("fill");
    assert_eq!(c.stats().l1_evictions, 3);
    drain(&mut c);
}

#[test]
fn the_entry_cap_evicts_too_and_in_flight_entries_are_never_evicted() {
    let mut c = Cache::new(CacheConfig {
        max_entries: 5,
        ..CacheConfig::default()
    });
    for n in 0..5 {
        c.fill(at(n), CacheKey::Attr(NodeId(n)), attr_value(n, 1))
            .expect("fill");
    }
    // A miss needs a slot: one batch down to 4.
    assert_eq!(
        c.lookup(at(10), &CacheKey::Attr(NodeId(50)), W1),
        Ok(Lookup::Miss(Miss::Fetch))
    );
    assert_eq!(c.len(), 5);
    assert_eq!(c.stats().l1_evictions, 1);
    // Fill the cache with fetches: they cannot be evicted, so the cap
    // refuses new ones.
    for n in 51..=54 {
        let _ = c.lookup(at(11), &CacheKey::Attr(NodeId(n)), W1);
    }
    assert_eq!(
        c.lookup(at(12), &CacheKey::Attr(NodeId(60)), W1),
        Err(CacheError::Full { max: 5 })
    );
    for n in 50..=54 {
        assert_eq!(
            c.state(at(12), &CacheKey::Attr(NodeId(n))),
            EntryState::Fetching
        );
    }
    drain(&mut c);
}

#[test]
fn l1_eviction_demotes_chunks_to_l2_and_reads_them_back() {
    let mut c = room_for(2, 10);
    c.fill(at(0), chunk_key(1, 1, 0), chunk_value(0, 1000))
        .expect("fill");
    c.fill(at(1), chunk_key(1, 1, 1), chunk_value(1, 1000))
        .expect("fill");
    c.fill(at(2), CacheKey::Attr(NodeId(1)), attr_value(1, 1))
        .expect("fill");
    // Over budget: the batch evicts the oldest chunk to disk; the attr
    // (not a chunk) would simply be dropped.
    let out = drain(&mut c);
    assert_eq!(
        out,
        vec![Output::L2Write {
            key: ck(1, 1, 0),
            data: chunk(0, 1000),
            checksum: Checksum::of(&chunk(0, 1000)),
        }]
    );
    assert_eq!(c.state(at(3), &chunk_key(1, 1, 0)), EntryState::Evicted);
    assert_eq!((c.l2_len(), c.l2_bytes()), (1, 1000));
    assert_eq!(c.stats().l2_writes, 1);

    // An L2 hit: the shell reads the disk; concurrent readers coalesce.
    let key = chunk_key(1, 1, 0);
    assert_eq!(c.lookup(at(4), &key, W1), Ok(Lookup::Miss(Miss::L2Read)));
    assert_eq!(c.lookup(at(4), &key, W2), Ok(Lookup::Miss(Miss::Wait)));
    let back = chunk(0, 1000);
    c.l2_loaded(at(5), ck(1, 1, 0), back.clone(), Checksum::of(&back))
        .expect("loaded");
    let out = drain(&mut c);
    assert!(
        out.contains(&ready(key.clone(), &[1, 2], Ok(Value::Chunk(back)))),
        "{out:?}"
    );
    assert!(matches!(c.lookup(at(6), &key, W1), Ok(Lookup::Hit(_))));
    // Evicting it again needs no second write: the disk still has it.
    let writes = c.stats().l2_writes;
    c.fill(at(7), chunk_key(1, 1, 5), chunk_value(5, 1000))
        .expect("fill");
    c.fill(at(8), chunk_key(1, 1, 6), chunk_value(6, 1000))
        .expect("fill");
    drain(&mut c);
    assert_eq!(c.l2_len() as u64, c.stats().l2_writes);
    assert!(c.stats().l2_writes >= writes);
}

/// Scan resistance: a chunk read-ahead fetched and a reader read once
/// leaves memory without a disk write; one a reader asked for, or came
/// back to, is demoted.
#[test]
fn a_scan_read_once_does_not_reach_the_disk() {
    let mut c = room_for(3, 10);
    // Chunk 0 for a reader; chunks 1 and 2 by read-ahead.
    let demand = chunk_key(1, 1, 0);
    assert_eq!(c.lookup(at(0), &demand, W1), Ok(Lookup::Miss(Miss::Fetch)));
    for i in [1, 2] {
        assert_eq!(c.prefetch(at(0), ck(1, 1, i)), Ok(Some(Miss::Fetch)));
    }
    for i in 0..3 {
        c.fill(at(1), chunk_key(1, 1, i), chunk_value(i as u8, 1000))
            .expect("fill");
    }
    drain(&mut c);
    // The scan reads 1 and 2 once; a reader comes back to 2.
    for (t, i) in [(2, 1), (3, 2), (4, 2)] {
        assert!(matches!(
            c.lookup(at(t), &chunk_key(1, 1, i), W1),
            Ok(Lookup::Hit(_))
        ));
    }
    // A minute later, three new chunks push all three out of memory.
    for i in 10..13 {
        c.fill(at(60_000), chunk_key(2, 1, i), chunk_value(0, 1000))
            .expect("fill");
    }
    let mut written: Vec<ChunkKey> = drain(&mut c)
        .into_iter()
        .filter_map(|o| match o {
            Output::L2Write { key, .. } if key.file == file(1) => Some(key),
            _ => None,
        })
        .collect();
    written.sort();
    assert_eq!(written, vec![ck(1, 1, 0), ck(1, 1, 2)]);
    assert_eq!(c.stats().scan_skips, 1);
    assert_eq!(
        c.state(at(60_001), &chunk_key(1, 1, 1)),
        EntryState::Unknown
    );
}

#[test]
fn a_chunk_past_its_ttl_on_disk_comes_back_for_revalidation() {
    let mut c = room_for(1, 10);
    c.fill(at(0), chunk_key(1, 1, 0), chunk_value(0, 1000))
        .expect("fill");
    c.fill(at(1), chunk_key(1, 1, 1), chunk_value(1, 1000))
        .expect("fill");
    drain(&mut c);
    let key = chunk_key(1, 1, 0);
    let late = at(0) + c.config().chunk_ttl;
    assert_eq!(c.lookup(late, &key, W1), Ok(Lookup::Miss(Miss::L2Read)));
    let data = chunk(0, 1000);
    c.l2_loaded(late, ck(1, 1, 0), data.clone(), Checksum::of(&data))
        .expect("loaded");
    assert_eq!(
        drain(&mut c),
        vec![Output::Revalidate {
            key: key.clone(),
            value: Value::Chunk(data.clone()),
        }]
    );
    assert_eq!(c.state(late, &key), EntryState::Fetching);
    c.revalidated(late, &key).expect("same version");
    let out = drain(&mut c);
    assert!(
        out.contains(&ready(key, &[1], Ok(Value::Chunk(data)))),
        "{out:?}"
    );
}

#[test]
fn l2_over_budget_deletes_the_lowest_scores_in_a_batch() {
    let mut c = room_for(1, 5);
    // The shell drains after every input, as it does.
    let mut out = Vec::new();
    for i in 0..7 {
        c.fill(at(i * 1000), chunk_key(1, 1, i), chunk_value(i as u8, 1000))
            .expect("fill");
        out.extend(drain(&mut c));
    }
    let writes: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::L2Write { key, .. } => Some(key.index),
            _ => None,
        })
        .collect();
    let deletes: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::L2Delete { key } => Some(key.index),
            _ => None,
        })
        .collect();
    assert_eq!(writes, vec![0, 1, 2, 3, 4, 5]);
    // The sixth write put 6000 bytes on a 5000-byte disk: down to 4000,
    // oldest (lowest score) first.
    assert_eq!(deletes, vec![0, 1]);
    assert_eq!(c.l2_bytes(), 4000);
    // The delete comes after the write it undoes: the shell applies them
    // in order.
    let w0 = out
        .iter()
        .position(|o| matches!(o, Output::L2Write { key, .. } if key.index == 0));
    let d0 = out
        .iter()
        .position(|o| matches!(o, Output::L2Delete { key } if key.index == 0));
    assert!(w0 < d0);
}

#[test]
fn a_write_still_queued_is_cancelled_rather_than_written_and_deleted() {
    let mut c = room_for(1, 5);
    for i in 0..7 {
        c.fill(at(i * 1000), chunk_key(1, 1, i), chunk_value(i as u8, 1000))
            .expect("fill");
    }
    // Nothing drained in between: chunks 0 and 1 were demoted and then
    // evicted from disk before the shell saw their writes.
    let out = drain(&mut c);
    let indexes: Vec<(bool, u64)> = out
        .iter()
        .map(|o| match o {
            Output::L2Write { key, .. } => (true, key.index),
            Output::L2Delete { key } => (false, key.index),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(indexes, vec![(true, 2), (true, 3), (true, 4), (true, 5)]);
    assert_eq!((c.stats().l2_writes, c.stats().l2_deletes), (4, 0));
    // Likewise for an invalidation before the write was polled.
    let mut c = room_for(1, 10);
    c.fill(at(0), CacheKey::Attr(NodeId(1)), attr_value(1, 1))
        .expect("attr");
    drain(&mut c);
    c.fill(at(1), chunk_key(1, 1, 0), chunk_value(0, 1000))
        .expect("fill");
    c.fill(at(2), chunk_key(1, 1, 1), chunk_value(1, 1000))
        .expect("fill");
    assert_eq!(c.l2_len(), 1, "chunk 0 demoted, its write queued");
    c.invalidate(at(3), NodeId(1), Invalidation::Data);
    assert_eq!(drain(&mut c), vec![]);
    assert_eq!((c.l2_len(), c.l2_bytes()), (0, 0));
}

#[test]
fn l2_is_reloaded_from_what_the_shell_finds_on_disk() {
    let mut c = room_for(4, 3);
    let found = vec![
        (ck(1, 1, 0), 1000),
        (ck(1, 1, 1), 1000),
        (ck(2, 7, 0), 500),
        (ck(3, 1, 0), crate::proto::CHUNK_SIZE as u64 + 1),
    ];
    assert_eq!(c.load_l2(at(0), found), 3);
    // The oversized one is garbage; the 2500 bytes fit 3000.
    assert_eq!(drain(&mut c), vec![Output::L2Delete { key: ck(3, 1, 0) }]);
    assert_eq!(c.l2_bytes(), 2500);
    assert_eq!(c.state(at(0), &chunk_key(2, 7, 0)), EntryState::Evicted);

    // Its age is unknown: it is read back, then revalidated, never served
    // as fresh on its own.
    let key = chunk_key(2, 7, 0);
    assert_eq!(c.lookup(at(1), &key, W1), Ok(Lookup::Miss(Miss::L2Read)));
    let data = chunk(2, 500);
    c.l2_loaded(at(2), ck(2, 7, 0), data.clone(), Checksum::of(&data))
        .expect("ok");
    assert!(matches!(&drain(&mut c)[..], [Output::Revalidate { .. }]));
    c.revalidated(at(3), &key).expect("same version");
    assert!(matches!(
        &drain(&mut c)[..],
        [Output::Ready { result: Ok(_), .. }]
    ));

    // Reloading more than the budget evicts a batch at once.
    let more: Vec<_> = (10..14).map(|i| (ck(9, 1, i), 1000)).collect();
    c.load_l2(at(4), more);
    let deletes = drain(&mut c)
        .into_iter()
        .filter(|o| matches!(o, Output::L2Delete { .. }))
        .count();
    assert!(deletes > 0);
    assert!(c.l2_bytes() <= 2400, "80 % of 3000");
}

#[test]
fn a_corrupt_or_missing_disk_chunk_is_fetched_from_the_host() {
    let mut c = room_for(4, 10);
    c.load_l2(at(0), vec![(ck(1, 1, 0), 1000), (ck(1, 1, 1), 1000)]);
    let key = chunk_key(1, 1, 0);
    c.lookup(at(1), &key, W1).expect("lookup");
    assert_eq!(
        c.l2_loaded(
            at(2),
            ck(1, 1, 0),
            Bytes::from_static(b"torn"),
            Checksum::of(b"whole")
        ),
        Err(CacheError::BadChecksum(ck(1, 1, 0)))
    );
    assert_eq!(
        drain(&mut c),
        vec![
            Output::L2Delete { key: ck(1, 1, 0) },
            Output::Fetch { key: key.clone() }
        ]
    );
    c.fill(at(3), key.clone(), chunk_value(0, 1000))
        .expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(key, &[1], Ok(chunk_value(0, 1000)))]
    );

    let key = chunk_key(1, 1, 1);
    c.lookup(at(4), &key, W2).expect("lookup");
    c.l2_read_failed(at(5), ck(1, 1, 1)).expect("disk fetch");
    assert_eq!(
        drain(&mut c),
        vec![
            Output::L2Delete { key: ck(1, 1, 1) },
            Output::Fetch { key: key.clone() }
        ]
    );
    // Disk answers for keys not being read are refused.
    assert!(c.l2_read_failed(at(6), ck(5, 5, 5)).is_err());
    c.l2_write_failed(ck(5, 5, 5));
    assert_eq!(drain(&mut c), vec![]);
}

/// Attributes fetched ahead of a `stat`: once while in flight or fresh,
/// anew once stale (the entry's old value kept for a lookup meanwhile,
/// which joins the fetch), and a poisoned prefetch is not cached.
#[test]
fn attributes_prefetched_are_fetched_once_and_again_when_stale() {
    let mut c = cache();
    let ttl = CacheConfig::default().attr_ttl;
    let key = CacheKey::Attr(NodeId(7));
    assert_eq!(c.prefetch_attr(at(0), NodeId(7)), Ok(Some(Miss::Fetch)));
    assert_eq!(c.prefetch_attr(at(0), NodeId(7)), Ok(None), "in flight");
    c.fill(at(1), key.clone(), attr_value(7, 1)).expect("fill");
    assert_eq!(drain(&mut c), vec![], "nobody waited");
    assert_eq!(c.prefetch_attr(at(2), NodeId(7)), Ok(None), "fresh");
    let stale = Instant::ZERO + ttl + Duration::from_millis(5);
    assert_eq!(c.prefetch_attr(stale, NodeId(7)), Ok(Some(Miss::Fetch)));
    assert_eq!(c.lookup(stale, &key, W1), Ok(Lookup::Miss(Miss::Wait)));
    c.fill(stale, key.clone(), attr_value(7, 2)).expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Ok(attr_value(7, 2)))]
    );
    // Poisoned in flight: answered, not cached.
    let later = stale + ttl + Duration::from_millis(5);
    assert_eq!(c.prefetch_attr(later, NodeId(7)), Ok(Some(Miss::Fetch)));
    c.invalidate(later, NodeId(7), Invalidation::Attr);
    c.fill(later, key.clone(), attr_value(7, 3)).expect("fill");
    assert_eq!(drain(&mut c), vec![]);
    assert_ne!(c.state(later, &key), crate::cache::EntryState::Cached);
}

#[test]
fn prefetch_fetches_once_and_answers_nobody() {
    let mut c = cache();
    assert_eq!(c.prefetch(at(0), ck(1, 1, 3)), Ok(Some(Miss::Fetch)));
    assert_eq!(c.prefetch(at(0), ck(1, 1, 3)), Ok(None));
    // A reader arriving meanwhile joins the prefetch.
    assert_eq!(
        c.lookup(at(1), &chunk_key(1, 1, 3), W1),
        Ok(Lookup::Miss(Miss::Wait))
    );
    c.fill(at(2), chunk_key(1, 1, 3), chunk_value(3, 10))
        .expect("fill");
    assert_eq!(drain(&mut c).len(), 1);
    assert_eq!(c.prefetch(at(3), ck(1, 1, 4)), Ok(Some(Miss::Fetch)));
    c.fill(at(4), chunk_key(1, 1, 4), chunk_value(4, 10))
        .expect("fill");
    assert_eq!(drain(&mut c), vec![], "nobody waited");
    assert!(matches!(
        c.lookup(at(5), &chunk_key(1, 1, 4), W1),
        Ok(Lookup::Hit(_))
    ));
}

#[test]
fn values_larger_than_the_budget_answer_but_are_not_kept() {
    let mut c = room_for(1, 0);
    let key = chunk_key(1, 1, 0);
    c.lookup(at(0), &key, W1).expect("lookup");
    c.fill(at(1), key.clone(), chunk_value(0, 5000))
        .expect("fill");
    assert_eq!(
        drain(&mut c),
        vec![ready(key.clone(), &[1], Ok(chunk_value(0, 5000)))]
    );
    assert_eq!(c.state(at(1), &key), EntryState::Unknown);
}

// ----- randomised: never a hit past the TTL, bookkeeping always right ----

#[test]
fn random_operations_keep_every_invariant() {
    for seed in 0..20 {
        let mut rng = Rng::from_u64(seed);
        let cfg = CacheConfig {
            l1_max_bytes: 20 * (2000 + Cache::entry_overhead()),
            l2_max_bytes: 30_000,
            max_entries: 40,
            max_l2_entries: 25,
            max_waiters: 4,
            ..CacheConfig::default()
        };
        let mut c = Cache::new(cfg.clone());
        // Model: when each key was last made fresh (fill or revalidate).
        let mut fresh_since: std::collections::BTreeMap<CacheKey, Instant> = Default::default();
        let mut disk: std::collections::BTreeMap<ChunkKey, (Bytes, Checksum)> = Default::default();
        let mut now = Instant::ZERO;
        for step in 0..2000u64 {
            now += Duration::from_millis(rng.below(400));
            let node = rng.below(12);
            let key = match rng.below(4) {
                0 => chunk_key(node, rng.below(2), rng.below(3)),
                1 => CacheKey::Attr(NodeId(node)),
                2 => CacheKey::Dir(NodeId(node)),
                _ => negative(node, ["a", "b"][rng.below(2) as usize]),
            };
            let value = match key.kind() {
                Kind::Chunk => chunk_value(node as u8, 1 + rng.below(2000) as usize),
                Kind::Attr => attr_value(node, rng.below(3)),
                Kind::Dir => dir_value(&["x", "y"]),
                Kind::Negative => Value::Negative,
            };
            match rng.below(9) {
                0..=2 => match c.lookup(now, &key, WaiterId(step)) {
                    Ok(Lookup::Hit(_)) => {
                        let since = fresh_since.get(&key).copied();
                        assert!(
                            since.is_some_and(|t| now < t + cfg.ttl(key.kind())),
                            "seed {seed} step {step}: {key:?} served past its TTL"
                        );
                    }
                    Ok(Lookup::Miss(Miss::L2Read)) => {
                        // The shell reads the disk at once; now and then
                        // the read fails.
                        let CacheKey::Chunk(k) = key else {
                            panic!("a disk read of a non-chunk")
                        };
                        match disk.get(&k) {
                            Some((data, sum)) if rng.below(4) != 0 => {
                                c.l2_loaded(now, k, data.clone(), *sum).expect("disk read");
                            }
                            _ => c.l2_read_failed(now, k).expect("disk read"),
                        }
                    }
                    Ok(_) | Err(_) => {}
                },
                3 | 4 => {
                    if c.fill(now, key.clone(), value).is_ok() {
                        fresh_since.insert(key, now);
                    }
                }
                5 => {
                    if c.revalidated(now, &key).is_ok() {
                        fresh_since.insert(key, now);
                    }
                }
                6 => {
                    let _ = c.fail(now, &key, Errno::Io);
                }
                7 => {
                    let what = [
                        Invalidation::Attr,
                        Invalidation::Data,
                        Invalidation::Entries,
                        Invalidation::Gone,
                    ][rng.below(4) as usize];
                    c.invalidate(now, NodeId(node), what);
                    // What must not be fresh any more without a new fill.
                    // (Chunks are dropped only when the cache knows the
                    // node's file, so the model does not require it.)
                    fresh_since.retain(|k, _| match (k, what) {
                        (CacheKey::Attr(n), _) => *n != NodeId(node),
                        (CacheKey::Dir(n), Invalidation::Entries | Invalidation::Gone) => {
                            *n != NodeId(node)
                        }
                        (
                            CacheKey::Negative { parent, .. },
                            Invalidation::Entries | Invalidation::Gone,
                        ) => *parent != NodeId(node),
                        _ => true,
                    });
                }
                _ => {
                    c.handle_timeout(now);
                }
            }
            // The shell carries out the disk outputs in order.
            while let Some(out) = c.poll_output() {
                match out {
                    Output::L2Write {
                        key,
                        data,
                        checksum,
                    } => {
                        disk.insert(key, (data, checksum));
                    }
                    Output::L2Delete { key } => {
                        disk.remove(&key);
                    }
                    // Left in flight: a later fill, fail or timeout ends it.
                    Output::Fetch { .. } | Output::Revalidate { .. } | Output::Ready { .. } => {}
                }
            }
            assert!(disk.len() <= cfg.max_l2_entries);
            c.check_invariants();
        }
    }
}

// ----- snapshot of a representative trace ------------------------------------------

/// Records every call and every output, one line each.
struct Trace {
    c: Cache,
    log: String,
}

impl Trace {
    fn call(&mut self, now: Instant, what: &str, result: impl core::fmt::Debug) {
        let now = format!("{now:?}");
        writeln!(self.log, "{now:>7} {what} -> {result:?}").expect("write");
        while let Some(out) = self.c.poll_output() {
            let line = match out {
                // Bytes print long; the trace shows their size.
                Output::L2Write { key, data, .. } => {
                    format!("L2Write {{ key: {key:?}, {} bytes }}", data.len())
                }
                Output::Ready {
                    key,
                    waiters,
                    result: Ok(Value::Chunk(c)),
                } => format!(
                    "Ready {{ key: {key:?}, waiters: {waiters:?}, chunk of {} bytes }}",
                    c.len()
                ),
                Output::Ready {
                    key,
                    waiters,
                    result: Ok(Value::Attr(a)),
                } => format!(
                    "Ready {{ key: {key:?}, waiters: {waiters:?}, attr version {} }}",
                    a.version
                ),
                other => format!("{other:?}"),
            };
            writeln!(self.log, "{:>7}   out: {line}", "").expect("write");
        }
        self.c.check_invariants();
    }
}

#[test]
fn representative_trace() {
    let mut t = Trace {
        c: room_for(2, 2),
        log: String::new(),
    };
    let a = CacheKey::Attr(NodeId(10));
    let c0 = chunk_key(10, 1, 0);
    let c1 = chunk_key(10, 1, 1);
    let c2 = chunk_key(10, 1, 2);
    let neg = negative(1, "missing");

    // Three readers of one attribute: one fetch, one answer for all.
    for w in 1..=3 {
        let r = t.c.lookup(at(0), &a, WaiterId(w));
        t.call(at(0), &format!("lookup {a:?} w{w}"), r);
    }
    let r = t.c.fill(at(5), a.clone(), attr_value(10, 1));
    t.call(at(5), "fill attr v1", r);
    let r = t.c.lookup(at(1004), &a, WaiterId(4));
    t.call(
        at(1004),
        "lookup attr",
        r.map(|l| matches!(l, Lookup::Hit(_))),
    );
    let r = t.c.lookup(at(1005), &a, WaiterId(5));
    t.call(
        at(1005),
        "lookup attr (ttl over)",
        r.map(|l| matches!(l, Lookup::Stale(_))),
    );
    let r = t.c.revalidated(at(1010), &a);
    t.call(at(1010), "revalidated attr", r);

    // A negative entry, then the host says the directory changed.
    let r = t.c.fill(at(1010), neg.clone(), Value::Negative);
    t.call(at(1010), "fill negative", r);
    t.c.invalidate(at(1020), NodeId(1), Invalidation::Entries);
    let s = t.c.state(at(1020), &neg);
    t.call(at(1020), "invalidate dir 1 Entries; negative is", s);

    // Chunks: three over a 2-chunk budget.
    let r = t.c.lookup(at(2000), &c0, WaiterId(6));
    t.call(at(2000), "lookup chunk 0", r);
    for (i, key) in [&c0, &c1, &c2].into_iter().enumerate() {
        let now = at(3000 + i as u64 * 1000);
        let r = t.c.fill(now, key.clone(), chunk_value(i as u8, 1000));
        t.call(now, &format!("fill chunk {i}"), r);
    }
    let r = t.c.lookup(at(6000), &c0, WaiterId(7));
    t.call(at(6000), "lookup chunk 0", r);
    let d = chunk(0, 1000);
    let r =
        t.c.l2_loaded(at(6001), ck(10, 1, 0), d.clone(), Checksum::of(&d));
    t.call(at(6001), "l2_loaded chunk 0", r);

    // The file changes on the host: its chunks go, memory and disk.
    t.c.invalidate(at(7000), NodeId(10), Invalidation::Data);
    let s = (t.c.state(at(7000), &a), t.c.state(at(7000), &c1));
    t.call(at(7000), "invalidate 10 Data; attr, chunk 1 are", s);

    // A fetch nobody answers times out.
    let r = t.c.lookup(at(8000), &c2, WaiterId(8));
    t.call(at(8000), "lookup chunk 2", r);
    let deadline = t.c.poll_timeout().expect("a fetch is in flight");
    t.c.handle_timeout(deadline);
    t.call(deadline, "handle_timeout", t.c.stats());

    insta::assert_snapshot!("cache_trace", t.log);
}

/// The client's own create keeps a small fresh listing whole (and a
/// lookup of a name it lacks is answered from it), but only marks a large
/// one stale: keeping it would copy the whole listing on every create.
#[test]
fn own_creates_keep_small_listings_whole_and_mark_large_ones_stale() {
    let mut c = cache();
    let dir = NodeId(3);
    c.fill(at(0), CacheKey::Dir(dir), dir_value(&["a"]))
        .expect("fill");
    assert!(c.lacks(at(1), dir, &name("b")));
    assert!(!c.lacks(at(1), dir, &name("a")));
    let entry = |n: &str| DirEntry {
        name: name(n),
        attr: attr(9, 1),
    };
    c.add_entry(at(2), dir, entry("b"));
    assert_eq!(c.state(at(2), &CacheKey::Dir(dir)), EntryState::Cached);
    assert!(!c.lacks(at(2), dir, &name("b")), "b is listed now");
    assert!(c.lacks(at(2), dir, &name("c")));

    let names: Vec<String> = (0..store::SMALL_LISTING).map(|i| format!("f{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let big = NodeId(4);
    c.fill(at(3), CacheKey::Dir(big), dir_value(&refs))
        .expect("fill");
    assert!(
        c.lacks(at(3), big, &name("new")),
        "at the limit, still answered"
    );
    c.add_entry(at(4), big, entry("new"));
    assert_eq!(c.state(at(4), &CacheKey::Dir(big)), EntryState::Stale);
    assert!(
        !c.lacks(at(4), big, &name("other")),
        "a stale listing answers nothing"
    );
}

/// A key this client removes while it is being revalidated is not served
/// stale afterwards (the host unreachable): its old value went with it.
/// A chunk's old bytes stay, being that version's (fs_sim, seed 27083:
/// a listing under revalidation kept made-up entries and served them).
#[test]
fn a_key_removed_while_revalidated_is_not_served_stale() {
    let mut c = cache();
    let dir = CacheKey::Dir(NodeId(5));
    c.fill(at(0), dir.clone(), dir_value(&["a", "b"]))
        .expect("filled");
    let later = at(0) + secs(5);
    assert!(matches!(c.lookup(later, &dir, W1), Ok(Lookup::Stale(_))));
    c.remove(&dir);
    assert!(!c.serve_stale(later, &dir), "the removed listing is gone");
    assert_eq!(c.state(later, &dir), EntryState::Fetching, "still asked");

    let key = chunk_key(1, 1, 0);
    c.fill(at(0), key.clone(), chunk_value(7, 100))
        .expect("filled");
    let past_ttl = at(0) + CacheConfig::default().chunk_ttl;
    assert!(matches!(c.lookup(past_ttl, &key, W2), Ok(Lookup::Stale(_))));
    c.remove(&key);
    assert!(c.serve_stale(past_ttl, &key), "a version's bytes stay");
}
