//! Support for tests and benchmarks that need a PostgreSQL database of their own.
//!
//! The server is `FLOTILLA_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Each [`PgSchema`] is a fresh schema, dropped by [`PgSchema::drop_schema`]. When the server
//! cannot be reached, [`postgres_schema`] fails under CI (the variable `CI` is set), so that CI
//! never silently skips, and elsewhere answers `None` after saying why on stderr.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The default test server.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The test server's URL.
pub fn postgres_url() -> String {
    std::env::var("FLOTILLA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A schema of its own on the test server, and a pool whose `search_path` is that schema.
#[derive(Debug)]
pub struct PgSchema {
    admin: PgPool,
    /// The schema's name.
    pub schema: String,
    /// Connections that work in the schema.
    pub pool: PgPool,
}

impl PgSchema {
    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        self.pool.close().await;
        let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&self.admin)
            .await
        {
            eprintln!("could not drop test schema {}: {error}", self.schema);
        }
        self.admin.close().await;
    }
}

/// A fresh schema on the test server; `None` (with a message) when the server is unreachable
/// outside CI.
///
/// # Panics
/// When the server is unreachable and `CI` is set, or the schema cannot be created.
pub async fn postgres_schema() -> Option<PgSchema> {
    let url = postgres_url();
    let options: PgConnectOptions = match url.parse() {
        Ok(options) => options,
        Err(error) => panic!("FLOTILLA_TEST_POSTGRES_URL `{url}` is not a PostgreSQL URL: {error}"),
    };
    let admin = match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.clone())
        .await
    {
        Ok(pool) => pool,
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL at {url} is required in CI and unreachable: {error}")
        }
        Err(error) => {
            eprintln!(
                "skipping: PostgreSQL at {url} is unreachable ({error}); start it or set FLOTILLA_TEST_POSTGRES_URL"
            );
            return None;
        }
    };
    let schema = format!("flotilla_test_{}", uuid::Uuid::now_v7().simple());
    let create = format!("CREATE SCHEMA {schema}");
    if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&admin)
        .await
    {
        panic!("cannot create test schema {schema}: {error}");
    }
    let pool = match PgPoolOptions::new()
        .max_connections(16)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
    {
        Ok(pool) => pool,
        Err(error) => panic!("cannot connect to test schema {schema}: {error}"),
    };
    Some(PgSchema {
        admin,
        schema,
        pool,
    })
}
