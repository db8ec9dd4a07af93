//! The tree watcher with real file changes in a temporary directory. Every
//! wait is for the event itself, bounded by a timeout; nothing sleeps.

use std::collections::BTreeSet;
use std::time::Duration;
use wormhole_core::host::RelPath;
use wormhole_core::proto::Name;
use wormhole_io::host::watch::{TreeWatcher, WatchConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

fn rel(p: &str) -> RelPath {
    RelPath::from(
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| Name::new(s).expect("name"))
            .collect::<Vec<_>>(),
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wormhole-watch")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// Collects batches until `want` has been seen (or the timeout passes);
/// returns everything seen.
fn wait_for(w: &TreeWatcher, want: &RelPath) -> BTreeSet<RelPath> {
    let mut seen = BTreeSet::new();
    // Bounded: each wait returns at the latest after TIMEOUT, and the
    // first empty one ends the loop.
    loop {
        let batch = w.wait(TIMEOUT);
        if batch.is_empty() {
            return seen;
        }
        seen.extend(batch);
        if seen.contains(want) {
            return seen;
        }
    }
}

#[test]
fn local_changes_become_paths() {
    let dir = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");

    std::fs::write(dir.path().join("hello.txt"), b"hi").expect("write");
    let seen = wait_for(&w, &rel("hello.txt"));
    assert!(seen.contains(&rel("hello.txt")), "{seen:?}");

    // A burst of writes to one file is one pending change.
    for i in 0..200 {
        std::fs::write(dir.path().join("hello.txt"), format!("{i}")).expect("write");
    }
    std::fs::write(dir.path().join("marker"), b"").expect("marker");
    let seen = wait_for(&w, &rel("marker"));
    assert!(seen.contains(&rel("hello.txt")), "{seen:?}");
    assert!(seen.len() <= 2, "coalesced: {seen:?}");

    // Removal and rename are changes too.
    std::fs::rename(dir.path().join("hello.txt"), dir.path().join("moved.txt")).expect("mv");
    let seen = wait_for(&w, &rel("moved.txt"));
    assert!(seen.contains(&rel("hello.txt")), "old name: {seen:?}");
    std::fs::remove_file(dir.path().join("moved.txt")).expect("rm");
    assert!(wait_for(&w, &rel("moved.txt")).contains(&rel("moved.txt")));
}

#[test]
fn new_directories_are_watched_too() {
    let dir = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    assert!(wait_for(&w, &rel("d")).contains(&rel("d")));
    // The watch on `d` is added right after its creation is reported;
    // write until a change inside it is seen (each round waits for an
    // event, so this ends as soon as the watch is in place).
    let want = rel("d/inner.txt");
    let mut found = false;
    for i in 0..20 {
        std::fs::write(dir.path().join("d/inner.txt"), format!("{i}")).expect("write");
        let batch = w.wait(Duration::from_millis(500));
        if batch.contains(&want) {
            found = true;
            break;
        }
    }
    assert!(found, "no event from inside a new directory");
}

#[test]
fn staging_files_are_ignored() {
    let dir = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    std::fs::write(dir.path().join(".wormhole.7"), b"staged").expect("write");
    std::fs::write(dir.path().join(".wormhole.7"), b"staged again").expect("write");
    std::fs::remove_file(dir.path().join(".wormhole.7")).expect("rm");
    std::fs::write(dir.path().join("after"), b"").expect("write");
    let seen = wait_for(&w, &rel("after"));
    assert!(seen.contains(&rel("after")), "{seen:?}");
    assert!(
        seen.iter().all(|p| p
            .names()
            .iter()
            .all(|n| !n.as_bytes().starts_with(b".wormhole."))),
        "{seen:?}"
    );
}

#[test]
fn too_many_changes_invalidate_the_root() {
    let dir = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig { max_pending: 4 }).expect("watch");
    // Nobody takes changes while 50 files are written, so more distinct
    // paths than the bound are pending at once and collapse into the root.
    // (A round in which the kernel delivered so slowly that every batch was
    // taken below the bound proves nothing: try again, a few times.)
    for round in 0..5 {
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("r{round}f{i}")), b"x").expect("write");
        }
        let last = rel(&format!("r{round}f49"));
        loop {
            let batch = w.wait(TIMEOUT);
            assert!(!batch.is_empty(), "no change reported within {TIMEOUT:?}");
            assert!(batch.len() <= 4, "bounded: {batch:?}");
            if batch.contains(&RelPath::root()) {
                assert_eq!(batch, vec![RelPath::root()]);
                return;
            }
            if batch.contains(&last) {
                break;
            }
        }
    }
    panic!("50 changes at once never overflowed a bound of 4");
}

