//! Restart delays: `min(initial * 2^n, max)`, scaled by a random factor in
//! `[1 - jitter, 1 + jitter]`. Pure: the random source is passed in so tests are exact.
//! The settings themselves are config's value (`config::discovery::Backoff`); what
//! they mean for the next restart is decided here.

use crate::config::discovery::Backoff;
use std::time::Duration;

impl Backoff {
    /// The delay before restart number `n` (0 for the first restart).
    pub fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = if n >= 63 {
            self.max_ms
        } else {
            self.initial_ms.saturating_mul(1u64 << n).min(self.max_ms)
        };
        if base == 0 || self.jitter <= 0.0 {
            return Duration::from_millis(base);
        }
        // rng.f64() is in [0, 1); map it onto [1 - jitter, 1 + jitter].
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * rng.f64();
        Duration::from_micros((base as f64 * 1000.0 * factor).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(initial_ms: u64, max_ms: u64, jitter: f64) -> Backoff {
        Backoff {
            initial_ms,
            max_ms,
            jitter,
        }
    }

    #[test]
    fn doubles_then_caps_without_jitter() {
        let mut rng = fastrand::Rng::with_seed(1);
        let d: Vec<u64> = (0..8)
            .map(|n| b(1000, 30_000, 0.0).delay(n, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(d, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            b(1000, 30_000, 0.0).delay(200, &mut rng),
            Duration::from_secs(30)
        );
        assert_eq!(
            b(u64::MAX, u64::MAX, 0.0).delay(62, &mut rng).as_millis() as u64,
            u64::MAX
        );
    }

    #[test]
    fn zero_means_no_delay() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(b(0, 0, 0.5).delay(5, &mut rng), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = b(1000, 30_000, 0.2).delay(0, &mut rng).as_millis() as u64;
            assert!((800..=1200).contains(&d), "{d}");
            seen.insert(d);
        }
        assert!(seen.len() > 100);
    }

    #[test]
    fn same_seed_same_delays() {
        let mut a = fastrand::Rng::with_seed(42);
        let mut c = fastrand::Rng::with_seed(42);
        for n in 0..10 {
            assert_eq!(
                b(100, 5000, 0.3).delay(n, &mut a),
                b(100, 5000, 0.3).delay(n, &mut c)
            );
        }
    }
}
