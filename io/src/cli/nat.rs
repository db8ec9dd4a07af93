//! `wormhole rendezvous` and `wormhole nat-check`.

use super::commands::{catch_interrupts, interrupted};
use crate::Shell;
use crate::nat::{RendezvousServer, RendezvousStart, nat_check};
use anyhow::{Context, Result};
use clap::Args;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::io::Write;
use wormhole_core::nat::NatBehaviour;

/// The rendezvous's UDP port unless told otherwise (STUN's own port).
pub const DEFAULT_RENDEZVOUS_PORT: u16 = 3478;

/// `wormhole rendezvous`.
#[derive(Debug, Args)]
pub struct RendezvousArgs {
    /// Address and UDP port to listen on; peers are given this address.
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_RENDEZVOUS_PORT))]
    pub bind: SocketAddr,
    /// The second UDP port, which NAT classification compares against
    /// [default: the --bind port + 1].
    #[arg(long, value_name = "PORT")]
    pub other_port: Option<u16>,
    /// A second IP address of this machine, to tell address-dependent NAT
    /// behaviour from endpoint-independent (RFC 5780). Needs a specific
    /// --bind address.
    #[arg(long, value_name = "IP", requires = "bind")]
    pub other_ip: Option<IpAddr>,
    /// A TURN server (coturn with `use-auth-secret`) that peers relay
    /// through when no direct path exists; the rendezvous gives them
    /// short-lived credentials for it.
    #[arg(long, value_name = "ADDR:PORT", requires = "turn_secret_file")]
    pub turn: Option<SocketAddr>,
    /// The file holding the TURN server's `static-auth-secret` (its first
    /// line). Kept in a file, not on the command line, where other local
    /// users could read it.
    #[arg(long, value_name = "FILE", requires = "turn")]
    pub turn_secret_file: Option<std::path::PathBuf>,
    /// How long the credentials given out stay valid, in seconds. A relayed
    /// mount asks again before they run out.
    #[arg(long, value_name = "SECONDS", default_value_t = 12 * 3600)]
    pub turn_ttl: u64,
}

/// `wormhole nat-check`.
#[derive(Debug, Args)]
pub struct NatCheckArgs {
    /// The rendezvous (or any RFC 5780 STUN server) to test against.
    #[arg(long, value_name = "ADDR:PORT")]
    pub rendezvous: SocketAddr,
}

/// Runs `wormhole rendezvous` until Ctrl-C.
pub fn rendezvous<S: Shell>(shell: &S, args: &RendezvousArgs, out: &mut dyn Write) -> Result<()> {
    let start = RendezvousStart {
        primary: args.bind,
        other_port: match args.other_port {
            Some(port) => port,
            None => args
                .bind
                .port()
                .checked_add(1)
                .context("--bind's port is 65535: give --other-port")?,
        },
        other_ip: args.other_ip,
    };
    if start.other_ip.is_some() && args.bind.ip().is_unspecified() {
        anyhow::bail!(
            "--other-ip needs --bind with this machine's first address, not {}",
            args.bind.ip()
        );
    }
    let turn = match (args.turn, &args.turn_secret_file) {
        (Some(server), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the TURN secret from {}", file.display()))?;
            let secret = text.lines().next().unwrap_or("").trim();
            if secret.is_empty() {
                anyhow::bail!("the TURN secret file {} is empty", file.display());
            }
            Some((server, secret.as_bytes().to_vec()))
        }
        _ => None,
    };
    shell.block_on(async {
        let mut signals = catch_interrupts()?;
        let mut server = RendezvousServer::bind(shell.runtime(), start, |a| shell.bind_udp(a))?;
        let ttl = std::time::Duration::from_secs(args.turn_ttl);
        if let Some((turn, secret)) = turn.clone() {
            server = server.with_turn(turn, secret, ttl);
        }
        let locals: Vec<String> = server.locals().iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "Rendezvous listening on UDP {} (STUN and NAT classification).",
            locals.join(", ")
        )?;
        if let Some((turn, _)) = &turn {
            writeln!(
                out,
                "Relaying through the TURN server {turn}: credentials valid {} s.",
                args.turn_ttl
            )?;
        }
        writeln!(out, "Ctrl-C stops it.")?;
        out.flush()?;
        let stats = server.serve(interrupted(&mut signals)).await;
        writeln!(out, "Stopped after answering {} requests.", stats.answered)?;
        Ok(())
    })
}

/// Runs `wormhole nat-check`.
pub fn nat_check_command<S: Shell>(
    shell: &S,
    args: &NatCheckArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let seed = crate::runtime::os_seed()?;
    writeln!(
        out,
        "Testing this machine's NAT against {} (a few seconds)…",
        args.rendezvous
    )?;
    out.flush()?;
    let behaviour = shell.block_on(nat_check(shell.runtime(), args.rendezvous, seed, |a| {
        shell.bind_udp(a)
    }))?;
    write!(out, "{}", describe(&behaviour))?;
    Ok(())
}

