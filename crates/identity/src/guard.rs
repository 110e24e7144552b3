//! A service's check of who calls it: every request to its API carries a bearer token that
//! verifies against the platform's keys, or is refused before any handler runs.
//!
//! The gateway forwards the user's own token; a platform process calling on its own behalf
//! sends its own ([`TokenSource`](crate::client::TokenSource)). [`guard()`] verifies it (with the
//! same [`Verifier`] as the gateway: cached, so a token the gateway just checked costs a hash
//! lookup) and puts the [`Principal`] in the request's extensions, where a handler takes it
//! with the [`Caller`] extractor and decides ownership ([`Principal::confined_to`]).
//!
//! | the request | the answer |
//! | --- | --- |
//! | no bearer token | 401 `/problems/token-missing` with `WWW-Authenticate` |
//! | a token that does not verify | 401 `/problems/token-<why>` |
//! | keys not fetched yet | 503 with `Retry-After` |
//! | a process without a verifier (no `identity.url`) | 503 `/problems/no-identity-provider` |
//!
//! The probes (`/livez`, `/readyz`, `/startupz`) stay outside the guard: they say only whether
//! the process is up, and the registry and orchestrators call them without a credential.

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use flotilla_kit::Problem;
use http::request::Parts;

use crate::{Principal, TokenError, Verifier};

/// Wraps `routes` so that each request must carry a verified token (see the [module](self));
/// without a verifier every request is refused with 503.
pub fn guard(routes: axum::Router, verifier: Option<Verifier>) -> axum::Router {
    routes.layer(middleware::from_fn_with_state(verifier, check))
}

/// The middleware of [`guard`].
async fn check(
    State(verifier): State<Option<Verifier>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(verifier) = verifier else {
        return Problem::unavailable(
            "no-identity-provider",
            "this service checks every caller's token and knows no identity provider (set identity.url)",
        )
        .into_response();
    };
    match verifier.verify_headers(request.headers()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The verified caller of a request that went through [`guard`]: a handler's extractor. A
/// request that did not (a route left outside the guard) is refused with 401.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| TokenError::Missing.into_response())
    }
}

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}
