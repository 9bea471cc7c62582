//! Test support for Pacer's end-to-end tests: a fresh database per test ([`TestDb`]), real
//! `pacer serve` processes ([`PacerProcess`]), a scriptable fake downstream ([`FakeDownstream`]), an SMTP server
//! ([`SmtpServer`]),
//! a small client for the REST API ([`Api`]), RabbitMQ helpers ([`amqp`]) and waiting on
//! conditions with deadlines.

pub mod amqp;
mod api;
mod db;
mod downstream;
mod probe;
mod process;
mod security;
mod smtp;
mod wait;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use api::{Api, ApiResponse};
pub use db::TestDb;
pub use downstream::{CallbackResult, FakeDownstream, Received, Reply};
pub use probe::ConcurrencyProbe;
pub use process::{NodeSettings, PacerProcess, pacer_binary};
pub use security::{TEST_SECRET, signing_key_file, token};
pub use smtp::{ReceivedMail, SmtpServer};
pub use wait::wait_until;

/// An HTTP client for tests. reqwest is built without a default TLS provider, so this installs
/// ring first (a second install fails harmlessly).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("the test HTTP client builds")
}

/// Parses an RFC 3339 timestamp from a JSON value, naming the value when it is not one.
pub fn timestamp(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("expected an RFC 3339 timestamp, got {value}"))
}

/// The `outcome` of every attempt in a task view, in order.
pub fn outcomes(task: &Value) -> Vec<String> {
    attempts(task)
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("<none>").to_owned())
        .collect()
}

/// The `attempts` array of a task view.
pub fn attempts(task: &Value) -> &[Value] {
    task["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("the task view has no attempts array: {task:#}"))
}
