//! `GET /api/v1/whoami`: who a token stands for and which roles it grants, so a client (the
//! dashboard) offers only what the API would allow. It grants nothing by itself.

use axum::Json;
use pacer_auth::Principal;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Actor;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_whoami))
}

/// The caller as its token says.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "subject": "alice", "issuer": "pacer", "roles": ["operator"] }))]
pub(crate) struct Whoami {
    /// The token's `sub`.
    subject: String,
    /// The token's `iss`.
    issuer: String,
    /// The roles it grants: `upstream`, `downstream`, `operator`, `admin` (`admin` may
    /// everything).
    #[schema(example = json!(["operator"]))]
    roles: Vec<&'static str>,
}

impl From<Principal> for Whoami {
    fn from(principal: Principal) -> Self {
        Self {
            subject: principal.subject,
            issuer: principal.issuer,
            roles: principal.roles.iter().map(|r| r.as_str()).collect(),
        }
    }
}

/// Who am I
///
/// The subject, issuer and roles of the token this request carries. Every other route checks
/// its role itself; this one only reports them, so a client can hide what would be refused.
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "session",
    responses((status = 200, description = "The caller.", body = Whoami))
)]
async fn get_whoami(actor: Actor) -> Json<Whoami> {
    Json(Whoami::from(actor.principal))
}
