//! A TURN server, modelled for simulations and tests: the parts of RFC
//! 8656 a [`TurnClient`](super::TurnClient) uses (Allocate behind the 401
//! realm/nonce exchange with credentials minted from a shared secret,
//! Refresh, CreatePermission, ChannelBind, Send and Data indications,
//! ChannelData), with permissions by peer IP as coturn keeps them.
//! Lifetimes are not enforced: a simulation run is shorter than any.

use super::credentials::TurnCredentials;
use crate::nat::stun;
use crate::pair::Transmit;
use bytes::Bytes;
use core::net::{IpAddr, SocketAddr};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use stun_types::attribute::{ErrorCode, Nonce, Realm, Username, XorMappedAddress};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageType, MessageWriteExt, MessageWriteVec, TransactionId,
};
use turn_types::attribute::{ChannelNumber, Data, Lifetime, XorPeerAddress, XorRelayedAddress};
use turn_types::channel::ChannelData;
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

const REALM: &str = "model";
const NONCE: &str = "model-nonce";

#[derive(Debug, Default)]
struct Allocation {
    relayed: Option<SocketAddr>,
    permissions: BTreeSet<IpAddr>,
    channels: BTreeMap<u16, SocketAddr>,
}

/// The modelled server.
#[derive(Debug)]
pub struct TurnServerModel {
    addr: SocketAddr,
    secret: Vec<u8>,
    next_port: u16,
    /// By client address (the 5-tuple's client side).
    allocations: BTreeMap<SocketAddr, Allocation>,
    out: VecDeque<Transmit>,
    /// Datagrams relayed (either way).
    pub relayed: u64,
}

impl TurnServerModel {
    /// A server at `addr` accepting credentials minted with `secret`;
    /// relayed addresses are on `addr`'s IP, from port 50000.
    pub fn new(addr: SocketAddr, secret: &[u8]) -> Self {
        TurnServerModel {
            addr,
            secret: secret.to_vec(),
            next_port: 50000,
            allocations: BTreeMap::new(),
            out: VecDeque::new(),
            relayed: 0,
        }
    }

    /// Where clients reach it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether `addr` is one of its relayed addresses.
    pub fn relays(&self, addr: SocketAddr) -> bool {
        self.allocations.values().any(|a| a.relayed == Some(addr))
    }

    /// The next datagram to send: `local` is the server's address or a
    /// relayed one.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// A datagram from `from` to a relayed address `to`: relayed to the
    /// allocation's client if `from`'s IP is permitted.
    pub fn handle_peer(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let Some((client, a)) = self.allocations.iter().find(|(_, a)| a.relayed == Some(to)) else {
            return;
        };
        if !a.permissions.contains(&from.ip()) {
            return;
        }
        let payload = match a.channels.iter().find(|(_, p)| **p == from) {
            Some((channel, _)) => {
                let mut v = channel.to_be_bytes().to_vec();
                v.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
                v.extend_from_slice(data);
                Bytes::from(v)
            }
            None => {
                let tx = TransactionId::from(0x5eed_u128);
                let mut msg = Message::builder(
                    MessageType::from_class_method(MessageClass::Indication, DATA),
                    tx,
                    MessageWriteVec::new(),
                );
                stun::add(&mut msg, &XorPeerAddress::new(from, tx));
                stun::add(&mut msg, &Data::new(data));
                stun::finish(msg)
            }
        };
        let client = *client;
        self.relayed += 1;
        self.out.push_back(Transmit {
            local: self.addr,
            remote: client,
            payload,
        });
    }

