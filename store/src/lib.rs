//! Palisade's persistence: the agent registry and its keys, the admin side's users and tokens,
//! and the hash-chained audit log.
//!
//! One interface, two backends, chosen by the `database` URL:
//! - `sqlite://path/to/palisade.db` (the embedded default): one file, created if missing, in WAL
//!   mode with a busy timeout and foreign keys on. `sqlite::memory:` gives a private in-memory
//!   database (tests, demos).
//! - `postgres://...` (or `postgresql://`): several gateway replicas sharing one state. A URL
//!   may carry `?options=-c search_path=...`; [`Store::connect_pg_schema`] creates a schema and
//!   keeps every pooled connection in it.
//!
//! Migrations for the chosen backend (`migrations/sqlite/`, `migrations/postgres/`) are applied
//! by [`Store::connect`]. Times are `i64` unix milliseconds (UTC) throughout; [`time`] formats
//! them as RFC 3339 for export.
//!
//! The operations live in one module each: [`agents`], [`keys`], [`users`], [`audit`] (and
//! [`dead_letter`], where audit events the database refuses are kept), [`ledger`] (the spend
//! counters behind budgets), [`approvals`] (held calls, votes, approver groups), [`sessions`]
//! (MCP sessions ended on any replica), and [`export`] for the CSV and JSONL writers. [`safe`]
//! makes agent-supplied strings storable in both backends.
//!
//! Every transaction of more than one statement runs on its own task ([`Store::detached`]): a
//! caller dropped mid-way (a client that hangs up) cannot stop it between `BEGIN` and
//! `COMMIT`, which used to return pooled connections still inside a transaction.

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod dead_letter;
mod error;
pub mod export;
pub mod keys;
pub mod lease;
pub mod ledger;
pub mod safe;
mod secret;
pub mod sessions;
pub mod time;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Postgres, Sqlite, Transaction};

pub use agents::{Agent, AgentLimits, AgentStatus, AgentUpdate, ConfigAgent, NewAgent, SyncReport};
pub use approvals::{
    Approval, ApprovalState, Attached, Claim, Decision, Execution, NewApproval, Vote,
};
pub use audit::{AuditFilter, AuditRecord, BadRow, NewAuditEvent, VerifyReport};
pub use dead_letter::DeadLetter;
pub use error::StoreError;
pub use export::ExportFormat;
pub use keys::{KeyAuth, KeyInfo, NewKey};
pub use lease::{
    CounterKey, LeaseChange, LeaseOutcome, LeaseReport, LeaseResult, LeaseSync, LeaseTarget,
};
pub use ledger::{Amount, Exceeded, Reservation, Spend, Unit, Window};
pub use secret::hash_secret;
pub use users::{NewToken, Role, TokenInfo, User};

/// How long a SQLite writer waits for another writer's lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The store: a connection pool on one of the two backends. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish()
    }
}

/// Run `$body` with `$pool` bound to the backend's pool. The body is compiled once per backend,
/// so the same SQL text (with `$1`-style parameters, which both accept) serves both.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Begin a transaction that writes. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`), so a transaction that reads before writing waits for other writers through the
/// busy timeout instead of failing when it upgrades its lock.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
    /// Begin a write transaction that also excludes every other `begin_exclusive` transaction
    /// on the database, from any process, until it ends: for read-then-write changes such as a
    /// config sync that several replicas may run at once. SQLite's write lock already does this;
    /// PostgreSQL takes a transaction-scoped advisory lock.
    async fn begin_exclusive(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

/// The advisory lock key that [`BeginWrite::begin_exclusive`] takes on PostgreSQL.
const REGISTRY_LOCK: i64 = 0x7061_6c69_7361_6465; // "palisade"

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
    async fn begin_exclusive(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_write().await
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
    async fn begin_exclusive(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(REGISTRY_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

impl Store {
    /// Connect to `url` (`sqlite:...`, `postgres://...` or `postgresql://...`) and apply the
    /// migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?;
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            Store::open_sqlite_with(options, memory).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            Store::open_postgres(options).await
        } else {
            Err(StoreError::Invalid(format!(
                "database URL must start with sqlite: or postgres://, got {:?}",
                redact_url(url)
            )))
        }
    }

    /// Open (creating if missing) the SQLite file at `path` and apply the migrations. The same as
    /// `connect("sqlite://...")` without having to write the path as a URL.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Store::open_sqlite_with(SqliteConnectOptions::new().filename(path), false).await
    }

    /// Connect to PostgreSQL at `url`, create `schema` if it does not exist, keep every pooled
    /// connection's `search_path` on it, and apply the migrations there. Lets several stores (for
    /// example tests) share one database without seeing each other.
    pub async fn connect_pg_schema(url: &str, schema: &str) -> Result<Store, StoreError> {
        if !is_identifier(schema) {
            return Err(StoreError::Invalid(format!(
                "schema name must be lowercase letters, digits and underscores, got {schema:?}"
            )));
        }
        let options = PgConnectOptions::from_str(url)?;
        let mut conn = options.connect().await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Store::open_postgres(options.options([("search_path", schema)])).await
    }

    async fn open_sqlite_with(
        options: SqliteConnectOptions,
        memory: bool,
    ) -> Result<Store, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let mut pool: PoolOptions<Sqlite> = SqlitePoolOptions::new().max_connections(8);
        if memory {
            // An in-memory database lives as long as one connection to it: keep one open.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(options).await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            backend: Backend::Sqlite(pool),
        })
    }

    async fn open_postgres(options: PgConnectOptions) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            backend: Backend::Postgres(pool),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Run `work` on its own Tokio task, with a clone of the store, and wait for its result.
    ///
    /// Every multi-statement transaction goes through here. A future dropped between `BEGIN`
    /// and `COMMIT` (the gateway drops a call's future when its client hangs up) could hand its
    /// pooled connection back still inside the transaction, or mid-`BEGIN`: later transactions
    /// on it failed (`attempted to call begin_with at non-zero transaction depth`) and SQLite
    /// stayed locked. On its own task the transaction always reaches its commit or rollback;
    /// dropping the caller only drops the wait. `work` takes owned inputs for that reason.
    pub(crate) async fn detached<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::spawn(work(self.clone())).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels the task.
            Err(_) => Err(StoreError::Cancelled),
        }
    }

    /// Close the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// `url` without its password, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("t_123abc"));
        assert!(is_identifier("_x"));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("Upper"));
        assert!(!is_identifier("a\"; drop"));
        assert!(!is_identifier(""));
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("mysql://u:secret@h/db"),
            "mysql://u:***@h/db".to_string()
        );
        assert_eq!(redact_url("mysql://h/db"), "mysql://h/db");
    }

    fn assert_send<T: Send>(_: T) {}

    /// The store's futures and streams can be spawned.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(s: &Store) {
        assert_send(s.create_agent(NewAgent::default()));
        assert_send(s.update_agent("a", AgentUpdate::default()));
        assert_send(s.sync_config_agents(&[]));
        assert_send(s.authenticate("k"));
        assert_send(s.rotate_key("a", "k", Duration::ZERO));
        assert_send(s.ensure_admin("a", "t"));
        assert_send(s.authenticate_user("t"));
        assert_send(s.append_audit(&[]));
        assert_send(s.verify_audit());
        assert_send(s.audit_stream(AuditFilter::default()));
        assert_send(s.reserve(&[], Duration::ZERO));
        assert_send(s.settle(1, 0, 0));
    }

    #[tokio::test]
    async fn rejects_unknown_scheme() {
        let err = Store::connect("mysql://u:pw@h/db").await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)));
        assert!(!err.to_string().contains("pw"));
    }
}
