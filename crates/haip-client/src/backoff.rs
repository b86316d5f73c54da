//! When to try again: exponential backoff with optional full jitter.

use std::time::Duration;

/// How a client reconnects after losing its connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Attempts before giving up; 0 means never give up.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    /// Draw each delay uniformly from [0, delay] so that many clients dropped at once do not
    /// come back in lock-step.
    pub jitter: bool,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            max_attempts: 0,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl ReconnectPolicy {
    /// The delay before attempt `n` (1-based) without jitter:
    /// `initial * multiplier^(n-1)`, capped at `max_delay`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let factor = self.multiplier.max(1.0).powi(exponent);
        let secs = self.initial_delay.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            return self.max_delay;
        }
        Duration::from_secs_f64(secs)
    }

    /// The delay before attempt `n`; `unit` is a uniform draw from [0, 1) used for jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter {
            base.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            base
        }
    }

    /// Whether attempt `n` may be made at all.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts == 0 || attempt <= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> ReconnectPolicy {
        ReconnectPolicy {
            jitter: false,
            ..ReconnectPolicy::default()
        }
    }

    #[test]
    fn delays_double_from_one_second_and_stop_at_thirty() {
        let p = no_jitter();
        let secs: Vec<u64> = (1..=7).map(|n| p.delay(n, 0.5).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_huge_attempt_number_stays_at_the_cap() {
        let p = no_jitter();
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_draws_within_zero_and_the_base() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(2));
        assert!(p.delay(3, 0.999) < Duration::from_secs(4));
    }

    #[test]
    fn zero_attempts_means_unlimited() {
        let p = ReconnectPolicy::default();
        assert!(p.allows(1_000_000));
        let p = ReconnectPolicy {
            max_attempts: 3,
            ..p
        };
        assert!(p.allows(3) && !p.allows(4));
    }
}
