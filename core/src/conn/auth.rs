//! Client authentication: proof of the ticket secret, bound to one TLS
//! session.
//!
//! The client never sends the secret. Both ends derive the same 32 bytes
//! from the TLS session (a keying-material exporter, RFC 5705 / RFC 8446
//! §7.5) and the client sends a keyed hash of them under the secret. A
//! proof is useless on any other TLS session, so it cannot be replayed, and
//! an eavesdropper (who cannot see inside TLS anyway) learns nothing about
//! the secret.

/// The ticket secret a host hands out in its ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketSecret(pub [u8; 32]);

impl core::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TicketSecret(..)")
    }
}

/// Label for the TLS exporter both ends use.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-wormhole/1 client auth";

const PROOF_CONTEXT: &[u8] = b"wormhole/1 hello proof";

/// The client's proof for a TLS session whose exporter gave `exporter`.
pub fn proof(secret: &TicketSecret, exporter: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&secret.0);
    h.update(PROOF_CONTEXT);
    h.update(exporter);
    *h.finalize().as_bytes()
}

/// Whether `candidate` is the right proof (constant time).
pub fn verify(secret: &TicketSecret, exporter: &[u8; 32], candidate: &[u8; 32]) -> bool {
    let expected = proof(secret, exporter);
    expected
        .iter()
        .zip(candidate)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_and_session() {
        let s = TicketSecret([1; 32]);
        let p = proof(&s, &[2; 32]);
        assert!(verify(&s, &[2; 32], &p));
        assert!(!verify(&s, &[3; 32], &p), "another TLS session");
        assert!(
            !verify(&TicketSecret([9; 32]), &[2; 32], &p),
            "another secret"
        );
        assert_ne!(p, [0; 32]);
    }
}
