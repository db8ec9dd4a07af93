//! The pair handover machine (docs/pairs.md, "Handover"), sans-IO: lock, take and release one
//! pair between its two peers.
//!
//! Unlike the seed's sketch it has no loop: it acts only when a signal, a
//! drained pair or a timeout arrives, and each of those produces at most
//! two outputs. Every waiting state has a deadline. The rules that keep it
//! safe (see `docs/pairs.md`):
//!
//! 1. A side is InUse only after its peer has confirmed it is silent
//!    (responder: Take follows LockOk; initiator: TakeOk).
//! 2. A side that might have a peer in InUse (it sent Take, or it was in
//!    use itself) resumes keepalive only after the peer confirms it is not
//!    in use (TakeOk was never sent: LockBusy; or ReleaseOk, AbortOk, or the
//!    peer's own Release). Until then it stays silent and repeats its
//!    question; after `give_up_timeout` it declares the pair expired rather
//!    than risk it.
//! 3. Any other failure rolls the pair back to Idle at once.
//! 4. A responder never accepts a handover it has seen before (ids only
//!    grow), so `LockBusy(NoSuchHandover)` is final.

use super::pool::{Output, PairEvent};
use super::{BusyReason, HandoverId, PairConfig, PairEntry, PairState, Signal, SignalKind};
use crate::Instant;
use std::collections::VecDeque;

/// Which end of the handover this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoverRole {
    /// Started it: sends Lock, then Take.
    Initiator,
    /// Answers Lock and Take.
    Responder,
}

/// Where a handover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoverState {
    /// Created, nothing sent.
    Init,
    /// Initiator: Lock sent, waiting for LockOk and for our own drain.
    /// Responder: draining our own in-flight pings before LockOk.
    Locking,
    /// Both sides silent. The responder waits here for Take.
    Locked,
    /// Initiator: Take sent, waiting for TakeOk.
    Taking,
    /// The pair carries a connection.
    InUse,
    /// We released: silent, waiting for ReleaseOk.
    Releasing,
    /// Initiator: Take went unanswered; silent, waiting for AbortOk.
    Aborting,
    /// Ended without a connection, or the connection was aborted.
    Failed,
    /// Ended after a connection used the pair.
    Done,
}

/// Why a handover failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The responder refused.
    Busy(BusyReason),
    /// A step got no answer in time.
    Timeout,
    /// Both sides locked at once and the peer's handover won.
    LostTie,
    /// The initiator aborted (responder side).
    Aborted,
    /// The peer released the pair before our Take was confirmed.
    ReleasedByPeer,
    /// The peer never confirmed it stopped using the pair; the pair was
    /// declared expired instead of risking a second user.
    PeerUnreachable,
}

/// One handover of one pair. The [`super::PairPool`] owns it next to the
/// pair's entry and drives both.
#[derive(Clone, Debug)]
pub struct PairHandover {
    id: HandoverId,
    role: HandoverRole,
    state: HandoverState,
    /// Initiator: LockOk has arrived (the pair may still be draining here).
    peer_locked: bool,
    /// When the current waiting state gives up.
    deadline: Instant,
    /// When the current request is repeated (initiator and releaser only).
    retransmit_at: Option<Instant>,
    fail_reason: Option<FailReason>,
}

/// What a handover step needs besides the handover: the time, the config,
/// the pair it acts on and where outputs go.
pub(super) struct HandoverCtx<'a> {
    pub now: Instant,
    pub cfg: &'a PairConfig,
    pub entry: &'a mut PairEntry,
    pub out: &'a mut VecDeque<Output>,
}

impl HandoverCtx<'_> {
    fn send(&mut self, id: HandoverId, kind: SignalKind) {
        self.out.push_back(Output::Signal {
            to: self.entry.pair().peer,
            signal: Signal {
                pair: self.entry.pair().nonce,
                handover: id,
                kind,
            },
        });
    }

    fn event(&mut self, event: PairEvent) {
        self.out.push_back(Output::Event(event));
    }
}

impl PairHandover {
    /// Starts a handover as initiator on an Idle pair: lock our side and
    /// send Lock at once; the drain runs while Lock travels.
    pub(super) fn initiate(id: HandoverId, ctx: &mut HandoverCtx<'_>) -> Self {
        let mut h = PairHandover {
            id,
            role: HandoverRole::Initiator,
            state: HandoverState::Init,
            peer_locked: false,
            deadline: ctx.now + ctx.cfg.handshake_timeout,
            retransmit_at: Some(ctx.now + ctx.cfg.signal_retransmit),
            fail_reason: None,
        };
        ctx.entry.lock(ctx.now, ctx.cfg);
        h.state = HandoverState::Locking;
        ctx.send(id, SignalKind::Lock);
        h
    }

