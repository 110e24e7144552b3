//! Reading the whole body of an HTTP response in a test, whatever its body type (axum's, hyper's).
//! What the bytes mean (JSON, text, a problem) is the test's business.

use std::fmt::Debug;

use bytes::Bytes;
use http_body_util::BodyExt;

/// The whole body of `response`; panics (failing the test) if it cannot be read.
pub async fn body_bytes<B>(response: http::Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: Debug,
{
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}
