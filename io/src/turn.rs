//! A UDP socket for quinn whose datagrams travel through a TURN relay: the
//! core's [`TurnClient`] wraps what QUIC sends to the host (ChannelData
//! once the channel is bound, a Send indication before) and unwraps what
//! the server relays back, on the one real socket the allocation was made
//! from. A task of its own keeps the allocation, permission and channel
//! refreshed for as long as the socket lives.
//!
//! QUIC sees the host at the address the TURN server sees it at, and
//! nothing else: datagrams from anyone but that peer, or that are the
//! server's own answers, never reach it.

use crate::runtime::CoreClock;
use bytes::Bytes;
use core::net::SocketAddr;
use core::pin::Pin;
use core::task::{Context, Poll};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::sync::{Arc, Mutex, Weak};
use tracing::{debug, warn};
use wormhole_core::turn::{TurnClient, TurnEvent};

/// Datagrams unwrapped from one read beyond the first (a GRO read holds
/// several), kept for the next reads; more are dropped, as a full socket
/// buffer would.
const MAX_QUEUED: usize = 64;

/// An allocation and the clock its deadlines were set on.
struct Relay {
    turn: TurnClient,
    clock: CoreClock,
    /// Unwrapped datagrams not yet handed to QUIC.
    queued: VecDeque<Bytes>,
    /// Where the real socket's datagrams are read into.
    raw: Vec<u8>,
}

/// A UDP socket whose traffic to and from `peer` goes through a TURN
/// server.
pub struct RelayedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    peer: SocketAddr,
    server: SocketAddr,
    relay: Mutex<Relay>,
}

impl core::fmt::Debug for RelayedSocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RelayedSocket")
            .field("peer", &self.peer)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RelayedSocket {
    /// Wraps `socket` (the one `turn` was allocated from) for traffic to
    /// `peer`; `clock` is the clock `turn`'s deadlines were set on. Binds
    /// a channel to `peer` and starts the task that keeps the allocation
    /// alive.
    pub(crate) fn new(
        runtime: Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
        mut turn: TurnClient,
        clock: CoreClock,
        peer: SocketAddr,
    ) -> io::Result<Arc<Self>> {
        let inner = runtime.wrap_udp_socket(socket)?;
        turn.bind(clock.now(), peer);
        let server = turn.server();
        let this = Arc::new(RelayedSocket {
            inner,
            peer,
            server,
            relay: Mutex::new(Relay {
                turn,
                clock,
                queued: VecDeque::new(),
                raw: vec![0; 64 * 1024],
            }),
        });
        this.flush();
        runtime.spawn(Box::pin(keep_alive(Arc::downgrade(&this), runtime.clone())));
        Ok(this)
    }

    /// Allocates on the TURN `server` with `credentials` from `socket`
    /// and wraps it for traffic to `peer`: a relayed socket without
    /// punching (the mount's come from [`crate::nat::client_punch`]), for
    /// measuring and testing the relayed path on its own.
    pub async fn allocate(
        runtime: Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
        server: SocketAddr,
        credentials: wormhole_core::turn::TurnCredentials,
        peer: SocketAddr,
    ) -> io::Result<Arc<Self>> {
        use crate::drive::{Pass, poll_passes};
        let local = socket.local_addr()?;
        let master = socket.try_clone()?;
        let mut udp = crate::nat::udp::UdpSet::new(&*runtime, vec![socket])?;
        let mut clock = CoreClock::new(runtime.clone());
        let mut turn = TurnClient::new(
            clock.now(),
            wormhole_core::nat::BindingConfig::interactive(),
            local,
            server,
            credentials,
            wormhole_core::Rng::from_seed(crate::runtime::os_seed()?),
        );
        let outcome = core::future::poll_fn(|cx| {
            let mut outcome = None;
            let _ = poll_passes(cx, |cx| {
                let now = clock.now();
                let mut busy = udp.poll_recv(cx, |_, from, datagram| {
                    let _ = turn.handle_datagram(now, from, datagram);
                });
                if let Some(now) = clock.poll_due(cx, turn.poll_timeout()) {
                    turn.handle_timeout(now);
                    busy = true;
                }
                while let Some(t) = turn.poll_transmit() {
                    udp.send(t.local, t.remote, &t.payload);
                }
                while let Some(event) = turn.poll_event() {
                    match event {
                        TurnEvent::Allocated { .. } => outcome = Some(Ok(())),
                        TurnEvent::Failed(why) => {
                            outcome = Some(Err(io::Error::other(why.to_string())));
                        }
                        TurnEvent::Bound { .. } => {}
                    }
                }
                if outcome.is_some() {
                    return Pass::Done;
                }
                Pass::from_busy(busy)
            });
            // Without an outcome the sources' wake-ups are registered (or
            // the task woke itself to yield).
            outcome.map_or(Poll::Pending, Poll::Ready)
        })
        .await;
        outcome?;
        drop(udp);
        Self::new(runtime, master, turn, clock, peer)
    }

    fn relay(&self) -> std::sync::MutexGuard<'_, Relay> {
        self.relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends what the TURN client has queued (requests, refreshes); a full
    /// socket drops it, and the client retransmits.
    fn flush(&self) {
        let mut relay = self.relay();
        while let Some(t) = relay.turn.poll_transmit() {
            self.send_raw(t.remote, &t.payload);
        }
        while let Some(event) = relay.turn.poll_event() {
            match event {
                TurnEvent::Failed(why) => warn!(%why, "the relay is gone"),
                other => debug!(?other, "relay"),
            }
        }
    }

    fn send_raw(&self, to: SocketAddr, payload: &[u8]) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        if let Err(e) = self.inner.try_send(&transmit) {
            debug!(error = %e, "relay datagram not sent");
        }
    }
}

