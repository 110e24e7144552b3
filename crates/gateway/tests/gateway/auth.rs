//! Who may call a route: tokens checked at the gateway, each refusal with its precise status,
//! and nothing of a refused request reaching the upstream (it counts its hits).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use flotilla_testkit::{TestIdp, serve_instance};
use http::{Method, StatusCode};

use super::harness::*;

const ROUTES: &str = r#"
[[routes]]
name = "orders"
service = "order"
path = "/orders"
version = 1
roles = ["customer", "admin"]

[[routes]]
name = "stock"
service = "order"
path = "/stock"
version = 1
roles = ["admin"]

[[routes]]
name = "catalog-admin"
service = "order"
path = "/catalog"
version = 1
scopes = ["catalog:write"]

[[routes]]
name = "public"
service = "order"
path = "/public"
version = 1
auth = "public"
"#;

/// The gateway over one `order` instance that counts what reaches it and echoes its headers.
async fn gateway() -> (Harness, Arc<AtomicU32>, flotilla_discovery::Registration) {
    let harness = harness_routes(ROUTES).await;
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let router = Router::new().fallback(move |headers: HeaderMap| {
        let hits = counted.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let headers: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value.into())
                })
                .collect();
            axum::Json(serde_json::json!({ "headers": headers }))
        }
    });
    let address = serve_instance(router).await;
    let registration = register(&harness, "order", &address).await;
    wait_for(&harness, "/v1/public/ping", StatusCode::OK).await;
    hits.store(0, Ordering::SeqCst);
    (harness, hits, registration)
}

/// `GET path` with exactly `authorization` (empty: none): status, headers, body.
async fn get_as(
    harness: &Harness,
    path: &str,
    authorization: &str,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    harness
        .get_with(path, &[("authorization", authorization)])
        .await
}

/// Asserts a 401 problem of `kind` with a `Bearer` challenge, and that nothing reached the
/// upstream.
fn assert_refused(
    answer: &(StatusCode, HeaderMap, serde_json::Value),
    kind: &str,
    hits: &AtomicU32,
    case: &str,
) {
    let (status, headers, body) = answer;
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{case}: {body}");
    assert_eq!(body["type"], format!("/problems/{kind}"), "{case}: {body}");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=\"flotilla\""),
        "{case}: {challenge}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "{case}: reached the upstream"
    );
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

#[tokio::test]
async fn a_protected_route_without_a_token_is_401_with_a_challenge() {
    let (harness, hits, _registration) = gateway().await;
    let answer = get_as(&harness, "/v1/orders/1", "").await;
    assert_refused(&answer, "token-missing", &hits, "no token");
    let challenge = &answer.1["www-authenticate"];
    assert_eq!(
        challenge, "Bearer realm=\"flotilla\"",
        "no error without a token"
    );
    let basic = get_as(&harness, "/v1/orders/1", "Basic YWxpY2U6eA==").await;
    assert_refused(&basic, "token-missing", &hits, "another scheme");
}