    /// A datagram from a client to the server's address.
    pub fn handle_client(&mut self, from: SocketAddr, data: &[u8]) {
        if data.first().is_some_and(|b| (0x40..=0x4f).contains(b)) {
            let Ok(cd) = ChannelData::parse(data) else {
                return;
            };
            let Some(a) = self.allocations.get(&from) else {
                return;
            };
            if let (Some(relayed), Some(peer)) = (a.relayed, a.channels.get(&cd.id()).copied()) {
                self.relayed += 1;
                self.out.push_back(Transmit {
                    local: relayed,
                    remote: peer,
                    payload: Bytes::copy_from_slice(cd.data()),
                });
            }
            return;
        }
        let Ok(msg) = Message::from_bytes(data) else {
            return;
        };
        let tx = msg.transaction_id();
        if msg.class() == MessageClass::Indication && msg.has_method(SEND) {
            let peer = msg.attribute::<XorPeerAddress>().ok().map(|p| p.addr(tx));
            let payload = msg.attribute::<Data>().ok().map(|d| d.data().to_vec());
            let Some(a) = self.allocations.get(&from) else {
                return;
            };
            if let (Some(relayed), Some(peer), Some(payload)) = (a.relayed, peer, payload)
                && a.permissions.contains(&peer.ip())
            {
                self.relayed += 1;
                self.out.push_back(Transmit {
                    local: relayed,
                    remote: peer,
                    payload: Bytes::from(payload),
                });
            }
            return;
        }
        if msg.class() != MessageClass::Request {
            return;
        }
        let Some(key) = self.key_of(&msg) else {
            return self.answer_error(&msg, from, ErrorCode::UNAUTHORIZED);
        };
        if !matches!(msg.validate_integrity(&key), Ok(IntegrityAlgorithm::Sha1)) {
            return self.answer_error(&msg, from, ErrorCode::UNAUTHORIZED);
        }
        let method = msg.method();
        if method == ALLOCATE {
            let relayed = SocketAddr::new(self.addr.ip(), self.next_port);
            let a = self.allocations.entry(from).or_default();
            if a.relayed.is_none() {
                a.relayed = Some(relayed);
                self.next_port = self.next_port.wrapping_add(1);
            }
        } else if method == CREATE_PERMISSION || method == CHANNEL_BIND {
            let Some(peer) = msg.attribute::<XorPeerAddress>().ok().map(|p| p.addr(tx)) else {
                return self.answer_error(&msg, from, ErrorCode::BAD_REQUEST);
            };
            let Some(a) = self.allocations.get_mut(&from) else {
                return self.answer_error(&msg, from, 437);
            };
            a.permissions.insert(peer.ip());
            if method == CHANNEL_BIND {
                let Ok(channel) = msg.attribute::<ChannelNumber>() else {
                    return self.answer_error(&msg, from, ErrorCode::BAD_REQUEST);
                };
                a.channels.insert(channel.channel(), peer);
            }
        } else if method != REFRESH {
            return self.answer_error(&msg, from, ErrorCode::BAD_REQUEST);
        }
        let relayed = self.allocations.get(&from).and_then(|a| a.relayed);
        let mut out = Message::builder(
            MessageType::from_class_method(MessageClass::Success, method),
            tx,
            MessageWriteVec::new(),
        );
        if method == ALLOCATE
            && let Some(relayed) = relayed
        {
            stun::add(&mut out, &XorRelayedAddress::new(relayed, tx));
            stun::add(&mut out, &XorMappedAddress::new(from, tx));
            stun::add(&mut out, &Lifetime::new(600));
        }
        if method == REFRESH {
            stun::add(&mut out, &Lifetime::new(600));
        }
        let signed = out.add_message_integrity(&key, IntegrityAlgorithm::Sha1);
        debug_assert!(signed.is_ok());
        self.out.push_back(Transmit {
            local: self.addr,
            remote: from,
            payload: stun::finish(out),
        });
    }

    /// The long-term key of a signed request, if its username is one the
    /// secret minted.
    fn key_of(&self, msg: &Message<'_>) -> Option<MessageIntegrityCredentials> {
        let user = msg.attribute::<Username>().ok()?;
        let username = user.username();
        let (expiry, id) = username.split_once(':')?;
        let minted = TurnCredentials::mint(&self.secret, expiry.parse().ok()?, id);
        (minted.username == username).then(|| {
            LongTermKeyCredentials::new(minted.username, minted.password, REALM.to_owned()).into()
        })
    }

    fn answer_error(&mut self, msg: &Message<'_>, to: SocketAddr, code: u16) {
        let mut out = Message::builder(
            MessageType::from_class_method(MessageClass::Error, msg.method()),
            msg.transaction_id(),
            MessageWriteVec::new(),
        );
        if let Ok(code) = ErrorCode::builder(code).build() {
            stun::add(&mut out, &code);
        }
        if code == ErrorCode::UNAUTHORIZED {
            if let Ok(realm) = Realm::new(REALM) {
                stun::add(&mut out, &realm);
            }
            if let Ok(nonce) = Nonce::new(NONCE) {
                stun::add(&mut out, &nonce);
            }
        }
        self.out.push_back(Transmit {
            local: self.addr,
            remote: to,
            payload: stun::finish(out),
        });
    }
}
