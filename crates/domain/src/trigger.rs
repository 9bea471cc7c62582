//! Triggers: when a job fires. [`TriggerInput`] is what a client sends; a [`TriggerSpec`] exists
//! only once its schedule parses and its bounds make sense.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::firing::{MisfirePolicy, MisfireRule};
use crate::schedule::{Schedule, ScheduleError};
use crate::{Span, ValidationErrors};

/// The schedule part of a trigger, as written.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// A cron expression (5 fields, 6 with seconds, or an `@hourly`-style alias) in a time zone.
    Cron {
        expression: String,
        #[serde(default = "utc")]
        timezone: String,
    },
    /// Every `every`, anchored at the trigger's `start_at` (or the Unix epoch without one, so
    /// `15m` fires at :00, :15, :30 and :45 UTC).
    Interval { every: Span },
    /// Once, at `at`.
    Once { at: DateTime<Utc> },
}

fn utc() -> String {
    "UTC".to_owned()
}

/// The kinds of trigger.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Cron,
    Interval,
    Once,
}

/// A trigger as a client writes it: `kind` says which of `expression` (with `timezone`),
/// `every` or `at` it needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerInput {
    pub kind: TriggerKind,
    pub expression: Option<String>,
    pub timezone: Option<String>,
    pub every: Option<Span>,
    pub at: Option<DateTime<Utc>>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub misfire: Option<MisfirePolicy>,
    pub misfire_grace: Option<Span>,
    #[serde(default, deserialize_with = "crate::validation::optional_whole_number")]
    pub catch_up_limit: Option<u32>,
    pub description: Option<String>,
    pub calendars: Option<Vec<String>>,
    pub jitter: Option<Span>,
}

