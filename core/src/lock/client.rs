//! The client's lock machine: one lock, as the client sees it.

use crate::Instant;
use crate::proto::{Errno, LockKind, LockScope, LockToken, Reply, Request};
use std::collections::VecDeque;
use std::time::Duration;
use thiserror::Error;

/// Timing of a [`ClientLock`].
///
/// * `wait_timeout` 30 s: the spec's Waiting timeout. It runs from the
///   moment AcquireLock is sent, so it fires no later than the host's own
///   30 s wait (which starts when the request arrives); a grant that
///   arrives after the client gave up is released at once.
/// * `refresh_at` 5/6: RefreshLock goes out at 5/6 of the ttl (25 s of
///   30 s, as in the spec's refresh diagram), leaving 5 s for the round
///   trip.
/// * `expiry_margin` 1 s: the client counts a lifetime from the moment it
///   *sent* the request that the host answered (the host started the clock
///   later), and gives the lock up this much before even that, to absorb
///   clock-rate drift between the machines. Together these make the
///   client's belief end before the host's grant does.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientLockConfig {
    /// Time to wait for a grant.
    pub wait_timeout: Duration,
    /// Fraction of the ttl after which to refresh (in `(0, 1)`).
    pub refresh_at: f64,
    /// Safety margin before the believed expiry.
    pub expiry_margin: Duration,
}

impl Default for ClientLockConfig {
    fn default() -> Self {
        ClientLockConfig {
            wait_timeout: Duration::from_secs(30),
            refresh_at: 5.0 / 6.0,
            expiry_margin: Duration::from_secs(1),
        }
    }
}

/// Names one request this machine sent, so its reply finds its way back.
/// The shell maps it to the connection's [`crate::proto::RequestId`] and
/// hands the reply to [`ClientLock::handle_reply`] with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockOpId(pub u64);

/// The machine's resting states (docs/filesystem.md, "Locks").
///
/// The spec's fourth state, Released, is passed through, not rested in
/// ("Immediate → Unlocked"): on [`ClientLock::release`] or when the lock
/// is lost, the machine forgets the token, sends ReleaseLock and is
/// Unlocked again within the same call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientLockState {
    /// No lock held or requested.
    Unlocked,
    /// AcquireLock sent; no usable grant yet.
    Waiting,
    /// The lock is ours until [`ClientLock::expires_at`].
    Held,
}

/// Why a held lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// No refresh was confirmed before the lock's believed expiry: the
    /// host may have expired it, so the client must stop using it.
    Unconfirmed,
    /// The host refused the refresh (the token is dead there).
    Refused(Errno),
}

/// What happened to the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientLockEvent {
    /// The lock is held.
    Granted {
        /// Its fencing token, to carry on every write under it.
        token: LockToken,
        /// When the client will consider it lost unless refreshed.
        expires_at: Instant,
    },
    /// A refresh was confirmed.
    Refreshed {
        /// The token (unchanged).
        token: LockToken,
        /// The new believed expiry.
        expires_at: Instant,
    },
    /// The lock is no longer held; stop writing under it.
    Lost {
        /// The dead token.
        token: LockToken,
        /// Why.
        reason: LostReason,
    },
    /// No grant within `wait_timeout`.
    TimedOut,
    /// The host refused the request (EAGAIN: busy and not waiting, or the
    /// host's own wait ran out; ENOLCK: its table is full; …).
    Denied(Errno),
}

/// What the machine asks the shell to do, drained with
/// [`ClientLock::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientLockOutput {
    /// Send this request to the host; deliver its reply with `op`.
    Send {
        /// The request's name in [`ClientLock::handle_reply`].
        op: LockOpId,
        /// The request.
        request: Request,
    },
    /// Tell the lock's user.
    Event(ClientLockEvent),
}

/// A command that does not fit the machine's state.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ClientLockError {
    /// Acquire needs Unlocked.
    #[error("lock is {0:?}, not unlocked")]
    NotUnlocked(ClientLockState),
    /// Release needs Waiting or Held; refresh needs Held.
    #[error("lock is {0:?}")]
    NotHeld(ClientLockState),
}

#[derive(Clone, Copy, Debug)]
enum State {
    Unlocked,
    /// `op` was sent at `sent`; `confirming` is a grant received too late
    /// to trust its lifetime, being confirmed by a refresh.
    Waiting {
        op: LockOpId,
        sent: Instant,
        deadline: Instant,
        confirming: Option<LockToken>,
    },
    /// The host's lifetime `ttl` counts from no earlier than `base` (when
    /// the last confirmed request was sent).
    Held {
        token: LockToken,
        base: Instant,
        ttl: Duration,
        refresh: Option<(LockOpId, Instant)>,
    },
}

