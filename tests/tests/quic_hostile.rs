//! A hostile client, end to end over QUIC on loopback with a real shared
//! directory; one body, run on both shells.
//!
//! After authenticating (it holds the ticket: the protocol's trust
//! boundary is the shared folder, not the client), it tries every way out
//! of the shared root it can write down, and every way into another
//! session's locks, writes and handles:
//!
//! * names that are not one component (`..`, `.`, `a/b`, absolute paths,
//!   NUL, empty, too long), in every request that carries a name. `Name`
//!   refuses to construct them, so the frames are built by hand and it is
//!   the host's decoder that refuses;
//! * symlinks put in the share by a local program, to `/etc`, to `../..`,
//!   to a directory and a file outside the share (absolute and relative),
//!   to a path outside that does not exist yet, and one made while the
//!   host runs: the link itself may be looked up and read (it is data),
//!   but nothing goes through it;
//! * a directory the host has indexed, swapped for a symlink to the
//!   outside behind its back;
//! * a FIFO and a device node put in the share: never opened, the device
//!   not even shown; hard links and extended attributes through
//!   symlinks;
//! * node ids, handles and transactions the host never gave out, a forged
//!   lock token, and another session's token, transaction and handle.
//!
//! Every attempt must be refused with an error, the same error whether or
//! not the thing outside exists, and afterwards nothing outside the share
//! is changed: a sentinel file keeps its bytes, mode, times and inode, and
//! no new entry appears outside.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use wormhole_core::host::RESERVED_PREFIX;
use wormhole_core::proto::{
    Attr, CHUNK_SIZE, Checksum, Errno, FileKind, FileRef, HandleId, HostMessage, LockKind,
    LockScope, LockToken, Name, NodeId, OpenFor, Reply, Request, SetAttr, SetTime, Timestamp,
    TxnId, XattrSet,
};
use wormhole_io::{Identity, Shell};
use wormhole_tests::quic::{
    Guard, RawClient, STEP, scratch, start_host, stop_host, ticket, transport, within,
};

wormhole_tests::both_shells! {
    hostile_client: hostile;
}

/// Stands for the name in a request encoded by the test, which then puts
/// the bad name's bytes in its place.
const PLACEHOLDER: &[u8] = b"PLACEHOLDER.NAME";

fn name(s: &str) -> Name {
    Name::new(s.as_bytes().to_vec()).expect("a valid name")
}

/// bincode's (standard configuration) length prefix.
fn varint(n: usize) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => {
            let mut v = vec![251];
            v.extend((n as u16).to_le_bytes());
            v
        }
        _ => unreachable!("names are short"),
    }
}

/// `encoded` with the length-prefixed [`PLACEHOLDER`] replaced by `bytes`
/// (its own length prefix included): a request with any name at all.
fn splice(encoded: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut needle = varint(PLACEHOLDER.len());
    needle.extend_from_slice(PLACEHOLDER);
    let at = encoded
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the placeholder is in the encoded request");
    let mut out = encoded[..at].to_vec();
    out.extend(varint(bytes.len()));
    out.extend_from_slice(bytes);
    out.extend_from_slice(&encoded[at + needle.len()..]);
    out
}

/// Every request that carries a name, with `n` as that name.
fn named_requests(n: Name) -> Vec<Request> {
    let root = NodeId::ROOT;
    vec![
        Request::Lookup {
            parent: root,
            name: n.clone(),
        },
        Request::Create {
            parent: root,
            name: n.clone(),
            mode: 0o644,
            exclusive: false,
            open: false,
            owner: None,
        },
        Request::Mkdir {
            parent: root,
            name: n.clone(),
            mode: 0o755,
            owner: None,
            lease: true,
        },
        Request::Symlink {
            parent: root,
            name: n.clone(),
            target: b"victim".to_vec(),
            owner: None,
        },
        Request::Unlink {
            parent: root,
            name: n.clone(),
        },
        Request::Rmdir {
            parent: root,
            name: n.clone(),
        },
        Request::Rename {
            parent: root,
            name: name("movable"),
            new_parent: root,
            new_name: n.clone(),
        },
        Request::Rename {
            parent: root,
            name: n.clone(),
            new_parent: root,
            new_name: name("renamed"),
        },
        Request::Mknod {
            parent: root,
            name: n.clone(),
            kind: FileKind::Fifo,
            mode: 0o644,
            rdev: 0,
            owner: None,
        },
        Request::Link {
            node: root,
            parent: root,
            name: n,
        },
    ]
}

