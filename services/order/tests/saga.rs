//! The place-order and cancel-order sagas across the four services' real databases and real
//! handlers, in both styles (orchestration and choreography). The test is the transport: it
//! moves each service's outbox messages to every consumer of their topic, as the contracts wire
//! them (transports have their own conformance suite), and delivers every message twice, so
//! that each path also proves that redelivery changes nothing.

use std::sync::Arc;

use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Processed};
use flotilla_order::SagaStyle;
use flotilla_order::domain::Address;
use flotilla_order::{Cancellation, Order, OrderLine, Status};
use flotilla_order::{Cancelling, Placed, Placement, Sagas};
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

struct System {
    style: SagaStyle,
    order: Sagas,
    inventory: SqlitePool,
    payment: SqlitePool,
    shipping: SqlitePool,
    orders: Consumer<flotilla_order::Inbox>,
    stock: Consumer<flotilla_inventory::Participant>,
    payments: Consumer<flotilla_payment::Participant>,
    shipments: Consumer<flotilla_shipping::Participant>,
    _data: TempData,
}

async fn system(style: SagaStyle) -> System {
    let data = TempData::new();
    let mut config = flotilla_order::Config::default();
    config.service.instance.server = data.settings();
    let settings = config.service.instance.server.clone();
    let order = flotilla_order::open(&config).await.expect("order db");
    let inventory = flotilla_inventory::open(&settings)
        .await
        .expect("inventory db");
    let payment = flotilla_payment::open(&settings).await.expect("payment db");
    let shipping = flotilla_shipping::open(&settings)
        .await
        .expect("shipping db");
    System {
        style,
        orders: Consumer::new(
            "order",
            order.db.pool.clone(),
            flotilla_order::Inbox::new(&order),
        ),
        stock: Consumer::new(
            "inventory",
            inventory.clone(),
            flotilla_inventory::participant(),
        ),
        payments: Consumer::new("payment", payment.clone(), flotilla_payment::participant()),
        shipments: Consumer::new(
            "shipping",
            shipping.clone(),
            flotilla_shipping::participant(),
        ),
        order,
        inventory,
        payment,
        shipping,
        _data: data,
    }
}

impl System {
    /// Moves messages until no outbox has any left; returns how many were delivered.
    async fn settle(&self) -> usize {
        let (moved, held) = self.settle_holding(|_, _| false).await;
        assert!(held.is_empty());
        moved
    }

    /// Moves messages until no outbox has any left, every message twice (the second must be a
    /// duplicate), except the deliveries `hold` picks: returned, to be made later with
    /// [`System::deliver_twice`]. Returns how many messages left an outbox, and those held.
    async fn settle_holding(
        &self,
        hold: impl Fn(&str, &Message) -> bool,
    ) -> (usize, Vec<(String, Message)>) {
        let wiring = flotilla_contracts::subscriptions();
        let (mut delivered, mut held) = (0, Vec::new());
        for _ in 0..100 {
            let mut moved = 0;
            for pool in [
                &self.order.db.pool,
                &self.inventory,
                &self.payment,
                &self.shipping,
            ] {
                for message in take(pool).await {
                    let groups = wiring.groups(&message.topic);
                    assert!(!groups.is_empty(), "nobody consumes {}", message.topic);
                    moved += 1;
                    for group in groups {
                        if hold(group, &message) {
                            held.push((group.clone(), message.clone()));
                        } else {
                            self.deliver_twice(group, &message).await;
                        }
                    }
                }
            }
            if moved == 0 {
                return (delivered, held);
            }
            delivered += moved;
        }
        panic!("messages kept coming");
    }

    /// Delivers `message` to `group` twice: the second must be a duplicate.
    async fn deliver_twice(&self, group: &str, message: &Message) {
        let first = self.deliver(group, message).await;
        let second = self.deliver(group, message).await;
        assert_ne!(first, Processed::Rejected, "{}", message.message_type);
        assert_eq!(second, Processed::Duplicate, "{}", message.message_type);
    }

    /// Moves every choreographed order's deadline to the past and expires those due.
    async fn expire_now(&self) -> usize {
        sqlx::query("UPDATE saga_deadlines SET deadline = 0")
            .execute(&self.order.db.pool)
            .await
            .expect("deadlines");
        flotilla_order::sagas::choreography::expire_due(
            &self.order.db,
            self.order.choreography_deadline,
        )
        .await
        .expect("expired")
    }

    async fn deliver(&self, group: &str, message: &Message) -> Processed {
        let processed = match group {
            "order" => self.orders.process(message).await,
            "inventory" => self.stock.process(message).await,
            "payment" => self.payments.process(message).await,
            "shipping" => self.shipments.process(message).await,
            other => panic!("an unknown consumer group: {other}"),
        };
        processed.expect("processed")
    }

