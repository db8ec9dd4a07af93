use super::*;
use crate::proto::MAX_DIR_PAGE;
use std::fmt::Write;

fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

fn attr() -> Attr {
    Attr {
        node: NodeId(5),
        key: FileKey {
            dev: 2049,
            ino: 131,
        },
        kind: FileKind::File,
        size: 1000,
        mode: 0o644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        atime: Timestamp {
            secs: 1_700_000_000,
            nanos: 1,
        },
        mtime: Timestamp {
            secs: 1_700_000_001,
            nanos: 2,
        },
        ctime: Timestamp {
            secs: 1_700_000_002,
            nanos: 3,
        },
        version: 77,
        rdev: 0,
    }
}

fn every_request() -> Vec<Request> {
    let token = LockToken([0xab; 16]);
    vec![
        Request::Hello {
            version: 1,
            proof: [7; 32],
            resume: Some(SessionId([1; 16])),
        },
        Request::Lookup {
            parent: NodeId::ROOT,
            name: name("a.txt"),
        },
        Request::GetAttr { node: NodeId(5) },
        Request::SetAttr {
            node: NodeId(5),
            set: SetAttr {
                size: Some(0),
                mode: Some(0o600),
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::At(Timestamp { secs: 5, nanos: 6 })),
                uid: None,
                gid: None,
            },
            token: Some(token),
        },
        Request::ReadDir {
            dir: NodeId::ROOT,
            cookie: 512,
        },
        Request::Open {
            node: NodeId(5),
            mode: OpenFor::Append,
        },
        Request::Close {
            handle: HandleId(8),
        },
        Request::Read {
            file: FileRef::Node(NodeId(5)),
            offset: 131_072,
            len: 131_072,
        },
        Request::Read {
            file: FileRef::Handle(HandleId(8)),
            offset: 0,
            len: 4096,
        },
        Request::Create {
            parent: NodeId::ROOT,
            name: name("n"),
            mode: 0o644,
            exclusive: true,
            open: false,
            owner: None,
        },
        Request::Mkdir {
            parent: NodeId::ROOT,
            name: name("d"),
            mode: 0o755,
            owner: None,
            lease: true,
        },
        Request::Unlink {
            parent: NodeId::ROOT,
            name: name("n"),
        },
        Request::Rmdir {
            parent: NodeId::ROOT,
            name: name("d"),
        },
        Request::Rename {
            parent: NodeId::ROOT,
            name: name("a"),
            new_parent: NodeId(9),
            new_name: name("b"),
        },
        Request::Symlink {
            parent: NodeId::ROOT,
            name: name("l"),
            target: b"../x".to_vec(),
            owner: Some(Owner {
                uid: 1000,
                gid: 100,
            }),
        },
        Request::Mknod {
            parent: NodeId::ROOT,
            name: name("p"),
            kind: FileKind::Fifo,
            mode: 0o640,
            rdev: 0,
            owner: None,
        },
        Request::Readlink { node: NodeId(6) },
        Request::Link {
            node: NodeId(6),
            parent: NodeId::ROOT,
            name: name("hard"),
        },
        Request::GetXattr {
            node: NodeId(6),
            name: b"user.tag".to_vec(),
        },
        Request::ListXattr { node: NodeId(6) },
        Request::SetXattr {
            node: NodeId(6),
            name: b"user.tag".to_vec(),
            value: b"blue".to_vec(),
            how: XattrSet::Create,
        },
        Request::RemoveXattr {
            node: NodeId(6),
            name: b"user.tag".to_vec(),
        },
        Request::SetLock {
            node: NodeId(6),
            owner: 0xfeed,
            range: ByteRange { start: 10, end: 19 },
            kind: LockKind::Exclusive,
            wait: true,
        },
        Request::Unlock {
            node: NodeId(6),
            owner: 0xfeed,
            range: ByteRange::WHOLE,
        },
        Request::Withdraw {
            node: NodeId(6),
            owner: 0xfeed,
            range: ByteRange { start: 10, end: 19 },
        },
        Request::TestLock {
            node: NodeId(6),
            owner: 0xbeef,
            range: ByteRange { start: 0, end: 0 },
            kind: LockKind::Shared,
        },
        Request::Statfs,
        Request::Lease { dir: NodeId(2) },
        Request::Apply {
            dir: NodeId(2),
            tag: 3,
            ops: vec![
                LeaseOp::Unlink {
                    node: NodeId(9),
                    name: name("old.txt"),
                },
                LeaseOp::Rmdir {
                    node: NodeId(10),
                    name: name("emptied"),
                },
                LeaseOp::CreateFile {
                    node: NodeId(1025),
                    name: name("new.txt"),
                    mode: 0o644,
                    owner: None,
                    times: SetAttr::default(),
                    data: Bytes::from_static(b"hi"),
                },
                LeaseOp::SetAttr {
                    set: SetAttr {
                        mode: Some(0o755),
                        mtime: Some(SetTime::At(Timestamp {
                            secs: 1_700_000_000,
                            nanos: 5,
                        })),
                        atime: Some(SetTime::Now),
                        ..SetAttr::default()
                    },
                },
            ],
        },
        Request::AcquireLock {
            scope: LockScope::File(NodeId(5)),
            kind: LockKind::Exclusive,
            wait: true,
        },
        Request::AcquireLock {
            scope: LockScope::Directory(NodeId(1)),
            kind: LockKind::Shared,
            wait: false,
        },
        Request::AcquireLock {
            scope: LockScope::Subtree(NodeId(1)),
            kind: LockKind::Shared,
            wait: false,
        },
        Request::RefreshLock { token },
        Request::ReleaseLock { token },
        Request::BeginWrite {
            node: NodeId(5),
            token,
            base: Some(0x1234_5678_9abc_def0),
            append_from: None,
        },
        Request::WriteChunk {
            txn: TxnId(3),
            index: 2,
            offset: 100,
            data: Bytes::from_static(b"hello"),
        },
        Request::CommitWrite {
            txn: TxnId(3),
            size: 262_149,
            set: SetAttr {
                size: None,
                mode: Some(0o640),
                atime: None,
                mtime: Some(SetTime::At(Timestamp {
                    secs: 1_796_491_883,
                    nanos: 0,
                })),
                uid: None,
                gid: None,
            },
        },
        Request::AbortWrite { txn: TxnId(3) },
        Request::Goodbye,
        Request::Sync,
        Request::CopyWrite {
            txn: TxnId(5),
            from: FileRef::Handle(HandleId(9)),
            from_offset: 4096,
            offset: 1 << 20,
            len: 1 << 26,
        },
    ]
}

