//! Rate limits and quotas per client and route: the layer right below [`auth`](crate::auth),
//! so that it knows who calls, and above everything that costs the upstream anything.
//!
//! A route's limits come from its `rate_limit` and `quota` keys ([`crate::routes::Limits`]):
//!
//! * **a token bucket** per client — `burst` calls at once, refilled at `per_second` (the
//!   resilience crate's [`RateLimiter`](flotilla_resilience::ratelimit::RateLimiter));
//! * **a quota** per client — `limit` calls in each `period`, in fixed windows aligned on the
//!   Unix epoch (UTC): a daily quota renews at midnight UTC. A fixed window lets a client spend
//!   a whole quota at the end of one window and another at the start of the next; over a day
//!   that is what a quota means, and it costs one counter per client.
//!
//! The client is the token's subject for a user, the client id for a machine, and the
//! connection's address for anyone on a public route ([`Client`]).
//!
//! | the call | the answer |
//! | --- | --- |
//! | within the limits | the upstream's answer, with `RateLimit-Policy` and `RateLimit` |
//! | the bucket is empty | 429 `rate-limited`, `Retry-After` (the next token), the same two headers |
//! | the quota is spent | 429 `quota-exceeded`, `Retry-After` (the next window), the same two headers |
//!
//! The headers follow the IETF httpapi draft "RateLimit header fields for HTTP" (structured
//! fields): the route's bucket is the policy named after the route, its quota the one named
//! `ROUTE-quota`.
//!
//! ```text
//! RateLimit-Policy: "orders";q=20;w=2, "orders-quota";q=1000;w=86400
//! RateLimit: "orders";r=19;t=1, "orders-quota";r=999;t=40953
//! ```
//!
//! `q` is the bucket's burst (or the quota's limit), `w` the time the empty bucket takes to
//! fill (or the period), `r` what is left, and `t` the seconds until more: the next token
//! (0 when the bucket is full), or the end of the quota's window. A refusal is a problem
//! document whose `violated-policies` names the policy, as the draft's problem types do; it
//! never reaches the upstream, so it never counts against its breaker.
//!
//! The limits are kept in this process, shared by every worker. With `rate_limit.redis_url`
//! set they are kept in Redis instead, shared by every gateway ([`shared`]); while Redis does
//! not answer, `rate_limit.on_redis_down` decides: `local` (the default) falls back on the
//! limits of this process, `allow` lets calls through uncounted, `deny` refuses them with 503
//! `rate-limit-unavailable`.

mod client;
mod local;
pub mod shared;
mod verdict;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::response::{IntoResponse, Response};
use flotilla_discovery::outbound::{Exchange, Failure};
use flotilla_kit::Problem;
use flotilla_resilience::ratelimit::RateLimitConfigError;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tower::{Layer, Service, ServiceExt};

pub use self::client::Client;
use self::local::Local;
pub use self::shared::Store;
pub use self::verdict::{Left, Policy, Usage, Verdict};
use crate::routes::Limits;
use crate::settings::OnRedisDown;

/// Counter: calls refused, by `route` and `policy` (`rate` or `quota`).
pub const REFUSED: &str = "gateway_ratelimit_refused_total";

/// Registers the HELP text of this module's metrics (once the recorder exists).
pub fn describe_metrics() {
    metrics::describe_counter!(
        REFUSED,
        "Calls refused by a rate limit or a quota, by route and policy"
    );
    shared::describe_metrics();
}

/// `RateLimit-Policy`: the limits a route sets.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of them for the caller.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The limits of one route, for every client: one for all the workers' stacks of the route.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    route: Arc<str>,
    limits: Limits,
    local: Local,
    /// `RateLimit-Policy`, the same on every answer of the route.
    policy: HeaderValue,
    /// Where the limits are kept for every gateway, if they are shared.
    store: Option<Store>,
}