/// One entry outside the share, as far as a change could show.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    len: u64,
    ino: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// BLAKE3 of a file's bytes.
    content: Option<Checksum>,
}

/// What the host must not let a client touch: a directory outside the
/// share, with a sentinel file in it, and the names beside the share.
#[derive(Debug, PartialEq, Eq)]
struct Outside {
    entries: BTreeMap<String, Seen>,
    beside: Vec<String>,
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn outside_state(dir: &Path) -> Outside {
    let mut entries = BTreeMap::new();
    for n in names_in(&dir.join("outside")) {
        let p = dir.join("outside").join(&n);
        let m = fs::symlink_metadata(&p).expect("lstat outside");
        let content = m
            .is_file()
            .then(|| Checksum::of(&fs::read(&p).expect("read outside")));
        entries.insert(
            n,
            Seen {
                mode: m.mode(),
                len: m.len(),
                ino: m.ino(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                content,
            },
        );
    }
    Outside {
        entries,
        beside: names_in(dir),
    }
}

/// Asserts the host refused `request`, and returns its error.
async fn refused(c: &mut RawClient, request: Request) -> Errno {
    let what = format!("{request:?}");
    match c.call(request).await {
        Err(e) => e,
        Ok(reply) => panic!("not refused: {what} got {reply:?}"),
    }
}

async fn lookup(c: &mut RawClient, parent: NodeId, n: &str) -> Attr {
    match c
        .call(Request::Lookup {
            parent,
            name: name(n),
        })
        .await
    {
        Ok(Reply::Attr(a)) => a,
        other => panic!("lookup {n}: {other:?}"),
    }
}

/// The evil names tried through links: unique to this process, so a
/// check that they did not appear outside means something.
fn evil(what: &str) -> String {
    format!("wormhole-evil-{}-{what}", std::process::id())
}

fn hostile<S: Shell>(shell: &S) {
    wormhole_io::cli::init_tracing();
    let dir = scratch("hostile", shell.name());
    let _cleanup = Guard::new(&dir);
    let (share, outside) = (dir.join("share"), dir.join("outside"));
    fs::create_dir(&outside).expect("mkdir outside");
    fs::write(
        outside.join("secret"),
        b"the sentinel: do not read or touch",
    )
    .expect("sentinel");
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o640))
        .expect("chmod sentinel");
    fs::write(outside.join("inside"), b"outside, named like a file inside").expect("decoy");
    fs::write(share.join("victim"), b"victim content").expect("victim");
    fs::write(share.join("movable"), b"movable").expect("movable");
    fs::create_dir(share.join("swap")).expect("mkdir swap");
    // Special files a local program made: a FIFO, and /dev/zero's twin
    // (making one needs root, as the rest of this suite does).
    for args in [&["mkfifo", "pipe"][..], &["mknod", "zero", "c", "1", "5"]] {
        let status = std::process::Command::new(args[0])
            .args(&args[1..])
            .current_dir(&share)
            .status()
            .expect("run mkfifo or mknod");
        assert!(status.success(), "{args:?}");
    }
    fs::write(share.join("swap/inside"), b"inside").expect("a file in swap");
    let abs = |p: &Path| p.to_str().expect("utf-8 temp dir").to_owned();
    // (link name, target, names to look up through it: one that exists
    // there, one that does not).
    let links: Vec<(&str, String, [String; 2])> = vec![
        ("to-etc", "/etc".into(), ["passwd".into(), evil("absent")]),
        (
            "up-up",
            "../..".into(),
            [
                dir.file_name()
                    .expect("scratch name")
                    .to_string_lossy()
                    .into_owned(),
                evil("absent"),
            ],
        ),
        (
            "to-outside",
            abs(&outside),
            ["secret".into(), evil("absent")],
        ),
        (
            "up-outside",
            "../outside".into(),
            ["secret".into(), evil("absent")],
        ),
        (
            "to-secret",
            abs(&outside.join("secret")),
            ["secret".into(), evil("absent")],
        ),
        (
            "up-secret",
            "../outside/secret".into(),
            ["secret".into(), evil("absent")],
        ),
        (
            "to-nowhere",
            abs(&outside.join(evil("created-through-a-link"))),
            ["secret".into(), evil("absent")],
        ),
    ];
    for (link, target, _) in &links {
        symlink(target, share.join(link)).expect("a symlink in the share");
    }
    let before = outside_state(&dir);

    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = ticket(&host, &identity);
    // Made while the host runs: indexed on demand, not by the scan.
    symlink("/etc", share.join("late-link")).expect("a late symlink");
    let mut links = links;
    links.push((
        "late-link",
        "/etc".into(),
        ["passwd".into(), evil("absent")],
    ));

