//! The quinn configuration of the file protocol's connections: endpoint,
//! transport and TLS settings for host and mount, socket sizing, error
//! codes, and the TLS exporter that Hello's proof binds to.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use wormhole_core::conn::auth;

use crate::net::identity::{
    ALPN, Fingerprint, Identity, Pinned, PinnedServer, QuicConfigError, provider,
};

/// Stream error code: the frame was malformed or too large.
pub(crate) const BAD_FRAME: quinn::VarInt = quinn::VarInt::from_u32(1);
/// Stream error code: no answer will come (the request was dropped).
pub(crate) const NO_ANSWER: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Connection close code for an orderly close.
pub(crate) const CLOSE_OK: quinn::VarInt = quinn::VarInt::from_u32(0);

/// Largest UDP payload MTU discovery searches for. quinn's default
/// (1452) fits Ethernet; a path that carries more (loopback, jumbo-frame
/// LANs) then costs a third of the packets, and per-packet work (system
/// calls, crypto, acks) is most of QUIC's cost: reading 1 GiB over
/// loopback went from 3.5 s to 1.8 s of wall time and from 6.3 to 3.4 s of
/// CPU. Paths that carry less are found by the discovery and keep their
/// own size. Not higher: at 8000, quinn's batches of segments reach 64
/// KiB, and on loopback throughput collapsed to a few MB/s; 4000 (and
/// 6000) measured well.
const MTU_UPPER_BOUND: u16 = 4000;

/// Endpoint settings: accept datagrams as large as MTU discovery may
/// find.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    with_large_datagrams(quinn::EndpointConfig::default())
}

fn with_large_datagrams(mut c: quinn::EndpointConfig) -> quinn::EndpointConfig {
    c.max_udp_payload_size(MTU_UPPER_BOUND)
        .expect("within QUIC's bounds");
    // A punched socket also carries STUN and connectivity checks, told
    // apart from QUIC by the first byte (RFC 7983, RFC 9443): QUIC keeps
    // its fixed bit set only if neither side greases it (RFC 9287).
    c.grease_quic_bit(false);
    c
}

/// A host's endpoint settings: as [`endpoint_config`], with the key of
/// its stateless resets derived from its identity. So a host restarted
/// on its address answers a client of the run before with a reset the
/// client accepts (a reset is authenticated by a token of that key), and
/// the client reconnects at its next packet instead of waiting out its
/// idle timeout.
pub(crate) fn host_endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let secret = blake3::derive_key(
        "wormhole 2026-12 host stateless reset key",
        identity.key_der(),
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut c = quinn::EndpointConfig::new(Arc::new(key));
    // quinn's default generator drops packets whose connection id another
    // run issued (its validation key is random per run), so they would
    // never be answered with a reset: ids here are random and every one is
    // taken for ours.
    c.cid_generator(|| Box::new(AnyRunIds));
    with_large_datagrams(c)
}

/// Random connection ids, every id accepted as possibly ours (see
/// [`host_endpoint_config`]).
struct AnyRunIds;

impl quinn::ConnectionIdGenerator for AnyRunIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; 8];
        // Without randomness the id is still unique enough per connection
        // for routing (quinn checks for collisions); it is only less
        // private.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Socket buffer, each way, for an endpoint carrying file traffic.
const SOCKET_BUFFER: usize = 8 << 20;

/// Gives a file-traffic socket buffers that hold a burst. A read reply
/// arrives as a run of datagrams faster than the receiver is scheduled;
/// with the kernel's default (about 200 KiB) the socket overflows, and
/// QUIC takes each dropped datagram for congestion and halves its
/// window. Root may exceed the system's `rmem_max`/`wmem_max` (the mount
/// runs as root); anyone else gets up to them.
pub(crate) fn size_socket_buffers(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt as so;
    if so::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER).is_err() {
        let _ = so::set_socket_recv_buffer_size(socket, SOCKET_BUFFER);
    }
    if so::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER).is_err() {
        let _ = so::set_socket_send_buffer_size(socket, SOCKET_BUFFER);
    }
}

/// Flow control and liveness for file traffic. A read reply is a 128 KiB
/// chunk and many are in flight at once; windows of several MiB keep a
/// loopback or LAN link busy instead of waiting on window updates.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    // The client core bounds its requests in flight; this is the
    // protocol's own ceiling.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(256));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(30_000).into()));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// The host's server configuration: its certificate, ALPN `wormhole/1`,
