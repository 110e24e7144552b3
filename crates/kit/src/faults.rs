//! Fault injection, for demos and tests: make a process fail a share of its requests, or answer
//! late, so that breakers and retries can be watched at work.
//!
//! Off unless the `fault_injection` setting is on. Then `/admin/faults`, on the admin listener
//! ([`crate::app::admin_routes`]), takes
//! `PUT {"failure_percent": 100, "latency_ms": 0}`, `GET` and `DELETE`. Probes, `/metrics` and
//! `/admin` itself are never faulted, so the process stays registered and observable: the fault
//! is in the business endpoints only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::{Json, Problem};

/// The faults to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Share of requests answered with a 503 problem (`/problems/injected-fault`), 0 to 100.
    pub failure_percent: u8,
    /// Delay added before every request, in milliseconds (at most 60 000).
    pub latency_ms: u64,
}

/// The faults in force: a cheap, cloneable handle.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    failure_percent: Arc<AtomicU64>,
    latency_ms: Arc<AtomicU64>,
}

impl Faults {
    /// The faults in force now.
    pub fn get(&self) -> FaultSpec {
        FaultSpec {
            failure_percent: self.failure_percent.load(Ordering::Relaxed) as u8,
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
        }
    }

    /// Sets the faults; refuses values out of range.
    pub fn set(&self, spec: FaultSpec) -> Result<(), Problem> {
        if spec.failure_percent > 100 || spec.latency_ms > 60_000 {
            return Err(Problem::unprocessable(
                "invalid-faults",
                "failure_percent must be 0 to 100 and latency_ms 0 to 60000",
            ));
        }
        self.failure_percent
            .store(u64::from(spec.failure_percent), Ordering::Relaxed);
        self.latency_ms.store(spec.latency_ms, Ordering::Relaxed);
        tracing::warn!(?spec, "fault injection changed");
        Ok(())
    }

    /// The `/admin/faults` routes.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/admin/faults", get(show).put(change).delete(clear))
            .with_state(self.clone())
    }
}

async fn show(State(faults): State<Faults>) -> axum::Json<FaultSpec> {
    axum::Json(faults.get())
}

async fn change(
    State(faults): State<Faults>,
    Json(spec): Json<FaultSpec>,
) -> Result<axum::Json<FaultSpec>, Problem> {
    faults.set(spec)?;
    Ok(axum::Json(faults.get()))
}

async fn clear(State(faults): State<Faults>) -> StatusCode {
    let _ = faults.set(FaultSpec::default());
    StatusCode::NO_CONTENT
}

/// Middleware applying the faults to every request but probes, metrics and admin.
pub async fn inject(State(faults): State<Faults>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let exempt = matches!(path, "/livez" | "/readyz" | "/startupz" | "/metrics")
        || path.starts_with("/admin/");
    if !exempt {
        let spec = faults.get();
        if spec.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.latency_ms)).await;
        }
        if spec.failure_percent > 0 && rand::random_range(0..100u8) < spec.failure_percent {
            return Problem::unavailable(
                "injected-fault",
                "fault injection is failing this request",
            )
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::{FaultSpec, Faults};
    use crate::{App, Health};

    async fn status(app: &axum::Router, method: &str, path: &str, body: &str) -> u16 {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request");
        app.clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn faults_hit_business_routes_only_and_bad_settings_are_refused() {
        let health = Health::new();
        health.set_started();
        health.set_ready(true);
        let faults = Faults::default();
        let admin = crate::app::admin_router(crate::app::admin_routes(Some(&faults)));
        let app = App::new(health)
            .faults(Some(faults))
            .routes(axum::Router::new().route("/v1/things", get(|| async { "ok" })))
            .into_router();
        assert_eq!(
            status(
                &admin,
                "PUT",
                "/admin/faults",
                r#"{"failure_percent": 101}"#
            )
            .await,
            422
        );
        assert_eq!(
            status(
                &admin,
                "PUT",
                "/admin/faults",
                r#"{"failure_percent": "all"}"#
            )
            .await,
            422
        );
        assert_eq!(
            status(&app, "GET", "/v1/things", "").await,
            200,
            "bad settings changed nothing"
        );
        assert_eq!(
            status(
                &admin,
                "PUT",
                "/admin/faults",
                r#"{"failure_percent": 100}"#
            )
            .await,
            200
        );
        assert_eq!(status(&app, "GET", "/v1/things", "").await, 503);
        assert_eq!(
            status(&app, "GET", "/readyz", "").await,
            200,
            "probes are never faulted"
        );
        assert_eq!(status(&admin, "DELETE", "/admin/faults", "").await, 204);
        assert_eq!(status(&app, "GET", "/v1/things", "").await, 200);
    }

    #[tokio::test]
    async fn faults_hit_a_proxys_paths_too() {
        let proxy = tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_request: axum::extract::Request| async {
                Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response(
                    "proxied",
                ))
            },
        ));
        let faults = Faults::default();
        let admin = crate::app::admin_router(crate::app::admin_routes(Some(&faults)));
        let app = App::new(Health::new())
            .faults(Some(faults))
            .proxy(proxy)
            .into_router();
        assert_eq!(status(&app, "GET", "/v1/orders/1", "").await, 200);
        assert_eq!(
            status(
                &admin,
                "PUT",
                "/admin/faults",
                r#"{"failure_percent": 100}"#
            )
            .await,
            200
        );
        assert_eq!(status(&app, "GET", "/v1/orders/1", "").await, 503);
        assert_eq!(status(&admin, "DELETE", "/admin/faults", "").await, 204);
        assert_eq!(status(&app, "GET", "/v1/orders/1", "").await, 200);
    }

    #[tokio::test]
    async fn the_public_routes_never_serve_admin_paths() {
        let faults = Faults::default();
        let app = App::new(Health::new())
            .faults(Some(faults.clone()))
            .into_router();
        for path in ["/admin/faults", "/metrics"] {
            assert_eq!(status(&app, "GET", path, "").await, 404, "{path}");
        }
        assert_eq!(
            status(&app, "PUT", "/admin/faults", r#"{"failure_percent": 100}"#).await,
            404
        );
        assert_eq!(faults.get(), FaultSpec::default(), "nothing changed");
        let admin = crate::app::admin_router(crate::app::admin_routes(None));
        assert_eq!(status(&admin, "GET", "/admin/faults", "").await, 404);
        assert_eq!(status(&admin, "GET", "/metrics", "").await, 200);
    }
}