    let t = transport(shell, &ticket);
    let t2 = transport(shell, &ticket);
    within(shell, 4 * STEP, "the hostile client's attempts", async {
        let (mut c, _) = RawClient::authenticated(&t).await;
        let (mut honest, _) = RawClient::authenticated(&t2).await;
        bad_names(&mut c).await;
        through_links(&mut c, &links, &share).await;
        swapped_dir(&mut c, &dir).await;
        never_given_out(&mut c).await;
        special_files(&mut c).await;
        other_sessions(&mut c, &mut honest, &share).await;
        record_locks(&mut c, &mut honest).await;
        // Still a working connection: the refusals were refusals, not a
        // dead host.
        let root = c.call(Request::GetAttr { node: NodeId::ROOT }).await;
        assert!(matches!(root, Ok(Reply::Attr(_))), "{root:?}");
    });

    let after = outside_state(&dir);
    assert_eq!(after, before, "nothing outside the share changed");
    assert_eq!(
        fs::read(outside.join("secret")).expect("the sentinel"),
        b"the sentinel: do not read or touch"
    );
    for what in ["file", "dir", "link", "moved", "created-through-a-link"] {
        let n = evil(what);
        for place in [Path::new("/etc"), &std::env::temp_dir(), &outside] {
            let p = place.join(&n);
            let there = fs::symlink_metadata(&p).is_ok();
            if there {
                // Clean up what a bug put there before failing.
                let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir(&p));
            }
            assert!(!there, "{} was created outside the share", p.display());
        }
    }
    assert!(
        fs::symlink_metadata(share.join("stolen")).is_err(),
        "nothing was moved in from outside"
    );
    stop_host(shell, host);
}

/// Record locks from a hostile session: a file that does not exist and a
/// range that ends before it starts are refused; the table holds at most
/// 4,096 ranges per session (ENOLCK after, nothing else changed); what
/// it holds keeps an honest session out, as a lock should, until it is
/// let go.
async fn record_locks(c: &mut RawClient, honest: &mut RawClient) {
    use wormhole_core::proto::{ByteRange, LockKind};
    let victim = lookup(c, NodeId::ROOT, "victim").await.node;
    let lock = |node, start, end| Request::SetLock {
        node,
        owner: 7,
        range: ByteRange { start, end },
        kind: LockKind::Exclusive,
        wait: false,
    };
    assert_eq!(refused(c, lock(NodeId(u64::MAX), 0, 0)).await, Errno::Stale);
    assert_eq!(refused(c, lock(victim, 9, 3)).await, Errno::Inval);
    // Ranges two bytes apart never merge: each is one entry.
    for i in 0..4096u64 {
        let got = c.call(lock(victim, 2 * i, 2 * i)).await;
        assert_eq!(got, Ok(Reply::Done), "lock {i}");
    }
    assert_eq!(refused(c, lock(victim, 9000, 9000)).await, Errno::NoLck);
    let theirs = Request::SetLock {
        node: victim,
        owner: 1,
        range: ByteRange { start: 4, end: 4 },
        kind: LockKind::Shared,
        wait: false,
    };
    assert_eq!(refused(honest, theirs.clone()).await, Errno::Again);
    let unlock = Request::Unlock {
        node: victim,
        owner: 7,
        range: ByteRange::WHOLE,
    };
    assert_eq!(c.call(unlock).await, Ok(Reply::Done));
    assert_eq!(honest.call(theirs).await, Ok(Reply::Done));
}

