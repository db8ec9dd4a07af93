//! The file protocol over QUIC: the host's and the client's quinn
//! configurations, the framing on streams, and [`QuicTransport`], the
//! mount driver's [`Transport`] to a remote host.
//!
//! # Protocol
//!
//! * One bidirectional stream per request: the client writes one
//!   length-prefixed frame ([`wormhole_core::codec::frame`]) holding an
//!   encoded [`ClientMessage`] and finishes its side; the host writes the
//!   reply frame on the same stream and finishes. Requests run
//!   concurrently, so a slow read never holds up a lookup. Hello is simply
//!   the first request the client core sends.
//! * Host pushes ([`HostMessage::Invalidate`], and replies whose request
//!   stream is gone, e.g. after a session resumed on a new connection) go
//!   on unidirectional streams, one frame each.
//! * Every read from a stream has a size limit; a malformed or oversized
//!   frame resets that stream alone, never the connection.
//!
//! # Security
//!
//! The client pins the host's certificate by the ticket's fingerprint and
//! verifies the handshake signature with it ([`crate::quic`]); it presents
//! no certificate. It proves the ticket secret in Hello, bound to this TLS
//! session by the keying-material exporter under
//! [`auth::EXPORTER_LABEL`], so the secret never crosses the wire.

use core::net::SocketAddr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tracing::{debug, trace};
use wormhole_core::codec::{FRAME_HEADER_LEN, Pieces, WireMessage, frame_header};
use wormhole_core::conn::auth::{self, TicketSecret};
use wormhole_core::proto::{ClientMessage, HostMessage, Reply, Request, RequestId};

use crate::mount::{Link, Transport};
use crate::quic::{
    ALPN, Fingerprint, Identity, Pinned, PinnedServer, QuicConfigError, SERVER_NAME, provider,
};
use crate::runtime::{BoxFuture, timeout};

/// Largest request frame a host reads from a stream.
pub const MAX_REQUEST_FRAME: usize = FRAME_HEADER_LEN + <ClientMessage as WireMessage>::MAX_SIZE;
/// Largest reply or push frame a client reads from a stream.
pub const MAX_HOST_FRAME: usize = FRAME_HEADER_LEN + <HostMessage as WireMessage>::MAX_SIZE;

/// Stream error code: the frame was malformed or too large.
pub(crate) const BAD_FRAME: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Stream error code: no answer will come (the request was dropped).
pub(crate) const NO_ANSWER: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Connection close code for an orderly close.
pub(crate) const CLOSE_OK: quinn::VarInt = quinn::VarInt::from_u32(0);

/// Largest UDP payload MTU discovery searches for. quinn's default
/// (1452) fits Ethernet; a path that carries more (loopback, jumbo-frame
/// LANs) then costs a third of the packets, and per-packet work (system
/// calls, crypto, acks) is most of QUIC's cost: reading 1 GiB over
/// loopback went from 3.5 s to 1.8 s of wall time and from 6.3 to 3.4 s of
/// CPU. Paths that carry less are found by the discovery and keep their
/// own size. Not higher: at 8000, quinn's batches of segments reach 64
/// KiB, and on loopback throughput collapsed to a few MB/s; 4000 (and
/// 6000) measured well.
const MTU_UPPER_BOUND: u16 = 4000;

/// Endpoint settings: accept datagrams as large as MTU discovery may
/// find.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    c.max_udp_payload_size(MTU_UPPER_BOUND)
        .expect("within QUIC's bounds");
    c
}

/// Socket buffer, each way, for an endpoint carrying file traffic.
const SOCKET_BUFFER: usize = 8 << 20;

/// Gives a file-traffic socket buffers that hold a burst. A read reply
/// arrives as a run of datagrams faster than the receiver is scheduled;
/// with the kernel's default (about 200 KiB) the socket overflows, and
/// QUIC takes each dropped datagram for congestion and halves its
/// window. Root may exceed the system's `rmem_max`/`wmem_max` (the mount
/// runs as root); anyone else gets up to them.
pub(crate) fn size_socket_buffers(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt as so;
    if so::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER).is_err() {
        let _ = so::set_socket_recv_buffer_size(socket, SOCKET_BUFFER);
    }
    if so::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER).is_err() {
        let _ = so::set_socket_send_buffer_size(socket, SOCKET_BUFFER);
    }
}

