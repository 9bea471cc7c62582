//! Triggers under `/api/v1/jobs/{name}/triggers`: create, list, get, replace, delete, pause,
//! resume, and a preview of the next fire times.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::{TriggerInput, TriggerSpec};
use pacer_store::{Job, Trigger};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{Json, Path, Query};
use crate::jobs::{JobPath, existing_name, not_found};
use crate::pagination::{ListQuery, Listing, NoFilter, PageParams};
use crate::views::{Page, PreviewOccurrence, PreviewView, TriggerView};
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_trigger))
        .routes(routes!(create_triggers))
        .routes(routes!(replace_trigger, delete_trigger))
        .routes(routes!(backfill_trigger))
        .routes(routes!(backfill_job))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers))
        .routes(routes!(get_trigger))
        .routes(routes!(pause_trigger))
        .routes(routes!(resume_trigger))
        .routes(routes!(preview_trigger))
}

/// The `{name}` and `{id}` path parameters of one trigger.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TriggerPath {
    /// The job's name.
    #[param(
        example = "master-data-sync",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    #[allow(dead_code)]
    name: String,
    /// The trigger's id.
    #[allow(dead_code)]
    id: Uuid,
}

async fn job(state: &AppState, raw_name: &str) -> Result<Job> {
    let name = existing_name(raw_name)?;
    state.store.get_job(&name).await.map_err(not_found(&name))
}

fn trigger_id(raw: &str) -> Result<Uuid> {
    raw.parse()
        .map_err(|_| Error::field("id", format!("`{raw}` is not a trigger id (a UUID)")))
}

fn trigger_not_found(id: Uuid) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("trigger", id)
}

/// Validates a definition and finds its first fire time from now (database clock). A trigger
/// that would never fire is refused; a `once` in the past is due at once (its misfire policy
/// decides what it becomes).
async fn parse(
    state: &AppState,
    input: TriggerInput,
) -> Result<(TriggerSpec, Option<DateTime<Utc>>)> {
    let spec = TriggerSpec::try_from(input).map_err(Error::Validation)?;
    let missing = state.store.missing_calendars(&spec.calendars).await?;
    let now = state.store.now().await?;
    let first = first_fire(&spec, &missing, now).map_err(Error::Validation)?;
    Ok((spec, Some(first)))
}

/// The first fire time from `now` of a definition that passed its own checks, or why it is
/// refused: a calendar it names is among the `missing` ones, or it would never fire.
fn first_fire(
    spec: &TriggerSpec,
    missing: &[String],
    now: DateTime<Utc>,
) -> std::result::Result<DateTime<Utc>, pacer_domain::ValidationErrors> {
    let mut errors = pacer_domain::ValidationErrors::new();
    for (i, name) in spec.calendars.iter().enumerate() {
        if missing.contains(name) {
            errors.push(
                format!("calendars[{i}]"),
                format!("no calendar named `{name}`"),
            );
        }
    }
    errors.into_result(())?;
    spec.first_fire(now)
}

/// A job that went away while its trigger was written is not found.
fn job_gone(raw_name: &str) -> impl FnOnce(pacer_store::Error) -> Error {
    move |e| match e {
        pacer_store::Error::Conflict { .. } => Error::NotFound {
            what: "job",
            id: raw_name.to_owned(),
        },
        other => other.into(),
    }
}

