//! Orders through the gateway: the round trip (stored, readable, idempotent, event-sourced,
//! approved by the saga, checked by `flotilla check`) and bad input (a problem, nothing stored).

use std::time::Duration;

use flotilla_system_tests::{System, assert_problem, assert_rejected, eventually, order};
use http::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_through_the_gateway_is_stored_and_readable() {
    let system = System::start().await;

    let catalog = system.get("/v1/products").await;
    assert_eq!(catalog.status, StatusCode::OK);
    let keyboard = system.get("/v1/products/KB-001").await;
    assert_eq!(keyboard.status, StatusCode::OK);
    let price = keyboard.body["price_cents"].as_i64().expect("price");

    let placed = system
        .post_order(
            &order("alice", "KB-001", 3),
            &[("x-request-id", "test-request-1")],
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{:?}", placed.body);
    assert_eq!(placed.headers["x-request-id"], "test-request-1");
    assert_eq!(placed.body["status"], "PENDING");
    assert_eq!(placed.body["total_cents"], 3 * price);
    let id = placed.body["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    let location = placed.headers["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(location, format!("/v1/orders/{id}"));

    let read = system.get(&location).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["order_id"], id.as_str());
    assert_eq!(read.body["customer_id"], "alice");
    // The saga may already have moved it on.
    assert!(
        ["PENDING", "APPROVED"].contains(&read.body["status"].as_str().unwrap_or_default()),
        "{}",
        read.body
    );
    assert_eq!(read.body["items"][0]["sku"], "KB-001");
    assert_eq!(read.body["items"][0]["quantity"], 3);
    assert_eq!(read.body["items"][0]["unit_price_cents"], price);
    assert_eq!(read.body["ship_to"]["country"], "FR");

    // The seed data the demos and the saga rely on.
    let carol = system.get("/v1/accounts/carol").await;
    assert_eq!(carol.body["credit_limit_cents"], 1000);
    for customer in ["alice", "bob"] {
        let account = system.get(&format!("/v1/accounts/{customer}")).await;
        assert!(
            account.body["credit_limit_cents"].as_i64().unwrap_or(0) >= 1_000_000,
            "{customer}"
        );
    }
    let refused = system.get("/v1/shipments/refused-destinations").await;
    assert_eq!(refused.body["items"][0]["country"], "AQ");
    for product in catalog.body["items"].as_array().expect("items") {
        assert!(
            product["on_hand"].as_i64().unwrap_or(0) > 0,
            "every product is in stock: {product}"
        );
    }

    // Idempotency: same key and body → same order; same key, other body → 422.
    let key = [("idempotency-key", "test-key-1")];
    let first = system.post_order(&order("bob", "MS-002", 1), &key).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = system.post_order(&order("bob", "MS-002", 1), &key).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["order_id"], first.body["order_id"]);
    let other = system.post_order(&order("bob", "MS-002", 2), &key).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["type"], "/problems/idempotency-key-reused");
    assert_eq!(system.count_orders().await, 2);

    // Every process serves its probes, and Prometheus metrics on its admin listener; the
    // gateway's count what it did:
    // its own endpoints as every process does, the proxied requests by route.
    for probe in ["/livez", "/readyz", "/startupz"] {
        assert_eq!(system.get(probe).await.status, StatusCode::OK, "{probe}");
    }
    // Metrics live on the admin listener, behind a token; the public port has none.
    assert_eq!(system.get("/metrics").await.status, StatusCode::NOT_FOUND);
    let text = system.metrics_of("gateway").await;
    let text = text.as_str();
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_server_requests_total")
                && l.contains("route=\"/readyz\"")
                && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("gateway_route_requests_total")
                && l.contains("route=\"orders\"")
                && l.contains("class=\"2xx\"")),
        "{text}"
    );
    assert!(
        text.contains("gateway_route_duration_seconds_bucket{route=\"orders\""),
        "{text}"
    );
    assert!(text.contains("gateway_upstream_requests_total"), "{text}");

    // The place-order saga runs through the four services: the order ends APPROVED, paid,
    // its shipment scheduled.
    let approved = system.final_state(&location).await;
    assert_eq!(approved["status"], "APPROVED", "{approved}");
    let bobs = format!(
        "/v1/orders/{}",
        first.body["order_id"].as_str().expect("id")
    );
    assert_eq!(system.final_state(&bobs).await["status"], "APPROVED");
    let payments = system.get(&format!("/v1/payments?order_id={id}")).await;
    assert_eq!(payments.status, StatusCode::OK);
    assert_eq!(
        payments.body["items"][0]["status"], "CAPTURED",
        "{}",
        payments.body
    );
    assert_eq!(payments.body["items"][0]["amount_cents"], 3 * price);
    let shipments = system.get(&format!("/v1/shipments?order_id={id}")).await;
    assert_eq!(
        shipments.body["items"][0]["status"], "SCHEDULED",
        "{}",
        shipments.body
    );

    // Event sourcing through the gateway: the stream, time travel, and the read models.
    let events = system.get(&format!("{location}/events")).await;
    assert_eq!(events.status, StatusCode::OK);
    let types: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "InventoryReserved",
            "PaymentAuthorized",
            "ShipmentScheduled",
            "OrderApproved"
        ]
    );
    assert_eq!(events.body["events"][0]["schema_version"], 2);
    let at_first = system.get(&format!("{location}?version=1")).await;
    assert_eq!(at_first.body["version"], 1);
    assert_eq!(at_first.body["status"], "PENDING");
    assert_eq!(at_first.body["total_cents"], 3 * price);
    let beyond = system.get(&format!("{location}?version=6")).await;
    assert_eq!(beyond.status, StatusCode::NOT_FOUND);
    let listed = eventually(
        Duration::from_secs(5),
        "the read model caught up",
        || async {
            let list = system.get("/v1/orders?customer_id=alice").await;
            assert_eq!(list.status, StatusCode::OK);
            if list.body["orders"][0]["status"] == "APPROVED" {
                Ok(list)
            } else {
                Err(list.body)
            }
        },
    )
    .await;
    assert_eq!(listed.body["orders"][0]["order_id"], id.as_str());
    // `flotilla projections rebuild order` while the system runs: the same rows after.
    let rebuild = system.flotilla(&["projections", "rebuild", "order"]);
    let said = String::from_utf8_lossy(&rebuild.stdout);
    assert!(
        rebuild.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(
        said.contains("order_summaries: rebuilt from 10 events"),
        "{said}"
    );
    assert!(
        said.contains("revenue_per_day: rebuilt from 10 events"),
        "{said}"
    );
    let relisted = system.get("/v1/orders?customer_id=alice").await;
    assert_eq!(relisted.body, listed.body);
    let revenue = system.get("/v1/orders/revenue").await;
    assert_eq!(revenue.body["days"][0]["placed_orders"], 2);
    assert_eq!(revenue.body["days"][0]["approved_orders"], 2);
    let metrics = system.metrics_of("order").await;
    assert!(
        metrics.contains("eventstore_projection_lag_events{projection=\"order_summaries\"} 0"),
        "{metrics}"
    );

    // The natural failure: carol's credit (1,000 cents) does not cover a keyboard. With
    // `Prefer: wait=5` the answer waits for the saga's end: 200 and the final order.
    let carols = system
        .post_order(&order("carol", "KB-001", 1), &[("prefer", "wait=5")])
        .await;
    assert_eq!(carols.status, StatusCode::OK, "{}", carols.body);
    assert_eq!(carols.headers["preference-applied"], "wait=5");
    assert_rejected(&carols.body, "credit limit", "carol's order");

    // `flotilla check`: every invariant holds, every order ended (the saga of the last order
    // ended before its answer).
    let check = |settled: bool| {
        if settled {
            system.flotilla(&["check", "--json", "--settled"])
        } else {
            system.flotilla(&["check", "--json"])
        }
    };
    let report = check(true);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: Value = serde_json::from_str(&text).expect("a JSON report");
    assert_eq!(report["violations"], json!([]));
    assert_eq!(report["orders"], json!({ "APPROVED": 2, "REJECTED": 1 }));
    // And it notices money that does not add up: a captured payment voided behind its back.
    let payment_db = system.data_dir().join("payment.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", payment_db.display()))
        .await
        .expect("payment database");
    sqlx::query("UPDATE payments SET status = 'VOIDED' WHERE order_id = $1")
        .bind(&id)
        .execute(&pool)
        .await
        .expect("tampered");
    pool.close().await;
    let report = check(false);
    assert!(!report.status.success(), "a violation fails the command");
    let report: Value =
        serde_json::from_str(&String::from_utf8_lossy(&report.stdout)).expect("a JSON report");
    let violations = report["violations"].to_string();
    assert!(
        violations.contains(&format!("order {id} is APPROVED but its payment")),
        "{violations}"
    );
    assert!(
        violations.contains("captured payments total"),
        "{violations}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let system = System::start().await;
    let good = order("alice", "KB-001", 1);
    let with = |path: &str, value: Value| {
        let mut body = good.clone();
        let mut target = &mut body;
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            target = match part.parse::<usize>() {
                Ok(n) => &mut target[n],
                Err(_) => &mut target[*part],
            };
        }
        target[parts[parts.len() - 1]] = value;
        body.to_string().into_bytes()
    };
    let without_ship_to = {
        let mut body = good.clone();
        body.as_object_mut().expect("object").remove("ship_to");
        body.to_string().into_bytes()
    };
    let json = [("content-type", "application/json")];
    // (what, body, headers, expected status, expected problem type)
    type Case<'a> = (
        &'a str,
        Vec<u8>,
        &'a [(&'a str, &'a str)],
        StatusCode,
        &'a str,
    );
    // Well-formed JSON that breaks a rule of the order: 422 with the problem `kind`.
    let unprocessable =
        |name, body, kind| -> Case { (name, body, &json, StatusCode::UNPROCESSABLE_ENTITY, kind) };
    // The same, with one field (its path) set to a value: (what, path, value, kind).
    let quantity = "items.0.quantity";
    let one_field_set = [
        ("unknown field", "coupon", json!("FREE"), "invalid-body"),
        ("quantity as text", quantity, json!("two"), "invalid-body"),
        ("quantity 0", quantity, json!(0), "invalid-order"),
        ("negative quantity", quantity, json!(-5), "invalid-order"),
        (
            "absurd quantity",
            quantity,
            json!(1_000_000_000),
            "invalid-order",
        ),
        ("quantity beyond i64", quantity, json!(1e30), "invalid-body"),
        ("no items", "items", json!([]), "invalid-order"),
        (
            "unknown SKU",
            "items.0.sku",
            json!("NOPE-404"),
            "unknown-sku",
        ),
        (
            "bad country",
            "ship_to.country",
            json!("France"),
            "invalid-order",
        ),
        ("empty customer", "customer_id", json!(""), "invalid-order"),
    ];
    let mut cases: Vec<Case> = vec![
        (
            "malformed JSON",
            b"{\"customer_id\": ".to_vec(),
            &json,
            StatusCode::BAD_REQUEST,
            "malformed-json",
        ),
        unprocessable("missing field", without_ship_to, "invalid-body"),
        (
            "not JSON",
            good.to_string().into_bytes(),
            &[("content-type", "text/plain")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "oversized body",
            with("ship_to.name", json!("x".repeat(100 * 1024))),
            &json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
        ),
        (
            "bad idempotency key",
            good.to_string().into_bytes(),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", ""),
            ],
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
        ),
    ];
    cases.extend(
        one_field_set.map(|(name, path, value, kind)| unprocessable(name, with(path, value), kind)),
    );
    for (name, body, headers, status, kind) in cases {
        let answer = system
            .call(
                Method::POST,
                &format!("{}/v1/orders", system.gateway),
                headers,
                Some(body),
            )
            .await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.body);
        assert_problem(name, &answer, kind);
    }
    for (name, method, path, status, kind) in [
        (
            "unknown order",
            Method::GET,
            "/v1/orders/01a215f9-0000-7000-8000-000000000000",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "unknown product",
            Method::GET,
            "/v1/products/NOPE-1",
            StatusCode::NOT_FOUND,
            "unknown-sku",
        ),
        (
            "unknown route",
            Method::GET,
            "/v1/nothing-here",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "wrong method",
            Method::DELETE,
            "/v1/orders",
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            "missing query",
            Method::GET,
            "/v1/payments",
            StatusCode::BAD_REQUEST,
            "invalid-query",
        ),
    ] {
        let answer = system
            .call(method, &format!("{}{path}", system.gateway), &[], None)
            .await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.body);
        assert_problem(name, &answer, kind);
    }
    assert_eq!(system.count_orders().await, 0, "bad input stored an order");
}
