//! Wormhole on tokio.
//!
//! This crate only picks the runtime: a tokio runtime, `quinn::TokioRuntime`
//! for timers and UDP, tokio TCP streams (through `tokio_util::compat`) for
//! signalling. Everything else, the pair driver included, is the shared glue
//! in `wormhole-io`.
//!
//! ```
//! use wormhole_core::pair::PairConfig;
//! use wormhole_io::{Identity, AgentConfig, PairAgent, Shell};
//! use wormhole_tokio::TokioShell;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shell = TokioShell::new()?;
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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncReadCompatExt;
use wormhole_io::{BoxFuture, Shell, SignalStream, StreamPair};

/// The tokio shell: owns a multi-threaded tokio runtime.
#[derive(Debug)]
pub struct TokioShell {
    rt: tokio::runtime::Runtime,
}

impl TokioShell {
    /// A shell on a new tokio runtime with one worker thread: the work
    /// that can use more cores has threads of its own (host file
    /// operations, the disk cache, reading `/dev/fuse`), and the tasks
    /// left hand each request on to the next, which is cheapest on one
    /// thread (figures in `bench/README.md`, "Targets (2026-11-22)"). A
    /// multi-thread runtime all the same, so that spawned tasks run while
    /// the caller blocks outside [`Shell::block_on`].
    pub fn new() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(TokioShell { rt })
    }
}

impl Shell for TokioShell {
    fn name(&self) -> &'static str {
        "tokio"
    }

    fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::TokioRuntime)
    }

    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    fn bind_udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        std::net::UdpSocket::bind(addr)
    }

    fn tcp_loopback_pair(&self, addr: SocketAddr) -> BoxFuture<io::Result<StreamPair>> {
        Box::pin(async move {
            let listener = TcpListener::bind(addr).await?;
            let at = listener.local_addr()?;
            let (client, accepted) = tokio::join!(TcpStream::connect(at), listener.accept());
            let (client, (server, _)) = (client?, accepted?);
            // Signals are tiny and latency is what a handover waits on.
            client.set_nodelay(true)?;
            server.set_nodelay(true)?;
            let client: Box<dyn SignalStream> = Box::new(client.compat());
            let server: Box<dyn SignalStream> = Box::new(server.compat());
            Ok((client, server))
        })
    }
}
