//! Alerts: the kinds of problem Pacer raises, their severities and states, a job's alert routes,
//! and the one-line text a notification carries.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationErrors;
use crate::job::JobName;

/// What went wrong.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A task passed its job's deadline without ending.
    Overdue,
    /// A task ended `failed` (or `completed_with_errors`, at warning level).
    Failed,
    /// Occurrences or requests were skipped by the misfire or overlap policy.
    Missed,
    /// A job's dispatches failed transiently many times in a row: its downstream looks down.
    DispatchErrors,
    /// A node stopped heartbeating without a clean shutdown.
    NodeLost,
    /// A job's last completed run started longer ago than its `freshness`: its data is old.
    Stale,
}

impl AlertKind {
    /// Every kind, for gauges and listings.
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Overdue,
        AlertKind::Failed,
        AlertKind::Missed,
        AlertKind::DispatchErrors,
        AlertKind::NodeLost,
        AlertKind::Stale,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Overdue => "overdue",
            AlertKind::Failed => "failed",
            AlertKind::Missed => "missed",
            AlertKind::DispatchErrors => "dispatch_errors",
            AlertKind::NodeLost => "node_lost",
            AlertKind::Stale => "stale",
        }
    }

    /// The severity of this kind unless configuration says otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            AlertKind::Overdue | AlertKind::Missed | AlertKind::Stale => Severity::Warning,
            AlertKind::Failed | AlertKind::DispatchErrors | AlertKind::NodeLost => {
                Severity::Critical
            }
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not an alert kind, severity or state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not one of {expected}")]
pub struct UnknownName {
    pub given: String,
    pub expected: &'static str,
}

impl FromStr for AlertKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName {
                given: s.to_owned(),
                expected: "overdue, failed, missed, dispatch_errors, node_lost, stale",
            })
    }
}

/// How urgent an alert is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            _ => Err(UnknownName {
                given: s.to_owned(),
                expected: "info, warning, critical",
            }),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert is in its life: `open` → `acked` (optional) → `resolved`, which is final.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Raised and not yet seen to; repeats re-notify after the re-notify interval.
    Open,
    /// An operator took it; repeats are counted but notify no one.
    Acked,
    /// Closed, by an operator or because its condition cleared. A repeat opens a new alert.
    Resolved,
}

impl AlertState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acked => "acked",
            AlertState::Resolved => "resolved",
        }
    }
}

impl FromStr for AlertState {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(AlertState::Open),
            "acked" => Ok(AlertState::Acked),
            "resolved" => Ok(AlertState::Resolved),
            _ => Err(UnknownName {
                given: s.to_owned(),
                expected: "open, acked, resolved",
            }),
        }
    }
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of the built-in sink that writes to the log.
pub const LOG_SINK: &str = "log";

/// A job's alert routes: which configured sinks hear about its failures (`failed`, `missed`,
/// `dispatch_errors`, `stale`), its overdue tasks, and its completed tasks; and severity overrides per
/// kind. Every field is optional; a job without routes alerts only the global sinks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAlerts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = sink_list_schema))]
    pub on_failure: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = sink_list_schema))]
    pub on_overdue: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = sink_list_schema))]
    pub on_success: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = severity_schema))]
    pub severity: BTreeMap<AlertKind, Severity>,
}

/// At most 16 sink names, each 1 to 64 letters, digits, `.`, `_` or `-`: what
/// [`JobAlerts::check`] takes.
#[cfg(feature = "openapi")]
fn sink_list_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};

    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
        )
        .max_items(Some(16))
        .description(Some("Names of configured alert sinks (at most 16)."))
        .build()
}

/// Severity overrides by kind; `node_lost` is about no job, so it is not among the keys.
#[cfg(feature = "openapi")]
fn severity_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{Ref, RefOr, schema::AdditionalProperties};

    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([
                    "overdue",
                    "failed",
                    "missed",
                    "dispatch_errors",
                    "stale",
                ])),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::Ref(
            Ref::from_schema_name("Severity"),
        ))))
        .build()
}

impl JobAlerts {
    /// True when the job routes nothing and overrides nothing.
    pub fn is_empty(&self) -> bool {
        *self == JobAlerts::default()
    }

