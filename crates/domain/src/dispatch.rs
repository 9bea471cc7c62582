//! What a dispatch's answer means for its task: the response table of the design, as a pure
//! function from (task, job, outcome) to the next state, the next dispatch and the attempt record.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::{CallbackStatus, FailureReason, JobSpec, TaskEvent, TaskState, Transition};

/// The longest `Retry-After` honoured; anything longer is capped so a typo downstream cannot
/// park a task for days (the job's `timeout` still applies on top).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How an HTTP status answering a dispatch is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// 2xx: the downstream took the task.
    Accepted,
    /// 409: the downstream is already working on it.
    AlreadyRunning,
    /// 408, 429, 5xx: try again later.
    Transient,
    /// Any other status (other 4xx, unfollowed redirects): the task fails.
    Permanent,
}

/// Classifies a dispatch response status.
pub fn classify_status(status: u16) -> ResponseClass {
    match status {
        200..=299 => ResponseClass::Accepted,
        409 => ResponseClass::AlreadyRunning,
        408 | 429 | 500..=599 => ResponseClass::Transient,
        _ => ResponseClass::Permanent,
    }
}

/// A downstream's report on a task: a callback body, or the status body of a 2xx answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Report {
    pub status: CallbackStatus,
    #[serde(default)]
    pub progress: Option<Value>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
    /// What the downstream saw of its input (`skip_if_unchanged`); see [`crate::fingerprint`].
    /// Boxed, so that an answer carrying a report stays small on the dispatch path.
    #[serde(default)]
    pub fingerprint: Option<Box<str>>,
    /// The downstream found its input unchanged and did nothing.
    #[serde(default)]
    pub unchanged: bool,
}

impl Report {
    /// The task event this report stands for.
    pub fn event(&self) -> TaskEvent {
        TaskEvent::Reported(self.status)
    }

    /// The report with a fingerprint [`check_fingerprint`](crate::fingerprint::check_fingerprint)
    /// refuses left out: for an answer's status body, which no one can be told is wrong. Without
    /// it the input counts as changed, so the next run does its work rather than skip it.
    pub fn without_bad_fingerprint(mut self) -> Self {
        if self
            .fingerprint
            .as_deref()
            .is_some_and(|f| crate::fingerprint::check_fingerprint(f).is_err())
        {
            self.fingerprint = None;
        }
        self
    }
}

/// What came of one dispatch.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    /// 2xx, with the report its body carried, if any.
    Accepted { status: u16, report: Option<Report> },
    /// The message broker confirmed a published dispatch (an `amqp` target): accepted, as a
    /// 2xx without a report.
    Published,
    /// 409.
    AlreadyRunning,
    /// 408, 429, 5xx, a timeout or a connection error.
    Transient {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Any other answer.
    Permanent { status: u16, error: String },
}

impl DispatchOutcome {
    /// The HTTP status the downstream answered with, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            DispatchOutcome::Accepted { status, .. }
            | DispatchOutcome::Permanent { status, .. } => Some(*status),
            DispatchOutcome::AlreadyRunning => Some(409),
            DispatchOutcome::Published => None,
            DispatchOutcome::Transient { status, .. } => *status,
        }
    }

    /// The attempt's recorded outcome.
    pub fn attempt_outcome(&self) -> AttemptOutcome {
        match self {
            DispatchOutcome::Accepted { .. } | DispatchOutcome::Published => {
                AttemptOutcome::Accepted
            }
            DispatchOutcome::AlreadyRunning => AttemptOutcome::AlreadyRunning,
            DispatchOutcome::Transient { .. } => AttemptOutcome::TransientError,
            DispatchOutcome::Permanent { .. } => AttemptOutcome::PermanentError,
        }
    }

    /// The error text, for the attempt record and the task's `last_error`.
    pub fn error(&self) -> Option<&str> {
        match self {
            DispatchOutcome::Transient { error, .. } | DispatchOutcome::Permanent { error, .. } => {
                Some(error)
            }
            _ => None,
        }
    }
}

/// The recorded outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Accepted,
    AlreadyRunning,
    TransientError,
    PermanentError,
    /// The node holding the claim vanished; its lease ran out and another node took over.
    Abandoned,
    /// The node shut down before the dispatch finished and released the task.
    Interrupted,
}

