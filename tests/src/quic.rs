//! Helpers shared by the end-to-end tests over QUIC (`quic_e2e`,
//! `quic_clients`): a scratch directory, a host on 127.0.0.1 serving its
//! `share`, client transports, FUSE mounts, a raw-protocol client, and a
//! guard that unmounts and cleans up when a test fails.
//!
//! Every wait here has a limit ([`within`]); nothing sleeps to
//! synchronise.

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wormhole_core::client::ClientEvent;
use wormhole_core::codec::{FRAME_HEADER_LEN, PROTOCOL_VERSION, frame};
use wormhole_core::conn::auth;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::proto::{
    ClientMessage, Errno, HostMessage, Reply, Request, RequestId, SessionId,
};
use wormhole_io::host::{Host, HostOptions};
use wormhole_io::net::frame::MAX_HOST_FRAME;
use wormhole_io::net::{quic, transport};
use wormhole_io::{Identity, Mount, MountOptions, QuicTransport, Shell, Ticket, timeout};

/// The limit on one step: connecting, one request, mounting, stopping.
pub const STEP: Duration = Duration::from_secs(20);

/// The ticket secret of every test host.
pub const SECRET: TicketSecret = TicketSecret([0x5a; 32]);

/// A fresh directory under the system's temp dir, unique per process,
/// test (`what`) and runtime, holding `share` (the host's folder), `mnt`
/// (a mountpoint) and `cache` (a disk cache).
pub fn scratch(what: &str, runtime: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "wormhole-quic-{what}-{runtime}-{}-{nanos}",
        std::process::id()
    ));
    for sub in ["share", "mnt", "cache"] {
        fs::create_dir_all(dir.join(sub)).expect("make the scratch directories");
    }
    dir
}

