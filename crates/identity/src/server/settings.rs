//! The identity provider's section of the settings.

use std::path::PathBuf;

use flotilla_kit::settings::{Invalid, Section};
use serde::{Deserialize, Serialize};

use crate::verify::VerifierSettings;
use crate::verify::check_trust;

/// The identity provider's settings. Durations are in milliseconds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdpSettings {
    /// The `iss` of every token: a stable name, not the listening address (the port may change
    /// between runs; tokens must stay valid across a restart).
    pub issuer: String,
    /// The `aud` of every token (a string if one, an array if several).
    pub audiences: Vec<String>,
    /// How long a token lives (`expires_in`); also the longest a [`Grant`](super::Grant) may
    /// ask for. At most 24 hours.
    pub token_lifetime_ms: u64,
    /// The file of the signing keys (private keys, mode 0600). `flotilla run idp` places a
    /// relative path in the data directory.
    pub key_file: PathBuf,
    /// Rotate the signing key this often; `None`: only when asked (`POST /admin/keys/rotate`).
    pub rotation_interval_ms: Option<u64>,
    /// The clock skew verifiers allow; a superseded key stays published for
    /// `token_lifetime_ms + max_clock_skew_ms` after it stopped signing. At most 5 minutes.
    pub max_clock_skew_ms: u64,
    /// The base URL clients reach this provider at, for the discovery document; `None`: taken
    /// from the request's `Host`.
    pub public_url: Option<String>,
    /// `Cache-Control: max-age` of the JWKS, and how old the verifiers let their copy grow.
    pub jwks_max_age_ms: u64,
    /// The seed file of users and clients (`flotilla run idp` reads it); `None`: the shipped
    /// one, `config/identity.toml`.
    pub seed_file: Option<PathBuf>,
    /// The platform secret (`identity.platform_secret`): a client with the `service` role may
    /// also authenticate with the secret derived from it for its id
    /// ([`derive_client_secret`](crate::credentials::derive_client_secret)). `flotilla up`
    /// makes one anew at each start. Never serialised nor printed.
    #[serde(skip_serializing)]
    pub platform_secret: Option<String>,
    /// Token requests one source address may make a second (a burst of five seconds' worth),
    /// at least 1 (`crate::server` answers 429 past it, before checking any secret).
    pub token_requests_per_second: u32,
    /// Token requests naming one user or client a minute, right or wrong (the burst, refilled
    /// over a minute), at least 1: how fast a password can be guessed.
    pub attempts_per_account_per_minute: u32,
}

impl Default for IdpSettings {
    fn default() -> Self {
        Self {
            issuer: crate::DEFAULT_ISSUER.to_owned(),
            audiences: vec![crate::DEFAULT_AUDIENCE.to_owned()],
            token_lifetime_ms: 15 * 60 * 1_000,
            key_file: PathBuf::from("identity-keys.json"),
            rotation_interval_ms: None,
            max_clock_skew_ms: 30_000,
            public_url: None,
            jwks_max_age_ms: 300_000,
            seed_file: None,
            platform_secret: None,
            token_requests_per_second: 20,
            attempts_per_account_per_minute: 10,
        }
    }
}

impl std::fmt::Debug for IdpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpSettings")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("token_lifetime_ms", &self.token_lifetime_ms)
            .field("key_file", &self.key_file)
            .field("rotation_interval_ms", &self.rotation_interval_ms)
            .field("max_clock_skew_ms", &self.max_clock_skew_ms)
            .field("public_url", &self.public_url)
            .field("jwks_max_age_ms", &self.jwks_max_age_ms)
            .field("seed_file", &self.seed_file)
            .field("token_requests_per_second", &self.token_requests_per_second)
            .field(
                "attempts_per_account_per_minute",
                &self.attempts_per_account_per_minute,
            )
            .field(
                "platform_secret",
                &self.platform_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Section for IdpSettings {
    fn validate(&self) -> Result<(), Invalid> {
        check_trust(&self.issuer, &self.audiences, self.max_clock_skew_ms)?;
        if !(1_000..=86_400_000).contains(&self.token_lifetime_ms) {
            return Err(Invalid::new(
                "token_lifetime_ms",
                "must be between 1 second and 24 hours",
            ));
        }
        if self.key_file.as_os_str().is_empty() {
            return Err(Invalid::new("key_file", "must not be empty"));
        }
        if self.rotation_interval_ms.is_some_and(|ms| ms < 60_000) {
            return Err(Invalid::new(
                "rotation_interval_ms",
                "must be at least one minute",
            ));
        }
        if self
            .public_url
            .as_deref()
            .is_some_and(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(Invalid::new("public_url", "must be an http(s):// URL"));
        }
        if self.jwks_max_age_ms == 0 {
            return Err(Invalid::new("jwks_max_age_ms", "must be positive"));
        }
        if self.token_requests_per_second == 0 {
            return Err(Invalid::new(
                "token_requests_per_second",
                "must be at least 1",
            ));
        }
        if self.attempts_per_account_per_minute == 0 {
            return Err(Invalid::new(
                "attempts_per_account_per_minute",
                "must be at least 1",
            ));
        }
        if self.platform_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(Invalid::new(
                "platform_secret",
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }
}

impl IdpSettings {
    /// Verifier settings that accept this provider's tokens (its issuer, audiences and skew;
    /// the other keys at their defaults).
    pub fn verifier_settings(&self) -> VerifierSettings {
        VerifierSettings {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            max_clock_skew_ms: self.max_clock_skew_ms,
            jwks_max_age_ms: self
                .jwks_max_age_ms
                .max(VerifierSettings::default().jwks_refetch_interval_ms),
            ..VerifierSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_its_key() {
        assert_eq!(IdpSettings::key_broken_by(|_| {}), None);
        type Rule = (fn(&mut IdpSettings), &'static str);
        let cases: [Rule; 8] = [
            (|s| s.issuer.clear(), "issuer"),
            (|s| s.audiences = vec![String::new()], "audiences"),
            (|s| s.token_lifetime_ms = 10, "token_lifetime_ms"),
            (|s| s.key_file = PathBuf::new(), "key_file"),
            (|s| s.rotation_interval_ms = Some(5), "rotation_interval_ms"),
            (|s| s.max_clock_skew_ms = 600_000, "max_clock_skew_ms"),
            (|s| s.public_url = Some("idp:80".into()), "public_url"),
            (|s| s.jwks_max_age_ms = 0, "jwks_max_age_ms"),
        ];
        for (change, key) in cases {
            assert_eq!(IdpSettings::key_broken_by(change), Some(key));
        }
    }
}
