//! Extractors whose every rejection is a [`Problem`]: a JSON body and a query string.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::Problem;

/// Like `axum::Json`, but a body that is missing, malformed, of the wrong type or too large is
/// answered with a problem document naming what is wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(rejection_to_problem(rejection)),
        }
    }
}

fn rejection_to_problem(rejection: JsonRejection) -> Problem {
    let detail = rejection.body_text();
    let status = rejection.status();
    match rejection {
        JsonRejection::JsonDataError(_) => Problem::unprocessable("invalid-body", detail),
        JsonRejection::JsonSyntaxError(_) => Problem::bad_request("malformed-json", detail),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be JSON, sent with `content-type: application/json`",
        ),
        JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", detail)
        }
        _ => Problem::new(status, "invalid-body", detail),
    }
}

/// Like `axum::extract::Query`, but a query string that is missing a parameter or has one of
/// the wrong type is answered with a 400 problem (`/problems/invalid-query`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(Problem::bad_request("invalid-query", rejection.body_text())),
        }
    }
}
