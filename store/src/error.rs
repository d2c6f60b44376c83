//! The store's one error type.

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The operation clashes with what is stored (an existing id, a config-owned agent, ...).
    #[error("{what} {id:?}: {reason}")]
    Conflict {
        what: &'static str,
        id: String,
        reason: String,
    },
    /// The caller's input is not acceptable.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A stored row could not be read back (for example JSON that no longer parses).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database said no.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Writing an export failed.
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> StoreError {
        StoreError::NotFound {
            what,
            id: id.into(),
        }
    }

    pub(crate) fn conflict(
        what: &'static str,
        id: impl Into<String>,
        reason: impl Into<String>,
    ) -> StoreError {
        StoreError::Conflict {
            what,
            id: id.into(),
            reason: reason.into(),
        }
    }
}

/// Whether `e` is a unique-constraint violation (an id or hash that already exists).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
