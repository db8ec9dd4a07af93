//! The rendezvous server's machine: what `wormhole rendezvous` answers on
//! its UDP sockets.
//!
//! * **STUN** with the RFC 5780 extensions (XOR-MAPPED-ADDRESS,
//!   MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS, FINGERPRINT;
//!   CHANGE-REQUEST and RESPONSE-PORT honoured), so that peers learn and
//!   classify their NATs against it. It listens on two ports of one
//!   address, or of each of two addresses. An answer is a pure function
//!   of the request and never more than a few times its size.
//! * **Signalling** ([`wire`]), on the same ports: hosts register by id
//!   with the hash of their rendezvous token; a client that shows the
//!   token is put through: its candidates go to the host, the host's come
//!   back. State is bounded (hosts and sessions, each with a lifetime);
//!   nothing is stored on disk.
//! * **Relay credentials**: given a [`TurnService`], it mints short-lived
//!   credentials for that TURN server (the secret it shares with it never
//!   leaves) for the clients that show a registered host's token, and for
//!   that host from its registered address.

pub mod peer;
pub mod wire;

use crate::Instant;
use crate::nat::stun::{self, Change, Stun};
use crate::pair::Transmit;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use wire::{HostId, Refusal, Signalling, Token};

/// Answers waiting to be sent; a shell that does not drain them drops the
/// newest beyond this, as a full socket buffer would.
const MAX_QUEUED: usize = 1024;

/// The addresses a rendezvous listens on: two ports on one or two IPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAddrs {
    ips: [IpAddr; 2],
    ports: [u16; 2],
}

impl ServerAddrs {
    /// Two ports of one address.
    pub fn one_ip(ip: IpAddr, ports: [u16; 2]) -> Self {
        ServerAddrs {
            ips: [ip, ip],
            ports,
        }
    }

    /// Two ports of each of two addresses (a full RFC 5780 server).
    pub fn two_ips(ips: [IpAddr; 2], ports: [u16; 2]) -> Self {
        ServerAddrs { ips, ports }
    }

    /// Whether the two IPs differ (a change of IP can be answered).
    pub fn has_two_ips(&self) -> bool {
        self.ips[0] != self.ips[1]
    }

    /// Every socket address to listen on (two or four).
    pub fn sockets(&self) -> Vec<SocketAddr> {
        let ips = if self.has_two_ips() {
            &self.ips[..]
        } else {
            &self.ips[..1]
        };
        ips.iter()
            .flat_map(|ip| self.ports.iter().map(|port| SocketAddr::new(*ip, *port)))
            .collect()
    }

    /// The primary address (the one clients are told about).
    pub fn primary(&self) -> SocketAddr {
        SocketAddr::new(self.ips[0], self.ports[0])
    }

    /// Which IP and port (index 0 or 1 each) `local` is.
    fn index(&self, local: SocketAddr) -> Option<(usize, usize)> {
        let ip = self.ips.iter().position(|ip| *ip == local.ip())?;
        let port = self.ports.iter().position(|p| *p == local.port())?;
        Some((ip, port))
    }

    fn at(&self, ip: usize, port: usize) -> SocketAddr {
        SocketAddr::new(self.ips[ip], self.ports[port])
    }
}

/// Bounds and lifetimes of the signalling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// Registered hosts kept at most.
    pub max_hosts: usize,
    /// A registration lapses this long after its last Register.
    pub registration_ttl: Duration,
    /// Sessions (clients being put through) kept at most.
    pub max_sessions: usize,
    /// A session is forgotten this long after its last message.
    pub session_ttl: Duration,
}

impl Default for RendezvousConfig {
    /// 100,000 hosts for 60 s each, 100,000 sessions for 30 s.
    fn default() -> Self {
        RendezvousConfig {
            max_hosts: 100_000,
            registration_ttl: Duration::from_secs(60),
            max_sessions: 100_000,
            session_ttl: Duration::from_secs(30),
        }
    }
}

/// A TURN server the rendezvous mints credentials for (coturn with
/// `use-auth-secret` and the same `static-auth-secret`).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnService {
    /// Where peers reach the TURN server.
    pub server: SocketAddr,
    /// The secret shared with it.
    pub secret: Vec<u8>,
    /// How long minted credentials stay valid.
    pub ttl: Duration,
    /// Unix time, in seconds, at the machine's `Instant::ZERO`: the core
    /// reads no wall clock, so the shell tells it this once, and expiries
    /// are this plus the machine's own time.
    pub unix_at_origin: u64,
}

impl core::fmt::Debug for TurnService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TurnService")
            .field("server", &self.server)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Registration {
    addr: SocketAddr,
    verifier: [u8; 32],
    expires: Instant,
}

