//! Retry policy: how often a transiently failing dispatch is tried again, and how long to wait.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Span;

/// Exponential backoff with jitter for transient dispatch errors.
///
/// `max_attempts` bounds the dispatches in a row that end in a transient error; an accepted
/// dispatch resets the count. How long a task may keep going overall is the job's `timeout`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Span,
    pub max_backoff: Span,
    pub multiplier: f64,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Span::from_secs(1),
            max_backoff: Span::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before the next try after `failures` transient errors in a row (`failures` ≥ 1).
    ///
    /// `sample` is a uniform random number in `[0, 1)`; the caller supplies it so this stays
    /// deterministic. The result lies within `±jitter` of the exponential base and never exceeds
    /// `max_backoff`.
    pub fn backoff(&self, failures: u32, sample: f64) -> Duration {
        let initial = self.initial_backoff.as_duration().as_secs_f64();
        let max = self.max_backoff.as_duration().as_secs_f64();
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = (initial * self.multiplier.powi(exponent)).min(max);
        let spread = self.jitter * (2.0 * sample.clamp(0.0, 1.0) - 1.0);
        let delay = (base * (1.0 + spread)).clamp(0.0, max);
        Duration::from_secs_f64(if delay.is_finite() { delay } else { max })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn without_jitter_the_backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let waits: Vec<u64> = (1..=11).map(|n| policy.backoff(n, 0.5).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    proptest! {
        #[test]
        fn the_backoff_stays_within_its_jitter_band_and_the_cap(
            failures in 1u32..10_000,
            sample in 0.0f64..1.0,
            initial_ms in 10u64..60_000,
            extra_ms in 0u64..3_600_000,
            multiplier in 1.0f64..10.0,
            jitter in 0.0f64..=1.0,
        ) {
            let policy = RetryPolicy {
                max_attempts: 10,
                initial_backoff: Span::from_millis(initial_ms),
                max_backoff: Span::from_millis(initial_ms + extra_ms),
                multiplier,
                jitter,
            };
            let max = policy.max_backoff.as_duration().as_secs_f64();
            let exponent = i32::try_from(failures - 1).unwrap_or(i32::MAX);
            let base = (initial_ms as f64 / 1000.0 * multiplier.powi(exponent)).min(max);
            let wait = policy.backoff(failures, sample).as_secs_f64();
            prop_assert!(wait <= max + 1e-9);
            prop_assert!(wait >= base * (1.0 - jitter) - 1e-6);
            prop_assert!(wait <= base * (1.0 + jitter) + 1e-6);
        }
    }
}
