//! What kind of NAT this machine sits behind, found the RFC 5780 way, and
//! what that means for hole punching (seed 002 §7's `NatType`).
//!
//! The [`Classifier`] runs the tests against one server that offers a
//! second port (and, if it can, a second address) through OTHER-ADDRESS,
//! as `wormhole rendezvous` does:
//!
//! * mapping, from socket A: test I to the server's primary address gives
//!   the mapped address M1 (equal to A's own address: no NAT); test II to
//!   the other IP and primary port (or, with one IP, the other port) gives
//!   M2, M2 = M1 means endpoint-independent; test III to the other IP and
//!   port gives M3, M3 = M2 means address-dependent, else address-and-port
//!   dependent;
//! * filtering, from a fresh socket B (so the mapping tests opened nothing
//!   for it): a plain request (the server is reachable from B), one asking
//!   for an answer from the other IP and port (it arrives only through
//!   endpoint-independent filtering), and one asking for the other port
//!   (arrives through address-dependent filtering too);
//! * hairpinning, from A to M1: the request itself comes back to A if the
//!   NAT hairpins.
//!
//! A server with one IP cannot tell address-dependent behaviour from
//! endpoint-independent behaviour; [`NatBehaviour::other_ip_tested`] says
//! when that was the case. Filtering then reads as address-dependent at
//! best, and a mapping that changes with the port as
//! address-and-port-dependent.

use super::binding::{BindingClient, BindingConfig, BindingEvent};
use super::stun::{self, Change, TxId};
use crate::pair::Transmit;
use crate::{Instant, Rng};
use core::fmt;
use core::net::SocketAddr;
use thiserror::Error;

/// How a NAT maps one inside socket to outside addresses (RFC 4787).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// No translation: the socket's own address is what the server saw.
    None,
    /// One public address for every destination.
    EndpointIndependent,
    /// A public address per destination IP.
    AddressDependent,
    /// A public address per destination IP and port ("symmetric").
    AddressAndPortDependent,
}

/// Which outside senders may reach a mapped socket (RFC 4787).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone.
    EndpointIndependent,
    /// Only IPs the socket has sent to.
    AddressDependent,
    /// Only IP and port pairs the socket has sent to.
    AddressAndPortDependent,
}

/// The seed's NAT types (002 §7), derived from mapping and filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatType {
    /// No NAT, public IP, nothing filtered.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering
    /// (also a public address behind a stateful firewall).
    PortRestricted,
    /// Endpoint-dependent mapping.
    Symmetric,
    /// Detection failed.
    Unknown,
}

impl NatType {
    /// Whether two peers of these types can punch a direct path.
    ///
    /// As the seed has it, except that `Unknown` is tried rather than
    /// given up on (a failed punch costs seconds, a relay for nothing
    /// costs the whole connection's speed). One endpoint-dependent side
    /// needs the birthday approach; whether that holds on real NATs is
    /// measured by the kernel NAT matrix (docs/nat.md).
    pub fn can_punch(&self, other: &NatType) -> bool {
        !matches!((self, other), (NatType::Symmetric, NatType::Symmetric))
    }
}

/// This machine's NAT, as classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatBehaviour {
    /// The socket's own address.
    pub local: SocketAddr,
    /// Its public address, as the server saw it.
    pub public: SocketAddr,
    /// How the NAT maps.
    pub mapping: Mapping,
    /// How it filters.
    pub filtering: Filtering,
    /// Whether a packet to our own public address comes back to us.
    pub hairpin: bool,
    /// Whether the server had a second IP, so that address-dependent
    /// behaviour could be told from endpoint-independent behaviour.
    pub other_ip_tested: bool,
}

impl NatBehaviour {
    /// The seed's type for this behaviour.
    pub fn nat_type(&self) -> NatType {
        match (self.mapping, self.filtering) {
            (Mapping::None, Filtering::EndpointIndependent) => NatType::None,
            (Mapping::AddressDependent | Mapping::AddressAndPortDependent, _) => NatType::Symmetric,
            (_, Filtering::EndpointIndependent) => NatType::FullCone,
            (_, Filtering::AddressDependent) => NatType::RestrictedCone,
            (_, Filtering::AddressAndPortDependent) => NatType::PortRestricted,
        }
    }
}

