//! The rendezvous server's machine: what `wormhole rendezvous` answers on
//! its UDP sockets.
//!
//! Today it is a STUN server with the RFC 5780 extensions (it answers
//! Binding requests with XOR-MAPPED-ADDRESS, MAPPED-ADDRESS,
//! RESPONSE-ORIGIN, OTHER-ADDRESS and FINGERPRINT, and honours
//! CHANGE-REQUEST and RESPONSE-PORT), so that clients can learn and classify their NAT
//! against it. It listens on two ports of one address, or on two ports of
//! each of two addresses. Signalling between hosts and clients arrives
//! next (docs/nat.md).
//!
//! It keeps no state per client: a Binding answer is a pure function of
//! the request, so a flood costs it nothing but the answers, one per
//! request, never more bytes out than a request can make a reflector
//! send (an answer is under 100 bytes).

use crate::nat::stun::{self, Change, Stun};
use crate::pair::Transmit;
use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;

/// Answers waiting to be sent; a shell that does not drain them drops the
/// newest beyond this, as a full socket buffer would.
const MAX_QUEUED: usize = 1024;

/// The addresses a rendezvous listens on: two ports on one or two IPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAddrs {
    ips: [IpAddr; 2],
    ports: [u16; 2],
    two_ips: bool,
}

impl ServerAddrs {
    /// Two ports of one address.
    pub fn one_ip(ip: IpAddr, ports: [u16; 2]) -> Self {
        ServerAddrs {
            ips: [ip, ip],
            ports,
            two_ips: false,
        }
    }

    /// Two ports of each of two addresses (a full RFC 5780 server).
    pub fn two_ips(ips: [IpAddr; 2], ports: [u16; 2]) -> Self {
        ServerAddrs {
            ips,
            ports,
            two_ips: ips[0] != ips[1],
        }
    }

    /// Every socket address to listen on (two or four).
    pub fn sockets(&self) -> Vec<SocketAddr> {
        let ips = if self.two_ips {
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

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Binding requests answered.
    pub answered: u64,
    /// Binding requests refused (a CHANGE-REQUEST for an IP we do not
    /// have).
    pub refused: u64,
    /// Datagrams dropped: not STUN, malformed, not a request, or a full
    /// queue.
    pub dropped: u64,
}

/// The rendezvous machine.
#[derive(Debug)]
pub struct Rendezvous {
    addrs: ServerAddrs,
    transmits: VecDeque<Transmit>,
    stats: RendezvousStats,
}

impl Rendezvous {
    /// A rendezvous listening on `addrs`.
    pub fn new(addrs: ServerAddrs) -> Self {
        Rendezvous {
            addrs,
            transmits: VecDeque::new(),
            stats: RendezvousStats::default(),
        }
    }

    /// Handles a datagram that arrived on `local` from `from`.
    pub fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, datagram: &[u8]) {
        let request = stun::looks_like_stun(datagram)
            .then(|| stun::decode(datagram).ok())
            .flatten();
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
        if self.transmits.len() >= MAX_QUEUED {
            self.stats.dropped += 1;
            return;
        }
        if change.ip && !self.addrs.two_ips {
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
            .at(ip ^ usize::from(self.addrs.two_ips), port ^ 1);
        // RESPONSE-PORT (RFC 5780 §7.5) may move the answer to another
        // port of the sender's own IP, never to another IP.
        let to = SocketAddr::new(from.ip(), response_port.unwrap_or(from.port()));
        self.transmits.push_back(Transmit {
            local: origin,
            remote: to,
            payload: stun::binding_success(tx, from, Some(other), origin),
        });
        self.stats.answered += 1;
        debug_assert!(self.transmits.len() <= MAX_QUEUED);
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
