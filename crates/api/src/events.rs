//! `GET /api/v1/events`: the event log as Server-Sent Events — task state changes, callbacks,
//! leader changes — filterable by job, job label and kind, resumable exactly with `Last-Event-ID`. Each
//! connection reads the log from the database by position, polling its tail, so any node serves
//! any client and a resume survives a switch of node.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use pacer_domain::ValidationErrors;
use pacer_domain::wire::EventView;
use pacer_store::{EventCursor, EventFilter, Store};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::Query;
use crate::{AppState, Error, Result};

/// Most events read from the database at once.
const BATCH: i64 = 200;
/// How often a stream looks for new events. The log is not NOTIFY-ed (that would serialise the
/// task cycle's commits); a look at its tail is an index range scan.
const POLL: Duration = Duration::from_millis(250);
/// How soon to look again while committed events wait for older transactions to finish.
const HELD_BACK: Duration = Duration::from_millis(50);
/// Comment lines keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only the events of these jobs: one name, or several separated by commas (at most 100).
    #[param(example = "masterdata-sync")]
    job: Option<String>,
    /// Only the events of jobs carrying these labels, each `key:value`, several separated by
    /// commas (all must match; at most 32). With `job`, both apply.
    #[param(example = "team:registration")]
    label: Option<String>,
    /// Comma-separated kinds (`task.state,leader.changed`); all when absent. At most 20 kinds
    /// of at most 64 characters each.
    #[param(
        example = "task.state,task.callback",
        pattern = r"^[^,]{0,64}(,[^,]{0,64}){0,19}$"
    )]
    kind: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header on their first request: an event's
    /// `id`. The header wins when both are sent (each must be an event id).
    #[param(example = "48213-1042", pattern = r"^[0-9]{1,19}-[0-9]{1,19}$")]
    last_event_id: Option<String>,
}

/// The `Last-Event-ID` header of the event stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
struct LastEventIdHeader {
    /// The `id` of the last event received: the stream resumes right after it (`0-0` replays
    /// the whole retained log).
    #[param(rename = "Last-Event-ID", value_type = String, required = false, pattern = r"^[0-9]{1,19}-[0-9]{1,19}$", example = "48213-1042")]
    #[allow(dead_code)]
    last_event_id: Option<String>,
}

/// An event id as the schema states it: two numbers of 1 to 19 digits joined by `-`. A number
/// past the largest position stands for the largest (nothing comes after it).
fn event_id(text: &str) -> std::result::Result<EventCursor, String> {
    let number = |part: &str| {
        ((1..=19).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u64>().ok())
            .flatten()
            .map(|n| n.min(i64::MAX.unsigned_abs()))
    };
    let refused = || "not an event id returned by this API".to_owned();
    let (tx, id) = text.split_once('-').ok_or_else(refused)?;
    let (tx, id) = number(tx).zip(number(id)).ok_or_else(refused)?;
    format!("{tx}-{id}")
        .parse::<EventCursor>()
        .map_err(|e| e.to_string())
}

/// One server-sent event of the stream, as its `id:`, `event:` and `data:` lines read.
#[derive(ToSchema)]
#[schema(as = ServerSentEvent, example = json!({
    "id": "48213-1042", "event": "task.state",
    "data": "{\"id\":\"48213-1042\",\"at\":\"2026-11-24T09:00:30Z\",\"kind\":\"task.state\",\"job\":\"master-data-sync\",\"task\":\"0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01\",\"data\":{\"from\":\"pending\",\"to\":\"processing\"}}"
}))]
#[allow(dead_code)]
struct StreamedEvent {
    /// The event's id, what `Last-Event-ID` takes back.
    #[schema(example = "48213-1042")]
    id: String,
    /// The event's kind, such as `task.state`.
    #[schema(example = "task.state")]
    event: String,
    /// The event as JSON: an `Event`.
    data: String,
}

