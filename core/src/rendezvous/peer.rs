//! The peers' side of the rendezvous: a host registers and answers
//! clients, a client asks to be put through, and each then punches (a
//! [`Traversal`]) with the candidates the other sent.
//!
//! The host keeps its registration on one socket and punches toward each
//! client from a fresh socket of its own (asked of the shell with
//! [`HostEvent::NeedSocket`]), because a punched socket goes on to carry
//! that client's connection. The client punches from the socket it asks
//! from. Either side may be asked for more sockets for birthday punching
//! (`NeedSprayers`); the punched path may then be on one of those.
//!
//! A punched path is not used at once: both sides add it to their
//! [`PairPool`] (the client pings, the host answers). The client probes
//! its path until the host answers (proof that the host holds the same
//! path, not another it nominated), then takes it through the pool's
//! lock/take handover, whose signals travel through the rendezvous, sealed
//! with the session's pair key. Only when the pool
//! says `Taken` is the path reported as connected and its socket given to
//! QUIC: the handover is what makes the two sides agree that the path is
//! theirs (after a lossy punch one side may have connected and the other
//! not; the handover then fails on both).

use super::wire::{
    HostId, MAX_CANDIDATES, Refusal, Signalling, Token, check_key, client_peer, host_peer,
    open_pair_signal, session_pair,
};
use crate::conn::auth::TicketSecret;
use crate::nat::binding::BindingConfig;
use crate::nat::stun;
use crate::nat::{
    CandidateKind, FailReason, Offer, Role, Traversal, TraversalConfig, TraversalEvent,
};
use crate::pair::{
    EndpointPair, Output, PairConfig, PairEvent, PairKey, PairNonce, PairPool, PingRole, Transmit,
};
use crate::turn::{TurnClient, TurnError, TurnEvent};
use crate::{Instant, Rng};
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

/// Punching sessions a host runs at once; more clients wait for their
/// Connect to be repeated.
pub const MAX_HOST_SESSIONS: usize = 16;
/// Of those, how many may punch by birthday at once. Birthday punching
/// sends up to 4,096 datagrams toward the public IP the client's offer
/// names, and whoever holds the ticket writes that offer: the cap bounds
/// what one ticket holder can make the host send to a third party. A
/// session beyond it punches without birthday (and fails if only birthday
/// would have worked; the mount's next attempt finds room).
pub const MAX_BIRTHDAY_SESSIONS: usize = 2;
/// Registration refresh: well inside the rendezvous's 60 s and common NAT
/// UDP timeouts (30 s and up), so the host's mapping stays open.
const REGISTER_EVERY: Duration = Duration::from_secs(15);
/// Until the first Registered, and after a silence, Register is repeated
/// this often.
const REGISTER_RETRY: Duration = Duration::from_secs(1);
/// Registration unanswered this long is reported (once, until answered).
const SILENT_AFTER: Duration = Duration::from_secs(5);
/// Connect is repeated this often until answered...
const CONNECT_EVERY: Duration = Duration::from_millis(500);
/// The punched path is probed this often until the host answers: it adds
/// the pair when its own side of the punch finishes, a moment after ours...
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// ...this many times in all (5 s).
const MAX_PROBES: u32 = 25;
/// A handover that failed (its signals lost on the way) is tried again
/// after this...
const RETAKE_AFTER: Duration = Duration::from_millis(200);
/// ...this many times in all.
const MAX_TAKES: u32 = 10;
/// A pair handed to its connection stays in the host's pool this long,
/// with the key that verifies its signals, so that a client repeating its
/// Take (our TakeOk lost) is answered.
const TAKEN_LINGER: Duration = Duration::from_secs(10);
/// ...this many times.
const CONNECT_SENDS: u32 = 10;
/// A spare pair's Connect is repeated this often while it waits: it keeps
/// the rendezvous's session (30 s) open, which carries the handover's
/// signals when the spare is taken, and our NAT's mapping toward the
/// rendezvous with it. The host answers a repeat with its Answer again.
const SPARE_REFRESH: Duration = Duration::from_secs(10);

/// What a host's rendezvous side reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// The rendezvous confirmed the registration (first time, or again
    /// after it had gone silent).
    Registered,
    /// The rendezvous has not answered the registration for a while:
    /// clients behind NATs cannot be put through meanwhile. Registering
    /// goes on.
    RendezvousSilent,
    /// A client was put through: bind a fresh UDP socket and pass it to
    /// [`HostRendezvous::add_socket`].
    NeedSocket {
        /// The client's session.
        session: u64,
    },
    /// Birthday punching toward a client wants more sockets, bound like
    /// the session's first: pass them to [`HostRendezvous::add_sprayers`].
    NeedSprayers {
        /// The client's session.
        session: u64,
        /// How many (fewer is fine).
        count: u16,
    },
    /// A punched path to a client: the socket `local` now belongs to it.
    Connected {
        /// The session.
        session: u64,
        /// The punched socket.
        local: SocketAddr,
        /// The client's address on the path.
        remote: SocketAddr,
        /// How that address was learned.
        kind: CandidateKind,
        /// Found by birthday punching.
        birthday: bool,
        /// The session's other sockets, to close.
        unused: Vec<SocketAddr>,
    },
    /// No direct path to a client; its sockets may be closed.
    Failed {
        /// The session.
        session: u64,
        /// The session's sockets.
        sockets: Vec<SocketAddr>,
        /// Why.
        why: FailReason,
    },
}

