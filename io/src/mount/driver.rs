//! The mount driver: the task that runs the client core's sans-IO loop
//! (host messages, finished connects, disk-cache reads, timers), and the
//! [`Shared`] state it and fuser's thread feed the core through.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::stream::Stream;
use tracing::{debug, info, trace, warn};
use wormhole_core::cache::ChunkKey;
use wormhole_core::client::{ClientCore, ClientEvent, ClientOutput, Op, Req};
use wormhole_core::codec::Pieces;
use wormhole_core::vfs::Ino;
use wormhole_core::{Instant, Rng};

use super::disk_cache::{DiskCache, DiskQueue, DiskRead, DiskReader};
use super::fuse::{KernelReply, Notice};
use super::{MountError, MountOptions};
use crate::drive::{Pass, poll_passes};
use crate::net::{HostLink, Transport};
use crate::runtime::{BoxFuture, CoreClock};

/// Kernel requests queued for the driver at most; fuser's thread waits
/// when they are all taken.
const KERNEL_QUEUE: usize = 1024;
/// Kernel requests, host messages or disk reads taken per pass, each.
const BATCH: usize = 64;
/// Disk-cache reads fuser's thread does itself per pass, at most
/// ([`Shared::read_here`]): the first, which is the chunk the request
/// waits for. Further ones (read-ahead) go to the reading thread: read
/// here as well, they held up the reply, and sequential re-reads from the
/// disk cache were 8 % slower.
const READS_HERE: usize = 1;

/// Host messages of the established connection (boxed: the receiver is
/// `!Unpin` and the state moves between threads).
type Incoming = Pin<Box<async_channel::Receiver<Bytes>>>;

/// The client core and everything its outputs reach, shared by fuser's
/// thread and the driver task. Whoever has an input takes the lock, feeds
/// the core and carries out what it asks for. So a kernel request the core
/// answers from its cache is answered on fuser's thread, with no hand-off
/// to another thread and back: on a machine whose idle cores halt, such a
/// hand-off (a wake-up of the other thread) cost more than the request.
/// The driver task keeps what only a task can do: waiting for host
/// messages, a connect, disk-cache reads and the core's timer. A request
/// that finds the driver at work is queued for it rather than waiting for
/// the lock ([`Shared::kernel`]). A chunk such a request needs from the
/// disk cache is read on fuser's thread too, when neither the disk
/// cache's reading thread nor the kernel has anything else waiting
/// ([`Shared::read_here`]).
pub(crate) struct Shared {
    state: std::sync::Mutex<State>,
    /// Kernel requests that met a busy driver, in the kernel's order.
    queue: async_channel::Sender<Kernel>,
    /// Reads chunk files on fuser's thread; `None` without a disk cache
    /// (then no pass asks fuser's thread to read one).
    disk: Option<DiskReader>,
}