/// Follow the event stream
///
/// The event log as server-sent events: task state changes, callbacks, leader changes, alerts.
/// Each event has an `id` (what `Last-Event-ID` takes back), an `event` line with its kind and a
/// `data` line with the event as JSON (the `Event` schema). Without `Last-Event-ID` the stream
/// starts at the present, and first tells the client where that is with an `id:` line alone
/// (no event), so a client that drops before the first event resumes from there; with it, the
/// stream starts right after that event (`0-0` replays the whole retained log). It never ends on its own: a client reconnects with its `Last-Event-ID` when the node
/// closes it (at shutdown, or when the database fails), on any node.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventsQuery, LastEventIdHeader),
    responses(
        (status = 200, description = "The stream of events, as `text/event-stream`; the schema describes one event, whose `data` is an `Event`.",
            content_type = "text/event-stream", body = StreamedEvent),
    )
)]
async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response> {
    let mut errors = ValidationErrors::new();
    let header = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => Some(text.to_owned()),
        Some(Err(_)) => {
            errors.push("Last-Event-ID", "must be visible ASCII");
            None
        }
    };
    let query_id = match query.last_event_id.as_deref().map(event_id) {
        Some(Err(message)) => {
            errors.push("last_event_id", message);
            None
        }
        other => other.and_then(Result::ok),
    };
    // Whitespace around a header's value is not part of it (RFC 9110 §5.5).
    let resume = match header.as_deref().map(str::trim).map(event_id) {
        Some(Err(message)) => {
            errors.push("Last-Event-ID", message);
            None
        }
        Some(Ok(cursor)) => Some(cursor),
        None => query_id,
    };
    let kinds: Vec<String> = query
        .kind
        .as_deref()
        .into_iter()
        .flat_map(|k| k.split(','))
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    // Counted as the schema's pattern counts them: every comma-separated part, as sent.
    let parts = query
        .kind
        .as_deref()
        .map(|k| k.split(','))
        .into_iter()
        .flatten();
    if parts.clone().count() > 20 || parts.clone().any(|k| k.chars().count() > 64) {
        errors.push("kind", "at most 20 kinds of at most 64 characters each");
    }
    let jobs: Vec<String> = query
        .job
        .as_deref()
        .into_iter()
        .flat_map(|j| j.split(','))
        .map(|j| j.trim().to_owned())
        .filter(|j| !j.is_empty())
        .collect();
    if jobs.len() > 100 {
        errors.push("job", "at most 100 jobs");
    }
    let mut labels = std::collections::BTreeMap::new();
    for part in query
        .label
        .as_deref()
        .into_iter()
        .flat_map(|l| l.split(','))
    {
        match part.split_once(':') {
            Some((key, value)) if !key.trim().is_empty() => {
                labels.insert(key.trim().to_owned(), value.trim().to_owned());
            }
            _ => errors.push("label", "each label is `key:value`"),
        }
    }
    if labels.len() > 32 {
        errors.push("label", "at most 32 labels");
    }
    errors.into_result(()).map_err(Error::Validation)?;
    // A stream that starts at the present first tells the client where that is (an `id:` line
    // alone, which sets the client's last event id without an event), so a client that drops
    // before the first event resumes from there instead of missing what happened meanwhile.
    let (cursor, start) = match resume {
        Some(cursor) => (cursor, None),
        None => {
            let horizon = state.store.event_horizon().await?;
            (horizon, Some(horizon))
        }
    };
    let reader = Reader {
        store: state.store.clone(),
        filter: EventFilter {
            jobs,
            labels,
            kinds,
        },
        cursor,
        pending: VecDeque::new(),
        shutdown: state.shutdown.clone(),
    };
    let position = stream::iter(start.map(|at| Ok(SseEvent::default().id(at.to_string()))));
    let sse =
        Sse::new(position.chain(events(reader))).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    Ok(sse.into_response())
}

/// One client's position in the log.
struct Reader {
    store: Store,
    filter: EventFilter,
    cursor: EventCursor,
    pending: VecDeque<pacer_store::Event>,
    shutdown: CancellationToken,
}

impl Reader {
    /// The next event, waiting for one; `None` ends the stream (the node is shutting down or the
    /// database failed), and the client reconnects with its `Last-Event-ID`.
    async fn next(&mut self) -> Option<pacer_store::Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            let batch = match self
                .store
                .events_after(self.cursor, &self.filter, BATCH)
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "reading the event log failed; ending the stream");
                    return None;
                }
            };
            self.cursor = batch.next;
            self.pending.extend(batch.events);
            if !self.pending.is_empty() {
                continue;
            }
            let wait = if batch.held_back { HELD_BACK } else { POLL };
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn events(reader: Reader) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        let id = event.cursor().to_string();
        let kind = event.kind.clone();
        let view = EventView::from(event);
        let sse = SseEvent::default()
            .id(id)
            .event(kind)
            .json_data(&view)
            .unwrap_or_else(|_| SseEvent::default().comment("an event could not be serialised"));
        Some((Ok(sse), reader))
    })
}
