//! When a trigger fires: a cron expression read on the wall clock of an IANA time zone, a fixed
//! interval from an anchor, or a single instant. The engine asks one question of a schedule,
//! [`Schedule::next_after`].
//!
//! # Cron expressions
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six (a `second` field first), or
//! one of `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. A field
//! is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to the field's
//! maximum), or a comma-separated list of these. Months also take `JAN`–`DEC` and weekdays
//! `SUN`–`SAT`; weekdays 0 and 7 are both Sunday. `L`, `W`, `#` and `?` are not supported. When
//! both day fields are restricted (neither is exactly `*`), a day matches if either field does,
//! as in POSIX cron; otherwise the restricted one decides.
//!
//! # Wall clock and daylight saving
//!
//! Fire times are whole seconds; a five-field expression fires at second 0.
//!
//! - A wall-clock time that the clocks skip when they go forward fires once, at the first instant
//!   after the gap (the transition itself). All the skipped matches of that night collapse into
//!   this one fire, and a match on the wall-clock time right after the gap (03:00 in Berlin) is
//!   the same instant, so it does not fire twice.
//! - A wall-clock time that happens twice when the clocks go back fires on its first pass only,
//!   unless the hour field is `*` or a step (contains `/`): then it fires on both passes, so
//!   `*/15 * * * *` keeps firing every 15 minutes through the repeated hour (Vixie cron's rule).
//!
//! `croner` only says which wall-clock times match: it is searched on a UTC clock, which never
//! jumps, and this module maps wall-clock times to instants. Croner's own time-zone search keys
//! both rules on whether second, minute *and* hour are single values, and skips gap matches of
//! every other expression, so it cannot express the rules above.

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::Span;

/// When a trigger fires: a cron expression in a time zone, a fixed interval from an anchor, or once.
#[derive(Debug, Clone)]
pub struct Schedule(Kind);

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is not valid; the message says what is wrong (which field, which value), e.g.
    /// "the minute field `61` is out of range 0-59" or "a cron expression has 5 or 6 fields, got 4".
    #[error("{0}")]
    Expression(String),
    /// Not an IANA time zone name.
    #[error("unknown time zone `{0}`; use an IANA name like `Europe/Berlin` or `UTC`")]
    TimeZone(String),
    /// An interval of zero (or below 1s).
    #[error("{0}")]
    Interval(String),
}

#[derive(Debug, Clone)]
enum Kind {
    // Boxed: a parsed pattern is several hundred bytes, the other variants a few dozen.
    Cron(Box<CronSchedule>),
    Interval {
        every: Duration,
        anchor: DateTime<Utc>,
    },
    Once(DateTime<Utc>),
}

impl Schedule {
    /// `expression`: 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), or an
    /// alias @yearly @annually @monthly @weekly @daily @midnight @hourly. `timezone`: IANA name.
    ///
    /// See the module documentation for the syntax and for what happens when daylight saving
    /// skips or repeats a matching wall-clock time.
    pub fn cron(expression: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let zone: Tz = timezone
            .parse()
            .map_err(|_| ScheduleError::TimeZone(timezone.to_owned()))?;
        Ok(Schedule(Kind::Cron(Box::new(CronSchedule::parse(
            expression, zone,
        )?))))
    }

    /// Every `every` (at least 1s), at anchor + k·every for k ≥ 0.
    pub fn interval(every: Span, anchor: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
        if every.as_duration() < Duration::from_secs(1) {
            return Err(ScheduleError::Interval(format!(
                "an interval must be at least 1s, got {every}"
            )));
        }
        Ok(Schedule(Kind::Interval {
            every: every.as_duration(),
            anchor,
        }))
    }

    /// Once, at `at`.
    pub fn once(at: DateTime<Utc>) -> Schedule {
        Schedule(Kind::Once(at))
    }

    /// False for a cron expression no date can match, like 30 February or 31 April: it never
    /// fires, whenever it is asked.
    pub fn can_fire(&self) -> bool {
        match &self.0 {
            Kind::Cron(cron) => cron.satisfiable,
            Kind::Interval { .. } | Kind::Once(_) => true,
        }
    }

    /// The first fire time strictly after `after`, or `None` when there is none: a `once` at or
    /// before `after`, or a cron expression with no fire within about five years of `after`
    /// (30 February never comes; 29 February skips 2100).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.0 {
            Kind::Cron(cron) => cron.next_after(after),
            Kind::Interval { every, anchor } => next_interval(*every, *anchor, after),
            Kind::Once(at) => (*at > after).then_some(*at),
        }
    }
}

fn next_interval(
    every: Duration,
    anchor: DateTime<Utc>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if after < anchor {
        return Some(anchor);
    }
    // Nanoseconds in i128: exact for any anchor and interval chrono can represent.
    const NANOS: i128 = 1_000_000_000;
    let nanos = |t: DateTime<Utc>| {
        i128::from(t.timestamp()) * NANOS + i128::from(t.timestamp_subsec_nanos())
    };
    let every = i128::try_from(every.as_nanos()).ok()?;
    let steps = (nanos(after) - nanos(anchor)) / every + 1;
    let offset = steps.checked_mul(every)?;
    let delta = TimeDelta::new(
        i64::try_from(offset / NANOS).ok()?,
        u32::try_from(offset % NANOS).ok()?,
    )?;
    anchor.checked_add_signed(delta)
}

/// How many years past `after` a cron search looks before it concludes that nothing fires:
/// enough for any 29 February except across 2100.
pub(crate) const HORIZON_YEARS: i64 = 5;

/// [`HORIZON_YEARS`] in seconds, a little over.
const HORIZON_SECS: i64 = HORIZON_YEARS * 366 * 86_400;

/// The spacing at which a search probes the zone's UTC offset. No zone changes its offset twice
/// within a day, so a change between two probes is found by bisection.
const PROBE_SECS: i64 = 86_400;

