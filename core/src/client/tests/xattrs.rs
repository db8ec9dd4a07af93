//! Extended attributes: the `user.` namespace round trips through the
//! host with getxattr(2)'s size rules; other namespaces are answered by
//! the client without asking.

use super::*;
use crate::proto::XattrSet;

fn set(w: &mut World, ino: Ino, name: &str, value: &[u8], how: XattrSet) -> Result<(), Errno> {
    let op = Op::SetXattr {
        ino,
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
        how,
    };
    w.call(0, op).map(|a| assert_eq!(a, Answer::Done))
}

fn get(w: &mut World, ino: Ino, name: &str, size: u32) -> Result<Answer, Errno> {
    let op = Op::GetXattr {
        ino,
        name: name.as_bytes().to_vec(),
        size,
    };
    w.call(0, op)
}

fn host_ops(w: &mut World) -> usize {
    std::mem::take(&mut w.fs_log).len()
}

#[test]
fn user_attributes_round_trip_with_the_usual_errnos() {
    let mut w = world(&[("a", b"x")], 1);
    let (a, before) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    assert_eq!(get(&mut w, a, "user.tag", 0), Err(Errno::NoData));
    set(&mut w, a, "user.tag", b"blue", XattrSet::Either).expect("set");
    assert_eq!(get(&mut w, a, "user.tag", 0), Ok(Answer::XattrSize(4)));
    assert_eq!(
        get(&mut w, a, "user.tag", 64),
        Ok(Answer::Xattr(b"blue".to_vec()))
    );
    assert_eq!(
        get(&mut w, a, "user.tag", 2),
        Err(Errno::Range),
        "buffer too small"
    );
    assert_eq!(
        set(&mut w, a, "user.tag", b"red", XattrSet::Create),
        Err(Errno::Exist)
    );
    assert_eq!(
        set(&mut w, a, "user.other", b"red", XattrSet::Replace),
        Err(Errno::NoData)
    );
    set(&mut w, a, "user.other", b"", XattrSet::Create).expect("an empty value");
    let list = w.call(0, Op::ListXattr { ino: a, size: 100 });
    assert_eq!(list, Ok(Answer::Xattr(b"user.other\0user.tag\0".to_vec())));
    // Setting one moved the file's ctime, and the client knows it.
    let Ok(Answer::Attr { attr, .. }) = w.call(0, Op::GetAttr { ino: a }) else {
        panic!("getattr")
    };
    assert!(attr.ctime > before.ctime, "{attr:?}");
    let rm = Op::RemoveXattr {
        ino: a,
        name: b"user.tag".to_vec(),
    };
    assert_eq!(w.call(0, rm.clone()), Ok(Answer::Done));
    assert_eq!(w.call(0, rm), Err(Errno::NoData));
    assert_eq!(
        set(&mut w, a, "user.big", &vec![0; 65_537], XattrSet::Either),
        Err(Errno::TooBig)
    );
}

#[test]
fn namespaces_the_host_does_not_serve_are_answered_here() {
    let mut w = world(&[("a", b"x")], 1);
    let (a, _) = lookup(&mut w, 0, Ino::ROOT, "a").expect("a");
    w.record_fs = true;
    host_ops(&mut w);
    // What `ls -l` asks of every file: nothing there, and no round trip.
    for name in ["security.selinux", "system.posix_acl_access"] {
        assert_eq!(get(&mut w, a, name, 255), Err(Errno::NoData), "{name}");
    }
    assert_eq!(
        set(&mut w, a, "trusted.x", b"1", XattrSet::Either),
        Err(Errno::NotSup),
        "trusted. only where the host preserves owners"
    );
    assert_eq!(get(&mut w, a, "", 10), Err(Errno::NoData));
    assert_eq!(host_ops(&mut w), 0, "the host was never asked");
}