#[derive(Debug)]
struct Session {
    host: HostId,
    client: SocketAddr,
    expires: Instant,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Binding requests answered.
    pub answered: u64,
    /// Binding requests refused (a CHANGE-REQUEST for an IP we do not
    /// have).
    pub refused: u64,
    /// Datagrams dropped: malformed, not a request, a message only the
    /// rendezvous sends, an Answer not from the registered host, or a full
    /// queue.
    pub dropped: u64,
    /// Registrations accepted (first and renewed).
    pub registered: u64,
    /// Clients put through (Incoming sent to a host).
    pub put_through: u64,
    /// Pair handover signals forwarded.
    pub pair_signals: u64,
    /// Clients refused.
    pub refused_clients: u64,
    /// Relay credentials minted.
    pub turn_grants: u64,
}

/// The rendezvous machine.
#[derive(Debug)]
pub struct Rendezvous {
    addrs: ServerAddrs,
    config: RendezvousConfig,
    hosts: BTreeMap<HostId, Registration>,
    sessions: BTreeMap<u64, Session>,
    turn: Option<TurnService>,
    /// When expired entries were last swept (at most once a second, so a
    /// flood cannot make every message walk the tables).
    swept: Option<Instant>,
    transmits: VecDeque<Transmit>,
    stats: RendezvousStats,
}

impl Rendezvous {
    /// A rendezvous listening on `addrs`, with default bounds.
    pub fn new(addrs: ServerAddrs) -> Self {
        Self::with_config(addrs, RendezvousConfig::default())
    }

    /// A rendezvous listening on `addrs` with `config`'s bounds.
    pub fn with_config(addrs: ServerAddrs, config: RendezvousConfig) -> Self {
        Rendezvous {
            addrs,
            config,
            hosts: BTreeMap::new(),
            sessions: BTreeMap::new(),
            turn: None,
            swept: None,
            transmits: VecDeque::new(),
            stats: RendezvousStats::default(),
        }
    }

    /// From now on, mints credentials for `turn` to those who may relay.
    pub fn set_turn(&mut self, turn: TurnService) {
        self.turn = Some(turn);
    }

