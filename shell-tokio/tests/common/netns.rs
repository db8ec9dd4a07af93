//! A small internet in network namespaces, for NAT tests on real kernel
//! NATs: an "internet" namespace (where the rendezvous runs, on two
//! addresses) and homes, each behind a router namespace whose nftables
//! rules give it one NAT behaviour. Everything is created by [`Internet`]
//! and removed when it is dropped, also when a test fails; only addresses
//! inside these namespaces are used (198.18.0.0/15, RFC 2544's benchmark
//! range, outside; 10.k.0.0/24 inside).
//!
//! Topology, for home k (1-based):
//!
//! ```text
//!  home k            router k                        internet
//!  eth0 10.k.0.2 --- lan 10.k.0.1 | wan 198.18.k.1 --- rk 198.18.k.254
//!                                                      lo 198.18.0.1, 198.18.0.2
//! ```
//!
//! A home with a public address (no NAT) gets 198.19.k.2 on its own
//! subnet, routed by the internet through its router.
//!
//! The gotchas from earlier work (docs/nat.md): unsolicited inbound is
//! dropped on the router's own INPUT chain too (else an early packet makes
//! a conntrack entry that collides with the later SNAT); inside ports are
//! ephemeral (≥ 32768); conntrack is flushed between cells.

// Shared by several test crates, each of which uses a part.
#![allow(dead_code)]

use std::net::IpAddr;
use std::process::{Command, Stdio};

/// The NAT behaviours a router can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// No NAT, no filtering: a public address.
    Public,
    /// Endpoint-independent mapping and filtering ("full cone"): SNAT, and
    /// every inbound UDP packet DNATed to the home.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering:
    /// plain masquerade, inbound only for established flows.
    PortRestricted,
    /// Endpoint-dependent mapping: masquerade with fully random ports.
    Symmetric,
    /// A port-restricted NAT whose firewall lets UDP out only to the
    /// rendezvous's first address, where the relay runs too (as networks
    /// that allow one known server do). Not in [`Behaviour::ALL`].
    RelayOnly,
}

impl Behaviour {
    /// All four, in the order of the matrix.
    pub(crate) const ALL: [Behaviour; 4] = [
        Behaviour::Public,
        Behaviour::FullCone,
        Behaviour::PortRestricted,
        Behaviour::Symmetric,
    ];

    /// A short name for tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Behaviour::Public => "public",
            Behaviour::FullCone => "full cone",
            Behaviour::PortRestricted => "port-restricted",
            Behaviour::Symmetric => "symmetric",
            Behaviour::RelayOnly => "UDP to relay only",
        }
    }

    /// The router's nftables ruleset, if it has one.
    fn ruleset(self, home_ip: &str) -> Option<String> {
        let (masquerade, dnat) = match self {
            Behaviour::Public => return None,
            Behaviour::FullCone => (
                "masquerade",
                format!("iifname \"wan\" meta l4proto udp dnat to {home_ip}"),
            ),
            Behaviour::PortRestricted | Behaviour::RelayOnly => ("masquerade", String::new()),
            Behaviour::Symmetric => ("masquerade fully-random", String::new()),
        };
        let outbound = if self == Behaviour::RelayOnly {
            format!(
                "oifname \"wan\" meta l4proto udp ip daddr != {} drop",
                RENDEZVOUS_IPS[0]
            )
        } else {
            String::new()
        };
        Some(format!(
            "table ip wh {{
  chain nat_out {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masquerade}
  }}
  chain nat_in {{
    type nat hook prerouting priority dstnat; policy accept;
    {dnat}
  }}
  chain filter_forward {{
    type filter hook forward priority filter; policy accept;
    {outbound}
    iifname \"wan\" ct state established,related accept
    iifname \"wan\" ct status dnat accept
    iifname \"wan\" drop
  }}
  chain filter_input {{
    type filter hook input priority filter; policy accept;
    iifname \"wan\" ct state established,related accept
    iifname \"wan\" drop
  }}
}}
"
        ))
    }
}

