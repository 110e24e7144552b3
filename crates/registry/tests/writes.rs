//! Who may write to the registry once it knows an identity provider: a platform process
//! registers, renews and removes its own instances only; nothing without a token, a token
//! without `registry:write`, or another holder's token changes anything.

use std::collections::BTreeMap;

use flotilla_kit::client::{self, Client};
use flotilla_registry::server::{Config, run};
use flotilla_testkit::TestIdp;
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Registry {
    url: String,
    http: Client,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn registry() -> Registry {
    let shutdown = CancellationToken::new();
    let idp = TestIdp::shared().serve(&shutdown).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let config = Config {
        identity: TestIdp::shared().identity(&idp),
        ..Config::default()
    };
    tokio::spawn(run(config, listener, shutdown.clone()));
    Registry {
        url,
        http: client::client(),
        _shutdown: shutdown.drop_guard(),
    }
}

impl Registry {
    /// `method` on `path` with the token of `who` (a seed file user or client; "" for none).
    async fn send(
        &self,
        who: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let token = (!who.is_empty())
            .then(|| HeaderValue::from_str(&TestIdp::shared().bearer(who)).expect("header"));
        let url = format!("{}{path}", self.url);
        let timeout = std::time::Duration::from_secs(5);
        // The registry may still be binding its routes: retry a refused connection briefly.
        for _ in 0..50 {
            match client::send_as(
                &self.http,
                method.clone(),
                &url,
                body,
                token.as_ref(),
                timeout,
            )
            .await
            {
                Ok((status, bytes)) => {
                    return (
                        status,
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    );
                }
                Err(error) if error.is_connect() => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(error) => panic!("{url}: {error}"),
            }
        }
        panic!("{url}: the registry never answered")
    }

    async fn register(
        &self,
        who: &str,
        id: &str,
        service: &str,
        address: &str,
    ) -> (StatusCode, Value) {
        let body = json!({
            "service": service,
            "address": address,
            "metadata": BTreeMap::<String, String>::new(),
        });
        let path = format!("/v1/registry/instances/{id}");
        self.send(who, Method::PUT, &path, Some(&body)).await
    }

    /// Every registered instance, as `(id, service, address)`.
    async fn catalog(&self) -> Vec<(String, String, String)> {
        let (status, body) = self
            .send("", Method::GET, "/v1/registry/services", None)
            .await;
        assert_eq!(status, StatusCode::OK, "reads are open: {body}");
        let mut instances = Vec::new();
        for list in body["services"].as_object().expect("services").values() {
            for instance in list.as_array().expect("instances") {
                let field = |name: &str| instance[name].as_str().unwrap_or_default().to_owned();
                instances.push((field("id"), field("service"), field("address")));
            }
        }
        instances.sort();
        instances
    }
}

fn problem_type(body: &Value) -> &str {
    body["type"].as_str().unwrap_or_default()
}

fn instance(id: &str, service: &str, address: &str) -> (String, String, String) {
    (id.to_owned(), service.to_owned(), address.to_owned())
}

#[tokio::test]
async fn writes_need_a_platform_token_and_an_instance_stays_its_holders() {
    let registry = registry().await;

    // Without a token, or with a customer's (no registry:write), nothing is registered.
    let (status, body) = registry
        .register("", "payment-1", "payment", "127.0.0.1:9001")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(problem_type(&body), "/problems/token-missing");
    let (status, body) = registry
        .register("alice", "payment-1", "payment", "127.0.0.1:9001")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A platform process registers its own service only.
    let (status, body) = registry
        .register("order", "payment-1", "payment", "127.0.0.1:9666")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(problem_type(&body), "/problems/not-your-service");
    assert_eq!(registry.catalog().await, []);

    let (status, body) = registry
        .register("payment", "payment-1", "payment", "127.0.0.1:9001")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let registered = vec![instance("payment-1", "payment", "127.0.0.1:9001")];
    assert_eq!(registry.catalog().await, registered);

    // Nobody else takes the id over, renews it or removes it; the operator (an admin) may
    // register third-party instances but not take a held one either.
    for who in ["", "alice", "order", "operator"] {
        let (status, body) = registry
            .register(who, "payment-1", "order", "127.0.0.1:9666")
            .await;
        assert!(
            matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            "{who}: {status} {body}"
        );
        let heartbeat = "/v1/registry/instances/payment-1/heartbeat";
        let (status, _) = registry.send(who, Method::PUT, heartbeat, None).await;
        assert!(
            matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            "{who}: heartbeat {status}"
        );
        let (status, _) = registry
            .send(
                who,
                Method::DELETE,
                "/v1/registry/instances/payment-1",
                None,
            )
            .await;
        assert!(
            matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            "{who}: deregister {status}"
        );
    }
    let (_, body) = registry
        .register("operator", "payment-1", "payment", "127.0.0.1:9666")
        .await;
    assert_eq!(problem_type(&body), "/problems/not-your-instance", "{body}");
    assert_eq!(registry.catalog().await, registered, "nothing changed");

    // Third-party registration by an admin, of a new id.
    let (status, body) = registry
        .register("operator", "legacy-1", "legacy", "127.0.0.1:9100")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The holder renews, moves and removes its own instance.
    let heartbeat = "/v1/registry/instances/payment-1/heartbeat";
    let (status, _) = registry.send("payment", Method::PUT, heartbeat, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = registry
        .register("payment", "payment-1", "payment", "127.0.0.1:9002")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = registry
        .send(
            "payment",
            Method::DELETE,
            "/v1/registry/instances/payment-1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        registry.catalog().await,
        [instance("legacy-1", "legacy", "127.0.0.1:9100")]
    );
}
