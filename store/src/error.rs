//! The store's one error type, and how its failures divide: [`StoreError::is_transient`] (the
//! database is unreachable or busy: try the same thing again later) and [`StoreError::is_data`]
//! (the database refused these values: trying them again cannot succeed). The audit writer
//! retries the first and splits a batch on the second, so one bad row cannot block the log.

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
    /// The task running a transaction ended without an answer (the runtime is shutting down).
    #[error("the store task was cancelled")]
    Cancelled,
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> StoreError {
        StoreError::NotFound {
            what,
            id: id.into(),
        }
    }

    /// The database could not be reached or was busy (connection lost, pool timeout, database
    /// locked, serialization failure, server shutting down): the same operation may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => sqlx_transient(e),
            StoreError::Cancelled => true,
            _ => false,
        }
    }

    /// The database refused the values themselves (PostgreSQL SQLSTATE class 22 "data exception"
    /// or 23 "integrity constraint violation"; SQLite a constraint, too big, type mismatch or
    /// range error; a value that cannot be encoded; input the store itself refuses): retrying
    /// the same values cannot succeed.
    pub fn is_data(&self) -> bool {
        match self {
            StoreError::Invalid(_) => true,
            StoreError::Db(sqlx::Error::Encode(_)) => true,
            StoreError::Db(sqlx::Error::Database(d)) => match db_code(d.as_ref()) {
                // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE.
                DbCode::Sqlite(primary) => matches!(primary, 18 | 19 | 20 | 25),
                DbCode::Sqlstate(s) => s.starts_with("22") || s.starts_with("23"),
                DbCode::Unknown => false,
            },
            _ => false,
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

/// A database error's code, by backend.
enum DbCode {
    /// SQLite's primary result code (sqlx reports the extended one; its low byte is primary).
    Sqlite(i32),
    /// PostgreSQL's five-character SQLSTATE.
    Sqlstate(String),
    Unknown,
}

fn db_code(d: &(dyn sqlx::error::DatabaseError + 'static)) -> DbCode {
    let code = d.code();
    if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        code.and_then(|c| c.parse::<i32>().ok())
            .map_or(DbCode::Unknown, |c| DbCode::Sqlite(c & 0xff))
    } else if d
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        code.map_or(DbCode::Unknown, |c| DbCode::Sqlstate(c.into_owned()))
    } else {
        DbCode::Unknown
    }
}

fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => match db_code(d.as_ref()) {
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_PROTOCOL.
            DbCode::Sqlite(primary) => matches!(primary, 5 | 6 | 10 | 13 | 15),
            // Connection exception, transaction rollback (serialization, deadlock),
            // insufficient resources, operator intervention (shutdown), lock not available.
            DbCode::Sqlstate(s) => {
                ["08", "40", "53", "57"].iter().any(|c| s.starts_with(c)) || s == "55P03"
            }
            DbCode::Unknown => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_failure() {
        assert!(StoreError::Invalid("x".into()).is_data());
        assert!(!StoreError::Invalid("x".into()).is_transient());
        assert!(StoreError::Db(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!StoreError::Db(sqlx::Error::PoolTimedOut).is_data());
    }
}
