//! The host's own changes, as its watcher reports them back.
//!
//! The watcher cannot tell the host's changes from a local program's: a
//! client's create, commit or unlink comes back as a change of its path,
//! which the host would announce to every client (the writer included),
//! costing each an invalidation and its next lookup in that directory a
//! round trip. So the host notes what each of its own changes left at
//! its path (the file's identity, size and mtime, or nothing), and when
//! the watcher reports that path within [`ECHO_WINDOW`], it looks again
//! ([`Purpose::Echo`]): only if the path holds exactly what the host left
//! there is the report its own echo, and dropped. Anything else (a local
//! program wrote, replaced or removed the file after the host's change)
//! is announced as before. A report that comes while one of the host's
//! own operations is still removing that name, or making it anew in a
//! batch (inotify reports each unlink of a batch as it happens, long
//! before the batch's result), is checked once that operation is done:
//! checked at once it would compare the path with what the host's
//! previous change left there, and every such report was announced (and
//! recalled the lease of the client whose batch it was: in an `rm -rf` of
//! 10,000 files, 258 recalls). Reports during an operation that leaves a
//! file it describes by its result (a commit, a `chmod`) are not held
//! back: its result may already include a local program's write made
//! meanwhile, which the check would then take for the host's own.
//! A local change that keeps the file's identity,
//! size and mtime within the file system's timestamp tick goes unseen,
//! as it does in the commit's own check ([`FsOp::StageCommit`]); clients
//! then see it when their cached attributes expire.

use super::*;
use crate::host::fsop::BatchOp;

/// How long after the host's own change a report of its path is checked
/// against it; later reports are announced.
pub(super) const ECHO_WINDOW: Duration = Duration::from_secs(5);

/// Paths whose expected state is remembered at most; beyond, reports
/// are announced.
/// An untar makes thousands of files within the window (each remembered
/// with its path: a few MiB at most).
const MAX_ECHOES: usize = 1 << 16;

/// What one of the host's own changes left at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// This file (or directory, or symlink).
    File(FileStamp),
    /// Nothing.
    Gone,
}

/// What a change under way will leave at a path, once it succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaves {
    /// The file its result describes.
    Result,
    /// Nothing.
    Gone,
    /// The file the `i`th result of a batch describes.
    Item(usize),
    /// Nothing, if the `i`th operation of a batch succeeded.
    ItemGone(usize),
}

impl Leaves {
    /// Whether a report of the path waits for the operation (see the
    /// module docs): only where it removes the name or makes it anew.
    fn holds_back(self) -> bool {
        !matches!(self, Leaves::Result)
    }
}

/// The host's own changes by path (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Echoes {
    /// Mutating operations out, and what they will leave where.
    out: BTreeMap<FsOpId, Vec<(RelPath, Leaves)>>,
    /// What the host's last change of each path left there, and when.
    left: BTreeMap<RelPath, (Left, Instant)>,
    /// Paths that operations under way remove or make anew, with how
    /// many of them.
    busy: BTreeMap<RelPath, u32>,
    /// Reports of busy paths, to be checked once they are not.
    deferred: BTreeSet<RelPath>,
}

impl Echoes {
    /// Notes an operation issued, if it changes what a path holds.
    pub(super) fn issued(&mut self, op: FsOpId, fs: &FsOp) {
        let paths = match fs {
            FsOp::Create { path, .. }
            | FsOp::Mkdir { path, .. }
            | FsOp::Symlink { path, .. }
            | FsOp::Mknod { path, .. }
            | FsOp::SetAttr { path, .. }
            | FsOp::StageCommit { path, .. } => vec![(path.clone(), Leaves::Result)],
            // Both names hold the file the result describes.
            FsOp::Link { path, to, .. } => {
                vec![(path.clone(), Leaves::Result), (to.clone(), Leaves::Result)]
            }
            FsOp::Unlink { path } | FsOp::Rmdir { path } => vec![(path.clone(), Leaves::Gone)],
            // What a rename leaves at its target is the source's file,
            // which the result does not describe: its target's report is
            // announced.
            FsOp::Rename { from, .. } => vec![(from.clone(), Leaves::Gone)],
            FsOp::Batch { dir, ops } => ops
                .iter()
                .enumerate()
                .map(|(i, op)| match op {
                    BatchOp::Create(f) => (dir.join(&f.name), Leaves::Item(i)),
                    BatchOp::Unlink { name, .. } | BatchOp::Rmdir { name, .. } => {
                        (dir.join(name), Leaves::ItemGone(i))
                    }
                    // Held back, unlike an ordinary setattr's report: the
                    // watcher reports the directory while the batch runs,
                    // and checked then, against what the host left there
                    // before, it would be announced: every client told,
                    // and its parent's lease recalled (often the same
                    // client's). Compared with this item's result, which
                    // is what the directory is only if nothing after it
                    // in the batch changes it (the client ends a batch
                    // at a set).
                    BatchOp::SetAttr(_) => (dir.clone(), Leaves::Item(i)),
                })
                .collect(),
            _ => return,
        };
        for (path, _) in paths.iter().filter(|(_, l)| l.holds_back()) {
            *self.busy.entry(path.clone()).or_default() += 1;
        }
        self.out.insert(op, paths);
    }

