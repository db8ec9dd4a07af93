use super::*;
use crate::proto::{FileKey, FileKind, Timestamp};

const NODE: NodeId = NodeId(5);
/// The content version every test transaction builds on.
const BASE: u64 = 0xba5e;
const TOKEN: LockToken = LockToken([4; 16]);

fn t(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

fn attr(size: u64) -> Attr {
    Attr {
        node: NODE,
        key: FileKey { dev: 1, ino: 5 },
        kind: FileKind::File,
        size,
        mode: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        version: 2,
        rdev: 0,
    }
}

fn drain(w: &mut WriteTxn) -> Vec<WriteOutput> {
    std::iter::from_fn(|| w.poll_output()).collect()
}

fn sends(outs: &[WriteOutput]) -> Vec<(WriteOp, Request)> {
    outs.iter()
        .filter_map(|o| match o {
            WriteOutput::Send { op, request } => Some((*op, request.clone())),
            _ => None,
        })
        .collect()
}

/// Drives a transaction through lock + begin; returns it Writing.
fn writing(cfg: WriteConfig) -> WriteTxn {
    let mut w = WriteTxn::new(NODE, 0, Some(BASE), cfg);
    w.write(t(0), 0, Bytes::from_static(b"x")).expect("write");
    let outs = drain(&mut w);
    let [
        (
            lock_op,
            Request::AcquireLock {
                scope: LockScope::File(NODE),
                kind: LockKind::Exclusive,
                wait: true,
            },
        ),
    ] = &sends(&outs)[..]
    else {
        panic!("{outs:?}")
    };
    w.handle_reply(
        t(1),
        *lock_op,
        Ok(Reply::LockGranted {
            token: TOKEN,
            ttl_ms: 30_000,
        }),
    );
    let outs = drain(&mut w);
    let [
        (
            begin,
            Request::BeginWrite {
                node: NODE,
                token: TOKEN,
                base: Some(BASE),
                append_from: None,
            },
        ),
    ] = &sends(&outs)[..]
    else {
        panic!("{outs:?}")
    };
    assert_eq!(w.state(), &WriteState::Locking);
    w.handle_reply(t(2), *begin, Ok(Reply::WriteBegun { txn: TxnId(9) }));
    assert_eq!(w.state(), &WriteState::Writing);
    // The first byte streams out as soon as the transaction is open.
    let outs = drain(&mut w);
    let [
        (
            x,
            Request::WriteChunk {
                index: 0,
                offset: 0,
                ..
            },
        ),
    ] = &sends(&outs)[..]
    else {
        panic!("{outs:?}")
    };
    w.handle_reply(t(2), *x, Ok(Reply::Done));
    w
}

/// Acknowledges every send with `Done` until a CommitWrite appears.
fn ack_until_commit(w: &mut WriteTxn, now: Instant) -> (WriteOp, u64, Vec<Request>) {
    let mut seen = Vec::new();
    loop {
        let outs = drain(w);
        let s = sends(&outs);
        assert!(!s.is_empty(), "stuck: {outs:?}");
        for (op, req) in s {
            if let Request::CommitWrite { size, .. } = req {
                return (op, size, seen);
            }
            seen.push(req.clone());
            w.handle_reply(now, op, Ok(Reply::Done));
        }
    }
}

#[test]
fn a_write_locks_begins_streams_commits_and_releases() {
    let mut w = writing(WriteConfig::default());
    let big = vec![7u8; MAX_WRITE_PIECE * 2 + 10];
    w.write(t(3), 5, Bytes::from(big)).expect("write");
    w.commit(t(4)).expect("commit");
    let (commit, size, sent) = ack_until_commit(&mut w, t(5));
    assert_eq!(size, (MAX_WRITE_PIECE * 2 + 15) as u64);
    // Pieces run up to the next multiple of MAX_WRITE_PIECE, each
    // addressed by the chunk it starts in.
    let per = (MAX_WRITE_PIECE / CHUNK_SIZE) as u64;
    let pieces: Vec<(u64, u32, usize)> = sent
        .iter()
        .filter_map(|r| match r {
            Request::WriteChunk {
                index,
                offset,
                data,
                ..
            } => {
                assert!((*offset as usize) < CHUNK_SIZE && data.len() <= MAX_WRITE_PIECE);
                Some((*index, *offset, data.len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        pieces,
        vec![
            (0, 5, MAX_WRITE_PIECE - 5),
            (per, 0, MAX_WRITE_PIECE),
            (2 * per, 0, 15)
        ]
    );
    assert_eq!(w.state(), &WriteState::Committing);
    w.handle_reply(t(6), commit, Ok(Reply::Attr(attr(size))));
    let outs = drain(&mut w);
    assert!(outs.contains(&WriteOutput::Committed(attr(size))));
    assert!(
        sends(&outs)
            .iter()
            .any(|(_, r)| matches!(r, Request::ReleaseLock { token: TOKEN }))
    );
    assert_eq!(w.state(), &WriteState::Complete);
    assert_eq!(w.dirty(), 0);
    assert_eq!(
        w.write(t(7), 0, Bytes::from_static(b"late")),
        Err(WriteError::Ended(Errno::Inval))
    );
}

#[test]
fn pieces_in_flight_are_bounded_and_never_overlap() {
    let cfg = WriteConfig {
        max_in_flight: 2,
        ..WriteConfig::default()
    };
    let mut w = writing(cfg);
    drain(&mut w);
    w.write(t(3), 0, Bytes::from(vec![1u8; MAX_WRITE_PIECE * 4]))
        .expect("write");
    let first = sends(&drain(&mut w));
    // The one-byte write from `writing` and piece 0 overlap: only one of
    // them may fly; then piece 1 fills the window.
    assert_eq!(first.len(), 2);
    // Rewrite piece 1 while it is in flight: the new bytes wait.
    w.write(t(4), MAX_WRITE_PIECE as u64, Bytes::from(vec![2u8; 10]))
        .expect("write");
    assert!(sends(&drain(&mut w)).is_empty(), "window full");
    let mut buf = vec![0u8; 12];
    w.overlay(MAX_WRITE_PIECE as u64 - 1, &mut buf);
    assert_eq!(buf[0], 1);
    assert_eq!(&buf[1..11], &[2u8; 10], "the writer reads its newest bytes");
    for (op, _) in first {
        w.handle_reply(t(5), op, Ok(Reply::Done));
    }
    let next = sends(&drain(&mut w));
    assert_eq!(next.len(), 2);
    for (_, r) in &next {
        let Request::WriteChunk {
            index,
            offset,
            data,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        let (s, e) = (
            index * CHUNK_SIZE as u64 + u64::from(*offset),
            data.len() as u64,
        );
        assert!(
            s + e <= MAX_WRITE_PIECE as u64
                || s >= MAX_WRITE_PIECE as u64 + 10
                || s == MAX_WRITE_PIECE as u64
        );
    }
}

#[test]
fn a_truncate_is_a_barrier_between_pieces() {
    let mut w = writing(WriteConfig::default());
    w.write(t(3), 0, Bytes::from_static(b"abcdef"))
        .expect("write");
    let first = sends(&drain(&mut w));
    w.set_size(t(4), 2).expect("truncate");
    w.write(t(4), 4, Bytes::from_static(b"Z")).expect("write");
    assert!(
        sends(&drain(&mut w)).is_empty(),
        "truncate waits for the pieces before it"
    );
    for (op, _) in first {
        w.handle_reply(t(5), op, Ok(Reply::Done));
    }
    let next = sends(&drain(&mut w));
    assert!(
        matches!(next[..], [(_, Request::TruncateWrite { size: 2, .. })]),
        "{next:?}"
    );
    w.handle_reply(t(6), next[0].0, Ok(Reply::Done));
    let after = sends(&drain(&mut w));
    assert!(
        matches!(&after[..], [(_, Request::WriteChunk { offset: 4, .. })]),
        "{after:?}"
    );
    assert_eq!(w.size(), 5);
    let mut buf = vec![9u8; 5];
    w.overlay(0, &mut buf);
    assert_eq!(&buf[..2], b"ab");
    assert_eq!(buf[4], b'Z');
}

#[test]
fn a_busy_file_queues_for_the_lock_and_a_refused_lock_aborts() {
    let mut w = WriteTxn::new(NODE, 0, Some(BASE), WriteConfig::default());
    w.write(t(0), 0, Bytes::from_static(b"x")).expect("write");
    let (op, _) = sends(&drain(&mut w))[0].clone();
    w.handle_reply(t(1), op, Err(Errno::Again));
    assert_eq!(
        w.state(),
        &WriteState::Aborted(AbortReason::LockFailed(Errno::Again))
    );
    assert!(drain(&mut w).contains(&WriteOutput::Aborted(AbortReason::LockFailed(Errno::Again))));
    assert_eq!(AbortReason::LockFailed(Errno::Again).errno(), Errno::Again);
}

#[test]
fn a_host_error_aborts_and_drops_the_staging() {
    let mut w = writing(WriteConfig::default());
    w.write(t(3), 0, Bytes::from_static(b"data"))
        .expect("write");
    let (op, _) = sends(&drain(&mut w))[0].clone();
    w.handle_reply(t(3), op, Err(Errno::NoSpc));
    let outs = drain(&mut w);
    let s = sends(&outs);
    assert!(
        s.iter()
            .any(|(_, r)| matches!(r, Request::AbortWrite { txn: TxnId(9) }))
    );
    assert!(
        s.iter()
            .any(|(_, r)| matches!(r, Request::ReleaseLock { .. }))
    );
    assert!(outs.contains(&WriteOutput::Aborted(AbortReason::Host(Errno::NoSpc))));
    assert_eq!(w.commit(t(4)), Err(WriteError::Ended(Errno::NoSpc)));
}

#[test]
fn a_lost_lock_aborts_before_committing() {
    let mut w = writing(WriteConfig::default());
    drain(&mut w);
    // No refresh is ever answered: the client gives the lock up at 29 s
    // (ttl 30 s, counted from the request at t=0, minus its margin).
    w.handle_timeout(t(25_000));
    drain(&mut w);
    w.handle_timeout(t(29_000));
    assert_eq!(w.state(), &WriteState::Aborted(AbortReason::LockLost));
    assert_eq!(AbortReason::LockLost.errno(), Errno::Stale);
}

#[test]
fn a_stalled_host_aborts_after_the_stall_timeout() {
    let cfg = WriteConfig {
        stall_timeout: Duration::from_secs(10),
        ..WriteConfig::default()
    };
    let mut w = writing(cfg);
    w.write(t(2), 0, Bytes::from_static(b"data"))
        .expect("write");
    drain(&mut w);
    let due = w.poll_timeout().expect("a timer");
    assert_eq!(due, t(10_002), "ten seconds after the last reply");
    w.handle_timeout(t(9_000));
    assert_eq!(w.state(), &WriteState::Writing);
    w.handle_timeout(t(10_002));
    assert_eq!(w.state(), &WriteState::Aborted(AbortReason::Stalled));
}

#[test]
fn dirty_data_is_bounded() {
    let cfg = WriteConfig {
        max_dirty: 100,
        ..WriteConfig::default()
    };
    let mut w = WriteTxn::new(NODE, 0, Some(BASE), cfg);
    w.write(t(0), 0, Bytes::from(vec![0u8; 100])).expect("fits");
    assert_eq!(
        w.write(t(0), 100, Bytes::from(vec![0u8; 1])),
        Err(WriteError::Full)
    );
    w.abort(t(1));
    assert!(w.is_finished());
}

/// A long write holds only what the host has not acknowledged: past
/// `keep_acked`, acknowledged pieces leave memory (and `max_dirty`), the
/// writer learns which ranges only the host holds, and one commit at the
/// end covers everything.
#[test]
fn acknowledged_pieces_past_keep_acked_leave_memory() {
    let cfg = WriteConfig {
        max_dirty: 2 * MAX_WRITE_PIECE,
        keep_acked: MAX_WRITE_PIECE,
        ..WriteConfig::default()
    };
    let mut w = writing(cfg);
    // Ten pieces through a two-piece buffer, acknowledged as they go.
    for i in 0..10u64 {
        let at = 1 + i * MAX_WRITE_PIECE as u64;
        w.write(t(3), at, Bytes::from(vec![i as u8; MAX_WRITE_PIECE]))
            .expect("room: acknowledged pieces left memory");
        for (op, _) in sends(&drain(&mut w)) {
            w.handle_reply(t(4), op, Ok(Reply::Done));
        }
    }
    assert!(w.dirty() <= 2 * MAX_WRITE_PIECE, "{}", w.dirty());
    assert!(w.spilled_overlaps(1, 2), "the first piece left memory");
    assert!(!w.spilled_overlaps(0, 1), "byte 0 is still held");
    let end = 1 + 10 * MAX_WRITE_PIECE as u64;
    assert!(!w.spilled_overlaps(end, end + 10), "past the end");
    // The last piece (one byte past a piece boundary) is still held and
    // reads back through the overlay; the bytes before it left.
    let mut last = vec![0u8; 1];
    w.overlay(end - 1, &mut last);
    assert_eq!(last, [9u8]);
    assert!(w.spilled_overlaps(end - 4, end - 1));
    w.commit(t(5)).expect("commit");
    let (_, size, seen) = ack_until_commit(&mut w, t(6));
    assert_eq!(size, end);
    assert!(seen.is_empty(), "nothing left to send: {seen:?}");
}

/// A full buffer waits for acknowledgements only if one is coming that
/// frees room; otherwise only a commit can make room.
#[test]
fn a_full_buffer_knows_whether_acknowledgements_free_it() {
    let cfg = WriteConfig {
        keep_acked: 0,
        ..WriteConfig::default()
    };
    let mut w = writing(cfg);
    assert!(!w.frees_on_ack(), "nothing in flight");
    w.write(t(3), 0, Bytes::from(vec![1u8; 10])).expect("write");
    let flying = sends(&drain(&mut w));
    assert_eq!(flying.len(), 1);
    assert!(w.frees_on_ack(), "its acknowledgement drops it");
    let mut keeps = writing(WriteConfig::default());
    keeps
        .write(t(3), 0, Bytes::from(vec![1u8; 10]))
        .expect("write");
    drain(&mut keeps);
    assert!(
        !keeps.frees_on_ack(),
        "under keep_acked: kept after the ack"
    );
}

/// Random writes and truncates, with the host applying requests in a
/// random order among those in flight: the committed content always equals
/// applying the writes one by one.
#[test]
fn any_delivery_order_commits_the_sequential_result() {
    let mut rng = crate::Rng::from_u64(11);
    for round in 0..300 {
        let original: Vec<u8> = (0..rng.below(3 * CHUNK_SIZE as u64))
            .map(|i| i as u8)
            .collect();
        let cfg = WriteConfig {
            max_in_flight: 1 + rng.below(6) as usize,
            ..WriteConfig::default()
        };
        let mut w = WriteTxn::new(NODE, original.len() as u64, Some(BASE), cfg);
        let mut model = original.clone();
        let mut staging: Option<Vec<u8>> = None;
        let mut flying: Vec<(WriteOp, Request)> = Vec::new();
        let mut committed = None;
        let steps = 1 + rng.below(12);
        for step in 0..=steps {
            let now = t(step);
            if step < steps {
                if rng.below(5) == 0 {
                    let size = rng.below(4 * CHUNK_SIZE as u64);
                    w.set_size(now, size).expect("open");
                    model.resize(size as usize, 0);
                } else {
                    let at = rng.below(3 * CHUNK_SIZE as u64);
                    let len = 1 + rng.below(CHUNK_SIZE as u64 * 2);
                    let byte = rng.below(255) as u8 + 1;
                    w.write(now, at, Bytes::from(vec![byte; len as usize]))
                        .expect("open");
                    let end = (at + len) as usize;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[at as usize..end].fill(byte);
                }
            } else {
                w.commit(now).expect("open");
            }
            // Deliver a random number of replies, in random order.
            loop {
                flying.extend(sends(&drain(&mut w)));
                if flying.is_empty() || (step < steps && rng.below(3) == 0) {
                    break;
                }
                let (op, req) = flying.remove(rng.below(flying.len() as u64) as usize);
                let reply = match req {
                    Request::AcquireLock { .. } => Ok(Reply::LockGranted {
                        token: TOKEN,
                        ttl_ms: 30_000,
                    }),
                    Request::BeginWrite { .. } => {
                        staging = Some(original.clone());
                        Ok(Reply::WriteBegun { txn: TxnId(1) })
                    }
                    Request::WriteChunk {
                        index,
                        offset,
                        data,
                        ..
                    } => {
                        let s = staging.as_mut().expect("begun");
                        let at = (index * CHUNK_SIZE as u64 + u64::from(offset)) as usize;
                        if s.len() < at + data.len() {
                            s.resize(at + data.len(), 0);
                        }
                        s[at..at + data.len()].copy_from_slice(&data);
                        Ok(Reply::Done)
                    }
                    Request::TruncateWrite { size, .. } => {
                        staging.as_mut().expect("begun").resize(size as usize, 0);
                        Ok(Reply::Done)
                    }
                    Request::CommitWrite { size, .. } => {
                        let mut s = staging.take().expect("begun");
                        s.resize(size as usize, 0);
                        committed = Some(s);
                        Ok(Reply::Attr(attr(size)))
                    }
                    Request::ReleaseLock { .. } => Ok(Reply::Done),
                    other => panic!("unexpected {other:?}"),
                };
                w.handle_reply(now, op, reply);
            }
        }
        assert_eq!(w.state(), &WriteState::Complete, "round {round}");
        assert!(
            committed.as_ref() == Some(&model),
            "round {round}: content differs"
        );
    }
}
