//! Who may reach what, in the running system: the services refuse a direct call without a
//! verified token, a customer reaches their own orders, payments, shipments and account only
//! (another's answer 404, as an unknown id), orders for themselves only (403), an order for a
//! customer without an account is refused with nothing stored, and the registry takes no
//! registration without a platform token.

use std::time::Duration;

use flotilla_system_tests::{Gateway, System, assert_problem, eventually, order, token};
use http::{Method, StatusCode};
use serde_json::Value;

/// The ids in an order list.
fn ids(list: &Value) -> Vec<String> {
    list["orders"]
        .as_array()
        .map(|orders| {
            orders
                .iter()
                .filter_map(|o| o["order_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The length of a participant's `items` list.
fn items(answer: &Value) -> usize {
    answer["items"].as_array().map_or(usize::MAX, Vec::len)
}

/// Waits until the admin's order list shows `id`; returns the list's ids.
async fn listed(system: &System, id: &str) -> Vec<String> {
    eventually(
        Duration::from_secs(10),
        "the order in the read model",
        || async {
            let list = ids(&system.get("/v1/orders?limit=500").await.body);
            if list.iter().any(|listed| listed == id) {
                Ok(list)
            } else {
                Err(list.len())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_reach_their_own_data_only_and_services_refuse_anonymous_calls() {
    let system = System::start().await;
    let gateway = system.supervisor.gateway_url();
    let alice = Gateway::new(gateway.clone(), &token(system.data_dir(), "alice"));
    let bob = Gateway::new(gateway, &token(system.data_dir(), "bob"));

    // Alice orders for herself, without naming herself.
    let mut mine = order("alice", "KB-001", 1);
    mine.as_object_mut()
        .expect("an object")
        .remove("customer_id");
    let placed = alice.post_order(&mine, &[("prefer", "wait=8")]).await;
    assert_eq!(placed.status, StatusCode::OK, "{}", placed.body);
    assert_eq!(placed.body["status"], "APPROVED", "{}", placed.body);
    assert_eq!(placed.body["customer_id"], "alice");
    let id = placed.body["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    let before = listed(&system, &id).await;

    // She reads her order, its events, its payment, its shipment and her account.
    for path in [
        format!("/v1/orders/{id}"),
        format!("/v1/orders/{id}/events"),
        "/v1/accounts/alice".to_owned(),
    ] {
        let answer = alice.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    }
    assert_eq!(
        items(&alice.get(&format!("/v1/payments?order_id={id}")).await.body),
        1
    );
    assert_eq!(
        items(
            &alice
                .get(&format!("/v1/shipments?order_id={id}"))
                .await
                .body
        ),
        1
    );
    assert_eq!(ids(&alice.get("/v1/orders").await.body), vec![id.clone()]);

    // Bob gets nothing of hers: 404 as for an unknown id, empty lists, his account only.
    for path in [
        format!("/v1/orders/{id}"),
        format!("/v1/orders/{id}/events"),
        format!("/v1/orders/{id}/notifications"),
        "/v1/accounts/alice".to_owned(),
    ] {
        let answer = bob.get(&path).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            answer.body
        );
    }
    let cancel = bob.post(&format!("/v1/orders/{id}/cancel"), "", &[]).await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND, "{}", cancel.body);
    assert_eq!(
        items(&bob.get(&format!("/v1/payments?order_id={id}")).await.body),
        0
    );
    assert_eq!(
        items(&bob.get(&format!("/v1/shipments?order_id={id}")).await.body),
        0
    );
    assert_eq!(
        ids(&bob.get("/v1/orders?customer_id=alice").await.body),
        Vec::<String>::new()
    );
    let accounts = bob.get("/v1/accounts").await;
    assert_eq!(items(&accounts.body), 1, "{}", accounts.body);
    assert_eq!(accounts.body["items"][0]["customer_id"], "bob");
    let revenue = bob.get("/v1/orders/revenue").await;
    assert_eq!(revenue.status, StatusCode::FORBIDDEN, "{}", revenue.body);

    // Bob may not order for Alice; the admin may not order for a customer without an account.
    let for_alice = bob.post_order(&order("alice", "KB-001", 1), &[]).await;
    assert_problem(
        "an order for another customer",
        &for_alice,
        "not-your-customer-id",
    );
    assert_eq!(for_alice.status, StatusCode::FORBIDDEN);
    let unknown = system.post_order(&order("mallory", "KB-001", 1), &[]).await;
    assert_problem(
        "an order for an unknown customer",
        &unknown,
        "unknown-customer",
    );
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Nothing of that was stored, and Alice's order is as it was: a later order is listed
    // right after the ones before it.
    let later = bob.post_order(&order("bob", "MS-002", 1), &[]).await;
    assert_eq!(later.status, StatusCode::ACCEPTED, "{}", later.body);
    let later = later.body["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    let after = listed(&system, &later).await;
    assert_eq!(after.len(), before.len() + 1, "{before:?} → {after:?}");
    let unchanged = alice.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(unchanged.body["status"], "APPROVED");

    // Every service refuses a direct call without a verified token, and still answers its
    // probes.
    let catalog = system
        .call(
            Method::GET,
            &format!("{}/v1/registry/services", system.registry),
            &[],
            None,
        )
        .await;
    for (service, path) in [
        ("order", "/v1/orders"),
        ("payment", "/v1/accounts"),
        ("inventory", "/v1/products"),
        ("shipping", "/v1/shipments/refused-destinations"),
    ] {
        let address = catalog.body["services"][service][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("{service} is registered: {}", catalog.body));
        let url = format!("http://{address}{path}");
        for credential in ["", "Bearer not.a.token"] {
            let answer = system
                .call(Method::GET, &url, &[("authorization", credential)], None)
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{service} answered {credential:?} with {}",
                answer.body
            );
            assert!(answer.headers.contains_key("www-authenticate"), "{service}");
        }
        let probe = system
            .call(Method::GET, &format!("http://{address}/readyz"), &[], None)
            .await;
        assert_eq!(probe.status, StatusCode::OK, "{service}'s probe");
    }

    // `flotilla status --json`: the registry's address, and each instance's public and admin
    // addresses; an admin listener answers an admin, not a customer.
    let status = system.flotilla(&["status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["registry"]["address"], system.registry.as_str());
    let instances = status["instances"].as_array().expect("instances");
    for service in ["gateway", "order", "payment", "inventory", "shipping"] {
        let instance = instances
            .iter()
            .find(|i| i["service"] == service)
            .unwrap_or_else(|| panic!("{service} in {status}"));
        let (public, admin) = (
            instance["address"].as_str().expect("address"),
            instance["admin_address"].as_str().expect("admin address"),
        );
        assert_ne!(public, admin, "{service}");
        let faults = format!("http://{admin}/admin/faults");
        let metrics = format!("http://{admin}/metrics");
        let alices = format!("Bearer {}", token(system.data_dir(), "alice"));
        for (url, credential, expected) in [
            (&metrics, "", StatusCode::UNAUTHORIZED),
            (&metrics, alices.as_str(), StatusCode::FORBIDDEN),
            (&faults, alices.as_str(), StatusCode::FORBIDDEN),
        ] {
            let answer = system
                .call(Method::GET, url, &[("authorization", credential)], None)
                .await;
            assert_eq!(answer.status, expected, "{service} {url}: {}", answer.body);
        }
        let public_metrics = system
            .call(Method::GET, &format!("http://{public}/metrics"), &[], None)
            .await;
        assert_eq!(public_metrics.status, StatusCode::NOT_FOUND, "{service}");
        assert!(!system.metrics_of(service).await.is_empty(), "{service}");
    }

    // Nobody registers a fake instance: not without a token, not with a customer's.
    let fake = serde_json::json!({"service": "payment", "address": "127.0.0.1:9"}).to_string();
    let url = format!("{}/v1/registry/instances/payment-fake", system.registry);
    let alices = format!("Bearer {}", token(system.data_dir(), "alice"));
    for (credential, status) in [
        ("", StatusCode::UNAUTHORIZED),
        (alices.as_str(), StatusCode::FORBIDDEN),
    ] {
        let answer = system
            .call(
                Method::PUT,
                &url,
                &[
                    ("authorization", credential),
                    ("content-type", "application/json"),
                ],
                Some(fake.clone().into_bytes()),
            )
            .await;
        assert_eq!(answer.status, status, "{}", answer.body);
    }
    let after = system
        .call(
            Method::GET,
            &format!("{}/v1/registry/services", system.registry),
            &[],
            None,
        )
        .await;
    assert!(
        !after.body.to_string().contains("payment-fake"),
        "{}",
        after.body
    );
}
