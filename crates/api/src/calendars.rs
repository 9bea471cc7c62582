//! Exclusion calendars under `/api/v1/calendars`: create or replace, get, list and delete.
//! Triggers name them in `calendars`; an occurrence one excludes becomes a recorded skip.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::calendar::InvalidCalendarName;
use pacer_domain::{CalendarInput, CalendarName, CalendarSpec, Exclusion, ValidationErrors};
use pacer_store::{Calendar, DeleteCalendar, PutCalendar};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{Json, Path, Query, limit};
use crate::views::Page;
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_calendar, delete_calendar))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calendars))
        .routes(routes!(get_calendar))
}

/// The `{name}` path parameter of a calendar.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct CalendarPath {
    /// The calendar's name.
    #[param(example = "holidays", pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    #[allow(dead_code)]
    name: String,
}

/// A calendar, as returned.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Calendar, example = json!({
    "name": "maintenance", "timezone": "Europe/Berlin",
    "exclude": [ { "kind": "cron", "expression": "0 0 2 * * SUN", "duration": "2h" } ],
    "include": ["holidays"], "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:00Z"
}))]
pub(crate) struct CalendarView {
    name: String,
    timezone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    description: Option<String>,
    exclude: Vec<Exclusion>,
    include: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Calendar> for CalendarView {
    fn from(c: Calendar) -> Self {
        let CalendarSpec {
            timezone,
            description,
            exclude,
            include,
        } = c.spec;
        Self {
            name: c.name,
            timezone,
            description,
            exclude,
            include,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A body that must be a JSON object, read as `T` with errors naming their field. serde reads a
/// struct from an array too (its fields in order), which a body whose fields are all optional
/// would otherwise accept.
pub(crate) fn from_object<T: serde::de::DeserializeOwned>(
    object: serde_json::Map<String, serde_json::Value>,
) -> Result<T> {
    let bytes = serde_json::to_vec(&object).map_err(|e| Error::Internal(Box::new(e)))?;
    crate::extract::parse_json(&bytes)
}

fn name(raw: &str) -> Result<CalendarName> {
    raw.parse()
        .map_err(|e: InvalidCalendarName| Error::field("name", e.to_string()))
}

fn not_found(name: &str) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("calendar", name)
}

/// Create or replace a calendar
///
/// Creates the calendar (`201`) or replaces it (`200`). Rules are read on the wall clock of its
/// `timezone`: `date`, `date_range` (both ends included), `yearly` (`--MM-DD`), `weekdays`,
/// `daily` windows (`from` included, `to` excluded; a `to` not after `from` crosses midnight) and
/// `cron` windows (open at each fire, for `duration`). `include` adds other calendars'
/// exclusions. A change holds for every occurrence not yet fired.
#[utoipa::path(
    put,
    path = "/api/v1/calendars/{name}",
    tag = "calendars",
    params(CalendarPath),
    request_body = CalendarInput,
    responses(
        (status = 200, description = "The calendar was replaced.", body = CalendarView,
            headers(("Location" = String, description = "The calendar's URL."))),
        (status = 201, description = "The calendar was created.", body = CalendarView,
            headers(("Location" = String, description = "The calendar's URL."))),
    )
)]
async fn put_calendar(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response> {
    let input: CalendarInput = from_object(body)?;
    let name = name(&raw_name)?;
    let spec = CalendarSpec::try_from(input).map_err(Error::Validation)?;
    let before = match state.store.get_calendar(name.as_str()).await {
        Ok(calendar) => Some(calendar),
        Err(pacer_store::Error::NotFound(_)) => None,
        Err(other) => return Err(other.into()),
    };
    let (calendar, created) = match state.store.put_calendar(&name, &spec).await? {
        PutCalendar::Saved { calendar, created } => (calendar, created),
        PutCalendar::MissingIncludes(missing) => {
            let mut errors = ValidationErrors::new();
            for (i, included) in spec.include.iter().enumerate() {
                if missing.contains(included) {
                    errors.push(
                        format!("include[{i}]"),
                        format!("no calendar named `{included}`"),
                    );
                }
            }
            return Err(Error::Validation(errors));
        }
        PutCalendar::Cycle(chain) => {
            return Err(Error::field(
                "include",
                format!(
                    "a calendar may not include itself: {}",
                    chain.join(" includes ")
                ),
            ));
        }
    };
    let view = CalendarView::from(calendar);
    audit::record(
        &state,
        &actor,
        "put_calendar",
        format!("calendar:{name}"),
        before.and_then(|b| serde_json::to_value(CalendarView::from(b)).ok()),
        serde_json::to_value(&view).ok(),
    )
    .await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(header::LOCATION, format!("/api/v1/calendars/{name}"))],
        JsonResponse(view),
    )
        .into_response())
}