impl Limiter {
    /// The limiter of route `route` with `limits`, kept in `store` if given (else in this
    /// process); `None` if the route sets no limit. Fails if a bucket's rate or burst is out
    /// of range (the route file's check refuses those first).
    pub fn new(
        route: &str,
        limits: &Limits,
        store: Option<Store>,
    ) -> Result<Option<Self>, RateLimitConfigError> {
        if !limits.any() {
            return Ok(None);
        }
        Ok(Some(Self {
            inner: Arc::new(Inner {
                route: Arc::from(route),
                limits: limits.clone(),
                local: Local::new(limits)?,
                policy: policy_header(route, limits),
                store,
            }),
        }))
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Counts a call of `client`, or refuses it: in the shared store if there is one and it
    /// answers, else as its `on_redis_down` says (the local limits by default).
    pub async fn check(&self, client: &Client) -> Verdict {
        let inner = &*self.inner;
        if let Some(store) = &inner.store {
            if let Some(verdict) = store.check(&inner.route, client, &inner.limits).await {
                return verdict;
            }
            match store.on_down() {
                OnRedisDown::Local => {}
                OnRedisDown::Allow => return Verdict::Uncounted,
                OnRedisDown::Deny => {
                    return Verdict::Unavailable {
                        retry_after: store.retry(),
                    };
                }
            }
        }
        inner.local.check(client, wall_clock())
    }

    /// Adds `RateLimit-Policy` and `RateLimit` for `usage` to `headers`.
    fn stamp(&self, headers: &mut HeaderMap, usage: &Usage) {
        headers.insert(RATELIMIT_POLICY.clone(), self.inner.policy.clone());
        if let Some(value) = ratelimit_header(&self.inner.route, usage) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }

    /// The answer to a call refused by `policy`: 429 with `Retry-After` and the headers.
    fn refusal(&self, policy: Policy, retry_after: Duration, usage: &Usage) -> Response {
        let route = &*self.inner.route;
        let wait = whole_seconds(retry_after).max(1);
        metrics::counter!(REFUSED, "route" => route.to_owned(), "policy" => policy.label())
            .increment(1);
        let (slug, name, detail) = match (policy, &self.inner.limits) {
            (
                Policy::Quota,
                Limits {
                    quota: Some(quota), ..
                },
            ) => (
                "quota-exceeded",
                format!("{route}-quota"),
                format!(
                    "the quota of {} calls every {} s on route `{route}` is spent; it renews in \
                     {wait} s",
                    quota.limit,
                    quota.period.as_secs()
                ),
            ),
            (_, limits) => {
                let (per_second, burst) = limits
                    .rate
                    .map(|rate| (rate.config().per_second, rate.config().burst))
                    .unwrap_or_default();
                (
                    "rate-limited",
                    route.to_owned(),
                    format!(
                        "route `{route}` takes {burst} calls at once and {per_second} a second \
                         from each client; retry in {wait} s"
                    ),
                )
            }
        };
        let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, slug, detail)
            .with("violated-policies", serde_json::json!([name]));
        let mut response = problem.into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
        self.stamp(headers, usage);
        response
    }
}

/// The answer to a call of a limited route while the shared store is down and says `deny`:
/// 503 `rate-limit-unavailable`, with `Retry-After`.
fn unavailable(retry_after: Duration) -> Response {
    let problem = Problem::unavailable(
        "rate-limit-unavailable",
        "this route's rate limits are kept in a store that does not answer now, and the \
         gateway is set to refuse what it cannot count (rate_limit.on_redis_down = \"deny\")",
    );
    let mut response = problem.into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(whole_seconds(retry_after).max(1)),
    );
    response
}

/// Time since the Unix epoch, for the quotas' windows (a clock set before 1970 is 1970).
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whole seconds in `duration`, rounded up (saturating).
fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// `RateLimit-Policy` of route `route` with `limits`.
fn policy_header(route: &str, limits: &Limits) -> HeaderValue {
    let mut items = Vec::with_capacity(2);
    if let Some(rate) = limits.rate {
        items.push(format!(
            "\"{route}\";q={};w={}",
            rate.config().burst,
            rate.window_seconds()
        ));
    }
    if let Some(quota) = limits.quota {
        items.push(format!(
            "\"{route}-quota\";q={};w={}",
            quota.limit,
            quota.period.as_secs()
        ));
    }
    // A route name is a-z, 0-9 and -: always a header value.
    HeaderValue::from_str(&items.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `RateLimit` for `usage` of route `route`'s limits; `None` if nothing is known.
fn ratelimit_header(route: &str, usage: &Usage) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    let mut value = String::with_capacity(64);
    if let Some(left) = usage.rate {
        let _ = write!(
            value,
            "\"{route}\";r={};t={}",
            left.remaining,
            whole_seconds(left.reset)
        );
    }
    if let Some(left) = usage.quota {
        if !value.is_empty() {
            value.push_str(", ");
        }
        let _ = write!(
            value,
            "\"{route}-quota\";r={};t={}",
            left.remaining,
            whole_seconds(left.reset)
        );
    }
    if value.is_empty() {
        return None;
    }
    // Takes the string's buffer as it is, without a copy.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
}

/// Layer of [`RateLimit`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Limiter>,
}

