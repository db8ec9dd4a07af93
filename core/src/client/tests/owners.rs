//! Owners: the host's user shown as the mounting user, chown refused
//! where the host acts as one user and passed through where it preserves
//! owners.

use super::*;
use crate::proto::{Owner, Owners};

const ME: Owner = Owner {
    uid: 1000,
    gid: 100,
};

fn owned(owners: Owners) -> World {
    World::new(
        7,
        disk(&[("a", b"mine")]),
        1,
        HostConfig {
            owners,
            ..HostConfig::default()
        },
        ClientConfig {
            local_user: Some(ME),
            ..ClientConfig::default()
        },
    )
}

fn chown(w: &mut World, ino: Ino, uid: Option<u32>, gid: Option<u32>) -> Result<Attr, Errno> {
    let set = SetAttr {
        uid,
        gid,
        ..SetAttr::default()
    };
    match w.call(0, Op::SetAttr { ino, set })? {
        Answer::Attr { attr, .. } => Ok(attr),
        other => panic!("{other:?}"),
    }
}

fn owner_of(a: &Attr) -> (u32, u32) {
    (a.uid, a.gid)
}

#[test]
fn the_hosts_user_is_shown_as_the_mounting_user() {
    let host_user = Owners::HostUser { uid: 0, gid: 0 };
    let mut w = owned(host_user);
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    assert_eq!(owner_of(&attr), (ME.uid, ME.gid), "lookup");
    let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::GetAttr { ino }) else {
        panic!("getattr")
    };
    assert_eq!(owner_of(&attr), (ME.uid, ME.gid), "getattr");
    let Ok(Answer::Dir(items)) = w.call(
        0,
        Op::ReadDir {
            ino: Ino::ROOT,
            offset: 0,
        },
    ) else {
        panic!("readdir")
    };
    assert!(
        items.iter().all(|i| owner_of(&i.attr) == (ME.uid, ME.gid)),
        "{items:?}"
    );
    // A file of another owner on the host keeps its number.
    w.disk
        .execute(FsOp::SetAttr {
            path: RelPath::from(vec![name("a")]),
            set: SetAttr {
                uid: Some(7),
                ..SetAttr::default()
            },
        })
        .expect("a local chown");
    w.local_change(RelPath::from(vec![name("a")]));
    w.settle();
    let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::GetAttr { ino }) else {
        panic!("getattr")
    };
    assert_eq!(owner_of(&attr), (7, ME.gid), "another owner is a number");
}

#[test]
fn acting_as_the_hosts_user_a_client_cannot_give_files_away() {
    let mut w = owned(Owners::HostUser { uid: 0, gid: 0 });
    let (ino, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    // To itself: no change, allowed (as `chown me file` is for its owner).
    let attr = chown(&mut w, ino, Some(ME.uid), Some(ME.gid)).expect("chown to oneself");
    assert_eq!(owner_of(&attr), (ME.uid, ME.gid));
    assert_eq!(chown(&mut w, ino, Some(0), None), Err(Errno::Perm));
    assert_eq!(chown(&mut w, ino, None, Some(5)), Err(Errno::Perm));
    let (uid, gid) = w.disk.owner(&RelPath::from(vec![name("a")])).expect("a");
    assert_eq!((uid, gid), (0, 0), "the host's file kept its owner");
}

#[test]
fn with_owners_preserved_a_chown_reaches_the_host() {
    let mut w = owned(Owners::Preserved);
    let (ino, attr) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    assert_eq!(owner_of(&attr), (0, 0), "ids are not mapped");
    let attr = chown(&mut w, ino, Some(1000), Some(100)).expect("chown");
    assert_eq!(owner_of(&attr), (1000, 100));
    assert_eq!(
        w.disk.owner(&RelPath::from(vec![name("a")])),
        Some((1000, 100))
    );
}

fn create_as(w: &mut World, n: &str, caller: Owner) -> Result<Attr, Errno> {
    match w.call(
        0,
        Op::Create {
            parent: Ino::ROOT,
            name: name(n),
            mode: 0o644,
            caller: Some(caller),
            exclusive: true,
            truncate: false,
        },
    )? {
        Answer::Created { attr, fh, .. } => {
            w.call(0, Op::Release { fh })?;
            Ok(attr)
        }
        other => panic!("{other:?}"),
    }
}

const ALICE: Owner = Owner {
    uid: 1001,
    gid: 1001,
};

#[test]
fn with_owners_preserved_new_files_are_their_makers() {
    let mut w = owned(Owners::Preserved);
    // Enough creates in one directory that the client takes a lease and
    // makes the later ones itself: those keep their maker too.
    for i in 0..6 {
        let attr = create_as(&mut w, &format!("f{i}"), ALICE).expect("create");
        assert_eq!(owner_of(&attr), (ALICE.uid, ALICE.gid), "f{i} as answered");
    }
    let Ok(Answer::Entry { .. }) = w.call(
        0,
        Op::Mkdir {
            parent: Ino::ROOT,
            name: name("d"),
            mode: 0o755,
            caller: Some(ALICE),
        },
    ) else {
        panic!("mkdir")
    };
    let Ok(Answer::Entry { .. }) = w.call(
        0,
        Op::Symlink {
            parent: Ino::ROOT,
            name: name("l"),
            target: b"f0".to_vec(),
            caller: Some(ALICE),
        },
    ) else {
        panic!("symlink")
    };
    w.settle();
    for n in ["f0", "f1", "f2", "f3", "f4", "f5", "d", "l"] {
        assert_eq!(
            w.disk.owner(&RelPath::from(vec![name(n)])),
            Some((ALICE.uid, ALICE.gid)),
            "{n} on the host"
        );
    }
}

#[test]
fn acting_as_the_hosts_user_new_files_are_the_hosts_users() {
    let mut w = owned(Owners::HostUser { uid: 0, gid: 0 });
    for i in 0..6 {
        let attr = create_as(&mut w, &format!("f{i}"), ALICE).expect("create");
        assert_eq!(owner_of(&attr), (ME.uid, ME.gid), "f{i} shown as mine");
    }
    w.settle();
    for i in 0..6 {
        assert_eq!(
            w.disk.owner(&RelPath::from(vec![name(&format!("f{i}"))])),
            Some((0, 0)),
            "f{i} on the host"
        );
    }
}
