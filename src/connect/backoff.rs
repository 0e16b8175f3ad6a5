//! Reconnect delays: exponential (1 s, 2 s, 4 s …) with jitter, capped, and reset once a
//! connection has proved itself by staying up.
//!
//! Jitter keeps a houseful of speakers that lost the same router from reconnecting in lockstep.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How far a delay may stray from its nominal value: ±20 %.
const JITTER: f64 = 0.2;

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, StdRng::from_os_rng())
    }

    /// With a seeded generator, for tests.
    pub fn with_rng(initial: Duration, max: Duration, rng: StdRng) -> Self {
        let initial = initial.max(Duration::from_millis(100));
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng,
        }
    }

    /// The nominal delay of the next attempt (no jitter).
    pub fn nominal(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; advances the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal().as_secs_f64();
        let low = nominal * (1.0 - JITTER);
        let high = (nominal * (1.0 + JITTER)).min(self.max.as_secs_f64());
        let delay = if high > low {
            self.rng.random_range(low..=high)
        } else {
            low
        };
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs_f64(delay)
    }

    /// Back to the first delay (after a connection that stayed up long enough).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(seed: u64) -> Backoff {
        Backoff::with_rng(
            Duration::from_secs(1),
            Duration::from_secs(60),
            StdRng::seed_from_u64(seed),
        )
    }

    #[test]
    fn nominal_sequence_doubles_and_caps_at_60_s() {
        let mut b = backoff(1);
        let mut nominal = Vec::new();
        for _ in 0..10 {
            nominal.push(b.nominal().as_secs());
            b.next_delay();
        }
        assert_eq!(nominal, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_20_percent_and_under_the_cap() {
        for seed in 0..200 {
            let mut b = backoff(seed);
            for _ in 0..12 {
                let nominal = b.nominal().as_secs_f64();
                let delay = b.next_delay().as_secs_f64();
                assert!(delay >= nominal * 0.8 - 1e-9, "{delay} < 0.8 x {nominal}");
                assert!(
                    delay <= (nominal * 1.2).min(60.0) + 1e-9,
                    "{delay} > bound for {nominal}"
                );
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let delays: std::collections::HashSet<u64> = (0..20)
            .map(|seed| backoff(seed).next_delay().as_millis() as u64)
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = backoff(3);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.nominal(), Duration::from_secs(1));
    }
}