/// One home behind its router.
#[derive(Debug)]
pub(crate) struct Home {
    /// The home's namespace (where `wormhole` runs).
    pub(crate) ns: String,
    /// Its router's namespace.
    pub(crate) router: String,
    /// The home's own address.
    pub(crate) ip: IpAddr,
    /// The router's public address.
    pub(crate) public_ip: IpAddr,
    /// How the router behaves.
    pub(crate) behaviour: Behaviour,
}

/// The namespaces of one test; dropped, they are deleted.
#[derive(Debug)]
pub(crate) struct Internet {
    /// The internet's namespace (where the rendezvous runs).
    pub(crate) ns: String,
    /// The homes, in the order asked for.
    pub(crate) homes: Vec<Home>,
    all: Vec<String>,
}

/// The rendezvous's two addresses in the internet namespace.
pub(crate) const RENDEZVOUS_IPS: [&str; 2] = ["198.18.0.1", "198.18.0.2"];

/// Runs a command, failing the test with its stderr if it fails.
pub(crate) fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} (needs root and iproute2/nftables): {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` inside namespace `ns`.
pub(crate) fn run_in(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all);
}

impl Internet {
    /// Builds an internet with one home behind each of `behaviours`.
    /// `tag` keeps the names of concurrently running tests apart.
    pub(crate) fn new(tag: &str, behaviours: &[Behaviour]) -> Internet {
        let prefix = format!("wh{}{tag}", std::process::id() % 100_000);
        let mut net = Internet {
            ns: format!("{prefix}i"),
            homes: Vec::new(),
            all: Vec::new(),
        };
        net.add_ns(&net.ns.clone());
        let inet = net.ns.clone();
        run_in(&inet, &["ip", "link", "set", "lo", "up"]);
        for ip in RENDEZVOUS_IPS {
            run_in(
                &inet,
                &["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"],
            );
        }
        run_in(&inet, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (i, behaviour) in behaviours.iter().enumerate() {
            let k = i + 1;
            let router = format!("{prefix}r{k}");
            let home = format!("{prefix}h{k}");
            net.add_ns(&router);
            net.add_ns(&home);
            // The router's uplink into the internet.
            let uplink = format!("r{k}");
            run(&[
                "ip", "link", "add", "wan", "netns", &router, "type", "veth", "peer", "name",
                &uplink, "netns", &inet,
            ]);
            run_in(
                &router,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.18.{k}.1/24"),
                    "dev",
                    "wan",
                ],
            );
            run_in(
                &inet,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.18.{k}.254/24"),
                    "dev",
                    &uplink,
                ],
            );
            // The home's link to its router.
            run(&[
                "ip", "link", "add", "eth0", "netns", &home, "type", "veth", "peer", "name", "lan",
                "netns", &router,
            ]);
            let inside = if *behaviour == Behaviour::Public {
                format!("198.19.{k}")
            } else {
                format!("10.{k}.0")
            };
            run_in(
                &router,
                &["ip", "addr", "add", &format!("{inside}.1/24"), "dev", "lan"],
            );
            run_in(
                &home,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{inside}.2/24"),
                    "dev",
                    "eth0",
                ],
            );
            for (ns, links) in [
                (&router, &["lo", "wan", "lan"][..]),
                (&home, &["lo", "eth0"][..]),
                (&inet, &[uplink.as_str()][..]),
            ] {
                for link in links {
                    run_in(ns, &["ip", "link", "set", link, "up"]);
                }
            }
            run_in(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            run_in(
                &router,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("198.18.{k}.254"),
                ],
            );
            run_in(
                &home,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{inside}.1"),
                ],
            );
            if *behaviour == Behaviour::Public {
                run_in(
                    &inet,
                    &[
                        "ip",
                        "route",
                        "add",
                        &format!("{inside}.0/24"),
                        "via",
                        &format!("198.18.{k}.1"),
                    ],
                );
            }
            let home_ip = format!("{inside}.2");
            if let Some(rules) = behaviour.ruleset(&home_ip) {
                let path = std::env::temp_dir().join(format!("{router}.nft"));
                std::fs::write(&path, rules).expect("write the ruleset");
                run_in(&router, &["nft", "-f", path.to_str().expect("utf-8 path")]);
                let _ = std::fs::remove_file(&path);
            }
            net.homes.push(Home {
                ns: home,
                router,
                ip: home_ip.parse().expect("home ip"),
                public_ip: if *behaviour == Behaviour::Public {
                    home_ip.parse().expect("home ip")
                } else {
                    format!("198.18.{k}.1").parse().expect("router ip")
                },
                behaviour: *behaviour,
            });
        }
        net
    }

    /// Gives the internet and every home IPv6 as many homes have it
    /// beside a NATed IPv4: a global address on the home's machine, routed
    /// (no NAT66), behind a router that forwards only flows the home
    /// started (`ct state established`), as home routers filter IPv6.
    /// Home `k` is `2001:db8:k::2`.
    pub(crate) fn add_ipv6(&self) {
        run_in(
            &self.ns,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        );
        for (i, home) in self.homes.iter().enumerate() {
            let k = i + 1;
            let (router, ns) = (&home.router, &home.ns);
            let uplink = format!("r{k}");
            let addr = |ns: &str, a: String, dev: &str| {
                run_in(ns, &["ip", "-6", "addr", "add", &a, "dev", dev, "nodad"]);
            };
            addr(&self.ns, format!("2001:db8:ffff:{k}::254/64"), &uplink);
            addr(router, format!("2001:db8:ffff:{k}::1/64"), "wan");
            addr(router, format!("2001:db8:{k}::1/64"), "lan");
            addr(ns, format!("2001:db8:{k}::2/64"), "eth0");
            run_in(router, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            let route = |ns: &str, to: &str, via: String| {
                run_in(ns, &["ip", "-6", "route", "add", to, "via", &via]);
            };
            route(router, "default", format!("2001:db8:ffff:{k}::254"));
            route(ns, "default", format!("2001:db8:{k}::1"));
            route(
                &self.ns,
                &format!("2001:db8:{k}::/64"),
                format!("2001:db8:ffff:{k}::1"),
            );
            let rules = "table ip6 wh6 {
  chain filter_forward {
    type filter hook forward priority filter; policy accept;
    iifname \"wan\" ct state established,related accept
    iifname \"wan\" meta l4proto ipv6-icmp accept
    iifname \"wan\" drop
  }
}
";
            let path = std::env::temp_dir().join(format!("{router}-6.nft"));
            std::fs::write(&path, rules).expect("write the IPv6 ruleset");
            run_in(router, &["nft", "-f", path.to_str().expect("utf-8 path")]);
            let _ = std::fs::remove_file(&path);
        }
    }

    fn add_ns(&mut self, name: &str) {
        // A namespace left over by a killed earlier run of this pid.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", name]);
        self.all.push(name.to_owned());
    }

    /// Turns home `home`'s router into one that behaves as `to`, in one
    /// nftables transaction, keeping the flows it has (a router whose
    /// settings change, or a new one behind the same address): mappings
    /// made before keep working, new ones follow the new rules.
    pub(crate) fn switch(&mut self, home: usize, to: Behaviour) {
        let h = &mut self.homes[home];
        assert!(
            h.behaviour != Behaviour::Public && to != Behaviour::Public,
            "a router stays a router"
        );
        let rules = to.ruleset(&h.ip.to_string()).expect("a NAT's rules");
        let path = std::env::temp_dir().join(format!("{}-switch.nft", h.router));
        std::fs::write(&path, format!("delete table ip wh\n{rules}")).expect("write the ruleset");
        run_in(
            &h.router,
            &["nft", "-f", path.to_str().expect("utf-8 path")],
        );
        let _ = std::fs::remove_file(&path);
        h.behaviour = to;
    }

    /// Forgets every NAT mapping and flow, as between two matrix cells.
    pub(crate) fn flush_conntrack(&self) {
        for home in &self.homes {
            let _ = Command::new("ip")
                .args(["netns", "exec", &home.router, "conntrack", "-F"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        // Deleting a namespace kills its veth ends and their peers.
        for ns in self.all.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
