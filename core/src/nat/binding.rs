//! STUN Binding transactions (RFC 8489 §6.2.1): a request, its
//! retransmissions on a doubling timer, and its one outcome.
//!
//! The client names sockets by their local address and never owns them; a
//! transaction is sent from the socket the caller picks, which is how a
//! mapping is learned for the very socket that will later carry the
//! connection. Answers are matched by transaction id alone (96 random bits
//! from the seeded [`Rng`]), not by source, because RFC 5780 tests ask the
//! server to answer from another address.

use super::stun::{self, Change, Stun, TxId};
use crate::pair::Transmit;
use crate::{Instant, Rng};
use bytes::Bytes;
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

/// Transactions in flight at once; one classification needs seven.
pub const MAX_PENDING: usize = 64;

/// Retransmission timing (RFC 8489 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingConfig {
    /// The first retransmission timeout; it doubles after each send.
    pub rto: Duration,
    /// Requests sent in all (the RFC's Rc).
    pub requests: u32,
    /// After the last request, wait this many `rto`s for an answer (Rm).
    pub last_wait: u32,
}

impl Default for BindingConfig {
    /// The RFC's values: 500 ms, Rc = 7, Rm = 16, so a transaction gives
    /// up after 39.5 s.
    fn default() -> Self {
        BindingConfig {
            rto: Duration::from_millis(500),
            requests: 7,
            last_wait: 16,
        }
    }
}

impl BindingConfig {
    /// Quicker, for questions a person waits on (`nat-check`, a mount that
    /// asks a rendezvous): 250 ms, five requests, giving up after 5.75 s.
    pub fn interactive() -> Self {
        BindingConfig {
            rto: Duration::from_millis(250),
            requests: 5,
            last_wait: 8,
        }
    }

    /// How long a transaction lives when nothing answers.
    pub fn give_up_after(&self) -> Duration {
        let sends = self.requests.max(1);
        let doublings = (1u32 << (sends - 1).min(16)) - 1;
        self.rto * doublings + self.rto * self.last_wait
    }
}

/// Why a transaction could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum BindingError {
    /// [`MAX_PENDING`] transactions are in flight already.
    #[error("too many STUN transactions in flight")]
    TooMany,
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingEvent {
    /// The server answered.
    Mapped {
        /// The transaction.
        tx: TxId,
        /// Our socket.
        local: SocketAddr,
        /// Where the answer came from.
        from: SocketAddr,
        /// Our address as the server saw it.
        mapped: SocketAddr,
        /// The server's alternate address (RFC 5780), if offered.
        other: Option<SocketAddr>,
    },
    /// A hairpin probe (a request sent to our own public address) came
    /// back to the socket that sent it.
    HairpinArrived {
        /// The transaction.
        tx: TxId,
    },
    /// No answer within the configured retransmissions, or an error
    /// response.
    Failed {
        /// The transaction.
        tx: TxId,
        /// Where the requests went.
        server: SocketAddr,
        /// An error response arrived (rather than silence).
        refused: bool,
    },
}

/// Counters, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingStats {
    /// Requests sent, first sends and retransmissions.
    pub sent: u64,
    /// STUN datagrams that answered nothing in flight (late, duplicate or
    /// forged).
    pub stray: u64,
    /// Datagrams in STUN's range that did not parse.
    pub malformed: u64,
}

#[derive(Debug)]
struct Pending {
    local: SocketAddr,
    server: SocketAddr,
    request: Bytes,
    /// Requests sent so far.
    sent: u32,
    /// When to retransmit, or (after the last request) to give up.
    deadline: Instant,
    /// A hairpin probe: answered by the request itself arriving.
    hairpin: bool,
}

/// The Binding client: any number of concurrent transactions (bounded),
/// each on a socket the caller names.
#[derive(Debug)]
pub struct BindingClient {
    config: BindingConfig,
    rng: Rng,
    pending: BTreeMap<TxId, Pending>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<BindingEvent>,
    stats: BindingStats,
}

impl BindingClient {
    /// A client with no transactions.
    pub fn new(config: BindingConfig, rng: Rng) -> Self {
        BindingClient {
            config,
            rng,
            pending: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: BindingStats::default(),
        }
    }