/// A cron expression on the wall clock of one zone.
#[derive(Debug, Clone)]
struct CronSchedule {
    /// Says which wall-clock times match. It is only ever searched with wall-clock times written
    /// as UTC date-times, a clock without gaps or repeats.
    wall: Cron,
    zone: Tz,
    repeats: Repeats,
    /// False when the day fields can never match, like 30 February: croner would search until
    /// the year 5000 (tens of milliseconds) before giving up.
    satisfiable: bool,
}

/// Which passes of a wall-clock time repeated by a fall-back transition fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeats {
    /// The hour field is fixed (a value, list or range): fire on the first pass only.
    FirstPass,
    /// The hour field is `*` or a step: fire on both passes.
    BothPasses,
}

impl CronSchedule {
    fn parse(expression: &str, zone: Tz) -> Result<Self, ScheduleError> {
        let fields = normalize(expression)?;
        let hour = &fields[2];
        let repeats = if hour == "*" || hour.contains('/') {
            Repeats::BothPasses
        } else {
            Repeats::FirstPass
        };
        let wall = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(&fields.join(" "))
            .map_err(|error| {
                // `normalize` has already refused everything croner refuses.
                ScheduleError::Expression(format!(
                    "`{expression}` is not a valid cron expression: {error}"
                ))
            })?;
        let satisfiable = can_match_some_day(&wall);
        Ok(Self {
            wall,
            zone,
            repeats,
            satisfiable,
        })
    }

    /// Walks the UTC time line one stretch of constant offset at a time. In each stretch the wall
    /// clock is the UTC clock shifted by the offset, so croner's next wall-clock match maps
    /// straight to an instant, unless that instant lies past the stretch's end: then the search
    /// settles the gap at the change (if the clocks went forward) and goes on from there.
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.satisfiable {
            return None;
        }
        let limit = after.timestamp().checked_add(HORIZON_SECS)?;
        // Every instant the search touches lies within a day of `after` and `limit`; checking
        // both ends once keeps `instant` below from ever falling back.
        DateTime::from_timestamp(after.timestamp().checked_sub(2 * 86_400)?, 0)?;
        DateTime::from_timestamp(limit.checked_add(2 * 86_400)?, 0)?;
        // `timestamp` rounds down, so every whole second from here is strictly after `after`.
        let mut from = after.timestamp() + 1;
        let (before, offset) = (self.offset_at(from - 1), self.offset_at(from));
        if before < offset && self.next_wall(from + before)? < from + offset {
            // The clocks went forward at `from` itself, past a matching wall-clock time: the
            // loop below only looks at gaps ahead of where it starts.
            return Some(instant(from));
        }
        loop {
            let offset = self.offset_at(from);
            let mut from_wall = from + offset;
            if self.repeats == Repeats::FirstPass
                && let Some(end) = self.second_pass_end(from, offset)
            {
                from_wall = from_wall.max(end);
            }
            let wall = self.next_wall(from_wall)?;
            let fire = wall - offset;
            let Some(change) = self.first_change(from, fire.min(limit), offset) else {
                return (fire <= limit).then(|| instant(fire));
            };
            let next_offset = self.offset_at(change);
            if next_offset > offset && wall < change + next_offset {
                // The match lies in the wall-clock times the clocks skipped.
                return Some(instant(change));
            }
            from = change;
        }
    }

    /// The zone's UTC offset at an instant, in seconds.
    fn offset_at(&self, at: i64) -> i64 {
        let offset = self.zone.offset_from_utc_datetime(&instant(at).naive_utc());
        i64::from(offset.fix().local_minus_utc())
    }

    /// The first matching wall-clock time at or after `from`, both as UTC-clock seconds.
    fn next_wall(&self, from: i64) -> Option<i64> {
        self.wall
            .find_next_occurrence(&instant(from), true)
            .ok()
            .map(|found| found.timestamp())
    }

    /// The first instant in `(from, to]` whose offset differs from `offset`, the offset at `from`.
    fn first_change(&self, from: i64, to: i64, offset: i64) -> Option<i64> {
        let mut low = from;
        while low < to {
            let probe = (low + PROBE_SECS).min(to);
            if self.offset_at(probe) != offset {
                // One change in `(low, high]`: bisect to its first second.
                let mut high = probe;
                while high - low > 1 {
                    let middle = low + (high - low) / 2;
                    if self.offset_at(middle) == offset {
                        low = middle;
                    } else {
                        high = middle;
                    }
                }
                return Some(high);
            }
            low = probe;
        }
        None
    }

    /// If the wall-clock time at `at` (whose offset is `offset`) is on the second pass of a
    /// repeated range, the wall-clock time at which the repeat ends.
    fn second_pass_end(&self, at: i64, offset: i64) -> Option<i64> {
        let local = self.zone.offset_from_local_datetime(&naive(at + offset));
        let LocalResult::Ambiguous(first_pass, _) = local else {
            return None;
        };
        let first_offset = i64::from(first_pass.fix().local_minus_utc());
        if first_offset <= offset {
            return None;
        }
        // The clocks went back between the first pass of this wall-clock time and `at`.
        let change = self.first_change(at + offset - first_offset, at, first_offset)?;
        Some(change + first_offset)
    }
}

/// Whether some calendar day matches the day-of-month, month and day-of-week fields.
fn can_match_some_day(cron: &Cron) -> bool {
    let pattern = &cron.pattern;
    // A restricted weekday comes round every week, whether on its own or or-ed with the day of
    // the month.
    if !pattern.is_dow_wildcard() {
        return true;
    }
    let days = pattern.days.values();
    pattern.months.values().iter().any(|&month| {
        let longest = match month {
            2 => 29,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        days.iter().any(|&day| day <= longest)
    })
}

/// The UTC date-time `secs` seconds after the epoch. Callers stay in the range `next_after`
/// checks up front; the fallback is never taken.
fn instant(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn naive(secs: i64) -> NaiveDateTime {
    instant(secs).naive_utc()
}

/// One field of a cron expression: its name in messages, its range and its names, if any.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, …
    names: &'static [&'static str],
}

