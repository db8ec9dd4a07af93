//! Extended attributes in the simulation: now and then a client sets,
//! removes or reads a `user.` attribute of a file it knows. Each client
//! changes only names of its own (`user.c<client>.<k>`), one change of a
//! name at a time, so the changes of a name have one order; any client
//! reads any name. The attributes are not cached by the clients, so what
//! is checked is the host's: every commit (a staged copy renamed over the
//! file, a whole write, a file streamed under a lease, a commit in place)
//! must carry them.
//!
//! 13. **An acknowledged attribute stays**: a read answers the value of
//!     the last change acknowledged before the read was sent, or of a
//!     change in flight while it was, or of a change whose answer was an
//!     error (it may have been applied, even late). After a host crash
//!     (attributes reach the disk with the next sync) the value is
//!     unknown until the next acknowledged change. Files a local program
//!     changed are not checked (an atomic save puts another file at the
//!     path, and the host's node, so a change sent through the old
//!     file's inode, may follow it), nor names changed through them.

use std::collections::{BTreeMap, BTreeSet};

use super::{Sim, Violation};
use wormhole_core::client::{Answer, Op};
use wormhole_core::proto::{Errno, XattrSet};
use wormhole_core::vfs::Ino;

/// One change of a name: a value set, or `None` for a removal.
#[derive(Clone, Debug)]
struct Change {
    value: Option<Vec<u8>>,
    /// The sequence number of its request.
    sent: u64,
    /// The sequence number when it was answered (requests with a higher
    /// one were sent after), and whether it succeeded.
    answered: Option<(u64, bool)>,
    /// Commits of the disk when it was answered.
    commits: usize,
}

/// What the kernels know of one name of one file.
#[derive(Clone, Debug, Default)]
struct Known {
    changes: Vec<Change>,
    /// The last fault that may have undone what was acknowledged before
    /// it (sequence number).
    fault: u64,
}

/// The kernels' side of extended attributes.
#[derive(Clone, Debug, Default)]
pub(super) struct XattrModel {
    names: BTreeMap<(usize, Vec<u8>), Known>,
    /// Files a local program changed (a save puts another file at the
    /// path; the host's node may follow it).
    touched: BTreeSet<usize>,
    /// Names changed through the inode of such a file: the host applies
    /// the change to whatever file the node stands for now, which the
    /// kernel cannot tell, so reads of those names are not checked.
    adrift: BTreeSet<Vec<u8>>,
    /// When the host last restarted: inodes are bound again by path then,
    /// perhaps to other files than their kernels were told.
    restarted_at: u64,
}

/// Why an xattr request was sent, for checking its answer.
#[derive(Clone, Debug)]
pub(super) struct XattrCtx {
    file: Option<usize>,
    seq: u64,
}

/// Client `c`'s `k`th name.
pub(crate) fn xattr_name(c: usize, k: u64) -> Vec<u8> {
    format!("user.c{c}.{k}").into_bytes()
}

impl XattrModel {
    /// Something happened that may undo acknowledged attributes.
    pub(super) fn fault(&mut self, seq: u64) {
        for k in self.names.values_mut() {
            k.fault = seq;
        }
    }

    /// The host restarted.
    pub(super) fn restarted(&mut self, seq: u64) {
        self.restarted_at = seq;
    }

    /// A local program changed `files` (before and after the change).
    pub(super) fn touched(&mut self, files: impl IntoIterator<Item = usize>) {
        self.touched.extend(files);
    }
}

impl Sim {
    /// Whether client `c` has a change of attribute `name` in flight.
    pub fn xattr_busy(&self, c: usize, name: &[u8]) -> bool {
        self.pending.iter().any(|((pc, _), p)| {
            *pc == c
                && matches!(&p.op,
                    Op::SetXattr { name: n, .. } | Op::RemoveXattr { name: n, .. } if n == name)
        })
    }

    /// Records an xattr request of client `c` as it is sent.
    pub(super) fn xattr_sent(&mut self, c: usize, op: &Op, seq: u64) -> Option<XattrCtx> {
        let (ino, change) = match op {
            Op::SetXattr {
                ino, name, value, ..
            } => (*ino, Some((name, Some(value.clone())))),
            Op::RemoveXattr { ino, name } => (*ino, Some((name, None))),
            Op::GetXattr { ino, .. } => (*ino, None),
            _ => return None,
        };
        let k = &self.kernels[c];
        let learned = k.identity_at.get(&ino).copied().unwrap_or(0);
        // An inode the host may have bound to another file since.
        let file = k
            .identity
            .get(&ino)
            .copied()
            .filter(|_| learned >= self.xattrs.restarted_at);
        // Sent through an inode whose file the kernel does not know (or
        // knew before the host restarted), or one a local program
        // changed: it lands on a file the model cannot name.
        if let Some((name, _)) = &change
            && file.is_none_or(|f| self.xattrs.touched.contains(&f))
        {
            self.xattrs.adrift.insert(name.to_vec());
        }
        if let (Some(f), Some((name, value))) = (file, change) {
            self.xattrs
                .names
                .entry((f, name.clone()))
                .or_default()
                .changes
                .push(Change {
                    value,
                    sent: seq,
                    answered: None,
                    commits: 0,
                });
        }
        Some(XattrCtx { file, seq })
    }

