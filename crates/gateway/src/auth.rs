//! The authentication layer: who may call a route ([`Access`]), checked before anything is
//! sent upstream.
//!
//! | the request | the answer |
//! | --- | --- |
//! | a public route | passed on with the gateway's own token (the services check every caller); a client's token is not forwarded |
//! | no bearer token | 401, `WWW-Authenticate: Bearer realm="flotilla"` |
//! | a token that does not verify (signature, `alg`, `kid`, expiry, issuer, audience, size) | 401, `WWW-Authenticate: Bearer … error="invalid_token"` |
//! | a valid token without one of the route's `roles` | 403 `forbidden` |
//! | a valid token without all the route's `scopes` | 403, `WWW-Authenticate: Bearer … error="insufficient_scope"` |
//!
//! Every refusal is a problem document, and none reaches the upstream or counts against it.
//! The caller a token names ([`Principal`]) goes on in the exchange's extensions, for the
//! layers below (the rate limit keys by it) to know it without verifying the token again.
//! The token itself travels on to the service, which verifies it against the same keys
//! (the caller's identity in a form the service checks itself); identity headers a client
//! sends ([`IDENTITY_HEADERS`], and every `x-flotilla-*`) are removed from every request,
//! public routes included, so that no service can be told who the caller is by the caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use flotilla_discovery::outbound::{Exchange, Failure};
use flotilla_identity::verify::{Forbidden, REALM};
use flotilla_identity::{Principal, TokenSource, Verifier};
use flotilla_kit::Problem;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tower::{Layer, Service, ServiceExt};

use crate::routes::Access;

/// Headers that name a caller, set by some proxies for the services behind them: a client
/// that sends one is not believed, it is removed.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-user",
    "x-user-id",
    "x-userid",
    "x-remote-user",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-authenticated-scope",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-consumer-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-client-id",
    "x-roles",
    "x-scopes",
    "x-jwt-claims",
    "x-jwt-payload",
    "remote-user",
];

/// Whether `name` (lower case, as `http` keeps it) is an identity header.
fn is_identity_header(name: &str) -> bool {
    name.starts_with("x-flotilla-") || IDENTITY_HEADERS.contains(&name)
}

/// Removes every identity header ([`IDENTITY_HEADERS`], `x-flotilla-*`) from `headers`.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| is_identity_header(name.as_str())) {
        return;
    }
    let present: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// Layer of [`Authorize`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
    verifier: Option<Verifier>,
    own_token: Option<TokenSource>,
}

impl AuthLayer {
    /// Lets through what `access` allows, checking tokens with `verifier` (a route that needs
    /// a token and has no verifier refuses every request with 503: the gateway refuses to
    /// start so, but a test may build one).
    pub fn new(access: Access, verifier: Option<Verifier>) -> Self {
        Self {
            access: Arc::new(access),
            verifier,
            own_token: None,
        }
    }

    /// A public route's requests go on with the gateway's own token from `token` (the services
    /// refuse a caller without one); without it they go on with none.
    pub fn with_own_token(mut self, token: Option<TokenSource>) -> Self {
        self.own_token = token;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            access: self.access.clone(),
            verifier: self.verifier.clone(),
            own_token: self.own_token.clone(),
        }
    }
}

/// Checks the caller's token against the route's [`Access`]; see the [module](self).
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    access: Arc<Access>,
    verifier: Option<Verifier>,
    own_token: Option<TokenSource>,
}

type Answer = Result<Response, Failure>;

impl<S> Service<Exchange> for Authorize<S>
where
    S: Service<Exchange, Response = Response, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let Access::Authenticated { .. } = *self.access else {
            // A public route: the client's token, unchecked, is not passed on; the gateway
            // calls on its own behalf.
            exchange.headers.remove(header::AUTHORIZATION);
            let Some(token) = self.own_token.clone() else {
                return Box::pin(inner.oneshot(exchange));
            };
            return Box::pin(async move {
                match token.bearer().await {
                    Ok(bearer) => {
                        exchange.headers.insert(header::AUTHORIZATION, bearer);
                        inner.oneshot(exchange).await
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the gateway has no token of its own");
                        Ok(Problem::unavailable(
                            "identity-unavailable",
                            "the gateway cannot get its own token from the identity provider; retry shortly",
                        )
                        .into_response())
                    }
                }
            });
        };
        let access = self.access.clone();
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let Access::Authenticated { roles, scopes } = &*access else {
                return inner.oneshot(exchange).await;
            };
            match admit(roles, scopes, verifier.as_ref(), &exchange.headers).await {
                Ok(principal) => {
                    // For the layers below (the rate limit keys by it): verified once.
                    exchange.extensions.insert(principal);
                    inner.oneshot(exchange).await
                }
                Err(refusal) => Ok(refusal),
            }
        })
    }
}

/// The caller named by the token in `headers`, if it verifies and has one of `roles` (any, if
/// empty) and every one of `scopes`; the refusal's answer if not.
async fn admit(
    roles: &[String],
    scopes: &[String],
    verifier: Option<&Verifier>,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let Some(verifier) = verifier else {
        let problem = Problem::unavailable(
            "no-identity-provider",
            "this route needs a token, and the gateway has no identity provider to check it",
        );
        return Err(problem.into_response());
    };
    let principal = verifier
        .verify_headers(headers)
        .await
        .map_err(IntoResponse::into_response)?;
    if !roles.is_empty() && !roles.iter().any(|role| principal.has_role(role)) {
        let problem = Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this route needs one of the roles {}", roles.join(", ")),
        )
        .with("error", "insufficient_scope");
        return Err(problem.into_response());
    }
    if let Some(missing) = scopes.iter().find(|scope| !principal.has_scope(scope)) {
        let mut response = Forbidden {
            what: "scope",
            name: missing.clone(),
        }
        .into_response();
        let challenge = format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
            scopes.join(" ")
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        return Err(response);
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_from_a_client_are_removed() {
        let mut headers = HeaderMap::new();
        for name in IDENTITY_HEADERS {
            headers.insert(*name, HeaderValue::from_static("admin"));
        }
        headers.insert("x-flotilla-subject", HeaderValue::from_static("admin"));
        headers.insert("X-Forwarded-User", HeaderValue::from_static("admin"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_identity_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(http::HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "authorization", "x-request-id"]);
    }
}
