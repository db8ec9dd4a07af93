//! `wormhole host`, `wormhole mount` and `wormhole unmount`, written once
//! for both binaries.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_lite::StreamExt;

use super::desk;
use super::news;
use super::spares::{Spares, keep_spare};
use crate::claim::{ClaimError, DirClaim};
use crate::host::keys::{HostKeys, config_dir};
use crate::host::{Host, HostOptions};
use crate::mount::{Mount, MountOptions};
use crate::net::{QuicTransport, Renewal, RenewingTransport, Ticket};
use crate::{Shell, timeout};

/// The port a host listens on unless told otherwise: fixed, so a ticket
/// stays valid across restarts.
pub const DEFAULT_PORT: u16 = 47470;
/// How long an unmount or a stop may take before we give up waiting.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// `wormhole host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// The folder to share.
    pub dir: PathBuf,
    /// Address and UDP port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT))]
    pub bind: SocketAddr,
    /// Refuse every change (clients get EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Make clients' changes durable on this disk at most this many
    /// milliseconds after they are made (a group commit: one flush for
    /// all of them). A client's fsync makes them durable at once, and a
    /// close makes them visible to everyone at once; a crash of this
    /// machine loses at most this window of closed but not fsynced work,
    /// never part of a file.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=60_000))]
    pub sync_window: u64,
    /// Answer every change (each close, create, rename…) only once it is
    /// on disk, as if every program fsynced everything: slower for many
    /// small files, and a host crash loses nothing a client was told.
    #[arg(long, conflicts_with = "sync_window")]
    pub sync_every_close: bool,
    /// Keep each file's owner as the client that made it says (its user
    /// and group ids), and let clients chown: for a host running as root
    /// that serves a trusted machine whose users are this machine's (as
    /// NFS with no_root_squash). Without it every client acts as the
    /// user this host runs as.
    #[arg(long)]
    pub preserve_owners: bool,
    /// Let clients make character and block device nodes, and show those
    /// in the folder (with --preserve-owners only). The host never opens
    /// one, and a mount never opens one either (it mounts with nodev):
    /// they are names, for backups and system images. Without it
    /// clients' mknod of a device is refused and device nodes in the
    /// folder are not shown.
    #[arg(long, requires = "preserve_owners")]
    pub allow_device_nodes: bool,
    /// Make a new host key, certificate and secret: every ticket handed
    /// out before stops working.
    #[arg(long)]
    pub new_identity: bool,
    /// Register with this rendezvous (`wormhole rendezvous` on a machine
    /// both sides reach), so that clients behind NATs can punch through
    /// to this host. The ticket then names it.
    #[arg(long, value_name = "ADDR:PORT")]
    pub rendezvous: Option<SocketAddr>,
}

/// `wormhole mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// The ticket the host printed (`wormhole1-…`).
    pub ticket: String,
    /// An empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Keep file contents here across mounts (a disk cache). Without it,
    /// only a memory cache (256 MiB) is kept, and lost at unmount.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Largest size of the disk cache: bytes, or with a suffix K, M, G or
    /// T (powers of 1024: 512M, 20G) [default: 10G].
    #[arg(long, value_name = "SIZE", requires = "cache_dir", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Let every user of this machine use the mount, each checked by the
    /// kernel against the owners and permissions the files show, as on a
    /// local disk. Without it only the user who mounts can use it (with
    /// sudo: only root). Files of the host's user show as the mounting
    /// user's (the one who ran sudo, under sudo). An ordinary user needs
    /// `user_allow_other` in /etc/fuse.conf for it.
    #[arg(long)]
    pub allow_other: bool,
    /// Spare punched paths to keep to a host reached through a
    /// rendezvous: each is held open by a small keepalive (about 8 bytes
    /// a second), and a reconnect takes one at once instead of punching
    /// again. 0 turns them off; at most 4 (each holds one of the host's
    /// 16 punching sessions).
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=4))]
    pub spares: usize,
}

/// Parses a size as people write one: `1073741824`, `512M`, `20G`,
/// `64KiB` (every suffix a power of 1024; an optional `B` or `iB` after
/// it).
fn parse_size(text: &str) -> Result<u64, String> {
    let not_a_size = || format!("{text:?} is not a size (e.g. 512M, 20G or a number of bytes)");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let shift = match suffix.trim_start().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(not_a_size()),
    };
    let number: u64 = number.parse().map_err(|_| not_a_size())?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `wormhole unmount`.
#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// Where a wormhole is mounted.
    pub mountpoint: PathBuf,
}

/// Catches Ctrl-C and SIGTERM from now on (before anything is printed
/// that could prompt one), so they stop us cleanly.
pub(super) fn catch_interrupts() -> Result<async_signal::Signals> {
    use async_signal::{Signal, Signals};
    Signals::new([Signal::Int, Signal::Term]).context("cannot handle Ctrl-C")
}

