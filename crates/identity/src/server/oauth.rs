//! The token endpoint's protocol (RFC 6749): reading a form-encoded token request, client
//! authentication, and the error answers of §5.2 as problem documents.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flotilla_kit::Problem;

use super::error::IdpError;

/// The largest token request body read, in bytes.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// A refused token request (RFC 6749 §5.2), answered as a problem document with the OAuth
/// members `error` and `error_description` as extensions, so that OAuth clients and problem
/// readers both understand it.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// 400 `invalid_request`: a parameter is missing, repeated or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 `invalid_client`: client authentication failed (unknown client, wrong secret,
    /// none given where one is needed). Comes with `WWW-Authenticate: Basic`.
    #[error("client authentication failed")]
    InvalidClient,
    /// 400 `invalid_grant`: the user name or password is wrong (the two are not told apart).
    #[error("the user name or password is wrong")]
    InvalidGrant,
    /// 400 `unsupported_grant_type`.
    #[error("the grant type is not supported: use password or client_credentials")]
    UnsupportedGrantType,
    /// 400 `invalid_scope`: a scope asked for is malformed or not granted to the principal.
    #[error("{0}")]
    InvalidScope(String),
    /// 429: the account named was tried too often lately (`attempts_per_account_per_minute`);
    /// retry after the duration. No secret was checked.
    #[error("too many attempts for this account; retry later")]
    TooManyAttempts(std::time::Duration),
    /// 500: the provider failed; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Server(IdpError),
}

impl OAuthError {
    /// The RFC 6749 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            // RFC 8628's code for a client that must slow down, the closest OAuth has.
            Self::TooManyAttempts(_) => "slow_down",
            Self::Server(_) => "server_error",
        }
    }

    /// The problem document: type `/problems/<code with dashes>`.
    pub fn problem(&self) -> Problem {
        let status = match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::TooManyAttempts(wait) => {
                return Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-attempts",
                    self.to_string(),
                )
                .with("error", self.code())
                .with("retry_after_s", retry_after_seconds(*wait));
            }
            Self::Server(error) => return Problem::internal(error),
            _ => StatusCode::BAD_REQUEST,
        };
        let detail = self.to_string();
        Problem::new(status, &self.code().replace('_', "-"), detail.clone())
            .with("error", self.code())
            .with("error_description", detail)
    }
}

/// `wait` in whole seconds, rounded up, at least 1 (for `Retry-After`).
pub(super) fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Self::TooManyAttempts(wait) = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_seconds(wait).to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if matches!(self, Self::InvalidClient) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"flotilla\""),
            );
        }
        response
    }
}

/// The parameters of a token request (form-encoded, RFC 6749 Appendix B). A parameter sent
/// without a value counts as omitted (§3.1); one sent twice is refused.
#[derive(Debug, Default)]
pub struct Form {
    params: HashMap<String, String>,
}

/// The parameters this endpoint reads; a repeated one of these is named in the error.
const KNOWN: [&str; 6] = [
    "grant_type",
    "username",
    "password",
    "scope",
    "client_id",
    "client_secret",
];

impl Form {
    /// Reads a request's body, which must be `application/x-www-form-urlencoded` UTF-8.
    pub fn read(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".to_owned(),
            ));
        }
        if body.len() > MAX_FORM_BYTES {
            return Err(OAuthError::InvalidRequest(
                "the body is too large".to_owned(),
            ));
        }
        if std::str::from_utf8(body).is_err() {
            return Err(OAuthError::InvalidRequest(
                "the body is not UTF-8".to_owned(),
            ));
        }
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(body) {
            if params.contains_key(name.as_ref()) {
                let named = KNOWN.iter().find(|k| **k == name);
                return Err(OAuthError::InvalidRequest(match named {
                    Some(name) => format!("the parameter `{name}` is repeated"),
                    None => "a parameter is repeated".to_owned(),
                }));
            }
            params.insert(name.into_owned(), value.into_owned());
        }
        Ok(Self { params })
    }

    /// The parameter `name`, if sent with a value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The parameter `name`, which must be there.
    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("the parameter `{name}` is missing")))
    }
}

/// The client credentials a request presents (RFC 6749 §2.3.1): HTTP Basic with the
/// form-encoded id and secret, or `client_id` and `client_secret` in the body; never both.
/// `None` if the request names no client.
pub fn client_credentials(
    headers: &HeaderMap,
    form: &Form,
) -> Result<Option<(String, String)>, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(basic(value.as_bytes()).ok_or(OAuthError::InvalidClient)?),
    };
    let body_id = form.get("client_id");
    let body_secret = form.get("client_secret");
    match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
            "the client authenticated twice (Basic and client_secret): use one method".to_owned(),
        )),
        (Some((id, _)), Some(other), None) if id != other => Err(OAuthError::InvalidRequest(
            "client_id differs from the authenticated client".to_owned(),
        )),
        (Some(credentials), _, _) => Ok(Some(credentials)),
        (None, Some(id), secret) => Ok(Some((id.to_owned(), secret.unwrap_or("").to_owned()))),
        (None, None, Some(_)) => Err(OAuthError::InvalidRequest(
            "client_secret without client_id".to_owned(),
        )),
        (None, None, None) => Ok(None),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, scheme in any case.
fn basic(value: &[u8]) -> Option<(String, String)> {
    const SCHEME: &[u8] = b"basic ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let decoded = STANDARD.decode(value[SCHEME.len()..].trim_ascii()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |part: &str| -> String {
        form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let id = unescape(id);
    (!id.is_empty()).then(|| (id, unescape(secret)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn form(body: &str) -> Result<Form, OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        Form::read(&headers, body.as_bytes())
    }

    #[test]
    fn empty_values_count_as_omitted_and_repeats_are_refused() {
        let f = form("grant_type=password&scope=&username=a%20b").unwrap();
        assert_eq!(f.get("grant_type"), Some("password"));
        assert_eq!(f.get("scope"), None);
        assert_eq!(f.get("username"), Some("a b"));
        let repeated = form("scope=a&scope=b").unwrap_err();
        assert!(repeated.to_string().contains("`scope`"), "{repeated}");
        assert!(
            form("x=1&x=2")
                .unwrap_err()
                .to_string()
                .contains("a parameter")
        );
        assert!(Form::read(&HeaderMap::new(), b"grant_type=password").is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // RFC 6749 §2.3.1: id and secret are form-encoded before Base64.
        let value = format!("Basic {}", STANDARD.encode("my%3Aclient:p%40ss+word"));
        assert_eq!(
            basic(value.as_bytes()),
            Some(("my:client".to_owned(), "p@ss word".to_owned()))
        );
        assert_eq!(basic(b"Basic !!!"), None);
        assert_eq!(basic(b"Bearer abc"), None);
        let no_colon = format!("basic {}", STANDARD.encode("nocolon"));
        assert_eq!(basic(no_colon.as_bytes()), None);
    }
}
