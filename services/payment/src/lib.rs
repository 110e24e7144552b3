//! The payment service: owns customer accounts with a credit limit, and payments.
//!
//! It serves accounts and the payments of an order. The order saga's payment steps (authorize,
//! capture, void, refund) and the ledger's invariant check are idempotent domain functions in
//! [`ledger`], run on the caller's transaction; [`commands::PaymentCommands`] is the handler of
//! the saga's commands (topic `payment.commands`) that calls them and answers on `reply_to`, and
//! [`reactions::PaymentReactions`] the one of the other services' facts (choreography).
//! [`PARTICIPANT`] declares all that; `flotilla-messaging` runs it. Its database is
//! `<data_dir>/payment.db`, with the messaging tables (outbox, inbox), seeded on first start
//! from `services/payment/seed/accounts.json` (`alice` and `bob` with ample credit, `carol` with
//! 1,000 cents: the natural "insufficient credit" failure).
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `GET /v1/accounts` | every account (a customer's token: their own only) |
//! | `GET /v1/accounts/{customer_id}` | one account; 404 `/problems/unknown-customer`, also for a customer asking for another's |
//! | `GET /v1/payments?order_id=…` | the payments of an order (`order_id` is required; a customer's token: only their own) |
//!
//! Every route needs a verified token ([`flotilla_identity::guard`]); a customer sees their
//! own account and payments only, an admin or a platform service everything
//! ([`flotilla_identity::Principal::confined_to`]). Another customer's account answers as an
//! unknown one would, so that ids cannot be probed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use flotilla_identity::Caller;
use flotilla_kit::{Problem, Query, ServerSettings};
use flotilla_messaging::inbox::ByTopic;
use flotilla_messaging::participant::{self, Items, Seed};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

pub mod commands;
pub mod ledger;
pub mod reactions;

/// The service's name in the registry.
pub const SERVICE: &str = "payment";

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

/// The payment service as a saga participant: its database, its routes, its commands and its
/// reactions.
pub static PARTICIPANT: flotilla_messaging::participant::Participant<
    commands::PaymentCommands,
    reactions::PaymentReactions,
    Account,
> = flotilla_messaging::participant::Participant {
    name: SERVICE,
    migrations: sqlx::migrate!("./migrations"),
    seed: Seed {
        table: "accounts",
        rows: include_str!("../seed/accounts.json"),
        insert: |db, row| {
            flotilla_sqlite::execute(
                db,
                "INSERT INTO accounts (customer_id, name, credit_limit_cents) VALUES ($1, $2, $3)",
                &[&row.customer_id, &row.name, &row.credit_limit_cents],
            )
        },
    },
    routes,
    commands_topic: flotilla_contracts::PAYMENT_COMMANDS,
    commands: commands::PaymentCommands,
    reactions: reactions::PaymentReactions,
    wiring: flotilla_contracts::wiring,
};

/// Opens the database ([`PARTICIPANT`]'s), applies migrations and seeds the accounts if there are none.
pub async fn open(settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
    PARTICIPANT.open(settings).await
}

/// The service's routes.
pub fn routes(pool: SqlitePool) -> Router {
    Router::new()
        .route("/v1/accounts", get(accounts))
        .route("/v1/accounts/{customer_id}", get(account))
        .route("/v1/payments", get(payments))
        .with_state(pool)
}

async fn accounts(
    State(pool): State<SqlitePool>,
    caller: Caller,
) -> Result<Json<Items<Account>>, Problem> {
    match caller.confined_to() {
        None => {
            let sql = "SELECT customer_id, name, credit_limit_cents, held_cents, charged_cents
                       FROM accounts ORDER BY customer_id";
            participant::list(&pool, sql, &[]).await
        }
        Some(me) => {
            let sql = "SELECT customer_id, name, credit_limit_cents, held_cents, charged_cents
                       FROM accounts WHERE customer_id = ?";
            participant::list(&pool, sql, &[me]).await
        }
    }
}

async fn account(
    State(pool): State<SqlitePool>,
    caller: Caller,
    Path(customer_id): Path<String>,
) -> Result<Json<Account>, Problem> {
    let unknown = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-customer",
            format!("no account for customer `{customer_id}`"),
        )
        .with("customer_id", customer_id.clone())
    };
    if !caller.may_see(&customer_id) {
        return Err(unknown());
    }
    let sql = "SELECT customer_id, name, credit_limit_cents, held_cents, charged_cents
               FROM accounts WHERE customer_id = ?";
    participant::find(&pool, sql, &customer_id, unknown).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOrder {
    order_id: String,
}

async fn payments(
    State(pool): State<SqlitePool>,
    caller: Caller,
    Query(ByOrder { order_id }): Query<ByOrder>,
) -> Result<Json<Items<Payment>>, Problem> {
    let sql =
        "SELECT payment_id, order_id, customer_id, amount_cents, status, created_at, updated_at
               FROM payments WHERE order_id = ? ORDER BY created_at";
    let Json(mut payments) = participant::list(&pool, sql, &[&order_id]).await?;
    payments
        .items
        .retain(|payment: &Payment| caller.may_see(&payment.customer_id));
    Ok(Json(payments))
}

/// The payment service's consumer: saga commands (orchestration, `payment.commands`) go
/// to [`commands::PaymentCommands`], the other services' facts (choreography) to [`reactions::PaymentReactions`].
pub type Participant = ByTopic<commands::PaymentCommands, reactions::PaymentReactions>;

/// The payment service's consumer ([`Participant`]).
pub fn participant() -> Participant {
    PARTICIPANT.consumer()
}
