//! Exclusion calendars: named sets of periods in which a trigger's occurrences do not become
//! tasks (holidays, maintenance windows). [`CalendarInput`] is what a client sends; a
//! [`CalendarSpec`] exists only once every rule parses; [`Calendars`] answers which calendar, if
//! any, excludes an instant.
//!
//! # Wall clock and daylight saving
//!
//! Every rule is read on the wall clock of the calendar's time zone: an instant is excluded when
//! the local date and time it shows there fall in a rule. So a window `01:00`–`02:00` on the
//! night the clocks go back excludes both passes through that hour, and the local times the
//! clocks skip when they go forward exclude nothing (no instant shows them). A `cron` window
//! starts at each fire of its expression (with the fire rules of [`crate::schedule`]) and lasts
//! its `duration` of elapsed time.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
use crate::span::SpanError;
use crate::{Span, ValidationErrors};

/// Most exclusion rules one calendar holds.
pub const MAX_RULES: usize = 1000;
/// Most calendars one calendar includes, and one trigger names.
pub const MAX_REFERENCES: usize = 20;
/// The longest `cron` window.
pub const MAX_WINDOW: Span = Span::from_secs(31 * 86_400);

/// A calendar's name: 1–64 letters, digits, `.`, `_` and `-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CalendarName(String);

/// Why a calendar name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a calendar name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidCalendarName;

impl FromStr for CalendarName {
    type Err = InvalidCalendarName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if crate::validation::is_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidCalendarName)
        }
    }
}

impl CalendarName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CalendarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A day of the week.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    fn of(day: chrono::Weekday) -> Self {
        match day {
            chrono::Weekday::Mon => Weekday::Mon,
            chrono::Weekday::Tue => Weekday::Tue,
            chrono::Weekday::Wed => Weekday::Wed,
            chrono::Weekday::Thu => Weekday::Thu,
            chrono::Weekday::Fri => Weekday::Fri,
            chrono::Weekday::Sat => Weekday::Sat,
            chrono::Weekday::Sun => Weekday::Sun,
        }
    }
}

/// One excluded period of a calendar, as written and as stored. Dates and times are local to the
/// calendar's time zone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Exclusion {
    /// One whole day.
    Date {
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", example = "2026-12-25")
        )]
        date: String,
    },
    /// Every day from `from` to `to`, both included.
    DateRange {
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", example = "2026-12-24")
        )]
        from: String,
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", example = "2026-12-31")
        )]
        to: String,
    },
    /// The same day every year, written `--MM-DD`; `--02-29` excludes only leap days.
    Yearly {
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^--[0-9]{2}-[0-9]{2}$", example = "--12-25")
        )]
        date: String,
    },
    /// Whole days of the week.
    Weekdays {
        #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 7))]
        days: Vec<Weekday>,
    },
    /// Every day from `from` (included) to `to` (excluded), `HH:MM` or `HH:MM:SS`; a window whose
    /// `to` is not after its `from` crosses midnight (`22:00`–`02:00`). `to` may be `24:00`.
    Daily {
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[0-9]{2}:[0-9]{2}(:[0-9]{2})?$", example = "22:00")
        )]
        from: String,
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[0-9]{2}:[0-9]{2}(:[0-9]{2})?$", example = "02:00")
        )]
        to: String,
    },
    /// A window opening at each fire of a cron expression (the trigger syntax) and lasting
    /// `duration` (at most 31 days).
    Cron {
        #[cfg_attr(feature = "openapi", schema(example = "0 0 2 * * SUN"))]
        expression: String,
        // Read when the calendar is checked, so that a refusal names this field (serde's errors
        // lose the path inside a tagged rule); stored in canonical form.
        #[cfg_attr(feature = "openapi", schema(value_type = Span))]
        duration: String,
    },
}

