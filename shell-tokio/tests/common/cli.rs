//! The pair-demo command line, run as a person would: one body for both
//! binaries (`wormhole` on tokio, `wormhole-smol` on smol).

use std::path::Path;
use std::process::Command;

/// `pair-demo` runs all six steps and exits 0, naming its runtime.
pub(crate) fn pair_demo_runs_every_step_and_exits_zero(bin: &Path, runtime: &str) {
    let out = Command::new(bin)
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
    assert!(
        stdout.starts_with(&format!("pair-demo on {runtime}")),
        "{stdout}"
    );
    for step in 1..=6 {
        assert!(
            stdout.contains(&format!("[{step}/6]")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().last(), Some("ok"));
}

/// A failed step is one error line and exit code 1.
pub(crate) fn a_failed_step_is_one_error_line_and_a_nonzero_exit(bin: &Path) {
    let out = Command::new(bin)
        .args(["pair-demo", "--step-timeout", "0"])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: timed out"), "{stderr}");
}

/// `--help` names the binary and explains pair-demo.
pub(crate) fn help_explains_pair_demo(bin: &Path, name: &str) {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run the binary");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("pair-demo"), "{help}");
    assert!(help.contains(name), "{help}");
    let out = Command::new(bin)
        .args(["pair-demo", "--help"])
        .output()
        .expect("run the binary");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("keepalive resumes"), "{help}");
}

/// `rendezvous --turn` without a readable secret file refuses in one
/// line naming the file; without `--turn-secret-file` at all clap says
/// what is missing.
pub(crate) fn a_rendezvous_relay_needs_its_secret_file(bin: &Path) {
    let missing = std::env::temp_dir().join("wormhole-no-such-secret");
    let out = Command::new(bin)
        .args([
            "rendezvous",
            "--bind",
            "127.0.0.1:0",
            "--turn",
            "127.0.0.1:3478",
        ])
        .arg("--turn-secret-file")
        .arg(&missing)
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read the TURN secret")
            && stderr.contains("wormhole-no-such-secret"),
        "{stderr}"
    );
    let out = Command::new(bin)
        .args(["rendezvous", "--turn", "127.0.0.1:3478"])
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--turn-secret-file"), "{stderr}");
}
