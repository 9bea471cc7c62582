//! The OpenAPI 3.1 document of the API, generated from the handlers and the types they send and
//! receive, served at `/api/openapi.json` with a Swagger UI at `/docs` (its assets are compiled
//! into the binary, so it works offline). `pacer openapi` prints the same document, and the copy
//! committed in `openapi/openapi.json` must match it (CI regenerates and compares).
//!
//! # Adding a route
//!
//! 1. Annotate the handler with `#[utoipa::path(...)]`: the method and path, a `tag`, its path
//!    and query parameters (`params(...)`; a query struct derives `IntoParams`), its
//!    `request_body`, its success responses with their bodies and headers, and the errors that are
//!    its own (`404` for what it looks up, `409` for a conflict), each with `body = Problem`.
//!    Write the doc comment as the operation's summary (first line) and description. Take input
//!    through `crate::extract` (`Json`, `JsonOrEmpty`, `Query`, `Path`), whose rejections are
//!    problems, never axum's own extractors (plain-text rejections).
//! 2. Give every type that appears in a body a schema: `#[derive(utoipa::ToSchema)]` with an
//!    `example` in the shapes of DESIGN §12 (domain types derive it behind pacer-domain's `openapi`
//!    feature, see `#[cfg_attr(feature = "openapi", ...)]` there).
//! 3. Register the handler with `.routes(routes!(handler))` (one call per path; handlers of the
//!    same path go in one `routes!`) in an `OpenApiRouter` of its module, and merge that router
//!    into the group of its role in `groups()` in lib.rs. A route added with a plain `.route(...)`
//!    is served but missing from the document, so don't.
//! 4. Run `cargo run -- openapi --output openapi/openapi.json` and commit the result, then
//!    `scripts/schemathesis` (`--include-path-regex … --phases examples,coverage,fuzzing`
//!    fuzzes just the new routes).
//!
//! A response that is not JSON names its media type (`content_type = "text/event-stream"` for
//! server-sent events); in OpenAPI 3.1 the schema of an event stream describes one event (its
//! `id`, `event` and `data` fields, see `ServerSentEvent` in events.rs), and schemathesis checks
//! every event it reads against it. It reads at most 20 events of a stream and otherwise waits up
//! to its request timeout, so give a stream a short per-operation `request-timeout` (and fewer
//! cases) in the configuration `scripts/schemathesis` writes. A route that creates or returns a resource other
//! routes take by id gets an entry in `LINKS` below.
//!
//! What every operation shares is added here, from its group and its shape, so handlers don't
//! repeat it: the security requirement and the role note (from the group), `401`/`403` (routes
//! behind a token), `429` (writes behind a token), `400`/`413`/`415` (a request body), `422`
//! (a body or any parameter), and `500`/`503` (everything). A response of status 400 or more with
//! `body = Problem` is documented as `application/problem+json`.

use axum::Router;
use axum::response::IntoResponse;
use pacer_auth::Role;
use pacer_domain::FieldError;
use serde_json::{Value, json};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, schema};
use utoipa::{Modify, OpenApi as _};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::AppState;
use crate::error::Problem;

/// The media type of every error.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";
/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/api/openapi.json";
/// Where the Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";

/// The security scheme of API tokens (JWTs from a trusted issuer).
const BEARER: &str = "bearer";
/// The security scheme of the per-task callback tokens Pacer mints.
const CALLBACK_TOKEN: &str = "callback_token";

