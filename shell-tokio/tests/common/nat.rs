//! NAT tests on kernel NATs (network namespaces, nftables), with the real
//! binary: `wormhole rendezvous` in the internet, `wormhole nat-check`
//! behind each kind of router. Shared by both shells' tests.
//!
//! Needs root, iproute2, nftables and conntrack (it fails, never skips,
//! without them; CI installs them).

use super::netns::{Behaviour, Internet, RENDEZVOUS_IPS};
use super::procs::{Cleanup, STEP, exited, line_where, lines};
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts `wormhole rendezvous` in the internet on both its addresses and
/// waits until it listens.
fn start_rendezvous(bin: &Path, net: &Internet, guard: &mut Cleanup) -> String {
    let primary = format!("{}:3478", RENDEZVOUS_IPS[0]);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.ns])
        .arg(bin)
        .args([
            "rendezvous",
            "--bind",
            &primary,
            "--other-ip",
            RENDEZVOUS_IPS[1],
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the rendezvous");
    let rx = lines(&mut child);
    guard.children.push(child);
    line_where(&rx, "the rendezvous listening", |l| {
        l.starts_with("Rendezvous listening")
    });
    primary
}

/// `nat-check`'s report, as `field → value`.
fn nat_check(bin: &Path, ns: &str, rendezvous: &str) -> Vec<(String, String)> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(["nat-check", "--rendezvous", rendezvous])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nat-check");
    let out = exited(child, STEP, "nat-check");
    assert!(
        out.status.success(),
        "nat-check in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn field<'a>(report: &'a [(String, String)], name: &str) -> &'a str {
    report
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {report:?}"))
}

/// Each kind of kernel NAT is classified as what it is.
pub(crate) fn every_kernel_nat_is_classified_as_what_it_is(bin: &Path, tag: &str) {
    let net = Internet::new(tag, &Behaviour::ALL);
    let mut guard = Cleanup {
        children: Vec::new(),
        dir: std::env::temp_dir().join(format!("wormhole-nat-{tag}-{}", std::process::id())),
    };
    let rendezvous = start_rendezvous(bin, &net, &mut guard);
    println!(
        "{:<16} {:<22} {:<28} {:<28} public address",
        "router", "NAT type", "mapping", "filtering"
    );
    let mut failures = Vec::new();
    for home in &net.homes {
        net.flush_conntrack();
        let report = nat_check(bin, &home.ns, &rendezvous);
        let (kind, mapping, filtering, public) = (
            field(&report, "NAT type"),
            field(&report, "Mapping"),
            field(&report, "Filtering"),
            field(&report, "Public address"),
        );
        println!(
            "{:<16} {kind:<22} {mapping:<28} {filtering:<28} {public}",
            home.behaviour.name()
        );
        let expected = match home.behaviour {
            Behaviour::Public => ("no NAT", "none (public address)", "endpoint-independent"),
            Behaviour::FullCone => ("full cone", "endpoint-independent", "endpoint-independent"),
            Behaviour::PortRestricted => (
                "port-restricted cone",
                "endpoint-independent",
                "address-and-port-dependent",
            ),
            Behaviour::Symmetric => (
                "symmetric",
                "address-and-port-dependent",
                "address-and-port-dependent",
            ),
        };
        if (kind, mapping, filtering) != expected {
            failures.push(format!(
                "{}: got {kind}/{mapping}/{filtering}, expected {expected:?}",
                home.behaviour.name()
            ));
        }
        assert!(
            public.starts_with(&format!("{}:", home.public_ip)),
            "{}: public address {public}, expected on {}",
            home.behaviour.name(),
            home.public_ip
        );
    }
    assert!(failures.is_empty(), "misclassified: {failures:#?}");
}

/// The NAT tests, for the binary `$bin`; `$tag` names its namespaces.
macro_rules! nat_tests {
    ($bin:expr, $tag:expr) => {
        #[test]
        fn every_kernel_nat_is_classified_as_what_it_is() {
            nat::every_kernel_nat_is_classified_as_what_it_is(std::path::Path::new($bin), $tag);
        }
    };
}
pub(crate) use nat_tests;
