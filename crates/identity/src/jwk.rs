//! JSON Web Keys (RFC 7517) as they travel: the public keys the identity provider publishes and
//! the verifier reads.
//!
//! Only public members exist here. A key set read from elsewhere may hold members this crate
//! does not use (`x5c`, `key_ops`): they are kept out of the types and ignored; which keys the
//! verifier accepts is decided in [`crate::verify`], not here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One public key (RFC 7517 §4), with the members of the key types the verifier supports:
/// OKP (Ed25519, RFC 8037), EC (P-256) and RSA (RFC 7518 §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`, `EC` or `RSA` (others are read but never used).
    pub kty: String,
    /// Key id, matched against a token header's `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The algorithm the key is meant for (`EdDSA`, `ES256`, `RS256`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use: `sig` for signature keys.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// Curve of an OKP or EC key: `Ed25519`, `P-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Public point (OKP) or its x coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// The y coordinate of an EC point, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus, base64url of the unsigned big-endian integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url of the unsigned big-endian integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

impl Jwk {
    /// The JWK of an Ed25519 public key (RFC 8037 §2) with its RFC 7638 thumbprint as `kid`.
    pub fn ed25519(public_key: &[u8]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public_key);
        Self {
            kty: "OKP".to_owned(),
            kid: Some(ed25519_thumbprint(&x)),
            alg: Some("EdDSA".to_owned()),
            key_use: Some("sig".to_owned()),
            crv: Some("Ed25519".to_owned()),
            x: Some(x),
            y: None,
            n: None,
            e: None,
        }
    }
}

/// The RFC 7638 thumbprint of an Ed25519 key whose base64url public point is `x`: SHA-256 over
/// the required members in lexicographic order without white space, base64url.
pub fn ed25519_thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A JWK Set (RFC 7517 §5): `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, in no particular order.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The key with id `kid`, if the set has one.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|key| key.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_matches_rfc_8037_appendix_a3() {
        // RFC 8037 A.3: the thumbprint of the key of A.1.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(
            ed25519_thumbprint(x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