struct HostSession {
    /// The client's offer, until the socket exists.
    offer: Offer,
    traversal: Option<Traversal>,
    /// Our answer, resent when the client repeats its Connect.
    answer: Option<Offer>,
    /// The session's pair in the pool: its nonce and key.
    pair: (PairNonce, PairKey),
    /// The punched path, once there is one: handed over when taken.
    punched: Option<Punched>,
}

/// A session whose pair went to its connection: the pool still answers a
/// repeated Take for it until `until`.
#[derive(Debug)]
struct Taken {
    until: Instant,
    session: u64,
    pair: (PairNonce, PairKey),
}

/// A punched path waiting for its handover.
#[derive(Clone, Copy, Debug)]
struct Punched {
    local: SocketAddr,
    remote: SocketAddr,
    kind: CandidateKind,
    birthday: bool,
}

/// A host's side: registration with the rendezvous, and one traversal
/// per client put through.
pub struct HostRendezvous {
    rendezvous: SocketAddr,
    local: SocketAddr,
    host: HostId,
    token: Token,
    secret: TicketSecret,
    config: TraversalConfig,
    rng: Rng,
    next_register: Instant,
    registered: bool,
    /// When the oldest unanswered Register went out.
    unanswered_since: Option<Instant>,
    /// The current silence has been reported.
    silent_reported: bool,
    sessions: BTreeMap<u64, HostSession>,
    by_local: BTreeMap<SocketAddr, u64>,
    /// Punched pairs, each answering its client's pings and handovers.
    pool: PairPool,
    /// Sessions whose pair went to its connection, until their pair
    /// leaves the pool, oldest first.
    taken: VecDeque<Taken>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<HostEvent>,
}

impl core::fmt::Debug for HostRendezvous {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostRendezvous")
            .field("rendezvous", &self.rendezvous)
            .field("local", &self.local)
            .field("registered", &self.registered)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl HostRendezvous {
    /// A host registering from the socket bound to `local` with the
    /// rendezvous at `rendezvous`. `fingerprint` is the host certificate's.
    pub fn new(
        now: Instant,
        rendezvous: SocketAddr,
        local: SocketAddr,
        fingerprint: &[u8; 32],
        secret: TicketSecret,
        config: TraversalConfig,
        mut rng: Rng,
    ) -> Self {
        let id = HostId::of(fingerprint);
        let pool = PairPool::new(
            host_peer(id),
            PairConfig::default(),
            Rng::from_u64(rng.next_u64()),
        );
        let mut host = HostRendezvous {
            rendezvous,
            local,
            host: id,
            token: Token::of(&secret),
            secret,
            config,
            rng,
            next_register: now,
            registered: false,
            unanswered_since: None,
            silent_reported: false,
            sessions: BTreeMap::new(),
            by_local: BTreeMap::new(),
            pool,
            taken: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        host.handle_timeout(now);
        host
    }

    /// Offers a datagram that arrived on socket `local`; returns whether
    /// it was for the rendezvous side (signalling or a session's STUN).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        if let Some(session) = self.by_local.get(&local).copied() {
            let stun = self
                .sessions
                .get_mut(&session)
                .and_then(|s| s.traversal.as_mut())
                .is_some_and(|t| t.handle_datagram(now, local, from, data));
            if !stun {
                // The punched pair's keepalive.
                self.pool.handle_datagram(now, local, from, data);
            }
            self.collect(now, session);
            self.drain_pool();
            return true;
        }
        if local != self.local || from != self.rendezvous || stun::looks_like_stun(data) {
            return false;
        }
        match Signalling::decode(data) {
            Ok(Signalling::Registered { .. }) => {
                if !self.registered {
                    self.registered = true;
                    self.events.push_back(HostEvent::Registered);
                }
                self.unanswered_since = None;
                self.silent_reported = false;
                self.next_register = now + REGISTER_EVERY;
            }
            Ok(Signalling::Incoming { session, offer }) => self.incoming(session, offer),
            Ok(Signalling::PairSignal {
                host,
                session,
                signal,
                mac,
            }) if host == self.host => {
                let signal = self
                    .pair_key(session)
                    .and_then(|key| open_pair_signal(key, session, false, &signal, &mac));
                if let Some(signal) = signal {
                    self.pool.handle_signal(now, client_peer(session), signal);
                    self.drain_pool();
                }
            }
            _ => {}
        }
        true
    }

    fn incoming(&mut self, session: u64, offer: Offer) {
        if let Some(s) = self.sessions.get(&session) {
            // The client repeated its Connect: our answer was lost.
            if let Some(answer) = s.answer.clone() {
                self.send_answer(session, answer);
            }
            return;
        }
        // A late repeat of a Connect whose session is already connected
        // must not start it again.
        if self.sessions.len() >= MAX_HOST_SESSIONS
            || self.taken.iter().any(|t| t.session == session)
        {
            return;
        }
        self.sessions.insert(
            session,
            HostSession {
                offer,
                traversal: None,
                answer: None,
                pair: session_pair(&self.secret, session),
                punched: None,
            },
        );
        self.events.push_back(HostEvent::NeedSocket { session });
    }

