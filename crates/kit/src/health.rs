//! Health probes: `/livez`, `/readyz` and `/startupz`.
//!
//! * live: the process answers at all (always 200 while the server runs);
//! * started: start-up work (migrations, seeding, subscriptions) is done. Until then
//!   `/startupz` answers 503 with the step under way ([`Health::starting`]);
//! * ready: started, registered where the component registers, and nothing it depends on
//!   missing. `/readyz` answers 503 with every reason it is not ([`Health::not_ready`]: the
//!   registry unreachable, a broker not answering, draining on shutdown).
//!
//! The 503 answers are problem documents (`/problems/not-started`, `/problems/not-ready`)
//! whose `detail` says why, and whose `reasons` member lists each reason by what it is about.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Problem;

/// A cheap, cloneable handle on a process's health flags.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    started: AtomicBool,
    ready: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What start-up is doing now.
    step: Option<String>,
    /// Why the process is not ready: what it is about → why.
    reasons: BTreeMap<String, String>,
}

impl Health {
    /// A handle with every flag down.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the start-up step under way (what `/startupz` says until start-up is done).
    pub fn starting(&self, step: impl Into<String>) {
        self.state().step = Some(step.into());
    }

    /// Marks start-up as done.
    pub fn set_started(&self) {
        self.state().step = None;
        self.inner.started.store(true, Ordering::SeqCst);
    }

    /// Marks the process ready (or not) to take traffic.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Records that the process is not ready because of `about` (`registry`, `broker`,
    /// `shutdown`, …), for `why`; it is ready again once every such reason is cleared
    /// ([`Health::ready_again`]).
    pub fn not_ready(&self, about: &str, why: impl Into<String>) {
        self.state().reasons.insert(about.to_owned(), why.into());
    }

    /// Clears the reason about `about`.
    pub fn ready_again(&self, about: &str) {
        self.state().reasons.remove(about);
    }

    /// Whether start-up is done.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Whether the process takes traffic: started, ready, and no reason not to be.
    pub fn is_ready(&self) -> bool {
        self.is_started()
            && self.inner.ready.load(Ordering::SeqCst)
            && self.state().reasons.is_empty()
    }

    /// The answer of `/startupz`.
    pub fn startup(&self) -> Response {
        if self.is_started() {
            return (StatusCode::OK, "ok").into_response();
        }
        let step = self
            .state()
            .step
            .clone()
            .unwrap_or_else(|| "starting".to_owned());
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-started",
            format!("start-up is not done: {step}"),
        )
        .with("step", step)
        .into_response()
    }

    /// The answer of `/readyz`.
    pub fn readiness(&self) -> Response {
        if self.is_ready() {
            return (StatusCode::OK, "ok").into_response();
        }
        let mut reasons = self.state().reasons.clone();
        if !self.is_started() {
            let step = self.state().step.clone();
            reasons.insert(
                "startup".to_owned(),
                step.unwrap_or_else(|| "starting".to_owned()),
            );
        } else if reasons.is_empty() {
            reasons.insert("process".to_owned(), "not taking traffic".to_owned());
        }
        let detail = reasons
            .iter()
            .map(|(about, why)| format!("{about}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("not ready: {detail}"),
        )
        .with(
            "reasons",
            serde_json::to_value(&reasons).unwrap_or_default(),
        )
        .into_response()
    }

    /// The three probe routes.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let ready = self.clone();
        let started = self.clone();
        Router::new()
            .route("/livez", get(|| async { (StatusCode::OK, "ok") }))
            .route("/readyz", get(move || async move { ready.readiness() }))
            .route("/startupz", get(move || async move { started.startup() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    #[tokio::test]
    async fn the_probes_say_why_the_process_is_not_started_or_not_ready() {
        let health = Health::new();
        health.starting("applying the database's migrations");
        let (status, body) = answer(health.startup()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["type"], "/problems/not-started");
        assert_eq!(body["step"], "applying the database's migrations");
        let (status, body) = answer(health.readiness()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body["reasons"]["startup"],
            "applying the database's migrations"
        );

        health.set_started();
        health.set_ready(true);
        assert_eq!(health.startup().status(), StatusCode::OK);
        assert_eq!(health.readiness().status(), StatusCode::OK);

        health.not_ready("registry", "registry unreachable");
        health.not_ready("broker", "NATS does not answer");
        let (status, body) = answer(health.readiness()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["type"], "/problems/not-ready");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("registry: registry unreachable")
                && detail.contains("broker: NATS does not answer"),
            "{detail}"
        );
        assert_eq!(health.startup().status(), StatusCode::OK, "still started");
        health.ready_again("registry");
        health.ready_again("broker");
        assert_eq!(health.readiness().status(), StatusCode::OK);

        health.set_ready(false);
        let (_, body) = answer(health.readiness()).await;
        assert_eq!(body["reasons"]["process"], "not taking traffic");
    }
}
