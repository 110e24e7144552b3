//! The HTTP stack every Flotilla process serves, assembled in one place.
//!
//! From the outside in (the order matters and is tested):
//!
//! 1. **request id**: `x-request-id` is kept if the client sent one, else a UUIDv7 is set; it is
//!    copied onto the response;
//! 2. **trace span**: one span per request carrying method, path and request id;
//! 3. **metrics**: request count and latency by route template and status;
//! 4. **problems**: every error response leaves as `application/problem+json` with the request id;
//! 5. **body limit**: bodies read by extractors are capped at `max_body_bytes` (413 beyond);
//! 6. the routes, plus `/livez`, `/readyz`, `/startupz` and `/metrics`.

use std::future::Future;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::{Health, Problem, metrics};

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds a process's router: its own routes inside the kit's stack.
#[derive(Debug)]
pub struct App {
    routes: Router,
    health: Health,
    max_body_bytes: usize,
}

impl App {
    /// An app with the probes of `health` and no routes yet.
    pub fn new(health: Health) -> Self {
        Self {
            routes: Router::new(),
            health,
            max_body_bytes: 64 * 1024,
        }
    }

    /// Adds routes.
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Sets the largest body an extractor will read.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The finished router.
    pub fn into_router(self) -> Router {
        // Install the recorder now: metrics recorded before it exists are lost.
        metrics::handle();
        let routes = self
            .routes
            .merge(self.health.routes())
            .route("/metrics", get(metrics::render))
            .fallback(|| async { Problem::not_found("no route matches this path") });
        routes.layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeUuidV7))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|request: &Request| {
                        let request_id = request
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default();
                        tracing::info_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id,
                        )
                    }),
                )
                .layer(middleware::from_fn(metrics::record))
                .layer(middleware::from_fn(problems))
                .layer(DefaultBodyLimit::max(self.max_body_bytes)),
        )
    }
}

/// Request ids are UUIDv7: unique and sortable by time.
#[derive(Debug, Clone, Copy)]
struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Turns every error response into a problem document carrying the request id and path.
///
/// Problems raised by handlers are found in the response extensions; bare framework errors
/// (405, 413 from a body limit, …) are recognised by an empty body. Error responses that already
/// carry a body (a proxied upstream's own problem, say) pass through untouched.
async fn problems(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let problem = match response.extensions().get::<Problem>() {
        Some(problem) => problem.clone(),
        None if is_empty(&response) => bare(status),
        None => return response,
    };
    let (mut parts, _) = response.into_parts();
    let mut problem = problem;
    problem.request_id = request_id;
    problem.instance.get_or_insert(path);
    let rendered = problem.into_response();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::problem::CONTENT_TYPE),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, rendered.into_body())
}

fn is_empty(response: &Response) -> bool {
    use http_body::Body as _;
    response.body().size_hint().exact() == Some(0)
}

fn bare(status: StatusCode) -> Problem {
    let (slug, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "this method is not allowed here"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body-too-large", "the request body is too large"),
        StatusCode::NOT_FOUND => ("not-found", "no route matches this path"),
        _ => ("http-error", status.canonical_reason().unwrap_or("error")),
    };
    Problem::new(status, slug, detail)
}

/// Serves `router` on an already bound `listener` until `drain` completes, then stops accepting
/// and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    drain: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(drain)
        .await
}

/// Reads a whole body into bytes (tests and small internal payloads).
pub async fn body_bytes(body: Body) -> Result<bytes::Bytes, axum::Error> {
    Ok(body.collect().await?.to_bytes())
}
