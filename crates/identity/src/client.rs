//! A platform process's own token: the client credentials grant (RFC 6749 §4.4) asked of the
//! identity provider, kept until shortly before it expires.
//!
//! A service calling another one (the order service pricing at the inventory, a process
//! registering with the registry) presents its own token: [`TokenSource::bearer`] answers the
//! `Authorization` value, from memory while the token has more than a fifth of its life (and at
//! least 30 s) left, else from one fresh grant that concurrent callers share. A failed grant is
//! an error for the call that needed it; the next call asks again.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;
use tokio::time::Instant;

use crate::server::TOKEN_PATH;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The provider could not be reached, or did not answer in time.
    #[error("the identity provider could not be asked for a token: {0}")]
    Unreachable(String),
    /// The provider refused the grant (a wrong secret, an unknown client).
    #[error("the identity provider refused the client `{client_id}` ({status}): {detail}")]
    Refused {
        /// The client.
        client_id: String,
        /// The provider's status.
        status: StatusCode,
        /// What it said.
        detail: String,
    },
}

/// A client id and its secret. The secret is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client's id (the token's `sub` and `client_id`).
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A process's own bearer token, granted by the provider at `url` and renewed before it
/// expires; cheap to clone (shared).
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    token_url: String,
    credentials: ClientCredentials,
    client: flotilla_kit::client::Client,
    timeout: Duration,
    /// The current `Authorization` value and when to renew it.
    current: Mutex<Option<(HeaderValue, Instant)>>,
    /// Held across a grant, so that concurrent callers share one.
    renewing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.inner.token_url)
            .field("client_id", &self.inner.credentials.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    expires_in: u64,
}

impl TokenSource {
    /// Tokens for `credentials` from the provider at base URL `url` (`http://host:port`); a
    /// grant must be answered within `timeout`.
    pub fn new(url: &str, credentials: ClientCredentials, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                token_url: format!("{}{TOKEN_PATH}", url.trim_end_matches('/')),
                credentials,
                client: flotilla_kit::client::client(),
                timeout,
                current: Mutex::new(None),
                renewing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The process's one source of tokens for `credentials` at `url`: whoever asks for the same
    /// client of the same provider (the discovery client, the registration, the gateway's
    /// public routes) shares it, hence one grant and one renewal, while anyone holds it.
    pub fn shared(url: &str, credentials: ClientCredentials, timeout: Duration) -> Self {
        static SOURCES: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
        let wanted = Self::new(url, credentials, timeout);
        let mut sources = lock(&SOURCES);
        sources.retain(|source| source.strong_count() > 0);
        let same = sources.iter().filter_map(Weak::upgrade).find(|inner| {
            inner.token_url == wanted.inner.token_url
                && inner.credentials == wanted.inner.credentials
        });
        match same {
            Some(inner) => Self { inner },
            None => {
                sources.push(Arc::downgrade(&wanted.inner));
                wanted
            }
        }
    }

    /// The client whose tokens these are.
    pub fn client_id(&self) -> &str {
        &self.inner.credentials.client_id
    }

    /// `Bearer <token>` for an `Authorization` header: the current token, or a new one if it
    /// is due for renewal.
    pub async fn bearer(&self) -> Result<HeaderValue, GrantError> {
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _renewing = self.inner.renewing.lock().await;
        // Another caller may have renewed it while this one waited.
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let (value, renew_at) = self.grant().await?;
        *lock(&self.inner.current) = Some((value.clone(), renew_at));
        Ok(value)
    }

    /// Forgets the current token (a peer refused it: the next call asks for a new one).
    pub fn invalidate(&self) {
        *lock(&self.inner.current) = None;
    }

    fn fresh(&self) -> Option<HeaderValue> {
        match &*lock(&self.inner.current) {
            Some((value, renew_at)) if Instant::now() < *renew_at => Some(value.clone()),
            _ => None,
        }
    }

    async fn grant(&self) -> Result<(HeaderValue, Instant), GrantError> {
        let inner = &self.inner;
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &inner.credentials.client_id)
            .append_pair("client_secret", &inner.credentials.client_secret)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri(&inner.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| GrantError::Unreachable(e.to_string()))?;
        let asked = Instant::now();
        let (status, body) =
            flotilla_kit::client::exchange(&inner.client, &inner.token_url, request, inner.timeout)
                .await
                .map_err(|e| GrantError::Unreachable(e.to_string()))?;
        if status != StatusCode::OK {
            return Err(GrantError::Refused {
                client_id: inner.credentials.client_id.clone(),
                status,
                detail: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        let granted: Granted = serde_json::from_slice(&body)
            .map_err(|e| GrantError::Unreachable(format!("the token answer is unreadable: {e}")))?;
        let value = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
            .map_err(|_| GrantError::Unreachable("the token is not a header value".to_owned()))?;
        let lifetime = Duration::from_secs(granted.expires_in);
        // Renew with a fifth of its life left, at least 30 s before it expires.
        let margin = (lifetime / 5).max(Duration::from_secs(30)).min(lifetime);
        Ok((value, asked + (lifetime - margin)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
