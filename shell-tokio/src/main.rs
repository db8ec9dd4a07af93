//! `wormhole`: the Wormhole command line on tokio.

use std::process::ExitCode;

fn main() -> ExitCode {
    wormhole_io::cli::main("wormhole", wormhole_tokio::TokioShell::new)
}
