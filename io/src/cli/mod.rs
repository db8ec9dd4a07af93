//! The command line, defined once: both binaries (`wormhole` on tokio,
//! `wormhole-smol` on smol) call [`main`] with their shell.

pub mod commands;
pub mod demo;
mod desk;
pub mod nat;
mod news;
mod spares;

use crate::Shell;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::{HostArgs, MountArgs, UnmountArgs};
use demo::PairDemoArgs;
use nat::{NatCheckArgs, PunchArgs, RendezvousArgs};
use std::process::ExitCode;

/// Wormhole: share a folder from one computer and mount it on another,
/// peer to peer, across home NATs.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see more."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Share a folder: print a ticket, serve until Ctrl-C.
    ///
    /// Serves DIR over QUIC (UDP port 47470 unless --bind says otherwise)
    /// and prints one ticket holding this host's addresses, its
    /// certificate's fingerprint and a secret, and the exact command that
    /// mounts it on another computer. The host's key, certificate and
    /// secret are kept in $XDG_CONFIG_HOME/wormhole (or
    /// ~/.config/wormhole), so the ticket stays the same across restarts;
    /// --new-identity replaces them and invalidates old tickets. Changes
    /// made to DIR by local programs reach mounted clients.
    Host(HostArgs),
    /// Mount a shared folder from its ticket, until Ctrl-C or unmount.
    ///
    /// Connects to the host named in TICKET (its certificate pinned,
    /// the ticket's secret proved without sending it), checks the ticket,
    /// then mounts the folder at MOUNTPOINT through FUSE (as root, or with
    /// fusermount3 installed). Stays in the foreground; Ctrl-C or
    /// `wormhole unmount MOUNTPOINT` unmounts. A mount that loses its host
    /// reconnects by itself.
    Mount(MountArgs),
    /// Unmount a mounted wormhole (the `mount` command then exits).
    Unmount(UnmountArgs),
    /// Help peers behind NATs find each other.
    ///
    /// Run it on a machine both peers can reach over UDP (a small server,
    /// or a home server with its ports forwarded). On --bind and a second
    /// port it answers STUN Binding requests (RFC 8489, with the RFC 5780
    /// extensions that let `nat-check` classify a NAT) and carries
    /// signalling: hosts register, and clients that hold a host's ticket
    /// are put through to it to punch a direct path. It never learns
    /// ticket secrets, keeps bounded state with timeouts, and stores
    /// nothing on disk.
    Rendezvous(RendezvousArgs),
    /// Show how this machine's NAT behaves, as hole punching sees it.
    ///
    /// Sends STUN requests to a rendezvous from two fresh UDP sockets and
    /// reports the NAT's mapping and filtering behaviour (RFC 4787), the
    /// public address, whether hairpinning works, and what that means for
    /// punching a direct path to a peer.
    NatCheck(NatCheckArgs),
    /// Punch a hole through a rendezvous and report how (a test and
    /// diagnosis tool).
    ///
    /// `--role host` registers and punches toward every client put
    /// through; `--role mount` asks to be put through and punches. Both
    /// print one line per outcome and run until stdin closes.
    #[command(hide = true)]
    DebugPunch(PunchArgs),
    /// Show a NAT pair's whole life over real sockets, on loopback.
    ///
    /// Starts two nodes, A and B, in this process, joined by a TCP
    /// signalling connection. They share one UDP pair: A pings, B answers,
    /// every frame authenticated under the pair key. A then takes the pair
    /// (lock / take handover over the signalling connection); both sides
    /// hand the pair's own UDP socket to QUIC, and a QUIC connection between
    /// the two pair sockets, pinned to each node's certificate, carries
    /// data both ways, checked by hash. A releases the pair; keepalive
    /// resumes on the very same sockets. Exits 0 if every step worked.
    PairDemo(PairDemoArgs),
}

/// Parses the command line, sets up logging and runs the command on the
/// shell `make_shell` builds. `bin` is the binary's name, for help texts.
pub fn main<S: Shell>(
    bin: &'static str,
    make_shell: impl FnOnce() -> std::io::Result<S>,
) -> ExitCode {
    let matches = Cli::command().name(bin).bin_name(bin).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing();
    let shell = match make_shell() {
        Ok(shell) => shell,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Command::PairDemo(args) => demo::run(&shell, args, &mut std::io::stdout()),
        Command::Host(args) => commands::host(&shell, bin, args, &mut std::io::stdout()),
        Command::Mount(args) => commands::mount(&shell, bin, args, &mut std::io::stdout()),
        Command::Unmount(args) => commands::unmount(args),
        Command::Rendezvous(args) => nat::rendezvous(&shell, args, &mut std::io::stdout()),
        Command::NatCheck(args) => nat::nat_check_command(&shell, args, &mut std::io::stdout()),
        Command::DebugPunch(args) => nat::debug_punch(&shell, args, &mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the chain of causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings by default).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,stun_types=error"));
    // Tests may have installed one already; that one stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