impl Shared {
    /// The state of a mount that will reach its host through `transport`.
    pub(super) fn new(
        runtime: Arc<dyn quinn::Runtime>,
        transport: Box<dyn Transport>,
        options: MountOptions,
        events: async_channel::Sender<ClientEvent>,
        disk: Option<DiskCache>,
        notices: std::sync::mpsc::Sender<Notice>,
    ) -> Result<Shared, MountError> {
        let (queue, queued) = async_channel::bounded(KERNEL_QUEUE);
        let state = State::new(runtime, transport, options, events, disk, notices, queued)?;
        Ok(Shared {
            queue,
            disk: state.disk.as_ref().map(DiskQueue::reader),
            state: std::sync::Mutex::new(state),
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing in the state is left half-changed by a panic that matters
        // more than answering the kernel.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kernel operation, from fuser's thread: answered before this
    /// returns if the core can, else when the host replies.
    pub(crate) fn op(&self, op: Op, reply: KernelReply) {
        self.kernel(Kernel::Op {
            op,
            reply,
            unique: None,
        });
    }

    /// Feeds an operation the kernel may interrupt (a lock request that
    /// waits), known to the kernel as request `unique`.
    pub(crate) fn interruptible_op(&self, op: Op, reply: KernelReply, unique: u64) {
        self.kernel(Kernel::Op {
            op,
            reply,
            unique: Some(unique),
        });
    }

    /// The kernel interrupted its request `unique`.
    pub(crate) fn interrupt(&self, unique: u64) {
        self.kernel(Kernel::Interrupt { unique });
    }

    /// The kernel dropped `n` lookup references of `ino`.
    pub(crate) fn forget(&self, ino: Ino, n: u64) {
        self.kernel(Kernel::Forget { ino, n });
    }

    /// Feeds a kernel request to the core on this thread if the driver is
    /// idle, else queues it for the driver. Waiting for the lock instead
    /// would cost what the lock saves (a sleep and a wake-up per request
    /// while host data streams in), and queueing whenever the queue is not
    /// empty keeps the kernel's order: the driver takes from the queue
    /// only under the lock, so an empty queue seen under the lock means
    /// every earlier request has been fed.
    fn kernel(&self, request: Kernel) {
        if self.queue.is_empty() {
            let locked = match self.state.try_lock() {
                Ok(s) => Some(s),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut s) = locked
                && self.queue.is_empty()
                && !s.stopped
            {
                // Only a read may have a chunk read here, and only while
                // the kernel waits for it ([`Shared::read_here`]).
                let read = matches!(
                    &request,
                    Kernel::Op {
                        op: Op::Read { .. },
                        ..
                    }
                );
                let waiting = s.kernel(request).filter(|_| read);
                let mut reads = Vec::new();
                s.carry_out(waiting.is_some().then_some(&mut reads));
                self.read_here(s, waiting, reads);
                return;
            }
        }
        // Bounded: a kernel flooding a busy driver waits here. A driver
        // that has stopped closed the queue, which fails the request.
        if let Err(e) = self.queue.send_blocking(request)
            && let Kernel::Op { reply, .. } = e.into_inner()
        {
            reply.error(fuser::Errno::from_i32(
                wormhole_core::proto::Errno::NotConn.raw(),
            ));
        }
    }

    /// Finishes a pass on fuser's thread: reads the chunks it left for
    /// this thread (`keys`, see [`State::carry_out`]) with the lock
    /// released, feeds them to the core and carries out what follows,
    /// until no read is left; then wakes the driver if it must arm its
    /// timer or poll a connect.
    ///
    /// At queue depth 1 a request for a chunk in the disk cache was four
    /// wake-ups of idle threads (fuser's, the reading thread, the driver
    /// to arm a timer for the disk read's deadline, the driver again for
    /// the chunk); here it is fuser's own. The driver is not woken for
    /// the read's deadline: the read is over before this returns, and its
    /// deadline with it, so the wake-up is decided only after the reads.
    ///
    /// The lock is not held while reading (the driver goes on meanwhile),
    /// and it is only tried again, as in [`Shared::kernel`]: results that
    /// find it taken are handed to the driver, which is at work and takes
    /// them in its next pass. So this thread never waits for the lock,
    /// nor, holding it, for anything else. Reads overtake queued writes
    /// and deletes as the reading thread's do (see `disk_cache`).
    ///
    /// Only while kernel request `waiting` is unanswered: the first disk
    /// read a pass asks for is not always its request's (a read whose
    /// chunk is in memory asks only for read-ahead, before its reply),
    /// and read-ahead goes to the reading thread.
    fn read_here<'a>(
        &'a self,
        mut s: std::sync::MutexGuard<'a, State>,
        waiting: Option<Req>,
        mut keys: Vec<ChunkKey>,
    ) {
        loop {
            let disk = match &self.disk {
                Some(disk) if !keys.is_empty() => disk,
                // (Keys are left for this thread only when there is a
                // disk cache.)
                _ => break,
            };
            if !waiting.is_some_and(|req| s.pending.contains_key(&req)) {
                s.read_elsewhere(std::mem::take(&mut keys));
                break;
            }
            drop(s);
            let reads: Vec<DiskRead> = keys.drain(..).map(|key| disk.read(key)).collect();
            s = match self.state.try_lock() {
                Ok(s) => s,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    for read in reads {
                        disk.hand_over(read);
                    }
                    return;
                }
            };
            if s.stopped {
                // The driver failed the requests these were for.
                return;
            }
            for read in reads {
                s.disk_read(read);
            }
            s.carry_out(Some(&mut keys));
        }
        let wake = s.driver_to_wake();
        drop(s);
        if let Some(waker) = wake {
            waker.wake();
        }
    }

    /// fuser's session ended: the driver says goodbye and stops.
    pub(crate) fn unmounted(&self) {
        let mut s = self.lock();
        s.unmounted = true;
        let wake = s.driver.take();
        drop(s);
        if let Some(waker) = wake {
            waker.wake();
        }
    }
}

/// A kernel request on its way to the core.
enum Kernel {
    /// An operation, where its answer goes, and the kernel's number for
    /// it if the kernel may interrupt it.
    Op {
        op: Op,
        reply: KernelReply,
        unique: Option<u64>,
    },
    /// The kernel interrupted its request `unique`.
    Interrupt { unique: u64 },
    /// The kernel dropped `n` lookup references of `ino`.
    Forget { ino: Ino, n: u64 },
}

/// The state behind [`Shared`]'s lock.
pub(super) struct State {
    clock: CoreClock,
    core: ClientCore,
    transport: Box<dyn Transport>,
    /// Says when the transport has a better path ([`Transport::better_paths`]).
    better_paths: Option<Pin<Box<async_channel::Receiver<()>>>>,
    /// Kernel requests the core has not answered yet.
    pending: BTreeMap<Req, KernelReply>,
    /// The kernel's numbers of pending requests it may interrupt.
    interruptible: BTreeMap<u64, Req>,
    next_req: u64,
    connecting: Option<BoxFuture<io::Result<HostLink>>>,
    /// `connecting` was started outside the driver, which has not polled
    /// it yet (so nothing wakes anyone when it completes).
    connect_unpolled: bool,
    /// The established connection: messages out, messages in, and its
    /// [`HostLink::drained`].
    link: Option<(
        async_channel::Sender<Pieces>,
        Incoming,
        async_channel::Receiver<()>,
    )>,
    disk: Option<DiskQueue>,
    disk_reads: Pin<Box<async_channel::Receiver<DiskRead>>>,
    notices: std::sync::mpsc::Sender<Notice>,
    events: async_channel::Sender<ClientEvent>,
    /// [`Shared::queue`]'s other end.
    queued: Pin<Box<async_channel::Receiver<Kernel>>>,
    /// The driver task's waker, as of its last poll.
    driver: Option<core::task::Waker>,
    /// fuser's session has ended.
    unmounted: bool,
    /// The driver has stopped: requests fail at once.
    stopped: bool,
    /// A second descriptor of the FUSE device, only ever polled: whether
    /// the kernel has more requests waiting for fuser's thread
    /// ([`State::kernel_waiting`]). Set once the session exists.
    kernel_device: Option<std::os::fd::OwnedFd>,
}

impl State {
    /// The cache's counters, while the driver runs.
    pub(super) fn cache_stats(&self) -> Option<wormhole_core::cache::CacheStats> {
        (!self.stopped).then(|| self.core.cache().stats())
    }

