//! Completion notices a task's creator asks for (`notify` on task creation or on a message):
//! where Pacer posts the task when it ends, or at every state change, and how it signs them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{OutboundAuth, ValidationErrors};

/// Where and when Pacer tells the task's creator about it: a `POST` of the task to `url`, signed
/// with `auth` (the job's outbound auth when absent), with an `Idempotency-Key` of
/// `<task>:<event>`, retried with backoff until accepted.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({ "url": "https://rip.example/sync-done", "events": ["finished"] })))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Where notices are posted: an `http` or `https` URL starting with one of the node's
    /// configured `notify.allowed_urls`.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 2048, pattern = r"^https?://[^/?#\s]+([/?#]\S*)?$")
    )]
    pub url: String,
    /// `finished`: once, when the task (a run, for a job made of steps) ends; `state`: at every
    /// state change. `["finished"]` when absent.
    #[serde(default)]
    pub events: Option<Vec<NotifyEvent>>,
    /// How notices are signed (`hmac`, `bearer` or `jwt`); the job's outbound auth when absent.
    pub auth: Option<OutboundAuth>,
}

/// What a task's creator is told about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Finished,
    State,
}

impl Notify {
    /// Checks the request against the allowed URL prefixes and, when given, the names of the
    /// configured secrets; errors name `notify.…` fields.
    pub fn check(
        &self,
        allowed: &[String],
        secrets: Option<&std::collections::BTreeSet<String>>,
    ) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let url = &self.url;
        if url.len() > 2048
            || !(url.starts_with("http://") || url.starts_with("https://"))
            || url.chars().any(char::is_whitespace)
        {
            errors.push(
                "notify.url",
                "an http or https URL of at most 2048 characters",
            );
        } else if !allowed
            .iter()
            .any(|prefix| url.starts_with(prefix.as_str()))
        {
            errors.push(
                "notify.url",
                "not under an allowed prefix (the node's notify.allowed_urls)",
            );
        }
        if self.events.as_ref().is_some_and(Vec::is_empty) {
            errors.push("notify.events", "name at least one of finished, state");
        }
        if let Some(auth) = &self.auth {
            if matches!(auth, OutboundAuth::OAuth2 { .. }) {
                // A token endpoint would be a host outside the allowed prefixes.
                errors.push(
                    "notify.auth.kind",
                    "oauth2 is not taken for notices: hmac, bearer or jwt, or leave auth out to use the job's",
                );
            } else {
                crate::job::check_auth(&mut errors, "notify.auth", auth);
                if let (Some(secret), Some(secrets)) = (auth.secret(), secrets)
                    && errors.is_empty()
                    && !secrets.contains(secret)
                {
                    errors.push(
                        format!("notify.auth.{}", auth.secret_field()),
                        format!("the secret `{secret}` is not configured"),
                    );
                }
            }
        }
        errors.into_result(())
    }

    /// The stored form, `{url, events, auth}`, with the auth resolved: its own, else the job's.
    pub fn stored(&self, job_auth: &OutboundAuth) -> Value {
        let mut events = self
            .events
            .clone()
            .unwrap_or_else(|| vec![NotifyEvent::Finished]);
        events.sort();
        events.dedup();
        let auth = self.auth.clone().unwrap_or_else(|| job_auth.clone());
        json!({ "url": self.url, "events": events, "auth": auth })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(body: Value) -> Notify {
        serde_json::from_value(body).expect("notify")
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_are_taken() {
        let allowed = vec!["https://rip.example/".to_owned()];
        assert!(
            notify(json!({ "url": "https://rip.example/done" }))
                .check(&allowed, None)
                .is_ok()
        );
        for url in [
            "https://rip.example.evil/x",
            "http://rip.example/done",
            "ftp://rip.example/",
        ] {
            let refused = notify(json!({ "url": url })).check(&allowed, None);
            assert_eq!(refused.expect_err(url).errors()[0].field, "notify.url");
        }
        assert!(
            notify(json!({ "url": "https://rip.example/done" }))
                .check(&[], None)
                .is_err()
        );
        let stored = notify(
            json!({ "url": "https://rip.example/d", "events": ["state", "finished", "state"] }),
        )
        .stored(&OutboundAuth::Jwt {
            audience: "rip".into(),
        });
        assert_eq!(stored["events"], json!(["finished", "state"]));
        assert_eq!(stored["auth"], json!({ "kind": "jwt", "audience": "rip" }));
    }
}
