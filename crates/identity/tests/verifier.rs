//! The verifier against hostile tokens, all signed with real keys: every refusal, the three
//! algorithms, the cache's limits and the 401 answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::response::IntoResponse as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestKey, claims, jwks, now, sign_parts};
use flotilla_identity::verify::{KeySource, TokenError, Verifier, VerifierSettings};
use flotilla_kit::clock::Clock;
use http::{StatusCode, header};
use serde_json::json;

fn fixed(keys: &[&TestKey]) -> Verifier {
    Verifier::new(&VerifierSettings::default(), KeySource::Fixed(jwks(keys))).unwrap()
}

#[tokio::test]
async fn good_tokens_of_all_three_algorithms_verify() {
    let ed = TestKey::ed25519("ed");
    let ec = TestKey::p256("ec");
    let rsa = TestKey::rsa("rsa");
    let verifier = fixed(&[&ed, &ec, &rsa]);
    for key in [&ed, &ec, &rsa] {
        let token = key.token(&claims("alice"));
        let principal = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.alg()));
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.scopes, ["orders:read", "orders:write"]);
        assert!(principal.has_role("customer"));
        assert_eq!(&*principal.token, token.as_str());
    }
    assert_eq!(verifier.kids(), ["ec", "ed", "rsa"]);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let key = TestKey::ed25519("k");
    let verifier = fixed(&[&key]);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("admin")).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.AAAA"),
    ] {
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::UnsupportedAlg)
        );
    }
    let none_upper = URL_SAFE_NO_PAD.encode(br#"{"alg":"None","kid":"k"}"#);
    assert_eq!(
        verifier.verify(&format!("{none_upper}.{payload}.")).await,
        Err(TokenError::UnsupportedAlg)
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    // The classic confusion: a verifier that takes the header's alg would use the public key
    // (known to everyone) as the HMAC secret.
    let key = TestKey::ed25519("k");
    let verifier = fixed(&[&key]);
    let jwk = key.jwk();
    let public = URL_SAFE_NO_PAD.decode(jwk.x.as_deref().unwrap()).unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("admin")).unwrap());
    let message = format!("{header}.{payload}");
    for secret in [
        public.clone(),
        serde_json::to_vec(&jwk).unwrap(),
        jwk.x.unwrap().into_bytes(),
    ] {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            message.as_bytes(),
        );
        let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::UnsupportedAlg)
        );
    }
}

#[tokio::test]
async fn a_header_alg_other_than_the_keys_is_refused() {
    let ed = TestKey::ed25519("ed");
    let ec = TestKey::p256("ec");
    let verifier = fixed(&[&ed, &ec]);
    // Signed by the P-256 key but naming the Ed25519 key's kid, and the reverse.
    let token = ec.token_with_header(&json!({"alg": "ES256", "kid": "ed"}), &claims("alice"));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::AlgMismatch));
    let token = ed.token_with_header(&json!({"alg": "EdDSA", "kid": "ec"}), &claims("alice"));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::AlgMismatch));
    let token = ed.token_with_header(&json!({"alg": "RS256", "kid": "ed"}), &claims("alice"));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::AlgMismatch));
}

