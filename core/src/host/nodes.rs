//! The host's file index: node ids ↔ paths beneath the shared root.
//!
//! Clients name files by [`NodeId`]; the disk knows paths. A node records
//! its parent and its name, so a rename re-points one record and the whole
//! subtree moves with it, and a path is rebuilt by walking up (depth is
//! bounded by the table size). Ids are never reused within a host run, so
//! a stale id held by a client can only miss, never name another file.

use super::fsop::RelPath;
use crate::proto::{FileKey, FileKind, Name, NodeId};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// Parent and name; `None` for the root.
    link: Option<(NodeId, Name)>,
    key: FileKey,
    kind: FileKind,
}

/// The index of one host run.
#[derive(Clone, Debug)]
pub struct NodeTable {
    nodes: BTreeMap<NodeId, Node>,
    children: BTreeMap<(NodeId, Name), NodeId>,
    /// Directories by identity (a directory has one name, no hard links),
    /// to follow one a local program moved ([`Self::dir_by_key`]).
    dirs: BTreeMap<FileKey, NodeId>,
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
                link: None,
                key: root_key,
                kind: FileKind::Dir,
            },
        );
        NodeTable {
            nodes,
            children: BTreeMap::new(),
            dirs: BTreeMap::new(),
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

    /// The path of a node.
    pub fn path(&self, node: NodeId) -> Option<RelPath> {
        let mut names = Vec::new();
        let mut at = node;
        for _ in 0..=self.nodes.len() {
            let n = self.nodes.get(&at)?;
            match &n.link {
                None => {
                    names.reverse();
                    return Some(RelPath::from(names));
                }
                Some((parent, name)) => {
                    names.push(name.clone());
                    at = *parent;
                }
            }
        }
        None
    }

    /// The ancestors of a node, parent first, root last (for subtree
    /// locks).
    pub fn ancestors(&self, node: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut at = node;
        while let Some((parent, _)) = self.nodes.get(&at).and_then(|n| n.link.as_ref()) {
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

    /// Records that `parent/name` exists with this identity and returns its
    /// node id: the existing one if the same file is already indexed there,
    /// a new one otherwise (a different file under a known name replaces
    /// the old record). `None` when the table is full: the caller answers
    /// the request with a transient error.
    pub fn learn(
        &mut self,
        parent: NodeId,
        name: &Name,
        key: FileKey,
        kind: FileKind,
    ) -> Option<NodeId> {
        if let Some(id) = self.child(parent, name)
            && self
                .nodes
                .get(&id)
                .is_some_and(|n| n.key == key && n.kind == kind)
        {
            return Some(id);
        }
        // A directory has one name: one indexed elsewhere with this
        // identity was moved here (by a local program; its watcher event
        // may not have come yet). Its node follows, with what is beneath.
        if kind == FileKind::Dir
            && let Some(moved) = self.dirs.get(&key).copied()
            && let Some((old_parent, old_name)) = self.link(moved)
            && moved != parent
            && !self.ancestors(parent).contains(&moved)
        {
            self.rename(old_parent, &old_name, parent, name);
            return Some(moved);
        }
        if let Some(id) = self.child(parent, name) {
            self.forget(id);
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
                link: Some((parent, name.clone())),
                key,
                kind,
            },
        );
        self.children.insert((parent, name.clone()), id);
        if kind == FileKind::Dir {
            self.dirs.insert(key, id);
        }
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

    /// Records that a file the host just created at `parent/name` is node
    /// `id`, reserved earlier ([`Self::reserve`]) and not yet used. A
    /// stale record of that name is replaced, as [`Self::learn`] does.
    /// Not bounded by `max_nodes`: the reservation was.
    pub fn bind(&mut self, id: NodeId, parent: NodeId, name: &Name, key: FileKey, kind: FileKind) {
        debug_assert!(id.0 < self.next && !self.nodes.contains_key(&id));
        if let Some(old) = self.child(parent, name) {
            self.forget(old);
        }
        self.insert(id, parent, name, key, kind);
    }

    /// The indexed directory with identity `key`, if any (the root is
    /// not: it never moves).
    pub fn dir_by_key(&self, key: FileKey) -> Option<NodeId> {
        self.dirs.get(&key).copied()
    }

    /// A node's parent and name; `None` for the root and unknown nodes.
    pub fn link(&self, node: NodeId) -> Option<(NodeId, Name)> {
        self.nodes.get(&node).and_then(|n| n.link.clone())
    }

    /// The file at `node`'s path was replaced by a new version of itself
    /// (a committed write renames a new file over it): same node, new
    /// identity.
    pub fn rekey(&mut self, node: NodeId, key: FileKey) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.key = key;
        }
    }

    /// The identity a node stands for.
    pub fn key(&self, node: NodeId) -> Option<FileKey> {
        self.nodes.get(&node).map(|n| n.key)
    }

    /// The node is gone (its path holds another file now): forget it and
    /// everything beneath it. Returns the forgotten ids.
    pub fn forget_node(&mut self, node: NodeId) -> Vec<NodeId> {
        self.forget(node)
    }

    /// `parent/name` is gone: forget it and everything beneath it. Returns
    /// the forgotten ids (so clients can be told).
    pub fn remove(&mut self, parent: NodeId, name: &Name) -> Vec<NodeId> {
        match self.child(parent, name) {
            Some(id) => self.forget(id),
            None => Vec::new(),
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
            if let Some(link) = node.link {
                self.children.remove(&link);
            }
            if self.dirs.get(&node.key) == Some(&id) {
                self.dirs.remove(&node.key);
            }
            let kids: Vec<NodeId> = self
                .children
                .range((id, Name::new(vec![1u8]).unwrap_or_else(|_| unreachable!()))..)
                .take_while(|((p, _), _)| *p == id)
                .map(|(_, &c)| c)
                .collect();
            stack.extend(kids);
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
        let mut gone = Vec::new();
        if let Some(target) = self.child(new_parent, new_name)
            && Some(target) != moved
        {
            gone = self.forget(target);
        }
        if let Some(id) = moved {
            self.children.remove(&(parent, name.clone()));
            if let Some(node) = self.nodes.get_mut(&id) {
                node.link = Some((new_parent, new_name.clone()));
            }
            self.children.insert((new_parent, new_name.clone()), id);
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
            .learn(NodeId::ROOT, &name("d"), key(2), FileKind::Dir)
            .expect("room");
        let f = t
            .learn(d, &name("f"), key(3), FileKind::File)
            .expect("room");
        assert_eq!(format!("{:?}", t.path(f).expect("path")), "/d/f");
        assert_eq!(t.ancestors(f), vec![d, NodeId::ROOT]);
        let e = t
            .learn(NodeId::ROOT, &name("e"), key(4), FileKind::Dir)
            .expect("room");
        t.rename(NodeId::ROOT, &name("d"), e, &name("d2"));
        assert_eq!(format!("{:?}", t.path(f).expect("path")), "/e/d2/f");
        assert_eq!(t.child(NodeId::ROOT, &name("d")), None);
    }

    #[test]
    fn same_file_same_id_and_replaced_files_get_new_ids() {
        let mut t = NodeTable::new(key(1), 100);
        let a = t
            .learn(NodeId::ROOT, &name("a"), key(2), FileKind::File)
            .expect("room");
        assert_eq!(
            t.learn(NodeId::ROOT, &name("a"), key(2), FileKind::File),
            Some(a)
        );
        let b = t
            .learn(NodeId::ROOT, &name("a"), key(9), FileKind::File)
            .expect("room");
        assert_ne!(a, b, "another file under the same name");
        assert!(!t.contains(a), "ids are never reused");
    }

    #[test]
    fn removal_and_replacing_renames_forget_subtrees() {
        let mut t = NodeTable::new(key(1), 100);
        let d = t
            .learn(NodeId::ROOT, &name("d"), key(2), FileKind::Dir)
            .expect("room");
        let f = t
            .learn(d, &name("f"), key(3), FileKind::File)
            .expect("room");
        let g = t
            .learn(NodeId::ROOT, &name("g"), key(4), FileKind::File)
            .expect("room");
        let mut gone = t.remove(NodeId::ROOT, &name("d"));
        gone.sort();
        assert_eq!(gone, vec![d, f]);
        let h = t
            .learn(NodeId::ROOT, &name("h"), key(5), FileKind::File)
            .expect("room");
        assert_eq!(
            t.rename(NodeId::ROOT, &name("h"), NodeId::ROOT, &name("g")),
            vec![g]
        );
        assert_eq!(t.child(NodeId::ROOT, &name("g")), Some(h));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = NodeTable::new(key(1), 2);
        assert!(
            t.learn(NodeId::ROOT, &name("a"), key(2), FileKind::File)
                .is_some()
        );
        assert_eq!(
            t.learn(NodeId::ROOT, &name("b"), key(3), FileKind::File),
            None
        );
    }
}
