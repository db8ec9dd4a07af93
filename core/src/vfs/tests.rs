use super::*;
use crate::proto::{FileKey, Timestamp};

fn name(s: &str) -> Name {
    Name::new(s).expect("valid")
}

fn attr(node: u64, kind: FileKind) -> Attr {
    Attr {
        node: NodeId(node),
        key: FileKey { dev: 1, ino: node },
        kind,
        size: 0,
        mode: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        version: 1,
        rdev: 0,
    }
}

fn vfs() -> Vfs {
    Vfs::new(NodeId::ROOT, 1000)
}

#[test]
fn root_is_one_and_is_never_forgotten() {
    let mut v = vfs();
    assert_eq!(v.node(Ino::ROOT), Some(NodeId::ROOT));
    v.forget(Ino::ROOT, 100).expect("ignored for the root");
    assert_eq!(v.get(Ino::ROOT).map(|i| i.state), Some(InodeState::Active));
    assert_eq!(v.path(Ino::ROOT), Some(vec![]));
}

#[test]
fn lookup_allocates_then_reuses_the_same_inode() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("learn");
    assert_eq!(a, Ino::FIRST_USER);
    let again = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("learn");
    assert_eq!(again, a);
    let inode = v.get(a).expect("present");
    assert_eq!((inode.nlookup, inode.state), (2, InodeState::Active));
    assert_eq!(v.child(Ino::ROOT, &name("a")), Some(a));
    assert_eq!(v.ino_of(NodeId(10)), Some(a));
}

#[test]
fn listing_allocates_without_a_kernel_reference() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), false)
        .expect("learn");
    assert_eq!(
        v.get(a).map(|i| (i.state, i.nlookup)),
        Some((InodeState::Allocated, 0))
    );
    let b = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("lookup");
    assert_eq!(a, b);
    assert_eq!(v.get(a).map(|i| i.state), Some(InodeState::Active));
    v.learn(Ino::ROOT, name("b"), &attr(11, FileKind::File), false)
        .expect("learn");
    v.trim_unreferenced();
    assert_eq!(
        v.child(Ino::ROOT, &name("b")),
        None,
        "unreferenced listing entry dropped"
    );
    assert_eq!(
        v.child(Ino::ROOT, &name("a")),
        Some(a),
        "referenced entry kept"
    );
}

#[test]
fn forget_to_zero_frees_the_number_for_reuse() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("learn");
    v.forget(a, 1).expect("forget");
    // Still named: forgetting alone keeps nothing alive, so it is freed.
    assert_eq!(v.get(a), None);
    assert_eq!(v.child(Ino::ROOT, &name("a")), None);
    let b = v
        .learn(Ino::ROOT, name("b"), &attr(11, FileKind::File), true)
        .expect("learn");
    assert_eq!(b, a, "freed numbers are reused first");
    assert_eq!(v.forget(b, 2), Err(VfsError::Underflow(b)));
    assert_eq!(v.forget(Ino(999), 1), Err(VfsError::UnknownInode(Ino(999))));
}

#[test]
fn an_open_file_outlives_its_forget_and_its_unlink() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("learn");
    v.open(a).expect("open");
    v.unlink(Ino::ROOT, &name("a"));
    let inode = v.get(a).expect("still there");
    assert_eq!(inode.state, InodeState::Orphan);
    assert_eq!(v.child(Ino::ROOT, &name("a")), None, "the name is gone");
    assert_eq!(v.node(a), None, "orphans are reached through handles only");
    assert_eq!(v.path(a), None);
    v.forget(a, 1).expect("forget");
    assert!(v.get(a).is_some(), "a handle is still open");
    // A new file must not get the orphan's number.
    let b = v
        .learn(Ino::ROOT, name("b"), &attr(11, FileKind::File), true)
        .expect("learn");
    assert_ne!(b, a);
    v.close(a).expect("close");
    assert_eq!(v.get(a), None, "last close frees it");
    assert_eq!(v.close(a), Err(VfsError::UnknownInode(a)));
}

#[test]
fn closing_before_forget_keeps_the_number_until_forget() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("learn");
    v.open(a).expect("open");
    v.node_gone(NodeId(10));
    v.close(a).expect("close");
    assert_eq!(
        v.get(a).map(|i| i.state),
        Some(InodeState::Orphan),
        "kernel still holds it"
    );
    let b = v
        .learn(Ino::ROOT, name("b"), &attr(11, FileKind::File), true)
        .expect("learn");
    assert_ne!(b, a);
    v.forget(a, 1).expect("forget");
    assert_eq!(v.get(a), None);
}

