//! `flotilla check`: the invariants of docs/DESIGN.md computed from the four services' databases.
//!
//! It opens every database read-only, so it can run against a live system. The four databases
//! cannot be read at one instant, so a live check judges only the orders that stood still while
//! it read: it reads the order database, then the participants' (each in one read transaction),
//! then the order database again, and judges an order only if it had ended and not moved
//! between the two reads of the order database. Every participant effect of such an order
//! committed before its last event (the order ends only once its participants have answered), so
//! the participants' rows read in between are final for it. Every other order is *in flight*: not
//! judged, and counted; with `--settled` (after recovery, every order must have ended) an order in
//! flight is a violation. Invariants:
//!
//! 1. every order ends APPROVED, REJECTED or CANCELLED, and no cancellation is still running
//!    (with `--settled`);
//! 2. money: captured payments add up to the totals of the approved orders not cancelled (a
//!    cancelled order's payment is refunded, its stock restocked, its shipment cancelled); an
//!    approved order's
//!    payment is captured for its total, a rejected order's is never captured; one payment per
//!    order (the payment service's own checks: holds and charges match the payments);
//! 3. stock: each participant's own check (reserved = units of reservations in flight; on hand =
//!    initial − committed), an approved order's stock is committed, a rejected order's is not
//!    held or committed, and no stock is held for an order that has ended;
//! 4. nothing exists at a participant for an order the order service does not know.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

/// What the checker found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Orders by status (as of the checker's last read of the order database).
    pub orders: BTreeMap<String, u64>,
    /// Orders not judged: still running, being cancelled, or moved while the checker read.
    pub in_flight: u64,
    /// Every invariant that does not hold.
    pub violations: Vec<String>,
}

async fn open(data_dir: &Path, service: &str) -> anyhow::Result<SqlitePool> {
    let path = data_dir.join(format!("{service}.db"));
    anyhow::ensure!(path.exists(), "no {service} database at {}", path.display());
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    SqlitePool::connect_with(options)
        .await
        .with_context(|| format!("cannot open {}", path.display()))
}

struct OrderFacts {
    status: &'static str,
    total: i64,
    /// A cancellation of the approved order is running.
    cancelling: bool,
    /// The position of its last event in the order's log.
    last: i64,
}

impl OrderFacts {
    /// Ended, with nothing running for it.
    fn ended(&self) -> bool {
        matches!(self.status, "APPROVED" | "REJECTED" | "CANCELLED") && !self.cancelling
    }
}

/// The status and total of every order, from its events (upcast like the service reads them).
async fn orders(pool: &SqlitePool) -> anyhow::Result<HashMap<String, OrderFacts>> {
    let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
        "SELECT stream_id, event_type, schema_version, data, position FROM eventstore_events
         WHERE category = 'order' ORDER BY position",
    )
    .fetch_all(pool)
    .await?;
    let upcasters = flotilla_order::domain::aggregate::upcasters();
    let mut orders: HashMap<String, OrderFacts> = HashMap::new();
    for (stream, event_type, schema_version, data, position) in rows {
        let order_id = stream.strip_prefix("order-").unwrap_or(&stream).to_owned();
        let facts = orders.entry(order_id).or_insert(OrderFacts {
            status: "PENDING",
            total: 0,
            cancelling: false,
            last: position,
        });
        facts.last = position;
        match event_type.as_str() {
            "OrderPlaced" => {
                let data: serde_json::Value = serde_json::from_str(&data)?;
                let version = u32::try_from(schema_version).unwrap_or(1);
                let (_, data) = upcasters
                    .upcast(&event_type, version, data)
                    .map_err(anyhow::Error::msg)?;
                facts.total = data["total_cents"].as_i64().unwrap_or_default();
            }
            "OrderApproved" => facts.status = "APPROVED",
            "OrderRejected" => facts.status = "REJECTED",
            "OrderCancelled" => {
                facts.status = "CANCELLED";
                facts.cancelling = false;
            }
            "CancellationRequested" => facts.cancelling = true,
            "CancellationRefused" => facts.cancelling = false,
            _ => {}
        }
    }
    Ok(orders)
}

async fn by_order(
    pool: &SqlitePool,
    sql: &'static str,
) -> anyhow::Result<HashMap<String, (String, i64)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(order, status, amount)| (order, (status, amount)))
        .collect())
}

/// Where the participants of an order that ended with `status` (and is not being cancelled)
/// must stand.
struct Ending {
    /// The order's final status.
    status: &'static str,
    /// The payment's status, for the order's total.
    payment: &'static str,
    /// The reservation's status.
    stock: &'static str,
    /// The shipment's statuses allowed.
    shipments: &'static [&'static str],
}

/// A cancelled order: refunded, restocked, its shipment cancelled.
const CANCELLED: Ending = Ending {
    status: "CANCELLED",
    payment: "REFUNDED",
    stock: "RESTOCKED",
    shipments: &["CANCELLED"],
};

/// An approved order: captured, its stock committed, its shipment on its way.
const APPROVED: Ending = Ending {
    status: "APPROVED",
    payment: "CAPTURED",
    stock: "COMMITTED",
    shipments: &["SCHEDULED", "DISPATCHED", "DELIVERED"],
};

