//! `wormhole-smol`: the Wormhole command line on smol.

use std::process::ExitCode;

fn main() -> ExitCode {
    wormhole_io::cli::main("wormhole-smol", wormhole_smol::SmolShell::on_this_thread)
}
