//! The `wormhole-smol` binary, run as a person would (the bodies are
//! shared with the tokio binary's test).

#[path = "../../shell-tokio/tests/common/cli.rs"]
mod cli;

use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_wormhole-smol");

#[test]
fn pair_demo_runs_every_step_and_exits_zero() {
    cli::pair_demo_runs_every_step_and_exits_zero(Path::new(BIN), "smol");
}

#[test]
fn a_failed_step_is_one_error_line_and_a_nonzero_exit() {
    cli::a_failed_step_is_one_error_line_and_a_nonzero_exit(Path::new(BIN));
}

#[test]
fn help_explains_pair_demo() {
    cli::help_explains_pair_demo(Path::new(BIN), "wormhole-smol");
}

#[test]
fn a_rendezvous_relay_needs_its_secret_file() {
    cli::a_rendezvous_relay_needs_its_secret_file(Path::new(BIN));
}
