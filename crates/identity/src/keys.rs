//! The identity provider's signing keys: Ed25519 key pairs, one current and the earlier ones
//! still published during a rollover, kept in a file so that a restart keeps issued tokens valid.
//!
//! A key's life: [`KeySet::rotate`] makes a new current key; the one it replaces stops signing
//! but stays in the published set (the JWKS) so that the tokens it signed keep verifying until
//! they expire; [`KeySet::retire_superseded_before`] (or [`KeySet::retire`] by id) then removes
//! it, and verifiers that fetch the set again refuse whatever it signed. Each key is named by its
//! RFC 7638 thumbprint, so a `kid` can never point at two different keys.
//!
//! The file (`KeySet::save`, [`KeySet::load`]) is JSON holding each private key as PKCS#8
//! (base64url), written to a temporary file with mode 0600 and renamed over the old one, so a
//! crash never leaves half a key set. It holds private keys: it belongs in the data directory,
//! never in the repository.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::jwk::{Jwk, Jwks};

/// What can go wrong with the signing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random generator failed while making a key.
    #[error("could not generate a signing key: the system random generator failed")]
    Generate,
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a valid key set.
    #[error("key file {path} is invalid: {reason}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No key of the set has this id.
    #[error("no published key has the id {0}")]
    UnknownKid(String),
    /// The current key cannot be retired: rotate first.
    #[error("the key {0} is the current signing key; rotate before retiring it")]
    RetireCurrent(String),
}

/// One Ed25519 signing key and what is known of its life (times in UNIX seconds).
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    encoding: EncodingKey,
    created_at: i64,
    superseded_at: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("superseded_at", &self.superseded_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key pair from the system's random generator, created at `now`.
    pub fn generate(now: i64) -> Result<Self, KeyError> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(pkcs8.as_ref().to_vec(), now, None).map_err(|_| KeyError::Generate)
    }

    /// A key from its PKCS#8 document (v1 or v2, as ring writes it).
    fn from_pkcs8(
        pkcs8: Vec<u8>,
        created_at: i64,
        superseded_at: Option<i64>,
    ) -> Result<Self, ring::error::KeyRejected> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = Jwk::ed25519(&public).kid.unwrap_or_default();
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(&pkcs8),
            pkcs8,
            public,
            created_at,
            superseded_at,
        })
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk::ed25519(&self.public)
    }

    /// The key to sign with (jsonwebtoken's, algorithm EdDSA).
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// When the key was made (UNIX seconds).
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    /// When another key replaced this one as the current key (UNIX seconds), if one did.
    pub fn superseded_at(&self) -> Option<i64> {
        self.superseded_at
    }
}

/// The signing keys: the current one, which signs, and earlier ones, still published so that
/// tokens they signed verify until they expire. Cheap to clone (the keys are shared).
#[derive(Debug, Clone)]
pub struct KeySet {
    current: Arc<SigningKey>,
    /// Newest first.
    previous: Vec<Arc<SigningKey>>,
}

/// The key file's layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    /// PKCS#8, base64url without padding.
    pkcs8: String,
    created_at: i64,
    superseded_at: Option<i64>,
}

