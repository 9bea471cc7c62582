//! Authentication on the real router: tokens built by hand (ring, base64) and refused for every
//! reason a token can be wrong, a JWKS that rotates its key, per-task callback tokens, and the
//! write rate limit — each refusal a problem with the right status, changing nothing.

#[path = "support/state.rs"]
mod support;

use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pacer_api::RateLimiter;
use pacer_auth::{Issuer, IssuerKey};
use ring::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

const RSA_KEY: &str = include_str!("support/rsa-test-key.pem");
const RSA_PUBLIC: &str = include_str!("support/rsa-test-key.pub.pem");

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("PEM body")
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
}

fn rs256(claims: &Value) -> String {
    rs256_with(&json!({ "alg": "RS256", "typ": "JWT" }), claims)
}

fn rs256_with(header: &Value, claims: &Value) -> String {
    let key = RsaKeyPair::from_pkcs8(&der(RSA_KEY)).expect("rsa key");
    let input = format!("{}.{}", encode(header), encode(claims));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn ed25519(key: &Ed25519KeyPair, kid: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        encode(&json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid })),
        encode(claims)
    );
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()))
    )
}

fn ed25519_key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key")
}

fn jwk(key: &Ed25519KeyPair, kid: &str) -> Value {
    json!({ "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref()),
            "kid": kid, "alg": "EdDSA", "use": "sig" })
}

fn with(claims: &Value, changes: Value) -> Value {
    let mut claims = claims.clone();
    if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        claims.extend(changes.clone());
    }
    claims
}