    /// The fresh socket for `session` (bound to `local`, reachable at
    /// `host_addrs` on this machine; an address there of the other IP
    /// family is a second socket, bound to it): punching starts.
    pub fn add_socket(
        &mut self,
        now: Instant,
        session: u64,
        local: SocketAddr,
        host_addrs: Vec<SocketAddr>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.traversal.is_some() {
            return;
        }
        let birthdays = self
            .sessions
            .values()
            .filter_map(|s| s.traversal.as_ref())
            .filter(|t| t.may_birthday())
            .count();
        let mut config = self.config;
        if birthdays >= MAX_BIRTHDAY_SESSIONS {
            config.birthday.probes = 0;
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let mut t = Traversal::new(
            config,
            Role::Controlled,
            check_key(&self.secret, session),
            local,
            host_addrs,
            Rng::from_u64(self.rng.next_u64()),
        );
        t.start(now, Some(self.rendezvous));
        t.add_remote_candidates(now, &s.offer);
        for l in t.locals() {
            self.by_local.insert(l, session);
        }
        s.traversal = Some(t);
        self.collect(now, session);
        self.drain_pool();
    }

    /// The sockets asked for with [`HostEvent::NeedSprayers`], bound.
    pub fn add_sprayers(&mut self, now: Instant, session: u64, locals: &[SocketAddr]) {
        let Some(t) = self
            .sessions
            .get_mut(&session)
            .and_then(|s| s.traversal.as_mut())
        else {
            return;
        };
        t.add_sprayers(locals);
        for local in t.locals() {
            self.by_local.insert(local, session);
        }
        if t.poll_timeout().is_some_and(|d| d <= now) {
            t.handle_timeout(now);
        }
        self.collect(now, session);
        self.drain_pool();
    }

    /// Ends a session: its sockets are no longer ours to read (the
    /// punched one carries the connection, the others were closed). A
    /// taken pair stays in the pool a little longer, for the client's
    /// repeated Take.
    pub fn forget(&mut self, now: Instant, session: u64) {
        if let Some(s) = self.sessions.remove(&session) {
            self.taken.push_back(Taken {
                until: now + TAKEN_LINGER,
                session,
                pair: s.pair,
            });
        }
        self.by_local.retain(|_, s| *s != session);
    }

    /// The pair key of a session, running or taken.
    fn pair_key(&self, session: u64) -> Option<&PairKey> {
        let taken = self.taken.iter().find(|t| t.session == session);
        let pair = self.sessions.get(&session).map(|s| &s.pair);
        pair.or(taken.map(|t| &t.pair)).map(|(_, key)| key)
    }

    /// Keeps the registration fresh and drives the traversals' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_register {
            let msg = Signalling::Register {
                host: self.host,
                verifier: self.token.verifier(),
            };
            self.transmits.push_back(Transmit {
                local: self.local,
                remote: self.rendezvous,
                payload: msg.encode(),
            });
            // Until the next Registered arrives, ask again soon.
            self.next_register = now + REGISTER_RETRY;
            let since = *self.unanswered_since.get_or_insert(now);
            if !self.silent_reported && now.saturating_duration_since(since) >= SILENT_AFTER {
                self.registered = false;
                self.silent_reported = true;
                self.events.push_back(HostEvent::RendezvousSilent);
            }
        }
        let sessions: Vec<u64> = self.sessions.keys().copied().collect();
        for session in sessions {
            if let Some(t) = self
                .sessions
                .get_mut(&session)
                .and_then(|s| s.traversal.as_mut())
                && t.poll_timeout().is_some_and(|d| d <= now)
            {
                t.handle_timeout(now);
            }
            self.collect(now, session);
        }
        while self.taken.front().is_some_and(|t| t.until <= now) {
            if let Some(t) = self.taken.pop_front() {
                self.pool.remove(t.pair.0);
            }
        }
        if self.pool.poll_timeout().is_some_and(|t| t <= now) {
            self.pool.handle_timeout(now);
        }
        self.drain_pool();
    }

    /// Carries out what the pool asks: keepalive datagrams, signals to
    /// clients through the rendezvous, and the end of handovers.
    fn drain_pool(&mut self) {
        while let Some(output) = self.pool.poll_output() {
            match output {
                Output::Transmit(t) => self.transmits.push_back(t),
                Output::Signal { to, signal } => {
                    let running = self.sessions.keys().copied();
                    let taken = self.taken.iter().map(|t| t.session);
                    let Some(session) = running.chain(taken).find(|s| client_peer(*s) == to) else {
                        continue;
                    };
                    let Some(key) = self.pair_key(session) else {
                        continue;
                    };
                    let msg = Signalling::seal_pair_signal(self.host, session, key, true, &signal);
                    self.transmits.push_back(Transmit {
                        local: self.local,
                        remote: self.rendezvous,
                        payload: msg.encode(),
                    });
                }
                Output::Event(PairEvent::Taken { pair, .. }) => {
                    let Some((session, s)) = self.sessions.iter().find(|(_, s)| s.pair.0 == pair)
                    else {
                        continue;
                    };
                    let (Some(p), Some(t)) = (s.punched, s.traversal.as_ref()) else {
                        continue;
                    };
                    let unused = t.locals().filter(|l| *l != p.local).collect();
                    self.events.push_back(HostEvent::Connected {
                        session: *session,
                        local: p.local,
                        remote: p.remote,
                        kind: p.kind,
                        birthday: p.birthday,
                        unused,
                    });
                }
                // A failed handover is the client's to try again; the
                // pair stays, until it expires because the client is gone.
                Output::Event(PairEvent::HandoverFailed { .. } | PairEvent::Released { .. }) => {}
                Output::Event(PairEvent::Expired { pair }) => {
                    let failed = self
                        .sessions
                        .iter()
                        .find(|(_, s)| s.pair.0 == pair && s.punched.is_some());
                    if let Some((session, s)) = failed {
                        let sockets = s.traversal.as_ref().map(|t| t.locals().collect());
                        self.events.push_back(HostEvent::Failed {
                            session: *session,
                            sockets: sockets.unwrap_or_default(),
                            why: FailReason::NotTaken,
                        });
                        let session = *session;
                        if let Some(s) = self.sessions.get_mut(&session) {
                            s.punched = None;
                        }
                        self.pool.remove(pair);
                    }
                }
            }
        }
    }

    fn collect(&mut self, now: Instant, session: u64) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let Some(t) = s.traversal.as_mut() else {
            return;
        };
        while let Some(tr) = t.poll_transmit() {
            self.transmits.push_back(tr);
        }
        let mut answer = None;
        while let Some(event) = t.poll_event() {
            match event {
                TraversalEvent::LocalCandidates(mut offer) => {
                    offer.candidates.truncate(MAX_CANDIDATES);
                    answer = Some(offer);
                }
                TraversalEvent::NeedSprayers(count) => {
                    self.events
                        .push_back(HostEvent::NeedSprayers { session, count });
                }
                TraversalEvent::Connected {
                    local,
                    remote,
                    kind,
                    birthday,
                } => {
                    // Into the pool; the client takes it from there.
                    let pair = EndpointPair {
                        nonce: s.pair.0,
                        local,
                        remote,
                        peer: client_peer(session),
                        key: s.pair.1.clone(),
                        role: PingRole::Ponger,
                    };
                    if self.pool.add(now, pair).is_ok() {
                        s.punched = Some(Punched {
                            local,
                            remote,
                            kind,
                            birthday,
                        });
                    } else {
                        self.events.push_back(HostEvent::Failed {
                            session,
                            sockets: t.locals().collect(),
                            why: FailReason::NotTaken,
                        });
                    }
                }
                // The socket left for the connection at `Connected`.
                TraversalEvent::Settled => {}
                TraversalEvent::Failed(why) => {
                    self.events.push_back(HostEvent::Failed {
                        session,
                        sockets: t.locals().collect(),
                        why,
                    });
                }
            }
        }
        if let Some(c) = answer {
            s.answer = Some(c.clone());
            self.send_answer(session, c);
        }
    }

    fn send_answer(&mut self, session: u64, offer: Offer) {
        let msg = Signalling::Answer {
            host: self.host,
            session,
            offer,
        };
        self.transmits.push_back(Transmit {
            local: self.local,
            remote: self.rendezvous,
            payload: msg.encode(),
        });
    }

    /// The next datagram to send (from its `local` socket).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.traversal.as_ref()?.poll_timeout())
            .chain([self.next_register])
            .chain(self.pool.poll_timeout())
            .chain(self.taken.front().map(|t| t.until))
            .min()
    }

    /// The pool of punched pairs (for reports and tests).
    pub fn pool(&self) -> &PairPool {
        &self.pool
    }
}