/// One lock at a client: acquires, refreshes on time, releases, and never
/// believes it holds a lock the host may have expired.
///
/// Inputs are commands ([`Self::acquire`], [`Self::release`],
/// [`Self::refresh_now`]), replies ([`Self::handle_reply`]) and timeouts;
/// outputs are requests to send and events. A reply that answers no
/// current request is ignored, except a grant: a lock the machine no longer
/// wants (it timed out or was cancelled) is released at once, so a late
/// grant cannot block others for a whole ttl.
#[derive(Debug)]
pub struct ClientLock {
    scope: LockScope,
    kind: LockKind,
    cfg: ClientLockConfig,
    state: State,
    next_op: u64,
    out: VecDeque<ClientLockOutput>,
}

impl ClientLock {
    /// An Unlocked machine for a lock of `kind` on `scope`.
    pub fn new(scope: LockScope, kind: LockKind, cfg: ClientLockConfig) -> Self {
        ClientLock {
            scope,
            kind,
            cfg,
            state: State::Unlocked,
            next_op: 1,
            out: VecDeque::new(),
        }
    }

    /// What the lock covers.
    pub fn scope(&self) -> LockScope {
        self.scope
    }

    /// Shared or exclusive.
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// The current state.
    pub fn state(&self) -> ClientLockState {
        match self.state {
            State::Unlocked => ClientLockState::Unlocked,
            State::Waiting { .. } => ClientLockState::Waiting,
            State::Held { .. } => ClientLockState::Held,
        }
    }

    /// The token, if the lock is held and its believed expiry is after
    /// `now` (so a late [`Self::handle_timeout`] cannot stretch it).
    pub fn token(&self, now: Instant) -> Option<LockToken> {
        match self.state {
            State::Held { token, .. } if self.expires_at().is_some_and(|e| now < e) => Some(token),
            _ => None,
        }
    }

    /// When the client will consider the held lock lost unless a refresh is
    /// confirmed first.
    pub fn expires_at(&self) -> Option<Instant> {
        match self.state {
            State::Held { base, ttl, .. } => Some(self.deadline(base, ttl)),
            _ => None,
        }
    }

    /// Asks for the lock: sends AcquireLock and waits. With `wait` the host
    /// queues the request; without, it refuses at once if the lock is busy.
    pub fn acquire(&mut self, now: Instant, wait: bool) -> Result<LockOpId, ClientLockError> {
        self.handle_timeout(now);
        if !matches!(self.state, State::Unlocked) {
            return Err(ClientLockError::NotUnlocked(self.state()));
        }
        let op = self.send(Request::AcquireLock {
            scope: self.scope,
            kind: self.kind,
            wait,
        });
        self.state = State::Waiting {
            op,
            sent: now,
            deadline: now + self.cfg.wait_timeout,
            confirming: None,
        };
        Ok(op)
    }

    /// Gives the lock up: Held → (Released) → Unlocked, sending
    /// ReleaseLock. From Waiting it cancels: the machine is Unlocked and a
    /// grant that still arrives is released.
    pub fn release(&mut self, now: Instant) -> Result<(), ClientLockError> {
        self.handle_timeout(now);
        match self.state {
            State::Unlocked => return Err(ClientLockError::NotHeld(self.state())),
            State::Waiting { confirming, .. } => {
                if let Some(token) = confirming {
                    self.send(Request::ReleaseLock { token });
                }
            }
            State::Held { token, .. } => {
                self.send(Request::ReleaseLock { token });
            }
        }
        self.state = State::Unlocked;
        Ok(())
    }

    /// Refreshes now rather than on schedule, for instance to re-validate
    /// the lock after a reconnect. No-op if a refresh is already in flight.
    pub fn refresh_now(&mut self, now: Instant) -> Result<(), ClientLockError> {
        self.handle_timeout(now);
        match self.state {
            State::Held { refresh: None, .. } => {
                self.start_refresh(now);
                Ok(())
            }
            State::Held { .. } => Ok(()),
            _ => Err(ClientLockError::NotHeld(self.state())),
        }
    }

