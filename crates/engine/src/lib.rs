//! Pacer's background loops. Each loop is a value with `run(self, shutdown)`, spawned and
//! supervised by the server; none spawns work it does not also wait for.

mod alerting;
pub mod amqp;
mod cancel;
mod delivery;
pub mod dispatch;
mod email;
mod error;
mod events;
mod firing;
mod heartbeat;
mod leader;
mod notices;
mod oauth2;
mod outbound;
mod outbox;
mod pruning;
mod sweeper;
mod wakeup;

pub use alerting::{AlertEvent, AlertsConfig, SinkConfig, SinkKind, alert_changed, alert_json};
pub use amqp::{AmqpConfig, Consumer, Publisher};
pub use cancel::CancelNotifier;
pub use delivery::{DELIVERY_ID_HEADER, Deliverer, DeliveryConfig, EVENT_HEADER};
pub use dispatch::{
    DispatchConfig, DispatchSettings, Dispatcher, Handoff, Reservation, callback_url,
};
pub use email::{SmtpConfig, check_email_sink};
pub use error::{Error, Result};
pub use events::WebhookConfig;
pub use heartbeat::Heartbeat;
pub use leader::{EventPush, Leader, LeaderConfig, SubscriptionPush};
pub use notices::{NoticeConfig, Notifier, notice_body};
pub use outbound::Outbound;
pub use pruning::RetentionSettings;

/// Builds the HTTP client Pacer makes outbound calls with: pooled, no redirects followed
/// (a redirected `POST` would silently become a `GET`), TLS through rustls with the ring provider.
pub fn http_client() -> Result<reqwest::Client> {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("pacer/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(Error::HttpClient)
}

/// Makes ring the process's TLS crypto provider (every HTTPS client needs one chosen).
pub fn install_crypto_provider() {
    // Installing fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `text` followed by the causes of `error`, each after a `: `, for one-line error messages.
pub(crate) fn with_causes(mut text: String, error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
