//! Membership timing and fan-out settings.

use crate::Duration;

/// SWIM settings. The defaults follow HashiCorp memberlist's LAN profile
/// (1 s probes, 500 ms probe timeout, 3 indirect checks, gossip to 3 nodes
/// every 200 ms) with a shorter suspicion multiplier and push-pull interval,
/// sized for clusters of tens of nodes.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemberConfig {
    /// How often each node probes one member.
    pub probe_interval: Duration,
    /// How long a direct probe waits before asking others to probe too.
    pub probe_timeout: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_checks: u8,
    /// Suspicion lasts `suspicion_mult × max(1, log10 n) × probe_interval`.
    pub suspicion_mult: u32,
    /// Each update is gossiped `retransmit_mult × ⌈log10(n + 1)⌉` times.
    pub retransmit_mult: u16,
    /// How often queued updates are gossiped.
    pub gossip_interval: Duration,
    /// How many members each gossip round reaches.
    pub gossip_nodes: u8,
    /// How long dead members still receive gossip, so a healed partition
    /// learns it was declared dead and refutes.
    pub gossip_to_dead: Duration,
    /// How often a full push-pull sync runs with one random member: a live
    /// one, or every other time a dead one (so healed partitions reconnect).
    pub sync_interval: Duration,
    /// How long a dead member is still tried by sync before it is given up.
    pub reconnect_timeout: Duration,
    /// How often a joining node retries its seeds.
    pub join_retry: Duration,
}

impl Default for MemberConfig {
    fn default() -> Self {
        MemberConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 2,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            gossip_to_dead: Duration::from_secs(30),
            sync_interval: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(24 * 3600),
            join_retry: Duration::from_secs(1),
        }
    }
}

impl MemberConfig {
    /// The suspicion timeout for a cluster of `n` live nodes.
    pub fn suspicion_timeout(&self, n: usize) -> Duration {
        let factor_milli = log10_milli(n).max(1000);
        Duration::from_micros(
            self.probe_interval.as_micros() * u64::from(self.suspicion_mult) * factor_milli / 1000,
        )
    }

    /// How many times each update is gossiped in a cluster of `n` nodes.
    pub fn retransmit_limit(&self, n: usize) -> u16 {
        let mut digits = 1u16;
        let mut p = 10usize;
        while p < n.saturating_add(1) {
            p = p.saturating_mul(10);
            digits += 1;
        }
        self.retransmit_mult.saturating_mul(digits)
    }
}

/// `1000 × log10(n)` in integers (linear interpolation between powers of two;
/// error under 0.03). Zero for `n ≤ 1`.
fn log10_milli(n: usize) -> u64 {
    if n <= 1 {
        return 0;
    }
    let n = n as u64;
    let k = u64::from(n.ilog2());
    let frac_milli = ((n - (1 << k)) * 1000) >> k;
    (k * 1000 + frac_milli) * 30103 / 100_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log10_is_close() {
        for n in [2usize, 3, 10, 32, 100, 1000, 5000] {
            let exact = (n as f64).log10() * 1000.0;
            assert!((log10_milli(n) as f64 - exact).abs() < 30.0, "{n}");
        }
    }

    #[test]
    fn timeouts_grow_with_cluster_size() {
        let c = MemberConfig::default();
        assert_eq!(c.suspicion_timeout(3), Duration::from_secs(2));
        assert!(c.suspicion_timeout(32) > c.suspicion_timeout(8));
        assert!(c.suspicion_timeout(32) < Duration::from_secs(4));
        assert_eq!(c.retransmit_limit(5), 4);
        assert_eq!(c.retransmit_limit(32), 8);
    }
}