fn every_host_message() -> Vec<HostMessage> {
    let reply = |r| HostMessage::Reply {
        id: RequestId(42),
        result: Ok(r),
    };
    let mut all = vec![
        reply(Reply::HelloAck {
            session: SessionId([2; 16]),
            root: Attr {
                node: NodeId::ROOT,
                kind: FileKind::Dir,
                ..attr()
            },
            limits: Limits {
                chunk_size: 131_072,
                max_dir_page: 512,
                lock_ttl_ms: 30_000,
                read_only: false,
                owners: crate::proto::Owners::HostUser {
                    uid: 1000,
                    gid: 1000,
                },
            },
        }),
        reply(Reply::Attr(attr())),
        reply(Reply::DirPage {
            entries: vec![DirEntry {
                name: name("a.txt"),
                attr: attr(),
            }],
            next: Some(1),
        }),
        reply(Reply::Data {
            data: Bytes::from_static(b"abc"),

            version: 9,
        }),
        reply(Reply::Link(b"target".to_vec())),
        reply(Reply::StatFs(StatFs {
            blocks: 100,
            bfree: 50,
            bavail: 40,
            files: 10,
            ffree: 5,
            bsize: 4096,
            namelen: 255,
        })),
        reply(Reply::LockGranted {
            token: LockToken([0xcd; 16]),
            ttl_ms: 30_000,
        }),
        reply(Reply::Opened {
            handle: HandleId(8),
            attr: attr(),
            inline: Bytes::from_static(b"small"),
            dirs: vec![attr()],
        }),
        reply(Reply::WriteBegun { txn: TxnId(3) }),
        reply(Reply::Done),
        reply(Reply::Made {
            attr: attr(),
            dirs: vec![attr()],
            lease: Some(LeaseGrant {
                token: LockToken([0xef; 16]),
                ttl_ms: 30_000,
                nodes: NodeRange {
                    first: NodeId(1 << 40),
                    count: 1024,
                },
            }),
        }),
        reply(Reply::Unnamed {
            dirs: vec![attr(), attr()],
        }),
        reply(Reply::Xattr(b"user.a\0user.b\0".to_vec())),
        reply(Reply::LockTest(Some(RangeHeld {
            range: ByteRange::WHOLE,
            kind: LockKind::Exclusive,
        }))),
        reply(Reply::LockTest(None)),
    ];
    all.extend(Errno::ALL.iter().take(3).map(|&e| HostMessage::Reply {
        id: RequestId(42),
        result: Err(e),
    }));
    for what in [
        Invalidation::Attr,
        Invalidation::Data,
        Invalidation::Entries,
        Invalidation::Gone,
    ] {
        all.push(HostMessage::Invalidate {
            node: NodeId(5),
            what,
        });
    }
    all
}

