//! Durations as people write them in job definitions and configuration: `250ms`, `30s`, `5m`,
//! `1h30m`, `2d`. Always a string on the wire, always printed in the same canonical form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written with units (`ms`, `s`, `m`, `h`, `d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpanError(String);

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Longest accepted duration: 365 days, far beyond any sensible timeout.
const MAX_MILLIS: u64 = 365 * 86_400_000;

impl Span {
    /// A span of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// A span of milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The span as a standard duration.
    pub const fn as_duration(&self) -> Duration {
        self.0
    }

    /// Whole milliseconds, as stored in the database.
    pub fn as_millis(&self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl From<Span> for Duration {
    fn from(span: Span) -> Self {
        span.0
    }
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(SpanError(
                "empty duration; write it like `30s`, `5m` or `1h30m`".into(),
            ));
        }
        let bad = || {
            SpanError(format!(
                "`{input}` is not a duration; write a number and a unit (ms, s, m, h, d), like `30s`, `5m` or `1h30m`"
            ))
        };
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            rest = rest.trim_start();
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let (_, scale) = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .ok_or_else(bad)?;
            total = number
                .checked_mul(*scale)
                .and_then(|ms| total.checked_add(ms))
                .filter(|ms| *ms <= MAX_MILLIS)
                .ok_or_else(|| SpanError(format!("`{input}` is longer than the 365d maximum")))?;
        }
        Ok(Self(Duration::from_millis(total)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in UNITS {
            if millis >= scale {
                write!(f, "{}{unit}", millis / scale)?;
                millis %= scale;
            }
        }
        Ok(())
    }
}

/// On the wire a span is a string such as `30s` or `1h30m`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Span {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^ *([0-9]+(ms|s|m|h|d) *)+$"))
            .description(Some(
                "A duration: whole numbers with units `ms`, `s`, `m`, `h`, `d`, like `250ms`, \
                 `30s` or `1h30m`; at most 365 days.",
            ))
            .examples(["30s"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Span {
    fn name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_forms_parse_to_the_expected_duration() {
        let cases = [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("2d", 172_800_000),
            ("1m30s500ms", 90_500),
        ];
        for (text, millis) in cases {
            assert_eq!(
                text.parse::<Span>(),
                Ok(Span::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (millis, text) in [
            (0, "0s"),
            (5_400_000, "1h30m"),
            (1_500, "1s500ms"),
            (86_400_000, "1d"),
        ] {
            let span = Span::from_millis(millis);
            assert_eq!(span.to_string(), text);
            assert_eq!(text.parse::<Span>(), Ok(span));
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_a_hint() {
        for text in ["", "30", "s", "5 minutes", "-5s", "1.5h", "10y", "400d"] {
            let err = text.parse::<Span>().expect_err(text);
            assert!(!err.to_string().is_empty());
        }
    }
}