impl RateLimitLayer {
    /// Counts each call against `limiter`; lets everything through if `None` (a route without
    /// limits).
    pub fn new(limiter: Option<Limiter>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// Refuses a client over a route's limits; see the [module](self).
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Limiter>,
}

type Answer = Result<Response, Failure>;

impl<S> Service<Exchange> for RateLimit<S>
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

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let Some(limiter) = self.limiter.clone() else {
            return Box::pin(inner.oneshot(exchange));
        };
        Box::pin(async move {
            let client = Client::of(&exchange.extensions);
            match limiter.check(&client).await {
                Verdict::Admitted(usage) => {
                    let mut response = inner.oneshot(exchange).await?;
                    limiter.stamp(response.headers_mut(), &usage);
                    Ok(response)
                }
                Verdict::Refused {
                    policy,
                    retry_after,
                    usage,
                } => Ok(limiter.refusal(policy, retry_after, &usage)),
                Verdict::Uncounted => inner.oneshot(exchange).await,
                Verdict::Unavailable { retry_after } => Ok(unavailable(retry_after)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Routes;

    fn limiter(keys: &str) -> Limiter {
        let text = format!(
            "[[routes]]\nname = \"orders\"\nservice = \"order\"\npath = \"/orders\"\n{keys}"
        );
        let routes = Routes::parse(&text).expect("routes");
        let route = routes.iter().next().expect("a route");
        Limiter::new(&route.name, &route.limits, None)
            .expect("valid")
            .expect("limits")
    }

    #[test]
    fn the_headers_are_structured_field_lists_of_each_policy() {
        let both = limiter(
            "rate_limit = { per_second = 10, burst = 20 }\nquota = { limit = 1000, period = \"day\" }",
        );
        let usage = Usage {
            rate: Some(Left {
                remaining: 19,
                reset: Duration::from_millis(100),
            }),
            quota: Some(Left {
                remaining: 999,
                reset: Duration::from_secs(40_953),
            }),
        };
        let mut headers = HeaderMap::new();
        both.stamp(&mut headers, &usage);
        assert_eq!(
            headers[&RATELIMIT_POLICY],
            "\"orders\";q=20;w=2, \"orders-quota\";q=1000;w=86400"
        );
        assert_eq!(
            headers[&RATELIMIT],
            "\"orders\";r=19;t=1, \"orders-quota\";r=999;t=40953"
        );
        let quota_only = limiter("quota = { limit = 5, period = \"1h\" }");
        let mut headers = HeaderMap::new();
        quota_only.stamp(
            &mut headers,
            &Usage {
                rate: None,
                quota: Some(Left {
                    remaining: 0,
                    reset: Duration::from_secs(60),
                }),
            },
        );
        assert_eq!(headers[&RATELIMIT_POLICY], "\"orders-quota\";q=5;w=3600");
        assert_eq!(headers[&RATELIMIT], "\"orders-quota\";r=0;t=60");
    }

    #[tokio::test]
    async fn a_refusal_is_a_429_problem_with_retry_after_and_the_headers() {
        let rate = limiter("rate_limit = { per_second = 0.5, burst = 1 }");
        let alice = Client::User(Arc::from("alice"));
        assert!(matches!(rate.check(&alice).await, Verdict::Admitted(_)));
        let Verdict::Refused {
            policy,
            retry_after,
            usage,
        } = rate.check(&alice).await
        else {
            panic!("the burst is spent");
        };
        let response = rate.refusal(policy, retry_after, &usage);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], "2", "a token every 2 s");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(headers[&RATELIMIT], "\"orders\";r=0;t=2");
        assert_eq!(headers[&RATELIMIT_POLICY], "\"orders\";q=1;w=2");
        let body = flotilla_testkit::body_bytes(response).await;
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(problem["type"], "/problems/rate-limited");
        assert_eq!(problem["status"], 429);
        assert_eq!(problem["violated-policies"], serde_json::json!(["orders"]));
    }
}
