//! Who may ask for a token: users (resource owners, password grant) and machine clients (client
//! credentials grant), read from a seed file in TOML; and the password hashing they rely on.
//!
//! The seed file (`config/identity.toml`, [`SHIPPED`]) declares the scopes, the roles (each
//! granting scopes), the users and the clients:
//!
//! ```toml
//! [scopes]
//! "orders:read" = "read one's own orders"
//!
//! [roles.customer]
//! scopes = ["orders:read"]
//!
//! [users.alice]
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! roles = ["customer"]
//!
//! [clients.order]
//! secret_hash = "$argon2id$..."
//! roles = ["service"]
//! scopes = ["catalog:read"]    # granted on top of the roles' scopes
//! ```
//!
//! A principal may hold the union of its roles' scopes and its own `scopes`. A file with an
//! unknown key, a role or scope that is not declared, a hash that is not an Argon2 PHC string, or
//! a name used twice (TOML refuses a duplicate table; a name both a user's and a client's would
//! give two principals one `sub`) is refused, the message naming the entry and the key.
//!
//! Secrets are stored as Argon2id PHC strings ([`hash_secret`]); checking one ([`verify_secret`])
//! takes tens of milliseconds on purpose, so callers run it on a blocking thread and never under
//! a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use serde::Deserialize;

/// The seed file shipped in the repository (`config/identity.toml`): development accounts only.
pub const SHIPPED: &str = include_str!("../../../config/identity.toml");

/// A seed file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// The file could not be read.
    #[error("cannot read the identity seed file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
    /// The file is not TOML of the expected shape (an unknown key, a duplicate entry, a wrong
    /// type); the message shows the line.
    #[error("identity seed file: {0}")]
    Syntax(String),
    /// An entry breaks a rule.
    #[error("identity seed file: `{entry}`, key `{key}`: {reason}")]
    Invalid {
        /// The entry, as a TOML path (`users.alice`).
        entry: String,
        /// The key of the entry at fault.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Whether a principal is a person or a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A user: authenticates with a password (resource owner password credentials grant).
    User,
    /// A machine client: authenticates with a secret (client credentials grant).
    Client,
}

/// One principal of the seed file.
#[derive(Debug, Clone)]
pub struct Account {
    /// The name: a user's name or a client's id; the `sub` of its tokens.
    pub name: String,
    /// User or client.
    pub kind: Kind,
    /// Its roles, as declared.
    pub roles: Vec<String>,
    /// Every scope it may be granted (its roles' and its own), sorted.
    pub scopes: Vec<String>,
    /// Argon2 PHC string of its password or secret.
    hash: String,
}

impl Account {
    /// The PHC string its password or secret is checked against.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether it may be granted `scope`.
    pub fn may_have(&self, scope: &str) -> bool {
        self.scopes
            .binary_search_by(|s| s.as_str().cmp(scope))
            .is_ok()
    }
}

/// The parsed and checked seed file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    scopes: BTreeMap<String, String>,
    roles: BTreeMap<String, Vec<String>>,
    users: BTreeMap<String, Account>,
    clients: BTreeMap<String, Account>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    scopes: BTreeMap<String, String>,
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
    #[serde(default)]
    clients: BTreeMap<String, ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    #[serde(default)]
    description: Option<String>,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    password_hash: String,
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    #[serde(default)]
    description: Option<String>,
    secret_hash: String,
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

impl Credentials {
    /// The shipped development seed ([`SHIPPED`]).
    pub fn shipped() -> Result<Self, SeedError> {
        Self::parse(SHIPPED)
    }

