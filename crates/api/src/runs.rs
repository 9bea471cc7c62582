//! Runs made of steps, as the API shows them: a run's steps with their children counted by state
//! (part of `GET /api/v1/tasks/{id}`), and a run's children page by page.

use std::collections::BTreeMap;

use axum::Json as JsonResponse;
use axum::extract::State;
use chrono::{DateTime, Utc};
use pacer_domain::{StepKind, TaskId, TaskState, ValidationErrors};
use pacer_store::{RunChild, RunView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Problem;
use crate::extract::{Path, Query, limit, task_id};
use crate::tasks::{TaskPath, task_not_found};
use crate::views::Page;
use crate::{AppState, Error, Result};

/// The most children a step shows inline in the run's view; the rest are listed by
/// `GET /api/v1/tasks/{id}/children`.
const INLINE_CHILDREN: i64 = 100;

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_run_children))
}

/// One step of a run.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RunStep)]
pub(crate) struct StepView {
    name: String,
    /// `single`, `parallel` or `for_each`.
    kind: &'static str,
    /// `pending` (not reached yet), `processing` (the run's current step), or how it ended:
    /// `completed`, `completed_with_errors`, `failed`, `cancelled`; `skipped` for a step the run
    /// never reached because it ended before.
    state: &'static str,
    /// The step's children by state.
    counts: BTreeMap<&'static str, u64>,
    /// The children of a single-target or `parallel` step (a `for_each` step's items are listed
    /// by `GET /api/v1/tasks/{id}/children?step=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    children: Option<Vec<ChildView>>,
}

/// A child of a run.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RunChild)]
pub(crate) struct ChildView {
    /// The child's own task id: `GET /api/v1/tasks/{id}` shows it in full.
    id: TaskId,
    /// Its step's name.
    step: String,
    /// Its name in a `parallel` step, its item's key in a `for_each` step, the step's name
    /// otherwise.
    name: String,
    state: TaskState,
    attempt: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    item: Option<Value>,
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    message: Option<String>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl ChildView {
    fn new(child: RunChild, steps: &[pacer_domain::Step]) -> Self {
        let step = usize::try_from(child.step)
            .ok()
            .and_then(|i| steps.get(i))
            .map(|s| s.name.clone())
            .unwrap_or_default();
        Self {
            id: child.id,
            step,
            name: child.name,
            state: child.state,
            attempt: child.attempt,
            item: child.item,
            result: child.result,
            message: child.message,
            last_error: child.last_error,
            created_at: child.created_at,
            finished_at: child.finished_at,
        }
    }
}

/// A run's steps for its task view, and its progress (children done of children created).
pub(crate) async fn run_steps(
    state: &AppState,
    id: TaskId,
    run_state: TaskState,
) -> Result<Option<(Vec<StepView>, Value)>> {
    let Some(run) = state.store.run_view(id).await? else {
        return Ok(None);
    };
    let RunView {
        step: current,
        steps,
        tallies,
        ..
    } = run;
    let mut views = Vec::with_capacity(steps.len());
    for (i, (step, tally)) in steps.iter().zip(&tallies).enumerate() {
        let index = i32::try_from(i).unwrap_or(i32::MAX);
        let kind = match step.kind() {
            Some(StepKind::Parallel(_)) => "parallel",
            Some(StepKind::ForEach { .. }) => "for_each",
            _ => "single",
        };
        let step_state = if index > current {
            if run_state.is_terminal() {
                "skipped"
            } else {
                "pending"
            }
        } else if tally.open() > 0 && !run_state.is_terminal() {
            "processing"
        } else if tally.failed > 0 {
            "failed"
        } else if tally.cancelled > 0 && tally.completed + tally.completed_with_errors == 0 {
            "cancelled"
        } else if tally.completed_with_errors + tally.cancelled > 0 {
            "completed_with_errors"
        } else {
            "completed"
        };
        let children = if kind == "for_each" {
            None
        } else {
            let children = state
                .store
                .run_children(id, Some(index), None, None, INLINE_CHILDREN)
                .await?;
            Some(
                children
                    .into_iter()
                    .map(|c| ChildView::new(c, &steps))
                    .collect(),
            )
        };
        views.push(StepView {
            name: step.name.clone(),
            kind,
            state: step_state,
            counts: tally.by_state(),
            children,
        });
    }
    let done: u64 = tallies.iter().map(|t| t.done()).sum();
    let total: u64 = tallies.iter().map(|t| t.total()).sum();
    Ok(Some((
        views,
        serde_json::json!({ "done": done, "total": total }),
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListChildren {
    /// Only the children of the step with this name.
    step: Option<String>,
    /// Only the children in this state.
    #[param(value_type = Option<String>, pattern = r"^(pending|processing|completed|completed_with_errors|failed|cancelled)$")]
    state: Option<String>,
    /// Most children to return.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 50)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List a run's children
///
/// The children of a run (the task of a job made of steps) in the order they were created, a
/// page at a time, optionally of one step and in one state.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/children",
    tag = "tasks",
    params(TaskPath, ListChildren),
    responses(
        (status = 200, description = "A page of the run's children.", body = Page<ChildView>),
        (status = 404, description = "No such run.", body = Problem),
        (status = 422, description = "A bad filter, named.", body = Problem),
    )
)]
async fn list_run_children(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<ListChildren>,
) -> Result<JsonResponse<Page<ChildView>>> {
    let id = task_id(&raw_id)?;
    state.store.get_task(id).await.map_err(task_not_found(id))?;
    let Some(run) = state.store.run_view(id).await? else {
        return Err(Error::NotFound {
            what: "run",
            id: id.to_string(),
        });
    };
    let mut errors = ValidationErrors::new();
    let step = match &query.step {
        None => None,
        Some(name) => match run.steps.iter().position(|s| &s.name == name) {
            Some(i) => i32::try_from(i).ok(),
            None => {
                errors.push("step", format!("the run has no step `{name}`"));
                None
            }
        },
    };
    let child_state = match query.state.as_deref().map(str::parse::<TaskState>) {
        Some(Err(_)) => {
            errors.push("state", "not a task state");
            None
        }
        other => other.and_then(std::result::Result::ok),
    };
    let after = match query.cursor.as_deref().map(str::parse::<TaskId>) {
        Some(Err(_)) => {
            errors.push("cursor", "not a cursor returned by this API");
            None
        }
        other => other.and_then(std::result::Result::ok),
    };
    let limit = match limit(query.limit.as_deref(), 50) {
        Ok(limit) => limit,
        Err(Error::Validation(e)) => {
            for e in e.errors() {
                errors.push(e.field.clone(), e.message.clone());
            }
            50
        }
        Err(other) => return Err(other),
    };
    errors.into_result(()).map_err(Error::Validation)?;
    let children = state
        .store
        .run_children(id, step, child_state, after, limit)
        .await?;
    let full = i64::try_from(children.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| children.last().map(|c| c.id.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: children
            .into_iter()
            .map(|c| ChildView::new(c, &run.steps))
            .collect(),
        next_cursor,
    }))
}
