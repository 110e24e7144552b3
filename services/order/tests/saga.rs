//! The place-order and cancel-order sagas across the four services' real databases and real
//! handlers, in both styles (orchestration and choreography). The test is the transport: it
//! moves each service's outbox messages to every consumer of their topic, as the contracts wire
//! them (transports have their own conformance suite), and delivers every message twice, so
//! that each path also proves that redelivery changes nothing.

use std::sync::Arc;

use Record::{Payment, Reservation, Shipment};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Processed};
use flotilla_order::SagaStyle;
use flotilla_order::domain::Address;
use flotilla_order::{Cancellation, Order, OrderLine, Status};
use flotilla_order::{Cancelling, Placed, Placement, Sagas};
use flotilla_testkit::{TempData, number};
use sqlx::SqlitePool;

/// A participant's record of an order: the inventory's reservation of its stock, the payment
/// service's payment, the carrier's shipment.
#[derive(Debug, Clone, Copy)]
enum Record {
    Reservation,
    Payment,
    Shipment,
}

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
            let sql = "SELECT price_cents FROM products WHERE sku = $1";
            let price: Option<i64> = lookup(&self.inventory, sql, sku).await;
            priced.push(OrderLine {
                sku: (*sku).into(),
                quantity: *quantity,
                unit_price_cents: price.unwrap_or(100),
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

    /// Places an order and moves messages until its saga has run its course; returns its id.
    async fn settled(&self, customer: &str, lines: &[(&str, i64)], country: &str) -> String {
        let order_id = self.place(customer, lines, country).await;
        self.settle().await;
        order_id
    }

    /// Asks, in this system's style, to cancel the order for `reason`.
    async fn cancel(&self, order_id: &str, reason: &str) -> Cancelling {
        self.order
            .request_cancellation(order_id, reason, self.style)
            .await
            .expect("cancel")
    }

    /// The carrier takes the order's shipment (dispatching is the carrier's own business, not
    /// yet an API).
    async fn dispatch(&self, order_id: &str) {
        sqlx::query("UPDATE shipments SET status = 'DISPATCHED' WHERE order_id = $1")
            .bind(order_id)
            .execute(&self.shipping)
            .await
            .expect("dispatch");
    }

    /// Delivers each held message to its group, twice (see [`System::settle_holding`]).
    async fn deliver_held(&self, held: impl IntoIterator<Item = (String, Message)>) {
        for (group, message) in held {
            self.deliver_twice(&group, &message).await;
        }
    }

    async fn notifications(&self, order_id: &str) -> Vec<String> {
        flotilla_order::store::notifications::of_order(&self.order.db.pool, order_id)
            .await
            .expect("notifications")
            .into_iter()
            .map(|n| n.kind)
            .collect()
    }

    /// The status of the participant's `record` of the order; `None` if it holds none.
    async fn status_of(&self, record: Record, order_id: &str) -> Option<String> {
        let (pool, sql) = match record {
            Reservation => (
                &self.inventory,
                "SELECT status FROM reservations WHERE order_id = $1",
            ),
            Payment => (
                &self.payment,
                "SELECT status FROM payments WHERE order_id = $1",
            ),
            Shipment => (
                &self.shipping,
                "SELECT status FROM shipments WHERE order_id = $1",
            ),
        };
        lookup(pool, sql, order_id).await
    }

    async fn on_hand(&self, sku: &str) -> i64 {
        let sql = "SELECT on_hand FROM products WHERE sku = $1";
        lookup(&self.inventory, sql, sku).await.expect("a product")
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

    /// Asserts that the order was rejected with a reason that mentions `because`, and that its
    /// stream holds `events`.
    async fn assert_rejected(&self, order_id: &str, because: &str, events: &[&str]) {
        let order = self.order(order_id).await;
        assert_eq!(order.status, Some(Status::Rejected), "{order:?}");
        assert!(
            order.reason.as_deref().is_some_and(|r| r.contains(because)),
            "{:?} should mention {because:?}",
            order.reason
        );
        assert_eq!(self.event_types(order_id).await, events);
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
}

/// The first column of the first row `sql` selects from `pool` with `key` as `$1`, if any.
async fn lookup<T>(pool: &SqlitePool, sql: &'static str, key: &str) -> Option<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .bind(key)
        .fetch_optional(pool)
        .await
        .expect(sql)
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
    let before = s.on_hand("KB-001").await;
    let id = s.place("alice", &[("KB-001", 2)], "FR").await;
    let messages = s.settle().await;
    match style {
        SagaStyle::Orchestration => {
            assert_eq!(messages, 11, "five commands, five replies, a notification")
        }
        // OrderCreated, StockReserved, PaymentAuthorized, ShipmentScheduled, PaymentCaptured,
        // StockCommitted, the notification.
        SagaStyle::Choreography => assert_eq!(messages, 7, "six facts, a notification"),
    }
    assert_eq!(s.order(&id).await.status, Some(Status::Approved));
    assert_eq!(
        s.event_types(&id).await,
        [
            "OrderPlaced",
            "InventoryReserved",
            "PaymentAuthorized",
            "ShipmentScheduled",
            "OrderApproved"
        ]
    );
    assert_eq!(s.status_of(Payment, &id).await.as_deref(), Some("CAPTURED"));
    assert_eq!(
        s.status_of(Shipment, &id).await.as_deref(),
        Some("SCHEDULED")
    );
    assert_eq!(s.on_hand("KB-001").await, before - 2, "committed out");
    let saga = s.order.place_order.status(&id).await.expect("saga");
    match style {
        SagaStyle::Orchestration => assert_eq!(
            saga.map(|(status, _)| status),
            Some(flotilla_saga::Status::Completed)
        ),
        SagaStyle::Choreography => assert_eq!(saga, None, "no orchestrator ran"),
    }
    assert_eq!(s.notifications(&id).await, ["OrderConfirmed"]);
    s.invariants().await;
}

async fn a_customer_over_the_credit_limit_is_rejected_and_the_stock_released(style: SagaStyle) {
    let s = system(style).await;
    // carol may spend 1,000 cents; a keyboard costs more.
    let id = s.settled("carol", &[("KB-001", 1)], "FR").await;
    let events = ["OrderPlaced", "InventoryReserved", "OrderRejected"];
    s.assert_rejected(&id, "credit limit", &events).await;
    assert_eq!(
        s.status_of(Reservation, &id).await.as_deref(),
        Some("RELEASED")
    );
    assert_eq!(s.status_of(Payment, &id).await, None, "never charged");
    s.invariants().await;
}

async fn an_unserviceable_destination_voids_the_payment_and_releases_the_stock(style: SagaStyle) {
    let s = system(style).await;
    let id = s.settled("bob", &[("MS-002", 3)], "AQ").await;
    let events = [
        "OrderPlaced",
        "InventoryReserved",
        "PaymentAuthorized",
        "OrderRejected",
    ];
    s.assert_rejected(&id, "Antarctica", &events).await;
    assert_eq!(s.status_of(Payment, &id).await.as_deref(), Some("VOIDED"));
    assert_eq!(
        s.status_of(Reservation, &id).await.as_deref(),
        Some("RELEASED")
    );
    if style == SagaStyle::Orchestration {
        let log = s.order.place_order.log_of(&id).await.expect("log");
        let undo: Vec<&String> = log.iter().filter(|l| l.contains("compensated")).collect();
        assert_eq!(
            undo,
            ["authorize_payment compensated", "reserve_stock compensated"],
            "latest first"
        );
    }
    assert_eq!(s.notifications(&id).await, ["OrderRejected"]);
    s.invariants().await;
}

async fn an_out_of_stock_order_is_rejected_with_nothing_to_undo(style: SagaStyle) {
    let s = system(style).await;
    let id = s.settled("alice", &[("MN-003", 10_000)], "FR").await;
    let events = ["OrderPlaced", "OrderRejected"];
    s.assert_rejected(&id, "out of stock", &events).await;
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
    for (n, id) in placed.iter().enumerate() {
        match s.order(id).await.status {
            Some(Status::Approved) => {
                assert!(n % 4 >= 2, "only alice's orders to DE can pass ({n})");
                approved += 1;
            }
            Some(Status::Rejected) => {}
            other => panic!("{id} ended {other:?}"),
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
    let id = s.settled("alice", &[("KB-001", 2)], "FR").await;
    assert_eq!(s.order(&id).await.status, Some(Status::Approved));
    assert_eq!(s.on_hand("KB-001").await, before - 2);
    let started = s.cancel(&id, "changed my mind").await;
    assert!(matches!(started, Cancelling::Started), "{started:?}");
    assert!(s.order(&id).await.cancelling());
    // Asking again while it runs changes nothing.
    let again = s.cancel(&id, "really").await;
    assert!(matches!(again, Cancelling::Already), "{again:?}");
    s.settle().await;
    let order = s.order(&id).await;
    assert_eq!(order.status, Some(Status::Cancelled));
    assert_eq!(order.reason.as_deref(), Some("changed my mind"));
    assert_eq!(s.status_of(Payment, &id).await.as_deref(), Some("REFUNDED"));
    assert_eq!(
        s.status_of(Reservation, &id).await.as_deref(),
        Some("RESTOCKED")
    );
    assert_eq!(
        s.status_of(Shipment, &id).await.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(s.on_hand("KB-001").await, before, "the stock came back");
    assert_eq!(
        s.event_types(&id).await[5..],
        ["CancellationRequested", "OrderCancelled"]
    );
    assert_eq!(
        s.notifications(&id).await,
        ["OrderConfirmed", "OrderCancelled"]
    );
    let done = s.cancel(&id, "again").await;
    assert!(matches!(done, Cancelling::Already), "{done:?}");
    s.invariants().await;
}

async fn a_dispatched_order_cannot_be_cancelled_and_stays_approved_and_paid(style: SagaStyle) {
    let s = system(style).await;
    let id = s.settled("alice", &[("MS-002", 1)], "DE").await;
    assert_eq!(s.order(&id).await.status, Some(Status::Approved));
    s.dispatch(&id).await;
    let started = s.cancel(&id, "too late?").await;
    assert!(matches!(started, Cancelling::Started), "{started:?}");
    s.settle().await;
    let order = s.order(&id).await;
    assert_eq!(order.status, Some(Status::Approved));
    assert!(
        matches!(&order.cancellation, Some(Cancellation::Refused { reason }) if reason.contains("DISPATCHED")),
        "{:?}",
        order.cancellation
    );
    assert_eq!(s.status_of(Payment, &id).await.as_deref(), Some("CAPTURED"));
    assert_eq!(
        s.status_of(Reservation, &id).await.as_deref(),
        Some("COMMITTED")
    );
    assert_eq!(
        s.notifications(&id).await,
        ["OrderConfirmed", "OrderCancellationRefused"]
    );
    // A refused cancellation stays refused.
    let again = s.cancel(&id, "please").await;
    assert!(matches!(again, Cancelling::Refused(_)), "{again:?}");
    s.invariants().await;
}

async fn only_an_approved_order_can_be_cancelled(style: SagaStyle) {
    let s = system(style).await;
    let rejected = s.place("alice", &[("MN-003", 10_000)], "FR").await;
    let pending = s.place("alice", &[("MN-003", 1)], "FR").await;
    for id in [&pending, &rejected] {
        if id == &rejected {
            s.settle().await;
        }
        let refused = s.cancel(id, "no").await;
        assert!(matches!(refused, Cancelling::Refused(_)), "{refused:?}");
    }
    let unknown = s.cancel("no-such-order", "no").await;
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
    let id = s.place("alice", &[("KB-001", 1)], "FR").await;
    let (_, held) = s.settle_holding(|group, _| group == "payment").await;
    assert!(
        !held.is_empty(),
        "the payment service heard of the reservation"
    );
    assert_eq!(
        s.status_of(Reservation, &id).await.as_deref(),
        Some("RESERVED")
    );
    assert_eq!(s.order(&id).await.status, Some(Status::Pending));

    assert_eq!(s.expire_now().await, 1, "the stalled order expires");
    assert_eq!(s.expire_now().await, 0, "once");
    // The expiry is undone while the payment service still holds its late message back; then
    // that message arrives.
    let (_, late) = s
        .settle_holding(|group, m| group == "payment" && m.message_type != "ShipmentRefused")
        .await;
    s.deliver_held(held.into_iter().chain(late)).await;
    s.settle().await;

    let events = ["OrderPlaced", "InventoryReserved", "OrderRejected"];
    s.assert_rejected(&id, "did not complete within", &events)
        .await;
    assert_eq!(
        s.status_of(Reservation, &id).await.as_deref(),
        Some("RELEASED")
    );
    assert_eq!(s.status_of(Payment, &id).await, None, "never authorized");
    assert_eq!(s.status_of(Shipment, &id).await, None, "never scheduled");
    assert_eq!(s.notifications(&id).await, ["OrderRejected"]);
    s.invariants().await;
}

/// Choreographed, an order whose shipment is scheduled is past its point of no return: its
/// deadline passing changes nothing, and it is approved once capture and commit come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_order_past_its_point_of_no_return_does_not_expire() {
    let s = system(SagaStyle::Choreography).await;
    let id = s.place("alice", &[("KB-001", 1)], "FR").await;
    let (_, held) = s
        .settle_holding(|group, m| group == "payment" && m.message_type == "ShipmentScheduled")
        .await;
    assert_eq!(held.len(), 1, "the capture waits");
    assert_eq!(s.order(&id).await.status, Some(Status::Pending));
    assert_eq!(s.expire_now().await, 0, "shipped: not expired");
    s.deliver_held(held).await;
    s.settle().await;
    assert_eq!(s.order(&id).await.status, Some(Status::Approved));
    assert_eq!(s.status_of(Payment, &id).await.as_deref(), Some("CAPTURED"));
    // An order that ended has no deadline left.
    let left = number(&s.order.db.pool, "SELECT COUNT(*) FROM saga_deadlines").await;
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