/// Each way of encoding and decoding (whole, in pieces, sharing the
/// frame) gives the same bytes and the same message.
#[test]
fn every_message_round_trips_and_its_wire_bytes_are_pinned() {
    let mut listing = String::new();
    for (i, request) in every_request().into_iter().enumerate() {
        let msg = ClientMessage {
            id: RequestId(i as u64),
            request,
        };
        let bytes = msg.encode().expect("fits");
        assert_eq!(ClientMessage::decode(&bytes).as_ref(), Ok(&msg));
        assert_eq!(ClientMessage::decode_shared(&bytes).as_ref(), Ok(&msg));
        assert_eq!(msg.encode_pieces().expect("fits").join(), bytes);
        writeln!(listing, "{:?}\n  {:02x?}", msg.request, &bytes[..]).expect("write");
    }
    for msg in every_host_message() {
        let bytes = msg.encode().expect("fits");
        assert_eq!(HostMessage::decode(&bytes).as_ref(), Ok(&msg));
        assert_eq!(HostMessage::decode_shared(&bytes).as_ref(), Ok(&msg));
        assert_eq!(msg.encode_pieces().expect("fits").join(), bytes);
        writeln!(listing, "{msg:?}\n  {:02x?}", &bytes[..]).expect("write");
    }
    insta::assert_snapshot!("proto_wire", listing);
}

#[test]
fn the_largest_legal_messages_fit_their_limits() {
    let chunk = ClientMessage {
        id: RequestId(u64::MAX),
        request: Request::WriteChunk {
            txn: TxnId(u64::MAX),
            index: u64::MAX,
            offset: u32::MAX,
            data: Bytes::from(vec![0xee; MAX_WRITE_PIECE]),
        },
    };
    assert!(chunk.encode().is_ok());
    let long = Name::new(vec![b'x'; crate::proto::MAX_NAME_LEN]).expect("255 bytes");
    let big_attr = Attr {
        size: u64::MAX,
        version: u64::MAX,
        node: NodeId(u64::MAX),
        key: FileKey {
            dev: u64::MAX,
            ino: u64::MAX,
        },
        ..attr()
    };
    let page = HostMessage::Reply {
        id: RequestId(u64::MAX),
        result: Ok(Reply::DirPage {
            entries: vec![
                DirEntry {
                    name: long,
                    attr: big_attr
                };
                MAX_DIR_PAGE
            ],
            next: Some(u64::MAX),
        }),
    };
    assert!(page.encode().is_ok());
}

#[test]
fn oversized_and_malformed_messages_are_typed_errors() {
    let too_big = ClientMessage {
        id: RequestId(1),
        request: Request::WriteChunk {
            txn: TxnId(1),
            index: 0,
            offset: 0,
            data: Bytes::from(vec![0; MAX_WRITE_PIECE + 1024]),
        },
    };
    assert!(matches!(too_big.encode(), Err(CodecError::TooLarge { .. })));
    let wire = ClientMessage {
        id: RequestId(1),
        request: Request::Statfs,
    }
    .encode()
    .expect("fits");
    for len in 0..wire.len() {
        assert!(ClientMessage::decode(&wire[..len]).is_err());
    }
    // An invalid name inside a valid envelope is refused at decode time.
    let mut lookup = ClientMessage {
        id: RequestId(1),
        request: Request::Lookup {
            parent: NodeId::ROOT,
            name: name("ab"),
        },
    }
    .encode()
    .expect("fits")
    .to_vec();
    let at = lookup.len() - 2;
    lookup[at] = b'/';
    assert!(matches!(
        ClientMessage::decode(&lookup),
        Err(CodecError::Malformed(_))
    ));
}
