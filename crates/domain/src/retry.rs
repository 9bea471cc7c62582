//! Retry policy: which answers count as transient, how often a transiently failing dispatch is
//! tried again, and how long to wait.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Span;

/// Exponential backoff with jitter for transient dispatch errors, and what counts as one.
///
/// `max_attempts` bounds the dispatches in a row that end in a transient error; an accepted
/// dispatch resets the count. It also bounds the failures a downstream reports with an error
/// code named in `on_errors` (or `retryable`): those never reset within a task. How long a task
/// may keep going overall is the job's `timeout`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Span,
    pub max_backoff: Span,
    pub multiplier: f64,
    pub jitter: f64,
    /// The statuses that count as transient, replacing the default set (408, 429, 5xx) when
    /// present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status: Option<Vec<StatusMatch>>,
    /// Statuses that are permanent even where `on_status` (or the default set) names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_on_status: Vec<StatusMatch>,
    /// Error codes a downstream reports with a `failed` status that dispatch the task again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_errors: Vec<String>,
}

/// How a dispatch's HTTP status is treated (DESIGN §6's response table, as a job's retry policy
/// adjusts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// 2xx: the downstream took the task.
    Accepted,
    /// 409 (unless a retry list names it): the downstream is already working on it.
    AlreadyRunning,
    /// 408, 429, 5xx, or what `on_status` names: try again later.
    Transient,
    /// Any other status (other 4xx, unfollowed redirects), or what `never_on_status` names: the
    /// task fails.
    Permanent,
}

/// An HTTP status a retry policy names: one status (`503`), or a class (`"5xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// One status, 300 to 599.
    Status(u16),
    /// Every status of a class: the hundreds digit, 4 or 5.
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` is named. A class never names 409, which keeps meaning "already
    /// running" unless a list names it on its own.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Status(named) => named == status,
            StatusMatch::Class(hundreds) => status / 100 == hundreds && status != 409,
        }
    }

    fn parse_status(status: i64) -> Result<Self, String> {
        match status {
            200..=299 => Err(format!(
                "{status} cannot be named: a 2xx answer is an accepted dispatch"
            )),
            300..=599 => Ok(StatusMatch::Status(
                u16::try_from(status).unwrap_or_default(),
            )),
            _ => Err(format!(
                "{status} is not an HTTP status that can be named (300 to 599)"
            )),
        }
    }

    fn parse_class(class: &str) -> Result<Self, String> {
        match class {
            "4xx" => Ok(StatusMatch::Class(4)),
            "5xx" => Ok(StatusMatch::Class(5)),
            "2xx" => Err("`2xx` cannot be named: a 2xx answer is an accepted dispatch".into()),
            other => Err(format!(
                "`{other}` is not a status class that can be named: `4xx` or `5xx`, or a status from 300 to 599"
            )),
        }
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Status(status) => write!(f, "{status}"),
            StatusMatch::Class(hundreds) => write!(f, "{hundreds}xx"),
        }
    }
}

impl Serialize for StatusMatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StatusMatch::Status(status) => serializer.serialize_u16(*status),
            StatusMatch::Class(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for StatusMatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Status(i64),
            Class(String),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| D::Error::custom("a status is a number (`503`) or a class (`\"5xx\"`)"))?
        {
            Raw::Status(status) => StatusMatch::parse_status(status),
            Raw::Class(class) => StatusMatch::parse_class(&class),
        }
        .map_err(D::Error::custom)
    }
}

/// The schema of a named status: a status from 300 to 599, or `"4xx"` / `"5xx"`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for StatusMatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(300))
                    .maximum(Some(599)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["4xx", "5xx"])),
            )
            .description(Some(
                "An HTTP status from 300 to 599, or a class: `4xx` or `5xx` (a class never names 409).",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for StatusMatch {}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Span::from_secs(1),
            max_backoff: Span::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
            on_status: None,
            never_on_status: Vec::new(),
            on_errors: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Classifies a dispatch's answer status. A status `never_on_status` names on its own, then
    /// one `on_status` names on its own, then the same for classes: the more specific rule wins,
    /// so `on_status: ["5xx"], never_on_status: [501]` retries every 5xx but 501. Without
    /// `on_status` the default set (408, 429, 5xx) is transient; 409 means "already running"
    /// unless a list names it as a status.
    pub fn classify(&self, status: u16) -> ResponseClass {
        if (200..=299).contains(&status) {
            return ResponseClass::Accepted;
        }
        let named = |list: &[StatusMatch], exact: bool| {
            list.iter()
                .any(|m| matches!(m, StatusMatch::Status(_)) == exact && m.matches(status))
        };
        let on = self.on_status.as_deref().unwrap_or_default();
        for exact in [true, false] {
            if named(&self.never_on_status, exact) {
                return ResponseClass::Permanent;
            }
            if named(on, exact) {
                return ResponseClass::Transient;
            }
        }
        match status {
            409 => ResponseClass::AlreadyRunning,
            408 | 429 | 500..=599 if self.on_status.is_none() => ResponseClass::Transient,
            _ => ResponseClass::Permanent,
        }
    }

    /// Whether a failure the downstream reported with `code` (or marked `retryable`) is
    /// dispatched again.
    pub fn retries_error(&self, code: Option<&str>, retryable: bool) -> bool {
        retryable || code.is_some_and(|code| self.on_errors.iter().any(|named| named == code))
    }

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
                ..RetryPolicy::default()
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