impl AttemptOutcome {
    /// The wire and database name of the outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Accepted => "accepted",
            AttemptOutcome::AlreadyRunning => "already_running",
            AttemptOutcome::TransientError => "transient_error",
            AttemptOutcome::PermanentError => "permanent_error",
            AttemptOutcome::Abandoned => "abandoned",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision after a dispatch: what to write to the task.
#[derive(Debug, Clone, PartialEq)]
pub struct AfterDispatch {
    /// The new state, or `None` to leave the state as it is.
    pub state: Option<TaskState>,
    /// When to dispatch next, from now; `None` once the task is terminal.
    pub next_dispatch_in: Option<Duration>,
    /// Transient errors in a row after this attempt.
    pub consecutive_failures: u32,
    /// Set when the task fails.
    pub failure_reason: Option<FailureReason>,
    /// The report to record (progress, message, result) when the answer carried one.
    pub report: Option<Report>,
}

/// Decides what a dispatch's `outcome` does to a task in `state` that had `failures` transient
/// errors in a row before it. `sample` is a uniform random number in `[0, 1)` for the jitter.
pub fn after_dispatch(
    state: TaskState,
    failures: u32,
    job: &JobSpec,
    outcome: &DispatchOutcome,
    sample: f64,
) -> AfterDispatch {
    let repoll = Some(job.repoll_interval.as_duration());
    let (event, next, consecutive_failures, report) = match outcome {
        DispatchOutcome::Accepted {
            report: Some(report),
            ..
        } => {
            let next = if report.status == CallbackStatus::Processing {
                repoll
            } else {
                None
            };
            (report.event(), next, 0, Some(report.clone()))
        }
        DispatchOutcome::Accepted { report: None, .. } | DispatchOutcome::Published
            if !job.expect_callback =>
        {
            (TaskEvent::DispatchCompleted, None, 0, None)
        }
        DispatchOutcome::Accepted { report: None, .. }
        | DispatchOutcome::Published
        | DispatchOutcome::AlreadyRunning => (TaskEvent::DispatchAccepted, repoll, 0, None),
        DispatchOutcome::Transient { retry_after, .. } => {
            let failures = failures.saturating_add(1);
            if failures >= job.retry.max_attempts {
                (TaskEvent::DispatchFailed, None, failures, None)
            } else {
                let backoff = job.retry.backoff(failures, sample);
                let honoured = retry_after.map_or(Duration::ZERO, |d| d.min(MAX_RETRY_AFTER));
                (
                    TaskEvent::DispatchRetrying,
                    Some(backoff.max(honoured)),
                    failures,
                    None,
                )
            }
        }
        DispatchOutcome::Permanent { .. } => (TaskEvent::DispatchFailed, None, failures, None),
    };
    let state = match state.apply(event) {
        Transition::To(next_state) if event != TaskEvent::DispatchRetrying => Some(next_state),
        _ => None,
    };
    let failure_reason = match (event, outcome) {
        (TaskEvent::DispatchFailed, DispatchOutcome::Permanent { .. }) => {
            Some(FailureReason::Rejected)
        }
        (TaskEvent::DispatchFailed, _) => Some(FailureReason::AttemptsExhausted),
        (TaskEvent::Reported(CallbackStatus::Failed), _) => Some(FailureReason::Reported),
        _ => None,
    };
    AfterDispatch {
        state,
        next_dispatch_in: next,
        consecutive_failures,
        failure_reason,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobInput, RetryPolicy, Span};

    fn job(expect_callback: bool, max_attempts: u32) -> JobSpec {
        let input: JobInput = serde_json::from_value(serde_json::json!({
            "target": { "url": "http://downstream.example/run" },
            "repoll_interval": "30s",
            "expect_callback": expect_callback,
            "retry": { "max_attempts": max_attempts, "initial_backoff": "1s", "jitter": 0.0 },
        }))
        .expect("valid input");
        JobSpec::try_from(input).expect("valid job")
    }

    #[test]
    fn statuses_are_classified_per_the_response_table() {
        for (status, class) in [
            (200, ResponseClass::Accepted),
            (202, ResponseClass::Accepted),
            (204, ResponseClass::Accepted),
            (409, ResponseClass::AlreadyRunning),
            (408, ResponseClass::Transient),
            (429, ResponseClass::Transient),
            (500, ResponseClass::Transient),
            (503, ResponseClass::Transient),
            (400, ResponseClass::Permanent),
            (404, ResponseClass::Permanent),
            (422, ResponseClass::Permanent),
            (302, ResponseClass::Permanent),
        ] {
            assert_eq!(classify_status(status), class, "{status}");
        }
    }

    #[test]
    fn an_accepted_dispatch_moves_to_processing_and_schedules_a_repoll() {
        let after = after_dispatch(
            TaskState::Pending,
            3,
            &job(true, 5),
            &DispatchOutcome::Accepted {
                status: 202,
                report: None,
            },
            0.5,
        );
        assert_eq!(after.state, Some(TaskState::Processing));
        assert_eq!(after.next_dispatch_in, Some(Duration::from_secs(30)));
        assert_eq!(
            after.consecutive_failures, 0,
            "an accepted dispatch resets the streak"
        );
        assert_eq!(after.failure_reason, None);
    }

    #[test]
    fn without_a_callback_expected_a_2xx_completes_the_task() {
        let after = after_dispatch(
            TaskState::Pending,
            0,
            &job(false, 5),
            &DispatchOutcome::Accepted {
                status: 200,
                report: None,
            },
            0.5,
        );
        assert_eq!(after.state, Some(TaskState::Completed));
        assert_eq!(after.next_dispatch_in, None);
    }

    #[test]
    fn a_publisher_confirm_counts_as_an_accepted_dispatch() {
        let processing = after_dispatch(
            TaskState::Pending,
            2,
            &job(true, 5),
            &DispatchOutcome::Published,
            0.5,
        );
        assert_eq!(processing.state, Some(TaskState::Processing));
        assert_eq!(processing.next_dispatch_in, Some(Duration::from_secs(30)));
        assert_eq!(processing.consecutive_failures, 0);
        let completed = after_dispatch(
            TaskState::Pending,
            0,
            &job(false, 5),
            &DispatchOutcome::Published,
            0.5,
        );
        assert_eq!(completed.state, Some(TaskState::Completed));
        assert_eq!(DispatchOutcome::Published.http_status(), None);
        assert_eq!(
            DispatchOutcome::Published.attempt_outcome(),
            AttemptOutcome::Accepted
        );
    }

    #[test]
    fn a_status_body_is_treated_as_a_callback() {
        let report = Report {
            status: CallbackStatus::Failed,
            progress: None,
            message: Some("bad input".into()),
            result: None,
            fingerprint: None,
            unchanged: false,
        };
        let after = after_dispatch(
            TaskState::Processing,
            0,
            &job(true, 5),
            &DispatchOutcome::Accepted {
                status: 200,
                report: Some(report.clone()),
            },
            0.5,
        );
        assert_eq!(after.state, Some(TaskState::Failed));
        assert_eq!(after.failure_reason, Some(FailureReason::Reported));
        assert_eq!(after.report, Some(report));
        assert_eq!(after.next_dispatch_in, None);
    }

    #[test]
    fn a_conflict_means_already_running_and_keeps_polling() {
        let after = after_dispatch(
            TaskState::Pending,
            0,
            &job(true, 5),
            &DispatchOutcome::AlreadyRunning,
            0.5,
        );
        assert_eq!(after.state, Some(TaskState::Processing));
        assert_eq!(after.next_dispatch_in, Some(Duration::from_secs(30)));
    }

    #[test]
    fn transient_errors_back_off_then_fail_when_attempts_run_out() {
        let transient = |retry_after| DispatchOutcome::Transient {
            status: Some(503),
            error: "503 Service Unavailable".into(),
            retry_after,
        };
        let job = job(true, 3);
        let first = after_dispatch(TaskState::Pending, 0, &job, &transient(None), 0.5);
        assert_eq!(first.state, None, "a retry leaves the state alone");
        assert_eq!(first.next_dispatch_in, Some(Duration::from_secs(1)));
        assert_eq!(first.consecutive_failures, 1);

        let second = after_dispatch(
            TaskState::Processing,
            1,
            &job,
            &transient(Some(Duration::from_secs(7))),
            0.5,
        );
        assert_eq!(
            second.next_dispatch_in,
            Some(Duration::from_secs(7)),
            "Retry-After wins"
        );

        let capped = after_dispatch(
            TaskState::Processing,
            1,
            &job,
            &transient(Some(Duration::from_secs(86_400))),
            0.5,
        );
        assert_eq!(capped.next_dispatch_in, Some(MAX_RETRY_AFTER));

        let last = after_dispatch(TaskState::Pending, 2, &job, &transient(None), 0.5);
        assert_eq!(last.state, Some(TaskState::Failed));
        assert_eq!(last.failure_reason, Some(FailureReason::AttemptsExhausted));
        assert_eq!(last.next_dispatch_in, None);
    }

    #[test]
    fn a_permanent_error_fails_the_task_at_once() {
        let after = after_dispatch(
            TaskState::Pending,
            0,
            &job(true, 5),
            &DispatchOutcome::Permanent {
                status: 400,
                error: "400 Bad Request".into(),
            },
            0.5,
        );
        assert_eq!(after.state, Some(TaskState::Failed));
        assert_eq!(after.failure_reason, Some(FailureReason::Rejected));
    }

    #[test]
    fn the_default_retry_policy_is_used_when_none_is_given() {
        let input: JobInput =
            serde_json::from_value(serde_json::json!({ "target": { "url": "https://a.example" } }))
                .expect("valid input");
        let spec = JobSpec::try_from(input).expect("valid job");
        assert_eq!(spec.retry, RetryPolicy::default());
        assert_eq!(spec.repoll_interval, Span::from_secs(30));
    }
}
