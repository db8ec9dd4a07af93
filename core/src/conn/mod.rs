//! The client's connection to the host (docs/filesystem.md, "Connection"): connect, authenticate,
//! and reconnect with backoff, restoring the session.
//!
//! ```text
//! Disconnected ─connect─► Connecting ─transport up─► Authenticating ─HelloAck─► Ready
//!      ▲                    │ 10 s / error              │ 5 s / auth failed        │ lost
//!      └────────────────────┴───────────────────────────┘                          ▼
//!      ◄──────────────── 5 attempts failed ──────────────────────────────── Reconnecting
//! ```
//!
//! While Reconnecting, each attempt waits its backoff delay (1, 2, 4, 8,
//! 16 s, capped at 30 s, each ±10 % from the machine's seeded RNG), then
//! runs the same Connecting/Authenticating steps with the same timeouts.
//! A Hello on reconnect asks to resume the old session; the
//! [`ConnEvent::Ready`] event says whether the host restored it, so the
//! lock, write and cache machines know whether to re-validate or start
//! over. A refused proof is final: retrying a wrong secret cannot succeed.

pub mod auth;

use crate::proto::{Attr, Errno, Limits, Request, SessionId};
use crate::{Instant, Rng};
use auth::TicketSecret;
use std::collections::VecDeque;
use std::time::Duration;

/// Timeouts and retry policy (the defaults of docs/filesystem.md, "Connection").
#[derive(Clone, Debug, PartialEq)]
pub struct ConnConfig {
    /// Transport handshake limit.
    pub connect_timeout: Duration,
    /// Hello → HelloAck limit.
    pub auth_timeout: Duration,
    /// First reconnect delay.
    pub initial_delay: Duration,
    /// Largest reconnect delay.
    pub max_delay: Duration,
    /// Reconnect attempts before giving up.
    pub max_retries: u32,
    /// Total jitter band as a fraction of the delay (0.2 = ±10 %).
    pub jitter: f64,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(5),
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retries: 5,
            jitter: 0.2,
        }
    }
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// No connection.
    Disconnected,
    /// Transport handshake in progress.
    Connecting,
    /// Hello sent, waiting for HelloAck.
    Authenticating,
    /// Connected and authenticated.
    Ready,
    /// Lost; between or during reconnect attempts.
    Reconnecting,
}

/// Why the connection ended up Disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The transport handshake took longer than the connect timeout.
    ConnectTimeout,
    /// The transport failed.
    TransportError,
    /// No HelloAck in time.
    AuthTimeout,
    /// The host refused our proof (wrong ticket secret).
    AuthFailed,
    /// The host said goodbye.
    HostGoodbye,
    /// We disconnected.
    Requested,
    /// Every reconnect attempt failed.
    RetriesExhausted,
}

impl DisconnectReason {
    /// Whether trying again later may succeed: the host was unreachable,
    /// slow or going away. A refused proof stays refused (the ticket is
    /// wrong), and a disconnect we asked for is not to be undone.
    pub fn may_recover(self) -> bool {
        !matches!(self, Self::AuthFailed | Self::Requested)
    }
}

impl core::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::ConnectTimeout => "no answer from the host",
            Self::TransportError => "the connection failed",
            Self::AuthTimeout => "the host did not answer the ticket's proof",
            Self::AuthFailed => "the host refused the ticket's secret",
            Self::HostGoodbye => "the host shut down",
            Self::Requested => "disconnected on request",
            Self::RetriesExhausted => "every reconnect attempt failed",
        })
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnOutput {
    /// Start a transport connection to the host.
    OpenTransport,
    /// Close the transport (if any).
    CloseTransport,
    /// Send this request on the new transport (Hello, Goodbye).
    Send(Request),
    /// Report a change.
    Event(ConnEvent),
}

