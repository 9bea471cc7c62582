//! The task state machine: `pending` → `processing` → exactly one terminal state, which never
//! changes. Every write of a task's state goes through [`TaskState::apply`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a task is in its life. The four terminal states are final.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
    Cancelled,
}

/// What a downstream reports in a callback (or in the body of its answer to a dispatch).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
    Cancelled,
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// The downstream accepted a dispatch (2xx, or 409 "already running").
    DispatchAccepted,
    /// The downstream accepted a dispatch of a job that expects no callback.
    DispatchCompleted,
    /// A dispatch failed for good: a permanent error, or the last allowed transient one.
    DispatchFailed,
    /// A dispatch failed and will be retried.
    DispatchRetrying,
    /// The downstream reported on the task.
    Reported(CallbackStatus),
    /// The downstream reported the task failed with an error its job's retry policy retries:
    /// the task waits `pending` to be dispatched again.
    ReportedRetry,
    /// An operator cancelled the task.
    Cancel,
    /// The occurrence the task was fired ahead for was withdrawn before its time: see
    /// [`Withdrawal`]. Only a task never sent may be withdrawn; one already running stands.
    Withdraw,
    /// The task's hard timeout passed.
    TimedOut,
}

/// The verdict of applying an event to a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The task moves to (or stays in) this state, and the event's data is recorded.
    To(TaskState),
    /// The event repeats what already happened; nothing changes.
    Unchanged,
    /// The event contradicts a terminal state; it is refused and nothing changes.
    Refused,
}

/// Why a task ended `failed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Too many transient dispatch errors in a row.
    AttemptsExhausted,
    /// The downstream refused the dispatch with a permanent error (4xx).
    Rejected,
    /// The job's hard timeout passed before a terminal callback.
    TimedOut,
    /// The downstream reported the task failed.
    Reported,
}

impl TaskState {
    /// Every state, for exhaustive tests and listings.
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Processing,
        TaskState::Completed,
        TaskState::CompletedWithErrors,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// True for the four final states.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Processing)
    }

    /// The wire and database name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Processing => "processing",
            TaskState::Completed => "completed",
            TaskState::CompletedWithErrors => "completed_with_errors",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Applies `event`. Open tasks follow the event; a terminal task accepts only an exact
    /// repeat of what ended it (as [`Transition::Unchanged`]) and refuses everything else.
    pub fn apply(self, event: TaskEvent) -> Transition {
        use TaskEvent as E;
        use TaskState as S;
        if self.is_terminal() {
            return match event {
                E::Reported(status) if status.state() == self => Transition::Unchanged,
                E::Cancel | E::Withdraw if self == S::Cancelled => Transition::Unchanged,
                _ => Transition::Refused,
            };
        }
        match event {
            E::Withdraw if self == S::Processing => Transition::Refused,
            E::Withdraw => Transition::To(S::Cancelled),
            E::DispatchAccepted => Transition::To(S::Processing),
            E::DispatchCompleted => Transition::To(S::Completed),
            E::DispatchFailed | E::TimedOut => Transition::To(S::Failed),
            E::DispatchRetrying => Transition::To(self),
            E::ReportedRetry => Transition::To(S::Pending),
            E::Reported(status) => Transition::To(status.state()),
            E::Cancel => Transition::To(S::Cancelled),
        }
    }
}

/// Why tasks fired ahead of their time, and not yet sent, are withdrawn: the change stops the
/// occurrence they were fired for, and its time has not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    TriggerPaused,
    TriggerDeleted,
    JobPaused,
    /// The whole scheduler entered standby.
    Standby,
}

impl Withdrawal {
    /// The message a withdrawn task keeps.
    pub fn message(self) -> &'static str {
        match self {
            Withdrawal::TriggerPaused => {
                "cancelled: its trigger was paused before its scheduled time"
            }
            Withdrawal::TriggerDeleted => {
                "cancelled: its trigger was deleted before its scheduled time"
            }
            Withdrawal::JobPaused => "cancelled: its job was paused before its scheduled time",
            Withdrawal::Standby => {
                "cancelled: the scheduler entered standby before its scheduled time"
            }
        }
    }
}

