//! Spare paths for a quick reconnect (docs/relay.md, "Spare pairs"): a
//! mount on a direct path keeps a few more punched paths to its host, each
//! held alive in both sides' pair pools, and a reconnect takes one through
//! the pair handover instead of gathering and punching again.

use super::commands::PunchedPath;
use crate::Shell;
use crate::net::Ticket;
use anyhow::{Result, anyhow};
use core::net::SocketAddr;
use core::time::Duration;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use wormhole_core::rendezvous::peer::ClientEvent;

/// How soon a spare that could not be punched (or died) is punched again,
/// doubling after each miss up to `RETRY_MAX`: a host at its session limit
/// or a NAT that lets nothing through costs the rendezvous little.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long taking a spare may last: two round trips through the
/// rendezvous, repeated a few times if a signal is lost.
const TAKE_LIMIT: Duration = Duration::from_secs(5);

/// A held spare, ready to take.
struct Ready {
    id: u64,
    take: async_channel::Sender<()>,
    path: async_channel::Receiver<Result<PunchedPath>>,
}

/// The spares a mount holds, shared by their keepers and the reconnect
/// that takes one.
pub(super) struct Spares {
    ready: Mutex<Vec<Ready>>,
    /// Set while a spare is ready: the transport then renews at once
    /// after a loss instead of redialling (`renew_first_when`).
    any: Arc<AtomicBool>,
    ids: AtomicU64,
    /// How many the keepers hold when all is well, and where to say once
    /// that they are all ready.
    count: usize,
    announced: AtomicBool,
    lines: async_channel::Sender<String>,
}

impl Spares {
    /// Room for `count` spares; news goes to `lines`.
    pub(super) fn new(count: usize, lines: async_channel::Sender<String>) -> Self {
        Spares {
            ready: Mutex::new(Vec::new()),
            any: Arc::default(),
            ids: AtomicU64::new(0),
            count,
            announced: AtomicBool::new(false),
            lines,
        }
    }

    /// True while a spare is ready to take.
    pub(super) fn flag(&self) -> Arc<AtomicBool> {
        self.any.clone()
    }

    fn with_ready<T>(&self, f: impl FnOnce(&mut Vec<Ready>) -> T) -> T {
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut ready);
        self.any.store(!ready.is_empty(), Ordering::SeqCst);
        out
    }

    fn offer(&self, spare: Ready) {
        let held = self.with_ready(|ready| {
            ready.push(spare);
            ready.len()
        });
        if held >= self.count && !self.announced.swap(true, Ordering::SeqCst) {
            let paths = if self.count == 1 { "path" } else { "paths" };
            let _ = self.lines.try_send(format!(
                "{} spare {paths} to the host kept ready for a quick reconnect.",
                self.count
            ));
        }
    }

    fn withdraw(&self, id: u64) {
        self.with_ready(|ready| ready.retain(|r| r.id != id));
    }

    /// Takes a spare through the pair handover: `None` if none is ready,
    /// else the path (or why taking it failed).
    pub(super) async fn take(&self, runtime: &dyn quinn::Runtime) -> Option<Result<PunchedPath>> {
        // The newest: its NAT mappings are the freshest.
        let spare = self.with_ready(Vec::pop)?;
        let taken = async {
            spare
                .take
                .send(())
                .await
                .map_err(|_| anyhow!("the spare path ended"))?;
            spare
                .path
                .recv()
                .await
                .map_err(|_| anyhow!("the spare path ended"))?
        };
        Some(
            crate::runtime::timeout(runtime, TAKE_LIMIT, "taking a spare path", taken)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r),
        )
    }
}

/// Keeps one spare path to the ticket's host, through `rendezvous`, in
/// `spares` for as long as it runs: punches it (while `direct()` says the
/// mount is on a direct path: between NATs that need a relay no spare
/// can be punched), holds it, and punches the next once it is taken or
/// dies. Gives up where only birthday punching finds a path.
pub(super) async fn keep_spare<S: Shell>(
    shell: &S,
    ticket: &Ticket,
    rendezvous: SocketAddr,
    spares: &Spares,
    direct: impl Fn() -> bool,
) {
    let rt = shell.runtime();
    let mut wait = RETRY_FIRST;
    loop {
        if !direct() {
            crate::runtime::sleep(&*rt, RETRY_FIRST).await;
            continue;
        }
        let seed = match crate::runtime::os_seed() {
            Ok(seed) => seed,
            Err(e) => {
                tracing::warn!(error = %e, "no spare paths: no randomness");
                return;
            }
        };
        let party = crate::nat::PunchParty {
            rendezvous,
            fingerprint: ticket.fingerprint.0,
            secret: ticket.secret.clone(),
            seed,
            may_relay: false,
        };
        let id = spares.ids.fetch_add(1, Ordering::Relaxed);
        let (take_tx, take_rx) = async_channel::bounded(1);
        let (path_tx, path_rx) = async_channel::bounded(1);
        let (end_tx, end_rx) = async_channel::bounded::<()>(1);
        let mut ready = Some(Ready {
            id,
            take: take_tx,
            path: path_rx,
        });
        let mut outcome = None;
        let mut birthday = false;
        let punched = crate::nat::client_spare(
            rt.clone(),
            party,
            |a| shell.bind_udp(a),
            |event| match event {
                // Birthday punching leaves hundreds of sockets open on
                // both sides for as long as the path is held: too dear
                // for a spare.
                ClientEvent::SpareReady { birthday: true, .. } => {
                    birthday = true;
                    let _ = end_tx.try_send(());
                }
                ClientEvent::SpareReady { .. } => {
                    // Punching works again: a later loss starts afresh.
                    wait = RETRY_FIRST;
                    if let Some(r) = ready.take() {
                        spares.offer(r);
                    }
                }
                ClientEvent::NeedSprayers(_) => {}
                other => {
                    outcome = Some(other.clone());
                    let _ = end_tx.try_send(());
                }
            },
            take_rx,
            async {
                let _ = end_rx.recv().await;
            },
        )
        .await;
        spares.withdraw(id);
        if birthday {
            tracing::info!("no spare paths: this host is reached by birthday punching only");
            return;
        }
        let path = match (punched, outcome) {
            (
                Ok(punched),
                Some(ClientEvent::Connected {
                    remote, birthday, ..
                }),
            ) => Ok(PunchedPath {
                punched,
                remote,
                birthday,
            }),
            (Err(e), _) => Err(anyhow!("the spare path failed: {e}")),
            (Ok(_), other) => Err(anyhow!("the spare path ended: {other:?}")),
        };
        match path {
            Ok(path) => {
                // Taken: the next spare is punched at once.
                wait = RETRY_FIRST;
                let _ = path_tx.try_send(Ok(path));
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "no spare path; trying again later");
                let _ = path_tx.try_send(Err(e));
                crate::runtime::sleep(&*rt, wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}
