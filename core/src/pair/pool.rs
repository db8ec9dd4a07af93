//! One node's registry of pairs, and the machine the shell drives.

use super::frame::KeepaliveFrame;
use super::handover::{FailReason, HandoverCtx, HandoverRole, PairHandover};
use super::{
    BusyReason, EndpointPair, HandoverId, HandoverState, PairConfig, PairEntry, PairNonce,
    PairState, PeerId, Signal, SignalKind, Transmit,
};
use crate::{Instant, Rng};
use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use thiserror::Error;

/// What the pool asks the shell to do, drained with [`PairPool::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a keepalive datagram from a pair's socket.
    Transmit(Transmit),
    /// Send a handover signal to a peer, over the signalling channel.
    Signal {
        /// The peer to send it to.
        to: PeerId,
        /// The signal.
        signal: Signal,
    },
    /// Something the shell must act on or may report.
    Event(PairEvent),
}

/// Changes the shell acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEvent {
    /// Both sides are silent and the pair is ours: hand its socket to QUIC.
    Taken {
        /// The pair.
        pair: PairNonce,
        /// The handover that took it.
        handover: HandoverId,
    },
    /// The pair is back in keepalive: take its socket back from QUIC (if
    /// `by_peer`, the peer ended the connection and ours must be closed).
    Released {
        /// The pair.
        pair: PairNonce,
        /// Whether the peer released (or aborted) it rather than us.
        by_peer: bool,
    },
    /// A handover ended without a connection; the pair is Idle again
    /// (or expired, for [`FailReason::PeerUnreachable`]).
    HandoverFailed {
        /// The pair.
        pair: PairNonce,
        /// The handover.
        handover: HandoverId,
        /// Why.
        reason: FailReason,
    },
    /// The pair is dead and removed from the pool: close its socket.
    Expired {
        /// The pair.
        pair: PairNonce,
    },
}

/// Why an input was dropped. Every drop is counted, never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Not a valid encoding of a frame or signal.
    Malformed,
    /// No pair with the frame's nonce.
    UnknownPair,
    /// From (or to) an address other than the pair's endpoints.
    WrongAddress,
    /// The MAC does not verify under the pair key.
    BadMac,
    /// A ping not newer than the last one, or a pong for no ping in flight.
    Replayed,
    /// A frame this side does not expect (a ping to the pinger).
    Unexpected,
    /// The pair is locked, in use or expired: it answers nothing.
    Silent,
    /// A signal about a pair the sender does not share with us.
    WrongPeer,
    /// A signal for a handover that is over, when no answer is due.
    StaleSignal,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::UnknownPair,
        DropReason::WrongAddress,
        DropReason::BadMac,
        DropReason::Replayed,
        DropReason::Unexpected,
        DropReason::Silent,
        DropReason::WrongPeer,
        DropReason::StaleSignal,
    ];
}

/// Drop counters, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Drops for all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
}

/// Why [`PairPool::add`] refused a pair.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AddError {
    /// Nonce zero is reserved as "no pair".
    #[error("pair nonce must be non-zero")]
    ZeroNonce,
    /// The nonce is taken; nonces must be unique in a pool.
    #[error("pair nonce {0:?} is already registered")]
    DuplicateNonce(PairNonce),
    /// The peer has its maximum of pairs.
    #[error("peer {peer:?} already has {max} pairs")]
    PeerFull {
        /// The peer.
        peer: PeerId,
        /// The per-peer limit.
        max: usize,
    },
    /// The pool is full.
    #[error("pair pool is full ({max} pairs)")]
    PoolFull {
        /// The pool limit.
        max: usize,
    },
}

/// Why a take could not start.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TakeError {
    /// The peer has no Idle pair.
    #[error("no idle pair for {0:?}")]
    NoIdlePair(PeerId),
    /// No pair with that nonce.
    #[error("unknown pair {0:?}")]
    UnknownPair(PairNonce),
    /// The pair is not Idle.
    #[error("pair {pair:?} is {state:?}, not idle")]
    NotIdle {
        /// The pair.
        pair: PairNonce,
        /// Its state.
        state: PairState,
    },
}

