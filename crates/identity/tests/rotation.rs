//! Key rotation end to end: the admin endpoints, both keys published during the rollover, old
//! tokens verifying until their key is retired and refused after the verifier refetches, the
//! key file surviving a restart; and minting tokens directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestIdp, basic, send, token_request};
use flotilla_identity::{Credentials, Grant, Idp, IdpSettings, KeySource, TokenError, Verifier};
use flotilla_kit::clock::Clock;
use http::{Method, StatusCode, header};

async fn password_token(idp: &TestIdp, user: &str) -> String {
    let form = format!("grant_type=password&username={user}&password={user}-dev-password");
    let answer = token_request(idp, &form, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

async fn operator_token(idp: &TestIdp) -> String {
    let answer = token_request(
        idp,
        "grant_type=client_credentials",
        &[(
            header::AUTHORIZATION,
            &basic("operator", "operator-dev-secret"),
        )],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rotation_publishes_both_keys_until_the_old_one_is_retired() {
    let idp = TestIdp::start().await;
    let clock = Clock::manual(common::now() * 1_000_000);
    let settings = flotilla_identity::VerifierSettings {
        jwks_refetch_interval_ms: 1_000,
        ..idp.idp.settings().verifier_settings()
    };
    let verifier = Verifier::with_clock(
        &settings,
        KeySource::Url(idp.url("/.well-known/jwks.json")),
        clock.clone(),
    )
    .unwrap();
    let old_kid = idp.idp.current_kid();
    let alice_old = password_token(&idp, "alice").await;
    let operator = operator_token(&idp).await;
    assert_eq!(kid_of(&alice_old), old_kid);
    assert_eq!(verifier.verify(&alice_old).await.unwrap().subject, "alice");

    // Only an admin may rotate.
    let rotate = idp.url("/admin/keys/rotate");
    let anonymous = send(Method::POST, &rotate, &[], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.header(header::WWW_AUTHENTICATE),
        r#"Bearer realm="flotilla""#
    );
    let as_alice = format!("Bearer {alice_old}");
    let customer = send(
        Method::POST,
        &rotate,
        &[(header::AUTHORIZATION, &as_alice)],
        "",
    )
    .await;
    assert_eq!(customer.status, StatusCode::FORBIDDEN);
    assert_eq!(customer.json()["error"], "insufficient_scope");
    let forged = format!("Bearer {}x", &alice_old[..alice_old.len() - 1]);
    let bad = send(
        Method::POST,
        &rotate,
        &[(header::AUTHORIZATION, &forged)],
        "",
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    let as_operator = format!("Bearer {operator}");
    let rotated = send(
        Method::POST,
        &rotate,
        &[(header::AUTHORIZATION, &as_operator)],
        "",
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK, "{:?}", rotated.body);
    let new_kid = rotated.json()["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        rotated.json()["published"],
        serde_json::json!([new_kid, old_kid])
    );
    let jwks = send(Method::GET, &idp.url("/.well-known/jwks.json"), &[], "")
        .await
        .json();
    let published: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    assert_eq!(published, [new_kid.as_str(), old_kid.as_str()]);

    // New tokens are signed by the new key; the verifier meets its kid and fetches again.
    let alice_new = password_token(&idp, "alice").await;
    assert_eq!(kid_of(&alice_new), new_kid);
    clock.advance(Duration::from_secs(1));
    assert!(verifier.verify(&alice_new).await.is_ok());
    assert!(
        verifier.verify(&alice_old).await.is_ok(),
        "the old key is still published"
    );

    // The current key cannot be retired; the old one can.
    let retire_new = idp.url(&format!("/admin/keys/{new_kid}"));
    let conflict = send(
        Method::DELETE,
        &retire_new,
        &[(header::AUTHORIZATION, &as_operator)],
        "",
    )
    .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    let retire_old = idp.url(&format!("/admin/keys/{old_kid}"));
    let retired = send(
        Method::DELETE,
        &retire_old,
        &[(header::AUTHORIZATION, &as_operator)],
        "",
    )
    .await;
    assert_eq!(retired.status, StatusCode::OK, "{:?}", retired.body);
    assert_eq!(retired.json()["published"], serde_json::json!([new_kid]));
    let again = send(
        Method::DELETE,
        &retire_old,
        &[(header::AUTHORIZATION, &format!("Bearer {alice_new}"))],
        "",
    )
    .await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);

    // The provider's own verifier follows at once; a remote one after its next fetch.
    assert_eq!(
        idp.idp.verifier().verify(&operator).await,
        Err(TokenError::UnknownKid)
    );
    clock.advance(Duration::from_secs(1));
    assert!(verifier.refresh().await, "fetched");
    assert_eq!(
        verifier.verify(&alice_old).await,
        Err(TokenError::UnknownKid)
    );
    assert!(verifier.verify(&alice_new).await.is_ok());

    // A restart reads the key file: the same key signs, and earlier tokens stay valid.
    let dir = Arc::clone(&idp.dir);
    drop(idp);
    let restarted = TestIdp::start_in(dir, |_| {}).await;
    assert_eq!(restarted.idp.current_kid(), new_kid);
    assert_eq!(
        restarted.idp.verifier().kids(),
        std::slice::from_ref(&new_kid)
    );
    assert_eq!(
        restarted
            .idp
            .verifier()
            .verify(&alice_new)
            .await
            .unwrap()
            .subject,
        "alice"
    );
}

fn open(dir: &tempfile::TempDir, clock: Clock) -> Idp {
    let settings = IdpSettings {
        key_file: dir.path().join("keys.json"),
        token_lifetime_ms: 60_000,
        max_clock_skew_ms: 5_000,
        ..IdpSettings::default()
    };
    Idp::open_with_clock(settings, Credentials::shipped().unwrap(), clock).unwrap()
}

#[tokio::test]
async fn superseded_keys_are_retired_once_no_token_they_signed_can_be_valid() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(common::now() * 1_000_000);
    let idp = open(&dir, clock.clone());
    let old = idp.current_kid();
    let token = idp
        .issue(Grant {
            subject: "alice".into(),
            ..Grant::default()
        })
        .unwrap();
    let new = idp.rotate().await.unwrap();
    assert_eq!(idp.verifier().kids().len(), 2);
    // 60 s of lifetime + 5 s of skew after the rotation, the old key may still have a token.
    clock.advance(Duration::from_secs(65));
    assert!(idp.retire_expired().await.unwrap().is_empty());
    assert!(idp.verifier().verify(&token.access_token).await.is_ok());
    clock.advance(Duration::from_secs(1));
    assert_eq!(idp.retire_expired().await.unwrap(), [old]);
    assert_eq!(idp.verifier().kids(), [new]);
    assert_eq!(
        idp.verifier().verify(&token.access_token).await,
        Err(TokenError::Expired),
        "expired by then anyway"
    );
}

#[tokio::test]
async fn issue_mints_a_token_with_any_roles_and_scopes_within_the_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let idp = open(&dir, Clock::system());
    let token = idp
        .issue(Grant {
            subject: "dave".into(),
            client_id: Some("cli".into()),
            roles: vec!["admin".into(), "customer".into()],
            scopes: vec!["admin".into(), "orders:read".into()],
            lifetime: Some(Duration::from_secs(30)),
        })
        .unwrap();
    assert_eq!(token.expires_in, 30);
    assert_eq!(token.scope, "admin orders:read");
    assert_eq!(token.kid, idp.current_kid());
    let principal = idp.verifier().verify(&token.access_token).await.unwrap();
    assert_eq!(principal.subject, "dave");
    assert_eq!(principal.client_id.as_deref(), Some("cli"));
    assert!(principal.has_role("admin") && principal.has_scope("orders:read"));
    assert_eq!(principal.token_id.as_deref(), Some(token.jti.as_str()));

    let too_long = Grant {
        subject: "dave".into(),
        lifetime: Some(Duration::from_secs(61)),
        ..Grant::default()
    };
    assert!(idp.issue(too_long).is_err());
    assert!(idp.issue(Grant::default()).is_err(), "no subject");
    let bad_scope = Grant {
        subject: "dave".into(),
        scopes: vec!["two words".into()],
        ..Grant::default()
    };
    assert!(idp.issue(bad_scope).is_err());
}