/// Changes other machines and the user care about.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnEvent {
    /// Connected and authenticated.
    Ready {
        /// The session.
        session: SessionId,
        /// Whether this is the session we asked to resume (so held locks
        /// and open transactions still exist at the host).
        resumed: bool,
        /// The root's attributes.
        root: Attr,
        /// The host's limits.
        limits: Limits,
    },
    /// The connection was lost; requests in flight must be retried after
    /// reconnecting or failed.
    Lost,
    /// A reconnect attempt is scheduled.
    Retrying {
        /// Attempt number, from 1.
        attempt: u32,
        /// Delay before it.
        delay: Duration,
    },
    /// Given up.
    Disconnected(DisconnectReason),
}

/// Phase within Connecting / Reconnecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Waiting { until: Instant },
    Connecting { deadline: Instant },
    Authenticating { deadline: Instant },
    Ready,
}

/// The client's connection machine.
#[derive(Debug)]
pub struct Connection {
    cfg: ConnConfig,
    secret: TicketSecret,
    rng: Rng,
    phase: Phase,
    /// Set while recovering a lost connection: the attempt number (≥ 1).
    attempt: Option<u32>,
    session: Option<SessionId>,
    out: VecDeque<ConnOutput>,
}

impl Connection {
    /// A disconnected machine that will prove `secret`.
    pub fn new(cfg: ConnConfig, secret: TicketSecret, rng: Rng) -> Self {
        Connection {
            cfg,
            secret,
            rng,
            phase: Phase::Idle,
            attempt: None,
            session: None,
            out: VecDeque::new(),
        }
    }

    /// The spec state.
    pub fn state(&self) -> ConnState {
        match (self.phase, self.attempt) {
            (Phase::Ready, _) => ConnState::Ready,
            (Phase::Idle, _) => ConnState::Disconnected,
            (_, Some(_)) => ConnState::Reconnecting,
            (Phase::Connecting { .. }, None) => ConnState::Connecting,
            (Phase::Authenticating { .. }, None) => ConnState::Authenticating,
            (Phase::Waiting { .. }, None) => ConnState::Connecting,
        }
    }

    /// The current (or last) session.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// User: connect.
    pub fn connect(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        self.attempt = None;
        self.session = None;
        self.open(now);
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Connecting {
            deadline: now + self.cfg.connect_timeout,
        };
        self.out.push_back(ConnOutput::OpenTransport);
    }

    /// Shell: the transport is up; `exporter` is the TLS session's keying
    /// material under [`auth::EXPORTER_LABEL`].
    pub fn transport_established(&mut self, now: Instant, exporter: &[u8; 32]) {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        self.phase = Phase::Authenticating {
            deadline: now + self.cfg.auth_timeout,
        };
        self.out.push_back(ConnOutput::Send(Request::Hello {
            version: u16::from(crate::codec::PROTOCOL_VERSION),
            proof: auth::proof(&self.secret, exporter),
            resume: self.session,
        }));
    }

    /// The host answered Hello.
    pub fn hello_ack(&mut self, _now: Instant, session: SessionId, root: Attr, limits: Limits) {
        if !matches!(self.phase, Phase::Authenticating { .. }) {
            return;
        }
        let resumed = self.session == Some(session);
        self.session = Some(session);
        self.phase = Phase::Ready;
        self.attempt = None;
        self.out.push_back(ConnOutput::Event(ConnEvent::Ready {
            session,
            resumed,
            root,
            limits,
        }));
    }

    /// The host refused Hello with `errno` (EACCES: bad proof).
    pub fn hello_refused(&mut self, now: Instant, errno: Errno) {
        if !matches!(self.phase, Phase::Authenticating { .. }) {
            return;
        }
        if errno == Errno::Acces || errno == Errno::Perm {
            self.give_up(DisconnectReason::AuthFailed);
        } else {
            self.failed_attempt(now, DisconnectReason::TransportError);
        }
    }