/// Who may call a group of routes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    /// Anyone: health, readiness, keys, metrics.
    Public,
    /// A bearer token granting this role (`admin` may everything).
    Role(Role),
    /// Any bearer token that verifies, whatever its roles.
    Token,
    /// The task's own callback token, or a bearer token with the `downstream` role.
    Callback,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Pacer API",
        description = "Pacer is a clustered scheduler: triggers fire jobs exactly once across a \
            cluster, each run (a task) is dispatched to a downstream service over HTTP and re-polled \
            until the service reports back. Every route but health, readiness, metrics and the \
            signing keys needs `Authorization: Bearer <JWT>` with a role: `upstream` creates tasks, \
            `downstream` reports on them, `operator` reads everything, pauses, resumes and cancels, \
            `admin` may everything. Every error is `application/problem+json` (RFC 9457). No string \
            may hold the NUL character (U+0000), anywhere in a request: PostgreSQL cannot store \
            it, so such a request is refused with a 422 naming the field. Lists page with an \
            opaque `cursor`: pass back the `next_cursor` a list returned.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "jobs", description = "Named definitions of work: where to dispatch, with what payload and policy."),
        (name = "triggers", description = "When a job fires: cron, interval or once; backfills of past occurrences."),
        (name = "calendars", description = "Named exclusion calendars (holidays, maintenance windows) that triggers skip."),
        (name = "concurrency", description = "Concurrency groups: a limit on open tasks that several jobs share."),
        (name = "tasks", description = "Runs of a job, their attempts, and the downstream's callbacks."),
        (name = "messages", description = "Notices from upstreams, each creating a task for every job subscribed to its type."),
        (name = "alerts", description = "Late or failing work, raised once per problem: list, acknowledge, resolve."),
        (name = "events", description = "The event log as a live stream of server-sent events, and subscriptions that push it, filtered, to receivers."),
        (name = "cluster", description = "Nodes, leadership, scheduler standby, running every job, and skipped runs."),
        (name = "audit", description = "Every change an admin or operator made."),
        (name = "session", description = "Who the caller's token says it is, and its roles."),
        (name = "health", description = "Liveness, readiness, metrics and Pacer's public keys (no token)."),
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&Shared),
)]
struct ApiDoc;

/// The security schemes and the reusable error responses.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Components::new);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from an issuer Pacer trusts (`auth.issuers`), carrying roles in the \
                         claim named by `auth.role_claim`. The requirement of each operation lists \
                         the role it needs; `admin` may everything.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            CALLBACK_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `callback.token` Pacer sends with each dispatch: valid for that task \
                         only (audience `pacer-callback`, subject the task id).",
                    ))
                    .build(),
            ),
        );
        for (name, response) in shared_responses() {
            components
                .responses
                .insert(name.to_owned(), response.into());
        }
    }
}

fn problem_response(description: &str, example: Value) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .example(Some(example))
            .build(),
    )
}

fn string_header(description: &str) -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(Some(
            schema::ObjectBuilder::new().schema_type(schema::Type::String),
        ))
        .description(Some(description))
        .build()
}

/// The error responses every operation may give, by name in `components.responses`.
fn shared_responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "MalformedJson",
            problem_response(
                "The body is not JSON.",
                json!({ "type": "/problems/malformed-json", "title": "Malformed JSON", "status": 400,
                        "detail": "the body is not valid JSON for this request: expected value at line 1 column 1" }),
            )
            .build(),
        ),
        (
            "Unauthenticated",
            problem_response(
                "No token, or one that does not verify.",
                json!({ "type": "/problems/unauthenticated", "title": "Unauthenticated", "status": 401,
                        "detail": "no bearer token" }),
            )
            .header(
                "WWW-Authenticate",
                string_header("`Bearer realm=\"pacer\"`, with `error=\"invalid_token\"` for a bad token."),
            )
            .build(),
        ),
        (
            "Forbidden",
            problem_response(
                "The token lacks the operation's role, or a callback token is for another task.",
                json!({ "type": "/problems/forbidden", "title": "Forbidden", "status": 403,
                        "detail": "this route needs the operator role" }),
            )
            .header(
                "WWW-Authenticate",
                string_header("`Bearer realm=\"pacer\", error=\"insufficient_scope\"`."),
            )
            .build(),
        ),
        (
            "PayloadTooLarge",
            problem_response(
                "The body is larger than `http.body_limit`.",
                json!({ "type": "/problems/payload-too-large", "title": "Payload too large", "status": 413,
                        "detail": "the body is larger than the 1048576-byte limit" }),
            )
            .build(),
        ),
        (
            "UnsupportedMediaType",
            problem_response(
                "The body is not `application/json`.",
                json!({ "type": "/problems/unsupported-media-type", "title": "Unsupported media type",
                        "status": 415, "detail": "the body must be JSON (content-type: application/json)" }),
            )
            .build(),
        ),
        (
            "Invalid",
            problem_response(
                "A field or parameter is unknown, missing, of the wrong type or out of range; \
                 `errors` names each.",
                json!({ "type": "/problems/validation", "title": "Invalid request", "status": 422,
                        "detail": "retry.max_attempts: must be between 1 and 1000",
                        "errors": [ { "field": "retry.max_attempts", "message": "must be between 1 and 1000" } ] }),
            )
            .build(),
        ),
        (
            "RateLimited",
            problem_response(
                "Too many writes by this caller (`auth.rate_limit_per_second`).",
                json!({ "type": "/problems/rate-limited", "title": "Too many requests", "status": 429,
                        "detail": "too many write requests; retry after 20ms" }),
            )
            .header("Retry-After", string_header("Seconds to wait before retrying."))
            .build(),
        ),
        (
            "Internal",
            problem_response(
                "A fault of Pacer's; the cause is in its log.",
                json!({ "type": "/problems/internal", "title": "Internal error", "status": 500,
                        "detail": "an internal error occurred; it has been logged" }),
            )
            .build(),
        ),
        (
            "Unavailable",
            problem_response(
                "The database is unreachable (`/problems/unavailable`), or the request took longer \
                 than `http.request_timeout` (`/problems/timeout`); retry.",
                json!({ "type": "/problems/unavailable", "title": "Service unavailable", "status": 503,
                        "detail": "the database is unavailable; try again shortly" }),
            )
            .build(),
        ),
    ]
}

