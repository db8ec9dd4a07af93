//! Short-lived TURN credentials, minted the way coturn's `use-auth-secret`
//! checks them (the "TURN REST API" draft, draft-uberti-behave-turn-rest):
//! the username is `EXPIRY:ID` (EXPIRY in Unix seconds), the password is
//! the base64 of HMAC-SHA1 over the username under the secret the
//! rendezvous shares with the TURN server. No TURN password is ever in a
//! ticket, and a leaked credential stops working at EXPIRY.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

/// A TURN username and password (long-term credentials, RFC 8489 §9.2).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TurnCredentials {
    /// `EXPIRY:ID`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

impl core::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The password is a bearer secret until it expires: never logged.
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl TurnCredentials {
    /// Credentials for `id` that the TURN server sharing `secret` accepts
    /// until Unix time `expiry` (seconds).
    pub fn mint(secret: &[u8], expiry: u64, id: &str) -> Self {
        let username = format!("{expiry}:{id}");
        // HMAC takes a key of any length; `new_from_slice` cannot fail.
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        TurnCredentials { username, password }
    }

    /// The Unix time (seconds) the credentials expire at, if the username
    /// has the `EXPIRY:ID` form.
    pub fn expiry(&self) -> Option<u64> {
        self.username.split(':').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The draft's construction, checked against a value computed
    /// independently (`printf %s 1700000000:alice | openssl dgst -sha1
    /// -hmac s3cret -binary | base64`).
    #[test]
    fn minted_credentials_match_the_rest_api_construction() {
        let c = TurnCredentials::mint(b"s3cret", 1_700_000_000, "alice");
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
        assert_eq!(c.expiry(), Some(1_700_000_000));
    }

    #[test]
    fn the_password_never_reaches_a_log() {
        let c = TurnCredentials::mint(b"s3cret", 1, "bob");
        assert!(!format!("{c:?}").contains(&c.password));
    }
}
