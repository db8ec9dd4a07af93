//! Watching the shared tree for changes made by other programs, so they
//! reach clients as invalidations (`HostServer::local_change`).
//!
//! [`TreeWatcher`] watches the root recursively through inotify (one
//! watch per directory, symlinks not followed) and turns each change into
//! the [`RelPath`] it touched. Changes are coalesced into a bounded set
//! until the shell takes them, so a burst of writes to one file is one
//! invalidation; when the set is full, or the kernel's inotify queue
//! overflowed, or a watch could not be added, the pending changes collapse
//! into one invalidation of the root (correct, if coarse). The host's own
//! staging files (`.wormhole.` names) are ignored; its other changes come
//! back too and are dropped by the core (`host::server::echo`).
//!
//! It speaks to inotify itself rather than through a general watcher
//! crate, for the mask: only changes are asked for (creates, deletes,
//! moves, writes, closes after writing, attribute changes), never opens or
//! reads. The host opens every file and directory it resolves; with opens
//! in the mask each of a small file's operations woke this thread several
//! times (a fifth of the host's CPU in an untar, issue 19).
//!
//! A directory moved within the share keeps its watches: the move's two
//! halves (same cookie) re-prefix every watch beneath it. One moved in from
//! outside is watched anew, one moved out loses its watches.
//!
//! It is runtime-agnostic: [`TreeWatcher::changed`] is a future for any
//! executor, [`TreeWatcher::wait`] a blocking wait with a timeout.
//!
//! Caveat, inherent to inotify watches being added by path: if a local
//! program replaces a newly created directory by a symlink in the instant
//! before its watch is added, the watch may land on the symlink's target.
//! That only produces extra invalidations (of paths under the symlink,
//! which the host never follows); it opens nothing to clients, whose every
//! operation goes through [`crate::hostfs`].

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use rustix::io::Errno;
use std::collections::{BTreeSet, HashMap};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use wormhole_core::host::{RESERVED_PREFIX, RelPath};
use wormhole_core::proto::Name;

/// What every directory's watch asks for: changes only (see the module
/// docs). `DONT_FOLLOW` and `ONLYDIR` keep a watch added by path from
/// landing on a symlink's target or a file; `EXCL_UNLINK` drops events of
/// files already unlinked but still open.
const MASK: WatchFlags = WatchFlags::ATTRIB
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DONT_FOLLOW)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::EXCL_UNLINK);

/// How long the watching thread lets events gather after reading some
/// (2 ms: a local change reaches clients that much later, and an untar on
/// the host's disk wakes this thread a few hundred times a second instead
/// of tens of thousands).
const COALESCE_NS: i64 = 2_000_000;

/// Bounds of a [`TreeWatcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Distinct changed paths held until taken; beyond, the root is
    /// invalidated instead.
    pub max_pending: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { max_pending: 4096 }
    }
}

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The root could not be resolved.
    #[error("cannot resolve the shared folder: {0}")]
    Root(#[from] std::io::Error),
    /// inotify refused (no inotify, or too many watches: raise
    /// `fs.inotify.max_user_watches`).
    #[error("cannot watch the shared folder: {0}")]
    Watch(std::io::Error),
}

#[derive(Default)]
struct Pending {
    paths: BTreeSet<RelPath>,
    /// Too much to say one by one: invalidate the root.
    overflow: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.overflow
    }

    fn take(&mut self) -> Vec<RelPath> {
        if std::mem::take(&mut self.overflow) {
            self.paths.clear();
            return vec![RelPath::root()];
        }
        std::mem::take(&mut self.paths).into_iter().collect()
    }
}

struct Shared {
    root: PathBuf,
    max: usize,
    pending: Mutex<Pending>,
    cond: Condvar,
    /// Wakes an async waiter; capacity one, so wake-ups coalesce too.
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds what one read of the kernel's queue found.
    fn note(&self, changes: &mut Vec<RelPath>, overflow: bool) {
        if changes.is_empty() && !overflow {
            return;
        }
        let mut p = self.pending();
        let before = p.is_empty();
        p.overflow |= overflow;
        for rel in changes.drain(..) {
            if p.overflow {
                break;
            }
            if p.paths.len() >= self.max && !p.paths.contains(&rel) {
                p.overflow = true;
            } else {
                p.paths.insert(rel);
            }
        }
        if p.overflow {
            p.paths.clear();
        }
        let now_pending = !p.is_empty();
        drop(p);
        if before && now_pending {
            self.cond.notify_all();
            let _ = self.wake.try_send(());
        }
    }
}

