//! Helpers shared by the end-to-end tests (`fuse_e2e`, `quic_e2e`).

use std::time::Duration;

/// Polls `check` until it holds, for at most `limit`. Only for what no
/// event announces to the test's thread (the kernel's view of a file, a
/// port becoming free); everything else is awaited.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes that differ per file and per position (xorshift), so a misplaced
/// or stale chunk never matches by accident.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The step a bounded test body is at, for the message when it hangs.
#[derive(Clone, Debug)]
pub struct Steps(std::sync::Arc<std::sync::Mutex<&'static str>>);

impl Steps {
    /// Records that the body has reached `step`.
    pub fn at(&self, step: &'static str) {
        if let Ok(mut s) = self.0.lock() {
            *s = step;
        }
    }

    /// The last step recorded.
    pub fn now(&self) -> &'static str {
        self.0.lock().map(|s| *s).unwrap_or("?")
    }
}

/// Runs `body` on a worker thread and fails, naming the step, if it takes
/// longer than `limit`: a hung file-system call must not hang CI. A panic
/// in the body is re-raised as it was.
pub fn run_bounded(dir: &std::path::Path, limit: Duration, body: fn(&std::path::Path, &Steps)) {
    let steps = Steps(std::sync::Arc::new(std::sync::Mutex::new("starting")));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = {
        let dir = dir.to_owned();
        let steps = steps.clone();
        std::thread::spawn(move || {
            body(&dir, &steps);
            let _ = done_tx.send(());
        })
    };
    match done_rx.recv_timeout(limit) {
        Ok(()) => worker.join().expect("worker"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("step hung for {limit:?}: {}", steps.now());
        }
    }
}

/// The two shells every end-to-end body runs on.
pub use wormhole_smol::SmolShell;
pub use wormhole_tokio::TokioShell;

/// Writes an end-to-end body once and runs it on both shells:
/// `both_shells! { name: body; }` makes the tests `name::on_tokio` and
/// `name::on_smol`, each calling `body(&shell)` with a fresh shell of its
/// runtime. Doc comments before `name` document the pair.
#[macro_export]
macro_rules! both_shells {
    ($($(#[$meta:meta])* $name:ident: $body:expr;)+) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn on_tokio() {
                let shell = $crate::e2e::TokioShell::new().expect("start a tokio runtime");
                ($body)(&shell);
            }

            #[test]
            fn on_smol() {
                let shell = $crate::e2e::SmolShell::new().expect("start smol");
                ($body)(&shell);
            }
        }
    )+};
}
