//! The host driver: a [`HostServer`] serving a real directory over QUIC.
//!
//! One task on any [`quinn::Runtime`] owns the server and runs the sans-IO
//! loop: carry out every output, then wait for the next request, finished
//! file operation, local change, connection event or timer. Around it:
//!
//! * an accept task, and per connection a task accepting request streams
//!   and one writing pushes ([`crate::net::transport`] describes the protocol);
//! * per request stream a small task: it reads the request frame (size
//!   limited), hands it to the driver with a one-shot reply slot, and
//!   writes the reply frame when the driver fills the slot. So requests
//!   are concurrent, and a slow reply holds up only its own stream;
//! * [`FsPool`] threads executing the core's file operations through
//!   [`HostFs`] (blocking calls stay off the runtime); those that need no
//!   wait for the disk run on the driver itself
//!   ([`HostFs::try_execute`]);
//! * a [`TreeWatcher`] whose changes become `local_change`.
//!
//! Here: [`Host`] (this file), the [`driver`] task, the disk executor
//! [`fs`] and its thread pool, the [`watch`]er, and the [`keys`] a host
//! keeps across restarts.

pub mod fs;
pub mod keys;
pub mod watch;

mod driver;

use core::net::SocketAddr;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tracing::{debug, info};
use wormhole_core::Rng;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::{HostConfig, HostEvent, HostServer};

use crate::claim::{ClaimError, DirClaim};
use crate::net::identity::{Identity, QuicConfigError};
use crate::net::quic::{host_endpoint_config, host_server_config, size_socket_buffers};
use driver::{Event, HostDriver};
use fs::{FsPool, HostFs, HostFsConfig};
use watch::{TreeWatcher, WatchConfig, WatchError};

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
            config: HostConfig {
                // Clients act as the user this host runs as.
                owners: wormhole_core::proto::Owners::HostUser {
                    uid: rustix::process::geteuid().as_raw(),
                    gid: rustix::process::getegid().as_raw(),
                },
                ..HostConfig::default()
            },
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
    /// Another host shares the folder.
    #[error(
        "{0} is already shared by another wormhole host on this machine (one folder, one host: \
         two would let their clients overwrite each other's writes)"
    )]
    Shared(PathBuf),
    /// The folder cannot be claimed for sharing.
    #[error("cannot lock {dir} for sharing: {source}")]
    Claim {
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
pub struct Host {
    local_addr: SocketAddr,
    _stop: async_channel::Sender<()>,
    done: async_channel::Receiver<()>,
    events: async_channel::Receiver<HostEvent>,
    /// What [`Host::serve_socket`] needs to add an endpoint.
    more: MoreEndpoints,
}

/// The parts of a host that serve one more socket.
struct MoreEndpoints {
    runtime: Arc<dyn quinn::Runtime>,
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
    opened: async_channel::Sender<Event>,
    stop: async_channel::Receiver<()>,
}

impl core::fmt::Debug for Host {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Host")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Starts serving `options.root` on `socket` (bound by the shell).
    /// Call it from within the runtime: the tasks are spawned on it.
    pub fn spawn(
        runtime: Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
        options: HostOptions,
    ) -> Result<Host, HostError> {
        // First: with the folder claimed, any staging file of another run
        // is a crash's, and the first scan sweeps it.
        let claim = DirClaim::acquire(&options.root).map_err(|e| match e {
            ClaimError::Busy => HostError::Shared(options.root.clone()),
            ClaimError::Io(source) => HostError::Claim {
                dir: options.root.clone(),
                source,
            },
        })?;
        let fs_config = HostFsConfig {
            sole_host: true,
            ..options.fs.clone()
        };
        let fs = HostFs::open(&options.root, fs_config).map_err(|source| HostError::Root {
            dir: options.root.clone(),
            source,
        })?;
        let watcher = TreeWatcher::new(&options.root, WatchConfig::default())?;
        let fs = Arc::new(fs);
        let (pool, fs_results) = FsPool::new(fs.clone(), options.workers, 1024)?;
        let server_config = host_server_config(&options.identity)?;
        let local_addr = socket.local_addr()?;
        size_socket_buffers(&socket);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            host_endpoint_config(&options.identity),
            Some(server_config.clone()),
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
        let more = MoreEndpoints {
            runtime: runtime.clone(),
            endpoint_config: host_endpoint_config(&options.identity),
            server_config,
            opened: tx.clone(),
            stop: stop_rx.clone(),
        };
        let server = HostServer::new(options.config, options.secret, Rng::from_u64(options.seed));
        let driver = HostDriver::new(
            runtime.clone(),
            events_tx,
            (tx, rx),
            stop_rx,
            fs,
            pool,
            fs_results,
        );
        runtime.spawn(Box::pin(async move {
            driver.run(server, endpoint, accepting).await;
            // The folder is free for another host only now.
            drop(claim);
            drop(done_tx);
        }));
        info!(%local_addr, "hosting");
        Ok(Host {
            local_addr,
            _stop: stop,
            done,
            events,
            more,
        })
    }

    /// Serves clients on one more socket: a hole punched toward a client,
    /// whose connection arrives on it. The endpoint closes when the host
    /// stops.
    pub fn serve_socket(&self, socket: std::net::UdpSocket) -> io::Result<()> {
        let m = &self.more;
        size_socket_buffers(&socket);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            m.endpoint_config.clone(),
            Some(m.server_config.clone()),
            m.runtime.wrap_udp_socket(socket)?,
            m.runtime.clone(),
        )?;
        let (opened, stop, runtime) = (m.opened.clone(), m.stop.clone(), m.runtime.clone());
        m.runtime.spawn(Box::pin(async move {
            loop {
                let next = futures_lite::future::or(async { endpoint.accept().await }, async {
                    let _ = stop.recv().await;
                    None
                })
                .await;
                let Some(incoming) = next else { break };
                let opened = opened.clone();
                runtime.spawn(Box::pin(async move {
                    let from = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => {
                            let _ = opened.send(Event::Opened(conn)).await;
                        }
                        Err(e) => debug!(%from, error = %e, "handshake failed"),
                    }
                }));
            }
            endpoint.close(crate::net::quic::CLOSE_OK, b"host stopped");
        }));
        Ok(())
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