    /// Asks `server`, from the socket bound to `local`, for our mapped
    /// address; `change` asks it to answer from elsewhere (RFC 5780).
    pub fn request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        server: SocketAddr,
        change: Change,
    ) -> Result<TxId, BindingError> {
        self.start(now, local, server, change, false)
    }

    /// Sends a request from `local` to our own public address `public`:
    /// it arrives back on `local` only if the NAT hairpins.
    pub fn hairpin(
        &mut self,
        now: Instant,
        local: SocketAddr,
        public: SocketAddr,
    ) -> Result<TxId, BindingError> {
        self.start(now, local, public, Change::NONE, true)
    }

    fn start(
        &mut self,
        now: Instant,
        local: SocketAddr,
        server: SocketAddr,
        change: Change,
        hairpin: bool,
    ) -> Result<TxId, BindingError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(BindingError::TooMany);
        }
        let tx = loop {
            let tx = TxId::draw(&mut self.rng);
            if !self.pending.contains_key(&tx) {
                break tx;
            }
        };
        let request = stun::binding_request(tx, change);
        self.pending.insert(
            tx,
            Pending {
                local,
                server,
                request,
                sent: 0,
                deadline: now,
                hairpin,
            },
        );
        self.send(now, tx);
        self.check();
        Ok(tx)
    }

    /// Forgets a transaction; nothing more is sent or reported for it.
    pub fn cancel(&mut self, tx: TxId) {
        self.pending.remove(&tx);
    }

    /// Offers a datagram that arrived on `local` from `from`. Returns
    /// whether it was a STUN message this client consumed; anything else
    /// (not STUN, or a request for someone else to answer) is left to the
    /// caller.
    pub fn handle_datagram(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        if !stun::looks_like_stun(datagram) {
            return false;
        }
        let consumed = match stun::decode(datagram) {
            Err(_) => {
                self.stats.malformed += 1;
                true
            }
            Ok(Stun::Request { tx, .. }) => match self.pending.get(&tx) {
                Some(p) if p.hairpin && p.local == local => {
                    self.pending.remove(&tx);
                    self.events.push_back(BindingEvent::HairpinArrived { tx });
                    true
                }
                _ => false,
            },
            Ok(Stun::Success {
                tx, mapped, other, ..
            }) => match self.pending.get(&tx) {
                Some(p) if !p.hairpin && p.local == local => {
                    self.pending.remove(&tx);
                    self.events.push_back(BindingEvent::Mapped {
                        tx,
                        local,
                        from,
                        mapped,
                        other,
                    });
                    true
                }
                _ => {
                    self.stats.stray += 1;
                    true
                }
            },
            Ok(Stun::Error { tx }) => {
                match self.pending.remove(&tx) {
                    Some(p) if p.local == local => self.events.push_back(BindingEvent::Failed {
                        tx,
                        server: p.server,
                        refused: true,
                    }),
                    Some(p) => {
                        // Another socket's transaction: not ours to end.
                        self.pending.insert(tx, p);
                        self.stats.stray += 1;
                    }
                    None => self.stats.stray += 1,
                }
                true
            }
            Ok(Stun::Other) => false,
        };
        self.check();
        consumed
    }

    /// Retransmits and gives up as the timers say.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TxId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(tx, _)| *tx)
            .collect();
        for tx in due {
            self.send(now, tx);
        }
        self.check();
    }

    /// Sends the next request of `tx`, or ends it after the last one.
    fn send(&mut self, now: Instant, tx: TxId) {
        let Some(p) = self.pending.get_mut(&tx) else {
            return;
        };
        if p.sent >= self.config.requests.max(1) {
            if let Some(p) = self.pending.remove(&tx) {
                // For a hairpin probe, silence means the NAT does not
                // hairpin; for a request, that the server is unreachable.
                self.events.push_back(BindingEvent::Failed {
                    tx,
                    server: p.server,
                    refused: false,
                });
            }
            return;
        }
        p.sent += 1;
        let wait = if p.sent == self.config.requests.max(1) {
            self.config.rto * self.config.last_wait
        } else {
            self.config.rto * (1u32 << (p.sent - 1).min(16))
        };
        p.deadline = now + wait;
        self.stats.sent += 1;
        self.transmits.push_back(Transmit {
            local: p.local,
            remote: p.server,
            payload: p.request.clone(),
        });
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished transaction.
    pub fn poll_event(&mut self) -> Option<BindingEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Transactions in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Counters.
    pub fn stats(&self) -> BindingStats {
        self.stats
    }

    /// Postconditions of every input: bounded state, and every
    /// transaction in flight has been sent and has a deadline.
    fn check(&self) {
        debug_assert!(self.pending.len() <= MAX_PENDING);
        // Each transaction queues at most one datagram per input, and
        // events at most one per transaction ever started; a caller that
        // never drains is a bug the bounds make visible.
        debug_assert!(self.pending.values().all(|p| p.sent >= 1));
        debug_assert!(
            self.pending
                .values()
                .all(|p| p.sent <= self.config.requests.max(1))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn drain(client: &mut BindingClient) -> Vec<Transmit> {
        core::iter::from_fn(|| client.poll_transmit()).collect()
    }

    #[test]
    fn retransmissions_follow_rfc_8489() {
        let mut c = BindingClient::new(BindingConfig::default(), Rng::from_u64(1));
        let (local, server) = (addr("10.0.0.2:5000"), addr("192.0.2.1:3478"));
        let tx = c.request(at(0), local, server, Change::NONE).expect("room");
        let mut sends = vec![0];
        drain(&mut c);
        while let Some(deadline) = c.poll_timeout() {
            c.handle_timeout(deadline);
            if !drain(&mut c).is_empty() {
                sends.push(deadline.saturating_duration_since(at(0)).as_millis());
            }
            if c.in_flight() == 0 {
                assert_eq!(deadline, at(39_500), "gives up after Rm × RTO");
            }
        }
        // RFC 8489 §6.2.1: "0 ms, 500 ms, 1500 ms, 3500 ms, 7500 ms,
        // 15500 ms, and 31500 ms", then failure at 39500 ms.
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(
            c.poll_event(),
            Some(BindingEvent::Failed {
                tx,
                server,
                refused: false
            })
        );
        assert_eq!(
            BindingConfig::default().give_up_after(),
            Duration::from_millis(39_500)
        );
    }

    #[test]
    fn an_answer_reports_the_mapping_once() {
        let mut c = BindingClient::new(BindingConfig::default(), Rng::from_u64(2));
        let (local, server) = (addr("10.0.0.2:5000"), addr("192.0.2.1:3478"));
        let tx = c.request(at(0), local, server, Change::NONE).expect("room");
        let sent = drain(&mut c);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            stun::decode(&sent[0].payload),
            Ok(Stun::Request {
                tx,
                change: Change::NONE,
                response_port: None
            })
        );
        let mapped = addr("203.0.113.5:61000");
        let answer = stun::binding_success(tx, mapped, None, server);
        assert!(c.handle_datagram(local, server, &answer));
        assert!(
            matches!(c.poll_event(), Some(BindingEvent::Mapped { mapped: m, .. }) if m == mapped)
        );
        // The duplicate is stray, not a second event.
        assert!(c.handle_datagram(local, server, &answer));
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.stats().stray, 1);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn an_answer_on_another_socket_or_with_another_id_is_ignored() {
        let mut c = BindingClient::new(BindingConfig::default(), Rng::from_u64(3));
        let (local, server) = (addr("10.0.0.2:5000"), addr("192.0.2.1:3478"));
        let tx = c.request(at(0), local, server, Change::NONE).expect("room");
        let mapped = addr("203.0.113.5:61000");
        let forged = stun::binding_success(TxId::new(tx.bits() ^ 1), mapped, None, server);
        assert!(c.handle_datagram(local, server, &forged));
        let elsewhere = stun::binding_success(tx, mapped, None, server);
        assert!(c.handle_datagram(addr("10.0.0.2:5001"), server, &elsewhere));
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.in_flight(), 1);
        assert_eq!(c.stats().stray, 2);
    }

    #[test]
    fn a_hairpin_probe_is_answered_by_its_own_request() {
        let mut c = BindingClient::new(BindingConfig::interactive(), Rng::from_u64(4));
        let local = addr("10.0.0.2:5000");
        let public = addr("203.0.113.5:61000");
        let tx = c.hairpin(at(0), local, public).expect("room");
        let sent = drain(&mut c);
        assert_eq!(sent[0].remote, public);
        assert!(c.handle_datagram(local, public, &sent[0].payload));
        assert_eq!(c.poll_event(), Some(BindingEvent::HairpinArrived { tx }));
        // Someone else's request is not ours to consume.
        let other = stun::binding_request(TxId::new(5), Change::NONE);
        assert!(!c.handle_datagram(local, public, &other));
    }

    #[test]
    fn the_same_seed_sends_the_same_bytes() {
        let run = |seed| {
            let mut c = BindingClient::new(BindingConfig::default(), Rng::from_u64(seed));
            c.request(
                at(0),
                addr("10.0.0.2:5000"),
                addr("192.0.2.1:3478"),
                Change::PORT,
            )
            .expect("room");
            drain(&mut c)
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn transactions_are_bounded() {
        let mut c = BindingClient::new(BindingConfig::default(), Rng::from_u64(5));
        for _ in 0..MAX_PENDING {
            c.request(
                at(0),
                addr("10.0.0.2:5000"),
                addr("192.0.2.1:3478"),
                Change::NONE,
            )
            .expect("room");
        }
        assert_eq!(
            c.request(
                at(0),
                addr("10.0.0.2:5000"),
                addr("192.0.2.1:3478"),
                Change::NONE
            ),
            Err(BindingError::TooMany)
        );
    }
}
