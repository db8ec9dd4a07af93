//! Tickets, and the host's identity kept across restarts.
//!
//! A [`Ticket`] is everything a client needs to mount a host: where it is
//! (its addresses), who it is (its certificate's fingerprint, pinned) and
//! what to prove (the ticket secret). As text it is one copy-pasteable
//! word: `wormhole1-` and the lowercase base32 (RFC 4648, no padding) of a
//! versioned encoding (through [`wormhole_core::codec`], size-limited)
//! followed by a 4-byte checksum, so a ticket cut short or mistyped fails
//! as "bad ticket" instead of as a wrong secret.
//!
//! [`HostState`] keeps the host's key, certificate and secret in the
//! user's configuration directory (`$XDG_CONFIG_HOME/wormhole`, else
//! `~/.config/wormhole`; files mode 0600), so a restarted host prints the
//! same ticket and mounted clients reconnect to it.

use core::fmt;
use core::net::SocketAddr;
use core::str::FromStr;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use wormhole_core::codec::{self, WireMessage};
use wormhole_core::conn::auth::TicketSecret;

use crate::quic::{Fingerprint, Identity, QuicConfigError};

/// The text before the encoding; the digit is the ticket format version.
pub const PREFIX: &str = "wormhole1-";
/// Addresses a ticket may hold.
pub const MAX_ADDRS: usize = 16;
/// Bytes of checksum after the encoding.
const CHECKSUM: usize = 4;
/// Version of the encoded ticket body.
const BODY_VERSION: u8 = 1;

/// What a client needs to reach and prove itself to a host.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Where the host listens, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// The host certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// The secret proved in Hello.
    pub secret: TicketSecret,
}

impl fmt::Debug for Ticket {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("addrs", &self.addrs)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    version: u8,
    addrs: Vec<SocketAddr>,
    fingerprint: [u8; 32],
    secret: [u8; 32],
}

impl WireMessage for Body {
    // Version bytes, 16 IPv6 addresses, fingerprint and secret, with room.
    const MAX_SIZE: usize = 512;
}

/// Why a ticket does not parse. Displayed as one line starting with
/// "bad ticket:".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The text does not start with `wormhole1-`.
    #[error("bad ticket: it must start with \"{PREFIX}\" (copy the whole line the host printed)")]
    Prefix,
    /// A character that is not base32.
    #[error("bad ticket: unexpected character {0:?} (copy the whole line the host printed)")]
    Char(char),
    /// Longer than any ticket can be.
    #[error("bad ticket: too long ({0} characters)")]
    TooLong(usize),
    /// The checksum does not match: cut short or mistyped.
    #[error("bad ticket: checksum mismatch (cut short or mistyped?)")]
    Checksum,
    /// A ticket from another version of Wormhole.
    #[error("bad ticket: format version {0} is not supported by this build")]
    Version(u8),
    /// The body does not decode.
    #[error("bad ticket: {0}")]
    Body(String),
    /// No address, or too many.
    #[error("bad ticket: it holds {0} addresses (1 to {MAX_ADDRS} expected)")]
    Addrs(usize),
}

impl Ticket {
    /// The ticket's text.
    pub fn encode(&self) -> String {
        let body = Body {
            version: BODY_VERSION,
            addrs: self.addrs.clone(),
            fingerprint: self.fingerprint.0,
            secret: self.secret.0,
        };
        // At most MAX_ADDRS addresses fit MAX_SIZE; more is a caller bug,
        // which parse would refuse anyway.
        let mut bytes = codec::encode(&body).map(|b| b.to_vec()).unwrap_or_default();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM]);
        format!("{PREFIX}{}", base32_encode(&bytes))
    }

    /// Parses a ticket's text (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        let rest = text
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and_then(|_| text.get(PREFIX.len()..))
            .ok_or(TicketError::Prefix)?;
        let max_chars = (Body::MAX_SIZE + CHECKSUM) * 8 / 5 + 1;
        if rest.len() > max_chars {
            return Err(TicketError::TooLong(text.len()));
        }
        let bytes = base32_decode(rest)?;
        if bytes.len() <= CHECKSUM {
            return Err(TicketError::Checksum);
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if blake3::hash(body).as_bytes()[..CHECKSUM] != *sum {
            return Err(TicketError::Checksum);
        }
        let body: Body = codec::decode(body).map_err(|e| match e {
            codec::CodecError::Version { got } => TicketError::Version(got),
            e => TicketError::Body(e.to_string()),
        })?;
        if body.version != BODY_VERSION {
            return Err(TicketError::Version(body.version));
        }
        if body.addrs.is_empty() || body.addrs.len() > MAX_ADDRS {
            return Err(TicketError::Addrs(body.addrs.len()));
        }
        Ok(Ticket {
            addrs: body.addrs,
            fingerprint: Fingerprint(body.fingerprint),
            secret: TicketSecret(body.secret),
        })
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticket::parse(s)
    }
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn base32_decode(text: &str) -> Result<Vec<u8>, TicketError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.chars() {
        let v = match c.to_ascii_lowercase() {
            l @ 'a'..='z' => l as u32 - 'a' as u32,
            d @ '2'..='7' => d as u32 - '2' as u32 + 26,
            _ => return Err(TicketError::Char(c)),
        };
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Ok(out)
}

// ------------------------------------------------------------ host state

