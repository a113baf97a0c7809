//! Retransmission timeout estimation as in RFC 6298.

use crate::Duration;

/// Smoothed round-trip time and its variance, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct RttEstimator {
    srtt: u64,
    rttvar: u64,
    rto: u64,
    sampled: bool,
}

impl RttEstimator {
    /// An estimator that has seen no sample and answers `initial`.
    pub fn new(initial: Duration) -> Self {
        RttEstimator {
            srtt: 0,
            rttvar: 0,
            rto: initial.as_micros(),
            sampled: false,
        }
    }

    /// Takes one RTT sample (never from a retransmitted fragment: Karn).
    pub fn sample(&mut self, rtt: Duration, min: Duration, max: Duration) {
        let r = rtt.as_micros().max(1);
        if self.sampled {
            let err = self.srtt.abs_diff(r);
            self.rttvar = (3 * self.rttvar + err) / 4;
            self.srtt = (7 * self.srtt + r) / 8;
        } else {
            self.srtt = r;
            self.rttvar = r / 2;
            self.sampled = true;
        }
        // RFC 6298 (2.3) with a clock granularity of 1 ms.
        let rto = self.srtt + (4 * self.rttvar).max(1000);
        self.rto = rto.clamp(min.as_micros(), max.as_micros());
    }

    /// Doubles the timeout after a retransmission timer fired (RFC 6298
    /// 5.5); the next valid sample recomputes it.
    pub fn back_off(&mut self, max: Duration) {
        self.rto = self.rto.saturating_mul(2).min(max.as_micros());
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        Duration::from_micros(self.rto)
    }

    /// The smoothed RTT, once sampled.
    pub fn srtt(&self) -> Option<Duration> {
        self.sampled.then(|| Duration::from_micros(self.srtt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rfc_6298() {
        let (min, max) = (Duration::from_millis(10), Duration::from_secs(4));
        let mut e = RttEstimator::new(Duration::from_millis(200));
        assert_eq!(e.rto(), Duration::from_millis(200));
        e.sample(Duration::from_millis(20), min, max);
        // srtt 20, rttvar 10 → rto 20 + 40
        assert_eq!(e.rto(), Duration::from_millis(60));
        for _ in 0..50 {
            e.sample(Duration::from_millis(20), min, max);
        }
        assert!(e.rto() < Duration::from_millis(25));
        assert_eq!(e.srtt(), Some(Duration::from_millis(20)));
        e.sample(Duration::from_secs(60), min, max);
        assert_eq!(e.rto(), max);
        let mut e = RttEstimator::new(Duration::from_millis(200));
        e.back_off(max);
        assert_eq!(e.rto(), Duration::from_millis(400));
        for _ in 0..10 {
            e.back_off(max);
        }
        assert_eq!(e.rto(), max);
    }
}
