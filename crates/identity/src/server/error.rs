//! What can go wrong in the identity provider, beside the token endpoint's own refusals.

use flotilla_kit::settings::Invalid;

use crate::keys::KeyError;

/// What can go wrong in the identity provider itself (not in a client's request).
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// A setting breaks a rule.
    #[error(transparent)]
    Settings(#[from] Invalid),
    /// The signing keys could not be made, read, written, rotated or retired.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The seed file of users and clients cannot be used.
    #[error(transparent)]
    Seed(#[from] crate::credentials::SeedError),
    /// A [`Grant`](super::Grant) that cannot be issued.
    #[error("cannot issue this grant: {0}")]
    Grant(String),
    /// Signing failed.
    #[error("signing a token failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// A blocking task (password check, key file write) panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
