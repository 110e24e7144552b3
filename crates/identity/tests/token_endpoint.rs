//! The identity provider over HTTP: both grants, every refusal of RFC 6749 §5.2 as a problem
//! document, the JWKS and the discovery document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::{TestIdp, assert_oauth_error, basic, send, token_request};
use flotilla_identity::{KeySource, Verifier};
use http::{Method, StatusCode, header};

/// A verifier that reads the provider's JWKS over HTTP, as the gateway will.
fn verifier_of(idp: &TestIdp) -> Verifier {
    let settings = idp.idp.settings().verifier_settings();
    Verifier::new(&settings, KeySource::Url(idp.url("/.well-known/jwks.json"))).unwrap()
}

#[tokio::test]
async fn the_password_grant_issues_a_token_that_verifies() {
    let idp = TestIdp::start().await;
    let answer = token_request(
        &idp,
        "grant_type=password&username=alice&password=alice-dev-password",
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let scope = body["scope"].as_str().unwrap();
    let all = idp
        .idp
        .credentials()
        .user("alice")
        .unwrap()
        .scopes
        .join(" ");
    assert_eq!(scope, all, "no scope asked: all the user may have");

    let principal = verifier_of(&idp)
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.client_id, None);
    assert_eq!(principal.roles, ["customer"]);
    assert!(principal.has_scope("orders:write") && !principal.has_scope("admin"));
    assert!(principal.expires_at > common::now() + 800);
    assert!(principal.token_id.is_some());
}