impl KeySet {
    /// A set of one new key, created at `now` (UNIX seconds).
    pub fn generate(now: i64) -> Result<Self, KeyError> {
        Ok(Self {
            current: Arc::new(SigningKey::generate(now)?),
            previous: Vec::new(),
        })
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &Arc<SigningKey> {
        &self.current
    }

    /// Every published key, the current one first, then the earlier ones newest first.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<SigningKey>> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    /// The key with id `kid`, if it is published.
    pub fn get(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys().find(|key| key.kid == kid)
    }

    /// Makes a new current key at `now`; the old one stays published, marked superseded at
    /// `now`. Returns the new key's id.
    pub fn rotate(&mut self, now: i64) -> Result<String, KeyError> {
        let fresh = Arc::new(SigningKey::generate(now)?);
        let old = std::mem::replace(&mut self.current, fresh);
        // The old key's bytes are shared with readers of the previous set: copy them into the
        // superseded record instead of mutating in place.
        let superseded = SigningKey::from_pkcs8(old.pkcs8.clone(), old.created_at, Some(now))
            .map_err(|_| KeyError::Generate)?;
        self.previous.insert(0, Arc::new(superseded));
        Ok(self.current.kid.clone())
    }

    /// Stops publishing the earlier key `kid`: tokens it signed no longer verify once verifiers
    /// see the new set.
    pub fn retire(&mut self, kid: &str) -> Result<(), KeyError> {
        if self.current.kid == kid {
            return Err(KeyError::RetireCurrent(kid.to_owned()));
        }
        let before = self.previous.len();
        self.previous.retain(|key| key.kid != kid);
        if self.previous.len() == before {
            return Err(KeyError::UnknownKid(kid.to_owned()));
        }
        Ok(())
    }

    /// Retires every earlier key superseded before `cutoff` (UNIX seconds): with `cutoff` = now
    /// − (longest token lifetime + clock skew), no token such a key signed can still be valid.
    /// Returns the retired ids.
    pub fn retire_superseded_before(&mut self, cutoff: i64) -> Vec<String> {
        let mut retired = Vec::new();
        self.previous.retain(|key| {
            let keep = key.superseded_at.is_none_or(|at| at >= cutoff);
            if !keep {
                retired.push(key.kid.clone());
            }
            keep
        });
        retired
    }

    /// The published keys as a JWK Set, the current one first.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys().map(|key| key.jwk()).collect(),
        }
    }

    /// Reads the set from `path`; `Ok(None)` if there is no such file.
    pub fn load(path: &Path) -> Result<Option<Self>, KeyError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        warn_if_readable_by_others(path);
        let corrupt = |reason: String| KeyError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != 1 {
            return Err(corrupt(format!("unknown version {}", file.version)));
        }
        let mut current = None;
        let mut previous = Vec::new();
        for stored in file.keys {
            let pkcs8 = URL_SAFE_NO_PAD
                .decode(&stored.pkcs8)
                .map_err(|e| corrupt(format!("key {}: {e}", stored.kid)))?;
            let key = SigningKey::from_pkcs8(pkcs8, stored.created_at, stored.superseded_at)
                .map_err(|e| {
                    corrupt(format!(
                        "key {}: not an Ed25519 PKCS#8 key: {e}",
                        stored.kid
                    ))
                })?;
            if key.kid != stored.kid {
                return Err(corrupt(format!(
                    "key {}: the id is not the thumbprint of its key",
                    stored.kid
                )));
            }
            match (key.superseded_at, &current) {
                (None, None) => current = Some(Arc::new(key)),
                (None, Some(_)) => return Err(corrupt("two current keys".to_owned())),
                (Some(_), _) => previous.push(Arc::new(key)),
            }
        }
        let current = current.ok_or_else(|| corrupt("no current key".to_owned()))?;
        previous.sort_by_key(|key| std::cmp::Reverse(key.superseded_at));
        Ok(Some(Self { current, previous }))
    }

    /// Reads the set from `path`, or makes a new one and writes it there if there is no file.
    pub fn load_or_generate(path: &Path, now: i64) -> Result<Self, KeyError> {
        if let Some(set) = Self::load(path)? {
            return Ok(set);
        }
        let set = Self::generate(now)?;
        set.save(path)?;
        Ok(set)
    }

    /// Writes the set to `path` (mode 0600), atomically: a temporary file beside it, synced,
    /// then renamed over it. Creates the parent directory if needed.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let file = KeyFile {
            version: 1,
            keys: self
                .keys()
                .map(|key| StoredKey {
                    kid: key.kid.clone(),
                    pkcs8: URL_SAFE_NO_PAD.encode(&key.pkcs8),
                    created_at: key.created_at,
                    superseded_at: key.superseded_at,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&temporary).map_err(io)?;
        out.write_all(&json).map_err(io)?;
        out.sync_all().map_err(io)?;
        drop(out);
        std::fs::rename(&temporary, path).map_err(io)?;
        Ok(())
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the key file is readable by other users: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rotation_keeps_the_old_key_published_until_it_is_retired() {
        let mut set = KeySet::generate(1_000).unwrap();
        let first = set.current().kid().to_owned();
        let second = set.rotate(2_000).unwrap();
        assert_ne!(first, second);
        assert_eq!(set.current().kid(), second);
        let kids: Vec<_> = set.jwks().keys.into_iter().filter_map(|k| k.kid).collect();
        assert_eq!(kids, [second.clone(), first.clone()]);
        assert_eq!(set.get(&first).unwrap().superseded_at(), Some(2_000));

        assert!(
            set.retire_superseded_before(2_000).is_empty(),
            "superseded at the cutoff: kept"
        );
        assert_eq!(
            set.retire_superseded_before(2_001),
            std::slice::from_ref(&first)
        );
        assert!(set.get(&first).is_none());
        assert!(matches!(
            set.retire(&second),
            Err(KeyError::RetireCurrent(_))
        ));
        assert!(matches!(set.retire(&first), Err(KeyError::UnknownKid(_))));
    }

    #[test]
    fn the_kid_is_the_thumbprint_and_the_jwk_is_rfc_8037() {
        let set = KeySet::generate(0).unwrap();
        let jwk = set.current().jwk();
        assert_eq!(jwk.kty, "OKP");
        assert_eq!(jwk.crv.as_deref(), Some("Ed25519"));
        assert_eq!(jwk.alg.as_deref(), Some("EdDSA"));
        assert_eq!(jwk.key_use.as_deref(), Some("sig"));
        let x = jwk.x.as_deref().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap().len(), 32);
        assert_eq!(
            jwk.kid.as_deref(),
            Some(crate::jwk::ed25519_thumbprint(x).as_str())
        );
    }

    #[test]
    fn a_saved_set_loads_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("keys.json");
        assert!(KeySet::load(&path).unwrap().is_none());
        let mut set = KeySet::load_or_generate(&path, 10).unwrap();
        set.rotate(20).unwrap();
        set.save(&path).unwrap();
        let back = KeySet::load(&path).unwrap().unwrap();
        let kids = |s: &KeySet| s.keys().map(|k| k.kid().to_owned()).collect::<Vec<_>>();
        assert_eq!(kids(&back), kids(&set));
        assert_eq!(back.keys().nth(1).unwrap().superseded_at(), Some(20));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_tampered_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        KeySet::generate(0).unwrap().save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let other = KeySet::generate(0).unwrap();
        let tampered = text.replacen(
            "\"kid\": \"",
            &format!("\"kid\": \"{}", other.current().kid()),
            1,
        );
        std::fs::write(&path, tampered).unwrap();
        let error = KeySet::load(&path).unwrap_err();
        assert!(error.to_string().contains("thumbprint"), "{error}");
        std::fs::write(&path, "{}").unwrap();
        assert!(matches!(KeySet::load(&path), Err(KeyError::Corrupt { .. })));
    }
}
