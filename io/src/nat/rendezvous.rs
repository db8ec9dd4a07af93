//! `wormhole rendezvous`: the core's rendezvous machine on real sockets.

use super::udp::UdpSet;
use crate::drive::{Pass, poll_passes};
use crate::runtime::CoreClock;
use core::future::Future;
use core::net::SocketAddr;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wormhole_core::rendezvous::{Rendezvous, RendezvousStats, ServerAddrs, TurnService};

/// Where a rendezvous listens: a primary address, a second port on it,
/// and optionally a second IP (with the same two ports) for full RFC 5780
/// NAT classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RendezvousStart {
    /// The address peers are told (`--bind`).
    pub primary: SocketAddr,
    /// The second port on the same IP(s).
    pub other_port: u16,
    /// A second IP of this machine, if it has one to offer.
    pub other_ip: Option<core::net::IpAddr>,
}

impl RendezvousStart {
    /// The core's view of these addresses.
    pub fn addrs(&self) -> ServerAddrs {
        let ports = [self.primary.port(), self.other_port];
        match self.other_ip {
            Some(ip) => ServerAddrs::two_ips([self.primary.ip(), ip], ports),
            None => ServerAddrs::one_ip(self.primary.ip(), ports),
        }
    }
}

/// A running rendezvous: its sockets and the machine they feed.
pub struct RendezvousServer {
    clock: CoreClock,
    machine: Rendezvous,
    udp: UdpSet,
}

impl core::fmt::Debug for RendezvousServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RendezvousServer")
            .field("locals", &self.udp.locals())
            .field("stats", &self.machine.stats())
            .finish_non_exhaustive()
    }
}

impl RendezvousServer {
    /// Binds every socket `start` names with `bind` (the shell's UDP
    /// bind), so that a port in use fails here, before anything is
    /// printed.
    pub fn bind(
        runtime: Arc<dyn quinn::Runtime>,
        start: RendezvousStart,
        bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    ) -> io::Result<Self> {
        let addrs = start.addrs();
        let sockets = addrs
            .sockets()
            .into_iter()
            .map(|a| {
                bind(a)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on UDP {a}: {e}")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let udp = UdpSet::new(&*runtime, sockets)?;
        Ok(RendezvousServer {
            clock: CoreClock::new(runtime),
            machine: Rendezvous::new(addrs),
            udp,
        })
    }

    /// Mints credentials for the TURN server at `server`, which shares
    /// `secret` (coturn's `static-auth-secret`), valid for `ttl`.
    pub fn with_turn(mut self, server: SocketAddr, secret: Vec<u8>, ttl: Duration) -> Self {
        // The core keeps no wall clock: it is told the Unix time at its
        // origin once.
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since_origin = self.clock.now().since_origin().as_secs();
        let turn = TurnService {
            server,
            secret,
            ttl,
            unix_at_origin: unix_now.saturating_sub(since_origin),
        };
        self.machine.set_turn(turn);
        self
    }

    /// The addresses it listens on.
    pub fn locals(&self) -> Vec<SocketAddr> {
        self.udp.locals()
    }

    /// Serves until `stop` resolves; returns the counters.
    pub async fn serve(mut self, stop: impl Future<Output = ()>) -> RendezvousStats {
        let drive = core::future::poll_fn(|cx| {
            poll_passes(cx, |cx| {
                let machine = &mut self.machine;
                let now = self.clock.now();
                let more = self.udp.poll_recv(cx, |local, from, datagram| {
                    machine.handle_datagram(now, local, from, datagram);
                });
                while let Some(t) = self.machine.poll_transmit() {
                    self.udp.send(t.local, t.remote, &t.payload);
                }
                Pass::from_busy(more)
            })
        });
        futures_lite::future::or(stop, drive).await;
        self.machine.stats()
    }
}
