//! Relayed against direct, in one run: a cold sequential read of 256 MiB
//! through a FUSE mount whose QUIC goes straight to the host on loopback,
//! then through coturn on loopback (ChannelData), on both shells.
//! `cargo bench -p wormhole-tests --bench relay`; needs root,
//! `/dev/fuse` and coturn (`apt-get install coturn`). Prints a table;
//! nothing here passes or fails on speed.

use std::fs;
use std::path::Path;
use std::time::Instant;
use wormhole_io::turn::RelayedSocket;
use wormhole_io::{Identity, MountOptions, QuicTransport, Shell};
use wormhole_tests::coturn::Coturn;
use wormhole_tests::e2e::{SmolShell, TokioShell, pattern};
use wormhole_tests::quic::{
    SECRET, STEP, connected, mount, scratch, start_host, stop_host, ticket, unmount, within,
};

const SIZE: usize = 256 << 20;

fn main() {
    if !Path::new("/dev/fuse").exists() {
        println!("relay bench skipped: no /dev/fuse");
        return;
    }
    println!("{:<6} {:<10} {:>10}", "shell", "path", "MB/s");
    let coturn = Coturn::start();
    run(&TokioShell::new().expect("tokio"), &coturn);
    run(&SmolShell::new().expect("smol"), &coturn);
}

fn run<S: Shell>(shell: &S, coturn: &Coturn) {
    let dir = scratch("relay-bench", shell.name());
    let data = pattern(SIZE, 3);
    fs::write(dir.join("share/big.bin"), &data).expect("seed the share");
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = ticket(&host, &identity);
    let peer = host.local_addr();
    let rt = shell.runtime();
    for relayed in [false, true] {
        let socket = shell
            .bind_udp("127.0.0.1:0".parse().expect("addr"))
            .expect("bind the mount's socket");
        let transport = if relayed {
            let socket = within(
                shell,
                STEP,
                "an allocation on coturn",
                RelayedSocket::allocate(
                    rt.clone(),
                    socket,
                    coturn.addr,
                    coturn.credentials(),
                    peer,
                ),
            )
            .expect("coturn allocates");
            shell.block_on(async {
                QuicTransport::over(rt.clone(), socket, vec![peer], ticket.fingerprint)
            })
        } else {
            shell.block_on(async {
                QuicTransport::new(rt.clone(), socket, vec![peer], ticket.fingerprint)
            })
        }
        .expect("a client endpoint");
        let options = MountOptions::new(SECRET).expect("randomness");
        let m = mount(shell, transport, &dir.join("mnt"), options);
        connected(shell, &m);
        let started = Instant::now();
        let read = fs::read(dir.join("mnt/big.bin")).expect("read through the mount");
        let rate = SIZE as f64 / started.elapsed().as_secs_f64() / 1e6;
        assert!(read == data, "the file read back differs");
        println!(
            "{:<6} {:<10} {rate:>10.0}",
            shell.name(),
            if relayed { "relayed" } else { "direct" }
        );
        unmount(shell, m);
    }
    stop_host(shell, host);
    let _ = fs::remove_dir_all(&dir);
}
