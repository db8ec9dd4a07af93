//! How a mount reaches its host: the [`Transport`] trait and the
//! [`HostLink`] it yields, and [`QuicTransport`], the file protocol over
//! QUIC to a remote host.
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
//! verifies the handshake signature with it ([`crate::net::identity`]); it presents
//! no certificate. It proves the ticket secret in Hello, bound to this TLS
//! session by the keying-material exporter under
//! [`auth::EXPORTER_LABEL`], so the secret never crosses the wire.

use core::net::SocketAddr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;
use wormhole_core::codec::Pieces;
use wormhole_core::conn::auth::{self, TicketSecret};
use wormhole_core::proto::{ClientMessage, HostMessage, Reply, Request, RequestId};

use crate::net::frame::{MAX_HOST_FRAME, read_frame, write_frame};
use crate::net::identity::{Fingerprint, SERVER_NAME};
use crate::net::quic::{
    CLOSE_OK, endpoint_config, exporter, host_client_config, size_socket_buffers,
};
use crate::runtime::{BoxFuture, timeout};

/// A connection to the host, as the mount driver sees it: encoded
/// [`ClientMessage`]s out, encoded [`HostMessage`]s in.
///
/// Closing is dropping: the driver drops both ends to close; the transport
/// closes `incoming` when the connection is lost.
#[derive(Debug)]
pub struct HostLink {
    /// TLS keying material of this connection (what Hello's proof binds).
    pub exporter: [u8; 32],
    /// Messages to the host, one request each.
    pub outgoing: async_channel::Sender<Pieces>,
    /// Messages from the host: replies and invalidations.
    pub incoming: async_channel::Receiver<Bytes>,
    /// Closed (its `recv` fails) once `outgoing` was dropped and what was
    /// sent on it before has reached the host, or could not, within a
    /// bound the transport keeps. The driver waits for it before it
    /// stops, so the last Goodbye is not lost with the process.
    pub drained: async_channel::Receiver<()>,
}

/// How the mount reaches its host.
pub trait Transport: Send + 'static {
    /// Opens a connection. The driver waits for the future, polling
    /// everything else meanwhile, and tells the core how it went.
    fn connect(&mut self) -> BoxFuture<io::Result<HostLink>>;

    /// Yields each time a better path to the host is ready, over which
    /// the next [`Self::connect`] goes: the driver then moves the session
    /// there (`ClientCore::move_path`). Asked once; `None` (the default)
    /// for a transport whose path never improves.
    fn better_paths(&mut self) -> Option<async_channel::Receiver<()>> {
        None
    }
}

/// How long one address gets to complete a handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a link that is let go waits for the host to answer what was
/// sent on it last (an unmount's Goodbye) before closing anyway: a round
/// trip on any working path, and a bound on an unmount's wait for a host
/// that is gone.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

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
        size_socket_buffers(&socket);
        let socket = runtime.wrap_udp_socket(socket)?;
        Self::over(runtime, socket, addrs, pin)
    }

    /// The same over a socket already wrapped for quinn (a relayed one,
    /// say).
    pub fn over(
        runtime: Arc<dyn quinn::Runtime>,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        addrs: Vec<SocketAddr>,
        pin: Fingerprint,
    ) -> io::Result<Self> {
        let config = host_client_config(pin).map_err(io::Error::other)?;
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
    fn connect(&mut self) -> BoxFuture<io::Result<HostLink>> {
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
            Ok(HostLink {
                exporter,
                outgoing,
                incoming,
                drained,
            })
        })
    }
}

/// The path a [`RenewingTransport`] connects over, shared with the
/// [`Renewal`]s it hands out.
#[derive(Debug)]
struct PathSlot {
    current: std::sync::Mutex<QuicTransport>,
    /// The last connect did not succeed (set before each attempt: the
    /// connection machine drops an attempt that outlives its timeout).
    stale: std::sync::atomic::AtomicBool,
    /// `current` was just upgraded: the next connect is a move onto it.
    upgraded: std::sync::atomic::AtomicBool,
    /// `current` was just found by a renewal and not tried yet.
    fresh: std::sync::atomic::AtomicBool,
}

/// A request for a fresh path to the host. Whoever finds one hands it to
/// [`Renewal::found`], which makes it the transport's path at once: a path
/// found after the connect that asked was given up (finding one can take
/// longer than a connect may) is used by the next connect, not lost.
#[derive(Debug)]
pub struct Renewal {
    slot: Arc<PathSlot>,
    answer: async_channel::Sender<io::Result<()>>,
}