/// What a client's rendezvous side reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Birthday punching wants more sockets, bound like the first: pass
    /// them to [`ClientRendezvous::add_sprayers`].
    NeedSprayers(u16),
    /// A path to the host, taken through the pair handover: its socket
    /// may go to QUIC now (through the relay, if `relayed`: take the
    /// allocation with [`ClientRendezvous::take_relay`]).
    Connected {
        /// Our socket on the path (the first, or a sprayer), or, relayed,
        /// the relayed address.
        local: SocketAddr,
        /// The peer's address on the path (relayed: as the TURN server
        /// sees it).
        remote: SocketAddr,
        /// How that address was learned.
        kind: CandidateKind,
        /// Found by birthday punching.
        birthday: bool,
        /// Through the TURN server.
        relayed: bool,
    },
    /// No direct path, and relaying failed too.
    RelayFailed {
        /// Why no direct path was found.
        direct: FailReason,
        /// Why the relay did not work.
        relay: TurnError,
    },
    /// The rendezvous refused.
    Refused(Refusal),
    /// The rendezvous never answered.
    RendezvousSilent,
    /// No direct path.
    Failed(FailReason),
    /// A spare ([`ClientRendezvous::spare`]): the path is punched and in
    /// both pools, kept alive there, and taken at
    /// [`ClientRendezvous::take_spare`] (then `Connected`). A spare that
    /// dies meanwhile (the host gone, a NAT that forgot it) reports
    /// `Failed`.
    SpareReady {
        /// Our socket on the path.
        local: SocketAddr,
        /// The peer's address on the path.
        remote: SocketAddr,
        /// Found by birthday punching (whose many sockets stay open on
        /// both sides while the spare is held).
        birthday: bool,
    },
}

/// Whether both offers name an IPv6 address: a path of that family may
/// exist whatever the IPv4 NATs do.
fn both_have_ipv6(ours: &Offer, theirs: &Offer) -> bool {
    let v6 = |o: &Offer| o.candidates.iter().any(|c| c.addr.is_ipv6());
    v6(ours) && v6(theirs)
}

