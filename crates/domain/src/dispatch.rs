//! What a dispatch's answer means for its task: the response table of the design, as a pure
//! function from (task, job, outcome) to the next state, the next dispatch and the attempt record.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    CallbackStatus, FailureReason, JobSpec, RetryPolicy, TaskEvent, TaskState, Transition,
};

/// The longest `Retry-After` honoured; anything longer is capped so a typo downstream cannot
/// park a task for days (the job's `timeout` still applies on top).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub use crate::retry::ResponseClass;

/// Classifies a dispatch response status under a job's retry policy (see
/// [`RetryPolicy::classify`]).
pub fn classify_status(status: u16, retry: &RetryPolicy) -> ResponseClass {
    retry.classify(status)
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
    /// What went wrong, with a `failed` status: a code the job's `retry.on_errors` may name.
    /// Boxed: most reports carry none, and a report travels inside every dispatch outcome.
    #[serde(default)]
    pub error: Option<Box<ReportedError>>,
    /// With a `failed` status: dispatch the task again whatever its error code.
    #[serde(default)]
    pub retryable: bool,
}

/// The error a downstream reports with a `failed` status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedError {
    /// A code the job's `retry.on_errors` may name: 1 to 128 characters, no control
    /// characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 128,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
        )
    )]
    pub code: String,
    /// At most 4000 characters.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4000))]
    pub message: Option<String>,
}

impl ReportedError {
    /// Why a code or message is refused, naming the field under `prefix` (`error`).
    pub fn check(&self, prefix: &str) -> Result<(), (String, &'static str)> {
        if self.code.is_empty()
            || self.code.chars().count() > 128
            || self.code.chars().any(char::is_control)
        {
            return Err((
                format!("{prefix}.code"),
                "1 to 128 characters, no control characters",
            ));
        }
        if self
            .message
            .as_ref()
            .is_some_and(|m| m.chars().count() > 4000)
        {
            return Err((format!("{prefix}.message"), "at most 4000 characters"));
        }
        Ok(())
    }

    /// The text a task's `last_error` and an attempt's error show: `code: message`.
    pub fn text(&self) -> String {
        match self.message.as_deref().map(str::trim) {
            Some(message) if !message.is_empty() => format!("{}: {message}", self.code),
            _ => self.code.clone(),
        }
    }
}

impl Report {
    /// The task event this report stands for, before the retry policy has a say (see
    /// [`after_failed_report`]).
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

    /// True for a `failed` report the retry policy must look at: one that names an error or
    /// asks to be retried.
    pub fn is_failure_to_weigh(&self) -> bool {
        self.status == CallbackStatus::Failed && (self.error.is_some() || self.retryable)
    }

    /// The reported error's code.
    pub fn error_code(&self) -> Option<&str> {
        self.error.as_ref().map(|e| e.code.as_str())
    }
}

/// What a `failed` report does to its open task under the job's retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReportedFailure {
    /// Dispatch the task again after `after` (same task, next attempt); it waits `pending`.
    Retry {
        after: Duration,
        /// Transient errors in a row, counting this one.
        consecutive_failures: u32,
        /// Reported failures retried so far in the task, counting this one.
        reported_failures: u32,
    },
    /// The task fails: the error is final (`reported`), or it was the last allowed attempt
    /// (`attempts_exhausted`).
    Fail(FailureReason),
}