/// The schema says which fields each kind takes (one object per kind), while the wire stays one
/// flat object with `kind` beside the other fields.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for TriggerInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::ToSchema;
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        use utoipa::openapi::{Ref, RefOr, Schema};

        let string = || ObjectBuilder::new().schema_type(Type::String);
        let time = || string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)));
        let duration = || RefOr::<Schema>::Ref(Ref::from_schema_name(crate::Span::name()));
        let kind = |name: &str, description: &str, own: Vec<(&str, RefOr<Schema>)>| {
            let mut object = ObjectBuilder::new()
                .description(Some(description))
                .property("kind", string().enum_values(Some([name])))
                .required("kind");
            for (field, schema) in own {
                object = object.property(field, schema);
            }
            object
                .property(
                    "start_at",
                    time().description(Some("Fires no earlier than this.")),
                )
                .property(
                    "end_at",
                    time().description(Some("Fires no later than this.")),
                )
                .property(
                    "misfire",
                    RefOr::<Schema>::Ref(Ref::from_schema_name(MisfirePolicy::name())),
                )
                .property("misfire_grace", duration())
                .property(
                    "catch_up_limit",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(10_000))
                        .description(Some("Most tasks `catch_up` creates (default 100).")),
                )
                .property("description", string())
                .property(
                    "calendars",
                    utoipa::openapi::schema::ArrayBuilder::new()
                        .items(string().pattern(Some(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")))
                        .max_items(Some(crate::calendar::MAX_REFERENCES))
                        .description(Some(
                            "Exclusion calendars: an occurrence one of them excludes is recorded \
                             as a skip (reason `calendar`) instead of becoming a task.",
                        )),
                )
                .property(
                    "jitter",
                    RefOr::<Schema>::Ref(Ref::from_schema_name(crate::Span::name())),
                )
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
        };
        let cron = kind(
            "cron",
            "A cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with \
             seconds first, or `@yearly` `@monthly` `@weekly` `@daily` `@hourly`.",
            vec![
                ("expression", string().examples(["0 */15 * * * *"]).into()),
                (
                    "timezone",
                    string()
                        .description(Some("An IANA time zone (default `UTC`)."))
                        .examples(["Asia/Kolkata"])
                        .into(),
                ),
            ],
        )
        .required("expression");
        let interval = kind(
            "interval",
            "Every `every` (at least `1s`) from `start_at`, or aligned to the Unix epoch without it.",
            vec![("every", duration())],
        )
        .required("every");
        let once = kind("once", "Once, at `at`.", vec![("at", time().into())]).required("at");
        OneOfBuilder::new()
            .item(cron)
            .item(interval)
            .item(once)
            .description(Some(
                "A trigger as a client writes it: `kind` says which of `expression` (with \
                 `timezone`), `every` or `at` it needs.",
            ))
            .examples([
                serde_json::json!({ "kind": "cron", "expression": "0 */15 * * * *", "timezone": "Asia/Kolkata", "misfire": "fire_once" }),
                serde_json::json!({ "kind": "interval", "every": "1s", "start_at": "2026-12-01T00:00:00Z", "misfire": "catch_up" }),
                serde_json::json!({ "kind": "once", "at": "2026-12-01T09:00:00Z" }),
            ])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for TriggerInput {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((crate::Span::name().into(), crate::Span::schema()));
        schemas.push((MisfirePolicy::name().into(), MisfirePolicy::schema()));
    }
}

impl TriggerInput {
    /// The schedule part, naming each field that is missing or does not belong to the kind.
    fn schedule(&self, errors: &mut ValidationErrors) -> Option<ScheduleSpec> {
        let kind = match self.kind {
            TriggerKind::Cron => "cron",
            TriggerKind::Interval => "interval",
            TriggerKind::Once => "once",
        };
        let mut foreign = |field: &str, present: bool| {
            if present {
                errors.push(field, format!("does not apply to a {kind} trigger"));
            }
        };
        match self.kind {
            TriggerKind::Cron => {
                foreign("every", self.every.is_some());
                foreign("at", self.at.is_some());
            }
            TriggerKind::Interval => {
                foreign("expression", self.expression.is_some());
                foreign("timezone", self.timezone.is_some());
                foreign("at", self.at.is_some());
            }
            TriggerKind::Once => {
                foreign("expression", self.expression.is_some());
                foreign("timezone", self.timezone.is_some());
                foreign("every", self.every.is_some());
            }
        }
        let required = |errors: &mut ValidationErrors, field: &str| {
            errors.push(field, format!("is required for a {kind} trigger"));
        };
        match self.kind {
            TriggerKind::Cron => match &self.expression {
                Some(expression) => Some(ScheduleSpec::Cron {
                    expression: expression.clone(),
                    timezone: self.timezone.clone().unwrap_or_else(utc),
                }),
                None => {
                    required(errors, "expression");
                    None
                }
            },
            TriggerKind::Interval => match self.every {
                Some(every) => Some(ScheduleSpec::Interval { every }),
                None => {
                    required(errors, "every");
                    None
                }
            },
            TriggerKind::Once => match self.at {
                Some(at) => Some(ScheduleSpec::Once { at }),
                None => {
                    required(errors, "at");
                    None
                }
            },
        }
    }
}

/// A validated trigger definition, as stored and returned.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    #[serde(flatten)]
    pub schedule: ScheduleSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<DateTime<Utc>>,
    pub misfire: MisfirePolicy,
    pub misfire_grace: Span,
    pub catch_up_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Exclusion calendars, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calendars: Vec<String>,
    /// Each occurrence fires this much later at most, by an offset of (trigger, occurrence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Span>,
}

/// Defaults a trigger takes when its definition leaves a field out.
pub mod defaults {
    use crate::Span;

    /// An occurrence at most this late counts as on time.
    pub const MISFIRE_GRACE: Span = Span::from_secs(60);
    /// Most tasks `catch_up` creates for missed occurrences.
    pub const CATCH_UP_LIMIT: u32 = 100;
}

/// Most occurrences one backfill creates; a longer range is refused, to be split.
pub const MAX_BACKFILL: usize = 1000;

/// The longest jitter a trigger takes.
pub const MAX_JITTER: Span = Span::from_secs(3600);

