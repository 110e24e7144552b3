//! What a process that checks tokens reads: the `identity` table of the settings, with where
//! the identity provider is (`identity.url`, `FLOTILLA_IDENTITY__URL`) and the verifier's keys.

use flotilla_kit::settings::{Invalid, Section};
use serde::Serialize;

use crate::verify::{KeySource, Verifier, VerifierSettings};

/// The path of the JWKS under the provider's base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The `identity` table as a token-checking process reads it. (Serialised flat, as a file
/// holds it; the binary reads it key by key, so that an error names its key.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IdentityConfig {
    /// The identity provider's base URL (`http://127.0.0.1:PORT`); its keys are fetched from
    /// [`JWKS_PATH`] under it. `None`: no provider, and no token can be checked.
    pub url: Option<String>,
    /// Whom to trust and the verifier's limits.
    #[serde(flatten)]
    pub verifier: VerifierSettings,
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
}

impl Section for IdentityConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.url
            && !url.starts_with("http://")
        {
            return Err(Invalid::new("identity.url", "must be an http:// URL"));
        }
        self.verifier.validate().map_err(|invalid| Invalid {
            key: invalid.key,
            reason: format!("{} (in the identity table)", invalid.reason),
        })
    }
}
