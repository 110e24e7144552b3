//! Queue for later: the fallback that stores a write the gateway cannot forward now (its
//! service's breaker is open) and replays it, in order, when the service takes calls again.
//!
//! * Only services named in the `queue_for_later` setting, and only requests that are safe to
//!   replay: a write (`POST`, `PUT`, `PATCH`, `DELETE`) carrying an `Idempotency-Key`, with a body
//!   the gateway held (up to 64 KiB). The key makes the replay exactly-once in effect: if the
//!   gateway dies between sending a replay and recording it, the replay is sent again and the
//!   service answers it as the same request.
//! * The client gets `202 Accepted`, `Location: /v1/deferred/{id}`; `GET /v1/deferred/{id}` says
//!   `QUEUED`, or `REPLAYED` with the service's answer. It needs a token: the caller whose token
//!   the request carried (its subject is recorded as the request's owner), or an admin; anyone
//!   else gets the 404 of an unknown id.
//! * Stored in the gateway's own database (`<data_dir>/gateway.db`) in the same shape as it came.
//! * The replayer takes the oldest queued request of a service and asks the breaker to admit it
//!   (so, once the open wait is over, the queued requests are the half-open trial calls); it
//!   stops at the first failure, so that order is kept, and tries again later.

use flotilla_kit::clock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use flotilla_identity::Verifier;
use flotilla_kit::Problem;
use serde::Serialize;
use sqlx::SqlitePool;
use tokio::sync::Notify;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A request as queued.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Public id.
    pub deferred_id: String,
    /// Target service.
    pub service: String,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path_and_query: String,
    /// Headers, as forwarded.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// The subject of the verified token the request carried (`None` on a public route).
    pub owner: Option<String>,
}

/// A queued request's row: id, method, path and query, headers (JSON), body, owner.
type QueuedRow = (String, String, String, String, Vec<u8>, Option<String>);

/// The queue, in the gateway's database.
#[derive(Debug, Clone)]
pub struct Deferred {
    pool: SqlitePool,
    /// Services whose writes may be queued.
    services: Arc<Vec<String>>,
    /// Woken when a request is queued.
    pub(crate) queued: Arc<Notify>,
}

impl Deferred {
    /// Opens the queue if any service's writes may be queued (`services`: those of the
    /// routes whose fallback is `queue`, or named by `queue_for_later`).
    pub async fn open(
        config: &crate::Config,
        services: Vec<String>,
    ) -> Result<Option<Self>, sqlx::Error> {
        let server = &config.instance.server;
        if services.is_empty() {
            return Ok(None);
        }
        let opening = flotilla_sqlite::open(&server.database_path("gateway"), &MIGRATIONS).await?;
        Ok(Some(Self {
            pool: opening.ready(),
            services: Arc::new(services),
            queued: Arc::default(),
        }))
    }

    /// Whether a request to `service` with this method and these headers may be queued.
    pub fn accepts(&self, service: &str, method: &Method, headers: &HeaderMap) -> bool {
        self.services.iter().any(|s| s == service)
            && matches!(
                *method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            )
            && headers.contains_key("idempotency-key")
    }

    /// Queues a request; returns its id.
    pub async fn enqueue(&self, request: &Queued) -> Result<(), sqlx::Error> {
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        sqlx::query(
            "INSERT INTO deferred (deferred_id, service, method, path_and_query, headers, body, state, queued_at, owner)
             VALUES (?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?)",
        )
        .bind(&request.deferred_id)
        .bind(&request.service)
        .bind(request.method.as_str())
        .bind(&request.path_and_query)
        .bind(serde_json::to_string(&headers).unwrap_or_default())
        .bind(request.body.as_ref())
        .bind(clock::now_rfc3339())
        .bind(request.owner.as_deref())
        .execute(&self.pool)
        .await?;
        self.queued.notify_waiters();
        Ok(())
    }