impl CallbackStatus {
    /// The task state this report moves a task to.
    pub fn state(self) -> TaskState {
        match self {
            CallbackStatus::Processing => TaskState::Processing,
            CallbackStatus::Completed => TaskState::Completed,
            CallbackStatus::CompletedWithErrors => TaskState::CompletedWithErrors,
            CallbackStatus::Failed => TaskState::Failed,
            CallbackStatus::Cancelled => TaskState::Cancelled,
        }
    }
}

impl FailureReason {
    /// The wire and database name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::AttemptsExhausted => "attempts_exhausted",
            FailureReason::Rejected => "rejected",
            FailureReason::TimedOut => "timed_out",
            FailureReason::Reported => "reported",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task state `{0}`; expected one of pending, processing, completed, completed_with_errors, failed, cancelled"
)]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallbackStatus as C;
    use TaskEvent as E;
    use TaskState as S;

    fn events() -> Vec<TaskEvent> {
        let mut all = vec![
            E::DispatchAccepted,
            E::DispatchCompleted,
            E::DispatchFailed,
            E::DispatchRetrying,
            E::ReportedRetry,
            E::Cancel,
            E::Withdraw,
            E::TimedOut,
        ];
        all.extend(
            [
                C::Processing,
                C::Completed,
                C::CompletedWithErrors,
                C::Failed,
                C::Cancelled,
            ]
            .map(E::Reported),
        );
        all
    }

    /// The whole table, written out: every (state, event) pair and its verdict.
    fn expected(state: TaskState, event: TaskEvent) -> Transition {
        use Transition::{Refused, To, Unchanged};
        match (state, event) {
            (S::Pending | S::Processing, E::DispatchAccepted) => To(S::Processing),
            (S::Pending | S::Processing, E::DispatchCompleted) => To(S::Completed),
            (S::Pending | S::Processing, E::DispatchFailed) => To(S::Failed),
            (S::Pending, E::DispatchRetrying) => To(S::Pending),
            (S::Processing, E::DispatchRetrying) => To(S::Processing),
            (S::Pending | S::Processing, E::ReportedRetry) => To(S::Pending),
            (S::Pending | S::Processing, E::Cancel) => To(S::Cancelled),
            (S::Pending, E::Withdraw) => To(S::Cancelled),
            (S::Processing, E::Withdraw) => Refused,
            (S::Pending | S::Processing, E::TimedOut) => To(S::Failed),
            (S::Pending | S::Processing, E::Reported(C::Processing)) => To(S::Processing),
            (S::Pending | S::Processing, E::Reported(C::Completed)) => To(S::Completed),
            (S::Pending | S::Processing, E::Reported(C::CompletedWithErrors)) => {
                To(S::CompletedWithErrors)
            }
            (S::Pending | S::Processing, E::Reported(C::Failed)) => To(S::Failed),
            (S::Pending | S::Processing, E::Reported(C::Cancelled)) => To(S::Cancelled),
            (S::Completed, E::Reported(C::Completed)) => Unchanged,
            (S::CompletedWithErrors, E::Reported(C::CompletedWithErrors)) => Unchanged,
            (S::Failed, E::Reported(C::Failed)) => Unchanged,
            (S::Cancelled, E::Reported(C::Cancelled) | E::Cancel | E::Withdraw) => Unchanged,
            (S::Completed | S::CompletedWithErrors | S::Failed | S::Cancelled, _) => Refused,
        }
    }

    #[test]
    fn every_state_and_event_pair_follows_the_table() {
        for state in TaskState::ALL {
            for event in events() {
                assert_eq!(
                    state.apply(event),
                    expected(state, event),
                    "{state} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn a_terminal_state_never_changes() {
        for state in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in events() {
                assert!(
                    !matches!(state.apply(event), Transition::To(next) if next != state),
                    "{state} moved on {event:?}"
                );
            }
        }
    }

    #[test]
    fn state_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::json!(state.as_str()))
            );
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}