#[tokio::test]
async fn a_payload_swapped_under_another_signature_is_refused() {
    let key = TestKey::ed25519("k");
    let verifier = fixed(&[&key]);
    let alice = key.token(&claims("alice"));
    let admin = {
        let mut c = claims("admin");
        c["roles"] = json!(["admin"]);
        key.token(&c)
    };
    let alice_parts: Vec<&str> = alice.split('.').collect();
    let admin_parts: Vec<&str> = admin.split('.').collect();
    let forged = format!("{}.{}.{}", alice_parts[0], admin_parts[1], alice_parts[2]);
    assert_eq!(
        verifier.verify(&forged).await,
        Err(TokenError::BadSignature)
    );
    // One flipped bit in the signature.
    let mut signature = URL_SAFE_NO_PAD.decode(alice_parts[2]).unwrap();
    signature[10] ^= 1;
    let flipped = format!(
        "{}.{}.{}",
        alice_parts[0],
        alice_parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert_eq!(
        verifier.verify(&flipped).await,
        Err(TokenError::BadSignature)
    );
    // A key smuggled in the header is never used.
    let mallory = TestKey::ed25519("k");
    let smuggled = mallory.token_with_header(
        &json!({"alg": "EdDSA", "kid": "k", "jwk": mallory.jwk()}),
        &claims("admin"),
    );
    assert_eq!(
        verifier.verify(&smuggled).await,
        Err(TokenError::BadSignature)
    );
    assert!(verifier.verify(&alice).await.is_ok());
}

#[tokio::test]
async fn time_claims_are_checked_with_the_bounded_skew() {
    let key = TestKey::ed25519("k");
    let verifier = fixed(&[&key]); // 30 s of skew
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("alice");
        f(&mut c);
        key.token(&c)
    };
    let now = now();
    let expired = with(&|c| c["exp"] = json!(now - 60));
    assert_eq!(verifier.verify(&expired).await, Err(TokenError::Expired));
    let within_skew = with(&|c| c["exp"] = json!(now - 10));
    assert!(verifier.verify(&within_skew).await.is_ok());
    let later = with(&|c| c["nbf"] = json!(now + 120));
    assert_eq!(verifier.verify(&later).await, Err(TokenError::NotYetValid));
    let issued_later = with(&|c| c["iat"] = json!(now + 120));
    assert_eq!(
        verifier.verify(&issued_later).await,
        Err(TokenError::NotYetValid)
    );
    let nbf_within_skew = with(&|c| c["nbf"] = json!(now + 10));
    assert!(verifier.verify(&nbf_within_skew).await.is_ok());
    let fractional = with(&|c| c["exp"] = json!(now as f64 + 300.5));
    assert!(verifier.verify(&fractional).await.is_ok());
    let no_exp = with(&|c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    assert_eq!(
        verifier.verify(&no_exp).await,
        Err(TokenError::MissingClaim("exp"))
    );
    let string_exp = with(&|c| c["exp"] = json!("tomorrow"));
    assert!(matches!(
        verifier.verify(&string_exp).await,
        Err(TokenError::Malformed(_))
    ));
}

#[tokio::test]
async fn issuer_audience_and_subject_are_required() {
    let key = TestKey::ed25519("k");
    let settings = VerifierSettings {
        audiences: vec!["flotilla".into(), "orders".into()],
        ..VerifierSettings::default()
    };
    let verifier = Verifier::new(&settings, KeySource::Fixed(jwks(&[&key]))).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("alice");
        f(&mut c);
        key.token(&c)
    };
    let cases: Vec<(String, Result<(), TokenError>)> = vec![
        (
            with(&|c| c["iss"] = json!("https://evil.example")),
            Err(TokenError::WrongIssuer),
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            Err(TokenError::WrongIssuer),
        ),
        (
            with(&|c| c["aud"] = json!("billing")),
            Err(TokenError::WrongAudience),
        ),
        (
            with(&|c| c["aud"] = json!(["billing", "ads"])),
            Err(TokenError::WrongAudience),
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            Err(TokenError::WrongAudience),
        ),
        (with(&|c| c["aud"] = json!(["billing", "orders"])), Ok(())),
        (with(&|c| c["aud"] = json!("orders")), Ok(())),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            Err(TokenError::MissingClaim("sub")),
        ),
        (
            with(&|c| c["sub"] = json!("")),
            Err(TokenError::MissingClaim("sub")),
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(verifier.verify(&token).await.map(|_| ()), expected);
    }
}

