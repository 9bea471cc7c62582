//! Pacer's REST API: the routers, their handlers and the problem+json errors they return.
//! Handlers parse input into domain types first, so nothing invalid reaches the store.

mod cluster;
mod error;
mod extract;
mod health;
mod jobs;
mod tasks;
mod triggers;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use pacer_domain::Span;
use pacer_store::{ClaimedTask, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

/// Who may call a route. Every route declares its role; the authentication layer checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Systems that create tasks and post messages.
    Upstream,
    /// Services that report on tasks.
    Downstream,
    /// People who read, run, pause, cancel and retry.
    Operator,
    /// People who define jobs and triggers; may do everything.
    Admin,
}

/// The dispatch capacity of this node that a handler may hand a just-created task to, so a task
/// created due now is claimed in the same commit that creates it and dispatched at once.
#[derive(Debug, Clone)]
pub struct Handoff {
    permits: Arc<Semaphore>,
    sender: mpsc::Sender<(ClaimedTask, OwnedSemaphorePermit)>,
    lease_margin: Span,
}

impl Handoff {
    /// A handoff into the dispatcher that owns `permits` and receives from `sender`.
    pub fn new(
        permits: Arc<Semaphore>,
        sender: mpsc::Sender<(ClaimedTask, OwnedSemaphorePermit)>,
        lease_margin: Span,
    ) -> Self {
        Self {
            permits,
            sender,
            lease_margin,
        }
    }
}

/// Everything a handler needs, built once at start-up.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Store,
    node_id: Arc<str>,
    handoff: Option<Handoff>,
    body_limit: usize,
    dead_after: Span,
    shutdown: CancellationToken,
}

impl AppState {
    /// State for a node named `node_id`; with a handoff, tasks due now are dispatched directly.
    pub fn new(store: Store, node_id: &str, handoff: Option<Handoff>, config: &ApiConfig) -> Self {
        Self {
            store,
            node_id: node_id.into(),
            handoff,
            body_limit: config.body_limit,
            dead_after: config.dead_after,
            shutdown: CancellationToken::new(),
        }
    }

    /// Reports not ready once `shutdown` is cancelled, so load balancers stop sending new work
    /// while the node drains and still takes callbacks.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
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
}

/// The whole API, ready to serve.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .merge(jobs::admin_routes())
        .merge(triggers::admin_routes());
    let operator = Router::new()
        .merge(jobs::operator_routes())
        .merge(tasks::operator_routes())
        .merge(triggers::operator_routes())
        .merge(cluster::operator_routes());
    let upstream = tasks::upstream_routes();
    let downstream = tasks::downstream_routes();
    Router::new()
        .merge(with_role(Role::Admin, admin))
        .merge(with_role(Role::Operator, operator))
        .merge(with_role(Role::Upstream, upstream))
        .merge(with_role(Role::Downstream, downstream))
        .merge(health::routes())
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .with_state(state)
}

/// Marks every route of `routes` as needing `role`; the request carries the requirement so the
/// authentication layer and the request log can see it.
fn with_role(role: Role, routes: Router<AppState>) -> Router<AppState> {
    routes.route_layer(middleware::from_fn(
        move |mut request: Request, next: Next| async move {
            request.extensions_mut().insert(role);
            let response: Response = next.run(request).await;
            response
        },
    ))
}