/// Decides a `failed` report. A code the policy's `on_errors` names, or `retryable: true`,
/// retries the task with backoff; each such failure counts against `max_attempts` as a transient
/// error in a row, and the reported ones never reset within the task (an accepted dispatch in
/// between does not make a failed run good). `failures` is the task's transient errors in a row,
/// `reported` its reported failures retried so far; `sample` is as in [`RetryPolicy::backoff`].
pub fn after_failed_report(
    failures: u32,
    reported: u32,
    retry: &RetryPolicy,
    report: &Report,
    sample: f64,
) -> ReportedFailure {
    if report.status != CallbackStatus::Failed
        || !retry.retries_error(report.error_code(), report.retryable)
    {
        return ReportedFailure::Fail(FailureReason::Reported);
    }
    let reported_failures = reported.saturating_add(1);
    let consecutive_failures = failures.max(reported).saturating_add(1);
    if consecutive_failures >= retry.max_attempts {
        return ReportedFailure::Fail(FailureReason::AttemptsExhausted);
    }
    ReportedFailure::Retry {
        after: retry.backoff(reported_failures, sample),
        consecutive_failures,
        reported_failures,
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
    /// Reported failures retried so far in the task, when this answer's report changed it.
    pub reported_failures: Option<u32>,
    /// The attempt's outcome when the answer's report decides it: a reported failure that is
    /// retried, or that used up the attempts, counts as a transient error.
    pub attempt: Option<AttemptOutcome>,
}

impl AfterDispatch {
    /// The error the answer's report named, as `code: message`.
    pub fn reported_error(&self) -> Option<String> {
        self.report.as_ref()?.error.as_ref().map(|e| e.text())
    }

    /// The code of the error the answer's report named.
    pub fn error_code(&self) -> Option<&str> {
        self.report.as_ref()?.error_code()
    }
}

/// Decides what a dispatch's `outcome` does to a task in `state` that had `failures` transient
/// errors in a row before it, and `reported` reported failures retried (see
/// [`after_failed_report`]). `sample` is a uniform random number in `[0, 1)` for the jitter.
pub fn after_dispatch(
    state: TaskState,
    failures: u32,
    reported: u32,
    job: &JobSpec,
    outcome: &DispatchOutcome,
    sample: f64,
) -> AfterDispatch {
    let repoll = Some(job.repoll_interval.as_duration());
    let mut reported_failures = None;
    let mut reason = None;
    let (event, next, consecutive_failures, report) = match outcome {
        DispatchOutcome::Accepted {
            report: Some(report),
            ..
        } if report.is_failure_to_weigh() => {
            match after_failed_report(failures, reported, &job.retry, report, sample) {
                ReportedFailure::Retry {
                    after,
                    consecutive_failures,
                    reported_failures: count,
                } => {
                    reported_failures = Some(count);
                    (
                        TaskEvent::ReportedRetry,
                        Some(after),
                        consecutive_failures,
                        Some(report.clone()),
                    )
                }
                ReportedFailure::Fail(why) => {
                    reason = Some(why);
                    let failures = if why == FailureReason::AttemptsExhausted {
                        failures.max(reported).saturating_add(1)
                    } else {
                        0
                    };
                    (report.event(), None, failures, Some(report.clone()))
                }
            }
        }
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
    let attempt = (event == TaskEvent::ReportedRetry
        || reason == Some(FailureReason::AttemptsExhausted))
    .then_some(AttemptOutcome::TransientError);
    let failure_reason = match (event, outcome) {
        _ if reason.is_some() => reason,
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
        reported_failures,
        attempt,
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
            assert_eq!(
                classify_status(status, &RetryPolicy::default()),
                class,
                "{status}"
            );
        }
    }

    fn policy(retry: serde_json::Value) -> RetryPolicy {
        let input: JobInput = serde_json::from_value(serde_json::json!({
            "target": { "url": "http://downstream.example/run" }, "retry": retry,
        }))
        .expect("valid input");
        JobSpec::try_from(input).expect("valid job").retry
    }

    #[test]
    fn a_job_names_the_statuses_it_retries() {
        use ResponseClass::{AlreadyRunning, Permanent, Transient};
        use serde_json::json;
        for (retry, status, class) in [
            // `on_status` replaces the default set.
            (json!({ "on_status": [404] }), 404, Transient),
            (json!({ "on_status": [404] }), 503, Permanent),
            (json!({ "on_status": [404] }), 429, Permanent),
            (json!({ "on_status": [] }), 500, Permanent),
            (json!({ "on_status": ["4xx"] }), 422, Transient),
            // A class leaves 409 alone; naming it on its own retries it.
            (json!({ "on_status": ["4xx"] }), 409, AlreadyRunning),
            (json!({ "on_status": [409] }), 409, Transient),
            (json!({ "never_on_status": [409] }), 409, Permanent),
            (json!({ "never_on_status": ["4xx"] }), 409, AlreadyRunning),
            // `never_on_status` carves out of the default set, or of `on_status`.
            (json!({ "never_on_status": [503] }), 503, Permanent),
            (json!({ "never_on_status": [503] }), 502, Transient),
            (json!({ "never_on_status": ["5xx"] }), 500, Permanent),
            (json!({ "never_on_status": ["5xx"] }), 429, Transient),
            (
                json!({ "on_status": ["5xx"], "never_on_status": [501] }),
                501,
                Permanent,
            ),
            (
                json!({ "on_status": ["5xx"], "never_on_status": [501] }),
                502,
                Transient,
            ),
            // A status named on its own wins over a class in the other list.
            (
                json!({ "on_status": [503], "never_on_status": ["5xx"] }),
                503,
                Transient,
            ),
            (
                json!({ "on_status": [503], "never_on_status": ["5xx"] }),
                500,
                Permanent,
            ),
            (json!({ "on_status": [302] }), 302, Transient),
        ] {
            let policy = policy(retry.clone());
            assert_eq!(policy.classify(status), class, "{retry} {status}");
            assert_eq!(policy.classify(204), ResponseClass::Accepted, "{retry}");
        }
    }

    fn failed(code: Option<&str>, retryable: bool) -> Report {
        Report {
            status: CallbackStatus::Failed,
            progress: None,
            message: Some("it broke".into()),
            result: None,
            error: code.map(|code| {
                Box::new(ReportedError {
                    code: code.into(),
                    message: Some("no answer in 30s".into()),
                })
            }),
            retryable,
            fingerprint: None,
            unchanged: false,
        }
    }

    #[test]
    fn a_failure_reported_with_a_named_code_is_retried_until_the_attempts_run_out() {
        let retry = policy(serde_json::json!({
            "max_attempts": 3, "initial_backoff": "1s", "jitter": 0.0,
            "on_errors": ["UpstreamTimeout"],
        }));
        let retried = |failures, reported, report: &Report| {
            after_failed_report(failures, reported, &retry, report, 0.5)
        };
        let named = failed(Some("UpstreamTimeout"), false);
        for (failures, reported, report, expected) in [
            (
                0,
                0,
                &named,
                ReportedFailure::Retry {
                    after: Duration::from_secs(1),
                    consecutive_failures: 1,
                    reported_failures: 1,
                },
            ),
            // An accepted dispatch reset the streak in between; the reported count stands.
            (
                0,
                1,
                &named,
                ReportedFailure::Retry {
                    after: Duration::from_secs(2),
                    consecutive_failures: 2,
                    reported_failures: 2,
                },
            ),
            (
                0,
                2,
                &named,
                ReportedFailure::Fail(FailureReason::AttemptsExhausted),
            ),
            (
                2,
                0,
                &named,
                ReportedFailure::Fail(FailureReason::AttemptsExhausted),
            ),
            (
                0,
                0,
                &failed(Some("BadInput"), false),
                ReportedFailure::Fail(FailureReason::Reported),
            ),
            (
                0,
                0,
                &failed(None, false),
                ReportedFailure::Fail(FailureReason::Reported),
            ),
            (
                0,
                0,
                &failed(Some("BadInput"), true),
                ReportedFailure::Retry {
                    after: Duration::from_secs(1),
                    consecutive_failures: 1,
                    reported_failures: 1,
                },
            ),
            (
                0,
                0,
                &failed(None, true),
                ReportedFailure::Retry {
                    after: Duration::from_secs(1),
                    consecutive_failures: 1,
                    reported_failures: 1,
                },
            ),
        ] {
            assert_eq!(
                retried(failures, reported, report),
                expected,
                "{failures} {reported} {report:?}"
            );
        }
        assert_eq!(
            named.error.as_ref().map(|e| e.text()).as_deref(),
            Some("UpstreamTimeout: no answer in 30s")
        );
    }

    #[test]
    fn a_status_body_naming_a_retried_error_sends_the_task_back_to_pending() {
        let mut job = job(true, 3);
        job.retry.on_errors = vec!["UpstreamTimeout".into()];
        let answer = |report: Report| DispatchOutcome::Accepted {
            status: 200,
            report: Some(report),
        };
        let retried = after_dispatch(
            TaskState::Processing,
            0,
            0,
            &job,
            &answer(failed(Some("UpstreamTimeout"), false)),
            0.5,
        );
        assert_eq!(retried.state, Some(TaskState::Pending));
        assert_eq!(retried.next_dispatch_in, Some(Duration::from_secs(1)));
        assert_eq!(retried.consecutive_failures, 1);
        assert_eq!(retried.reported_failures, Some(1));
        assert_eq!(retried.failure_reason, None);
        assert_eq!(retried.attempt, Some(AttemptOutcome::TransientError));
        assert_eq!(retried.error_code(), Some("UpstreamTimeout"));
        assert_eq!(
            retried.reported_error().as_deref(),
            Some("UpstreamTimeout: no answer in 30s")
        );

        let exhausted = after_dispatch(
            TaskState::Pending,
            0,
            2,
            &job,
            &answer(failed(Some("UpstreamTimeout"), false)),
            0.5,
        );
        assert_eq!(exhausted.state, Some(TaskState::Failed));
        assert_eq!(
            exhausted.failure_reason,
            Some(FailureReason::AttemptsExhausted)
        );
        assert_eq!(exhausted.next_dispatch_in, None);
        assert_eq!(exhausted.attempt, Some(AttemptOutcome::TransientError));

        let unnamed = after_dispatch(
            TaskState::Processing,
            0,
            0,
            &job,
            &answer(failed(Some("BadInput"), false)),
            0.5,
        );
        assert_eq!(unnamed.state, Some(TaskState::Failed));
        assert_eq!(unnamed.failure_reason, Some(FailureReason::Reported));
        assert_eq!(unnamed.attempt, None);
        assert_eq!(unnamed.error_code(), Some("BadInput"));
    }

    #[test]
    fn an_accepted_dispatch_moves_to_processing_and_schedules_a_repoll() {
        let after = after_dispatch(
            TaskState::Pending,
            3,
            0,
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
            0,
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
            error: None,
            retryable: false,
        };
        let after = after_dispatch(
            TaskState::Processing,
            0,
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
        let first = after_dispatch(TaskState::Pending, 0, 0, &job, &transient(None), 0.5);
        assert_eq!(first.state, None, "a retry leaves the state alone");
        assert_eq!(first.next_dispatch_in, Some(Duration::from_secs(1)));
        assert_eq!(first.consecutive_failures, 1);

        let second = after_dispatch(
            TaskState::Processing,
            1,
            0,
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
            0,
            &job,
            &transient(Some(Duration::from_secs(86_400))),
            0.5,
        );
        assert_eq!(capped.next_dispatch_in, Some(MAX_RETRY_AFTER));

        let last = after_dispatch(TaskState::Pending, 2, 0, &job, &transient(None), 0.5);
        assert_eq!(last.state, Some(TaskState::Failed));
        assert_eq!(last.failure_reason, Some(FailureReason::AttemptsExhausted));
        assert_eq!(last.next_dispatch_in, None);
    }

    #[test]
    fn a_permanent_error_fails_the_task_at_once() {
        let after = after_dispatch(
            TaskState::Pending,
            0,
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
