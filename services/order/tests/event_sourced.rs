//! The event-sourced order service: upcasting of a stored v1 stream, time travel and the event
//! list over HTTP, concurrent commands on one order, read models that rebuild to the same
//! rows as the live ones, the cancellation endpoint's answers, and who may reach which order
//! (every request carries a token of the test's identity provider, checked by the service's
//! guard as in production).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flotilla_discovery::Discovery;
use flotilla_eventstore::{ExpectedVersion, Metadata, NewEvent, aggregate::Execute};
use flotilla_order::store::{self, projections};
use flotilla_order::{
    Context, Database, Order, OrderError, OrderLine, OrderView, Placed, Placement, Sagas, Status,
    domain::Address,
};
use flotilla_testkit::{TempData, TestIdp, body_bytes};
use serde_json::Value;
use tower::ServiceExt;

/// The events of an order that went through every step, in the order `approve` records them.
const APPROVED_LIFE: [&str; 5] = [
    "OrderPlaced",
    "InventoryReserved",
    "PaymentAuthorized",
    "ShipmentScheduled",
    "OrderApproved",
];

struct Service {
    sagas: Sagas,
    db: Database,
    router: axum::Router,
    _data: TempData,
}

async fn service() -> Service {
    let data = TempData::new();
    let mut config = flotilla_order::Config::default();
    config.service.instance.server = data.settings();
    let sagas = flotilla_order::open(&config).await.expect("database");
    let db = sagas.db.clone();
    let routes = flotilla_order::routes(Context {
        sagas: sagas.clone(),
        discovery: Discovery::fixed(Default::default(), Duration::from_secs(1)),
        prices: std::sync::Arc::new(flotilla_order::api::prices::Prices::new(Duration::ZERO)),
        customers: std::sync::Arc::default(),
        relay: std::sync::Arc::new(tokio::sync::Notify::new()),
        style: flotilla_order::SagaStyle::Orchestration,
    });
    let router = flotilla_identity::guard::guard(routes, Some(TestIdp::shared().verifier()));
    Service {
        sagas,
        db,
        router,
        _data: data,
    }
}

/// `Bearer <token>` of the seed file's `name`, minted once per test binary.
fn bearer(name: &str) -> String {
    static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut tokens = TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, token)) = tokens.iter().find(|(n, _)| n == name) {
        return token.clone();
    }
    let token = TestIdp::shared().bearer(name);
    tokens.push((name.to_owned(), token.clone()));
    token
}

impl Service {
    /// `GET uri` as the admin.
    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.get_as("admin", uri).await
    }

    /// `GET uri` with the token of `who` (a seed file user), or none if `who` is empty.
    async fn get_as(&self, who: &str, uri: &str) -> (StatusCode, Value) {
        let mut request = Request::get(uri);
        if !who.is_empty() {
            request = request.header("authorization", bearer(who));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let body = body_bytes(response).await;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {body:?}"));
        (status, json)
    }

    async fn post(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut request = Request::post(uri);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            request = request.header("authorization", bearer("admin"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).expect("request"))
            .await
            .expect("infallible");
        let (status, headers) = (response.status(), response.headers().clone());
        let body = body_bytes(response).await;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {body:?}"));
        (status, headers, json)
    }

    async fn outbox_types(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT json_extract(envelope, '$.message_type') FROM messaging_outbox ORDER BY seq",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("outbox")
    }

    async fn place(&self, customer: &str, cents: i64) -> String {
        let order_id = uuid::Uuid::now_v7().to_string();
        let lines = vec![OrderLine {
            sku: "KB-001".into(),
            quantity: 1,
            unit_price_cents: cents,
        }];
        let placed = self
            .sagas
            .place(Placement {
                order_id: &order_id,
                customer_id: customer,
                lines,
                ship_to: address(),
                key: None,
                style: flotilla_order::SagaStyle::Orchestration,
            })
            .await
            .expect("placed");
        assert!(matches!(placed, Placed::New(_)));
        order_id
    }

    async fn run(
        &self,
        order_id: &str,
        command: impl Fn(&Order) -> Result<Vec<flotilla_order::OrderEvent>, OrderError> + Send,
    ) -> Result<(), Execute<OrderError>> {
        self.db
            .events
            .execute::<Order, OrderError>(order_id, 10, &Metadata::default(), command)
            .await
            .map(drop)
    }

    async fn approve(&self, order_id: &str) {
        self.run(order_id, Order::reserve_inventory)
            .await
            .expect("reserve");
        self.run(order_id, |o| o.authorize_payment("pay-1"))
            .await
            .expect("authorize");
        self.run(order_id, |o| o.schedule_shipment("ship-1"))
            .await
            .expect("schedule");
        self.run(order_id, Order::approve).await.expect("approve");
    }
}

