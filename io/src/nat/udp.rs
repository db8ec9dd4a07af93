//! A few UDP sockets read and written as one, for the small NAT drivers
//! (the pair agent and QUIC have their own, tuned paths).

use core::net::SocketAddr;
use core::task::{Context, Poll};
use quinn::AsyncUdpSocket;
use quinn::udp::{RecvMeta, Transmit};
use std::io::{self, IoSliceMut};
use std::sync::Arc;
use tracing::debug;

/// Datagrams read from one socket per call, so that one busy socket
/// cannot starve the others.
const RECV_BATCH: usize = 64;
/// Receive errors in a row after which a socket is left for this pass.
const MAX_RECV_ERRORS: usize = 4;

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
            let mut errors = 0;
            for n in 0.. {
                if n == RECV_BATCH {
                    more = true;
                    break;
                }
                let mut meta = [RecvMeta::default()];
                let mut bufs = [IoSliceMut::new(&mut self.buf)];
                match bound.socket.poll_recv(cx, &mut bufs, &mut meta) {
                    Poll::Ready(Ok(count)) => {
                        for m in &meta[..count] {
                            // With GRO one read may hold several datagrams.
                            for datagram in self.buf[..m.len].chunks(m.stride.max(1)) {
                                on(bound.local, m.addr, datagram);
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        // ICMP errors surface here; UDP reads on.
                        debug!(local = %bound.local, error = %e, "receive error");
                        errors += 1;
                        if errors == MAX_RECV_ERRORS {
                            break;
                        }
                    }
                    Poll::Pending => break,
                }
            }
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
