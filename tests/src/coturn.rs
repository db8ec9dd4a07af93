//! coturn (`turnserver`, Debian's package) on loopback, configured as a
//! deployment would be (`use-auth-secret` with a static secret), for the
//! tests and benchmarks of relaying.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};
use wormhole_core::turn::TurnCredentials;

/// The secret coturn shares with whoever mints its credentials.
pub const SECRET: &str = "wormhole-test-secret";

/// A `turnserver` on loopback, killed when dropped.
pub struct Coturn {
    child: Child,
    /// Where clients reach it.
    pub addr: SocketAddr,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// Starts coturn on a free loopback port, relaying on loopback (which
    /// it refuses by default: `--allow-loopback-peers`).
    pub fn start() -> Coturn {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = UdpSocket::bind((loopback, 0))
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--log-file",
                "stdout",
            ])
            .args(["-L", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["-p", &port.to_string(), "--pidfile", "/dev/null"])
            .args(["--use-auth-secret", "--static-auth-secret", SECRET])
            .args(["--realm", "wormhole.test", "--allow-loopback-peers"])
            .args(["--min-port", "49152", "--max-port", "65535"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (apt-get install coturn)");
        Coturn {
            child,
            addr: SocketAddr::new(loopback, port),
        }
    }

    /// Credentials it accepts for the next hour.
    pub fn credentials(&self) -> TurnCredentials {
        TurnCredentials::mint(SECRET.as_bytes(), unix_now() + 3600, "test")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
