//! `wormhole nat-check`: classify this machine's NAT against a rendezvous.

use super::udp::UdpSet;
use crate::drive::{Pass, poll_passes};
use crate::runtime::CoreClock;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::io;
use std::sync::Arc;
use thiserror::Error;
use wormhole_core::Rng;
use wormhole_core::nat::{BindingConfig, Classifier, ClassifyError, NatBehaviour};

/// Why `nat-check` has no answer.
#[derive(Debug, Error)]
pub enum CheckError {
    /// No route to the rendezvous, or no socket.
    #[error("cannot reach {server} over UDP from this machine: {source}")]
    Socket {
        /// The rendezvous.
        server: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The classification itself failed.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
}

/// The address of this machine that routes to `server`. Connecting a UDP
/// socket sends nothing; it only asks the kernel for the route.
pub fn route_to(server: SocketAddr) -> io::Result<IpAddr> {
    let any = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let probe = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    probe.connect(server)?;
    Ok(probe.local_addr()?.ip())
}

/// Classifies the NAT between this machine and `server` (a rendezvous,
/// or any RFC 5780 STUN server), from two fresh sockets bound with
/// `bind` on the address that routes there. Takes a few seconds: the
/// filtering tests must wait out answers that never come.
pub async fn nat_check(
    runtime: Arc<dyn quinn::Runtime>,
    server: SocketAddr,
    seed: [u8; 32],
    bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
) -> Result<NatBehaviour, CheckError> {
    let socket_error = |source| CheckError::Socket { server, source };
    let ip = route_to(server).map_err(socket_error)?;
    let sockets = (0..2)
        .map(|_| bind(SocketAddr::new(ip, 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(socket_error)?;
    let mut udp = UdpSet::new(&*runtime, sockets).map_err(socket_error)?;
    let [a, b] = udp.locals()[..] else {
        unreachable!("two sockets were bound");
    };
    let mut clock = CoreClock::new(runtime);
    let mut classifier = Classifier::new(
        clock.now(),
        BindingConfig::interactive(),
        Rng::from_seed(seed),
        server,
        a,
        b,
    );
    let mut result = None;
    core::future::poll_fn(|cx| {
        poll_passes(cx, |cx| {
            let now = clock.now();
            let more = udp.poll_recv(cx, |local, from, datagram| {
                classifier.handle_datagram(now, local, from, datagram);
            });
            // A fired timer changes the next deadline: pass again to arm it.
            let fired = clock.poll_due(cx, classifier.poll_timeout());
            if let Some(now) = fired {
                classifier.handle_timeout(now);
            }
            while let Some(t) = classifier.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            if let Some(r) = classifier.poll_result() {
                result = Some(r);
                return Pass::Done;
            }
            Pass::from_busy(more || fired.is_some())
        })
    })
    .await;
    Ok(result.expect("the drive loop ends with a result")?)
}
