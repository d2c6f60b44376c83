//! The harness the store's test binaries share: a store on a fresh SQLite file or a fresh
//! PostgreSQL schema, with a side door to its database, and `on_both!` to run a test on each.
#![allow(dead_code)]

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures_util::FutureExt;
use palisade_store::{Store, StoreError};
use rand::distr::{Alphanumeric, SampleString};
use sqlx::{PgPool, SqlitePool};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

// ---------------------------------------------------------------------------------------------
// Harness

/// A store under test, plus a side door to its database for tampering.
pub struct TestDb {
    pub store: Store,
    pub raw: Raw,
    pub reopen: Reopen,
}

pub enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub enum Reopen {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl TestDb {
    /// Run `sql` (binding `bind`) behind the store's back, expecting the database to refuse
    /// it; its error as the store would report it.
    pub async fn exec_err(&self, sql: &str, bind: &str) -> StoreError {
        let r = match &self.raw {
            Raw::Sqlite(p) => sqlx::query(sql).bind(bind).execute(p).await.map(|_| ()),
            Raw::Postgres(p) => sqlx::query(sql).bind(bind).execute(p).await.map(|_| ()),
        };
        StoreError::from(r.expect_err(sql))
    }

    /// Run SQL behind the store's back.
    pub async fn exec(&self, sql: &str) -> u64 {
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(sql).execute(p).await.unwrap().rows_affected(),
            Raw::Postgres(p) => sqlx::query(sql).execute(p).await.unwrap().rows_affected(),
        }
    }

    /// A second store on the same database, as another gateway process would have.
    pub async fn second_store(&self) -> Store {
        match &self.reopen {
            Reopen::Sqlite(path) => Store::open_sqlite(path).await.unwrap(),
            Reopen::Postgres { url, schema } => {
                Store::connect_pg_schema(url, schema).await.unwrap()
            }
        }
    }
}

pub fn random_suffix() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 12)
        .to_ascii_lowercase()
}

pub async fn run_sqlite(test: impl AsyncFnOnce(&TestDb)) {
    let path = std::env::temp_dir().join(format!(
        "palisade-store-test-{}-{}.db",
        std::process::id(),
        random_suffix()
    ));
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open SQLite store");
    let raw = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let db = TestDb {
        store,
        raw: Raw::Sqlite(raw),
        reopen: Reopen::Sqlite(path.clone()),
    };
    let outcome = AssertUnwindSafe(test(&db)).catch_unwind().await;
    db.store.close().await;
    if let Raw::Sqlite(p) = &db.raw {
        p.close().await;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

pub async fn run_postgres(test: impl AsyncFnOnce(&TestDb)) {
    let url = std::env::var("PALISADE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
    let admin = match PgPool::connect(&url).await {
        Ok(p) => p,
        Err(e) if std::env::var("PALISADE_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("PostgreSQL at {url} unreachable ({e}); skipped as PALISADE_SKIP_PG=1 asks");
            return;
        }
        Err(e) => panic!(
            "PostgreSQL at {url} is unreachable: {e}. Start it, point PALISADE_TEST_PG_URL at \
             one, or set PALISADE_SKIP_PG=1 to skip the PostgreSQL half of the suite."
        ),
    };
    let schema = format!("t_{}", random_suffix());
    let store = Store::connect_pg_schema(&url, &schema)
        .await
        .expect("open PostgreSQL store");
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect({
            let schema = schema.clone();
            move |conn, _| {
                let sql = format!("SET search_path TO {schema}");
                Box::pin(async move {
                    sqlx::query(&sql).execute(conn).await?;
                    Ok(())
                })
            }
        })
        .connect(&url)
        .await
        .unwrap();
    let db = TestDb {
        store,
        raw: Raw::Postgres(raw),
        reopen: Reopen::Postgres {
            url: url.clone(),
            schema: schema.clone(),
        },
    };
    let outcome = AssertUnwindSafe(test(&db)).catch_unwind().await;
    db.store.close().await;
    if let Raw::Postgres(p) = &db.raw {
        p.close().await;
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Run each named test function on both backends: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                crate::common::run_sqlite(super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                crate::common::run_postgres(super::$name).await
            }
        }
    )*};
}
