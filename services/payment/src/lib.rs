//! The payment service: owns customer accounts with a credit limit, and payments.
//!
//! It serves accounts and the payments of an order. The order saga's payment steps (authorize,
//! capture, void, refund) and the ledger's invariant check are idempotent domain functions in
//! [`ledger`], run on the caller's transaction; [`commands::PaymentCommands`] is the handler of
//! the saga's commands (topic `payment.commands`) that calls them and answers on `reply_to`. Its
//! database is `<data_dir>/payment.db`, with the messaging tables (outbox, inbox), seeded on
//! first start from `services/payment/seed/accounts.json` (`alice` and `bob` with ample credit,
//! `carol` with 1,000 cents: the natural "insufficient credit" failure).
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `GET /v1/accounts` | every account |
//! | `GET /v1/accounts/{customer_id}` | one account; 404 `/problems/unknown-customer` |
//! | `GET /v1/payments?order_id=…` | the payments of an order (`order_id` is required) |

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use flotilla_kit::{Problem, Query, ServerSettings};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod commands;
pub mod ledger;
pub mod reactions;

/// The service's name in the registry.
pub const SERVICE: &str = "payment";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
const SEED: &str = include_str!("../seed/accounts.json");

/// A customer account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Account {
    /// The customer's id.
    pub customer_id: String,
    /// Display name.
    pub name: String,
    /// Most the customer may have held and charged at once, in cents.
    pub credit_limit_cents: i64,
    /// Authorised and not yet captured or voided, in cents.
    #[serde(default)]
    pub held_cents: i64,
    /// Captured and not refunded, in cents.
    #[serde(default)]
    pub charged_cents: i64,
}

/// A payment for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Payment {
    /// The payment's id.
    pub payment_id: String,
    /// The order paid for.
    pub order_id: String,
    /// The paying customer.
    pub customer_id: String,
    /// Amount in cents.
    pub amount_cents: i64,
    /// `AUTHORIZED`, `CAPTURED`, `VOIDED` or `REFUNDED`.
    pub status: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// A list of items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// Opens the database, applies migrations and seeds the accounts if there are none.
pub async fn open(settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
    let opening = flotilla_sqlite::open(&settings.database_path(SERVICE), &MIGRATIONS).await?;
    let accounts: Vec<Account> =
        serde_json::from_str(SEED).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut tx = opening.pool().begin().await?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts")
        .fetch_one(&mut *tx)
        .await?;
    if count == 0 {
        for account in &accounts {
            sqlx::query(
                "INSERT INTO accounts (customer_id, name, credit_limit_cents) VALUES (?, ?, ?)",
            )
            .bind(&account.customer_id)
            .bind(&account.name)
            .bind(account.credit_limit_cents)
            .execute(&mut *tx)
            .await?;
        }
        tracing::info!(accounts = accounts.len(), "accounts seeded");
    }
    tx.commit().await?;
    flotilla_messaging::migrate(opening.pool())
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(opening.ready())
}

/// The service's routes.
pub fn routes(pool: SqlitePool) -> Router {
    Router::new()
        .route("/v1/accounts", get(accounts))
        .route("/v1/accounts/{customer_id}", get(account))
        .route("/v1/payments", get(payments))
        .with_state(pool)
}

async fn accounts(State(pool): State<SqlitePool>) -> Result<axum::Json<Items<Account>>, Problem> {
    let items = sqlx::query_as::<_, Account>(
        "SELECT customer_id, name, credit_limit_cents, held_cents, charged_cents FROM accounts ORDER BY customer_id",
    )
        .fetch_all(&pool)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(Items { items }))
}

async fn account(
    State(pool): State<SqlitePool>,
    Path(customer_id): Path<String>,
) -> Result<axum::Json<Account>, Problem> {
    sqlx::query_as::<_, Account>(
        "SELECT customer_id, name, credit_limit_cents, held_cents, charged_cents FROM accounts WHERE customer_id = ?",
    )
        .bind(&customer_id)
        .fetch_optional(&pool)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(axum::Json)
        .ok_or_else(|| {
            Problem::new(StatusCode::NOT_FOUND, "unknown-customer", format!("no account for customer `{customer_id}`"))
                .with("customer_id", customer_id)
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOrder {
    order_id: String,
}

async fn payments(
    State(pool): State<SqlitePool>,
    Query(ByOrder { order_id }): Query<ByOrder>,
) -> Result<axum::Json<Items<Payment>>, Problem> {
    let items = sqlx::query_as::<_, Payment>(
        "SELECT payment_id, order_id, customer_id, amount_cents, status, created_at, updated_at
         FROM payments WHERE order_id = ? ORDER BY created_at",
    )
    .bind(&order_id)
    .fetch_all(&pool)
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(Items { items }))
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: flotilla_messaging::ServiceConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let pool = open(&config.instance.server)
        .await
        .map_err(std::io::Error::other)?;
    flotilla_messaging::runtime::serve(
        SERVICE,
        config,
        listener,
        pool.clone(),
        routes(pool),
        flotilla_contracts::subscriptions(),
        participant(),
        flotilla_contracts::topics_of(SERVICE),
        shutdown,
    )
    .await
}

/// The payment service's consumer: saga commands (orchestration, `payment.commands`) go
/// to [`commands::PaymentCommands`], the other services' facts (choreography) to [`reactions::PaymentReactions`].
pub type Participant =
    flotilla_messaging::inbox::ByTopic<commands::PaymentCommands, reactions::PaymentReactions>;

/// The payment service's consumer ([`Participant`]).
pub const fn participant() -> Participant {
    flotilla_messaging::inbox::ByTopic::new(
        flotilla_contracts::PAYMENT_COMMANDS,
        commands::PaymentCommands,
        reactions::PaymentReactions,
    )
}
