//! The mount: a FUSE session, the mount driver that runs a
//! [`ClientCore`], the disk (L2) cache, and a [`Transport`] to the host.
//!
//! The driver is one task on any [`quinn::Runtime`] and runs the sans-IO
//! loop of the core contract, like the pair driver: carry out every
//! output, then wait for the next kernel request, host message, finished
//! connect, disk-cache read or timer. It makes no file-system decision.
//!
//! Threads, and why:
//!
//! * fuser's session thread reads `/dev/fuse` and hands each request to
//!   the driver ([`crate::fuse`]); replies are written by the driver
//!   whenever the core answers.
//! * The disk cache runs on its own thread: chunk files are written and
//!   read with blocking calls, which must not stall the driver's runtime.
//! * Kernel invalidations are sent from their own thread: the kernel may
//!   hold the inode's lock while it waits for a reply from us, so a
//!   notification written from the driver could wait for the driver.
//!
//! The transport is a small trait: [`Transport::connect`] gives a
//! [`Link`], two channels of encoded messages. The in-process host of
//! [`crate::loopback`] implements it; QUIC plugs in the same way.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::future::Future;
use futures_lite::stream::Stream;
use thiserror::Error;
use tracing::{debug, info, trace, warn};
use wormhole_core::client::{ClientConfig, ClientCore, ClientEvent, ClientOutput, Req};
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::proto::Name;
use wormhole_core::vfs::Ino;
use wormhole_core::{Instant, Rng};

use crate::disk_cache::{DiskCache, DiskQueue, DiskRead};
use crate::fuse::{KernelRequest, WormholeFs};
use crate::runtime::{BoxFuture, CoreClock};

/// Kernel requests waiting for the driver at most; fuser's thread waits
/// when they are all taken.
const KERNEL_QUEUE: usize = 1024;
/// Passes over all sources before yielding to other tasks.
const MAX_PASSES: usize = 16;
/// Kernel requests, host messages or disk reads taken per pass, each.
const BATCH: usize = 64;
/// Connection events kept for a slow reader of [`Mount::events`].
const EVENT_QUEUE: usize = 64;

/// An established connection to the host: encoded [`ClientMessage`]s out,
/// encoded [`HostMessage`]s in.
///
/// Closing is dropping: the driver drops both ends to close; the transport
/// closes `incoming` when the connection is lost.
///
/// [`ClientMessage`]: wormhole_core::proto::ClientMessage
/// [`HostMessage`]: wormhole_core::proto::HostMessage
#[derive(Debug)]
pub struct Link {
    /// TLS keying material of this connection (what Hello's proof binds).
    pub exporter: [u8; 32],
    /// Messages to the host, one request each.
    pub outgoing: async_channel::Sender<Bytes>,
    /// Messages from the host: replies and invalidations.
    pub incoming: async_channel::Receiver<Bytes>,
}

/// How the mount reaches its host.
pub trait Transport: Send + 'static {
    /// Opens a connection. The driver waits for the future, polling
    /// everything else meanwhile, and tells the core how it went.
    fn connect(&mut self) -> BoxFuture<io::Result<Link>>;
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The client's timing and bounds.
    pub client: ClientConfig,
    /// The ticket's secret, proved to the host.
    pub secret: TicketSecret,
    /// Where chunks are kept across mounts; `None`: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Mount read-only in the kernel as well.
    pub read_only: bool,
    /// Seed of the client's PRNG.
    pub seed: [u8; 32],
}

impl MountOptions {
    /// Options with a PRNG seed from the operating system.
    pub fn new(secret: TicketSecret) -> Result<Self, MountError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| MountError::NoRandomness)?;
        Ok(MountOptions {
            client: ClientConfig::default(),
            secret,
            cache_dir: None,
            read_only: false,
            seed,
        })
    }
}

/// Why a mount failed.
#[derive(Debug, Error)]
pub enum MountError {
    /// The kernel refused the mount.
    #[error(
        "cannot mount FUSE at {mountpoint}: {source} (is /dev/fuse present, the mountpoint an \
         empty directory, and are we root or is fusermount3 installed?)"
    )]
    Fuse {
        /// Where.
        mountpoint: PathBuf,
        /// The kernel's or fusermount's error.
        source: io::Error,
    },
    /// The cache directory cannot be used.
    #[error("cache directory {dir}: {source}")]
    CacheDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
    /// The OS gave no randomness for the PRNG seed.
    #[error("the operating system gave no randomness")]
    NoRandomness,
}

