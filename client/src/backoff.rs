//! Reconnect delays: capped exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// First delay ceiling.
const BASE: Duration = Duration::from_millis(200);
/// Largest delay.
const CAP: Duration = Duration::from_secs(30);

/// The delay schedule of one run of failed attempts.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The ceiling of the next delay: `BASE · 2^attempt`, at most `CAP`.
    pub fn ceiling(&self) -> Duration {
        BASE.saturating_mul(1_u32 << self.attempt.min(16)).min(CAP)
    }

    /// The next delay, uniformly random below the ceiling ("full jitter", so many clients
    /// cut off at once do not reconnect in lockstep).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Number of attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a session that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay();
            assert!(delay <= *ceilings.last().expect("pushed"));
        }
        assert_eq!(ceilings[0], Duration::from_millis(200));
        assert_eq!(ceilings[3], Duration::from_millis(1600));
        assert_eq!(ceilings[11], CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
    }
}
