//! The host's file index: node ids ↔ paths beneath the shared root.
//!
//! Clients name files by [`NodeId`]; the disk knows paths. A node records
//! its names (parent and name), so a rename re-points one record and the
//! whole subtree moves with it, and a path is rebuilt by walking up
//! (depth is bounded by the table size). A directory has one name; a
//! file with hard links has one node with several, so every name shows
//! one file to clients. Ids are never reused within a host run, so a
//! stale id held by a client can only miss, never name another file.

use super::fsop::RelPath;
use crate::proto::{FileKey, FileKind, Name, NodeId};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// Parent and name of each of its names, the one paths are built
    /// from first; empty for the root.
    links: Vec<(NodeId, Name)>,
    key: FileKey,
    kind: FileKind,
}

/// The index of one host run.
#[derive(Clone, Debug)]
pub struct NodeTable {
    nodes: BTreeMap<NodeId, Node>,
    children: BTreeMap<(NodeId, Name), NodeId>,
    /// Nodes by identity: to follow a directory a local program moved
    /// ([`Self::dir_by_key`]), and to find the node of a file seen under
    /// another of its names (a hard link).
    by_key: BTreeMap<FileKey, NodeId>,
    next: u64,
    max_nodes: usize,
}

impl NodeTable {
    /// A table holding the root only.
    pub fn new(root_key: FileKey, max_nodes: usize) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            NodeId::ROOT,
            Node {
                links: Vec::new(),
                key: root_key,
                kind: FileKind::Dir,
            },
        );
        NodeTable {
            nodes,
            children: BTreeMap::new(),
            by_key: BTreeMap::new(),
            next: NodeId::ROOT.0 + 1,
            max_nodes: max_nodes.max(1),
        }
    }

    /// Number of nodes (root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Whether `node` is known.
    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// The kind of a known node.
    pub fn kind(&self, node: NodeId) -> Option<FileKind> {
        self.nodes.get(&node).map(|n| n.kind)
    }

    /// The path of a node (by its first name).
    pub fn path(&self, node: NodeId) -> Option<RelPath> {
        let mut names = Vec::new();
        let mut at = node;
        for _ in 0..=self.nodes.len() {
            let n = self.nodes.get(&at)?;
            match n.links.first() {
                None if at == NodeId::ROOT => {
                    names.reverse();
                    return Some(RelPath::from(names));
                }
                None => return None,
                Some((parent, name)) => {
                    names.push(name.clone());
                    at = *parent;
                }
            }
        }
        None
    }

    /// The ancestors of a node, parent first, root last (for subtree
    /// locks; by its first name).
    pub fn ancestors(&self, node: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut at = node;
        while let Some((parent, _)) = self.nodes.get(&at).and_then(|n| n.links.first()) {
            if out.len() > self.nodes.len() {
                break;
            }
            out.push(*parent);
            at = *parent;
        }
        out
    }

    /// The child `name` of `parent`, if indexed.
    pub fn child(&self, parent: NodeId, name: &Name) -> Option<NodeId> {
        self.children.get(&(parent, name.clone())).copied()
    }

    /// Whether `id`'s names and the name index agree (each name of it
    /// leads back to it, none twice, a directory has one): the
    /// postcondition of each change of names below.
    fn consistent(&self, id: NodeId) -> bool {
        match self.nodes.get(&id) {
            // (Gone: its names went with it in `forget`.)
            None => true,
            Some(n) => {
                let unique = n
                    .links
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == n.links.len();
                unique
                    && (n.kind != FileKind::Dir || n.links.len() <= 1)
                    && n.links.iter().all(|l| self.children.get(l) == Some(&id))
            }
        }
    }

    /// How many names of `node` are indexed.
    pub fn names(&self, node: NodeId) -> usize {
        self.nodes.get(&node).map_or(0, |n| n.links.len())
    }

    /// Records that `parent/name` exists with this identity and link
    /// count, and returns its node id: the existing one if the same file
    /// is already indexed there, or (a file with other names) under
    /// another name; a new one otherwise (a different file under a known
    /// name replaces the old record). `None` when the table is full: the
    /// caller answers the request with a transient error.
    pub fn learn(
        &mut self,
        parent: NodeId,
        name: &Name,
        key: FileKey,
        kind: FileKind,
        nlink: u32,
    ) -> Option<NodeId> {
        if let Some(id) = self.child(parent, name)
            && self
                .nodes
                .get(&id)
                .is_some_and(|n| n.key == key && n.kind == kind)
        {
            return Some(id);
        }
        let known = self
            .by_key
            .get(&key)
            .copied()
            .filter(|id| self.kind(*id) == Some(kind));
        // A directory has one name: one indexed elsewhere with this
        // identity was moved here (by a local program; its watcher event
        // may not have come yet). Its node follows, with what is beneath.
        if kind == FileKind::Dir
            && let Some(moved) = known
            && let Some((old_parent, old_name)) = self.link(moved)
            && moved != parent
            && !self.ancestors(parent).contains(&moved)
        {
            self.rename(old_parent, &old_name, parent, name);
            return Some(moved);
        }
        self.unname(parent, name);
        // A file with more names than one: indexed under another, it is
        // the same node. (With one name, a node of that identity is a
        // stale record of a file gone, whose inode number was reused.)
        if kind != FileKind::Dir
            && nlink > 1
            && let Some(same) = known
            && let Some(n) = self.nodes.get_mut(&same)
        {
            // Paths are built from the name just seen to exist.
            n.links.insert(0, (parent, name.clone()));
            self.children.insert((parent, name.clone()), same);
            debug_assert!(self.consistent(same));
            return Some(same);
        }
        if self.nodes.len() >= self.max_nodes {
            return None;
        }
        let id = NodeId(self.next);
        self.next += 1;
        self.insert(id, parent, name, key, kind);
        Some(id)
    }

    /// Records node `id` at `parent/name`, where no node is.
    fn insert(&mut self, id: NodeId, parent: NodeId, name: &Name, key: FileKey, kind: FileKind) {
        self.nodes.insert(
            id,
            Node {
                links: vec![(parent, name.clone())],
                key,
                kind,
            },
        );
        self.children.insert((parent, name.clone()), id);
        self.by_key.insert(key, id);
        debug_assert!(self.consistent(id));
    }

    /// Sets aside `count` ids for a lease holder to give the files it
    /// creates ([`Self::bind`]); `None` if the table could not hold them
    /// all. The ids are never handed out by [`Self::learn`]; those the
    /// holder leaves unused are simply never seen.
    pub fn reserve(&mut self, count: u32) -> Option<NodeId> {
        if self.nodes.len() + count as usize > self.max_nodes {
            return None;
        }
        let first = NodeId(self.next);
        self.next += u64::from(count);
        Some(first)
    }

    /// Records that the host just made `parent/name` another name of node
    /// `id`'s file (a hard link, the file's identity checked): the node
    /// has that name, paths built from it first (as [`Self::learn`] does
    /// for a name seen). A record left at that name goes: a stale one of
    /// the same identity, a file a local program moved away (files are not
    /// followed: it keeps its node under its old name), would otherwise be
    /// taken for the file there, one file under two nodes. Returns the ids
    /// forgotten with it; `None` (nothing changed) if `id` is not a known
    /// file, or a directory's record holds the name. A name in a
    /// directory no longer known here (moved or removed meanwhile) is not
    /// recorded: its path would lead nowhere.
    pub fn add_name(&mut self, id: NodeId, parent: NodeId, name: &Name) -> Option<Vec<NodeId>> {
        let key = self.nodes.get(&id).filter(|n| n.kind != FileKind::Dir)?.key;
        if self.kind(parent) != Some(FileKind::Dir) {
            return Some(Vec::new());
        }
        match self.child(parent, name) {
            Some(there) if there == id => return Some(Vec::new()),
            // (Forgetting it would take its subtree; a link never goes
            // where a directory is.)
            Some(there) if self.kind(there) == Some(FileKind::Dir) => return None,
            _ => {}
        }
        // A file's record: it goes alone, `id` stays.
        let gone = self.unname(parent, name);
        let n = self.nodes.get_mut(&id)?;
        n.links.insert(0, (parent, name.clone()));
        self.children.insert((parent, name.clone()), id);
        self.by_key.insert(key, id);
        debug_assert!(self.consistent(id));
        Some(gone)
    }

    /// Records that a file the host just created at `parent/name` is node
    /// `id`, reserved earlier ([`Self::reserve`]) and not yet used. A
    /// stale record of that name is replaced, as [`Self::learn`] does.
    /// Not bounded by `max_nodes`: the reservation was.
    pub fn bind(&mut self, id: NodeId, parent: NodeId, name: &Name, key: FileKey, kind: FileKind) {
        debug_assert!(id.0 < self.next && !self.nodes.contains_key(&id));
        self.unname(parent, name);
        self.insert(id, parent, name, key, kind);
    }

    /// The indexed directory with identity `key`, if any (the root is
    /// not: it never moves).
    pub fn dir_by_key(&self, key: FileKey) -> Option<NodeId> {
        self.by_key
            .get(&key)
            .copied()
            .filter(|id| *id != NodeId::ROOT && self.kind(*id) == Some(FileKind::Dir))
    }

    /// A node's parent and name (its first); `None` for the root and
    /// unknown nodes.
    pub fn link(&self, node: NodeId) -> Option<(NodeId, Name)> {
        self.nodes.get(&node).and_then(|n| n.links.first().cloned())
    }

    /// The file at `node`'s path was replaced by a new version of itself
    /// (a committed write renames a new file over it): same node, new
    /// identity.
    pub fn rekey(&mut self, node: NodeId, key: FileKey) {
        if let Some(n) = self.nodes.get_mut(&node) {
            if self.by_key.get(&n.key) == Some(&node) {
                self.by_key.remove(&n.key);
            }
            n.key = key;
            self.by_key.insert(key, node);
        }
    }

    /// The identity a node stands for.
    pub fn key(&self, node: NodeId) -> Option<FileKey> {
        self.nodes.get(&node).map(|n| n.key)
    }

    /// The node is gone (its path holds another file now): forget it,
    /// every name of it, and everything beneath it. Returns the
    /// forgotten ids.
    pub fn forget_node(&mut self, node: NodeId) -> Vec<NodeId> {
        self.forget(node)
    }

    /// `parent/name` is gone: that name is forgotten, and with its last
    /// name the node and everything beneath it. Returns the forgotten ids
    /// (so clients can be told); none where the file keeps another name.
    pub fn remove(&mut self, parent: NodeId, name: &Name) -> Vec<NodeId> {
        self.unname(parent, name)
    }

    fn unname(&mut self, parent: NodeId, name: &Name) -> Vec<NodeId> {
        let link = (parent, name.clone());
        let Some(id) = self.children.get(&link).copied() else {
            return Vec::new();
        };
        match self.nodes.get_mut(&id) {
            Some(n) if n.links.len() > 1 => {
                n.links.retain(|l| *l != link);
                self.children.remove(&link);
                debug_assert!(self.consistent(id));
                Vec::new()
            }
            _ => self.forget(id),
        }
    }

    fn forget(&mut self, id: NodeId) -> Vec<NodeId> {
        let mut gone = Vec::new();
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if id == NodeId::ROOT {
                continue;
            }
            let Some(node) = self.nodes.remove(&id) else {
                continue;
            };
            for link in &node.links {
                self.children.remove(link);
            }
            if self.by_key.get(&node.key) == Some(&id) {
                self.by_key.remove(&node.key);
            }
            let kids: Vec<(Name, NodeId)> = self
                .children
                .range((id, Name::new(vec![1u8]).unwrap_or_else(|_| unreachable!()))..)
                .take_while(|((p, _), _)| *p == id)
                .map(|((_, name), &c)| (name.clone(), c))
                .collect();
            for (name, kid) in kids {
                let link = (id, name);
                self.children.remove(&link);
                // A file linked from outside this directory too keeps
                // its other names.
                if let Some(k) = self.nodes.get_mut(&kid) {
                    k.links.retain(|l| *l != link);
                    if k.links.is_empty() {
                        stack.push(kid);
                    }
                }
            }
            gone.push(id);
        }
        gone
    }

    /// `parent/name` was renamed to `new_parent/new_name` (replacing any
    /// node there). Returns the ids that the replacement removed.
    pub fn rename(
        &mut self,
        parent: NodeId,
        name: &Name,
        new_parent: NodeId,
        new_name: &Name,
    ) -> Vec<NodeId> {
        let moved = self.child(parent, name);
        if moved.is_some() && moved == self.child(new_parent, new_name) {
            // Two names of one file: rename(2) leaves both.
            return Vec::new();
        }
        let gone = self.unname(new_parent, new_name);
        if let Some(id) = moved {
            let (from, to) = ((parent, name.clone()), (new_parent, new_name.clone()));
            self.children.remove(&from);
            if let Some(node) = self.nodes.get_mut(&id) {
                for link in &mut node.links {
                    if *link == from {
                        *link = to.clone();
                    }
                }
            }
            self.children.insert(to, id);
            debug_assert!(self.consistent(id));
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).expect("valid")
    }

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 1, ino }
    }

    #[test]
    fn paths_follow_renames_of_whole_subtrees() {
        let mut t = NodeTable::new(key(1), 100);
        let d = t
            .learn(NodeId::ROOT, &name("d"), key(2), FileKind::Dir, 1)
            .expect("room");
        let f = t
            .learn(d, &name("f"), key(3), FileKind::File, 1)
            .expect("room");
        assert_eq!(format!("{:?}", t.path(f).expect("path")), "/d/f");
        assert_eq!(t.ancestors(f), vec![d, NodeId::ROOT]);
        let e = t
            .learn(NodeId::ROOT, &name("e"), key(4), FileKind::Dir, 1)
            .expect("room");
        t.rename(NodeId::ROOT, &name("d"), e, &name("d2"));
        assert_eq!(format!("{:?}", t.path(f).expect("path")), "/e/d2/f");
        assert_eq!(t.child(NodeId::ROOT, &name("d")), None);
    }

    #[test]
    fn same_file_same_id_and_replaced_files_get_new_ids() {
        let mut t = NodeTable::new(key(1), 100);
        let a = t
            .learn(NodeId::ROOT, &name("a"), key(2), FileKind::File, 1)
            .expect("room");
        assert_eq!(
            t.learn(NodeId::ROOT, &name("a"), key(2), FileKind::File, 1),
            Some(a)
        );
        let b = t
            .learn(NodeId::ROOT, &name("a"), key(9), FileKind::File, 1)
            .expect("room");
        assert_ne!(a, b, "another file under the same name");
        assert!(!t.contains(a), "ids are never reused");
    }

    #[test]
    fn removal_and_replacing_renames_forget_subtrees() {
        let mut t = NodeTable::new(key(1), 100);
        let d = t
            .learn(NodeId::ROOT, &name("d"), key(2), FileKind::Dir, 1)
            .expect("room");
        let f = t
            .learn(d, &name("f"), key(3), FileKind::File, 1)
            .expect("room");
        let g = t
            .learn(NodeId::ROOT, &name("g"), key(4), FileKind::File, 1)
            .expect("room");
        let mut gone = t.remove(NodeId::ROOT, &name("d"));
        gone.sort();
        assert_eq!(gone, vec![d, f]);
        let h = t
            .learn(NodeId::ROOT, &name("h"), key(5), FileKind::File, 1)
            .expect("room");
        assert_eq!(
            t.rename(NodeId::ROOT, &name("h"), NodeId::ROOT, &name("g")),
            vec![g]
        );
        assert_eq!(t.child(NodeId::ROOT, &name("g")), Some(h));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn names_of_one_file_are_one_node_until_the_last_goes() {
        let mut t = NodeTable::new(key(1), 100);
        let d = t
            .learn(NodeId::ROOT, &name("d"), key(2), FileKind::Dir, 2)
            .expect("room");
        let a = t
            .learn(NodeId::ROOT, &name("a"), key(3), FileKind::File, 2)
            .expect("room");
        let b = t.learn(d, &name("b"), key(3), FileKind::File, 2);
        assert_eq!(b, Some(a), "a second name of the file is its node");
        assert_eq!(t.names(a), 2);
        assert_eq!(format!("{:?}", t.path(a).expect("path")), "/d/b");
        // Renaming one name onto the other is no change at all.
        assert!(t.rename(d, &name("b"), NodeId::ROOT, &name("a")).is_empty());
        assert_eq!(t.names(a), 2);
        // The directory goes: the file keeps its name outside it.
        let mut gone = t.remove(NodeId::ROOT, &name("d"));
        gone.sort();
        assert_eq!(gone, vec![d]);
        assert_eq!(format!("{:?}", t.path(a).expect("path")), "/a");
        assert_eq!(t.child(d, &name("b")), None);
        assert_eq!(t.remove(NodeId::ROOT, &name("a")), vec![a]);
        assert!(t.is_empty());
    }

    #[test]
    fn an_identity_with_one_name_is_a_new_file() {
        let mut t = NodeTable::new(key(1), 100);
        let a = t
            .learn(NodeId::ROOT, &name("a"), key(3), FileKind::File, 1)
            .expect("room");
        // Same inode number, one link: `a` was deleted unseen and its
        // number reused; joining them would show two files as one.
        let c = t
            .learn(NodeId::ROOT, &name("c"), key(3), FileKind::File, 1)
            .expect("room");
        assert_ne!(a, c);
        // Nor does a second name join a node of another kind.
        let s = t
            .learn(NodeId::ROOT, &name("s"), key(3), FileKind::Fifo, 2)
            .expect("room");
        assert_ne!(s, c);
    }

    #[test]
    fn a_name_linked_to_a_node_replaces_a_stale_record_of_its_file() {
        let mut t = NodeTable::new(key(1), 100);
        let old = t.learn(NodeId::ROOT, &name("c"), key(10), FileKind::File, 1);
        let old = old.expect("room");
        // A local program moved c to a: a lookup of a makes a new node
        // (one name: not joined), c's record stays.
        let new = t.learn(NodeId::ROOT, &name("a"), key(10), FileKind::File, 1);
        let new = new.expect("room");
        assert_ne!(new, old);
        // The host links `new` as c: c is `new`'s, the stale record goes.
        assert_eq!(t.add_name(new, NodeId::ROOT, &name("c")), Some(vec![old]));
        assert_eq!(t.child(NodeId::ROOT, &name("c")), Some(new));
        assert_eq!(t.names(new), 2);
        assert!(!t.contains(old));
        assert_eq!(
            t.learn(NodeId::ROOT, &name("c"), key(10), FileKind::File, 2),
            Some(new)
        );
    }

    #[test]
    fn a_name_linked_in_a_directory_gone_here_is_not_recorded() {
        let mut t = NodeTable::new(key(1), 100);
        let f = t.learn(NodeId::ROOT, &name("f"), key(10), FileKind::File, 1);
        let f = f.expect("room");
        assert_eq!(t.add_name(f, NodeId(77), &name("g")), Some(Vec::new()));
        assert_eq!(t.names(f), 1);
        assert_eq!(t.child(NodeId(77), &name("g")), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = NodeTable::new(key(1), 2);
        assert!(
            t.learn(NodeId::ROOT, &name("a"), key(2), FileKind::File, 1)
                .is_some()
        );
        assert_eq!(
            t.learn(NodeId::ROOT, &name("b"), key(3), FileKind::File, 1),
            None
        );
    }
}
