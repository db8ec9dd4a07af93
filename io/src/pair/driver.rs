//! The pair agent's driver: one task that owns the pool and its sockets.
//!
//! It runs the sans-IO loop of the core contract: drain `poll_output` and
//! carry each output out, then wait for the next datagram, signal, command,
//! returned socket or `poll_timeout`. It makes no protocol decision; where
//! it must choose (a socket it cannot use), it tells the pool and lets the
//! pool decide.
//!
//! Everything happens in one `poll` function over all sources, so there is
//! no lock, no second task and no ordering race between the pool and the
//! sockets: when the pool says "Taken", the QUIC endpoint exists before the
//! next byte leaves.

use super::agent::{
    AgentConfig, AgentError, AgentEvent, AgentStats, Command, IoStats, PairLease, PairStatus, Reply,
};
use super::quic;
use crate::drive::{Pass, poll_passes};
use crate::nat::udp::{Batch, recv_batch};
use crate::net::identity::{Fingerprint, Identity};
use crate::runtime::{BoxFuture, CoreClock, SignalStream, timeout};
use bytes::Bytes;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::pin::Pin;
use core::task::{Context, Poll};
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::stream::Stream;
use quinn::udp::Transmit as UdpTransmit;
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, trace, warn};
use wormhole_core::codec::WireMessage;
use wormhole_core::codec::{FrameDecoder, frame};
use wormhole_core::pair::{
    EndpointPair, HandoverId, Output, PairEvent, PairNonce, PairPool, PeerId, ReleaseError, Signal,
};
use wormhole_core::{Instant, Rng};

/// Commands handled per pass.
const COMMAND_BATCH: usize = 64;
/// Reads from one signalling stream per pass.
const LINK_READ_BATCH: usize = 8;
/// Keepalive datagrams waiting for a socket (writable again, or back from
/// QUIC). The pool sends at most one or two per interval per pair, so more
/// than this means the socket is stuck; dropping is what UDP would do.
const MAX_HELD: usize = 16;
/// Signal bytes waiting to be written to one peer; a peer that does not
/// read its stream cannot make us buffer without limit.
const MAX_LINK_BACKLOG: usize = 64 * 1024;
/// Receive buffer: one maximal UDP datagram (or a GRO batch of small ones).
const RECV_BUF: usize = 64 * 1024;
/// How long a released endpoint may take to close its connections before
/// the socket is taken back anyway.
const RETURN_LIMIT: Duration = Duration::from_secs(2);

/// The signalling connection to one peer.
struct SignalLink {
    stream: Box<dyn SignalStream>,
    decoder: FrameDecoder,
    backlog: Vec<u8>,
}

struct Peer {
    pin: Fingerprint,
    link: Option<SignalLink>,
}

/// Who reads a pair's socket right now.
enum Mode {
    /// The agent: keepalive.
    Keepalive {
        socket: Arc<dyn AsyncUdpSocket>,
        poller: Pin<Box<dyn UdpPoller>>,
    },
    /// A QUIC endpoint.
    Quic { endpoint: quinn::Endpoint },
    /// Nobody: the endpoint is closing. `core_released` is set once the
    /// pool has said the pair is Idle again (and whether the peer ended it).
    Returning { core_released: Option<bool> },
}

struct PairIo {
    pair: EndpointPair,
    /// The socket the hole was punched from. Never read directly: the agent
    /// and QUIC each get a duplicate of it in turn, so the very same socket
    /// (and NAT mapping) survives every handover.
    master: std::net::UdpSocket,
    mode: Mode,
    /// Keepalive datagrams to send, oldest first.
    held: VecDeque<(SocketAddr, Bytes)>,
}