    fn new(
        runtime: Arc<dyn quinn::Runtime>,
        mut transport: Box<dyn Transport>,
        options: MountOptions,
        events: async_channel::Sender<ClientEvent>,
        disk: Option<DiskCache>,
        notices: std::sync::mpsc::Sender<Notice>,
        queued: async_channel::Receiver<Kernel>,
    ) -> Result<Self, MountError> {
        let (reads_tx, disk_reads) = async_channel::unbounded();
        let mut core =
            ClientCore::new(options.client, options.secret, Rng::from_seed(options.seed));
        let mut found = Vec::new();
        let disk = match disk {
            Some(mut cache) => {
                found = std::mem::take(&mut cache.found);
                Some(cache.spawn(reads_tx).map_err(MountError::Thread)?)
            }
            None => None,
        };
        core.load_l2(Instant::ZERO, found);
        let clock = CoreClock::new(runtime);
        // Files made under a directory lease carry this clock's times
        // until the host has them.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        core.set_wall_clock(
            clock.now(),
            wormhole_core::proto::Timestamp {
                secs: i64::try_from(wall.as_secs()).unwrap_or(i64::MAX),
                nanos: wall.subsec_nanos(),
            },
        );
        Ok(State {
            clock,
            core,
            better_paths: transport.better_paths().map(Box::pin),
            transport,
            pending: BTreeMap::new(),
            interruptible: BTreeMap::new(),
            next_req: 1,
            connecting: None,
            connect_unpolled: false,
            link: None,
            disk,
            disk_reads: Box::pin(disk_reads),
            notices,
            events,
            queued: Box::pin(queued),
            driver: None,
            unmounted: false,
            stopped: false,
            kernel_device: None,
        })
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Feeds one kernel request to the core; an operation's number.
    fn kernel(&mut self, request: Kernel) -> Option<Req> {
        match request {
            Kernel::Op { op, reply, unique } => {
                let req = Req(self.next_req);
                self.next_req += 1;
                trace!(?req, ?op, "kernel request");
                self.pending.insert(req, reply);
                if let Some(unique) = unique {
                    self.interruptible.insert(unique, req);
                }
                let now = self.now();
                self.core.op(now, req, op);
                return Some(req);
            }
            Kernel::Interrupt { unique } => {
                // (One the core already answered is no longer here, and
                // nothing is left to interrupt.)
                if let Some(req) = self.interruptible.remove(&unique) {
                    trace!(?req, "kernel interrupt");
                    let now = self.now();
                    self.core.interrupt(now, req);
                }
            }
            Kernel::Forget { ino, n } => self.core.forget(ino, n),
        }
        None
    }

