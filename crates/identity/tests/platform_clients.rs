//! Platform processes' own tokens: the provider accepts, for a client with the `service` role,
//! the secret derived from its platform secret (and for no other client, and not from another
//! platform secret), and a [`TokenSource`] gets, keeps and renews such a token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestIdp, assert_oauth_error, token_request};
use flotilla_identity::credentials::derive_client_secret;
use flotilla_identity::{ClientCredentials, KeySource, TokenSource, Verifier};
use http::StatusCode;

const PLATFORM: &str = "a platform secret for this test";

async fn provider() -> TestIdp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    TestIdp::start_in(dir, |settings| {
        settings.platform_secret = Some(PLATFORM.to_owned());
    })
    .await
}

fn form(client: &str, secret: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client)
        .append_pair("client_secret", secret)
        .finish()
}

#[tokio::test]
async fn a_derived_secret_authenticates_a_service_client_only() {
    let idp = provider().await;
    let order = derive_client_secret(PLATFORM, "order");
    let answer = token_request(&idp, &form("order", &order), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert!(
        answer.json()["scope"]
            .as_str()
            .unwrap()
            .contains("registry:write")
    );

    // Another client's derived secret, one from another platform secret, and the derived
    // secret of a client without the `service` role (the operator is an admin) are refused.
    let payment = derive_client_secret(PLATFORM, "payment");
    let elsewhere = derive_client_secret("another platform's secret", "order");
    let operator = derive_client_secret(PLATFORM, "operator");
    for (client, secret) in [
        ("order", payment.as_str()),
        ("order", elsewhere.as_str()),
        ("operator", operator.as_str()),
        ("order", ""),
        ("nobody", derive_client_secret(PLATFORM, "nobody").as_str()),
    ] {
        let answer = token_request(&idp, &form(client, secret), &[]).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    // The seeded secret still works.
    let answer = token_request(&idp, &form("order", "order-dev-secret"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_platform_secret_derived_secrets_are_refused() {
    let idp = TestIdp::start().await;
    let order = derive_client_secret(PLATFORM, "order");
    let answer = token_request(&idp, &form("order", &order), &[]).await;
    assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn a_token_source_keeps_its_token_and_renews_it_when_told() {
    let idp = provider().await;
    let source = TokenSource::new(
        &idp.url(""),
        ClientCredentials {
            client_id: "inventory".to_owned(),
            client_secret: derive_client_secret(PLATFORM, "inventory"),
        },
        Duration::from_secs(2),
    );
    let first = source.bearer().await.unwrap();
    let token = first
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let verifier = Verifier::new(
        &idp.idp.settings().verifier_settings(),
        KeySource::Fixed(idp.idp.jwks()),
    )
    .unwrap();
    let principal = verifier.verify_now(&token).unwrap();
    assert_eq!(principal.subject, "inventory");
    assert_eq!(
        principal.confined_to(),
        None,
        "a platform service reaches everything"
    );

    // Kept: the same token again, and concurrent callers share it.
    let (a, b) = tokio::join!(source.bearer(), source.bearer());
    assert_eq!(a.unwrap(), first);
    assert_eq!(b.unwrap(), first);
    // Dropped after a peer refused it: a new grant, a new token.
    source.invalidate();
    let renewed = source.bearer().await.unwrap();
    assert_ne!(renewed, first);

    // Asked for twice in a process, a client's tokens come from one source: one grant.
    let credentials = ClientCredentials {
        client_id: "shipping".to_owned(),
        client_secret: derive_client_secret(PLATFORM, "shipping"),
    };
    let one = TokenSource::shared(&idp.url(""), credentials.clone(), Duration::from_secs(2));
    let other = TokenSource::shared(&idp.url(""), credentials, Duration::from_secs(2));
    assert_eq!(one.bearer().await.unwrap(), other.bearer().await.unwrap());

    // A wrong secret is an error naming the client, not a panic.
    let wrong = TokenSource::new(
        &idp.url(""),
        ClientCredentials {
            client_id: "inventory".to_owned(),
            client_secret: "not it".to_owned(),
        },
        Duration::from_secs(2),
    );
    let error = wrong.bearer().await.unwrap_err().to_string();
    assert!(error.contains("inventory"), "{error}");
    assert!(
        !format!("{wrong:?}").contains("not it"),
        "the secret is never printed"
    );
}