/// Runs `fut` on the shell, failing the test (naming `what`) if it takes
/// longer than `limit`.
pub fn within<S: Shell, T>(
    shell: &S,
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> T {
    let rt = shell.runtime();
    shell
        .block_on(timeout(&*rt, limit, what, fut))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts a host on 127.0.0.1 (any port) serving `dir/share`.
pub fn start_host<S: Shell>(shell: &S, dir: &Path, identity: &Identity) -> Host {
    start_host_with(shell, dir, identity, false)
}

/// [`start_host`], read-only if asked (every change refused with EROFS).
pub fn start_host_with<S: Shell>(
    shell: &S,
    dir: &Path,
    identity: &Identity,
    read_only: bool,
) -> Host {
    let socket = shell
        .bind_udp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind the host's UDP socket");
    let mut options = HostOptions::new(dir.join("share"), identity.clone(), SECRET);
    options.config.read_only = read_only;
    shell
        .block_on(async { Host::spawn(shell.runtime(), socket, options) })
        .expect("start the host")
}

/// Stops `host`, within [`STEP`].
pub fn stop_host<S: Shell>(shell: &S, host: Host) {
    within(shell, STEP, "the host to stop", host.stop());
}

/// The ticket of a test host: its address, its certificate, [`SECRET`].
pub fn ticket(host: &Host, identity: &Identity) -> Ticket {
    Ticket {
        addrs: vec![host.local_addr()],
        fingerprint: identity.fingerprint(),
        secret: SECRET,
        rendezvous: None,
    }
}

/// A client transport to the ticket's host, on its own UDP socket on
/// 127.0.0.1.
pub fn transport<S: Shell>(shell: &S, ticket: &Ticket) -> QuicTransport {
    let socket = shell
        .bind_udp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind the client's UDP socket");
    shell
        .block_on(async {
            QuicTransport::new(
                shell.runtime(),
                socket,
                ticket.addrs.clone(),
                ticket.fingerprint,
            )
        })
        .expect("client endpoint")
}

/// Mounts at `mountpoint` through `transport`; fails the test, saying
/// why, if the kernel refuses (these tests need root and `/dev/fuse`
/// and never skip). Does not wait for the host: see [`connected`].
pub fn mount<S: Shell>(
    shell: &S,
    transport: QuicTransport,
    mountpoint: &Path,
    options: MountOptions,
) -> Mount {
    shell
        .block_on(async { Mount::new(shell.runtime(), transport, mountpoint, options) })
        .unwrap_or_else(|e| {
            panic!(
                "FUSE mount failed on {} (this test needs root and /dev/fuse; it does not \
                 skip): {e}",
                shell.name()
            )
        })
}

/// The mount's next connection event, within [`STEP`].
pub fn next_event<S: Shell>(shell: &S, mount: &Mount, what: &str) -> ClientEvent {
    within(shell, STEP, what, mount.events().recv()).expect("the mount driver is running")
}

/// Waits until the mount's first connection is up (a fresh session).
pub fn connected<S: Shell>(shell: &S, mount: &Mount) {
    let event = next_event(shell, mount, "the mount to connect");
    assert_eq!(event, ClientEvent::Connected { resumed: false });
}

/// A mount of the ticket's host at `mountpoint`, with a disk cache in
/// `cache` if given, connected.
pub fn mount_connected<S: Shell>(
    shell: &S,
    ticket: &Ticket,
    mountpoint: &Path,
    cache: Option<PathBuf>,
) -> Mount {
    let mut options = MountOptions::new(ticket.secret.clone()).expect("randomness");
    options.cache_dir = cache;
    let m = mount(shell, transport(shell, ticket), mountpoint, options);
    connected(shell, &m);
    m
}

/// Unmounts cleanly and waits for the mount driver to stop.
pub fn unmount<S: Shell>(shell: &S, mount: Mount) {
    let stopped = mount.stopped();
    mount.unmount().expect("unmount cleanly");
    within(shell, STEP, "the mount driver to stop", stopped);
}

/// Unmounts its mounts on drop and removes the scratch directory, so a
/// failing test leaves nothing behind.
#[derive(Debug)]
pub struct Guard {
    /// Mounts still to unmount; take them out to unmount cleanly.
    pub mounts: Vec<Mount>,
    /// The scratch directory.
    pub dir: PathBuf,
}

impl Guard {
    /// Guards `dir`, with no mount yet.
    pub fn new(dir: &Path) -> Self {
        Guard {
            mounts: Vec::new(),
            dir: dir.to_owned(),
        }
    }

    /// Unmounts every mount cleanly (in order) and waits for each driver
    /// to stop.
    pub fn unmount_all<S: Shell>(&mut self, shell: &S) {
        for m in std::mem::take(&mut self.mounts) {
            unmount(shell, m);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.mounts.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A client speaking the raw protocol on one QUIC connection: one request
/// per stream, request ids counted up from 1. For tests that do what the
/// client core never would.
#[derive(Debug)]
pub struct RawClient {
    /// The connection.
    pub conn: quinn::Connection,
    next: u64,
}

impl RawClient {
    /// Connects (the QUIC handshake only; say [`RawClient::hello`] next).
    pub async fn connect(transport: &QuicTransport) -> RawClient {
        let conn = transport.connect_quic().await.expect("connect over QUIC");
        RawClient { conn, next: 1 }
    }

    /// Connects and authenticates with [`SECRET`]; returns the session.
    pub async fn authenticated(transport: &QuicTransport) -> (RawClient, SessionId) {
        let mut c = RawClient::connect(transport).await;
        let session = c.hello().await;
        (c, session)
    }

    /// Says Hello with the proof of [`SECRET`] for this TLS session; fails
    /// the test unless the host accepts.
    pub async fn hello(&mut self) -> SessionId {
        let exporter = quic::exporter(&self.conn).expect("exporter");
        let hello = Request::Hello {
            version: u16::from(PROTOCOL_VERSION),
            proof: auth::proof(&SECRET, &exporter),
            resume: None,
        };
        match self.call(hello).await {
            Ok(Reply::HelloAck { session, .. }) => session,
            other => panic!("Hello refused: {other:?}"),
        }
    }

    fn id(&mut self) -> RequestId {
        let id = RequestId(self.next);
        self.next += 1;
        id
    }

    /// One request and its reply; an error if the host gave none (the
    /// stream was reset or the connection is gone).
    pub async fn try_call(&mut self, request: Request) -> io::Result<Result<Reply, Errno>> {
        let id = self.id();
        transport::request(&self.conn, id, request).await
    }

    /// One request and its reply; fails the test if the host gave none.
    pub async fn call(&mut self, request: Request) -> Result<Reply, Errno> {
        let what = format!("{request:?}");
        self.try_call(request)
            .await
            .unwrap_or_else(|e| panic!("no reply to {what}: {e}"))
    }

    /// Sends `payload` (what should be an encoded [`ClientMessage`], made
    /// by hand) as one framed request and reads the host's answer: the
    /// decoded reply, or an error if the host reset the stream or closed
    /// the connection.
    pub async fn call_raw(&mut self, payload: &[u8]) -> io::Result<HostMessage> {
        self.call_stream(&frame(payload)).await
    }

    /// Sends `stream` as a request stream's whole content, framed or not,
    /// and reads the host's answer as [`RawClient::call_raw`] does.
    pub async fn call_stream(&mut self, stream: &[u8]) -> io::Result<HostMessage> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(io::Error::other)?;
        send.write_all(stream).await.map_err(io::Error::other)?;
        let _ = send.finish();
        let bytes = recv
            .read_to_end(MAX_HOST_FRAME)
            .await
            .map_err(io::Error::other)?;
        let body = bytes
            .get(FRAME_HEADER_LEN..)
            .ok_or_else(|| io::Error::other("a short frame"))?;
        HostMessage::decode(body).map_err(io::Error::other)
    }

    /// Encodes `request` under the next request id, for a test that then
    /// edits the bytes before [`RawClient::call_raw`].
    pub fn encode(&mut self, request: Request) -> Vec<u8> {
        let id = self.id();
        ClientMessage { id, request }
            .encode()
            .expect("the request encodes")
            .to_vec()
    }
}