/// The whole document: every route of every group, completed with what they share.
pub fn document() -> OpenApi {
    let mut document = ApiDoc::openapi();
    for (access, group) in crate::groups() {
        let mut part = group.into_openapi();
        for item in part.paths.paths.values_mut() {
            complete(item, access);
        }
        document.merge(part);
    }
    let mut metrics = crate::health::MetricsDoc::openapi();
    for item in metrics.paths.paths.values_mut() {
        complete(item, Access::Public);
    }
    document.merge(metrics);
    // The domain names a job's target; its shape is documented here.
    document
        .components
        .get_or_insert_with(Components::new)
        .schemas
        .insert("Target".to_owned(), crate::schemas::target());
    add_links(&mut document);
    close_tagged_variants(&mut document, "OutboundAuth");
    document
}

/// The variants of a tagged enum that refuses unknown fields (`deny_unknown_fields`) take no
/// other property; utoipa leaves them open.
fn close_tagged_variants(document: &mut OpenApi, name: &str) {
    use utoipa::openapi::schema::{AdditionalProperties, Schema};

    let Some(components) = document.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(name) {
        for item in &mut one_of.items {
            if let RefOr::T(Schema::Object(object)) = item {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// Links of one operation: its id, the statuses whose body carries the resource, the target's
/// parameters as runtime expressions, and the target operations.
type Link = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

/// `{name}` from a job in the response body.
const JOB_NAME: &[(&str, &str)] = &[("name", "$response.body#/name")];
/// `{name}` and `{id}` from a trigger in the response body.
const TRIGGER: &[(&str, &str)] = &[
    ("name", "$response.body#/job"),
    ("id", "$response.body#/id"),
];
/// `{id}` from a task, a message or an alert in the response body.
const ID: &[(&str, &str)] = &[("id", "$response.body#/id")];
/// What may be done with a task by its id.
const TASK_OPERATIONS: &[&str] = &[
    "get_task",
    "cancel_task",
    "report_task",
    "retry_task",
    "release_task",
];

/// Links from a response to the operations that take what it returns, as operation ids: the
/// statuses of `from` that carry the resource, and the operations it leads to. They tell a reader
/// (and schemathesis' stateful phase) how the resources chain.
const LINKS: &[Link] = &[
    (
        "put_job",
        &["200", "201"],
        JOB_NAME,
        &[
            "get_job",
            "delete_job",
            "pause_job",
            "resume_job",
            "create_trigger",
            "list_triggers",
            "create_task",
            "run_job",
            "retry_failed_tasks",
            "get_job_summary",
        ],
    ),
    (
        "create_trigger",
        &["201"],
        TRIGGER,
        &[
            "get_trigger",
            "replace_trigger",
            "delete_trigger",
            "pause_trigger",
            "resume_trigger",
            "preview_trigger",
            "backfill_trigger",
        ],
    ),
    (
        "put_calendar",
        &["200", "201"],
        JOB_NAME,
        &["get_calendar", "delete_calendar"],
    ),
    ("create_task", &["200", "202"], ID, TASK_OPERATIONS),
    ("run_job", &["202"], ID, TASK_OPERATIONS),
    ("retry_task", &["200", "202"], ID, TASK_OPERATIONS),
    ("create_message", &["200", "202"], ID, &["get_message"]),
    ("get_alert", &["200"], ID, &["ack_alert", "resolve_alert"]),
];

fn add_links(document: &mut OpenApi) {
    for (from, statuses, parameters, targets) in LINKS {
        let operation = document
            .paths
            .paths
            .values_mut()
            .flat_map(operations)
            .map(|(_, operation)| operation)
            .find(|operation| operation.operation_id.as_deref() == Some(*from));
        let Some(operation) = operation else { continue };
        for status in *statuses {
            let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) else {
                continue;
            };
            for target in *targets {
                let link = parameters
                    .iter()
                    .fold(
                        LinkBuilder::new().operation_id(*target),
                        |link, (name, value)| link.parameter(*name, *value),
                    )
                    .build();
                response.links.insert((*target).to_owned(), link.into());
            }
        }
    }
}

/// The document as `pacer openapi` prints it and `openapi/openapi.json` holds it.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The document at [`DOCUMENT_PATH`] and the Swagger UI at [`DOCS_PATH`], both without a token.
pub(crate) fn routes(document: OpenApi) -> Router<AppState> {
    // No validator badge: it would send the document to swagger.io from the reader's browser.
    let config = Config::new([DOCUMENT_PATH]).validator_url("none");
    let docs: Router<AppState> = SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, document)
        .config(config)
        .into();
    // An unknown file under /docs is a 404 like any other: a problem, not an empty body.
    docs.layer(axum::middleware::map_response(
        |response: axum::response::Response| async move {
            if response.status() == axum::http::StatusCode::NOT_FOUND {
                crate::Error::RouteNotFound.into_response()
            } else {
                response
            }
        },
    ))
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("patch", &mut item.patch),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|op| (method, op)))
}

