//! Pacer's REST API: the routers, their handlers and the problem+json errors they return.
//! Handlers parse input into domain types first, so nothing invalid reaches the store.

mod actions;
mod alerts;
mod audit;
mod auth;
mod calendars;
mod cluster;
mod concurrency;
mod error;
mod events;
mod extract;
mod health;
mod jobs;
mod messages;
mod observe;
mod openapi;
mod pagination;
mod runs;
mod schemas;
mod subscriptions;
mod tasks;
mod triggers;
mod ui;
mod views;
mod whoami;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use pacer_domain::{ConsumerStatus, Span};
use pacer_store::batch::Batcher;
use pacer_store::{ClaimedTask, Reporting, Store, TaskCreation};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::openapi::Access;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use utoipa_axum::router::OpenApiRouter;

pub use auth::{Auth, RateLimiter};
pub use error::{Error, Result};
pub use openapi::{DOCS_PATH, DOCUMENT_PATH, document, document_json};
pub use pacer_auth::Role;

/// This node's dispatcher, as the handlers that create tasks see it: a task created due now is
/// claimed for this node in the statement that creates it and handed over, so it is dispatched
/// at once instead of at the next look for due work.
pub trait Dispatch: Send + Sync + std::fmt::Debug + 'static {
    /// A free dispatch slot, or `None` when every one is taken (the task is then created
    /// unclaimed, for any node's dispatcher to claim).
    fn reserve(&self) -> Option<Box<dyn DispatchSlot>>;
}

/// A dispatch slot reserved for a task about to be created; dropping it frees the slot.
pub trait DispatchSlot: Send {
    /// Added to the job's dispatch timeout to make the claim's lease.
    fn lease_margin(&self) -> Span;

    /// Hands the created task, claimed for this node, to the dispatcher; one that has stopped
    /// hands the claim back for any node to take.
    fn hand_over(self: Box<Self>, task: ClaimedTask) -> BoxFuture<'static, ()>;
}

/// A future a [`DispatchSlot`] returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Everything a handler needs, built once at start-up. Every request clones it, so it is one
/// shared allocation: a clone is one reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug, Clone)]
pub struct Shared {
    store: Store,
    node_id: Arc<str>,
    dispatch: Option<Arc<dyn Dispatch>>,
    body_limit: usize,
    dead_after: Span,
    shutdown: CancellationToken,
    auth: Auth,
    secrets: Arc<BTreeSet<String>>,
    request_timeout: Duration,
    notify_urls: Arc<[String]>,
    alert_sinks: Arc<BTreeSet<String>>,
    /// This node's RabbitMQ consumer, as the engine reports it.
    consumer: watch::Receiver<ConsumerStatus>,
    /// Job definitions kept between task creations.
    jobs: JobCache,
    /// Creates tasks of kept job definitions, many requests' tasks per statement.
    creation: Batcher<TaskCreation>,
    /// Applies callbacks, many per statement.
    reporting: Batcher<Reporting>,
}

/// The most tasks created in one statement, and how many such statements run at once.
const CREATION_BATCH: usize = 64;
const CREATION_WRITERS: usize = 1;

/// The most callbacks applied in one statement (as many as a node's dispatch outcomes), and how
/// many such statements run at once. The callbacks that end children of one run take turns on
/// the run's lock, so each turn should end as many of them as have arrived: a turn costs the same
/// round trips however many children it ends.
const REPORT_BATCH: usize = 256;
const REPORT_WRITERS: usize = 1;

/// Job definitions as last read, by name, for the task creation path: each use is checked
/// against the job's current version by the statement that writes the task, so a kept
/// definition is never acted on once the job has changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobCache(Arc<std::sync::Mutex<HashMap<String, Arc<pacer_store::Job>>>>);

impl JobCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<pacer_store::Job>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<pacer_store::Job>> {
        self.entries().get(name).cloned()
    }

    pub(crate) fn keep(&self, name: &str, job: Arc<pacer_store::Job>) {
        self.entries().insert(name.to_owned(), job);
    }

    pub(crate) fn forget(&self, name: &str) {
        self.entries().remove(name);
    }
}

impl AppState {
    /// State for a node named `node_id`; with a handoff, tasks due now are dispatched directly.
    pub fn new(
        store: Store,
        node_id: &str,
        dispatch: Option<Arc<dyn Dispatch>>,
        config: &ApiConfig,
        auth: Auth,
    ) -> Self {
        Self(Arc::new(Shared {
            store: store.clone(),
            node_id: node_id.into(),
            dispatch,
            body_limit: config.body_limit,
            dead_after: config.dead_after,
            shutdown: CancellationToken::new(),
            auth,
            secrets: Arc::new(config.secrets.clone()),
            request_timeout: config.request_timeout,
            notify_urls: config.notify_urls.clone().into(),
            alert_sinks: Arc::new([pacer_domain::alert::LOG_SINK.to_owned()].into()),
            consumer: watch::channel(ConsumerStatus::disabled()).1,
            jobs: JobCache::default(),
            creation: Batcher::start(
                TaskCreation::new(store.clone(), node_id),
                CREATION_BATCH,
                CREATION_WRITERS,
            ),
            reporting: Batcher::start(Reporting::new(store.clone()), REPORT_BATCH, REPORT_WRITERS),
        }))
    }

