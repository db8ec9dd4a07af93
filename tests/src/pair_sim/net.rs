//! The simulated network: one link per node pair and lane, each with its
//! own delay, jitter, loss, duplication and partition flag.

use arbitrary::Arbitrary;
use std::time::Duration;
use wormhole_core::Rng;

/// Which traffic a link carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Arbitrary)]
pub enum Lane {
    /// Keepalive datagrams between pair endpoints.
    Udp,
    /// Handover signals between the two peers.
    Signal,
}

/// How a link behaves. Percentages above 100 count as 100 (loss is capped
/// at 90 % so a fuzzed link still lets something through).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Arbitrary)]
pub struct LinkParams {
    /// Base one-way delay.
    pub delay_ms: u16,
    /// Extra uniform delay in `0..=jitter_ms`; reorders messages.
    pub jitter_ms: u16,
    /// Chance in percent that a message is lost.
    pub loss_pct: u8,
    /// Chance in percent that a message is delivered twice (the copy with
    /// its own delay).
    pub dup_pct: u8,
    /// Chance in percent of a delay spike.
    pub spike_pct: u8,
    /// A spike adds a uniform delay in `0..=spike_ms`.
    pub spike_ms: u16,
}

impl LinkParams {
    /// A perfect link: 10 ms, nothing lost, duplicated or reordered.
    pub const CLEAN: LinkParams = LinkParams {
        delay_ms: 10,
        jitter_ms: 0,
        loss_pct: 0,
        dup_pct: 0,
        spike_pct: 0,
        spike_ms: 0,
    };

    /// The longest one-way delay this link can produce.
    pub fn max_delay(&self) -> Duration {
        let spike = if self.spike_pct > 0 { self.spike_ms } else { 0 };
        Duration::from_millis(
            u64::from(self.delay_ms) + u64::from(self.jitter_ms) + u64::from(spike),
        )
    }

    /// The same link once the network is healed: nothing lost, no spikes,
    /// and the delay clamped so a round trip stays well inside the
    /// keepalive interval (`max_one_way`). Duplication and jitter stay.
    pub fn healed(&self, max_one_way: Duration) -> LinkParams {
        let max = u16::try_from(max_one_way.as_millis()).unwrap_or(u16::MAX);
        let delay = self.delay_ms.min(max / 2);
        LinkParams {
            delay_ms: delay,
            jitter_ms: self.jitter_ms.min(max - delay),
            loss_pct: 0,
            dup_pct: self.dup_pct.min(100),
            spike_pct: 0,
            spike_ms: 0,
        }
    }

    /// Samples one message's fate: `None` if lost, else its delays (two
    /// when duplicated).
    pub(super) fn sample(&self, rng: &mut Rng) -> Option<(Duration, Option<Duration>)> {
        if rng.below(100) < u64::from(self.loss_pct.min(90)) {
            return None;
        }
        let first = self.sample_delay(rng);
        let dup =
            (rng.below(100) < u64::from(self.dup_pct.min(100))).then(|| self.sample_delay(rng));
        Some((first, dup))
    }

    fn sample_delay(&self, rng: &mut Rng) -> Duration {
        let mut ms = u64::from(self.delay_ms) + rng.below(u64::from(self.jitter_ms) + 1);
        if rng.below(100) < u64::from(self.spike_pct.min(100)) {
            ms += rng.below(u64::from(self.spike_ms) + 1);
        }
        Duration::from_millis(ms)
    }
}

/// One direction-less link between two nodes on one lane.
#[derive(Clone, Copy, Debug)]
pub(super) struct Link {
    pub params: LinkParams,
    /// Partitioned: everything sent is lost, and so is everything in flight
    /// when it would arrive.
    pub cut: bool,
}