/// Add a trigger to a job
///
/// `kind` says which fields the trigger needs: `expression` (and `timezone`) for `cron`,
/// `every` for `interval`, `at` for `once`. Answers `201` with the trigger and its first fire
/// time.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers",
    tag = "triggers",
    params(JobPath),
    request_body = TriggerInput,
    responses(
        (status = 201, description = "The trigger was created.", body = TriggerView,
            headers(("Location" = String, description = "The trigger's URL."))),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn create_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(input): Json<TriggerInput>,
) -> Result<Response> {
    let job = job(&state, &raw_name).await?;
    let (spec, next_fire_at) = parse(&state, input).await?;
    let trigger = state
        .store
        .create_trigger(&job, &spec, next_fire_at)
        .await
        .map_err(job_gone(&raw_name))?;
    let location = format!("/api/v1/jobs/{}/triggers/{}", job.name, trigger.id);
    let view = TriggerView::from(trigger);
    let target = format!(
        "trigger:{}/{}",
        job.name,
        location.rsplit('/').next().unwrap_or_default()
    );
    audit::record(
        &state,
        &actor,
        "create_trigger",
        target,
        None,
        serde_json::to_value(&view).ok(),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        JsonResponse(view),
    )
        .into_response())
}

/// The most triggers one batch creates.
const MAX_BATCH: usize = 1_000;

/// Many triggers for one job, created together.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TriggerBatch)]
struct TriggerBatch {
    /// 1 to 1,000 definitions, each the body of `POST /api/v1/jobs/{name}/triggers`.
    #[schema(min_items = 1, max_items = 1000)]
    triggers: Vec<TriggerInput>,
}

/// The triggers a batch created, in the order given.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TriggersCreated)]
struct TriggersCreated {
    items: Vec<TriggerView>,
}

