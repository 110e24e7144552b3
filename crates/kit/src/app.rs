//! The HTTP stack every Flotilla process serves, assembled in one place.
//!
//! From the outside in (the order matters and is tested):
//!
//! 1. **request id**: `x-request-id` is kept if the client sent one (the listener,
//!    [`crate::server`], has removed one that is not fit to keep), else a UUIDv7 is set; it is
//!    copied onto the response;
//! 2. **trace span**: one span per request carrying method, path and request id;
//! 3. **metrics**: request count and latency by route template and status;
//! 4. **problems**: every error response leaves as `application/problem+json` with the request id;
//! 5. **body limit**: bodies read by extractors are capped at `max_body_bytes` (413 beyond);
//! 6. the routes, plus `/livez`, `/readyz` and `/startupz`.
//!
//! `/metrics` and `/admin/faults` are not among them: they belong on the process's admin
//! listener ([`admin_routes`]), which checks an operator's token.
//!
//! A proxy ([`App::proxy`]) serves every other path outside these layers: it answers for
//! itself (the gateway sets the request id, writes its access line, counts its routes and
//! stamps its problems in one layer of its own), so a proxied request pays for none of the
//! generic chain.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
    faults: Option<crate::faults::Faults>,
    proxy: Option<Proxy>,
}

/// The service a proxy serves every unmatched path with.
pub type Proxy = tower::util::BoxCloneSyncService<Request, Response, std::convert::Infallible>;

impl App {
    /// An app with the probes of `health` and no routes yet.
    pub fn new(health: Health) -> Self {
        Self {
            routes: Router::new(),
            health,
            max_body_bytes: 64 * 1024,
            faults: None,
            proxy: None,
        }
    }

    /// Applies the faults `faults` holds to the app's routes (see [`crate::faults`]); they are
    /// set through [`admin_routes`] on the admin listener.
    pub fn faults(mut self, faults: Option<crate::faults::Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Adds routes.
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Serves every path that no route of the app matches with `proxy`, outside the kit's
    /// layers: `proxy` sets its own request id, records its own metrics and renders its own
    /// problems (see [`stamp_problem`] and [`new_request_id`]). Without a proxy, an unmatched
    /// path is a 404 problem.
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = Some(proxy);
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
        let mut routes = self.routes;
        if let Some(faults) = &self.faults {
            routes = routes.layer(middleware::from_fn_with_state(
                faults.clone(),
                crate::faults::inject,
            ));
        }
        let routes = routes
            .merge(self.health.routes())
            .fallback(|| async { Problem::not_found("no route matches this path") });
        let layered = routes.layer(
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
        );
        // Set after the layers, so that they do not wrap it; injected faults apply to it as to
        // the app's own routes.
        match (self.proxy, self.faults) {
            (Some(proxy), Some(faults)) => layered.fallback_service(
                ServiceBuilder::new()
                    .layer(middleware::from_fn_with_state(
                        faults,
                        crate::faults::inject,
                    ))
                    .service(proxy),
            ),
            (Some(proxy), None) => layered.fallback_service(proxy),
            (None, _) => layered,
        }
    }
}

/// The routes of a process's admin listener: `/metrics` (Prometheus text) and, with
/// `faults`, `/admin/faults`; inside the kit's request id and problem layers. The caller puts
/// them behind a token check (`flotilla_identity::admin`).
pub fn admin_routes(faults: Option<&crate::faults::Faults>) -> Router {
    metrics::handle();
    let mut routes = Router::new().route("/metrics", get(metrics::render));
    if let Some(faults) = faults {
        routes = routes.merge(faults.routes());
    }
    routes
}

/// `routes` inside the layers every admin listener has: request id, and problems for every
/// error (an unknown path is a 404 problem: give `routes` a fallback of its own, before any
/// layer that must see unknown paths too).
pub fn admin_router(routes: Router) -> Router {
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeUuidV7))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(middleware::from_fn(problems)),
    )
}

/// A fresh request id: a UUIDv7 (unique, and sortable by time), written without an
/// intermediate string.
pub fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `response` with its [`Problem`] (the response extension [`Problem`]'s rendering leaves)
/// rendered again carrying `request_id` and, unless it names one, `path` as its instance.
/// A response without one is returned as it is.
pub fn stamp_problem(response: Response, request_id: Option<&str>, path: &str) -> Response {
    let Some(problem) = response.extensions().get::<Problem>() else {
        return response;
    };
    let mut problem = problem.clone();
    let (parts, _) = response.into_parts();
    problem.request_id = request_id.map(str::to_owned);
    problem.instance.get_or_insert_with(|| path.to_owned());
    render(parts, problem)
}

/// `problem` as the body of the response `parts` describe.
fn render(mut parts: http::response::Parts, problem: Problem) -> Response {
    let rendered = problem.into_response();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::problem::CONTENT_TYPE),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, rendered.into_body())
}