/// Resolves on the next Ctrl-C or SIGTERM.
pub(super) async fn interrupted(signals: &mut async_signal::Signals) {
    let _ = signals.next().await;
}

/// The addresses to put in the ticket for an endpoint bound at `bound`.
fn ticket_addrs(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let port = bound.port();
    let mut addrs = Vec::new();
    // The address of the interface with the default route: connecting a
    // UDP socket sends nothing, it only picks the route.
    let probe = |target: SocketAddr, any: SocketAddr| {
        let s = std::net::UdpSocket::bind(any).ok()?;
        s.connect(target).ok()?;
        s.local_addr().ok().map(|a| a.ip())
    };
    // Documentation ranges (RFC 5737, RFC 3849): never really reached.
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
    let v6 = SocketAddr::new(
        IpAddr::V6(core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        9,
    );
    if let Some(ip) = probe(v4, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        .filter(|ip| !ip.is_loopback())
    {
        addrs.push(SocketAddr::new(ip, port));
    }
    if bound.is_ipv6()
        && let Some(ip) = probe(
            v6,
            SocketAddr::new(IpAddr::V6(core::net::Ipv6Addr::UNSPECIFIED), 0),
        )
        .filter(|ip| !ip.is_loopback())
    {
        addrs.push(SocketAddr::new(ip, port));
    }
    // Loopback last: it lets the same machine mount, and fails fast (and
    // safely: the certificate is pinned) anywhere else.
    addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    addrs
}

/// Runs `wormhole host`.
pub fn host<S: Shell>(shell: &S, bin: &str, args: &HostArgs, out: &mut dyn Write) -> Result<()> {
    let shown = args.dir.display();
    let meta = match std::fs::metadata(&args.dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("cannot share {shown}: there is no such folder (create it: mkdir -p {shown})")
        }
        other => other.with_context(|| format!("cannot share {shown}"))?,
    };
    if !meta.is_dir() {
        bail!("cannot share {}: not a directory", args.dir.display());
    }
    if args.preserve_owners && !rustix::process::geteuid().is_root() {
        bail!(
            "--preserve-owners needs the host to run as root (only root can give files to other users)"
        );
    }
    let state = HostKeys::load_or_create(&config_dir()?, args.new_identity)?;
    crate::host::fs::raise_fd_limit();
    let socket = shell
        .bind_udp(args.bind)
        .with_context(|| format!("cannot listen on UDP {} (in use? try --bind)", args.bind))?;
    shell.block_on(async {
        let mut options = HostOptions::new(
            args.dir.clone(),
            state.identity.clone(),
            state.secret.clone(),
        );
        options.config.read_only = args.read_only;
        if args.preserve_owners {
            options.config.owners = wormhole_core::proto::Owners::Preserved;
        }
        options.config.allow_device_nodes = args.allow_device_nodes;
        options.config.sync_window = if args.sync_every_close {
            Duration::ZERO
        } else {
            Duration::from_millis(args.sync_window)
        };
        let mut signals = catch_interrupts()?;
        let host = Host::spawn(shell.runtime(), socket, options)?;
        let ticket = Ticket {
            addrs: ticket_addrs(host.local_addr()),
            fingerprint: state.identity.fingerprint(),
            secret: state.secret.clone(),
            rendezvous: args.rendezvous,
        };
        writeln!(
            out,
            "Sharing {}{} on {}.\n\nTicket:\n  {ticket}\n\nOn the other computer, as root:\n  {bin} mount {ticket} /mnt/wormhole --allow-other\n\nCtrl-C stops sharing.",
            args.dir.display(),
            if args.read_only { " (read-only)" } else { "" },
            host.local_addr(),
        )?;
        out.flush()?;
        let events = host.events().clone();
        let (lines_tx, lines) = async_channel::bounded::<String>(64);
        let punching = async {
            if let Some(rendezvous) = args.rendezvous {
                let result = punch_for_clients(shell, &host, rendezvous, &state, lines_tx).await;
                if let Err(e) = result {
                    eprintln!("error: the rendezvous {rendezvous} cannot be used: {e:#}");
                }
            }
            core::future::pending::<Option<wormhole_core::proto::Errno>>().await
        };
        let failed = futures_lite::future::or(
            async {
                interrupted(&mut signals).await;
                None
            },
            futures_lite::future::or(news::tell_host_news(&events, &lines, out), punching),
        )
        .await;
        let rt = shell.runtime();
        let _ = timeout(&*rt, STOP_LIMIT, "the host to stop", host.stop()).await;
        match failed {
            Some(errno) => bail!(
                "cannot read the shared folder {} ({errno}); stopped sharing",
                args.dir.display()
            ),
            None => Ok(()),
        }
    })
}

/// Keeps the host registered with `rendezvous` and serves every client
/// that punches through on its punched socket. Its news goes to `lines`
/// (the host's news writer prints it); warnings go to stderr.
async fn punch_for_clients<S: Shell>(
    shell: &S,
    host: &Host,
    rendezvous: SocketAddr,
    keys: &HostKeys,
    lines: async_channel::Sender<String>,
) -> Result<()> {
    use wormhole_core::rendezvous::peer::HostEvent;
    let party = crate::nat::PunchParty {
        rendezvous,
        fingerprint: keys.identity.fingerprint().0,
        secret: keys.secret.clone(),
        seed: crate::runtime::os_seed()?,
        may_relay: false,
    };
    // A news writer that falls behind loses lines rather than holding up
    // punching.
    let say = |line: String| {
        let _ = lines.try_send(line);
    };
    let on_event = |event: &HostEvent, socket: Option<std::net::UdpSocket>| match event {
        HostEvent::Registered => say(format!(
            "Registered with the rendezvous {rendezvous}: clients behind NATs can punch through."
        )),
        HostEvent::Connected {
            remote,
            kind,
            birthday,
            ..
        } => {
            let served = socket
                .ok_or_else(|| std::io::Error::other("no socket"))
                .and_then(|s| host.serve_socket(s));
            match served {
                Ok(()) => say(format!(
                    "A client punched through from {remote} ({}{}).",
                    kind_words(*kind),
                    if *birthday { ", birthday punching" } else { "" }
                )),
                Err(e) => eprintln!("warning: cannot serve the client at {remote}: {e}"),
            }
        }
        HostEvent::Failed { why, .. } => say(format!("A client could not punch through: {why:?}.")),
        HostEvent::RendezvousSilent => eprintln!(
            "warning: the rendezvous {rendezvous} does not answer over UDP; still trying (clients behind NATs cannot reach this host meanwhile)"
        ),
        HostEvent::NeedSocket { .. } | HostEvent::NeedSprayers { .. } => {}
    };
    crate::nat::host_punch(
        shell.runtime(),
        party,
        |a| shell.bind_udp(a),
        on_event,
        core::future::pending(),
    )
    .await?;
    Ok(())
}

/// A path to the host found through the rendezvous.
pub(super) struct PunchedPath {
    /// The socket (and relay, if relayed) to carry the connection.
    pub(super) punched: crate::nat::Punched,
    /// The host's address on the path.
    pub(super) remote: SocketAddr,
    /// Found by birthday punching.
    pub(super) birthday: bool,
}

/// Punches a path to the host through `rendezvous` (relayed through its
/// TURN server if no direct path exists and `may_relay`).
async fn punch_to_host<S: Shell>(
    shell: &S,
    ticket: &Ticket,
    rendezvous: SocketAddr,
    may_relay: bool,
) -> Result<PunchedPath> {
    use wormhole_core::nat::FailReason;
    use wormhole_core::rendezvous::peer::ClientEvent;
    use wormhole_core::rendezvous::wire::Refusal;
    let party = crate::nat::PunchParty {
        rendezvous,
        fingerprint: ticket.fingerprint.0,
        secret: ticket.secret.clone(),
        seed: crate::runtime::os_seed()?,
        may_relay,
    };
    // Punching ends at a failure, or once connected and settled (the core
    // says when the host has had time to finish its side); then the
    // socket goes to QUIC.
    let (end_tx, end_rx) = async_channel::bounded::<()>(1);
    let mut outcome = None;
    let punched = crate::nat::client_punch(
        shell.runtime(),
        party,
        |a| shell.bind_udp(a),
        |event| {
            if outcome.is_none() && !matches!(event, ClientEvent::NeedSprayers(_)) {
                outcome = Some(event.clone());
            }
            if outcome.is_some() {
                let _ = end_tx.try_send(());
            }
        },
        async move {
            let _ = end_rx.recv().await;
        },
    )
    .await
    .with_context(|| format!("cannot use the rendezvous {rendezvous}"))?;
    match outcome {
        Some(ClientEvent::Connected {
            remote, birthday, ..
        }) => Ok(PunchedPath {
            punched,
            remote,
            birthday,
        }),
        Some(ClientEvent::RelayFailed { direct, relay }) => bail!(
            "no direct path to the host ({}), and relaying through the rendezvous's TURN server failed: {relay}",
            direct_failure(direct)
        ),
        Some(ClientEvent::Refused(Refusal::NotRegistered)) => bail!(
            "the host is not registered with the rendezvous {rendezvous} (is `wormhole host --rendezvous {rendezvous}` running?)"
        ),
        Some(ClientEvent::Refused(Refusal::BadToken)) => {
            bail!("the rendezvous {rendezvous} says this ticket is not the host's current one")
        }
        Some(ClientEvent::Refused(Refusal::Busy)) => {
            bail!("the rendezvous {rendezvous} is full; try again later")
        }
        Some(ClientEvent::Refused(Refusal::NoRelay)) => {
            bail!("the rendezvous {rendezvous} offers no relay (it runs without --turn)")
        }
        Some(ClientEvent::RendezvousSilent) => {
            bail!("the rendezvous {rendezvous} does not answer over UDP")
        }
        Some(ClientEvent::Failed(FailReason::NoRemoteCandidates)) => {
            bail!("the host did not answer through the rendezvous {rendezvous}")
        }
        Some(ClientEvent::Failed(
            why @ (FailReason::NoPathAnswered | FailReason::BothSymmetric),
        )) => {
            bail!(
                "hole punching failed: {}; the rendezvous {rendezvous} offers no relay (start it with --turn)",
                direct_failure(why)
            )
        }
        Some(ClientEvent::Failed(FailReason::NotTaken)) => bail!(
            "hole punching found a path, but the host did not take it over through the rendezvous {rendezvous}"
        ),
        Some(ClientEvent::NeedSprayers(_) | ClientEvent::SpareReady { .. }) | None => {
            bail!("punching ended without an outcome")
        }
    }
}

/// Why no direct path exists, as a person reads it.
fn direct_failure(why: wormhole_core::nat::FailReason) -> &'static str {
    use wormhole_core::nat::FailReason;
    match why {
        FailReason::BothSymmetric => {
            "both NATs map ports per destination (symmetric), so no direct path exists"
        }
        FailReason::NoPathAnswered => "no path answered (a firewall may drop UDP)",
        FailReason::NoRemoteCandidates => "the host did not answer",
        FailReason::NotTaken => "the host did not take the punched path over",
    }
}

