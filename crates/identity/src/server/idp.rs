//! The identity provider's state: the seed credentials, the signing keys, and minting tokens.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_kit::clock::Clock;
use flotilla_kit::settings::Section as _;
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::IdpSettings;
use super::error::IdpError;
use super::oauth::OAuthError;
use crate::credentials::{self, Account, Credentials, is_scope_token};
use crate::jwk::Jwks;
use crate::keys::KeySet;
use crate::verify::{KeySource, Verifier};

/// What a token is issued for: the claims it will carry. [`Idp::issue`] signs it without any
/// authentication, for tests and the CLI's development tokens; the token endpoint builds one
/// after authenticating the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// `sub`: a user's name or a client's id.
    pub subject: String,
    /// `client_id`, if a client is known.
    pub client_id: Option<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// `scope` (joined by spaces); each a scope token (RFC 6749 §3.3).
    pub scopes: Vec<String>,
    /// How long the token lives; `None`: the setting `token_lifetime_ms`, which is also the
    /// most allowed (so that retiring a key after that long never cuts a token short).
    pub lifetime: Option<Duration>,
}

impl Grant {
    /// A grant for a principal of the seed file with its roles and every scope it may have:
    /// a user's, or a client's (then its `client_id` too).
    pub fn for_account(account: &Account) -> Self {
        Self {
            subject: account.name.clone(),
            client_id: (account.kind == credentials::Kind::Client).then(|| account.name.clone()),
            roles: account.roles.clone(),
            scopes: account.scopes.clone(),
            lifetime: None,
        }
    }
}

/// A signed access token and its OAuth description (the token endpoint's answer, RFC 6749
/// §5.1).
#[derive(Debug, Clone, Serialize)]
pub struct Token {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// `exp` (UNIX seconds).
    #[serde(skip)]
    pub expires_at: i64,
    /// The `kid` of the key that signed it.
    #[serde(skip)]
    pub kid: String,
    /// Its `jti`.
    #[serde(skip)]
    pub jti: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Audience<'a>,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: &'a str,
    roles: &'a [String],
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(&'a str),
    Many(&'a [String]),
}

/// The identity provider: credentials, signing keys, and a verifier of its own tokens. Cheap
/// to clone.
#[derive(Clone)]
pub struct Idp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("issuer", &self.inner.settings.issuer)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: IdpSettings,
    credentials: Credentials,
    /// Read to sign (the current key is cloned out, the lock is never held while signing).
    keys: RwLock<KeySet>,
    /// Serialises rotations and retirements, and their file writes.
    changes: tokio::sync::Mutex<()>,
    verifier: Verifier,
    clock: Clock,
    /// Checked against when a user or client is unknown, so that the answer takes as long as
    /// for a wrong password and says the same.
    dummy_hash: String,
    /// How often the token endpoint may be tried, per address and per account.
    attempts: super::attempts::Attempts,
}

impl Idp {
    /// Opens the provider: checks the settings, reads the key file (or makes one with a new
    /// key). Blocking: reads and may write the key file, and hashes one dummy secret.
    pub fn open(settings: IdpSettings, credentials: Credentials) -> Result<Self, IdpError> {
        Self::open_with_clock(settings, credentials, Clock::system())
    }

