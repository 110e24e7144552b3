//! The payment ledger: the order saga's payment steps as idempotent domain functions.
//!
//! ```text
//!   authorize ──▶ AUTHORIZED ──capture──▶ CAPTURED ──refund──▶ REFUNDED
//!                     │
//!                     └──void──▶ VOIDED
//! ```
//!
//! Money moves with the status: authorizing holds the amount (`held_cents += amount`), capturing
//! turns the hold into a charge (`held_cents -= amount`, `charged_cents += amount`), voiding
//! releases the hold and refunding gives the charge back (`charged_cents -= amount`). An
//! authorization is refused when the account's available credit
//! (`credit_limit_cents - held_cents - charged_cents`) does not cover the amount.
//!
//! Every function works on the caller's connection, inside the caller's transaction, and commits
//! nothing: the caller commits the effect together with its inbox and outbox rows. Begin that
//! transaction with `BEGIN IMMEDIATE` ([`sqlx::Pool::begin_with`]): the functions read, then
//! write, and a deferred transaction that meets a concurrent writer fails with
//! `database is locked` at its first write instead of waiting its turn (nothing is corrupted,
//! but the work must be retried).
//!
//! Every operation is idempotent per order, so that a redelivered message changes nothing:
//! - [`authorize`] answers a repeat with its first outcome, the same payment or the same refusal
//!   (refusals are recorded for that), whatever the amount and customer of the repeat;
//! - [`void`], [`capture`] and [`refund`] answer a repeat with [`Settled::AlreadyApplied`].
//!
//! A transition the payment's status forbids (capturing a voided payment, voiding a captured
//! one) changes nothing and is a [`LedgerError`].
//!
//! Voiding an order that has no payment yet records that it was voided, and a later
//! authorization for it is refused: an authorize command overtaken by its compensation (a
//! timed-out step, a redelivery) must not hold credit that nothing would ever release.
//!
//! [`check`] lists the violations of the ledger's invariants, for the system checker.

use flotilla_kit::clock;
use std::fmt;

use flotilla_sqlite::{execute, query_optional, sqlx_error};
use rusqlite::Connection;
use sqlx::SqlitePool;

/// A payment's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// The amount is held on the account.
    Authorized,
    /// The amount is charged to the account.
    Captured,
    /// The hold was released; nothing was charged.
    Voided,
    /// The charge was given back.
    Refunded,
}

impl PaymentStatus {
    /// The status as stored and shown (`AUTHORIZED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Authorized => "AUTHORIZED",
            PaymentStatus::Captured => "CAPTURED",
            PaymentStatus::Voided => "VOIDED",
            PaymentStatus::Refunded => "REFUNDED",
        }
    }

    /// The status named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [
            PaymentStatus::Authorized,
            PaymentStatus::Captured,
            PaymentStatus::Voided,
            PaymentStatus::Refunded,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// The outcome of [`authorize`]; a repeat for the same order gets the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// The amount is held for the order (or was, for a repeat: the payment may since have been
    /// captured, voided or refunded).
    Authorized {
        /// The order's payment.
        payment_id: String,
        /// The amount authorized, in cents.
        amount_cents: i64,
    },
    /// The payment was refused: the saga's natural business failure.
    Refused {
        /// Why, for the customer.
        reason: String,
    },
}

/// A settling operation on an authorized payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`void`]: AUTHORIZED to VOIDED.
    Void,
    /// [`capture`]: AUTHORIZED to CAPTURED.
    Capture,
    /// [`refund`]: CAPTURED to REFUNDED.
    Refund,
}

impl Operation {
    /// The operation's name (`void`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Void => "void",
            Operation::Capture => "capture",
            Operation::Refund => "refund",
        }
    }

    /// Applies the operation to `order_id`'s payment: [`void`], [`capture`] or [`refund`].
    pub fn apply(self, db: &Connection, order_id: &str) -> Result<Settled, LedgerError> {
        match self {
            Operation::Void => void(db, order_id),
            Operation::Capture => capture(db, order_id),
            Operation::Refund => refund(db, order_id),
        }
    }

    /// The status the operation starts from and the one it leads to.
    fn transition(self) -> (PaymentStatus, PaymentStatus) {
        match self {
            Operation::Void => (PaymentStatus::Authorized, PaymentStatus::Voided),
            Operation::Capture => (PaymentStatus::Authorized, PaymentStatus::Captured),
            Operation::Refund => (PaymentStatus::Captured, PaymentStatus::Refunded),
        }
    }

    /// The account update that moves the money, with the amount as `?1`.
    fn account_update(self) -> &'static str {
        match self {
            Operation::Void => {
                "UPDATE accounts SET held_cents = held_cents - ?1 WHERE customer_id = ?2"
            }
            Operation::Capture => {
                "UPDATE accounts SET held_cents = held_cents - ?1, charged_cents = charged_cents + ?1
                 WHERE customer_id = ?2"
            }
            Operation::Refund => {
                "UPDATE accounts SET charged_cents = charged_cents - ?1 WHERE customer_id = ?2"
            }
        }
    }
}