/// A mounted Wormhole. Dropping it unmounts (lazily if busy); prefer
/// [`Mount::unmount`], which reports errors.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    /// Weak: the driver stops when fuser's session (the only strong
    /// sender) ends.
    requests: async_channel::WeakSender<KernelRequest>,
    mountpoint: PathBuf,
    events: async_channel::Receiver<ClientEvent>,
    done: async_channel::Receiver<()>,
}

impl core::fmt::Debug for Mount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl Mount {
    /// Mounts at `mountpoint` a file system served through `transport`,
    /// its driver running on `runtime`. Blocks for the mount itself (a
    /// system call and the kernel's INIT), not for the host: operations
    /// wait for the connection inside the core. Call it from within the
    /// runtime (e.g. inside [`Shell::block_on`](crate::Shell::block_on)):
    /// the driver is spawned on it.
    pub fn new(
        runtime: Arc<dyn quinn::Runtime>,
        transport: impl Transport,
        mountpoint: &Path,
        options: MountOptions,
    ) -> Result<Mount, MountError> {
        let disk = match &options.cache_dir {
            Some(dir) => Some(DiskCache::open(dir)?),
            None => None,
        };
        let (req_tx, req_rx) = async_channel::bounded(KERNEL_QUEUE);
        let (events_tx, events) = async_channel::bounded(EVENT_QUEUE);
        let (done_tx, done) = async_channel::bounded(1);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("wormhole".into()),
            fuser::MountOption::Subtype("wormhole".into()),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            if options.read_only {
                fuser::MountOption::RO
            } else {
                fuser::MountOption::RW
            },
        ];
        let requests = req_tx.downgrade();
        let session = fuser::Session::new(WormholeFs::new(req_tx), mountpoint, &config).map_err(
            |source| MountError::Fuse {
                mountpoint: mountpoint.to_owned(),
                source,
            },
        )?;
        let notifier = Notifications::start(session.notifier())?;
        let driver = MountDriver::new(
            runtime.clone(),
            Box::new(transport),
            options,
            req_rx,
            events_tx,
            disk,
            notifier,
        )?;
        runtime.spawn(Box::pin(async move {
            driver.run().await;
            drop(done_tx);
        }));
        let session = session.spawn().map_err(MountError::Thread)?;
        info!(mountpoint = %mountpoint.display(), "mounted");
        Ok(Mount {
            session: Some(session),
            requests,
            mountpoint: mountpoint.to_owned(),
            events,
            done,
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Connection changes, as the core reports them (a bounded queue: a
    /// reader that falls behind misses some).
    pub fn events(&self) -> &async_channel::Receiver<ClientEvent> {
        &self.events
    }

    /// Unmounts and waits for fuser's thread to end. The driver then says
    /// goodbye to the host and stops; await [`Mount::stopped`] for that.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }

    /// The client cache's counters (`None` once the driver has stopped).
    pub async fn cache_stats(&self) -> Option<wormhole_core::cache::CacheStats> {
        let (reply, stats) = async_channel::bounded(1);
        self.requests
            .upgrade()?
            .send(KernelRequest::Stats { reply })
            .await
            .ok()?;
        stats.recv().await.ok()
    }

    /// Resolves once the driver has stopped (after an unmount).
    pub fn stopped(&self) -> impl Future<Output = ()> + use<> {
        let done = self.done.clone();
        async move {
            let _ = done.recv().await;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            // fuser unmounts on drop; a busy mount (a panicking test that
            // left a file open) is detached so the mountpoint is not left
            // dead.
            if let Err(e) = s.umount_and_join()
                && still_our_mount(&self.mountpoint)
            {
                warn!(error = %e, mountpoint = %self.mountpoint.display(), "unmount failed; detaching");
                let _ =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// Whether a FUSE file system is still mounted at `mountpoint` (it may
/// have been unmounted from outside, and something else mounted there
/// since, which a detach must not touch).
fn still_our_mount(mountpoint: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let Ok(want) = std::path::absolute(mountpoint) else {
        return false;
    };
    // Fields: source, mount point (spaces escaped as \040), type, ...; the
    // last line for a mount point is what is mounted on top.
    table
        .lines()
        .rev()
        .find_map(|line| {
            let mut fields = line.split(' ');
            let (_, at, kind) = (fields.next(), fields.next()?, fields.next()?);
            (Path::new(&at.replace("\\040", " ")) == want).then_some(kind)
        })
        .is_some_and(|kind| kind == "fuse" || kind.starts_with("fuse."))
}

// ---------------------------------------------------------- invalidations

enum Notice {
    Inode(Ino),
    Entry(Ino, Name),
}

/// The thread that passes the core's invalidations to the kernel.
struct Notifications {
    tx: std::sync::mpsc::Sender<Notice>,
}

impl Notifications {
    fn start(notifier: fuser::Notifier) -> Result<Self, MountError> {
        let (tx, rx) = std::sync::mpsc::channel::<Notice>();
        std::thread::Builder::new()
            .name("wormhole-inval".into())
            .spawn(move || {
                for notice in rx {
                    // The kernel may have dropped the inode or entry
                    // already; nothing to do then.
                    let result = match &notice {
                        Notice::Inode(ino) => notifier.inval_inode(fuser::INodeNo(ino.0), 0, 0),
                        Notice::Entry(parent, name) => notifier.inval_entry(
                            fuser::INodeNo(parent.0),
                            std::os::unix::ffi::OsStrExt::from_bytes(name.as_bytes()),
                        ),
                    };
                    if let Err(e) = result {
                        trace!(error = %e, "kernel invalidation not applied");
                    }
                }
            })
            .map_err(MountError::Thread)?;
        Ok(Notifications { tx })
    }
}

// ----------------------------------------------------------------- driver

/// Host messages of the established connection (boxed: the receiver is
/// `!Unpin` and the driver moves into its task).
type Incoming = Pin<Box<async_channel::Receiver<Bytes>>>;

/// The mount driver: one task owning the client core.
struct MountDriver {
    clock: CoreClock,
    core: ClientCore,
    transport: Box<dyn Transport>,
    kernel: Pin<Box<async_channel::Receiver<KernelRequest>>>,
    /// Kernel requests the core has not answered yet.
    pending: BTreeMap<Req, crate::fuse::KernelReply>,
    next_req: u64,
    connecting: Option<BoxFuture<io::Result<Link>>>,
    /// The established connection: messages out, messages in.
    link: Option<(async_channel::Sender<Bytes>, Incoming)>,
    disk: Option<DiskQueue>,
    disk_reads: Pin<Box<async_channel::Receiver<DiskRead>>>,
    notifications: Notifications,
    events: async_channel::Sender<ClientEvent>,
}

impl MountDriver {
    fn new(
        runtime: Arc<dyn quinn::Runtime>,
        transport: Box<dyn Transport>,
        options: MountOptions,
        kernel: async_channel::Receiver<KernelRequest>,
        events: async_channel::Sender<ClientEvent>,
        disk: Option<DiskCache>,
        notifications: Notifications,
    ) -> Result<Self, MountError> {
        let (reads_tx, disk_reads) = async_channel::unbounded();
        let mut core =
            ClientCore::new(options.client, options.secret, Rng::from_seed(options.seed));
        let clock = CoreClock::new(runtime.clone());
        let mut found = Vec::new();
        let disk = match disk {
            Some(mut cache) => {
                found = std::mem::take(&mut cache.found);
                Some(cache.spawn(reads_tx).map_err(MountError::Thread)?)
            }
            None => None,
        };
        core.load_l2(Instant::ZERO, found);
        Ok(MountDriver {
            clock,
            core,
            transport,
            kernel: Box::pin(kernel),
            pending: BTreeMap::new(),
            next_req: 1,
            connecting: None,
            link: None,
            disk,
            disk_reads: Box::pin(disk_reads),
            notifications,
            events,
        })
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    async fn run(mut self) {
        let now = self.now();
        self.core.connect(now);
        core::future::poll_fn(|cx| self.poll_drive(cx)).await;
        // The kernel side is gone (unmounted): say goodbye, so the host
        // releases our locks at once rather than after the grace period.
        let now = self.now();
        self.core.disconnect(now);
        self.outputs();
        for (_, reply) in std::mem::take(&mut self.pending) {
            reply.error(fuser::Errno::from_i32(
                wormhole_core::proto::Errno::NotConn.raw(),
            ));
        }
        debug!("mount driver stopped");
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..MAX_PASSES {
            let mut busy = false;
            for _ in 0..BATCH {
                match self.kernel.as_mut().poll_next(cx) {
                    Poll::Ready(Some(request)) => {
                        busy = true;
                        self.kernel_request(request);
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            busy |= self.poll_link(cx);
            busy |= self.poll_connect(cx);
            for _ in 0..BATCH {
                match self.disk_reads.as_mut().poll_next(cx) {
                    Poll::Ready(Some((key, got))) => {
                        busy = true;
                        let now = self.now();
                        match got {
                            Some((data, checksum)) => self.core.l2_loaded(now, key, data, checksum),
                            None => self.core.l2_read_failed(now, key),
                        }
                    }
                    _ => break,
                }
            }
            // Outputs may start a connect or a link that must be polled
            // (to register its wake-up) before this task sleeps.
            busy |= self.outputs();
            busy |= self.poll_timer(cx);
            if !busy {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn kernel_request(&mut self, request: KernelRequest) {
        match request {
            KernelRequest::Op { op, reply } => {
                let req = Req(self.next_req);
                self.next_req += 1;
                trace!(?req, ?op, "kernel request");
                self.pending.insert(req, reply);
                let now = self.now();
                self.core.op(now, req, op);
            }
            KernelRequest::Forget { ino, n } => self.core.forget(ino, n),
            KernelRequest::Stats { reply } => {
                let _ = reply.try_send(self.core.cache().stats());
            }
        }
    }

    /// Host messages; a closed link is a lost transport.
    fn poll_link(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        for _ in 0..BATCH {
            let Some((_, incoming)) = self.link.as_mut() else {
                return busy;
            };
            match incoming.as_mut().poll_next(cx) {
                Poll::Ready(Some(bytes)) => {
                    busy = true;
                    let now = self.now();
                    if let Err(e) = self.core.handle_message_bytes(now, &bytes) {
                        debug!(error = %e, "undecodable host message dropped");
                    }
                }
                Poll::Ready(None) => {
                    info!("connection to the host lost");
                    self.link = None;
                    let now = self.now();
                    self.core.transport_lost(now);
                    return true;
                }
                Poll::Pending => return busy,
            }
        }
        busy
    }

    fn poll_connect(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(fut) = self.connecting.as_mut() else {
            return false;
        };
        let Poll::Ready(result) = fut.as_mut().poll(cx) else {
            return false;
        };
        self.connecting = None;
        let now = self.now();
        match result {
            Ok(link) => {
                debug!("transport established");
                self.link = Some((link.outgoing, Box::pin(link.incoming)));
                self.core.transport_established(now, &link.exporter);
            }
            Err(e) => {
                info!(error = %e, "cannot reach the host");
                self.core.transport_lost(now);
            }
        }
        true
    }

    /// Carries out every output of the core; true if there was one.
    fn outputs(&mut self) -> bool {
        let mut any = false;
        while let Some(o) = self.core.poll_output() {
            any = true;
            match o {
                ClientOutput::Reply { req, result } => match self.pending.remove(&req) {
                    Some(reply) => {
                        if result.is_err() {
                            debug!(?req, ?result, "kernel request failed");
                        }
                        for ino in reply.answer(result) {
                            self.core.kernel_took(ino);
                        }
                    }
                    None => warn!(?req, "answer to an unknown kernel request"),
                },
                ClientOutput::Send(msg) => match (msg.encode(), &self.link) {
                    (Ok(bytes), Some((outgoing, _))) => {
                        // Unbounded on our side: the core bounds what it
                        // has in flight. A closed link shows up as lost.
                        let _ = outgoing.try_send(bytes);
                    }
                    (Ok(_), None) => trace!("no link; the core re-sends after reconnecting"),
                    (Err(e), _) => warn!(error = %e, "request does not encode"),
                },
                ClientOutput::OpenTransport => {
                    self.link = None;
                    self.connecting = Some(self.transport.connect());
                }
                ClientOutput::CloseTransport => {
                    self.link = None;
                    self.connecting = None;
                }
                ClientOutput::L2Write {
                    key,
                    data,
                    checksum,
                } => {
                    if !self
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.write(key, data, checksum))
                    {
                        self.core.l2_write_failed(key);
                    }
                }
                ClientOutput::L2Delete { key } => {
                    if let Some(disk) = &self.disk {
                        disk.delete(key);
                    }
                }
                ClientOutput::L2Read { key } => {
                    if !self.disk.as_ref().is_some_and(|d| d.read(key)) {
                        let now = self.now();
                        self.core.l2_read_failed(now, key);
                    }
                }
                ClientOutput::InvalidateInode { ino } => {
                    let _ = self.notifications.tx.send(Notice::Inode(ino));
                }
                ClientOutput::InvalidateEntry { parent, name } => {
                    let _ = self.notifications.tx.send(Notice::Entry(parent, name));
                }
                ClientOutput::Event(event) => {
                    info!(?event, "connection");
                    let _ = self.events.try_send(event);
                }
            }
        }
        any
    }

    /// Fires the core's timer when due and arms it for the next deadline.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(now) = self.clock.poll_due(cx, self.core.poll_timeout()) else {
            return false;
        };
        self.core.handle_timeout(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detach never touches what is not a FUSE mount.
    #[test]
    fn only_a_fuse_mount_counts_as_ours() {
        assert!(!still_our_mount(Path::new("/")));
        assert!(!still_our_mount(Path::new("/proc")));
        assert!(!still_our_mount(Path::new("/no/such/mount/point")));
    }
}
