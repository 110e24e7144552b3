//! The breaker as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::circuit::{CircuitBreaker, Permit};
use super::state::{CircuitOpen, Outcome};
use crate::retry::{MaybeRefusal, Refusal};

/// Decides how a call's result counts for the breaker.
///
/// ```
/// use flotilla_resilience::breaker::{Classify, Outcome};
/// // Any `Fn(&Result<T, E>) -> Outcome` classifies: here a cancelled call says nothing.
/// let classify = |result: &Result<u32, String>| match result {
///     Ok(_) => Outcome::Success,
///     Err(error) if error == "cancelled" => Outcome::Ignored,
///     Err(_) => Outcome::Failure,
/// };
/// assert_eq!(classify.classify(&Ok(7)), Outcome::Success);
/// assert_eq!(classify.classify(&Err("cancelled".into())), Outcome::Ignored);
/// assert_eq!(classify.classify(&Err("refused".into())), Outcome::Failure);
/// ```
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier for HTTP: a server error (5xx) and any error (connection refused,
/// timeout, broken connection) are failures; everything else, client errors (4xx) included, is a
/// success — a 404 says nothing about the target's health. A refusal by a resilience layer
/// *below* the breaker (a full bulkhead, a rate limit, another breaker open) is ignored: it is
/// this process's own overload, not the target's failure, and must not open the breaker.
///
/// ```
/// use flotilla_resilience::breaker::{Classify, HttpClassifier, Outcome};
/// use flotilla_resilience::bulkhead::{BulkheadError, BulkheadFull};
/// type Answer = Result<http::Response<()>, BulkheadError<std::io::Error>>;
/// let answer = |status: u16| -> Answer {
///     Ok(http::Response::builder().status(status).body(()).unwrap())
/// };
/// assert_eq!(HttpClassifier.classify(&answer(503)), Outcome::Failure);
/// assert_eq!(HttpClassifier.classify(&answer(404)), Outcome::Success);
/// let refused: Answer = Err(BulkheadError::Inner(std::io::ErrorKind::ConnectionRefused.into()));
/// assert_eq!(HttpClassifier.classify(&refused), Outcome::Failure);
/// let overloaded: Answer = Err(BulkheadError::Full(BulkheadFull::QueueFull(8)));
/// assert_eq!(HttpClassifier.classify(&overloaded), Outcome::Ignored);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<B, E: MaybeRefusal> Classify<http::Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(error) => match error.refusal() {
                Some(Refusal::BulkheadFull | Refusal::RateLimited | Refusal::CircuitOpen) => {
                    Outcome::Ignored
                }
                Some(Refusal::Deadline) | None => Outcome::Failure,
            },
        }
    }
}

/// An error of a service behind a breaker.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, BreakerError, CircuitBreaker, CircuitBreakerLayer, Forced, HttpClassifier};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
/// let service = CircuitBreakerLayer::new(breaker.clone(), HttpClassifier)
///     .layer(tower::service_fn(|_: ()| async {
///         Err::<http::Response<()>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
///     }));
/// let refused = service.clone().oneshot(()).await;
/// assert!(matches!(refused, Err(BreakerError::Inner(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused));
/// breaker.force(Some(Forced::Open));
/// assert!(matches!(service.oneshot(()).await, Err(BreakerError::Open(_))));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker rejected the call; the service was not called. (Its [`CircuitOpen`] is also
    /// the error's source, so that a retry policy finds it in a boxed error.)
    #[error("{0}")]
    Open(#[source] CircuitOpen),
    /// The service failed.
    #[error(transparent)]
    Inner(E),
}

