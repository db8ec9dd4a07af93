//! The body of the differential metadata test, shared by both binaries:
//! one random sequence of metadata operations runs on a Wormhole mount
//! and on a local directory of the same file system, and after every
//! step each name must look the same in both (`lstat`, minus atime):
//! the operation's outcome, the kind, mode, size, link count and owner,
//! and for the times, whether each moved in that step (a local disk's
//! rules for which operations move which times are the contract; the
//! clocks themselves differ) and the exact value where a program set it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, mknodat, utimensat};

use super::procs::{ANY_PORT, mounted, scratch, start_host, ticket_of};

/// Every name a step may touch: two directories and names at the top
/// and in each.
const NAMES: [&str; 9] = ["a", "b", "c", "d", "e", "d/x", "d/y", "e/x", "e/y"];

/// Waits until the file system's clock has moved past every time the
/// last step stamped. Linux stamps times from a clock that ticks every
/// few milliseconds, so a change right after the previous step could
/// carry the same time and look like none. `probe` (on the same file
/// system as both trees, in neither) is written until its mtime differs
/// from the first write's: every time the last step stamped is at most
/// the first, every time the next step stamps at least the last.
fn clock_tick(probe: &Path) {
    let stamp = || {
        fs::write(probe, b"t").expect("write the clock probe");
        let m = fs::metadata(probe).expect("stat the clock probe");
        (m.mtime(), m.mtime_nsec())
    };
    let first = stamp();
    // No event announces a clock tick: the probe's time is the condition,
    // polled (each poll a write and a stat) until it moves, a few
    // milliseconds at most.
    while stamp() == first {
        std::thread::yield_now();
    }
}

/// A time a program sets (2001-09-09): far from any the clock gives.
const SET_SECS: i64 = 1_000_000_000;

/// A small deterministic generator (xorshift), so a failure names a
/// seed that replays it.
struct Gen(u64);

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn name(&mut self) -> &'static str {
        NAMES[self.below(NAMES.len() as u64) as usize]
    }
}

