//! The dashboard: `/` leads to it, its page and assets are served from the binary with their
//! media types and a Content-Security-Policy that allows no inline script and no other origin,
//! and `GET /api/v1/whoami` tells it the caller's roles (and grants nothing by itself).

#[path = "support/state.rs"]
mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

fn router(pool: PgPool) -> Router {
    let (state, _) = support::state(pool, support::config(), vec![]);
    pacer_api::router(state)
}

async fn get(
    router: &Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = Request::builder().uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1024 * 1024)
        .await
        .expect("body")
        .to_vec();
    (status, headers, body)
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_dashboard_is_served_from_the_binary_under_a_strict_content_security_policy(
    pool: PgPool,
) {
    let app = router(pool);

    let (status, headers, _) = get(&app, "/", &[]).await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(text(&headers, header::LOCATION), "/ui");

    let (status, headers, body) = get(&app, "/ui", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        text(&headers, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let csp = text(&headers, header::CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} is missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!(text(&headers, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let page = String::from_utf8(body).expect("utf-8");
    assert!(page.contains(r#"<script src="/ui/assets/app.js" defer></script>"#));
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline script or style"
    );
    let etag = text(&headers, header::ETAG).to_owned();

    let (status, _, body) = get(&app, "/ui", &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());

    let mut total = page.len();
    for (asset, media_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = get(&app, &format!("/ui/assets/{asset}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert_eq!(text(&headers, header::CONTENT_TYPE), media_type, "{asset}");
        assert!(text(&headers, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
        assert!(!body.is_empty(), "{asset}");
        total += body.len();
    }
    assert!(total < 300 * 1024, "the dashboard weighs {total} bytes");

    let (status, headers, body) = get(&app, "/ui/assets/missing.js", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        text(&headers, header::CONTENT_TYPE),
        "application/problem+json"
    );
    let problem: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(problem["type"], "/problems/not-found");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn whoami_reports_the_roles_of_any_valid_token_and_nothing_else(pool: PgPool) {
    let app = router(pool);

    for roles in [&["upstream"][..], &["operator", "downstream"], &["admin"]] {
        let bearer = format!("Bearer {}", support::token(roles));
        let (status, _, body) = get(&app, "/api/v1/whoami", &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::OK, "{roles:?}");
        let me: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(me["roles"], json!(roles));
        assert_eq!(me["issuer"], "test-idp");
        assert!(me["subject"].is_string());
    }

    let (status, _, _) = get(&app, "/api/v1/whoami", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(
        &app,
        "/api/v1/whoami",
        &[("authorization", "Bearer not-a-token")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Knowing its roles opens no route: an upstream token is still refused the operator's.
    let bearer = format!("Bearer {}", support::token(&["upstream"]));
    let (status, _, _) = get(&app, "/api/v1/jobs", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