#[test]
fn rename_moves_a_subtree_and_replaces_the_target() {
    let mut v = vfs();
    let d = v
        .learn(Ino::ROOT, name("d"), &attr(10, FileKind::Dir), true)
        .expect("learn");
    let f = v
        .learn(d, name("f"), &attr(11, FileKind::File), true)
        .expect("learn");
    let e = v
        .learn(Ino::ROOT, name("e"), &attr(12, FileKind::Dir), true)
        .expect("learn");
    let old = v
        .learn(e, name("d2"), &attr(13, FileKind::Dir), true)
        .expect("learn");
    v.rename(Ino::ROOT, &name("d"), e, name("d2"));
    assert_eq!(v.path(f), Some(vec![name("e"), name("d2"), name("f")]));
    assert_eq!(v.child(e, &name("d2")), Some(d));
    assert_eq!(v.child(Ino::ROOT, &name("d")), None);
    assert_eq!(
        v.get(old).map(|i| i.state),
        Some(InodeState::Orphan),
        "replaced target"
    );
    assert_eq!(v.ino_of(NodeId(13)), None);
}

#[test]
fn a_new_node_under_a_known_name_replaces_the_old_one() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("a"), &attr(10, FileKind::File), true)
        .expect("learn");
    // Replaced on the host (e.g. an editor's atomic save).
    let b = v
        .learn(Ino::ROOT, name("a"), &attr(20, FileKind::File), true)
        .expect("learn");
    assert_ne!(a, b);
    assert_eq!(v.get(a).map(|i| i.state), Some(InodeState::Orphan));
    assert_eq!(v.child(Ino::ROOT, &name("a")), Some(b));
}

/// Found by fs_sim seed 432: an Unlink reply that the host executed
/// *before* a Create of the same name arrived after it and took the name
/// from the new file; when the node came back, the kernel got a second
/// inode for one file. The node decides, not the name.
#[test]
fn a_node_seen_again_after_losing_its_name_gets_its_inode_back() {
    let mut v = vfs();
    let a = v
        .learn(Ino::ROOT, name("c"), &attr(8, FileKind::File), true)
        .expect("learn");
    v.open(a).expect("open");
    v.unlink(Ino::ROOT, &name("c"));
    assert_eq!(v.get(a).map(|i| i.state), Some(InodeState::Orphan));
    assert_eq!(v.ino_of(NodeId(8)), None, "an orphan is reached by handle");
    let again = v
        .learn(Ino::ROOT, name("c"), &attr(8, FileKind::File), true)
        .expect("learn");
    assert_eq!(again, a);
    assert_eq!(v.get(a).map(|i| i.state), Some(InodeState::Active));
    assert_eq!(v.ino_of(NodeId(8)), Some(a));
    assert_eq!(v.path(a), Some(vec![name("c")]));
}

#[test]
fn a_deleted_directory_orphans_its_subtree() {
    let mut v = vfs();
    let d = v
        .learn(Ino::ROOT, name("d"), &attr(10, FileKind::Dir), true)
        .expect("learn");
    let f = v
        .learn(d, name("f"), &attr(11, FileKind::File), true)
        .expect("learn");
    v.node_gone(NodeId(10));
    assert_eq!(v.get(f).map(|i| i.state), Some(InodeState::Orphan));
    assert_eq!(v.path(f), None);
}

#[test]
fn learn_refuses_non_directories_and_a_full_table() {
    let mut v = Vfs::new(NodeId::ROOT, 2);
    let f = v
        .learn(Ino::ROOT, name("f"), &attr(10, FileKind::File), true)
        .expect("learn");
    assert_eq!(
        v.learn(f, name("x"), &attr(11, FileKind::File), true),
        Err(VfsError::NotDir(f))
    );
    assert_eq!(
        v.learn(Ino::ROOT, name("g"), &attr(12, FileKind::File), true),
        Err(VfsError::Full(2))
    );
    assert_eq!(
        v.learn(Ino(77), name("g"), &attr(12, FileKind::File), true),
        Err(VfsError::UnknownInode(Ino(77)))
    );
}

#[test]
fn after_a_host_restart_inodes_are_rebound_parents_first() {
    let mut v = vfs();
    let d = v
        .learn(Ino::ROOT, name("d"), &attr(10, FileKind::Dir), true)
        .expect("learn");
    let f = v
        .learn(d, name("f"), &attr(11, FileKind::File), true)
        .expect("learn");
    v.unbind_nodes(NodeId(100));
    assert_eq!(v.node(Ino::ROOT), Some(NodeId(100)));
    assert_eq!(v.node(d), None, "unbound until looked up again");
    assert_eq!(v.ino_of(NodeId(10)), None);
    assert_eq!(
        v.rebindable(),
        vec![(d, NodeId(100), name("d"))],
        "children wait for parents"
    );
    v.rebind(d, NodeId(200));
    assert_eq!(v.node(d), Some(NodeId(200)));
    assert_eq!(v.ino_of(NodeId(200)), Some(d));
    assert_eq!(v.rebindable(), vec![(f, NodeId(200), name("f"))]);
    v.unbind_gone(f);
    assert_eq!(v.rebindable(), vec![]);
    assert_eq!(
        v.get(f).map(|i| i.state),
        Some(InodeState::Orphan),
        "still referenced"
    );
}

