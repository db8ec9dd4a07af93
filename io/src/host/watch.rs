//! Watching the shared tree for changes made by other programs, so they
//! reach clients as invalidations (`HostServer::local_change`).
//!
//! [`TreeWatcher`] watches the root recursively through inotify (the
//! `notify` crate, symlinks not followed) and turns each change into the
//! [`RelPath`] it touched. Changes are coalesced into a bounded set until
//! the shell takes them, so a burst of writes to one file is one
//! invalidation; when the set is full, or the kernel's inotify queue
//! overflowed, or a watch could not be added, the pending changes collapse
//! into one invalidation of the root (correct, if coarse). The host's own
//! staging files (`.wormhole.` names) are ignored; its other changes come
//! back too, which costs clients one extra invalidation and nothing else.
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

use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use wormhole_core::host::{RESERVED_PREFIX, RelPath};
use wormhole_core::proto::Name;

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
    Notify(#[from] notify::Error),
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

    fn handle(&self, event: notify::Result<notify::Event>) {
        let mut p = self.pending();
        let before = p.is_empty();
        match event {
            Err(e) => {
                // A lost watch (limit reached) or a read error: we no
                // longer know what changed.
                tracing::warn!(error = %e, "file watcher error; invalidating the whole share");
                p.overflow = true;
            }
            Ok(ev) if ev.need_rescan() => p.overflow = true,
            // Reads and closes change nothing (a write already came as a
            // Modify).
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
            Ok(ev) => {
                for path in &ev.paths {
                    if let Some(rel) = self.relative(path) {
                        if p.paths.len() >= self.max && !p.paths.contains(&rel) {
                            p.overflow = true;
                        } else if !p.overflow {
                            p.paths.insert(rel);
                        }
                    }
                }
            }
        }
        let now_pending = !p.is_empty();
        drop(p);
        if before && now_pending {
            self.cond.notify_all();
            let _ = self.wake.try_send(());
        }
    }

    /// The share-relative path of an event's path; `None` for the host's
    /// own staging files and anything that is not a clean path beneath the
    /// root.
    fn relative(&self, path: &Path) -> Option<RelPath> {
        let rest = path.strip_prefix(&self.root).ok()?;
        let mut names = Vec::new();
        for c in rest.components() {
            let Component::Normal(n) = c else {
                return None;
            };
            let bytes = n.as_bytes();
            if bytes.starts_with(RESERVED_PREFIX) {
                return None;
            }
            names.push(Name::new(bytes).ok()?);
        }
        Some(RelPath::from(names))
    }
}

/// A recursive watch of the shared folder (see the module docs). Dropping
/// it stops watching.
pub struct TreeWatcher {
    shared: Arc<Shared>,
    _watcher: notify::INotifyWatcher,
}

impl std::fmt::Debug for TreeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatcher")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl TreeWatcher {
    /// Starts watching `root` and everything beneath it.
    pub fn new(root: &Path, cfg: WatchConfig) -> Result<Self, WatchError> {
        // Events name paths under the path watched; resolve it once so they
        // can be matched against it.
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
        let handler = {
            let shared = shared.clone();
            move |ev: notify::Result<notify::Event>| shared.handle(ev)
        };
        // Never follow a symlink into a place outside the share (or into a
        // mount of it).
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = notify::INotifyWatcher::new(handler, config)?;
        watcher.watch(&root, RecursiveMode::Recursive)?;
        Ok(TreeWatcher {
            shared,
            _watcher: watcher,
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
