//! Hole punching through a rendezvous on real UDP sockets: the core's
//! [`HostRendezvous`] and [`ClientRendezvous`] driven until a stop.

use super::udp::UdpSet;
use crate::drive::{Pass, poll_passes};
use crate::runtime::CoreClock;
use core::future::Future;
use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use tracing::warn;
use wormhole_core::Rng;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::nat::TraversalConfig;
use wormhole_core::rendezvous::peer::{ClientEvent, ClientRendezvous, HostEvent, HostRendezvous};

/// Who punches, and through which rendezvous: what a ticket gives.
#[derive(Clone, Debug)]
pub struct PunchParty {
    /// The rendezvous.
    pub rendezvous: SocketAddr,
    /// The host certificate's fingerprint (names the host there).
    pub fingerprint: [u8; 32],
    /// The ticket secret (the token and the checks' key derive from it).
    pub secret: TicketSecret,
    /// Seed of the core's Rng.
    pub seed: [u8; 32],
    /// Whether a client may fall back to the rendezvous's TURN relay (no
    /// when a relayed mount looks for a direct path).
    pub may_relay: bool,
}

/// Binds a socket (with `bind`, the shell's) on the address that routes
/// to `rendezvous`: the one whose mapping punching learns and uses.
fn bind_toward(
    rendezvous: SocketAddr,
    bind: &impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
) -> io::Result<std::net::UdpSocket> {
    bind(SocketAddr::new(super::route_to(rendezvous)?, 0))
}

/// Binds, with `bind`, a socket on this machine's IPv6 address (the one
/// that routes to the wider IPv6 internet) when the punching socket is
/// IPv4 and the machine has such an address: its address becomes a host
/// candidate, so two peers with IPv6 meet there even when their IPv4 NATs
/// leave no way through. `None` without IPv6 (no route; a loopback,
/// link-local or unspecified source).
fn bind_ipv6_beside(
    first: SocketAddr,
    bind: &impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
) -> Option<std::net::UdpSocket> {
    if first.is_ipv6() {
        return None;
    }
    // A documentation address: connecting only asks for the route.
    let anywhere = SocketAddr::new(
        core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        9,
    );
    let ip = super::route_to(anywhere).ok()?;
    let usable = match ip {
        core::net::IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local())
        }
        core::net::IpAddr::V4(_) => false,
    };
    usable.then(|| bind(SocketAddr::new(ip, 0)).ok()).flatten()
}

/// Binds up to `count` more sockets on `ip` for birthday punching, adds
/// them to `udp` and keeps a handle of each in `masters`; returns their
/// addresses. Fewer is fine (a low descriptor limit, say): punching
/// works with what it gets.
fn bind_sprayers(
    runtime: &dyn quinn::Runtime,
    ip: core::net::IpAddr,
    count: u16,
    bind: &impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    udp: &mut UdpSet,
    masters: &mut BTreeMap<SocketAddr, std::net::UdpSocket>,
) -> Vec<SocketAddr> {
    let mut locals = Vec::new();
    for _ in 0..count {
        let added = bind(SocketAddr::new(ip, 0)).and_then(|s| {
            let master = s.try_clone()?;
            let local = udp.add(runtime, s)?;
            masters.insert(local, master);
            Ok(local)
        });
        match added {
            Ok(local) => locals.push(local),
            Err(e) => {
                warn!(error = %e, bound = locals.len(), "fewer sockets for birthday punching");
                break;
            }
        }
    }
    locals
}