/// Puts a [`CircuitBreaker`] in front of a service.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer, HttpClassifier};
/// use tower::{ServiceBuilder, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
/// let service = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(breaker, HttpClassifier))
///     .service_fn(|_request: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     });
/// assert_eq!(service.oneshot(http::Request::new(())).await.unwrap().status(), 200);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C> {
    breaker: CircuitBreaker,
    classify: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer sharing `breaker` (clones share state), classifying results with `classify`.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer, HttpClassifier, State, Window};
    /// use tower::{Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = BreakerConfig { window: Window::Count { calls: 1 }, minimum_calls: 1, ..BreakerConfig::default() };
    /// let breaker = CircuitBreaker::new("inventory", config).unwrap();
    /// let service = CircuitBreakerLayer::new(breaker.clone(), HttpClassifier).layer(tower::service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::builder().status(503).body(()).unwrap())
    /// }));
    /// assert_eq!(service.oneshot(()).await.unwrap().status(), 503); // passed on, and counted as a failure
    /// assert_eq!(breaker.state(), State::Open);
    /// # }
    /// ```
    pub fn new(breaker: CircuitBreaker, classify: C) -> Self {
        Self { breaker, classify }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service behind a circuit breaker (see [`CircuitBreakerLayer`]).
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer, Forced, HttpClassifier};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// static CALLS: AtomicU32 = AtomicU32::new(0);
/// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
/// let service = CircuitBreakerLayer::new(breaker.clone(), HttpClassifier).layer(tower::service_fn(|_: ()| async {
///     CALLS.fetch_add(1, Ordering::SeqCst);
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// assert!(service.clone().oneshot(()).await.is_ok());
/// breaker.force(Some(Forced::Open));
/// assert!(service.oneshot(()).await.is_err());
/// assert_eq!(CALLS.load(Ordering::SeqCst), 1); // the rejected call never reached the service
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S, C, Request> Service<Request> for CircuitBreakerService<S, C>
where
    S: Service<Request>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => ResponseFuture::Called {
                future: self.inner.call(request),
                permit: Some(permit),
                classify: self.classify.clone(),
            },
            Err(open) => ResponseFuture::Rejected { open: Some(open) },
        }
    }
}

pin_project! {
    /// The future of a call through a breaker. (Its fields are private in all but name:
    /// `pin_project_lite` cannot document them.)
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, BreakerError, CircuitBreaker, CircuitBreakerLayer, Forced, HttpClassifier, ResponseFuture};
    /// use tower::{Layer, Service, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
    /// breaker.force(Some(Forced::Open));
    /// let mut service = CircuitBreakerLayer::new(breaker, HttpClassifier).layer(tower::service_fn(|_: ()| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// }));
    /// let future = service.ready().await.unwrap().call(());
    /// assert!(matches!(future, ResponseFuture::Rejected { .. })); // decided when called
    /// assert!(matches!(future.await, Err(BreakerError::Open(_))));
    /// # }
    /// ```
    #[project = Projection]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F, C> {
        /// The breaker admitted the call.
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
            classify: C,
        },
        /// The breaker rejected it.
        Rejected {
            open: Option<CircuitOpen>,
        },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Called {
                future,
                permit,
                classify,
            } => {
                let result = std::task::ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(classify.classify(&result));
                }
                Poll::Ready(result.map_err(BreakerError::Inner))
            }
            Projection::Rejected { open } => match open.take() {
                Some(open) => Poll::Ready(Err(BreakerError::Open(open))),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::breaker::{State, over_last_calls};

    #[tokio::test]
    async fn server_errors_open_the_breaker_and_client_errors_do_not() {
        let breaker = over_last_calls("layer", 4);
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = |status: u16| {
            let hits = hits.clone();
            ServiceBuilder::new()
                .layer(CircuitBreakerLayer::new(breaker.clone(), HttpClassifier))
                .service_fn(move |_: ()| {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut response = http::Response::new(());
                    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    async move { Ok::<_, Infallible>(response) }
                })
        };
        for _ in 0..8 {
            let response = service(404)
                .oneshot(())
                .await
                .expect("a 404 passes through");
            assert_eq!(response.status(), 404);
        }
        assert_eq!(breaker.state(), State::Closed, "4xx are not failures");
        // The window holds the last 4 calls: two server errors among them make 50 %.
        for _ in 0..2 {
            let response = service(503).oneshot(()).await.expect("called");
            assert_eq!(response.status(), 503);
        }
        assert_eq!(breaker.state(), State::Open);
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        let error = service(200).oneshot(()).await.expect_err("fails fast");
        assert!(matches!(error, BreakerError::Open(_)));
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            before,
            "the service was not called"
        );
    }
}
