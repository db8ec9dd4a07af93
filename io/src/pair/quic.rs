//! QUIC on a pair: the quinn configurations a taken pair's endpoint is
//! built with (both ends pinned, see [`crate::net::identity`]), and how
//! the two ends of a [`PairLease`] connect.

use crate::net::identity::{
    ALPN, Fingerprint, Identity, Pinned, PinnedClient, PinnedServer, QuicConfigError, SERVER_NAME,
    provider,
};
use crate::pair::PairLease;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Transport settings for a pair's connection.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // While a connection holds the pair, keepalive frames are silent, so
    // QUIC must refresh the NAT mapping itself, at the pair's own default
    // ping interval (see PairConfig for why 10 s).
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    Arc::new(t)
}

/// The server side of a pair endpoint: our certificate, and only `client`
/// may connect.
pub fn server_config(
    identity: &Identity,
    client: Fingerprint,
) -> Result<quinn::ServerConfig, QuicConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedClient(Pinned::new(client, &provider)));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert_der().clone()], identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport());
    // A pair is one fixed path; a client showing up from elsewhere is not
    // the peer the hole was punched for.
    cfg.migration(false);
    Ok(cfg)
}

/// The client side of a pair endpoint: our certificate, and only `server`
/// is accepted.
pub fn client_config(
    identity: &Identity,
    server: Fingerprint,
) -> Result<quinn::ClientConfig, QuicConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer(Pinned::new(server, &provider)));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert_der().clone()], identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Why a connection over a taken pair could not be set up.
#[derive(Debug, Error)]
pub enum PairConnectError {
    /// quinn refused to start the connection.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake or the connection failed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The endpoint was closed before a connection arrived.
    #[error("the pair's endpoint closed before the peer connected")]
    EndpointClosed,
}

impl PairLease {
    /// Connects to the peer's end of the pair (the usual role of the side
    /// that took it).
    pub async fn connect(&self) -> Result<quinn::Connection, PairConnectError> {
        Ok(self.endpoint.connect(self.remote, SERVER_NAME)?.await?)
    }

    /// Accepts the peer's connection on our end of the pair (the usual role
    /// of the side that was asked). Connection attempts from any address but
    /// the pair's remote are refused.
    pub async fn accept(&self) -> Result<quinn::Connection, PairConnectError> {
        loop {
            let incoming = self
                .endpoint
                .accept()
                .await
                .ok_or(PairConnectError::EndpointClosed)?;
            if incoming.remote_address() != self.remote {
                tracing::warn!(from = %incoming.remote_address(), pair = ?self.pair, "refused a connection from outside the pair");
                incoming.refuse();
                continue;
            }
            return Ok(incoming.await?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_configs_build() {
        let a = Identity::generate().expect("identity");
        let b = Identity::generate().expect("identity");
        assert!(server_config(&a, b.fingerprint()).is_ok());
        assert!(client_config(&a, b.fingerprint()).is_ok());
    }
}
