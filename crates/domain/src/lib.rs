//! Pacer's domain: the types and rules of jobs, tasks and their lifecycle.
//! Nothing here does I/O; the store persists these types and the engine acts on their decisions.

pub mod alert;
pub mod calendar;
pub mod concurrency;
pub mod dispatch;
pub mod fingerprint;
pub mod firing;
pub mod ids;
pub mod job;
pub mod message;
pub mod notify;
pub mod retry;
pub mod schedule;
pub mod span;
pub mod subscription;
pub mod task;
pub mod trigger;
pub mod validation;
pub mod wire;
pub mod workflow;

pub use alert::{AlertKind, AlertState, JobAlerts, Severity};
pub use calendar::{CalendarInput, CalendarName, CalendarSpec, Calendars, Exclusion};
pub use concurrency::{GroupInput, GroupName, GroupSpec};
pub use dispatch::{
    AfterDispatch, DispatchOutcome, ResponseClass, after_dispatch, classify_status,
};
pub use fingerprint::TaskOutcome;
pub use firing::{MisfirePolicy, OverlapPolicy, SkipReason};
pub use ids::TaskId;
pub use job::{AmqpTarget, HttpTarget, JobInput, JobName, JobSpec, OutboundAuth, Target};
pub use message::{
    ConsumerState, ConsumerStatus, Message, MessageInput, MessageSource, MessageType,
};
pub use notify::{Notify, NotifyEvent};
pub use retry::RetryPolicy;
pub use schedule::{Schedule, ScheduleError};
pub use span::Span;
pub use subscription::{SubscriptionInput, SubscriptionSpec};
pub use task::{CallbackStatus, FailureReason, TaskEvent, TaskState, Transition, Withdrawal};
pub use trigger::{ScheduleSpec, Timetable, TriggerInput, TriggerSpec};
pub use validation::{FieldError, ValidationErrors};
pub use workflow::{
    OnFailure, OnItemFailure, ParallelChild, Step, StepKind, StepTally, StepVerdict,
};
