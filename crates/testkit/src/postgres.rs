//! A PostgreSQL schema of a test's or a benchmark's own on the machine's server
//! ([`POSTGRES`](crate::POSTGRES)), dropped by [`PgSchema::drop_schema`].
//!
//! When the server cannot be reached, [`postgres_schema`] fails under CI and elsewhere skips
//! (see [`skip`](crate::skip)).

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::POSTGRES;

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

/// A fresh schema on the test server; `None` (saying so) when the server is unreachable
/// outside CI.
///
/// # Panics
/// When the server is unreachable and `CI` is set, or the schema cannot be created.
pub async fn postgres_schema() -> Option<PgSchema> {
    let url = POSTGRES.url();
    let options: PgConnectOptions = match url.parse() {
        Ok(options) => options,
        Err(error) => panic!(
            "{} `{url}` is not a PostgreSQL URL: {error}",
            POSTGRES.variable
        ),
    };
    let admin = match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.clone())
        .await
    {
        Ok(pool) => pool,
        Err(error) => return POSTGRES.unreachable(&url, error),
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