impl Renewal {
    /// Whether a fresh path is still wanted: an earlier renewal may have
    /// found one since this was asked for.
    pub fn wanted(&self) -> bool {
        self.slot.stale.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// An earlier renewal found the path this one asks for: the waiting
    /// connect goes on over it.
    pub fn found_earlier(self) {
        let _ = self.answer.try_send(Ok(()));
    }

    /// The outcome of the search: a fresh path becomes the transport's
    /// current one, and the waiting connect (if still there) goes on.
    pub fn found(self, path: io::Result<QuicTransport>) {
        let answer = path.map(|transport| {
            self.slot.replace(transport);
            // Fresh and untried: the next connect goes over it, not over
            // a spare.
            self.slot
                .fresh
                .store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let _ = self.answer.try_send(answer);
    }
}

impl PathSlot {
    /// Makes `transport` the path the next connect goes over.
    fn replace(&self, transport: QuicTransport) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = transport;
        self.stale.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Hands a [`RenewingTransport`] a better path than the one it is on (a
/// direct one while relayed): the mount moves its session there without
/// a request failing.
#[derive(Clone, Debug)]
pub struct PathUpgrade {
    slot: Arc<PathSlot>,
    better: async_channel::Sender<()>,
}

impl PathUpgrade {
    /// Makes `path` the transport's path and has the mount move to it.
    pub fn upgrade(&self, path: QuicTransport) {
        self.slot.replace(path);
        self.slot
            .upgraded
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Full: a move is pending already, and it takes this path.
        let _ = self.better.try_send(());
    }
}

/// A mount's transport over a path that can be found anew: a punched path
/// dies with the host process that held its other end, or with a NAT that
/// forgot the mapping, and redialling the same addresses then never
/// works. Each connect tries the current path; a connect after one that
/// did not succeed sends a [`Renewal`] on `renew` (to the mount, which
/// punches again through the rendezvous) and connects over what it finds.
#[derive(Clone, Debug)]
pub struct RenewingTransport {
    slot: Arc<PathSlot>,
    renew: async_channel::Sender<Renewal>,
    /// [`PathUpgrade`]'s signal, until the driver takes it.
    better: Option<async_channel::Receiver<()>>,
    better_tx: async_channel::Sender<()>,
    /// Set while the mount holds a spare path ready (see
    /// [`Self::renew_first_when`]).
    spare_ready: Arc<std::sync::atomic::AtomicBool>,
}

impl RenewingTransport {
    /// Starts on `current`; fresh paths come from whoever reads `renew`.
    pub fn new(current: QuicTransport, renew: async_channel::Sender<Renewal>) -> Self {
        let (better_tx, better) = async_channel::bounded(1);
        RenewingTransport {
            slot: Arc::new(PathSlot {
                current: std::sync::Mutex::new(current),
                stale: std::sync::atomic::AtomicBool::new(false),
                upgraded: std::sync::atomic::AtomicBool::new(false),
                fresh: std::sync::atomic::AtomicBool::new(false),
            }),
            renew,
            better: Some(better),
            better_tx,
            spare_ready: Arc::default(),
        }
    }

    /// While `spare_ready` holds, a connect after a lost connection asks
    /// for a [`Renewal`] at once instead of redialling the path that was
    /// just lost: a spare path, alive by its keepalive seconds ago, is
    /// the better bet, and a dead path costs a whole handshake timeout
    /// to find out. A move onto an upgraded path still connects there.
    pub fn renew_first_when(mut self, spare_ready: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.spare_ready = spare_ready;
        self
    }

    /// What hands this transport a better path.
    pub fn upgrades(&self) -> PathUpgrade {
        PathUpgrade {
            slot: self.slot.clone(),
            better: self.better_tx.clone(),
        }
    }

    fn current(&self) -> QuicTransport {
        self.slot
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Transport for RenewingTransport {
    fn connect(&mut self) -> BoxFuture<io::Result<HostLink>> {
        use std::sync::atomic::Ordering;
        let this = self.clone();
        Box::pin(async move {
            let moving = this.slot.upgraded.swap(false, Ordering::SeqCst);
            let fresh = this.slot.fresh.swap(false, Ordering::SeqCst);
            let spare = !moving && !fresh && this.spare_ready.load(Ordering::SeqCst);
            if this.slot.stale.swap(true, Ordering::SeqCst) || spare {
                let (answer, found) = async_channel::bounded(1);
                let renewal = Renewal {
                    slot: this.slot.clone(),
                    answer,
                };
                this.renew
                    .send(renewal)
                    .await
                    .map_err(|_| io::Error::other("no way to find a new path to the host"))?;
                found
                    .recv()
                    .await
                    .map_err(|_| io::Error::other("finding a new path to the host stopped"))??;
                debug!("connecting over a new path to the host");
            }
            let link = this.current().connect().await?;
            this.slot.stale.store(false, Ordering::SeqCst);
            // A move the core did not make (it was not connected) must
            // not make the next loss redial instead of taking a spare.
            this.slot.upgraded.store(false, Ordering::SeqCst);
            Ok(link)
        })
    }

    fn better_paths(&mut self) -> Option<async_channel::Receiver<()>> {
        self.better.take()
    }
}
