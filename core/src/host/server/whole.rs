//! A whole small rewrite in one request ([`Request::WriteWhole`]): the
//! host runs the steps a client's transaction would send one round trip
//! each (lock, begin, truncate, write, commit, release) as a chain of
//! file operations of its own.
//!
//! Each step goes through the same result handling as the request it
//! stands for ([`HostServer::complete`] with its [`ReplyAs`]), so a whole
//! write is fenced, version-checked, rekeyed and broadcast exactly as a
//! transaction is. A request sent again after a lost reply (same `tag`)
//! gets the recorded answer, or joins the chain still running.

use super::*;
use crate::proto::SetAttr;
use bytes::Bytes;

/// What a whole write still has to do after its current step.
#[derive(Debug)]
pub(super) struct WholeRest {
    pub(super) truncate: Option<u64>,
    pub(super) offset: u64,
    pub(super) data: Bytes,
    pub(super) size: u64,
    pub(super) set: SetAttr,
}

/// The step a whole write's file operation is.
#[derive(Debug)]
pub(super) enum WholeStep {
    Begin { expect: Option<u64> },
    Truncate,
    Write,
    Commit,
}

/// A whole write in progress, per transaction.
#[derive(Debug)]
pub(super) struct Whole {
    /// The request to answer (the latest, if the client sent it again).
    id: RequestId,
    /// The client's name for this write, for a request sent again.
    tag: u64,
    rest: Option<WholeRest>,
}