/// no client certificate (clients prove the ticket secret in Hello).
pub fn host_server_config(identity: &Identity) -> Result<quinn::ServerConfig, QuicConfigError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert_der().clone()], identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// A client configuration that accepts only the host certificate `pin`
/// (real signature checks, see [`crate::net::identity`]).
pub fn host_client_config(pin: Fingerprint) -> Result<quinn::ClientConfig, QuicConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer(Pinned::new(pin, &provider)));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// The 32 bytes Hello's proof binds to, from this connection's TLS session.
pub fn exporter(conn: &quinn::Connection) -> io::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
        .map_err(|_| io::Error::other("TLS keying-material export failed"))?;
    Ok(out)
}

/// A reference for benchmarks: the time one QUIC stream takes to carry
/// `bytes` from a host endpoint to a client endpoint over loopback, with
/// exactly the file protocol's configuration (endpoints, transport, TLS,
/// socket buffers), counted from the client's first byte to its last (the
/// handshake excluded). A cold read through a mount is this plus
/// everything Wormhole does, so the ratio of the two says how much of
/// the transport's speed the file system keeps.
pub async fn loopback_stream_time(
    runtime: Arc<dyn quinn::Runtime>,
    bytes: usize,
) -> io::Result<Duration> {
    use crate::net::identity::SERVER_NAME;
    let identity = Identity::generate().map_err(io::Error::other)?;
    let bind = || -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        size_socket_buffers(&socket);
        runtime.wrap_udp_socket(socket)
    };
    let server_config = host_server_config(&identity).map_err(io::Error::other)?;
    let host = quinn::Endpoint::new_with_abstract_socket(
        host_endpoint_config(&identity),
        Some(server_config),
        bind()?,
        runtime.clone(),
    )?;
    let client = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(),
        None,
        bind()?,
        runtime.clone(),
    )?;
    let client_config = host_client_config(identity.fingerprint()).map_err(io::Error::other)?;
    let at = host.local_addr()?;
    let send = async {
        let incoming = host
            .accept()
            .await
            .ok_or_else(|| io::Error::other("no client"))?;
        let conn = incoming.await?;
        let mut stream = conn.open_uni().await?;
        // Read replies are 128 KiB chunks.
        let chunk = bytes::Bytes::from(vec![0x5a; 128 << 10]);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            stream
                .write_chunk(chunk.slice(..n))
                .await
                .map_err(io::Error::other)?;
            left -= n;
        }
        stream.finish().map_err(io::Error::other)?;
        // Until the client has it all (it closes the connection).
        let _ = conn.closed().await;
        io::Result::Ok(())
    };
    let receive = async {
        let conn = client
            .connect_with(client_config, at, SERVER_NAME)
            .map_err(io::Error::other)?
            .await?;
        let mut stream = conn.accept_uni().await?;
        let mut got = 0;
        let mut started = None;
        while let Some(chunk) = stream
            .read_chunk(usize::MAX, true)
            .await
            .map_err(io::Error::other)?
        {
            started.get_or_insert_with(|| runtime.now());
            got += chunk.bytes.len();
        }
        let took = started
            .map(|t| runtime.now().saturating_duration_since(t))
            .unwrap_or_default();
        conn.close(CLOSE_OK, b"done");
        if got != bytes {
            return Err(io::Error::other(format!("{got} of {bytes} bytes arrived")));
        }
        io::Result::Ok(took)
    };
    let (sent, took) = futures_lite::future::zip(send, receive).await;
    sent?;
    took
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        let id = Identity::generate().expect("identity");
        assert!(host_server_config(&id).is_ok());
        assert!(host_client_config(id.fingerprint()).is_ok());
        let again = Identity::from_der(id.cert_der().to_vec(), id.key_der().to_vec())
            .expect("the same identity back");
        assert_eq!(again.fingerprint(), id.fingerprint());
        let other = Identity::generate().expect("identity");
        assert!(
            Identity::from_der(id.cert_der().to_vec(), other.key_der().to_vec()).is_err(),
            "a key that is not the certificate's is refused"
        );
    }
}
