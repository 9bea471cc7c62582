//! The engine's error type.

/// What can stop an engine loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] pacer_store::Error),
    #[error("building the HTTP client failed: {0}")]
    HttpClient(reqwest::Error),
    /// A leader duty found that its term no longer holds the lease.
    #[error("the leader term was fenced off")]
    Fenced,
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