impl HostServer {
    /// Starts a whole write (see the module docs).
    #[allow(clippy::too_many_arguments)] // the request's own fields
    pub(super) fn write_whole(
        &mut self,
        now: Instant,
        session: SessionId,
        id: RequestId,
        node: NodeId,
        (base, append_from): (Option<u64>, Option<u64>),
        tag: u64,
        rest: WholeRest,
    ) -> Result<(), Errno> {
        let s = self.sessions.get(&session).ok_or(Errno::BadF)?;
        if let Some(attr) = s
            .wholes
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, a)| a.clone())
        {
            // Done already; the answer was lost.
            self.answer(session, id, Ok(Reply::Attr(attr)));
            return Ok(());
        }
        if let Some(w) = self
            .txns
            .values_mut()
            .filter(|t| t.session == session)
            .find_map(|t| t.whole.as_mut().filter(|w| w.tag == tag))
        {
            // Still running: it answers this request.
            w.id = id;
            return Ok(());
        }
        let s = self.sessions.get(&session).ok_or(Errno::BadF)?;
        if s.wholes_forgotten.is_some_and(|f| tag <= f) {
            // The client's tags only grow: one this old was sent long
            // ago, and may have run (its answer lost, and since
            // forgotten).
            return Err(Errno::Stale);
        }
        self.writable()?;
        match self.nodes.kind(node) {
            Some(FileKind::File) => {}
            Some(_) => return Err(Errno::IsDir),
            None => return Err(Errno::Stale),
        }
        if rest.data.len() > MAX_WRITE_PIECE {
            return Err(Errno::Inval);
        }
        rest.offset
            .checked_add(rest.data.len() as u64)
            .ok_or(Errno::FBig)?;
        if s.txns.len() >= self.cfg.max_txns_per_session {
            return Err(Errno::Again);
        }
        let path = self.path_of(node)?;
        let ancestors = self.nodes.ancestors(node);
        let req = LockRequest {
            session,
            request: id,
            scope: LockScope::File(node),
            kind: crate::proto::LockKind::Exclusive,
            wait: false,
            ancestors: &ancestors,
        };
        // Not waiting (EAGAIN): a busy file is the client's to wait for,
        // through its ordinary transaction.
        let token = match self.locks.acquire(now, &req)? {
            Acquired::Granted(grant) => grant.token,
            Acquired::Queued(_) => return Err(Errno::Again),
        };
        let whole = Whole {
            id,
            tag,
            rest: Some(rest),
        };
        let txn = self.new_txn(now, session, node, token, append_from, Some(whole));
        self.fs(
            Purpose::Whole {
                session,
                txn,
                step: WholeStep::Begin { expect: base },
            },
            FsOp::StageBegin { txn, path },
        );
        Ok(())
    }

    /// A step of a whole write finished: the next one, or the answer.
    pub(super) fn whole_step(
        &mut self,
        now: Instant,
        op: FsOpId,
        session: SessionId,
        txn: TxnId,
        step: WholeStep,
        result: FsResult,
    ) {
        let then = match step {
            WholeStep::Begin { expect } => ReplyAs::StageBegin { txn, expect },
            WholeStep::Truncate | WholeStep::Write => ReplyAs::StageWrite { txn },
            WholeStep::Commit => ReplyAs::Commit { txn },
        };
        let committing = matches!(then, ReplyAs::Commit { .. });
        let begun = matches!(then, ReplyAs::StageBegin { .. });
        // Taken before `complete` may drop the transaction.
        let whole = self.txns.get_mut(&txn).and_then(|t| t.whole.take());
        let token = self.txns.get(&txn).map(|t| t.token);
        let reply = self.complete(now, op, session, then, result);
        let Some(mut whole) = whole else {
            // Dropped meanwhile (its session ended, its lock expired):
            // nobody to answer, nothing to release.
            return;
        };
        let outcome = match (reply, committing) {
            (Err(e), _) => Err(e),
            (Ok(Reply::Attr(a)), true) => Ok(a),
            (Ok(_), true) => Err(Errno::Io),
            (Ok(_), false) if begun && self.place_whole(txn, &mut whole).is_err() => {
                Err(Errno::Stale)
            }
            (Ok(_), false) => match self.whole_next(now, session, txn, &mut whole) {
                Ok(()) => {
                    if let Some(t) = self.txns.get_mut(&txn) {
                        t.whole = Some(whole);
                    }
                    return;
                }
                // Its lock or session went meanwhile.
                Err(()) => Err(Errno::Stale),
            },
        };
        // Over: committed, or failed at this step.
        if outcome.is_err() && self.txns.contains_key(&txn) {
            self.drop_txn(txn);
            self.fs(Purpose::Housekeeping, FsOp::StageAbort { txn });
        }
        if let Some(token) = token {
            let _ = self.locks.release(now, session, token);
            self.drain_locks(now);
        }
        if let (Ok(a), Some(s)) = (&outcome, self.sessions.get_mut(&session)) {
            if s.wholes.len() == COMMITTED_MEMORY
                && let Some((old, _)) = s.wholes.pop_front()
            {
                s.wholes_forgotten = s.wholes_forgotten.max(Some(old));
            }
            s.wholes.push_back((whole.tag, a.clone()));
        }
        let reply = outcome.map(Reply::Attr);
        // Its commit is the chain's one change of the disk ([`sync`]).
        if committing && self.cfg.sync_window.is_zero() {
            self.after_sync(now, session, whole.id, reply);
        } else {
            self.answer(session, whole.id, reply);
        }
    }

    /// Issues the step after a successful one. `Err` if the transaction
    /// can go no further (its lock or session gone).
    fn whole_next(
        &mut self,
        now: Instant,
        session: SessionId,
        txn: TxnId,
        whole: &mut Whole,
    ) -> Result<(), ()> {
        let t = self.txns.get(&txn).ok_or(())?;
        let node = t.node;
        // Fenced like a client's own requests: only under a live lock.
        let ancestors = self.nodes.ancestors(node);
        self.locks
            .validate(now, session, t.token, node, &ancestors)
            .map_err(|_| ())?;
        let rest = whole.rest.as_mut().ok_or(())?;
        let purpose = |step| Purpose::Whole { session, txn, step };
        if let Some(size) = rest.truncate.take() {
            self.bump_writes(txn, now);
            self.fs(
                purpose(WholeStep::Truncate),
                FsOp::StageTruncate { txn, size },
            );
            return Ok(());
        }
        if !rest.data.is_empty() {
            let data = std::mem::take(&mut rest.data);
            self.bump_writes(txn, now);
            self.fs(
                purpose(WholeStep::Write),
                FsOp::StageWrite {
                    txn,
                    offset: rest.offset,
                    data,
                },
            );
            return Ok(());
        }
        let (size, set) = (rest.size, rest.set);
        whole.rest = None;
        self.commit_txn(now, txn, size, set, purpose(WholeStep::Commit))
            .map_err(|_| ())?;
        Ok(())
    }

    /// Once staged: where the whole write's bytes and size go, moved to a
    /// newer version's end if its appends were ([`Txn::place`]). ESTALE
    /// for a moved one that also truncates (the client sends none).
    fn place_whole(&self, txn: TxnId, whole: &mut Whole) -> Result<(), Errno> {
        let (Some(t), Some(rest)) = (self.txns.get(&txn), whole.rest.as_mut()) else {
            return Ok(());
        };
        if rest.truncate.is_some() {
            t.unmoved()?;
        }
        let offset = t.place(rest.offset)?;
        offset
            .checked_add(rest.data.len() as u64)
            .ok_or(Errno::FBig)?;
        rest.offset = offset;
        rest.size = t.place(rest.size)?;
        Ok(())
    }

    fn bump_writes(&mut self, txn: TxnId, now: Instant) {
        if let Some(t) = self.txns.get_mut(&txn) {
            t.writes += 1;
            t.last_activity = now;
        }
    }
}