/// Why a release was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    /// No pair with that nonce.
    #[error("unknown pair {0:?}")]
    UnknownPair(PairNonce),
    /// The pair is not in use by a connection.
    #[error("pair {0:?} is not in use")]
    NotInUse(PairNonce),
}

#[derive(Debug)]
struct Slot {
    entry: PairEntry,
    handover: Option<PairHandover>,
    /// The deadline under which this slot sits in the timer index.
    armed: Option<Instant>,
}

/// One node's pairs: keepalive, handovers and expiry.
///
/// The shell feeds it datagrams ([`Self::handle_datagram`]), signals
/// ([`Self::handle_signal`]) and timeouts ([`Self::handle_timeout`]), calls
/// its commands ([`Self::add`], [`Self::take`], [`Self::release`]) and then
/// drains [`Self::poll_output`] until `None` and sleeps until
/// [`Self::poll_timeout`].
///
/// All maps are ordered, so outputs never depend on hash seeds; the timer
/// index makes a timeout cost O(log n) whatever the number of idle pairs.
#[derive(Debug)]
pub struct PairPool {
    local: PeerId,
    cfg: PairConfig,
    rng: Rng,
    slots: BTreeMap<PairNonce, Slot>,
    by_peer: BTreeMap<PeerId, BTreeSet<PairNonce>>,
    timers: BTreeSet<(Instant, PairNonce)>,
    out: VecDeque<Output>,
    drops: DropCounts,
    /// Reused between timeouts so firing timers allocates nothing.
    due: Vec<PairNonce>,
}

impl PairPool {
    /// An empty pool for the node `local`.
    pub fn new(local: PeerId, cfg: PairConfig, rng: Rng) -> Self {
        PairPool {
            local,
            cfg,
            rng,
            slots: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            drops: DropCounts::default(),
            due: Vec::new(),
        }
    }

    /// This node's id.
    pub fn local_id(&self) -> PeerId {
        self.local
    }

    /// The configuration.
    pub fn config(&self) -> &PairConfig {
        &self.cfg
    }

    /// Registers a pair after a successful hole punch. It starts Idle, with
    /// keepalive running.
    pub fn add(&mut self, now: Instant, pair: EndpointPair) -> Result<(), AddError> {
        if pair.nonce.0 == 0 {
            return Err(AddError::ZeroNonce);
        }
        if self.slots.contains_key(&pair.nonce) {
            return Err(AddError::DuplicateNonce(pair.nonce));
        }
        if self.slots.len() >= self.cfg.max_pairs {
            return Err(AddError::PoolFull {
                max: self.cfg.max_pairs,
            });
        }
        let peer_pairs = self.by_peer.get(&pair.peer).map_or(0, BTreeSet::len);
        if peer_pairs >= self.cfg.max_pairs_per_peer {
            return Err(AddError::PeerFull {
                peer: pair.peer,
                max: self.cfg.max_pairs_per_peer,
            });
        }
        let interval = u64::try_from(self.cfg.ping_interval.as_nanos()).unwrap_or(u64::MAX);
        let first_ping =
            Instant::from_nanos(now.as_nanos().saturating_add(self.rng.below(interval)));
        let nonce = pair.nonce;
        self.by_peer.entry(pair.peer).or_default().insert(nonce);
        self.slots.insert(
            nonce,
            Slot {
                entry: PairEntry::new(now, pair, first_ping),
                handover: None,
                armed: None,
            },
        );
        self.settle(now, nonce);
        Ok(())
    }

    /// The pair with this nonce.
    pub fn get(&self, nonce: PairNonce) -> Option<&PairEntry> {
        self.slots.get(&nonce).map(|s| &s.entry)
    }

    /// The handover running on this pair, if any.
    pub fn handover(&self, nonce: PairNonce) -> Option<&PairHandover> {
        self.slots.get(&nonce).and_then(|s| s.handover.as_ref())
    }