#[tokio::test]
async fn a_password_grant_may_name_its_client_and_narrow_its_scope() {
    let idp = TestIdp::start().await;
    let operator = basic("operator", "operator-dev-secret");
    let answer = token_request(
        &idp,
        "grant_type=password&username=admin&password=admin-dev-password&scope=admin+orders:read+admin",
        &[(header::AUTHORIZATION, &operator)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(
        answer.json()["scope"],
        "admin orders:read",
        "asked for, once each"
    );
    let principal = verifier_of(&idp)
        .verify(answer.json()["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(principal.subject, "admin");
    assert_eq!(principal.client_id.as_deref(), Some("operator"));
    assert_eq!(principal.scopes, ["admin", "orders:read"]);

    let wrong_client = token_request(
        &idp,
        "grant_type=password&username=admin&password=admin-dev-password",
        &[(header::AUTHORIZATION, &basic("operator", "nope"))],
    )
    .await;
    assert_oauth_error(&wrong_client, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn the_client_credentials_grant_takes_basic_or_body_credentials() {
    let idp = TestIdp::start().await;
    let verifier = verifier_of(&idp);
    let by_basic = token_request(
        &idp,
        "grant_type=client_credentials&scope=registry:write",
        &[(
            header::AUTHORIZATION,
            &basic("gateway", "gateway-dev-secret"),
        )],
    )
    .await;
    assert_eq!(by_basic.status, StatusCode::OK, "{:?}", by_basic.body);
    let principal = verifier
        .verify(by_basic.json()["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(principal.subject, "gateway");
    assert_eq!(principal.client_id.as_deref(), Some("gateway"));
    assert_eq!(principal.roles, ["service"]);
    assert_eq!(principal.scopes, ["registry:write"]);

    let by_body = token_request(
        &idp,
        "grant_type=client_credentials&client_id=order&client_secret=order-dev-secret",
        &[],
    )
    .await;
    assert_eq!(by_body.status, StatusCode::OK, "{:?}", by_body.body);
    let principal = verifier
        .verify(by_body.json()["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(principal.subject, "order");
    assert!(principal.has_scope("catalog:read") && principal.has_scope("registry:write"));
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer_in_comparable_time() {
    let idp = TestIdp::start().await;
    let started = Instant::now();
    let wrong = token_request(
        &idp,
        "grant_type=password&username=alice&password=bob-dev-password",
        &[],
    )
    .await;
    let wrong_took = started.elapsed();
    let started = Instant::now();
    let unknown = token_request(
        &idp,
        "grant_type=password&username=mallory&password=alice-dev-password",
        &[],
    )
    .await;
    let unknown_took = started.elapsed();
    assert_oauth_error(&wrong, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_oauth_error(&unknown, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(wrong.json(), unknown.json(), "the same document");
    // Both ran Argon2 with the same parameters (the unknown user against a dummy hash).
    assert!(
        unknown_took * 3 > wrong_took && wrong_took * 3 > unknown_took,
        "wrong password {wrong_took:?}, unknown user {unknown_took:?}"
    );
}

#[tokio::test]
async fn every_refusal_is_an_oauth_error_in_a_problem_document() {
    let idp = TestIdp::start().await;
    let bad_secret = token_request(
        &idp,
        "grant_type=client_credentials",
        &[(header::AUTHORIZATION, &basic("gateway", "order-dev-secret"))],
    )
    .await;
    assert_oauth_error(&bad_secret, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        bad_secret
            .header(header::WWW_AUTHENTICATE)
            .starts_with("Basic")
    );

    let unknown_client = token_request(
        &idp,
        "grant_type=client_credentials&client_id=mallory&client_secret=x",
        &[],
    )
    .await;
    assert_oauth_error(&unknown_client, StatusCode::UNAUTHORIZED, "invalid_client");

    let no_client = token_request(&idp, "grant_type=client_credentials", &[]).await;
    assert_oauth_error(&no_client, StatusCode::UNAUTHORIZED, "invalid_client");

    let grant = token_request(&idp, "grant_type=authorization_code&code=x", &[]).await;
    assert_oauth_error(&grant, StatusCode::BAD_REQUEST, "unsupported_grant_type");

    let scope = token_request(
        &idp,
        "grant_type=password&username=alice&password=alice-dev-password&scope=orders:read%20admin",
        &[],
    )
    .await;
    assert_oauth_error(&scope, StatusCode::BAD_REQUEST, "invalid_scope");
    assert!(scope.json()["detail"].as_str().unwrap().contains("`admin`"));

    let no_password = token_request(&idp, "grant_type=password&username=alice", &[]).await;
    assert_oauth_error(&no_password, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        no_password.json()["detail"]
            .as_str()
            .unwrap()
            .contains("password")
    );

    let repeated = token_request(
        &idp,
        "grant_type=password&username=alice&username=bob&password=x",
        &[],
    )
    .await;
    assert_oauth_error(&repeated, StatusCode::BAD_REQUEST, "invalid_request");

    let two_methods = token_request(
        &idp,
        "grant_type=client_credentials&client_id=gateway&client_secret=gateway-dev-secret",
        &[(
            header::AUTHORIZATION,
            &basic("gateway", "gateway-dev-secret"),
        )],
    )
    .await;
    assert_oauth_error(&two_methods, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn form_garbage_is_refused_as_a_problem() {
    let idp = TestIdp::start().await;
    let url = idp.url("/oauth2/token");
    let json = send(
        Method::POST,
        &url,
        &[(header::CONTENT_TYPE, "application/json")],
        r#"{"grant_type":"password"}"#,
    )
    .await;
    assert_oauth_error(&json, StatusCode::BAD_REQUEST, "invalid_request");

    let no_type = send(Method::POST, &url, &[], "grant_type=password").await;
    assert_oauth_error(&no_type, StatusCode::BAD_REQUEST, "invalid_request");

    let binary = send(
        Method::POST,
        &url,
        &[common::FORM],
        bytes::Bytes::from_static(b"\xff\xfe\x00grant_type=\x80"),
    )
    .await;
    assert_oauth_error(&binary, StatusCode::BAD_REQUEST, "invalid_request");

    let noise = send(Method::POST, &url, &[common::FORM], "%%%&&==&=x&%zz").await;
    assert_oauth_error(&noise, StatusCode::BAD_REQUEST, "invalid_request");

    let huge = send(
        Method::POST,
        &url,
        &[common::FORM],
        format!("grant_type=password&pad={}", "a".repeat(20_000)),
    )
    .await;
    assert_oauth_error(&huge, StatusCode::BAD_REQUEST, "invalid_request");

    let bad_basic = token_request(
        &idp,
        "grant_type=client_credentials",
        &[(header::AUTHORIZATION, "Basic %%%")],
    )
    .await;
    assert_oauth_error(&bad_basic, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn the_jwks_and_the_discovery_document_are_served() {
    let idp = TestIdp::start().await;
    let jwks = send(Method::GET, &idp.url("/.well-known/jwks.json"), &[], "").await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.header(header::CACHE_CONTROL), "public, max-age=300");
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], idp.idp.current_kid());
    assert!(key.get("d").is_none(), "never the private key");

    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let document = send(Method::GET, &idp.url(path), &[], "").await;
        assert_eq!(document.status, StatusCode::OK);
        let document = document.json();
        let base = format!("http://{}", idp.address);
        assert_eq!(document["issuer"], flotilla_identity::DEFAULT_ISSUER);
        assert_eq!(document["token_endpoint"], format!("{base}/oauth2/token"));
        assert_eq!(
            document["jwks_uri"],
            format!("{base}/.well-known/jwks.json")
        );
        assert_eq!(
            document["grant_types_supported"],
            serde_json::json!(["password", "client_credentials"])
        );
        assert_eq!(
            document["token_endpoint_auth_methods_supported"],
            serde_json::json!(["client_secret_basic", "client_secret_post"])
        );
        assert_eq!(
            document["id_token_signing_alg_values_supported"],
            serde_json::json!(["EdDSA"])
        );
        let scopes = document["scopes_supported"].as_array().unwrap();
        assert!(scopes.iter().any(|s| s == "registry:write"));
    }
}

#[tokio::test]
async fn issued_tokens_carry_every_claim_and_the_header_names_the_key() {
    let idp = TestIdp::start().await;
    let token = token_request(
        &idp,
        "grant_type=client_credentials&client_id=payment&client_secret=payment-dev-secret",
        &[],
    )
    .await
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let part = |i: usize| -> serde_json::Value {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let header = part(0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], idp.idp.current_kid());
    let claims = part(1);
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "roles",
        "scope",
        "client_id",
    ] {
        assert!(claims.get(claim).is_some(), "no {claim} in {claims}");
    }
    assert_eq!(claims["aud"], flotilla_identity::DEFAULT_AUDIENCE);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let jti = uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).unwrap();
    assert_eq!(jti.get_version_num(), 7);
}