    async fn place(&self, customer: &str, lines: &[(&str, i64)], country: &str) -> String {
        let order_id = uuid::Uuid::now_v7().to_string();
        let mut priced = Vec::new();
        for (sku, quantity) in lines {
            let price: i64 = sqlx::query_scalar("SELECT price_cents FROM products WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&self.inventory)
                .await
                .expect("price")
                .unwrap_or(100);
            priced.push(OrderLine {
                sku: (*sku).into(),
                quantity: *quantity,
                unit_price_cents: price,
            });
        }
        let address = Address {
            name: "Test".into(),
            street: "1 Test St".into(),
            city: "Testville".into(),
            postal_code: "12345".into(),
            country: country.into(),
        };
        let placed = self
            .order
            .place(Placement {
                order_id: &order_id,
                customer_id: customer,
                lines: priced,
                ship_to: address,
                key: None,
                style: self.style,
            })
            .await
            .expect("placed");
        assert!(matches!(placed, Placed::New(_)));
        order_id
    }

    async fn notifications(&self, order_id: &str) -> Vec<String> {
        flotilla_order::store::notifications::of_order(&self.order.db.pool, order_id)
            .await
            .expect("notifications")
            .into_iter()
            .map(|n| n.kind)
            .collect()
    }

    async fn status_at(&self, pool: &SqlitePool, table: &'static str, order_id: &str) -> String {
        let sql = match table {
            "payments" => "SELECT status FROM payments WHERE order_id = $1",
            "reservations" => "SELECT status FROM reservations WHERE order_id = $1",
            _ => "SELECT status FROM shipments WHERE order_id = $1",
        };
        self.scalar(pool, sql, order_id).await.unwrap_or_default()
    }

    async fn on_hand(&self, sku: &str) -> i64 {
        sqlx::query_scalar("SELECT on_hand FROM products WHERE sku = $1")
            .bind(sku)
            .fetch_one(&self.inventory)
            .await
            .expect("stock")
    }

    async fn order(&self, order_id: &str) -> Order {
        self.order
            .db
            .events
            .load::<Order>(order_id)
            .await
            .expect("order")
            .state
    }

    async fn event_types(&self, order_id: &str) -> Vec<String> {
        self.order
            .db
            .events
            .read_stream(&format!("order-{order_id}"), 1)
            .await
            .expect("stream")
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    async fn invariants(&self) {
        let mut violations = flotilla_inventory::stock::check(&self.inventory)
            .await
            .expect("stock");
        violations.extend(
            flotilla_payment::ledger::check(&self.payment)
                .await
                .expect("ledger"),
        );
        violations.extend(
            flotilla_shipping::carrier::check(&self.shipping)
                .await
                .expect("carrier"),
        );
        assert!(violations.is_empty(), "{violations:?}");
    }

    async fn scalar(&self, pool: &SqlitePool, sql: &'static str, order_id: &str) -> Option<String> {
        sqlx::query_scalar(sql)
            .bind(order_id)
            .fetch_optional(pool)
            .await
            .expect(sql)
    }
}

/// The unpublished messages of `pool`'s outbox, now marked published.
async fn take(pool: &SqlitePool) -> Vec<Message> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, envelope FROM messaging_outbox WHERE published_at IS NULL ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("outbox");
    for (seq, _) in &rows {
        sqlx::query("UPDATE messaging_outbox SET published_at = 1 WHERE seq = $1")
            .bind(seq)
            .execute(pool)
            .await
            .expect("mark");
    }
    rows.into_iter()
        .map(|(_, e)| serde_json::from_str(&e).expect("message"))
        .collect()
}

async fn an_order_everyone_can_serve_is_approved_paid_and_its_stock_committed(style: SagaStyle) {
    let s = system(style).await;
    let (before,): (i64,) = sqlx::query_as("SELECT on_hand FROM products WHERE sku = 'KB-001'")
        .fetch_one(&s.inventory)
        .await
        .expect("stock");
    let order_id = s.place("alice", &[("KB-001", 2)], "FR").await;
    let messages = s.settle().await;
    match style {
        SagaStyle::Orchestration => {
            assert_eq!(messages, 11, "five commands, five replies, a notification")
        }
        // OrderCreated, StockReserved, PaymentAuthorized, ShipmentScheduled, PaymentCaptured,
        // StockCommitted, the notification.
        SagaStyle::Choreography => assert_eq!(messages, 7, "six facts, a notification"),
    }
    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Approved));
    assert_eq!(
        s.event_types(&order_id).await,
        [
            "OrderPlaced",
            "InventoryReserved",
            "PaymentAuthorized",
            "ShipmentScheduled",
            "OrderApproved"
        ]
    );
    assert_eq!(
        s.status_at(&s.payment, "payments", &order_id).await,
        "CAPTURED"
    );
    assert_eq!(
        s.status_at(&s.shipping, "shipments", &order_id).await,
        "SCHEDULED"
    );
    let (after,): (i64,) = sqlx::query_as("SELECT on_hand FROM products WHERE sku = 'KB-001'")
        .fetch_one(&s.inventory)
        .await
        .expect("stock");
    assert_eq!(after, before - 2, "committed out");
    let status = s.order.place_order.status(&order_id).await.expect("saga");
    match style {
        SagaStyle::Orchestration => {
            assert_eq!(
                status.map(|(status, _)| status),
                Some(flotilla_saga::Status::Completed)
            );
        }
        SagaStyle::Choreography => assert_eq!(status, None, "no orchestrator ran"),
    }
    assert_eq!(s.notifications(&order_id).await, ["OrderConfirmed"]);
    s.invariants().await;
}

