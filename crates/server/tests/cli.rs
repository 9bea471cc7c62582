//! The `pacer` command line: its help, clear refusals of bad configuration, and `pacer migrate`
//! against a fresh database.

use std::process::{Command, Output};

fn pacer(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pacer"));
    command.args(args).env_remove("RUST_LOG");
    // Only what each case sets may configure the command.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PACER_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("pacer runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let output = pacer(&["--help"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for command in [
        "serve", "dev", "migrate", "jobs", "tasks", "triggers", "alerts", "cluster", "events",
        "apply", "export",
    ] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn bad_configuration_is_refused_with_exit_code_2_naming_the_setting() {
    let cases: [(&[(&str, &str)], &str); 7] = [
        (
            &[("PACER_DISPATCH__CONCURRENCY", "0")],
            "dispatch.concurrency",
        ),
        (
            &[("PACER_DATABASE_URL", "mysql://db/pacer")],
            "database.url",
        ),
        (
            &[("PACER_DISPATCH__POLL_INTERVAL", "soon")],
            "poll_interval",
        ),
        (&[("PACER_HTTP__PUBLIC_URL", "ftp://x")], "public_url"),
        (&[("PACER_AMQP_URL", "http://broker:5672")], "amqp.url"),
        (&[("PACER_AMQP__PREFETCH", "0")], "amqp.prefetch"),
        (
            &[("PACER_NODE__WORKER_THREADS", "0")],
            "node.worker_threads",
        ),
    ];
    for (env, setting) in cases {
        let output = pacer(&["serve"], env);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{env:?}: {}",
            stderr(&output)
        );
        let message = stderr(&output).to_lowercase();
        assert!(message.contains(setting), "{env:?}: {message}");
    }

    let dir = std::env::temp_dir().join(format!("pacer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("pacer.toml");
    std::fs::write(&file, "[dispatch]\nconcurency = 5\n").expect("config file");
    let output = pacer(
        &["serve", "--config", file.to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("concurency"),
        "{}",
        stderr(&output)
    );
    let missing = pacer(&["serve", "--config", "/nonexistent/pacer.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_alert_settings_are_refused_with_exit_code_2_naming_the_setting() {
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[(
                "PACER_ALERTS__SINKS",
                r#"[{name="ops", kind="pager", url="http://hooks.example"}]"#,
            )],
            // Refused while the configuration is read, naming the key.
            "alerts.sinks.0.kind",
        ),
        (
            &[(
                "PACER_ALERTS__SINKS",
                r#"[{name="ops", url="http://hooks.example", secret="nope"}]"#,
            )],
            "alerts.sinks[0].secret",
        ),
        (
            &[(
                "PACER_ALERTS__SINKS",
                r#"[{name="log", url="http://hooks.example"}]"#,
            )],
            "alerts.sinks[0].name",
        ),
        (
            &[("PACER_ALERTS__DISPATCH_ERRORS_THRESHOLD", "0")],
            "alerts.dispatch_errors_threshold",
        ),
        (&[("PACER_ALERTS__SEVERITY__OVERDUE", "loud")], "severity"),
    ];
    for (env, setting) in cases {
        let output = pacer(&["serve"], env);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{env:?}: {}",
            stderr(&output)
        );
        let message = stderr(&output).to_lowercase();
        assert!(message.contains(setting), "{env:?}: {message}");
    }
}

#[tokio::test]
async fn migrate_applies_the_schema_and_is_repeatable() {
    let server = "postgres://postgres@127.0.0.1:5432";
    let name = format!("pacer_cli_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let url = format!("{server}/{name}");

    for _ in 0..2 {
        let output = pacer(&["migrate"], &[("PACER_DATABASE_URL", &url)]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let db = sqlx::PgPool::connect(&url)
        .await
        .expect("migrated database");
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_name in ('jobs', 'tasks', 'task_attempts')
         order by 1",
    )
    .fetch_all(&db)
    .await
    .expect("tables");
    assert_eq!(tables, ["jobs", "task_attempts", "tasks"]);
    db.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(&admin)
    .await
    .expect("drop database");
}

#[test]
fn serve_refuses_to_start_without_keys() {
    let output = pacer(&["serve"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no token issuer is configured"),
        "{}",
        stderr(&output)
    );

    let with_issuer = [(
        "PACER_JWT_HS256_SECRET",
        "a-cli-test-secret-that-is-long-enough",
    )];
    let output = pacer(&["serve"], &with_issuer);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("pacer keygen"),
        "{}",
        stderr(&output)
    );

    let short = [
        ("PACER_JWT_HS256_SECRET", "short"),
        ("PACER_SIGNING_KEY_FILE", "/nonexistent"),
    ];
    let output = pacer(&["serve"], &short);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("at least 32"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn token_mints_a_verifiable_token_and_keygen_prints_a_key() {
    let secret = "a-cli-test-secret-that-is-long-enough";
    let output = pacer(
        &[
            "token", "--role", "operator", "--role", "upstream", "--sub", "alice", "--ttl", "1h",
        ],
        &[("PACER_JWT_HS256_SECRET", secret)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |part: &str| {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url");
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("json")
    };
    assert_eq!(decode(parts[0])["alg"], "HS256");
    let claims = decode(parts[1]);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], "pacer");
    assert_eq!(claims["aud"], "pacer");
    assert_eq!(claims["roles"], serde_json::json!(["operator", "upstream"]));
    let ttl = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(ttl, 3600);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let signature =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[2])
            .expect("sig");
    ring::hmac::verify(
        &key,
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &signature,
    )
    .expect("signed with the secret");

    let output = pacer(&["token", "--role", "operator", "--sub", "alice"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("PACER_JWT_HS256_SECRET"),
        "{}",
        stderr(&output)
    );
    let output = pacer(
        &["token", "--role", "wizard", "--sub", "alice"],
        &[("PACER_JWT_HS256_SECRET", secret)],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not a role"),
        "{}",
        stderr(&output)
    );

    let output = pacer(&["keygen"], &[]);
    assert!(output.status.success());
    let pem = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----")
            && pem.trim_end().ends_with("-----END PRIVATE KEY-----")
    );
}

#[test]
fn migrate_gives_up_on_an_unreachable_database_after_its_wait() {
    // Nothing listens on port 1: the database stays unreachable.
    let started = std::time::Instant::now();
    let output = pacer(
        &["migrate", "--wait", "1s"],
        &[(
            "PACER_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/pacer",
        )],
    );
    assert!(!output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("gave up waiting for the database (--wait 1s"),
        "{}",
        stderr(&output)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
}
