//! Birthday punching: how a side behind an endpoint-dependent (symmetric)
//! NAT and a side behind an endpoint-independent one still meet.
//!
//! A symmetric NAT gives every destination its own public port, so the
//! port the peer learned from the rendezvous is useless to it, and a
//! port-restricted peer drops whatever arrives from a port it has not
//! sent to. So the symmetric side opens many sockets (the *sprayers*) and
//! sends from each to the peer's public address, which opens that many
//! unpredictable ports on its NAT, each toward the peer; the other side
//! sends checks from its one socket to the symmetric side's public IP at
//! ports it walks through in a random order (the *scan*). A scan probe
//! that lands on a sprayer's port passes both NATs (each has seen the
//! other's address and port go out), is answered, and is a path. With
//! `n` sprayers among the 64,512 ports a NAT hands out, each probe hits
//! with probability `n / 64512`: 256 sprayers and 2,048 probes miss with
//! probability `(1 - 256/64512)^2048 ≈ 3·10⁻⁴`.
//!
//! Both sides decide alike from what each told the other (its candidates
//! and whether its mapping varies by destination), so no extra signal is
//! needed: the side whose mapping varies sprays, the other scans. Both
//! are bounded (sockets, probes, pace) and end at the first path.

use crate::Rng;
use core::time::Duration;

/// The ports a NAT hands out to inside ports of 1024 and up (Linux's
/// range for a masquerade without a port range).
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 65536 - FIRST_PORT;

/// How hard birthday punching tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BirthdayConfig {
    /// Sockets the spraying side opens.
    pub sprayers: u16,
    /// Datagrams each side sends in all (probes, or sprays).
    pub probes: u32,
    /// Datagrams sent per tick...
    pub burst: u16,
    /// ...one tick every this long.
    pub tick: Duration,
    /// Time the ordinary checks get before birthday punching starts: most
    /// pairs with one symmetric side connect without it.
    pub after: Duration,
}

impl Default for BirthdayConfig {
    /// 256 sprayers, 4,096 datagrams per side at 800 a second (about 80
    /// kB/s for five seconds), after half a second.
    fn default() -> Self {
        BirthdayConfig {
            sprayers: 256,
            probes: 4096,
            burst: 8,
            tick: Duration::from_millis(10),
            after: Duration::from_millis(500),
        }
    }
}

/// Ports tried first just above the peer's known public port: a NAT that
/// hands out ports in sequence put the sprayers' there.
const NEAR: u32 = 512;

/// The walk's step: coprime with the range and near its golden section,
/// chosen (by trying every such step) so that the first `n` ports walked,
/// for every `n` from 128 to 4,096, leave no gap wider than `1.64 · 64512
/// / n`: any 256 consecutive ports are met within the first 413.
const STRIDE: u32 = 40067;

/// The order in which the scan tries ports: first the [`NEAR`] ports
/// above the peer's known public port (where a sequential NAT put the
/// sprayers), then every port of the range once, from a random start in
/// steps of [`STRIDE`], which spreads the probes evenly: a NAT that
/// allocates in blocks is found as fast as one that allocates at random
/// (against random allocation every order is as good as another).
#[derive(Clone, Copy, Debug)]
pub struct PortWalk {
    near: u16,
    near_left: u32,
    next: u32,
    left: u32,
}

impl PortWalk {
    /// A fresh walk around the peer's known public port `near`.
    pub fn new(rng: &mut Rng, near: u16) -> Self {
        debug_assert_eq!(gcd(STRIDE, PORTS), 1);
        PortWalk {
            near,
            near_left: NEAR,
            next: rng.below(u64::from(PORTS)) as u32,
            left: PORTS,
        }
    }
}

impl Iterator for PortWalk {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        if self.near_left > 0 {
            self.near_left -= 1;
            let port = u32::from(self.near) + (NEAR - self.near_left);
            if let Ok(port) = u16::try_from(port) {
                return Some(port);
            }
            self.near_left = 0;
        }
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let port = FIRST_PORT + self.next;
        self.next = (self.next + STRIDE) % PORTS;
        u16::try_from(port).ok()
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_walk_tries_the_near_ports_then_every_port_once() {
        for seed in 0..4 {
            let ports: Vec<u16> = PortWalk::new(&mut Rng::from_u64(seed), 30000).collect();
            assert_eq!(ports[..3], [30001, 30002, 30003]);
            assert_eq!(ports[NEAR as usize - 1], 30000 + NEAR as u16);
            let rest = &ports[NEAR as usize..];
            assert_eq!(rest.len(), PORTS as usize);
            let distinct: BTreeSet<u16> = rest.iter().copied().collect();
            assert_eq!(distinct.len(), PORTS as usize);
            assert_eq!(distinct.first(), Some(&1024));
            assert_eq!(distinct.last(), Some(&65535));
        }
        // Near the top of the range, the near ports stop at 65535.
        let top: Vec<u16> = PortWalk::new(&mut Rng::from_u64(1), 65530)
            .take(6)
            .collect();
        assert_eq!(top[..5], [65531, 65532, 65533, 65534, 65535]);
    }

    /// Any block of 256 consecutive ports (a NAT that hands out ports in
    /// sequence from somewhere) is met within the first 413 walked.
    #[test]
    fn the_walk_meets_every_block_of_256_ports_early() {
        for seed in 0..8 {
            let walk: Vec<u32> = PortWalk::new(&mut Rng::from_u64(seed), 1024)
                .skip(NEAR as usize)
                .take(413)
                .map(u32::from)
                .collect();
            for block in (FIRST_PORT..65536 - 256).step_by(7) {
                assert!(
                    walk.iter().any(|p| (block..block + 256).contains(p)),
                    "seed {seed}: block at {block} missed"
                );
            }
        }
    }

    #[test]
    fn walks_of_different_seeds_differ() {
        let a: Vec<u16> = PortWalk::new(&mut Rng::from_u64(1), 2000)
            .skip(NEAR as usize)
            .take(8)
            .collect();
        let b: Vec<u16> = PortWalk::new(&mut Rng::from_u64(2), 2000)
            .skip(NEAR as usize)
            .take(8)
            .collect();
        assert_ne!(a, b);
    }
}
