//! The host driver: the task that owns the [`HostServer`] and runs its
//! sans-IO loop, the connections' helper tasks, and the request streams.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::stream::Stream;
use tracing::{debug, trace, warn};
use wormhole_core::Instant;
use wormhole_core::codec::Pieces;
use wormhole_core::host::{
    ConnId, FsOp, FsOpId, FsResult, HostEvent, HostIo, HostServer, HostState, RelPath,
};
use wormhole_core::proto::{ClientMessage, HostMessage, RequestId};

use super::fs::{FsPool, HostFs};
use crate::drive::{Pass, poll_passes};
use crate::net::frame::{MAX_REQUEST_FRAME, read_frame, write_frame};
use crate::net::quic::{BAD_FRAME, CLOSE_OK, NO_ANSWER, exporter};
use crate::runtime::CoreClock;

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

/// An encoded reply (written as one frame) and the guard that keeps its
/// connection open until it is written.
type ReplySlot = async_channel::Sender<(Pieces, async_channel::Sender<()>)>;

/// What the helper tasks tell the driver.
pub(super) enum Event {
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

pub(super) struct HostDriver {
    runtime: Arc<dyn quinn::Runtime>,
    clock: CoreClock,
    events_tx: async_channel::Sender<HostEvent>,
    tx: async_channel::Sender<Event>,
    rx: Pin<Box<async_channel::Receiver<Event>>>,
    stop: Pin<Box<async_channel::Receiver<()>>>,
    fs_results: Pin<Box<async_channel::Receiver<(FsOpId, FsResult)>>>,
    /// For the operations that need not wait for the disk, run here.
    fs: Arc<HostFs>,
    /// For the others.
    pool: Option<FsPool>,
    /// Operations the pool had no room for yet, in order.
    backlog: VecDeque<(FsOpId, FsOp)>,
    conns: BTreeMap<ConnId, ConnState>,
    /// Connections that arrived while the first scan ran.
    early: Vec<quinn::Connection>,
    /// Request streams waiting for their reply.
    pending: BTreeMap<(ConnId, RequestId), ReplySlot>,
    next_conn: u64,
}

impl HostDriver {
    pub(super) fn new(
        runtime: Arc<dyn quinn::Runtime>,
        events_tx: async_channel::Sender<HostEvent>,
        (tx, rx): (async_channel::Sender<Event>, async_channel::Receiver<Event>),
        stop: async_channel::Receiver<()>,
        fs: Arc<HostFs>,
        pool: FsPool,
        fs_results: async_channel::Receiver<(FsOpId, FsResult)>,
    ) -> Self {
        HostDriver {
            clock: CoreClock::new(runtime.clone()),
            runtime,
            events_tx,
            tx,
            rx: Box::pin(rx),
            stop: Box::pin(stop),
            fs_results: Box::pin(fs_results),
            fs,
            pool: Some(pool),
            backlog: VecDeque::new(),
            conns: BTreeMap::new(),
            early: Vec::new(),
            pending: BTreeMap::new(),
            next_conn: 1,
        }
    }

    /// Serves until the host is stopped, then stops the server, closes
    /// the endpoint and lets the close reach clients (so they reconnect at
    /// once instead of waiting for an idle timeout). `accepting` closes
    /// when the accept task has let go of the endpoint.
    pub(super) async fn run(
        mut self,
        mut server: HostServer,
        endpoint: quinn::Endpoint,
        accepting: async_channel::Receiver<()>,
    ) {
        let now = self.now();
        server.start(now);
        self.outputs(&mut server);
        core::future::poll_fn(|cx| self.poll_drive(cx, &mut server)).await;
        let now = self.now();
        server.stop(now);
        self.outputs(&mut server);
        endpoint.close(CLOSE_OK, b"host stopped");
        let runtime = self.runtime.clone();
        let _ = crate::runtime::timeout(&*runtime, CLOSE_FLUSH, "the accept task", async {
            let _ = accepting.recv().await;
        })
        .await;
        // Workers finish what is queued on their own threads; the
        // connections' helper tasks end with their channels.
        drop(self);
        let _ = crate::runtime::timeout(
            &*runtime,
            CLOSE_FLUSH,
            "connections to drain",
            endpoint.wait_idle(),
        )
        .await;
        drop(endpoint);
        tracing::info!("host stopped");
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>, server: &mut HostServer) -> Poll<()> {
        poll_passes(cx, |cx| self.pass(cx, server))
    }

    /// One pass over every source.
    fn pass(&mut self, cx: &mut Context<'_>, server: &mut HostServer) -> Pass {
        if let Poll::Ready(None) = self.stop.as_mut().poll_next(cx) {
            return Pass::Done;
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
        Pass::from_busy(busy)
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
        let Ok(exporter) = exporter(&conn) else {
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

    /// Carries out the server's outputs, then hands the pool what waits.
    fn outputs(&mut self, server: &mut HostServer) {
        let now = self.now();
        server.pump(now, self);
        self.submit_backlog();
    }

    /// Closes a connection once the replies already handed out are
    /// written (or after [`CLOSE_FLUSH`]).
    fn close_after_flush(&self, state: ConnState) {
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

impl HostIo for HostDriver {
    fn fs(&mut self, _: &HostServer, op: FsOpId, fs: FsOp) -> Option<FsResult> {
        trace!(?op, fs = ?FsOpSummary(&fs), "file operation");
        // Most requests need no disk wait (see `HostFs::try_execute`):
        // answered here, they skip two thread hand-offs.
        match self.fs.try_execute(fs) {
            Ok(result) => Some(result),
            Err(fs) => {
                self.backlog.push_back((op, fs));
                None
            }
        }
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

    fn close(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.remove(&conn) {
            self.pending.retain(|(c, _), _| *c != conn);
            self.close_after_flush(state);
        }
    }

    fn event(&mut self, event: HostEvent) {
        debug!(?event, "host");
        let _ = self.events_tx.try_send(event);
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
        let _ = send.reset(BAD_FRAME);
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

/// A file operation for the log, without the bytes it carries.
struct FsOpSummary<'a>(&'a FsOp);

impl core::fmt::Debug for FsOpSummary<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            FsOp::StageWrite { txn, offset, data } => {
                write!(f, "StageWrite({txn:?}, {offset}, {} bytes)", data.len())
            }
            op => write!(f, "{op:?}"),
        }
    }
}