/// Add many triggers to a job
///
/// Validates every definition first, as `POST /api/v1/jobs/{name}/triggers` does, naming a bad
/// one's fields under its index (`triggers[12].expression`): one bad definition creates none.
/// Then writes them all in one statement and answers `201` with them, in the order given. For
/// schedules by the thousand (`pacer apply` uses it for a job's new triggers).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers:batch",
    tag = "triggers",
    params(JobPath),
    request_body = TriggerBatch,
    responses(
        (status = 201, description = "The triggers were created.", body = TriggersCreated),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn create_triggers(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(batch): Json<TriggerBatch>,
) -> Result<Response> {
    let job = job(&state, &raw_name).await?;
    let mut errors = pacer_domain::ValidationErrors::new();
    if batch.triggers.is_empty() || batch.triggers.len() > MAX_BATCH {
        errors.push(
            "triggers",
            format!("1 to {MAX_BATCH} triggers, got {}", batch.triggers.len()),
        );
        return Err(Error::Validation(errors));
    }
    let mut specs = Vec::with_capacity(batch.triggers.len());
    for (i, input) in batch.triggers.into_iter().enumerate() {
        match TriggerSpec::try_from(input) {
            Ok(spec) => specs.push(spec),
            Err(refused) => errors.extend_under(&format!("triggers[{i}]"), &refused),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let mut named: Vec<String> = specs
        .iter()
        .flat_map(|spec| spec.calendars.iter().cloned())
        .collect();
    named.sort();
    named.dedup();
    let missing = state.store.missing_calendars(&named).await?;
    let now = state.store.now().await?;
    let mut triggers = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        match first_fire(&spec, &missing, now) {
            Ok(first) => triggers.push((spec, Some(first))),
            Err(refused) => errors.extend_under(&format!("triggers[{i}]"), &refused),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let created = state
        .store
        .create_triggers(&job, &triggers)
        .await
        .map_err(job_gone(&raw_name))?;
    let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
    let items: Vec<TriggerView> = created.into_iter().map(TriggerView::from).collect();
    audit::record(
        &state,
        &actor,
        "create_triggers",
        format!("job:{}", job.name),
        None,
        Some(json!({ "count": ids.len(), "triggers": ids })),
    )
    .await;
    Ok((StatusCode::CREATED, JsonResponse(TriggersCreated { items })).into_response())
}

/// A job's triggers page on their id, in id order.
struct TriggerList;

impl Listing for TriggerList {
    type Key = Uuid;
    const TAG: &'static str = "tr.";
    const DEFAULT_LIMIT: i64 = 100;
}

/// List a job's triggers
///
/// The job's triggers in id order, a page at a time: pass `next_cursor` back as `cursor` for the
/// next page.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/triggers",
    tag = "triggers",
    params(JobPath, PageParams<TriggerList>),
    responses(
        (status = 200, description = "A page of the job's triggers.", body = Page<TriggerView>),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn list_triggers(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
    ListQuery { page, .. }: ListQuery<NoFilter, TriggerList>,
) -> Result<JsonResponse<Page<TriggerView>>> {
    let page = page.checked()?;
    let job = job(&state, &raw_name).await?;
    let triggers = state
        .store
        .list_triggers_page(&job, page.after, page.fetch())
        .await?;
    Ok(JsonResponse(page.page(
        triggers,
        |t| t.id,
        TriggerView::from,
    )))
}

/// Get a trigger
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/triggers/{id}",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 200, description = "The trigger.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn get_trigger(
    State(state): State<AppState>,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    Ok(JsonResponse(trigger.into()))
}

fn summary(trigger: Trigger) -> Option<Value> {
    serde_json::to_value(TriggerView::from(trigger)).ok()
}

/// Replace a trigger
///
/// Replaces the trigger's definition; its next fire time is computed again from now.
#[utoipa::path(
    put,
    path = "/api/v1/jobs/{name}/triggers/{id}",
    tag = "triggers",
    params(TriggerPath),
    request_body = TriggerInput,
    responses(
        (status = 200, description = "The trigger as replaced.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn replace_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
    Json(input): Json<TriggerInput>,
) -> Result<JsonResponse<TriggerView>> {
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let (spec, next_fire_at) = parse(&state, input).await?;
    let before = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let trigger = state
        .store
        .replace_trigger(&job, id, &spec, next_fire_at)
        .await
        .map_err(trigger_not_found(id))?;
    let target = format!("trigger:{}/{id}", job.name);
    audit::record(
        &state,
        &actor,
        "replace_trigger",
        target,
        summary(before),
        summary(trigger.clone()),
    )
    .await;
    Ok(JsonResponse(trigger.into()))
}

/// Delete a trigger
///
/// The tasks it created stay.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{name}/triggers/{id}",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 204, description = "The trigger was deleted."),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn delete_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let before = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    state
        .store
        .delete_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    audit::record(
        &state,
        &actor,
        "delete_trigger",
        format!("trigger:{}/{id}", job.name),
        summary(before),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a trigger
///
/// It stops firing; its occurrences while paused are not wanted and never fire.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers/{id}/pause",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 200, description = "The trigger, paused.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn pause_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    set_paused(&state, &actor, &raw_name, &raw_id, true).await
}

/// Resume a trigger
///
/// It fires next from now; occurrences that fell while it was paused are not fired.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers/{id}/resume",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 200, description = "The trigger, resumed.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn resume_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    set_paused(&state, &actor, &raw_name, &raw_id, false).await
}

async fn set_paused(
    state: &AppState,
    actor: &Actor,
    raw_name: &str,
    raw_id: &str,
    paused: bool,
) -> Result<JsonResponse<TriggerView>> {
    let job = job(state, raw_name).await?;
    let id = trigger_id(raw_id)?;
    let current: Trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let next = next_from_now(state, &current).await?;
    let trigger = state
        .store
        .set_trigger_paused(&job, id, paused, next)
        .await
        .map_err(trigger_not_found(id))?;
    if current.paused != trigger.paused {
        let action = if paused {
            "pause_trigger"
        } else {
            "resume_trigger"
        };
        let (before, after) = (
            json!({ "paused": current.paused }),
            json!({ "paused": trigger.paused }),
        );
        audit::record(
            state,
            actor,
            action,
            format!("trigger:{}/{id}", job.name),
            Some(before),
            Some(after),
        )
        .await;
    }
    Ok(JsonResponse(trigger.into()))
}

/// A trigger's next fire time counted from now, for resuming it.
pub(crate) async fn next_from_now(
    state: &AppState,
    trigger: &Trigger,
) -> Result<Option<DateTime<Utc>>> {
    let timetable = trigger
        .spec
        .timetable()
        .map_err(|e| Error::Internal(Box::new(e)))?;
    Ok(timetable.next_after(state.store.now().await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PreviewQuery {
    /// How many fire times.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, default = 10)]
    count: Option<String>,
}

/// Preview a trigger's fire times
///
/// The next `count` occurrences of the trigger, from now (database clock): in `fire_times` their
/// scheduled times, in `occurrences` also when each is sent after the trigger's jitter, and the
/// calendar that excludes it, if one does (it will be recorded as a skip instead).
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/triggers/{id}/preview",
    tag = "triggers",
    params(TriggerPath, PreviewQuery),
    responses(
        (status = 200, description = "The next fire times; fewer when the trigger ends sooner.", body = PreviewView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn preview_trigger(
    State(state): State<AppState>,
    Path((raw_name, raw_id)): Path<(String, String)>,
    Query(query): Query<PreviewQuery>,
) -> Result<JsonResponse<PreviewView>> {
    let count = match query.count.as_deref() {
        None => 10,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(Error::field(
                    "count",
                    format!("must be a whole number from 1 to 100, got `{text}`"),
                ));
            }
        },
    };
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let timetable = trigger
        .spec
        .timetable()
        .map_err(|e| Error::Internal(Box::new(e)))?;
    let now = state.store.now().await?;
    let fire_times = timetable.preview(now, count);
    let calendars = if trigger.spec.calendars.is_empty() {
        pacer_domain::Calendars::new()
    } else {
        state.store.calendars().await?
    };
    let occurrences = fire_times
        .iter()
        .map(|at| PreviewOccurrence {
            scheduled_at: *at,
            fire_at: trigger.spec.fire_at(trigger.id, *at),
            excluded_by: calendars
                .excluded_by(&trigger.spec.calendars, *at)
                .map(str::to_owned),
        })
        .collect();
    Ok(JsonResponse(PreviewView {
        trigger: id,
        fire_times,
        occurrences,
    }))
}

/// How the tasks of a backfill run beside one another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum BackfillOverlap {
    /// All due at once, side by side.
    #[default]
    Allow,
    /// One after another, oldest first: each waits for the one before it to finish.
    BufferAll,
}

/// A range of past occurrences to create tasks for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "from": "2026-12-01T00:00:00Z", "to": "2026-12-04T00:00:00Z", "dry_run": true }))]
struct BackfillRequest {
    /// The first instant of the range (included).
    from: DateTime<Utc>,
    /// The end of the range (excluded); not later than now.
    to: DateTime<Utc>,
    /// `allow` (default): every task due at once; `buffer_all`: one after another.
    #[serde(default)]
    overlap: BackfillOverlap,
    /// List what would be created; create nothing.
    #[serde(default)]
    dry_run: bool,
    /// Create tasks for occurrences the trigger's calendars exclude, too.
    #[serde(default)]
    ignore_calendars: bool,
}

/// A task a backfill created, or would create.
#[derive(Debug, Serialize, ToSchema)]
struct BackfilledOccurrence {
    scheduled_at: DateTime<Utc>,
    /// The task created; absent on a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid, nullable = false)]
    task_id: Option<pacer_domain::TaskId>,
}

/// An occurrence a calendar excludes, left out of a backfill.
#[derive(Debug, Serialize, ToSchema)]
struct ExcludedOccurrence {
    scheduled_at: DateTime<Utc>,
    calendar: String,
}

/// What a backfill of one trigger did, or would do.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Backfill, example = json!({
    "trigger": "0193a5c0-1b2c-7d3e-8f40-5a6b7c8d9e0f", "dry_run": false,
    "created": [ { "scheduled_at": "2026-12-02T01:00:00Z", "task_id": "0193a5d9-0a1b-7c2d-8e3f-4a5b6c7d8e9f" } ],
    "existing": [ "2026-12-01T01:00:00Z" ],
    "excluded": [ { "scheduled_at": "2026-12-03T01:00:00Z", "calendar": "holidays" } ]
}))]
struct BackfillView {
    trigger: Uuid,
    dry_run: bool,
    /// Occurrences that got a task (origin `backfill`), or would on a dry run.
    created: Vec<BackfilledOccurrence>,
    /// Occurrences that already had a task: left as they are.
    existing: Vec<DateTime<Utc>>,
    /// Occurrences a calendar excludes: no task (see `ignore_calendars`).
    excluded: Vec<ExcludedOccurrence>,
}

/// What a backfill of every trigger of a job did, or would do.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobBackfill)]
struct JobBackfillView {
    triggers: Vec<BackfillView>,
}

/// One trigger's occurrences in the range, split into those to create and those excluded.
struct Planned {
    trigger: Trigger,
    create: Vec<DateTime<Utc>>,
    excluded: Vec<ExcludedOccurrence>,
}

/// Checks the range and finds the occurrences of `triggers` in it, at most
/// [`pacer_domain::trigger::MAX_BACKFILL`] in all.
async fn plan_backfill(
    state: &AppState,
    triggers: Vec<Trigger>,
    request: &BackfillRequest,
) -> Result<Vec<Planned>> {
    use pacer_domain::trigger::MAX_BACKFILL;
    if request.to <= request.from {
        return Err(Error::field("to", "must be after `from`"));
    }
    let now = state.store.now().await?;
    if request.to > now {
        return Err(Error::field(
            "to",
            format!(
                "must not be later than now ({now}); the trigger itself fires what is still to come"
            ),
        ));
    }
    let calendars =
        if request.ignore_calendars || triggers.iter().all(|t| t.spec.calendars.is_empty()) {
            pacer_domain::Calendars::new()
        } else {
            state.store.calendars().await?
        };
    let mut budget = MAX_BACKFILL;
    let mut planned = Vec::with_capacity(triggers.len());
    for trigger in triggers {
        let timetable = trigger
            .spec
            .timetable()
            .map_err(|e| Error::Internal(Box::new(e)))?;
        let occurrences = timetable
            .between(request.from, request.to, budget)
            .map_err(|_| {
                Error::field(
                    "to",
                    format!(
                        "the range holds more than {MAX_BACKFILL} occurrences, the most one backfill creates; split it into shorter ranges"
                    ),
                )
            })?;
        budget -= occurrences.len();
        let (mut create, mut excluded) = (Vec::new(), Vec::new());
        for at in occurrences {
            match calendars.excluded_by(&trigger.spec.calendars, at) {
                Some(calendar) => excluded.push(ExcludedOccurrence {
                    scheduled_at: at,
                    calendar: calendar.to_owned(),
                }),
                None => create.push(at),
            }
        }
        planned.push(Planned {
            trigger,
            create,
            excluded,
        });
    }
    Ok(planned)
}

/// Runs planned backfills and records each in the audit log.
async fn run_backfill(
    state: &AppState,
    actor: &Actor,
    job: &Job,
    planned: Vec<Planned>,
    request: &BackfillRequest,
) -> Result<Vec<BackfillView>> {
    if !request.dry_run && state.store.job_paused(job).await? {
        return Err(Error::JobPaused {
            job: job.name.to_string(),
        });
    }
    let mut views = Vec::with_capacity(planned.len());
    for plan in planned {
        let id = plan.trigger.id;
        let done = if plan.create.is_empty() {
            // Nothing of this trigger in the range (or all of it excluded): no statement to run,
            // so a job with thousands of triggers pays only for those that have occurrences.
            pacer_store::Backfilled {
                created: Vec::new(),
                existing: Vec::new(),
            }
        } else {
            state
                .store
                .backfill(
                    job,
                    id,
                    &plan.create,
                    request.overlap == BackfillOverlap::BufferAll,
                    request.dry_run,
                )
                .await
                .map_err(|e| match e {
                    pacer_store::Error::Conflict { .. } => Error::BackfillRaced {
                        job: job.name.to_string(),
                    },
                    other => trigger_not_found(id)(other),
                })?
        };
        let view = BackfillView {
            trigger: id,
            dry_run: request.dry_run,
            created: done
                .created
                .into_iter()
                .map(|(scheduled_at, task_id)| BackfilledOccurrence {
                    scheduled_at,
                    task_id,
                })
                .collect(),
            existing: done.existing,
            excluded: plan.excluded,
        };
        if !request.dry_run {
            metrics::counter!("pacer_tasks_created_total", "origin" => "backfill")
                .increment(u64::try_from(view.created.len()).unwrap_or(u64::MAX));
            audit::record(
                state,
                actor,
                "backfill_trigger",
                format!("trigger:{}/{id}", job.name),
                None,
                Some(json!({
                    "from": request.from, "to": request.to,
                    "ignore_calendars": request.ignore_calendars,
                    "created": view.created.len(), "existing": view.existing.len(),
                    "excluded": view.excluded.len(),
                })),
            )
            .await;
        }
        views.push(view);
    }
    Ok(views)
}

/// Backfill a trigger
///
/// Creates a task (origin `backfill`, due now) for every occurrence of the trigger in
/// `[from, to)` that has none yet, through the same key as the trigger's own firing: repeated, or
/// racing the trigger, it never makes a second task for an occurrence. At most 1000 occurrences
/// per backfill (a longer range is refused with `422`; split it); `to` may not be later than now.
/// Occurrences the trigger's calendars exclude are left out unless `ignore_calendars`. With
/// `dry_run`, lists what would be created and creates nothing.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers/{id}/backfill",
    tag = "triggers",
    params(TriggerPath),
    request_body = BackfillRequest,
    responses(
        (status = 200, description = "What was created (or would be, on a dry run).", body = BackfillView),
        (status = 404, description = "No such job or trigger.", body = Problem),
        (status = 409, description = "The job is paused, or a serial backfill raced the trigger; nothing was created.", body = Problem),
    )
)]
async fn backfill_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
    Json(body): Json<serde_json::Map<String, Value>>,
) -> Result<JsonResponse<BackfillView>> {
    let request: BackfillRequest = crate::calendars::from_object(body)?;
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let planned = plan_backfill(&state, vec![trigger], &request).await?;
    let mut views = run_backfill(&state, &actor, &job, planned, &request).await?;
    views
        .pop()
        .map(JsonResponse)
        .ok_or_else(|| Error::Internal("a backfill of one trigger returned none".into()))
}

/// Backfill every trigger of a job
///
/// [`backfill_trigger`] for each of the job's triggers over the same range; the 1000-occurrence
/// cap counts them all together.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/backfill",
    tag = "triggers",
    params(JobPath),
    request_body = BackfillRequest,
    responses(
        (status = 200, description = "What was created per trigger (or would be, on a dry run).", body = JobBackfillView),
        (status = 404, description = "No such job.", body = Problem),
        (status = 409, description = "The job is paused, or a serial backfill raced a trigger.", body = Problem),
    )
)]
async fn backfill_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(body): Json<serde_json::Map<String, Value>>,
) -> Result<JsonResponse<JobBackfillView>> {
    let request: BackfillRequest = crate::calendars::from_object(body)?;
    let job = job(&state, &raw_name).await?;
    let triggers = state.store.list_triggers(&job).await?;
    let planned = plan_backfill(&state, triggers, &request).await?;
    let triggers = run_backfill(&state, &actor, &job, planned, &request).await?;
    Ok(JsonResponse(JobBackfillView { triggers }))
}
