//! Wormhole on smol.
//!
//! This crate only picks the runtime: smol's executor, `quinn::SmolRuntime`
//! for timers and UDP, smol TCP streams (which are `futures-io` streams
//! already) for signalling. Everything else, the pair driver included, is
//! the shared glue in `wormhole-io`.
//!
//! ```
//! use wormhole_core::pair::PairConfig;
//! use wormhole_io::{Identity, AgentConfig, PairAgent, Shell};
//! use wormhole_smol::SmolShell;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shell = SmolShell::new()?;
//! shell.block_on(async {
//!     let config = AgentConfig::new(Identity::generate()?, PairConfig::default())?;
//!     let agent = PairAgent::spawn(shell.runtime(), config);
//!     // Then: agent.add_peer(..), agent.add_pair(..), agent.take(peer) -> a
//!     // lease whose QUIC endpoint sits on the pair's own socket, and
//!     // agent.release(pair). `tests/tests/pair_e2e.rs` walks through it all.
//!     assert!(agent.stats().await?.pairs.is_empty());
//!     Ok(())
//! })
//! # }
//! ```

use smol::net::{TcpListener, TcpStream};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use wormhole_io::{BoxFuture, Shell, SignalStream, StreamPair};

/// The smol shell. Spawned tasks (quinn's endpoint and connection
/// drivers among them) run on an executor of its own; see
/// [`SmolShell::new`] and [`SmolShell::on_this_thread`] for which
/// threads run it.
#[derive(Debug, Default)]
pub struct SmolShell {
    /// [`Shell::block_on`] runs the executor's tasks too.
    tasks_here: bool,
}

/// The shell's executor, started by the first shell made in the process
/// with `threads()` threads of its own (`SMOL_THREADS` overrides).
///
/// `threads` is asked only when the executor is made: every spawn (the
/// host spawns a task per request stream) comes through here, and
/// counting CPUs reads the cgroup's files, which once cost the smol host
/// 8 % of its CPU during a cold read.
fn executor_with(threads: impl FnOnce() -> usize) -> &'static smol::Executor<'static> {
    static EXECUTOR: std::sync::OnceLock<&'static smol::Executor<'static>> =
        std::sync::OnceLock::new();
    EXECUTOR.get_or_init(|| {
        let executor: &'static smol::Executor<'static> = Box::leak(Box::default());
        let threads = std::env::var("SMOL_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(threads);
        for n in 0..threads {
            let started = std::thread::Builder::new()
                .name(format!("wormhole-smol-{n}"))
                .spawn(|| smol::block_on(executor.run(smol::future::pending::<()>())));
            if let Err(e) = started {
                // Fewer threads run the same tasks, slower.
                tracing::warn!(error = %e, started = n, "fewer executor threads");
                break;
            }
        }
        executor
    })
}

/// One executor thread per CPU: what a shell made with [`SmolShell::new`]
/// starts.
fn threads_per_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The executor, started with a thread per CPU if no shell started it.
fn executor() -> &'static smol::Executor<'static> {
    executor_with(threads_per_cpu)
}

/// quinn's smol runtime (its timers and sockets), spawning onto the
/// shell's executor.
#[derive(Debug)]
struct Runtime;

impl quinn::Runtime for Runtime {
    fn new_timer(&self, at: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::SmolRuntime.new_timer(at)
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) {
        executor().spawn(future).detach();
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::SmolRuntime.wrap_udp_socket(socket)
    }
}

impl SmolShell {
    /// A shell whose tasks run on executor threads of their own, one per
    /// CPU (`SMOL_THREADS` sets how many): they go on while the caller
    /// blocks outside [`Shell::block_on`] (a test reading a mount's files
    /// with `std::fs`).
    pub fn new() -> io::Result<Self> {
        executor_with(threads_per_cpu);
        Ok(SmolShell { tasks_here: false })
    }

    /// A shell for a program whose thread spends its life in
    /// [`Shell::block_on`] (the command line): that thread runs every
    /// task, and the executor has no thread of its own unless
    /// `SMOL_THREADS` asks for some. A message from quinn's connection to
    /// the driver and back is then a call on one thread, not a wake-up of
    /// another. Measured on the 2-vCPU benchmark VM (untar of 10,000
    /// files of 1 KiB / `rm -rf` / one QUIC stream over loopback): tasks
    /// on executor threads, 7.6 s / 3.1 s / 1,139 MB/s; on the main
    /// thread alone, 6.2 s / 1.8 s / 1,126 MB/s (tokio: 5.3 s / 1.7 s /
    /// 1,298 MB/s). Tasks do not run while no thread is in `block_on`.
    pub fn on_this_thread() -> io::Result<Self> {
        executor_with(|| 0);
        Ok(SmolShell { tasks_here: true })
    }
}

impl Shell for SmolShell {
    fn name(&self) -> &'static str {
        "smol"
    }

    fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(Runtime)
    }

    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        if self.tasks_here {
            smol::block_on(executor().run(fut))
        } else {
            smol::block_on(fut)
        }
    }

    fn bind_udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        std::net::UdpSocket::bind(addr)
    }

    fn tcp_loopback_pair(&self, addr: SocketAddr) -> BoxFuture<io::Result<StreamPair>> {
        Box::pin(async move {
            let listener = TcpListener::bind(addr).await?;
            let at = listener.local_addr()?;
            let (client, accepted) =
                smol::future::zip(TcpStream::connect(at), listener.accept()).await;
            let (client, (server, _)) = (client?, accepted?);
            // Signals are tiny and latency is what a handover waits on.
            client.set_nodelay(true)?;
            server.set_nodelay(true)?;
            let client: Box<dyn SignalStream> = Box::new(client);
            let server: Box<dyn SignalStream> = Box::new(server);
            Ok((client, server))
        })
    }
}
