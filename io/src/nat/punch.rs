//! The core's hole punching ([`Traversal`]) on one real UDP socket: the
//! socket the connection will then use.

use super::udp::UdpSet;
use crate::drive::{Pass, poll_passes};
use crate::runtime::CoreClock;
use core::future::Future;
use core::net::SocketAddr;
use core::pin::pin;
use core::task::Poll;
use futures_lite::Stream;
use std::io;
use std::sync::Arc;
use wormhole_core::nat::{Candidate, Traversal, TraversalEvent};

/// Runs `traversal` on `socket` until `stop` resolves: starts it against
/// `rendezvous`, feeds it the peer's candidates as they come from
/// `remote`, and reports every event to `on_event` (our candidates, to be
/// sent to the peer; the outcome). It keeps answering checks after the
/// outcome, for the peer that may not have finished yet.
pub async fn punch(
    runtime: Arc<dyn quinn::Runtime>,
    socket: std::net::UdpSocket,
    mut traversal: Traversal,
    rendezvous: Option<SocketAddr>,
    remote: impl Stream<Item = Vec<Candidate>>,
    mut on_event: impl FnMut(&TraversalEvent),
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut udp = UdpSet::new(&*runtime, vec![socket])?;
    let mut clock = CoreClock::new(runtime);
    traversal.start(clock.now(), rendezvous);
    let mut remote = pin!(remote);
    let mut remote_open = true;
    let drive = core::future::poll_fn(|cx| {
        poll_passes(cx, |cx| {
            let now = clock.now();
            let mut busy = udp.poll_recv(cx, |_, from, datagram| {
                traversal.handle_datagram(now, from, datagram);
            });
            while remote_open {
                match remote.as_mut().poll_next(cx) {
                    Poll::Ready(Some(candidates)) => {
                        traversal.add_remote_candidates(now, &candidates);
                        busy = true;
                    }
                    Poll::Ready(None) => remote_open = false,
                    Poll::Pending => break,
                }
            }
            if let Some(now) = clock.poll_due(cx, traversal.poll_timeout()) {
                traversal.handle_timeout(now);
                busy = true;
            }
            while let Some(t) = traversal.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            while let Some(event) = traversal.poll_event() {
                on_event(&event);
            }
            Pass::from_busy(busy)
        })
    });
    futures_lite::future::or(stop, drive).await;
    Ok(())
}
