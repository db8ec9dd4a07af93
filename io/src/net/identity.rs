//! Identities and certificate pinning, for every QUIC connection Wormhole
//! makes (host and mount, and the two ends of a pair).
//!
//! Every host or peer has a self-signed certificate (rcgen), known to
//! others by its SHA-256 (a [`Fingerprint`]): a ticket carries the host's,
//! pair peers exchange theirs. Verification is pinned: a side accepts only
//! the certificate it expects, and really checks the handshake signature
//! with that certificate's key, so holding the certificate without its key
//! gets nobody in.

use core::fmt;
use quinn::crypto::rustls::NoInitialCipherSuite;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use thiserror::Error;
use wormhole_core::pair::PeerId;

/// The ALPN protocol id of Wormhole's QUIC connections.
pub const ALPN: &[u8] = b"wormhole/1";

/// The TLS server name clients ask for. Certificates are pinned, not
/// checked against names, so this only has to be a valid DNS name.
pub const SERVER_NAME: &str = "wormhole";

/// SHA-256 of a certificate's DER encoding: how peers name the certificate
/// they expect.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// The peer id derived from this fingerprint (its first 16 bytes), so a
    /// peer id names exactly one certificate.
    pub fn peer_id(&self) -> PeerId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.0[..16]);
        PeerId(id)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes identify a certificate well enough in logs.
        write!(f, "sha256:")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "…")
    }
}

/// Why a QUIC configuration could not be built.
#[derive(Debug, Error)]
pub enum QuicConfigError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC's initial packets need.
    #[error("QUIC configuration rejected: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// A host's or peer's TLS identity: a self-signed certificate and its private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl Identity {
    /// A fresh self-signed identity.
    pub fn generate() -> Result<Self, QuicConfigError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
        Ok(Identity {
            fingerprint: Fingerprint::of(&cert),
            cert,
            key,
        })
    }

    /// The certificate's fingerprint, which peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// This node's peer id, derived from its certificate.
    pub fn peer_id(&self) -> PeerId {
        self.fingerprint.peer_id()
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// An identity kept from an earlier run: a DER certificate and its
    /// PKCS#8 DER private key. Checks that the key belongs to the
    /// certificate, so a mismatched pair fails here, not in a handshake.
    pub fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Result<Self, QuicConfigError> {
        let identity = Identity {
            fingerprint: Fingerprint::of(&cert),
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        };
        // Building a server config makes rustls compare the key with the
        // certificate's public key.
        rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![identity.cert.clone()], identity.key())?;
        Ok(identity)
    }

    /// The private key, PKCS#8 DER (to store it; handle with care).
    pub fn key_der(&self) -> &[u8] {
        self.key.secret_pkcs8_der()
    }

    /// The private key, for a TLS configuration.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate, by fingerprint, and verifies handshake
/// signatures against it with the provider's algorithms.
#[derive(Debug)]
pub(crate) struct Pinned {
    pin: Fingerprint,
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    pub(crate) fn new(pin: Fingerprint, provider: &CryptoProvider) -> Self {
        Pinned {
            pin,
            algs: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if Fingerprint::of(end_entity) == self.pin {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(cert)?;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(cert)?;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

/// The client's view of the server: pinned.
#[derive(Debug)]
pub(crate) struct PinnedServer(pub(crate) Pinned);

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Names and validity dates do not matter for a pinned self-signed
        // certificate: the fingerprint is the whole trust decision, and the
        // signature checks below prove the peer holds its key.
        self.0.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}

/// The server's view of the client: pinned too, and mandatory.
#[derive(Debug)]
pub(crate) struct PinnedClient(pub(crate) Pinned);

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_and_fingerprint_follow_the_certificate() {
        let a = Identity::generate().expect("identity");
        let b = Identity::generate().expect("identity");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), Fingerprint::of(a.cert_der()));
        assert_eq!(a.peer_id().0[..], a.fingerprint().0[..16]);
        assert_eq!(a.fingerprint().to_string().len(), 64);
        assert!(!format!("{a:?}").contains("key:"));
    }

    #[test]
    fn pinning_rejects_any_other_certificate() {
        let a = Identity::generate().expect("identity");
        let b = Identity::generate().expect("identity");
        let pinned = Pinned::new(a.fingerprint(), &provider());
        assert!(pinned.check(a.cert_der()).is_ok());
        assert!(pinned.check(b.cert_der()).is_err());
    }
}