/// Runs a host's rendezvous side until `stop`: registration from a socket
/// of its own, and for each client put through a fresh socket (all bound
/// with `bind`) that punches toward it. Every event goes to `on_event`;
/// with a `Connected` event goes the punched socket itself, which this
/// driver no longer reads: it is the caller's to serve the client on.
pub async fn host_punch(
    runtime: Arc<dyn quinn::Runtime>,
    party: PunchParty,
    bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    mut on_event: impl FnMut(&HostEvent, Option<std::net::UdpSocket>),
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let socket = bind_toward(party.rendezvous, &bind)?;
    let ip = socket.local_addr()?.ip();
    let mut udp = UdpSet::new(&*runtime, vec![socket])?;
    let mut clock = CoreClock::new(runtime.clone());
    let local = udp.locals()[0];
    let mut machine = HostRendezvous::new(
        clock.now(),
        party.rendezvous,
        local,
        &party.fingerprint,
        party.secret,
        TraversalConfig::default(),
        Rng::from_seed(party.seed),
    );
    // Each punched socket's own handle, kept to hand over: the set reads
    // a duplicate, so the very socket (and its NAT mapping) survives.
    let mut masters: BTreeMap<SocketAddr, std::net::UdpSocket> = BTreeMap::new();
    let drive = core::future::poll_fn(|cx| {
        poll_passes(cx, |cx| {
            let now = clock.now();
            let mut busy = udp.poll_recv(cx, |local, from, datagram| {
                machine.handle_datagram(now, local, from, datagram);
            });
            if let Some(now) = clock.poll_due(cx, machine.poll_timeout()) {
                machine.handle_timeout(now);
                busy = true;
            }
            // Transmits before events: a Connected socket leaves the set
            // below, and its last answers must still go out.
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            while let Some(event) = machine.poll_event() {
                busy = true;
                let socket = match &event {
                    HostEvent::NeedSocket { session } => {
                        let mut add = |s: std::net::UdpSocket| -> io::Result<SocketAddr> {
                            let master = s.try_clone()?;
                            let local = udp.add(&*runtime, s)?;
                            masters.insert(local, master);
                            Ok(local)
                        };
                        match bind(SocketAddr::new(ip, 0)).and_then(&mut add) {
                            Ok(local) => {
                                let v6 = bind_ipv6_beside(local, &bind).and_then(|s| add(s).ok());
                                let host_addrs = core::iter::once(local).chain(v6).collect();
                                machine.add_socket(now, *session, local, host_addrs);
                            }
                            Err(e) => warn!(error = %e, "no socket for a client"),
                        }
                        None
                    }
                    HostEvent::NeedSprayers { session, count } => {
                        let locals =
                            bind_sprayers(&*runtime, ip, *count, &bind, &mut udp, &mut masters);
                        machine.add_sprayers(now, *session, &locals);
                        None
                    }
                    HostEvent::Connected {
                        session,
                        local,
                        unused,
                        ..
                    } => {
                        machine.forget(now, *session);
                        for other in unused {
                            udp.remove(*other);
                            masters.remove(other);
                        }
                        udp.remove(*local);
                        masters.remove(local)
                    }
                    HostEvent::Failed {
                        session, sockets, ..
                    } => {
                        machine.forget(now, *session);
                        for local in sockets {
                            udp.remove(*local);
                            masters.remove(local);
                        }
                        None
                    }
                    HostEvent::Registered | HostEvent::RendezvousSilent => None,
                };
                on_event(&event, socket);
            }
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            Pass::from_busy(busy)
        })
    });
    futures_lite::future::or(stop, drive).await;
    Ok(())
}

/// What a client's punch leaves for the connection.
#[derive(Debug)]
pub struct Punched {
    /// The punched socket (a handle to the very socket), or the first one
    /// if none was punched.
    pub socket: std::net::UdpSocket,
    /// The TURN allocation the path runs through, if it is relayed.
    pub relay: Option<Relay>,
}

/// A TURN allocation taken over from the punch, with the clock its
/// deadlines were set on.
pub struct Relay {
    pub(crate) turn: wormhole_core::turn::TurnClient,
    pub(crate) clock: CoreClock,
}

impl core::fmt::Debug for Relay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Relay")
            .field("server", &self.turn.server())
            .field("relayed", &self.turn.relayed())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.turn.server()
    }

    /// When the allocation's credentials expire (its refreshes are refused
    /// from then on), if they say.
    pub fn expires(&self) -> Option<std::time::SystemTime> {
        let secs = self.turn.credentials_expiry()?;
        std::time::UNIX_EPOCH.checked_add(core::time::Duration::from_secs(secs))
    }

    /// The socket QUIC uses to reach `peer` through the relay, over
    /// `socket` (the one the allocation was made from).
    pub fn socket(
        self,
        runtime: Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
        peer: SocketAddr,
    ) -> io::Result<Arc<crate::turn::RelayedSocket>> {
        crate::turn::RelayedSocket::new(runtime, socket, self.turn, self.clock, peer)
    }
}

