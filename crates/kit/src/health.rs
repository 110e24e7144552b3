//! Health probes: `/livez`, `/readyz` and `/startupz`.
//!
//! * live: the process answers at all (always 200 while the server runs);
//! * started: start-up work (opening the database, migrations, seeding) is done;
//! * ready: started, and registered where the component registers; it turns false first thing on
//!   shutdown so that nobody routes new work to a draining process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

/// A cheap, cloneable handle on a process's health flags.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    started: AtomicBool,
    ready: AtomicBool,
}

impl Health {
    /// A handle with every flag down.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks start-up as done.
    pub fn set_started(&self) {
        self.inner.started.store(true, Ordering::SeqCst);
    }

    /// Marks the process ready (or not) to take traffic.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether start-up is done.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Whether the process takes traffic: started and ready.
    pub fn is_ready(&self) -> bool {
        self.is_started() && self.inner.ready.load(Ordering::SeqCst)
    }

    /// The three probe routes.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let ready = self.clone();
        let started = self.clone();
        Router::new()
            .route("/livez", get(|| async { probe(true) }))
            .route(
                "/readyz",
                get(move || async move { probe(ready.is_ready()) }),
            )
            .route(
                "/startupz",
                get(move || async move { probe(started.is_started()) }),
            )
    }
}

fn probe(ok: bool) -> impl IntoResponse {
    if ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
