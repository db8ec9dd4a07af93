//! Locks (docs/filesystem.md, "Locks"): the host's lock table and the client's lock machine.
//!
//! * [`LockTable`] is the host side: it grants, refreshes, expires and
//!   releases locks for client sessions, queues waiting requests in strict
//!   FIFO order, and answers whether a write carrying a token may proceed
//!   (tokens are fencing tokens).
//! * [`range::RangeLocks`] is the host's table of advisory record locks
//!   (`fcntl`, `flock`) that programs on every client share: POSIX's
//!   rules, byte ranges, owners, waiters; no ttl, no fencing.
//! * [`ClientLock`] is one lock as a client sees it: Unlocked → Waiting →
//!   Held → (Released) → Unlocked. It sends AcquireLock / RefreshLock /
//!   ReleaseLock, refreshes before expiry and gives the lock up on its own
//!   before the host could have expired it.
//!
//! ## Resources and scopes
//!
//! A lock is held on one node. [`LockScope::File`] and
//! [`LockScope::Directory`] cover that node alone (a directory lock guards
//! the directory's entries, not its children's contents, so it does not
//! conflict with a lock on a child). [`LockScope::Subtree`] covers the node
//! and everything beneath it. Two locks conflict when their kinds conflict
//! (only Shared/Shared is compatible, as in the spec's matrix) and their
//! coverage overlaps: same node, or one is a subtree lock on an ancestor of
//! the other's node. Locks conflict whatever their owner: a session that
//! wants to turn a shared lock into an exclusive one releases it first.
//!
//! ## Ancestry is an input
//!
//! The table does not know the file tree; the host's path map does. Every
//! [`LockTable::acquire`] (and [`LockTable::validate`]) therefore carries the
//! node's ancestor chain, `&[NodeId]` from its parent up to the root,
//! looked up by the host from the same path map it resolves the request
//! with. A slice is the simplest contract that keeps the table pure and
//! testable: no trait object, no callback into host state. The table keeps
//! a copy of the chain with each lock and waiter, so releasing needs no
//! lookup. Consequence: the host must keep ancestry stable under locks (a
//! rename that moves a node with locks beneath a subtree lock, or out from
//! under one, must first check [`LockTable::is_locked`] and refuse with
//! EBUSY or wait), otherwise the table keeps judging by the chain given at
//! grant time.
//!
//! ## Deadlock and fairness
//!
//! Waiting is FIFO among conflicting requests, so no request is starved by
//! later ones. Two sessions that each hold what the other waits for are not
//! detected as a cycle: the wait timeout (30 s, answered with EAGAIN) and
//! the lock expiry break every such deadlock, which is enough for a file
//! system whose clients take one lock per write transaction.
//!
//! ## Deviations from the spec, and choices it leaves open
//!
//! * The spec's `LockToken` struct carries its grant time, expiry, scope,
//!   kind and owner. On the wire a token is only its 128 random bits
//!   ([`LockToken`](crate::proto::LockToken)); the host's table keeps the
//!   rest ([`LockInfo`]), so a client cannot forge an expiry, and the
//!   client keeps its own, conservative, idea of the expiry.
//! * Released is a transient state of [`ClientLock`] (the spec: "Immediate
//!   → Unlocked"), so [`ClientLockState`] has no variant for it.
//! * Errors: a busy lock without waiting, and a wait that ran out at the
//!   host, are EAGAIN; a full table is ENOLCK; a dead token (refresh,
//!   release, or a write fenced off) is ESTALE; a live token that does not
//!   permit the write is EACCES. A client that hears nothing reports
//!   [`ClientLockEvent::TimedOut`].
//!
//! ## Cost
//!
//! Every lock and waiter is indexed under its node and each of its
//! ancestors (counts for holders, ordered id sets for waiters), so an
//! acquire costs O(d log n) for a chain of d ancestors and never scans the
//! table; a release additionally visits only the waiters it could unblock.

mod client;
pub mod range;
mod table;
#[cfg(test)]
mod tests;

pub use client::{
    ClientLock, ClientLockConfig, ClientLockError, ClientLockEvent, ClientLockOutput,
    ClientLockState, LockOpId, LostReason,
};
pub use table::{
    Acquired, FenceError, Grant, LockConfig, LockError, LockInfo, LockOutput, LockRequest,
    LockTable, SessionRelease, WaitId,
};

use crate::proto::{LockKind, LockScope, NodeId};

/// The node a scope names.
pub fn scope_node(scope: LockScope) -> NodeId {
    match scope {
        LockScope::File(n) | LockScope::Directory(n) | LockScope::Subtree(n) => n,
    }
}

/// Whether two lock kinds may be held together (the spec's matrix: only
/// Shared with Shared).
pub fn compatible(a: LockKind, b: LockKind) -> bool {
    matches!((a, b), (LockKind::Shared, LockKind::Shared))
}

/// Milliseconds for the wire, saturating: a `Duration` beyond `u32`
/// milliseconds (49 days) is a configuration error, not a panic.
pub(crate) fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