/// The first of two fallible futures to succeed, or both errors.
async fn first_ok<T>(
    a: impl core::future::Future<Output = Result<T>>,
    b: impl core::future::Future<Output = Result<T>>,
) -> core::result::Result<T, (anyhow::Error, anyhow::Error)> {
    let (mut a, mut b) = (core::pin::pin!(a), core::pin::pin!(b));
    let (mut a_err, mut b_err) = (None, None);
    core::future::poll_fn(|cx| {
        if a_err.is_none()
            && let core::task::Poll::Ready(r) = a.as_mut().poll(cx)
        {
            match r {
                Ok(v) => return core::task::Poll::Ready(Ok(v)),
                Err(e) => a_err = Some(e),
            }
        }
        if b_err.is_none()
            && let core::task::Poll::Ready(r) = b.as_mut().poll(cx)
        {
            match r {
                Ok(v) => return core::task::Poll::Ready(Ok(v)),
                Err(e) => b_err = Some(e),
            }
        }
        match (a_err.take(), b_err.take()) {
            (Some(a), Some(b)) => core::task::Poll::Ready(Err((a, b))),
            (a, b) => {
                a_err = a;
                b_err = b;
                core::task::Poll::Pending
            }
        }
    })
    .await
}

/// How a peer's address was learned, for people.
pub(super) fn kind_words(kind: wormhole_core::nat::CandidateKind) -> &'static str {
    use wormhole_core::nat::CandidateKind as K;
    match kind {
        K::Host => "its own address",
        K::ServerReflexive => "its public address",
        K::PeerReflexive => "an address found while punching",
        K::Relay => "a relay",
    }
}