/// Random operation sequences: an inode number is never handed to a new
/// file while the kernel or a handle still references the old one, and the
/// maps stay consistent.
#[test]
fn no_number_is_reused_while_referenced() {
    let mut rng = crate::Rng::from_u64(5);
    for _ in 0..200 {
        let mut v = Vfs::new(NodeId::ROOT, 10_000);
        let mut next_node = 10u64;
        for _ in 0..200 {
            let live: Vec<Ino> = v
                .inodes
                .keys()
                .copied()
                .filter(|&i| i != Ino::ROOT)
                .collect();
            let pick = |rng: &mut crate::Rng| live[rng.below(live.len() as u64) as usize];
            let nm = name(["a", "b", "c", "d"][rng.below(4) as usize]);
            match rng.below(7) {
                0 | 1 => {
                    next_node += 1;
                    let kind = if rng.below(2) == 0 {
                        FileKind::Dir
                    } else {
                        FileKind::File
                    };
                    let before: BTreeMap<Ino, (u64, u32)> = v
                        .inodes
                        .values()
                        .map(|i| (i.ino, (i.nlookup, i.open)))
                        .collect();
                    let ino = v
                        .learn(Ino::ROOT, nm, &attr(next_node, kind), true)
                        .expect("learn");
                    // Every inode still in the table is referenced or named;
                    // a fresh node must get a number none of them has.
                    assert!(
                        !before.contains_key(&ino),
                        "fresh node got live {ino:?} (refs {:?})",
                        before.get(&ino)
                    );
                }
                2 if !live.is_empty() => {
                    let ino = pick(&mut rng);
                    let _ = v.forget(ino, 1);
                }
                3 if !live.is_empty() => {
                    let ino = pick(&mut rng);
                    let _ = v.open(ino);
                }
                4 if !live.is_empty() => {
                    let ino = pick(&mut rng);
                    let _ = v.close(ino);
                }
                5 => v.unlink(Ino::ROOT, &nm),
                6 if !live.is_empty() && rng.below(2) == 0 => {
                    // Another name of a file this table knows (a hard
                    // link), as a lookup would learn it.
                    let ino = pick(&mut rng);
                    if let Some(i) = v.get(ino).filter(|i| i.kind == FileKind::File) {
                        let linked = Attr {
                            nlink: 2,
                            ..attr(i.node.0, FileKind::File)
                        };
                        let _ = v.learn(Ino::ROOT, nm, &linked, true);
                    }
                }
                _ => v.rename(Ino::ROOT, &nm, Ino::ROOT, name("z")),
            }
            for (key, &ino) in &v.children {
                let inode = v.inodes.get(&ino).expect("children point at live inodes");
                assert!(inode.links.contains(key));
            }
            for inode in v.inodes.values() {
                for link in &inode.links {
                    assert_eq!(v.children.get(link), Some(&inode.ino), "{inode:?}");
                }
            }
            for (&node, &ino) in &v.by_node {
                assert_eq!(v.inodes.get(&ino).map(|i| i.node), Some(node));
            }
            for inode in v.inodes.values() {
                if inode.ino != Ino::ROOT && inode.state == InodeState::Orphan {
                    assert!(
                        inode.nlookup > 0 || inode.open > 0,
                        "{inode:?} should be freed"
                    );
                }
            }
        }
    }
}

#[test]
fn names_of_one_file_are_one_inode_until_the_last_goes() {
    let mut v = vfs();
    let d = v
        .learn(Ino::ROOT, name("d"), &attr(5, FileKind::Dir), true)
        .expect("d");
    let linked = Attr {
        nlink: 2,
        ..attr(10, FileKind::File)
    };
    let a = v.learn(Ino::ROOT, name("a"), &linked, true).expect("a");
    let b = v.learn(d, name("b"), &linked, true).expect("b");
    assert_eq!(b, a);
    assert_eq!(v.child(Ino::ROOT, &name("a")), Some(a), "both names stay");
    assert_eq!(v.child(d, &name("b")), Some(a));
    // Renamed onto its other name: nothing changes (rename(2)).
    v.rename(d, &name("b"), Ino::ROOT, name("a"));
    assert_eq!(v.child(d, &name("b")), Some(a));
    // Its directory goes: the name outside it stays.
    v.unlink(Ino::ROOT, &name("d"));
    assert_eq!(v.path(a), Some(vec![name("a")]));
    assert_eq!(v.get(a).map(|i| i.state), Some(InodeState::Active));
    v.unlink(Ino::ROOT, &name("a"));
    assert_eq!(v.get(a).map(|i| i.state), Some(InodeState::Orphan));
    // A file with one link seen under a new name was moved there.
    let c = v
        .learn(Ino::ROOT, name("c"), &attr(11, FileKind::File), true)
        .expect("c");
    v.learn(Ino::ROOT, name("e"), &attr(11, FileKind::File), true)
        .expect("e");
    assert_eq!(v.child(Ino::ROOT, &name("c")), None);
    assert_eq!(v.child(Ino::ROOT, &name("e")), Some(c));
}