/// Runs a client's rendezvous side on a socket bound with `bind`: asks
/// to be put through, punches (from more sockets if birthday punching
/// asks; through a TURN relay if no direct path exists and the rendezvous
/// offers one), reports every event to `on_event`, and keeps answering
/// the host's checks until `stop`.
pub async fn client_punch(
    runtime: Arc<dyn quinn::Runtime>,
    party: PunchParty,
    bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    on_event: impl FnMut(&ClientEvent),
    stop: impl Future<Output = ()>,
) -> io::Result<Punched> {
    punch(runtime, party, bind, on_event, None, stop).await
}

/// As [`client_punch`], for a spare path (`ClientRendezvous::spare`):
/// direct only, held alive in both pools from
/// [`ClientEvent::SpareReady`] on, and taken through the pair handover
/// (then `Connected`) when `take` yields.
pub async fn client_spare(
    runtime: Arc<dyn quinn::Runtime>,
    party: PunchParty,
    bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    on_event: impl FnMut(&ClientEvent),
    take: async_channel::Receiver<()>,
    stop: impl Future<Output = ()>,
) -> io::Result<Punched> {
    punch(runtime, party, bind, on_event, Some(take), stop).await
}

async fn punch(
    runtime: Arc<dyn quinn::Runtime>,
    party: PunchParty,
    bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    mut on_event: impl FnMut(&ClientEvent),
    take: Option<async_channel::Receiver<()>>,
    stop: impl Future<Output = ()>,
) -> io::Result<Punched> {
    let mut take = take.map(Box::pin);
    let socket = bind_toward(party.rendezvous, &bind)?;
    let ip = socket.local_addr()?.ip();
    let first = socket.try_clone()?;
    let mut udp = UdpSet::new(&*runtime, vec![socket])?;
    let mut clock = CoreClock::new(runtime.clone());
    let local = udp.locals()[0];
    let mut masters = BTreeMap::from([(local, first)]);
    let mut punched = local;
    let mut host_addrs = vec![local];
    if let Some(v6) = bind_ipv6_beside(local, &bind) {
        let master = v6.try_clone()?;
        let at = udp.add(&*runtime, v6)?;
        masters.insert(at, master);
        host_addrs.push(at);
    }
    let mut machine = ClientRendezvous::new(
        clock.now(),
        party.rendezvous,
        local,
        host_addrs,
        &party.fingerprint,
        &party.secret,
        TraversalConfig::default(),
        Rng::from_seed(party.seed),
    );
    if take.is_some() {
        machine = machine.spare();
    } else if !party.may_relay {
        machine = machine.without_relay();
    }
    let drive = core::future::poll_fn(|cx| {
        poll_passes(cx, |cx| {
            let now = clock.now();
            let mut busy = udp.poll_recv(cx, |local, from, datagram| {
                machine.handle_datagram(now, local, from, datagram);
            });
            if let Some(now) = clock.poll_due(cx, machine.poll_timeout()) {
                machine.handle_timeout(now);
                busy = true;
            }
            if let Some(rx) = take.as_mut()
                && let core::task::Poll::Ready(asked) = futures_lite::StreamExt::poll_next(rx, cx)
            {
                // Asked once (or never again: the asker is gone).
                take = None;
                if asked.is_some() {
                    machine.take_spare(clock.now());
                }
                busy = true;
            }
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            while let Some(event) = machine.poll_event() {
                busy = true;
                match &event {
                    ClientEvent::NeedSprayers(count) => {
                        let locals =
                            bind_sprayers(&*runtime, ip, *count, &bind, &mut udp, &mut masters);
                        machine.add_sprayers(now, &locals);
                    }
                    // A relayed path runs on our first socket.
                    ClientEvent::Connected {
                        local,
                        relayed: false,
                        ..
                    } => punched = *local,
                    _ => {}
                }
                on_event(&event);
            }
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            Pass::from_busy(busy)
        })
    });
    futures_lite::future::or(stop, drive).await;
    let relay = machine.take_relay().map(|turn| Relay { turn, clock });
    // The other sockets close here, with the set and their handles.
    let socket = masters
        .remove(&punched)
        .ok_or_else(|| io::Error::other("the punched socket is gone"))?;
    Ok(Punched { socket, relay })
}
