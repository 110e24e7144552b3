//! The identity provider on HTTP: the OAuth 2.0 token endpoint, the published keys and the
//! discovery document, and the admin endpoints of key rotation.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /oauth2/token` | password grant (RFC 6749 §4.3) and client credentials grant (§4.4), form-encoded; errors per §5.2 as problem documents |
//! | `GET /.well-known/jwks.json` | the published keys (RFC 7517), with `Cache-Control: max-age` |
//! | `GET /.well-known/openid-configuration`, `/.well-known/oauth-authorization-server` | the metadata (issuer, endpoints, grants, algorithms, scopes) |
//! | `POST /admin/keys/rotate` | a new signing key (role `admin`); answers the new and published kids |
//! | `DELETE /admin/keys/{kid}` | retires an earlier key now (role `admin`) |
//!
//! [`routes`] returns a plain router over an [`Idp`]; the binary puts it behind the kit's stack
//! (`flotilla_kit::App`) and serves it, and runs [`Idp::maintain`] beside it.

mod attempts;
mod error;
mod idp;
mod oauth;
mod settings;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use flotilla_kit::Problem;
use serde_json::json;

pub use error::IdpError;
pub use idp::{Grant, Idp, Token};
pub use oauth::{Form, MAX_FORM_BYTES, OAuthError, client_credentials};
pub use settings::IdpSettings;

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth2/token";

use crate::keys::KeyError;
use crate::verify::bearer_from_headers;

/// The identity provider's public routes over `idp`: the token endpoint, the JWKS and the
/// discovery documents.
pub fn routes(idp: Idp) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .with_state(idp)
}

/// The identity provider's admin routes over `idp` (key rotation and retirement), for its
/// admin listener; each also checks for an admin token itself.
pub fn admin_routes(idp: Idp) -> Router {
    Router::new()
        .route("/admin/keys/rotate", post(rotate))
        .route("/admin/keys/{kid}", delete(retire))
        .with_state(idp)
}

async fn token(
    State(idp): State<Idp>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(axum::Extension(axum::extract::ConnectInfo(peer))) = peer
        && let Err(wait) = idp.attempts().address(peer.ip())
    {
        return too_many(wait, "token requests from this address");
    }
    match token_request(&idp, &headers, &body).await {
        Ok(token) => {
            let mut response = axum::Json(token).into_response();
            let headers = response.headers_mut();
            // RFC 6749 §5.1: a token answer is never cached.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(error) => {
            if !matches!(error, OAuthError::Server(_)) {
                tracing::info!(error = error.code(), "token request refused");
            }
            error.into_response()
        }
    }
}

/// 429 `/problems/too-many-attempts`, with `Retry-After` (`wait`, in whole seconds, at least 1).
fn too_many(wait: std::time::Duration, what: &str) -> Response {
    let seconds = oauth::retry_after_seconds(wait);
    let mut response = Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too-many-attempts",
        format!("too many {what}; retry in {seconds} s"),
    )
    .with("retry_after_s", seconds)
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn token_request(idp: &Idp, headers: &HeaderMap, body: &[u8]) -> Result<Token, OAuthError> {
    let form = Form::read(headers, body)?;
    let grant_type = form.require("grant_type")?;
    let client = client_credentials(headers, &form)?;
    // Before any secret is checked: a guesser gets so many tries a minute per account.
    let account = match (grant_type, &client) {
        ("password", _) => form.get("username").map(|name| format!("user:{name}")),
        (_, Some((id, _))) => Some(format!("client:{id}")),
        _ => None,
    };
    if let Some(account) = account
        && let Err(wait) = idp.attempts().account(account)
    {
        return Err(OAuthError::TooManyAttempts(wait));
    }
    match grant_type {
        "password" => {
            let username = form.require("username")?;
            let password = form.require("password")?;
            let client_id = match &client {
                Some((id, secret)) => {
                    idp.authenticate_client(id, secret).await?;
                    Some(id.as_str())
                }
                None => None,
            };
            idp.password_grant(username, password, form.get("scope"), client_id)
                .await
        }
        "client_credentials" => {
            let (id, secret) = client.ok_or(OAuthError::InvalidClient)?;
            idp.authenticate_client(&id, &secret).await?;
            idp.client_credentials_grant(&id, form.get("scope"))
        }
        _ => Err(OAuthError::UnsupportedGrantType),
    }
}

async fn jwks(State(idp): State<Idp>) -> Response {
    let max_age = idp.settings().jwks_max_age_ms / 1_000;
    let mut response = axum::Json(idp.jwks()).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

async fn metadata(State(idp): State<Idp>, headers: HeaderMap) -> Response {
    let base = match &idp.settings().public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .map(|host| format!("http://{host}"))
            .unwrap_or_default(),
    };
    let scopes: Vec<&str> = idp.credentials().scopes().collect();
    let document = json!({
        "issuer": idp.settings().issuer,
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["password", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "scopes_supported": scopes,
        "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "roles", "scope", "client_id"],
    });
    let mut response = axum::Json(document).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// `Ok` if the request carries a valid token of this provider with role `admin`.
async fn admin(idp: &Idp, headers: &HeaderMap) -> Result<(), Response> {
    let token = bearer_from_headers(headers).map_err(IntoResponse::into_response)?;
    let principal = idp
        .verifier()
        .verify(token)
        .await
        .map_err(IntoResponse::into_response)?;
    principal
        .require_role("admin")
        .map_err(IntoResponse::into_response)?;
    tracing::info!(subject = principal.subject, "admin request");
    Ok(())
}

async fn rotate(State(idp): State<Idp>, headers: HeaderMap) -> Response {
    if let Err(refused) = admin(&idp, &headers).await {
        return refused;
    }
    match idp.rotate().await {
        Ok(kid) => {
            tracing::info!(kid, "signing key rotated");
            axum::Json(json!({ "kid": kid, "published": published(&idp) })).into_response()
        }
        Err(error) => Problem::internal(&error).into_response(),
    }
}

async fn retire(State(idp): State<Idp>, headers: HeaderMap, Path(kid): Path<String>) -> Response {
    if let Err(refused) = admin(&idp, &headers).await {
        return refused;
    }
    match idp.retire(&kid).await {
        Ok(()) => {
            tracing::info!(kid, "signing key retired");
            axum::Json(json!({ "retired": kid, "published": published(&idp) })).into_response()
        }
        Err(IdpError::Keys(KeyError::UnknownKid(_))) => {
            Problem::not_found("no published key has this id").into_response()
        }
        Err(IdpError::Keys(error @ KeyError::RetireCurrent(_))) => Problem::new(
            axum::http::StatusCode::CONFLICT,
            "current-key",
            error.to_string(),
        )
        .into_response(),
        Err(error) => Problem::internal(&error).into_response(),
    }
}

fn published(idp: &Idp) -> Vec<String> {
    idp.jwks().keys.into_iter().filter_map(|k| k.kid).collect()
}
