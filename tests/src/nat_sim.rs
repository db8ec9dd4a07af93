//! The deterministic simulation of hole punching through the rendezvous:
//! a host and a mount, each behind a simulated NAT of one of the four
//! behaviours the kernel matrix builds (public, full cone, port-restricted,
//! symmetric), the rendezvous machine (STUN and signalling), and a network
//! that delays, loses, duplicates and reorders every datagram, signalling
//! included; in a quarter of the lossy runs the rendezvous goes down for
//! up to 3 s; a third party injects forged checks and datagrams that are
//! not STUN at all into every socket. The host registers; once registered
//! the mount asks to be put through; both punch, and the mount takes the
//! punched pair through the pair pools; the host forgets the session
//! when it reports it, as the shell does. Seed `s` runs cell `s % 16`;
//! every other block of 16 seeds the rendezvous listens on the wildcard
//! address (it names its other port as `0.0.0.0:port`, and its answers
//! leave from the address it was reached at, as a kernel sends them). The
//! rendezvous mints credentials for a modelled TURN server
//! ([`TurnServerModel`]); where no direct path exists the mount relays
//! through it, its datagrams as lossy as any.
//!
//! Checked at every step: each input makes a bounded number of datagrams;
//! nothing is ever sent to the third party (no forged check is answered,
//! no forged candidate is tried, junk is never answered); a side connects
//! only on a path that answered (the machine's own `debug_assert!`s); the
//! mount takes a pair only when the host's pool holds it in use, on the
//! same path (the mount's remote is where the NAT shows the host's socket
//! of the pair, and the host's remote where it shows the mount's).
//! Checked at the end (liveness): both sides have ended (connected or
//! failed) within the deadline; on a loss-free network both agree, with
//! the same pair in use in both pools, and the outcome is the one the
//! cell's NAT pair allows: direct for every pair but two
//! endpoint-dependent (symmetric) NATs, which connect through the relay;
//! birthday punching where one symmetric NAT meets a port-restricted one.

use crate::seeds::Simulation;
use bytes::Bytes;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::BTreeMap;
use std::fmt;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::nat::model::NatModel;
use wormhole_core::nat::stun::CheckKey;
use wormhole_core::nat::{CandidateKind, Filtering, Mapping, TraversalConfig};
use wormhole_core::pair::PairState;
use wormhole_core::rendezvous::peer::{ClientEvent, ClientRendezvous, HostEvent, HostRendezvous};
use wormhole_core::rendezvous::{Rendezvous, ServerAddrs, TurnService};
use wormhole_core::turn::server_model::TurnServerModel;
use wormhole_core::{Instant, Rng};

/// The four router behaviours of the kernel matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Router {
    /// No NAT.
    Public,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping.
    Symmetric,
}

impl Router {
    /// All four.
    pub const ALL: [Router; 4] = [
        Router::Public,
        Router::FullCone,
        Router::PortRestricted,
        Router::Symmetric,
    ];

    /// The router's NAT; a symmetric one draws its ports at random from
    /// `rng`, like the kernel matrix's `masquerade random-fully`.
    fn model(self, public: IpAddr, inside: IpAddr, rng: &mut Rng) -> NatModel {
        let (mapping, filtering, ip) = match self {
            Router::Public => (Mapping::None, Filtering::EndpointIndependent, inside),
            Router::FullCone => (
                Mapping::EndpointIndependent,
                Filtering::EndpointIndependent,
                public,
            ),
            Router::PortRestricted => (
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
                public,
            ),
            Router::Symmetric => (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
                public,
            ),
        };
        let nat = NatModel::new(mapping, filtering, ip, 20000);
        if self == Router::Symmetric {
            nat.with_random_ports(Rng::from_u64(rng.next_u64()))
        } else {
            nat
        }
    }

    /// Whether a direct path exists between these two routers.
    pub fn punchable(a: Router, b: Router) -> bool {
        !(a == Router::Symmetric && b == Router::Symmetric)
    }