/// How long one address gets to complete a handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a link that is let go waits for the host to answer what was
/// sent on it last (an unmount's Goodbye) before closing anyway: a round
/// trip on any working path, and a bound on an unmount's wait for a host
/// that is gone.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Flow control and liveness for file traffic. A read reply is a 128 KiB
/// chunk and many are in flight at once; windows of several MiB keep a
/// loopback or LAN link busy instead of waiting on window updates.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    // The client core bounds its requests in flight; this is the
    // protocol's own ceiling.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(256));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(30_000).into()));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// The host's server configuration: its certificate, ALPN `wormhole/1`,
/// no client certificate (clients prove the ticket secret in Hello).
pub fn host_server_config(identity: &Identity) -> Result<quinn::ServerConfig, QuicConfigError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert_der().clone()], identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// A client configuration that accepts only the host certificate `pin`
/// (real signature checks, see [`crate::quic`]).
pub fn host_client_config(pin: Fingerprint) -> Result<quinn::ClientConfig, QuicConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer(Pinned::new(pin, &provider)));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// The 32 bytes Hello's proof binds to, from this connection's TLS session.
pub fn exporter(conn: &quinn::Connection) -> io::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
        .map_err(|_| io::Error::other("TLS keying-material export failed"))?;
    Ok(out)
}

/// Writes `payload` as one frame: its length, then the payload's pieces,
/// handed to quinn as they are (a copy into a framed buffer and quinn's
/// own copy of a borrowed slice would each move a chunk's bytes once
/// more).
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    payload: Pieces,
) -> Result<(), quinn::WriteError> {
    let header = Bytes::copy_from_slice(&frame_header(payload.len()));
    let mut chunks: Vec<Bytes> = std::iter::once(header).chain(payload.into_vec()).collect();
    send.write_all_chunks(&mut chunks).await
}

/// Reads one stream to its end as one frame of at most `max` bytes,
/// header included, and returns its payload. A stream holding anything
/// else (a short header, a payload shorter or longer than its header
/// says, a frame beyond `max`) is stopped.
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Option<Bytes> {
    match read_whole_frame(recv, max).await {
        Ok(payload) => Some(payload),
        Err(FrameRead::Bad) => {
            let _ = recv.stop(BAD_FRAME);
            None
        }
        Err(FrameRead::Lost(e)) => {
            trace!(error = %e, "stream read failed");
            None
        }
    }
}

/// Why a stream held no frame.
enum FrameRead {
    /// The peer sent something that is not one frame.
    Bad,
    /// The stream or connection broke.
    Lost(quinn::ReadError),
}

async fn read_whole_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Bytes, FrameRead> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameRead::Bad,
        quinn::ReadExactError::ReadError(e) => FrameRead::Lost(e),
    })?;
    let len = usize::try_from(u32::from_be_bytes(header)).map_err(|_| FrameRead::Bad)?;
    if len > max.saturating_sub(FRAME_HEADER_LEN) {
        return Err(FrameRead::Bad);
    }
    // The payload arrives as one piece per QUIC packet. They are kept as
    // they come and joined once at the end (into a recycled buffer, no
    // zeroing and no regrowth, which quinn's `read_to_end` does both), and
    // no memory is promised to a length the peer has not yet sent.
    let mut pieces = Vec::new();
    let mut got = 0;
    while got < len {
        match recv.read_chunk(len - got, true).await {
            Ok(Some(chunk)) => {
                got += chunk.bytes.len();
                pieces.push(chunk.bytes);
            }
            Ok(None) => return Err(FrameRead::Bad),
            Err(e) => return Err(FrameRead::Lost(e)),
        }
    }
    // The frame must fill the stream exactly.
    match recv.read_chunk(1, true).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(FrameRead::Bad),
        Err(e) => return Err(FrameRead::Lost(e)),
    }
    Ok(crate::recycle::join(pieces, len))
}

