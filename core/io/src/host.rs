//! The host driver: a [`HostServer`] serving a real directory over QUIC.
//!
//! One task on any [`quinn::Runtime`] owns the server and runs the sans-IO
//! loop: carry out every output, then wait for the next request, finished
//! file operation, local change, connection event or timer. Around it:
//!
//! * an accept task, and per connection a task accepting request streams
//!   and one writing pushes ([`crate::transport`] describes the protocol);
//! * per request stream a small task: it reads the request frame (size
//!   limited), hands it to the driver with a one-shot reply slot, and
//!   writes the reply frame when the driver fills the slot. So requests
//!   are concurrent, and a slow reply holds up only its own stream;
//! * [`FsPool`] threads executing the core's file operations through
//!   [`HostFs`] (blocking calls stay off the runtime); those that need no
//!   wait for the disk run on the driver itself
//!   ([`HostFs::try_execute`]);
//! * a [`TreeWatcher`] whose changes become `local_change`.

use core::net::SocketAddr;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::CoreClock;
use bytes::Bytes;
use futures_lite::stream::Stream;
use thiserror::Error;
use tracing::{debug, info, trace, warn};
use wormhole_core::codec::Pieces;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::{
    ConnId, FsOp, FsResult, HostConfig, HostEvent, HostOutput, HostServer, HostState, OpId, RelPath,
};
use wormhole_core::proto::{ClientMessage, HostMessage, RequestId};
use wormhole_core::{Instant, Rng};

use crate::hostfs::{FsPool, HostFs, HostFsConfig};
use crate::quic::{Identity, QuicConfigError};
use crate::transport::{
    CLOSE_OK, MAX_REQUEST_FRAME, NO_ANSWER, host_server_config, read_frame, write_frame,
};
use crate::watch::{TreeWatcher, WatchConfig, WatchError};

/// Passes over all sources before yielding to other tasks.
const MAX_PASSES: usize = 16;
/// Events taken per pass.
const BATCH: usize = 256;
/// Pushes waiting for one slow client before it is disconnected (it
/// reconnects and then trusts nothing it cached, so nothing is lost).
const PUSH_QUEUE: usize = 4096;
/// How long a closing connection gets to deliver the replies already
/// written (e.g. the EACCES of a refused Hello).
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Connections held while the first scan runs, at most.
const EARLY_CONNS: usize = 64;

/// How to host.
#[derive(Debug)]
pub struct HostOptions {
    /// The shared folder.
    pub root: PathBuf,
    /// The host's certificate and key.
    pub identity: Identity,
    /// What clients must prove.
    pub secret: TicketSecret,
    /// The core's bounds; `read_only` refuses every change with EROFS.
    pub config: HostConfig,
    /// The disk executor's bounds.
    pub fs: HostFsConfig,
    /// Threads executing file operations.
    pub workers: usize,
    /// Seed of the host's PRNG (session ids, lock tokens).
    pub seed: u64,
}

impl HostOptions {
    /// Defaults for sharing `root`, with a seed from the OS.
    pub fn new(root: PathBuf, identity: Identity, secret: TicketSecret) -> Self {
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        HostOptions {
            root,
            identity,
            secret,
            config: HostConfig::default(),
            fs: HostFsConfig::default(),
            workers: 4,
            seed: u64::from_le_bytes(seed),
        }
    }
}

