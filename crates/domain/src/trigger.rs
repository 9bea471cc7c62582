//! Triggers: when a job fires. [`TriggerInput`] is what a client sends; a [`TriggerSpec`] exists
//! only once its schedule parses and its bounds make sense.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    pub catch_up_limit: Option<u32>,
    pub description: Option<String>,
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
                        .minimum(Some(0))
                        .maximum(Some(u32::MAX))
                        .description(Some("Most tasks `catch_up` creates (default 100).")),
                )
                .property("description", string())
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
}

/// Defaults a trigger takes when its definition leaves a field out.
pub mod defaults {
    use crate::Span;

    /// An occurrence at most this late counts as on time.
    pub const MISFIRE_GRACE: Span = Span::from_secs(60);
    /// Most tasks `catch_up` creates for missed occurrences.
    pub const CATCH_UP_LIMIT: u32 = 100;
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

    /// The misfire settings.
    pub fn misfire_rule(&self) -> MisfireRule {
        MisfireRule {
            policy: self.misfire,
            grace: self.misfire_grace,
            catch_up_limit: self.catch_up_limit,
        }
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
        });
        if let Some(Err(error)) = spec.as_ref().map(TriggerSpec::timetable) {
            let field = match error {
                ScheduleError::TimeZone(_) => "timezone",
                ScheduleError::Interval(_) => "every",
                ScheduleError::Expression(_) => "expression",
            };
            errors.push(field, error.to_string());
        }
        if let (Some(start), Some(end)) = (input.start_at, input.end_at)
            && end <= start
        {
            errors.push("end_at", "must be after start_at");
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
        match spec {
            Some(spec) if errors.is_empty() => Ok(spec),
            _ => Err(errors),
        }
    }
}
