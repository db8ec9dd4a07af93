//! A NAT as the simulations see it: mapping and filtering tables of one of
//! the RFC 4787 behaviours, for tests and the simulator's world.
//!
//! Mappings and filter permissions expire after `timeout` without
//! outbound traffic (inbound traffic does not refresh them, like Linux
//! conntrack for UDP in its unreplied state would not either — a
//! deliberately strict reading).

use super::classify::{Filtering, Mapping};
use crate::{Instant, Rng};
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::BTreeMap;

/// Where a mapping applies: to every destination, per IP, or per IP and
/// port, as the mapping behaviour says.
type MapKey = (SocketAddr, Option<IpAddr>, Option<u16>);

/// One NAT router between a private network and the outside.
#[derive(Clone, Debug)]
pub struct NatModel {
    /// How it maps.
    pub mapping: Mapping,
    /// How it filters.
    pub filtering: Filtering,
    /// Whether it hairpins (loops packets to its own public address back
    /// inside).
    pub hairpin: bool,
    /// The outside address.
    pub public_ip: IpAddr,
    /// Idle time after which a mapping is forgotten.
    pub timeout: Duration,
    next_port: u16,
    /// Mapping key → (public port, last outbound use).
    maps: BTreeMap<MapKey, (u16, Instant)>,
    /// Public port → the inside socket it belongs to.
    owners: BTreeMap<u16, SocketAddr>,
    /// (public port, remote) → last outbound use: who may send in.
    sent_to: BTreeMap<(u16, SocketAddr), Instant>,
    /// When state was last swept for expiry.
    swept: Instant,
    /// Ports drawn at random (Linux's `random-fully`) instead of in
    /// sequence.
    random_ports: Option<Rng>,
}

impl NatModel {
    /// A NAT with the given behaviour; ports are handed out from
    /// `first_port` on, in sequence unless
    /// [`with_random_ports`](Self::with_random_ports) says otherwise.
    pub fn new(mapping: Mapping, filtering: Filtering, public_ip: IpAddr, first_port: u16) -> Self {
        NatModel {
            mapping,
            filtering,
            hairpin: false,
            public_ip,
            timeout: Duration::from_secs(120),
            next_port: first_port,
            maps: BTreeMap::new(),
            owners: BTreeMap::new(),
            sent_to: BTreeMap::new(),
            swept: Instant::ZERO,
            random_ports: None,
        }
    }

    /// The same NAT handing out public ports at random from 1024 up, as
    /// Linux does with `masquerade random-fully`.
    pub fn with_random_ports(mut self, rng: Rng) -> Self {
        self.random_ports = Some(rng);
        self
    }

    /// Translates a datagram leaving `inside` for `to`: the public source
    /// address it leaves with.
    pub fn outbound(&mut self, now: Instant, inside: SocketAddr, to: SocketAddr) -> SocketAddr {
        self.expire(now);
        if self.mapping == Mapping::None {
            self.sent_to.insert((inside.port(), to), now);
            self.owners.insert(inside.port(), inside);
            return inside;
        }
        let key = match self.mapping {
            Mapping::None | Mapping::EndpointIndependent => (inside, None, None),
            Mapping::AddressDependent => (inside, Some(to.ip()), None),
            Mapping::AddressAndPortDependent => (inside, Some(to.ip()), Some(to.port())),
        };
        let port = match self.maps.get(&key) {
            Some((port, _)) => *port,
            None => {
                let port = self.fresh_port();
                self.owners.insert(port, inside);
                port
            }
        };
        self.maps.insert(key, (port, now));
        self.sent_to.insert((port, to), now);
        SocketAddr::new(self.public_ip, port)
    }

    /// The public address a datagram from `inside` to `to` would leave
    /// with, if a mapping for it exists now (creating none, unlike
    /// [`Self::outbound`]).
    pub fn mapped(&self, inside: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let key = match self.mapping {
            Mapping::None => return Some(inside),
            Mapping::EndpointIndependent => (inside, None, None),
            Mapping::AddressDependent => (inside, Some(to.ip()), None),
            Mapping::AddressAndPortDependent => (inside, Some(to.ip()), Some(to.port())),
        };
        let (port, _) = self.maps.get(&key)?;
        Some(SocketAddr::new(self.public_ip, *port))
    }

    /// Translates a datagram arriving from `from` at public port `port`:
    /// the inside socket it goes to, or `None` if filtered.
    pub fn inbound(&mut self, now: Instant, from: SocketAddr, port: u16) -> Option<SocketAddr> {
        self.expire(now);
        let inside = *self.owners.get(&port)?;
        let allowed = match self.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self
                .sent_to
                .keys()
                .any(|(p, to)| *p == port && to.ip() == from.ip()),
            Filtering::AddressAndPortDependent => self.sent_to.contains_key(&(port, from)),
        };
        allowed.then_some(inside)
    }

    fn fresh_port(&mut self) -> u16 {
        if let Some(rng) = self.random_ports.as_mut() {
            loop {
                let port = 1024 + u16::try_from(rng.below(64512)).unwrap_or(0);
                if !self.owners.contains_key(&port) {
                    return port;
                }
            }
        }
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(1024);
            if !self.owners.contains_key(&port) {
                return port;
            }
        }
    }

    /// Forgets idle state, at most once a simulated second (so a NAT
    /// holding thousands of mappings stays cheap), which makes lifetimes
    /// up to a second longer than `timeout`.
    fn expire(&mut self, now: Instant) {
        if now < self.swept + Duration::from_secs(1) {
            return;
        }
        self.swept = now;
        let timeout = self.timeout;
        let live = |last: &Instant| now.saturating_duration_since(*last) < timeout;
        self.maps.retain(|_, (_, last)| live(last));
        self.sent_to.retain(|_, last| live(last));
        let used: std::collections::BTreeSet<u16> = self.sent_to.keys().map(|(p, _)| *p).collect();
        self.owners.retain(|port, _| used.contains(port));
    }
}