/// Why classification gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ClassifyError {
    /// The server never answered.
    #[error("no STUN answer from {0}: is the rendezvous running and reachable over UDP?")]
    Unreachable(SocketAddr),
    /// The server answered but offers no second address (not RFC 5780).
    #[error("{0} answers STUN but offers no second port or address to test the NAT against")]
    NoOtherAddress(SocketAddr),
    /// The server's other address did not answer, or answered wrongly.
    #[error("{0}'s other address did not answer; it cannot classify the NAT")]
    OtherSilent(SocketAddr),
}

#[derive(Clone, Copy, Debug, Default)]
enum Answer {
    #[default]
    Waiting,
    Mapped(SocketAddr),
    Silent,
}

#[derive(Clone, Copy, Debug, Default)]
struct Probe {
    tx: Option<TxId>,
    answer: Answer,
}

impl Probe {
    fn done(&self) -> bool {
        self.tx.is_none() || !matches!(self.answer, Answer::Waiting)
    }

    fn mapped(&self) -> Option<SocketAddr> {
        match self.answer {
            Answer::Mapped(a) => Some(a),
            _ => None,
        }
    }
}

/// The RFC 5780 tests, one Binding transaction each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    /// A → server: our public address, and the server's other address.
    First,
    /// A → the other port (or IP): does the mapping change?
    Second,
    /// A → the other IP and port (two-IP servers only).
    Third,
    /// A → our own public address: does it come back?
    Hairpin,
    /// B → server: the filtering socket is reachable at all.
    Reachable,
    /// B → server, answered from the other IP and port.
    ChangeBoth,
    /// B → server, answered from the other port.
    ChangePort,
}

impl Test {
    const ALL: [Test; 7] = [
        Test::First,
        Test::Second,
        Test::Third,
        Test::Hairpin,
        Test::Reachable,
        Test::ChangeBoth,
        Test::ChangePort,
    ];
}

/// Runs the RFC 5780 tests from two sockets the shell owns and reports a
/// [`NatBehaviour`].
#[derive(Debug)]
pub struct Classifier {
    client: BindingClient,
    server: SocketAddr,
    /// Socket A (mapping, hairpin) and socket B (filtering).
    mapping_socket: SocketAddr,
    filtering_socket: SocketAddr,
    other: Option<SocketAddr>,
    /// One Binding transaction per test, indexed by [`Test`].
    probes: [Probe; Test::ALL.len()],
    result: Option<Result<NatBehaviour, ClassifyError>>,
    reported: bool,
}

impl Classifier {
    /// Starts classifying: the first request goes out at once.
    /// `mapping_socket` and `filtering_socket` are two fresh sockets of
    /// this machine, bound to the address that routes to `server` (not a
    /// wildcard, so that "no NAT" can be seen).
    pub fn new(
        now: Instant,
        config: BindingConfig,
        rng: Rng,
        server: SocketAddr,
        mapping_socket: SocketAddr,
        filtering_socket: SocketAddr,
    ) -> Self {
        let mut c = Classifier {
            client: BindingClient::new(config, rng),
            server,
            mapping_socket,
            filtering_socket,
            other: None,
            probes: Default::default(),
            result: None,
            reported: false,
        };
        c.probes[Test::First as usize].tx = c
            .client
            .request(now, mapping_socket, server, Change::NONE)
            .ok();
        c
    }

