//! The client's inode table (docs/filesystem.md, "Inodes"): kernel inode numbers ↔ host nodes,
//! the path map, lookup counts, open handles and orphans.
//!
//! The kernel names files by inode number and promises to `forget` each
//! one exactly as many times as we returned it from a lookup (`nlookup`).
//! An inode number may therefore be reused only when the kernel has
//! forgotten it **and** no open handle still refers to it; until both are
//! true the number stays reserved, even for a file the host has deleted.
//!
//! ```text
//! Available ──allocate──► Allocated ──lookup──► Active ──forget(0)──► Available
//!                            │ (known, nlookup 0)   │ deleted with handles open
//!                            └──dropped──► Available ▼
//!                                                 Orphan ──last close + forget──► Available
//! ```
//!
//! The path map is (parent inode, name) → inode. A child refers to its
//! parent by inode, so renaming a directory moves its whole subtree at once
//! and the map stays consistent.

use crate::proto::{Attr, FileKey, FileKind, Name, NodeId};
use std::collections::BTreeMap;
use thiserror::Error;

/// A kernel inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl Ino {
    /// The root of the mount, always 1 (FUSE's FUSE_ROOT_ID).
    pub const ROOT: Ino = Ino(1);
    /// The first inode number handed out for anything but the root.
    pub const FIRST_USER: Ino = Ino(2);
}

/// Where an inode is in its life (docs/filesystem.md, "Inodes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InodeState {
    /// Known (from a directory listing) but not yet returned by a lookup.
    Allocated,
    /// Returned by a lookup; the kernel holds references.
    Active,
    /// Deleted on the host while still referenced: open handles keep
    /// reading it; the name is gone.
    Orphan,
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Its number.
    pub ino: Ino,
    /// The host node it stands for.
    pub node: NodeId,
    /// The identity of the file on the host's disk, as last learned (a
    /// re-bind after a host restart requires the same one).
    pub key: FileKey,
    /// Parent directory and name of each of its names (a file with hard
    /// links has several, a directory one); empty for the root and for
    /// orphans.
    pub links: Vec<(Ino, Name)>,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Lookups the kernel has not yet forgotten.
    pub nlookup: u64,
    /// Open handles.
    pub open: u32,
    /// Lifecycle state.
    pub state: InodeState,
    /// Whether `node` is valid for the current host session (false after
    /// the host restarted, until the inode is looked up again).
    pub bound: bool,
    /// An orphan because another file took its place ([`Vfs::set_aside`]),
    /// not because it was deleted: the kernel, which may still reach it
    /// through a name it has not dropped yet, is told to look the name
    /// up again (ESTALE) rather than that it is gone.
    pub replaced: bool,
}

impl Inode {
    /// Its first name: parent directory and name.
    pub fn link(&self) -> Option<&(Ino, Name)> {
        self.links.first()
    }
}

/// Why an inode operation was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VfsError {
    /// No inode with that number (never allocated, or freed).
    #[error("unknown inode {0:?}")]
    UnknownInode(Ino),
    /// The parent is not a directory.
    #[error("inode {0:?} is not a directory")]
    NotDir(Ino),
    /// More forgets or closes than lookups or opens: a caller bug, refused
    /// rather than wrapping around.
    #[error("inode {0:?}: count underflow")]
    Underflow(Ino),
    /// The table is full.
    #[error("inode table full ({0} inodes)")]
    Full(usize),
}

/// Hands out inode numbers, reusing freed ones first.
#[derive(Clone, Debug)]
struct Allocator {
    next: u64,
    free: Vec<u64>,
}

impl Allocator {
    fn allocate(&mut self) -> Ino {
        if let Some(n) = self.free.pop() {
            return Ino(n);
        }
        let n = self.next;
        self.next += 1;
        Ino(n)
    }

    fn release(&mut self, ino: Ino) {
        // The root is never recycled.
        if ino.0 >= Ino::FIRST_USER.0 {
            self.free.push(ino.0);
        }
    }
}

