//! The doomed client of the killed-client test (`tests/quic_clients.rs`):
//! a raw-protocol client that locks a file, stages a write, says so on
//! stdout and waits to be killed. It runs as its own process (the
//! `wormhole-doomed-client` binary) so that the test can SIGKILL it: no
//! Goodbye, no QUIC close frame, as when a real client dies.
//!
//! The raw-protocol reply helpers here are shared by that test.

use std::io::{Read, Write};
use std::time::Duration;

use wormhole_core::proto::{
    Attr, CHUNK_SIZE, Errno, LockKind, LockScope, LockToken, Name, NodeId, Reply, Request, TxnId,
};
use wormhole_io::{Shell, Ticket};

use crate::quic::{RawClient, STEP, transport, within};

/// Starts the line the child prints once it holds the lock, followed by
/// its session and lock token in hex.
pub const MARKER: &str = "wormhole-killed-client-holds";

/// The host's lock lifetime (`LockConfig::default().ttl`), which every
/// grant announces.
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// The file the doomed client locks.
pub const VICTIM: &str = "victim";

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 bytes from 32 hex digits.
pub fn unhex16(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    assert_eq!(s.len(), 32, "32 hex digits: {s:?}");
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// A valid name.
pub fn name(s: &str) -> Name {
    Name::new(s.as_bytes().to_vec()).expect("a valid name")
}

/// The attributes of an `Attr` reply; fails the test otherwise.
pub fn attr_of(reply: Result<Reply, Errno>, what: &str) -> Attr {
    match reply {
        Ok(Reply::Attr(a)) => a,
        other => panic!("{what}: {other:?}"),
    }
}

/// The token of a lock grant (with the promised lifetime); fails the test
/// otherwise.
pub fn token_of(reply: Result<Reply, Errno>, what: &str) -> LockToken {
    match reply {
        Ok(Reply::LockGranted { token, ttl_ms }) => {
            assert_eq!(u128::from(ttl_ms), LOCK_TTL.as_millis(), "the lock's ttl");
            token
        }
        other => panic!("{what}: {other:?}"),
    }
}

/// The transaction of a `WriteBegun` reply; fails the test otherwise.
pub fn txn_of(reply: Result<Reply, Errno>, what: &str) -> TxnId {
    match reply {
        Ok(Reply::WriteBegun { txn }) => txn,
        other => panic!("{what}: {other:?}"),
    }
}

/// An exclusive lock on one file (queued behind the holder with `wait`).
pub fn exclusive(node: NodeId, wait: bool) -> Request {
    Request::AcquireLock {
        scope: LockScope::File(node),
        kind: LockKind::Exclusive,
        wait,
    }
}

/// Chunk `index` of a write transaction.
pub fn chunk(txn: TxnId, index: u64, data: &[u8]) -> Request {
    Request::WriteChunk {
        txn,
        index,
        offset: 0,
        data: bytes::Bytes::copy_from_slice(data),
    }
}

/// The attributes of [`VICTIM`], looked up in the share's root.
pub async fn look_up_victim(c: &mut RawClient) -> Attr {
    attr_of(
        c.call(Request::Lookup {
            parent: NodeId::ROOT,
            name: name(VICTIM),
        })
        .await,
        "look up the victim",
    )
}

/// The child's life: lock [`VICTIM`], stage a chunk of `K`, print
/// [`MARKER`] with the session and token, and wait to be killed (blocked
/// on stdin, which the parent never writes; if the parent dies first,
/// stdin closes and the child exits).
pub fn run<S: Shell>(shell: &S, ticket: &Ticket) {
    let t = transport(shell, ticket);
    let (client, session, token) = within(shell, STEP, "the doomed client's lock", async {
        let (mut c, session) = RawClient::authenticated(&t).await;
        let victim = look_up_victim(&mut c).await;
        let token = token_of(c.call(exclusive(victim.node, false)).await, "lock it");
        let txn = txn_of(
            c.call(Request::BeginWrite {
                node: victim.node,
                token,
                base: None,
                append_from: None,
            })
            .await,
            "begin a write",
        );
        let reply = c.call(chunk(txn, 0, &vec![b'K'; CHUNK_SIZE])).await;
        assert_eq!(reply, Ok(Reply::Done), "stage a chunk");
        (c, session, token)
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARKER} {} {}", hex(&session.0), hex(&token.0)).expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    // The runtime's threads keep the connection alive (keepalives, acks)
    // while this thread waits.
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(client);
}
