//! The edge: the outermost layer of every proxied request, doing for it what the kit's server
//! layers ([`flotilla_kit::app`]) do for the process's own routes, in one step and without
//! their per-request costs (a boxed future per layer, a metric looked up by its labels, an
//! info-level span):
//!
//! * the request id: a client's `x-request-id` is kept (the listener has removed one that is
//!   not fit to keep), else a fresh UUIDv7 is set; the answer carries it;
//! * a span per request, `request` with method, path and request id, at debug level: the
//!   access line ([`crate::access`]) is the per-request record at info;
//! * every problem the gateway answers with itself carries the request id and the path
//!   ([`flotilla_kit::app::stamp_problem`]); an upstream's answer passes untouched.
//!
//! Requests are counted by the access layer, per route (`gateway_route_requests_total`), not
//! by the kit's `http_server_requests_total`, which counts the process's own endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use flotilla_kit::app::{REQUEST_ID, new_request_id, stamp_problem};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument as _;

/// Makes [`Edge`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeLayer;

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge { inner }
    }
}

/// Sets the request id, opens the request's span and stamps the gateway's own problems.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let inner = self.inner.clone();
        let id = match request.headers().get(REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = tracing::debug_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = id.to_str().unwrap_or_default(),
        );
        // Cheap: the path's bytes are shared, not copied.
        let uri = request.uri().clone();
        Box::pin(
            async move {
                let Ok(response) = inner.oneshot(request).await;
                let mut response =
                    if response.status().is_client_error() || response.status().is_server_error() {
                        stamp_problem(response, id.to_str().ok(), uri.path())
                    } else {
                        response
                    };
                response.headers_mut().insert(REQUEST_ID, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use flotilla_kit::Problem;
    use http::StatusCode;
    use http_body_util::BodyExt as _;

    use super::*;

    async fn through(
        request: http::request::Builder,
        answer: fn() -> Response,
    ) -> (http::response::Parts, serde_json::Value) {
        let service = EdgeLayer.layer(tower::service_fn(move |_request: Request| async move {
            Ok::<_, Infallible>(answer())
        }));
        let request = request.body(Body::empty()).expect("request");
        let Ok(response) = service.oneshot(request).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (parts, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn not_found() -> Response {
        axum::response::IntoResponse::into_response(Problem::not_found("no route serves this"))
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_fresh_one_that_its_problem_names() {
        let (parts, body) = through(http::Request::get("/v1/nowhere"), not_found).await;
        let id = parts.headers[REQUEST_ID].to_str().expect("ascii");
        assert_eq!(
            uuid::Uuid::parse_str(id).map(|id| id.get_version_num()),
            Ok(7)
        );
        assert_eq!(body["request_id"], id);
        assert_eq!(body["instance"], "/v1/nowhere");
        assert_eq!(body["type"], "/problems/not-found");
    }

    #[tokio::test]
    async fn a_clients_id_is_kept() {
        let request = http::Request::get("/v1/nowhere").header(REQUEST_ID, "client-7");
        let (parts, body) = through(request, not_found).await;
        assert_eq!(parts.headers[REQUEST_ID], "client-7");
        assert_eq!(body["request_id"], "client-7");
    }

    #[tokio::test]
    async fn an_upstreams_error_passes_untouched() {
        fn relayed() -> Response {
            let mut response = Response::new(Body::from("{\"upstream\":true}"));
            *response.status_mut() = StatusCode::CONFLICT;
            response
        }
        let (parts, body) = through(http::Request::get("/v1/orders/1"), relayed).await;
        assert_eq!(parts.status, StatusCode::CONFLICT);
        assert_eq!(body, serde_json::json!({"upstream": true}));
        assert!(parts.headers.contains_key(REQUEST_ID));
    }
}