/// Names that are not one component, in every request that carries a
/// name: the host's decoder refuses each (the stream is reset, no reply),
/// and the same frame with a fine name gets an answer, so it is the name
/// that is refused, not a broken frame.
async fn bad_names(c: &mut RawClient) {
    let bad: Vec<Vec<u8>> = vec![
        b"..".to_vec(),
        b".".to_vec(),
        b"a/b".to_vec(),
        b"/".to_vec(),
        b"/etc/passwd".to_vec(),
        b"../outside/secret".to_vec(),
        b"..\0".to_vec(),
        b"a\0b".to_vec(),
        Vec::new(),
        vec![b'a'; 256],
    ];
    let templates = named_requests(Name::new(PLACEHOLDER.to_vec()).expect("placeholder"));
    for (i, template) in templates.into_iter().enumerate() {
        let good = format!("fine-{i}");
        let frame = splice(&c.encode(template.clone()), good.as_bytes());
        let answer = c.call_raw(&frame).await;
        assert!(
            matches!(answer, Ok(HostMessage::Reply { .. })),
            "{template:?} with the name {good:?} is answered: {answer:?}"
        );
        for b in &bad {
            let frame = splice(&c.encode(template.clone()), b);
            match c.call_raw(&frame).await {
                // Reset: refused before any decision, nothing revealed.
                Err(_) => {}
                // An errno would be a refusal too; a success never.
                Ok(HostMessage::Reply { result: Err(_), .. }) => {}
                Ok(other) => panic!(
                    "{template:?} with the name {:?}: {other:?}",
                    String::from_utf8_lossy(b)
                ),
            }
        }
    }
}