    /// Checks the answer to an xattr request (invariant 13).
    pub(super) fn xattr_answered(
        &mut self,
        c: usize,
        op: &Op,
        ctx: &XattrCtx,
        result: &Result<Answer, Errno>,
    ) -> Result<(), Violation> {
        let Some(file) = ctx.file else {
            return Ok(());
        };
        let now = self.seq;
        let commits = self.files.commits.len();
        match op {
            Op::SetXattr { name, .. } | Op::RemoveXattr { name, .. } => {
                let removal = matches!(op, Op::RemoveXattr { .. });
                // Removing what is not there leaves it not there.
                let ok = result.is_ok() || (removal && *result == Err(Errno::NoData));
                if let Some(ch) = self
                    .xattrs
                    .names
                    .get_mut(&(file, name.clone()))
                    .and_then(|k| k.changes.iter_mut().find(|ch| ch.sent == ctx.seq))
                {
                    ch.answered = Some((now, ok));
                    ch.commits = commits;
                }
                Ok(())
            }
            Op::GetXattr { ino, name, .. } => {
                let read = match result {
                    Ok(Answer::Xattr(v)) => Some(v.clone()),
                    Err(Errno::NoData) => None,
                    _ => return Ok(()),
                };
                self.check_xattr_read(c, *ino, file, name, ctx.seq, read)
            }
            _ => Ok(()),
        }
    }

    fn check_xattr_read(
        &mut self,
        c: usize,
        ino: Ino,
        file: usize,
        name: &[u8],
        sent: u64,
        read: Option<Vec<u8>>,
    ) -> Result<(), Violation> {
        if self.xattrs.touched.contains(&file) || self.xattrs.adrift.contains(name) {
            // A local program's file, or a name perhaps set on this file
            // through another file's inode.
            return Ok(());
        }
        let now = self.seq;
        let empty = Known::default();
        let known = self
            .xattrs
            .names
            .get(&(file, name.to_vec()))
            .unwrap_or(&empty);
        // The last change acknowledged before the read was sent.
        let before = known
            .changes
            .iter()
            .rfind(|ch| ch.answered.is_some_and(|(a, _)| a < sent));
        let settled = match before {
            None if known.fault == 0 => Some((None, 0)),
            Some(ch) if ch.answered.is_some_and(|(_, ok)| ok) && ch.sent > known.fault => {
                Some((ch.value.clone(), ch.commits))
            }
            // Failed (it may still land), or from before a fault.
            _ => None,
        };
        let Some((value, commits_then)) = settled else {
            return Ok(());
        };
        // In flight while the read was; or failed, and not yet overwritten
        // by a later change acknowledged before the read was sent (it may
        // have landed, even late).
        let maybe = known.changes.iter().enumerate().any(|(i, ch)| {
            ch.value == read
                && ch.sent <= now
                && match ch.answered {
                    None => true,
                    Some((a, true)) => a >= sent,
                    Some((a, false)) => {
                        a >= sent
                            || !known.changes[i + 1..].iter().any(|later| {
                                later.sent > a
                                    && later.answered.is_some_and(|(la, ok)| ok && la < sent)
                            })
                    }
                }
        });
        self.stats.xattr_reads_checked += 1;
        if value == read || maybe {
            let committed_since = self.files.commits[commits_then.min(self.files.commits.len())..]
                .iter()
                .any(|&(f, _, _)| f == file);
            if value == read && value.is_some() && committed_since {
                self.stats.xattrs_across_commits += 1;
            }
            return Ok(());
        }
        Err(self.violation(format!(
            "client {c} read attribute {:?} of file {file} ({ino:?}) as {:?}, but the last change acknowledged before made it {:?}",
            String::from_utf8_lossy(name),
            read.as_deref().map(String::from_utf8_lossy),
            value.as_deref().map(String::from_utf8_lossy),
        )))
    }
}

/// One xattr action of client `c` on a file it knows, if any: set (half
/// the time), remove, or read any client's name.
pub(crate) fn xattr_op(
    sim: &Sim,
    c: usize,
    ino: Ino,
    roll: u64,
    k: u64,
    reader_of: usize,
    value: Vec<u8>,
) -> Option<Op> {
    let mine = xattr_name(c, k);
    match roll % 10 {
        0..5 if !sim.xattr_busy(c, &mine) => Some(Op::SetXattr {
            ino,
            name: mine,
            value,
            how: XattrSet::Either,
        }),
        5..7 if !sim.xattr_busy(c, &mine) => Some(Op::RemoveXattr { ino, name: mine }),
        7.. => Some(Op::GetXattr {
            ino,
            name: xattr_name(reader_of, k),
            size: 4096,
        }),
        _ => None,
    }
}