/// How far the client is in handing the punched path over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handing {
    /// Probes sent, none answered yet.
    Probing(u32),
    /// The host answered a probe on our path; takes started.
    Taking(u32),
    /// A spare: the host answered a probe on our path, which waits in
    /// both pools until taken.
    Held,
}

/// A client's side: ask the rendezvous to be put through to a host, and
/// punch toward the candidates it answers with.
pub struct ClientRendezvous {
    rendezvous: SocketAddr,
    local: SocketAddr,
    host: HostId,
    token: Token,
    secret: TicketSecret,
    config: TraversalConfig,
    rng: Rng,
    session: u64,
    traversal: Traversal,
    offer: Option<Offer>,
    /// The punched pair, taken through this pool.
    pool: PairPool,
    pair: (PairNonce, PairKey),
    punched: Option<Punched>,
    /// Probing the punched path, then taking it.
    handing: Handing,
    /// When the next probe or take is due.
    next_try: Option<Instant>,
    /// A spare: hold the path once the host answers, until taken.
    spare: bool,
    /// When a held spare next repeats its Connect.
    next_refresh: Option<Instant>,
    sends: u32,
    next_connect: Option<Instant>,
    answered: bool,
    /// Anything at all came from the rendezvous (its STUN answer first).
    heard: bool,
    done: bool,
    /// The fallback through a TURN server, once direct punching failed.
    relay: Relay,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
}

/// The client's relay fallback.
#[derive(Debug)]
enum Relay {
    /// Not needed (yet).
    Off,
    /// Not wanted: a relayed mount looking for a direct path.
    Never,
    /// Direct punching failed for `direct`; credentials asked for.
    Asking {
        direct: FailReason,
        ask: u64,
        sends: u32,
        next: Instant,
    },
    /// Allocating, then punching again over the relayed address.
    On {
        direct: FailReason,
        turn: Box<TurnClient>,
    },
    /// The allocation went to the shell with the connection.
    Given,
}