async fn a_customer_over_the_credit_limit_is_rejected_and_the_stock_released(style: SagaStyle) {
    let s = system(style).await;
    // carol may spend 1,000 cents; a keyboard costs more.
    let order_id = s.place("carol", &[("KB-001", 1)], "FR").await;
    s.settle().await;
    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Rejected));
    assert!(
        order
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("credit limit")),
        "{:?}",
        order.reason
    );
    assert_eq!(
        s.event_types(&order_id).await,
        ["OrderPlaced", "InventoryReserved", "OrderRejected"]
    );
    assert_eq!(
        s.status_at(&s.inventory, "reservations", &order_id).await,
        "RELEASED"
    );
    assert_eq!(
        s.scalar(
            &s.payment,
            "SELECT status FROM payments WHERE order_id = $1",
            &order_id
        )
        .await,
        None,
        "never charged"
    );
    s.invariants().await;
}

async fn an_unserviceable_destination_voids_the_payment_and_releases_the_stock(style: SagaStyle) {
    let s = system(style).await;
    let order_id = s.place("bob", &[("MS-002", 3)], "AQ").await;
    s.settle().await;
    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Rejected));
    assert!(
        order
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("Antarctica")),
        "{:?}",
        order.reason
    );
    assert_eq!(
        s.event_types(&order_id).await,
        [
            "OrderPlaced",
            "InventoryReserved",
            "PaymentAuthorized",
            "OrderRejected"
        ]
    );
    assert_eq!(
        s.status_at(&s.payment, "payments", &order_id).await,
        "VOIDED"
    );
    assert_eq!(
        s.status_at(&s.inventory, "reservations", &order_id).await,
        "RELEASED"
    );
    if style == SagaStyle::Orchestration {
        let log = s.order.place_order.log_of(&order_id).await.expect("log");
        let undo: Vec<&String> = log.iter().filter(|l| l.contains("compensated")).collect();
        assert_eq!(
            undo,
            ["authorize_payment compensated", "reserve_stock compensated"],
            "latest first"
        );
    }
    assert_eq!(s.notifications(&order_id).await, ["OrderRejected"]);
    s.invariants().await;
}

async fn an_out_of_stock_order_is_rejected_with_nothing_to_undo(style: SagaStyle) {
    let s = system(style).await;
    let order_id = s.place("alice", &[("MN-003", 10_000)], "FR").await;
    s.settle().await;
    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Rejected));
    assert!(
        order
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("out of stock"))
    );
    assert_eq!(
        s.event_types(&order_id).await,
        ["OrderPlaced", "OrderRejected"]
    );
    s.invariants().await;
}

async fn many_orders_at_once_all_end_and_the_books_balance(style: SagaStyle) {
    let s = Arc::new(system(style).await);
    let mut placed = Vec::new();
    for n in 0..24 {
        let (customer, country) = match n % 4 {
            0 => ("carol", "FR"),
            1 => ("bob", "AQ"),
            _ => ("alice", "DE"),
        };
        placed.push(s.place(customer, &[("MN-003", 9)], country).await);
    }
    s.settle().await;
    let mut approved = 0;
    for (n, order_id) in placed.iter().enumerate() {
        match s.order(order_id).await.status {
            Some(Status::Approved) => {
                assert!(n % 4 >= 2, "only alice's orders to DE can pass ({n})");
                approved += 1;
            }
            Some(Status::Rejected) => {}
            other => panic!("{order_id} ended {other:?}"),
        }
    }
    // 150 monitors, 9 an order: the first 16 reservations fit, and carol's and the AQ orders
    // hold theirs until their compensation, so some of alice's find the shelf empty.
    assert!(approved > 0 && approved <= 12, "{approved}");
    s.invariants().await;
    let (on_hand, reserved): (i64, i64) =
        sqlx::query_as("SELECT on_hand, reserved FROM products WHERE sku = 'MN-003'")
            .fetch_one(&s.inventory)
            .await
            .expect("stock");
    assert_eq!(
        on_hand,
        150 - 9 * approved,
        "exactly the approved orders left the shelf"
    );
    assert_eq!(reserved, 0, "nothing left held");
}

