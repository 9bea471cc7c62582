//! Event subscriptions: a receiver of the event log filtered by job (or job labels) and event
//! kind, each with its own position in the log and its own delivery loop on the leader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{OutboundAuth, ValidationErrors};

/// The most events in one `POST` a subscription may ask for.
pub const MAX_BATCH: u32 = 1000;

/// A subscription as a client writes it (`PUT /api/v1/subscriptions/{name}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Where batches of events are posted (`{"events": [...]}`): an `http` or `https` URL with
    /// a host, at most 2048 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 2048, pattern = r"^https?://[^/?#\s]+([/?#]\S*)?$")
    )]
    pub url: String,
    /// Only the events of these jobs (at most 100 names); every job's when empty. Not together
    /// with `labels`.
    #[serde(default)]
    pub jobs: Vec<String>,
    /// Only the events of jobs carrying all these labels. Not together with `jobs`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Only these event kinds (`task.state`, `task.callback`, `alert.opened`, …); every kind
    /// when empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// The credentials sent, as a job's `target.auth`.
    #[serde(default)]
    pub auth: OutboundAuth,
    /// Most events in one `POST` (1–1000); 100 when absent.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    #[serde(default, deserialize_with = "crate::validation::optional_whole_number")]
    pub batch_size: Option<u32>,
    /// At most 1000 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
}

/// A validated subscription.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "OutboundAuth::is_none")]
    pub auth: OutboundAuth,
    pub batch_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// True for an event kind as the log writes them: lower-case words joined by `.` or `_`.
fn is_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
}

impl TryFrom<SubscriptionInput> for SubscriptionSpec {
    type Error = ValidationErrors;

    fn try_from(input: SubscriptionInput) -> Result<Self, Self::Error> {
        let mut errors = ValidationErrors::new();
        let url = &input.url;
        if url.len() > 2048 {
            errors.push("url", "at most 2048 characters");
        } else {
            match url::Url::parse(url) {
                Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                    errors.push("url", "must be an http or https URL");
                }
                Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                    errors.push("url", "must name a host");
                }
                Ok(_) => {}
                Err(e) => errors.push("url", format!("not a valid URL: {e}")),
            }
        }
        if !input.jobs.is_empty() && !input.labels.is_empty() {
            errors.push("jobs", "filter by jobs or by labels, not both");
        }
        if input.jobs.len() > 100 {
            errors.push("jobs", "at most 100 jobs");
        }
        for (i, job) in input.jobs.iter().enumerate() {
            if job.parse::<crate::JobName>().is_err() {
                errors.push(format!("jobs[{i}]"), "not a job name");
            }
        }
        if input.labels.len() > 32 {
            errors.push("labels", "at most 32 labels");
        }
        if input.events.len() > 64 {
            errors.push("events", "at most 64 event kinds");
        }
        for (i, kind) in input.events.iter().enumerate() {
            if !is_kind(kind) {
                errors.push(
                    format!("events[{i}]"),
                    "an event kind like task.state: lower-case letters, digits, '.' and '_'",
                );
            }
        }
        crate::job::check_auth(&mut errors, "auth", &input.auth);
        let batch_size = input.batch_size.unwrap_or(100);
        if !(1..=MAX_BATCH).contains(&batch_size) {
            errors.push("batch_size", format!("must be between 1 and {MAX_BATCH}"));
        }
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            errors.push("description", "at most 1000 characters");
        }
        let mut jobs = input.jobs;
        jobs.sort();
        jobs.dedup();
        let mut events = input.events;
        events.sort();
        events.dedup();
        errors.into_result(SubscriptionSpec {
            url: input.url,
            jobs,
            labels: input.labels,
            events,
            auth: input.auth,
            batch_size,
            description: input.description,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(body: serde_json::Value) -> Result<SubscriptionSpec, ValidationErrors> {
        SubscriptionSpec::try_from(
            serde_json::from_value::<SubscriptionInput>(body).expect("input"),
        )
    }

    #[test]
    fn a_subscription_filters_by_jobs_or_labels_and_kinds() {
        let s = spec(
            json!({ "url": "https://team.example/events", "jobs": ["b", "a", "a"],
                             "events": ["task.state"] }),
        )
        .expect("valid");
        assert_eq!(s.jobs, ["a", "b"]);
        assert_eq!(s.batch_size, 100);
        assert!(
            spec(json!({ "url": "https://x.example/", "jobs": ["a"], "labels": { "t": "x" } }))
                .is_err()
        );
        assert!(spec(json!({ "url": "ftp://x.example/" })).is_err());
        assert!(spec(json!({ "url": "https://x.example/", "events": ["Task State"] })).is_err());
        assert!(spec(json!({ "url": "https://x.example/", "batch_size": 0 })).is_err());
        // JSON says nothing of how a number is written: 66.0 is the whole number 66.
        assert_eq!(
            spec(json!({ "url": "https://x.example/", "batch_size": 66.0 }))
                .expect("valid")
                .batch_size,
            66
        );
    }
}