impl core::fmt::Debug for ClientRendezvous {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientRendezvous")
            .field("rendezvous", &self.rendezvous)
            .field("local", &self.local)
            .field("session", &self.session)
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

impl ClientRendezvous {
    /// Starts: gathers candidates on the socket bound to `local`, then asks
    /// the rendezvous to put us through to the host with `fingerprint`.
    #[expect(
        clippy::too_many_arguments,
        reason = "everything a ticket and a socket give"
    )]
    pub fn new(
        now: Instant,
        rendezvous: SocketAddr,
        local: SocketAddr,
        host_addrs: Vec<SocketAddr>,
        fingerprint: &[u8; 32],
        secret: &TicketSecret,
        config: TraversalConfig,
        mut rng: Rng,
    ) -> Self {
        let session = rng.next_u64();
        let mut traversal = Traversal::new(
            config,
            Role::Controlling,
            check_key(secret, session),
            local,
            host_addrs,
            Rng::from_u64(rng.next_u64()),
        );
        traversal.start(now, Some(rendezvous));
        let host = HostId::of(fingerprint);
        let pool = PairPool::new(
            client_peer(session),
            PairConfig::default(),
            Rng::from_u64(rng.next_u64()),
        );
        let mut c = ClientRendezvous {
            rendezvous,
            local,
            host,
            token: Token::of(secret),
            secret: secret.clone(),
            config,
            rng,
            session,
            traversal,
            offer: None,
            pool,
            pair: session_pair(secret, session),
            punched: None,
            handing: Handing::Probing(0),
            next_try: None,
            spare: false,
            next_refresh: None,
            sends: 0,
            next_connect: None,
            answered: false,
            heard: false,
            done: false,
            relay: Relay::Off,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        c.collect(now);
        c
    }

    /// Punches for a direct path only, never through a relay: what a
    /// relayed mount does now and then to find its way to direct.
    pub fn without_relay(mut self) -> Self {
        if matches!(self.relay, Relay::Off) {
            self.relay = Relay::Never;
        }
        self
    }

    /// Punches a spare path: direct only, held in both pools once the
    /// host has answered on it ([`ClientEvent::SpareReady`]) and taken
    /// only at [`take_spare`](Self::take_spare), so a mount whose path
    /// dies moves to one without gathering or punching again.
    pub fn spare(mut self) -> Self {
        self.spare = true;
        self.without_relay()
    }

    /// Takes a held spare through the pair handover: `Connected` follows
    /// (or `Failed`). False if there is no spare ready to take.
    pub fn take_spare(&mut self, now: Instant) -> bool {
        if self.handing != Handing::Held || self.done {
            return false;
        }
        self.next_refresh = None;
        self.take(now);
        self.collect(now);
        true
    }

    /// The TURN allocation a relayed connection runs over, once
    /// [`ClientEvent::Connected`] said `relayed`: it goes to the shell's
    /// relayed socket, which keeps it refreshed.
    pub fn take_relay(&mut self) -> Option<TurnClient> {
        match core::mem::replace(&mut self.relay, Relay::Given) {
            Relay::On { turn, .. } if self.done => Some(*turn),
            other => {
                self.relay = other;
                None
            }
        }
    }

    /// The relayed address we punch from, while relaying.
    fn relayed(&self) -> Option<SocketAddr> {
        match &self.relay {
            Relay::On { turn, .. } => turn.relayed(),
            _ => None,
        }
    }

    /// Direct punching failed: ask the rendezvous for relay credentials.
    fn ask_relay(&mut self, now: Instant, direct: FailReason) {
        self.relay = Relay::Asking {
            direct,
            ask: self.rng.next_u64(),
            sends: 0,
            next: now,
        };
        self.send_ask(now);
    }

    fn send_ask(&mut self, now: Instant) {
        let Relay::Asking {
            direct,
            ask,
            sends,
            next,
        } = &mut self.relay
        else {
            return;
        };
        if *sends >= CONNECT_SENDS {
            let direct = *direct;
            self.relay = Relay::Off;
            return self.fail(direct);
        }
        *sends += 1;
        *next = now + CONNECT_EVERY;
        let msg = Signalling::TurnAsk {
            host: self.host,
            token: Some(self.token),
            session: *ask,
        };
        self.transmits.push_back(Transmit {
            local: self.local,
            remote: self.rendezvous,
            payload: msg.encode(),
        });
    }

    /// The allocation exists: a new session, punched from the relayed
    /// address (the host sees a client whose one candidate is it).
    fn punch_over_relay(&mut self, now: Instant, relayed: SocketAddr) {
        let session = self.rng.next_u64();
        let mut traversal = Traversal::relayed(
            self.config,
            Role::Controlling,
            check_key(&self.secret, session),
            relayed,
            Rng::from_u64(self.rng.next_u64()),
        );
        traversal.start(now, None);
        self.session = session;
        self.traversal = traversal;
        self.pool = PairPool::new(
            client_peer(session),
            PairConfig::default(),
            Rng::from_u64(self.rng.next_u64()),
        );
        self.pair = session_pair(&self.secret, session);
        self.offer = None;
        self.punched = None;
        self.handing = Handing::Probing(0);
        self.next_try = None;
        self.sends = 0;
        self.next_connect = None;
        self.answered = false;
    }

    /// Offers a datagram that arrived on our socket `local`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        if let Relay::On { turn, .. } = &mut self.relay
            && local == self.local
            && from == turn.server()
        {
            let relayed = turn.relayed();
            if let (Some(r), Some(relayed)) = (turn.handle_datagram(now, from, data), relayed)
                && !self
                    .traversal
                    .handle_datagram(now, relayed, r.peer, &r.data)
            {
                // The punched pair's keepalive, relayed.
                self.pool.handle_datagram(now, relayed, r.peer, &r.data);
            }
            self.collect(now);
            return true;
        }
        let signalling = local == self.local && from == self.rendezvous;
        if signalling {
            self.heard = true;
        }
        let consumed = if signalling && !stun::looks_like_stun(data) {
            match Signalling::decode(data) {
                Ok(Signalling::Answered { session, offer })
                    if session == self.session
                        && !self.answered
                        && matches!(self.relay, Relay::Off)
                        && offer.mapping_varies
                        && self
                            .offer
                            .as_ref()
                            .is_some_and(|o| o.mapping_varies && !both_have_ipv6(o, &offer)) =>
                {
                    // Both NATs map per destination and there is no
                    // second family to try (IPv6 needs no NAT): no
                    // punching can work, so relay at once instead of
                    // after the checks give up. (Two machines behind one
                    // such NAT meet on the ticket's own addresses, tried
                    // beside this.)
                    self.answered = true;
                    self.next_connect = None;
                    self.ask_relay(now, FailReason::BothSymmetric);
                }
                Ok(Signalling::Answered { session, offer })
                    if session == self.session && !self.answered =>
                {
                    self.answered = true;
                    self.next_connect = None;
                    let mut offer = offer;
                    if let Relay::On { turn, .. } = &mut self.relay {
                        // The host's private addresses were tried directly
                        // (a LAN path); from the relay they are at best
                        // unreachable, and a TURN server without a route
                        // to them may drop the whole allocation (coturn
                        // does). Its public addresses remain; its checks
                        // reach the relay from their IPs, at ports its NAT
                        // picks: let those IPs through.
                        offer
                            .candidates
                            .retain(|c| !crate::nat::is_local_network(c.addr.ip()));
                        for c in &offer.candidates {
                            turn.permit(now, c.addr.ip());
                        }
                    }
                    self.traversal.add_remote_candidates(now, &offer);
                }
                Ok(Signalling::TurnGrant {
                    session,
                    server,
                    credentials,
                }) if matches!(self.relay, Relay::Asking { ask, .. } if ask == session) => {
                    if let Relay::Asking { direct, .. } = self.relay {
                        let turn = TurnClient::new(
                            now,
                            BindingConfig::interactive(),
                            self.local,
                            server,
                            credentials,
                            Rng::from_u64(self.rng.next_u64()),
                        );
                        self.relay = Relay::On {
                            direct,
                            turn: Box::new(turn),
                        };
                    }
                }
                Ok(Signalling::Refused { session, why }) if matches!(self.relay, Relay::Asking { ask, .. } if ask == session) => {
                    if let Relay::Asking { direct, .. } = self.relay {
                        self.relay = Relay::Off;
                        match why {
                            Refusal::NoRelay => self.fail(direct),
                            _ => {
                                self.done = true;
                                self.events.push_back(ClientEvent::Refused(why));
                            }
                        }
                    }
                }
                Ok(Signalling::Refused { session, why })
                    if session == self.session && !self.done =>
                {
                    self.done = true;
                    self.next_connect = None;
                    self.events.push_back(ClientEvent::Refused(why));
                }
                Ok(Signalling::PairSignal {
                    host,
                    session,
                    signal,
                    mac,
                }) if session == self.session && host == self.host => {
                    if let Some(signal) =
                        open_pair_signal(&self.pair.1, session, true, &signal, &mac)
                    {
                        self.pool.handle_signal(now, host_peer(host), signal);
                    }
                }
                _ => {}
            }
            true
        } else if self.traversal.handle_datagram(now, local, from, data) {
            true
        } else {
            // The punched pair's keepalive.
            self.pool.handle_datagram(now, local, from, data);
            self.punched.is_some()
        };
        self.collect(now);
        consumed
    }

    /// The sockets asked for with [`ClientEvent::NeedSprayers`], bound.
    pub fn add_sprayers(&mut self, now: Instant, locals: &[SocketAddr]) {
        self.traversal.add_sprayers(locals);
        if self.traversal.poll_timeout().is_some_and(|t| t <= now) {
            self.traversal.handle_timeout(now);
        }
        self.collect(now);
    }

    /// Repeats Connect and drives the traversal's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_connect.is_some_and(|t| t <= now) {
            if self.sends >= CONNECT_SENDS {
                self.next_connect = None;
                if !self.done {
                    self.done = true;
                    self.events.push_back(ClientEvent::RendezvousSilent);
                }
            } else {
                self.send_connect(now);
            }
        }
        if self.traversal.poll_timeout().is_some_and(|t| t <= now) {
            self.traversal.handle_timeout(now);
        }
        if self.pool.poll_timeout().is_some_and(|t| t <= now) {
            self.pool.handle_timeout(now);
        }
        if matches!(self.relay, Relay::Asking { next, .. } if next <= now) {
            self.send_ask(now);
        }
        if let Relay::On { turn, .. } = &mut self.relay
            && turn.poll_timeout().is_some_and(|t| t <= now)
        {
            turn.handle_timeout(now);
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            // A spare that ended (refused, expired) refreshes nothing.
            self.next_refresh = (!self.done).then_some(now + SPARE_REFRESH);
            if !self.done {
                self.push_connect();
            }
        }
        if self.next_try.is_some_and(|t| t <= now) {
            self.next_try = None;
            match self.handing {
                Handing::Probing(_) => self.probe(now),
                Handing::Taking(_) => self.take(now),
                Handing::Held => {}
            }
        }
        self.collect(now);
    }

    /// Pings the punched path (outside the pool's schedule) until the
    /// host answers: its answer proves it has added the same path to its
    /// pool, so the take that follows locks the pair both sides use.
    fn probe(&mut self, now: Instant) {
        let Handing::Probing(sent) = self.handing else {
            return;
        };
        if sent >= MAX_PROBES || !self.pool.probe(now, self.pair.0) {
            return self.fail(FailReason::NotTaken);
        }
        self.handing = Handing::Probing(sent + 1);
        self.next_try = Some(now + PROBE_EVERY);
    }

    /// Starts (or starts again) the handover of the punched pair. Its
    /// handover ids grow with each take, so a late answer to an earlier
    /// take never matches this one.
    fn take(&mut self, now: Instant) {
        let takes = match self.handing {
            Handing::Probing(_) | Handing::Held => 0,
            Handing::Taking(takes) => takes,
        };
        self.handing = Handing::Taking(takes + 1);
        if self.pool.take_pair(now, self.pair.0).is_err() {
            self.fail(FailReason::NotTaken);
        }
    }

    fn fail(&mut self, why: FailReason) {
        self.next_try = None;
        self.next_refresh = None;
        if !self.done {
            self.done = true;
            self.events.push_back(ClientEvent::Failed(why));
        }
    }

    fn send_connect(&mut self, now: Instant) {
        if self.push_connect() {
            self.sends += 1;
            self.next_connect = Some(now + CONNECT_EVERY);
        }
    }

    /// Queues our Connect (false before gathering has made an offer).
    fn push_connect(&mut self) -> bool {
        let Some(offer) = self.offer.clone() else {
            return false;
        };
        let msg = Signalling::Connect {
            host: self.host,
            token: self.token,
            session: self.session,
            offer,
        };
        self.transmits.push_back(Transmit {
            local: self.local,
            remote: self.rendezvous,
            payload: msg.encode(),
        });
        true
    }

    /// Queues a datagram of the traversal or the pool: one from the
    /// relayed address goes through the TURN server.
    fn emit(&mut self, now: Instant, t: Transmit) {
        if let Relay::On { turn, .. } = &mut self.relay
            && turn.relayed() == Some(t.local)
        {
            // A peer address learned from a check came through the relay,
            // so its IP is permitted; anything else is allowed first.
            turn.permit(now, t.remote.ip());
            if let Some(wrapped) = turn.send(t.remote, &t.payload) {
                self.transmits.push_back(wrapped);
            }
            return;
        }
        self.transmits.push_back(t);
    }

    fn collect(&mut self, now: Instant) {
        if let Relay::On { direct, turn } = &mut self.relay {
            let direct = *direct;
            let mut events = Vec::new();
            while let Some(t) = turn.poll_transmit() {
                self.transmits.push_back(t);
            }
            while let Some(e) = turn.poll_event() {
                events.push(e);
            }
            for e in events {
                match e {
                    TurnEvent::Allocated { relayed, .. } if !self.done => {
                        self.punch_over_relay(now, relayed);
                    }
                    TurnEvent::Failed(relay) if !self.done => {
                        self.done = true;
                        self.next_try = None;
                        self.events
                            .push_back(ClientEvent::RelayFailed { direct, relay });
                    }
                    _ => {}
                }
            }
        }
        while let Some(t) = self.traversal.poll_transmit() {
            self.emit(now, t);
        }
        while let Some(event) = self.traversal.poll_event() {
            match event {
                TraversalEvent::LocalCandidates(_) if !self.heard && !self.done => {
                    // Gathering asked the rendezvous and got no answer: it
                    // is not there, so Connect would go unanswered too.
                    self.done = true;
                    self.events.push_back(ClientEvent::RendezvousSilent);
                }
                TraversalEvent::LocalCandidates(mut offer) => {
                    offer.candidates.truncate(MAX_CANDIDATES);
                    self.offer = Some(offer);
                    self.send_connect(now);
                }
                TraversalEvent::NeedSprayers(count) if !self.done => {
                    self.events.push_back(ClientEvent::NeedSprayers(count));
                }
                TraversalEvent::Connected {
                    local,
                    remote,
                    kind,
                    birthday,
                } if !self.done => {
                    // Into the pool; probed, then taken: the host learns
                    // through the handover that this path is the one.
                    self.punched = Some(Punched {
                        local,
                        remote,
                        kind,
                        birthday,
                    });
                    let pair = EndpointPair {
                        nonce: self.pair.0,
                        local,
                        remote,
                        peer: host_peer(self.host),
                        key: self.pair.1.clone(),
                        role: PingRole::Pinger,
                    };
                    if self.pool.add(now, pair).is_ok() {
                        self.probe(now);
                    } else {
                        self.fail(FailReason::NotTaken);
                    }
                }
                TraversalEvent::Failed(why) if !self.done => match &self.relay {
                    // No direct path: relay, unless the host never
                    // answered at all.
                    Relay::Off if why != FailReason::NoRemoteCandidates => {
                        self.ask_relay(now, why);
                    }
                    Relay::Off | Relay::Never => self.fail(why),
                    // The relayed session's traversal failed.
                    Relay::On { direct, turn } if turn.relayed().is_some() => {
                        let direct = *direct;
                        self.done = true;
                        let relay = TurnError::Refused {
                            code: 0,
                            reason: format!("no path through the relay ({why:?})"),
                        };
                        self.events
                            .push_back(ClientEvent::RelayFailed { direct, relay });
                    }
                    // The direct traversal, given up already: the relay
                    // decides now.
                    Relay::Asking { .. } | Relay::On { .. } | Relay::Given => {}
                },
                _ => {}
            }
        }
        let answered = self
            .pool
            .get(self.pair.0)
            .is_some_and(|p| p.stats().frames_accepted > 0);
        if answered && matches!(self.handing, Handing::Probing(_)) && !self.done {
            self.next_try = None;
            match self.punched {
                Some(p) if self.spare => {
                    // The host answered on the path, so it has our
                    // session: Connect need not be repeated until then
                    // (the refresh takes over).
                    self.next_connect = None;
                    self.handing = Handing::Held;
                    self.next_refresh = Some(now + SPARE_REFRESH);
                    self.events.push_back(ClientEvent::SpareReady {
                        local: p.local,
                        remote: p.remote,
                        birthday: p.birthday,
                    });
                }
                _ => self.take(now),
            }
        }
        while let Some(output) = self.pool.poll_output() {
            match output {
                Output::Transmit(t) => self.emit(now, t),
                Output::Signal { signal, .. } => {
                    let msg = Signalling::seal_pair_signal(
                        self.host,
                        self.session,
                        &self.pair.1,
                        false,
                        &signal,
                    );
                    self.transmits.push_back(Transmit {
                        local: self.local,
                        remote: self.rendezvous,
                        payload: msg.encode(),
                    });
                }
                Output::Event(PairEvent::Taken { .. }) if !self.done => {
                    if let Some(p) = self.punched {
                        self.done = true;
                        let relayed = self.relayed() == Some(p.local);
                        self.events.push_back(ClientEvent::Connected {
                            local: p.local,
                            remote: p.remote,
                            kind: p.kind,
                            birthday: p.birthday,
                            relayed,
                        });
                    }
                }
                Output::Event(PairEvent::HandoverFailed { .. })
                    if !self.done
                        && matches!(self.handing, Handing::Taking(n) if n < MAX_TAKES) =>
                {
                    // Signals lost on the way, or the host still busy with
                    // an earlier take of ours: the pair is Idle again.
                    self.next_try = Some(now + RETAKE_AFTER);
                }
                Output::Event(PairEvent::HandoverFailed { .. } | PairEvent::Expired { .. }) => {
                    self.fail(FailReason::NotTaken);
                }
                Output::Event(_) => {}
            }
        }
    }

    /// The next datagram to send, from our socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let relay = match &self.relay {
            Relay::Asking { next, .. } => Some(*next),
            Relay::On { turn, .. } => turn.poll_timeout(),
            Relay::Off | Relay::Never | Relay::Given => None,
        };
        [
            self.next_connect,
            self.traversal.poll_timeout(),
            self.pool.poll_timeout(),
            self.next_try,
            self.next_refresh,
            relay,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The pool the punched pair is taken through (for reports and tests).
    pub fn pool(&self) -> &PairPool {
        &self.pool
    }
}