#[tokio::test]
async fn unknown_kids_oversized_and_garbage_tokens_are_refused() {
    let key = TestKey::ed25519("k");
    let verifier = fixed(&[&key]);
    let stranger = TestKey::ed25519("other");
    assert_eq!(
        verifier.verify(&stranger.token(&claims("a"))).await,
        Err(TokenError::UnknownKid)
    );
    let no_kid = key.token_with_header(&json!({"alg": "EdDSA"}), &claims("a"));
    assert_eq!(verifier.verify(&no_kid).await, Err(TokenError::UnknownKid));

    let mut big = claims("alice");
    big["padding"] = json!("x".repeat(9_000));
    assert_eq!(
        verifier.verify(&key.token(&big)).await,
        Err(TokenError::Oversized)
    );

    let good = key.token(&claims("alice"));
    let header_b64 = good.split('.').next().unwrap();
    let garbage = [
        "garbage".to_owned(),
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        "..".to_owned(),
        "é.é.é".to_owned(),
        format!("{good}="),
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode("not json"),
            URL_SAFE_NO_PAD.encode("{}")
        ),
        format!("{header_b64}.!!!.sig"),
        format!("{header_b64}.{}.sig+", URL_SAFE_NO_PAD.encode("{}")),
    ];
    for token in garbage {
        assert!(
            matches!(verifier.verify(&token).await, Err(TokenError::Malformed(_))),
            "{token:?} was not refused as malformed"
        );
    }
    assert_eq!(verifier.verify("").await, Err(TokenError::Missing));

    // Signed, but with claims that are not claims, a duplicated claim, or a critical extension.
    let payload = |raw: &str| sign_parts(&key, header_b64, &URL_SAFE_NO_PAD.encode(raw));
    assert!(matches!(
        verifier.verify(&payload("[1,2]")).await,
        Err(TokenError::Malformed(_))
    ));
    let duplicate = format!(
        r#"{{"iss":"flotilla-idp","aud":"flotilla","exp":{},"sub":"alice","sub":"admin"}}"#,
        now() + 60
    );
    assert!(matches!(
        verifier.verify(&payload(&duplicate)).await,
        Err(TokenError::Malformed(_))
    ));
    let crit = key.token_with_header(
        &json!({"alg": "EdDSA", "kid": "k", "crit": ["b64"], "b64": false}),
        &claims("alice"),
    );
    assert!(matches!(
        verifier.verify(&crit).await,
        Err(TokenError::Malformed(_))
    ));
    let typ = key.token_with_header(
        &json!({"alg": "EdDSA", "kid": "k", "typ": "dpop+jwt"}),
        &claims("a"),
    );
    assert!(matches!(
        verifier.verify(&typ).await,
        Err(TokenError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_refusal_answers_401_with_a_bearer_challenge_and_a_problem() {
    let response = TokenError::Expired.into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap();
    assert_eq!(
        challenge,
        r#"Bearer realm="flotilla", error="invalid_token", error_description="the token has expired""#
    );
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], "/problems/token-expired");
    assert_eq!(problem["error"], "invalid_token");
    assert_eq!(problem["status"], 401);

    let missing = TokenError::Missing.into_response();
    assert_eq!(
        missing.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="flotilla""#
    );

    let slugs = [
        TokenError::Missing,
        TokenError::Malformed("x"),
        TokenError::Oversized,
        TokenError::UnsupportedAlg,
        TokenError::AlgMismatch,
        TokenError::UnknownKid,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::MissingClaim("sub"),
        TokenError::KeysUnavailable,
    ]
    .map(|e| e.slug());
    let unique: std::collections::BTreeSet<_> = slugs.iter().collect();
    assert_eq!(unique.len(), slugs.len(), "one slug per kind: {slugs:?}");
}

#[tokio::test]
async fn the_cache_never_serves_a_token_past_its_expiry() {
    let key = TestKey::ed25519("k");
    let clock = Clock::manual(now() * 1_000_000);
    let settings = VerifierSettings {
        max_clock_skew_ms: 5_000,
        ..VerifierSettings::default()
    };
    let verifier =
        Verifier::with_clock(&settings, KeySource::Fixed(jwks(&[&key])), clock.clone()).unwrap();
    let mut c = claims("alice");
    c["exp"] = json!(now() + 60);
    let token = key.token(&c);
    assert!(
        verifier.verify(&token).await.is_ok(),
        "verified, now cached"
    );
    clock.advance(Duration::from_secs(64));
    assert!(verifier.verify(&token).await.is_ok(), "within exp + skew");
    clock.advance(Duration::from_secs(2));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::Expired));
    assert_eq!(verifier.verify_now(&token), Err(TokenError::Expired));
}

#[tokio::test]
async fn a_cached_token_stops_verifying_when_its_key_is_withdrawn() {
    let old = TestKey::ed25519("old");
    let new = TestKey::ed25519("new");
    let verifier = fixed(&[&old, &new]);
    let token = old.token(&claims("alice"));
    let other = new.token(&claims("bob"));
    assert!(verifier.verify(&token).await.is_ok());
    assert!(verifier.verify(&other).await.is_ok());
    verifier.set_keys(&jwks(&[&new]));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::UnknownKid));
    assert!(
        verifier.verify(&other).await.is_ok(),
        "the unchanged key keeps its tokens"
    );
    // A different key published under the old kid does not revive the cached token either.
    let impostor = TestKey::ed25519("old");
    verifier.set_keys(&jwks(&[&new, &impostor]));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::BadSignature));
}

#[tokio::test]
async fn a_verifier_without_a_cache_verifies_every_time() {
    let key = TestKey::p256("k");
    let settings = VerifierSettings {
        cache_capacity: 0,
        ..VerifierSettings::default()
    };
    let verifier = Verifier::new(&settings, KeySource::Fixed(jwks(&[&key]))).unwrap();
    let token = key.token(&claims("alice"));
    assert!(verifier.verify(&token).await.is_ok());
    verifier.set_keys(&jwks(&[]));
    assert_eq!(verifier.verify(&token).await, Err(TokenError::UnknownKid));
}

#[test]
fn weak_or_foreign_keys_are_left_out_of_the_table() {
    let ed = TestKey::ed25519("ed");
    let mut hmac = ed.jwk();
    hmac.kty = "oct".into();
    hmac.kid = Some("oct".into());
    let mut enc = ed.jwk();
    enc.key_use = Some("enc".into());
    enc.kid = Some("enc".into());
    let mut lying = TestKey::p256("lying").jwk();
    lying.alg = Some("HS256".into());
    let mut short_rsa = TestKey::rsa("short").jwk();
    let n = URL_SAFE_NO_PAD
        .decode(short_rsa.n.as_deref().unwrap())
        .unwrap();
    short_rsa.n = Some(URL_SAFE_NO_PAD.encode(&n[..128]));
    let set = flotilla_identity::jwk::Jwks {
        keys: vec![ed.jwk(), hmac, enc, lying, short_rsa],
    };
    let verifier = Verifier::new(&VerifierSettings::default(), KeySource::Fixed(set)).unwrap();
    assert_eq!(verifier.kids(), ["ed"]);
}
