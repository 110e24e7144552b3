//! The verifier's section of the settings: whom to trust (issuer, audiences), how much clock
//! skew to allow, the limits on hostile input, and how keys are fetched and tokens cached.

use flotilla_kit::settings::{Invalid, Section};
use serde::{Deserialize, Serialize};

/// The verifier's settings. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifierSettings {
    /// The `iss` a token must carry, exactly.
    pub issuer: String,
    /// The audiences this process accepts: a token's `aud` (a string or an array) must name at
    /// least one of them.
    pub audiences: Vec<String>,
    /// How far the clocks of the issuer and this process may disagree: a token is accepted up
    /// to this long after its `exp` and before its `nbf`. At most 5 minutes.
    pub max_clock_skew_ms: u64,
    /// The largest token accepted, in bytes; a longer one is refused before any parsing.
    pub max_token_bytes: usize,
    /// The least time between two fetches of the JWKS: a flood of tokens with unknown key ids
    /// costs the issuer one fetch per interval, not one per token.
    pub jwks_refetch_interval_ms: u64,
    /// The age past which the JWKS is fetched again in the background on the next
    /// verification, so that a retired key stops verifying even when no unknown key id comes.
    pub jwks_max_age_ms: u64,
    /// Deadline of one JWKS fetch.
    pub jwks_fetch_timeout_ms: u64,
    /// How many verified tokens are remembered (until their expiry), so that a token seen
    /// before verifies without cryptography; 0 turns the cache off.
    pub cache_capacity: usize,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            issuer: crate::DEFAULT_ISSUER.to_owned(),
            audiences: vec![crate::DEFAULT_AUDIENCE.to_owned()],
            max_clock_skew_ms: 30_000,
            max_token_bytes: 8 * 1024,
            jwks_refetch_interval_ms: 10_000,
            jwks_max_age_ms: 300_000,
            jwks_fetch_timeout_ms: 2_000,
            cache_capacity: 10_000,
        }
    }
}

/// The largest clock skew allowed: more would keep expired tokens alive for minutes.
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// The rules of the keys the issuer and its verifiers share: an issuer, at least one
/// audience (none empty), a clock skew of at most [`MAX_CLOCK_SKEW_MS`].
pub(crate) fn check_trust(
    issuer: &str,
    audiences: &[String],
    max_clock_skew_ms: u64,
) -> Result<(), Invalid> {
    if issuer.is_empty() {
        return Err(Invalid::new("issuer", "must not be empty"));
    }
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(Invalid::new(
            "audiences",
            "must name at least one audience, none empty",
        ));
    }
    if max_clock_skew_ms > MAX_CLOCK_SKEW_MS {
        return Err(Invalid::new(
            "max_clock_skew_ms",
            "must be at most 300000 (5 minutes)",
        ));
    }
    Ok(())
}

impl Section for VerifierSettings {
    fn validate(&self) -> Result<(), Invalid> {
        check_trust(&self.issuer, &self.audiences, self.max_clock_skew_ms)?;
        if !(256..=64 * 1024).contains(&self.max_token_bytes) {
            return Err(Invalid::new(
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        if self.jwks_refetch_interval_ms == 0 {
            return Err(Invalid::new("jwks_refetch_interval_ms", "must be positive"));
        }
        if self.jwks_max_age_ms < self.jwks_refetch_interval_ms {
            return Err(Invalid::new(
                "jwks_max_age_ms",
                "must be at least jwks_refetch_interval_ms",
            ));
        }
        if self.jwks_fetch_timeout_ms == 0 {
            return Err(Invalid::new("jwks_fetch_timeout_ms", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_its_key() {
        assert_eq!(VerifierSettings::key_broken_by(|_| {}), None);
        type Rule = (fn(&mut VerifierSettings), &'static str);
        let cases: [Rule; 7] = [
            (|s| s.issuer.clear(), "issuer"),
            (|s| s.audiences.clear(), "audiences"),
            (|s| s.max_clock_skew_ms = 300_001, "max_clock_skew_ms"),
            (|s| s.max_token_bytes = 10, "max_token_bytes"),
            (
                |s| s.jwks_refetch_interval_ms = 0,
                "jwks_refetch_interval_ms",
            ),
            (|s| s.jwks_max_age_ms = 1, "jwks_max_age_ms"),
            (|s| s.jwks_fetch_timeout_ms = 0, "jwks_fetch_timeout_ms"),
        ];
        for (change, key) in cases {
            assert_eq!(VerifierSettings::key_broken_by(change), Some(key));
        }
    }
}