/// The watching thread's state: the inotify descriptor and which
/// directory each watch stands for.
struct Tree {
    inotify: OwnedFd,
    root: PathBuf,
    dirs: HashMap<i32, RelPath>,
    /// Directories whose move away was seen and whose arrival (the same
    /// cookie) was not yet.
    moving: Vec<(u32, RelPath)>,
}

/// Where `rel` is on the host's disk.
fn on_disk(root: &Path, rel: &RelPath) -> PathBuf {
    let mut path = root.to_path_buf();
    for n in rel.names() {
        path.push(std::ffi::OsStr::from_bytes(n.as_bytes()));
    }
    path
}

/// Whether a name is one of the host's own staging files.
fn is_staging(name: &[u8]) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

impl Tree {
    /// Watches `rel` and every directory beneath it. False if a watch
    /// could not be added for a reason other than the directory having
    /// gone (so changes beneath it would go unseen).
    fn watch(&mut self, rel: RelPath) -> bool {
        let mut complete = true;
        let mut todo = vec![rel];
        while let Some(rel) = todo.pop() {
            let path = on_disk(&self.root, &rel);
            match inotify::add_watch(&self.inotify, &path, MASK) {
                Ok(wd) => {
                    self.dirs.insert(wd, rel.clone());
                }
                // Gone or replaced before we got to it: its parent's
                // event already said so.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(),
                        "cannot watch a directory (raise fs.inotify.max_user_watches?); invalidating the whole share");
                    complete = false;
                    continue;
                }
            }
            let Ok(entries) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                // The entry's own type (d_type): a symlink is never followed.
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let name = entry.file_name();
                if !is_dir || is_staging(name.as_bytes()) {
                    continue;
                }
                if let Ok(name) = Name::new(name.as_bytes()) {
                    todo.push(rel.join(&name));
                }
            }
        }
        complete
    }

    /// Gives every watch at or beneath `from` the path under `to`.
    fn moved(&mut self, from: &RelPath, to: &RelPath) {
        for dir in self.dirs.values_mut() {
            if dir.starts_with(from) {
                let rest = &dir.names()[from.names().len()..];
                *dir = RelPath::from([to.names(), rest].concat());
            }
        }
    }

    /// Stops watching `rel` and everything beneath it (moved out of the
    /// share).
    fn unwatch(&mut self, rel: &RelPath) {
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.starts_with(rel))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = inotify::remove_watch(&self.inotify, wd);
        }
    }

    /// One event: the path it touched, if any the clients care about.
    /// Sets `overflow` when the change cannot be said by one path.
    fn event(
        &mut self,
        wd: i32,
        flags: ReadFlags,
        cookie: u32,
        name: Option<&[u8]>,
        overflow: &mut bool,
    ) -> Option<RelPath> {
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            *overflow = true;
            return None;
        }
        if flags.contains(ReadFlags::IGNORED) {
            self.dirs.remove(&wd);
            return None;
        }
        let dir = self.dirs.get(&wd)?.clone();
        let Some(name) = name else {
            // About the watched directory itself (its deletion): its
            // parent reports the name; the root has none.
            return dir.names().is_empty().then_some(dir);
        };
        if is_staging(name) {
            return None;
        }
        // A name the kernel gave us is a valid one; if not, say "this
        // directory changed".
        let Ok(name) = Name::new(name) else {
            return Some(dir);
        };
        let rel = dir.join(&name);
        if flags.contains(ReadFlags::ISDIR) {
            if flags.contains(ReadFlags::MOVED_FROM) {
                self.moving.push((cookie, rel.clone()));
            } else if flags.contains(ReadFlags::MOVED_TO) {
                match self.moving.iter().position(|(c, _)| *c == cookie) {
                    Some(i) => {
                        let (_, from) = self.moving.swap_remove(i);
                        self.moved(&from, &rel);
                    }
                    None => *overflow |= !self.watch(rel.clone()),
                }
            } else if flags.contains(ReadFlags::CREATE) {
                *overflow |= !self.watch(rel.clone());
            }
        }
        Some(rel)
    }

    /// Reads and handles events until the queue is empty.
    fn drain(&mut self, buf: &mut [MaybeUninit<u8>], shared: &Shared, changes: &mut Vec<RelPath>) {
        let mut overflow = false;
        let fd = self.inotify.try_clone();
        let Ok(fd) = fd else {
            shared.note(changes, true);
            return;
        };
        let mut reader = inotify::Reader::new(&fd, buf);
        loop {
            match reader.next() {
                Ok(ev) => {
                    let name = ev.file_name().map(|n| n.to_bytes());
                    if let Some(rel) =
                        self.event(ev.wd(), ev.events(), ev.cookie(), name, &mut overflow)
                    {
                        changes.push(rel);
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "file watcher read error; invalidating the whole share");
                    overflow = true;
                    break;
                }
            }
        }
        // Moved away and not back within the same read: out of the share.
        for (_, rel) in std::mem::take(&mut self.moving) {
            self.unwatch(&rel);
        }
        shared.note(changes, overflow);
    }

    /// The watching thread: waits for events or the stop signal.
    fn run(mut self, stop: OwnedFd, shared: Arc<Shared>) {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut changes = Vec::new();
        loop {
            let mut fds = [
                PollFd::new(&self.inotify, PollFlags::IN),
                PollFd::new(&stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "file watcher stopped; local changes will not reach clients");
                    shared.note(&mut changes, true);
                    return;
                }
            }
            if !fds[1].revents().is_empty() {
                return;
            }
            if !fds[0].revents().is_empty() {
                self.drain(&mut buf, &shared, &mut changes);
                // Rest before the next wait, so a burst (every file of an
                // untar brings several events) is read in a few batches
                // instead of waking this thread at each event. Still
                // stops at once.
                let mut stop_only = [PollFd::new(&stop, PollFlags::IN)];
                let rest = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: COALESCE_NS,
                };
                if rustix::event::poll(&mut stop_only, Some(&rest)).is_ok_and(|n| n > 0) {
                    return;
                }
            }
        }
    }
}

