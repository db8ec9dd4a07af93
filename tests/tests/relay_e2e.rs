//! A share mounted through coturn on loopback, on both shells: the mount's
//! QUIC runs over a [`RelayedSocket`] (ChannelData through a real TURN
//! server) to a real host, and files are written and read through FUSE.
//! (Across kernel NATs, with punching and the rendezvous minting the
//! credentials: `shell-tokio/tests/common/nat.rs`.)

use std::fs;
use wormhole_io::turn::RelayedSocket;
use wormhole_io::{Identity, MountOptions, QuicTransport, Shell};
use wormhole_tests::coturn::Coturn;
use wormhole_tests::e2e::pattern;
use wormhole_tests::quic::{
    SECRET, STEP, connected, mount, scratch, start_host, stop_host, ticket, unmount, within,
};

wormhole_tests::both_shells! {
    a_share_is_used_through_coturn: a_share_is_used_through_coturn;
}

fn a_share_is_used_through_coturn<S: Shell>(shell: &S) {
    let coturn = Coturn::start();
    let dir = scratch("relay", shell.name());
    let data = pattern(3 << 20, 7);
    fs::write(dir.join("share/big.bin"), &data).expect("seed the share");
    let identity = Identity::generate().expect("identity");
    let host = start_host(shell, &dir, &identity);
    let ticket = ticket(&host, &identity);
    let peer = host.local_addr();
    let socket = shell
        .bind_udp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind the mount's socket");
    let rt = shell.runtime();
    let relayed = within(
        shell,
        STEP,
        "an allocation on coturn",
        RelayedSocket::allocate(rt.clone(), socket, coturn.addr, coturn.credentials(), peer),
    )
    .expect("coturn allocates");
    let transport = shell
        .block_on(async {
            QuicTransport::over(rt.clone(), relayed, vec![peer], ticket.fingerprint)
        })
        .expect("a client endpoint over the relay");
    let options = MountOptions::new(SECRET).expect("randomness");
    let m = mount(shell, transport, &dir.join("mnt"), options);
    connected(shell, &m);
    let read = fs::read(dir.join("mnt/big.bin")).expect("read through the relay");
    assert!(read == data, "3 MiB read through the relay differ");
    fs::write(dir.join("mnt/back.bin"), &data[..100_000]).expect("write through the relay");
    unmount(shell, m);
    let on_host = fs::read(dir.join("share/back.bin")).expect("the host has it");
    assert!(on_host == data[..100_000], "the host got other bytes");
    stop_host(shell, host);
    let _ = fs::remove_dir_all(&dir);
}
