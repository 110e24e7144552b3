//! The verification keys read from a JWKS, each pinned to one algorithm.
//!
//! A JWK's algorithm is decided here, once, from the key itself: OKP/Ed25519 → EdDSA,
//! EC/P-256 → ES256, RSA → RS256 (or the RSA algorithm its `alg` names). A token's header may
//! only repeat it. No key is ever an HMAC secret, and keys that are not signature keys, of
//! another type or curve, or RSA keys under 2048 bits are left out of the table.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::jwk::{Jwk, Jwks};

/// One usable public key.
pub(crate) struct VerifyKey {
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
    /// The JWK it came from, to tell whether a refetched set still holds the same key.
    jwk: Jwk,
}

/// The keys by `kid`; replaced whole when the JWKS is fetched again.
#[derive(Default)]
pub(crate) struct KeyTable {
    pub(crate) keys: HashMap<String, Arc<VerifyKey>>,
    /// When the set was installed (microseconds since the epoch); `None` before the first.
    pub(crate) installed_at: Option<i64>,
}

impl KeyTable {
    /// The table of `jwks`, reusing the keys of `previous` that are unchanged (so that cached
    /// tokens they verified stay valid; see `Cache`).
    pub(crate) fn build(jwks: &Jwks, previous: &KeyTable, now: i64) -> Self {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.kid.as_deref() else {
                tracing::debug!("JWKS key without kid ignored");
                continue;
            };
            if keys.contains_key(kid) {
                // Two keys, one id: neither can be trusted to be the one meant.
                tracing::warn!(kid, "JWKS has two keys with one kid: both ignored");
                keys.insert(kid.to_owned(), None);
                continue;
            }
            let key = match previous.keys.get(kid) {
                Some(old) if old.jwk == *jwk => Some(old.clone()),
                _ => match VerifyKey::from_jwk(jwk) {
                    Ok(key) => Some(Arc::new(key)),
                    Err(reason) => {
                        tracing::warn!(kid, reason, "JWKS key ignored");
                        continue;
                    }
                },
            };
            keys.insert(kid.to_owned(), key);
        }
        Self {
            keys: keys
                .into_iter()
                .filter_map(|(kid, key)| Some((kid, key?)))
                .collect(),
            installed_at: Some(now),
        }
    }

    /// Whether `key` is still the key published under `kid`.
    pub(crate) fn still_publishes(&self, kid: &str, key: &Arc<VerifyKey>) -> bool {
        self.keys.get(kid).is_some_and(|k| Arc::ptr_eq(k, key))
    }
}

impl VerifyKey {
    fn from_jwk(jwk: &Jwk) -> Result<Self, &'static str> {
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signature key (`use` is not `sig`)");
        }
        let alg = jwk.alg.as_deref();
        let component =
            |value: &Option<String>, len: Option<usize>| -> Result<String, &'static str> {
                let value = value.as_deref().ok_or("a key component is missing")?;
                let bytes = URL_SAFE_NO_PAD
                    .decode(value)
                    .map_err(|_| "a key component is not base64url")?;
                if len.is_some_and(|len| bytes.len() != len) {
                    return Err("a key component has the wrong length");
                }
                Ok(value.to_owned())
            };
        let (alg, decoding) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => {
                if alg.is_some_and(|a| a != "EdDSA") {
                    return Err("an Ed25519 key's alg must be EdDSA");
                }
                let x = component(&jwk.x, Some(32))?;
                let key = DecodingKey::from_ed_components(&x).map_err(|_| "bad Ed25519 key")?;
                (Algorithm::EdDSA, key)
            }
            ("EC", Some("P-256")) => {
                if alg.is_some_and(|a| a != "ES256") {
                    return Err("a P-256 key's alg must be ES256");
                }
                let x = component(&jwk.x, Some(32))?;
                let y = component(&jwk.y, Some(32))?;
                let key = DecodingKey::from_ec_components(&x, &y).map_err(|_| "bad P-256 key")?;
                (Algorithm::ES256, key)
            }
            ("RSA", _) => {
                let alg = match alg {
                    None | Some("RS256") => Algorithm::RS256,
                    Some("RS384") => Algorithm::RS384,
                    Some("RS512") => Algorithm::RS512,
                    Some("PS256") => Algorithm::PS256,
                    Some("PS384") => Algorithm::PS384,
                    Some("PS512") => Algorithm::PS512,
                    Some(_) => return Err("an RSA key's alg must be an RSA algorithm"),
                };
                let n = component(&jwk.n, None)?;
                let e = component(&jwk.e, None)?;
                let modulus = URL_SAFE_NO_PAD.decode(&n).map_err(|_| "bad modulus")?;
                let significant = modulus.iter().skip_while(|&&b| b == 0).count();
                if significant < 256 {
                    return Err("an RSA key must have at least 2048 bits");
                }
                let key = DecodingKey::from_rsa_components(&n, &e).map_err(|_| "bad RSA key")?;
                (alg, key)
            }
            _ => return Err("unsupported key type or curve"),
        };
        Ok(Self {
            alg,
            decoding,
            jwk: jwk.clone(),
        })
    }
}

/// The algorithm a header's `alg` names, if the verifier supports it: never `none`, never an
/// HMAC.
pub(crate) fn header_alg(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    })
}
