//! NAT tools over real UDP on loopback, against servers we did not write:
//! coturn's `turnutils_stunclient` against our rendezvous, our `nat-check`
//! against coturn's `turnserver`, and the two of ours together. Each body
//! runs on both shells.
//!
//! Loopback has two addresses to offer (127.0.0.1 and 127.0.0.2), which is
//! what a full RFC 5780 server needs. The NATs themselves are tested in
//! network namespaces (`nat_matrix`).

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wormhole_core::nat::{Filtering, Mapping, NatBehaviour, NatType};
use wormhole_io::nat::{RendezvousServer, RendezvousStart, nat_check};
use wormhole_io::{Shell, timeout};
use wormhole_tests::both_shells;

const LIMIT: Duration = Duration::from_secs(20);
const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Two consecutive UDP ports free on both loopback addresses right now.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(s) = std::net::UdpSocket::bind((FIRST, 0)) else {
            continue;
        };
        let Ok(port) = s.local_addr().map(|a| a.port()) else {
            continue;
        };
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        drop(s);
        let all_free = [(FIRST, port), (FIRST, next), (SECOND, port), (SECOND, next)]
            .iter()
            .all(|a| std::net::UdpSocket::bind(a).is_ok());
        if all_free {
            return port;
        }
    }
    panic!("no two consecutive free UDP ports");
}

/// Runs our rendezvous on both loopback addresses while `body` runs.
fn with_rendezvous<S: Shell, T>(shell: &S, body: impl FnOnce(SocketAddr) -> T + Send) -> T
where
    T: Send,
{
    let port = free_port_pair();
    let start = RendezvousStart {
        primary: SocketAddr::new(FIRST, port),
        other_port: port + 1,
        other_ip: Some(SECOND),
    };
    // Dropping `stop` ends `serve`.
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let (bound_tx, bound) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let serving = scope.spawn(|| {
            shell.block_on(async move {
                // Sockets join the runtime they are bound in.
                let server = RendezvousServer::bind(shell.runtime(), start, |a| shell.bind_udp(a))
                    .expect("bind the rendezvous");
                let _ = bound_tx.send(());
                server
                    .serve(async move {
                        let _ = stopped.recv().await;
                    })
                    .await
            })
        });
        bound.recv().expect("the rendezvous bound its sockets");
        let result = body(start.primary);
        drop(stop);
        let stats = serving.join().expect("the rendezvous thread");
        assert!(stats.answered > 0, "the rendezvous answered nothing");
        result
    })
}

/// Kills a child process when dropped, so a failing test leaves none.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn classify<S: Shell>(shell: &S, server: SocketAddr) -> NatBehaviour {
    let runtime = shell.runtime();
    shell
        .block_on(timeout(
            &*runtime,
            LIMIT,
            "nat-check",
            nat_check(runtime.clone(), server, [7; 32], |a| shell.bind_udp(a)),
        ))
        .expect("nat-check finished")
        .expect("nat-check classified")
}

fn assert_no_nat(b: &NatBehaviour) {
    assert_eq!(b.mapping, Mapping::None, "{b:?}");
    assert_eq!(b.filtering, Filtering::EndpointIndependent, "{b:?}");
    assert_eq!(b.nat_type(), NatType::None);
    assert_eq!(b.public, b.local);
    assert!(b.other_ip_tested);
    assert!(b.hairpin);
}

both_shells! {
    /// coturn's STUN client runs all three RFC 5780 tests against our
    /// rendezvous and gets the right reflexive address from each origin.
    the_rendezvous_answers_coturns_stun_client: |shell| {
        let out = with_rendezvous(shell, |server| {
            let out = Command::new("turnutils_stunclient")
                .args(["-p", &server.port().to_string(), &server.ip().to_string()])
                .stderr(Stdio::inherit())
                .output()
                .expect("run turnutils_stunclient (apt-get install coturn)");
            assert!(out.status.success(), "turnutils_stunclient failed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        });
        assert!(out.contains("RFC 5780 response 3"), "{out}");
        assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
        assert!(out.contains("Other addr: : 127.0.0.2:"), "{out}");
        assert!(out.contains("Response origin: : 127.0.0.2:"), "{out}");
    };

    /// Our classifier against our rendezvous: loopback is no NAT at all.
    nat_check_against_our_rendezvous_sees_no_nat_on_loopback: |shell| {
        let b = with_rendezvous(shell, |server| classify(shell, server));
        assert_no_nat(&b);
    };

    /// Our classifier against coturn (`turnserver` with two listening
    /// addresses is an RFC 5780 server).
    nat_check_against_coturn_sees_no_nat_on_loopback: |shell| {
        let port = free_port_pair();
        let _coturn = Killed(
            Command::new("turnserver")
                .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--log-file", "stdout"])
                .args(["-L", "127.0.0.1", "-L", "127.0.0.2", "-p", &port.to_string()])
                .args(["--pidfile", "/dev/null"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start turnserver (apt-get install coturn)"),
        );
        // No readiness wait: the client's retransmissions (250 ms, then
        // doubling) cover coturn's start.
        let b = classify(shell, SocketAddr::new(FIRST, port));
        assert_no_nat(&b);
    };
}
