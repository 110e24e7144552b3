//! The JWT verifier the gateway and every service call on each request.
//!
//! [`Verifier::verify`] takes a compact JWS and either returns the [`Principal`] it speaks for
//! or a [`TokenError`] whose [`IntoResponse`](axum::response::IntoResponse) is the RFC 6750
//! 401 answer. What it checks, in order:
//!
//! 1. **size** — more than `max_token_bytes` is refused before any parsing;
//! 2. **cache** — a token verified before is served from the cache if its `exp` (plus skew) has
//!    not passed *and* the key that verified it is still the key published under its `kid`;
//! 3. **shape** — three base64url parts, a JSON header with `alg`; a `crit` header is refused
//!    (no extension is understood), a `typ` other than `JWT`/`at+jwt` is refused; keys named in
//!    the header (`jwk`, `jku`, `x5u`, `x5c`) are never used;
//! 4. **algorithm** — `none` and every HMAC (`HS*`) are refused outright: a public key is never
//!    used as an HMAC secret; the key is chosen by `kid` from the JWKS only, and the header's
//!    `alg` must equal the algorithm that key is pinned to (OKP/Ed25519 → EdDSA, EC/P-256 →
//!    ES256, RSA → RS256 unless the JWK names another RSA algorithm);
//! 5. **signature** — over the header and payload exactly as received (ring, through
//!    `jsonwebtoken::crypto::verify`); the claims are parsed only after it verifies, with
//!    duplicate claim names refused;
//! 6. **claims** — `exp` required and not past, `nbf` and `iat` not in the future, each with
//!    the bounded skew; `iss` equal to the expected issuer; `aud` (a string or an array) naming
//!    an accepted audience; `sub` present and not empty.
//!
//! Keys come from a [`KeySource`]: a JWKS URL, fetched when a token names an unknown `kid` (at
//! most once per `jwks_refetch_interval_ms`, concurrent callers sharing the one fetch, a failed
//! fetch keeping the last good set) and in the background once the set is older than
//! `jwks_max_age_ms`; or a fixed set, which the owner replaces with [`Verifier::set_keys`].
//! A key that disappears from the set stops verifying at once, cached tokens included.

mod bearer;
mod cache;
mod error;
mod keys;
mod principal;
mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flotilla_kit::clock::Clock;
use flotilla_kit::settings::{Invalid, Section as _};
use serde::Deserialize;

pub use bearer::{bearer, bearer_from_headers};
pub use error::{Forbidden, REALM, TokenError};
pub use principal::Principal;
pub(crate) use settings::check_trust;
pub use settings::{MAX_CLOCK_SKEW_MS, VerifierSettings};

use crate::jwk::Jwks;
use cache::{Cache, Entry};
use keys::{KeyTable, VerifyKey, header_alg};

/// Where the verifier's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS URL (`http://…/.well-known/jwks.json`), fetched with the kit's internal client.
    Url(String),
    /// A fixed set (tests, or an identity provider verifying its own tokens), replaced only by
    /// [`Verifier::set_keys`].
    Fixed(Jwks),
}

/// Verifies bearer tokens. Cheap to clone: clones share the keys and the cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.issuer)
            .field("audiences", &self.inner.audiences)
            .finish_non_exhaustive()
    }
}

struct Inner {
    issuer: String,
    audiences: Vec<String>,
    /// Seconds.
    skew: i64,
    max_bytes: usize,
    url: Option<String>,
    client: flotilla_kit::client::Client,
    fetch_timeout: Duration,
    /// Microseconds.
    refetch_interval: i64,
    /// Microseconds.
    max_age: i64,
    keys: RwLock<Arc<KeyTable>>,
    /// Held across a fetch: concurrent callers wait for the one fetch instead of starting more.
    fetch: tokio::sync::Mutex<FetchState>,
    background_refresh: AtomicBool,
    cache: Cache,
    clock: Clock,
}

#[derive(Default)]
struct FetchState {
    /// When the last fetch started (microseconds since the epoch).
    last_attempt: Option<i64>,
}

/// The header members the verifier reads; the others are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims the verifier reads; the others are ignored. A duplicated claim fails parsing.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A NumericDate as whole seconds (RFC 7519 allows fractions), refusing NaN and infinities.
fn seconds(value: f64) -> Result<i64, TokenError> {
    if value.is_finite() {
        // Saturating: a date beyond i64 is as good as never.
        Ok(value.floor() as i64)
    } else {
        Err(TokenError::Malformed("numeric date"))
    }
}

impl Verifier {
    /// A verifier with the system clock. Fails if the settings break a rule (naming the key).
    pub fn new(settings: &VerifierSettings, source: KeySource) -> Result<Self, Invalid> {
        Self::with_clock(settings, source, Clock::system())
    }

