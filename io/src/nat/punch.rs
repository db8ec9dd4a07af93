//! Hole punching through a rendezvous on real UDP sockets: the core's
//! [`HostRendezvous`] and [`ClientRendezvous`] driven until a stop.

use super::udp::UdpSet;
use crate::drive::{Pass, poll_passes};
use crate::runtime::CoreClock;
use core::future::Future;
use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use tracing::warn;
use wormhole_core::rendezvous::peer::{ClientEvent, ClientRendezvous, HostEvent, HostRendezvous};

/// Runs a host's rendezvous side until `stop`: registration from
/// `socket`, and for each client put through a fresh socket from `bind`
/// (on `socket`'s address) that punches toward it. Every event goes to
/// `on_event`; with a `Connected` event goes the punched socket itself,
/// which this driver no longer reads: it is the caller's to serve the
/// client on.
pub async fn host_punch(
    runtime: Arc<dyn quinn::Runtime>,
    socket: std::net::UdpSocket,
    bind: impl Fn(SocketAddr) -> io::Result<std::net::UdpSocket>,
    make: impl FnOnce(wormhole_core::Instant, SocketAddr) -> HostRendezvous,
    mut on_event: impl FnMut(&HostEvent, Option<std::net::UdpSocket>),
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let ip = socket.local_addr()?.ip();
    let mut udp = UdpSet::new(&*runtime, vec![socket])?;
    let mut clock = CoreClock::new(runtime.clone());
    let local = udp.locals()[0];
    let mut machine = make(clock.now(), local);
    // Each punched socket's own handle, kept to hand over: the set reads
    // a duplicate, so the very socket (and its NAT mapping) survives.
    let mut masters: BTreeMap<SocketAddr, std::net::UdpSocket> = BTreeMap::new();
    let drive = core::future::poll_fn(|cx| {
        poll_passes(cx, |cx| {
            let now = clock.now();
            let mut busy = udp.poll_recv(cx, |local, from, datagram| {
                machine.handle_datagram(now, local, from, datagram);
            });
            if let Some(now) = clock.poll_due(cx, machine.poll_timeout()) {
                machine.handle_timeout(now);
                busy = true;
            }
            // Transmits before events: a Connected socket leaves the set
            // below, and its last answers must still go out.
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            while let Some(event) = machine.poll_event() {
                busy = true;
                let socket = match &event {
                    HostEvent::NeedSocket { session } => {
                        let added = bind(SocketAddr::new(ip, 0)).and_then(|s| {
                            let master = s.try_clone()?;
                            let local = udp.add(&*runtime, s)?;
                            masters.insert(local, master);
                            Ok(local)
                        });
                        match added {
                            Ok(local) => machine.add_socket(now, *session, local, vec![local]),
                            Err(e) => warn!(error = %e, "no socket for a client"),
                        }
                        None
                    }
                    HostEvent::Connected { session, local, .. } => {
                        machine.forget(*session);
                        udp.remove(*local);
                        masters.remove(local)
                    }
                    HostEvent::Failed { session, local, .. } => {
                        machine.forget(*session);
                        udp.remove(*local);
                        masters.remove(local);
                        None
                    }
                    HostEvent::Registered | HostEvent::RendezvousSilent => None,
                };
                on_event(&event, socket);
            }
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            Pass::from_busy(busy)
        })
    });
    futures_lite::future::or(stop, drive).await;
    Ok(())
}

/// Runs a client's rendezvous side on `socket` until `stop`: asks to be
/// put through, punches, reports every event to `on_event`, and keeps
/// answering the host's checks after the outcome.
pub async fn client_punch(
    runtime: Arc<dyn quinn::Runtime>,
    socket: std::net::UdpSocket,
    make: impl FnOnce(wormhole_core::Instant, SocketAddr) -> ClientRendezvous,
    mut on_event: impl FnMut(&ClientEvent),
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut udp = UdpSet::new(&*runtime, vec![socket])?;
    let mut clock = CoreClock::new(runtime);
    let mut machine = make(clock.now(), udp.locals()[0]);
    let drive = core::future::poll_fn(|cx| {
        poll_passes(cx, |cx| {
            let now = clock.now();
            let mut busy = udp.poll_recv(cx, |_, from, datagram| {
                machine.handle_datagram(now, from, datagram);
            });
            if let Some(now) = clock.poll_due(cx, machine.poll_timeout()) {
                machine.handle_timeout(now);
                busy = true;
            }
            while let Some(t) = machine.poll_transmit() {
                udp.send(t.local, t.remote, &t.payload);
            }
            while let Some(event) = machine.poll_event() {
                on_event(&event);
            }
            Pass::from_busy(busy)
        })
    });
    futures_lite::future::or(stop, drive).await;
    Ok(())
}