/// Symlinks are data: the link itself is found and read, nothing goes
/// through it.
async fn through_links(c: &mut RawClient, links: &[(&str, String, [String; 2])], share: &Path) {
    let root = NodeId::ROOT;
    for (link, target, [there, absent]) in links {
        let a = lookup(c, root, link).await;
        let own = fs::symlink_metadata(share.join(link)).expect("lstat the link");
        assert_eq!(
            a.kind,
            FileKind::Symlink,
            "{link} is a symlink, not its target"
        );
        assert_eq!(a.key.ino, own.ino(), "{link}: the link's own inode");
        assert_eq!(a.size, target.len() as u64, "{link}: the link's own size");
        let node = a.node;
        assert_eq!(
            c.call(Request::Readlink { node }).await,
            Ok(Reply::Link(target.as_bytes().to_vec())),
            "{link}: its target is readable text"
        );
        match c.call(Request::GetAttr { node }).await {
            Ok(Reply::Attr(a)) => assert_eq!(a.kind, FileKind::Symlink, "{link}"),
            other => panic!("GetAttr of {link}: {other:?}"),
        }
        // Through the link as a directory: refused, and with the same
        // error whether the name exists out there or not.
        let e1 = refused(
            c,
            Request::Lookup {
                parent: node,
                name: name(there),
            },
        )
        .await;
        let e2 = refused(
            c,
            Request::Lookup {
                parent: node,
                name: name(absent),
            },
        )
        .await;
        assert_eq!(e1, e2, "{link}: the error says nothing about the outside");
        for request in reaching_through(node, node, there) {
            refused(c, request).await;
        }
        for scope in [LockScope::Directory(node), LockScope::Subtree(node)] {
            refused(
                c,
                Request::AcquireLock {
                    scope,
                    kind: LockKind::Exclusive,
                    wait: false,
                },
            )
            .await;
        }
        // A lock on the link itself is harmless; writing through it is
        // not allowed.
        if let Ok(Reply::LockGranted { token, .. }) = c
            .call(Request::AcquireLock {
                scope: LockScope::File(node),
                kind: LockKind::Exclusive,
                wait: false,
            })
            .await
        {
            refused(
                c,
                Request::BeginWrite {
                    node,
                    token,
                    base: None,
                    append_from: None,
                },
            )
            .await;
            refused(
                c,
                Request::SetAttr {
                    node,
                    set: SetAttr {
                        size: Some(0),
                        ..SetAttr::default()
                    },
                    token: Some(token),
                },
            )
            .await;
            assert_eq!(
                c.call(Request::ReleaseLock { token }).await,
                Ok(Reply::Done)
            );
        }
        refused(
            c,
            Request::SetAttr {
                node,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
                token: None,
            },
        )
        .await;
        refused(
            c,
            Request::SetAttr {
                node,
                set: SetAttr {
                    mode: Some(0o777),
                    ..SetAttr::default()
                },
                token: None,
            },
        )
        .await;
        // Times may be set, on the link itself (the outside check at the
        // end shows the target kept its own).
        let old = SetTime::At(Timestamp {
            secs: 1_000_000,
            nanos: 0,
        });
        if let Ok(reply) = c
            .call(Request::SetAttr {
                node,
                set: SetAttr {
                    atime: Some(old),
                    mtime: Some(old),
                    ..SetAttr::default()
                },
                token: None,
            })
            .await
        {
            assert!(
                matches!(&reply, Reply::Attr(a) if a.kind == FileKind::Symlink),
                "{link}: {reply:?}"
            );
        }
        // Creating the link's name opens nothing through it (for
        // to-nowhere, an O_CREAT that followed it would make the file
        // outside).
        for exclusive in [false, true] {
            refused(
                c,
                Request::Create {
                    parent: root,
                    name: name(link),
                    mode: 0o644,
                    exclusive,
                    open: false,
                    owner: None,
                },
            )
            .await;
        }
        assert_eq!(
            fs::read_link(share.join(link)).expect("the link is still there"),
            PathBuf::from(target)
        );
    }
    // The listing shows the links as links.
    let mut cookie = 0;
    loop {
        match c.call(Request::ReadDir { dir: root, cookie }).await {
            Ok(Reply::DirPage { entries, next }) => {
                for e in entries {
                    let n = String::from_utf8_lossy(e.name.as_bytes()).into_owned();
                    if links.iter().any(|(l, _, _)| *l == n) {
                        assert_eq!(e.attr.kind, FileKind::Symlink, "{n} listed as a link");
                    }
                }
                match next {
                    Some(n) => cookie = n,
                    None => break,
                }
            }
            other => panic!("list the root: {other:?}"),
        }
    }
}

/// Every request that would reach through `dir` to what lies beyond it
/// (`there` is a name beyond), or open and read `file` (reached through
/// it): each must be refused.
fn reaching_through(dir: NodeId, file: NodeId, there: &str) -> Vec<Request> {
    vec![
        Request::ReadDir { dir, cookie: 0 },
        Request::Open {
            node: file,
            mode: OpenFor::Write,
        },
        Request::Read {
            file: FileRef::Node(file),
            offset: 0,
            len: 4096,
        },
        Request::Create {
            parent: dir,
            name: name(&evil("file")),
            mode: 0o644,
            exclusive: false,
            open: false,
            owner: None,
        },
        Request::Mkdir {
            parent: dir,
            name: name(&evil("dir")),
            mode: 0o755,
            owner: None,
            lease: false,
        },
        Request::Symlink {
            parent: dir,
            name: name(&evil("link")),
            target: b"x".to_vec(),
            owner: None,
        },
        Request::Unlink {
            parent: dir,
            name: name(there),
        },
        Request::Rmdir {
            parent: dir,
            name: name(there),
        },
        Request::Rename {
            parent: dir,
            name: name(there),
            new_parent: NodeId::ROOT,
            new_name: name("stolen"),
        },
        Request::Rename {
            parent: NodeId::ROOT,
            name: name("movable"),
            new_parent: dir,
            new_name: name(&evil("moved")),
        },
        Request::Link {
            node: file,
            parent: dir,
            name: name(&evil("hardlink")),
        },
        // A symlink's extended attributes are its own (none are served
        // for one), never its target's.
        Request::SetXattr {
            node: file,
            name: b"user.evil".to_vec(),
            value: b"1".to_vec(),
            how: XattrSet::Either,
        },
        Request::GetXattr {
            node: file,
            name: b"user.evil".to_vec(),
        },
        Request::RemoveXattr {
            node: file,
            name: b"user.evil".to_vec(),
        },
    ]
}

