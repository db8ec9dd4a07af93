//! A TURN client over UDP (RFC 8656), sans-IO.
//!
//! One [`TurnClient`] holds one allocation on one TURN server, from one
//! local socket: Allocate with long-term credentials (the first request
//! goes without, the server answers 401 with its realm and a nonce, the
//! request is repeated signed; 438 Stale Nonce takes the new nonce and
//! repeats it again), Refresh before the allocation's lifetime runs out,
//! permissions per peer IP (CreatePermission: whoever sends from that IP
//! is relayed to us, at whatever port, which is how a peer behind a
//! symmetric NAT is first heard from) and channels per peer address
//! (ChannelBind), each renewed every four minutes (permissions last five,
//! channels ten). Data to a bound peer goes as ChannelData (4 bytes of
//! header), to a permitted one in a Send indication; what the server
//! relays arrives as either, checked to come from the server and from a
//! peer we allowed.
//!
//! Built on the `stun-types`/`turn-types` codec rather than
//! `turn-client-proto`, whose client draws transaction ids from the thread
//! RNG: here every id comes from the caller's seeded [`Rng`], so a seed
//! replays byte for byte. Requests are retransmitted on RFC 8489's timer
//! ([`BindingConfig`]).

use super::credentials::TurnCredentials;
use crate::nat::binding::BindingConfig;
use crate::nat::stun::{self, TxId};
use crate::pair::Transmit;
use crate::{Instant, Rng};
use bytes::Bytes;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;
use stun_types::attribute::{ErrorCode, Nonce, Realm, Username, XorMappedAddress};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageType, MessageWriteExt, MessageWriteVec, Method,
};
use thiserror::Error;
use turn_types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::channel::ChannelData;
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

/// The allocation lifetime asked for (the server may grant less).
const LIFETIME: Duration = Duration::from_secs(600);
/// A refresh goes out this long before the allocation would expire.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// Channel bindings (and with them permissions, which last 300 s) are
/// renewed this often.
const CHANNEL_REFRESH: Duration = Duration::from_secs(240);
/// Channel numbers (RFC 8656 §12: 0x4000 through 0x4FFF).
const FIRST_CHANNEL: u16 = 0x4000;
const LAST_CHANNEL: u16 = 0x4fff;
/// Peer IPs permitted, and peer addresses bound to channels, at most
/// (each).
pub const MAX_PEERS: usize = 64;
/// Stale-nonce answers in a row after which a request gives up.
const MAX_STALE: u8 = 3;

/// Why an allocation failed or ended.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TurnError {
    /// Nothing came back from the server.
    #[error("the TURN server {0} does not answer")]
    Unreachable(SocketAddr),
    /// The server refused the credentials even with its own realm and
    /// nonce: wrong secret, or expired.
    #[error("the TURN server refused the credentials (expired, or a secret it does not share)")]
    Unauthorized,
    /// Another error response.
    #[error("the TURN server refused: {code} {reason}")]
    Refused {
        /// The STUN error code.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A refresh failed: the allocation is gone.
    #[error("the TURN allocation was lost")]
    Lost,
}

/// What a [`TurnClient`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: peers reach us at `relayed`.
    Allocated {
        /// The relayed transport address.
        relayed: SocketAddr,
        /// Our address as the server saw it.
        mapped: Option<SocketAddr>,
    },
    /// A channel to `peer` is bound: data to and from it is framed with
    /// four bytes instead of a whole indication.
    Bound {
        /// The peer.
        peer: SocketAddr,
    },
    /// The allocation failed, or ended.
    Failed(TurnError),
}