    /// Accepts a peer's Lock on a pair that is Idle, or Locking for our own
    /// handover that just lost the tie-break.
    pub(super) fn respond(id: HandoverId, ctx: &mut HandoverCtx<'_>) -> Self {
        let mut h = PairHandover {
            id,
            role: HandoverRole::Responder,
            state: HandoverState::Init,
            peer_locked: false,
            // Generous: the initiator needs up to one handshake_timeout for
            // its own drain + LockOk, then another for Take.
            deadline: ctx.now + ctx.cfg.handshake_timeout * 2,
            retransmit_at: None,
            fail_reason: None,
        };
        ctx.entry.lock(ctx.now, ctx.cfg);
        h.state = HandoverState::Locking;
        h.on_drained(ctx);
        h
    }

    /// The handover's id.
    pub fn id(&self) -> HandoverId {
        self.id
    }

    /// Initiator or responder.
    pub fn role(&self) -> HandoverRole {
        self.role
    }

    /// Current state.
    pub fn state(&self) -> HandoverState {
        self.state
    }

    /// Why it failed, once Failed.
    pub fn fail_reason(&self) -> Option<FailReason> {
        self.fail_reason
    }

    /// Done or Failed: the pool forgets it.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, HandoverState::Done | HandoverState::Failed)
    }

    /// When this handover next needs [`Self::handle_timeout`]; `None` while
    /// InUse (a connection may hold a pair as long as it likes).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            HandoverState::Locking
            | HandoverState::Locked
            | HandoverState::Taking
            | HandoverState::Releasing
            | HandoverState::Aborting => Some(match self.retransmit_at {
                Some(at) => at.min(self.deadline),
                None => self.deadline,
            }),
            HandoverState::Init
            | HandoverState::InUse
            | HandoverState::Failed
            | HandoverState::Done => None,
        }
    }

    /// The pair entry finished draining (it is now Locked).
    pub(super) fn on_drained(&mut self, ctx: &mut HandoverCtx<'_>) {
        if self.state != HandoverState::Locking || ctx.entry.state() != PairState::Locked {
            return;
        }
        match self.role {
            HandoverRole::Initiator if self.peer_locked => self.send_take(ctx),
            HandoverRole::Initiator => {}
            HandoverRole::Responder => {
                self.state = HandoverState::Locked;
                ctx.send(self.id, SignalKind::LockOk);
            }
        }
    }

    fn send_take(&mut self, ctx: &mut HandoverCtx<'_>) {
        self.state = HandoverState::Taking;
        self.deadline = ctx.now + ctx.cfg.handshake_timeout;
        self.retransmit_at = Some(ctx.now + ctx.cfg.signal_retransmit);
        ctx.send(self.id, SignalKind::Take);
    }

    /// Rolls the pair back to Idle and ends the handover as failed.
    fn fail(&mut self, reason: FailReason, ctx: &mut HandoverCtx<'_>) {
        let was_in_use = ctx.entry.state() == PairState::InUse;
        ctx.entry.release(ctx.now);
        self.finish_failed(reason, was_in_use, ctx);
    }

    fn finish_failed(&mut self, reason: FailReason, was_in_use: bool, ctx: &mut HandoverCtx<'_>) {
        self.state = HandoverState::Failed;
        self.fail_reason = Some(reason);
        self.retransmit_at = None;
        let pair = ctx.entry.pair().nonce;
        if was_in_use {
            ctx.event(PairEvent::Released {
                pair,
                by_peer: true,
            });
        }
        ctx.event(PairEvent::HandoverFailed {
            pair,
            handover: self.id,
            reason,
        });
    }

    /// Ends a handover whose connection has been released on both sides.
    fn done(&mut self, by_peer: bool, ctx: &mut HandoverCtx<'_>) {
        ctx.entry.release(ctx.now);
        self.state = HandoverState::Done;
        self.retransmit_at = None;
        ctx.event(PairEvent::Released {
            pair: ctx.entry.pair().nonce,
            by_peer,
        });
    }

    /// Our side stops using the pair: silent, and ask the peer to confirm.
    /// Returns false unless InUse.
    pub(super) fn release(&mut self, ctx: &mut HandoverCtx<'_>) -> bool {
        if self.state != HandoverState::InUse {
            return false;
        }
        ctx.entry.silence();
        self.state = HandoverState::Releasing;
        self.deadline = ctx.now + ctx.cfg.give_up_timeout;
        self.retransmit_at = Some(ctx.now + ctx.cfg.signal_retransmit);
        ctx.send(self.id, SignalKind::Release);
        true
    }

    /// A signal for this handover arrived from the peer.
    pub(super) fn on_signal(&mut self, kind: SignalKind, ctx: &mut HandoverCtx<'_>) {
        use HandoverState as S;
        use SignalKind as K;
        match (self.role, self.state, kind) {
            // Initiator, waiting for the responder to lock.
            (HandoverRole::Initiator, S::Locking, K::LockOk) => {
                self.peer_locked = true;
                self.on_drained(ctx);
            }
            (
                HandoverRole::Initiator,
                S::Locking | S::Taking | S::Aborting,
                K::LockBusy(reason),
            ) => {
                // Final answer (rule 4): the responder does not hold the pair
                // for us and never will, so Idle is safe even after Take.
                self.fail(FailReason::Busy(reason), ctx);
            }
            (HandoverRole::Initiator, S::Taking, K::TakeOk) => {
                ctx.entry.take();
                self.state = S::InUse;
                self.retransmit_at = None;
                ctx.event(PairEvent::Taken {
                    pair: ctx.entry.pair().nonce,
                    handover: self.id,
                });
            }
            (HandoverRole::Initiator, S::Taking | S::Aborting, K::Release) => {
                // The responder was in use and has already released: it is
                // silent and waits for our ReleaseOk.
                ctx.send(self.id, K::ReleaseOk);
                self.fail(FailReason::ReleasedByPeer, ctx);
            }
            (HandoverRole::Initiator, S::Aborting, K::AbortOk) => {
                self.fail(FailReason::Timeout, ctx);
            }

            // Responder.
            (HandoverRole::Responder, S::Locked, K::Lock) => ctx.send(self.id, K::LockOk),
            (HandoverRole::Responder, S::Locked, K::Take) => {
                ctx.entry.take();
                self.state = S::InUse;
                ctx.send(self.id, K::TakeOk);
                ctx.event(PairEvent::Taken {
                    pair: ctx.entry.pair().nonce,
                    handover: self.id,
                });
            }
            (HandoverRole::Responder, S::InUse, K::Take) => ctx.send(self.id, K::TakeOk),
            (
                HandoverRole::Responder,
                S::Locking | S::Locked | S::InUse | S::Releasing,
                K::Abort,
            ) => {
                ctx.send(self.id, K::AbortOk);
                self.fail(FailReason::Aborted, ctx);
            }

            // Either side, while the pair carries (or just carried) a
            // connection.
            (_, S::InUse, K::Release) => {
                ctx.send(self.id, K::ReleaseOk);
                self.done(true, ctx);
            }
            (_, S::Releasing, K::ReleaseOk) => self.done(false, ctx),
            (_, S::Releasing, K::Release) => {
                // Both released at once: each answers the other; both silent
                // until now, so Idle is safe.
                ctx.send(self.id, K::ReleaseOk);
                self.done(false, ctx);
            }

            // Everything else is a duplicate or a late arrival: ignore.
            _ => {}
        }
    }

    /// Timers: repeat the pending request, or give up on it.
    pub(super) fn handle_timeout(&mut self, ctx: &mut HandoverCtx<'_>) {
        let now = ctx.now;
        if self.poll_timeout().is_none_or(|t| now < t) {
            return;
        }
        if now >= self.deadline {
            match self.state {
                // Nothing can be in use yet (rule 1): roll back, and tell
                // the responder so it need not wait for its own timeout.
                HandoverState::Locking | HandoverState::Locked => {
                    if self.role == HandoverRole::Initiator {
                        ctx.send(self.id, SignalKind::Abort);
                    }
                    self.fail(FailReason::Timeout, ctx);
                }
                // Take may have landed: stay silent and ask (rule 2).
                HandoverState::Taking => {
                    self.state = HandoverState::Aborting;
                    self.deadline = now + ctx.cfg.give_up_timeout;
                    self.retransmit_at = Some(now + ctx.cfg.signal_retransmit);
                    ctx.send(self.id, SignalKind::Abort);
                }
                HandoverState::Releasing | HandoverState::Aborting => {
                    ctx.entry.expire();
                    self.finish_failed(FailReason::PeerUnreachable, false, ctx);
                }
                HandoverState::Init
                | HandoverState::InUse
                | HandoverState::Failed
                | HandoverState::Done => {}
            }
            return;
        }
        if let Some(at) = self.retransmit_at
            && now >= at
        {
            self.retransmit_at = Some(now + ctx.cfg.signal_retransmit);
            let repeat = match self.state {
                HandoverState::Locking if !self.peer_locked => Some(SignalKind::Lock),
                HandoverState::Taking => Some(SignalKind::Take),
                HandoverState::Releasing => Some(SignalKind::Release),
                HandoverState::Aborting => Some(SignalKind::Abort),
                _ => None,
            };
            if let Some(kind) = repeat {
                ctx.send(self.id, kind);
            }
        }
    }
}