/// A FIFO and a device node a local program put in the share: the FIFO
/// is shown as what it is and never opened (an open for reading would
/// wait for a writer forever, and the test's time limit would fail it);
/// the device node is not even shown (the host does not allow them), so
/// its bytes are unreachable by any request.
async fn special_files(c: &mut RawClient) {
    let root = NodeId::ROOT;
    let pipe = lookup(c, root, "pipe").await;
    assert_eq!(pipe.kind, FileKind::Fifo);
    let node = pipe.node;
    for mode in [OpenFor::Read, OpenFor::Write, OpenFor::Append] {
        refused(c, Request::Open { node, mode }).await;
    }
    refused(
        c,
        Request::Read {
            file: FileRef::Node(node),
            offset: 0,
            len: 4096,
        },
    )
    .await;
    for request in [
        Request::GetXattr {
            node,
            name: b"user.x".to_vec(),
        },
        Request::SetXattr {
            node,
            name: b"user.x".to_vec(),
            value: b"1".to_vec(),
            how: XattrSet::Either,
        },
    ] {
        refused(c, request).await;
    }
    assert_eq!(
        refused(
            c,
            Request::Lookup {
                parent: root,
                name: name("zero"),
            },
        )
        .await,
        Errno::NoEnt,
        "a device node is not shown"
    );
    match c
        .call(Request::ReadDir {
            dir: root,
            cookie: 0,
        })
        .await
    {
        Ok(Reply::DirPage { entries, .. }) => assert!(
            entries.iter().all(|e| e.name.as_bytes() != b"zero"),
            "a device node is not listed"
        ),
        other => panic!("readdir: {other:?}"),
    }
}

/// A directory the host indexed, swapped for a symlink to the outside by
/// a local program: the host's old node ids for it and its children lead
/// nowhere (its disk executor takes no symlink on the way).
async fn swapped_dir(c: &mut RawClient, dir: &Path) {
    let share = dir.join("share");
    let swap = lookup(c, NodeId::ROOT, "swap").await;
    assert_eq!(swap.kind, FileKind::Dir);
    let inside = lookup(c, swap.node, "inside").await;
    // Removed, not moved within the share: a directory moved within it
    // is followed (its node names it at its new place, still the share's
    // own), so its old ids would still name it, legitimately.
    fs::remove_dir_all(share.join("swap")).expect("remove the directory");
    symlink(dir.join("outside"), share.join("swap")).expect("a symlink in its place");
    // At once, before the host's watcher may have noticed: the core
    // still believes `swap` is a directory.
    let (s, i) = (swap.node, inside.node);
    let e1 = refused(
        c,
        Request::Lookup {
            parent: s,
            name: name("secret"),
        },
    )
    .await;
    let e2 = refused(
        c,
        Request::Lookup {
            parent: s,
            name: name(&evil("absent")),
        },
    )
    .await;
    assert_eq!(e1, e2, "the error says nothing about the outside");
    refused(c, Request::GetAttr { node: i }).await;
    refused(
        c,
        Request::SetAttr {
            node: i,
            set: SetAttr {
                size: Some(0),
                mode: Some(0o777),
                ..SetAttr::default()
            },
            token: None,
        },
    )
    .await;
    for request in reaching_through(s, i, "inside") {
        refused(c, request).await;
    }
    if let Ok(Reply::LockGranted { token, .. }) = c
        .call(Request::AcquireLock {
            scope: LockScope::File(i),
            kind: LockKind::Exclusive,
            wait: false,
        })
        .await
    {
        refused(
            c,
            Request::BeginWrite {
                node: i,
                token,
                base: None,
                append_from: None,
            },
        )
        .await;
        let _ = c.call(Request::ReleaseLock { token }).await;
    }
}