pub(crate) struct PairDriver {
    runtime: Arc<dyn quinn::Runtime>,
    clock: CoreClock,
    identity: Identity,
    pool: PairPool,
    peers: BTreeMap<PeerId, Peer>,
    pairs: BTreeMap<PairNonce, PairIo>,
    by_local: BTreeMap<SocketAddr, PairNonce>,
    /// Boxed: the receiver is `!Unpin` and the driver moves into its task.
    commands: Pin<Box<async_channel::Receiver<Command>>>,
    events: async_channel::Sender<AgentEvent>,
    takes: BTreeMap<HandoverId, (PairNonce, Reply<PairLease>)>,
    releases: BTreeMap<PairNonce, Reply<()>>,
    returning: Vec<(PairNonce, BoxFuture<()>)>,
    buf: Vec<u8>,
    io: IoStats,
}

impl PairDriver {
    pub(crate) fn new(
        runtime: Arc<dyn quinn::Runtime>,
        config: AgentConfig,
        commands: async_channel::Receiver<Command>,
        events: async_channel::Sender<AgentEvent>,
    ) -> Self {
        let pool = PairPool::new(
            config.identity.peer_id(),
            config.pair,
            Rng::from_seed(config.seed),
        );
        PairDriver {
            clock: CoreClock::new(runtime.clone()),
            runtime,
            identity: config.identity,
            pool,
            peers: BTreeMap::new(),
            pairs: BTreeMap::new(),
            by_local: BTreeMap::new(),
            commands: Box::pin(commands),
            events,
            takes: BTreeMap::new(),
            releases: BTreeMap::new(),
            returning: Vec::new(),
            buf: vec![0; RECV_BUF],
            io: IoStats::default(),
        }
    }

    /// Runs until every handle is dropped.
    pub(crate) async fn run(mut self) {
        let span = tracing::debug_span!("pair_agent", agent = ?self.pool.local_id());
        debug!(parent: &span, "pair agent started");
        core::future::poll_fn(|cx| {
            let _entered = span.enter();
            self.poll_drive(cx)
        })
        .await;
        let _entered = span.enter();
        for io in self.pairs.values() {
            if let Mode::Quic { endpoint } = &io.mode {
                endpoint.close(0u32.into(), b"agent stopped");
            }
        }
        debug!("pair agent stopped");
    }