/// Get a calendar
#[utoipa::path(
    get,
    path = "/api/v1/calendars/{name}",
    tag = "calendars",
    params(CalendarPath),
    responses(
        (status = 200, description = "The calendar.", body = CalendarView),
        (status = 404, description = "No such calendar.", body = Problem),
    )
)]
async fn get_calendar(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<CalendarView>> {
    let name = name(&raw_name)?;
    let calendar = state
        .store
        .get_calendar(name.as_str())
        .await
        .map_err(not_found(name.as_str()))?;
    Ok(JsonResponse(calendar.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListCalendars {
    /// Most calendars to return.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List calendars
///
/// Calendars in name order, a page at a time: pass `next_cursor` back as `cursor` for the next
/// page.
#[utoipa::path(
    get,
    path = "/api/v1/calendars",
    tag = "calendars",
    params(ListCalendars),
    responses((status = 200, description = "A page of calendars.", body = Page<CalendarView>))
)]
async fn list_calendars(
    State(state): State<AppState>,
    Query(query): Query<ListCalendars>,
) -> Result<JsonResponse<Page<CalendarView>>> {
    let limit = limit(query.limit.as_deref(), 100)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<CalendarName>()
                .map_err(|_| Error::field("cursor", "not a cursor returned by this API"))
        })
        .transpose()?;
    let calendars = state
        .store
        .list_calendars_page(after.as_ref().map(CalendarName::as_str), limit)
        .await?;
    let full = i64::try_from(calendars.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| calendars.last().map(|c| c.name.clone()))
        .flatten();
    Ok(JsonResponse(Page {
        items: calendars.into_iter().map(CalendarView::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Delete even while triggers name it or calendars include it; they then ignore it.
    #[serde(default)]
    #[param(default = false)]
    force: bool,
}

/// Delete a calendar
///
/// Refused with `409` while a trigger names it or another calendar includes it, unless
/// `?force=true`: those references then exclude nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/calendars/{name}",
    tag = "calendars",
    params(CalendarPath, DeleteQuery),
    responses(
        (status = 204, description = "The calendar was deleted."),
        (status = 404, description = "No such calendar.", body = Problem),
        (status = 409, description = "Triggers or calendars use it; nothing was deleted.", body = Problem),
    )
)]
async fn delete_calendar(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode> {
    let name = name(&raw_name)?;
    let before = state
        .store
        .get_calendar(name.as_str())
        .await
        .map_err(not_found(name.as_str()))?;
    match state
        .store
        .delete_calendar(name.as_str(), query.force)
        .await
        .map_err(not_found(name.as_str()))?
    {
        DeleteCalendar::Deleted => {}
        DeleteCalendar::InUse {
            triggers,
            calendars,
        } => {
            let mut users: Vec<String> = triggers
                .iter()
                .map(|(job, id)| format!("trigger {job}/{id}"))
                .collect();
            users.extend(calendars.iter().map(|c| format!("calendar {c}")));
            return Err(Error::CalendarInUse {
                calendar: name.to_string(),
                used_by: users.join(", "),
            });
        }
    }
    audit::record(
        &state,
        &actor,
        "delete_calendar",
        format!("calendar:{name}"),
        serde_json::to_value(CalendarView::from(before)).ok(),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
