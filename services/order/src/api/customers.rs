//! Whether the customer named in a new order exists: asked of the payment service, which keeps
//! the customers' accounts, then remembered.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use flotilla_discovery::Discovery;
use flotilla_kit::Problem;

/// The most customer ids remembered as existing; past it the set starts again (a customer is
/// then asked about once more).
const MAX_KNOWN: usize = 100_000;

/// The customers known to exist: asked of the payment service (which keeps their accounts)
/// once, then remembered (an account is never deleted).
#[derive(Debug, Default)]
pub struct Customers {
    known: Mutex<HashSet<String>>,
}

impl Customers {
    /// `Ok` if customer `id` has an account; 422 `unknown-customer` if the payment service
    /// knows none; 503 if it cannot be asked. Called with the service's own token.
    pub(super) async fn ensure(&self, discovery: &Discovery, id: &str) -> Result<(), Problem> {
        if lock(&self.known).contains(id) {
            return Ok(());
        }
        let path = format!("/v1/accounts/{id}");
        let answer = discovery
            .send(
                "payment",
                http::Method::GET,
                &path,
                &HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        match answer {
            Ok((StatusCode::OK, _)) => {
                let mut known = lock(&self.known);
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(id.to_owned());
                Ok(())
            }
            Ok((StatusCode::NOT_FOUND, _)) => Err(Problem::unprocessable(
                "unknown-customer",
                format!("no customer `{id}` has an account"),
            )
            .with("customer_id", id.to_owned())),
            Ok((status, _)) => Err(payment_unavailable(&format!("payment answered {status}"))),
            Err(error) => Err(payment_unavailable(&error)),
        }
    }
}

fn payment_unavailable(cause: &dyn std::fmt::Display) -> Problem {
    tracing::warn!(%cause, "checking the customer failed");
    Problem::unavailable(
        "payment-unavailable",
        "the customer's account cannot be checked; retry shortly",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
