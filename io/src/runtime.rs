//! What the glue needs from a runtime, and what a shell provides.
//!
//! Timers, spawning and UDP come from [`quinn::Runtime`], which both
//! `quinn::TokioRuntime` and `quinn::SmolRuntime` implement; byte streams
//! are `futures-io` traits. A shell adds the few things quinn's trait lacks
//! (blocking on a future, opening TCP connections) through [`Shell`].

use core::future::Future;
use core::net::SocketAddr;
use core::pin::Pin;
use futures_lite::io::{AsyncRead, AsyncWrite};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A byte stream that carries handover signals (a TCP connection, for now).
pub trait SignalStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> SignalStream for T {}

/// Both ends of one signalling connection.
pub type StreamPair = (Box<dyn SignalStream>, Box<dyn SignalStream>);

/// A boxed future that can be sent to another thread.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A runtime shell: the only runtime-specific code of Wormhole.
///
/// Implemented by `wormhole_tokio::TokioShell` and `wormhole_smol::SmolShell`;
/// everything else (the pair driver, the QUIC setup, the CLI, the
/// end-to-end tests) is written once against this trait.
pub trait Shell: Send + Sync + 'static {
    /// The runtime's name, for progress lines.
    fn name(&self) -> &'static str;

    /// The runtime as quinn sees it: timers, spawning and UDP sockets.
    fn runtime(&self) -> Arc<dyn quinn::Runtime>;

    /// Runs `fut` to completion on this runtime, from a plain thread.
    fn block_on<F: Future>(&self, fut: F) -> F::Output;

    /// Binds a UDP socket (the socket a pair's hole is punched from).
    fn bind_udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket>;

    /// Listens on `addr`, connects to it, and returns both ends of the one
    /// TCP connection: a signalling channel between two nodes of one
    /// process. Must be polled inside [`Shell::block_on`].
    fn tcp_loopback_pair(&self, addr: SocketAddr) -> BoxFuture<io::Result<StreamPair>>;
}

/// A wait that took too long.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("timed out after {after:?} waiting for {what}")]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// The limit.
    pub after: Duration,
}

/// Waits `duration` on the runtime's clock.
pub async fn sleep(runtime: &dyn quinn::Runtime, duration: Duration) {
    let mut timer = runtime.new_timer(runtime.now() + duration);
    core::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
}

/// Runs `fut`, giving up after `limit`.
pub async fn timeout<T>(
    runtime: &dyn quinn::Runtime,
    limit: Duration,
    what: impl Into<String>,
    fut: impl Future<Output = T>,
) -> Result<T, TimedOut> {
    let what = what.into();
    futures_lite::future::or(async { Ok(fut.await) }, async {
        sleep(runtime, limit).await;
        Err(TimedOut { what, after: limit })
    })
    .await
}

/// Polls `check` until it yields a value, every `every`, for at most
/// `limit`. For conditions no event announces (counters growing).
pub async fn wait_for<T, F, Fut>(
    runtime: &dyn quinn::Runtime,
    limit: Duration,
    every: Duration,
    what: impl Into<String>,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    timeout(runtime, limit, what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            sleep(runtime, every).await;
        }
    })
    .await
}

/// The core's clock on a runtime: core [`wormhole_core::Instant`]s read
/// from the runtime's own clock (so simulated-time runtimes work too), and
/// one reusable timer armed for the core's next deadline. Every driver
/// (pair node, host, mount, in-process host) keeps one.
pub(crate) struct CoreClock {
    runtime: Arc<dyn quinn::Runtime>,
    origin: std::time::Instant,
    timer: Option<Pin<Box<dyn quinn::AsyncTimer>>>,
    armed: Option<wormhole_core::Instant>,
}

impl core::fmt::Debug for CoreClock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CoreClock")
            .field("origin", &self.origin)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl CoreClock {
    /// A clock whose origin is the runtime's now.
    pub(crate) fn new(runtime: Arc<dyn quinn::Runtime>) -> Self {
        let origin = runtime.now();
        CoreClock {
            runtime,
            origin,
            timer: None,
            armed: None,
        }
    }

    /// The core's now.
    pub(crate) fn now(&self) -> wormhole_core::Instant {
        wormhole_core::Instant::from_duration(
            self.runtime.now().saturating_duration_since(self.origin),
        )
    }

    /// The runtime instant of a core deadline on this clock.
    pub(crate) fn instant_at(&self, deadline: wormhole_core::Instant) -> std::time::Instant {
        self.origin + deadline.since_origin()
    }

    /// The deadline the timer is armed for (`None`: none, or it fired and
    /// the next is not armed yet). A deadline earlier than this one needs
    /// the owning task to poll again.
    pub(crate) fn armed(&self) -> Option<wormhole_core::Instant> {
        self.armed
    }

    /// Polls toward the core's next `deadline` (its `poll_timeout()`):
    /// `Some(now)` once it is due, for the caller to pass to the core's
    /// `handle_timeout`; `None` while it is not, with this task's waker
    /// registered for it.
    pub(crate) fn poll_due(
        &mut self,
        cx: &mut core::task::Context<'_>,
        deadline: Option<wormhole_core::Instant>,
    ) -> Option<wormhole_core::Instant> {
        let Some(deadline) = deadline else {
            self.armed = None;
            return None;
        };
        let now = self.now();
        if now < deadline {
            let at = self.origin + deadline.since_origin();
            let runtime = &self.runtime;
            let timer = self.timer.get_or_insert_with(|| runtime.new_timer(at));
            if self.armed != Some(deadline) {
                timer.as_mut().reset(at);
                self.armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        self.armed = None;
        // A timer may fire a hair before the core's nanosecond deadline;
        // the deadline itself is the honest "now" then, and avoids waking
        // again for nothing.
        Some(now.max(deadline))
    }
}

/// A seed for a core [`wormhole_core::Rng`], from the operating system.
pub(crate) fn os_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| io::Error::other("the operating system gave no randomness"))?;
    Ok(seed)
}

/// Runs every future of `futures` to its end, concurrently on this task.
pub(crate) async fn join_all<F: Future<Output = ()>>(futures: impl IntoIterator<Item = F>) {
    let mut running: Vec<core::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    core::future::poll_fn(|cx| {
        running.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if running.is_empty() {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    })
    .await;
}

/// Runs blocking `work` on a thread of its own and waits for it without
/// blocking the executor; `None` if the thread could not start or died.
pub(crate) async fn on_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = async_channel::bounded(1);
    std::thread::Builder::new()
        .name("wormhole-blocking".into())
        .spawn(move || {
            let _ = tx.send_blocking(work());
        })
        .ok()?;
    rx.recv().await.ok()
}