    /// The sinks (by name) that hear about an alert of `kind` for this job.
    pub fn routes(&self, kind: AlertKind) -> &[String] {
        match kind {
            AlertKind::Overdue => &self.on_overdue,
            AlertKind::Failed
            | AlertKind::Missed
            | AlertKind::DispatchErrors
            | AlertKind::Stale => &self.on_failure,
            AlertKind::NodeLost => &[],
        }
    }

    /// Every sink name the routes mention, with the field that mentions it.
    pub fn sink_names(&self) -> impl Iterator<Item = (String, &str)> {
        self.on_failure
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("alerts.on_failure[{i}]"), n.as_str()))
            .chain(
                self.on_overdue
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("alerts.on_overdue[{i}]"), n.as_str())),
            )
            .chain(
                self.on_success
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("alerts.on_success[{i}]"), n.as_str())),
            )
    }

    /// Checks the shape of the routes: names well formed, no list longer than 16.
    pub fn check(&self, errors: &mut ValidationErrors) {
        for (field, names) in [
            ("alerts.on_failure", &self.on_failure),
            ("alerts.on_overdue", &self.on_overdue),
            ("alerts.on_success", &self.on_success),
        ] {
            if names.len() > 16 {
                errors.push(field, "at most 16 sinks");
            }
        }
        for (field, name) in self.sink_names() {
            if name.parse::<JobName>().is_err() {
                errors.push(
                    field,
                    "a sink name is 1 to 64 letters, digits, '.', '_' or '-'",
                );
            }
        }
        if self.severity.contains_key(&AlertKind::NodeLost) {
            errors.push(
                "alerts.severity.node_lost",
                "node_lost is not about a job; set its severity in the configuration",
            );
        }
    }
}

/// The severity of an alert of `kind`: the job's override, else the configured one, else the
/// kind's default.
pub fn severity_of(
    kind: AlertKind,
    job: Option<&JobAlerts>,
    configured: &BTreeMap<AlertKind, Severity>,
) -> Severity {
    job.and_then(|j| j.severity.get(&kind))
        .or_else(|| configured.get(&kind))
        .copied()
        .unwrap_or_else(|| kind.default_severity())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_states_and_severities_round_trip_their_names() {
        for kind in AlertKind::ALL {
            assert_eq!(kind.as_str().parse::<AlertKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                json!(kind.as_str())
            );
        }
        for state in [AlertState::Open, AlertState::Acked, AlertState::Resolved] {
            assert_eq!(state.as_str().parse::<AlertState>(), Ok(state));
        }
        assert!("closed".parse::<AlertState>().is_err());
        assert!("late".parse::<AlertKind>().is_err());
        assert_eq!("critical".parse::<Severity>(), Ok(Severity::Critical));
    }

    #[test]
    fn a_job_override_beats_the_configuration_which_beats_the_default() {
        let job: JobAlerts =
            serde_json::from_value(json!({ "severity": { "overdue": "critical" } }))
                .expect("valid routes");
        let configured = BTreeMap::from([
            (AlertKind::Overdue, Severity::Info),
            (AlertKind::Missed, Severity::Info),
        ]);
        assert_eq!(
            severity_of(AlertKind::Overdue, Some(&job), &configured),
            Severity::Critical
        );
        assert_eq!(
            severity_of(AlertKind::Missed, Some(&job), &configured),
            Severity::Info
        );
        assert_eq!(
            severity_of(AlertKind::Failed, Some(&job), &configured),
            Severity::Critical
        );
    }

    #[test]
    fn routes_are_checked_and_chosen_by_kind() {
        let job: JobAlerts = serde_json::from_value(json!({
            "on_failure": ["ops", "bad name!"],
            "on_overdue": ["pager"],
            "severity": { "node_lost": "info" },
        }))
        .expect("deserializes");
        let mut errors = ValidationErrors::new();
        job.check(&mut errors);
        let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["alerts.on_failure[1]", "alerts.severity.node_lost"]
        );
        assert_eq!(job.routes(AlertKind::Overdue), ["pager"]);
        assert_eq!(job.routes(AlertKind::DispatchErrors).len(), 2);
        assert!(job.routes(AlertKind::NodeLost).is_empty());
        let unknown: Result<JobAlerts, _> = serde_json::from_value(json!({ "on_panic": [] }));
        assert!(unknown.is_err());
    }
}