/// A calendar as a client writes it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "timezone": "Europe/Berlin",
    "description": "Bank holidays and the Sunday maintenance window",
    "exclude": [
        { "kind": "yearly", "date": "--12-25" },
        { "kind": "date", "date": "2026-04-03" },
        { "kind": "daily", "from": "22:00", "to": "02:00" },
        { "kind": "cron", "expression": "0 0 2 * * SUN", "duration": "2h" }
    ],
    "include": ["company-holidays"]
})))]
pub struct CalendarInput {
    /// An IANA time zone (default `UTC`): every rule is read on its wall clock.
    pub timezone: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
    /// The excluded periods.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    pub exclude: Vec<Exclusion>,
    /// Other calendars whose exclusions this one adds (each in its own time zone).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 20))]
    pub include: Vec<String>,
}

/// A validated calendar definition, as stored and returned.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarSpec {
    pub timezone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub exclude: Vec<Exclusion>,
    pub include: Vec<String>,
}

/// Why a stored calendar could not be read back; a validated one always can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CalendarError {
    pub field: String,
    pub message: String,
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    let shaped = text.len() == 10
        && text.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    shaped
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| format!("`{text}` is not a date; write it like `2026-12-25`"))
}

fn parse_yearly(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{text}` is not a yearly date; write it like `--12-25`");
    let rest = text.strip_prefix("--").ok_or_else(bad)?;
    let shaped = rest.len() == 5
        && rest
            .char_indices()
            .all(|(i, c)| if i == 2 { c == '-' } else { c.is_ascii_digit() });
    if !shaped {
        return Err(bad());
    }
    let month: u32 = rest[..2].parse().map_err(|_| bad())?;
    let day: u32 = rest[3..].parse().map_err(|_| bad())?;
    // 2024 is a leap year, so every day that exists in some year is accepted.
    NaiveDate::from_ymd_opt(2024, month, day).ok_or_else(bad)?;
    Ok((month, day))
}

/// Seconds from local midnight; `24:00` only when `end` is set.
fn parse_time(text: &str, end: bool) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a time of day; write it like `22:00` or `22:00:30`");
    let shaped = (text.len() == 5 || text.len() == 8)
        && text.char_indices().all(|(i, c)| {
            if i == 2 || i == 5 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shaped {
        return Err(bad());
    }
    let part = |range: std::ops::Range<usize>| text.get(range).and_then(|p| p.parse::<u32>().ok());
    let hours = part(0..2).ok_or_else(bad)?;
    let minutes = part(3..5).ok_or_else(bad)?;
    let seconds = if text.len() == 8 {
        part(6..8).ok_or_else(bad)?
    } else {
        0
    };
    let total = hours * 3600 + minutes * 60 + seconds;
    match (hours, minutes, seconds) {
        (24, 0, 0) if end => Ok(total),
        (h, m, s) if h < 24 && m < 60 && s < 60 => Ok(total),
        _ => Err(bad()),
    }
}

/// One rule, parsed.
#[derive(Debug, Clone)]
enum Rule {
    Date(NaiveDate),
    Range(NaiveDate, NaiveDate),
    Yearly {
        month: u32,
        day: u32,
    },
    Weekdays(Vec<Weekday>),
    /// Seconds from local midnight, `from` included, `to` excluded.
    Daily {
        from: u32,
        to: u32,
    },
    Cron {
        schedule: Box<Schedule>,
        duration: chrono::Duration,
    },
}

impl Exclusion {
    fn compile(&self, zone: &str) -> Result<Rule, (&'static str, String)> {
        Ok(match self {
            Exclusion::Date { date } => Rule::Date(parse_date(date).map_err(|e| ("date", e))?),
            Exclusion::DateRange { from, to } => {
                let from_date = parse_date(from).map_err(|e| ("from", e))?;
                let to_date = parse_date(to).map_err(|e| ("to", e))?;
                if to_date < from_date {
                    return Err(("to", format!("must not be before `from` ({from})")));
                }
                Rule::Range(from_date, to_date)
            }
            Exclusion::Yearly { date } => {
                let (month, day) = parse_yearly(date).map_err(|e| ("date", e))?;
                Rule::Yearly { month, day }
            }
            Exclusion::Weekdays { days } => {
                if days.is_empty() || days.len() > 7 {
                    return Err(("days", "name 1 to 7 days".to_owned()));
                }
                Rule::Weekdays(days.clone())
            }
            Exclusion::Daily { from, to } => {
                let start = parse_time(from, false).map_err(|e| ("from", e))?;
                let end = parse_time(to, true).map_err(|e| ("to", e))?;
                if start == end % 86_400 {
                    return Err((
                        "to",
                        "must differ from `from`; to exclude whole days use `weekdays`".to_owned(),
                    ));
                }
                Rule::Daily {
                    from: start,
                    to: end,
                }
            }
            Exclusion::Cron {
                expression,
                duration,
            } => {
                let schedule =
                    Schedule::cron(expression, zone).map_err(|e| ("expression", e.to_string()))?;
                let duration: Span = duration
                    .parse()
                    .map_err(|e: SpanError| ("duration", e.to_string()))?;
                if duration < Span::from_secs(1) || duration > MAX_WINDOW {
                    return Err((
                        "duration",
                        format!("must be between 1s and {MAX_WINDOW}, got {duration}"),
                    ));
                }
                Rule::Cron {
                    schedule: Box::new(schedule),
                    duration: chrono::Duration::from_std(duration.as_duration())
                        .unwrap_or(chrono::Duration::MAX),
                }
            }
        })
    }
}

impl Rule {
    /// Whether the rule excludes `at`, whose wall-clock reading in the calendar's zone is `local`.
    fn excludes(&self, at: DateTime<Utc>, local: chrono::NaiveDateTime) -> bool {
        let date = local.date();
        match self {
            Rule::Date(day) => date == *day,
            Rule::Range(from, to) => *from <= date && date <= *to,
            Rule::Yearly { month, day } => date.month() == *month && date.day() == *day,
            Rule::Weekdays(days) => days.contains(&Weekday::of(date.weekday())),
            Rule::Daily { from, to } => {
                let t = local.time().num_seconds_from_midnight();
                if from < to {
                    *from <= t && t < *to
                } else {
                    *from <= t || t < *to
                }
            }
            // The latest window opening at or before `at` is the first fire after `at − duration`.
            Rule::Cron { schedule, duration } => schedule
                .next_after(at - *duration)
                .is_some_and(|opened| opened <= at),
        }
    }
}

impl TryFrom<CalendarInput> for CalendarSpec {
    type Error = ValidationErrors;

    fn try_from(input: CalendarInput) -> Result<Self, Self::Error> {
        let mut errors = ValidationErrors::new();
        let timezone = input.timezone.unwrap_or_else(|| "UTC".to_owned());
        let zone_ok = timezone.parse::<Tz>().is_ok();
        if !zone_ok {
            errors.push(
                "timezone",
                format!(
                    "unknown time zone `{timezone}`; use an IANA name like `Europe/Berlin` or `UTC`"
                ),
            );
        }
        if input.exclude.len() > MAX_RULES {
            errors.push("exclude", format!("at most {MAX_RULES} rules"));
        }
        let mut exclude = input.exclude;
        if zone_ok {
            for (i, rule) in exclude.iter_mut().enumerate() {
                if let Err((field, message)) = rule.compile(&timezone) {
                    errors.push(format!("exclude[{i}].{field}"), message);
                } else if let Exclusion::Cron { duration, .. } = rule {
                    // Stored and shown as every duration is: `90m` reads back as `1h30m`.
                    if let Ok(span) = duration.parse::<Span>() {
                        *duration = span.to_string();
                    }
                }
            }
        }
        if input.include.len() > MAX_REFERENCES {
            errors.push("include", format!("at most {MAX_REFERENCES} calendars"));
        }
        check_names("include", &input.include, &mut errors);
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            errors.push("description", "at most 1000 characters");
        }
        errors.into_result(CalendarSpec {
            timezone,
            description: input.description,
            exclude,
            include: input.include,
        })
    }
}

/// Checks a list of calendar names: each valid, none twice.
pub(crate) fn check_names(field: &str, names: &[String], errors: &mut ValidationErrors) {
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        if let Err(e) = name.parse::<CalendarName>() {
            errors.push(format!("{field}[{i}]"), e.to_string());
        } else if !seen.insert(name.as_str()) {
            errors.push(format!("{field}[{i}]"), format!("`{name}` is named twice"));
        }
    }
}

/// A calendar ready to answer: its zone, its own rules, and the calendars it includes.
#[derive(Debug, Clone)]
pub struct Calendar {
    zone: Tz,
    rules: Vec<Rule>,
    include: Vec<String>,
}

impl CalendarSpec {
    /// Parses the rules. A stored spec was validated when written, so this only fails for a
    /// database edited by hand.
    pub fn compile(&self) -> Result<Calendar, CalendarError> {
        let zone: Tz = self.timezone.parse().map_err(|_| CalendarError {
            field: "timezone".to_owned(),
            message: format!("unknown time zone `{}`", self.timezone),
        })?;
        let rules = self
            .exclude
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                rule.compile(&self.timezone)
                    .map_err(|(field, message)| CalendarError {
                        field: format!("exclude[{i}].{field}"),
                        message,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Calendar {
            zone,
            rules,
            include: self.include.clone(),
        })
    }
}

impl Calendar {
    /// Whether one of this calendar's own rules (not those it includes) excludes `at`.
    pub fn excludes(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone).naive_local();
        self.rules.iter().any(|rule| rule.excludes(at, local))
    }
}

/// Calendars by name, to find which one excludes an occurrence.
#[derive(Debug, Clone, Default)]
pub struct Calendars(HashMap<String, Calendar>);

impl Calendars {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the calendar `name`.
    pub fn insert(&mut self, name: impl Into<String>, calendar: Calendar) {
        self.0.insert(name.into(), calendar);
    }

    /// The name of the calendar that excludes `at` among `names` and the calendars they include
    /// (depth first, in the order written), or `None` when none does. A name with no calendar
    /// excludes nothing: a calendar deleted by force no longer holds its triggers back.
    pub fn excluded_by(&self, names: &[String], at: DateTime<Utc>) -> Option<&str> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = names.iter().rev().map(String::as_str).collect();
        while let Some(name) = stack.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some((key, calendar)) = self.0.get_key_value(name) else {
                continue;
            };
            if calendar.excludes(at) {
                return Some(key.as_str());
            }
            stack.extend(calendar.include.iter().rev().map(String::as_str));
        }
        None
    }

    /// A chain of inclusions that leads from `name` back to itself, if any: such a calendar
    /// would include itself, which is refused.
    pub fn cycle_from(&self, name: &str) -> Option<Vec<String>> {
        fn walk<'a>(
            set: &'a Calendars,
            target: &str,
            at: &'a str,
            path: &mut Vec<&'a str>,
            seen: &mut BTreeSet<&'a str>,
        ) -> bool {
            let Some(calendar) = set.0.get(at) else {
                return false;
            };
            for next in &calendar.include {
                path.push(next);
                if next == target {
                    return true;
                }
                if seen.insert(next) && walk(set, target, next, path, seen) {
                    return true;
                }
                path.pop();
            }
            false
        }
        let mut path = vec![name];
        walk(self, name, name, &mut path, &mut BTreeSet::new())
            .then(|| path.into_iter().map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDateTime, Offset, TimeZone};
    use proptest::prelude::*;

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("an RFC 3339 instant")
    }

    fn calendar(zone: &str, exclude: serde_json::Value) -> Calendar {
        let input: CalendarInput = serde_json::from_value(serde_json::json!({
            "timezone": zone, "exclude": exclude
        }))
        .expect("a calendar input");
        CalendarSpec::try_from(input)
            .expect("a valid calendar")
            .compile()
            .expect("compiles")
    }

    fn refused(exclude: serde_json::Value) -> Vec<String> {
        let input: CalendarInput =
            serde_json::from_value(serde_json::json!({ "exclude": exclude })).expect("input");
        CalendarSpec::try_from(input)
            .expect_err("refused")
            .errors()
            .iter()
            .map(|e| e.field.clone())
            .collect()
    }

    #[test]
    fn dates_ranges_and_yearly_dates_exclude_whole_local_days() {
        let cal = calendar(
            "Asia/Kolkata",
            serde_json::json!([
                { "kind": "date", "date": "2026-12-25" },
                { "kind": "date_range", "from": "2027-01-02", "to": "2027-01-04" },
                { "kind": "yearly", "date": "--08-15" },
            ]),
        );
        // 2026-12-24T18:30Z is midnight of the 25th in Kolkata (+05:30).
        assert!(!cal.excludes(utc("2026-12-24T18:29:59Z")));
        assert!(cal.excludes(utc("2026-12-24T18:30:00Z")));
        assert!(cal.excludes(utc("2026-12-25T18:29:59Z")));
        assert!(!cal.excludes(utc("2026-12-25T18:30:00Z")));
        assert!(
            cal.excludes(utc("2027-01-04T12:00:00Z")),
            "the range's last day is in"
        );
        assert!(!cal.excludes(utc("2027-01-05T12:00:00Z")));
        assert!(
            cal.excludes(utc("2031-08-15T06:00:00Z")),
            "yearly, any year"
        );
        assert!(!cal.excludes(utc("2031-08-16T06:00:00Z")));
    }

    #[test]
    fn a_leap_day_rule_excludes_only_in_leap_years() {
        let cal = calendar(
            "UTC",
            serde_json::json!([{ "kind": "yearly", "date": "--02-29" }]),
        );
        assert!(cal.excludes(utc("2028-02-29T10:00:00Z")));
        assert!(!cal.excludes(utc("2027-02-28T10:00:00Z")));
        assert!(!cal.excludes(utc("2027-03-01T10:00:00Z")));
    }

    #[test]
    fn weekdays_are_read_in_the_calendars_zone() {
        let cal = calendar(
            "Pacific/Auckland",
            serde_json::json!([{ "kind": "weekdays", "days": ["sat", "sun"] }]),
        );
        // Friday 2026-12-04 12:00 UTC is Saturday 01:00 in Auckland (+13:00).
        assert!(cal.excludes(utc("2026-12-04T12:00:00Z")));
        assert!(!cal.excludes(utc("2026-12-04T10:00:00Z")));
    }

    #[test]
    fn a_daily_window_may_cross_midnight_and_excludes_its_start_but_not_its_end() {
        let cal = calendar(
            "UTC",
            serde_json::json!([{ "kind": "daily", "from": "22:00", "to": "02:00" }]),
        );
        assert!(!cal.excludes(utc("2026-12-07T21:59:59Z")));
        assert!(cal.excludes(utc("2026-12-07T22:00:00Z")));
        assert!(cal.excludes(utc("2026-12-08T00:00:00Z")));
        assert!(cal.excludes(utc("2026-12-08T01:59:59Z")));
        assert!(!cal.excludes(utc("2026-12-08T02:00:00Z")));
        let to_midnight = calendar(
            "UTC",
            serde_json::json!([{ "kind": "daily", "from": "23:00", "to": "24:00" }]),
        );
        assert!(to_midnight.excludes(utc("2026-12-07T23:59:59Z")));
        assert!(!to_midnight.excludes(utc("2026-12-08T00:00:00Z")));
    }

    #[test]
    fn a_window_in_the_repeated_hour_excludes_both_passes_and_one_in_the_skipped_hour_nothing() {
        let cal = calendar(
            "Europe/Berlin",
            serde_json::json!([{ "kind": "daily", "from": "02:00", "to": "02:30" }]),
        );
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:15 happens at 00:15Z and at 01:15Z.
        assert!(cal.excludes(utc("2026-10-25T00:15:00Z")));
        assert!(cal.excludes(utc("2026-10-25T01:15:00Z")));
        assert!(!cal.excludes(utc("2026-10-25T00:45:00Z")));
        // 2026-03-29: 02:00 CET becomes 03:00 CEST; 01:00Z is 03:00 local, nothing is 02:xx.
        for minute in 0..120 {
            let at = utc("2026-03-29T00:00:00Z") + chrono::Duration::minutes(minute);
            assert!(!cal.excludes(at), "{at}");
        }
    }

    #[test]
    fn a_cron_window_opens_at_each_fire_and_lasts_its_duration() {
        let cal = calendar(
            "Europe/Berlin",
            serde_json::json!([{ "kind": "cron", "expression": "0 0 2 * * SUN", "duration": "2h" }]),
        );
        // Sunday 2026-12-06 02:00 CET = 01:00Z, until 03:00Z.
        assert!(!cal.excludes(utc("2026-12-06T00:59:59Z")));
        assert!(cal.excludes(utc("2026-12-06T01:00:00Z")));
        assert!(cal.excludes(utc("2026-12-06T02:59:59Z")));
        assert!(!cal.excludes(utc("2026-12-06T03:00:00Z")));
        assert!(!cal.excludes(utc("2026-12-07T01:30:00Z")), "a Monday");
        // On 2026-03-29 02:00 does not exist: the window opens at the transition, 01:00Z.
        assert!(cal.excludes(utc("2026-03-29T01:00:00Z")));
        assert!(cal.excludes(utc("2026-03-29T02:59:59Z")));
        assert!(!cal.excludes(utc("2026-03-29T03:00:00Z")));
    }

    #[test]
    fn included_calendars_exclude_in_their_own_zone_and_are_named() {
        let mut set = Calendars::new();
        set.insert(
            "holidays",
            calendar(
                "Asia/Tokyo",
                serde_json::json!([{ "kind": "date", "date": "2027-01-01" }]),
            ),
        );
        let mut maintenance = calendar(
            "UTC",
            serde_json::json!([{ "kind": "daily", "from": "03:00", "to": "04:00" }]),
        );
        maintenance.include = vec!["holidays".into()];
        set.insert("maintenance", maintenance);
        let names = vec!["maintenance".to_owned()];
        assert_eq!(
            set.excluded_by(&names, utc("2026-12-07T03:30:00Z")),
            Some("maintenance")
        );
        // New Year in Tokyo (+09:00) starts at 15:00Z on New Year's Eve.
        assert_eq!(
            set.excluded_by(&names, utc("2026-12-31T15:00:00Z")),
            Some("holidays")
        );
        assert_eq!(set.excluded_by(&names, utc("2026-12-31T14:59:59Z")), None);
        assert_eq!(
            set.excluded_by(&["gone".to_owned()], utc("2026-12-31T15:00:00Z")),
            None,
            "a missing calendar excludes nothing"
        );
    }

    #[test]
    fn a_calendar_that_includes_itself_through_others_is_found() {
        let mut set = Calendars::new();
        let mut a = calendar("UTC", serde_json::json!([]));
        a.include = vec!["b".into()];
        let mut b = calendar("UTC", serde_json::json!([]));
        b.include = vec!["c".into()];
        let mut c = calendar("UTC", serde_json::json!([]));
        set.insert("a", a.clone());
        set.insert("b", b.clone());
        set.insert("c", c.clone());
        assert_eq!(set.cycle_from("a"), None);
        c.include = vec!["a".into()];
        set.insert("c", c);
        assert_eq!(
            set.cycle_from("a"),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        // Evaluation stops at a cycle instead of looping.
        assert_eq!(
            set.excluded_by(&["a".into()], utc("2026-12-07T00:00:00Z")),
            None
        );
    }

    #[test]
    fn malformed_rules_are_refused_field_by_field() {
        assert_eq!(
            refused(serde_json::json!([
                { "kind": "date", "date": "2026-2-5" },
                { "kind": "date_range", "from": "2026-12-31", "to": "2026-12-01" },
                { "kind": "yearly", "date": "--02-30" },
                { "kind": "weekdays", "days": [] },
                { "kind": "daily", "from": "24:00", "to": "25:00" },
                { "kind": "daily", "from": "10:00", "to": "10:00" },
                { "kind": "cron", "expression": "0 61 * * *", "duration": "1h" },
                { "kind": "cron", "expression": "0 * * * *", "duration": "32d" },
                { "kind": "cron", "expression": "0 * * * *", "duration": " 4s  0h  895703928m " },
                { "kind": "cron", "expression": "0 * * * *", "duration": "2 hours" },
            ])),
            [
                "exclude[0].date",
                "exclude[1].to",
                "exclude[2].date",
                "exclude[3].days",
                "exclude[4].from",
                "exclude[5].to",
                "exclude[6].expression",
                "exclude[7].duration",
                "exclude[8].duration",
                "exclude[9].duration",
            ]
        );
        let unknown: Result<CalendarInput, _> = serde_json::from_value(serde_json::json!({
            "exclude": [{ "kind": "date", "date": "2026-12-25", "extra": 1 }]
        }));
        assert!(unknown.is_err(), "unknown fields in a rule are refused");
    }

    /// The brute-force oracle: the wall-clock reading from the zone's UTC offset at `at`, by
    /// plain arithmetic, and each rule checked on it by counting seconds.
    fn oracle_daily(zone: Tz, from: u32, to: u32, at: DateTime<Utc>) -> bool {
        let offset = zone.offset_from_utc_datetime(&at.naive_utc()).fix();
        let local: NaiveDateTime =
            at.naive_utc() + chrono::Duration::seconds(offset.local_minus_utc().into());
        let second = (local.and_utc().timestamp().rem_euclid(86_400)) as u32;
        if from < to {
            (from..to).contains(&second)
        } else {
            (from..86_400).contains(&second) || (0..to).contains(&second)
        }
    }

    /// Every fire of the schedule from a day before, walked one by one.
    fn oracle_cron(schedule: &Schedule, duration: chrono::Duration, at: DateTime<Utc>) -> bool {
        let mut fire = schedule.next_after(at - duration - chrono::Duration::days(1));
        while let Some(f) = fire.filter(|f| *f <= at) {
            if at < f + duration {
                return true;
            }
            fire = schedule.next_after(f);
        }
        false
    }

    const ZONES: [&str; 5] = [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/Santiago",
        "Asia/Kolkata",
    ];

    /// Instants within a day of the zones' 2026 transitions, and a few anywhere.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let transitions = [
            "2026-03-29T01:00:00Z",
            "2026-10-25T01:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-04-04T15:00:00Z",
            "2026-10-03T16:00:00Z",
            "2026-04-05T03:00:00Z",
            "2026-09-06T04:00:00Z",
        ]
        .map(utc)
        .to_vec();
        prop_oneof![
            (proptest::sample::select(transitions), -86_400i64..86_400)
                .prop_map(|(t, s)| t + chrono::Duration::seconds(s)),
            (1_767_225_600i64..1_798_761_600)
                .prop_map(|s| Utc.timestamp_opt(s, 0).single().expect("instant")),
        ]
    }

    fn clock(seconds: u32) -> String {
        format!(
            "{:02}:{:02}:{:02}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn daily_windows_agree_with_the_oracle_across_transitions(
            zone in proptest::sample::select(ZONES.to_vec()),
            from in (0u32..24).prop_flat_map(|h| (Just(h), 0u32..4)).prop_map(|(h, q)| h * 3600 + q * 900),
            to in (0u32..24).prop_flat_map(|h| (Just(h), 0u32..4)).prop_map(|(h, q)| h * 3600 + q * 900),
            at in instant(),
        ) {
            prop_assume!(from != to);
            let cal = calendar(zone, serde_json::json!([{ "kind": "daily", "from": clock(from), "to": clock(to) }]));
            let tz: Tz = zone.parse().expect("zone");
            prop_assert_eq!(cal.excludes(at), oracle_daily(tz, from, to, at), "{} {}–{} at {}", zone, clock(from), clock(to), at);
        }

        #[test]
        fn cron_windows_agree_with_the_oracle_across_transitions(
            zone in proptest::sample::select(ZONES.to_vec()),
            expression in proptest::sample::select(vec![
                "0 0 2 * * *", "0 30 1 * * SUN", "0 */20 * * * *", "0 15 2,3 * * *", "0 0 0 * * MON-FRI",
            ]),
            minutes in 1i64..600,
            at in instant(),
        ) {
            let duration = format!("{minutes}m");
            let cal = calendar(zone, serde_json::json!([{ "kind": "cron", "expression": expression, "duration": duration }]));
            let schedule = Schedule::cron(expression, zone).expect("cron");
            let expected = oracle_cron(&schedule, chrono::Duration::minutes(minutes), at);
            prop_assert_eq!(cal.excludes(at), expected, "{} {} {} at {}", zone, expression, duration, at);
        }
    }
}
