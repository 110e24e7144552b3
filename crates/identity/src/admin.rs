//! A process's admin listener: `/metrics` and `/admin/*` on a port of their own, never on the
//! public one, each request checked for an operator's token.
//!
//! | the request | needs |
//! | --- | --- |
//! | `GET /metrics` | a token with the scope [`METRICS_SCOPE`] (the `admin` and `service` roles have it; a Prometheus scrape uses a client of its own with that scope) |
//! | anything under `/admin/` | a token with the role `admin` |
//! | anything else | an `admin` token, then 404: without a token nothing tells which paths exist |
//!
//! Refusals are the verifier's: 401 with `WWW-Authenticate` without a valid token, 403 without
//! the role or scope. A process without a verifier (no `identity.url`) refuses every admin
//! request with 503: its admin port is never open.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use flotilla_kit::{ConnectionLimits, Problem};
use tokio::net::TcpListener;

use crate::Verifier;

/// The scope that reads `/metrics`.
pub const METRICS_SCOPE: &str = "metrics:read";

/// The role every `/admin/*` request needs.
pub const ADMIN_ROLE: &str = "admin";

/// `routes` behind the admin token check (see the [module](self)), inside the kit's admin
/// layers (request id, problems).
pub fn guard(routes: Router, verifier: Option<Verifier>) -> Router {
    // The fallback first, so that the check covers unknown paths too: without a token, an
    // admin listener tells nothing of which paths it serves.
    let routes = routes
        .fallback(|| async { Problem::not_found("no admin route matches this path") })
        .layer(middleware::from_fn_with_state(verifier, check));
    flotilla_kit::app::admin_router(routes)
}

async fn check(State(verifier): State<Option<Verifier>>, request: Request, next: Next) -> Response {
    let Some(verifier) = verifier else {
        return Problem::unavailable(
            "no-identity-provider",
            "the admin listener checks an operator's token and knows no identity provider (set identity.url)",
        )
        .into_response();
    };
    let principal = match verifier.verify_headers(request.headers()).await {
        Ok(principal) => principal,
        Err(error) => return error.into_response(),
    };
    let allowed = if request.uri().path() == "/metrics" {
        principal.require_scope(METRICS_SCOPE)
    } else {
        principal.require_role(ADMIN_ROLE)
    };
    match allowed {
        Ok(()) => next.run(request).await,
        Err(forbidden) => forbidden.into_response(),
    }
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminListener {
    /// Where it listens.
    pub address: SocketAddr,
    /// The server task; it ends when the `drain` given to [`serve`] fires.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `address` and serves `routes` there behind the admin token check ([`guard`]) until
/// `drain` fires.
pub async fn serve(
    address: SocketAddr,
    routes: Router,
    verifier: Option<Verifier>,
    limits: ConnectionLimits,
    drain: tokio_util::sync::CancellationToken,
) -> std::io::Result<AdminListener> {
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let router = guard(routes, verifier);
    let task = tokio::spawn(flotilla_kit::serve(
        listener,
        router,
        limits,
        drain.cancelled_owned(),
    ));
    tracing::info!(%address, "admin listening");
    Ok(AdminListener { address, task })
}
