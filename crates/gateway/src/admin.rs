//! Operator controls of the gateway's circuit breakers, served on the gateway's admin listener
//! (never on its public port) when the `admin_api` setting is on; each request needs a token
//! with the role `admin` (`flotilla_identity::admin`):
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `GET /admin/breakers` | every upstream's breaker: state and configuration |
//! | `PUT /admin/breakers/{service}/config` | replace a breaker's configuration at run time (calls in flight finish as usual) |
//! | `PUT /admin/breakers/{service}/force` | `{"state": "open"}`, `{"state": "disabled"}` or `{"state": null}` (back to closed) |
//! | `PUT /admin/retries/{service}` | replace an upstream's retry policy at run time |

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use flotilla_kit::{Json, Problem};
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced, State as BreakerState};
use flotilla_resilience::retry::RetryConfig;
use serde::{Deserialize, Serialize};

use crate::Gateway;

/// A breaker as the admin API shows it.
#[derive(Debug, Serialize)]
struct View {
    state: BreakerState,
    config: BreakerConfig,
}

/// The body of a force request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Force {
    state: Option<Forced>,
}

/// The admin routes.
pub fn routes(gateway: Gateway) -> Router {
    Router::new()
        .route("/admin/breakers", get(list))
        .route("/admin/breakers/{service}/config", put(configure))
        .route("/admin/breakers/{service}/force", put(force))
        .route("/admin/retries/{service}", put(retries))
        .with_state(gateway)
}

fn view(breaker: &CircuitBreaker) -> View {
    View {
        state: breaker.state(),
        config: breaker.config(),
    }
}

fn breaker(gateway: &Gateway, service: &str) -> Result<CircuitBreaker, Problem> {
    gateway
        .breaker(service)
        .ok_or_else(|| Problem::not_found(format!("no upstream service `{service}`")))
}

async fn list(State(gateway): State<Gateway>) -> axum::Json<BTreeMap<String, View>> {
    let views = gateway
        .upstreams()
        .into_iter()
        .filter_map(|service| Some((service.clone(), view(&gateway.breaker(&service)?))))
        .collect();
    axum::Json(views)
}

async fn configure(
    State(gateway): State<Gateway>,
    Path(service): Path<String>,
    Json(config): Json<BreakerConfig>,
) -> Result<axum::Json<View>, Problem> {
    let breaker = breaker(&gateway, &service)?;
    breaker
        .reconfigure(config)
        .map_err(|e| Problem::unprocessable("invalid-breaker-config", e.to_string()))?;
    tracing::warn!(%service, "circuit breaker reconfigured by an operator");
    Ok(axum::Json(view(&breaker)))
}

async fn force(
    State(gateway): State<Gateway>,
    Path(service): Path<String>,
    Json(body): Json<Force>,
) -> Result<axum::Json<View>, Problem> {
    let breaker = breaker(&gateway, &service)?;
    breaker.force(body.state);
    tracing::warn!(%service, state = ?body.state, "circuit breaker forced by an operator");
    Ok(axum::Json(view(&breaker)))
}

async fn retries(
    State(gateway): State<Gateway>,
    Path(service): Path<String>,
    Json(config): Json<RetryConfig>,
) -> Result<axum::Json<RetryConfig>, Problem> {
    let policy = gateway
        .retry(&service)
        .ok_or_else(|| Problem::not_found(format!("no upstream service `{service}`")))?;
    policy
        .reconfigure(config)
        .map_err(|e| Problem::unprocessable("invalid-retry-config", e.to_string()))?;
    tracing::warn!(%service, "retry policy reconfigured by an operator");
    Ok(axum::Json(policy.config()))
}