/// Why a host could not start.
#[derive(Debug, Error)]
pub enum HostError {
    /// The shared folder cannot be opened.
    #[error("cannot share {dir}: {source}")]
    Root {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The folder cannot be watched.
    #[error("{0}")]
    Watch(#[from] WatchError),
    /// The TLS or QUIC configuration was refused.
    #[error("{0}")]
    Config(#[from] QuicConfigError),
    /// The endpoint or a thread could not start.
    #[error("cannot start the host: {0}")]
    Io(#[from] io::Error),
}

/// A running host. Dropping it stops the host.
#[derive(Debug)]
pub struct Host {
    local_addr: SocketAddr,
    _stop: async_channel::Sender<()>,
    done: async_channel::Receiver<()>,
    events: async_channel::Receiver<HostEvent>,
}

impl Host {
    /// Starts serving `options.root` on `socket` (bound by the shell).
    /// Call it from within the runtime: the tasks are spawned on it.
    pub fn spawn(
        runtime: Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
        options: HostOptions,
    ) -> Result<Host, HostError> {
        let fs =
            HostFs::open(&options.root, options.fs.clone()).map_err(|source| HostError::Root {
                dir: options.root.clone(),
                source,
            })?;
        let watcher = TreeWatcher::new(&options.root, WatchConfig::default())?;
        let fs = Arc::new(fs);
        let (pool, fs_results) = FsPool::new(fs.clone(), options.workers, 1024)?;
        let server_config = host_server_config(&options.identity)?;
        let local_addr = socket.local_addr()?;
        crate::transport::size_socket_buffers(&socket);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            crate::transport::endpoint_config(),
            Some(server_config),
            runtime.wrap_udp_socket(socket)?,
            runtime.clone(),
        )?;
        let (stop, stop_rx) = async_channel::bounded::<()>(1);
        let (done_tx, done) = async_channel::bounded::<()>(1);
        let (events_tx, events) = async_channel::bounded(256);
        let (tx, rx) = async_channel::unbounded::<Event>();

        // Accept connections. `accepting` closes when the task ends, so
        // a stop can wait until it no longer holds the endpoint (whose
        // socket is released only when every handle is gone).
        let (accept_done, accepting) = async_channel::bounded::<()>(1);
        {
            let (endpoint, tx, runtime2) = (endpoint.clone(), tx.clone(), runtime.clone());
            runtime.spawn(Box::pin(async move {
                let _done = accept_done;
                while let Some(incoming) = endpoint.accept().await {
                    let tx = tx.clone();
                    runtime2.spawn(Box::pin(async move {
                        let from = incoming.remote_address();
                        match incoming.await {
                            Ok(conn) => {
                                let _ = tx.send(Event::Opened(conn)).await;
                            }
                            Err(e) => debug!(%from, error = %e, "handshake failed"),
                        }
                    }));
                }
            }));
        }
        // Local changes.
        {
            let (tx, stop_rx) = (tx.clone(), stop_rx.clone());
            runtime.spawn(Box::pin(async move {
                loop {
                    let batch =
                        futures_lite::future::or(async { Some(watcher.changed().await) }, async {
                            let _ = stop_rx.recv().await;
                            None
                        })
                        .await;
                    let Some(paths) = batch else { break };
                    if tx.send(Event::Changed(paths)).await.is_err() {
                        break;
                    }
                }
            }));
        }
        let clock = CoreClock::new(runtime.clone());
        let mut server =
            HostServer::new(options.config, options.secret, Rng::from_u64(options.seed));
        let mut driver = Driver {
            runtime: runtime.clone(),
            clock,
            events_tx,
            tx,
            rx: Box::pin(rx),
            stop: Box::pin(stop_rx),
            fs_results: Box::pin(fs_results),
            fs,
            pool: Some(pool),
            backlog: VecDeque::new(),
            conns: BTreeMap::new(),
            early: Vec::new(),
            pending: BTreeMap::new(),
            next_conn: 1,
        };
        runtime.spawn(Box::pin(async move {
            let now = driver.now();
            server.start(now);
            driver.outputs(&mut server);
            core::future::poll_fn(|cx| driver.poll_drive(cx, &mut server)).await;
            let now = driver.now();
            server.stop(now);
            driver.outputs(&mut server);
            endpoint.close(CLOSE_OK, b"host stopped");
            let runtime = driver.runtime.clone();
            let _ = crate::runtime::timeout(&*runtime, CLOSE_FLUSH, "the accept task", async {
                let _ = accepting.recv().await;
            })
            .await;
            // Workers finish what is queued on their own threads; the
            // connections' helper tasks end with their channels.
            drop(driver);
            // Let the close reach clients, so they reconnect at once
            // instead of waiting for an idle timeout.
            let _ = crate::runtime::timeout(
                &*runtime,
                CLOSE_FLUSH,
                "connections to drain",
                endpoint.wait_idle(),
            )
            .await;
            drop(endpoint);
            info!("host stopped");
            drop(done_tx);
        }));
        info!(%local_addr, "hosting");
        Ok(Host {
            local_addr,
            _stop: stop,
            done,
            events,
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the host core reports (a bounded queue: a reader that falls
    /// behind misses some).
    pub fn events(&self) -> &async_channel::Receiver<HostEvent> {
        &self.events
    }

    /// Stops the host and waits for its driver to end.
    pub async fn stop(self) {
        let Host { _stop, done, .. } = self;
        drop(_stop);
        let _ = done.recv().await;
    }
}

/// An encoded reply (written as one frame) and the guard that keeps its
/// connection open until it is written.
type ReplySlot = async_channel::Sender<(Pieces, async_channel::Sender<()>)>;

/// What the helper tasks tell the driver.
enum Event {
    Opened(quinn::Connection),
    Request {
        conn: ConnId,
        bytes: Bytes,
        reply: ReplySlot,
    },
    Closed(ConnId),
    Changed(Vec<RelPath>),
}

struct ConnState {
    conn: quinn::Connection,
    pushes: async_channel::Sender<Pieces>,
    /// Cloned into every reply handed out; the closer waits until all
    /// are dropped (written) before closing the connection.
    flush: async_channel::Sender<()>,
    flushed: async_channel::Receiver<()>,
}

struct Driver {
    runtime: Arc<dyn quinn::Runtime>,
    clock: CoreClock,
    events_tx: async_channel::Sender<HostEvent>,
    tx: async_channel::Sender<Event>,
    rx: Pin<Box<async_channel::Receiver<Event>>>,
    stop: Pin<Box<async_channel::Receiver<()>>>,
    fs_results: Pin<Box<async_channel::Receiver<(OpId, FsResult)>>>,
    /// For the operations that need not wait for the disk, run here.
    fs: Arc<HostFs>,
    /// For the others.
    pool: Option<FsPool>,
    /// Operations the pool had no room for yet, in order.
    backlog: VecDeque<(OpId, FsOp)>,
    conns: BTreeMap<ConnId, ConnState>,
    /// Connections that arrived while the first scan ran.
    early: Vec<quinn::Connection>,
    /// Request streams waiting for their reply.
    pending: BTreeMap<(ConnId, RequestId), ReplySlot>,
    next_conn: u64,
}

impl Driver {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>, server: &mut HostServer) -> Poll<()> {
        for _ in 0..MAX_PASSES {
            if let Poll::Ready(None) = self.stop.as_mut().poll_next(cx) {
                return Poll::Ready(());
            }
            let mut busy = false;
            for _ in 0..BATCH {
                match self.fs_results.as_mut().poll_next(cx) {
                    Poll::Ready(Some((op, result))) => {
                        busy = true;
                        let now = self.now();
                        server.handle_fs(now, op, result);
                    }
                    _ => break,
                }
            }
            for _ in 0..BATCH {
                match self.rx.as_mut().poll_next(cx) {
                    Poll::Ready(Some(event)) => {
                        busy = true;
                        self.event(event, server);
                    }
                    _ => break,
                }
            }
            self.outputs(server);
            if !self.early.is_empty() && server.state() != HostState::Scanning {
                busy = true;
                for conn in std::mem::take(&mut self.early) {
                    self.opened(conn, server);
                }
                self.outputs(server);
            }
            busy |= self.submit_backlog();
            busy |= self.poll_timer(cx, server);
            if !busy {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn event(&mut self, event: Event, server: &mut HostServer) {
        let now = self.now();
        match event {
            Event::Opened(conn) => {
                if server.state() == HostState::Scanning {
                    // The core refuses connections until its first scan
                    // has read the root; a client that came early waits
                    // for it instead of being turned away.
                    if self.early.len() < EARLY_CONNS {
                        self.early.push(conn);
                    } else {
                        conn.close(NO_ANSWER, b"host starting");
                    }
                } else {
                    self.opened(conn, server);
                }
            }
            Event::Request { conn, bytes, reply } => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                match ClientMessage::decode_shared(&bytes) {
                    Ok(msg) => {
                        let key = (conn, msg.id);
                        if self.pending.contains_key(&key) {
                            // A request id still in use: refused on its
                            // own stream (the slot drops: reset).
                            debug!(?conn, id = ?msg.id, "duplicate request id");
                            return;
                        }
                        self.pending.insert(key, reply);
                        server.handle_request(now, conn, msg);
                    }
                    Err(e) => debug!(?conn, error = %e, "undecodable request; stream reset"),
                }
            }
            Event::Closed(conn) => {
                if self.conns.remove(&conn).is_some() {
                    self.pending.retain(|(c, _), _| *c != conn);
                    trace!(?conn, "connection closed");
                    server.conn_closed(now, conn);
                }
            }
            Event::Changed(paths) => {
                for path in paths {
                    trace!(?path, "local change");
                    server.local_change(now, &path);
                }
            }
        }
    }

    fn opened(&mut self, conn: quinn::Connection, server: &mut HostServer) {
        let Ok(exporter) = crate::transport::exporter(&conn) else {
            conn.close(NO_ANSWER, b"no keying material");
            return;
        };
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        debug!(?id, remote = %conn.remote_address(), "connection");
        let (pushes, push_rx) = async_channel::bounded::<Pieces>(PUSH_QUEUE);
        let (flush, flushed) = async_channel::bounded(1);
        // Request streams.
        {
            let (c, tx, runtime) = (conn.clone(), self.tx.clone(), self.runtime.clone());
            self.runtime.spawn(Box::pin(async move {
                while let Ok((send, recv)) = c.accept_bi().await {
                    runtime.spawn(Box::pin(serve_stream(id, send, recv, tx.clone())));
                }
                let _ = tx.send(Event::Closed(id)).await;
            }));
        }
        // Pushes, one unidirectional stream each, in order.
        {
            let c = conn.clone();
            self.runtime.spawn(Box::pin(async move {
                while let Ok(pieces) = push_rx.recv().await {
                    let Ok(mut send) = c.open_uni().await else {
                        break;
                    };
                    if write_frame(&mut send, pieces).await.is_err() {
                        break;
                    }
                    let _ = send.finish();
                }
            }));
        }
        self.conns.insert(
            id,
            ConnState {
                conn,
                pushes,
                flush,
                flushed,
            },
        );
        let now = self.now();
        server.conn_opened(now, id, exporter);
    }

    fn outputs(&mut self, server: &mut HostServer) {
        while let Some(o) = server.poll_output() {
            match o {
                // Most requests need no disk wait (see
                // `HostFs::try_execute`): answered here, they skip two
                // thread hand-offs.
                HostOutput::Fs { op, fs } => match self.fs.try_execute(fs) {
                    Ok(result) => {
                        let now = self.now();
                        server.handle_fs(now, op, result);
                    }
                    Err(fs) => self.backlog.push_back((op, fs)),
                },
                HostOutput::Send { conn, msg } => self.send(conn, msg),
                HostOutput::Close { conn } => {
                    if let Some(state) = self.conns.remove(&conn) {
                        self.pending.retain(|(c, _), _| *c != conn);
                        self.close(state);
                        let now = self.now();
                        server.conn_closed(now, conn);
                    }
                }
                HostOutput::Event(event) => {
                    debug!(?event, "host");
                    let _ = self.events_tx.try_send(event);
                }
            }
        }
        self.submit_backlog();
    }

    fn send(&mut self, conn: ConnId, msg: HostMessage) {
        let pieces = match msg.encode_pieces() {
            Ok(pieces) => pieces,
            Err(e) => {
                warn!(error = %e, "host message does not encode");
                return;
            }
        };
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if let HostMessage::Reply { id, .. } = &msg
            && let Some(slot) = self.pending.remove(&(conn, *id))
        {
            // A failed send means the client reset the stream: nothing
            // to deliver then.
            let _ = slot.try_send((pieces, state.flush.clone()));
            return;
        }
        if state.pushes.try_send(pieces).is_err() {
            warn!(
                ?conn,
                "client does not keep up with invalidations; disconnecting it"
            );
            // Its request-accept task then reports Closed, and the core
            // keeps the session for a resume.
            state.conn.close(NO_ANSWER, b"too slow");
        }
    }

    /// Closes a connection once the replies already handed out are
    /// written (or after [`CLOSE_FLUSH`]).
    fn close(&self, state: ConnState) {
        let ConnState {
            conn,
            flush,
            flushed,
            ..
        } = state;
        drop(flush);
        let runtime = self.runtime.clone();
        self.runtime.spawn(Box::pin(async move {
            let _ = crate::runtime::timeout(&*runtime, CLOSE_FLUSH, "replies to flush", async {
                let _ = flushed.recv().await;
            })
            .await;
            conn.close(CLOSE_OK, b"closed by host");
        }));
    }

    fn submit_backlog(&mut self) -> bool {
        let Some(pool) = &self.pool else {
            return false;
        };
        let mut any = false;
        while let Some((op, fs)) = self.backlog.pop_front() {
            match pool.try_submit(op, fs) {
                Ok(()) => any = true,
                Err(back) => {
                    // Full: the next result wakes the driver to retry.
                    self.backlog.push_front(back);
                    break;
                }
            }
        }
        any
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>, server: &mut HostServer) -> bool {
        let Some(now) = self.clock.poll_due(cx, server.poll_timeout()) else {
            return false;
        };
        server.handle_timeout(now);
        self.outputs(server);
        true
    }
}

/// One request stream: read the request, wait for the driver's reply,
/// write it. A bad frame or a dropped request resets this stream only.
async fn serve_stream(
    conn: ConnId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    tx: async_channel::Sender<Event>,
) {
    let Some(bytes) = read_frame(&mut recv, MAX_REQUEST_FRAME).await else {
        let _ = send.reset(crate::transport::BAD_FRAME);
        return;
    };
    let (reply, slot) = async_channel::bounded(1);
    let sent = tx.send(Event::Request { conn, bytes, reply }).await;
    // Not held while waiting: a request still queued in the channel holds
    // our reply slot, and the channel lives while any sender does, so
    // holding `tx` here could keep this task (and its connection, and
    // the endpoint's socket) alive forever after the driver stopped.
    drop(tx);
    if sent.is_err() {
        let _ = send.reset(NO_ANSWER);
        return;
    }
    match slot.recv().await {
        Ok((payload, _guard)) => {
            if write_frame(&mut send, payload).await.is_ok() {
                let _ = send.finish();
                // Keep the guard until the client has the bytes, so a
                // close right after (a refused Hello) does not cut them.
                let _ = send.stopped().await;
            }
        }
        Err(_) => {
            let _ = send.reset(NO_ANSWER);
        }
    }
}
