//! The request headers the order API reads: `Idempotency-Key`, `Prefer: wait=N` (RFC 7240)
//! and `X-Saga-Style`; each read once, a bad value answered with a problem.

use axum::http::HeaderMap;
use flotilla_kit::Problem;
use flotilla_saga::SagaStyle;

/// The header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header choosing a request's saga style, and telling which ran.
pub const SAGA_STYLE: &str = "x-saga-style";

/// The longest `Prefer: wait=N` honoured, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// `Prefer: wait=N` (RFC 7240): how long the client is ready to wait for the final state, at
/// most [`MAX_WAIT_SECONDS`]. A preference that cannot be read is ignored, as the RFC asks.
pub fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .filter_map(|token| {
            let (name, value) = token.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()
        .map(|seconds| seconds.min(MAX_WAIT_SECONDS))
}

/// The saga style `X-Saga-Style` asks for, or `default`; an unknown style is a 400.
pub fn saga_style(headers: &HeaderMap, default: SagaStyle) -> Result<SagaStyle, Problem> {
    let Some(value) = headers.get(SAGA_STYLE) else {
        return Ok(default);
    };
    value
        .to_str()
        .ok()
        .and_then(SagaStyle::parse)
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid-saga-style",
                "X-Saga-Style must be `orchestration` or `choreography`",
            )
        })
}

/// The client's `Idempotency-Key`, if it sent one; a key that is not 1 to 255 visible ASCII
/// characters is a 400.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Problem::bad_request(
            "invalid-idempotency-key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}
