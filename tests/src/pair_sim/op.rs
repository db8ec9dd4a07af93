//! The operations that drive a [`super::World`]: the workload generator
//! produces them from a seed, the fuzzer from arbitrary bytes.

use super::net::LinkParams;
use arbitrary::Arbitrary;
use wormhole_core::pair::{
    BusyReason, FrameKind, HandoverId, PairNonce, PeerId, Signal, SignalKind,
};

/// Which lanes a partition cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Arbitrary)]
pub enum Channel {
    /// Keepalive datagrams only (the NAT path).
    Udp,
    /// Handover signals only.
    Signal,
    /// Both.
    Both,
}

/// What an injected datagram carries.
#[derive(Clone, Debug, PartialEq, Eq, Arbitrary)]
pub enum InjectPayload {
    /// Arbitrary bytes.
    Raw(Vec<u8>),
    /// A well-formed frame for the pair under a key that is not the pair's.
    Forged {
        /// Pong if set, else ping.
        pong: bool,
        /// Its ping number.
        ping: u64,
    },
    /// A genuine datagram from the history of delivered ones (so with a
    /// valid MAC), replayed by someone at another address.
    Captured {
        /// Which one in the history.
        index: u8,
    },
}

impl InjectPayload {
    /// The frame kind of a forged frame.
    pub fn kind(pong: bool) -> FrameKind {
        if pong {
            FrameKind::Pong
        } else {
            FrameKind::Ping
        }
    }
}

/// An arbitrary handover signal, in the simulation's own terms (the core's
/// types stay free of a fuzzing dependency here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub struct ArbSignal {
    /// The initiator of the handover it names: a node number (or, if out
    /// of range, a stranger).
    pub initiator: u8,
    /// The handover's sequence number.
    pub seq: u64,
    /// Which of the twelve kinds (modulo 12).
    pub kind: u8,
}

impl ArbSignal {
    /// The core signal for pair `pair`, with initiator ids from `ids`.
    pub fn to_signal(self, pair: PairNonce, ids: &[PeerId], stranger: PeerId) -> Signal {
        use BusyReason as B;
        use SignalKind as K;
        let kind = match self.kind % 12 {
            0 => K::Lock,
            1 => K::LockOk,
            2 => K::LockBusy(B::UnknownPair),
            3 => K::LockBusy(B::AlreadyLocked),
            4 => K::LockBusy(B::Contended),
            5 => K::LockBusy(B::NoSuchHandover),
            6 => K::Take,
            7 => K::TakeOk,
            8 => K::Release,
            9 => K::ReleaseOk,
            10 => K::Abort,
            _ => K::AbortOk,
        };
        Signal {
            pair,
            handover: HandoverId {
                initiator: ids
                    .get(usize::from(self.initiator))
                    .copied()
                    .unwrap_or(stranger),
                seq: self.seq,
            },
            kind,
        }
    }
}

/// One step of a simulation. Node numbers are taken modulo the number of
/// nodes, pair numbers modulo the number of pairs created so far (in
/// creation order, removed ones included); an op that names a pair before
/// any exists does nothing.
#[derive(Clone, Debug, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// A hole punch between nodes `a` and `b` succeeded: both add the pair
    /// (same nonce and key), `a` as pinger if `a_pings`.
    AddPair {
        /// One end.
        a: u8,
        /// The other end (`a + 1` if equal to `a`).
        b: u8,
        /// Whether `a` pings.
        a_pings: bool,
    },
    /// `node` claims any idle pair shared with `peer` (`PairPool::take`).
    Take {
        /// Who takes.
        node: u8,
        /// With whom.
        peer: u8,
    },
    /// One side of a pair takes that very pair (`PairPool::take_pair`).
    TakePair {
        /// The pair.
        pair: u8,
        /// Which side: the pair's first (`false`) or second node.
        second: bool,
    },
    /// One side's connection on the pair closes: if it holds the pair it
    /// must be able to release it; if not, release must be refused.
    Release {
        /// The pair.
        pair: u8,
        /// Which side.
        second: bool,
    },
    /// One side forgets the pair (`PairPool::remove`).
    Remove {
        /// The pair.
        pair: u8,
        /// Which side.
        second: bool,
    },
    /// Cuts lanes between two nodes.
    Partition {
        /// One node.
        a: u8,
        /// The other.
        b: u8,
        /// Which lanes.
        channel: Channel,
    },
    /// Heals both lanes between two nodes.
    Heal {
        /// One node.
        a: u8,
        /// The other.
        b: u8,
    },
    /// Changes how a lane between two nodes behaves.
    SetLink {
        /// One node.
        a: u8,
        /// The other.
        b: u8,
        /// The lane.
        lane: super::net::Lane,
        /// Its new behaviour.
        params: LinkParams,
    },
    /// Lets simulated time pass, delivering messages and firing timers.
    Advance {
        /// How long.
        millis: u16,
    },
    /// Delivers the `index`-th message in flight at once (reordering).
    DeliverNow {
        /// Which message, in delivery order.
        index: u8,
    },
    /// Delivers the `index`-th message in flight once more, later.
    Duplicate {
        /// Which message.
        index: u8,
    },
    /// Delivers again, in their original order, `count % 8 + 1`
    /// consecutive messages from the history of delivered ones (the last
    /// [`super::HISTORY`]), starting at `index`, after `delay_ms`: an old
    /// batch of traffic that a path flushes late.
    Replay {
        /// Where in the history to start.
        index: u8,
        /// How many (plus one, modulo 8).
        count: u8,
        /// When they arrive.
        delay_ms: u16,
    },
    /// Loses the `index`-th message in flight.
    DropMessage {
        /// Which message.
        index: u8,
    },
    /// A stranger (or, with `spoof`, someone forging the peer's address)
    /// sends a datagram to one side of a pair.
    InjectDatagram {
        /// The pair.
        pair: u8,
        /// Which side receives it.
        second: bool,
        /// Whether the source address is the pair's remote endpoint.
        spoof: bool,
        /// The datagram.
        payload: InjectPayload,
    },
    /// Calls `handle_timeout(now)` on a node whether or not a timer is due:
    /// early or repeated calls must be harmless (nothing happens unless a
    /// timer is due).
    Poke {
        /// The node.
        node: u8,
    },
    /// A node that is not the pair's peer (another node, or a stranger)
    /// sends a signal about the pair over its own authenticated channel.
    InjectSignal {
        /// The pair.
        pair: u8,
        /// Which side receives it.
        second: bool,
        /// The sender: a node number, or a stranger if it names the pair's
        /// peer or is out of range.
        from: u8,
        /// The signal.
        signal: ArbSignal,
    },
}

/// A whole simulation as arbitrary input: the `pair_machines` fuzz target.
#[derive(Clone, Debug, Arbitrary)]
pub struct FuzzWorld {
    /// Seeds the world's randomness (keys, network).
    pub seed: u64,
    /// Nodes: 2 + `nodes % 3`.
    pub nodes: u8,
    /// Use the stress timing (short timeouts, so delays race them).
    pub stress: bool,
    /// Default link behaviour (clamped to sane delays).
    pub link: LinkParams,
    /// The operations; at most [`FuzzWorld::MAX_OPS`] are run.
    pub ops: Vec<Op>,
}

impl FuzzWorld {
    /// Ops beyond this are ignored, to bound one fuzz run.
    pub const MAX_OPS: usize = 256;
}
