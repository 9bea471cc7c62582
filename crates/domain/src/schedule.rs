//! Interim schedule math (replaced by the full implementation): interval and once are exact;
//! cron goes straight through croner.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::Span;

/// When a trigger fires.
#[derive(Debug, Clone)]
pub struct Schedule(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Cron(croner::Cron, chrono_tz::Tz),
    Interval {
        every: chrono::Duration,
        anchor: DateTime<Utc>,
    },
    Once(DateTime<Utc>),
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Expression(String),
    #[error("unknown time zone `{0}`; use an IANA name like `Europe/Berlin` or `UTC`")]
    TimeZone(String),
    #[error("{0}")]
    Interval(String),
}

impl Schedule {
    /// A cron schedule.
    pub fn cron(expression: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let tz: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| ScheduleError::TimeZone(timezone.to_owned()))?;
        let cron = croner::Cron::from_str(expression)
            .map_err(|e| ScheduleError::Expression(e.to_string()))?;
        Ok(Schedule(Kind::Cron(cron, tz)))
    }

    /// Every `every` from `anchor`.
    pub fn interval(every: Span, anchor: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
        if every < Span::from_secs(1) {
            return Err(ScheduleError::Interval("an interval is at least 1s".into()));
        }
        let every = chrono::Duration::from_std(every.as_duration())
            .map_err(|_| ScheduleError::Interval("interval too long".into()))?;
        Ok(Schedule(Kind::Interval { every, anchor }))
    }

    /// Once, at `at`.
    pub fn once(at: DateTime<Utc>) -> Schedule {
        Schedule(Kind::Once(at))
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.0 {
            Kind::Once(at) => (*at > after).then_some(*at),
            Kind::Interval { every, anchor } => {
                if after < *anchor {
                    return Some(*anchor);
                }
                let step = every.num_milliseconds();
                let elapsed = (after - *anchor).num_milliseconds();
                let k = elapsed / step + 1;
                Some(*anchor + chrono::Duration::milliseconds(k * step))
            }
            Kind::Cron(cron, tz) => {
                let local = after.with_timezone(tz);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
        }
    }
}