    /// Shell: the transport failed or closed.
    pub fn transport_lost(&mut self, now: Instant) {
        match self.phase {
            Phase::Ready => {
                self.out.push_back(ConnOutput::Event(ConnEvent::Lost));
                self.attempt = Some(0);
                self.schedule_retry(now);
            }
            Phase::Connecting { .. } | Phase::Authenticating { .. } => {
                self.failed_attempt(now, DisconnectReason::TransportError);
            }
            Phase::Idle | Phase::Waiting { .. } => {}
        }
    }

    /// Shell: a better path to the host exists (a direct one found while
    /// relayed): close the transport and open one over the new path now,
    /// resuming the session. Nothing is lost, so no [`ConnEvent::Lost`];
    /// if the new path fails, the attempts go on as after a loss. Only
    /// when Ready: a machine still connecting takes the new path anyway.
    pub fn move_path(&mut self, now: Instant) {
        if self.phase != Phase::Ready {
            return;
        }
        self.out.push_back(ConnOutput::CloseTransport);
        self.attempt = Some(0);
        self.open(now);
    }

    /// The host said Goodbye: a clean end, no reconnect.
    pub fn host_goodbye(&mut self, _now: Instant) {
        if self.phase != Phase::Idle {
            self.give_up(DisconnectReason::HostGoodbye);
        }
    }

    /// User: disconnect (sends Goodbye when connected).
    pub fn disconnect(&mut self, _now: Instant) {
        if self.phase == Phase::Ready {
            self.out.push_back(ConnOutput::Send(Request::Goodbye));
        }
        if self.phase != Phase::Idle {
            self.give_up(DisconnectReason::Requested);
        }
    }

    fn give_up(&mut self, reason: DisconnectReason) {
        self.phase = Phase::Idle;
        self.attempt = None;
        self.out.push_back(ConnOutput::CloseTransport);
        self.out
            .push_back(ConnOutput::Event(ConnEvent::Disconnected(reason)));
    }

    /// An attempt failed: a first connect gives up (spec: Connecting →
    /// Disconnected); a reconnect tries again until out of retries.
    fn failed_attempt(&mut self, now: Instant, reason: DisconnectReason) {
        match self.attempt {
            None => self.give_up(reason),
            Some(_) => {
                self.out.push_back(ConnOutput::CloseTransport);
                self.schedule_retry(now);
            }
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        let done = self.attempt.unwrap_or(0);
        if done >= self.cfg.max_retries {
            self.give_up(DisconnectReason::RetriesExhausted);
            return;
        }
        let attempt = done + 1;
        self.attempt = Some(attempt);
        let delay = self.backoff(attempt);
        self.phase = Phase::Waiting { until: now + delay };
        self.out
            .push_back(ConnOutput::Event(ConnEvent::Retrying { attempt, delay }));
    }

    /// Someone is waiting for the connection: a reconnect attempt waiting
    /// out its backoff starts now (decision of 2026-12-04: the backoff
    /// spares a host nobody is waiting for; a person waiting gets the
    /// next attempt at once, and attempts still run one at a time, each
    /// bounded by the connect timeout). Otherwise nothing changes.
    pub fn retry_now(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Waiting { .. }) {
            self.open(now);
        }
    }

    /// Delay before reconnect attempt `attempt` (from 1): initial × 2^(n-1),
    /// capped, jittered.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = self
            .cfg
            .initial_delay
            .saturating_mul(1u32 << (attempt - 1).min(20));
        let capped = base.min(self.cfg.max_delay);
        self.rng.jitter(capped, self.cfg.jitter)
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { until } => Some(until),
            Phase::Connecting { deadline } | Phase::Authenticating { deadline } => Some(deadline),
            Phase::Idle | Phase::Ready => None,
        }
    }

    /// Fires due timers; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting { until } if now >= until => self.open(now),
            Phase::Connecting { deadline } if now >= deadline => {
                self.failed_attempt(now, DisconnectReason::ConnectTimeout);
            }
            Phase::Authenticating { deadline } if now >= deadline => {
                self.failed_attempt(now, DisconnectReason::AuthTimeout);
            }
            _ => {}
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<ConnOutput> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests;
