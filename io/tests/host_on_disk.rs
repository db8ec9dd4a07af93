//! The host machine on a real disk: `HostServer`'s start-up scan, driven
//! through [`FsPool`] and [`HostFs`] over a real tree (a directory larger
//! than one listing page, nested directories, symlinks, a fifo, a device
//! node, a staging file left by a crash), indexes exactly what clients
//! may see.

use std::sync::Arc;
use wormhole_core::conn::auth::TicketSecret;
use wormhole_core::host::{HostConfig, HostEvent, HostOutput, HostServer, HostState, RelPath};
use wormhole_core::proto::{MAX_DIR_PAGE, Name, NodeId};
use wormhole_core::{Instant, Rng};
use wormhole_io::host::fs::{FsPool, HostFs, HostFsConfig};

#[test]
fn the_scan_indexes_the_real_tree() {
    let tmp = tempfile::Builder::new()
        .prefix("wormhole-host-disk")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let root = tmp.path();
    let mut visible = 0usize;
    // More entries than a listing page, so the scan pages with cookies.
    let big = root.join("big");
    std::fs::create_dir(&big).expect("mkdir");
    visible += 1;
    for i in 0..(MAX_DIR_PAGE + 37) {
        std::fs::write(big.join(format!("f{i:05}")), b"x").expect("write");
        visible += 1;
    }
    for d in 0..5 {
        let dir = root.join(format!("d{d}/e{d}"));
        std::fs::create_dir_all(&dir).expect("mkdir -p");
        visible += 2;
        std::fs::write(dir.join("leaf"), b"leaf").expect("write");
        visible += 1;
    }
    std::os::unix::fs::symlink("/", root.join("to_root")).expect("symlink");
    std::os::unix::fs::symlink("..", root.join("d0/up")).expect("symlink");
    visible += 2;
    // A FIFO is shown as one (the host never opens it).
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    visible += 1;
    // Invisible: a device node (this host does not allow them) and a
    // staging file a crash left behind.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("zero"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .expect("mknod (as root)");
    std::fs::write(root.join(".wormhole.3"), b"fresh").expect("write");
    // One a crash left long ago: the first scan sweeps it.
    std::fs::write(root.join(".wormhole.old"), b"stale").expect("write");
    std::fs::File::options()
        .write(true)
        .open(root.join(".wormhole.old"))
        .and_then(|f| {
            f.set_modified(
                std::time::SystemTime::now()
                    - wormhole_io::host::fs::LEFTOVER_AGE
                    - std::time::Duration::from_secs(60),
            )
        })
        .expect("age it");

    let fs = Arc::new(HostFs::open(root, HostFsConfig::default()).expect("open"));
    let (pool, results) = FsPool::new(fs, 2, 8).expect("pool");
    let mut host = HostServer::new(
        HostConfig::default(),
        TicketSecret([7; 32]),
        Rng::from_u64(1),
    );
    let now = Instant::ZERO;
    host.start(now);
    let mut in_flight = 0usize;
    let mut ops = 0usize;
    let state = futures_lite::future::block_on(async {
        loop {
            while let Some(out) = host.poll_output() {
                match out {
                    HostOutput::Fs { op, fs } => {
                        pool.submit(op, fs).await.expect("submit");
                        in_flight += 1;
                        ops += 1;
                    }
                    HostOutput::Event(HostEvent::State(s)) if s != HostState::Scanning => {
                        return s;
                    }
                    HostOutput::Event(HostEvent::ScanFailed(e)) => panic!("scan failed: {e:?}"),
                    _ => {}
                }
            }
            assert!(in_flight > 0, "the host waits for nothing and is not done");
            let (op, result) = results.recv().await.expect("result");
            in_flight -= 1;
            host.handle_fs(now, op, result);
        }
    });
    assert_eq!(state, HostState::Listening);
    // The root, and exactly the visible entries.
    assert_eq!(
        host.nodes().len(),
        visible + 1,
        "after {ops} file operations"
    );
    let name = |s: &str| Name::new(s).expect("name");
    let big_node = host
        .nodes()
        .child(NodeId::ROOT, &name("big"))
        .expect("big indexed");
    assert!(
        host.nodes()
            .child(big_node, &name(&format!("f{:05}", MAX_DIR_PAGE + 36)))
            .is_some(),
        "the last page was read"
    );
    assert!(host.nodes().child(NodeId::ROOT, &name("fifo")).is_some());
    assert!(host.nodes().child(NodeId::ROOT, &name("zero")).is_none());
    assert!(
        host.nodes()
            .child(NodeId::ROOT, &name(".wormhole.3"))
            .is_none()
    );
    assert!(root.join(".wormhole.3").exists(), "a fresh one may be live");
    assert!(!root.join(".wormhole.old").exists(), "the scan swept it");
    let leaf = host
        .nodes()
        .child(NodeId::ROOT, &name("d3"))
        .and_then(|d| host.nodes().child(d, &name("e3")))
        .and_then(|e| host.nodes().child(e, &name("leaf")))
        .expect("nested leaf");
    assert_eq!(
        host.nodes().path(leaf),
        Some(RelPath::from(vec![name("d3"), name("e3"), name("leaf")]))
    );
    // A symlink is a node; nothing beneath it is.
    let up = host
        .nodes()
        .child(NodeId::ROOT, &name("d0"))
        .and_then(|d| host.nodes().child(d, &name("up")))
        .expect("symlink indexed");
    assert!(host.nodes().child(up, &name("d0")).is_none());
    pool.shutdown();
}