/// Why the host's stored identity could not be loaded or made.
#[derive(Debug, Error)]
pub enum StateError {
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
pub struct HostState {
    /// The TLS identity (its fingerprint goes in the ticket).
    pub identity: Identity,
    /// The ticket secret.
    pub secret: TicketSecret,
}

/// `$XDG_CONFIG_HOME/wormhole`, else `$HOME/.config/wormhole`.
pub fn config_dir() -> Result<PathBuf, StateError> {
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
        .ok_or(StateError::NoConfigDir)
}

const CERT_FILE: &str = "host-cert.der";
const KEY_FILE: &str = "host-key.der";
const SECRET_FILE: &str = "host-secret";

impl HostState {
    /// Loads the identity kept in `dir`, creating it on first use (or
    /// always, with `fresh`: `--new-identity`, which invalidates every
    /// ticket handed out before).
    pub fn load_or_create(dir: &Path, fresh: bool) -> Result<HostState, StateError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
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
            let identity = Identity::from_der(cert, key).map_err(|source| StateError::Damaged {
                dir: dir.to_owned(),
                source,
            })?;
            let secret: [u8; 32] = secret
                .try_into()
                .map_err(|_| StateError::BadSecret(secret_p.clone()))?;
            return Ok(HostState {
                identity,
                secret: TicketSecret(secret),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Only the owner may look inside: it holds a private key.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
        let identity = Identity::generate().map_err(StateError::Generate)?;
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| StateError::NoRandomness)?;
        write_private(&key_p, identity.key_der()).map_err(io_err(&key_p))?;
        write_private(&secret_p, &secret).map_err(io_err(&secret_p))?;
        // The certificate last: its presence marks a complete set.
        write_private(&cert_p, identity.cert_der()).map_err(io_err(&cert_p))?;
        Ok(HostState {
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

    fn ticket() -> Ticket {
        Ticket {
            addrs: vec![
                "192.168.1.20:47470".parse().expect("addr"),
                "[fe80::1]:47470".parse().expect("addr"),
                "127.0.0.1:47470".parse().expect("addr"),
            ],
            fingerprint: Fingerprint([7; 32]),
            secret: TicketSecret([9; 32]),
        }
    }

    #[test]
    fn round_trip() {
        let t = ticket();
        let text = t.encode();
        assert!(text.starts_with(PREFIX), "{text}");
        assert!(text.len() < 200, "short enough to paste: {}", text.len());
        assert_eq!(Ticket::parse(&text), Ok(t.clone()));
        assert_eq!(
            Ticket::parse(&format!("  {}\n", text.to_uppercase())),
            Ok(t.clone())
        );
        assert!(!format!("{t:?}").contains("09"), "no secret in Debug");
    }

    #[test]
    fn base32_round_trips_every_length() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            assert_eq!(base32_decode(&base32_encode(&bytes)), Ok(bytes));
        }
    }

    #[test]
    fn parse_errors_are_typed_and_one_line() {
        let text = ticket().encode();
        assert_eq!(Ticket::parse("hello"), Err(TicketError::Prefix));
        assert_eq!(Ticket::parse(""), Err(TicketError::Prefix));
        assert_eq!(
            Ticket::parse(&format!("{text}!")),
            Err(TicketError::Char('!'))
        );
        assert_eq!(
            Ticket::parse(&text[..text.len() - 3]),
            Err(TicketError::Checksum)
        );
        assert_eq!(Ticket::parse(PREFIX), Err(TicketError::Checksum));
        // One character changed.
        let mut bad: Vec<char> = text.chars().collect();
        let i = PREFIX.len() + 20;
        bad[i] = if bad[i] == 'a' { 'b' } else { 'a' };
        let bad: String = bad.into_iter().collect();
        assert_eq!(Ticket::parse(&bad), Err(TicketError::Checksum));
        let long = format!("{PREFIX}{}", "a".repeat(2000));
        assert!(matches!(Ticket::parse(&long), Err(TicketError::TooLong(_))));
        // No addresses: well-formed, checksummed, still refused.
        let empty = Ticket {
            addrs: vec![],
            ..ticket()
        };
        assert_eq!(Ticket::parse(&empty.encode()), Err(TicketError::Addrs(0)));
        for e in [
            TicketError::Prefix,
            TicketError::Checksum,
            TicketError::Char('!'),
            TicketError::Version(9),
        ] {
            let line = e.to_string();
            assert!(
                line.starts_with("bad ticket: ") && !line.contains('\n'),
                "{line}"
            );
        }
    }

    #[test]
    fn host_state_persists_and_rotates() {
        let dir = std::env::temp_dir().join(format!(
            "wormhole-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let a = HostState::load_or_create(&dir, false).expect("create");
        let b = HostState::load_or_create(&dir, false).expect("load");
        assert_eq!(a.identity.fingerprint(), b.identity.fingerprint());
        assert_eq!(a.secret, b.secret);
        for f in [CERT_FILE, KEY_FILE, SECRET_FILE] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let c = HostState::load_or_create(&dir, true).expect("rotate");
        assert_ne!(a.identity.fingerprint(), c.identity.fingerprint());
        assert_ne!(a.secret, c.secret);
        std::fs::write(dir.join(SECRET_FILE), b"short").expect("damage");
        assert!(matches!(
            HostState::load_or_create(&dir, false),
            Err(StateError::BadSecret(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