/// Why connecting to a host failed.
fn unreachable(addrs: &[SocketAddr], last: Option<String>) -> io::Error {
    let tried: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "cannot reach the host at {}: {}",
            tried.join(", "),
            last.unwrap_or_else(|| "no address".into())
        ),
    )
}

/// The mount driver's transport to a remote host over QUIC.
#[derive(Clone, Debug)]
pub struct QuicTransport {
    runtime: Arc<dyn quinn::Runtime>,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addrs: Vec<SocketAddr>,
}

impl QuicTransport {
    /// A transport to the host at `addrs` (tried in order) whose
    /// certificate has fingerprint `pin`, from a client endpoint on
    /// `socket` (bind it to the unspecified address of the hosts' family,
    /// port 0). Call it from within the runtime.
    pub fn new(
        runtime: Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
        addrs: Vec<SocketAddr>,
        pin: Fingerprint,
    ) -> io::Result<Self> {
        let config = host_client_config(pin).map_err(io::Error::other)?;
        size_socket_buffers(&socket);
        let socket = runtime.wrap_udp_socket(socket)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            None,
            socket,
            runtime.clone(),
        )?;
        Ok(QuicTransport {
            runtime,
            endpoint,
            config,
            addrs,
        })
    }

    /// Opens a QUIC connection to the first address that answers with
    /// the pinned certificate.
    pub async fn connect_quic(&self) -> io::Result<quinn::Connection> {
        let mut last = None;
        for &addr in &self.addrs {
            let connecting =
                match self
                    .endpoint
                    .connect_with(self.config.clone(), addr, SERVER_NAME)
                {
                    Ok(c) => c,
                    Err(e) => {
                        last = Some(e.to_string());
                        continue;
                    }
                };
            let what = format!("a QUIC handshake with {addr}");
            match timeout(&*self.runtime, CONNECT_TIMEOUT, what, connecting).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(e) => last = Some(e.to_string()),
            }
            debug!(%addr, error = ?last, "host address failed");
        }
        Err(unreachable(&self.addrs, last))
    }

    /// Checks a ticket before mounting: connects, says Hello with the
    /// proof of `secret`, and says Goodbye. Errors are one line a person
    /// can act on (unreachable, wrong certificate, secret refused).
    pub async fn probe(&self, secret: &TicketSecret) -> io::Result<()> {
        let conn = self.connect_quic().await?;
        let proof = auth::proof(secret, &exporter(&conn)?);
        let hello = Request::Hello {
            version: u16::from(wormhole_core::codec::PROTOCOL_VERSION),
            proof,
            resume: None,
        };
        let answer = request(&conn, RequestId(1), hello).await?;
        let result = match answer {
            Ok(Reply::HelloAck { .. }) => {
                let _ = request(&conn, RequestId(2), Request::Goodbye).await;
                Ok(())
            }
            Ok(other) => Err(io::Error::other(format!(
                "the host answered Hello with {other:?}"
            ))),
            Err(wormhole_core::proto::Errno::Acces) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the host refused the ticket's secret (EACCES): the ticket is wrong or the \
                 host was restarted with --new-identity",
            )),
            Err(e) => Err(io::Error::other(format!("the host refused Hello: {e:?}"))),
        };
        conn.close(CLOSE_OK, b"probe done");
        result
    }
}