    /// Reads and checks the seed file at `path`.
    pub fn load(path: &Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|e| SeedError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parses and checks a seed file's text.
    pub fn parse(text: &str) -> Result<Self, SeedError> {
        let file: SeedFile = toml::from_str(text).map_err(|e| {
            let entry = e.span().and_then(|span| table_before(text, span.start));
            SeedError::Syntax(match entry {
                Some(entry) => format!("in `[{entry}]`: {e}"),
                None => e.to_string(),
            })
        })?;
        let invalid = |entry: String, key: &'static str, reason: String| SeedError::Invalid {
            entry,
            key,
            reason,
        };
        for scope in file.scopes.keys() {
            if !is_scope_token(scope) {
                return Err(invalid(
                    format!("scopes.{scope}"),
                    "scopes",
                    "a scope is printable ASCII without space, `\"` or `\\` (RFC 6749 §3.3)"
                        .to_owned(),
                ));
            }
        }
        let check_scopes = |entry: &str, scopes: &[String]| match scopes
            .iter()
            .find(|s| !file.scopes.contains_key(*s))
        {
            Some(unknown) => Err(invalid(
                entry.to_owned(),
                "scopes",
                format!("unknown scope `{unknown}`: declare it under [scopes]"),
            )),
            None => Ok(()),
        };
        let mut roles = BTreeMap::new();
        for (name, role) in &file.roles {
            check_name(&format!("roles.{name}"), name)?;
            check_scopes(&format!("roles.{name}"), &role.scopes)?;
            let _ = &role.description;
            roles.insert(name.clone(), role.scopes.clone());
        }
        let account = |entry: String,
                       name: &str,
                       kind: Kind,
                       hash: &str,
                       hash_key: &'static str,
                       own_roles: &[String],
                       own_scopes: &[String]|
         -> Result<Account, SeedError> {
            check_name(&entry, name)?;
            if let Some(unknown) = own_roles.iter().find(|r| !roles.contains_key(*r)) {
                return Err(invalid(
                    entry,
                    "roles",
                    format!("unknown role `{unknown}`: declare it under [roles]"),
                ));
            }
            check_scopes(&entry, own_scopes)?;
            check_hash(hash).map_err(|reason| invalid(entry.clone(), hash_key, reason))?;
            let scopes: BTreeSet<String> = own_roles
                .iter()
                .flat_map(|role| roles.get(role).into_iter().flatten())
                .chain(own_scopes)
                .cloned()
                .collect();
            Ok(Account {
                name: name.to_owned(),
                kind,
                roles: own_roles.to_vec(),
                scopes: scopes.into_iter().collect(),
                hash: hash.to_owned(),
            })
        };
        let mut users = BTreeMap::new();
        for (name, user) in &file.users {
            let entry = format!("users.{name}");
            let user = account(
                entry,
                name,
                Kind::User,
                &user.password_hash,
                "password_hash",
                &user.roles,
                &user.scopes,
            )?;
            users.insert(name.clone(), user);
        }
        let mut clients = BTreeMap::new();
        for (name, client) in &file.clients {
            let entry = format!("clients.{name}");
            if users.contains_key(name) {
                return Err(invalid(
                    entry,
                    "secret_hash",
                    format!("`{name}` is also a user: a name is one principal (one `sub`)"),
                ));
            }
            let _ = &client.description;
            let client = account(
                entry,
                name,
                Kind::Client,
                &client.secret_hash,
                "secret_hash",
                &client.roles,
                &client.scopes,
            )?;
            clients.insert(name.clone(), client);
        }
        Ok(Self {
            scopes: file.scopes,
            roles,
            users,
            clients,
        })
    }

    /// The user `name`, if there is one.
    pub fn user(&self, name: &str) -> Option<&Account> {
        self.users.get(name)
    }

    /// The client `id`, if there is one.
    pub fn client(&self, id: &str) -> Option<&Account> {
        self.clients.get(id)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &Account> {
        self.users.values()
    }

    /// Every client, by id.
    pub fn clients(&self) -> impl Iterator<Item = &Account> {
        self.clients.values()
    }

    /// Every declared scope, sorted (the discovery document's `scopes_supported`).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.keys().map(String::as_str)
    }

    /// The scopes role `role` grants, if it is declared.
    pub fn role_scopes(&self, role: &str) -> Option<&[String]> {
        self.roles.get(role).map(Vec::as_slice)
    }
}

/// Whether `scope` is a scope token (RFC 6749 §3.3: `%x21 / %x23-5B / %x5D-7E`, at least one).
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// The name of the `[table]` header that precedes byte `at` of `text`, if any.
fn table_before(text: &str, at: usize) -> Option<&str> {
    text.get(..at)?
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|line| line.strip_prefix('[')?.strip_suffix(']'))
        .map(|name| name.trim_matches(|c| c == '[' || c == ']'))
}