    /// [`Idp::open`] with a clock of the caller's (tests).
    pub fn open_with_clock(
        settings: IdpSettings,
        credentials: Credentials,
        clock: Clock,
    ) -> Result<Self, IdpError> {
        settings.validate()?;
        let now = clock.now_micros().div_euclid(1_000_000);
        let keys = KeySet::load_or_generate(&settings.key_file, now)?;
        let verifier = Verifier::with_clock(
            &settings.verifier_settings(),
            KeySource::Fixed(keys.jwks()),
            clock.clone(),
        )?;
        tracing::info!(
            kid = keys.current().kid(),
            keys = keys.keys().count(),
            "signing keys ready"
        );
        let attempts = super::attempts::Attempts::new(&settings).ok_or_else(|| {
            IdpError::Settings(flotilla_kit::settings::Invalid::new(
                "attempts_per_account_per_minute",
                "the token endpoint's limits cannot be built",
            ))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                attempts,
                dummy_hash: credentials::hash_secret(&uuid::Uuid::now_v7().to_string()),
                settings,
                credentials,
                keys: RwLock::new(keys),
                changes: tokio::sync::Mutex::new(()),
                verifier,
                clock,
            }),
        })
    }

    /// The token endpoint's limits.
    pub(super) fn attempts(&self) -> &super::attempts::Attempts {
        &self.inner.attempts
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &IdpSettings {
        &self.inner.settings
    }

    /// The users and clients it knows.
    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// A verifier of its own tokens, against its own published keys (kept current across
    /// rotations).
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// The published keys (the JWKS), the current one first.
    pub fn jwks(&self) -> Jwks {
        self.key_set().jwks()
    }

    /// The `kid` of the current signing key.
    pub fn current_kid(&self) -> String {
        self.key_set().current().kid().to_owned()
    }

    fn key_set(&self) -> KeySet {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_micros().div_euclid(1_000_000)
    }

    /// Signs a token for `grant` with the current key, without authenticating anyone: for
    /// tests and `flotilla token`. Refuses an empty subject, a scope that is not a scope token,
    /// and a lifetime longer than `token_lifetime_ms`.
    pub fn issue(&self, grant: Grant) -> Result<Token, IdpError> {
        let settings = &self.inner.settings;
        let longest = Duration::from_millis(settings.token_lifetime_ms);
        let lifetime = grant.lifetime.unwrap_or(longest);
        if lifetime > longest || lifetime.is_zero() {
            return Err(IdpError::Grant(format!(
                "the lifetime must be positive and at most token_lifetime_ms ({} s)",
                longest.as_secs()
            )));
        }
        if grant.subject.is_empty() {
            return Err(IdpError::Grant("the subject is empty".to_owned()));
        }
        if let Some(bad) = grant.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(IdpError::Grant(format!("`{bad}` is not a scope token")));
        }
        let now = self.now();
        let expires_in = lifetime.as_secs().max(1);
        let exp = now.saturating_add(i64::try_from(expires_in).unwrap_or(i64::MAX));
        let jti = uuid::Uuid::now_v7().to_string();
        let scope = grant.scopes.join(" ");
        let audience = match settings.audiences.as_slice() {
            [one] => Audience::One(one),
            many => Audience::Many(many),
        };
        let claims = Claims {
            iss: &settings.issuer,
            sub: &grant.subject,
            aud: audience,
            exp,
            nbf: now,
            iat: now,
            jti: &jti,
            roles: &grant.roles,
            scope: &scope,
            client_id: grant.client_id.as_deref(),
        };
        let key = self.key_set().current().clone();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().to_owned());
        let access_token = jsonwebtoken::encode(&header, &claims, key.encoding_key())?;
        Ok(Token {
            access_token,
            token_type: "Bearer",
            expires_in,
            scope,
            expires_at: exp,
            kid: key.kid().to_owned(),
            jti,
        })
    }

    /// The resource owner password credentials grant (RFC 6749 §4.3): checks the user's
    /// password (a wrong password and an unknown user are the same `invalid_grant`, in
    /// comparable time) and issues a token with the requested scopes, all the user may have
    /// if `scope` is `None`. `client_id` is an already authenticated client, if any.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        scope: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<Token, OAuthError> {
        let user = self.inner.credentials.user(username);
        if !self.check_secret(user, password).await? {
            return Err(OAuthError::InvalidGrant);
        }
        let user = user.ok_or(OAuthError::InvalidGrant)?;
        let scopes = granted_scopes(user, scope)?;
        self.issue_for(user, scopes, client_id)
    }

    /// Authenticates client `client_id` with `secret` (an unknown client and a wrong secret
    /// are the same `invalid_client`, in comparable time).
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<(), OAuthError> {
        let client = self.inner.credentials.client(client_id);
        // A platform process presents the secret `flotilla up` derived for it: checked with
        // one HMAC, no Argon2 (the platform secret is random, not a password).
        if let (Some(platform), Some(account)) = (&self.inner.settings.platform_secret, client)
            && account
                .roles
                .iter()
                .any(|role| role == credentials::SERVICE_ROLE)
            && credentials::is_derived_secret(platform, client_id, secret)
        {
            return Ok(());
        }
        if self.check_secret(client, secret).await? && client.is_some() {
            Ok(())
        } else {
            Err(OAuthError::InvalidClient)
        }
    }

    /// The client credentials grant (RFC 6749 §4.4) for an already authenticated client.
    pub fn client_credentials_grant(
        &self,
        client_id: &str,
        scope: Option<&str>,
    ) -> Result<Token, OAuthError> {
        let client = self
            .inner
            .credentials
            .client(client_id)
            .ok_or(OAuthError::InvalidClient)?;
        let scopes = granted_scopes(client, scope)?;
        self.issue_for(client, scopes, Some(client_id))
    }

    fn issue_for(
        &self,
        account: &Account,
        scopes: Vec<String>,
        client_id: Option<&str>,
    ) -> Result<Token, OAuthError> {
        self.issue(Grant {
            subject: account.name.clone(),
            client_id: client_id.map(str::to_owned),
            roles: account.roles.clone(),
            scopes,
            lifetime: None,
        })
        .map_err(OAuthError::Server)
    }

    /// Checks `secret` against the account's hash (or the dummy one) on a blocking thread.
    async fn check_secret(
        &self,
        account: Option<&Account>,
        secret: &str,
    ) -> Result<bool, OAuthError> {
        let hash = account.map_or_else(|| self.inner.dummy_hash.clone(), |a| a.hash().to_owned());
        let secret = secret.to_owned();
        let matches =
            tokio::task::spawn_blocking(move || credentials::verify_secret(&secret, &hash))
                .await
                .map_err(|e| OAuthError::Server(e.into()))?;
        Ok(matches && account.is_some())
    }

    /// Makes a new current signing key; the previous one stays published until it is retired.
    /// Keys superseded longer than a token lives are retired on the way. Returns the new kid.
    pub async fn rotate(&self) -> Result<String, IdpError> {
        self.change(|set, now, retention| {
            let kid = set.rotate(now)?;
            set.retire_superseded_before(now.saturating_sub(retention));
            Ok(kid)
        })
        .await
    }

    /// Stops publishing the earlier key `kid` now: tokens it signed stop verifying.
    pub async fn retire(&self, kid: &str) -> Result<(), IdpError> {
        let kid = kid.to_owned();
        self.change(move |set, _, _| Ok(set.retire(&kid)?)).await
    }

    /// Retires the earlier keys superseded longer than `token_lifetime_ms +
    /// max_clock_skew_ms` ago (no token they signed can still be valid). Returns their ids.
    pub async fn retire_expired(&self) -> Result<Vec<String>, IdpError> {
        self.change(|set, now, retention| {
            Ok(set.retire_superseded_before(now.saturating_sub(retention)))
        })
        .await
    }

    /// Applies `change` to a copy of the key set, writes it to the key file, then publishes it
    /// (to the JWKS and the own verifier). One change at a time; signing goes on meanwhile.
    async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut KeySet, i64, i64) -> Result<T, IdpError> + Send + 'static,
    ) -> Result<T, IdpError> {
        let _one_at_a_time = self.inner.changes.lock().await;
        let mut set = self.key_set();
        let now = self.now();
        let settings = &self.inner.settings;
        let retention_ms = settings.token_lifetime_ms + settings.max_clock_skew_ms;
        let retention = i64::try_from(retention_ms / 1_000).unwrap_or(i64::MAX);
        let path = settings.key_file.clone();
        let (set, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = change(&mut set, now, retention)?;
            set.save(&path)?;
            Ok::<_, IdpError>((set, outcome))
        })
        .await??;
        self.inner.verifier.set_keys(&set.jwks());
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(outcome)
    }

    /// Until `shutdown`: rotates the key every `rotation_interval_ms` (if set) and retires
    /// expired keys every minute.
    pub async fn maintain(&self, shutdown: CancellationToken) {
        let rotation = self
            .inner
            .settings
            .rotation_interval_ms
            .map(Duration::from_millis);
        let mut retire = tokio::time::interval(Duration::from_secs(60));
        let mut rotate = tokio::time::interval(rotation.unwrap_or(Duration::MAX / 4));
        retire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Both fire at once: skip the first ticks.
        rotate.tick().await;
        retire.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = rotate.tick(), if rotation.is_some() => match self.rotate().await {
                    Ok(kid) => tracing::info!(kid, "signing key rotated"),
                    Err(error) => tracing::error!(%error, "signing key rotation failed"),
                },
                _ = retire.tick() => match self.retire_expired().await {
                    Ok(retired) if !retired.is_empty() => tracing::info!(?retired, "signing keys retired"),
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "retiring signing keys failed"),
                },
            }
        }
    }
}

/// The scopes to grant `account` for the request's `scope` parameter: all it may have if none
/// was asked for, else exactly those asked for, each of which it must be allowed.
fn granted_scopes(account: &Account, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested.filter(|s| !s.is_empty()) else {
        return Ok(account.scopes.clone());
    };
    let mut granted: Vec<String> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !is_scope_token(scope) {
            return Err(OAuthError::InvalidScope(
                "the scope is malformed (RFC 6749 §3.3)".to_owned(),
            ));
        }
        if !account.may_have(scope) {
            return Err(OAuthError::InvalidScope(format!(
                "the scope `{scope}` is not granted to `{}`",
                account.name
            )));
        }
        if !granted.iter().any(|g| g == scope) {
            granted.push(scope.to_owned());
        }
    }
    Ok(granted)
}
