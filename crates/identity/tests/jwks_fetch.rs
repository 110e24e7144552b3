//! The verifier's key fetching against a real JWKS server that counts its hits: one fetch for a
//! flood of unknown kids, at most one per interval, a failed fetch keeping the last good keys,
//! a background refresh of an old set, and 503 when no key was ever fetched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse as _;
use common::{TestKey, claims, jwks};
use flotilla_identity::jwk::Jwks;
use flotilla_identity::verify::{KeySource, TokenError, Verifier, VerifierSettings};
use flotilla_kit::clock::Clock;
use http::StatusCode;

#[derive(Clone, Default)]
struct JwksServer {
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    jwks: Arc<Mutex<Jwks>>,
}

impl JwksServer {
    async fn start(jwks: Jwks) -> (Self, String) {
        let server = Self {
            jwks: Arc::new(Mutex::new(jwks)),
            ..Self::default()
        };
        let router = axum::Router::new()
            .route(
                "/jwks.json",
                axum::routing::get(|State(s): State<JwksServer>| async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent callers really overlap with the fetch.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if s.failing.load(Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let jwks = s.jwks.lock().unwrap().clone();
                    axum::Json(jwks).into_response()
                }),
            )
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (server, url)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn settings() -> VerifierSettings {
    VerifierSettings {
        jwks_refetch_interval_ms: 10_000,
        jwks_max_age_ms: 60_000,
        ..VerifierSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cause_at_most_one_fetch_per_interval() {
    let key = TestKey::ed25519("known");
    let (server, url) = JwksServer::start(jwks(&[&key])).await;
    let clock = Clock::manual(common::now() * 1_000_000);
    let verifier = Verifier::with_clock(&settings(), KeySource::Url(url), clock.clone()).unwrap();

    // A flood at start: good tokens and tokens of 40 unknown kids, all at once. The first
    // caller fetches; every other waits for that fetch and does not start another.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let verifier = verifier.clone();
        let token = if i % 3 == 0 {
            key.token(&claims(&format!("user{i}")))
        } else {
            TestKey::ed25519(&format!("unknown-{i}")).token(&claims("mallory"))
        };
        tasks.push(tokio::spawn(
            async move { (i, verifier.verify(&token).await) },
        ));
    }
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        if i % 3 == 0 {
            assert!(outcome.is_ok(), "{i}: {outcome:?}");
        } else {
            assert_eq!(outcome, Err(TokenError::UnknownKid), "{i}");
        }
    }
    assert_eq!(server.hits(), 1, "one fetch for the whole flood");

    // More unknown kids within the interval: no fetch.
    for i in 0..20 {
        let token = TestKey::ed25519(&format!("later-{i}")).token(&claims("mallory"));
        assert_eq!(verifier.verify(&token).await, Err(TokenError::UnknownKid));
    }
    assert_eq!(server.hits(), 1);

    // Past the interval, a new key published since is found by the next fetch.
    let added = TestKey::p256("added");
    *server.jwks.lock().unwrap() = jwks(&[&key, &added]);
    clock.advance(Duration::from_secs(10));
    assert!(verifier.verify(&added.token(&claims("bob"))).await.is_ok());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys() {
    let key = TestKey::ed25519("known");
    let (server, url) = JwksServer::start(jwks(&[&key])).await;
    let clock = Clock::manual(common::now() * 1_000_000);
    let verifier = Verifier::with_clock(&settings(), KeySource::Url(url), clock.clone()).unwrap();
    assert!(verifier.refresh().await);
    server.failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    let stranger = TestKey::ed25519("stranger").token(&claims("mallory"));
    assert_eq!(
        verifier.verify(&stranger).await,
        Err(TokenError::UnknownKid)
    );
    assert_eq!(server.hits(), 2, "the failed fetch happened");
    assert_eq!(verifier.kids(), ["known"]);
    // A token never seen (so not cached) still verifies with the kept key.
    assert!(verifier.verify(&key.token(&claims("alice"))).await.is_ok());
}

#[tokio::test]
async fn an_old_set_is_refreshed_in_the_background() {
    let old = TestKey::ed25519("old");
    let (server, url) = JwksServer::start(jwks(&[&old])).await;
    let clock = Clock::manual(common::now() * 1_000_000);
    let verifier = Verifier::with_clock(&settings(), KeySource::Url(url), clock.clone()).unwrap();
    let token = old.token(&claims("alice"));
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(server.hits(), 1);

    // The issuer retires the key; no unknown kid arrives, but the set grows old.
    *server.jwks.lock().unwrap() = Jwks::default();
    clock.advance(Duration::from_secs(61));
    assert!(
        verifier.verify(&token).await.is_ok(),
        "served while the refresh runs"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while verifier.kids() == ["old"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(verifier.verify(&token).await, Err(TokenError::UnknownKid));
}

#[tokio::test]
async fn without_any_key_the_answer_is_503_not_401() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let verifier = Verifier::new(&settings(), KeySource::Url(url)).unwrap();
    let token = TestKey::ed25519("k").token(&claims("alice"));
    let refused = verifier.verify(&token).await.unwrap_err();
    assert_eq!(refused, TokenError::KeysUnavailable);
    let response = refused.into_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(http::header::RETRY_AFTER));
}