    /// The alert sinks jobs may route to (their names), besides `log`.
    pub fn with_alert_sinks(mut self, mut names: BTreeSet<String>) -> Self {
        names.insert(pacer_domain::alert::LOG_SINK.to_owned());
        Arc::make_mut(&mut self.0).alert_sinks = Arc::new(names);
        self
    }

    /// Reports the state of this node's RabbitMQ consumer in `/readyz` and the cluster view,
    /// and allows jobs with an `amqp` target while it is not disabled.
    pub fn with_consumer(mut self, consumer: watch::Receiver<ConsumerStatus>) -> Self {
        Arc::make_mut(&mut self.0).consumer = consumer;
        self
    }

    /// Reports not ready once `shutdown` is cancelled, so load balancers stop sending new work
    /// while the node drains and still takes callbacks.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        Arc::make_mut(&mut self.0).shutdown = shutdown;
        self
    }
}

/// The API's settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// A node silent this long is shown as dead.
    pub dead_after: Span,
    /// The names of the secrets jobs may use for outbound auth (never their values).
    pub secrets: BTreeSet<String>,
    /// A request still running after this long is answered `503`.
    pub request_timeout: Duration,
    /// The URL prefixes a task's `notify.url` must start with (none allowed when empty).
    pub notify_urls: Vec<String>,
}

/// The whole API, ready to serve, with its OpenAPI document and the docs UI.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new();
    for (access, group) in groups() {
        let (routes, _) = group.split_for_parts();
        app = app.merge(match access {
            Access::Public => routes,
            Access::Role(role) => with_role(&state, role, routes),
            Access::Token => routes.route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            )),
            Access::Callback => routes.route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authorize_callback,
            )),
        });
    }
    app.merge(openapi::routes(openapi::document()))
        .merge(ui::routes())
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn(observe::observe))
        .layer(middleware::from_fn_with_state(
            state.request_timeout,
            deadline,
        ))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(RequestIdV7))
        .with_state(state)
}

/// Every route, grouped by who may call it. Both the router and the OpenAPI document are built
/// from these groups, so a route registered here with `routes!` is documented (see the `openapi`
/// module for how to add one).
fn groups() -> [(Access, OpenApiRouter<AppState>); 6] {
    [
        (
            Access::Role(Role::Admin),
            OpenApiRouter::new()
                .merge(jobs::admin_routes())
                .merge(triggers::admin_routes())
                .merge(calendars::admin_routes())
                .merge(concurrency::admin_routes())
                .merge(subscriptions::admin_routes())
                .merge(audit::admin_routes()),
        ),
        (
            Access::Role(Role::Operator),
            OpenApiRouter::new()
                .merge(jobs::operator_routes())
                .merge(tasks::operator_routes())
                .merge(runs::operator_routes())
                .merge(actions::operator_routes())
                .merge(events::operator_routes())
                .merge(triggers::operator_routes())
                .merge(calendars::operator_routes())
                .merge(concurrency::operator_routes())
                .merge(subscriptions::operator_routes())
                .merge(cluster::operator_routes())
                .merge(alerts::operator_routes())
                .merge(messages::operator_routes()),
        ),
        (
            Access::Role(Role::Upstream),
            OpenApiRouter::new()
                .merge(tasks::upstream_routes())
                .merge(messages::upstream_routes()),
        ),
        (Access::Token, whoami::routes()),
        (Access::Callback, tasks::downstream_routes()),
        (Access::Public, health::routes()),
    ]
}

/// Every route of `routes` needs a caller holding `role` (or `admin`).
fn with_role(state: &AppState, role: Role, routes: Router<AppState>) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(
        (state.clone(), role),
        auth::authorize,
    ))
}

/// Answers `503` for a request still running after the configured timeout.
async fn deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Result<Response> {
    tokio::time::timeout(timeout, next.run(request))
        .await
        .map_err(|_| Error::Timeout(timeout))
}

/// Request ids are UUIDv7, so they sort by time in logs and the audit log.
#[derive(Debug, Clone, Copy)]
struct RequestIdV7;

impl MakeRequestId for RequestIdV7 {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        axum::http::HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}