/// A recursive watch of the shared folder (see the module docs). Dropping
/// it stops watching.
pub struct TreeWatcher {
    shared: Arc<Shared>,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TreeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatcher")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl Drop for TreeWatcher {
    fn drop(&mut self) {
        // Wakes the thread's poll; it returns and closes the inotify
        // descriptor, which removes every watch.
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TreeWatcher {
    /// Starts watching `root` and everything beneath it.
    pub fn new(root: &Path, cfg: WatchConfig) -> Result<Self, WatchError> {
        // Events name paths under the path watched; resolve it once.
        let root = root.canonicalize()?;
        let (wake, woken) = async_channel::bounded(1);
        let shared = Arc::new(Shared {
            root: root.clone(),
            max: cfg.max_pending.max(1),
            pending: Mutex::new(Pending::default()),
            cond: Condvar::new(),
            wake,
            woken,
        });
        let io = |e: Errno| WatchError::Watch(e.into());
        let inotify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(io)?;
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC).map_err(io)?;
        let mut tree = Tree {
            inotify,
            root,
            dirs: HashMap::new(),
            moving: Vec::new(),
        };
        // The root must be watched; beneath it, a directory that cannot be
        // is said as an invalidation of everything.
        let wd = inotify::add_watch(&tree.inotify, &tree.root, MASK).map_err(io)?;
        tree.dirs.insert(wd, RelPath::root());
        if !tree.watch(RelPath::root()) {
            shared.note(&mut Vec::new(), true);
        }
        let thread = {
            let shared = shared.clone();
            let stop = stop.try_clone().map_err(WatchError::Watch)?;
            std::thread::Builder::new()
                .name("wormhole-watch".into())
                .spawn(move || tree.run(stop, shared))
                .map_err(WatchError::Watch)?
        };
        Ok(TreeWatcher {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The root as watched (resolved).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Takes the changes pending now (possibly none).
    pub fn take(&self) -> Vec<RelPath> {
        self.shared.pending().take()
    }

    /// Waits for changes and takes them (never empty).
    pub async fn changed(&self) -> Vec<RelPath> {
        loop {
            let batch = self.take();
            if !batch.is_empty() {
                return batch;
            }
            // The sender lives in `shared`, which we hold: this cannot
            // fail, but a closed channel must not spin either.
            if self.shared.woken.recv().await.is_err() {
                return vec![RelPath::root()];
            }
        }
    }

    /// Waits up to `timeout` for changes and takes them (empty if none
    /// came). Blocks the calling thread.
    pub fn wait(&self, timeout: Duration) -> Vec<RelPath> {
        let p = self.shared.pending();
        let (mut p, _) = self
            .shared
            .cond
            .wait_timeout_while(p, timeout, |p| p.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        p.take()
    }
}
