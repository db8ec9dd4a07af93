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

/// The smol shell. Spawned tasks run on smol's global executor (its
/// threads start on first use; `SMOL_THREADS` sets how many).
#[derive(Debug, Default)]
pub struct SmolShell;

impl SmolShell {
    /// A shell on smol's global executor.
    pub fn new() -> io::Result<Self> {
        Ok(SmolShell)
    }
}

impl Shell for SmolShell {
    fn name(&self) -> &'static str {
        "smol"
    }

    fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::SmolRuntime)
    }

    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        smol::block_on(fut)
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
