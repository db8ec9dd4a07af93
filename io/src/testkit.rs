//! For tests (feature `testkit`): an in-process host, a [`HostServer`] on
//! a file executor (the in-memory [`MemFs`], or any [`FsExecutor`])
//! reached through [`LocalTransport`], a [`Transport`] made of channels.
//!
//! It lets a real FUSE mount be tested, and run, without a network: the
//! mount driver cannot tell it from a remote host, since every message
//! is encoded and decoded as on the wire. One task on any
//! [`quinn::Runtime`] owns the host; like the other drivers it carries out
//! the core's outputs and waits for the next message, connection or timer.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::stream::Stream;
use tracing::{debug, trace, warn};
use wormhole_core::codec::Pieces;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::memfs::MemFs;
use wormhole_core::host::{
    ConnId, FsOp, FsOpId, FsResult, HostConfig, HostEvent, HostIo, HostServer, RelPath,
};
use wormhole_core::proto::HostMessage;
use wormhole_core::proto::Timestamp;
use wormhole_core::{Instant, Rng};

use crate::drive::{Pass, poll_passes};
use crate::net::{HostLink, Transport};
use crate::runtime::{BoxFuture, CoreClock};

/// Messages taken from one connection per pass.
const BATCH: usize = 64;

/// Carries out the host core's file operations.
pub trait FsExecutor: Send + 'static {
    /// Executes one operation beneath the shared root.
    fn execute(&mut self, op: FsOp) -> FsResult;
}

impl FsExecutor for MemFs {
    fn execute(&mut self, op: FsOp) -> FsResult {
        // Wall-clock file times, so versions (derived from times and
        // size) change as they would on a real disk.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.set_time(Timestamp {
            secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            nanos: now.subsec_nanos(),
        });
        MemFs::execute(self, op)
    }
}

type ConnectReply = async_channel::Sender<io::Result<HostLink>>;

/// A change made to the host's disk behind the core's back.
type LocalChange = Box<dyn FnOnce(&mut dyn FsExecutor) + Send>;

/// Commands to the host task besides connects.
enum Command {
    /// Run a change on the disk, then tell the core `path` changed (what
    /// the host's tree watcher does for real directories).
    Change {
        path: RelPath,
        change: LocalChange,
        done: async_channel::Sender<()>,
    },
}

/// A running in-process host. Dropping it stops the host: every
/// connection closes, as if its process died.
#[derive(Debug)]
pub struct LocalHost {
    connects: async_channel::Sender<ConnectReply>,
    commands: async_channel::Sender<Command>,
    _stop: async_channel::Sender<()>,
}

impl LocalHost {
    /// Starts a host serving `fs` to clients that prove `secret`. Call it
    /// from within the runtime: the host task is spawned on it.
    pub fn spawn(
        runtime: Arc<dyn quinn::Runtime>,
        fs: impl FsExecutor,
        secret: TicketSecret,
        config: HostConfig,
        seed: u64,
    ) -> LocalHost {
        let (connects, connect_rx) = async_channel::unbounded();
        let (stop, stop_rx) = async_channel::bounded(1);
        let (commands, command_rx) = async_channel::unbounded();
        let mut rng = Rng::from_u64(seed);
        let server = HostServer::new(config, secret, Rng::from_u64(rng.next_u64()));
        let clock = CoreClock::new(runtime.clone());
        let mut driver = LocalHostDriver {
            clock,
            server,
            io: LocalIo {
                fs: Box::new(fs),
                conns: BTreeMap::new(),
            },
            rng,
            connects: Box::pin(connect_rx),
            commands: Box::pin(command_rx),
            stop: Box::pin(stop_rx),
            next_conn: 1,
        };
        runtime.spawn(Box::pin(async move {
            let now = driver.now();
            driver.server.start(now);
            core::future::poll_fn(|cx| driver.poll_drive(cx)).await;
            debug!("local host stopped");
        }));
        LocalHost {
            connects,
            commands,
            _stop: stop,
        }
    }

    /// Changes the disk as a local program would (not through a client)
    /// and reports the change to the host core, which pushes
    /// invalidations to its clients. Resolves once the push is sent.
    pub async fn local_change(
        &self,
        path: RelPath,
        change: impl FnOnce(&mut dyn FsExecutor) + Send + 'static,
    ) {
        let (done, finished) = async_channel::bounded(1);
        let command = Command::Change {
            path,
            change: Box::new(change),
            done,
        };
        if self.commands.send(command).await.is_ok() {
            let _ = finished.recv().await;
        }
    }

    /// A transport that connects to this host.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport {
            connects: self.connects.clone(),
        }
    }
}