    /// A verifier reading time from `clock` (tests move a manual one past a token's expiry).
    pub fn with_clock(
        settings: &VerifierSettings,
        source: KeySource,
        clock: Clock,
    ) -> Result<Self, Invalid> {
        settings.validate()?;
        let (url, table) = match source {
            KeySource::Url(url) => {
                if !url.starts_with("http://") {
                    return Err(Invalid::new("jwks_url", "must be an http:// URL"));
                }
                (Some(url), KeyTable::default())
            }
            KeySource::Fixed(jwks) => (
                None,
                KeyTable::build(&jwks, &KeyTable::default(), clock.now_micros()),
            ),
        };
        let ms = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000);
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: settings.issuer.clone(),
                audiences: settings.audiences.clone(),
                skew: i64::try_from(settings.max_clock_skew_ms / 1_000).unwrap_or(300),
                max_bytes: settings.max_token_bytes,
                url,
                client: flotilla_kit::client::client(),
                fetch_timeout: Duration::from_millis(settings.jwks_fetch_timeout_ms),
                refetch_interval: ms(settings.jwks_refetch_interval_ms),
                max_age: ms(settings.jwks_max_age_ms),
                keys: RwLock::new(Arc::new(table)),
                fetch: tokio::sync::Mutex::new(FetchState::default()),
                background_refresh: AtomicBool::new(false),
                cache: Cache::new(settings.cache_capacity),
                clock,
            }),
        })
    }

    /// Verifies the bearer token of a request's `headers` ([`bearer_from_headers`], then
    /// [`Verifier::verify`]): a request without one is [`TokenError::Missing`].
    pub async fn verify_headers(&self, headers: &http::HeaderMap) -> Result<Principal, TokenError> {
        self.verify(bearer_from_headers(headers)?).await
    }

    /// Verifies `token`, fetching the JWKS first if it names an unknown key and a fetch is
    /// allowed now (see the module docs).
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.refresh_if_stale();
        match self.verify_now(token) {
            Err(TokenError::UnknownKid) if self.inner.url.is_some() => {
                let _ = self.refresh().await;
                match self.verify_now(token) {
                    // No key set was ever fetched: the token cannot be judged now.
                    Err(TokenError::UnknownKid) if self.table().installed_at.is_none() => {
                        Err(TokenError::KeysUnavailable)
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Verifies `token` with the keys at hand, never waiting for a fetch: an unknown `kid` is
    /// [`TokenError::UnknownKid`]. For callers that cannot await, and the benchmark.
    pub fn verify_now(&self, token: &str) -> Result<Principal, TokenError> {
        let inner = &*self.inner;
        if token.len() > inner.max_bytes {
            return Err(TokenError::Oversized);
        }
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let now = inner.clock.now_micros().div_euclid(1_000_000);
        let table = self.table();
        let cached = inner.cache.with(token, |entry| {
            if entry.principal.expires_at.saturating_add(inner.skew) < now {
                Some(Err(TokenError::Expired))
            } else if table.still_publishes(&entry.kid, &entry.key) {
                Some(Ok(entry.principal.clone()))
            } else {
                None
            }
        });
        match cached {
            Some(Some(answer)) => return answer,
            // The key that verified it is gone or replaced: judge the token afresh.
            Some(None) => inner.cache.remove(token),
            None => {}
        }
        let (kid, key, principal) = self.check(token, &table, now)?;
        inner.cache.insert(
            Entry {
                principal: principal.clone(),
                kid,
                key,
            },
            now,
            inner.skew,
        );
        Ok(principal)
    }

    /// The full check of a token not in the cache.
    fn check(
        &self,
        token: &str,
        table: &KeyTable,
        now: i64,
    ) -> Result<(Arc<str>, Arc<VerifyKey>, Principal), TokenError> {
        let inner = &*self.inner;
        let alphabet = token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !alphabet {
            return Err(TokenError::Malformed("characters outside base64url"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three parts"));
        };
        // An empty signature is judged below: `alg: none` is refused as such.
        if header_b64.is_empty() || payload_b64.is_empty() {
            return Err(TokenError::Malformed("an empty part"));
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed("header encoding"))?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed("header"))?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed("critical header extension"));
        }
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("JWT")
            && !typ.eq_ignore_ascii_case("at+jwt")
            && !typ.eq_ignore_ascii_case("application/at+jwt")
        {
            return Err(TokenError::Malformed("typ"));
        }
        let alg = header_alg(&header.alg).ok_or(TokenError::UnsupportedAlg)?;
        let kid = header.kid.ok_or(TokenError::UnknownKid)?;
        let key = table.keys.get(&kid).ok_or(TokenError::UnknownKid)?;
        if key.alg != alg {
            return Err(TokenError::AlgMismatch);
        }
        let message_len = header_b64.len() + 1 + payload_b64.len();
        let message = &token.as_bytes()[..message_len];
        let good = jsonwebtoken::crypto::verify(signature_b64, message, &key.decoding, key.alg)
            .map_err(|_| TokenError::Malformed("signature encoding"))?;
        if !good {
            return Err(TokenError::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed("payload encoding"))?;
        let claims: Claims =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed("claims"))?;

        let skew = inner.skew;
        let exp = seconds(claims.exp.ok_or(TokenError::MissingClaim("exp"))?)?;
        if exp.saturating_add(skew) < now {
            return Err(TokenError::Expired);
        }
        for not_before in [claims.nbf, claims.iat].into_iter().flatten() {
            if seconds(not_before)? > now.saturating_add(skew) {
                return Err(TokenError::NotYetValid);
            }
        }
        if claims.iss.as_deref() != Some(inner.issuer.as_str()) {
            return Err(TokenError::WrongIssuer);
        }
        let accepted = |aud: &String| inner.audiences.contains(aud);
        let audience_ok = match &claims.aud {
            Some(Audience::One(aud)) => accepted(aud),
            Some(Audience::Many(auds)) => auds.iter().any(accepted),
            None => false,
        };
        if !audience_ok {
            return Err(TokenError::WrongAudience);
        }
        let subject = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim("sub"))?;
        let principal = Principal {
            subject,
            client_id: claims.client_id,
            roles: claims.roles.unwrap_or_default(),
            scopes: claims
                .scope
                .as_deref()
                .unwrap_or_default()
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            expires_at: exp,
            token_id: claims.jti,
            token: Arc::from(token),
        };
        Ok((Arc::from(kid.as_str()), key.clone(), principal))
    }

    fn table(&self) -> Arc<KeyTable> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the keys with `jwks` (keys that did not change stay the same, so the tokens
    /// they verified stay cached). For a [`KeySource::Fixed`] verifier whose owner rotates its
    /// keys; with a URL source the next fetch replaces them again.
    pub fn set_keys(&self, jwks: &Jwks) {
        let mut keys = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
        let table = KeyTable::build(jwks, &keys, self.inner.clock.now_micros());
        *keys = Arc::new(table);
    }

    /// The ids of the keys the verifier accepts now, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<_> = self.table().keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Fetches the JWKS now unless one was fetched less than `jwks_refetch_interval_ms` ago
    /// (or this verifier has a fixed set). Concurrent callers share one fetch. Returns whether
    /// a fetch happened and succeeded; a failure keeps the last good set.
    pub async fn refresh(&self) -> bool {
        let Some(url) = self.inner.url.as_deref() else {
            return false;
        };
        let mut state = self.inner.fetch.lock().await;
        let now = self.inner.clock.now_micros();
        if let Some(last) = state.last_attempt
            && now.saturating_sub(last) < self.inner.refetch_interval
        {
            return false;
        }
        state.last_attempt = Some(now);
        let fetched: Result<Jwks, _> = flotilla_kit::client::json(
            &self.inner.client,
            http::Method::GET,
            url,
            None::<&()>,
            self.inner.fetch_timeout,
        )
        .await;
        match fetched {
            Ok(jwks) => {
                self.set_keys(&jwks);
                tracing::debug!(url, keys = jwks.keys.len(), "JWKS fetched");
                true
            }
            Err(error) => {
                tracing::warn!(url, %error, "JWKS fetch failed; keeping the last good keys");
                false
            }
        }
    }

    /// Starts a background fetch if the set is older than `jwks_max_age_ms` and none is running.
    fn refresh_if_stale(&self) {
        if self.inner.url.is_none() {
            return;
        }
        let installed_at = self.table().installed_at;
        let now = self.inner.clock.now_micros();
        let stale = installed_at.is_some_and(|at| now.saturating_sub(at) > self.inner.max_age);
        if stale && !self.inner.background_refresh.swap(true, Ordering::AcqRel) {
            let verifier = self.clone();
            tokio::spawn(async move {
                verifier.refresh().await;
                verifier
                    .inner
                    .background_refresh
                    .store(false, Ordering::Release);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numeric_dates_may_have_fractions_but_not_nan() {
        assert_eq!(seconds(10.9).unwrap(), 10);
        assert_eq!(seconds(-0.5).unwrap(), -1);
        assert!(seconds(f64::NAN).is_err());
        assert!(seconds(f64::INFINITY).is_err());
    }
}