const FIELDS: [Field; 6] = [
    Field {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    },
];

const ALIASES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Checks an expression and rewrites it as six numeric fields that croner reads the way the
/// module documentation says: names become numbers, `a/n` becomes `a-max/n`, `*` in a list
/// becomes `min-max`, and a missing second field becomes `0`.
fn normalize(expression: &str) -> Result<Vec<String>, ScheduleError> {
    let expression = expression.trim();
    let expanded = if expression.starts_with('@') {
        ALIASES
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(expression))
            .map(|(_, fields)| *fields)
            .ok_or_else(|| {
                ScheduleError::Expression(format!(
                    "unknown alias `{expression}`; use @yearly, @annually, @monthly, @weekly, \
                     @daily, @midnight or @hourly"
                ))
            })?
    } else {
        expression
    };
    let mut fields: Vec<&str> = expanded.split_whitespace().collect();
    match fields.len() {
        5 => fields.insert(0, "0"),
        6 => {}
        count => {
            return Err(ScheduleError::Expression(format!(
                "a cron expression has 5 or 6 fields, got {count}: \
                 [second] minute hour day-of-month month day-of-week"
            )));
        }
    }
    FIELDS
        .iter()
        .zip(fields)
        .map(|(field, text)| field.normalize(text))
        .collect()
}

