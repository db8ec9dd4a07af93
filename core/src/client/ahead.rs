//! Open-ahead: opens of a directory's small files made before the kernel
//! asks for them.
//!
//! A program that reads a directory's files one after another (`cat *`,
//! `tar c`, `grep -r`, a compiler) waits a whole round trip per open, and
//! with small files that wait is nearly all of its time. When two opens in
//! a row are of neighbouring entries of one cached listing, the next
//! [`OpenAhead::WINDOW`] small files of that listing are opened too, in
//! parallel; the kernel's open of one of them is then answered from its
//! open-ahead (or joins it while it is in flight) instead of asking again.
//!
//! **Consistency.** An open-ahead stands for a real open only while the
//! attributes it brought would themselves be trusted: for the attribute
//! TTL after it was answered, while no invalidation for the file arrived
//! (the host pushes one for every change), while no write of this mount
//! is open on the file, and while what this mount knows of the file has
//! the same version. That is the window the attribute cache already
//! accepts for `stat`; it only matters for a change racing the open.
//! An open-ahead not used within it is closed at the host.

use super::Req;
use crate::Instant;
use crate::proto::{Attr, CHUNK_SIZE, DirEntry, FileKind, HandleId, Name, NodeId, Reply};
use crate::vfs::Ino;
use bytes::Bytes;
use std::collections::BTreeMap;

/// What the host answered to an open.
#[derive(Clone, Debug)]
pub(super) struct Opened {
    pub(super) handle: HandleId,
    pub(super) attr: Attr,
    pub(super) inline: Bytes,
}

