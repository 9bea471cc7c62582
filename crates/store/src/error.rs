//! The store's error type: callers match on `NotFound` and `Conflict`, never on `sqlx::Error`.

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named record does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A named constraint refused the write, or the write contradicts current state.
    #[error("conflict on {constraint}")]
    Conflict { constraint: String },
    /// A row held a value the code cannot read: a bug or a hand-edited database.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database refused a value as data (SQLSTATE class 22), such as a NUL character in
    /// text or JSON: the input is at fault, and sending it again fails again.
    #[error("the database refused a value: {0}")]
    InvalidData(String),
    /// The database could not be reached, or the pool had no connection to give in time.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database failed.
    #[error(transparent)]
    Database(sqlx::Error),
    /// The writer this write was handed to has stopped (the node is shutting down).
    #[error("the writer has stopped")]
    Stopped,
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => Error::NotFound("row"),
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                Error::Conflict {
                    constraint: db.constraint().unwrap_or("unknown").to_owned(),
                }
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")) => {
                Error::InvalidData(db.message().to_owned())
            }
            // A server that hangs up mid-handshake (a pooler in front of a stopped database) shows
            // up as a protocol or TLS error: the database is unavailable, not broken.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => Error::Unavailable(error),
            _ => Error::Database(error),
        }
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}
