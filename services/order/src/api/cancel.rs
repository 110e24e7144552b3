//! `POST /v1/orders/{id}/cancel`: the customer's cancellation of an approved order.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use flotilla_identity::Caller;
use flotilla_kit::Problem;
use serde::Deserialize;

use super::context::Context;
use super::headers::{prefer_wait, saga_style};
use super::owner::visible;
use super::waiting::{accepted, final_state, wait_for};
use crate::domain::{Cancellation, OrderError};
use crate::sagas::Cancelling;

/// `POST /v1/orders/{id}/cancel`: an optional `{"reason": …}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: Option<String>,
}

/// The longest cancellation reason kept.
pub const MAX_REASON: usize = 500;

pub(super) async fn cancel(
    State(context): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    visible(&context, &caller, &id).await?;
    let style = saga_style(&headers, context.style)?;
    let request: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::bad_request(
                "invalid-body",
                format!("the body must be empty or {{\"reason\": \"…\"}}: {e}"),
            )
        })?
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "cancelled by the customer".to_owned());
    if reason.trim().is_empty() || reason.chars().count() > MAX_REASON {
        return Err(Problem::bad_request(
            "invalid-body",
            format!("`reason` must be 1 to {MAX_REASON} characters"),
        ));
    }
    // In a task of its own, as a placement: a client that goes away must not cancel the
    // transaction half-way through its direct calls.
    let cancelling = {
        let (sagas, id, reason) = (context.sagas.clone(), id.clone(), reason.clone());
        tokio::spawn(async move { sagas.request_cancellation(&id, &reason, style).await })
    };
    let outcome = cancelling
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| Problem::internal(&e))?;
    match outcome {
        Cancelling::Started => {
            context.relay.notify_one();
            tracing::info!(order_id = %id, style = style.as_str(), "order cancellation requested");
        }
        Cancelling::Already => {}
        Cancelling::Refused(OrderError::NotFound) => {
            return Err(Problem::not_found(format!("no order `{id}`")));
        }
        Cancelling::Refused(refused) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "order-not-cancellable",
                refused.to_string(),
            ));
        }
    }
    let wait = prefer_wait(&headers);
    let deadline = wait.map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let (loaded, ended) = wait_for(&context.sagas, &id, deadline, None, |order| {
        wait.is_some() && !order.cancelling()
    })
    .await?;
    match (wait, &loaded.state.cancellation) {
        (Some(_), Some(Cancellation::Refused { reason })) if ended => Err(Problem::new(
            StatusCode::CONFLICT,
            "order-not-cancellable",
            format!("the order cannot be cancelled: {reason}"),
        )),
        (Some(seconds), _) if ended => final_state(&loaded, seconds, style),
        _ => accepted(&loaded, style),
    }
}