    /// Registered hosts right now (expired ones may linger until a sweep).
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Handles a datagram that arrived on `local` from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        if self.transmits.len() >= MAX_QUEUED {
            self.stats.dropped += 1;
            return;
        }
        if stun::looks_like_stun(datagram) {
            self.handle_stun(local, from, datagram);
        } else {
            match Signalling::decode(datagram) {
                Ok(msg) => self.handle_signalling(now, local, from, msg),
                Err(_) => self.stats.dropped += 1,
            }
        }
        self.check();
    }

    fn handle_stun(&mut self, local: SocketAddr, from: SocketAddr, datagram: &[u8]) {
        let request = stun::decode(datagram).ok();
        let (
            Some(Stun::Request {
                tx,
                change,
                response_port,
            }),
            Some((ip, port)),
        ) = (request, self.addrs.index(local))
        else {
            self.stats.dropped += 1;
            return;
        };
        if change.ip && !self.addrs.has_two_ips() {
            // RFC 5780 clients learn from OTHER-ADDRESS that there is no
            // second IP; one that asks anyway is told at once.
            self.transmits.push_back(Transmit {
                local,
                remote: from,
                payload: stun::binding_unsupported(tx),
            });
            self.stats.refused += 1;
            return;
        }
        let Change {
            ip: change_ip,
            port: change_port,
        } = change;
        let origin = self
            .addrs
            .at(ip ^ usize::from(change_ip), port ^ usize::from(change_port));
        let other = self
            .addrs
            .at(ip ^ usize::from(self.addrs.has_two_ips()), port ^ 1);
        // RESPONSE-PORT (RFC 5780 §7.5) may move the answer to another
        // port of the sender's own IP, never to another IP.
        let to = SocketAddr::new(from.ip(), response_port.unwrap_or(from.port()));
        self.transmits.push_back(Transmit {
            local: origin,
            remote: to,
            payload: stun::binding_success(tx, from, Some(other), origin),
        });
        self.stats.answered += 1;
    }

    fn handle_signalling(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        msg: Signalling,
    ) {
        self.sweep(now);
        match msg {
            Signalling::Register { host, verifier } => {
                let known = self.hosts.contains_key(&host);
                if !known && self.hosts.len() >= self.config.max_hosts {
                    self.stats.dropped += 1;
                    return;
                }
                // A new address or verifier replaces the old: the host
                // moved, or restarted with a new ticket.
                self.hosts.insert(
                    host,
                    Registration {
                        addr: from,
                        verifier,
                        expires: now + self.config.registration_ttl,
                    },
                );
                self.stats.registered += 1;
                let ttl_secs =
                    u32::try_from(self.config.registration_ttl.as_secs()).unwrap_or(u32::MAX);
                self.send(local, from, Signalling::Registered { ttl_secs });
            }
            Signalling::Connect {
                host,
                token,
                session,
                offer,
            } => self.connect(now, local, from, host, token, session, offer),
            Signalling::Answer {
                host,
                session,
                offer,
            } => {
                let from_host = self.hosts.get(&host).is_some_and(|r| r.addr == from);
                let client = self
                    .sessions
                    .get_mut(&session)
                    .filter(|s| s.host == host && from_host);
                let Some(s) = client else {
                    self.stats.dropped += 1;
                    return;
                };
                s.expires = now + self.config.session_ttl;
                let to = s.client;
                self.send(local, to, Signalling::Answered { session, offer });
            }
            Signalling::PairSignal {
                host,
                session,
                signal,
                mac,
            } => {
                let host_addr = self.hosts.get(&host).map(|r| r.addr);
                let to = self
                    .sessions
                    .get_mut(&session)
                    .filter(|s| s.host == host)
                    .and_then(|s| {
                        let to = if from == s.client {
                            host_addr
                        } else if Some(from) == host_addr {
                            Some(s.client)
                        } else {
                            None
                        };
                        if to.is_some() {
                            s.expires = now + self.config.session_ttl;
                        }
                        to
                    });
                match to {
                    Some(to) => {
                        self.stats.pair_signals += 1;
                        let msg = Signalling::PairSignal {
                            host,
                            session,
                            signal,
                            mac,
                        };
                        self.send(local, to, msg);
                    }
                    None => self.stats.dropped += 1,
                }
            }
            Signalling::TurnAsk {
                host,
                token,
                session,
            } => self.turn_ask(now, local, from, host, token, session),
            Signalling::Registered { .. }
            | Signalling::Incoming { .. }
            | Signalling::Answered { .. }
            | Signalling::Refused { .. }
            | Signalling::TurnGrant { .. } => self.stats.dropped += 1,
        }
    }

    #[expect(clippy::too_many_arguments, reason = "one Connect message, unpacked")]
    fn connect(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        host: HostId,
        token: Token,
        session: u64,
        offer: crate::nat::Offer,
    ) {
        let refusal = match self.hosts.get(&host) {
            None => Some(Refusal::NotRegistered),
            Some(r) if r.verifier != token.verifier() => Some(Refusal::BadToken),
            Some(_) => match self.sessions.get(&session) {
                // A session id belongs to the client that chose it first.
                Some(s) if s.client != from || s.host != host => Some(Refusal::Busy),
                Some(_) => None,
                None if self.sessions.len() >= self.config.max_sessions => Some(Refusal::Busy),
                None => None,
            },
        };
        if let Some(why) = refusal {
            self.stats.refused_clients += 1;
            self.send(local, from, Signalling::Refused { session, why });
            return;
        }
        self.sessions.insert(
            session,
            Session {
                host,
                client: from,
                expires: now + self.config.session_ttl,
            },
        );
        let Some(host_addr) = self.hosts.get(&host).map(|r| r.addr) else {
            return;
        };
        self.stats.put_through += 1;
        self.send(local, host_addr, Signalling::Incoming { session, offer });
    }

    /// Relay credentials for the host itself (from its registered
    /// address) or a client showing its token; refused otherwise.
    fn turn_ask(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        host: HostId,
        token: Option<Token>,
        session: u64,
    ) {
        let refusal = match (self.hosts.get(&host), &self.turn) {
            (None, _) => Some(Refusal::NotRegistered),
            (Some(r), _) if r.addr != from && token.is_none_or(|t| t.verifier() != r.verifier) => {
                Some(Refusal::BadToken)
            }
            (Some(_), None) => Some(Refusal::NoRelay),
            (Some(_), Some(_)) => None,
        };
        let Some(turn) = self.turn.as_ref().filter(|_| refusal.is_none()) else {
            self.stats.refused_clients += 1;
            let why = refusal.unwrap_or(Refusal::NoRelay);
            self.send(local, from, Signalling::Refused { session, why });
            return;
        };
        let expiry = turn.unix_at_origin + (now.since_origin() + turn.ttl).as_secs();
        let credentials =
            crate::turn::TurnCredentials::mint(&turn.secret, expiry, &format!("{session:016x}"));
        let grant = Signalling::TurnGrant {
            session,
            server: turn.server,
            credentials,
        };
        self.stats.turn_grants += 1;
        self.send(local, from, grant);
    }

    fn send(&mut self, local: SocketAddr, to: SocketAddr, msg: Signalling) {
        self.transmits.push_back(Transmit {
            local,
            remote: to,
            payload: msg.encode(),
        });
    }

    /// Forgets lapsed registrations and sessions, at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.swept = Some(now);
        self.hosts.retain(|_, r| r.expires > now);
        self.sessions.retain(|_, s| s.expires > now);
    }

    /// Postconditions of every input.
    fn check(&self) {
        debug_assert!(self.transmits.len() <= MAX_QUEUED);
        debug_assert!(self.hosts.len() <= self.config.max_hosts);
        debug_assert!(self.sessions.len() <= self.config.max_sessions);
    }

    /// The next datagram to send, from the socket bound to its `local`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> RendezvousStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
