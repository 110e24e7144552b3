//! Why a token was refused, and the one answer each refusal gets on the wire.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_kit::Problem;

/// The realm named in every `WWW-Authenticate: Bearer` challenge.
pub const REALM: &str = "flotilla";

/// Why a bearer token was refused. Each kind has a stable slug ([`TokenError::slug`]); the
/// descriptions are fixed text, never anything read from the token, so they are safe in a
/// header and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token was presented (no `Authorization` header, or another scheme).
    #[error("no bearer token")]
    Missing,
    /// Not a compact JWS of a JWT: the part at fault is named.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Longer than `max_token_bytes`; refused before any parsing.
    #[error("token too large")]
    Oversized,
    /// The header's `alg` is `none`, an HMAC or one this verifier does not support.
    #[error("unsupported signature algorithm")]
    UnsupportedAlg,
    /// The header's `alg` is not the one the key named by `kid` is pinned to.
    #[error("the algorithm does not match the key's")]
    AlgMismatch,
    /// No published key has the header's `kid` (or there is no `kid`).
    #[error("unknown signing key")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Past `exp` (plus the allowed clock skew).
    #[error("token expired")]
    Expired,
    /// Before `nbf` or `iat` (minus the allowed clock skew).
    #[error("token not yet valid")]
    NotYetValid,
    /// The `iss` is missing or not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// The `aud` is missing or names none of the accepted audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim (`exp`, `sub`) is missing or empty: the claim is named.
    #[error("missing claim `{0}`")]
    MissingClaim(&'static str),
    /// No key set could be fetched yet: the token cannot be judged now (503, not 401).
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl TokenError {
    /// The stable slug of the refusal (`expired`, `unknown-kid`, …); the problem type is
    /// `/problems/token-<slug>`.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Oversized => "oversized",
            Self::UnsupportedAlg => "unsupported-alg",
            Self::AlgMismatch => "alg-mismatch",
            Self::UnknownKid => "unknown-kid",
            Self::BadSignature => "bad-signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not-yet-valid",
            Self::WrongIssuer => "wrong-issuer",
            Self::WrongAudience => "wrong-audience",
            Self::MissingClaim(_) => "missing-claim",
            Self::KeysUnavailable => "keys-unavailable",
        }
    }

    /// The fixed, human description sent as `error_description`.
    pub fn description(&self) -> &'static str {
        match self {
            Self::Missing => "a bearer token is required",
            Self::Malformed(_) => "the token is not a well-formed JWT",
            Self::Oversized => "the token is too large",
            Self::UnsupportedAlg => "the token's signature algorithm is not accepted",
            Self::AlgMismatch => "the token's algorithm is not its key's",
            Self::UnknownKid => "the token was signed by an unknown key",
            Self::BadSignature => "the token's signature is invalid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::WrongIssuer => "the token was issued by another issuer",
            Self::WrongAudience => "the token is meant for another audience",
            Self::MissingClaim(_) => "the token lacks a required claim",
            Self::KeysUnavailable => "the signing keys cannot be fetched; retry later",
        }
    }

    /// 401, except 503 when the keys are unavailable (the token may well be good).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 §3 challenge: `Bearer realm="flotilla"`, with `error="invalid_token"` and
    /// `error_description` unless the request carried no token at all (§3.1).
    pub fn www_authenticate(&self) -> HeaderValue {
        match self {
            Self::Missing | Self::KeysUnavailable => {
                HeaderValue::from_static(concat!("Bearer realm=\"", "flotilla", "\""))
            }
            _ => {
                let value = format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                    self.description()
                );
                // The description is fixed ASCII text without quotes.
                HeaderValue::from_str(&value)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"flotilla\""))
            }
        }
    }

    /// The problem document: type `/problems/token-<slug>`, with the OAuth members `error`
    /// and `error_description` (RFC 6750) as extensions.
    pub fn problem(&self) -> Problem {
        let mut problem = Problem::new(
            self.status(),
            &format!("token-{}", self.slug()),
            self.to_string(),
        );
        if !matches!(self, Self::Missing | Self::KeysUnavailable) {
            problem = problem
                .with("error", "invalid_token")
                .with("error_description", self.description());
        }
        problem
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, self.www_authenticate());
        } else {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A valid token that lacks a role or scope the request needs: 403 with the RFC 6750
/// `insufficient_scope` challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token lacks the {what} `{name}`")]
pub struct Forbidden {
    /// `role` or `scope`.
    pub what: &'static str,
    /// The role or scope missing.
    pub name: String,
}

impl Forbidden {
    /// The problem document, type `/problems/forbidden`, naming what is missing.
    pub fn problem(&self) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", self.to_string())
            .with("error", "insufficient_scope")
            .with(self.what, self.name.clone())
    }
}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let mut challenge = format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\"");
        if self.what == "scope" && crate::credentials::is_scope_token(&self.name) {
            challenge.push_str(&format!(", scope=\"{}\"", self.name));
        }
        let mut response = self.problem().into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
