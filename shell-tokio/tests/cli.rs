//! The `wormhole` binary, run as a person would.

use std::process::Command;

fn wormhole() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wormhole"))
}

#[test]
fn pair_demo_runs_every_step_and_exits_zero() {
    let out = wormhole()
        .args(["pair-demo", "--mib", "1", "--ping-ms", "50"])
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("pair-demo on tokio"), "{stdout}");
    for step in 1..=6 {
        assert!(
            stdout.contains(&format!("[{step}/6]")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().last(), Some("ok"));
}

#[test]
fn a_failed_step_is_one_error_line_and_a_nonzero_exit() {
    let out = wormhole()
        .args(["pair-demo", "--step-timeout", "0"])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: timed out"), "{stderr}");
}

#[test]
fn help_explains_pair_demo() {
    let out = wormhole().arg("--help").output().expect("run the binary");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("pair-demo"), "{help}");
    assert!(help.contains("wormhole"), "{help}");
    let out = wormhole()
        .args(["pair-demo", "--help"])
        .output()
        .expect("run the binary");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("keepalive resumes"), "{help}");
}
