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
    shell.block_on(async {
        let mut signals = catch_interrupts()?;
        let server = RendezvousServer::bind(&*shell.runtime(), start, |a| shell.bind_udp(a))?;
        let locals: Vec<String> = server.locals().iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "Rendezvous listening on UDP {} (STUN and NAT classification).\nCtrl-C stops it.",
            locals.join(", ")
        )?;
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
