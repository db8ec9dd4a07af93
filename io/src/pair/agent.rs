//! A pair agent: one [`PairPool`](wormhole_core::pair::PairPool) driven over
//! real sockets, and the handle the application talks to it through.

use super::driver::PairDriver;
use crate::net::identity::{Fingerprint, Identity};
use crate::runtime::SignalStream;
use core::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use wormhole_core::pair::{
    AddError, DropCounts, EndpointPair, FailReason, HandoverId, PairConfig, PairNonce, PairState,
    PairStats, PeerId, ReleaseError, TakeError,
};

/// What an agent needs to start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Its TLS identity; the agent's peer id is derived from it.
    pub identity: Identity,
    /// Pair timing and capacity.
    pub pair: PairConfig,
    /// Seed of the pool's PRNG (from the OS, see [`AgentConfig::new`]).
    pub seed: [u8; 32],
}

impl AgentConfig {
    /// A config with a PRNG seed from the operating system.
    pub fn new(identity: Identity, pair: PairConfig) -> Result<Self, AgentError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| AgentError::Entropy)?;
        Ok(AgentConfig {
            identity,
            pair,
            seed,
        })
    }
}

/// A taken pair: its socket now belongs to a QUIC endpoint.
///
/// The endpoint is built on the pair's own UDP socket (the one that punched
/// the hole), so `endpoint.local_addr()` is the pair's local address. Drop
/// every clone of the endpoint before (or soon after) the pair is released;
/// the agent closes the endpoint and moves it off the pair's socket at
/// release either way, so a forgotten clone cannot keep the port.
#[derive(Clone, Debug)]
pub struct PairLease {
    /// The pair.
    pub pair: PairNonce,
    /// The handover that took it.
    pub handover: HandoverId,
    /// The peer at the other end.
    pub peer: PeerId,
    /// The pair's local address.
    pub local: SocketAddr,
    /// The peer's end of the pair.
    pub remote: SocketAddr,
    /// Whether this agent started the handover (and so, by convention,
    /// connects while the peer accepts).
    pub initiator: bool,
    /// The QUIC endpoint on the pair's socket.
    pub endpoint: quinn::Endpoint,
}

/// What an agent reports, from [`PairAgent::next_event`].
#[derive(Clone, Debug)]
pub enum AgentEvent {
    /// A pair was taken (by us or by the peer) and its endpoint is ready.
    Taken(PairLease),
    /// A pair is back in keepalive on this agent: its socket is read by the
    /// agent again.
    Released {
        /// The pair.
        pair: PairNonce,
        /// Whether the peer ended the use rather than us.
        by_peer: bool,
    },
    /// A handover ended without a connection.
    HandoverFailed {
        /// The pair.
        pair: PairNonce,
        /// The handover.
        handover: HandoverId,
        /// Why.
        reason: FailReason,
    },
    /// A pair expired and its socket is closed.
    Expired {
        /// The pair.
        pair: PairNonce,
    },
    /// The signalling connection to a peer ended (closed, failed, or sent
    /// bytes that are not frames).
    SignalLinkClosed {
        /// The peer.
        peer: PeerId,
    },
}

/// One pair as the agent sees it.
#[derive(Clone, Debug)]
pub struct PairStatus {
    /// The pair.
    pub pair: PairNonce,
    /// The peer.
    pub peer: PeerId,
    /// Our address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The address the pair's socket is actually bound to (the same socket
    /// for the pair's whole life, QUIC or not).
    pub bound: Option<SocketAddr>,
    /// The pool's state for it.
    pub state: PairState,
    /// Keepalive counters.
    pub stats: PairStats,
    /// Whether its socket is with QUIC right now.
    pub with_quic: bool,
}