async fn an_approved_order_is_cancelled_refunded_restocked_and_its_shipment_cancelled(
    style: SagaStyle,
) {
    let s = system(style).await;
    let before = s.on_hand("KB-001").await;
    let order_id = s.place("alice", &[("KB-001", 2)], "FR").await;
    s.settle().await;
    assert_eq!(s.order(&order_id).await.status, Some(Status::Approved));
    assert_eq!(s.on_hand("KB-001").await, before - 2);
    let started = s
        .order
        .request_cancellation(&order_id, "changed my mind", style)
        .await
        .expect("cancel");
    assert!(matches!(started, Cancelling::Started), "{started:?}");
    assert!(s.order(&order_id).await.cancelling());
    // Asking again while it runs changes nothing.
    let again = s
        .order
        .request_cancellation(&order_id, "really", style)
        .await
        .expect("cancel again");
    assert!(matches!(again, Cancelling::Already), "{again:?}");
    s.settle().await;
    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Cancelled));
    assert_eq!(order.reason.as_deref(), Some("changed my mind"));
    assert_eq!(
        s.status_at(&s.payment, "payments", &order_id).await,
        "REFUNDED"
    );
    assert_eq!(
        s.status_at(&s.inventory, "reservations", &order_id).await,
        "RESTOCKED"
    );
    assert_eq!(
        s.status_at(&s.shipping, "shipments", &order_id).await,
        "CANCELLED"
    );
    assert_eq!(s.on_hand("KB-001").await, before, "the stock came back");
    assert_eq!(
        s.event_types(&order_id).await[5..],
        ["CancellationRequested", "OrderCancelled"]
    );
    assert_eq!(
        s.notifications(&order_id).await,
        ["OrderConfirmed", "OrderCancelled"]
    );
    let done = s
        .order
        .request_cancellation(&order_id, "again", style)
        .await
        .expect("cancel a cancelled order");
    assert!(matches!(done, Cancelling::Already), "{done:?}");
    s.invariants().await;
}

async fn a_dispatched_order_cannot_be_cancelled_and_stays_approved_and_paid(style: SagaStyle) {
    let s = system(style).await;
    let order_id = s.place("alice", &[("MS-002", 1)], "DE").await;
    s.settle().await;
    assert_eq!(s.order(&order_id).await.status, Some(Status::Approved));
    // The carrier took it (dispatching is the carrier's own business, not yet an API).
    sqlx::query("UPDATE shipments SET status = 'DISPATCHED' WHERE order_id = $1")
        .bind(&order_id)
        .execute(&s.shipping)
        .await
        .expect("dispatch");
    let started = s
        .order
        .request_cancellation(&order_id, "too late?", style)
        .await
        .expect("cancel");
    assert!(matches!(started, Cancelling::Started), "{started:?}");
    s.settle().await;
    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Approved));
    assert!(
        matches!(&order.cancellation, Some(Cancellation::Refused { reason }) if reason.contains("DISPATCHED")),
        "{:?}",
        order.cancellation
    );
    assert_eq!(
        s.status_at(&s.payment, "payments", &order_id).await,
        "CAPTURED"
    );
    assert_eq!(
        s.status_at(&s.inventory, "reservations", &order_id).await,
        "COMMITTED"
    );
    assert_eq!(
        s.notifications(&order_id).await,
        ["OrderConfirmed", "OrderCancellationRefused"]
    );
    // A refused cancellation stays refused.
    let again = s
        .order
        .request_cancellation(&order_id, "please", style)
        .await
        .expect("cancel again");
    assert!(matches!(again, Cancelling::Refused(_)), "{again:?}");
    s.invariants().await;
}