/// The inode table of one mount.
#[derive(Clone, Debug)]
pub struct Vfs {
    inodes: BTreeMap<Ino, Inode>,
    by_node: BTreeMap<NodeId, Ino>,
    children: BTreeMap<(Ino, Name), Ino>,
    alloc: Allocator,
    max_inodes: usize,
}

impl Vfs {
    /// A table holding only the root, which stands for `root`.
    pub fn new(root: NodeId, max_inodes: usize) -> Self {
        let mut vfs = Vfs {
            inodes: BTreeMap::new(),
            by_node: BTreeMap::new(),
            children: BTreeMap::new(),
            alloc: Allocator {
                next: Ino::FIRST_USER.0,
                free: Vec::new(),
            },
            max_inodes: max_inodes.max(1),
        };
        vfs.inodes.insert(
            Ino::ROOT,
            Inode {
                ino: Ino::ROOT,
                node: root,
                key: FileKey { dev: 0, ino: 0 },
                links: Vec::new(),
                kind: FileKind::Dir,
                // The kernel never forgets the root.
                nlookup: 1,
                open: 0,
                state: InodeState::Active,
                bound: true,
                replaced: false,
            },
        );
        vfs.by_node.insert(root, Ino::ROOT);
        vfs
    }

    /// The inode with this number.
    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// The host node behind an inode, unless it is an orphan (whose name is
    /// gone; reach it through its open handles) or not yet bound to the
    /// current host session.
    pub fn node(&self, ino: Ino) -> Option<NodeId> {
        self.inodes
            .get(&ino)
            .filter(|i| i.state != InodeState::Orphan && i.bound)
            .map(|i| i.node)
    }

    /// The named (not orphaned) inode for a host node, if known.
    pub fn ino_of(&self, node: NodeId) -> Option<Ino> {
        self.by_node.get(&node).copied().filter(|ino| {
            self.inodes
                .get(ino)
                .is_some_and(|i| i.state != InodeState::Orphan)
        })
    }

    /// The child `name` of directory `parent`, if known.
    pub fn child(&self, parent: Ino, name: &Name) -> Option<Ino> {
        self.children.get(&(parent, name.clone())).copied()
    }

    /// Number of inodes held (root included).
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    /// Whether only the root is held.
    pub fn is_empty(&self) -> bool {
        self.inodes.len() <= 1
    }

    /// The path of an inode from the root, as names; `None` for orphans
    /// and unknown inodes.
    pub fn path(&self, ino: Ino) -> Option<Vec<Name>> {
        let mut names = Vec::new();
        let mut at = self.inodes.get(&ino)?;
        // Depth is bounded by the number of inodes, so a corrupted cycle
        // cannot loop forever.
        for _ in 0..=self.inodes.len() {
            match at.link() {
                None if at.ino == Ino::ROOT => {
                    names.reverse();
                    return Some(names);
                }
                None => return None,
                Some((parent, name)) => {
                    names.push(name.clone());
                    at = self.inodes.get(parent)?;
                }
            }
        }
        None
    }