impl Opened {
    /// The open a host reply carries, if it is one.
    pub(super) fn from_reply(reply: Reply) -> Option<Self> {
        match reply {
            Reply::Opened {
                handle,
                attr,
                inline,
                ..
            } => Some(Opened {
                handle,
                attr,
                inline,
            }),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Ahead {
    /// Asked; the kernel's open that came meanwhile waits for the answer.
    Asked {
        waiting: Option<(Req, Ino)>,
        /// An invalidation arrived meanwhile: the answer may predate it.
        spoiled: bool,
    },
    /// Answered, usable until `expires`.
    Ready { opened: Opened, expires: Instant },
}

/// What the kernel's open of a file gets from open-ahead.
#[derive(Debug)]
pub(super) enum Take {
    /// Its open, answered already.
    Ready(Opened),
    /// Its open is in flight; the request waits for it.
    Joined,
    /// Nothing: ask the host.
    Miss,
}

/// The open-aheads of one client, and where in which listing the last
/// open was (to tell a sweep through a directory from a single open).
#[derive(Debug, Default)]
pub(super) struct OpenAhead {
    entries: BTreeMap<NodeId, Ahead>,
    /// The directory and listing position of the last open.
    cursor: Option<(NodeId, usize)>,
}

impl OpenAhead {
    /// Files opened ahead of a sweep at most: enough to cover a round trip
    /// of opens of small files, few enough to cost the host little when
    /// the sweep stops.
    pub(super) const WINDOW: usize = 8;

    /// Open-aheads held at most (a sweep that moves on leaves its last
    /// window behind until it expires).
    const MAX: usize = 2 * Self::WINDOW;

    /// The kernel opens `node`: its open-ahead if one is usable. `valid`
    /// says whether an answered one may still stand for a real open (the
    /// client's own checks); one that may not is handed back in `stale`
    /// for closing.
    pub(super) fn take(
        &mut self,
        now: Instant,
        node: NodeId,
        req: Req,
        ino: Ino,
        valid: impl FnOnce(&Attr) -> bool,
        stale: &mut Vec<HandleId>,
    ) -> Take {
        match self.entries.get_mut(&node) {
            Some(Ahead::Asked {
                waiting: w @ None,
                spoiled: false,
            }) => {
                *w = Some((req, ino));
                Take::Joined
            }
            Some(Ahead::Ready { opened, expires }) => {
                let usable = now < *expires && valid(&opened.attr);
                let Some(Ahead::Ready { opened, .. }) = self.entries.remove(&node) else {
                    return Take::Miss;
                };
                if usable {
                    Take::Ready(opened)
                } else {
                    stale.push(opened.handle);
                    Take::Miss
                }
            }
            _ => Take::Miss,
        }
    }

    /// The kernel opened entry `name` of directory `dir`, whose listing is
    /// `entries`: the files to open ahead now (small regular files after
    /// it, not yet opened ahead), if the opens look like a sweep.
    pub(super) fn next(&mut self, dir: NodeId, name: &Name, entries: &[DirEntry]) -> Vec<NodeId> {
        let guess = match self.cursor {
            Some((d, at)) if d == dir => at + 1,
            _ => 0,
        };
        // Hosts list in name order, so a jump costs a binary search, not
        // a scan of a huge directory per open (a listing out of order only
        // means no open-ahead).
        let found = entries
            .get(guess)
            .filter(|e| e.name == *name)
            .map(|_| guess)
            .or_else(|| entries.binary_search_by(|e| e.name.cmp(name)).ok());
        let Some(at) = found else {
            self.cursor = None;
            return Vec::new();
        };
        // A sweep: the last open was of an earlier entry of the same
        // listing, not far back (a window's worth of entries may be
        // skipped: directories and large files are not opened ahead).
        let sweep = matches!(self.cursor,
            Some((d, last)) if d == dir && last < at && at - last <= Self::WINDOW + 1);
        self.cursor = Some((dir, at));
        if !sweep {
            return Vec::new();
        }
        let room = Self::MAX.saturating_sub(self.entries.len());
        let picked: Vec<NodeId> = entries[at + 1..]
            .iter()
            .take(Self::WINDOW)
            .filter(|e| e.attr.kind == FileKind::File && e.attr.size <= CHUNK_SIZE as u64)
            .map(|e| e.attr.node)
            .filter(|n| !self.entries.contains_key(n))
            .take(room)
            .collect();
        for &n in &picked {
            self.entries.insert(
                n,
                Ahead::Asked {
                    waiting: None,
                    spoiled: false,
                },
            );
        }
        picked
    }

    /// The host answered the open-ahead of `node`. Returns the kernel's
    /// open waiting for it, with the answer; otherwise keeps the answer
    /// until `expires`, or hands back its handle for closing if the answer
    /// came spoiled (or nobody asked).
    pub(super) fn answered(&mut self, node: NodeId, opened: Opened, expires: Instant) -> Answered {
        match self.entries.remove(&node) {
            Some(Ahead::Asked {
                waiting: Some((req, ino)),
                spoiled: false,
            }) => Answered::Waiting(req, ino, opened),
            Some(Ahead::Asked {
                waiting,
                spoiled: true,
            }) => Answered::Spoiled(opened.handle, waiting),
            Some(Ahead::Asked {
                waiting: None,
                spoiled: false,
            }) => {
                self.entries.insert(node, Ahead::Ready { opened, expires });
                Answered::Kept
            }
            Some(ready @ Ahead::Ready { .. }) => {
                self.entries.insert(node, ready);
                Answered::Spoiled(opened.handle, None)
            }
            None => Answered::Spoiled(opened.handle, None),
        }
    }

    /// The open-ahead of `node` failed or will never be answered: the
    /// kernel's open waiting for it, if any.
    pub(super) fn failed(&mut self, node: NodeId) -> Option<(Req, Ino)> {
        match self.entries.remove(&node) {
            Some(Ahead::Asked { waiting, .. }) => waiting,
            Some(ready) => {
                self.entries.insert(node, ready);
                None
            }
            None => None,
        }
    }

    /// `node` changed (or may have): its open-ahead no longer stands for
    /// a real open. Returns the handle to close, if it was answered.
    pub(super) fn spoil(&mut self, node: NodeId) -> Option<HandleId> {
        match self.entries.get_mut(&node) {
            Some(Ahead::Asked { spoiled, .. }) => {
                *spoiled = true;
                None
            }
            Some(Ahead::Ready { .. }) => match self.entries.remove(&node) {
                Some(Ahead::Ready { opened, .. }) => Some(opened.handle),
                _ => None,
            },
            None => None,
        }
    }

    /// Everything may have changed: every open-ahead is spoiled. Returns
    /// the handles of the answered ones.
    pub(super) fn spoil_all(&mut self) -> Vec<HandleId> {
        let nodes: Vec<NodeId> = self.entries.keys().copied().collect();
        nodes.into_iter().filter_map(|n| self.spoil(n)).collect()
    }

    /// The answered open-aheads that expired by `now`, removed: their
    /// handles, for closing.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<HandleId> {
        let due: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, a)| matches!(a, Ahead::Ready { expires, .. } if *expires <= now))
            .map(|(&n, _)| n)
            .collect();
        due.into_iter()
            .filter_map(|n| match self.entries.remove(&n) {
                Some(Ahead::Ready { opened, .. }) => Some(opened.handle),
                _ => None,
            })
            .collect()
    }

    /// When the next answered open-ahead expires.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|a| match a {
                Ahead::Ready { expires, .. } => Some(*expires),
                Ahead::Asked { .. } => None,
            })
            .min()
    }

    /// The host's session ended: its handles are gone with it. Answered
    /// open-aheads are dropped; asked ones are failed by the client's
    /// requests.
    pub(super) fn forget_answered(&mut self) {
        self.entries.retain(|_, a| matches!(a, Ahead::Asked { .. }));
        self.cursor = None;
    }
}

/// What became of an open-ahead's answer.
#[derive(Debug)]
pub(super) enum Answered {
    /// The kernel's open `Req` of `Ino` waited for it: answer it.
    Waiting(Req, Ino, Opened),
    /// Kept for the kernel's open to come.
    Kept,
    /// Not usable: close the handle; a kernel open that waited must ask
    /// the host itself.
    Spoiled(HandleId, Option<(Req, Ino)>),
}