impl Ending {
    /// What the participants' rows of `order_id` (of `total` cents) say against this ending.
    fn violations(
        &self,
        order_id: &str,
        total: i64,
        payment: Option<(&str, i64)>,
        stock: Option<&str>,
        shipment: Option<&str>,
    ) -> Vec<String> {
        let status = self.status;
        let mut violations = Vec::new();
        if payment != Some((self.payment, total)) {
            violations.push(format!(
                "order {order_id} is {status} but its payment is {payment:?}, not {} for {total}",
                self.payment
            ));
        }
        if stock != Some(self.stock) {
            violations.push(format!(
                "order {order_id} is {status} but its stock is {stock:?}, not {}",
                self.stock
            ));
        }
        if !shipment.is_some_and(|shipment| self.shipments.contains(&shipment)) {
            violations.push(format!(
                "order {order_id} is {status} but its shipment is {shipment:?}"
            ));
        }
        violations
    }
}

/// Checks the databases in `data_dir`; with `settled`, an order in flight is a violation.
pub async fn check(data_dir: &Path, settled: bool) -> anyhow::Result<Report> {
    let order = open(data_dir, "order").await?;
    let inventory = open(data_dir, "inventory").await?;
    let payment = open(data_dir, "payment").await?;
    let shipping = open(data_dir, "shipping").await?;

    // The order database first: the orders as they stood before the participants were read.
    let before = orders(&order).await?;

    let mut violations = Vec::new();
    violations.extend(flotilla_inventory::stock::check(&inventory).await?);
    violations.extend(flotilla_payment::ledger::check(&payment).await?);
    violations.extend(flotilla_shipping::carrier::check(&shipping).await?);
    let payments = by_order(
        &payment,
        "SELECT order_id, status, amount_cents FROM payments",
    )
    .await?;
    let reservations = by_order(&inventory, "SELECT order_id, status, 0 FROM reservations").await?;
    let shipments = by_order(&shipping, "SELECT order_id, status, 0 FROM shipments").await?;

    // Then again: every order a participant's row names was placed before this read, and an
    // order that ended before the first read and did not move since is judged on rows read in
    // between.
    let orders = orders(&order).await?;
    let still = |order_id: &str, facts: &OrderFacts| {
        facts.ended()
            && before
                .get(order_id)
                .is_some_and(|earlier| earlier.last == facts.last)
    };

    let mut counts = BTreeMap::new();
    let mut in_flight = 0;
    let mut captured_orders = 0i64;
    // Live, the captured money is compared over the orders judged only.
    let mut judged = std::collections::HashSet::new();
    for (order_id, facts) in &orders {
        *counts.entry(facts.status.to_owned()).or_insert(0) += 1;
        if !still(order_id, facts) {
            in_flight += 1;
            if !settled {
                continue;
            }
        }
        judged.insert(order_id.as_str());
        let payment = payments.get(order_id).map(|(s, a)| (s.as_str(), *a));
        let stock = reservations.get(order_id).map(|(s, _)| s.as_str());
        let shipment = shipments.get(order_id).map(|(s, _)| s.as_str());
        match facts.status {
            // Refunding and restocking are under way: the money and the stock are checked once
            // it is over (only the total, below).
            // Reached only with `--settled`: live, an order in flight is not judged.
            "APPROVED" if facts.cancelling => {
                violations.push(format!("order {order_id} is still being cancelled"));
                if payment.is_some_and(|(status, _)| status == "CAPTURED") {
                    captured_orders += facts.total;
                }
            }
            "CANCELLED" => {
                violations.extend(CANCELLED.violations(
                    order_id,
                    facts.total,
                    payment,
                    stock,
                    shipment,
                ));
            }
            "APPROVED" => {
                captured_orders += facts.total;
                violations.extend(APPROVED.violations(
                    order_id,
                    facts.total,
                    payment,
                    stock,
                    shipment,
                ));
            }
            "REJECTED" => {
                if matches!(payment, Some(("CAPTURED" | "AUTHORIZED", _))) {
                    violations.push(format!(
                        "order {order_id} is REJECTED but its payment is {payment:?}"
                    ));
                }
                if matches!(stock, Some("RESERVED" | "COMMITTED")) {
                    violations.push(format!(
                        "order {order_id} is REJECTED but its stock is {stock:?}"
                    ));
                }
                if shipment == Some("SCHEDULED") {
                    violations.push(format!(
                        "order {order_id} is REJECTED but its shipment is still SCHEDULED"
                    ));
                }
            }
            // Reached only with `--settled`, as above.
            "PENDING" => {
                violations.push(format!("order {order_id} is still PENDING"));
                // In flight past its point of no return: captured before the order records its
                // approval.
                if payment.is_some_and(|(status, _)| status == "CAPTURED") {
                    captured_orders += facts.total;
                }
            }
            _ => {}
        }
    }
    let captured: i64 = payments
        .iter()
        .filter(|(order_id, (status, _))| {
            status == "CAPTURED" && (settled || judged.contains(order_id.as_str()))
        })
        .map(|(_, (_, amount))| amount)
        .sum();
    if captured != captured_orders {
        violations.push(format!(
            "captured payments total {captured} cents but approved orders total {captured_orders}"
        ));
    }
    for (what, known) in [
        ("payment", payments.keys().collect::<Vec<_>>()),
        ("reservation", reservations.keys().collect()),
        ("shipment", shipments.keys().collect()),
    ] {
        for order_id in known {
            if !orders.contains_key(order_id) {
                violations.push(format!("a {what} exists for unknown order {order_id}"));
            }
        }
    }
    for pool in [order, inventory, payment, shipping] {
        pool.close().await;
    }
    violations.sort();
    Ok(Report {
        orders: counts,
        in_flight,
        violations,
    })
}
