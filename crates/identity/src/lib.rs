//! Flotilla's identity: the identity provider that issues access tokens, and the verifier that
//! the gateway and every service run on each request.
//!
//! # Layout
//!
//! * [`credentials`] — who may ask for a token: the seed file (`config/identity.toml`) of
//!   scopes, roles, users (password grant) and machine clients (client credentials grant), and
//!   Argon2id hashing of their passwords and secrets.
//! * [`keys`] — the provider's Ed25519 signing keys: one current, earlier ones still published
//!   during a rollover, kept in a file (mode 0600) so that a restart keeps tokens valid.
//! * [`jwk`] — JSON Web Keys and key sets, as published and as read.
//! * [`server`] — the provider on HTTP ([`server::routes`] over an [`Idp`]): the OAuth 2.0
//!   token endpoint, the JWKS, the discovery document, key rotation; and minting a token
//!   directly ([`Idp::issue`]) for tests and the CLI.
//! * [`verify`] — the [`Verifier`]: checks a bearer token and returns its [`Principal`], or a
//!   [`TokenError`] that answers 401 by itself.
//! * [`guard`] — a service's check of every caller ([`guard::guard`], [`guard::Caller`]).
//! * [`admin`] — a process's admin listener (`/metrics`, `/admin/*`) behind an operator's
//!   token.
//! * [`client`] — a platform process's own token ([`client::TokenSource`], the client
//!   credentials grant, renewed before it expires).
//! * [`config`] — the `identity` table a process reads: the provider's URL, the verifier's
//!   settings, the process's own client credentials.
//!
//! # What the provider does
//!
//! It authenticates a user by password (RFC 6749 §4.3) or a client by its secret (§4.4, HTTP
//! Basic or the body), and answers a JWT signed with EdDSA (Ed25519) carrying `iss`, `sub`,
//! `aud`, `exp`, `nbf`, `iat`, a UUIDv7 `jti`, `roles`, `scope` (space-separated) and
//! `client_id`, with `kid` and `typ: JWT` in the header. A wrong password and an unknown user
//! get the same answer after the same work (the unknown one is checked against a dummy hash),
//! so the endpoint does not tell which names exist. Scopes asked for must be among those the
//! principal's roles grant; none asked for means all of them. Password checks run on blocking
//! threads, never under a lock. Errors are RFC 6749 §5.2 codes inside problem documents. The
//! endpoint is limited per source address and per account before any secret is checked (429,
//! `Retry-After`; `identity.token_requests_per_second`, `identity.attempts_per_account_per_minute`).
//!
//! Keys roll over without a gap: [`Idp::rotate`] makes a new signing key and keeps publishing
//! the old one; after the longest token lifetime plus clock skew no token the old key signed
//! can be valid, and it is retired. A verifier that meets the new `kid` fetches the JWKS again
//! and, from then on, refuses tokens of retired keys — cached ones included.
//!
//! # What the verifier checks, and the attacks it refuses
//!
//! | attack | refused by |
//! | --- | --- |
//! | `alg: none` (an unsigned token) | only EdDSA, ES256, RS/PS algorithms are accepted: [`TokenError::UnsupportedAlg`] |
//! | algorithm confusion: HS256 with the public key as the HMAC secret | HMAC is never accepted, and each key is pinned to the algorithm of its JWK type; a header `alg` that differs is [`TokenError::AlgMismatch`] |
//! | a key smuggled in the header (`jwk`, `jku`, `x5u`) | keys come only from the configured JWKS, by `kid` |
//! | a payload swapped under another token's signature | the signature covers header and payload as received: [`TokenError::BadSignature`] |
//! | a replayed expired token, or one made for later | `exp` required, `nbf`/`iat` checked, with a skew of at most 5 minutes |
//! | a token of another issuer or for another audience | exact `iss`, `aud` among the accepted |
//! | a token of a retired key served from a cache | a cache entry remembers its key and is served only while that key is published |
//! | an oversized or garbage token | refused by length before parsing; strict base64url, three parts, duplicate claims refused |
//! | a flood of unknown `kid`s to make the verifier hammer the provider | at most one JWKS fetch per interval, shared by concurrent callers |
//! | an unknown `crit` header extension | refused (RFC 7515 §4.1.11) |
//!
//! Verified tokens are cached (whole token as the key) until they expire, so a token seen
//! before costs a hash lookup instead of a signature check.

pub mod admin;
pub mod client;
pub mod config;
pub mod credentials;
pub mod guard;
pub mod jwk;
pub mod keys;
pub mod process;
pub mod server;
pub mod verify;

pub use client::{ClientCredentials, TokenSource};
pub use config::IdentityConfig;
pub use credentials::{Credentials, hash_secret};
pub use guard::Caller;
pub use server::{Grant, Idp, IdpError, IdpSettings, Token, routes};
pub use verify::{KeySource, Principal, TokenError, Verifier, VerifierSettings};

/// The issuer name of the default settings (`iss`), shared by the provider and the verifier.
pub const DEFAULT_ISSUER: &str = "flotilla-idp";

/// The audience of the default settings (`aud`).
pub const DEFAULT_AUDIENCE: &str = "flotilla";