/// One request on its own stream of `conn`, waiting for its reply: the
/// raw protocol, for the probe and for tests.
pub async fn request(
    conn: &quinn::Connection,
    id: RequestId,
    request: Request,
) -> io::Result<Result<Reply, wormhole_core::proto::Errno>> {
    let pieces = ClientMessage { id, request }
        .encode_pieces()
        .map_err(io::Error::other)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(io::Error::other)?;
    write_frame(&mut send, pieces)
        .await
        .map_err(io::Error::other)?;
    let _ = send.finish();
    let reply = read_frame(&mut recv, MAX_HOST_FRAME)
        .await
        .ok_or_else(|| io::Error::other("the host closed the stream without a reply"))?;
    match HostMessage::decode_shared(&reply).map_err(io::Error::other)? {
        HostMessage::Reply { id: got, result } if got == id => Ok(result),
        other => Err(io::Error::other(format!(
            "unexpected host message {other:?}"
        ))),
    }
}

impl Transport for QuicTransport {
    fn connect(&mut self) -> BoxFuture<io::Result<Link>> {
        let this = self.clone();
        Box::pin(async move {
            let conn = this.connect_quic().await?;
            let exporter = exporter(&conn)?;
            let (outgoing, out_rx) = async_channel::unbounded::<Pieces>();
            let (in_tx, incoming) = async_channel::unbounded::<Bytes>();
            // Every request's task holds a clone of `in_flight` until it
            // ends (answered, or its stream or connection gone), so a link
            // that is let go can wait for the last ones; `drained_tx` goes
            // when it has.
            let (in_flight, all_done) = async_channel::bounded::<()>(1);
            let (drained_tx, drained) = async_channel::bounded::<()>(1);
            let runtime = this.runtime.clone();
            // Requests: one stream each, replies into `incoming`.
            {
                let (conn, in_tx, runtime) = (conn.clone(), in_tx.clone(), runtime.clone());
                this.runtime.spawn(Box::pin(async move {
                    loop {
                        let next =
                            futures_lite::future::or(async { out_rx.recv().await.ok() }, async {
                                conn.closed().await;
                                None
                            })
                            .await;
                        let Some(pieces) = next else { break };
                        let (conn, in_tx, in_flight) =
                            (conn.clone(), in_tx.clone(), in_flight.clone());
                        runtime.spawn(Box::pin(async move {
                            let _in_flight = in_flight;
                            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                                return;
                            };
                            if write_frame(&mut send, pieces).await.is_err() {
                                return;
                            }
                            let _ = send.finish();
                            if let Some(reply) = read_frame(&mut recv, MAX_HOST_FRAME).await {
                                let _ = in_tx.send(reply).await;
                            }
                        }));
                    }
                    // The driver dropped the link, or the connection died.
                    // Closing discards what the host has not acknowledged,
                    // the driver's last Goodbye among it: wait until the
                    // last requests are answered (a dead connection ends
                    // them at once).
                    drop(in_flight);
                    let _ = crate::timeout(
                        &*runtime,
                        DRAIN_LIMIT,
                        "the last requests",
                        all_done.recv(),
                    )
                    .await;
                    conn.close(CLOSE_OK, b"closed");
                    drop(drained_tx);
                }));
            }
            // Pushes: one unidirectional stream each.
            {
                let conn = conn.clone();
                this.runtime.spawn(Box::pin(async move {
                    while let Ok(mut recv) = conn.accept_uni().await {
                        let in_tx = in_tx.clone();
                        runtime.spawn(Box::pin(async move {
                            if let Some(push) = read_frame(&mut recv, MAX_HOST_FRAME).await {
                                let _ = in_tx.send(push).await;
                            }
                        }));
                    }
                }));
            }
            Ok(Link {
                exporter,
                outgoing,
                incoming,
                drained,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        let id = Identity::generate().expect("identity");
        assert!(host_server_config(&id).is_ok());
        assert!(host_client_config(id.fingerprint()).is_ok());
        let again = Identity::from_der(id.cert_der().to_vec(), id.key_der().to_vec())
            .expect("the same identity back");
        assert_eq!(again.fingerprint(), id.fingerprint());
        let other = Identity::generate().expect("identity");
        assert!(
            Identity::from_der(id.cert_der().to_vec(), other.key_der().to_vec()).is_err(),
            "a key that is not the certificate's is refused"
        );
    }
}