    /// Whether only birthday punching finds the path.
    pub fn needs_birthday(a: Router, b: Router) -> bool {
        use Router::*;
        matches!(
            (a, b),
            (Symmetric, PortRestricted) | (PortRestricted, Symmetric)
        )
    }

    /// Whether birthday punching may run at all: one side symmetric, the
    /// other behind an endpoint-independent NAT (with a public side the
    /// ordinary checks always work).
    pub fn may_birthday(a: Router, b: Router) -> bool {
        use Router::*;
        matches!(
            (a, b),
            (Symmetric, PortRestricted | FullCone) | (PortRestricted | FullCone, Symmetric)
        )
    }
}

/// Datagrams one input may make at most: an answer, a triggered check, a
/// retransmission or paced check, the rendezvous request, and a burst of
/// birthday punching, and the pair pool's keepalive and signal.
const MAX_PER_INPUT: usize = 4 + 8 + 2;
/// The relay.
const TURN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 5)), 3478);
/// The secret the rendezvous shares with the relay.
const TURN_SECRET: &[u8] = b"sim relay";
/// Where forged checks come from.
const ATTACKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)), 6666);

/// What a run counted, summed over seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatSimStats {
    /// Seeds whose liveness check ran.
    pub converged: u64,
    /// Per cell (controlled router, controlling router): runs, connected.
    pub cells: BTreeMap<(u8, u8), (u64, u64)>,
    /// Datagrams lost, duplicated.
    pub lost: u64,
    /// Datagrams duplicated.
    pub duplicated: u64,
    /// Forged checks injected.
    pub forged: u64,
    /// Datagrams that are not STUN (junk, or another protocol's) injected
    /// into the peers' sockets.
    pub junk: u64,
    /// Datagrams the rendezvous lost to an outage.
    pub outage_drops: u64,
    /// Runs on a lossy network where the two sides disagreed at the end.
    pub lossy_disagreements: u64,
    /// Runs where the client took the punched pair through the handover,
    /// and the host's pool held it in use by then.
    pub taken: u64,
    /// Runs connected through a peer-reflexive address (a punched hole
    /// found from the other side's check).
    pub via_peer_reflexive: u64,
    /// Runs connected by birthday punching.
    pub via_birthday: u64,
    /// Runs connected through the relay.
    pub via_relay: u64,
    /// Runs whose client punched a spare, held it, and connected by
    /// taking it later.
    pub spares_taken: u64,
}

/// A broken property.
#[derive(Debug)]
pub struct NatViolation(String);

impl fmt::Display for NatViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

enum Ev {
    /// A datagram arrives at a public address.
    Packet {
        from: SocketAddr,
        to: SocketAddr,
        payload: Bytes,
    },
    /// The mount starts (after the host has registered).
    StartClient,
    /// A forged check arrives at a peer's socket.
    Forged { to: usize },
    /// A datagram that is not STUN arrives at every socket of a peer.
    Junk { to: usize },
    /// The mount takes its held spare (its path died, say).
    TakeSpare,
}

/// Either side's machine.
enum Side {
    Host(Box<HostRendezvous>),
    Client(Option<Box<ClientRendezvous>>),
}

struct Peer {
    side: Side,
    /// The inside address of the peer's first socket (the host's
    /// registration socket, the client's only one).
    inside: SocketAddr,
    /// Every socket of the peer (the host adds one per client).
    sockets: Vec<SocketAddr>,
    nat: NatModel,
    router: Router,
    outcome: Option<bool>,
    /// How the client's path was learned.
    via: Option<CandidateKind>,
    /// The client's path runs through the relay.
    relayed: bool,
    /// The client's path was found by birthday punching.
    birthday: bool,
    /// The inside port the next socket the peer binds gets.
    next_port: u16,
}

/// Binds `count` fresh sockets on the inside IP of a peer whose sockets
/// are `sockets`, numbered from `next_port`.
fn bind(sockets: &mut Vec<SocketAddr>, next_port: &mut u16, count: u16) -> Vec<SocketAddr> {
    let ip = sockets[0].ip();
    let locals: Vec<SocketAddr> = (0..count)
        .map(|k| SocketAddr::new(ip, next_port.wrapping_add(k)))
        .collect();
    *next_port = next_port.wrapping_add(count);
    sockets.extend(&locals);
    locals
}

