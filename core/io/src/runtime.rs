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