/// Request ids are UUIDv7: unique and sortable by time.
#[derive(Debug, Clone, Copy)]
struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id()))
    }
}

/// Turns every error response into a problem document carrying the request id and path.
///
/// Problems raised by handlers are found in the response extensions; bare framework errors
/// (405, 413 from a body limit, …) are recognised by an empty body, and the framework's
/// rejections by a plain-text one (its text becomes the detail). Other error responses that
/// carry a body, and every response marked [`Relayed`] (an upstream's own answer, forwarded by
/// the gateway), pass through untouched.
async fn problems(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let relayed = response.extensions().get::<Relayed>().is_some();
    if !(status.is_client_error() || status.is_server_error()) || relayed {
        return response;
    }
    let empty = is_empty(&response);
    let (parts, body) = response.into_parts();
    let mut problem = match parts.extensions.get::<Problem>() {
        Some(problem) => problem.clone(),
        None if empty => bare(status),
        None if is_plain_text(&parts.headers) => {
            // A rejection of the framework's (a path it cannot decode, say): its text becomes
            // the problem's detail.
            let mut problem = bare(status);
            if let Ok(text) = axum::body::to_bytes(body, 4096).await
                && !text.is_empty()
            {
                problem.detail = Some(String::from_utf8_lossy(&text).into_owned());
            }
            problem
        }
        None => return Response::from_parts(parts, body),
    };
    problem.request_id = request_id;
    problem.instance.get_or_insert(path);
    render(parts, problem)
}

/// Marks a response relayed from an upstream (by the gateway): it leaves as it came, even when
/// it is an error without a problem body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relayed;

fn is_plain_text(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/plain"))
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::{get, post};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let routes = Router::new()
            .route(
                "/items/{id}",
                get(|| async { Problem::not_found("no such item") }),
            )
            .route(
                "/echo",
                post(|crate::Json(v): crate::Json<serde_json::Value>| async move { axum::Json(v) }),
            );
        let health = Health::new();
        health.set_started();
        App::new(health)
            .max_body_bytes(1024)
            .routes(routes)
            .into_router()
    }

    /// Sends the request `request` makes, with `body`, to [`app`]: its status, headers and JSON
    /// body (`null` when there is none).
    async fn send(
        request: http::request::Builder,
        body: impl Into<Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let request = request.body(body.into()).expect("request");
        let response = app().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    /// A JSON POST to `/echo`.
    fn echo() -> http::request::Builder {
        Request::post("/echo").header("content-type", "application/json")
    }

    use axum::http::HeaderMap;

    #[tokio::test]
    async fn a_handler_problem_carries_the_request_id_and_the_path() {
        let request = Request::get("/items/7").header("x-request-id", "abc");
        let (status, headers, body) = send(request, Body::empty()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], crate::problem::CONTENT_TYPE);
        assert_eq!(headers["x-request-id"], "abc");
        assert_eq!(body["request_id"], "abc");
        assert_eq!(body["instance"], "/items/7");
        assert_eq!(body["type"], "/problems/not-found");
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_one() {
        let (_, headers, body) = send(Request::get("/nowhere"), Body::empty()).await;
        let id = headers["x-request-id"].to_str().expect("ascii");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert_eq!(
            body["request_id"], id,
            "the problem names the same id as the header"
        );
    }

    #[tokio::test]
    async fn framework_errors_become_problems() {
        let (status, headers, body) = send(Request::delete("/echo"), Body::empty()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["content-type"], crate::problem::CONTENT_TYPE);
        assert_eq!(body["type"], "/problems/method-not-allowed");

        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(2048));
        let (status, _, body) = send(echo(), big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["type"], "/problems/body-too-large");
    }

    #[tokio::test]
    async fn successes_pass_through_and_are_counted_by_route_template() {
        let (status, _, body) = send(echo(), "{\"a\":1}").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["a"], 1);
        let _ = send(Request::get("/items/42"), Body::empty()).await;
        let text = crate::metrics::handle().render();
        assert!(
            text.lines()
                .any(|l| l.starts_with(crate::metrics::HTTP_REQUESTS)
                    && l.contains("route=\"/items/{id}\"")
                    && l.contains("status=\"404\"")),
            "{text}"
        );
    }
}