#[tokio::test]
async fn forged_and_broken_tokens_are_401_and_reach_nothing() {
    let (harness, hits, _registration) = gateway().await;
    let idp = TestIdp::shared();
    let alice = parts(&idp.token("alice"));
    let admin = parts(&idp.token("admin"));

    // `alg: none`: alice's claims, unsigned.
    let none_header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{}.", alice[1]);
    // HS256 keyed with the published public key (the algorithm confusion attack).
    let jwks = idp.idp.jwks();
    let kid = idp.idp.current_kid();
    let public = jwks.keys[0].x.clone().expect("an Ed25519 key");
    let hs_header = B64.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
    let signing_input = format!("{hs_header}.{}", alice[1]);
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public.as_bytes()),
        signing_input.as_bytes(),
    );
    let confused = format!("{signing_input}.{}", B64.encode(mac.as_ref()));
    // Admin's claims under alice's signature.
    let swapped = format!("{}.{}.{}", alice[0], admin[1], alice[2]);
    // A key id nobody published.
    let unknown_header = B64.encode(br#"{"alg":"EdDSA","typ":"JWT","kid":"no-such-key"}"#);
    let unknown = format!("{unknown_header}.{}.{}", alice[1], alice[2]);
    let oversized = format!("{}.{}.{}", alice[0], "A".repeat(9_000), alice[2]);

    let cases = [
        ("alg none", unsigned, "token-unsupported-alg"),
        (
            "HS256 with the public key",
            confused,
            "token-unsupported-alg",
        ),
        ("payload swapped", swapped, "token-bad-signature"),
        ("unknown kid", unknown, "token-unknown-kid"),
        ("oversized", oversized, "token-oversized"),
        ("garbage", "not-a-token".to_owned(), "token-malformed"),
    ];
    for (case, token, kind) in cases {
        let answer = get_as(&harness, "/v1/orders/1", &format!("Bearer {token}")).await;
        assert_refused(&answer, kind, &hits, case);
        let challenge = answer.1["www-authenticate"].to_str().unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{case}: {challenge}"
        );
    }
    // The real token still passes: the refusals were about the tokens.
    let (status, _, body) = get_as(
        &harness,
        "/v1/orders/1",
        &format!("Bearer {}", alice.join(".")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn roles_and_scopes_are_403_when_the_token_lacks_them() {
    let (harness, hits, _registration) = gateway().await;
    let idp = TestIdp::shared();
    let alice = idp.bearer("alice");
    let admin = idp.bearer("admin");

    let (status, _, body) = get_as(&harness, "/v1/stock/1", &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], "/problems/forbidden", "{body}");
    let (status, headers, body) = get_as(&harness, "/v1/catalog/1", &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let challenge = headers["www-authenticate"].to_str().unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"catalog:write\""), "{challenge}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "refused requests reached the upstream"
    );

    for path in ["/v1/stock/1", "/v1/catalog/1", "/v1/orders/1"] {
        let (status, _, body) = get_as(&harness, path, &admin).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_public_route_needs_no_token_and_identity_headers_never_pass() {
    let (harness, hits, _registration) = gateway().await;
    let bob = TestIdp::shared().bearer("bob");
    let spoofed = [
        ("authorization", bob.as_str()),
        ("x-user-id", "admin"),
        ("x-forwarded-user", "admin"),
        ("x-flotilla-subject", "admin"),
        ("x-roles", "admin"),
    ];
    let (status, _, body) = harness.get_with("/v1/public/ping", &spoofed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let headers = body["headers"].as_object().expect("the echoed headers");
    for (name, _) in &spoofed[1..] {
        assert!(
            !headers.contains_key(*name),
            "{name} reached the service: {headers:?}"
        );
    }
    // The client's token, unchecked on a public route, is not passed on: the gateway calls
    // with its own, which the service verifies like any other.
    let sent = headers["authorization"].as_str().expect("a token");
    let token = sent.strip_prefix("Bearer ").expect("a bearer token");
    let principal = TestIdp::shared()
        .verifier()
        .verify_now(token)
        .expect("the gateway's token verifies");
    assert_eq!(principal.subject, "gateway");
    assert!(principal.has_role("service"));
    // On a protected route the token travels on to the service, which checks it again.
    let alice = TestIdp::shared().bearer("alice");
    let (status, _, body) = harness
        .get_with(
            "/v1/orders/1",
            &[("authorization", &alice), ("x-user-id", "admin")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"]["authorization"], alice.as_str());
    assert!(body["headers"].get("x-user-id").is_none(), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let _ = Method::GET;
}

#[tokio::test]
async fn the_admin_listener_needs_an_operators_token_and_the_public_port_has_no_admin() {
    let (harness, hits, _registration) = gateway().await;
    let admin = harness.admin().await;
    let customer = TestIdp::shared().bearer("alice");
    let operator = TestIdp::shared().bearer("admin");
    let service = TestIdp::shared().bearer("order");
    let force = r#"{"state": "open"}"#;
    let url = format!("{admin}/admin/breakers/order/force");
    for (credential, status) in [
        ("", StatusCode::UNAUTHORIZED),
        ("Bearer not.a.token", StatusCode::UNAUTHORIZED),
        (customer.as_str(), StatusCode::FORBIDDEN),
        (service.as_str(), StatusCode::FORBIDDEN),
    ] {
        let (actual, _, body) = call(
            Method::PUT,
            &url,
            &[
                ("authorization", credential),
                ("content-type", "application/json"),
            ],
            force.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(actual, status, "{credential:?}: {body}");
    }
    // Metrics need `metrics:read` (admins and platform services), not a customer's token.
    for (credential, status) in [
        ("", StatusCode::UNAUTHORIZED),
        (customer.as_str(), StatusCode::FORBIDDEN),
        (service.as_str(), StatusCode::OK),
        (operator.as_str(), StatusCode::OK),
    ] {
        let (actual, _, _) = call_text(
            Method::GET,
            &format!("{admin}/metrics"),
            &[("authorization", credential)],
            "",
        )
        .await;
        assert_eq!(actual, status, "{credential:?}");
    }
    // The public port serves neither, whatever the token.
    for path in ["/admin/breakers", "/metrics"] {
        let (status, _, body) = get_as(&harness, path, &operator).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    // None of that forced the breaker open: a call still reaches the upstream.
    let (status, _, body) = harness.get("/v1/orders/1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let (status, _, body) = harness.get_admin("/admin/breakers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order"]["state"], "closed", "{body}");
}

#[tokio::test]
async fn well_signed_tokens_with_bad_claims_or_a_retired_key_are_401_and_reach_nothing() {
    use flotilla_kit::clock::{Clock, now_micros};
    let (harness, hits, _registration) = gateway().await;
    let shared = TestIdp::shared();
    let hour = 3_600 * 1_000_000;
    let alice = |idp: &flotilla_identity::Idp| {
        let account = idp.credentials().user("alice").expect("alice");
        idp.issue(flotilla_identity::Grant::for_account(account))
            .expect("a token")
            .access_token
    };
    // Signed with the provider's own key, so only the claims are wrong.
    let expired = alice(&shared.with_same_keys(|_| {}, Clock::manual(now_micros() - hour)));
    let early = alice(&shared.with_same_keys(|_| {}, Clock::manual(now_micros() + hour)));
    let issuer = alice(&shared.with_same_keys(
        |settings| settings.issuer = "someone-else".to_owned(),
        Clock::system(),
    ));
    let audience = alice(&shared.with_same_keys(
        |settings| settings.audiences = vec!["another-api".to_owned()],
        Clock::system(),
    ));
    for (case, token, kind) in [
        ("expired", expired, "token-expired"),
        ("not yet valid", early, "token-not-yet-valid"),
        ("wrong issuer", issuer, "token-wrong-issuer"),
        ("wrong audience", audience, "token-wrong-audience"),
    ] {
        let answer = get_as(&harness, "/v1/orders/1", &format!("Bearer {token}")).await;
        assert_refused(&answer, kind, &hits, case);
    }

    // A provider of its own (its keys are not the shared one's) rotates its key and retires
    // the old one: a token of the retired key is refused, a token of the new one passes.
    let own = TestIdp::open();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = own.serve(&shutdown).await;
    let mut config = flotilla_gateway::Config::default();
    config.instance.identity = own.identity(&url);
    // A new kid is looked up at most once per interval: a short one, for the test.
    config.instance.identity.verifier.jwks_refetch_interval_ms = 100;
    let rotating = harness_with_routes(config, ROUTES).await;
    let address = serve_instance(Router::new().fallback(|| async { "ok" })).await;
    let _order = register(&rotating, "order", &address).await;
    let before = own.bearer("alice");
    wait_for_with(&rotating, "/v1/orders/1", &before, StatusCode::OK).await;
    let old = own.idp.current_kid();
    let new = own.idp.rotate().await.expect("rotated");
    own.idp.retire(&old).await.expect("retired");
    let after = own.bearer("alice");
    // Past one refetch interval the gateway may fetch the keys again, and learns the new one.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (status, _, body) = get_as(&rotating, "/v1/orders/1", &after).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a token of the new key {new}: {body}"
    );
    let (status, _, body) = get_as(&rotating, "/v1/orders/1", &before).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token of the retired key: {body}"
    );
    assert_eq!(body["type"], "/problems/token-unknown-kid", "{body}");
    shutdown.cancel();
}