/// Whether a body is a [`Problem`].
fn is_problem(content: &RefOr<utoipa::openapi::Content>) -> bool {
    matches!(content, RefOr::T(content)
        if matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")))
}

fn complete(item: &mut PathItem, access: Access) {
    for (method, operation) in operations(item) {
        // A handler's own `params(...)` come first; the copies utoipa infers from a `Path`
        // argument (without descriptions) go.
        if let Some(parameters) = operation.parameters.as_mut() {
            let mut seen = std::collections::BTreeSet::new();
            parameters.retain(|parameter| match parameter {
                RefOr::T(p) => seen.insert((p.name.clone(), json!(p.parameter_in).to_string())),
                RefOr::Ref(_) => true,
            });
        }
        let write = method != "get";
        let has_body = operation.request_body.is_some();
        let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
        let mut shared: Vec<(&str, &str)> = Vec::new();
        let note = match access {
            Access::Public => None,
            Access::Role(role) => {
                operation.security = Some(vec![SecurityRequirement::new(BEARER, [role.as_str()])]);
                Some(if role == Role::Admin {
                    "Needs the `admin` role.".to_owned()
                } else {
                    format!("Needs the `{}` role (or `admin`).", role.as_str())
                })
            }
            Access::Token => {
                operation.security =
                    Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                Some("Needs any valid token, whatever its roles.".to_owned())
            }
            Access::Callback => {
                operation.security = Some(vec![
                    SecurityRequirement::new(CALLBACK_TOKEN, Vec::<String>::new()),
                    SecurityRequirement::new(BEARER, [Role::Downstream.as_str()]),
                ]);
                Some(
                    "Needs the task's own callback token, or the `downstream` role (or `admin`)."
                        .to_owned(),
                )
            }
        };
        if let Some(note) = note {
            operation.description = Some(match operation.description.take() {
                Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
                _ => note,
            });
            shared.push(("401", "Unauthenticated"));
            // A route open to any valid token has no role to lack.
            if !matches!(access, Access::Token) {
                shared.push(("403", "Forbidden"));
            }
            if write {
                shared.push(("429", "RateLimited"));
            }
        }
        if has_body {
            shared.extend([
                ("400", "MalformedJson"),
                ("413", "PayloadTooLarge"),
                ("415", "UnsupportedMediaType"),
            ]);
        }
        if has_body || has_parameters {
            shared.push(("422", "Invalid"));
        }
        shared.extend([("500", "Internal"), ("503", "Unavailable")]);
        let responses = &mut operation.responses.responses;
        for (status, name) in shared {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
        }
        for (status, response) in responses.iter_mut() {
            if status.as_str() >= "400"
                && let RefOr::T(response) = response
                && response
                    .content
                    .get("application/json")
                    .is_some_and(is_problem)
                && let Some(content) = response.content.shift_remove("application/json")
            {
                response.content.insert(PROBLEM_JSON.to_owned(), content);
            }
        }
    }
}