/// I/O counters of an agent: what the glue did, beside what the pool counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams read from pair sockets and fed to the pool.
    pub datagrams_in: u64,
    /// Keepalive datagrams sent.
    pub datagrams_out: u64,
    /// Sends that failed (other than "try again").
    pub send_errors: u64,
    /// Sends dropped because a socket's queue was full.
    pub send_queue_full: u64,
    /// Signals read from links and fed to the pool.
    pub signals_in: u64,
    /// Signals written to links.
    pub signals_out: u64,
    /// Signals for a peer without a link (or whose link is backed up).
    pub signals_unroutable: u64,
    /// Events dropped because nobody read them.
    pub events_lost: u64,
}

/// A snapshot of an agent.
#[derive(Clone, Debug)]
pub struct AgentStats {
    /// Every pair, by nonce.
    pub pairs: Vec<PairStatus>,
    /// Inputs the pool dropped, by reason.
    pub drops: DropCounts,
    /// The glue's own counters.
    pub io: IoStats,
}

impl AgentStats {
    /// The status of one pair.
    pub fn pair(&self, pair: PairNonce) -> Option<&PairStatus> {
        self.pairs.iter().find(|p| p.pair == pair)
    }
}

/// Why an agent operation failed.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The agent's driver is gone.
    #[error("the pair agent has stopped")]
    Stopped,
    /// The OS gave no randomness for the PRNG seed.
    #[error("no randomness available from the operating system")]
    Entropy,
    /// The pool refused the pair.
    #[error(transparent)]
    Add(#[from] AddError),
    /// The pool refused the take.
    #[error(transparent)]
    Take(#[from] TakeError),
    /// The pool refused the release.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// Pairs can only be added for peers the agent knows (their certificate
    /// pin is needed to hand the pair to QUIC).
    #[error("unknown peer {0:?}: add it first")]
    UnknownPeer(PeerId),
    /// A peer id must be the one its certificate fingerprint names.
    #[error("peer id {0:?} does not match the certificate fingerprint given for it")]
    PinMismatch(PeerId),
    /// The socket is not bound to the pair's local address.
    #[error("socket is bound to {socket}, but the pair's local address is {pair}")]
    AddressMismatch {
        /// The socket's address.
        socket: SocketAddr,
        /// The pair's local address.
        pair: SocketAddr,
    },
    /// The handover ended without a connection.
    #[error("handover of {pair:?} failed: {reason:?}")]
    HandoverFailed {
        /// The pair.
        pair: PairNonce,
        /// Why.
        reason: FailReason,
    },
    /// The pair expired while the operation waited.
    #[error("pair {0:?} expired")]
    Expired(PairNonce),
    /// The pair was taken but its socket could not be handed to QUIC.
    #[error("cannot hand pair {pair:?} to QUIC: {cause}")]
    Quic {
        /// The pair.
        pair: PairNonce,
        /// What went wrong.
        cause: String,
    },
    /// A socket operation failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// A request to the driver, with where its answer goes.
pub(crate) enum Command {
    AddPeer {
        peer: PeerId,
        pin: Fingerprint,
        stream: Box<dyn SignalStream>,
        reply: Reply<()>,
    },
    AddPair {
        pair: EndpointPair,
        socket: std::net::UdpSocket,
        reply: Reply<()>,
    },
    Take {
        peer: PeerId,
        reply: Reply<PairLease>,
    },
    Release {
        pair: PairNonce,
        reply: Reply<()>,
    },
    Stats {
        reply: async_channel::Sender<AgentStats>,
    },
}

/// The answer channel of one command.
pub(crate) type Reply<T> = async_channel::Sender<Result<T, AgentError>>;

/// Commands waiting for the driver; a few suffice, since callers wait for
/// their answers.
const COMMAND_QUEUE: usize = 64;
/// Events kept for a reader that is behind; beyond that they are counted as
/// lost rather than stalling the driver.
pub(crate) const EVENT_QUEUE: usize = 1024;

/// The application's handle on a running agent. Cloning it is cheap; the
/// agent stops when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct PairAgent {
    id: PeerId,
    fingerprint: Fingerprint,
    commands: async_channel::Sender<Command>,
    events: async_channel::Receiver<AgentEvent>,
}

impl PairAgent {
    /// Starts an agent's driver on `runtime` and returns its handle.
    ///
    /// Must be called where the runtime can spawn (inside a tokio runtime
    /// for `quinn::TokioRuntime`).
    pub fn spawn(runtime: Arc<dyn quinn::Runtime>, config: AgentConfig) -> PairAgent {
        let (commands, command_rx) = async_channel::bounded(COMMAND_QUEUE);
        let (event_tx, events) = async_channel::bounded(EVENT_QUEUE);
        let handle = PairAgent {
            id: config.identity.peer_id(),
            fingerprint: config.identity.fingerprint(),
            commands,
            events,
        };
        let driver = PairDriver::new(runtime.clone(), config, command_rx, event_tx);
        runtime.spawn(Box::pin(driver.run()));
        handle
    }

    /// This agent's peer id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// This agent's certificate fingerprint, which its peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, AgentError> {
        let (tx, rx) = async_channel::bounded(1);
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.recv().await.map_err(|_| AgentError::Stopped)?
    }

    /// Registers a peer: its certificate fingerprint (pinned by every QUIC
    /// connection over a pair with it, both ways) and the byte stream that
    /// carries handover signals to and from it. Adding a known peer again
    /// replaces its stream.
    ///
    /// The stream is trusted to reach that peer: authenticating it is the
    /// business of whoever opened it.
    pub async fn add_peer(
        &self,
        peer: PeerId,
        pin: Fingerprint,
        stream: impl SignalStream,
    ) -> Result<(), AgentError> {
        let stream: Box<dyn SignalStream> = Box::new(stream);
        self.call(|reply| Command::AddPeer {
            peer,
            pin,
            stream,
            reply,
        })
        .await
    }

    /// Adds a pair whose hole was punched from `socket` (bound to
    /// `pair.local`); the agent owns the socket from now on.
    pub async fn add_pair(
        &self,
        pair: EndpointPair,
        socket: std::net::UdpSocket,
    ) -> Result<(), AgentError> {
        self.call(|reply| Command::AddPair {
            pair,
            socket,
            reply,
        })
        .await
    }

    /// Takes an idle pair shared with `peer`: runs the handover and returns
    /// once both sides are silent and the pair's socket is a QUIC endpoint.
    /// Bounded by the pool's handshake timeouts.
    pub async fn take(&self, peer: PeerId) -> Result<PairLease, AgentError> {
        self.call(|reply| Command::Take { peer, reply }).await
    }

    /// Ends our use of a taken pair: closes its endpoint, takes the socket
    /// back and returns once keepalive runs on it again on this side.
    pub async fn release(&self, pair: PairNonce) -> Result<(), AgentError> {
        self.call(|reply| Command::Release { pair, reply }).await
    }

    /// A snapshot of the agent's pairs and counters.
    pub async fn stats(&self) -> Result<AgentStats, AgentError> {
        let (tx, rx) = async_channel::bounded(1);
        self.commands
            .send(Command::Stats { reply: tx })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.recv().await.map_err(|_| AgentError::Stopped)
    }

    /// The next event. Events are shared by all clones of the handle: each
    /// is delivered to one of them.
    pub async fn next_event(&self) -> Result<AgentEvent, AgentError> {
        self.events.recv().await.map_err(|_| AgentError::Stopped)
    }

    /// Skips events until `pick` accepts one. Wrap it in
    /// [`crate::timeout`]: it waits as long as no such event comes.
    pub async fn wait_event<T>(
        &self,
        mut pick: impl FnMut(&AgentEvent) -> Option<T>,
    ) -> Result<T, AgentError> {
        loop {
            let event = self.next_event().await?;
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
            tracing::debug!(?event, "event skipped");
        }
    }
}
