//! What verifying a bearer token costs: the first verification per algorithm (cache off: the
//! full check with the signature), a token seen before (cache on), and plain
//! `jsonwebtoken::decode` per algorithm for comparison.
//!
//! `cargo bench -p flotilla-identity --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{TestKey, claims, jwks};
use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_identity::verify::{KeySource, Verifier, VerifierSettings};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

fn keys() -> [TestKey; 3] {
    [
        TestKey::ed25519("ed"),
        TestKey::p256("ec"),
        TestKey::rsa("rsa"),
    ]
}

fn first_verification(c: &mut Criterion) {
    let keys = keys();
    let settings = VerifierSettings {
        cache_capacity: 0,
        ..VerifierSettings::default()
    };
    let verifier = Verifier::new(
        &settings,
        KeySource::Fixed(jwks(&keys.iter().collect::<Vec<_>>())),
    )
    .unwrap();
    let mut group = c.benchmark_group("verify_uncached");
    group.measurement_time(Duration::from_secs(3));
    for key in &keys {
        let token = key.token(&claims("alice"));
        assert!(verifier.verify_now(&token).is_ok());
        group.bench_function(key.alg(), |b| {
            b.iter(|| verifier.verify_now(black_box(&token)))
        });
    }
    group.finish();
}

fn cached_verification(c: &mut Criterion) {
    let keys = keys();
    let verifier = Verifier::new(
        &VerifierSettings::default(),
        KeySource::Fixed(jwks(&keys.iter().collect::<Vec<_>>())),
    )
    .unwrap();
    // A full cache of other tokens, as a busy gateway's would be.
    for i in 0..5_000 {
        let token = keys[0].token(&claims(&format!("user{i}")));
        verifier.verify_now(&token).unwrap();
    }
    let token = keys[0].token(&claims("alice"));
    verifier.verify_now(&token).unwrap();
    let mut group = c.benchmark_group("verify_cached");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("EdDSA", |b| {
        b.iter(|| verifier.verify_now(black_box(&token)))
    });
    group.finish();
}

fn plain_jsonwebtoken(c: &mut Criterion) {
    let mut group = c.benchmark_group("jsonwebtoken_decode");
    group.measurement_time(Duration::from_secs(3));
    for key in &keys() {
        let jwk = key.jwk();
        let (alg, decoding) = match key.alg() {
            "EdDSA" => (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(jwk.x.as_deref().unwrap()).unwrap(),
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_components(
                    jwk.x.as_deref().unwrap(),
                    jwk.y.as_deref().unwrap(),
                )
                .unwrap(),
            ),
            _ => (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(
                    jwk.n.as_deref().unwrap(),
                    jwk.e.as_deref().unwrap(),
                )
                .unwrap(),
            ),
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[flotilla_identity::DEFAULT_ISSUER]);
        validation.set_audience(&[flotilla_identity::DEFAULT_AUDIENCE]);
        validation.validate_nbf = true;
        let token = key.token(&claims("alice"));
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).is_ok());
        group.bench_function(key.alg(), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &validation)
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    first_verification,
    cached_verification,
    plain_jsonwebtoken
);
criterion_main!(benches);