/// `Display` for the ledger's named enums: the name `as_str` gives.
macro_rules! display_by_name {
    ($($named:ty),+) => {$(
        impl fmt::Display for $named {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

display_by_name!(PaymentStatus, Operation);

/// What [`void`], [`capture`] or [`refund`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The payment moved to the operation's status and the money moved with it.
    Applied {
        /// The order's payment.
        payment_id: String,
        /// Its amount, in cents.
        amount_cents: i64,
    },
    /// The payment already had the operation's status (a repeat): nothing changed.
    AlreadyApplied {
        /// The order's payment.
        payment_id: String,
        /// Its amount, in cents.
        amount_cents: i64,
    },
    /// Only from [`void`]: the order has no payment (never authorized, or refused), so there
    /// is nothing to release. A later authorization for the order will be refused.
    NoPayment,
}

/// Why [`void`], [`capture`] or [`refund`] failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The payment's status does not allow the operation (capturing a voided payment).
    #[error("cannot {operation} payment `{payment_id}` of order `{order_id}`: it is {status}")]
    WrongStatus {
        /// The operation refused.
        operation: Operation,
        /// The order.
        order_id: String,
        /// Its payment.
        payment_id: String,
        /// The payment's status.
        status: PaymentStatus,
    },
    /// The order has no payment to capture or refund (never authorized, or refused).
    #[error("cannot {operation} order `{order_id}`: it has no payment")]
    NoPayment {
        /// The operation refused.
        operation: Operation,
        /// The order.
        order_id: String,
    },
    /// The database failed; the caller should roll back and may retry.
    #[error("payment database: {0}")]
    Database(#[from] sqlx::Error),
}

/// An order's payment, as the ledger needs it.
#[derive(Debug)]
struct PaymentRow {
    payment_id: String,
    customer_id: String,
    amount_cents: i64,
    status: String,
}

impl PaymentRow {
    fn status(&self) -> Result<PaymentStatus, sqlx::Error> {
        PaymentStatus::parse(&self.status).ok_or_else(|| {
            sqlx::Error::Decode(
                format!(
                    "payment `{}` has an unknown status `{}`",
                    self.payment_id, self.status
                )
                .into(),
            )
        })
    }
}

fn payment_of(db: &Connection, order_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    query_optional(
        db,
        "SELECT payment_id, customer_id, amount_cents, status FROM payments WHERE order_id = ?",
        &[&order_id],
        |row| {
            Ok(PaymentRow {
                payment_id: row.get(0)?,
                customer_id: row.get(1)?,
                amount_cents: row.get(2)?,
                status: row.get(3)?,
            })
        },
    )
    .map_err(sqlx_error)
}

/// Records that `order_id`'s authorization is refused for `reason`, and says so.
fn refuse(
    db: &Connection,
    order_id: &str,
    customer_id: Option<&str>,
    amount_cents: Option<i64>,
    reason: String,
) -> Result<Authorization, sqlx::Error> {
    execute(
        db,
        "INSERT INTO payment_refusals (order_id, customer_id, amount_cents, reason, created_at)
         VALUES (?, ?, ?, ?, ?)",
        &[
            &order_id,
            &customer_id,
            &amount_cents,
            &reason,
            &clock::now_rfc3339(),
        ],
    )
    .map_err(sqlx_error)?;
    Ok(Authorization::Refused { reason })
}

/// Holds `amount_cents` of `customer_id`'s credit for `order_id`, or refuses to (unknown
/// customer, amount not positive, not enough available credit).
///
/// Idempotent per order: if the order already has a payment or a refusal, answers with it and
/// changes nothing, whatever `customer_id` and `amount_cents` are this time. An order voided
/// before it was authorized (see [`void`]) is refused.
pub fn authorize(
    db: &Connection,
    order_id: &str,
    customer_id: &str,
    amount_cents: i64,
) -> Result<Authorization, sqlx::Error> {
    if let Some(payment) = payment_of(db, order_id)? {
        return Ok(Authorization::Authorized {
            payment_id: payment.payment_id,
            amount_cents: payment.amount_cents,
        });
    }
    let refused: Option<String> = query_optional(
        db,
        "SELECT reason FROM payment_refusals WHERE order_id = ?",
        &[&order_id],
        |row| row.get(0),
    )
    .map_err(sqlx_error)?;
    if let Some(reason) = refused {
        return Ok(Authorization::Refused { reason });
    }
    let (customer, amount) = (Some(customer_id), Some(amount_cents));
    if amount_cents <= 0 {
        let reason = format!("the amount must be positive, not {amount_cents} cents");
        return refuse(db, order_id, customer, amount, reason);
    }
    let account: Option<(i64, i64, i64)> = query_optional(
        db,
        "SELECT credit_limit_cents, held_cents, charged_cents FROM accounts WHERE customer_id = ?",
        &[&customer_id],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )
    .map_err(sqlx_error)?;
    let Some((limit, held, charged)) = account else {
        let reason = format!("unknown customer `{customer_id}`");
        return refuse(db, order_id, customer, amount, reason);
    };
    let available = limit.saturating_sub(held).saturating_sub(charged).max(0);
    if amount_cents > available {
        let reason = format!(
            "credit limit exceeded: {amount_cents} cents requested, {available} cents available"
        );
        return refuse(db, order_id, customer, amount, reason);
    }
    execute(
        db,
        "UPDATE accounts SET held_cents = held_cents + ? WHERE customer_id = ?",
        &[&amount_cents, &customer_id],
    )
    .map_err(sqlx_error)?;
    let payment_id = uuid::Uuid::now_v7().to_string();
    let now = clock::now_rfc3339();
    execute(
        db,
        "INSERT INTO payments (payment_id, order_id, customer_id, amount_cents, status, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            &payment_id,
            &order_id,
            &customer_id,
            &amount_cents,
            &PaymentStatus::Authorized.as_str(),
            &now,
            &now,
        ],
    )
    .map_err(sqlx_error)?;
    Ok(Authorization::Authorized {
        payment_id,
        amount_cents,
    })
}

/// Moves `order_id`'s payment through `operation`, with its money.
fn settle(db: &Connection, order_id: &str, operation: Operation) -> Result<Settled, LedgerError> {
    let Some(payment) = payment_of(db, order_id)? else {
        return Err(LedgerError::NoPayment {
            operation,
            order_id: order_id.to_owned(),
        });
    };
    let status = payment.status()?;
    let (from, to) = operation.transition();
    if status == to {
        return Ok(Settled::AlreadyApplied {
            payment_id: payment.payment_id,
            amount_cents: payment.amount_cents,
        });
    }
    if status != from {
        return Err(LedgerError::WrongStatus {
            operation,
            order_id: order_id.to_owned(),
            payment_id: payment.payment_id,
            status,
        });
    }
    let updated = execute(
        db,
        operation.account_update(),
        &[&payment.amount_cents, &payment.customer_id],
    )
    .map_err(sqlx_error)?;
    if updated != 1 {
        // The foreign key makes this impossible; never move a payment without its money.
        return Err(sqlx::Error::RowNotFound.into());
    }
    execute(
        db,
        "UPDATE payments SET status = ?, updated_at = ? WHERE payment_id = ?",
        &[&to.as_str(), &clock::now_rfc3339(), &payment.payment_id],
    )
    .map_err(sqlx_error)?;
    Ok(Settled::Applied {
        payment_id: payment.payment_id,
        amount_cents: payment.amount_cents,
    })
}

/// Releases `order_id`'s hold: AUTHORIZED becomes VOIDED. The compensation of [`authorize`].
///
/// A VOIDED payment gives [`Settled::AlreadyApplied`]; no payment gives [`Settled::NoPayment`]
/// and records that the order was voided, so that a later [`authorize`] for it is refused
/// (an order already refused stays refused with its first reason). A CAPTURED or REFUNDED
/// payment is [`LedgerError::WrongStatus`]: it must be refunded, not voided.
pub fn void(db: &Connection, order_id: &str) -> Result<Settled, LedgerError> {
    match settle(db, order_id, Operation::Void) {
        Err(LedgerError::NoPayment { .. }) => {
            execute(
                db,
                "INSERT INTO payment_refusals (order_id, reason, created_at) VALUES (?, ?, ?)
                 ON CONFLICT (order_id) DO NOTHING",
                &[
                    &order_id,
                    &"the payment was voided before it was authorized",
                    &clock::now_rfc3339(),
                ],
            )
            .map_err(sqlx_error)?;
            Ok(Settled::NoPayment)
        }
        settled => settled,
    }
}

/// Charges `order_id`'s hold: AUTHORIZED becomes CAPTURED, the held amount becomes charged.
///
/// A CAPTURED payment gives [`Settled::AlreadyApplied`]; a VOIDED or REFUNDED payment is
/// [`LedgerError::WrongStatus`] and no payment is [`LedgerError::NoPayment`].
pub fn capture(db: &Connection, order_id: &str) -> Result<Settled, LedgerError> {
    settle(db, order_id, Operation::Capture)
}

/// Gives `order_id`'s charge back: CAPTURED becomes REFUNDED, the charged amount is released.
///
/// A REFUNDED payment gives [`Settled::AlreadyApplied`]; an AUTHORIZED (void it instead) or
/// VOIDED payment is [`LedgerError::WrongStatus`] and no payment is [`LedgerError::NoPayment`].
pub fn refund(db: &Connection, order_id: &str) -> Result<Settled, LedgerError> {
    settle(db, order_id, Operation::Refund)
}

/// One account with the totals of its payments by status.
#[derive(Debug, sqlx::FromRow)]
struct AccountTotals {
    customer_id: String,
    credit_limit_cents: i64,
    held_cents: i64,
    charged_cents: i64,
    authorized_cents: i64,
    captured_cents: i64,
}

/// The violations of the ledger's invariants in the payment database, one sentence each; empty
/// when all hold:
/// - each account's `held_cents` is the sum of its AUTHORIZED payments;
/// - each account's `charged_cents` is the sum of its CAPTURED payments;
/// - no account has more held and charged than its credit limit;
/// - an order has at most one payment, and not both a payment and a refusal.
///
/// Reads one snapshot, so that concurrent writers cannot make it see half a transaction.
pub async fn check(pool: &SqlitePool) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut violations = Vec::new();
    let accounts = sqlx::query_as::<_, AccountTotals>(
        "SELECT a.customer_id, a.credit_limit_cents, a.held_cents, a.charged_cents,
                COALESCE(SUM(CASE WHEN p.status = 'AUTHORIZED' THEN p.amount_cents END), 0)
                    AS authorized_cents,
                COALESCE(SUM(CASE WHEN p.status = 'CAPTURED' THEN p.amount_cents END), 0)
                    AS captured_cents
         FROM accounts a LEFT JOIN payments p ON p.customer_id = a.customer_id
         GROUP BY a.customer_id
         ORDER BY a.customer_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for a in &accounts {
        if a.held_cents != a.authorized_cents {
            violations.push(format!(
                "account `{}`: held_cents is {} but its AUTHORIZED payments total {}",
                a.customer_id, a.held_cents, a.authorized_cents
            ));
        }
        if a.charged_cents != a.captured_cents {
            violations.push(format!(
                "account `{}`: charged_cents is {} but its CAPTURED payments total {}",
                a.customer_id, a.charged_cents, a.captured_cents
            ));
        }
        if i128::from(a.held_cents) + i128::from(a.charged_cents) > i128::from(a.credit_limit_cents)
        {
            violations.push(format!(
                "account `{}`: held_cents {} + charged_cents {} exceed the credit limit {}",
                a.customer_id, a.held_cents, a.charged_cents, a.credit_limit_cents
            ));
        }
    }
    let duplicates: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, COUNT(*) FROM payments GROUP BY order_id HAVING COUNT(*) > 1
         ORDER BY order_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (order_id, count) in duplicates {
        violations.push(format!("order `{order_id}` has {count} payments"));
    }
    let both: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT p.order_id FROM payments p JOIN payment_refusals r ON r.order_id = p.order_id
         ORDER BY p.order_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (order_id,) in both {
        violations.push(format!(
            "order `{order_id}` has both a payment and a refusal"
        ));
    }
    tx.commit().await?;
    Ok(violations)
}
