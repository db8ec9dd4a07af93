//! What a host keeps across restarts: its TLS key and certificate, and the
//! ticket secret, in the user's configuration directory
//! (`$XDG_CONFIG_HOME/wormhole`, else `~/.config/wormhole`; files mode
//! 0600), so a restarted host prints the same ticket and mounted clients
//! reconnect to it.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use wormhole_core::conn::auth::TicketSecret;

use crate::net::identity::{Identity, QuicConfigError};

/// Why the host's stored identity could not be loaded or made.
#[derive(Debug, Error)]
pub enum KeysError {
    /// Neither `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("cannot find a configuration directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stored identity is damaged.
    #[error(
        "{dir}: the stored host identity is damaged ({source}); start once with --new-identity"
    )]
    Damaged {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: QuicConfigError,
    },
    /// The stored secret has the wrong size.
    #[error("{0}: damaged secret (start once with --new-identity)")]
    BadSecret(PathBuf),
    /// No randomness for a new secret.
    #[error("the operating system gave no randomness")]
    NoRandomness,
    /// Certificate generation failed.
    #[error("{0}")]
    Generate(QuicConfigError),
}

/// The host's lasting identity: key and certificate, and the secret.
#[derive(Debug)]
pub struct HostKeys {
    /// The TLS identity (its fingerprint goes in the ticket).
    pub identity: Identity,
    /// The ticket secret.
    pub secret: TicketSecret,
}

/// `$XDG_CONFIG_HOME/wormhole`, else `$HOME/.config/wormhole`.
pub fn config_dir() -> Result<PathBuf, KeysError> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = from("XDG_CONFIG_HOME") {
        return Ok(x.join("wormhole"));
    }
    from("HOME")
        .map(|h| h.join(".config").join("wormhole"))
        .ok_or(KeysError::NoConfigDir)
}

const CERT_FILE: &str = "host-cert.der";
const KEY_FILE: &str = "host-key.der";
const SECRET_FILE: &str = "host-secret";

impl HostKeys {
    /// Loads the identity kept in `dir`, creating it on first use (or
    /// always, with `fresh`: `--new-identity`, which invalidates every
    /// ticket handed out before).
    pub fn load_or_create(dir: &Path, fresh: bool) -> Result<HostKeys, KeysError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| KeysError::Io { path, source }
        };
        let (cert_p, key_p, secret_p) = (
            dir.join(CERT_FILE),
            dir.join(KEY_FILE),
            dir.join(SECRET_FILE),
        );
        if !fresh && cert_p.exists() && key_p.exists() && secret_p.exists() {
            let cert = std::fs::read(&cert_p).map_err(io_err(&cert_p))?;
            let key = std::fs::read(&key_p).map_err(io_err(&key_p))?;
            let secret = std::fs::read(&secret_p).map_err(io_err(&secret_p))?;
            let identity = Identity::from_der(cert, key).map_err(|source| KeysError::Damaged {
                dir: dir.to_owned(),
                source,
            })?;
            let secret: [u8; 32] = secret
                .try_into()
                .map_err(|_| KeysError::BadSecret(secret_p.clone()))?;
            return Ok(HostKeys {
                identity,
                secret: TicketSecret(secret),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Only the owner may look inside: it holds a private key.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
        let identity = Identity::generate().map_err(KeysError::Generate)?;
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| KeysError::NoRandomness)?;
        write_private(&key_p, identity.key_der()).map_err(io_err(&key_p))?;
        write_private(&secret_p, &secret).map_err(io_err(&secret_p))?;
        // The certificate last: its presence marks a complete set.
        write_private(&cert_p, identity.cert_der()).map_err(io_err(&cert_p))?;
        Ok(HostKeys {
            identity,
            secret: TicketSecret(secret),
        })
    }
}

/// Writes a 0600 file beside, syncs it, and renames it into place.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_rotate() {
        let dir = std::env::temp_dir().join(format!(
            "wormhole-keys-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let a = HostKeys::load_or_create(&dir, false).expect("create");
        let b = HostKeys::load_or_create(&dir, false).expect("load");
        assert_eq!(a.identity.fingerprint(), b.identity.fingerprint());
        assert_eq!(a.secret, b.secret);
        for f in [CERT_FILE, KEY_FILE, SECRET_FILE] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let c = HostKeys::load_or_create(&dir, true).expect("rotate");
        assert_ne!(a.identity.fingerprint(), c.identity.fingerprint());
        assert_ne!(a.secret, c.secret);
        std::fs::write(dir.join(SECRET_FILE), b"short").expect("damage");
        assert!(matches!(
            HostKeys::load_or_create(&dir, false),
            Err(KeysError::BadSecret(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
