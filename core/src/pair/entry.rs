//! One pair's keepalive machine.

use super::frame::{FrameKind, KeepaliveFrame};
use super::pool::DropReason;
use super::{EndpointPair, PairConfig, PingRole, Transmit};
use crate::Instant;
use core::net::SocketAddr;
use std::collections::VecDeque;

/// Where a pair is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PairState {
    /// Keepalive running: the pinger pings, the ponger answers.
    Idle,
    /// No new pings; waiting for the pongs of pings already in flight (or
    /// for them to age out).
    Locking,
    /// Strictly silent: sends nothing, answers nothing.
    Locked,
    /// Owned by a connection; silent as far as keepalive goes.
    InUse,
    /// Dead: the peer went silent for too long, or gave up.
    Expired,
}

/// Frame counters of one pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairStats {
    /// Pings sent (pinger).
    pub pings_sent: u64,
    /// Pongs sent (ponger).
    pub pongs_sent: u64,
    /// Authenticated frames accepted from the peer.
    pub frames_accepted: u64,
}

/// Pings in flight are bounded; a pinger whose pongs never come does not
/// grow its memory. Four covers a full `idle_timeout` at the default
/// interval.
const MAX_IN_FLIGHT: usize = 4;

/// One NAT-traversed UDP pair and its keepalive.
///
/// Driven by its [`super::PairPool`]; every method takes `now` and nothing
/// here reads a clock or a socket.
#[derive(Debug, Clone)]
pub struct PairEntry {
    pair: EndpointPair,
    state: PairState,
    /// Last authenticated frame from the peer (or the last return to Idle,
    /// which restarts the silence count after a deliberate quiet period).
    last_heard: Instant,
    /// Pinger: when the next ping is due (while Idle).
    next_ping: Instant,
    /// Pinger: the last ping number sent. Ponger: the highest accepted.
    ping_seq: u64,
    /// Pinger: pings sent and not yet answered, oldest first.
    in_flight: VecDeque<(u64, Instant)>,
    /// Handover numbering (see [`super::HandoverId`]): our last own seq,
    /// and the highest seq the peer has used.
    pub(super) own_handover_seq: u64,
    pub(super) peer_handover_seq: u64,
    stats: PairStats,
}

impl PairEntry {
    /// A new idle pair. The pinger's first ping is at `first_ping`, which
    /// the pool spreads over one interval so that many pairs added at once
    /// do not ping in lockstep.
    pub(super) fn new(now: Instant, pair: EndpointPair, first_ping: Instant) -> Self {
        PairEntry {
            pair,
            state: PairState::Idle,
            last_heard: now,
            next_ping: first_ping,
            ping_seq: 0,
            in_flight: VecDeque::new(),
            own_handover_seq: 0,
            peer_handover_seq: 0,
            stats: PairStats::default(),
        }
    }

    /// The pair's endpoints, peer, key and role.
    pub fn pair(&self) -> &EndpointPair {
        &self.pair
    }

    /// Current state.
    pub fn state(&self) -> PairState {
        self.state
    }

    /// Frame counters.
    pub fn stats(&self) -> PairStats {
        self.stats
    }

    /// When this entry next needs [`Self::handle_timeout`].
    pub fn poll_timeout(&self, cfg: &PairConfig) -> Option<Instant> {
        match self.state {
            PairState::Idle => {
                let expiry = self.last_heard + cfg.idle_timeout;
                Some(match self.pair.role {
                    PingRole::Pinger => expiry.min(self.next_ping),
                    PingRole::Ponger => expiry,
                })
            }
            PairState::Locking => self
                .in_flight
                .front()
                .map(|&(_, sent)| sent + cfg.drain_timeout),
            PairState::Locked | PairState::InUse | PairState::Expired => None,
        }
    }

    /// Advances timers: expiry, pings, drain age-out. Returns a ping to
    /// send, if one is due.
    pub(super) fn handle_timeout(&mut self, now: Instant, cfg: &PairConfig) -> Option<Transmit> {
        match self.state {
            PairState::Idle => {
                if now >= self.last_heard + cfg.idle_timeout {
                    self.expire();
                    return None;
                }
                if self.pair.role == PingRole::Pinger && now >= self.next_ping {
                    // Schedule from `now`, not from the missed deadline, so a
                    // late shell never triggers a burst of catch-up pings.
                    self.next_ping = now + cfg.ping_interval;
                    return Some(self.ping(now));
                }
                None
            }
            PairState::Locking => {
                while let Some(&(_, sent)) = self.in_flight.front() {
                    if now >= sent + cfg.drain_timeout {
                        self.in_flight.pop_front();
                    } else {
                        break;
                    }
                }
                if self.in_flight.is_empty() {
                    self.state = PairState::Locked;
                }
                None
            }
            PairState::Locked | PairState::InUse | PairState::Expired => None,
        }
    }