    /// Kernel requests queued while the lock was taken.
    fn poll_kernel(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        for _ in 0..BATCH {
            match self.queued.as_mut().poll_next(cx) {
                Poll::Ready(Some(request)) => {
                    busy = true;
                    let _ = self.kernel(request);
                }
                _ => break,
            }
        }
        busy
    }

    /// Lets [`State::kernel_waiting`] look at the kernel's queue through
    /// `device`, a second descriptor of the session's FUSE device.
    pub(super) fn watch_kernel_queue(&mut self, device: std::os::fd::OwnedFd) {
        self.kernel_device = Some(device);
    }

    /// Whether the kernel has requests waiting that fuser's thread has not
    /// read yet (or, unable to tell, says so). A chunk read on fuser's
    /// thread would hold them up, where the reading thread reads beside
    /// it: at four jobs of random reads, reading on fuser's thread
    /// whenever the reading thread was idle cost a quarter to a half of
    /// the reads per second.
    fn kernel_waiting(&self) -> bool {
        let Some(device) = &self.kernel_device else {
            return true;
        };
        let mut fds = [rustix::event::PollFd::new(
            device,
            rustix::event::PollFlags::IN,
        )];
        !matches!(
            rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())),
            Ok(0)
        )
    }

    /// The driver's waker, if what was just done needs the driver: a
    /// connect it has not polled, or a core deadline earlier than the
    /// timer it armed.
    fn driver_to_wake(&self) -> Option<core::task::Waker> {
        let earlier = match (self.core.poll_timeout(), self.clock.armed()) {
            (Some(due), Some(armed)) => due < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if self.connect_unpolled || earlier {
            self.driver.clone()
        } else {
            None
        }
    }

    /// Host messages; a closed link is a lost transport.
    fn poll_link(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        for _ in 0..BATCH {
            let Some((_, incoming, _)) = self.link.as_mut() else {
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
        self.connect_unpolled = false;
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
                self.link = Some((link.outgoing, Box::pin(link.incoming), link.drained));
                self.core.transport_established(now, &link.exporter);
            }
            Err(e) => {
                info!(error = %e, "cannot reach the host");
                self.core.transport_lost(now);
            }
        }
        true
    }

    /// A better path to the host: the core moves the session there.
    fn poll_better_path(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(better) = self.better_paths.as_mut() else {
            return false;
        };
        match better.as_mut().poll_next(cx) {
            Poll::Ready(Some(())) => {
                info!("moving to a better path to the host");
                let now = self.now();
                self.core.move_path(now);
                true
            }
            Poll::Ready(None) => {
                self.better_paths = None;
                false
            }
            Poll::Pending => false,
        }
    }

    fn poll_disk(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        for _ in 0..BATCH {
            match self.disk_reads.as_mut().poll_next(cx) {
                Poll::Ready(Some(read)) => {
                    busy = true;
                    self.disk_read(read);
                }
                _ => break,
            }
        }
        busy
    }

    /// Gives the reading thread the reads a pass left for fuser's thread
    /// after all ([`Shared::read_here`]).
    fn read_elsewhere(&mut self, keys: Vec<ChunkKey>) {
        for key in keys {
            if !self.disk.as_ref().is_some_and(|d| d.read(key)) {
                let now = self.now();
                self.core.l2_read_failed(now, key);
            }
        }
        self.carry_out(None);
    }

    /// Feeds a chunk read back from the disk cache to the core (which
    /// verifies its checksum).
    fn disk_read(&mut self, (key, got): DiskRead) {
        let now = self.now();
        match got {
            Some((data, checksum)) => self.core.l2_loaded(now, key, data, checksum),
            None => self.core.l2_read_failed(now, key),
        }
    }

    /// Carries out every output of the core; true if there was one.
    fn outputs(&mut self) -> bool {
        self.carry_out(None)
    }

    /// Carries out every output of the core; true if there was one. With
    /// `here` (a pass on fuser's thread), up to [`READS_HERE`] disk-cache
    /// reads are left in it for the caller to do once the lock is
    /// released ([`Shared::read_here`]), if the reading thread is idle
    /// and no other kernel request waits: waking the thread, and then the
    /// driver for the chunk, is what such a read would cost otherwise. A
    /// reading thread at work takes them (that wakes nobody), and so does
    /// an idle one while the kernel has more requests for fuser's thread.
    /// The driver passes no `here`: its runtime thread must not block on
    /// the disk.
    fn carry_out(&mut self, mut here: Option<&mut Vec<ChunkKey>>) -> bool {
        let mut any = false;
        while let Some(o) = self.core.poll_output() {
            any = true;
            match o {
                ClientOutput::Reply { req, result } => match self.pending.remove(&req) {
                    Some(reply) => {
                        if !self.interruptible.is_empty() {
                            self.interruptible.retain(|_, r| *r != req);
                        }
                        if result.is_err() {
                            debug!(?req, ?result, "kernel request failed");
                        }
                        for ino in reply.answer(result) {
                            self.core.kernel_took(ino);
                        }
                    }
                    None => warn!(?req, "answer to an unknown kernel request"),
                },
                ClientOutput::Send(msg) => match (msg.encode_pieces(), &self.link) {
                    (Ok(pieces), Some((outgoing, _, _))) => {
                        // Unbounded on our side: the core bounds what it
                        // has in flight. A closed link shows up as lost.
                        let _ = outgoing.try_send(pieces);
                    }
                    (Ok(_), None) => trace!("no link; the core re-sends after reconnecting"),
                    (Err(e), _) => warn!(error = %e, "request does not encode"),
                },
                ClientOutput::OpenTransport => {
                    self.link = None;
                    self.connecting = Some(self.transport.connect());
                    self.connect_unpolled = true;
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
                    let asked = match (&self.disk, here.as_deref_mut()) {
                        (Some(disk), Some(here))
                            if here.len() < READS_HERE
                                && disk.reader_idle()
                                && !self.kernel_waiting() =>
                        {
                            here.push(key);
                            true
                        }
                        (Some(disk), _) => disk.read(key),
                        (None, _) => false,
                    };
                    if !asked {
                        let now = self.now();
                        self.core.l2_read_failed(now, key);
                    }
                }
                ClientOutput::InvalidateInode { ino } => {
                    let _ = self.notices.send(Notice::Inode(ino));
                }
                ClientOutput::InvalidateEntry { parent, name } => {
                    let _ = self.notices.send(Notice::Entry(parent, name));
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

/// The mount driver: the task side of [`Shared`].
pub(super) struct MountDriver {
    shared: Arc<Shared>,
}

impl MountDriver {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        MountDriver { shared }
    }

    pub(super) async fn run(self) {
        {
            let mut s = self.shared.lock();
            let now = s.now();
            s.core.connect(now);
        }
        core::future::poll_fn(|cx| self.poll_drive(cx)).await;
        // The kernel side is gone (unmounted): say goodbye, so the host
        // releases our locks at once rather than after the grace period.
        let (pending, closing) = {
            let mut s = self.shared.lock();
            let closing = s.link.as_ref().map(|(_, _, drained)| drained.clone());
            let now = s.now();
            s.core.disconnect(now);
            s.outputs();
            // Done with the link: letting it go is what lets it drain.
            s.link = None;
            s.stopped = true;
            // Requests queued from now on fail at once; those queued
            // before fail with the ones the core had not answered.
            s.queued.close();
            let mut pending: Vec<KernelReply> =
                std::mem::take(&mut s.pending).into_values().collect();
            while let Ok(request) = s.queued.try_recv() {
                if let Kernel::Op { reply, .. } = request {
                    pending.push(reply);
                }
            }
            (pending, closing)
        };
        for reply in pending {
            reply.error(fuser::Errno::from_i32(
                wormhole_core::proto::Errno::NotConn.raw(),
            ));
        }
        // The Goodbye is on its way: let it arrive before we say we have
        // stopped (and the process, perhaps, exits).
        if let Some(drained) = closing {
            let _ = drained.recv().await;
        }
        debug!("mount driver stopped");
    }

    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        poll_passes(cx, |cx| self.pass(cx))
    }

    /// One pass over every source.
    fn pass(&self, cx: &mut Context<'_>) -> Pass {
        let mut s = self.shared.lock();
        if s.unmounted {
            return Pass::Done;
        }
        if !s.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.driver = Some(cx.waker().clone());
        }
        let mut busy = s.poll_kernel(cx);
        busy |= s.poll_link(cx);
        busy |= s.poll_connect(cx);
        busy |= s.poll_better_path(cx);
        busy |= s.poll_disk(cx);
        // Outputs may start a connect or a link that must be polled
        // (to register its wake-up) before this task sleeps.
        busy |= s.outputs();
        busy |= s.poll_timer(cx);
        Pass::from_busy(busy)
    }
}