/// One metadata operation.
#[derive(Clone, Debug)]
enum Step {
    Append(&'static str, usize),
    Truncate(&'static str, u64),
    Chmod(&'static str, u32),
    SetTimes(&'static str, i64),
    Mkdir(&'static str),
    Rmdir(&'static str),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    Link(&'static str, &'static str),
    Symlink(&'static str),
    Mkfifo(&'static str),
}

fn step(g: &mut Gen) -> Step {
    match g.below(20) {
        0..=4 => Step::Append(g.name(), 1 + g.below(3000) as usize),
        5 => Step::Truncate(g.name(), g.below(5000)),
        6 => Step::Chmod(g.name(), [0o644, 0o600, 0o755, 0o640][g.below(4) as usize]),
        7 => Step::SetTimes(g.name(), SET_SECS + g.below(1000) as i64),
        8..=10 => Step::Mkdir(g.name()),
        11 => Step::Rmdir(g.name()),
        12 | 13 => Step::Unlink(g.name()),
        14 | 15 => Step::Rename(g.name(), g.name()),
        16 | 17 => Step::Link(g.name(), g.name()),
        18 => Step::Symlink(g.name()),
        _ => Step::Mkfifo(g.name()),
    }
}

/// Runs `s` under `root`: its outcome, as an errno (0 for success).
fn run(root: &Path, s: &Step) -> i32 {
    let p = |n: &str| root.join(n);
    let r: std::io::Result<()> = match s {
        // Never blocking: a FIFO with no reader is ENXIO, as it should be.
        Step::Append(n, len) => OpenOptions::new()
            .append(true)
            .create(true)
            .mode_of(0o644)
            .open(p(n))
            .and_then(|mut f| f.write_all(&vec![b'w'; *len])),
        Step::Truncate(n, len) => OpenOptions::new()
            .write(true)
            .mode_of(0o644)
            .open(p(n))
            .and_then(|f| f.set_len(*len)),
        Step::Chmod(n, mode) => fs::set_permissions(p(n), fs::Permissions::from_mode(*mode)),
        Step::SetTimes(n, secs) => {
            let t = Timespec {
                tv_sec: *secs,
                tv_nsec: 0,
            };
            let times = Timestamps {
                last_access: t,
                last_modification: t,
            };
            utimensat(CWD, p(n), &times, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
        }
        Step::Mkdir(n) => fs::create_dir(p(n)),
        Step::Rmdir(n) => fs::remove_dir(p(n)),
        Step::Unlink(n) => fs::remove_file(p(n)),
        Step::Rename(a, b) => fs::rename(p(a), p(b)),
        Step::Link(a, b) => fs::hard_link(p(a), p(b)),
        Step::Symlink(n) => std::os::unix::fs::symlink("target", p(n)),
        Step::Mkfifo(n) => {
            mknodat(CWD, p(n), FileType::Fifo, Mode::from_raw_mode(0o644), 0).map_err(Into::into)
        }
    };
    r.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1))
}

/// `mode` on `OpenOptions`, and `O_NONBLOCK` (opening a FIFO must not
/// wait for a reader).
trait ModeOf {
    fn mode_of(&mut self, mode: u32) -> &mut Self;
}

impl ModeOf for OpenOptions {
    fn mode_of(&mut self, mode: u32) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(mode)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
    }
}

/// What a name shows, times aside.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Shown {
    mode: u32,
    /// Files' and symlinks' only: a directory's size is the file
    /// system's business.
    size: Option<u64>,
    nlink: u64,
    owner: (u32, u32),
}

/// A name's times, to compare across steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn look(root: &Path, name: &str) -> Option<(Shown, Times)> {
    let m = fs::symlink_metadata(root.join(name)).ok()?;
    let dir = m.is_dir();
    Some((
        Shown {
            mode: m.mode(),
            size: (!dir).then_some(m.size()),
            nlink: m.nlink(),
            owner: (m.uid(), m.gid()),
        },
        Times {
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        },
    ))
}

/// Every name's state in one tree, the root's first.
fn snapshot(root: &Path) -> Vec<Option<(Shown, Times)>> {
    std::iter::once(".")
        .chain(NAMES)
        .map(|n| look(root, n))
        .collect()
}

/// How a name changed in one step, as both trees must agree.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    shown: Option<Shown>,
    mtime_moved: bool,
    ctime_moved: bool,
    /// The mtime, where a program set it.
    set_mtime: Option<i64>,
}

fn seen(before: &Option<(Shown, Times)>, now: &Option<(Shown, Times)>) -> Seen {
    let moved = |f: fn(&Times) -> (i64, i64)| match (before, now) {
        (Some((_, b)), Some((_, n))) => f(b) != f(n),
        _ => false,
    };
    Seen {
        shown: now.as_ref().map(|(s, _)| s.clone()),
        mtime_moved: moved(|t| t.mtime),
        ctime_moved: moved(|t| t.ctime),
        set_mtime: now
            .as_ref()
            .map(|(_, t)| t.mtime.0)
            .filter(|&s| (SET_SECS..SET_SECS + 1000).contains(&s)),
    }
}

/// Runs `steps` random steps from `seed` on the mount and on the local
/// directory, comparing after each.
fn differential(mnt: &Path, local: &Path, probe: &Path, seed: u64, steps: usize) {
    let mut g = Gen(seed | 1);
    let mut done = Vec::new();
    for i in 0..steps {
        let s = step(&mut g);
        // A write to a file commits a new version renamed over the old
        // one, which moves its directory's times on the host, where a
        // local disk's write would not (docs/filesystem.md, "Write
        // transactions"): after a step that changes no names, the
        // directories' times are not compared.
        let names_unchanged = match &s {
            Step::Append(n, _) => local.join(n).exists(),
            Step::Truncate(..) | Step::Chmod(..) | Step::SetTimes(..) => true,
            _ => false,
        };
        clock_tick(probe);
        // Taken now rather than after the last step: the kernel hears of
        // a directory's times moved by a commit a moment after the close
        // returns (the mount's invalidation thread tells it).
        let before = (snapshot(mnt), snapshot(local));
        let on_mount = run(mnt, &s);
        let on_local = run(local, &s);
        done.push(format!("{s:?} = {on_local}"));
        let history = || done.join("\n  ");
        assert_eq!(
            on_mount,
            on_local,
            "seed {seed} step {i}: {s:?} gave errno {on_mount} on the mount, {on_local} locally; steps:\n  {}",
            history()
        );
        let now = (snapshot(mnt), snapshot(local));
        for (k, name) in std::iter::once(".").chain(NAMES).enumerate() {
            let (mut m, mut l) = (seen(&before.0[k], &now.0[k]), seen(&before.1[k], &now.1[k]));
            let dir = |x: &Seen| {
                x.shown
                    .as_ref()
                    .is_some_and(|s| s.mode & 0o170000 == 0o040000)
            };
            if names_unchanged && dir(&l) {
                for x in [&mut m, &mut l] {
                    (x.mtime_moved, x.ctime_moved) = (false, false);
                }
            }
            assert_eq!(
                m,
                l,
                "seed {seed} step {i}: after {s:?}, {name:?} differs (left: the mount, right: the local directory); steps:\n  {}",
                history()
            );
        }
    }
}

pub(crate) fn metadata_like_a_local_disk(bin: &Path) {
    let mut cleanup = scratch("timestamps", bin);
    let dir = cleanup.dir.clone();
    let (host, host_out) = start_host(bin, &dir, ANY_PORT, &[]);
    cleanup.children.push(host);
    let ticket = ticket_of(&host_out);
    let mnt = dir.join("mnt");
    cleanup.children.push(mounted(bin, &ticket, &mnt).0);
    // The reference: a directory of the same file system as the share.
    let local: PathBuf = dir.join("local");
    for seed in [1, 2, 3] {
        let (m, l) = (mnt.join(format!("s{seed}")), local.join(format!("s{seed}")));
        fs::create_dir_all(&m).expect("mount's tree");
        fs::create_dir_all(&l).expect("local tree");
        differential(&m, &l, &dir.join("clock"), seed, 150);
    }
}
