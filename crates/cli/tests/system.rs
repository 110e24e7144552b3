//! Whole-system tests: each starts the built `flotilla up` on free ports in a temporary data
//! directory, exactly as a user would, and talks to it over HTTP.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// A running `flotilla up`.
struct System {
    supervisor: Child,
    api: Gateway,
    registry: String,
    data_dir: tempfile::TempDir,
}

impl std::ops::Deref for System {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.api
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// The calls a test makes against the gateway, usable from another task.
struct Gateway {
    gateway: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(15), self.http.request(request))
            .await
            .expect("answer within 15 s")
            .expect("answer");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, &format!("{}{path}", self.gateway), &[], None)
            .await
    }

    async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.call(
            Method::POST,
            &format!("{}{path}", self.gateway),
            &all,
            Some(body.as_bytes().to_vec()),
        )
        .await
    }

    async fn post_order(&self, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.call(
            Method::POST,
            &format!("{}/v1/orders", self.gateway),
            &all,
            Some(body.to_string().into_bytes()),
        )
        .await
    }
}

impl System {
    fn client_only(gateway: String, http: Client<HttpConnector, Full<Bytes>>) -> Gateway {
        Gateway { gateway, http }
    }

    /// Starts the system and waits for its ready line (at most 60 s).
    fn start(extra: &[&str]) -> System {
        Self::start_with(extra, &[])
    }