/// SplitMix64's finaliser over the trigger id and the occurrence's millisecond: well mixed, so
/// a thousand triggers on one schedule spread evenly, and fixed forever (it decides fire times).
fn jitter_hash(trigger: Uuid, scheduled: DateTime<Utc>) -> u64 {
    let (high, low) = trigger.as_u64_pair();
    let mut x = high ^ low.rotate_left(32) ^ scheduled.timestamp_millis().cast_unsigned();
    for _ in 0..2 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// A trigger's schedule, parsed, with its bounds: ready to compute fire times.
#[derive(Debug, Clone)]
pub struct Timetable {
    schedule: Schedule,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
}

impl Timetable {
    /// The first fire time strictly after `after`, within the trigger's bounds.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let from = match self.start_at {
            // Fire times are whole seconds, so one second before the start finds the start itself.
            Some(start) if start > after => start - chrono::Duration::seconds(1),
            _ => after,
        };
        self.schedule
            .next_after(from)
            .filter(|at| self.end_at.is_none_or(|end| *at <= end))
    }

    /// Every fire time in `[from, to)`, oldest first, or `Err(cap)` when there are more than
    /// `cap` of them.
    pub fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cap: usize,
    ) -> Result<Vec<DateTime<Utc>>, usize> {
        let first = from
            .checked_sub_signed(chrono::Duration::seconds(1))
            .and_then(|before| self.next_after(before))
            .filter(|at| *at >= from)
            .or_else(|| self.next_after(from));
        let mut found = Vec::new();
        for at in std::iter::successors(first, |at| self.next_after(*at)) {
            if at >= to {
                break;
            }
            if found.len() == cap {
                return Err(cap);
            }
            found.push(at);
        }
        Ok(found)
    }

    /// The next `count` fire times after `after`.
    pub fn preview(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(after), |at| self.next_after(*at))
            .take(count)
            .collect()
    }
}

impl TriggerSpec {
    /// Parses the schedule. A stored spec was validated when written, so this only fails for a
    /// database edited by hand.
    pub fn timetable(&self) -> Result<Timetable, ScheduleError> {
        let schedule = match &self.schedule {
            ScheduleSpec::Cron {
                expression,
                timezone,
            } => Schedule::cron(expression, timezone)?,
            ScheduleSpec::Interval { every } => {
                Schedule::interval(*every, self.start_at.unwrap_or(DateTime::UNIX_EPOCH))?
            }
            ScheduleSpec::Once { at } => Schedule::once(*at),
        };
        Ok(Timetable {
            schedule,
            start_at: self.start_at,
            end_at: self.end_at,
        })
    }

    /// The first fire time of a trigger written (created or replaced) at `now`, or an error
    /// naming the field that keeps it from ever firing.
    ///
    /// A `once` whose instant has passed keeps that instant: it is due at once and, later than
    /// its grace, goes through its misfire policy like any occurrence the scheduler missed (a
    /// task under `fire_once` and `catch_up`, a recorded skip under `skip`), never nothing.
    pub fn first_fire(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, ValidationErrors> {
        let timetable = self
            .timetable()
            .map_err(|e| ValidationErrors::single(schedule_field(&e), e.to_string()))?;
        if let ScheduleSpec::Once { at } = self.schedule {
            // The bounds were checked against `at` when the spec was made.
            return Ok(at);
        }
        if let Some(first) = timetable.next_after(now) {
            return Ok(first);
        }
        match timetable.schedule.next_after(now) {
            None => Err(ValidationErrors::single(
                "expression",
                format!(
                    "has no fire time in the next {} years: it would never fire",
                    crate::schedule::HORIZON_YEARS
                ),
            )),
            Some(next) => Err(ValidationErrors::single(
                "end_at",
                format!(
                    "is before the trigger's next fire time ({}): it would never fire",
                    next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )),
        }
    }

    /// When the occurrence scheduled at `scheduled` of trigger `trigger` fires: `scheduled`
    /// plus an offset in `[0, jitter)` that depends on nothing but the two, so every node (and
    /// every version of Pacer) computes the same one; `scheduled` itself without jitter.
    pub fn fire_at(&self, trigger: Uuid, scheduled: DateTime<Utc>) -> DateTime<Utc> {
        match self.jitter.map(|j| j.as_millis()) {
            Some(jitter) if jitter > 0 => {
                let offset = jitter_hash(trigger, scheduled) % jitter.unsigned_abs();
                scheduled + chrono::Duration::milliseconds(i64::try_from(offset).unwrap_or(0))
            }
            _ => scheduled,
        }
    }

    /// The misfire settings.
    pub fn misfire_rule(&self) -> MisfireRule {
        MisfireRule {
            policy: self.misfire,
            grace: self.misfire_grace,
            catch_up_limit: self.catch_up_limit,
        }
    }
}

/// The field a schedule error is about.
fn schedule_field(error: &ScheduleError) -> &'static str {
    match error {
        ScheduleError::TimeZone(_) => "timezone",
        ScheduleError::Interval(_) => "every",
        ScheduleError::Expression(_) => "expression",
    }
}

impl TryFrom<TriggerInput> for TriggerSpec {
    type Error = ValidationErrors;

