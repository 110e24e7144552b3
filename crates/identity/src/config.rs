//! What a process that checks tokens reads: the `identity` table of the settings, with where
//! the identity provider is (`identity.url`, `FLOTILLA_IDENTITY__URL`) and the verifier's keys.

use flotilla_kit::settings::{Invalid, Section};
use serde::Serialize;

use crate::client::{ClientCredentials, TokenSource};
use crate::verify::{KeySource, Verifier, VerifierSettings};

/// The path of the JWKS under the provider's base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The `identity` table as a token-checking process reads it. (Serialised flat, as a file
/// holds it; the binary reads it key by key, so that an error names its key.)
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct IdentityConfig {
    /// The identity provider's base URL (`http://127.0.0.1:PORT`); its keys are fetched from
    /// [`JWKS_PATH`] under it. `None`: no provider, and no token can be checked.
    pub url: Option<String>,
    /// Whom to trust and the verifier's limits.
    #[serde(flatten)]
    pub verifier: VerifierSettings,
    /// The process's own client id (`identity.client_id`), for the tokens it presents when it
    /// calls another process on its own behalf; `None`: it never does.
    pub client_id: Option<String>,
    /// That client's secret (`identity.client_secret`). Never serialised nor printed.
    #[serde(skip_serializing)]
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConfig")
            .field("url", &self.url)
            .field("verifier", &self.verifier)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl IdentityConfig {
    /// The verifier of tokens from the provider at [`url`](Self::url), if one is set.
    pub fn verifier(&self) -> Result<Option<Verifier>, Invalid> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let jwks = format!("{}{JWKS_PATH}", url.trim_end_matches('/'));
        Verifier::new(&self.verifier, KeySource::Url(jwks)).map(Some)
    }

    /// The process's own tokens, if a provider and the client's id and secret are set: one
    /// source per client and provider in the process ([`TokenSource::shared`]).
    pub fn token_source(&self) -> Option<TokenSource> {
        let (Some(url), Some(client_id), Some(client_secret)) =
            (&self.url, &self.client_id, &self.client_secret)
        else {
            return None;
        };
        let credentials = ClientCredentials {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
        };
        let timeout = std::time::Duration::from_millis(self.verifier.jwks_fetch_timeout_ms);
        Some(TokenSource::shared(url, credentials, timeout))
    }
}

impl Section for IdentityConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.url
            && !url.starts_with("http://")
        {
            return Err(Invalid::new("identity.url", "must be an http:// URL"));
        }
        if self.client_id.is_some() != self.client_secret.is_some() {
            return Err(Invalid::new(
                "identity.client_secret",
                "identity.client_id and identity.client_secret are set together or not at all",
            ));
        }
        self.verifier.validate().map_err(|invalid| Invalid {
            key: invalid.key,
            reason: format!("{} (in the identity table)", invalid.reason),
        })
    }
}
