//! A few UDP sockets read and written as one, for the small NAT drivers,
//! and the one batched read of a socket that they and the pair agent's
//! driver share ([`recv_batch`]); QUIC has its own path.

use core::net::SocketAddr;
use core::task::{Context, Poll};
use quinn::AsyncUdpSocket;
use quinn::udp::{RecvMeta, Transmit};
use std::io::{self, IoSliceMut};
use std::sync::Arc;
use tracing::debug;

/// Reads from one socket per batch, so that one busy socket cannot starve
/// the others.
const RECV_BATCH: usize = 32;
/// Receive errors in a row (an ICMP error each, say) after which a socket
/// is left for this pass.
const MAX_RECV_ERRORS: usize = 4;

/// How a [`recv_batch`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Nothing more to read: the socket's wake-up is registered.
    Drained,
    /// The batch ran out with datagrams perhaps still waiting: read again
    /// (after the other sockets had their turn).
    More,
    /// Reads failed [`MAX_RECV_ERRORS`] times in a row. No wake-up is
    /// registered: the socket is read again on the caller's next pass
    /// (its next timer, or another socket's wake-up) instead of being
    /// spun on.
    Failing,
}

/// Reads what `socket` has, at most [`RECV_BATCH`] reads so that one busy
/// socket cannot starve the others, calling `on(from, datagram)` for each
/// datagram (a GRO read holds several, `stride` bytes each). Receive
/// errors (ICMP errors surface here) are logged and read past, up to
/// [`MAX_RECV_ERRORS`] in a row.
pub(crate) fn recv_batch(
    socket: &dyn AsyncUdpSocket,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    mut on: impl FnMut(SocketAddr, &[u8]),
) -> Batch {
    let mut errors = 0;
    for _ in 0..RECV_BATCH {
        let mut meta = [RecvMeta::default()];
        let mut bufs = [IoSliceMut::new(buf)];
        match socket.poll_recv(cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(count)) => {
                errors = 0;
                for m in &meta[..count] {
                    for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                        on(m.addr, datagram);
                    }
                }
            }
            Poll::Ready(Err(e)) => {
                debug!(error = %e, "receive error");
                errors += 1;
                if errors == MAX_RECV_ERRORS {
                    return Batch::Failing;
                }
            }
            Poll::Pending => return Batch::Drained,
        }
    }
    Batch::More
}

struct Bound {
    local: SocketAddr,
    socket: Arc<dyn AsyncUdpSocket>,
}

/// Sockets, each known by its local address.
pub(crate) struct UdpSet {
    sockets: Vec<Bound>,
    buf: Vec<u8>,
    /// Datagrams not sent (socket full or an error): UDP may drop them.
    pub(crate) send_drops: u64,
}

impl UdpSet {
    /// Takes over bound sockets.
    pub(crate) fn new(
        runtime: &dyn quinn::Runtime,
        sockets: Vec<std::net::UdpSocket>,
    ) -> io::Result<Self> {
        let sockets = sockets
            .into_iter()
            .map(|s| {
                let local = s.local_addr()?;
                let socket = runtime.wrap_udp_socket(s)?;
                Ok(Bound { local, socket })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(UdpSet {
            sockets,
            buf: vec![0; 64 * 1024],
            send_drops: 0,
        })
    }

    /// Takes over one more bound socket; returns its local address.
    pub(crate) fn add(
        &mut self,
        runtime: &dyn quinn::Runtime,
        socket: std::net::UdpSocket,
    ) -> io::Result<SocketAddr> {
        let local = socket.local_addr()?;
        let socket = runtime.wrap_udp_socket(socket)?;
        self.sockets.push(Bound { local, socket });
        Ok(local)
    }

    /// Stops reading and writing the socket bound to `local`.
    pub(crate) fn remove(&mut self, local: SocketAddr) {
        self.sockets.retain(|b| b.local != local);
    }

    /// The sockets' local addresses.
    pub(crate) fn locals(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|b| b.local).collect()
    }

    /// Reads what has arrived, calling `on(local, from, datagram)` for
    /// each datagram. Returns true if a socket had more than one batch
    /// (call again), false once every socket has registered its wake-up.
    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        mut on: impl FnMut(SocketAddr, SocketAddr, &[u8]),
    ) -> bool {
        let mut more = false;
        for bound in &self.sockets {
            let batch = recv_batch(&*bound.socket, cx, &mut self.buf, |from, datagram| {
                on(bound.local, from, datagram);
            });
            more |= batch == Batch::More;
        }
        more
    }

    /// Sends `payload` from the socket bound to `local`. A full socket or
    /// an error drops it, as the network may: the core retransmits what
    /// matters.
    pub(crate) fn send(&mut self, local: SocketAddr, remote: SocketAddr, payload: &[u8]) {
        let Some(bound) = self.sockets.iter().find(|b| b.local == local) else {
            debug!(%local, "no socket to send from");
            self.send_drops += 1;
            return;
        };
        let transmit = Transmit {
            destination: remote,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        if let Err(e) = bound.socket.try_send(&transmit) {
            debug!(%local, %remote, error = %e, "send dropped");
            self.send_drops += 1;
        }
    }
}