    /// Records that `parent` contains `name` = `attr` (from a lookup,
    /// create, mkdir or symlink reply) and returns its inode. With
    /// `lookup`, the kernel now holds one more reference (Active); without
    /// (a directory listing), the entry is only Allocated.
    pub fn learn(
        &mut self,
        parent: Ino,
        name: Name,
        attr: &Attr,
        lookup: bool,
    ) -> Result<Ino, VfsError> {
        let dir = self
            .inodes
            .get(&parent)
            .ok_or(VfsError::UnknownInode(parent))?;
        if dir.kind != FileKind::Dir {
            return Err(VfsError::NotDir(parent));
        }
        // A different node under this name replaced the old one.
        if let Some(old) = self.children.get(&(parent, name.clone())).copied()
            && self.inodes.get(&old).is_some_and(|i| i.node != attr.node)
        {
            self.detach(old);
        }
        let ino = match self.by_node.get(&attr.node).copied() {
            Some(ino) if attr.kind != FileKind::Dir && attr.nlink > 1 => {
                // Known node: one more name of a file with several.
                self.add_link(ino, parent, name);
                ino
            }
            Some(ino) => {
                // Known node, possibly under another name (renamed on the
                // host): move it here.
                self.relink(ino, parent, name);
                ino
            }
            None => {
                if self.inodes.len() >= self.max_inodes {
                    return Err(VfsError::Full(self.max_inodes));
                }
                let ino = self.alloc.allocate();
                self.inodes.insert(
                    ino,
                    Inode {
                        ino,
                        node: attr.node,
                        key: attr.key,
                        links: Vec::new(),
                        kind: attr.kind,
                        nlookup: 0,
                        open: 0,
                        state: InodeState::Allocated,
                        bound: true,
                        replaced: false,
                    },
                );
                self.by_node.insert(attr.node, ino);
                self.relink(ino, parent, name);
                ino
            }
        };
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.key = attr.key;
        }
        if lookup && let Some(inode) = self.inodes.get_mut(&ino) {
            inode.nlookup += 1;
            if inode.state == InodeState::Allocated {
                inode.state = InodeState::Active;
            }
        }
        Ok(ino)
    }

    /// Gives `ino` `parent/name` as its only name.
    fn relink(&mut self, ino: Ino, parent: Ino, name: Name) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        for old in inode.links.drain(..) {
            self.children.remove(&old);
        }
        self.add_link(ino, parent, name);
    }

    /// Gives `ino` the name `parent/name` besides those it has.
    fn add_link(&mut self, ino: Ino, parent: Ino, name: Name) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        let link = (parent, name);
        if !inode.links.contains(&link) {
            inode.links.push(link.clone());
        }
        if inode.state == InodeState::Orphan {
            inode.state = if inode.nlookup > 0 {
                InodeState::Active
            } else {
                InodeState::Allocated
            };
        }
        self.children.insert(link, ino);
        debug_assert!(self.consistent(ino));
    }

    /// Whether `ino`'s names and the name index agree (each name leads
    /// back to it, none twice, a directory has one, an orphan none): the
    /// postcondition of each change of names.
    fn consistent(&self, ino: Ino) -> bool {
        match self.inodes.get(&ino) {
            // (Gone: its names went with it in `detach`.)
            None => true,
            Some(i) => {
                let unique = i
                    .links
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == i.links.len();
                unique
                    && (i.kind != FileKind::Dir || i.links.len() <= 1)
                    && (i.state != InodeState::Orphan || i.links.is_empty())
                    && i.links.iter().all(|l| self.children.get(l) == Some(&ino))
            }
        }
    }

    /// Takes the name `parent/name` from `ino`; with its last name gone
    /// it is detached ([`Self::detach`]).
    fn unname(&mut self, ino: Ino, parent: Ino, name: &Name) {
        let link = (parent, name.clone());
        match self.inodes.get_mut(&ino) {
            Some(inode) if inode.links.len() > 1 => {
                inode.links.retain(|l| *l != link);
                self.children.remove(&link);
            }
            _ => self.detach(ino),
        }
        debug_assert!(self.consistent(ino));
    }

    /// The kernel forgets `n` lookups of `ino`.
    pub fn forget(&mut self, ino: Ino, n: u64) -> Result<(), VfsError> {
        if ino == Ino::ROOT {
            return Ok(());
        }
        let inode = self
            .inodes
            .get_mut(&ino)
            .ok_or(VfsError::UnknownInode(ino))?;
        inode.nlookup = inode
            .nlookup
            .checked_sub(n)
            .ok_or(VfsError::Underflow(ino))?;
        self.maybe_free(ino);
        Ok(())
    }

    /// The kernel took one more lookup reference on `ino` without a lookup
    /// (an entry of a readdirplus answer).
    pub fn looked_up(&mut self, ino: Ino) -> Result<(), VfsError> {
        let inode = self
            .inodes
            .get_mut(&ino)
            .ok_or(VfsError::UnknownInode(ino))?;
        inode.nlookup += 1;
        if inode.state == InodeState::Allocated {
            inode.state = InodeState::Active;
        }
        Ok(())
    }

    /// A handle was opened on `ino`.
    pub fn open(&mut self, ino: Ino) -> Result<(), VfsError> {
        let inode = self
            .inodes
            .get_mut(&ino)
            .ok_or(VfsError::UnknownInode(ino))?;
        inode.open = inode.open.saturating_add(1);
        Ok(())
    }

    /// A handle on `ino` was closed.
    pub fn close(&mut self, ino: Ino) -> Result<(), VfsError> {
        let inode = self
            .inodes
            .get_mut(&ino)
            .ok_or(VfsError::UnknownInode(ino))?;
        inode.open = inode.open.checked_sub(1).ok_or(VfsError::Underflow(ino))?;
        self.maybe_free(ino);
        Ok(())
    }

    /// The name `name` in `parent` was removed (unlink, rmdir, or replaced
    /// by a rename). Its inode loses that name; with its last one gone, if
    /// it is still referenced it lives on as an Orphan.
    pub fn unlink(&mut self, parent: Ino, name: &Name) {
        if let Some(ino) = self.children.get(&(parent, name.clone())).copied() {
            self.unname(ino, parent, name);
        }
    }

    /// The host reports `node` gone (deleted by someone else).
    pub fn node_gone(&mut self, node: NodeId) {
        if let Some(ino) = self.by_node.get(&node).copied()
            && ino != Ino::ROOT
        {
            self.detach(ino);
        }
    }

    /// Another file took the place of `ino`'s on the host (a commit
    /// renamed a new version over it) while handles here still read the
    /// old one: `ino` keeps the old file for them as an orphan, and the
    /// node's next lookup gets a new inode. A local disk does the same
    /// for a file renamed over an open one; sharing one inode would let
    /// the new version's size cut the old one's reads short.
    pub fn set_aside(&mut self, ino: Ino) {
        let Some(node) = self.inodes.get(&ino).map(|i| i.node) else {
            return;
        };
        if ino == Ino::ROOT {
            return;
        }
        self.detach(ino);
        if self.by_node.get(&node) == Some(&ino) {
            self.by_node.remove(&node);
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.replaced = true;
        }
    }

    /// `parent/name` was renamed to `new_parent/new_name`, replacing any
    /// entry there.
    pub fn rename(&mut self, parent: Ino, name: &Name, new_parent: Ino, new_name: Name) {
        let Some(ino) = self.children.get(&(parent, name.clone())).copied() else {
            // Not known here: whatever was at the target is replaced.
            self.unlink(new_parent, &new_name);
            return;
        };
        match self.children.get(&(new_parent, new_name.clone())).copied() {
            // Two names of one file: rename(2) leaves both.
            Some(target) if target == ino => return,
            Some(target) => self.unname(target, new_parent, &new_name),
            None => {}
        }
        let from = (parent, name.clone());
        self.children.remove(&from);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.links.retain(|l| *l != from);
        }
        self.add_link(ino, new_parent, new_name);
    }

    /// Removes an inode's names and its node mapping: it is either freed
    /// at once or kept as an orphan while referenced. Its children (if a
    /// directory) lose their names there too.
    fn detach(&mut self, ino: Ino) {
        let mut stack = vec![ino];
        while let Some(ino) = stack.pop() {
            let Some(inode) = self.inodes.get_mut(&ino) else {
                continue;
            };
            for link in inode.links.drain(..) {
                self.children.remove(&link);
            }
            // The node mapping stays while the inode lives: the host never
            // reuses a node id within its run, so if the node shows up again
            // the name was lost by a stale reply (replies to concurrent
            // requests arrive in any order), and `learn` gives the kernel
            // back the same inode instead of a second one for one file.
            inode.state = InodeState::Orphan;
            let kids: Vec<(Name, Ino)> = self
                .children
                .range((ino, Name::min())..)
                .take_while(|((p, _), _)| *p == ino)
                .map(|((_, name), &c)| (name.clone(), c))
                .collect();
            for (name, kid) in kids {
                let link = (ino, name);
                self.children.remove(&link);
                // A file linked from another directory too keeps that
                // name.
                if let Some(k) = self.inodes.get_mut(&kid) {
                    k.links.retain(|l| *l != link);
                    if k.links.is_empty() {
                        stack.push(kid);
                    }
                }
            }
            self.maybe_free(ino);
        }
    }

    /// Frees an inode once nothing can name it any more: the kernel has
    /// forgotten it, no handle is open, and (for a never-looked-up entry)
    /// it has lost its name.
    fn maybe_free(&mut self, ino: Ino) {
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        if ino == Ino::ROOT || inode.nlookup > 0 || inode.open > 0 {
            return;
        }
        // Allocated entries with a name are kept (they make the next
        // lookup cheap) until they are forgotten on purpose or orphaned.
        if inode.state == InodeState::Allocated && !inode.links.is_empty() {
            return;
        }
        let inode = self.inodes.remove(&ino).expect("checked above");
        for link in &inode.links {
            self.children.remove(link);
        }
        if self.by_node.get(&inode.node) == Some(&ino) {
            self.by_node.remove(&inode.node);
        }
        self.alloc.release(ino);
    }

    /// Drops Allocated entries that nobody references (a listing of a huge
    /// directory need not stay in memory).
    pub fn trim_unreferenced(&mut self) {
        let idle: Vec<Ino> = self
            .inodes
            .values()
            .filter(|i| i.state == InodeState::Allocated && i.nlookup == 0 && i.open == 0)
            .map(|i| i.ino)
            .collect();
        for ino in idle {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.state = InodeState::Orphan;
            }
            self.detach(ino);
        }
    }

    /// After the host restarted, its node ids mean nothing: every inode but
    /// the root becomes unbound (inode numbers stay: the kernel still holds
    /// them) until [`Self::rebind`] gives it its new node.
    pub fn unbind_nodes(&mut self, new_root: NodeId) {
        self.by_node.clear();
        for inode in self.inodes.values_mut() {
            inode.bound = inode.ino == Ino::ROOT;
        }
        if let Some(root) = self.inodes.get_mut(&Ino::ROOT) {
            root.node = new_root;
        }
        self.by_node.insert(new_root, Ino::ROOT);
    }

    /// Unbound, named inodes whose parent is bound: the ones that can be
    /// looked up again now, as (inode, parent's node, name).
    pub fn rebindable(&self) -> Vec<(Ino, NodeId, Name)> {
        self.inodes
            .values()
            .filter(|i| !i.bound)
            .filter_map(|i| {
                let (parent, name) = i.link()?;
                let p = self.inodes.get(parent).filter(|p| p.bound)?;
                Some((i.ino, p.node, name.clone()))
            })
            .collect()
    }

    /// The file behind `ino` got a new identity on the host's disk (its
    /// own committed write replaced it by a new version).
    pub fn set_key(&mut self, ino: Ino, key: FileKey) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.key = key;
        }
    }

    /// Binds an inode to its node in the new host session, or to the
    /// node the host gave its file after forgetting the old one (news of
    /// the old node no longer reaches it).
    pub fn rebind(&mut self, ino: Ino, node: NodeId) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if self.by_node.get(&inode.node) == Some(&ino) {
                self.by_node.remove(&inode.node);
            }
            inode.node = node;
            inode.bound = true;
            self.by_node.insert(node, ino);
        }
    }

    /// The inode's name is gone in the new host session: it loses its name
    /// (and its subtree with it), like a file deleted on the host.
    pub fn unbind_gone(&mut self, ino: Ino) {
        if ino != Ino::ROOT {
            self.detach(ino);
        }
    }
}

impl Name {
    /// The smallest name, for range scans over a directory's children.
    fn min() -> Name {
        Name::new(vec![1u8]).unwrap_or_else(|_| unreachable!("a single 0x01 byte is a valid name"))
    }
}

#[cfg(test)]
mod tests;
