//! Random workloads: a seed becomes a world (3–4 clients, a network delay,
//! a few seeded files) and a sequence of kernel operations and faults,
//! chosen as the run goes from what the kernels hold (their inodes and
//! handles), then the liveness phase.

use super::model::{FsStats, LOCKED, Local, Sim, Violation, xattr_op};
use crate::seeds::{SHARDS, Simulation};
use bytes::Bytes;
use std::time::Duration;
use wormhole_core::client::Op;
use wormhole_core::host::RelPath;
use wormhole_core::proto::{
    ByteRange, CHUNK_SIZE, Errno, FileKind, Name, OpenFor, SetAttr, SetTime, Timestamp,
};
use wormhole_core::vfs::Ino;
use wormhole_core::{Instant, Rng};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const DIRS: [&str; 2] = ["x", "y"];

fn pick<T: Copy>(rng: &mut Rng, v: &[T]) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v[rng.below(v.len() as u64) as usize])
    }
}

fn name(rng: &mut Rng, dirs: bool) -> Name {
    let s = if dirs {
        DIRS[rng.below(DIRS.len() as u64) as usize]
    } else {
        NAMES[rng.below(NAMES.len() as u64) as usize]
    };
    Name::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Bytes that no other write of the run has: a tag repeated.
fn payload(tag: u64, len: usize) -> Bytes {
    let t = tag.to_le_bytes();
    Bytes::from(
        (0..len)
            .map(|i| t[i % 8] ^ (i / 8) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// What `tar` does: new files one after another in one directory, each
/// created exclusively, written and closed (a client that makes several
/// takes a directory lease and answers them itself).
fn burst(sim: &mut Sim, rng: &mut Rng, c: usize, dir: Ino, tag: &mut u64) -> Result<(), Violation> {
    let first = rng.below(NAMES.len() as u64) as usize;
    for i in 0..NAMES.len() {
        let n = Name::new(NAMES[(first + i) % NAMES.len()]).unwrap_or_else(|e| panic!("{e}"));
        let before = sim.handles(c);
        sim.op(
            c,
            Op::Create {
                parent: dir,
                name: n,
                mode: 0o644,
                exclusive: true,
                truncate: false,
                caller: None,
            },
        )?;
        // An ordinary create waits for the host; one under a lease not.
        for _ in 0..20 {
            if sim.handles(c).len() > before.len() {
                break;
            }
            sim.advance(Duration::from_millis(50))?;
        }
        let Some(fh) = sim.handles(c).into_iter().find(|h| !before.contains(h)) else {
            continue;
        };
        *tag += 1;
        let len = 1 + rng.below(3000) as usize;
        let data = payload(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sim_salt(rng), len);
        sim.op(
            c,
            Op::Write {
                fh,
                offset: 0,
                data,
                append: false,
            },
        )?;
        sim.op(c, Op::Flush { fh, owner: None })?;
        sim.op(c, Op::Release { fh })?;
    }
    Ok(())
}

/// What tar does once it has made a directory's files: their times and
/// mode, as the archive has them (a client holding the directory's lease
/// answers both itself and streams them after the files). Decided by the
/// tag, not the seed's generator, so that the other draws stay as they
/// were.
fn restore_times(sim: &mut Sim, c: usize, dir: Ino, tag: u64) -> Result<(), Violation> {
    if tag.is_multiple_of(4) {
        return Ok(());
    }
    let at = SetTime::At(Timestamp {
        secs: 1_500_000_000 + (tag % 100_000) as i64,
        nanos: (tag % 1000) as u32,
    });
    let times = SetAttr {
        atime: Some(at),
        mtime: Some(at),
        ..SetAttr::default()
    };
    sim.op(
        c,
        Op::SetAttr {
            ino: dir,
            set: times,
        },
    )?;
    let mode = SetAttr {
        mode: Some([0o755, 0o750, 0o700][(tag % 3) as usize]),
        ..SetAttr::default()
    };
    sim.op(
        c,
        Op::SetAttr {
            ino: dir,
            set: mode,
        },
    )?;
    Ok(())
}

/// What `rm -r` does: the directory listed and `fstat`ed, then every
/// name looked up and unlinked, one after another (a client that unlinks
/// several takes a directory lease and answers them itself; one sweeping
/// the parent under its lease asks for this directory's as it lists it).
fn sweep(sim: &mut Sim, c: usize, dir: Ino) -> Result<(), Violation> {
    sim.op(
        c,
        Op::ReadDir {
            ino: dir,
            offset: 0,
        },
    )?;
    sim.op(c, Op::GetAttr { ino: dir })?;
    sim.advance(Duration::from_millis(5))?;
    for n in NAMES {
        let n = Name::new(n).unwrap_or_else(|e| panic!("{e}"));
        sim.op(
            c,
            Op::Lookup {
                parent: dir,
                name: n.clone(),
            },
        )?;
        sim.advance(Duration::from_millis(20))?;
        sim.op(
            c,
            Op::Unlink {
                parent: dir,
                name: n,
            },
        )?;
        sim.advance(Duration::from_millis(5))?;
    }
    Ok(())
}

/// A tree made and removed at the top, as an untar then `rm -r` does:
/// files in the root (so that a client holds its lease), a directory
/// made and filled (leased at its mkdir), then emptied and removed (the
/// rmdir answered under the root's lease, applied once the directory's
/// own stream is in).
fn tree(sim: &mut Sim, rng: &mut Rng, c: usize, tag: &mut u64) -> Result<(), Violation> {
    burst(sim, rng, c, Ino::ROOT, tag)?;
    let n = name(rng, true);
    sim.op(
        c,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: n.clone(),
            mode: 0o755,
            caller: None,
        },
    )?;
    sim.advance(Duration::from_millis(50))?;
    let Some(sub) = sim.child(c, Ino::ROOT, &n) else {
        return Ok(());
    };
    *tag += 1;
    burst(sim, rng, c, sub, tag)?;
    restore_times(sim, c, sub, *tag)?;
    sim.advance(Duration::from_millis(100))?;
    sweep(sim, c, sub)?;
    sim.op(
        c,
        Op::Rmdir {
            parent: Ino::ROOT,
            name: n,
        },
    )?;
    Ok(())
}

/// Sibling directories made here and filled, left until their leases
/// idle out, then removed as `rm -r` does: each listed, emptied and
/// removed in turn. Once two ordinary `rmdir`s earn the top's lease, the
/// listing of each next sibling asks for that sibling's lease (a sweep),
/// and its unlinks wait for it and are answered under it.
fn wide(sim: &mut Sim, rng: &mut Rng, c: usize, tag: &mut u64) -> Result<(), Violation> {
    let mkdir = |sim: &mut Sim, parent: Ino, name: Name| {
        sim.op(
            c,
            Op::Mkdir {
                parent,
                name,
                mode: 0o755,
                caller: None,
            },
        )
    };
    let top = name(rng, true);
    mkdir(sim, Ino::ROOT, top.clone())?;
    sim.advance(Duration::from_millis(20))?;
    let Some(t) = sim.child(c, Ino::ROOT, &top) else {
        return Ok(());
    };
    let mut subs = Vec::new();
    // Every name there is, so that there are siblings to sweep after
    // the top's lease is earned (the oracle does not model names: a
    // directory may take a file's).
    for n in NAMES.into_iter().chain(DIRS) {
        let n = Name::new(n).unwrap_or_else(|e| panic!("{e}"));
        mkdir(sim, t, n.clone())?;
        sim.advance(Duration::from_millis(20))?;
        if let Some(s) = sim.child(c, t, &n) {
            *tag += 1;
            burst(sim, rng, c, s, tag)?;
            restore_times(sim, c, s, *tag)?;
            subs.push((s, n));
        }
    }
    // Past a lease's idle time: the removal begins without leases, as
    // of a tree made elsewhere.
    sim.advance(Duration::from_secs(3))?;
    // Every other tree is swept against its listing's order (GNU `rm`
    // sorts a directory of 10,000 entries or more by inode): the leases
    // a sweep asks ahead of it are then guesses, some of them of
    // directories already removed here. (Decided by the tag, not the
    // seed's generator, so that the other draws stay as they were.)
    if *tag % 2 == 1 {
        subs.reverse();
        sim.note_sweep_reversed();
    }
    for (s, n) in subs {
        sim.note_swept_ahead(c, s);
        sweep(sim, c, s)?;
        sim.op(c, Op::Rmdir { parent: t, name: n })?;
        sim.advance(Duration::from_millis(5))?;
    }
    sim.op(
        c,
        Op::Rmdir {
            parent: Ino::ROOT,
            name: top,
        },
    )?;
    Ok(())
}

/// A chain of directories deeper than a client holds leases (16), each
/// made here (so leased at its mkdir) with files in it, then emptied and
/// removed from the bottom up: leases are given back to make room while
/// their streams may still be out, and each rmdir is answered under a
/// lease that may be the one just given back.
fn deep(sim: &mut Sim, rng: &mut Rng, c: usize, tag: &mut u64) -> Result<(), Violation> {
    let mut chain = vec![(Ino::ROOT, None)];
    for _ in 0..18 {
        let parent = chain.last().map_or(Ino::ROOT, |(d, _)| *d);
        let n = name(rng, true);
        sim.op(
            c,
            Op::Mkdir {
                parent,
                name: n.clone(),
                mode: 0o755,
                caller: None,
            },
        )?;
        sim.advance(Duration::from_millis(20))?;
        let Some(dir) = sim.child(c, parent, &n) else {
            break;
        };
        sim.note_leases(16);
        *tag += 1;
        burst(sim, rng, c, dir, tag)?;
        chain.push((dir, Some(n)));
    }
    while let Some((dir, Some(n))) = chain.pop() {
        sweep(sim, c, dir)?;
        let parent = chain.last().map_or(Ino::ROOT, |(d, _)| *d);
        sim.op(c, Op::Rmdir { parent, name: n })?;
        sim.advance(Duration::from_millis(5))?;
    }
    Ok(())
}

/// Runs seed `seed`: random world and workload, then liveness. With
/// `trace`, records the trace (printing it as it goes if `echo`).
pub fn run_seed(seed: u64, trace: bool, echo: bool) -> (Sim, Result<(), Violation>) {
    let mut rng = Rng::from_u64(seed ^ 0xf5f5_0000_5eed_0001);
    let clients = 3 + rng.below(2) as usize;
    let max_delay = match rng.below(4) {
        0 => Duration::from_micros(100),
        1 => Duration::from_millis(5),
        2 => Duration::from_millis(50),
        _ => Duration::from_millis(400),
    };
    let big = vec![7u8; CHUNK_SIZE + 100];
    let files: [(&[&str], &[u8]); 4] = [
        (&["a"], b"initial a"),
        (&["x", "b"], b"initial x/b"),
        (&["c"], &big),
        // Locked updates' own file (see the model's `locks`).
        (&[LOCKED], b"before any locked update"),
    ];
    let mut sim = Sim::new(seed, clients, max_delay, &files);
    // The host's worker pool: some seeds run every file operation in
    // order at once, others hand some to workers that finish them late
    // and out of order (as the real host does with disk waits).
    sim.w.fs_late_percent = match rng.below(3) {
        0 => 0,
        1 => 10,
        _ => 50,
    };
    if trace {
        sim = sim.with_trace(echo);
    }
    // Extended attributes draw from a generator of their own (see
    // `locking` below), seeded apart from the workload's.
    let xattrs = Rng::from_u64(seed ^ 0x7a77_0000_0000_0013);
    let res = workload(&mut sim, &mut rng, xattrs).and_then(|()| sim.converge());
    (sim, res)
}

/// The random phase: 80–200 actions, each followed by a random pause.
fn workload(sim: &mut Sim, rng: &mut Rng, mut xattrs: Rng) -> Result<(), Violation> {
    let actions = 80 + rng.below(121);
    let mut heal_at: Option<Instant> = None;
    let mut restart_at: Option<Instant> = None;
    let mut room_at: Option<Instant> = None;
    let mut tag = 0u64;
    let mut locking = Rng::from_u64(rng.next_u64());
    // Signals to programs waiting for a lock: a generator of their own,
    // so the other draws stay as they were.
    let mut signals = Rng::from_u64(locking.next_u64() ^ 0x5167_0000_0000_0014);
    // Which creates open with `O_APPEND`: a generator of its own too.
    let mut appending = Rng::from_u64(signals.next_u64() ^ 0x0a99_e4d0_0000_0015);
    // When the program on the host takes or lets go of the lock.
    let mut host_locking = Rng::from_u64(appending.next_u64() ^ 0x1057_10c0_0000_0016);
    // When another thread of a program unlocks while its first waits: a
    // generator of its own, made without drawing from the others.
    let mut threads = Rng::from_u64(host_locking.clone().next_u64() ^ 0x7412_ead5_0000_0017);
    // When a client gives the locked file another name (a hard link), so
    // that the host finds it under several: a generator of its own too.
    let mut linking = Rng::from_u64(threads.clone().next_u64() ^ 0x11a4_ed00_0000_0018);
    for _ in 0..actions {
        let now = sim.w.now;
        if heal_at.is_some_and(|t| now >= t) {
            heal_at = None;
            sim.heal()?;
        }
        if restart_at.is_some_and(|t| now >= t) {
            restart_at = None;
            sim.restart_host()?;
        }
        if room_at.is_some_and(|t| now >= t) {
            room_at = None;
            sim.free_disk()?;
        }
        // Now and then, something happens at the host itself: a local
        // program edits the folder, or the disk fills up or fails.
        if rng.below(100) < 5 {
            tag += 1;
            host_side(sim, rng, tag, &mut room_at)?;
        }
        let c = rng.below(sim.clients() as u64) as usize;
        // Now and then, a step of a client's locked update: lock, read,
        // write, unlock, as SQLite does (or, rarely, a close). Drawn from
        // a generator of their own, so the rest of the workload draws
        // what it drew before locked updates were added.
        if locking.below(100) < 12 {
            let lc = locking.below(sim.clients() as u64) as usize;
            if locking.below(12) == 0 {
                sim.locked_close(lc)?;
            } else {
                let len = 1 + locking.below(3000) as usize;
                let data = payload(locking.next_u64(), len);
                sim.locked_step(lc, data)?;
            }
        }
        // Now and then, the program on the host takes or lets go of the
        // lock on the host's file.
        if host_locking.below(100) < 3 {
            sim.host_program_step()?;
        }
        // Now and then, another thread of a program waiting for the lock
        // unlocks some of its bytes (or all): it holds none of them.
        if threads.below(100) < 3 {
            let tc = threads.below(sim.clients() as u64) as usize;
            let range = match threads.below(3) {
                0 => ByteRange::WHOLE,
                _ => {
                    let start = threads.below(8);
                    ByteRange {
                        start,
                        end: start + threads.below(8),
                    }
                }
            };
            sim.locked_other_thread(tc, range)?;
        }
        // Now and then, a client links the locked file under another
        // name, in a directory it knows.
        if linking.below(100) < 2 {
            let kc = linking.below(sim.clients() as u64) as usize;
            let dirs = sim.referenced(kc, FileKind::Dir);
            let parent = pick(&mut linking, &dirs).unwrap_or(Ino::ROOT);
            let n = name(&mut linking, false);
            sim.locked_link(kc, parent, n)?;
        }
        // Now and then, a signal reaches a program waiting for the lock
        // (F_SETLKW ends with EINTR).
        if signals.below(100) < 3 {
            let sc = signals.below(sim.clients() as u64) as usize;
            sim.locked_interrupt(sc);
        }
        // Now and then, a client sets, removes or reads an extended
        // attribute of a file its kernel knows.
        if xattrs.below(100) < 8 {
            let xc = xattrs.below(sim.clients() as u64) as usize;
            let known = sim.referenced(xc, FileKind::File);
            let (roll, k) = (xattrs.below(10), xattrs.below(2));
            let reader_of = xattrs.below(sim.clients() as u64) as usize;
            let value = format!("{xc}:{}", xattrs.next_u64()).into_bytes();
            if let Some(ino) = pick(&mut xattrs, &known)
                && let Some(op) = xattr_op(sim, xc, ino, roll, k, reader_of, value)
            {
                sim.op(xc, op)?;
            }
        }
        let files = sim.referenced(c, FileKind::File);
        let dirs = sim.referenced(c, FileKind::Dir);
        let handles = sim.handles(c);
        let writable = sim.writable_handles(c);
        let dir = pick(rng, &dirs).unwrap_or(Ino::ROOT);
        let roll = rng.below(1000);
        match roll {
            0..150 => {
                let dirs_too = rng.below(4) == 0;
                let n = name(rng, dirs_too);
                sim.op(
                    c,
                    Op::Lookup {
                        parent: dir,
                        name: n,
                    },
                )?;
            }
            150..168 => {
                tag += 1;
                burst(sim, rng, c, dir, &mut tag)?;
            }
            168..172 => sweep(sim, c, dir)?,
            172..174 => {
                tag += 1;
                tree(sim, rng, c, &mut tag)?;
            }
            174..176 => wide(sim, rng, c, &mut tag)?,
            176 => deep(sim, rng, c, &mut tag)?,
            177..220 => {
                let n = name(rng, false);
                let create = Op::Create {
                    parent: dir,
                    name: n,
                    mode: 0o644,
                    exclusive: rng.below(4) == 0,
                    truncate: false,
                    caller: None,
                };
                if appending.below(3) == 0 {
                    sim.create_appending(c, create)?;
                } else {
                    sim.op(c, create)?;
                }
            }
            220..310 => {
                if let Some(ino) = pick(rng, &files).filter(|&i| !sim.busy(c, i)) {
                    let mode = match rng.below(10) {
                        0..6 => OpenFor::Read,
                        6..9 => OpenFor::Write,
                        _ => OpenFor::Append,
                    };
                    let truncate = mode != OpenFor::Read && rng.below(3) == 0;
                    sim.op(
                        c,
                        Op::Open {
                            ino,
                            mode,
                            truncate,
                        },
                    )?;
                }
            }
            310..460 => {
                if let Some(fh) = pick(rng, &writable) {
                    tag += 1;
                    let len = match rng.below(10) {
                        0 => CHUNK_SIZE,
                        1..4 => 1 + rng.below(CHUNK_SIZE as u64) as usize,
                        _ => 1 + rng.below(3000) as usize,
                    };
                    let offset = match rng.below(3) {
                        0 => rng.below(2 * CHUNK_SIZE as u64),
                        _ => 0,
                    };
                    let (offset, append) = sim.write_offset(c, fh, offset);
                    let data =
                        payload(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sim_salt(rng), len);
                    sim.op(
                        c,
                        Op::Write {
                            fh,
                            offset,
                            data,
                            append,
                        },
                    )?;
                }
            }
            460..530 => {
                if let Some(fh) = pick(rng, &handles) {
                    let op = if rng.below(3) == 0 {
                        Op::Fsync { fh }
                    } else {
                        Op::Flush { fh, owner: None }
                    };
                    sim.op(c, op)?;
                }
            }
            530..600 => {
                if let Some(fh) = pick(rng, &handles) {
                    if rng.below(2) == 0 {
                        sim.op(c, Op::Flush { fh, owner: None })?;
                    }
                    sim.op(c, Op::Release { fh })?;
                }
            }
            600..690 => {
                if let Some(fh) = pick(rng, &handles) {
                    // A whole-file read, or a random reader's small one
                    // somewhere inside (the client fetches only its pages
                    // when it jumps).
                    let (offset, size) = match rng.below(3) {
                        0 => (
                            1 + rng.below(3 * CHUNK_SIZE as u64),
                            1 + rng.below(16 * 1024) as u32,
                        ),
                        _ => (0, 4 * CHUNK_SIZE as u32),
                    };
                    if offset == 0
                        && let Some(ino) = sim.handle_ino(c, fh)
                    {
                        // What `cat` and `fs::read` do first (and the
                        // kernel before a read, once it no longer trusts
                        // the size): the size it then reads up to.
                        sim.op(c, Op::GetAttr { ino })?;
                        // Sometimes the program dawdles between the two
                        // while others write (`tail -f`): its kernel
                        // keeps the size it got, and cuts the read there.
                        if rng.below(2) == 0 {
                            sim.advance(Duration::from_millis(rng.below(800)))?;
                        }
                    }
                    sim.op(c, Op::Read { fh, offset, size })?;
                }
            }
            690..730 => {
                let ino = pick(rng, &files).unwrap_or(dir);
                sim.op(c, Op::GetAttr { ino })?;
            }
            730..760 => {
                sim.op(
                    c,
                    Op::ReadDir {
                        ino: dir,
                        offset: 0,
                    },
                )?;
            }
            760..800 => {
                let to = pick(rng, &dirs).unwrap_or(Ino::ROOT);
                let dirs_too = rng.below(5) == 0;
                let (n, nn) = (name(rng, dirs_too), name(rng, dirs_too));
                sim.op(
                    c,
                    Op::Rename {
                        parent: dir,
                        name: n,
                        new_parent: to,
                        new_name: nn,
                    },
                )?;
            }
            800..812 => {
                if let Some(ino) = pick(rng, &files) {
                    let to = pick(rng, &dirs).unwrap_or(Ino::ROOT);
                    let new_name = name(rng, false);
                    sim.op(
                        c,
                        Op::Link {
                            ino,
                            new_parent: to,
                            new_name,
                        },
                    )?;
                }
            }
            812..835 => {
                let n = name(rng, false);
                sim.op(
                    c,
                    Op::Unlink {
                        parent: dir,
                        name: n,
                    },
                )?;
            }
            835..850 => {
                let n = name(rng, true);
                if rng.below(3) == 0 {
                    sim.op(
                        c,
                        Op::Rmdir {
                            parent: Ino::ROOT,
                            name: n,
                        },
                    )?;
                } else {
                    sim.op(
                        c,
                        Op::Mkdir {
                            parent: Ino::ROOT,
                            name: n,
                            mode: 0o755,
                            caller: None,
                        },
                    )?;
                }
            }
            850..880 => {
                if let Some(ino) = pick(rng, &files) {
                    let size = if rng.below(2) == 0 {
                        0
                    } else {
                        rng.below(5000)
                    };
                    let set = if rng.below(3) == 0 {
                        // What `tar` and `cp -p` do after writing: on a
                        // file with an open write it joins the commit.
                        SetAttr {
                            mode: Some([0o644, 0o600, 0o755][rng.below(3) as usize]),
                            mtime: Some(SetTime::At(Timestamp {
                                secs: 1_600_000_000 + rng.below(1000) as i64,
                                nanos: 0,
                            })),
                            ..SetAttr::default()
                        }
                    } else {
                        SetAttr {
                            size: Some(size),
                            ..SetAttr::default()
                        }
                    };
                    sim.op(c, Op::SetAttr { ino, set })?;
                }
            }
            880..920 => {
                // The kernel never evicts an inode it has open (or is
                // opening).
                if let Some(ino) = pick(rng, &files).or_else(|| pick(rng, &dirs))
                    && !sim.busy(c, ino)
                {
                    sim.forget(c, ino);
                }
            }
            920..945 => {
                if heal_at.is_none() {
                    let long = rng.below(2) == 0;
                    let secs = if long {
                        35 + rng.below(60)
                    } else {
                        1 + rng.below(20)
                    };
                    // Half of them silent: the connection does not
                    // notice (inside QUIC's idle timeout), the client must.
                    if rng.below(2) == 0 {
                        sim.silence(c, long)?;
                    } else {
                        sim.partition(c, long)?;
                    }
                    heal_at = Some(sim.w.now + Duration::from_secs(secs));
                }
            }
            945..960 => {
                if sim.host_up() && restart_at.is_none() {
                    sim.crash_host()?;
                    restart_at = Some(sim.w.now + Duration::from_millis(rng.below(15_000)));
                }
            }
            960..975 => sim.crash_client(c)?,
            975..990 => sim.move_path(c)?,
            _ => {
                sim.advance(Duration::from_secs(1 + rng.below(40)))?;
            }
        }
        let pause = match rng.below(10) {
            0..6 => Duration::from_millis(rng.below(50)),
            6..9 => Duration::from_millis(rng.below(2_000)),
            _ => Duration::from_millis(rng.below(10_000)),
        };
        sim.advance(pause)?;
    }
    if restart_at.is_some() {
        sim.restart_host()?;
    }
    Ok(())
}

/// A path the workload's names make: a file at the top or in a directory.
fn some_path(rng: &mut Rng) -> RelPath {
    let file = name(rng, false);
    if rng.below(3) == 0 {
        RelPath::from(vec![name(rng, true), file])
    } else {
        RelPath::from(vec![file])
    }
}

/// One thing that happens at the host behind the clients' backs: a local
/// program's save, append, truncate, delete or rename, or a disk that
/// fills up for a while or fails a few writes.
fn host_side(
    sim: &mut Sim,
    rng: &mut Rng,
    tag: u64,
    room_at: &mut Option<Instant>,
) -> Result<(), Violation> {
    let data = |rng: &mut Rng| {
        let len = 1 + rng.below(3000) as usize;
        payload(tag.wrapping_mul(0xa076_1d64_78bd_642f) ^ sim_salt(rng), len).to_vec()
    };
    match rng.below(10) {
        0..3 => {
            let p = some_path(rng);
            let d = data(rng);
            sim.local(Local::Replace(p, d))
        }
        3..5 => {
            let p = some_path(rng);
            let d = data(rng);
            sim.local(Local::Append(p, d))
        }
        5 => {
            let p = some_path(rng);
            let size = rng.below(4000);
            sim.local(Local::Truncate(p, size))
        }
        6 => {
            let p = some_path(rng);
            sim.local(Local::Delete(p))
        }
        7 => {
            let (from, to) = (some_path(rng), some_path(rng));
            if rng.below(3) == 0 {
                sim.local(Local::Link(from, to))
            } else {
                sim.local(Local::Rename(from, to))
            }
        }
        8 => {
            if room_at.is_none() {
                let room = rng.below(400_000);
                sim.fill_disk(room)?;
                *room_at = Some(sim.w.now + Duration::from_secs(1 + rng.below(60)));
            }
            Ok(())
        }
        _ => {
            let errno = if rng.below(2) == 0 {
                Errno::Io
            } else {
                Errno::NoSpc
            };
            sim.fail_disk(errno, 1 + rng.below(3) as u32)
        }
    }
}

/// A little more entropy per payload, so two seeds never share bytes.
fn sim_salt(rng: &mut Rng) -> u64 {
    rng.next_u64() & 0xffff_0000_0000_0000
}

/// The file-system simulation, for the shared seed runner
/// ([`simulation_tests!`](crate::simulation_tests)).
#[derive(Debug)]
pub struct FsSim;

impl Simulation for FsSim {
    const TEST: &'static str = "fs_sim";
    const SEED_VAR: &'static str = "WORMHOLE_FS_SEED";
    const SEEDS_VAR: &'static str = "WORMHOLE_FS_SEEDS";
    const COVERAGE_FROM: u64 = 200;
    const MIN_TRACE: usize = 100;

    type Stats = FsStats;
    type World = Sim;
    type Violation = Violation;

    fn run_seed(seed: u64, trace: bool, echo: bool) -> (Sim, Result<(), Violation>) {
        run_seed(seed, trace, echo)
    }

    fn trace(sim: &Sim) -> &[String] {
        sim.trace()
    }

    fn stats(sim: &Sim) -> &FsStats {
        sim.stats()
    }

    fn merge(into: &mut FsStats, from: &FsStats) {
        into.merge(from);
    }

    fn converged(stats: &FsStats) -> u64 {
        stats.converged
    }

    /// The workload is worth its seeds only if the checks had something to
    /// check: every kind of fault, commits, acknowledged closes followed by
    /// opens elsewhere.
    fn assert_coverage(s: &FsStats) {
        let checks = [
            ("commits", s.commits),
            ("fenced staging operations", s.fenced),
            ("acknowledged flushes checked", s.acks_checked),
            ("whole-file reads checked", s.reads_checked),
            ("small reads inside a file checked", s.slices_checked),
            (
                "appends at the end of another writer's commit",
                s.appends_after_another,
            ),
            ("files created for appending", s.append_creates),
            ("locks a program on the host took", s.host_program_locks),
            (
                "a program on the host kept out by a client's lock",
                s.host_program_refused,
            ),
            ("extended attributes read back", s.xattr_reads_checked),
            (
                "extended attributes read back across a commit",
                s.xattrs_across_commits,
            ),
            ("attributes checked against the ttl", s.attrs_checked),
            ("reads after an acknowledged close", s.reads_after_ack),
            ("short partitions", s.short_partitions),
            ("long partitions", s.long_partitions),
            ("silent partitions", s.silent_partitions),
            ("answers while the host was unreachable", s.offline_answers),
            ("host crashes", s.host_crashes),
            ("files rolled back by a crash", s.rolled_back),
            ("fsynced files checked after a crash", s.fsyncs_kept),
            ("client crashes", s.client_crashes),
            ("moves to a new path", s.path_moves),
            ("commits replayed from their staging", s.commits_replayed),
            (
                "mode and times committed with the content",
                s.sets_committed,
            ),
            ("reported losses checked for holes", s.losses_checked),
            ("local programs' changes", s.local_changes),
            ("full disks", s.disk_full),
            ("failing disk writes", s.disk_failures),
            ("opens with O_TRUNC", s.truncating_opens),
            ("hard links", s.links),
            ("commits of files with several names", s.in_place_commits),
            ("record locks granted to locked updates", s.locks_granted),
            ("reads under a record lock checked", s.locked_reads),
            (
                "writes under a lost record lock refused",
                s.lost_lock_writes,
            ),
            ("lock waits ended by a signal", s.lock_waits_interrupted),
            (
                "unlocks by another thread while a lock waited",
                s.other_thread_unlocks,
            ),
            ("links to the locked file", s.locked_file_links),
            ("files created under a directory lease", s.files_streamed),
            (
                "unlinks answered under a directory lease",
                s.unlinks_streamed,
            ),
            ("rmdirs answered under a directory lease", s.rmdirs_streamed),
            (
                "directory modes and times set under its lease",
                s.dir_sets_streamed,
            ),
            (
                "directories leased with their mkdir",
                s.dirs_leased_with_mkdir,
            ),
            (
                "directories a sweep leased ahead of it",
                s.dirs_leased_ahead,
            ),
            ("sweeps against the listing's order", s.sweeps_reversed),
            (
                "directories made with 16 leases held (the table full)",
                s.leases_full,
            ),
            (
                "closes acknowledged before their lease's stream",
                s.acks_deferred,
            ),
        ];
        for (what, n) in checks {
            assert!(n > 0, "the workload never produced {what}: {s:#?}");
        }
        assert!(s.ok > s.ops / 2, "most operations should succeed: {s:#?}");
        rare_coverage(s);
    }
}

/// Coverage of what a race makes rare, summed over the shards of one
/// run: a read legitimately cut at its kernel's size needs another
/// client's growing commit to land between a `stat` and the read, and
/// the client's news of it not to (0–4 per shard of 2,500 seeds since
/// answers given while the host is out of reach are not kept by the
/// kernel). The last of the run's [`SHARDS`] shards to finish checks the
/// sum, kept in this process: a run of fewer shards (a filter), or a
/// runner that puts each test in a process of its own, checks nothing
/// here (`cargo test`, which CI runs, runs them in one).
fn rare_coverage(s: &FsStats) {
    static SUM: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));
    let mut sum = SUM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    sum.0 += 1;
    sum.1 += s.reads_cut_by_kernel_size;
    if sum.0 == SHARDS {
        assert!(
            sum.1 > 0,
            "the run's shards never produced reads cut at their kernel's size"
        );
    }
}