/// Refuses a mountpoint a mount would make a mess of, with what to do:
/// a mount over files hides them until the unmount, a mount whose
/// process died (`ENOTCONN` on every access) has to go first, and a
/// second mount on one directory would stack on the first (one unmount
/// would then remove both). Returns the claim on the directory, held for
/// the mount's lifetime: a mount started at the same moment is refused
/// by the claim, one started later by `/proc/mounts`, which is read after
/// claiming for that reason.
fn check_mountpoint(at: &Path) -> Result<DirClaim> {
    let shown = at.display();
    let already = || {
        anyhow!(
            "{shown} is already a wormhole mount (another `wormhole mount` is using it; \
             `wormhole unmount {shown}` ends it)"
        )
    };
    let dead =
        |e: &std::io::Error| e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error());
    let meta = match std::fs::metadata(at) {
        Err(e) if dead(&e) => bail!(
            "mountpoint {shown}: an earlier mount there lost its process ({e}); \
             unmount it first (umount -l {shown})"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {shown} does not exist (create an empty directory: mkdir -p {shown})")
        }
        other => other.with_context(|| format!("mountpoint {shown}"))?,
    };
    if !meta.is_dir() {
        bail!("mountpoint {shown}: not a directory");
    }
    let claim = match DirClaim::acquire(at) {
        Ok(claim) => claim,
        Err(ClaimError::Busy) => return Err(already()),
        Err(ClaimError::Io(e)) => return Err(e).with_context(|| format!("mountpoint {shown}")),
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if is_wormhole_mount(&mounts, at) {
        return Err(already());
    }
    let mut entries = std::fs::read_dir(at).with_context(|| format!("mountpoint {shown}"))?;
    if entries.next().is_some() {
        bail!(
            "mountpoint {shown} is not empty: its files would be hidden while mounted \
             (mount on an empty directory)"
        );
    }
    Ok(claim)
}