    /// Starts the system with extra environment variables (settings of every process).
    fn start_with(extra: &[&str], environment: &[(&str, &str)]) -> System {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = std::fs::File::create(data_dir.path().join("system.log")).expect("log file");
        let mut supervisor = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("up")
            .args(["--gateway-port", &port.to_string()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--log-format", "json", "--stop-timeout-ms", "5000"])
            .args(extra)
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("flotilla up starts");
        let stdout = supervisor.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "no ready line within 60 s; log:\n{}",
                    tail(&data_dir.path().join("system.log"))
                )
            });
        assert!(
            line.starts_with("flotilla ready in "),
            "unexpected first line: {line}"
        );
        let registry = std::fs::read_to_string(data_dir.path().join("registry.url"))
            .expect("registry.url is written")
            .trim()
            .to_owned();
        System {
            supervisor,
            api: Gateway {
                gateway: format!("http://127.0.0.1:{port}"),
                http: Client::builder(TokioExecutor::new()).build_http(),
            },
            registry,
            data_dir,
        }
    }

    async fn instances(&self, service: &str) -> Vec<Value> {
        let answer = self
            .call(
                Method::GET,
                &format!("{}/v1/registry/services/{service}", self.registry),
                &[],
                None,
            )
            .await;
        answer.body["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The order at `location` once it left PENDING (at most 15 s).
    async fn final_state(&self, location: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let order = self.get(location).await;
            if order.status == StatusCode::OK && order.body["status"] != "PENDING" {
                return order.body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{location} still pending: {}",
                order.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text `path` of the first instance of `service` answers (direct, not via the gateway).
    async fn get_from(&self, service: &str, path: &str) -> String {
        let instances = self.instances(service).await;
        let address = instances
            .first()
            .and_then(|i| i["address"].as_str())
            .unwrap_or_else(|| panic!("an instance of {service}"))
            .to_owned();
        let answer = self
            .call(Method::GET, &format!("http://{address}{path}"), &[], None)
            .await;
        answer.body.as_str().map(str::to_owned).unwrap_or_default()
    }

    async fn count_orders(&self) -> i64 {
        let url = format!(
            "sqlite://{}?mode=ro",
            self.data_dir.path().join("order.db").display()
        );
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("order database opens");
        // Orders are event-sourced: one `OrderPlaced` per order stored.
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM eventstore_events WHERE event_type = 'OrderPlaced'",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        pool.close().await;
        count
    }

    /// Sends `signal` and waits (at most 20 s) for the supervisor to exit; returns its success.
    fn stop(&mut self, signal: Signal) -> bool {
        let pid = Pid::from_raw(self.supervisor.id() as i32);
        kill(pid, signal).expect("signal");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.supervisor.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor did not stop within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if self.supervisor.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.supervisor.id() as i32), Signal::SIGTERM);
            let _ = self.supervisor.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- system log ---\n{}",
                tail(&self.data_dir.path().join("system.log"))
            );
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn order(customer: &str, sku: &str, quantity: i64) -> Value {
    json!({
        "customer_id": customer,
        "items": [{"sku": sku, "quantity": quantity}],
        "ship_to": {"name": "Alice Martin", "street": "1 rue de la Paix", "city": "Paris", "postal_code": "75002", "country": "FR"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_through_the_gateway_is_stored_and_readable() {
    let system = System::start(&[]);

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

    // Every process serves its probes and Prometheus metrics; the gateway's count what it did.
    for probe in ["/livez", "/readyz", "/startupz"] {
        assert_eq!(system.get(probe).await.status, StatusCode::OK, "{probe}");
    }
    let metrics = system.get("/metrics").await;
    let text = metrics.body.as_str().expect("text exposition");
    assert!(
        text.lines()
            .any(|l| l.starts_with("http_server_requests_total")
                && l.contains("route=\"/v1/{*path}\"")
                && l.contains("status=\"202\"")),
        "{text}"
    );
    assert!(
        text.contains("http_server_request_duration_seconds_bucket"),
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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let list = system.get("/v1/orders?customer_id=alice").await;
        assert_eq!(list.status, StatusCode::OK);
        if list.body["orders"][0]["status"] == "APPROVED" {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the read model caught up: {}",
            list.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.body["orders"][0]["order_id"], id.as_str());
    // `flotilla projections rebuild order` while the system runs: the same rows after.
    let rebuild = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["projections", "rebuild", "order", "--data-dir"])
        .arg(system.data_dir.path())
        .output()
        .expect("flotilla projections rebuild runs");
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
    let metrics = system.get_from("order", "/metrics").await;
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
    let rejected = carols.body;
    assert_eq!(rejected["status"], "REJECTED", "{rejected}");
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("credit limit")),
        "{rejected}"
    );

    // `flotilla check`: every invariant holds, every order ended (the saga of the last order
    // ended before its answer).
    let check = |settled: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(["check", "--json", "--data-dir"])
            .arg(system.data_dir.path());
        if settled {
            command.arg("--settled");
        }
        command.output().expect("flotilla check runs")
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
    let payment_db = system.data_dir.path().join("payment.db");
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
    let system = System::start(&[]);
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
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            b"{\"customer_id\": ".to_vec(),
            &json,
            StatusCode::BAD_REQUEST,
            "malformed-json",
        ),
        (
            "missing field",
            without_ship_to,
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "unknown field",
            with("coupon", json!("FREE")),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "quantity as text",
            with("items.0.quantity", json!("two")),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "quantity 0",
            with("items.0.quantity", json!(0)),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
        ),
        (
            "negative quantity",
            with("items.0.quantity", json!(-5)),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
        ),
        (
            "absurd quantity",
            with("items.0.quantity", json!(1_000_000_000)),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
        ),
        (
            "quantity beyond i64",
            with("items.0.quantity", json!(1e30)),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            "no items",
            with("items", json!([])),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
        ),
        (
            "unknown SKU",
            with("items.0.sku", json!("NOPE-404")),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-sku",
        ),
        (
            "bad country",
            with("ship_to.country", json!("France")),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
        ),
        (
            "empty customer",
            with("customer_id", json!("")),
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
        ),
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

fn assert_problem(name: &str, answer: &Answer, kind: &str) {
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{name}"
    );
    assert_eq!(
        answer.body["type"],
        format!("/problems/{kind}"),
        "{name}: {:?}",
        answer.body
    );
    assert_eq!(answer.body["status"], answer.status.as_u16(), "{name}");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{name}"
    );
    assert!(
        answer.body["request_id"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_rotation_within_two_seconds_while_orders_keep_succeeding() {
    let system = System::start(&["--scale", "inventory=2"]);
    let inventory = system.instances("inventory").await;
    assert_eq!(inventory.len(), 2, "{inventory:?}");
    let log = std::fs::read_to_string(system.data_dir.path().join("system.log")).expect("log");
    assert!(
        !log.contains("restarting"),
        "a child crashed while two instances of one service started together"
    );
    let victim = &inventory[0];
    let victim_id = victim["id"].as_str().expect("id").to_owned();
    let pid: i32 = victim["metadata"]["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("pid");

    // Traffic runs on its own task while the registry is watched closely on this one, so that
    // slow requests on a loaded machine cannot blur the measurement.
    let traffic = {
        let gateway = system.gateway.clone();
        let http = system.http.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let probe = System::client_only(gateway, http);
            let mut orders = 0;
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                // Orders (order → inventory) and catalog reads (gateway → inventory).
                let placed = probe.post_order(&order("alice", "CB-005", 1), &[]).await;
                assert_eq!(
                    placed.status,
                    StatusCode::ACCEPTED,
                    "an order failed after the kill: {:?}",
                    placed.body
                );
                let product = probe.get("/v1/products/CB-005").await;
                assert_eq!(
                    product.status,
                    StatusCode::OK,
                    "a catalog read failed after the kill: {:?}",
                    product.body
                );
                orders += 1;
            }
            orders
        });
        (stop, task)
    };

    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
    let killed = Instant::now();
    let mut out_of_rotation = None;
    let gone = loop {
        let instances = system.instances("inventory").await;
        let victim_now = instances.iter().find(|i| i["id"] == victim_id.as_str());
        if out_of_rotation.is_none() && victim_now.is_none_or(|i| i["status"] != "passing") {
            out_of_rotation = Some(killed.elapsed());
        }
        if victim_now.is_none() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the dead instance is still registered after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let out_of_rotation = out_of_rotation.expect("measured");
    // Let traffic run a little longer, then collect it (a failed request fails the task).
    tokio::time::sleep(Duration::from_millis(300)).await;
    traffic.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let orders = traffic
        .1
        .await
        .expect("every order and catalog read succeeded");
    eprintln!(
        "dead instance out of rotation after {out_of_rotation:?}, evicted after {gone:?}; {orders} orders placed meanwhile"
    );
    assert!(
        out_of_rotation < Duration::from_secs(2),
        "out of rotation only after {out_of_rotation:?}"
    );
    assert!(gone < Duration::from_secs(2), "evicted only after {gone:?}");
    assert!(orders > 0);

    // The supervisor restarts the killed instance, says so, and the new one registers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let passing = system
            .instances("inventory")
            .await
            .iter()
            .filter(|i| i["status"] == "passing" && i["id"] != victim_id.as_str())
            .count();
        if passing == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed instance was not replaced within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(system.data_dir.path().join("system.log")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("\"process\":\"supervisor\"") && l.contains("restarting")),
        "the restart was not reported"
    );
    assert!(
        log.contains("\"process\":\"inventory.2\""),
        "children's lines are tagged with their process"
    );
}

/// The pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> HashSet<i32> {
    let mut children = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent) {
            children.insert(pid);
        }
    }
    children
}