    fn try_from(input: TriggerInput) -> Result<Self, Self::Error> {
        let mut errors = ValidationErrors::new();
        let schedule = input.schedule(&mut errors);
        let spec = schedule.map(|schedule| TriggerSpec {
            schedule,
            start_at: input.start_at,
            end_at: input.end_at,
            misfire: input.misfire.unwrap_or_default(),
            misfire_grace: input.misfire_grace.unwrap_or(defaults::MISFIRE_GRACE),
            catch_up_limit: input.catch_up_limit.unwrap_or(defaults::CATCH_UP_LIMIT),
            description: input.description.clone(),
            calendars: input.calendars.clone().unwrap_or_default(),
            jitter: input.jitter,
        });
        match spec.as_ref().map(TriggerSpec::timetable) {
            Some(Err(error)) => errors.push(schedule_field(&error), error.to_string()),
            // Whenever it is written, an expression no date matches never fires.
            Some(Ok(timetable)) if !timetable.schedule.can_fire() => errors.push(
                "expression",
                "never fires: no month has the day of the month it names (like 30 February \
                 or 31 April)",
            ),
            _ => {}
        }
        if let (Some(start), Some(end)) = (input.start_at, input.end_at)
            && end <= start
        {
            errors.push("end_at", "must be after start_at");
        }
        if let Some(at) = input.at.filter(|_| input.kind == TriggerKind::Once) {
            if input.start_at.is_some_and(|start| at < start) {
                errors.push("at", "is before start_at: the trigger would never fire");
            }
            if input.end_at.is_some_and(|end| at > end) {
                errors.push("at", "is after end_at: the trigger would never fire");
            }
        }
        let grace = input.misfire_grace.unwrap_or(defaults::MISFIRE_GRACE);
        if grace < Span::from_secs(1) || grace > Span::from_secs(86_400) {
            errors.push(
                "misfire_grace",
                format!("must be between 1s and 1d, got {grace}"),
            );
        }
        if !(1..=10_000).contains(&input.catch_up_limit.unwrap_or(defaults::CATCH_UP_LIMIT)) {
            errors.push("catch_up_limit", "must be between 1 and 10000");
        }
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            errors.push("description", "at most 1000 characters");
        }
        if let Some(calendars) = &input.calendars {
            if calendars.len() > crate::calendar::MAX_REFERENCES {
                errors.push(
                    "calendars",
                    format!("at most {} calendars", crate::calendar::MAX_REFERENCES),
                );
            }
            crate::calendar::check_names("calendars", calendars, &mut errors);
        }
        if let Some(jitter) = input.jitter
            && (jitter < Span::from_millis(1) || jitter > MAX_JITTER)
        {
            errors.push(
                "jitter",
                format!("must be between 1ms and {MAX_JITTER}, got {jitter}"),
            );
        }
        match spec {
            Some(spec) if errors.is_empty() => Ok(spec),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> TriggerInput {
        serde_json::from_value(json).expect("a trigger input")
    }

    fn refusal(json: serde_json::Value) -> Vec<(String, String)> {
        let errors = TriggerSpec::try_from(input(json)).expect_err("refused");
        errors
            .errors()
            .iter()
            .map(|e| (e.field.clone(), e.message.clone()))
            .collect()
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("an instant")
    }

    #[test]
    fn a_cron_expression_no_date_matches_is_refused_naming_the_expression() {
        for expression in ["0 0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 *"] {
            let errors = refusal(serde_json::json!({ "kind": "cron", "expression": expression }));
            assert_eq!(errors.len(), 1, "{expression}: {errors:?}");
            assert_eq!(errors[0].0, "expression");
            assert!(errors[0].1.contains("never fires"), "{errors:?}");
        }
        // 29 February comes every four years, and the last day of April every year.
        for expression in ["0 0 29 2 *", "0 0 30 4 *", "0 0 31 2,3 *", "0 0 30 2 MON"] {
            TriggerSpec::try_from(input(
                serde_json::json!({ "kind": "cron", "expression": expression }),
            ))
            .unwrap_or_else(|e| panic!("{expression}: {e:?}"));
        }
    }

    #[test]
    fn a_trigger_whose_bounds_leave_no_fire_time_is_refused_naming_the_bound() {
        let now = at("2026-12-07T10:00:00Z");
        let ended = TriggerSpec::try_from(input(serde_json::json!({
            "kind": "cron", "expression": "0 0 * * *", "end_at": "2026-12-07T11:00:00Z"
        })))
        .expect("valid on its own");
        let errors = ended.first_fire(now).expect_err("never fires");
        assert_eq!(errors.errors()[0].field, "end_at");
        assert!(errors.errors()[0].message.contains("2026-12-08T00:00:00Z"));

        let running = TriggerSpec::try_from(input(serde_json::json!({
            "kind": "interval", "every": "1h"
        })))
        .expect("valid");
        assert_eq!(
            running.first_fire(now).ok(),
            Some(at("2026-12-07T11:00:00Z"))
        );

        let errors = refusal(serde_json::json!({
            "kind": "once", "at": "2026-12-01T00:00:00Z", "start_at": "2026-12-02T00:00:00Z"
        }));
        assert_eq!(
            errors,
            vec![(
                "at".to_owned(),
                "is before start_at: the trigger would never fire".to_owned()
            )]
        );
        let errors = refusal(serde_json::json!({
            "kind": "once", "at": "2026-12-03T00:00:00Z", "end_at": "2026-12-02T00:00:00Z"
        }));
        assert_eq!(errors[0].0, "at");
    }

    #[test]
    fn a_once_trigger_in_the_past_is_due_at_its_instant() {
        let spec = TriggerSpec::try_from(input(serde_json::json!({
            "kind": "once", "at": "2001-01-01T00:00:00Z"
        })))
        .expect("valid");
        let now = at("2026-12-07T10:00:00Z");
        assert_eq!(spec.first_fire(now).ok(), Some(at("2001-01-01T00:00:00Z")));
        // Found that late, the default misfire policy gives it one task.
        let plan = crate::firing::plan(at("2001-01-01T00:00:00Z"), now, spec.misfire_rule(), |t| {
            spec.timetable().ok().and_then(|tt| tt.next_after(t))
        });
        assert_eq!(plan.fire, vec![at("2001-01-01T00:00:00Z")]);
        assert_eq!(plan.next_fire_at, None);
    }

    fn spec(body: serde_json::Value) -> Result<TriggerSpec, ValidationErrors> {
        let input: TriggerInput = serde_json::from_value(body).expect("a trigger input");
        TriggerSpec::try_from(input)
    }

    #[test]
    fn jitter_delays_each_occurrence_deterministically_within_its_bound_and_never_early() {
        let jittered =
            spec(serde_json::json!({ "kind": "interval", "every": "1s", "jitter": "30s" }))
                .expect("valid");
        let trigger: Uuid = "0193a5c0-1b2c-7d3e-8f40-5a6b7c8d9e0f"
            .parse()
            .expect("uuid");
        let other: Uuid = "0193a5c0-1b2c-7d3e-8f40-5a6b7c8d9e10"
            .parse()
            .expect("uuid");
        let start: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().expect("instant");
        let mut offsets = std::collections::BTreeSet::new();
        for second in 0..1000 {
            let scheduled = start + chrono::Duration::seconds(second);
            let fire = jittered.fire_at(trigger, scheduled);
            assert_eq!(
                fire,
                jittered.fire_at(trigger, scheduled),
                "the same every time"
            );
            let offset = fire - scheduled;
            assert!(offset >= chrono::Duration::zero(), "never early");
            assert!(offset < chrono::Duration::seconds(30), "within the jitter");
            offsets.insert(offset.num_milliseconds());
        }
        assert!(
            offsets.len() > 900,
            "spread over the window: {}",
            offsets.len()
        );
        assert_ne!(
            jittered.fire_at(trigger, start),
            jittered.fire_at(other, start),
            "triggers on one schedule fire apart"
        );
        let plain = spec(serde_json::json!({ "kind": "interval", "every": "1s" })).expect("valid");
        assert_eq!(plain.fire_at(trigger, start), start);
        // A thousand triggers with 1s jitter fill the second evenly: no tenth holds a fifth.
        let mut tenths = [0u32; 10];
        for n in 0..1000u128 {
            let offset =
                jittered_by_one_second().fire_at(Uuid::from_u128(n << 64 | n), start) - start;
            tenths[usize::try_from(offset.num_milliseconds() / 100).expect("small")] += 1;
        }
        assert!(tenths.iter().all(|n| (50..200).contains(n)), "{tenths:?}");
    }

    fn jittered_by_one_second() -> TriggerSpec {
        spec(serde_json::json!({ "kind": "interval", "every": "1s", "jitter": "1s" }))
            .expect("valid")
    }

    #[test]
    fn a_range_yields_its_occurrences_from_included_to_excluded_up_to_a_cap() {
        let hourly = spec(serde_json::json!({ "kind": "cron", "expression": "0 0 * * * *" }))
            .expect("valid")
            .timetable()
            .expect("timetable");
        let t = |s: &str| s.parse::<DateTime<Utc>>().expect("instant");
        let found = hourly
            .between(t("2026-12-01T00:00:00Z"), t("2026-12-01T03:00:00Z"), 10)
            .expect("within the cap");
        assert_eq!(
            found,
            [
                t("2026-12-01T00:00:00Z"),
                t("2026-12-01T01:00:00Z"),
                t("2026-12-01T02:00:00Z")
            ]
        );
        let shifted = hourly
            .between(t("2026-12-01T00:00:00.5Z"), t("2026-12-01T02:00:00Z"), 10)
            .expect("within the cap");
        assert_eq!(shifted, [t("2026-12-01T01:00:00Z")]);
        assert_eq!(
            hourly.between(t("2026-12-01T00:00:00Z"), t("2026-12-02T00:00:00Z"), 23),
            Err(23)
        );
        assert_eq!(
            hourly
                .between(t("2026-12-01T00:00:00Z"), t("2026-12-02T00:00:00Z"), 24)
                .map(|v| v.len()),
            Ok(24)
        );
    }

    #[test]
    fn calendars_and_jitter_are_checked() {
        let errors = spec(serde_json::json!({
            "kind": "cron", "expression": "0 * * * *",
            "calendars": ["holidays", "holidays", "-bad"], "jitter": "2h"
        }))
        .expect_err("refused");
        let fields: Vec<_> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["calendars[1]", "calendars[2]", "jitter"]);
        let ok = spec(serde_json::json!({
            "kind": "cron", "expression": "0 * * * *", "calendars": ["holidays"], "jitter": "30s"
        }))
        .expect("valid");
        assert_eq!(ok.calendars, ["holidays"]);
        let stored = serde_json::to_value(&ok).expect("json");
        assert_eq!(stored["jitter"], "30s");
        let back: TriggerSpec = serde_json::from_value(stored).expect("reads back");
        assert_eq!(back, ok);
    }
}