/// A working path to the host.
struct FoundPath {
    transport: QuicTransport,
    /// How it was reached, for people.
    how: String,
    /// Direct, or through a TURN relay (and until when).
    kind: PathKind,
}

/// How long a relay's renewal may take: a direct attempt first (its checks
/// time out after a few seconds when no direct path exists), then a new
/// allocation, then the move's drain. With short-lived credentials a
/// quarter of their life is less than that (a kernel test with 20 s
/// credentials renewed at 15 s finished at 20.05 s, after they expired).
const RENEW_MARGIN: Duration = Duration::from_secs(10);

/// What kind of path a mount is on, for [`improve_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Direct,
    /// Through a TURN relay: a direct path is looked for meanwhile, and
    /// a new allocation made at `renew_at` (three quarters into its
    /// credentials' life, and at least [`RENEW_MARGIN`] before its end),
    /// before the server refuses their refreshes.
    Relayed {
        renew_at: Option<std::time::SystemTime>,
    },
}

impl PathKind {
    /// A relayed path whose credentials expire at `expires`.
    fn relayed(expires: Option<std::time::SystemTime>) -> Self {
        let now = std::time::SystemTime::now();
        let renew_at = expires.map(|at| {
            let left = at.duration_since(now).unwrap_or_default();
            now + (left * 3 / 4).min(left.saturating_sub(RENEW_MARGIN))
        });
        PathKind::Relayed { renew_at }
    }
}