/// A datagram a peer sent us through the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relayed {
    /// The peer's address (as the TURN server sees it).
    pub peer: SocketAddr,
    /// The datagram.
    pub data: Bytes,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Requests sent, retransmissions included.
    pub requests_sent: u64,
    /// Datagrams from the server that were dropped: unparsable, an answer
    /// to nothing, a response whose MESSAGE-INTEGRITY does not verify, or
    /// data from a peer we have no channel with.
    pub dropped: u64,
    /// Datagrams relayed to us.
    pub relayed_in: u64,
    /// Datagrams we sent through the relay.
    pub relayed_out: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    ChannelBind { channel: u16 },
    CreatePermission { ip: IpAddr },
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    tx: TxId,
    payload: Bytes,
    sends: u32,
    rto: Duration,
    next: Instant,
    stale: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated {
        relayed: SocketAddr,
        expires: Instant,
    },
    /// Released (Refresh with lifetime 0 sent) or failed.
    Over,
}

#[derive(Clone, Copy, Debug)]
struct Permission {
    ip: IpAddr,
    installed: bool,
    /// When it is renewed next (while installed).
    renew: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    peer: SocketAddr,
    number: u16,
    bound: bool,
    /// When the binding is renewed next (while bound).
    renew: Instant,
}

/// One allocation on a TURN server, and its channels.
#[derive(Debug)]
pub struct TurnClient {
    timing: BindingConfig,
    local: SocketAddr,
    server: SocketAddr,
    credentials: TurnCredentials,
    rng: Rng,
    /// The server's realm and current nonce, once it named them.
    realm: Option<(String, String)>,
    state: State,
    pending: Vec<Pending>,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TurnEvent>,
    stats: TurnStats,
}