fn alive(pid: i32) -> bool {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    match std::fs::read_to_string(path) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until_dead(pids: &HashSet<i32>, within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_supervisor_leaves_no_process_behind() {
    // SIGINT is what Ctrl-C sends; SIGTERM is what service managers send.
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut system = System::start(&["--scale", "payment=2"]);
        let children = children_of(system.supervisor.id());
        assert_eq!(
            children.len(),
            7,
            "registry, gateway, 2 payment and 3 other services: {children:?}"
        );

        // `flotilla status` lists what runs, from the running system's data directory.
        let status = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("status")
            .arg("--data-dir")
            .arg(system.data_dir.path())
            .output()
            .expect("flotilla status runs");
        assert!(status.status.success());
        let table = String::from_utf8_lossy(&status.stdout);
        for service in ["gateway", "inventory", "order", "payment", "shipping"] {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(service) && l.contains("passing")),
                "{service}: {table}"
            );
        }
        assert_eq!(
            table.lines().filter(|l| l.starts_with("payment")).count(),
            2,
            "{table}"
        );

        assert!(
            system.stop(signal),
            "the supervisor exits with success on {signal:?}"
        );
        let survivors = wait_until_dead(&children, Duration::from_secs(1));
        assert!(
            survivors.is_empty(),
            "processes left behind after {signal:?}: {survivors:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stop_on_their_own_when_the_supervisor_is_killed() {
    let system = System::start(&[]);
    let children = children_of(system.supervisor.id());
    assert_eq!(children.len(), 6, "{children:?}");
    kill(
        Pid::from_raw(system.supervisor.id() as i32),
        Signal::SIGKILL,
    )
    .expect("kill -9");
    let survivors = wait_until_dead(&children, Duration::from_secs(15));
    assert!(survivors.is_empty(), "processes left behind: {survivors:?}");
}

/// The sum of a counter's samples whose labels contain every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_breaker_opens_on_a_failing_upstream_fails_fast_and_recovers() {
    let system = System::start_with(
        &[],
        &[
            ("FLOTILLA_FAULT_INJECTION", "true"),
            ("FLOTILLA_BREAKER__MINIMUM_CALLS", "5"),
            ("FLOTILLA_BREAKER__WAIT_IN_OPEN_MS", "1000"),
            ("FLOTILLA_BREAKER__WAIT_MULTIPLIER", "1.0"),
            ("FLOTILLA_BREAKER__HALF_OPEN_PERMITS", "2"),
            ("FLOTILLA_BREAKER__SUCCESS_THRESHOLD", "2"),
        ],
    );
    let inventory = system.instances("inventory").await;
    let address = inventory[0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let upstream_hits = || async {
        let metrics = system
            .call(Method::GET, &format!("http://{address}/metrics"), &[], None)
            .await;
        let text = metrics.body.as_str().unwrap_or_default().to_owned();
        sample(
            &text,
            "http_server_requests_total",
            &["route=\"/v1/products/{sku}\""],
        )
    };
    let gateway_metrics = || async {
        system
            .get("/metrics")
            .await
            .body
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Inventory fails every request.
    let faults = system
        .call(
            Method::PUT,
            &format!("http://{address}/admin/faults"),
            &[("content-type", "application/json")],
            Some(br#"{"failure_percent": 100}"#.to_vec()),
        )
        .await;
    assert_eq!(faults.status, StatusCode::OK, "{:?}", faults.body);

    // The first `minimum_calls` attempts reach it and fail (a GET is retried, so a request may
    // make several), then the breaker opens.
    let mut faults_seen = 0;
    for n in 0.. {
        let answer = system.get("/v1/products/KB-001").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "call {n}");
        match answer.body["type"].as_str() {
            Some("/problems/injected-fault") => faults_seen += 1,
            Some("/problems/circuit-open") => break,
            other => panic!("call {n}: unexpected {other:?}"),
        }
        assert!(n < 10, "the breaker did not open");
    }
    assert!(faults_seen >= 1, "retries hid every failure");
    assert_eq!(
        upstream_hits().await,
        5.0,
        "exactly minimum_calls attempts reached inventory"
    );

    // …then the breaker is open: calls fail fast, with Retry-After, without reaching inventory.
    for n in 0..20 {
        let answer = system.get("/v1/products/KB-001").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "call {n}");
        assert_eq!(
            answer.body["type"], "/problems/circuit-open",
            "call {n}: {:?}",
            answer.body
        );
        assert_eq!(answer.headers["retry-after"], "1", "call {n}");
    }
    assert_eq!(
        upstream_hits().await,
        5.0,
        "an open breaker let calls through"
    );
    let metrics = gateway_metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "resilience_breaker_state",
            &["breaker=\"inventory\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "resilience_breaker_transitions_total",
            &["breaker=\"inventory\"", "from=\"closed\"", "to=\"open\""]
        ),
        1.0
    );

    // The fault is removed; after the wait, trial calls go through and close the breaker.
    let cleared = system
        .call(
            Method::DELETE,
            &format!("http://{address}/admin/faults"),
            &[],
            None,
        )
        .await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = system.get("/v1/products/KB-001").await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert_eq!(
            answer.body["type"], "/problems/circuit-open",
            "{:?}",
            answer.body
        );
        assert!(
            Instant::now() < deadline,
            "the breaker never let a trial call through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = system.get("/v1/products/KB-001").await;
    assert_eq!(second.status, StatusCode::OK, "the second trial");
    let metrics = gateway_metrics().await;
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let count = sample(
            &metrics,
            "resilience_breaker_transitions_total",
            &[
                "breaker=\"inventory\"",
                &format!("from=\"{from}\""),
                &format!("to=\"{to}\""),
            ],
        );
        assert_eq!(count, 1.0, "{from} → {to}: {metrics}");
    }
    assert_eq!(
        sample(
            &metrics,
            "resilience_breaker_state",
            &["breaker=\"inventory\""]
        ),
        0.0,
        "closed again"
    );
    assert_eq!(
        upstream_hits().await,
        7.0,
        "5 failures and 2 trials reached inventory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_while_the_breaker_is_open_are_replayed_in_order_exactly_once() {
    let system = System::start_with(
        &[],
        &[
            ("FLOTILLA_FAULT_INJECTION", "true"),
            ("FLOTILLA_QUEUE_FOR_LATER", "[\"order\"]"),
            ("FLOTILLA_BREAKER__MINIMUM_CALLS", "5"),
            ("FLOTILLA_BREAKER__WAIT_IN_OPEN_MS", "1000"),
            ("FLOTILLA_BREAKER__WAIT_MULTIPLIER", "1.0"),
            ("FLOTILLA_BREAKER__HALF_OPEN_PERMITS", "1"),
            ("FLOTILLA_BREAKER__SUCCESS_THRESHOLD", "1"),
        ],
    );
    let order_service = system.instances("order").await;
    let address = order_service[0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let system = &system;
    let faults_url = format!("http://{address}/admin/faults");
    let faults_url = &faults_url;
    let set_faults = |percent: u8| async move {
        let body = format!("{{\"failure_percent\": {percent}}}").into_bytes();
        system
            .call(
                Method::PUT,
                faults_url,
                &[("content-type", "application/json")],
                Some(body),
            )
            .await
    };
    assert_eq!(set_faults(100).await.status, StatusCode::OK);

    // Reads open the breaker (a read is never queued).
    for n in 0.. {
        let answer = system
            .get("/v1/orders/01a215f9-0000-7000-8000-000000000000")
            .await;
        if answer.body["type"] == "/problems/circuit-open" {
            break;
        }
        assert!(n < 10, "the breaker did not open: {:?}", answer.body);
    }

    // Writes with an idempotency key are queued: 202 and a place to look.
    let mut queued = Vec::new();
    for n in 0..3 {
        let key = format!("deferred-{n}");
        let answer = system
            .post_order(&order("bob", "LS-008", n + 1), &[("idempotency-key", &key)])
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
        assert_eq!(answer.body["status"], "QUEUED");
        let location = answer.headers["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert_eq!(system.get(&location).await.body["status"], "QUEUED");
        queued.push(location);
    }
    // A write without a key is not queued: it cannot be replayed safely.
    let unkeyed = system.post_order(&order("bob", "LS-008", 1), &[]).await;
    assert_eq!(unkeyed.body["type"], "/problems/circuit-open");
    assert_eq!(system.count_orders().await, 0);

    // The service recovers: the queue drains, in order, once.
    assert_eq!(set_faults(0).await.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut replayed = Vec::new();
    for location in &queued {
        loop {
            let view = system.get(location).await;
            if view.body["status"] == "REPLAYED" {
                assert_eq!(view.body["response"]["status"], 202, "{:?}", view.body);
                replayed.push(
                    view.body["response"]["body"]["order_id"]
                        .as_str()
                        .expect("order id")
                        .to_owned(),
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{location} was not replayed in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut sorted = replayed.clone();
    sorted.sort();
    assert_eq!(
        replayed, sorted,
        "replayed in the order queued (order ids are time-ordered UUIDv7)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        system.count_orders().await,
        3,
        "each queued write took effect exactly once"
    );
    for (n, id) in replayed.iter().enumerate() {
        let stored = system.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(stored.body["items"][0]["quantity"], n as i64 + 1);
    }
}

/// The pid of the first registered instance of `service`.
async fn pid_of(system: &System, service: &str) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let instances = system.instances(service).await;
        if let Some(pid) = instances
            .first()
            .and_then(|i| i["metadata"]["pid"].as_str())
            .and_then(|p| p.parse().ok())
        {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service} is registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_survive_kill_9_of_the_orchestrator_and_of_each_participant() {
    sagas_survive_kill_9("orchestration", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn choreographed_sagas_survive_kill_9_of_each_service() {
    sagas_survive_kill_9("choreography", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_over_nats_survive_kill_9_of_each_service_in_both_styles() {
    let Some(nats) = NatsStream::open().await else {
        return;
    };
    for style in ["orchestration", "choreography"] {
        let stream = nats.unique(style);
        sagas_survive_kill_9(style, &stream.environment()).await;
        stream.delete(&nats).await;
    }
}

/// A stream of a test run's own on the machine's NATS server (CI: required; elsewhere the test
/// skips without one).
struct NatsStream {
    url: String,
    client: async_nats::Client,
}

/// The settings that put a system on stream `stream` with subject prefix `prefix`.
struct StreamSettings {
    url: String,
    stream: String,
    prefix: String,
}

impl NatsStream {
    async fn open() -> Option<Self> {
        let url = std::env::var("FLOTILLA_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        match async_nats::connect(url.as_str()).await {
            Ok(client) => Some(Self { url, client }),
            Err(error) if std::env::var_os("CI").is_some() => {
                panic!("NATS at {url} is required in CI and unreachable: {error}")
            }
            Err(error) => {
                eprintln!("skipping: NATS at {url} is unreachable ({error})");
                None
            }
        }
    }

    fn unique(&self, tag: &str) -> StreamSettings {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        StreamSettings {
            url: self.url.clone(),
            stream: format!("KILL_{tag}_{unique}").to_uppercase(),
            prefix: format!("kill{unique}"),
        }
    }
}

impl StreamSettings {
    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLOTILLA_MESSAGING__TRANSPORT", "nats".to_owned()),
            ("FLOTILLA_MESSAGING__NATS_URL", self.url.clone()),
            ("FLOTILLA_MESSAGING__NATS_STREAM", self.stream.clone()),
            (
                "FLOTILLA_MESSAGING__NATS_SUBJECT_PREFIX",
                self.prefix.clone(),
            ),
        ]
    }

    async fn delete(&self, nats: &NatsStream) {
        let jetstream = async_nats::jetstream::new(nats.client.clone());
        if let Err(error) = jetstream.delete_stream(&self.stream).await {
            eprintln!("could not delete test stream {}: {error}", self.stream);
        }
    }
}

/// 200 orders in flight in saga style `style` (the setting, for every order), while each
/// service is killed with SIGKILL in turn; `extra` settings choose the transport.
async fn sagas_survive_kill_9(style: &str, extra: &[(&'static str, String)]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut environment = vec![("FLOTILLA_SAGA_STYLE", style)];
    environment.extend(extra.iter().map(|(name, value)| (*name, value.as_str())));
    let system = System::start_with(&[], &environment);
    const ORDERS: usize = 200;
    const WORKERS: usize = 8;
    // 200 orders from 8 clients at once, each pausing 150 ms between its orders so that the
    // kills below land while sagas are in flight: alice's and bob's, carol's (credit refused)
    // and some to AQ (destination refused), one line each. The clients run at most a little
    // ahead of the next kill (`allowed`): orders keep being placed while a service restarts
    // (the order service prices from its cached catalog even while the inventory is down), so
    // without the gate they could all be placed before the last kill.
    let placed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ahead = ORDERS / 12;
    let allowed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(ORDERS / 6 + ahead));
    let placing: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let probe = System::client_only(system.gateway.clone(), system.http.clone());
            let (placed, allowed) = (placed.clone(), allowed.clone());
            tokio::spawn(async move {
                let mut accepted = 0;
                for n in (worker..ORDERS).step_by(WORKERS) {
                    while placed.load(std::sync::atomic::Ordering::SeqCst)
                        >= allowed.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let mut body = match n % 5 {
                        0 => order("carol", "MS-002", 1),
                        1 => order("bob", "KB-001", 1),
                        _ => order("alice", "MS-002", 1),
                    };
                    if n % 7 == 0 {
                        body["ship_to"]["country"] = json!("AQ");
                    }
                    // A client that retries with its idempotency key while the services are
                    // down (the gateway's breaker fails fast meanwhile): each order once.
                    let key = format!("crash-{n}");
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    loop {
                        let answer = probe.post_order(&body, &[("idempotency-key", &key)]).await;
                        if answer.status == StatusCode::ACCEPTED {
                            accepted += 1;
                            placed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            break;
                        }
                        assert!(
                            answer.status.is_server_error(),
                            "only unavailability may refuse an order: {} {}",
                            answer.status,
                            answer.body
                        );
                        assert!(std::time::Instant::now() < deadline, "order {n} accepted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                accepted
            })
        })
        .collect();
    // While they flow: kill -9 the order service (the orchestrator), then each participant,
    // each when a sixth more of the orders was accepted; the supervisor restarts each one.
    let mut placed_at_kill = Vec::new();
    for (n, service) in ["order", "inventory", "payment", "shipping"]
        .into_iter()
        .enumerate()
    {
        let threshold = (n + 1) * ORDERS / 6;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while placed.load(std::sync::atomic::Ordering::SeqCst) < threshold {
            assert!(
                std::time::Instant::now() < deadline,
                "{threshold} orders placed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        placed_at_kill.push((service, placed.load(std::sync::atomic::Ordering::SeqCst)));
        let pid = pid_of(&system, service).await;
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
        // Until the replacement registers, the old instance may still be listed.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pid_of(&system, service).await == pid {
            assert!(std::time::Instant::now() < deadline, "{service} came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The clients may go on to a little past the next kill's threshold (all of the orders
        // after the last kill).
        let next = if n == 3 {
            ORDERS
        } else {
            (n + 2) * ORDERS / 6 + ahead
        };
        allowed.store(next, std::sync::atomic::Ordering::SeqCst);
    }
    let mut accepted = 0;
    for worker in placing {
        accepted += worker.await.expect("client");
    }
    assert!(
        accepted >= ORDERS / 2,
        "most orders were accepted: {accepted}"
    );
    eprintln!("{style}: orders accepted when each service was killed: {placed_at_kill:?}");
    assert!(
        placed_at_kill.iter().all(|(_, placed)| *placed < ORDERS),
        "every kill landed while orders were still being placed: {placed_at_kill:?}"
    );

    // Every order ends and every invariant holds, once the sagas have recovered.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let report = loop {
        let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["check", "--settled", "--json", "--data-dir"])
            .arg(system.data_dir.path())
            .output()
            .expect("flotilla check runs");
        let report: Value =
            serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).expect("a JSON report");
        if output.status.success() {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not settled: {report}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("{style} {extra:?}: after kill -9 of every service: {report}");
    let counts = &report["orders"];
    let total: u64 = counts
        .as_object()
        .expect("counts")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(
        total >= accepted as u64,
        "every accepted order is there: {report}"
    );
    assert!(counts["APPROVED"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(counts["REJECTED"].as_u64().unwrap_or(0) > 0, "{report}");
    let log = std::fs::read_to_string(system.data_dir.path().join("system.log")).expect("log");
    assert!(
        log.contains("restarting"),
        "the supervisor restarted the killed services"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_over_nats_jetstream_too() {
    let url = std::env::var("FLOTILLA_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = match async_nats::connect(url.as_str()).await {
        Ok(client) => client,
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("NATS at {url} is required in CI and unreachable: {error}")
        }
        Err(error) => {
            eprintln!("skipping: NATS at {url} is unreachable ({error})");
            return;
        }
    };
    // A stream of this run's own, so that nothing of another run is delivered here.
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("SYSTEM_{unique}");
    let system = System::start_with(
        &[],
        &[
            ("FLOTILLA_MESSAGING__TRANSPORT", "nats"),
            ("FLOTILLA_MESSAGING__NATS_URL", &url),
            ("FLOTILLA_MESSAGING__NATS_STREAM", &stream),
            (
                "FLOTILLA_MESSAGING__NATS_SUBJECT_PREFIX",
                &format!("system{unique}"),
            ),
        ],
    );
    every_path_in_both_styles(&system).await;
    drop(system);
    let jetstream = async_nats::jetstream::new(client);
    if let Err(error) = jetstream.delete_stream(&stream).await {
        eprintln!("could not delete test stream {stream}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_saga_styles_place_reject_and_cancel_orders_through_the_gateway() {
    let system = System::start(&[]);
    every_path_in_both_styles(&system).await;
}

/// In each style (chosen per request with `X-Saga-Style`): an order that passes, one over the
/// credit limit, one to an unserviceable destination, the cancellation of the approved one and
/// a refused style; then `flotilla check --settled`.
async fn every_path_in_both_styles(system: &System) {
    let bad = system
        .post_order(&order("alice", "KB-001", 1), &[("x-saga-style", "both")])
        .await;
    assert_problem("an unknown saga style", &bad, "invalid-saga-style");
    for style in ["orchestration", "choreography"] {
        let wait = [("prefer", "wait=8"), ("x-saga-style", style)];
        let approved = system.post_order(&order("alice", "KB-001", 1), &wait).await;
        assert_eq!(
            approved.status,
            StatusCode::OK,
            "{style}: {}",
            approved.body
        );
        assert_eq!(approved.body["status"], "APPROVED", "{style}");
        assert_eq!(approved.headers["x-saga-style"], style);
        let credit = system.post_order(&order("carol", "KB-001", 1), &wait).await;
        assert_eq!(
            credit.body["status"], "REJECTED",
            "{style}: {}",
            credit.body
        );
        assert!(
            credit.body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("credit limit")),
            "{style}: {}",
            credit.body
        );
        let mut far = order("bob", "MS-002", 2);
        far["ship_to"]["country"] = json!("AQ");
        let far = system.post_order(&far, &wait).await;
        assert_eq!(far.body["status"], "REJECTED", "{style}: {}", far.body);
        assert!(
            far.body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("Antarctica")),
            "{style}: {}",
            far.body
        );
        let short = system
            .post_order(&order("alice", "MN-003", 1000), &wait)
            .await;
        assert_eq!(short.body["status"], "REJECTED", "{style}: {}", short.body);

        let id = approved.body["order_id"].as_str().expect("order id");
        let cancelled = system
            .post(
                &format!("/v1/orders/{id}/cancel"),
                r#"{"reason": "changed my mind"}"#,
                &wait,
            )
            .await;
        assert_eq!(
            cancelled.status,
            StatusCode::OK,
            "{style}: {}",
            cancelled.body
        );
        assert_eq!(cancelled.body["status"], "CANCELLED", "{style}");
        assert_eq!(cancelled.body["reason"], "changed my mind");
        let again = system
            .post(&format!("/v1/orders/{id}/cancel"), "", &wait)
            .await;
        assert_eq!(again.status, StatusCode::OK, "cancelling twice is harmless");
        let rejected = far.body["order_id"].as_str().expect("order id");
        let refused = system
            .post(&format!("/v1/orders/{rejected}/cancel"), "", &wait)
            .await;
        assert_problem(
            "cancelling a rejected order",
            &refused,
            "order-not-cancellable",
        );

        // The fire-and-forget notifications arrive (no one waits for them).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let list = system.get(&format!("/v1/orders/{id}/notifications")).await;
            let kinds: Vec<&str> = list.body["notifications"]
                .as_array()
                .map(|all| all.iter().filter_map(|n| n["kind"].as_str()).collect())
                .unwrap_or_default();
            if kinds == ["OrderConfirmed", "OrderCancelled"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{style}: notifications {}",
                list.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["check", "--settled", "--data-dir"])
        .arg(system.data_dir.path())
        .output()
        .expect("flotilla check runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// `flotilla check` on a live system judges only the orders that stood still while it read the
/// four databases: while sagas run in both styles (approvals, both natural failures,
/// cancellations), every live report holds, judges orders and counts others in flight. It used
/// to read the databases one after the other and report every order that moved in between (50
/// to 90 violations a run at 300 orders/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_check_finds_nothing_wrong_while_sagas_run() {
    let system = System::start(&[]);
    // Six clients wait for each saga's end (and cancel some approved orders); four more place
    // orders without waiting, so that many sagas are in flight at once.
    const WAITING: usize = 6;
    const EACH: usize = 25;
    const HURRIED: usize = 4;
    let mut clients: Vec<_> = (0..WAITING)
        .map(|worker| {
            let client = System::client_only(system.gateway.clone(), system.http.clone());
            tokio::spawn(async move {
                for n in 0..EACH {
                    let style = if (worker + n) % 2 == 0 {
                        "orchestration"
                    } else {
                        "choreography"
                    };
                    let mut body = match n % 5 {
                        0 => order("carol", "MS-002", 1),
                        _ => order("alice", "MS-002", 1),
                    };
                    if n % 7 == 3 {
                        body["ship_to"]["country"] = json!("AQ");
                    }
                    let headers = [("prefer", "wait=8"), ("x-saga-style", style)];
                    let placed = client.post_order(&body, &headers).await;
                    assert_eq!(placed.status, StatusCode::OK, "{}", placed.body);
                    if n % 3 == 1 && placed.body["status"] == "APPROVED" {
                        let id = placed.body["order_id"].as_str().expect("order id");
                        let cancelled = client
                            .post(&format!("/v1/orders/{id}/cancel"), "", &headers)
                            .await;
                        assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
                    }
                }
            })
        })
        .collect();
    clients.extend((0..HURRIED).map(|worker| {
        let client = System::client_only(system.gateway.clone(), system.http.clone());
        tokio::spawn(async move {
            for n in 0..2 * EACH {
                let style = if (worker + n) % 2 == 0 {
                    "orchestration"
                } else {
                    "choreography"
                };
                let placed = client
                    .post_order(&order("bob", "KB-001", 1), &[("x-saga-style", style)])
                    .await;
                assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }));
    let data_dir = system.data_dir.path().to_owned();
    let running = || clients.iter().any(|client| !client.is_finished());
    let mut reports = Vec::new();
    while running() {
        let dir = data_dir.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .args(["check", "--json", "--data-dir"])
                .arg(dir)
                .output()
                .expect("flotilla check runs")
        })
        .await
        .expect("check");
        let report: Value =
            serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).expect("a JSON report");
        assert_eq!(report["violations"], json!([]), "a live check: {report}");
        assert!(output.status.success(), "{report}");
        reports.push(report);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for client in clients {
        client.await.expect("client");
    }
    let judged = |report: &Value| {
        let all: u64 = report["orders"]
            .as_object()
            .map(|counts| counts.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        all.saturating_sub(report["in_flight"].as_u64().unwrap_or(0))
    };
    assert!(
        reports
            .iter()
            .any(|report| report["in_flight"].as_u64().unwrap_or(0) > 0 && judged(report) > 0),
        "some live check ran while orders were in flight and judged others: {reports:?}"
    );
    // The sagas of the orders placed without waiting end soon after.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let settled = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["check", "--settled", "--json", "--data-dir"])
            .arg(&data_dir)
            .output()
            .expect("flotilla check runs");
        let report: Value =
            serde_json::from_str(&String::from_utf8_lossy(&settled.stdout)).expect("a JSON report");
        if settled.status.success() {
            break report;
        }
        assert!(Instant::now() < deadline, "still not settled: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report["in_flight"], 0, "{report}");
    for status in ["APPROVED", "REJECTED", "CANCELLED"] {
        assert!(
            report["orders"][status].as_u64().unwrap_or(0) > 0,
            "{report}"
        );
    }
}

/// Choreographed, through the real processes: the payment service stalls (`SIGSTOP`) while an
/// order waits for its authorization; at the order's deadline (1.5 s here) the order service
/// expires it and shipping refuses it; once the payment service runs again it voids nothing
/// and refuses the late authorization, the stock is released and the order ends REJECTED for
/// its deadline, every invariant holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_order_expires_while_a_participant_stalls() {
    let system = System::start_with(
        &[],
        &[
            ("FLOTILLA_SAGA_STYLE", "choreography"),
            ("FLOTILLA_CHOREOGRAPHY_DEADLINE_MS", "1500"),
        ],
    );
    let wait = [("prefer", "wait=8")];
    let first = system.post_order(&order("alice", "MS-002", 1), &wait).await;
    assert_eq!(first.body["status"], "APPROVED", "{}", first.body);

    let payment = pid_of(&system, "payment").await;
    kill(Pid::from_raw(payment), Signal::SIGSTOP).expect("SIGSTOP");
    let placed = system.post_order(&order("alice", "MS-002", 1), &[]).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let order_id = placed.body["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    // Shipping refuses the expired order while the payment service sleeps.
    let shipping = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        system.data_dir.path().join("shipping.db").display()
    ))
    .await
    .expect("shipping database");
    let deadline = Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        let refusal: Option<String> =
            sqlx::query_scalar("SELECT reason FROM shipment_refusals WHERE order_id = $1")
                .bind(&order_id)
                .fetch_optional(&shipping)
                .await
                .expect("refusals");
        if let Some(refusal) = refusal {
            break refusal;
        }
        assert!(Instant::now() < deadline, "the order expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shipping.close().await;
    assert!(refusal.contains("did not complete within"), "{refusal}");
    let pending = system.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(
        pending.body["status"], "PENDING",
        "rejected only once the payment has answered: {}",
        pending.body
    );

    kill(Pid::from_raw(payment), Signal::SIGCONT).expect("SIGCONT");
    let ended = system.final_state(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(ended["status"], "REJECTED", "{ended}");
    assert!(
        ended["reason"]
            .as_str()
            .is_some_and(|r| r.contains("did not complete within")),
        "{ended}"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["check", "--settled", "--data-dir"])
        .arg(system.data_dir.path())
        .output()
        .expect("flotilla check runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Every service prunes its published outbox rows once past `messaging.outbox_retention_ms`
/// (half a second here): after a few sagas, no service's outbox keeps a published row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_are_pruned_after_their_retention() {
    let system = System::start_with(&[], &[("FLOTILLA_MESSAGING__OUTBOX_RETENTION_MS", "500")]);
    for style in ["orchestration", "choreography"] {
        let placed = system
            .post_order(
                &order("alice", "MS-002", 1),
                &[("prefer", "wait=8"), ("x-saga-style", style)],
            )
            .await;
        assert_eq!(placed.body["status"], "APPROVED", "{}", placed.body);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for service in ["order", "inventory", "payment", "shipping"] {
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}?mode=ro",
            system
                .data_dir
                .path()
                .join(format!("{service}.db"))
                .display()
        ))
        .await
        .expect("database");
        loop {
            let published: i64 =
                sqlx::query_scalar("SELECT COUNT(published_at) FROM messaging_outbox")
                    .fetch_one(&pool)
                    .await
                    .expect("outbox");
            if published == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{service}: {published} published rows still kept"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ever: i64 =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'messaging_outbox'")
                .fetch_one(&pool)
                .await
                .expect("sequence");
        assert!(ever > 0, "{service} published messages");
        pool.close().await;
    }
}

/// `flotilla up` gives its services a push token of its own start: a message pushed straight
/// to a service's endpoint without it is refused (401, problem+json) and changes nothing, while
/// the services' own pushes carry it and sagas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_systems_own_services_may_push_messages() {
    let system = System::start(&[]);
    let placed = system
        .post_order(&order("alice", "MS-002", 1), &[("prefer", "wait=8")])
        .await;
    assert_eq!(placed.body["status"], "APPROVED", "{}", placed.body);
    let address = system.instances("inventory").await[0]["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    // A forged command: reserve the whole stock of a product for an order nobody placed.
    let forged = json!({
        "id": "01a219f0-0000-7000-8000-000000000001",
        "topic": "inventory.commands",
        "message_type": "ReserveStock",
        "schema_version": 1,
        "key": "forged",
        "reply_to": "order.saga-replies",
        "payload": { "order_id": "forged", "lines": [{ "sku": "MS-002", "quantity": 1 }] }
    });
    for authorization in [None, Some("Bearer guessed")] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = authorization {
            headers.push(("authorization", authorization));
        }
        let answer = system
            .call(
                Method::POST,
                &format!("http://{address}/v1/messages/inventory"),
                &headers,
                Some(forged.to_string().into_bytes()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
    let inventory = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        system.data_dir.path().join("inventory.db").display()
    ))
    .await
    .expect("inventory database");
    let forged_rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM reservations WHERE order_id = 'forged'")
            .fetch_one(&inventory)
            .await
            .expect("reservations");
    assert_eq!(forged_rows, 0, "the forged command changed nothing");
    inventory.close().await;
}