/// Finds a working path to the ticket's host: its own addresses and the
/// rendezvous (if the ticket names one) are tried at once, and the first
/// path whose probe succeeds (the pinned certificate, the secret's proof)
/// is returned, with how it was reached. Used to mount, and again when a
/// mount's path has died.
async fn find_path<S: Shell>(shell: &S, ticket: &Ticket) -> Result<FoundPath> {
    let rt = shell.runtime();
    let direct = async {
        let any: SocketAddr = if ticket.addrs.iter().all(SocketAddr::is_ipv4) {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = shell.bind_udp(any).context("cannot open a UDP socket")?;
        let transport =
            QuicTransport::new(rt.clone(), socket, ticket.addrs.clone(), ticket.fingerprint)?;
        transport.probe(&ticket.secret).await?;
        let local = ticket
            .addrs
            .iter()
            .all(|a| wormhole_core::nat::is_local_network(a.ip()));
        let how = if local {
            "directly on the local network"
        } else {
            "directly"
        };
        anyhow::Ok(FoundPath {
            transport,
            how: how.to_owned(),
            kind: PathKind::Direct,
        })
    };
    let Some(rendezvous) = ticket.rendezvous else {
        return direct.await;
    };
    let punched = async {
        let path = punch_to_host(shell, ticket, rendezvous, true).await?;
        let found = open_punched(shell, ticket, path)?;
        found.transport.probe(&ticket.secret).await?;
        anyhow::Ok(found)
    };
    first_ok(direct, punched).await.map_err(|(d, p)| {
        anyhow!("cannot reach the host: directly: {d:#}; through the rendezvous: {p:#}")
    })
}

/// A spare path another mount of the ticket's host on this machine hands
/// over (`desk`), checked with a probe: `None` if there is none.
async fn from_another_mount<S: Shell>(shell: &S, ticket: &Ticket) -> Option<FoundPath> {
    ticket.rendezvous?;
    let fingerprint = ticket.fingerprint.0;
    let handed = crate::runtime::on_thread(move || desk::ask(&fingerprint))
        .await
        .flatten()?;
    let remote = handed.remote;
    let path = PunchedPath {
        punched: crate::nat::Punched {
            socket: handed.socket,
            relay: None,
        },
        remote,
        birthday: handed.birthday,
    };
    let mut found = open_punched(shell, ticket, path).ok()?;
    if let Err(e) = found.transport.probe(&ticket.secret).await {
        tracing::debug!(error = %e, "the spare from another mount does not work");
        return None;
    }
    found.how = format!("directly, via a spare path another mount of this host kept ({remote})");
    Some(found)
}

/// The QUIC transport over a punched (or relayed) path.
fn open_punched<S: Shell>(shell: &S, ticket: &Ticket, path: PunchedPath) -> Result<FoundPath> {
    let rt = shell.runtime();
    let remote = path.remote;
    Ok(match path.punched.relay {
        Some(relay) => {
            let server = relay.server();
            let kind = PathKind::relayed(relay.expires());
            let socket = relay.socket(rt.clone(), path.punched.socket, remote)?;
            FoundPath {
                transport: QuicTransport::over(rt, socket, vec![remote], ticket.fingerprint)?,
                how: format!("relayed through the TURN server {server}"),
                kind,
            }
        }
        None => {
            let how = if path.birthday {
                "birthday punching"
            } else {
                "hole punching"
            };
            FoundPath {
                transport: QuicTransport::new(
                    rt,
                    path.punched.socket,
                    vec![remote],
                    ticket.fingerprint,
                )?,
                how: format!("directly, via {how} to {remote}"),
                kind: PathKind::Direct,
            }
        }
    })
}

/// How soon a relayed mount first looks for a direct path, and how the
/// wait grows after each miss (doubling, up to `UPGRADE_MAX`): a NAT that
/// changed, or a router rebooted into another mode, is found within
/// seconds, and a pair of NATs that never allow a direct path costs the
/// rendezvous one punch every few minutes.
const UPGRADE_FIRST: Duration = Duration::from_secs(5);
const UPGRADE_MAX: Duration = Duration::from_secs(300);

/// How soon a relay whose renewal failed is renewed again.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Keeps a mount's path (`path`, what kind it is now) as good as it can
/// be, through `rendezvous`. While relayed it looks for a direct path (at
/// once when this machine's address changes, else at a slow pace), and
/// makes a new allocation before the relay's credentials expire; each
/// better path goes to `upgrade` (the mount moves there without a request
/// failing) and is told on `lines`.
async fn improve_path<S: Shell>(
    shell: &S,
    ticket: &Ticket,
    rendezvous: SocketAddr,
    path: &std::sync::Mutex<PathKind>,
    upgrade: crate::net::PathUpgrade,
    lines: async_channel::Sender<String>,
) {
    let rt = shell.runtime();
    let kind = || {
        *path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let set = |to: PathKind| {
        *path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to
    };
    let mut wait = UPGRADE_FIRST;
    let mut next = rt.now() + wait;
    let mut address = crate::nat::route_to(rendezvous).ok();
    loop {
        crate::runtime::sleep(&*rt, UPGRADE_FIRST).await;
        let PathKind::Relayed { renew_at } = kind() else {
            wait = UPGRADE_FIRST;
            next = rt.now() + wait;
            continue;
        };
        if renew_at.is_some_and(|at| std::time::SystemTime::now() >= at) {
            // Any path will do: direct if one exists now, else a new
            // allocation with fresh credentials.
            match find_path(shell, ticket).await {
                Ok(found) => {
                    set(found.kind);
                    upgrade.upgrade(found.transport);
                    let _ = lines.try_send(match found.kind {
                        PathKind::Direct => format!(
                            "Now direct ({}); the relay is no longer used.",
                            found.how.trim_start_matches("directly, ")
                        ),
                        PathKind::Relayed { .. } => {
                            "Renewed the relay (a new allocation, fresh credentials).".to_owned()
                        }
                    });
                }
                Err(e) => {
                    let _ = lines.try_send(format!(
                        "Cannot renew the relay before its credentials expire ({e:#}); trying again."
                    ));
                    set(PathKind::Relayed {
                        renew_at: Some(std::time::SystemTime::now() + RENEW_RETRY),
                    });
                }
            }
            continue;
        }
        let now_address = crate::nat::route_to(rendezvous).ok();
        let moved = now_address != address;
        address = now_address;
        if !moved && rt.now() < next {
            continue;
        }
        let found = async {
            let path = punch_to_host(shell, ticket, rendezvous, false).await?;
            let found = open_punched(shell, ticket, path)?;
            found.transport.probe(&ticket.secret).await?;
            anyhow::Ok(found)
        }
        .await;
        match found {
            // Still relayed (a renewal found no other path meanwhile).
            Ok(found) if matches!(kind(), PathKind::Relayed { .. }) => {
                set(PathKind::Direct);
                upgrade.upgrade(found.transport);
                let _ = lines.try_send(format!(
                    "Now direct ({}); the relay is no longer used.",
                    found.how.trim_start_matches("directly, ")
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "no direct path yet");
                wait = (wait * 2).min(UPGRADE_MAX);
                next = rt.now() + wait;
            }
        }
    }
}

/// Runs `wormhole mount`.
pub fn mount<S: Shell>(shell: &S, bin: &str, args: &MountArgs, out: &mut dyn Write) -> Result<()> {
    let ticket = Ticket::parse(&args.ticket)?;
    let _claim = check_mountpoint(&args.mountpoint)?;
    shell.block_on(async {
        let rt = shell.runtime();
        let started = rt.now();
        // Fail now, with the reason, rather than mount a drive that only
        // ever answers errors.
        let FoundPath {
            transport,
            how,
            kind,
        } = match from_another_mount(shell, &ticket).await {
            Some(found) => found,
            None => find_path(shell, &ticket).await?,
        };
        let path = std::sync::Mutex::new(kind);
        let kind_now = || {
            *path
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        // News from the path's keepers (upgrade, spares), for the writer.
        let (lines_tx, lines) = async_channel::bounded::<String>(8);
        let spares = Spares::new(args.spares, lines_tx.clone());
        // When the path dies for good, the transport asks for a new one.
        let (renew_tx, renew_rx) = async_channel::bounded::<Renewal>(1);
        let transport = RenewingTransport::new(transport, renew_tx).renew_first_when(spares.flag());
        let spare_news = lines_tx.clone();
        let renew = async {
            while let Ok(renewal) = renew_rx.recv().await {
                if !renewal.wanted() {
                    // The search for an earlier request found a path.
                    renewal.found_earlier();
                    continue;
                }
                let spare = match spares.take(&*rt).await {
                    Some(taken) => taken.and_then(|p| open_punched(shell, &ticket, p)),
                    None => Err(anyhow!("no spare path")),
                };
                let found = match spare {
                    Ok(found) => {
                        let _ = spare_news.try_send(format!("Took a spare path ({}).", found.how));
                        Ok(found)
                    }
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "finding a path anew");
                        find_path(shell, &ticket).await
                    }
                };
                let fresh = found
                    .map(|found| {
                        *path
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = found.kind;
                        found.transport
                    })
                    .map_err(|e| std::io::Error::other(format!("{e:#}")));
                renewal.found(fresh);
            }
        };
        // Another mount of this host on this machine may ask for a spare.
        let (desk_tx, desk_rx) = async_channel::bounded(1);
        let _desk = (args.spares > 0 && ticket.rendezvous.is_some())
            .then(|| desk::Desk::open(&ticket.fingerprint.0))
            .flatten()
            .map(|desk| desk.serve(desk_tx));
        let desk_news = spare_news.clone();
        let desk_served = async {
            while let Ok(answer) = desk_rx.recv().await {
                let spare = spares.take(&*rt).await.and_then(Result::ok);
                if spare.is_some() {
                    let _ = desk_news
                        .try_send("Handed a spare path to another mount of this host.".to_owned());
                }
                let _ = answer.send(spare).await;
            }
        };
        let upgrades = transport.upgrades();
        let upgrade = async {
            match ticket.rendezvous {
                Some(rendezvous) => {
                    let keepers = (0..args.spares).map(|_| {
                        keep_spare(shell, &ticket, rendezvous, &spares, || {
                            kind_now() == PathKind::Direct
                        })
                    });
                    futures_lite::future::zip(
                        improve_path(shell, &ticket, rendezvous, &path, upgrades, lines_tx),
                        futures_lite::future::zip(crate::runtime::join_all(keepers), desk_served),
                    )
                    .await;
                }
                None => drop(lines_tx),
            }
        };
        let ms = rt.now().saturating_duration_since(started).as_millis();
        writeln!(out, "Connected {how}, {ms} ms to the host's first answer.")?;
        let mut options = MountOptions::new(ticket.secret.clone())?;
        options.cache_dir = args.cache_dir.clone();
        if let Some(size) = args.cache_size {
            options.client.cache.l2_max_bytes = size;
        }
        options.read_only = args.read_only;
        options.allow_other = args.allow_other;
        let mut signals = catch_interrupts()?;
        let mount = Mount::new(rt.clone(), transport, &args.mountpoint, options)?;
        writeln!(
            out,
            "Mounted at {}. Ctrl-C or `{bin} unmount {}` unmounts.",
            args.mountpoint.display(),
            args.mountpoint.display()
        )?;
        if args.allow_other {
            writeln!(
                out,
                "Every user of this machine may use it, as the files' owners and permissions allow."
            )?;
        } else if rustix::process::getuid().is_root() && std::env::var_os("SUDO_UID").is_some() {
            writeln!(
                out,
                "Only root can use it; mount with --allow-other to let other users (you) in."
            )?;
        }
        out.flush()?;
        let stopped = mount.stopped();
        let events = mount.events().clone();
        let by_signal = futures_lite::future::or(
            async {
                interrupted(&mut signals).await;
                true
            },
            futures_lite::future::or(
                async {
                    stopped.await;
                    false
                },
                async {
                    futures_lite::future::zip(
                        news::tell_connection_news(&events, &lines, out),
                        futures_lite::future::zip(renew, upgrade),
                    )
                    .await;
                    // No more news: the driver is gone; wait for the stop.
                    core::future::pending().await
                },
            ),
        )
        .await;
        if by_signal {
            let stopped = mount.stopped();
            mount.unmount().map_err(|e| {
                anyhow!(
                    "cannot unmount {}: {e} (busy? close the files open there)",
                    args.mountpoint.display()
                )
            })?;
            let _ = timeout(&*rt, STOP_LIMIT, "the mount to stop", stopped).await;
        } else {
            // Unmounted from outside (`unmount`): the kernel side is gone
            // already, so unmounting again only fails; this joins fuser's
            // thread without the drop's fallback `umount -l`.
            let _ = mount.unmount();
        }
        Ok(())
    })
}

/// Runs `wormhole unmount`.
pub fn unmount(args: &UnmountArgs) -> Result<()> {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| is_wormhole_mount(&m, &args.mountpoint))
        .unwrap_or(true);
    if !mounted {
        bail!("{} is not a wormhole mount", args.mountpoint.display());
    }
    // umount(8) as root; fusermount for a user's own FUSE mount.
    let tried = [
        ("umount", vec![]),
        ("fusermount3", vec!["-u"]),
        ("fusermount", vec!["-u"]),
    ];
    let mut last = String::from("no unmount tool found");
    for (tool, flags) in tried {
        match std::process::Command::new(tool)
            .args(flags)
            .arg(&args.mountpoint)
            .output()
        {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(_) => {}
        }
    }
    bail!("cannot unmount {}: {last}", args.mountpoint.display())
}

fn is_wormhole_mount(mounts: &str, mountpoint: &Path) -> bool {
    let want = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_owned());
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (dev, at) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        // /proc/mounts escapes spaces as \040.
        dev == "wormhole" && Path::new(&at.replace("\\040", " ")) == want
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mountpoint_in_use_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = check_mountpoint(dir.path()).expect("a free mountpoint");
        let e = check_mountpoint(dir.path()).expect_err("claimed by the first mount");
        assert!(e.to_string().contains("already a wormhole mount"), "{e}");
        drop(first);
        check_mountpoint(dir.path()).expect("free again");
    }

    #[test]
    fn ticket_addresses() {
        let fixed: SocketAddr = "10.1.2.3:5000".parse().expect("addr");
        assert_eq!(ticket_addrs(fixed), vec![fixed]);
        let any: SocketAddr = "0.0.0.0:5000".parse().expect("addr");
        let addrs = ticket_addrs(any);
        assert_eq!(addrs.last(), Some(&"127.0.0.1:5000".parse().expect("addr")));
        assert!(addrs.iter().all(|a| a.port() == 5000));
    }

    #[test]
    fn sizes_are_read_as_people_write_them() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("20 GiB"), Ok(20 << 30));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "G", "-1", "1.5G", "12X", "1GG", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        // The largest number that fits, and one unit past it.
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
        assert!(
            parse_size("16777216T")
                .expect_err("2^64 bytes")
                .contains("too large")
        );
    }

    #[test]
    fn mountpoints_that_would_hide_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("wormhole-mnt-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        check_mountpoint(&dir).expect("an empty directory is a mountpoint");
        std::fs::write(dir.join("x"), b"x").expect("a file in it");
        let e = check_mountpoint(&dir).expect_err("a non-empty one is not");
        assert!(e.to_string().contains("is not empty"), "{e}");
        let e = check_mountpoint(&dir.join("x")).expect_err("nor is a file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        let missing = dir.join("missing");
        let e = check_mountpoint(&missing).expect_err("nor a missing path");
        assert!(
            e.to_string()
                .contains(&format!("{} does not exist", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// `mount --help` states the cache defaults; they are the core's.
    #[test]
    fn the_help_states_the_cache_defaults() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            mount: MountArgs,
        }
        let help = Cli::command().render_long_help().to_string();
        let cache = wormhole_core::cache::CacheConfig::default();
        assert_eq!(cache.l1_max_bytes, 256 << 20);
        assert!(help.contains("memory cache (256 MiB)"), "{help}");
        assert_eq!(parse_size("10G"), Ok(cache.l2_max_bytes));
        assert!(help.contains("[default: 10G]"), "{help}");
    }

    #[test]
    fn recognises_wormhole_mounts() {
        let m = "wormhole /mnt/w fuse.wormhole rw 0 0\nsshfs /mnt/s fuse.sshfs rw 0 0\n";
        assert!(is_wormhole_mount(m, Path::new("/mnt/w")));
        assert!(!is_wormhole_mount(m, Path::new("/mnt/s")));
    }
}