    /// Holds back a report of `path` while an operation of the host's
    /// removes or makes that name; returns whether it did. [`Echoes::done`] gives it
    /// back once the last such operation is done.
    pub(super) fn defer(&mut self, path: &RelPath) -> bool {
        if !self.busy.contains_key(path) {
            return false;
        }
        self.deferred.insert(path.clone());
        true
    }

    /// Operation `op` finished: what it left is remembered if it
    /// succeeded. Returns the reports held back for it ([`Echoes::defer`])
    /// that no other operation holds back: to be checked now.
    pub(super) fn done(&mut self, now: Instant, op: FsOpId, result: &FsResult) -> Vec<RelPath> {
        let Some(paths) = self.out.remove(&op) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for (path, _) in paths.iter().filter(|(_, l)| l.holds_back()) {
            if let Some(n) = self.busy.get_mut(path) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(path);
                    if self.deferred.remove(path) {
                        ready.push(path.clone());
                    }
                }
            }
            debug_assert!(
                self.busy.contains_key(path) || !self.deferred.contains(path),
                "a report held back for no operation"
            );
        }
        self.remember(now, paths, result);
        ready
    }

    /// What the paths of a finished operation hold now, by its result.
    fn remember(&mut self, now: Instant, paths: Vec<(RelPath, Leaves)>, result: &FsResult) {
        let result = match result {
            Ok(FsOk::InDirs { ok, .. }) => Ok(&**ok),
            other => other.as_ref(),
        };
        for (path, leaves) in paths {
            let left = match (leaves, result) {
                (Leaves::Gone, Ok(_)) => Left::Gone,
                (Leaves::Result, Ok(FsOk::Attr(a) | FsOk::Opened(a, _))) => {
                    Left::File(FileStamp::from(a))
                }
                (Leaves::Item(i), Ok(FsOk::Batch(items))) => match items.get(i) {
                    Some(Ok(a)) => Left::File(FileStamp::from(a)),
                    _ => {
                        self.left.remove(&path);
                        continue;
                    }
                },
                (Leaves::ItemGone(i), Ok(FsOk::Batch(items))) => match items.get(i) {
                    Some(Ok(_)) => Left::Gone,
                    _ => {
                        self.left.remove(&path);
                        continue;
                    }
                },
                // Failed, or no attributes to compare with: whatever the
                // path holds now is not known to be the host's doing.
                _ => {
                    self.left.remove(&path);
                    continue;
                }
            };
            if self.left.len() >= MAX_ECHOES && !self.left.contains_key(&path) {
                self.left
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < ECHO_WINDOW);
                if self.left.len() >= MAX_ECHOES {
                    continue;
                }
            }
            self.left.insert(path, (left, now));
        }
        debug_assert!(self.left.len() <= MAX_ECHOES, "echoes unbounded");
    }

    /// Whether a report of `path` now may be the echo of the host's own
    /// change, to be checked before it is announced.
    pub(super) fn expected(&self, now: Instant, path: &RelPath) -> bool {
        self.left
            .get(path)
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) < ECHO_WINDOW)
    }

    /// Whether `found` (a Stat of `path` made after the report) is
    /// exactly what the host's own last change left there.
    pub(super) fn is_echo(&self, now: Instant, path: &RelPath, found: &FsResult) -> bool {
        if !self.expected(now, path) {
            return false;
        }
        match (self.left.get(path).map(|(l, _)| *l), found) {
            (Some(Left::File(stamp)), Ok(FsOk::Attr(a))) => FileStamp::from(a) == stamp,
            (Some(Left::Gone), Err(Errno::NoEnt)) => true,
            _ => false,
        }
    }
}
