//! An identity provider for tests: the real one (`flotilla_identity`), with its keys in a
//! temporary directory, served on a port of the test's, and tokens minted from it.

use std::sync::OnceLock;

use flotilla_identity::process::IdpConfig;
use flotilla_identity::server::routes;
use flotilla_identity::{Grant, IdentityConfig, Idp};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The platform secret of every [`TestIdp`]: the platform clients' secrets derive from it
/// ([`TestIdp::client_identity`]).
pub const PLATFORM_SECRET: &str = "the test platform's secret";

/// An identity provider (the shipped seed file) and a way to mint its tokens.
#[derive(Debug)]
pub struct TestIdp {
    /// The provider, to mint tokens without a password.
    pub idp: Idp,
    _keys: tempfile::TempDir,
}

impl TestIdp {
    /// A provider with new keys (blocking: writes the key file, hashes a secret).
    pub fn open() -> Self {
        let keys = tempfile::tempdir().expect("a directory for the keys");
        let mut config = IdpConfig::default();
        config.server.data_dir = keys.path().to_path_buf();
        config.idp.platform_secret = Some(PLATFORM_SECRET.to_owned());
        // One provider serves a whole test binary ([`TestIdp::shared`]): every gateway of its
        // tests asks a token as the same client, from the same address, within seconds. The
        // token endpoint's limits are tested on their own (`crates/identity/tests/attempts.rs`).
        config.idp.attempts_per_account_per_minute = 1_000_000;
        config.idp.token_requests_per_second = 1_000_000;
        let idp = config.open().expect("the identity provider opens");
        Self { idp, _keys: keys }
    }

    /// One provider for the whole test binary: each test serves it on a port of its own
    /// ([`TestIdp::serve`]), and a token minted once is good for every test.
    pub fn shared() -> &'static TestIdp {
        static SHARED: OnceLock<TestIdp> = OnceLock::new();
        SHARED.get_or_init(TestIdp::open)
    }

    /// Serves the provider on a new port until `shutdown`; its base URL.
    pub async fn serve(&self, shutdown: &CancellationToken) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let router = routes(self.idp.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        url
    }

    /// What a process that checks this provider's tokens, served at `url`, is configured with.
    pub fn identity(&self, url: &str) -> IdentityConfig {
        IdentityConfig {
            url: Some(url.to_owned()),
            verifier: self.idp.settings().verifier_settings(),
            client_id: None,
            client_secret: None,
        }
    }

    /// Like [`TestIdp::identity`], for a process that also calls others as platform client
    /// `client_id` (its secret derived from [`PLATFORM_SECRET`], as `flotilla up` does).
    pub fn client_identity(&self, url: &str, client_id: &str) -> IdentityConfig {
        IdentityConfig {
            client_id: Some(client_id.to_owned()),
            client_secret: Some(flotilla_identity::credentials::derive_client_secret(
                PLATFORM_SECRET,
                client_id,
            )),
            ..self.identity(url)
        }
    }

    /// A verifier of this provider's tokens with its keys at hand (no JWKS to fetch), as a
    /// service's [`flotilla_identity::guard`] runs it.
    pub fn verifier(&self) -> flotilla_identity::Verifier {
        flotilla_identity::Verifier::new(
            &self.idp.settings().verifier_settings(),
            flotilla_identity::KeySource::Fixed(self.idp.jwks()),
        )
        .expect("the provider's own settings are valid")
    }

    /// A second provider on this one's signing keys, its settings changed by `change` and its
    /// time told by `clock`: its tokens carry a good signature but what a verifier of this
    /// provider must refuse (another issuer or audience, expired, not yet valid).
    pub fn with_same_keys(
        &self,
        change: impl FnOnce(&mut flotilla_identity::IdpSettings),
        clock: flotilla_kit::clock::Clock,
    ) -> Idp {
        let mut settings = self.idp.settings().clone();
        change(&mut settings);
        Idp::open_with_clock(settings, self.idp.credentials().clone(), clock)
            .expect("a provider on the same keys")
    }

    /// A token for the seed file's user or client `name`, with its roles and every scope it
    /// may have.
    pub fn token(&self, name: &str) -> String {
        let credentials = self.idp.credentials();
        let account = credentials
            .user(name)
            .or_else(|| credentials.client(name))
            .unwrap_or_else(|| panic!("`{name}` is not in the seed file"));
        self.token_with(Grant::for_account(account))
    }

    /// A token for `grant`.
    pub fn token_with(&self, grant: Grant) -> String {
        self.idp.issue(grant).expect("a token").access_token
    }

    /// `Bearer <the token of name>`, for an `Authorization` header.
    pub fn bearer(&self, name: &str) -> String {
        format!("Bearer {}", self.token(name))
    }
}