    /// The host's answer to request `op`.
    pub fn handle_reply(&mut self, now: Instant, op: LockOpId, result: Result<Reply, Errno>) {
        self.handle_timeout(now);
        let granted = match &result {
            Ok(Reply::LockGranted { token, ttl_ms }) => {
                Some((*token, Duration::from_millis(u64::from(*ttl_ms))))
            }
            _ => None,
        };
        match self.state {
            State::Waiting {
                op: cur,
                sent,
                deadline,
                confirming,
            } if cur == op => match (granted, confirming) {
                (Some((token, ttl)), None) => self.on_grant(now, token, ttl, sent, deadline),
                (Some((token, ttl)), Some(expected)) if token == expected => {
                    self.on_grant(now, token, ttl, sent, deadline)
                }
                (granted, confirming) => {
                    // Refused, or a reply that is no grant (a protocol
                    // error, reported as EIO). Release whatever token is in
                    // play: the host may hold it for us.
                    for token in confirming.into_iter().chain(granted.map(|g| g.0)) {
                        self.send(Request::ReleaseLock { token });
                    }
                    self.state = State::Unlocked;
                    let errno = result.err().unwrap_or(Errno::Io);
                    self.event(ClientLockEvent::Denied(errno));
                }
            },
            State::Held {
                token,
                refresh: Some((cur, sent)),
                ..
            } if cur == op => match granted {
                Some((t, ttl)) if t == token => {
                    self.state = State::Held {
                        token,
                        base: sent,
                        ttl,
                        refresh: None,
                    };
                    let expires_at = self.deadline(sent, ttl);
                    self.event(ClientLockEvent::Refreshed { token, expires_at });
                }
                _ => {
                    if let Some((stray, _)) = granted {
                        self.send(Request::ReleaseLock { token: stray });
                    }
                    let errno = result.err().unwrap_or(Errno::Io);
                    self.lose(token, LostReason::Refused(errno));
                }
            },
            _ => {
                // An answer to a request this machine no longer waits for.
                // A grant in it is a lock nobody uses: give it back.
                if let Some((token, _)) = granted {
                    let ours = matches!(self.state, State::Held { token: t, .. } if t == token);
                    if !ours {
                        self.send(Request::ReleaseLock { token });
                    }
                }
            }
        }
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Unlocked => None,
            State::Waiting { deadline, .. } => Some(deadline),
            State::Held {
                base, ttl, refresh, ..
            } => {
                let deadline = self.deadline(base, ttl);
                Some(match refresh {
                    None => self.refresh_time(base, ttl).min(deadline),
                    Some(_) => deadline,
                })
            }
        }
    }

    /// Fires the wait timeout, the refresh, or the believed expiry, as due.
    /// Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Unlocked => {}
            State::Waiting {
                deadline,
                confirming,
                ..
            } => {
                if now >= deadline {
                    if let Some(token) = confirming {
                        self.send(Request::ReleaseLock { token });
                    }
                    self.state = State::Unlocked;
                    self.event(ClientLockEvent::TimedOut);
                }
            }
            State::Held {
                token,
                base,
                ttl,
                refresh,
            } => {
                if now >= self.deadline(base, ttl) {
                    self.lose(token, LostReason::Unconfirmed);
                } else if refresh.is_none() && now >= self.refresh_time(base, ttl) {
                    self.start_refresh(now);
                }
            }
        }
    }

    /// The next output, until `None`.
    pub fn poll_output(&mut self) -> Option<ClientLockOutput> {
        self.out.pop_front()
    }

    /// A grant (or a confirming refresh) for a request sent at `sent`.
    fn on_grant(
        &mut self,
        now: Instant,
        token: LockToken,
        ttl: Duration,
        sent: Instant,
        deadline: Instant,
    ) {
        if now >= self.refresh_time(sent, ttl).min(self.deadline(sent, ttl)) {
            // The request spent so long in flight or in the host's queue
            // that the lifetime we can vouch for (from `sent`) is nearly
            // used up. Confirm with a refresh before reporting the lock:
            // its reply starts a fresh lifetime from now. (So Held always
            // starts with a refresh point still ahead; a host whose ttl is
            // shorter than the margin is never believed, and the wait
            // times out.)
            let op = self.send(Request::RefreshLock { token });
            self.state = State::Waiting {
                op,
                sent: now,
                deadline,
                confirming: Some(token),
            };
            return;
        }
        self.state = State::Held {
            token,
            base: sent,
            ttl,
            refresh: None,
        };
        let expires_at = self.deadline(sent, ttl);
        self.event(ClientLockEvent::Granted { token, expires_at });
    }

    fn start_refresh(&mut self, now: Instant) {
        if let State::Held { token, .. } = self.state {
            let op = self.send(Request::RefreshLock { token });
            if let State::Held { refresh, .. } = &mut self.state {
                *refresh = Some((op, now));
            }
        }
    }

    /// Held → (Released) → Unlocked, involuntarily. ReleaseLock still goes
    /// out: if the host has the lock after all, it is freed now rather than
    /// at its expiry.
    fn lose(&mut self, token: LockToken, reason: LostReason) {
        self.send(Request::ReleaseLock { token });
        self.state = State::Unlocked;
        self.event(ClientLockEvent::Lost { token, reason });
    }

    fn deadline(&self, base: Instant, ttl: Duration) -> Instant {
        base + ttl.saturating_sub(self.cfg.expiry_margin)
    }

    fn refresh_time(&self, base: Instant, ttl: Duration) -> Instant {
        // A NaN or out-of-range fraction in the configuration must not
        // panic inside `mul_f64`.
        let fraction = if self.cfg.refresh_at.is_finite() {
            self.cfg.refresh_at.clamp(0.0, 1.0)
        } else {
            ClientLockConfig::default().refresh_at
        };
        base + ttl.mul_f64(fraction)
    }

    fn send(&mut self, request: Request) -> LockOpId {
        let op = LockOpId(self.next_op);
        self.next_op += 1;
        self.out.push_back(ClientLockOutput::Send { op, request });
        op
    }

    fn event(&mut self, event: ClientLockEvent) {
        self.out.push_back(ClientLockOutput::Event(event));
    }
}