fn check_name(entry: &str, name: &str) -> Result<(), SeedError> {
    let fits = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if fits {
        Ok(())
    } else {
        Err(SeedError::Invalid {
            entry: entry.to_owned(),
            key: "name",
            reason: "a name is 1 to 64 of `A-Z a-z 0-9 - _ . @`".to_owned(),
        })
    }
}

fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC string: {e}"))?;
    if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
        return Err(format!(
            "the hash is {}, expected argon2id (make one with `hash_secret`)",
            parsed.algorithm
        ));
    }
    argon2::Params::try_from(&parsed).map_err(|e| format!("bad Argon2 parameters: {e}"))?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("the PHC string has no salt or no hash".to_owned());
    }
    Ok(())
}

/// Hashes a password or client secret as an Argon2id PHC string (RFC 9106 parameters as the
/// `argon2` crate's defaults: 19 MiB, 2 passes, 1 lane) with a random 16-byte salt. Slow on
/// purpose: call it on a blocking thread in a server.
pub fn hash_secret(secret: &str) -> String {
    let mut salt = [0u8; 16];
    // The system generator does not fail on the systems we run on; if it did, a fixed salt
    // would only weaken this one hash against precomputation, never make it wrong.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt);
    let salt = SaltString::encode_b64(&salt).unwrap_or_else(|_| {
        // Unreachable: 16 bytes always encode.
        SaltString::from_b64("c2FsdHNhbHRzYWx0c2FsdA").unwrap_or_else(|_| unreachable!())
    });
    match Argon2::default().hash_password(secret.as_bytes(), &salt) {
        Ok(hash) => hash.to_string(),
        // Only an over-long secret (> 4 GiB) fails; no stored hash ever matches this one.
        Err(_) => String::from("$argon2id$v=19$m=19456,t=2,p=1$invalid"),
    }
}

/// Whether `secret` matches the PHC string `hash`, in time independent of where they differ.
/// Slow on purpose (tens of milliseconds): call it on a blocking thread, never under a lock.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The role of the platform's own processes (the gateway and the services calling each other
/// or the registry): whoever holds it acts for the platform, not for a customer.
pub const SERVICE_ROLE: &str = "service";

/// The secret of platform client `client_id` derived from a platform secret:
/// `base64url(HMAC-SHA256(platform_secret, "flotilla client secret\0" ‖ client_id))`.
///
/// `flotilla up` makes a platform secret anew at each start, gives it to the identity provider
/// only, and gives each process it starts the derived secret of its own client: a process
/// learns no other's secret, and nothing a developer could read in the repository lets anyone
/// act as a platform process ([`IdpSettings::platform_secret`](crate::IdpSettings)).
///
/// ```
/// use flotilla_identity::credentials::{derive_client_secret, is_derived_secret};
/// let order = derive_client_secret("platform", "order");
/// assert!(is_derived_secret("platform", "order", &order));
/// assert!(!is_derived_secret("platform", "payment", &order));
/// assert!(!is_derived_secret("another", "order", &order));
/// ```
pub fn derive_client_secret(platform_secret: &str, client_id: &str) -> String {
    use base64::Engine;
    let tag = ring::hmac::sign(&platform_key(platform_secret), &derivation_input(client_id));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

/// Whether `presented` is client `client_id`'s secret derived from `platform_secret`
/// ([`derive_client_secret`]), compared in constant time.
pub fn is_derived_secret(platform_secret: &str, client_id: &str, presented: &str) -> bool {
    use base64::Engine;
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(presented) else {
        return false;
    };
    ring::hmac::verify(
        &platform_key(platform_secret),
        &derivation_input(client_id),
        &tag,
    )
    .is_ok()
}

fn platform_key(platform_secret: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, platform_secret.as_bytes())
}

fn derivation_input(client_id: &str) -> Vec<u8> {
    let mut input = b"flotilla client secret\0".to_vec();
    input.extend_from_slice(client_id.as_bytes());
    input
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_hash_verifies_its_secret_only() {
        let hash = hash_secret("s3cret");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_secret("s3cret", &hash));
        assert!(!verify_secret("s3cret ", &hash));
        assert!(!verify_secret("s3cret", "not a hash"));
        assert_ne!(hash, hash_secret("s3cret"), "salted");
        assert!(check_hash(&hash).is_ok());
    }

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(is_scope_token("registry:write"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a\\b"));
        assert!(!is_scope_token("é"));
    }
}