fn address() -> Address {
    Address {
        name: "Alice Liddell".into(),
        street: "7 Rabbit Hole".into(),
        city: "Oxford".into(),
        postal_code: "OX1 1AA".into(),
        country: "GB".into(),
    }
}

/// The stored v1 stream: the whole fixture, its stream id, and its events as they were written.
fn fixture() -> (Value, String, Vec<NewEvent>) {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/order_placed_v1.json"))
        .expect("fixture is JSON");
    let stream = fixture["stream_id"].as_str().expect("stream id").to_owned();
    let events = fixture["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| NewEvent {
            id: e["id"].as_str().expect("id").parse().expect("uuid"),
            event_type: e["event_type"].as_str().expect("type").to_owned(),
            schema_version: u32::try_from(e["schema_version"].as_u64().expect("version"))
                .expect("small"),
            data: e["data"].clone(),
            metadata: serde_json::from_value(e["metadata"].clone()).expect("metadata"),
        })
        .collect();
    (fixture, stream, events)
}

#[tokio::test]
async fn the_v1_fixture_reads_as_the_current_schema_on_postgresql_too() {
    let Some(schema) = flotilla_testkit::postgres_schema().await else {
        return;
    };
    let events = flotilla_eventstore::EventStore::postgres(schema.pool.clone(), store::options())
        .await
        .expect("postgres store");
    let (_, stream, written) = fixture();
    events
        .append(&stream, ExpectedVersion::NoStream, written)
        .await
        .expect("fixture stored");
    let order_id = stream.strip_prefix("order-").expect("an order stream");
    let order = events.load::<Order>(order_id).await.expect("loads");
    assert_eq!(order.version, 3);
    assert_eq!(order.state.total_cents, 2 * 4999 + 1999);
    assert_eq!(order.state.items[1].unit_price_cents, 1999);
    assert_eq!(order.state.status, Some(Status::Rejected));
    let stored = events.read_stream(&stream, 1).await.expect("stream");
    assert_eq!(stored[0].schema_version, 2);
    assert_eq!(stored[0].data["total_cents"], 11997);
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_stored_v1_order_stream_reads_as_the_current_schema() {
    let service = service().await;
    let (fixture, stream, events) = fixture();
    let stream = stream.as_str();
    // Stored as the old version wrote it: schema 1, `price_cents`, no total.
    service
        .db
        .events
        .append(stream, ExpectedVersion::NoStream, events)
        .await
        .expect("fixture stored");
    let order_id = stream.strip_prefix("order-").expect("an order stream");

    let (status, view) = service.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let view: OrderView = serde_json::from_value(view).expect("an order view");
    assert_eq!(
        view.total_cents,
        2 * 4999 + 1999,
        "total added by the upcaster"
    );
    assert_eq!(view.items[0].unit_price_cents, 4999);
    assert_eq!(view.status, "REJECTED");
    assert_eq!(
        view.reason.as_deref(),
        Some("payment declined: credit limit exceeded")
    );

    let (status, list) = service.get(&format!("/v1/orders/{order_id}/events")).await;
    assert_eq!(status, StatusCode::OK);
    let placed = &list["events"][0];
    assert_eq!(placed["event_type"], "OrderPlaced");
    assert_eq!(placed["schema_version"], 2, "read at the current schema");
    assert_eq!(placed["data"]["items"][1]["unit_price_cents"], 1999);
    assert!(placed["data"]["items"][1].get("price_cents").is_none());
    assert_eq!(
        placed["metadata"]["correlation_id"],
        fixture["events"][0]["metadata"]["correlation_id"]
    );
    assert_eq!(list["events"].as_array().map(Vec::len), Some(3));

    // The read models see the upcast event too.
    projections::catch_up(&service.db.events)
        .await
        .expect("projections");
    let (_, orders) = service.get("/v1/orders?customer_id=alice").await;
    assert_eq!(orders["orders"][0]["total_cents"], 11997);
    assert_eq!(orders["orders"][0]["status"], "REJECTED");
}

#[tokio::test]
async fn time_travel_returns_the_order_as_it_was() {
    let service = service().await;
    let order_id = service.place("bob", 2500).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(30)).await;
    service.approve(&order_id).await;

    let (status, now) = service.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (now["status"].as_str(), now["version"].as_u64()),
        (Some("APPROVED"), Some(5))
    );
    let (status, first) = service
        .get(&format!("/v1/orders/{order_id}?version=1"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (first["status"].as_str(), first["version"].as_u64()),
        (Some("PENDING"), Some(1))
    );
    assert_eq!(first["total_cents"], 2500);
    let (_, fourth) = service
        .get(&format!("/v1/orders/{order_id}?version=4"))
        .await;
    assert_eq!(fourth["status"], "PENDING");
    let at = between
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (status, then) = service.get(&format!("/v1/orders/{order_id}?at={at}")).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(
        (then["status"].as_str(), then["version"].as_u64()),
        (Some("PENDING"), Some(1))
    );

    let (_, events) = service.get(&format!("/v1/orders/{order_id}/events")).await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(types, APPROVED_LIFE);

    // Bad questions get problems and change nothing.
    for (query, expected) in [
        ("?version=0", StatusCode::BAD_REQUEST),
        ("?version=abc", StatusCode::BAD_REQUEST),
        ("?version=-1", StatusCode::BAD_REQUEST),
        ("?at=yesterday", StatusCode::BAD_REQUEST),
        (
            "?version=1&at=2026-01-01T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        ("?colour=blue", StatusCode::BAD_REQUEST),
        ("?version=6", StatusCode::NOT_FOUND),
        ("?at=2000-01-01T00:00:00Z", StatusCode::NOT_FOUND),
    ] {
        let (status, problem) = service.get(&format!("/v1/orders/{order_id}{query}")).await;
        assert_eq!(status, expected, "{query}: {problem}");
        assert!(problem["type"].as_str().is_some(), "{query}: a problem");
    }
    let (status, _) = service.get("/v1/orders/no-such-order").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = service.get("/v1/orders/no-such-order/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = service.get("/v1/orders/no-such-order?version=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, unchanged) = service.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(unchanged, now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_order_resolve_by_retry() {
    let service = std::sync::Arc::new(service().await);
    let order_id = service.place("alice", 1000).await;
    // Every step twice, all at once: each retries on conflict with the fresh state, and the
    // aggregate makes the repeats no-ops, so each step is recorded exactly once.
    let tasks: Vec<_> = (0..12)
        .map(|n| {
            let service = service.clone();
            let order_id = order_id.clone();
            tokio::spawn(async move {
                match n % 3 {
                    0 => service.run(&order_id, Order::reserve_inventory).await,
                    1 => {
                        service
                            .run(&order_id, |o| o.authorize_payment(&format!("pay-{n}")))
                            .await
                    }
                    _ => {
                        service
                            .run(&order_id, |o| o.schedule_shipment(&format!("ship-{n}")))
                            .await
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("command applied");
    }
    service
        .run(&order_id, Order::approve)
        .await
        .expect("approve");
    let events = service
        .db
        .events
        .read_stream(&format!("order-{order_id}"), 1)
        .await
        .expect("stream");
    let mut types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    types[1..4].sort_unstable();
    assert_eq!(types, APPROVED_LIFE);
    // A command the state refuses is refused whatever the retries.
    let refused = service.run(&order_id, |o| o.reject("too late")).await;
    assert!(matches!(
        refused,
        Err(Execute::Refused(OrderError::WrongStatus { .. }))
    ));
}

#[tokio::test]
async fn read_models_list_report_and_rebuild_to_the_same_rows() {
    let service = service().await;
    let mut approved = Vec::new();
    for n in 0..24i64 {
        let customer = ["alice", "bob", "carol"][(n % 3) as usize];
        let order_id = service.place(customer, 100 * (n + 1)).await;
        match n % 4 {
            0 => {}
            1 => {
                service.approve(&order_id).await;
                approved.push(100 * (n + 1));
            }
            2 => service
                .run(&order_id, |o| o.reject("out of stock"))
                .await
                .expect("reject"),
            _ => {
                service.approve(&order_id).await;
                service
                    .run(&order_id, |o| o.cancel("changed my mind"))
                    .await
                    .expect("cancel");
            }
        }
    }
    projections::catch_up(&service.db.events)
        .await
        .expect("live projections");
    let (status, all) = service.get("/v1/orders?limit=500").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["orders"].as_array().map(Vec::len), Some(24));
    let (_, bobs_approved) = service
        .get("/v1/orders?customer_id=bob&status=APPROVED")
        .await;
    let rows = bobs_approved["orders"].as_array().expect("orders");
    // bob is n % 3 == 1; approved and kept is n % 4 == 1: n in {1, 13}.
    assert_eq!(rows.len(), 2, "{bobs_approved}");
    assert!(
        rows.iter()
            .all(|r| r["customer_id"] == "bob" && r["status"] == "APPROVED")
    );
    let (_, revenue) = service.get("/v1/orders/revenue").await;
    let today = &revenue["days"][0];
    assert_eq!(today["placed_orders"], 24);
    assert_eq!(
        today["placed_cents"],
        (1..=24).map(|n| 100 * n).sum::<i64>()
    );
    assert_eq!(today["approved_orders"], 12, "approved, cancelled or not");
    assert_eq!(today["rejected_orders"], 6);
    assert_eq!(today["cancelled_orders"], 6);
    let approved_cents: i64 = approved.iter().sum();
    let cancelled_cents = today["cancelled_cents"].as_i64().expect("cents");
    assert_eq!(
        today["approved_cents"].as_i64().expect("cents") - cancelled_cents,
        approved_cents
    );

    for (query, problem) in [
        ("/v1/orders?status=SHIPPED", "status"),
        ("/v1/orders?limit=0", "limit"),
        ("/v1/orders?limit=501", "limit"),
        ("/v1/orders?limit=many", "limit"),
        ("/v1/orders?sort=asc", "sort"),
        ("/v1/orders/revenue?from=26-11-2026", "from"),
    ] {
        let (status, body) = service.get(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(problem), "{query}: {detail}");
    }

    let live_orders = service.get("/v1/orders?limit=500").await.1;
    let live_revenue = service.get("/v1/orders/revenue").await.1;
    let rebuilt = projections::rebuild(&service.db.events)
        .await
        .expect("rebuild");
    let events = service.db.events.head(Some("order")).await.expect("head");
    assert_eq!(
        rebuilt,
        [("order_summaries", events), ("revenue_per_day", events)]
    );
    assert_eq!(service.get("/v1/orders?limit=500").await.1, live_orders);
    assert_eq!(service.get("/v1/orders/revenue").await.1, live_revenue);
    assert_eq!(Status::parse("APPROVED"), Some(Status::Approved));
}

#[tokio::test]
async fn cancellation_over_http_refuses_bad_requests_and_starts_the_chosen_style() {
    let service = service().await;
    let pending = service.place("alice", 1200).await;
    let approved = service.place("alice", 1500).await;
    service.approve(&approved).await;
    let outbox_before = service.outbox_types().await;

    let (status, _, problem) = service
        .post("/v1/orders/no-such-order/cancel", &[], "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");

    let (status, _, problem) = service
        .post(&format!("/v1/orders/{pending}/cancel"), &[], "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("order-not-cancellable"))
    );

    let uri = format!("/v1/orders/{approved}/cancel");
    for (headers, body, kind) in [
        (vec![("x-saga-style", "sideways")], "", "invalid-saga-style"),
        (vec![], r#"{"bogus": 1}"#, "invalid-body"),
        (vec![], "not json", "invalid-body"),
        (vec![], r#"{"reason": "   "}"#, "invalid-body"),
    ] {
        let (status, _, problem) = service.post(&uri, &headers, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert!(
            problem["type"].as_str().is_some_and(|t| t.ends_with(kind)),
            "{problem}"
        );
    }
    let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(501));
    let (status, _, _) = service.post(&uri, &[], &long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // None of that changed anything.
    assert_eq!(service.outbox_types().await, outbox_before);
    let (_, order) = service.get(&format!("/v1/orders/{approved}")).await;
    assert_eq!(order["status"], "APPROVED");
    assert!(order.get("cancellation").is_none(), "{order}");

    let headers = [("x-saga-style", "Choreography")];
    let (status, answer, body) = service
        .post(&uri, &headers, r#"{"reason": "found it cheaper"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(answer["x-saga-style"], "choreography");
    let (_, order) = service.get(&format!("/v1/orders/{approved}")).await;
    assert_eq!(order["cancellation"]["status"], "REQUESTED", "{order}");
    assert_eq!(order["cancellation"]["reason"], "found it cheaper");
    let mut expected = outbox_before.clone();
    expected.push("OrderCancellationRequested".to_owned());
    assert_eq!(
        service.outbox_types().await,
        expected,
        "the choreography's first event"
    );

    // Asking again while it runs changes nothing.
    let (status, _, _) = service.post(&uri, &headers, "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(service.outbox_types().await, expected);

    let (status, _) = service.get("/v1/orders/no-such-order/notifications").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, list) = service
        .get(&format!("/v1/orders/{approved}/notifications"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["notifications"], serde_json::json!([]));
}

#[tokio::test]
async fn a_customer_reaches_their_own_orders_only_and_cannot_probe_others() {
    let service = service().await;
    let alices = service.place("alice", 1200).await;
    service.approve(&alices).await;
    let bobs = service.place("bob", 900).await;
    let outbox_before = service.outbox_types().await;

    // Alice reads her own order, its events and its notifications.
    for path in ["", "/events", "/notifications", "?version=1"] {
        let (status, body) = service
            .get_as("alice", &format!("/v1/orders/{alices}{path}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // Bob gets for Alice's order exactly what he gets for an order that does not exist.
    let (_, unknown) = service.get_as("bob", "/v1/orders/no-such-order").await;
    for path in ["", "/events", "/notifications", "?version=1", "?version=99"] {
        let (status, body) = service
            .get_as("bob", &format!("/v1/orders/{alices}{path}"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["type"], unknown["type"], "{path}: {body}");
        assert!(body.get("current_version").is_none(), "{path}: {body}");
    }
    let (status, _, body) = service
        .post(
            &format!("/v1/orders/{alices}/cancel"),
            &[("authorization", &bearer("bob"))],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Lists are filtered by owner; naming another customer finds nothing.
    projections::catch_up(&service.db.events)
        .await
        .expect("live projections");
    let ids = |list: &Value| -> Vec<String> {
        list["orders"]
            .as_array()
            .map(|orders| {
                orders
                    .iter()
                    .filter_map(|o| o["order_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, list) = service.get_as("bob", "/v1/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&list), vec![bobs.clone()]);
    let (_, list) = service.get_as("bob", "/v1/orders?customer_id=alice").await;
    assert_eq!(ids(&list), Vec::<String>::new());
    let (_, list) = service.get("/v1/orders").await;
    assert_eq!(ids(&list).len(), 2, "the admin sees every order: {list}");
    let (status, body) = service.get_as("bob", "/v1/orders/revenue").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Bob may not order for Alice: refused before anything is priced or stored.
    let order = r#"{"customer_id": "alice", "items": [{"sku": "KB-001", "quantity": 1}],
        "ship_to": {"name": "A", "street": "1 rue", "city": "Lyon", "postal_code": "69001", "country": "FR"}}"#;
    let (status, _, body) = service
        .post(
            "/v1/orders",
            &[
                ("authorization", &bearer("bob")),
                ("content-type", "application/json"),
            ],
            order,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("not-your-customer-id")),
        "{body}"
    );

    // Without a token nothing is answered but the challenge.
    let (status, body) = service.get_as("", &format!("/v1/orders/{bobs}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // None of that changed anything.
    assert_eq!(service.outbox_types().await, outbox_before);
    let (_, order) = service.get(&format!("/v1/orders/{alices}")).await;
    assert_eq!(order["status"], "APPROVED");
    assert!(order.get("cancellation").is_none(), "{order}");
}