impl Field {
    fn normalize(&self, text: &str) -> Result<String, ScheduleError> {
        // A lone `*` stays as it is: it is what marks a day field as unrestricted.
        if text == "*" {
            return Ok(text.to_owned());
        }
        let items = text
            .split(',')
            .map(|item| self.normalize_item(text, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(items.join(","))
    }

    fn normalize_item(&self, text: &str, item: &str) -> Result<String, ScheduleError> {
        if item.is_empty() {
            return Err(self.error(text, text, "has an empty list item"));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(0) => return Err(self.error(text, item, "has a step of zero")),
                Ok(step) if !range.is_empty() => (range, Some(step)),
                _ => {
                    return Err(self.error(
                        text,
                        item,
                        "is not a valid step; write it like `*/5`, `10-40/5` or `10/5`",
                    ));
                }
            },
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (self.min, self.max)
        } else if let Some((start, end)) = range.split_once('-') {
            if start.is_empty() || end.is_empty() {
                return Err(self.error(text, item, "is not a valid range; write it like `1-5`"));
            }
            let start = self.value(text, start)?;
            let mut end = self.value(text, end)?;
            if self.name == "day-of-week" && end == 0 && start > 0 {
                // `FRI-SUN`: Sunday ends a range as 7.
                end = 7;
            }
            if start > end {
                return Err(self.error(
                    text,
                    item,
                    "is a reversed range; write the smaller value first",
                ));
            }
            (start, end)
        } else {
            let value = self.value(text, range)?;
            (value, if step.is_some() { self.max } else { value })
        };
        Ok(match step {
            Some(step) => format!("{start}-{end}/{step}"),
            None if start == end => start.to_string(),
            None => format!("{start}-{end}"),
        })
    }

    fn value(&self, text: &str, token: &str) -> Result<u32, ScheduleError> {
        if !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_digit()) {
            return match token.parse::<u32>() {
                Ok(value) if (self.min..=self.max).contains(&value) => Ok(value),
                _ => Err(self.error(
                    text,
                    token,
                    &format!("is out of range {}-{}", self.min, self.max),
                )),
            };
        }
        if let Some(index) = self
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(token))
        {
            return Ok(self.min + u32::try_from(index).unwrap_or(u32::MAX));
        }
        let mut problem = match self.names {
            [] => "is not a number".to_owned(),
            names => format!(
                "is not a number or a {} name ({}-{})",
                if self.name == "month" {
                    "month"
                } else {
                    "weekday"
                },
                names[0],
                names[names.len() - 1],
            ),
        };
        if token.contains(['L', 'W', '#', '?']) && self.name.starts_with("day") {
            problem.push_str("; `L`, `W`, `#` and `?` are not supported");
        }
        Err(self.error(text, token, &problem))
    }

    /// "the minute field `61` is out of range 0-59", or with a list or range,
    /// "the minute field `5,61` has `61`, which is out of range 0-59".
    fn error(&self, text: &str, part: &str, problem: &str) -> ScheduleError {
        ScheduleError::Expression(if part == text {
            format!("the {} field `{text}` {problem}", self.name)
        } else {
            format!(
                "the {} field `{text}` has `{part}`, which {problem}",
                self.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chrono::{Datelike, SecondsFormat, Timelike};
    use proptest::prelude::*;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("test instants are RFC 3339")
    }

    fn cron(expression: &str, zone: &str) -> Schedule {
        Schedule::cron(expression, zone).expect("the test expression is valid")
    }

    /// The next `count` fire times after `from`, as RFC 3339 UTC strings.
    fn fires(schedule: &Schedule, from: &str, count: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = at(from);
        while out.len() < count {
            let Some(next) = schedule.next_after(after) else {
                break;
            };
            out.push(next.to_rfc3339_opts(SecondsFormat::Secs, true));
            after = next;
        }
        out
    }

    fn expression_error(expression: &str) -> String {
        match Schedule::cron(expression, "UTC") {
            Err(ScheduleError::Expression(message)) => message,
            other => panic!("`{expression}` should be refused as an expression, got {other:?}"),
        }
    }

    #[test]
    fn a_cron_without_seconds_is_accepted_and_fires_at_second_zero() {
        let schedule = cron("*/20 9 * * *", "UTC");
        assert_eq!(
            fires(&schedule, "2026-05-04T09:10:30Z", 4),
            [
                "2026-05-04T09:20:00Z",
                "2026-05-04T09:40:00Z",
                "2026-05-05T09:00:00Z",
                "2026-05-05T09:20:00Z",
            ]
        );
    }

    #[test]
    fn a_cron_with_seconds_fires_on_its_seconds() {
        let schedule = cron("15,45 */30 * * * *", "UTC");
        assert_eq!(
            fires(&schedule, "2026-05-04T09:00:15Z", 4),
            [
                "2026-05-04T09:00:45Z",
                "2026-05-04T09:30:15Z",
                "2026-05-04T09:30:45Z",
                "2026-05-04T10:00:15Z",
            ]
        );
        // `a/n` runs from `a` to the end of the field.
        let schedule = cron("50/5 0 0 * * *", "UTC");
        assert_eq!(
            fires(&schedule, "2026-05-04T00:00:00Z", 3),
            [
                "2026-05-04T00:00:50Z",
                "2026-05-04T00:00:55Z",
                "2026-05-05T00:00:50Z"
            ]
        );
    }

    #[test]
    fn sub_second_parts_of_after_are_truncated_so_fires_stay_strictly_later() {
        let schedule = cron("* * * * * *", "UTC");
        for (after, next) in [
            ("2026-05-04T12:00:00Z", "2026-05-04T12:00:01Z"),
            ("2026-05-04T12:00:00.5Z", "2026-05-04T12:00:01Z"),
            ("2026-05-04T11:59:59.999999999Z", "2026-05-04T12:00:00Z"),
        ] {
            assert_eq!(
                schedule.next_after(at(after)),
                Some(at(next)),
                "after {after}"
            );
        }
    }

    #[test]
    fn aliases_expand_to_their_five_field_forms() {
        let from = "2026-05-04T10:30:00Z";
        for (alias, plain) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@HOURLY", "0 * * * *"),
        ] {
            assert_eq!(
                fires(&cron(alias, "Europe/Berlin"), from, 3),
                fires(&cron(plain, "Europe/Berlin"), from, 3),
                "{alias}"
            );
        }
        assert_eq!(
            fires(&cron("@weekly", "UTC"), from, 1),
            ["2026-05-10T00:00:00Z"] // a Sunday
        );
    }

    #[test]
    fn month_and_weekday_names_mean_their_numbers() {
        let from = "2026-01-01T00:00:00Z";
        assert_eq!(
            fires(&cron("0 9 * jan-MAR Mon-Fri", "UTC"), from, 40),
            fires(&cron("0 9 * 1-3 1-5", "UTC"), from, 40)
        );
        // Sunday ends a range as 7, and 7 is Sunday.
        assert_eq!(
            fires(&cron("0 9 * * FRI-SUN", "UTC"), from, 9),
            fires(&cron("0 9 * * 5-7", "UTC"), from, 9)
        );
        assert_eq!(
            fires(&cron("0 9 * * 7", "UTC"), from, 3),
            fires(&cron("0 9 * * 0", "UTC"), from, 3)
        );
    }

    #[test]
    fn restricting_both_day_fields_matches_either_of_them() {
        // The 13th, or any Friday (POSIX cron); February 2026 starts on a Sunday.
        let schedule = cron("0 0 13 * FRI", "UTC");
        assert_eq!(
            fires(&schedule, "2026-02-01T00:00:00Z", 5),
            [
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
                "2026-02-20T00:00:00Z",
                "2026-02-27T00:00:00Z",
                "2026-03-06T00:00:00Z",
            ]
        );
        // With one day field `*`, the other decides alone.
        assert_eq!(
            fires(&cron("0 0 13 * *", "UTC"), "2026-02-01T00:00:00Z", 1),
            ["2026-02-13T00:00:00Z"]
        );
    }

    #[test]
    fn a_bad_field_is_refused_naming_the_field_and_the_value() {
        for (expression, message) in [
            ("61 * * * *", "the minute field `61` is out of range 0-59"),
            (
                "0,61 * * * *",
                "the minute field `0,61` has `61`, which is out of range 0-59",
            ),
            ("0 24 * * *", "the hour field `24` is out of range 0-23"),
            (
                "0 0 0 * *",
                "the day-of-month field `0` is out of range 1-31",
            ),
            (
                "0 0 * 1-13 *",
                "the month field `1-13` has `13`, which is out of range 1-12",
            ),
            ("0 0 * * 8", "the day-of-week field `8` is out of range 0-7"),
            ("60 * * * * *", "the second field `60` is out of range 0-59"),
            ("*/0 * * * *", "the minute field `*/0` has a step of zero"),
            (
                "30-10 * * * *",
                "the minute field `30-10` is a reversed range; write the smaller value first",
            ),
            (
                "1,,2 * * * *",
                "the minute field `1,,2` has an empty list item",
            ),
            (
                "0 0 * FOO *",
                "the month field `FOO` is not a number or a month name (JAN-DEC)",
            ),
            (
                "0 0 L * *",
                "the day-of-month field `L` is not a number; `L`, `W`, `#` and `?` are not supported",
            ),
            (
                "0 0 * * 1#2",
                "the day-of-week field `1#2` is not a number or a weekday name (SUN-SAT); \
                 `L`, `W`, `#` and `?` are not supported",
            ),
            ("x * * * *", "the minute field `x` is not a number"),
            (
                "0 -5 * * *",
                "the hour field `-5` is not a valid range; write it like `1-5`",
            ),
            (
                "0 0 1-5-7 * *",
                "the day-of-month field `1-5-7` has `5-7`, which is not a number",
            ),
            (
                "/5 * * * *",
                "the minute field `/5` is not a valid step; write it like `*/5`, `10-40/5` or `10/5`",
            ),
        ] {
            assert_eq!(expression_error(expression), message, "{expression}");
        }
    }

    #[test]
    fn an_expression_has_five_or_six_fields_or_is_an_alias() {
        for (expression, count) in [
            ("* * * *", 4),
            ("0 0 0 * * * 2026", 7),
            ("* * * * * * * *", 8),
            ("", 0),
        ] {
            assert_eq!(
                expression_error(expression),
                format!(
                    "a cron expression has 5 or 6 fields, got {count}: \
                     [second] minute hour day-of-month month day-of-week"
                )
            );
        }
        assert!(expression_error("@fortnightly").starts_with("unknown alias `@fortnightly`"));
    }

    #[test]
    fn an_unknown_time_zone_is_refused() {
        for zone in ["Europe/Atlantis", "CEST+2", "europe/berlin", ""] {
            let error = Schedule::cron("* * * * *", zone).expect_err("not an IANA name");
            assert_eq!(error, ScheduleError::TimeZone(zone.to_owned()));
        }
        assert_eq!(
            ScheduleError::TimeZone("Mars/Olympus".into()).to_string(),
            "unknown time zone `Mars/Olympus`; use an IANA name like `Europe/Berlin` or `UTC`"
        );
    }

    #[test]
    fn a_date_that_never_exists_has_no_next_fire_time_and_the_search_ends_quickly() {
        let after = at("2026-01-01T00:00:00Z");
        for expression in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 30-31 2 *"] {
            let started = Instant::now();
            assert_eq!(cron(expression, "Europe/Berlin").next_after(after), None);
            assert!(started.elapsed().as_millis() < 50, "{expression}");
        }
        // 29 February exists, though not every year.
        assert_eq!(
            fires(
                &cron("0 12 29 2 *", "Europe/Berlin"),
                "2026-01-01T00:00:00Z",
                2
            ),
            ["2028-02-29T11:00:00Z", "2032-02-29T11:00:00Z"]
        );
        // The search stops about five years ahead: 2100 is no leap year.
        assert_eq!(
            cron("0 0 29 2 *", "UTC").next_after(at("2096-03-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn an_interval_fires_at_the_anchor_and_every_multiple_after_it() {
        let anchor = at("2026-05-04T10:00:00.250Z");
        let every = |text: &str| {
            Schedule::interval(text.parse().expect("a test span"), anchor)
                .expect("a positive interval")
        };
        let five = every("5m");
        // An anchor in the future is the first fire.
        assert_eq!(five.next_after(at("2026-05-01T00:00:00Z")), Some(anchor));
        assert_eq!(
            five.next_after(anchor - TimeDelta::nanoseconds(1)),
            Some(anchor)
        );
        // At or after the anchor: the next multiple, strictly later.
        assert_eq!(
            five.next_after(anchor),
            Some(at("2026-05-04T10:05:00.250Z"))
        );
        assert_eq!(
            five.next_after(at("2026-05-04T10:07:00Z")),
            Some(at("2026-05-04T10:10:00.250Z"))
        );
        assert_eq!(
            five.next_after(at("2026-05-04T10:10:00.250Z")),
            Some(at("2026-05-04T10:15:00.250Z"))
        );
        assert_eq!(
            every("1500ms").next_after(at("2026-05-04T10:00:01Z")),
            Some(at("2026-05-04T10:00:01.750Z"))
        );
        assert_eq!(
            every("1h30m").next_after(at("2027-05-04T10:00:00Z")),
            Some(at("2027-05-04T10:00:00.250Z"))
        );
    }

    #[test]
    fn an_interval_below_one_second_is_refused() {
        let anchor = at("2026-05-04T10:00:00Z");
        assert_eq!(
            Schedule::interval(Span::from_secs(0), anchor).expect_err("zero"),
            ScheduleError::Interval("an interval must be at least 1s, got 0s".into())
        );
        assert_eq!(
            Schedule::interval(Span::from_millis(999), anchor).expect_err("below 1s"),
            ScheduleError::Interval("an interval must be at least 1s, got 999ms".into())
        );
        assert!(Schedule::interval(Span::from_secs(1), anchor).is_ok());
    }

    #[test]
    fn once_fires_only_before_its_time() {
        let when = at("2026-05-04T10:00:00.5Z");
        let once = Schedule::once(when);
        assert_eq!(once.next_after(at("2026-05-04T09:00:00Z")), Some(when));
        assert_eq!(
            once.next_after(when - TimeDelta::nanoseconds(1)),
            Some(when)
        );
        assert_eq!(once.next_after(when), None);
        assert_eq!(once.next_after(at("2026-05-04T11:00:00Z")), None);
    }

    #[test]
    fn berlin_spring_forward_moves_skipped_times_to_three_oclock_once() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
        let from = "2026-03-28T12:00:00Z";
        assert_eq!(
            fires(&cron("30 2 * * *", "Europe/Berlin"), from, 3),
            [
                "2026-03-29T01:00:00Z", // 03:00 CEST
                "2026-03-30T00:30:00Z",
                "2026-03-31T00:30:00Z",
            ]
        );
        // Four skipped matches collapse into one fire.
        assert_eq!(
            fires(&cron("*/15 2 * * *", "Europe/Berlin"), from, 3),
            [
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T00:15:00Z"
            ]
        );
        // 03:00 itself matches too: still one fire at the transition.
        assert_eq!(
            fires(
                &cron("0 */15 * * * *", "Europe/Berlin"),
                "2026-03-29T00:40:00Z",
                3
            ),
            [
                "2026-03-29T00:45:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:15:00Z"
            ]
        );
        // From the last second before the gap, the gap's fire is the very next second.
        assert_eq!(
            fires(
                &cron("30 2 * * *", "Europe/Berlin"),
                "2026-03-29T00:59:59.5Z",
                1
            ),
            ["2026-03-29T01:00:00Z"]
        );
        // The gap's edges: its last second still collapses, its first real second is itself.
        assert_eq!(
            fires(
                &cron("59 59 2 * * *", "Europe/Berlin"),
                "2026-03-28T12:00:00Z",
                2
            ),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:59:59Z"]
        );
        assert_eq!(
            fires(
                &cron("59 59 1 * * *", "Europe/Berlin"),
                "2026-03-28T12:00:00Z",
                1
            ),
            ["2026-03-29T00:59:59Z"]
        );
        // A wildcard hour has no 02:xx that night; its 03:00 fires once.
        assert_eq!(
            fires(
                &cron("*/30 * * * *", "Europe/Berlin"),
                "2026-03-29T00:00:00Z",
                4
            ),
            [
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-29T02:00:00Z"
            ]
        );
    }

    #[test]
    fn berlin_fall_back_fires_fixed_hours_once_and_wildcard_hours_twice() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC, so 02:00-02:59 happens twice.
        assert_eq!(
            fires(
                &cron("30 2 * * *", "Europe/Berlin"),
                "2026-10-24T12:00:00Z",
                2
            ),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        assert_eq!(
            fires(
                &cron("*/15 2 * * *", "Europe/Berlin"),
                "2026-10-24T12:00:00Z",
                5
            ),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-26T01:00:00Z"
            ]
        );
        for wildcard_hour in ["*/30 * * * *", "0,30 */1 * * *"] {
            assert_eq!(
                fires(
                    &cron(wildcard_hour, "Europe/Berlin"),
                    "2026-10-24T23:10:00Z",
                    6
                ),
                [
                    "2026-10-24T23:30:00Z", // 01:30 CEST
                    "2026-10-25T00:00:00Z", // 02:00 CEST
                    "2026-10-25T00:30:00Z", // 02:30 CEST
                    "2026-10-25T01:00:00Z", // 02:00 CET
                    "2026-10-25T01:30:00Z", // 02:30 CET
                    "2026-10-25T02:00:00Z", // 03:00 CET
                ],
                "{wildcard_hour}"
            );
        }
        // Starting on the second pass: a fixed hour waits for the next day, a wildcard does not.
        assert_eq!(
            fires(
                &cron("30 2 * * *", "Europe/Berlin"),
                "2026-10-25T01:10:00Z",
                1
            ),
            ["2026-10-26T01:30:00Z"]
        );
        assert_eq!(
            fires(
                &cron("30 * * * *", "Europe/Berlin"),
                "2026-10-25T01:10:00Z",
                1
            ),
            ["2026-10-25T01:30:00Z"]
        );
        // Starting on the first pass, a wildcard hour's next fire is still on the first pass.
        assert_eq!(
            fires(
                &cron("*/15 * * * *", "Europe/Berlin"),
                "2026-10-25T00:10:00Z",
                1
            ),
            ["2026-10-25T00:15:00Z"]
        );
    }

    #[test]
    fn new_york_transitions_follow_the_same_rules() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
        assert_eq!(
            fires(
                &cron("30 2 * * *", "America/New_York"),
                "2026-03-07T12:00:00Z",
                2
            ),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
        );
        // 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC, so 01:00-01:59 happens twice.
        assert_eq!(
            fires(
                &cron("30 1 * * *", "America/New_York"),
                "2026-10-31T12:00:00Z",
                2
            ),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        assert_eq!(
            fires(
                &cron("*/30 * * * *", "America/New_York"),
                "2026-11-01T04:50:00Z",
                5
            ),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn lord_howe_half_hour_transitions_follow_the_same_rules() {
        // 2026-04-05: 02:00 (+11) becomes 01:30 (+10:30) at 15:00 UTC the day before.
        assert_eq!(
            fires(
                &cron("45 1 * * *", "Australia/Lord_Howe"),
                "2026-04-04T12:00:00Z",
                2
            ),
            ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"]
        );
        assert_eq!(
            fires(
                &cron("*/15 * * * *", "Australia/Lord_Howe"),
                "2026-04-04T14:20:00Z",
                5
            ),
            [
                "2026-04-04T14:30:00Z", // 01:30 (+11)
                "2026-04-04T14:45:00Z", // 01:45 (+11)
                "2026-04-04T15:00:00Z", // 01:30 (+10:30)
                "2026-04-04T15:15:00Z", // 01:45 (+10:30)
                "2026-04-04T15:30:00Z", // 02:00 (+10:30)
            ]
        );
        // 2026-10-04: 02:00 (+10:30) becomes 02:30 (+11) at 15:30 UTC the day before.
        assert_eq!(
            fires(
                &cron("15 2 * * *", "Australia/Lord_Howe"),
                "2026-10-03T12:00:00Z",
                2
            ),
            ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]
        );
        assert_eq!(
            fires(
                &cron("*/15 * * * *", "Australia/Lord_Howe"),
                "2026-10-03T15:00:00Z",
                3
            ),
            [
                "2026-10-03T15:15:00Z", // 01:45 (+10:30)
                "2026-10-03T15:30:00Z", // 02:00 and 02:15 skipped, and 02:30 (+11) itself
                "2026-10-03T15:45:00Z", // 02:45 (+11)
            ]
        );
    }

    #[test]
    fn next_after_takes_microseconds() {
        // Generous bounds: this runs unoptimised, next to other tests.
        let after = at("2026-03-01T00:00:00Z");
        for (expression, budget_micros) in [
            ("*/15 * * * *", 2_000),
            ("0 0 1 1 *", 20_000),
            ("0 12 29 2 *", 20_000),
        ] {
            let schedule = cron(expression, "Europe/Berlin");
            let started = Instant::now();
            for _ in 0..20 {
                assert!(schedule.next_after(after).is_some());
            }
            let each = started.elapsed().as_micros() / 20;
            assert!(each < budget_micros, "{expression}: {each}µs per call");
        }
    }

    // ---- property tests -------------------------------------------------------------------

    /// An independent reading of the rules: walks UTC minute by minute, converts each minute to
    /// the zone's wall clock with chrono-tz and matches the fields with its own field reader.
    struct Oracle {
        seconds: Vec<u32>,
        minutes: Vec<bool>,
        hours: Vec<bool>,
        days: Vec<bool>,
        months: Vec<bool>,
        weekdays: Vec<bool>,
        either_day: bool,
        both_passes: bool,
        zone: Tz,
    }

    /// The values a field selects, 7 in the day-of-week field folded onto Sunday.
    fn select(field: &str, min: u32, max: u32) -> Vec<bool> {
        let mut selected = vec![false; max as usize + 1];
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, step.parse().expect("generated step")),
                None => (item, 1),
            };
            let (start, end) = match range.split_once('-') {
                _ if range == "*" => (min, max),
                Some((start, end)) => (
                    start.parse().expect("generated value"),
                    end.parse().expect("generated value"),
                ),
                None => {
                    let value = range.parse().expect("generated value");
                    (value, if item.contains('/') { max } else { value })
                }
            };
            for value in (start..=end).step_by(step) {
                selected[value as usize] = true;
            }
        }
        selected
    }

    impl Oracle {
        fn new(expression: &str, zone: &str) -> Self {
            let mut fields: Vec<&str> = expression.split(' ').collect();
            if fields.len() == 5 {
                fields.insert(0, "0");
            }
            let mut weekdays = select(fields[5], 0, 7);
            weekdays[0] |= weekdays[7];
            weekdays.truncate(7);
            let seconds = select(fields[0], 0, 59);
            Self {
                seconds: (0..60).filter(|&s| seconds[s as usize]).collect(),
                minutes: select(fields[1], 0, 59),
                hours: select(fields[2], 0, 23),
                days: select(fields[3], 1, 31),
                months: select(fields[4], 1, 12),
                weekdays,
                either_day: fields[3] != "*" && fields[5] != "*",
                both_passes: fields[2] == "*" || fields[2].contains('/'),
                zone: zone.parse().expect("a test zone"),
            }
        }

        fn minute_matches(&self, wall: NaiveDateTime) -> bool {
            let day = self.days[wall.day() as usize];
            let weekday = self.weekdays[wall.weekday().num_days_from_sunday() as usize];
            let day_matches = if self.either_day {
                day || weekday
            } else {
                day && weekday
            };
            day_matches
                && self.months[wall.month() as usize]
                && self.hours[wall.hour() as usize]
                && self.minutes[wall.minute() as usize]
        }

        fn offset(&self, secs: i64) -> i64 {
            let offset = self
                .zone
                .offset_from_utc_datetime(&naive(secs))
                .fix()
                .local_minus_utc();
            assert_eq!(offset % 60, 0, "the oracle needs whole-minute offsets");
            i64::from(offset)
        }

        /// Fire times in `(after, until]`, as UTC seconds.
        fn fires(&self, after: i64, until: i64) -> Vec<i64> {
            // Start a day early, so that a window opening on a second pass knows it is one.
            let first = (after - 86_400).div_euclid(60) * 60;
            let mut previous = self.offset(first - 60);
            let mut repeated_until = i64::MIN;
            let mut out = Vec::new();
            for minute in (first..=until).step_by(60) {
                let offset = self.offset(minute);
                if offset > previous {
                    // Clocks went forward: wall times [minute + previous, minute + offset) were skipped.
                    let skipped_match = (minute + previous..minute + offset)
                        .step_by(60)
                        .any(|wall| self.minute_matches(naive(wall)));
                    if skipped_match {
                        out.push(minute);
                    }
                } else if offset < previous {
                    repeated_until = minute + previous;
                }
                previous = offset;
                let wall = minute + offset;
                if wall < repeated_until && !self.both_passes {
                    continue;
                }
                if self.minute_matches(naive(wall)) {
                    out.extend(self.seconds.iter().map(|&s| minute + i64::from(s)));
                }
            }
            out.sort_unstable();
            out.dedup();
            out.retain(|&fire| fire > after && fire <= until);
            out
        }
    }

    /// Compares every fire of `expression` in `(start, start + window]` with the oracle's.
    fn agrees_with_the_oracle(
        expression: &str,
        zone: &str,
        start: DateTime<Utc>,
        window_secs: i64,
    ) -> Result<(), TestCaseError> {
        let schedule = Schedule::cron(expression, zone).expect("a generated expression");
        let until = start.timestamp() + window_secs;
        let expected = Oracle::new(expression, zone).fires(start.timestamp(), until);

        let mut actual = Vec::new();
        let mut after = start;
        while let Some(next) = schedule.next_after(after) {
            prop_assert!(next > after, "{next} is not after {after}");
            if next.timestamp() > until {
                break;
            }
            actual.push(next.timestamp());
            after = next;
        }
        if let Some(index) =
            (0..actual.len().max(expected.len())).find(|&i| actual.get(i) != expected.get(i))
        {
            let local: Tz = zone.parse().expect("a test zone");
            // Both agree before `index`, so neither is shorter than `index`.
            let show = |fires: &[i64]| -> Vec<String> {
                fires[index.saturating_sub(2)..(index + 3).min(fires.len())]
                    .iter()
                    .map(|&secs| instant(secs).with_timezone(&local).to_rfc3339())
                    .collect()
            };
            prop_assert!(
                false,
                "`{expression}` in {zone} after {start}: fire #{index} differs\n  \
                 next_after: {:?}\n  oracle:     {:?}",
                show(&actual),
                show(&expected),
            );
        }
        Ok(())
    }

    const ZONES: [&str; 4] = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
    ];

    /// A field of the given range; `hot` values (those near DST transitions) come up often.
    fn field(
        min: u32,
        max: u32,
        hot: &'static [u32],
        star_weight: u32,
    ) -> impl Strategy<Value = String> {
        let value = prop_oneof![proptest::sample::select(hot), min..=max];
        let item = prop_oneof![
            4 => value.clone().prop_map(|v| v.to_string()),
            2 => (value.clone(), 1..=3u32).prop_map(move |(start, length)| {
                format!("{start}-{}", (start + length).min(max))
            }),
            2 => (2..=(max - min).div_ceil(2)).prop_map(|step| format!("*/{step}")),
            1 => (value.clone(), 0..=(max - min), 2..=9u32).prop_map(move |(start, length, step)| {
                format!("{start}-{}/{step}", (start + length).min(max))
            }),
            1 => (value, 2..=20u32).prop_map(|(start, step)| format!("{start}/{step}")),
        ];
        prop_oneof![
            star_weight => Just("*".to_owned()),
            4 => item.clone(),
            2 => proptest::collection::vec(item, 2..=3).prop_map(|items| items.join(",")),
        ]
    }

    /// A cron expression whose fires per day stay bounded, so a year of them stays cheap. Hours
    /// and minutes favour the values next to transitions; `hot_days` and `day_star_weight` say
    /// how often the day fields pick the transition days (in March, April, October, November).
    fn expression(hot_days: &'static [u32], day_star_weight: u32) -> impl Strategy<Value = String> {
        (
            proptest::option::weighted(0.3, field(0, 59, &[0, 30, 59], 1)),
            field(0, 59, &[0, 15, 29, 30, 45, 59], 1),
            field(0, 23, &[0, 1, 2, 3], 2),
            field(1, 31, hot_days, day_star_weight),
            field(1, 12, &[3, 4, 10, 11], day_star_weight),
            field(0, 7, &[0, 6, 7], day_star_weight),
        )
            .prop_filter("too many fires per day", |(second, minute, hour, ..)| {
                let count = |field: &str, max| select(field, 0, max).iter().filter(|&&s| s).count();
                let seconds = second.as_deref().map_or(1, |field| count(field, 59));
                seconds * count(minute, 59) * count(hour, 23) <= 100
            })
            .prop_map(|(second, minute, hour, day, month, weekday)| {
                let five = format!("{minute} {hour} {day} {month} {weekday}");
                match second {
                    Some(second) => format!("{second} {five}"),
                    None => five,
                }
            })
    }

    /// The 2026 transitions of the test zones, and a day for UTC that has none.
    const TRANSITIONS: [(&str, &str); 7] = [
        ("Europe/Berlin", "2026-03-29T01:00:00Z"),
        ("Europe/Berlin", "2026-10-25T01:00:00Z"),
        ("America/New_York", "2026-03-08T07:00:00Z"),
        ("America/New_York", "2026-11-01T06:00:00Z"),
        ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
        ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
        ("UTC", "2026-03-29T01:00:00Z"),
    ];

    /// Instants within a few hours of a 2026 transition, or anywhere in the year after one.
    fn instant_near_transitions() -> impl Strategy<Value = DateTime<Utc>> {
        (
            proptest::sample::select(TRANSITIONS.map(|(_, transition)| at(transition)).to_vec()),
            prop_oneof![-4 * 3600..4 * 3600i64, 0..365 * 86_400i64],
            0..1_000_000_000u32,
        )
            .prop_map(|(base, secs, nanos)| {
                base + TimeDelta::seconds(secs) + TimeDelta::nanoseconds(i64::from(nanos))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn a_year_of_fires_equals_a_brute_force_walk_of_the_rules(
            expression in expression(&[1, 4, 5, 8, 25, 29, 31], 8),
            zone in proptest::sample::select(ZONES.to_vec()),
            start_secs in 0..365 * 86_400i64,
            start_nanos in 0..1_000_000_000u32,
        ) {
            // Any year-long window holds each of the zone's two transitions once.
            let start = at("2026-01-01T00:00:00Z")
                + TimeDelta::seconds(start_secs)
                + TimeDelta::nanoseconds(i64::from(start_nanos));
            agrees_with_the_oracle(&expression, zone, start, 365 * 86_400)?;
        }
    }

    proptest! {
        // These cases cost about a millisecond each.
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn fires_around_transitions_equal_a_brute_force_walk_of_the_rules(
            expression in expression(&[1, 3, 4, 5, 8, 25, 29], 30),
            (zone, transition) in proptest::sample::select(TRANSITIONS.to_vec()),
            start_secs in -3 * 86_400..86_400i64,
            start_nanos in 0..1_000_000_000u32,
        ) {
            let start = at(transition)
                + TimeDelta::seconds(start_secs)
                + TimeDelta::nanoseconds(i64::from(start_nanos));
            agrees_with_the_oracle(&expression, zone, start, 4 * 86_400)?;
        }

        #[test]
        fn next_after_is_strictly_later_monotonic_and_skips_nothing(
            expression in expression(&[1, 4, 5, 8, 25, 29, 31], 8),
            zone in proptest::sample::select(ZONES.to_vec()),
            earlier in instant_near_transitions(),
            gap_secs in prop_oneof![0..7200i64, 0..40 * 86_400i64],
            gap_nanos in 0..1_000_000_000u32,
        ) {
            let schedule = Schedule::cron(&expression, zone).expect("a generated expression");
            let later = earlier + TimeDelta::seconds(gap_secs) + TimeDelta::nanoseconds(i64::from(gap_nanos));
            let (first, second) = (schedule.next_after(earlier), schedule.next_after(later));
            let (Some(first), Some(second)) = (first, second) else {
                // Only a date that never comes (`31 6`) has no next fire, and then from neither.
                prop_assert_eq!(first, second);
                return Ok(());
            };
            prop_assert!(first > earlier && second > later);
            prop_assert!(first <= second, "next_after({earlier}) = {first} > next_after({later}) = {second}");
            if first > later {
                // No fire lies in (earlier, first), so none lies in (later, first) either.
                prop_assert_eq!(first, second);
            }
        }

        #[test]
        fn an_interval_fires_on_its_grid_and_skips_nothing(
            every_millis in 1_000..10 * 86_400_000u64,
            anchor in instant_near_transitions(),
            after in instant_near_transitions(),
        ) {
            let every = Span::from_millis(every_millis);
            let schedule = Schedule::interval(every, anchor).expect("at least 1s");
            let next = schedule.next_after(after).expect("within range");
            prop_assert!(next > after && next >= anchor);
            let step = TimeDelta::from_std(every.as_duration()).expect("small");
            let since_anchor = (next - anchor).num_nanoseconds().expect("small");
            prop_assert_eq!(since_anchor % step.num_nanoseconds().expect("small"), 0);
            // The grid point before `next` is not after `after` (or is before the anchor).
            prop_assert!(next == anchor || next - step <= after);
        }
    }
}