/// One run's world.
pub struct NatWorld {
    rng: Rng,
    now: Instant,
    peers: [Peer; 2],
    rendezvous: Rendezvous,
    /// The relay the rendezvous hands out credentials for.
    turn: TurnServerModel,
    /// Where the rendezvous is reached.
    rendezvous_addrs: Vec<SocketAddr>,
    /// The rendezvous listens on the wildcard address.
    wildcard: bool,
    secret: TicketSecret,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    loss: u64,
    dup: u64,
    /// The host's sessions that have ended.
    host_ended: std::collections::BTreeSet<u64>,
    /// When the rendezvous is down, if it is in this run.
    outage: Option<(Instant, Instant)>,
    client_started: Option<Instant>,
    /// The client punches a spare (`ClientRendezvous::spare`), holds it
    /// for a while and then takes it.
    spare: bool,
    /// When the spare is to be taken, once it is ready.
    take_at: Option<Instant>,
    trace: Vec<String>,
    tracing: bool,
    echo: bool,
    stats: NatSimStats,
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The host's certificate fingerprint in every run.
const FINGERPRINT: [u8; 32] = [0x5a; 32];

impl NatWorld {
    fn new(seed: u64, trace: bool, echo: bool) -> Self {
        let mut rng = Rng::from_u64(seed);
        let cell = seed % 16;
        let routers = [
            Router::ALL[(cell / 4) as usize],
            Router::ALL[(cell % 4) as usize],
        ];
        let lossless = seed.is_multiple_of(3);
        let (loss, dup) = if lossless {
            (0, 0)
        } else {
            (rng.below(11), rng.below(6))
        };
        // A quarter of the lossy runs lose the rendezvous for a while
        // (0.5–3 s, somewhere in the first 3 s): it drops what reaches it.
        let outage = (!lossless && rng.below(4) == 0).then(|| {
            let from = Instant::ZERO + Duration::from_millis(rng.below(3000));
            (from, from + Duration::from_millis(500 + rng.below(2500)))
        });
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let secret = TicketSecret(secret);
        let addrs = ServerAddrs::one_ip(ip(198, 18, 0, 1), [3478, 3479]);
        let wildcard = (seed / 16) % 2 == 1;
        // A quarter of the runs between NATs that allow a direct path
        // punch a spare instead: held, kept alive across the
        // rendezvous's session lifetime, and taken up to a minute later.
        let spare = (seed / 32).is_multiple_of(4) && Router::punchable(routers[0], routers[1]);
        let listening = if wildcard {
            ServerAddrs::one_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED), [3478, 3479])
        } else {
            addrs
        };
        let mut peer = |i: usize| {
            let router = routers[i];
            let k = u8::try_from(i).unwrap_or(0) + 1;
            let inside_ip = if router == Router::Public {
                ip(198, 19, k, 2)
            } else {
                ip(10, k, 0, 2)
            };
            let inside = SocketAddr::new(inside_ip, 40000 + u16::from(k));
            let nat = router.model(ip(198, 18, k, 1), inside_ip, &mut rng);
            (inside, nat, router)
        };
        let (host_inside, host_nat, host_router) = peer(0);
        let (client_inside, client_nat, client_router) = peer(1);
        let host = HostRendezvous::new(
            Instant::ZERO,
            addrs.primary(),
            host_inside,
            &FINGERPRINT,
            secret.clone(),
            TraversalConfig::default(),
            Rng::from_u64(rng.next_u64()),
        );
        let mut rendezvous = Rendezvous::new(listening);
        rendezvous.set_turn(TurnService {
            server: TURN,
            secret: TURN_SECRET.to_vec(),
            ttl: Duration::from_secs(3600),
            unix_at_origin: 1_800_000_000,
        });
        let peers = [
            Peer {
                side: Side::Host(Box::new(host)),
                inside: host_inside,
                sockets: vec![host_inside],
                nat: host_nat,
                router: host_router,
                outcome: None,
                via: None,
                relayed: false,
                birthday: false,
                next_port: 41000,
            },
            Peer {
                side: Side::Client(None),
                inside: client_inside,
                sockets: vec![client_inside],
                nat: client_nat,
                router: client_router,
                outcome: None,
                via: None,
                relayed: false,
                birthday: false,
                next_port: 41000,
            },
        ];
        NatWorld {
            rng,
            now: Instant::ZERO,
            peers,
            rendezvous,
            turn: TurnServerModel::new(TURN, TURN_SECRET),
            rendezvous_addrs: addrs.sockets(),
            wildcard,
            secret,
            queue: BTreeMap::new(),
            seq: 0,
            loss,
            dup,
            outage,
            host_ended: std::collections::BTreeSet::new(),
            client_started: None,
            spare,
            take_at: None,
            trace: Vec::new(),
            tracing: trace,
            echo,
            stats: NatSimStats::default(),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.tracing {
            let line = format!("{:>8.3}s {}", self.now.since_origin().as_secs_f64(), line());
            if self.echo {
                println!("{line}");
            }
            self.trace.push(line);
        }
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    /// Sends a datagram over the lossy network: lost, delayed (1–40 ms, so
    /// reordered), sometimes duplicated.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: Bytes) {
        if self.rng.below(100) < self.loss {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.below(100) < self.dup { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let delay = Duration::from_millis(1 + self.rng.below(40));
            self.schedule(
                delay,
                Ev::Packet {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Carries out what peer `i` asked for after one input.
    fn drain(&mut self, i: usize) -> Result<(), NatViolation> {
        let now = self.now;
        let mut transmits = Vec::new();
        let mut host_events = Vec::new();
        let mut client_events = Vec::new();
        let peer = &mut self.peers[i];
        match &mut peer.side {
            Side::Host(h) => {
                while let Some(e) = h.poll_event() {
                    match e {
                        HostEvent::NeedSocket { session } => {
                            // A fresh socket of the host for this client.
                            let local = bind(&mut peer.sockets, &mut peer.next_port, 1)[0];
                            h.add_socket(now, session, local, vec![local]);
                        }
                        HostEvent::NeedSprayers { session, count } => {
                            let locals = bind(&mut peer.sockets, &mut peer.next_port, count);
                            h.add_sprayers(now, session, &locals);
                        }
                        // Its sockets go to the connection, or are closed.
                        HostEvent::Connected { session, .. }
                        | HostEvent::Failed { session, .. } => {
                            h.forget(now, session);
                        }
                        HostEvent::Registered | HostEvent::RendezvousSilent => {}
                    }
                    host_events.push(e);
                }
                while let Some(t) = h.poll_transmit() {
                    transmits.push(t);
                }
            }
            Side::Client(Some(c)) => {
                while let Some(e) = c.poll_event() {
                    if let ClientEvent::NeedSprayers(count) = e {
                        let locals = bind(&mut peer.sockets, &mut peer.next_port, count);
                        c.add_sprayers(now, &locals);
                    }
                    client_events.push(e);
                }
                while let Some(t) = c.poll_transmit() {
                    transmits.push(t);
                }
            }
            Side::Client(None) => {}
        }
        if transmits.len() > MAX_PER_INPUT {
            return Err(NatViolation(format!(
                "peer {i} sent {} datagrams for one input",
                transmits.len()
            )));
        }
        for t in transmits {
            if t.remote == ATTACKER {
                return Err(NatViolation(format!("peer {i} answered a forged check")));
            }
            let src = self.peers[i].nat.outbound(now, t.local, t.remote);
            self.log(|| format!("peer {i} {src} -> {} ({} bytes)", t.remote, t.payload.len()));
            self.send(src, t.remote, t.payload);
        }
        for e in host_events {
            self.log(|| format!("host {e:?}"));
            match e {
                HostEvent::Registered => {
                    if self.client_started.is_none() {
                        let after = Duration::from_millis(self.rng.below(500));
                        self.schedule(after, Ev::StartClient);
                    }
                }
                // A mount that relays is a second session at the host.
                HostEvent::Connected { session, .. } | HostEvent::Failed { session, .. } => {
                    if !self.host_ended.insert(session) {
                        return Err(NatViolation("a host session ended twice".into()));
                    }
                    let connected = matches!(e, HostEvent::Connected { .. });
                    let before = self.peers[0].outcome.unwrap_or(false);
                    self.peers[0].outcome = Some(before || connected);
                }
                HostEvent::NeedSocket { .. }
                | HostEvent::NeedSprayers { .. }
                | HostEvent::RendezvousSilent => {}
            }
        }
        for e in client_events {
            self.log(|| format!("client {e:?}"));
            if matches!(e, ClientEvent::NeedSprayers(_)) {
                continue;
            }
            if let ClientEvent::SpareReady { .. } = e {
                if !self.spare || self.take_at.is_some() {
                    return Err(NatViolation("a spare nobody asked for was ready".into()));
                }
                let hold = Duration::from_millis(self.rng.below(60_000));
                self.take_at = Some(self.now + hold);
                self.schedule(hold, Ev::TakeSpare);
                continue;
            }
            if self.peers[1].outcome.is_some() {
                return Err(NatViolation("the client ended twice".into()));
            }
            match e {
                ClientEvent::Connected {
                    local,
                    remote,
                    kind,
                    birthday,
                    relayed,
                } => {
                    if self.spare && self.take_at.is_none_or(|at| at > self.now) {
                        return Err(NatViolation("a spare was taken before it was asked".into()));
                    }
                    // Used by both or neither: the client takes the pair
                    // only after the host confirmed it in use, on the
                    // path the client takes.
                    let host_path = match &self.peers[0].side {
                        Side::Host(h) => h
                            .pool()
                            .pairs()
                            .find(|p| p.state() == PairState::InUse)
                            .map(|p| (p.pair().local, p.pair().remote)),
                        Side::Client(_) => None,
                    };
                    let Some((host_local, host_remote)) = host_path else {
                        return Err(NatViolation(
                            "the client took a pair the host does not use".into(),
                        ));
                    };
                    let seen_host = self.peers[0].nat.mapped(host_local, host_remote);
                    // Relayed, the client's end is the relayed address
                    // itself, which the host's path leads to.
                    let seen_client = if relayed {
                        Some(local)
                    } else {
                        self.peers[1].nat.mapped(local, remote)
                    };
                    if self.peers[0].outcome != Some(true)
                        || seen_host != Some(remote)
                        || seen_client != Some(host_remote)
                    {
                        return Err(NatViolation(format!(
                            "the client took {local} -> {remote}, the host uses \
                             {host_local} -> {host_remote} ({seen_host:?}, {seen_client:?})"
                        )));
                    }
                    self.stats.taken += 1;
                    self.peers[1].outcome = Some(true);
                    self.peers[1].via = Some(kind);
                    self.peers[1].birthday = birthday;
                    self.peers[1].relayed = relayed;
                }
                ClientEvent::Failed(_) | ClientEvent::RelayFailed { .. } => {
                    self.peers[1].outcome = Some(false)
                }
                ClientEvent::Refused(why) => {
                    return Err(NatViolation(format!("the rendezvous refused: {why:?}")));
                }
                ClientEvent::RendezvousSilent
                | ClientEvent::NeedSprayers(_)
                | ClientEvent::SpareReady { .. } => self.peers[1].outcome = Some(false),
            }
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> Result<(), NatViolation> {
        let now = self.now;
        if to == TURN || self.turn.relays(to) {
            if to == TURN {
                self.turn.handle_client(from, payload);
            } else {
                self.turn.handle_peer(from, to, payload);
            }
            while let Some(t) = self.turn.poll_transmit() {
                self.send(t.local, t.remote, t.payload);
            }
            return Ok(());
        }
        if self.rendezvous_addrs.contains(&to) {
            if self
                .outage
                .is_some_and(|(from, until)| (from..until).contains(&now))
            {
                self.stats.outage_drops += 1;
                return Ok(());
            }
            let local = if self.wildcard {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), to.port())
            } else {
                to
            };
            self.rendezvous.handle_datagram(now, local, from, payload);
            while let Some(t) = self.rendezvous.poll_transmit() {
                // A wildcard socket sends from the address it was reached at.
                let origin = SocketAddr::new(to.ip(), t.local.port());
                self.send(origin, t.remote, t.payload);
            }
            return Ok(());
        }
        for i in 0..2 {
            if self.peers[i].nat.public_ip != to.ip() {
                continue;
            }
            let Some(inside) = self.peers[i].nat.inbound(now, from, to.port()) else {
                self.log(|| format!("peer {i}'s NAT filters {from} -> {to}"));
                return Ok(());
            };
            if !self.peers[i].sockets.contains(&inside) {
                return Ok(());
            }
            match &mut self.peers[i].side {
                Side::Host(h) => {
                    h.handle_datagram(now, inside, from, payload);
                }
                Side::Client(Some(c)) => {
                    c.handle_datagram(now, inside, from, payload);
                }
                Side::Client(None) => {}
            }
            self.drain(i)?;
        }
        Ok(())
    }

    /// The third party's datagram, into every socket peer `to` has, as if
    /// it had come on path.
    fn inject(&mut self, to: usize, payload: &[u8]) -> Result<(), NatViolation> {
        let now = self.now;
        let sockets = self.peers[to].sockets.clone();
        for local in sockets {
            match &mut self.peers[to].side {
                Side::Host(h) => {
                    h.handle_datagram(now, local, ATTACKER, payload);
                }
                Side::Client(Some(c)) => {
                    c.handle_datagram(now, local, ATTACKER, payload);
                }
                Side::Client(None) => {}
            }
            self.drain(to)?;
        }
        Ok(())
    }

    fn timeout_of(&self, i: usize) -> Option<Instant> {
        match &self.peers[i].side {
            Side::Host(h) => h.poll_timeout(),
            Side::Client(Some(c)) => c.poll_timeout(),
            Side::Client(None) => None,
        }
    }

    fn run(&mut self) -> Result<(), NatViolation> {
        self.drain(0)?;
        for to in 0..2 {
            let at = Duration::from_millis(self.rng.below(5000));
            self.schedule(at, Ev::Forged { to });
            for _ in 0..3 {
                let at = Duration::from_millis(self.rng.below(5000));
                self.schedule(at, Ev::Junk { to });
            }
        }
        let limit = TraversalConfig::default().deadline + Duration::from_secs(15);
        loop {
            if self.peers[0].outcome.is_some() && self.peers[1].outcome.is_some() {
                break;
            }
            let end = self
                .client_started
                .unwrap_or(Instant::ZERO + Duration::from_secs(30))
                .max(self.take_at.unwrap_or(Instant::ZERO))
                + limit;
            let timers = (0..2).filter_map(|i| self.timeout_of(i)).min();
            let next_ev = self.queue.keys().next().map(|(t, _)| *t);
            let Some(next) = [timers, next_ev].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_ev == Some(next) {
                let Some((_, ev)) = self.queue.pop_first() else {
                    break;
                };
                match ev {
                    Ev::Packet { from, to, payload } => self.deliver(from, to, &payload)?,
                    Ev::StartClient => {
                        self.client_started = Some(self.now);
                        let c = ClientRendezvous::new(
                            self.now,
                            self.rendezvous_addrs[0],
                            self.peers[1].inside,
                            vec![self.peers[1].inside],
                            &FINGERPRINT,
                            &self.secret,
                            TraversalConfig::default(),
                            Rng::from_u64(self.rng.next_u64()),
                        );
                        let c = if self.spare { c.spare() } else { c };
                        self.peers[1].side = Side::Client(Some(Box::new(c)));
                        self.drain(1)?;
                    }
                    Ev::TakeSpare => {
                        let now = self.now;
                        if let Side::Client(Some(c)) = &mut self.peers[1].side {
                            let taking = c.take_spare(now);
                            self.log(|| format!("client takes its spare: {taking}"));
                        }
                        self.drain(1)?;
                    }
                    Ev::Junk { to } => {
                        self.stats.junk += 1;
                        // QUIC's first byte (0x40–0xff), a keepalive's
                        // (the version), or anything, then random bytes.
                        let len = 1 + self.rng.below(200) as usize;
                        let mut junk = vec![0u8; len];
                        self.rng.fill(&mut junk);
                        self.inject(to, &junk)?;
                    }
                    Ev::Forged { to } => {
                        self.stats.forged += 1;
                        let forged = wormhole_core::nat::stun::check_request(
                            wormhole_core::nat::TxId::new(u128::from(self.rng.next_u64())),
                            &CheckKey::new(&[0xee; 32]),
                            1,
                            true,
                        );
                        self.inject(to, &forged)?;
                    }
                }
            } else {
                for i in 0..2 {
                    if self.timeout_of(i).is_some_and(|t| t <= self.now) {
                        let now = self.now;
                        match &mut self.peers[i].side {
                            Side::Host(h) => h.handle_timeout(now),
                            Side::Client(Some(c)) => c.handle_timeout(now),
                            Side::Client(None) => {}
                        }
                        self.drain(i)?;
                    }
                }
            }
        }
        self.liveness()
    }

    fn liveness(&mut self) -> Result<(), NatViolation> {
        let routers = (self.peers[0].router, self.peers[1].router);
        if self.client_started.is_none() {
            return Err(NatViolation("the host never registered".into()));
        }
        let outcomes = [self.peers[0].outcome, self.peers[1].outcome];
        // A client that failed before being put through leaves the host
        // with no session at all: that counts as "not connected".
        let host = outcomes[0].unwrap_or(false);
        let Some(client) = outcomes[1] else {
            return Err(NatViolation("the client never ended".into()));
        };
        let cell = (routers.0 as u8, routers.1 as u8);
        let entry = self.stats.cells.entry(cell).or_default();
        entry.0 += 1;
        entry.1 += u64::from(host && client);
        if self.peers[1].via == Some(CandidateKind::PeerReflexive) {
            self.stats.via_peer_reflexive += 1;
        }
        if client && self.peers[1].birthday {
            self.stats.via_birthday += 1;
            if !Router::may_birthday(routers.0, routers.1) {
                return Err(NatViolation(format!(
                    "{routers:?} connected by birthday punching, which it never runs"
                )));
            }
        }
        if client
            && self.loss == 0
            && Router::needs_birthday(routers.0, routers.1)
            && !self.peers[1].birthday
        {
            return Err(NatViolation(format!(
                "{routers:?} connected without birthday punching"
            )));
        }
        self.stats.converged += 1;
        let lossless = self.loss == 0;
        if host != client {
            if lossless {
                return Err(NatViolation(format!(
                    "the sides disagree on a clean network: host {host}, client {client}"
                )));
            }
            self.stats.lossy_disagreements += 1;
            return Ok(());
        }
        let relayed = self.peers[1].relayed;
        if client && relayed {
            self.stats.via_relay += 1;
        }
        if client && self.spare {
            self.stats.spares_taken += 1;
        }
        if lossless && !client {
            return Err(NatViolation(format!(
                "{routers:?}: not connected on a clean network, relay and all"
            )));
        }
        // Direct where the NATs allow it (under loss punching may give up
        // and the relay carry the run instead); never direct where they
        // do not.
        let punchable = Router::punchable(routers.0, routers.1);
        if client && (relayed && punchable && lossless || !relayed && !punchable) {
            return Err(NatViolation(format!(
                "{routers:?}: relayed = {relayed}, but the NATs {} a direct path",
                if relayed { "allow" } else { "do not allow" }
            )));
        }
        // Loss-free, the pair is in both pools, in use on both, or in
        // neither. (Under loss one side may add a pair the other never
        // does, the two generals' problem; it is never used, and expires.)
        if lossless {
            let in_use = |pool: &wormhole_core::pair::PairPool| {
                pool.pairs()
                    .filter(|p| p.state() == PairState::InUse)
                    .map(|p| p.pair().nonce)
                    .collect::<Vec<_>>()
            };
            let host_pairs = match &self.peers[0].side {
                Side::Host(h) => in_use(h.pool()),
                Side::Client(_) => Vec::new(),
            };
            let client_pairs = match &self.peers[1].side {
                Side::Client(Some(c)) => in_use(c.pool()),
                _ => Vec::new(),
            };
            let expected = usize::from(client);
            if host_pairs != client_pairs || client_pairs.len() != expected {
                return Err(NatViolation(format!(
                    "pairs in use: host {host_pairs:?}, client {client_pairs:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The NAT traversal simulation, for the shared seed runner.
#[derive(Debug)]
pub struct NatSim;

impl Simulation for NatSim {
    const TEST: &'static str = "nat_sim";
    const SEED_VAR: &'static str = "WORMHOLE_NAT_SEED";
    const SEEDS_VAR: &'static str = "WORMHOLE_NAT_SEEDS";
    const COVERAGE_FROM: u64 = 500;
    const MIN_TRACE: usize = 10;

    type Stats = NatSimStats;
    type World = NatWorld;
    type Violation = NatViolation;

    fn run_seed(seed: u64, trace: bool, echo: bool) -> (NatWorld, Result<(), NatViolation>) {
        let mut world = NatWorld::new(seed, trace, echo);
        let result = world.run();
        (world, result)
    }

    fn trace(world: &NatWorld) -> &[String] {
        &world.trace
    }

    fn stats(world: &NatWorld) -> &NatSimStats {
        &world.stats
    }

    fn merge(into: &mut NatSimStats, from: &NatSimStats) {
        into.converged += from.converged;
        for (cell, (runs, ok)) in &from.cells {
            let e = into.cells.entry(*cell).or_default();
            e.0 += runs;
            e.1 += ok;
        }
        into.lost += from.lost;
        into.duplicated += from.duplicated;
        into.forged += from.forged;
        into.junk += from.junk;
        into.outage_drops += from.outage_drops;
        into.lossy_disagreements += from.lossy_disagreements;
        into.via_peer_reflexive += from.via_peer_reflexive;
        into.taken += from.taken;
        into.via_birthday += from.via_birthday;
        into.via_relay += from.via_relay;
        into.spares_taken += from.spares_taken;
    }

    fn converged(stats: &NatSimStats) -> u64 {
        stats.converged
    }

    fn assert_coverage(stats: &NatSimStats) {
        assert_eq!(stats.cells.len(), 16, "every cell ran: {:?}", stats.cells);
        for ((a, b), (runs, ok)) in &stats.cells {
            // Lossy runs may fail now and then; most connect, relayed
            // or not.
            assert!(
                *ok * 10 >= *runs * 9,
                "cell {a}×{b}: {ok} of {runs} connected"
            );
        }
        assert!(stats.lost > 0 && stats.duplicated > 0 && stats.forged > 0);
        assert!(stats.junk > 0, "no junk was injected");
        assert!(stats.outage_drops > 0, "the rendezvous never went down");
        assert!(
            stats.via_peer_reflexive > 0,
            "no hole was found from the other side"
        );
        assert!(stats.via_birthday > 0, "no birthday punching connected");
        assert!(stats.via_relay > 0, "nothing connected through the relay");
        assert!(stats.spares_taken > 0, "no spare was held and taken");
        assert!(
            stats.lossy_disagreements * 100 <= stats.converged,
            "the sides disagreed in {} of {} runs",
            stats.lossy_disagreements,
            stats.converged
        );
    }

    fn describe(seed: u64) -> Option<String> {
        let cell = seed % 16;
        Some(format!(
            "host behind {:?}, mount behind {:?}",
            Router::ALL[(cell / 4) as usize],
            Router::ALL[(cell % 4) as usize]
        ))
    }
}
