//! The token endpoint's limits: an account tried too often in a minute is refused with 429
//! before any password is checked (the right one too), other accounts are not; one address
//! sending too many requests a second is refused too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{TestIdp, assert_oauth_error, token_request};
use http::{StatusCode, header};

fn password(user: &str, password: &str) -> String {
    format!("grant_type=password&username={user}&password={password}")
}

#[tokio::test]
async fn an_account_tried_too_often_is_refused_before_its_password_is_checked() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let idp = TestIdp::start_in(dir, |settings| settings.attempts_per_account_per_minute = 3).await;
    for _ in 0..3 {
        let answer = token_request(&idp, &password("alice", "guess"), &[]).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
    }
    // The fourth try in the minute is refused, the right password included.
    let answer = token_request(&idp, &password("alice", "alice-dev-password"), &[]).await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        answer.body
    );
    let body = answer.json();
    assert_eq!(body["type"], "/problems/too-many-attempts");
    assert_eq!(body["error"], "slow_down");
    let retry: u64 = answer.header(header::RETRY_AFTER).parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    // Another account is not held up.
    let answer = token_request(&idp, &password("bob", "bob-dev-password"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    // A client is an account too.
    let form = "grant_type=client_credentials&client_id=order&client_secret=wrong";
    for _ in 0..3 {
        let answer = token_request(&idp, form, &[]).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let answer = token_request(&idp, form, &[]).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_address_sending_too_many_requests_is_refused() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // One a second, a burst of five.
    let idp = TestIdp::start_in(dir, |settings| settings.token_requests_per_second = 1).await;
    let mut refused = 0;
    for n in 0..8 {
        // Each names another account, so that only the address counts.
        let answer = token_request(&idp, &password(&format!("nobody-{n}"), "x"), &[]).await;
        match answer.status {
            StatusCode::BAD_REQUEST => assert_eq!(refused, 0, "admitted after a refusal"),
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(answer.json()["type"], "/problems/too-many-attempts");
                assert!(!answer.header(header::RETRY_AFTER).is_empty());
            }
            other => panic!("request {n}: {other}"),
        }
    }
    assert!(
        (2..=3).contains(&refused),
        "{refused} of 8 refused past a burst of 5"
    );
}