impl Drop for RelayedSocket {
    /// Frees the allocation at once: the server would keep it (and its
    /// relayed port) until its lifetime ran out.
    fn drop(&mut self) {
        {
            let mut relay = self.relay();
            let now = relay.clock.now();
            relay.turn.close(now);
        }
        self.flush();
    }
}

/// Drives the allocation's timers until the socket is dropped or the
/// allocation is over.
async fn keep_alive(socket: Weak<RelayedSocket>, runtime: Arc<dyn quinn::Runtime>) {
    loop {
        let at = {
            let Some(this) = socket.upgrade() else {
                return;
            };
            let relay = this.relay();
            match relay.turn.poll_timeout() {
                Some(deadline) => relay.clock.instant_at(deadline),
                None => return,
            }
        };
        let mut timer = runtime.new_timer(at);
        core::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
        let Some(this) = socket.upgrade() else {
            return;
        };
        {
            let mut relay = this.relay();
            let now = relay.clock.now();
            if relay.turn.poll_timeout().is_some_and(|t| t <= now) {
                relay.turn.handle_timeout(now);
            }
        }
        this.flush();
    }
}

impl AsyncUdpSocket for RelayedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.destination != self.peer {
            // QUIC only ever talks to the host; nothing else is relayed.
            return Ok(());
        }
        let wrapped = {
            let mut relay = self.relay();
            relay.turn.send(self.peer, transmit.contents)
        };
        match wrapped {
            Some(t) => {
                let out = Transmit {
                    destination: t.remote,
                    ecn: None,
                    contents: &t.payload,
                    segment_size: None,
                    src_ip: None,
                };
                self.inner.try_send(&out)
            }
            // The allocation is gone: as good as a lost datagram; QUIC's
            // idle timeout ends the connection and the mount finds a path.
            None => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // As many datagrams as quinn has room for: one per call would
        // cost a lock and a wake-up each.
        let room = bufs.len().min(meta.len());
        let mut filled = 0;
        loop {
            let mut guard = self.relay();
            while filled < room {
                let Some(datagram) = guard.queued.pop_front() else {
                    break;
                };
                let buf = &mut bufs[filled];
                let len = datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&datagram[..len]);
                meta[filled] = RecvMeta {
                    addr: self.peer,
                    len,
                    stride: len,
                    ecn: None,
                    dst_ip: None,
                };
                filled += 1;
            }
            if filled == room {
                return Poll::Ready(Ok(filled));
            }
            let relay = &mut *guard;
            let mut raw_meta = [RecvMeta::default()];
            let count = {
                let mut raw_bufs = [IoSliceMut::new(&mut relay.raw)];
                match self.inner.poll_recv(cx, &mut raw_bufs, &mut raw_meta) {
                    Poll::Ready(Ok(count)) => count,
                    // What was unwrapped already goes up; a receive error
                    // (an ICMP report) is dropped, as quinn logs and reads
                    // past one anyway.
                    Poll::Ready(Err(_)) | Poll::Pending if filled > 0 => {
                        return Poll::Ready(Ok(filled));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            let now = relay.clock.now();
            let mut answered = false;
            for m in &raw_meta[..count] {
                for datagram in relay.raw[..m.len].chunks(m.stride.max(1)) {
                    match relay.turn.handle_datagram(now, m.addr, datagram) {
                        Some(r) if r.peer == self.peer && relay.queued.len() < MAX_QUEUED => {
                            relay.queued.push_back(r.data);
                        }
                        Some(_) => {}
                        // The server's own answers, or strays.
                        None => answered = true,
                    }
                }
            }
            drop(guard);
            if answered {
                self.flush();
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        // The relay adds a header: a full-sized QUIC datagram may not fit.
        true
    }
}