#[test]
fn changed_is_a_future_for_any_executor() {
    let dir = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    std::fs::write(dir.path().join("async.txt"), b"x").expect("write");
    // A timeout that needs no runtime: a thread that gives up after
    // TIMEOUT unless told the test is over.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (late_tx, late_rx) = async_channel::bounded::<()>(1);
    let guard = std::thread::spawn(move || {
        if done_rx.recv_timeout(TIMEOUT).is_err() {
            let _ = late_tx.send_blocking(());
        }
    });
    let batch = futures_lite::future::block_on(futures_lite::future::or(
        async { Some(w.changed().await) },
        async {
            let _ = late_rx.recv().await;
            None
        },
    ));
    let _ = done_tx.send(());
    guard.join().expect("guard thread");
    let batch = batch.expect("no change reported within the timeout");
    assert!(batch.contains(&rel("async.txt")), "{batch:?}");
}

/// Writes `file` (relative to `dir`) until the watcher reports `want`:
/// each round waits for an event, so this ends as soon as the watch that
/// sees it is in place.
fn reported_after_writes(
    w: &TreeWatcher,
    dir: &std::path::Path,
    file: &str,
    want: &RelPath,
) -> bool {
    for i in 0..20 {
        std::fs::write(dir.join(file), format!("{i}")).expect("write");
        if w.wait(Duration::from_millis(500)).contains(want) {
            return true;
        }
    }
    false
}

#[test]
fn a_directory_moved_within_the_share_reports_under_its_new_name() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("a/deep")).expect("mkdir");
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    std::fs::rename(dir.path().join("a"), dir.path().join("b")).expect("mv");
    let seen = wait_for(&w, &rel("b"));
    assert!(seen.contains(&rel("a")), "old name: {seen:?}");
    // The watches beneath it moved with it: a write deep inside names the
    // new path, never the old one.
    assert!(
        reported_after_writes(&w, dir.path(), "b/deep/f", &rel("b/deep/f")),
        "no event under the moved directory's new name"
    );
    std::fs::write(dir.path().join("b/deep/g"), b"x").expect("write");
    let seen = wait_for(&w, &rel("b/deep/g"));
    assert!(
        seen.iter().all(|p| !p.starts_with(&rel("a"))),
        "stale name after the move: {seen:?}"
    );
}

#[test]
fn a_directory_moved_in_from_outside_is_watched() {
    let outside = tempdir();
    std::fs::create_dir_all(outside.path().join("x/inner")).expect("mkdir");
    let dir = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    std::fs::rename(outside.path().join("x"), dir.path().join("x")).expect("mv in");
    assert!(wait_for(&w, &rel("x")).contains(&rel("x")));
    assert!(
        reported_after_writes(&w, dir.path(), "x/inner/f", &rel("x/inner/f")),
        "no event from a directory moved into the share"
    );
}

#[test]
fn a_directory_moved_out_is_no_longer_reported() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("d")).expect("mkdir");
    let outside = tempdir();
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    std::fs::rename(dir.path().join("d"), outside.path().join("d")).expect("mv out");
    assert!(wait_for(&w, &rel("d")).contains(&rel("d")));
    std::fs::write(outside.path().join("d/f"), b"x").expect("write outside");
    std::fs::write(dir.path().join("marker"), b"").expect("marker");
    let seen = wait_for(&w, &rel("marker"));
    assert!(
        seen.iter().all(|p| !p.starts_with(&rel("d"))),
        "a change outside the share was reported: {seen:?}"
    );
}

#[test]
fn opening_and_reading_a_file_is_not_a_change() {
    let dir = tempdir();
    std::fs::write(dir.path().join("quiet"), b"x").expect("write");
    let w = TreeWatcher::new(dir.path(), WatchConfig::default()).expect("watch");
    for _ in 0..10 {
        assert_eq!(std::fs::read(dir.path().join("quiet")).expect("read"), b"x");
    }
    std::fs::write(dir.path().join("marker"), b"").expect("marker");
    let seen = wait_for(&w, &rel("marker"));
    assert!(!seen.contains(&rel("quiet")), "{seen:?}");
}