    /// The oldest queued request of `service`.
    pub async fn next(&self, service: &str) -> Result<Option<Queued>, sqlx::Error> {
        let row: Option<QueuedRow> = sqlx::query_as(
            "SELECT deferred_id, method, path_and_query, headers, body, owner FROM deferred
             WHERE service = ? AND state = 'QUEUED' ORDER BY seq LIMIT 1",
        )
        .bind(service)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(deferred_id, method, path_and_query, headers, body, owner)| {
                let pairs: Vec<(String, String)> =
                    serde_json::from_str(&headers).unwrap_or_default();
                let headers = pairs
                    .into_iter()
                    .filter_map(|(name, value)| {
                        Some((
                            HeaderName::try_from(name).ok()?,
                            HeaderValue::try_from(value).ok()?,
                        ))
                    })
                    .collect();
                Queued {
                    deferred_id,
                    service: service.to_owned(),
                    method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST),
                    path_and_query,
                    headers,
                    body: Bytes::from(body),
                    owner,
                }
            },
        ))
    }

    /// Records the service's answer to a replay.
    pub async fn complete(
        &self,
        deferred_id: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE deferred SET state = 'REPLAYED', response_status = ?, response_body = ?, replayed_at = ?
             WHERE deferred_id = ? AND state = 'QUEUED'",
        )
        .bind(i64::from(status.as_u16()))
        .bind(body)
        .bind(clock::now_rfc3339())
        .bind(deferred_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The services the replayer watches.
    pub fn services(&self) -> Vec<String> {
        self.services.as_ref().clone()
    }

    /// `GET /v1/deferred/{id}`, for the request's owner or an admin, checked with `verifier`
    /// (without one, every request is refused with 503).
    pub fn routes(&self, verifier: Option<Verifier>) -> Router {
        Router::new()
            .route("/v1/deferred/{id}", get(show))
            .with_state(Viewing {
                deferred: self.clone(),
                verifier,
            })
    }
}

/// What `GET /v1/deferred/{id}` is given.
#[derive(Debug, Clone)]
struct Viewing {
    deferred: Deferred,
    verifier: Option<Verifier>,
}

/// A queued request's state, as `GET /v1/deferred/{id}` shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct View {
    deferred_id: String,
    service: String,
    method: String,
    #[sqlx(rename = "path_and_query")]
    path: String,
    #[sqlx(rename = "state")]
    status: String,
    queued_at: String,
    replayed_at: Option<String>,
    #[serde(skip)]
    response_status: Option<i64>,
    #[serde(skip)]
    response_body: Option<Vec<u8>>,
    #[serde(skip)]
    owner: Option<String>,
    /// The service's answer to the replay: `{status, body}` (body as JSON when it is JSON).
    #[sqlx(skip)]
    response: Option<BTreeMap<&'static str, serde_json::Value>>,
}

async fn show(
    State(viewing): State<Viewing>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<View>, Response> {
    let Some(verifier) = &viewing.verifier else {
        return Err(Problem::unavailable(
            "no-identity-provider",
            "a queued request's outcome is shown to its owner, and the gateway has no identity provider to tell who calls",
        )
        .into_response());
    };
    let principal = verifier
        .verify_headers(&headers)
        .await
        .map_err(IntoResponse::into_response)?;
    let unknown = || Problem::not_found(format!("no deferred request `{id}`")).into_response();
    let mut view: View = sqlx::query_as(
        "SELECT deferred_id, service, method, path_and_query, state, queued_at, replayed_at,
                response_status, response_body, owner
         FROM deferred WHERE deferred_id = ?",
    )
    .bind(&id)
    .fetch_optional(&viewing.deferred.pool)
    .await
    .map_err(|e| Problem::internal(&e).into_response())?
    .ok_or_else(unknown)?;
    // Another caller's request answers as an unknown one: ids cannot be probed.
    let owns = view.owner.as_deref() == Some(principal.subject.as_str());
    if !owns && !principal.has_role("admin") {
        return Err(unknown());
    }
    view.response = view.response_status.map(|code| {
        let body = view.response_body.take().unwrap_or_default();
        let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        BTreeMap::from([("status", serde_json::Value::from(code)), ("body", body)])
    });
    Ok(axum::Json(view))
}

/// The answer to a queued request: 202 with where to find the outcome.
pub fn accepted(request: &Queued) -> Response {
    let location = format!("/v1/deferred/{}", request.deferred_id);
    let body = serde_json::json!({
        "deferred_id": request.deferred_id,
        "status": "QUEUED",
        "service": request.service,
        "detail": format!("`{}` is not taking calls now; the request is queued and will be replayed in order", request.service),
    });
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// How long the replayer waits between two looks at a queue it could not drain.
pub const REPLAY_INTERVAL: Duration = Duration::from_millis(200);