/// Connects to a [`LocalHost`]; refused once the host has stopped.
#[derive(Clone, Debug)]
pub struct LocalTransport {
    connects: async_channel::Sender<ConnectReply>,
}

impl Transport for LocalTransport {
    fn connect(&mut self) -> BoxFuture<io::Result<HostLink>> {
        let connects = self.connects.clone();
        Box::pin(async move {
            let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
            let (tx, rx) = async_channel::bounded(1);
            connects.send(tx).await.map_err(|_| refused())?;
            rx.recv().await.map_err(|_| refused())?
        })
    }
}

struct Conn {
    incoming: Pin<Box<async_channel::Receiver<Pieces>>>,
    outgoing: async_channel::Sender<Bytes>,
}

struct LocalHostDriver {
    clock: CoreClock,
    server: HostServer,
    io: LocalIo,
    rng: Rng,
    connects: Pin<Box<async_channel::Receiver<ConnectReply>>>,
    commands: Pin<Box<async_channel::Receiver<Command>>>,
    stop: Pin<Box<async_channel::Receiver<()>>>,
    next_conn: u64,
}

/// Where the host's outputs go: its disk and its connections.
struct LocalIo {
    fs: Box<dyn FsExecutor>,
    conns: BTreeMap<ConnId, Conn>,
}

impl HostIo for LocalIo {
    fn fs(&mut self, _: &HostServer, _: FsOpId, fs: FsOp) -> Option<FsResult> {
        trace!(?fs, "host fs op");
        let result = self.fs.execute(fs);
        trace!(?result, "host fs result");
        Some(result)
    }

    fn send(&mut self, conn: ConnId, msg: HostMessage) {
        match (msg.encode(), self.conns.get(&conn)) {
            (Ok(bytes), Some(c)) => {
                let _ = c.outgoing.try_send(bytes);
            }
            (Ok(_), None) => {}
            (Err(e), _) => warn!(error = %e, "reply does not encode"),
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    fn event(&mut self, event: HostEvent) {
        debug!(?event, "host");
    }
}

impl LocalHostDriver {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        poll_passes(cx, |cx| self.pass(cx))
    }

    /// One pass over every source.
    fn pass(&mut self, cx: &mut Context<'_>) -> Pass {
        if let Poll::Ready(None) = self.stop.as_mut().poll_next(cx) {
            return Pass::Done;
        }
        let mut busy = false;
        while let Poll::Ready(Some(reply)) = self.connects.as_mut().poll_next(cx) {
            busy = true;
            self.accept(reply);
        }
        while let Poll::Ready(Some(Command::Change { path, change, done })) =
            self.commands.as_mut().poll_next(cx)
        {
            busy = true;
            change(&mut *self.io.fs);
            let now = self.now();
            self.server.local_change(now, &path);
            self.outputs();
            let _ = done.try_send(());
        }
        let ids: Vec<ConnId> = self.io.conns.keys().copied().collect();
        for id in ids {
            for _ in 0..BATCH {
                let Some(conn) = self.io.conns.get_mut(&id) else {
                    break;
                };
                match conn.incoming.as_mut().poll_next(cx) {
                    Poll::Ready(Some(pieces)) => {
                        busy = true;
                        let now = self.now();
                        if let Err(e) = self.server.handle_message(now, id, &pieces.join()) {
                            debug!(error = %e, ?id, "undecodable request dropped");
                        }
                        self.outputs();
                    }
                    Poll::Ready(None) => {
                        busy = true;
                        trace!(?id, "client closed its connection");
                        self.io.conns.remove(&id);
                        let now = self.now();
                        self.server.conn_closed(now, id);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        self.outputs();
        busy |= self.poll_timer(cx);
        Pass::from_busy(busy)
    }

    fn accept(&mut self, reply: ConnectReply) {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let mut exporter = [0u8; 32];
        for part in exporter.chunks_mut(8) {
            part.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let (to_host, incoming) = async_channel::unbounded();
        let (outgoing, from_host) = async_channel::unbounded();
        // Handed over at once: nothing is ever left to drain.
        let (_, drained) = async_channel::bounded(1);
        let link = HostLink {
            exporter,
            outgoing: to_host,
            incoming: from_host,
            drained,
        };
        if reply.try_send(Ok(link)).is_err() {
            return;
        }
        self.io.conns.insert(
            id,
            Conn {
                incoming: Box::pin(incoming),
                outgoing,
            },
        );
        let now = self.now();
        self.server.conn_opened(now, id, exporter);
        self.outputs();
    }

    fn outputs(&mut self) {
        let now = self.now();
        self.server.pump(now, &mut self.io);
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(now) = self.clock.poll_due(cx, self.server.poll_timeout()) else {
            return false;
        };
        self.server.handle_timeout(now);
        self.outputs();
        true
    }
}