    /// The core's clock: time since this agent started, on the runtime's
    /// clock.
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        poll_passes(cx, |cx| self.pass(cx))
    }

    /// One pass over every source.
    fn pass(&mut self, cx: &mut Context<'_>) -> Pass {
        let mut busy = false;
        for n in 0.. {
            if n == COMMAND_BATCH {
                busy = true;
                break;
            }
            match self.commands.as_mut().poll_next(cx) {
                Poll::Ready(Some(command)) => {
                    self.command(command);
                    busy = true;
                }
                Poll::Ready(None) => return Pass::Done,
                Poll::Pending => break,
            }
        }
        busy |= self.poll_sockets(cx);
        busy |= self.poll_links(cx);
        self.drain_outputs();
        // After the drain: an endpoint that started closing just now
        // must be polled once to register its wake-ups.
        busy |= self.poll_returning(cx);
        busy |= self.flush_sockets(cx);
        self.flush_links(cx);
        busy |= self.poll_timer(cx);
        Pass::from_busy(busy)
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::AddPeer {
                peer,
                pin,
                stream,
                reply,
            } => {
                let result = if pin.peer_id() == peer {
                    let link = SignalLink {
                        stream,
                        decoder: FrameDecoder::new(<Signal as WireMessage>::MAX_SIZE),
                        backlog: Vec::new(),
                    };
                    self.peers.insert(
                        peer,
                        Peer {
                            pin,
                            link: Some(link),
                        },
                    );
                    info!(?peer, %pin, "peer added");
                    Ok(())
                } else {
                    Err(AgentError::PinMismatch(peer))
                };
                let _ = reply.try_send(result);
            }
            Command::AddPair {
                pair,
                socket,
                reply,
            } => {
                let result = self.add_pair(pair, socket);
                let _ = reply.try_send(result);
            }
            Command::Take { peer, reply } => {
                if !self.peers.contains_key(&peer) {
                    let _ = reply.try_send(Err(AgentError::UnknownPeer(peer)));
                    return;
                }
                let now = self.now();
                match self.pool.take(now, peer) {
                    Ok((pair, handover)) => {
                        debug!(?pair, ?handover, "take started");
                        self.takes.insert(handover, (pair, reply));
                    }
                    Err(e) => {
                        let _ = reply.try_send(Err(e.into()));
                    }
                }
            }
            Command::Release { pair, reply } => {
                let Some(io) = self.pairs.get(&pair) else {
                    let _ = reply.try_send(Err(ReleaseError::UnknownPair(pair).into()));
                    return;
                };
                match io.mode {
                    Mode::Keepalive { .. } => {
                        let _ = reply.try_send(Err(ReleaseError::NotInUse(pair).into()));
                    }
                    Mode::Quic { .. } => {
                        self.releases.insert(pair, reply);
                        self.start_return(pair, None);
                    }
                    // Already on its way back (the peer released first).
                    Mode::Returning { .. } => {
                        self.releases.insert(pair, reply);
                    }
                }
            }
            Command::Stats { reply } => {
                let _ = reply.try_send(self.stats());
            }
        }
    }

    fn add_pair(
        &mut self,
        pair: EndpointPair,
        socket: std::net::UdpSocket,
    ) -> Result<(), AgentError> {
        if !self.peers.contains_key(&pair.peer) {
            return Err(AgentError::UnknownPeer(pair.peer));
        }
        let bound = socket.local_addr()?;
        if bound.port() != pair.local.port()
            || (!bound.ip().is_unspecified() && bound.ip() != pair.local.ip())
        {
            return Err(AgentError::AddressMismatch {
                socket: bound,
                pair: pair.local,
            });
        }
        // O_NONBLOCK lives on the open file, so every duplicate (ours and
        // QUIC's) shares it; tokio requires it.
        socket.set_nonblocking(true)?;
        let mode = self.keepalive_mode(&socket)?;
        self.pool.add(self.now(), pair.clone())?;
        info!(pair = ?pair.nonce, local = %pair.local, remote = %pair.remote, role = ?pair.role, "pair added");
        self.by_local.insert(pair.local, pair.nonce);
        self.pairs.insert(
            pair.nonce,
            PairIo {
                pair,
                master: socket,
                mode,
                held: VecDeque::new(),
            },
        );
        Ok(())
    }

    fn keepalive_mode(&self, master: &std::net::UdpSocket) -> io::Result<Mode> {
        let socket = self.runtime.wrap_udp_socket(master.try_clone()?)?;
        let poller = socket.clone().create_io_poller();
        Ok(Mode::Keepalive { socket, poller })
    }

    /// Reads every keepalive socket until it would block.
    fn poll_sockets(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.now();
        let mut busy = false;
        for io in self.pairs.values_mut() {
            let Mode::Keepalive { socket, .. } = &io.mode else {
                continue;
            };
            let (pool, stats, pair) = (&mut self.pool, &mut self.io, &io.pair);
            let batch = recv_batch(&**socket, cx, &mut self.buf, |from, datagram| {
                let from = same_family(from, pair.remote);
                trace!(pair = ?pair.nonce, %from, len = datagram.len(), "datagram");
                stats.datagrams_in += 1;
                pool.handle_datagram(now, pair.local, from, datagram);
            });
            match batch {
                Batch::More => busy = true,
                // Read again on the next pass: the pool's timer comes at
                // least once an interval.
                Batch::Failing => warn!(pair = ?io.pair.nonce, "socket keeps failing"),
                Batch::Drained => {}
            }
        }
        busy
    }

    /// Reads every signalling stream until it would block.
    fn poll_links(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.now();
        let mut busy = false;
        let mut closed = Vec::new();
        for (&peer, entry) in &mut self.peers {
            let Some(link) = entry.link.as_mut() else {
                continue;
            };
            for n in 0.. {
                if n == LINK_READ_BATCH {
                    busy = true;
                    break;
                }
                match Pin::new(&mut link.stream).poll_read(cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => {
                        closed.push((peer, "closed by the peer".to_owned()));
                        break;
                    }
                    Poll::Ready(Ok(len)) => {
                        link.decoder.push(&self.buf[..len]);
                        let mut failed = None;
                        loop {
                            match link.decoder.next_frame() {
                                Ok(Some(bytes)) => {
                                    self.io.signals_in += 1;
                                    self.pool.handle_signal_bytes(now, peer, &bytes);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    failed = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        if let Some(why) = failed {
                            closed.push((peer, why));
                            break;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        closed.push((peer, e.to_string()));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        for (peer, why) in closed {
            self.close_link(peer, &why);
        }
        busy
    }

    fn close_link(&mut self, peer: PeerId, why: &str) {
        if let Some(entry) = self.peers.get_mut(&peer)
            && entry.link.take().is_some()
        {
            info!(?peer, reason = why, "signalling link closed");
            self.emit(AgentEvent::SignalLinkClosed { peer });
        }
    }

    /// Polls the endpoints being closed; a finished one gives its pair's
    /// socket back.
    fn poll_returning(&mut self, cx: &mut Context<'_>) -> bool {
        let mut back = Vec::new();
        self.returning.retain_mut(|(pair, fut)| {
            if fut.as_mut().poll(cx).is_ready() {
                back.push(*pair);
                false
            } else {
                true
            }
        });
        let busy = !back.is_empty();
        for pair in back {
            self.socket_returned(pair);
        }
        busy
    }

    /// Carries out everything the pool asked for.
    fn drain_outputs(&mut self) {
        while let Some(output) = self.pool.poll_output() {
            match output {
                Output::Transmit(t) => self.transmit(t.local, t.remote, t.payload),
                Output::Signal { to, signal } => self.send_signal(to, signal),
                Output::Event(event) => self.on_event(event),
            }
        }
    }

    fn transmit(&mut self, local: SocketAddr, remote: SocketAddr, payload: Bytes) {
        let Some(io) = self
            .by_local
            .get(&local)
            .and_then(|n| self.pairs.get_mut(n))
        else {
            warn!(%local, "transmit from a socket the agent does not have");
            self.io.send_errors += 1;
            return;
        };
        if io.held.len() >= MAX_HELD {
            self.io.send_queue_full += 1;
            return;
        }
        if !matches!(io.mode, Mode::Keepalive { .. }) {
            // The pool resumed keepalive before the endpoint let go of the
            // socket; it goes out as soon as the socket is back.
            debug!(pair = ?io.pair.nonce, "keepalive held until the socket is back");
        }
        io.held.push_back((remote, payload));
    }

    /// Sends held keepalive datagrams; true if a socket needs another pass.
    fn flush_sockets(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        for io in self.pairs.values_mut() {
            let Mode::Keepalive { socket, poller } = &mut io.mode else {
                continue;
            };
            while let Some((destination, payload)) = io.held.front() {
                let transmit = UdpTransmit {
                    destination: *destination,
                    ecn: None,
                    contents: payload,
                    segment_size: None,
                    src_ip: None,
                };
                match socket.try_send(&transmit) {
                    Ok(()) => {
                        trace!(pair = ?io.pair.nonce, to = %destination, "keepalive sent");
                        self.io.datagrams_out += 1;
                        io.held.pop_front();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match poller.as_mut().poll_writable(cx) {
                            Poll::Ready(Ok(())) => busy = true,
                            Poll::Ready(Err(e)) => {
                                warn!(pair = ?io.pair.nonce, error = %e, "socket not writable");
                                self.io.send_errors += 1;
                                io.held.pop_front();
                            }
                            Poll::Pending => {}
                        }
                        break;
                    }
                    Err(e) => {
                        debug!(pair = ?io.pair.nonce, error = %e, "send failed");
                        self.io.send_errors += 1;
                        io.held.pop_front();
                    }
                }
            }
        }
        busy
    }

    fn send_signal(&mut self, to: PeerId, signal: Signal) {
        let link = self.peers.get_mut(&to).and_then(|p| p.link.as_mut());
        let bytes = frame(&signal.encode());
        match link {
            Some(link) if link.backlog.len() + bytes.len() <= MAX_LINK_BACKLOG => {
                trace!(?to, ?signal, "signal");
                link.backlog.extend_from_slice(&bytes);
                self.io.signals_out += 1;
            }
            // The pool repeats what matters and times out on the rest.
            _ => {
                debug!(?to, ?signal, "signal unroutable");
                self.io.signals_unroutable += 1;
            }
        }
    }

    fn flush_links(&mut self, cx: &mut Context<'_>) {
        let mut closed = Vec::new();
        for (&peer, entry) in &mut self.peers {
            let Some(link) = entry.link.as_mut() else {
                continue;
            };
            if link.backlog.is_empty() {
                continue;
            }
            while !link.backlog.is_empty() {
                match Pin::new(&mut link.stream).poll_write(cx, &link.backlog) {
                    Poll::Ready(Ok(0)) => {
                        closed.push((peer, "write returned 0".to_owned()));
                        break;
                    }
                    Poll::Ready(Ok(n)) => {
                        link.backlog.drain(..n);
                    }
                    Poll::Ready(Err(e)) => {
                        closed.push((peer, e.to_string()));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if link.backlog.is_empty()
                && let Poll::Ready(Err(e)) = Pin::new(&mut link.stream).poll_flush(cx)
            {
                closed.push((peer, e.to_string()));
            }
        }
        for (peer, why) in closed {
            self.close_link(peer, &why);
        }
    }

    /// Fires the pool's timer when due and arms it for the next deadline.
    /// True if it fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(now) = self.clock.poll_due(cx, self.pool.poll_timeout()) else {
            return false;
        };
        self.pool.handle_timeout(now);
        true
    }

    fn on_event(&mut self, event: PairEvent) {
        debug!(?event, "pair event");
        match event {
            PairEvent::Taken { pair, handover } => self.on_taken(pair, handover),
            PairEvent::Released { pair, by_peer } => {
                let Some(io) = self.pairs.get_mut(&pair) else {
                    return;
                };
                match &mut io.mode {
                    Mode::Quic { .. } => self.start_return(pair, Some(by_peer)),
                    Mode::Returning { core_released } => *core_released = Some(by_peer),
                    Mode::Keepalive { .. } => self.finish_release(pair, by_peer),
                }
            }
            PairEvent::HandoverFailed {
                pair,
                handover,
                reason,
            } => {
                if let Some((_, reply)) = self.takes.remove(&handover) {
                    let _ = reply.try_send(Err(AgentError::HandoverFailed { pair, reason }));
                }
                self.emit(AgentEvent::HandoverFailed {
                    pair,
                    handover,
                    reason,
                });
            }
            PairEvent::Expired { pair } => {
                if let Some(io) = self.pairs.remove(&pair) {
                    self.by_local.remove(&io.pair.local);
                    if let Mode::Quic { endpoint } = &io.mode {
                        endpoint.close(0u32.into(), b"pair expired");
                    }
                }
                if let Some(reply) = self.releases.remove(&pair) {
                    let _ = reply.try_send(Err(AgentError::Expired(pair)));
                }
                let stale: Vec<HandoverId> = self
                    .takes
                    .iter()
                    .filter(|(_, (p, _))| *p == pair)
                    .map(|(h, _)| *h)
                    .collect();
                for handover in stale {
                    if let Some((_, reply)) = self.takes.remove(&handover) {
                        let _ = reply.try_send(Err(AgentError::Expired(pair)));
                    }
                }
                self.emit(AgentEvent::Expired { pair });
            }
        }
    }

    /// The pool says the pair is ours: hand its socket to QUIC.
    fn on_taken(&mut self, pair: PairNonce, handover: HandoverId) {
        let initiator = handover.initiator == self.pool.local_id();
        let waiting = self.takes.remove(&handover).map(|(_, reply)| reply);
        match self.hand_to_quic(pair, handover, initiator) {
            Ok(lease) => {
                info!(?pair, ?handover, local = %lease.local, "pair taken; socket handed to QUIC");
                if let Some(reply) = waiting {
                    let _ = reply.try_send(Ok(lease.clone()));
                }
                self.emit(AgentEvent::Taken(lease));
            }
            Err(e) => {
                warn!(?pair, error = %e, "cannot hand the pair to QUIC; releasing it");
                if let Some(reply) = waiting {
                    let _ = reply.try_send(Err(AgentError::Quic {
                        pair,
                        cause: e.to_string(),
                    }));
                }
                // The socket never left keepalive: give the pair back at once.
                let now = self.now();
                if let Err(e) = self.pool.release(now, pair) {
                    warn!(?pair, error = %e, "release after a failed hand-over refused");
                }
            }
        }
    }

    fn hand_to_quic(
        &mut self,
        pair: PairNonce,
        handover: HandoverId,
        initiator: bool,
    ) -> Result<PairLease, String> {
        let io = self.pairs.get_mut(&pair).ok_or("no socket for the pair")?;
        let pin = self
            .peers
            .get(&io.pair.peer)
            .map(|p| p.pin)
            .ok_or("the peer is not known")?;
        let server = quic::server_config(&self.identity, pin).map_err(|e| e.to_string())?;
        let client = quic::client_config(&self.identity, pin).map_err(|e| e.to_string())?;
        let dup = io.master.try_clone().map_err(|e| e.to_string())?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            dup,
            self.runtime.clone(),
        )
        .map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(client);
        // Only now stop reading it ourselves: nothing is polled between the
        // two steps, so no datagram can go to the wrong reader.
        io.mode = Mode::Quic {
            endpoint: endpoint.clone(),
        };
        Ok(PairLease {
            pair,
            handover,
            peer: io.pair.peer,
            local: io.pair.local,
            remote: io.pair.remote,
            initiator,
            endpoint,
        })
    }

    /// Closes a pair's endpoint; the socket comes back in
    /// [`Self::socket_returned`].
    fn start_return(&mut self, pair: PairNonce, core_released: Option<bool>) {
        let Some(io) = self.pairs.get_mut(&pair) else {
            return;
        };
        let Mode::Quic { endpoint } =
            core::mem::replace(&mut io.mode, Mode::Returning { core_released })
        else {
            return;
        };
        debug!(?pair, "closing the pair's endpoint");
        let runtime = self.runtime.clone();
        let family_loopback = match io.pair.local.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let closing = async move {
            endpoint.close(0u32.into(), b"pair released");
            if timeout(
                &*runtime,
                RETURN_LIMIT,
                "endpoint idle",
                endpoint.wait_idle(),
            )
            .await
            .is_err()
            {
                debug!(
                    ?pair,
                    "endpoint still draining; taking the socket back anyway"
                );
            }
            // A clone of the endpoint the application kept would go on
            // reading the pair's socket. Move the endpoint to throwaway
            // sockets; quinn keeps the previous socket until traffic shows
            // up on the new one, hence twice.
            for _ in 0..2 {
                let moved = std::net::UdpSocket::bind(SocketAddr::new(family_loopback, 0))
                    .and_then(|s| endpoint.rebind(s));
                if let Err(e) = moved {
                    warn!(?pair, error = %e, "could not move the endpoint off the pair's socket");
                }
            }
        };
        self.returning.push((pair, Box::pin(closing)));
    }

    /// The endpoint let go of the pair's socket: read it again, and tell the
    /// pool if the release was ours.
    fn socket_returned(&mut self, pair: PairNonce) {
        let Some(io) = self.pairs.get(&pair) else {
            return;
        };
        let Mode::Returning { core_released } = io.mode else {
            return;
        };
        match self.keepalive_mode(&io.master) {
            Ok(mode) => {
                if let Some(io) = self.pairs.get_mut(&pair) {
                    io.mode = mode;
                }
            }
            Err(e) => {
                // Without a socket there is no keepalive; the pool decides
                // what that means once told the pair is gone.
                warn!(?pair, error = %e, "cannot read the pair's socket again; removing the pair");
                self.pairs.remove(&pair);
                self.pool.remove(pair);
                if let Some(reply) = self.releases.remove(&pair) {
                    let _ = reply.try_send(Err(AgentError::Io(e)));
                }
                self.emit(AgentEvent::Expired { pair });
                return;
            }
        }
        debug!(?pair, "socket back from QUIC");
        match core_released {
            Some(by_peer) => self.finish_release(pair, by_peer),
            None => {
                let now = self.now();
                if let Err(e) = self.pool.release(now, pair)
                    && let Some(reply) = self.releases.remove(&pair)
                {
                    let _ = reply.try_send(Err(e.into()));
                }
            }
        }
    }

    /// The pair is Idle in the pool and its socket is ours again.
    fn finish_release(&mut self, pair: PairNonce, by_peer: bool) {
        info!(?pair, by_peer, "pair released; keepalive resumes");
        if let Some(reply) = self.releases.remove(&pair) {
            let _ = reply.try_send(Ok(()));
        }
        self.emit(AgentEvent::Released { pair, by_peer });
    }

    fn emit(&mut self, event: AgentEvent) {
        if let Err(async_channel::TrySendError::Full(event)) = self.events.try_send(event) {
            debug!(?event, "event lost: nobody is reading events");
            self.io.events_lost += 1;
        }
    }

    fn stats(&self) -> AgentStats {
        AgentStats {
            pairs: self
                .pool
                .pairs()
                .map(|entry| {
                    let p = entry.pair();
                    PairStatus {
                        pair: p.nonce,
                        peer: p.peer,
                        local: p.local,
                        remote: p.remote,
                        bound: self
                            .pairs
                            .get(&p.nonce)
                            .and_then(|io| io.master.local_addr().ok()),
                        state: entry.state(),
                        stats: entry.stats(),
                        with_quic: self
                            .pairs
                            .get(&p.nonce)
                            .is_some_and(|io| !matches!(io.mode, Mode::Keepalive { .. })),
                    }
                })
                .collect(),
            drops: self.pool.drops(),
            io: self.io,
        }
    }
}

/// A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6 addresses;
/// the pool compares them with the pair's remote as given, so map them back
/// when that remote is IPv4.
fn same_family(from: SocketAddr, remote: SocketAddr) -> SocketAddr {
    match (from, remote) {
        (SocketAddr::V6(v6), SocketAddr::V4(_)) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(from, |v4| SocketAddr::new(IpAddr::V4(v4), v6.port())),
        _ => from,
    }
}

#[cfg(test)]
mod tests {
    use super::same_family;
    use core::net::SocketAddr;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn mapped_senders_match_ipv4_remotes() {
        let v4 = addr("192.0.2.1:4000");
        assert_eq!(same_family(addr("[::ffff:192.0.2.1]:4000"), v4), v4);
        assert_eq!(same_family(v4, v4), v4);
        // A real IPv6 sender stays what it is.
        let v6 = addr("[2001:db8::1]:4000");
        assert_eq!(same_family(v6, v4), v6);
        assert_eq!(
            same_family(addr("[::ffff:192.0.2.1]:4000"), v6),
            addr("[::ffff:192.0.2.1]:4000")
        );
    }
}