/// Node ids, handles and transactions the host never gave out.
async fn never_given_out(c: &mut RawClient) {
    for n in [0, 999_999, 1 << 40, u64::MAX] {
        let node = NodeId(n);
        for request in [
            Request::GetAttr { node },
            Request::Lookup {
                parent: node,
                name: name("passwd"),
            },
            Request::ReadDir {
                dir: node,
                cookie: 0,
            },
            Request::Open {
                node,
                mode: OpenFor::Read,
            },
            Request::Read {
                file: FileRef::Node(node),
                offset: 0,
                len: 4096,
            },
            Request::Readlink { node },
            Request::Create {
                parent: node,
                name: name(&evil("file")),
                mode: 0o644,
                exclusive: false,
                open: false,
                owner: None,
            },
            Request::Mkdir {
                parent: node,
                name: name(&evil("dir")),
                mode: 0o755,
                owner: None,
                lease: false,
            },
            Request::SetAttr {
                node,
                set: SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
                token: None,
            },
            Request::AcquireLock {
                scope: LockScope::File(node),
                kind: LockKind::Exclusive,
                wait: false,
            },
        ] {
            let what = format!("{request:?}");
            assert_eq!(c.call(request).await, Err(Errno::Stale), "{what}");
        }
    }
    let handle = HandleId(4242);
    assert_eq!(
        c.call(Request::Read {
            file: FileRef::Handle(handle),
            offset: 0,
            len: 4096
        })
        .await,
        Err(Errno::BadF)
    );
    assert_eq!(c.call(Request::Close { handle }).await, Err(Errno::BadF));
    let txn = TxnId(4242);
    for request in [
        Request::WriteChunk {
            txn,
            index: 0,
            offset: 0,
            data: bytes::Bytes::from_static(b"evil"),
        },
        Request::TruncateWrite { txn, size: 0 },
        Request::CommitWrite {
            txn,
            size: 0,
            set: Default::default(),
        },
        Request::AbortWrite { txn },
    ] {
        refused(c, request).await;
    }
}

fn staging_names(share: &Path) -> Vec<Vec<u8>> {
    fs::read_dir(share)
        .expect("list the share")
        .map(|e| e.expect("entry").file_name().as_encoded_bytes().to_vec())
        .filter(|n| n.starts_with(RESERVED_PREFIX))
        .collect()
}