/// A JWKS endpoint the test can rotate, on a port of its own.
async fn jwks_server(keys: Arc<Mutex<Value>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { Json(keys.lock().expect("keys").clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{address}/jwks.json")
}

async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (
        status,
        challenge,
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json")
        },
    )
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn every_kind_of_bad_token_is_refused_and_changes_nothing(pool: PgPool) {
    let jwks_key = ed25519_key();
    let jwks = Arc::new(Mutex::new(json!({ "keys": [jwk(&jwks_key, "a")] })));
    let jwks_url = jwks_server(jwks.clone()).await;
    let issuers = vec![
        Issuer {
            issuer: "rsa-idp".into(),
            audience: "pacer".into(),
            key: IssuerKey::PublicKey {
                algorithm: jsonwebtoken::Algorithm::RS256,
                pem: RSA_PUBLIC.into(),
                kid: None,
            },
        },
        Issuer {
            issuer: "jwks-idp".into(),
            audience: "pacer".into(),
            key: IssuerKey::Jwks { url: jwks_url },
        },
    ];
    let router = pacer_api::router(support::state(pool.clone(), support::config(), issuers).0);
    let job = json!({ "target": { "url": "http://a" } });
    let admin = support::claims(&["admin"]);
    let now = chrono::Utc::now().timestamp();
    let hs_header = json!({ "alg": "HS256", "typ": "JWT" });
    let sign = |claims: &Value| support::hs256(support::SECRET.as_bytes(), &hs_header, claims);

    let valid = sign(&admin);
    let mut tampered: Vec<String> = valid.split('.').map(str::to_owned).collect();
    tampered[1] = encode(&with(&admin, json!({ "sub": "mallory" })));
    let refused = [
        ("expired", sign(&with(&admin, json!({ "exp": now - 3600 })))),
        (
            "not yet valid",
            sign(&with(&admin, json!({ "nbf": now + 3600 }))),
        ),
        (
            "without exp",
            sign(&json!({ "iss": "test-idp", "aud": "pacer", "sub": "x", "roles": ["admin"] })),
        ),
        (
            "wrong issuer",
            sign(&with(&admin, json!({ "iss": "someone-else" }))),
        ),
        (
            "wrong audience",
            sign(&with(&admin, json!({ "aud": "another-service" }))),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                encode(&json!({ "alg": "none", "typ": "JWT" })),
                encode(&admin)
            ),
        ),
        (
            "wrong secret",
            support::hs256(
                b"not-the-secret-not-the-secret-not-the-secret",
                &hs_header,
                &admin,
            ),
        ),
        (
            "HS256 keyed with the RSA public key",
            support::hs256(
                RSA_PUBLIC.as_bytes(),
                &hs_header,
                &with(&admin, json!({ "iss": "rsa-idp" })),
            ),
        ),
        (
            "unknown kid",
            ed25519(
                &ed25519_key(),
                "zz",
                &with(&admin, json!({ "iss": "jwks-idp" })),
            ),
        ),
        ("tampered payload", tampered.join(".")),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (why, token) in &refused {
        let (status, challenge, problem) = send(
            &router,
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(token),
            Some(job.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {problem}");
        assert_eq!(problem["type"], "/problems/unauthenticated", "{why}");
        assert!(
            challenge.is_some_and(|c| c.contains("invalid_token")),
            "{why}"
        );
    }
    let (status, challenge, problem) = send(&router, Method::GET, "/api/v1/jobs", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="pacer""#));
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Authorization"))
    );

    let upstream = sign(&support::claims(&["upstream"]));
    let (status, challenge, problem) = send(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&upstream),
        Some(job.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["type"], "/problems/forbidden");
    assert!(challenge.is_some_and(|c| c.contains("insufficient_scope")));
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(jobs, 0, "no refused request wrote anything");

    // Each kind of key accepts its own tokens; roles may also come as a space-separated claim.
    let rsa = rs256(&with(&admin, json!({ "iss": "rsa-idp" })));
    assert_eq!(
        send(
            &router,
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(&rsa),
            Some(job.clone())
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let from_jwks = ed25519(&jwks_key, "a", &with(&admin, json!({ "iss": "jwks-idp" })));
    assert_eq!(
        send(
            &router,
            Method::GET,
            "/api/v1/jobs/sync",
            Some(&from_jwks),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let operator = sign(&support::claims(&["operator"]));
    assert_eq!(
        send(
            &router,
            Method::GET,
            "/api/v1/jobs/sync",
            Some(&operator),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &router,
            Method::DELETE,
            "/api/v1/jobs/sync",
            Some(&operator),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN,
        "defining jobs is for admins"
    );

    // The identity provider rotates its key: Pacer follows on the first token with the new kid.
    let rotated = ed25519_key();
    *jwks.lock().expect("keys") = json!({ "keys": [jwk(&rotated, "b")] });
    let new_token = ed25519(&rotated, "b", &with(&admin, json!({ "iss": "jwks-idp" })));
    assert_eq!(
        send(
            &router,
            Method::GET,
            "/api/v1/jobs/sync",
            Some(&new_token),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let old_token = ed25519(&jwks_key, "a", &with(&admin, json!({ "iss": "jwks-idp" })));
    assert_eq!(
        send(
            &router,
            Method::GET,
            "/api/v1/jobs/sync",
            Some(&old_token),
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    // Health and the key set need no token; the key set carries no private parts.
    assert_eq!(
        send(&router, Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (status, _, keys) = send(&router, Method::GET, "/.well-known/jwks.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(keys["keys"][0]["kid"].is_string());
    assert!(
        keys["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .all(|k| k.get("d").is_none())
    );
}

#[tokio::test]
async fn a_remembered_token_never_outlives_its_key_and_unknown_crit_or_a_foreign_kid_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = ed25519_key();
    let jwks = Arc::new(Mutex::new(json!({ "keys": [jwk(&key, "a")] })));
    let jwks_url = jwks_server(jwks.clone()).await;
    let max_age = std::time::Duration::from_millis(700);
    let verifier = pacer_auth::Verifier::new(
        pacer_auth::VerifierConfig {
            issuers: vec![
                Issuer {
                    issuer: "jwks-idp".into(),
                    audience: "pacer".into(),
                    key: IssuerKey::Jwks { url: jwks_url },
                },
                Issuer {
                    issuer: "rsa-idp".into(),
                    audience: "pacer".into(),
                    key: IssuerKey::PublicKey {
                        algorithm: jsonwebtoken::Algorithm::RS256,
                        pem: RSA_PUBLIC.into(),
                        kid: Some("rsa-1".into()),
                    },
                },
                Issuer {
                    issuer: "test-idp".into(),
                    audience: "pacer".into(),
                    key: IssuerKey::Hs256(support::SECRET.to_owned().into()),
                },
            ],
            role_claim: "roles".into(),
            leeway: std::time::Duration::from_secs(5),
            jwks_min_refresh: std::time::Duration::ZERO,
            jwks_max_age: max_age,
        },
        reqwest::Client::new(),
    )
    .expect("verifier");
    let admin = support::claims(&["admin"]);

    // Verified once, then remembered; the identity provider withdraws the key.
    let token = ed25519(&key, "a", &with(&admin, json!({ "iss": "jwks-idp" })));
    assert!(verifier.verify(&token).await.is_ok());
    *jwks.lock().expect("keys") = json!({ "keys": [jwk(&ed25519_key(), "b")] });
    // Once the key set is due to be fetched again (`jwks_max_age`), the remembered token is
    // checked in full, the set is fetched, and the withdrawn key no longer verifies anything;
    // without a bound of its own the token was remembered for a minute.
    let deadline = tokio::time::Instant::now() + max_age + std::time::Duration::from_secs(10);
    let refused = loop {
        match verifier.verify(&token).await {
            Err(refused) => break refused,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the remembered token outlived the key set's max age"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert!(refused.to_string().contains("kid"), "{refused}");

    // `crit` names an extension Pacer does not understand: refused, signature valid or not.
    let critical = support::hs256(
        support::SECRET.as_bytes(),
        &json!({ "alg": "HS256", "typ": "JWT", "crit": ["x-unknown"], "x-unknown": true }),
        &admin,
    );
    let refused = verifier.verify(&critical).await.expect_err("crit");
    assert!(refused.to_string().contains("crit"), "{refused}");
    let plain = support::hs256(
        support::SECRET.as_bytes(),
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &admin,
    );
    assert!(verifier.verify(&plain).await.is_ok());

    // A static key with a kid: a token naming another kid is refused; its own kid, or none,
    // is checked against the key.
    let rsa_claims = with(&admin, json!({ "iss": "rsa-idp" }));
    let foreign = rs256_with(&json!({ "alg": "RS256", "kid": "rsa-2" }), &rsa_claims);
    let refused = verifier.verify(&foreign).await.expect_err("another kid");
    assert!(refused.to_string().contains("kid"), "{refused}");
    let own = rs256_with(&json!({ "alg": "RS256", "kid": "rsa-1" }), &rsa_claims);
    assert!(verifier.verify(&own).await.is_ok());
    assert!(verifier.verify(&rs256(&rsa_claims)).await.is_ok());
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_callback_token_reports_on_its_own_task_only(pool: PgPool) {
    let (state, keyset) = support::state(pool.clone(), support::config(), vec![]);
    let router = pacer_api::router(state);
    let admin = support::token(&["admin"]);
    send(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&admin),
        Some(json!({ "target": { "url": "http://a" } })),
    )
    .await;
    let upstream = support::token(&["upstream"]);
    let (_, _, a) = send(
        &router,
        Method::POST,
        "/api/v1/jobs/sync/tasks",
        Some(&upstream),
        None,
    )
    .await;
    let (_, _, b) = send(
        &router,
        Method::POST,
        "/api/v1/jobs/sync/tasks",
        Some(&upstream),
        None,
    )
    .await;
    let id = |task: &Value| {
        task["id"]
            .as_str()
            .expect("id")
            .parse::<pacer_domain::TaskId>()
            .expect("task id")
    };
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let token_a = keyset.mint_callback_token(id(&a), later).expect("token");
    let done = json!({ "status": "completed" });
    let uri = |task: &Value| {
        format!(
            "/api/v1/tasks/{}/callback",
            task["id"].as_str().expect("id")
        )
    };

    let (status, _, problem) = send(
        &router,
        Method::POST,
        &uri(&b),
        Some(&token_a),
        Some(done.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let (status, _, task) = send(
        &router,
        Method::POST,
        &uri(&a),
        Some(&token_a),
        Some(done.clone()),
    )
    .await;
    assert_eq!(
        (status, task["state"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    let failed = json!({ "status": "failed" });
    let (status, _, problem) = send(
        &router,
        Method::POST,
        &uri(&a),
        Some(&token_a),
        Some(failed),
    )
    .await;
    assert_eq!(
        (status, problem["state"].as_str()),
        (StatusCode::CONFLICT, Some("completed"))
    );

    let expired = keyset
        .mint_callback_token(id(&b), chrono::Utc::now() - chrono::Duration::hours(1))
        .expect("token");
    assert_eq!(
        send(
            &router,
            Method::POST,
            &uri(&b),
            Some(&expired),
            Some(done.clone())
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let other_keys = pacer_auth::signing::Keyset::generate("pacer");
    let forged = other_keys
        .mint_callback_token(id(&b), later)
        .expect("token");
    assert_eq!(
        send(
            &router,
            Method::POST,
            &uri(&b),
            Some(&forged),
            Some(done.clone())
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            &router,
            Method::POST,
            &uri(&b),
            Some(&upstream),
            Some(done.clone())
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let downstream = support::token(&["downstream"]);
    let (status, _, task) = send(
        &router,
        Method::POST,
        &uri(&b),
        Some(&downstream),
        Some(done),
    )
    .await;
    assert_eq!(
        (status, task["state"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn writes_are_rate_limited_per_caller_and_changes_are_audited(pool: PgPool) {
    let limiter = RateLimiter::new(0.5, 2);
    let router =
        pacer_api::router(support::state_with(pool.clone(), support::config(), vec![], limiter).0);
    let admin = support::token(&["admin"]);
    let job = json!({ "target": { "url": "http://a" }, "description": "first" });
    assert_eq!(
        send(
            &router,
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(&admin),
            Some(job)
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let job = json!({ "target": { "url": "http://a" }, "description": "second" });
    assert_eq!(
        send(
            &router,
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(&admin),
            Some(job.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, _, problem) = send(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&admin),
        Some(job),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(problem["type"], "/problems/rate-limited");
    assert_eq!(
        send(
            &router,
            Method::GET,
            "/api/v1/jobs/sync",
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::OK,
        "reads are not limited"
    );

    let (_, _, audit) = send(&router, Method::GET, "/api/v1/audit", Some(&admin), None).await;
    let entries = audit["items"].as_array().expect("items");
    assert_eq!(entries.len(), 2, "{audit}");
    assert_eq!(entries[0]["action"], "put_job");
    assert_eq!(entries[0]["actor"], "tester");
    assert_eq!(entries[0]["target"], "job:sync");
    assert_eq!(entries[0]["before"]["description"], "first");
    assert_eq!(entries[0]["after"]["description"], "second");
    assert!(entries[0]["request_id"].is_string());
    assert_eq!(entries[1]["before"], Value::Null);
    let operator = support::token(&["operator"]);
    assert_eq!(
        send(&router, Method::GET, "/api/v1/audit", Some(&operator), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}