/// The report `nat-check` prints.
pub fn describe(b: &NatBehaviour) -> String {
    let caveat = if b.other_ip_tested {
        ""
    } else {
        " (the rendezvous has one IP address, so endpoint-independent and address-dependent behaviour look alike)"
    };
    let punch = if b.nat_type() == wormhole_core::nat::NatType::Symmetric {
        "hard: hole punching needs the birthday approach, and two such sides need a relay"
    } else {
        "easy: hole punching works with any peer that is not also behind an endpoint-dependent NAT"
    };
    format!(
        "NAT type:       {}\nMapping:        {}\nFiltering:      {}{caveat}\nPublic address: {} (local {})\nHairpinning:    {}\nPunching:       {punch}\n",
        b.nat_type(),
        b.mapping,
        b.filtering,
        b.public,
        b.local,
        if b.hairpin { "works" } else { "no" },
    )
}

/// Which side a `debug-punch` plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PunchRole {
    /// The controlled side.
    Host,
    /// The controlling side, which nominates.
    Mount,
}

/// `wormhole debug-punch`: hole punching through a rendezvous, alone.
#[derive(Debug, Args)]
pub struct PunchArgs {
    /// The rendezvous.
    #[arg(long, value_name = "ADDR:PORT")]
    pub rendezvous: SocketAddr,
    /// The side this process plays.
    #[arg(long, value_enum)]
    pub role: PunchRole,
    /// A ticket secret, 64 hex digits, the same on both sides (the host's
    /// id at the rendezvous is derived from it too).
    #[arg(long, value_name = "HEX")]
    pub secret: String,
}

/// Runs `wormhole debug-punch` until stdin closes. The host prints
/// `registered`, then `connected REMOTE KIND MS` or `failed REASON` per
/// client; the mount prints one of `connected REMOTE KIND MS`, `refused
/// WHY`, `silent` or `failed REASON` (and exits 1 unless connected). Both
/// keep answering checks until stdin closes.
pub fn debug_punch<S: Shell>(shell: &S, args: &PunchArgs, out: &mut dyn Write) -> Result<()> {
    use wormhole_core::conn::auth::TicketSecret;
    use wormhole_core::rendezvous::peer::{ClientEvent, HostEvent};
    let secret = TicketSecret(parse_key(&args.secret).context("--secret must be 64 hex digits")?);
    let party = crate::nat::PunchParty {
        rendezvous: args.rendezvous,
        fingerprint: *blake3::hash(&secret.0).as_bytes(),
        secret,
        seed: crate::runtime::os_seed()?,
        may_relay: true,
    };
    let (eof_tx, eof_rx) = async_channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let _eof = eof_tx;
        for line in std::io::stdin().lines() {
            if line.is_err() {
                break;
            }
        }
    });
    let stop = async move {
        let _ = eof_rx.recv().await;
    };
    let runtime = shell.runtime();
    let started = runtime.now();
    let ms = || runtime.now().saturating_duration_since(started).as_millis();
    let mut lines = Vec::new();
    let mut ok = true;
    let mut say = |line: String, out: &mut dyn Write| {
        lines.push(writeln!(out, "{line}").and_then(|()| out.flush()));
    };
    match args.role {
        PunchRole::Host => {
            let on_event = |event: &HostEvent, _: Option<std::net::UdpSocket>| match event {
                HostEvent::Registered => say("registered".into(), out),
                HostEvent::RendezvousSilent => say("silent".into(), out),
                HostEvent::NeedSocket { .. } | HostEvent::NeedSprayers { .. } => {}
                HostEvent::Connected {
                    remote,
                    kind,
                    birthday,
                    ..
                } => {
                    say(
                        format!(
                            "connected {remote} {} {}",
                            kind_name(*kind, *birthday),
                            ms()
                        ),
                        out,
                    );
                }
                HostEvent::Failed { why, .. } => say(format!("failed {why:?}"), out),
            };
            shell.block_on(crate::nat::host_punch(
                runtime.clone(),
                party,
                |a| shell.bind_udp(a),
                on_event,
                stop,
            ))?;
        }
        PunchRole::Mount => {
            let on_event = |event: &ClientEvent| {
                let line = match event {
                    ClientEvent::Connected {
                        remote,
                        kind,
                        birthday,
                        ..
                    } => format!(
                        "connected {remote} {} {}",
                        kind_name(*kind, *birthday),
                        ms()
                    ),
                    ClientEvent::Refused(why) => {
                        ok = false;
                        format!("refused {why:?}")
                    }
                    ClientEvent::RendezvousSilent => {
                        ok = false;
                        "silent".to_owned()
                    }
                    ClientEvent::Failed(why) => {
                        ok = false;
                        format!("failed {why:?}")
                    }
                    ClientEvent::RelayFailed { direct, relay } => {
                        ok = false;
                        format!("failed {direct:?}; relay: {relay}")
                    }
                    // This punch is never a spare.
                    ClientEvent::NeedSprayers(_) | ClientEvent::SpareReady { .. } => return,
                };
                say(line, out);
            };
            shell.block_on(crate::nat::client_punch(
                runtime.clone(),
                party,
                |a| shell.bind_udp(a),
                on_event,
                stop,
            ))?;
        }
    }
    for written in lines {
        written?;
    }
    if !ok {
        anyhow::bail!("no direct path to the host");
    }
    Ok(())
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// The path's short name in `debug-punch` lines: the peer's candidate
/// type, or `birthday` when birthday punching found it.
fn kind_name(kind: wormhole_core::nat::CandidateKind, birthday: bool) -> &'static str {
    use wormhole_core::nat::CandidateKind as K;
    if birthday {
        return "birthday";
    }
    match kind {
        K::Host => "host",
        K::ServerReflexive => "srflx",
        K::PeerReflexive => "prflx",
        K::Relay => "relay",
    }
}