async fn only_an_approved_order_can_be_cancelled(style: SagaStyle) {
    let s = system(style).await;
    let rejected = s.place("alice", &[("MN-003", 10_000)], "FR").await;
    let pending = s.place("alice", &[("MN-003", 1)], "FR").await;
    for order_id in [&pending, &rejected] {
        if order_id == &rejected {
            s.settle().await;
        }
        let refused = s
            .order
            .request_cancellation(order_id, "no", style)
            .await
            .expect("cancel");
        assert!(matches!(refused, Cancelling::Refused(_)), "{refused:?}");
    }
    let unknown = s
        .order
        .request_cancellation("no-such-order", "no", style)
        .await
        .expect("cancel");
    assert!(
        matches!(
            unknown,
            Cancelling::Refused(flotilla_order::OrderError::NotFound)
        ),
        "{unknown:?}"
    );
    s.settle().await;
    s.invariants().await;
}

/// Choreographed, the payment service does not react before the order's deadline: the order
/// expires, shipping refuses it, the payment leaves a refusal (nothing to void yet) and the
/// stock is released; the payment's late reaction to the reservation is then refused, so the
/// rejected order holds neither money nor stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_order_that_stalls_expires_at_its_deadline_and_is_undone() {
    let s = system(SagaStyle::Choreography).await;
    let order_id = s.place("alice", &[("KB-001", 1)], "FR").await;
    let (_, held) = s.settle_holding(|group, _| group == "payment").await;
    assert!(
        !held.is_empty(),
        "the payment service heard of the reservation"
    );
    assert_eq!(
        s.status_at(&s.inventory, "reservations", &order_id).await,
        "RESERVED"
    );
    assert_eq!(s.order(&order_id).await.status, Some(Status::Pending));

    assert_eq!(s.expire_now().await, 1, "the stalled order expires");
    assert_eq!(s.expire_now().await, 0, "once");
    // The expiry is undone while the payment service still holds its late message back; then
    // that message arrives.
    let (_, late) = s
        .settle_holding(|group, m| group == "payment" && m.message_type != "ShipmentRefused")
        .await;
    for (group, message) in held.into_iter().chain(late) {
        s.deliver_twice(&group, &message).await;
    }
    s.settle().await;

    let order = s.order(&order_id).await;
    assert_eq!(order.status, Some(Status::Rejected), "{order:?}");
    assert!(
        order
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("did not complete within")),
        "{:?}",
        order.reason
    );
    assert_eq!(
        s.status_at(&s.inventory, "reservations", &order_id).await,
        "RELEASED"
    );
    assert_eq!(
        s.status_at(&s.payment, "payments", &order_id).await,
        "",
        "never authorized"
    );
    assert_eq!(
        s.status_at(&s.shipping, "shipments", &order_id).await,
        "",
        "never scheduled"
    );
    assert_eq!(s.notifications(&order_id).await, ["OrderRejected"]);
    s.invariants().await;
}

/// Choreographed, an order whose shipment is scheduled is past its point of no return: its
/// deadline passing changes nothing, and it is approved once capture and commit come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_order_past_its_point_of_no_return_does_not_expire() {
    let s = system(SagaStyle::Choreography).await;
    let order_id = s.place("alice", &[("KB-001", 1)], "FR").await;
    let (_, held) = s
        .settle_holding(|group, m| group == "payment" && m.message_type == "ShipmentScheduled")
        .await;
    assert_eq!(held.len(), 1, "the capture waits");
    assert_eq!(s.order(&order_id).await.status, Some(Status::Pending));
    assert_eq!(s.expire_now().await, 0, "shipped: not expired");
    for (group, message) in held {
        s.deliver_twice(&group, &message).await;
    }
    s.settle().await;
    assert_eq!(s.order(&order_id).await.status, Some(Status::Approved));
    assert_eq!(
        s.status_at(&s.payment, "payments", &order_id).await,
        "CAPTURED"
    );
    // An order that ended has no deadline left.
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM saga_deadlines")
        .fetch_one(&s.order.db.pool)
        .await
        .expect("deadlines");
    assert_eq!(left, 0);
    s.invariants().await;
}

flotilla_testkit::for_each_variant!(
    worker_threads = 2,
    SagaStyle { orchestration => Orchestration, choreography => Choreography },
    [
        an_order_everyone_can_serve_is_approved_paid_and_its_stock_committed,
        a_customer_over_the_credit_limit_is_rejected_and_the_stock_released,
        an_unserviceable_destination_voids_the_payment_and_releases_the_stock,
        an_out_of_stock_order_is_rejected_with_nothing_to_undo,
        many_orders_at_once_all_end_and_the_books_balance,
        an_approved_order_is_cancelled_refunded_restocked_and_its_shipment_cancelled,
        a_dispatched_order_cannot_be_cancelled_and_stays_approved_and_paid,
        only_an_approved_order_can_be_cancelled,
    ],
);