    /// Offers a datagram received on one of the two sockets; returns
    /// whether it was consumed.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        let consumed = self.client.handle_datagram(local, from, datagram);
        self.progress(now);
        consumed
    }

    /// Retransmits, gives up on silent tests, and moves on.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.progress(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.client.poll_transmit()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        self.client.poll_timeout()
    }

    /// The outcome, once (then `None`).
    pub fn poll_result(&mut self) -> Option<Result<NatBehaviour, ClassifyError>> {
        if self.reported {
            return None;
        }
        let result = self.result.clone()?;
        self.reported = true;
        Some(result)
    }

    fn progress(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            let (tx, answer) = match event {
                BindingEvent::Mapped {
                    tx, mapped, other, ..
                } => {
                    if Some(tx) == self.probe(Test::First).tx {
                        // A server bound to a wildcard address cannot name
                        // its own IP; its other port is then on the IP we
                        // reached it at.
                        self.other = other.map(|o| stun::other_address(o, self.server));
                    }
                    (tx, Answer::Mapped(mapped))
                }
                BindingEvent::HairpinArrived { tx } => (tx, Answer::Mapped(self.mapping_socket)),
                BindingEvent::Failed { tx, .. } => (tx, Answer::Silent),
            };
            for probe in &mut self.probes {
                if probe.tx == Some(tx) {
                    probe.answer = answer;
                }
            }
        }
        if self.result.is_some() {
            return;
        }
        match (self.probe(Test::First).answer, self.other) {
            (Answer::Waiting, _) => {}
            (Answer::Silent, _) => self.result = Some(Err(ClassifyError::Unreachable(self.server))),
            (Answer::Mapped(_), None) => {
                self.result = Some(Err(ClassifyError::NoOtherAddress(self.server)))
            }
            (Answer::Mapped(public), Some(other)) => {
                if self.probe(Test::Second).tx.is_none() {
                    self.start_second_round(now, public, other);
                }
                if self.probes.iter().all(Probe::done) {
                    self.result = Some(self.conclude(public, other));
                }
            }
        }
        debug_assert!(self.result.is_some() || self.client.in_flight() > 0);
    }

    fn start_second_round(&mut self, now: Instant, public: SocketAddr, other: SocketAddr) {
        let (a, b, server) = (self.mapping_socket, self.filtering_socket, self.server);
        let other_ip = other.ip() != server.ip();
        let second_to = if other_ip {
            SocketAddr::new(other.ip(), server.port())
        } else {
            SocketAddr::new(server.ip(), other.port())
        };
        let c = &mut self.client;
        self.probes[Test::Second as usize].tx = c.request(now, a, second_to, Change::NONE).ok();
        if other_ip {
            self.probes[Test::Third as usize].tx = c.request(now, a, other, Change::NONE).ok();
        }
        self.probes[Test::Hairpin as usize].tx = c.hairpin(now, a, public).ok();
        self.probes[Test::Reachable as usize].tx = c.request(now, b, server, Change::NONE).ok();
        if other_ip {
            self.probes[Test::ChangeBoth as usize].tx =
                c.request(now, b, server, Change::IP_AND_PORT).ok();
        }
        self.probes[Test::ChangePort as usize].tx = c.request(now, b, server, Change::PORT).ok();
    }

    fn conclude(
        &self,
        public: SocketAddr,
        other: SocketAddr,
    ) -> Result<NatBehaviour, ClassifyError> {
        let other_ip_tested = self.probe(Test::Third).tx.is_some();
        let silent = || ClassifyError::OtherSilent(other);
        let m2 = self.probe(Test::Second).mapped().ok_or_else(silent)?;
        let mapping = if public == self.mapping_socket {
            Mapping::None
        } else if m2 == public {
            Mapping::EndpointIndependent
        } else if !other_ip_tested {
            // With one server IP the second test changed only the port.
            Mapping::AddressAndPortDependent
        } else if self.probe(Test::Third).mapped().ok_or_else(silent)? == m2 {
            Mapping::AddressDependent
        } else {
            Mapping::AddressAndPortDependent
        };
        if self.probe(Test::Reachable).mapped().is_none() {
            return Err(ClassifyError::Unreachable(self.server));
        }
        let filtering = if self.probe(Test::ChangeBoth).mapped().is_some() {
            Filtering::EndpointIndependent
        } else if self.probe(Test::ChangePort).mapped().is_some() {
            Filtering::AddressDependent
        } else {
            Filtering::AddressAndPortDependent
        };
        Ok(NatBehaviour {
            local: self.mapping_socket,
            public,
            mapping,
            filtering,
            hairpin: self.probe(Test::Hairpin).mapped().is_some(),
            other_ip_tested,
        })
    }

    fn probe(&self, test: Test) -> Probe {
        self.probes[test as usize]
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::None => "none (public address)",
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::AddressDependent => "address-dependent",
            Mapping::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

impl fmt::Display for Filtering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatType::None => "no NAT",
            NatType::FullCone => "full cone",
            NatType::RestrictedCone => "restricted cone",
            NatType::PortRestricted => "port-restricted cone",
            NatType::Symmetric => "symmetric",
            NatType::Unknown => "unknown",
        })
    }
}