impl TurnClient {
    /// Asks `server`, from our socket `local`, for an allocation.
    pub fn new(
        now: Instant,
        timing: BindingConfig,
        local: SocketAddr,
        server: SocketAddr,
        credentials: TurnCredentials,
        rng: Rng,
    ) -> Self {
        let mut c = TurnClient {
            timing,
            local,
            server,
            credentials,
            rng,
            realm: None,
            state: State::Allocating,
            pending: Vec::new(),
            permissions: Vec::new(),
            channels: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TurnStats::default(),
        };
        c.start(now, Kind::Allocate);
        c
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Allocated { relayed, .. } => Some(relayed),
            State::Allocating | State::Over => None,
        }
    }

    /// The socket the allocation is held from.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The TURN server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The Unix time (seconds) the credentials expire at, if they say:
    /// the server refuses the allocation's next refresh after it, so a
    /// long-lived user allocates anew before.
    pub fn credentials_expiry(&self) -> Option<u64> {
        self.credentials.expiry()
    }

    /// Counters.
    pub fn stats(&self) -> TurnStats {
        self.stats
    }

    /// Lets whoever sends from `ip` reach us through the relay, and us
    /// them (CreatePermission; asked before the allocation exists, it
    /// waits). Returns false if [`MAX_PEERS`] IPs are permitted already or
    /// the allocation is over.
    pub fn permit(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.permissions.iter().any(|p| p.ip == ip) {
            return true;
        }
        if self.permissions.len() >= MAX_PEERS || self.state == State::Over {
            return false;
        }
        self.permissions.push(Permission {
            ip,
            installed: false,
            renew: now,
        });
        if matches!(self.state, State::Allocated { .. }) {
            self.start(now, Kind::CreatePermission { ip });
        }
        self.check();
        true
    }

    /// Binds a channel to `peer` (its IP permitted too): what we send it
    /// and it sends us then travels with a 4-byte header. Returns false if
    /// [`MAX_PEERS`] channels are bound already or the allocation is over.
    pub fn bind(&mut self, now: Instant, peer: SocketAddr) -> bool {
        if self.channels.iter().any(|c| c.peer == peer) {
            return true;
        }
        if self.channels.len() >= MAX_PEERS || !self.permit(now, peer.ip()) {
            return false;
        }
        let number = FIRST_CHANNEL + u16::try_from(self.channels.len()).unwrap_or(0);
        debug_assert!(number <= LAST_CHANNEL);
        self.channels.push(Channel {
            peer,
            number,
            bound: false,
            renew: now,
        });
        if matches!(self.state, State::Allocated { .. }) {
            self.start(now, Kind::ChannelBind { channel: number });
        }
        self.check();
        true
    }

    fn permitted(&self, ip: IpAddr) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.installed)
    }

    /// Wraps `data` for `peer`: a ChannelData message if a channel to it
    /// is bound, a Send indication if its IP is permitted. `None` if the
    /// allocation is not ready or `peer` not allowed (yet).
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) -> Option<Transmit> {
        if !matches!(self.state, State::Allocated { .. }) {
            return None;
        }
        let channel = self.channels.iter().find(|c| c.peer == peer && c.bound);
        let payload = if let Some(channel) = channel {
            // RFC 8656 §12.4: channel number, length, data; over UDP the
            // padding to four bytes may be left out.
            let len = u16::try_from(data.len()).ok()?;
            let mut buf = Vec::with_capacity(4 + data.len());
            buf.extend_from_slice(&channel.number.to_be_bytes());
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(data);
            Bytes::from(buf)
        } else if self.permitted(peer.ip()) {
            let tx = TxId::draw(&mut self.rng);
            let mut msg = Message::builder(
                MessageType::from_class_method(MessageClass::Indication, SEND),
                tx.stun(),
                MessageWriteVec::new(),
            );
            stun::add(&mut msg, &XorPeerAddress::new(peer, tx.stun()));
            stun::add(&mut msg, &Data::new(data));
            stun::finish(msg)
        } else {
            return None;
        };
        self.stats.relayed_out += 1;
        Some(Transmit {
            local: self.local,
            remote: self.server,
            payload,
        })
    }

    /// Offers a datagram that arrived on our socket from `from`. Returns
    /// what a peer sent through the relay, if it was that; a response
    /// from the server is consumed.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Relayed> {
        if from != self.server {
            return None;
        }
        let relayed = if data.first().is_some_and(|b| (0x40..=0x4f).contains(b)) {
            self.channel_data(data)
        } else {
            self.message(now, data)
        };
        self.check();
        relayed
    }

    fn channel_data(&mut self, data: &[u8]) -> Option<Relayed> {
        let Ok(cd) = ChannelData::parse(data) else {
            self.stats.dropped += 1;
            return None;
        };
        let Some(peer) = self
            .channels
            .iter()
            .find(|c| c.bound && c.number == cd.id())
            .map(|c| c.peer)
        else {
            self.stats.dropped += 1;
            return None;
        };
        self.stats.relayed_in += 1;
        Some(Relayed {
            peer,
            data: Bytes::copy_from_slice(cd.data()),
        })
    }

    fn message(&mut self, now: Instant, data: &[u8]) -> Option<Relayed> {
        let Ok(msg) = Message::from_bytes(data) else {
            self.stats.dropped += 1;
            return None;
        };
        if msg.class() == MessageClass::Indication && msg.has_method(DATA) {
            let peer = msg
                .attribute::<XorPeerAddress>()
                .ok()
                .map(|a| a.addr(msg.transaction_id()));
            let payload = msg.attribute::<Data>().ok().map(|d| d.data().to_vec());
            return match (peer, payload) {
                (Some(peer), Some(payload)) if self.permitted(peer.ip()) => {
                    self.stats.relayed_in += 1;
                    Some(Relayed {
                        peer,
                        data: Bytes::from(payload),
                    })
                }
                _ => {
                    self.stats.dropped += 1;
                    None
                }
            };
        }
        let tx = TxId::new(msg.transaction_id().into());
        let Some(i) = self.pending.iter().position(|p| p.tx == tx) else {
            self.stats.dropped += 1;
            return None;
        };
        if !msg.is_response() {
            self.stats.dropped += 1;
            return None;
        }
        // A success to a signed request must be signed with the same key:
        // only the server that knows our credentials could have sent it.
        if msg.class() == MessageClass::Success
            && let Some(key) = self.key()
            && !matches!(msg.validate_integrity(&key), Ok(IntegrityAlgorithm::Sha1))
        {
            self.stats.dropped += 1;
            return None;
        }
        let pending = self.pending.swap_remove(i);
        if msg.class() == MessageClass::Success {
            self.succeeded(now, pending.kind, &msg);
        } else {
            self.error(now, pending, &msg);
        }
        None
    }

    fn succeeded(&mut self, now: Instant, kind: Kind, msg: &Message<'_>) {
        let tx = msg.transaction_id();
        match kind {
            Kind::Allocate => {
                let Ok(relayed) = msg.attribute::<XorRelayedAddress>() else {
                    return self.fail(TurnError::Refused {
                        code: 0,
                        reason: "an allocation without a relayed address".into(),
                    });
                };
                let relayed = relayed.addr(tx);
                let mapped = msg.attribute::<XorMappedAddress>().ok().map(|a| a.addr(tx));
                self.state = State::Allocated {
                    relayed,
                    expires: now + granted(msg),
                };
                self.events
                    .push_back(TurnEvent::Allocated { relayed, mapped });
                let ips: Vec<IpAddr> = self.permissions.iter().map(|p| p.ip).collect();
                for ip in ips {
                    self.start(now, Kind::CreatePermission { ip });
                }
                let waiting: Vec<u16> = self.channels.iter().map(|c| c.number).collect();
                for channel in waiting {
                    self.start(now, Kind::ChannelBind { channel });
                }
            }
            Kind::Refresh { lifetime: 0 } => {}
            Kind::Refresh { .. } => {
                if let State::Allocated { relayed, .. } = self.state {
                    self.state = State::Allocated {
                        relayed,
                        expires: now + granted(msg),
                    };
                }
            }
            Kind::ChannelBind { channel } => {
                if let Some(c) = self.channels.iter_mut().find(|c| c.number == channel) {
                    let first = !c.bound;
                    c.bound = true;
                    c.renew = now + CHANNEL_REFRESH;
                    if first {
                        let peer = c.peer;
                        self.events.push_back(TurnEvent::Bound { peer });
                    }
                }
            }
            Kind::CreatePermission { ip } => {
                if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
                    p.installed = true;
                    p.renew = now + CHANNEL_REFRESH;
                }
            }
        }
    }

    fn error(&mut self, now: Instant, pending: Pending, msg: &Message<'_>) {
        let (code, reason) = msg
            .attribute::<ErrorCode>()
            .map(|e| (e.code(), e.reason().to_owned()))
            .unwrap_or((0, String::new()));
        let realm = msg.attribute::<Realm>().ok().map(|r| r.realm().to_owned());
        let nonce = msg.attribute::<Nonce>().ok().map(|n| n.nonce().to_owned());
        let signed = self.realm.is_some();
        match (code, realm, nonce) {
            // The first, unsigned request: the server names its realm.
            (ErrorCode::UNAUTHORIZED, Some(realm), Some(nonce)) if !signed => {
                self.realm = Some((realm, nonce));
                self.start(now, pending.kind);
            }
            (ErrorCode::STALE_NONCE, _, Some(nonce)) if pending.stale < MAX_STALE => {
                if let Some((_, current)) = self.realm.as_mut() {
                    *current = nonce;
                }
                let stale = pending.stale + 1;
                self.start(now, pending.kind);
                if let Some(p) = self.pending.last_mut() {
                    p.stale = stale;
                }
            }
            (ErrorCode::UNAUTHORIZED, ..) => self.fail(TurnError::Unauthorized),
            _ => match pending.kind {
                Kind::Allocate => self.fail(TurnError::Refused { code, reason }),
                Kind::Refresh { lifetime: 0 } => {}
                Kind::Refresh { .. } => self.fail(TurnError::Lost),
                // The peer stays unbound (or unpermitted); data to it is
                // not relayed.
                Kind::ChannelBind { .. } | Kind::CreatePermission { .. } => self.stats.dropped += 1,
            },
        }
    }

    /// Releases the allocation (Refresh with lifetime 0, sent once).
    pub fn close(&mut self, now: Instant) {
        if matches!(self.state, State::Allocated { .. }) {
            self.pending.clear();
            self.start(now, Kind::Refresh { lifetime: 0 });
            // Sent once: nobody waits for the answer.
            self.pending.clear();
        }
        self.state = State::Over;
        self.check();
    }

    /// Retransmits, refreshes, gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut gave_up = None;
        for p in &mut self.pending {
            if p.next > now {
                continue;
            }
            if p.sends >= self.timing.requests {
                gave_up = Some(p.kind);
                continue;
            }
            p.sends += 1;
            p.rto = p.rto.saturating_mul(2);
            p.next = now
                + if p.sends >= self.timing.requests {
                    self.timing.rto * self.timing.last_wait
                } else {
                    p.rto
                };
            self.stats.requests_sent += 1;
            self.transmits.push_back(Transmit {
                local: self.local,
                remote: self.server,
                payload: p.payload.clone(),
            });
        }
        if let Some(kind) = gave_up {
            self.pending
                .retain(|p| p.next > now || p.sends < self.timing.requests);
            match kind {
                Kind::Allocate => self.fail(TurnError::Unreachable(self.server)),
                Kind::Refresh { .. } => self.fail(TurnError::Lost),
                Kind::ChannelBind { .. } | Kind::CreatePermission { .. } => {}
            }
        }
        if let State::Allocated { expires, .. } = self.state {
            let refreshing = self
                .pending
                .iter()
                .any(|p| matches!(p.kind, Kind::Refresh { .. }));
            if !refreshing && now + REFRESH_AHEAD >= expires {
                self.start(
                    now,
                    Kind::Refresh {
                        lifetime: secs(LIFETIME),
                    },
                );
            }
            let due: Vec<u16> = self
                .channels
                .iter()
                .filter(|c| c.bound && c.renew <= now)
                .map(|c| c.number)
                .collect();
            let due = due.into_iter().map(|channel| Kind::ChannelBind { channel });
            let ips: Vec<Kind> = self
                .permissions
                .iter()
                .filter(|p| p.installed && p.renew <= now)
                .map(|p| Kind::CreatePermission { ip: p.ip })
                .collect();
            for kind in due.chain(ips) {
                if !self.pending.iter().any(|p| p.kind == kind) {
                    self.start(now, kind);
                }
            }
        }
        self.check();
    }

    /// The next datagram to send (to the server, from our socket).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self.pending.iter().map(|p| p.next).min();
        let renew = match self.state {
            State::Allocated { expires, .. } => {
                let refresh = expires
                    .as_nanos()
                    .saturating_sub(u64::try_from(REFRESH_AHEAD.as_nanos()).unwrap_or(u64::MAX));
                let channels = self.channels.iter().filter(|c| c.bound).map(|c| c.renew);
                let ips = self
                    .permissions
                    .iter()
                    .filter(|p| p.installed)
                    .map(|p| p.renew);
                channels
                    .chain(ips)
                    .chain([Instant::from_nanos(refresh)])
                    .min()
            }
            State::Allocating | State::Over => None,
        };
        [retransmit, renew].into_iter().flatten().min()
    }

    fn fail(&mut self, why: TurnError) {
        if self.state == State::Over {
            return;
        }
        self.state = State::Over;
        self.pending.clear();
        self.events.push_back(TurnEvent::Failed(why));
    }

    /// The long-term key, once the server named its realm.
    fn key(&self) -> Option<MessageIntegrityCredentials> {
        let (realm, _) = self.realm.as_ref()?;
        Some(
            LongTermKeyCredentials::new(
                self.credentials.username.clone(),
                self.credentials.password.clone(),
                realm.clone(),
            )
            .into(),
        )
    }

    /// Builds and sends a request of `kind` with a fresh transaction id.
    fn start(&mut self, now: Instant, kind: Kind) {
        let tx = TxId::draw(&mut self.rng);
        let method: Method = match kind {
            Kind::Allocate => ALLOCATE,
            Kind::Refresh { .. } => REFRESH,
            Kind::ChannelBind { .. } => CHANNEL_BIND,
            Kind::CreatePermission { .. } => CREATE_PERMISSION,
        };
        let mut msg = Message::builder(
            MessageType::from_class_method(MessageClass::Request, method),
            tx.stun(),
            MessageWriteVec::new(),
        );
        match kind {
            Kind::Allocate => {
                stun::add(&mut msg, &RequestedTransport::new(RequestedTransport::UDP));
                stun::add(&mut msg, &Lifetime::new(secs(LIFETIME)));
            }
            Kind::Refresh { lifetime } => stun::add(&mut msg, &Lifetime::new(lifetime)),
            Kind::ChannelBind { channel } => {
                let Some(peer) = self
                    .channels
                    .iter()
                    .find(|c| c.number == channel)
                    .map(|c| c.peer)
                else {
                    return;
                };
                stun::add(&mut msg, &ChannelNumber::new(channel));
                stun::add(&mut msg, &XorPeerAddress::new(peer, tx.stun()));
            }
            Kind::CreatePermission { ip } => {
                // The port of XOR-PEER-ADDRESS is ignored (RFC 8656 §9).
                let peer = SocketAddr::new(ip, 0);
                stun::add(&mut msg, &XorPeerAddress::new(peer, tx.stun()));
            }
        }
        if let (Some((realm, nonce)), Some(key)) = (self.realm.clone(), self.key()) {
            // Attribute values the server sent us, echoed back: a refusal
            // (too long) leaves the request unsigned and the server
            // answers 401, which ends the allocation with a clear error.
            if let (Ok(user), Ok(realm), Ok(nonce)) = (
                Username::new(&self.credentials.username),
                Realm::new(&realm),
                Nonce::new(&nonce),
            ) {
                stun::add(&mut msg, &user);
                stun::add(&mut msg, &realm);
                stun::add(&mut msg, &nonce);
                let signed = msg.add_message_integrity(&key, IntegrityAlgorithm::Sha1);
                debug_assert!(signed.is_ok(), "integrity refused: {signed:?}");
            }
        }
        let payload = stun::finish(msg);
        self.stats.requests_sent += 1;
        self.transmits.push_back(Transmit {
            local: self.local,
            remote: self.server,
            payload: payload.clone(),
        });
        self.pending.push(Pending {
            kind,
            tx,
            payload,
            sends: 1,
            rto: self.timing.rto,
            next: now + self.timing.rto,
            stale: 0,
        });
    }

    /// Postconditions of every input.
    fn check(&self) {
        debug_assert!(self.channels.len() <= MAX_PEERS);
        debug_assert!(self.permissions.len() <= MAX_PEERS);
        debug_assert!(
            self.pending.len() <= 2 + self.channels.len() + self.permissions.len(),
            "one request per purpose"
        );
        debug_assert!(
            self.channels
                .iter()
                .all(|c| self.permissions.iter().any(|p| p.ip == c.peer.ip())),
            "a channel's IP is permitted"
        );
        debug_assert!(self.state != State::Over || self.pending.is_empty());
        debug_assert!(
            self.channels
                .iter()
                .all(|c| (FIRST_CHANNEL..=LAST_CHANNEL).contains(&c.number))
        );
    }
}

/// The lifetime a success response grants (RFC 8656: LIFETIME; absent,
/// the default ten minutes).
fn granted(msg: &Message<'_>) -> Duration {
    msg.attribute::<Lifetime>()
        .map_or(LIFETIME, |l| Duration::from_secs(u64::from(l.seconds())))
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}