    /// The pairs shared with `peer`, by nonce.
    pub fn pairs_of(&self, peer: PeerId) -> impl Iterator<Item = &PairEntry> + '_ {
        self.by_peer
            .get(&peer)
            .into_iter()
            .flatten()
            .filter_map(|n| self.slots.get(n).map(|s| &s.entry))
    }

    /// All pairs, by nonce.
    pub fn pairs(&self) -> impl Iterator<Item = &PairEntry> + '_ {
        self.slots.values().map(|s| &s.entry)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Drop counters.
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// Claims an Idle pair shared with `peer` and starts handing it over, in
    /// one step: no other take can claim the same pair in between.
    pub fn take(
        &mut self,
        now: Instant,
        peer: PeerId,
    ) -> Result<(PairNonce, HandoverId), TakeError> {
        let nonce = self
            .by_peer
            .get(&peer)
            .into_iter()
            .flatten()
            .copied()
            .find(|n| {
                self.slots
                    .get(n)
                    .is_some_and(|s| s.handover.is_none() && s.entry.state() == PairState::Idle)
            })
            .ok_or(TakeError::NoIdlePair(peer))?;
        let id = self.take_pair(now, nonce)?;
        Ok((nonce, id))
    }

    /// Starts handing over one specific pair, which must be Idle.
    pub fn take_pair(&mut self, now: Instant, nonce: PairNonce) -> Result<HandoverId, TakeError> {
        let slot = self
            .slots
            .get_mut(&nonce)
            .ok_or(TakeError::UnknownPair(nonce))?;
        if slot.handover.is_some() || slot.entry.state() != PairState::Idle {
            return Err(TakeError::NotIdle {
                pair: nonce,
                state: slot.entry.state(),
            });
        }
        slot.entry.own_handover_seq += 1;
        let id = HandoverId {
            initiator: self.local,
            seq: slot.entry.own_handover_seq,
        };
        let mut ctx = HandoverCtx {
            now,
            cfg: &self.cfg,
            entry: &mut slot.entry,
            out: &mut self.out,
        };
        slot.handover = Some(PairHandover::initiate(id, &mut ctx));
        self.settle(now, nonce);
        Ok(id)
    }

    /// Pings an Idle pair we ping at once, outside its schedule: a pair
    /// whose peer may not have it yet (its side of the punch still
    /// running) is probed until a pong proves the peer holds the same
    /// path. Returns false, sending nothing, unless the pair is an Idle
    /// pair we ping.
    pub fn probe(&mut self, now: Instant, nonce: PairNonce) -> bool {
        let Some(slot) = self.slots.get_mut(&nonce) else {
            return false;
        };
        let Some(tx) = slot.entry.probe(now, &self.cfg) else {
            return false;
        };
        self.out.push_back(Output::Transmit(tx));
        self.settle(now, nonce);
        true
    }

    /// Our connection on this pair is closed and its socket is back with
    /// the shell: stay silent until the peer confirms, then resume
    /// keepalive.
    pub fn release(&mut self, now: Instant, nonce: PairNonce) -> Result<(), ReleaseError> {
        let slot = self
            .slots
            .get_mut(&nonce)
            .ok_or(ReleaseError::UnknownPair(nonce))?;
        let Some(handover) = slot.handover.as_mut() else {
            return Err(ReleaseError::NotInUse(nonce));
        };
        let mut ctx = HandoverCtx {
            now,
            cfg: &self.cfg,
            entry: &mut slot.entry,
            out: &mut self.out,
        };
        if !handover.release(&mut ctx) {
            return Err(ReleaseError::NotInUse(nonce));
        }
        self.settle(now, nonce);
        Ok(())
    }

    /// Forgets a pair at once, whatever its state; any handover on it ends
    /// without a word to the peer (whose own timeouts roll its side back).
    pub fn remove(&mut self, nonce: PairNonce) -> Option<PairEntry> {
        let slot = self.slots.remove(&nonce)?;
        if let Some(at) = slot.armed {
            self.timers.remove(&(at, nonce));
        }
        let peer = slot.entry.pair().peer;
        if let Some(set) = self.by_peer.get_mut(&peer) {
            set.remove(&nonce);
            if set.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        Some(slot.entry)
    }

    /// A datagram arrived on the socket bound to `local` from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) {
        let frame = match KeepaliveFrame::decode(data) {
            Ok(frame) => frame,
            Err(_) => return self.drops.count(DropReason::Malformed),
        };
        let Some(slot) = self.slots.get_mut(&frame.pair) else {
            return self.drops.count(DropReason::UnknownPair);
        };
        match slot.entry.handle_frame(now, local, from, &frame) {
            Ok(Some(tx)) => self.out.push_back(Output::Transmit(tx)),
            Ok(None) => {}
            Err(reason) => return self.drops.count(reason),
        }
        self.settle(now, frame.pair);
    }

    /// Decodes and handles a signal received from `from`.
    pub fn handle_signal_bytes(&mut self, now: Instant, from: PeerId, data: &[u8]) {
        match Signal::decode(data) {
            Ok(signal) => self.handle_signal(now, from, signal),
            Err(_) => self.drops.count(DropReason::Malformed),
        }
    }

    /// A handover signal arrived from `from` (the channel authenticated it).
    pub fn handle_signal(&mut self, now: Instant, from: PeerId, signal: Signal) {
        let initiator = signal.handover.initiator;
        if initiator != from && initiator != self.local {
            return self.drops.count(DropReason::WrongPeer);
        }
        let Some(slot) = self.slots.get_mut(&signal.pair) else {
            return self.answer_unknown(from, signal, BusyReason::UnknownPair);
        };
        if slot.entry.pair().peer != from {
            return self.drops.count(DropReason::WrongPeer);
        }
        let mut ctx = HandoverCtx {
            now,
            cfg: &self.cfg,
            entry: &mut slot.entry,
            out: &mut self.out,
        };
        match slot.handover.as_mut() {
            Some(h) if h.id() == signal.handover => h.on_signal(signal.kind, &mut ctx),
            current => {
                if signal.kind != SignalKind::Lock || initiator != from {
                    return self.answer_unknown(from, signal, BusyReason::NoSuchHandover);
                }
                // A new Lock from the peer. Ids only grow: one we have seen
                // before is over for us, whatever we answered then.
                if signal.handover.seq <= ctx.entry.peer_handover_seq {
                    return self.answer_unknown(from, signal, BusyReason::NoSuchHandover);
                }
                ctx.entry.peer_handover_seq = signal.handover.seq;
                let busy = match current {
                    None if ctx.entry.state() == PairState::Idle => None,
                    None => Some(BusyReason::AlreadyLocked),
                    // Both sides locked at once: the lower peer id wins, so
                    // exactly one of the two handovers goes on.
                    Some(ours)
                        if ours.state() == HandoverState::Locking
                            && ours.id().initiator == self.local =>
                    {
                        if self.local < from {
                            Some(BusyReason::Contended)
                        } else {
                            ctx.out.push_back(Output::Event(PairEvent::HandoverFailed {
                                pair: signal.pair,
                                handover: ours.id(),
                                reason: FailReason::LostTie,
                            }));
                            None
                        }
                    }
                    // The peer started a newer handover of this pair while
                    // we still answer an older one that never reached use:
                    // it gave that one up (an initiator takes again only
                    // once its side is Idle, so it is neither in use nor
                    // waiting on a Take), perhaps after a duplicate of its
                    // old Lock reached us late. Roll ours back as its Abort
                    // would, and answer the new one.
                    Some(theirs)
                        if theirs.id().initiator == from
                            && theirs.role() == HandoverRole::Responder
                            && matches!(
                                theirs.state(),
                                HandoverState::Locking | HandoverState::Locked
                            ) =>
                    {
                        theirs.on_signal(SignalKind::Abort, &mut ctx);
                        None
                    }
                    Some(_) => Some(BusyReason::AlreadyLocked),
                };
                match busy {
                    Some(reason) => ctx.send_busy(signal, reason),
                    None => slot.handover = Some(PairHandover::respond(signal.handover, &mut ctx)),
                }
            }
        }
        self.settle(now, signal.pair);
    }

    /// Answers a signal that matches no running handover: requests get the
    /// final answer (the pair is not held for that handover), answers are
    /// stale and dropped.
    fn answer_unknown(&mut self, from: PeerId, signal: Signal, busy: BusyReason) {
        let reply = match signal.kind {
            SignalKind::Lock | SignalKind::Take => SignalKind::LockBusy(busy),
            SignalKind::Release => SignalKind::ReleaseOk,
            SignalKind::Abort => SignalKind::AbortOk,
            SignalKind::LockOk
            | SignalKind::LockBusy(_)
            | SignalKind::TakeOk
            | SignalKind::ReleaseOk
            | SignalKind::AbortOk => return self.drops.count(DropReason::StaleSignal),
        };
        self.out.push_back(Output::Signal {
            to: from,
            signal: Signal {
                kind: reply,
                ..signal
            },
        });
    }

    /// When the pool next needs [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Fires every timer due at `now`. Calling it early or twice is
    /// harmless: each pair is visited at most once per call.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        while let Some(&(at, nonce)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.slots.get_mut(&nonce) {
                slot.armed = None;
            }
            due.push(nonce);
        }
        for &nonce in &due {
            let Some(slot) = self.slots.get_mut(&nonce) else {
                continue;
            };
            if let Some(tx) = slot.entry.handle_timeout(now, &self.cfg) {
                self.out.push_back(Output::Transmit(tx));
            }
            if let Some(h) = slot.handover.as_mut() {
                let mut ctx = HandoverCtx {
                    now,
                    cfg: &self.cfg,
                    entry: &mut slot.entry,
                    out: &mut self.out,
                };
                h.handle_timeout(&mut ctx);
                // A handover that timed out and rolled its pair back to Idle
                // has made the resumption ping due now: send it in this call,
                // so poll_timeout() is never <= now after handle_timeout(now).
                if slot.entry.poll_timeout(&self.cfg).is_some_and(|t| t <= now)
                    && let Some(tx) = slot.entry.handle_timeout(now, &self.cfg)
                {
                    self.out.push_back(Output::Transmit(tx));
                }
            }
            self.settle(now, nonce);
        }
        self.due = due;
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Brings a slot to rest after any input: a finished drain reaches its
    /// handover, an expired pair leaves the pool, a finished handover is
    /// forgotten, and the timer index learns the new deadline.
    fn settle(&mut self, now: Instant, nonce: PairNonce) {
        let Some(slot) = self.slots.get_mut(&nonce) else {
            return;
        };
        if let Some(h) = slot.handover.as_mut() {
            // A drain that just finished moves its handover on (no-op in
            // any other state).
            let mut ctx = HandoverCtx {
                now,
                cfg: &self.cfg,
                entry: &mut slot.entry,
                out: &mut self.out,
            };
            h.on_drained(&mut ctx);
            if h.is_finished() {
                slot.handover = None;
            }
        }
        if slot.entry.state() == PairState::Expired {
            self.remove(nonce);
            self.out
                .push_back(Output::Event(PairEvent::Expired { pair: nonce }));
            return;
        }
        let deadline = match (
            slot.entry.poll_timeout(&self.cfg),
            slot.handover.as_ref().and_then(PairHandover::poll_timeout),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deadline != slot.armed {
            if let Some(old) = slot.armed {
                self.timers.remove(&(old, nonce));
            }
            if let Some(new) = deadline {
                self.timers.insert((new, nonce));
            }
            slot.armed = deadline;
        }
    }
}

impl HandoverCtx<'_> {
    fn send_busy(&mut self, signal: Signal, reason: BusyReason) {
        self.out.push_back(Output::Signal {
            to: self.entry.pair().peer,
            signal: Signal {
                kind: SignalKind::LockBusy(reason),
                ..signal
            },
        });
    }
}