/// A forged token, and another session's token, transaction, staging
/// file and handle: all refused, and the other session's write is
/// exactly its own.
async fn other_sessions(c: &mut RawClient, honest: &mut RawClient, share: &Path) {
    let root = NodeId::ROOT;
    let victim = lookup(c, root, "victim").await.node;
    let forged = LockToken([0x42; 16]);
    refused(
        c,
        Request::BeginWrite {
            node: victim,
            token: forged,
            base: None,
            append_from: None,
        },
    )
    .await;
    let truncate = |token| Request::SetAttr {
        node: victim,
        set: SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
        token,
    };
    refused(c, truncate(Some(forged))).await;
    refused(c, Request::RefreshLock { token: forged }).await;
    refused(c, Request::ReleaseLock { token: forged }).await;
    assert_eq!(
        fs::read(share.join("victim")).expect("victim"),
        b"victim content"
    );

    // The honest client locks the file and stages a write.
    let token = match honest
        .call(Request::AcquireLock {
            scope: LockScope::File(victim),
            kind: LockKind::Exclusive,
            wait: false,
        })
        .await
    {
        Ok(Reply::LockGranted { token, .. }) => token,
        other => panic!("the honest lock: {other:?}"),
    };
    let txn = match honest
        .call(Request::BeginWrite {
            node: victim,
            token,
            base: None,
            append_from: None,
        })
        .await
    {
        Ok(Reply::WriteBegun { txn }) => txn,
        other => panic!("the honest write: {other:?}"),
    };
    let content: Vec<u8> = (0..CHUNK_SIZE + 10).map(|i| (i % 7) as u8 + b'0').collect();
    for (i, piece) in content.chunks(CHUNK_SIZE).enumerate() {
        let reply = honest
            .call(Request::WriteChunk {
                txn,
                index: i as u64,
                offset: 0,
                data: bytes::Bytes::copy_from_slice(piece),
            })
            .await;
        assert_eq!(reply, Ok(Reply::Done));
    }

    // Its token, learned somehow, is no good to another session.
    refused(
        c,
        Request::BeginWrite {
            node: victim,
            token,
            base: None,
            append_from: None,
        },
    )
    .await;
    refused(c, truncate(Some(token))).await;
    refused(c, truncate(None)).await;
    refused(c, Request::RefreshLock { token }).await;
    refused(c, Request::ReleaseLock { token }).await;
    refused(
        c,
        Request::Unlink {
            parent: root,
            name: name("victim"),
        },
    )
    .await;
    refused(
        c,
        Request::Rename {
            parent: root,
            name: name("movable"),
            new_parent: root,
            new_name: name("victim"),
        },
    )
    .await;
    // Nor its transaction.
    let evil_bytes = vec![b'X'; 100];
    for request in [
        Request::WriteChunk {
            txn,
            index: 0,
            offset: 0,
            data: bytes::Bytes::copy_from_slice(&evil_bytes),
        },
        Request::TruncateWrite { txn, size: 1 },
        Request::CommitWrite {
            txn,
            size: 1,
            set: Default::default(),
        },
        Request::AbortWrite { txn },
    ] {
        refused(c, request).await;
    }
    // Nor its staging file, hidden under a reserved name.
    let staged = staging_names(share);
    assert!(!staged.is_empty(), "the honest write is staged on disk");
    for s in staged {
        let n = Name::new(s).expect("a staging name is a name");
        assert_eq!(
            c.call(Request::Lookup {
                parent: root,
                name: n.clone()
            })
            .await,
            Err(Errno::Acces)
        );
        for request in [
            Request::Unlink {
                parent: root,
                name: n.clone(),
            },
            Request::Create {
                parent: root,
                name: n.clone(),
                mode: 0o644,
                exclusive: false,
                open: false,
                owner: None,
            },
            Request::Rename {
                parent: root,
                name: name("movable"),
                new_parent: root,
                new_name: n.clone(),
            },
            Request::Rename {
                parent: root,
                name: n,
                new_parent: root,
                new_name: name("stolen"),
            },
        ] {
            refused(c, request).await;
        }
    }
    match c
        .call(Request::ReadDir {
            dir: root,
            cookie: 0,
        })
        .await
    {
        Ok(Reply::DirPage { entries, .. }) => assert!(
            !entries
                .iter()
                .any(|e| e.name.as_bytes().starts_with(RESERVED_PREFIX)),
            "staging files are not listed"
        ),
        other => panic!("list the root: {other:?}"),
    }

    // The honest write commits, exactly as written.
    match honest
        .call(Request::CommitWrite {
            txn,
            size: content.len() as u64,
            set: Default::default(),
        })
        .await
    {
        Ok(Reply::Attr(a)) => assert_eq!(a.size, content.len() as u64),
        other => panic!("the honest commit: {other:?}"),
    }
    assert_eq!(
        honest.call(Request::ReleaseLock { token }).await,
        Ok(Reply::Done)
    );
    assert!(
        fs::read(share.join("victim")).expect("victim") == content,
        "the victim holds the honest write, nothing of the hostile client's"
    );

    // Nor its open handle.
    let handle = match honest
        .call(Request::Open {
            node: victim,
            mode: OpenFor::Read,
        })
        .await
    {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("the honest open: {other:?}"),
    };
    assert_eq!(
        c.call(Request::Read {
            file: FileRef::Handle(handle),
            offset: 0,
            len: 4096
        })
        .await,
        Err(Errno::BadF)
    );
    assert_eq!(c.call(Request::Close { handle }).await, Err(Errno::BadF));
    assert_eq!(
        honest.call(Request::Close { handle }).await,
        Ok(Reply::Done),
        "the handle survived the attempts"
    );
}