    /// An Idle pinger's ping outside its schedule (the next scheduled one
    /// is a whole interval later). `None` in any other state or role.
    pub(super) fn probe(&mut self, now: Instant, cfg: &PairConfig) -> Option<Transmit> {
        if self.state != PairState::Idle || self.pair.role != PingRole::Pinger {
            return None;
        }
        self.next_ping = now + cfg.ping_interval;
        Some(self.ping(now))
    }

    fn ping(&mut self, now: Instant) -> Transmit {
        self.ping_seq += 1;
        if self.in_flight.len() == MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((self.ping_seq, now));
        self.stats.pings_sent += 1;
        self.transmit(FrameKind::Ping, self.ping_seq)
    }

    fn transmit(&self, kind: FrameKind, ping: u64) -> Transmit {
        let frame = KeepaliveFrame::sealed(&self.pair.key, kind, self.pair.nonce, ping);
        Transmit {
            local: self.pair.local,
            remote: self.pair.remote,
            payload: frame.encode(),
        }
    }

    /// Handles a decoded frame addressed to this pair (by nonce). Returns
    /// the pong to send, if any, or why the frame was dropped.
    pub(super) fn handle_frame(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        frame: &KeepaliveFrame,
    ) -> Result<Option<Transmit>, DropReason> {
        if from != self.pair.remote || local != self.pair.local {
            return Err(DropReason::WrongAddress);
        }
        if !frame.verify(&self.pair.key) {
            return Err(DropReason::BadMac);
        }
        match (self.state, self.pair.role, frame.kind) {
            (PairState::Idle, PingRole::Ponger, FrameKind::Ping) => {
                if frame.ping <= self.ping_seq {
                    return Err(DropReason::Replayed);
                }
                self.ping_seq = frame.ping;
                self.heard(now);
                self.stats.pongs_sent += 1;
                Ok(Some(self.transmit(FrameKind::Pong, frame.ping)))
            }
            (PairState::Idle | PairState::Locking, PingRole::Pinger, FrameKind::Pong) => {
                let Some(pos) = self
                    .in_flight
                    .iter()
                    .position(|&(seq, _)| seq == frame.ping)
                else {
                    return Err(DropReason::Replayed);
                };
                // Pongs for older pings are implied lost; this one proves the
                // path is alive now.
                self.in_flight.drain(..=pos);
                self.heard(now);
                if self.state == PairState::Locking && self.in_flight.is_empty() {
                    self.state = PairState::Locked;
                }
                Ok(None)
            }
            (PairState::Idle | PairState::Locking, _, _) => Err(DropReason::Unexpected),
            (PairState::Locked | PairState::InUse | PairState::Expired, _, _) => {
                Err(DropReason::Silent)
            }
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
        self.stats.frames_accepted += 1;
    }

    /// Idle → Locking (or straight to Locked when no ping younger than
    /// `drain_timeout` is in flight). Returns false, changing nothing,
    /// unless the pair is Idle.
    pub(super) fn lock(&mut self, now: Instant, cfg: &PairConfig) -> bool {
        if self.state != PairState::Idle {
            return false;
        }
        // Pings already older than the drain timeout count as lost now, not
        // at the next timer tick.
        self.in_flight
            .retain(|&(_, sent)| now < sent + cfg.drain_timeout);
        self.state = if self.in_flight.is_empty() {
            PairState::Locked
        } else {
            PairState::Locking
        };
        true
    }

    /// Locked → InUse. Returns false, changing nothing, otherwise.
    pub(super) fn take(&mut self) -> bool {
        if self.state != PairState::Locked {
            return false;
        }
        self.state = PairState::InUse;
        true
    }

    /// InUse → Locked: the connection is gone; stay silent until the peer
    /// confirms it has stopped using the pair too.
    pub(super) fn silence(&mut self) {
        if self.state == PairState::InUse {
            self.state = PairState::Locked;
        }
    }

    /// Back to Idle from any live state: keepalive resumes with a ping at
    /// once (the mapping may have aged while silent) and the silence count
    /// restarts, since the quiet period was deliberate.
    pub(super) fn release(&mut self, now: Instant) {
        if self.state == PairState::Expired {
            return;
        }
        self.state = PairState::Idle;
        self.in_flight.clear();
        self.last_heard = self.last_heard.max(now);
        self.next_ping = now;
    }

    /// Marks the pair dead; the pool removes it.
    pub(super) fn expire(&mut self) {
        self.state = PairState::Expired;
        self.in_flight.clear();
    }
}
