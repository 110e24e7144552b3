//! `flotilla run idp`: the identity provider as a process of its own, on the kit's listener.

use flotilla_kit::{App, Health, ServerSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::{Idp, IdpSettings, admin_routes, routes};
use crate::{Credentials, IdpError};

/// What the identity provider's process reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdpConfig {
    /// Where it listens, logs and keeps its key file (`data_dir`).
    pub server: ServerSettings,
    /// Issuer, audiences, token lifetime, keys, the seed file.
    pub idp: IdpSettings,
}

impl IdpConfig {
    /// The settings with a relative `key_file` placed in the data directory.
    fn settings(&self) -> IdpSettings {
        let mut settings = self.idp.clone();
        if settings.key_file.is_relative() {
            settings.key_file = self.server.data_dir.join(&settings.key_file);
        }
        settings
    }

    /// The credentials of the seed file.
    pub fn credentials(&self) -> Result<Credentials, IdpError> {
        let credentials = match &self.idp.seed_file {
            Some(path) => Credentials::load(path),
            None => Credentials::shipped(),
        };
        Ok(credentials?)
    }

    /// Opens the provider these settings describe, with the key file it would use (blocking:
    /// reads, and may write, the key file). `flotilla token` signs development tokens with it
    /// ([`Idp::issue`]): the running provider publishes the same keys.
    pub fn open(&self) -> Result<Idp, IdpError> {
        Idp::open(self.settings(), self.credentials()?)
    }
}

/// Runs the identity provider on `listener` until `shutdown`: the token endpoint, the JWKS,
/// the discovery document and the key maintenance (rotation, retirement).
pub async fn run(
    config: IdpConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let opened = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || config.open())
            .await
            .map_err(std::io::Error::other)?
    };
    let idp =
        opened.map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let health = Health::new();
    let router = App::new(health.clone())
        .max_body_bytes(config.server.max_body_bytes)
        .routes(routes(idp.clone()))
        .into_router();
    {
        let (idp, shutdown) = (idp.clone(), shutdown.clone());
        tokio::spawn(async move { idp.maintain(shutdown).await });
    }
    // Key maintenance and `/metrics` on the admin listener, checked with the provider's own
    // keys.
    let admin = crate::admin::serve(
        config.server.admin_listen,
        admin_routes(idp.clone()).merge(flotilla_kit::app::admin_routes(None)),
        Some(idp.verifier().clone()),
        config.server.connection_limits(),
        shutdown.clone(),
    )
    .await?;
    health.set_started();
    health.set_ready(true);
    tracing::info!(
        address = %listener.local_addr()?,
        issuer = %idp.settings().issuer,
        kid = %idp.current_kid(),
        admin = %admin.address,
        "identity provider listening"
    );
    let limits = config.server.connection_limits();
    flotilla_kit::serve(listener, router, limits, async move {
        shutdown.cancelled().await;
        health.set_ready(false);
    })
    .await
}
