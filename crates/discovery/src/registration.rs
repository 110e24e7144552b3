//! Self-registration and heartbeats.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_identity::TokenSource;
use flotilla_kit::Health;
use flotilla_kit::client::{self, CallError, Client};
use http::{Method, StatusCode};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What to register.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// Base URL of the registry.
    pub registry: &'a str,
    /// Service name.
    pub service: &'a str,
    /// `host:port` where the instance serves HTTP.
    pub address: &'a str,
    /// Metadata (version, pid, zone, weight…).
    pub metadata: BTreeMap<String, String>,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Lease duration asked of the registry.
    pub ttl: Duration,
    /// The process's own tokens: every registry write carries one (the registry refuses
    /// writes without a token with the `registry:write` scope). `None`: none is sent.
    pub token: Option<TokenSource>,
}

/// The registry's client: the HTTP client and the process's token.
#[derive(Debug, Clone)]
struct Writer {
    http: Client,
    token: Option<TokenSource>,
}

impl Writer {
    /// Sends a registry write with the process's token; a 401 drops the token so that the
    /// next write asks for a new one.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, bytes::Bytes), CallError> {
        let authorization = match &self.token {
            Some(token) => Some(token.bearer().await.map_err(|error| CallError::Invalid {
                url: url.to_owned(),
                reason: error.to_string(),
            })?),
            None => None,
        };
        let answer = client::send_as(
            &self.http,
            method,
            url,
            body,
            authorization.as_ref(),
            timeout,
        )
        .await;
        if let (Ok((StatusCode::UNAUTHORIZED, _)), Some(token)) = (&answer, &self.token) {
            token.invalidate();
        }
        answer
    }
}

/// The body of a registration, as the registry expects it.
#[derive(Debug, Clone, Serialize)]
struct Body<'a> {
    service: &'a str,
    address: &'a str,
    metadata: &'a BTreeMap<String, String>,
    ttl_ms: u64,
}

/// A registered instance; heartbeats run in the background until [`Registration::deregister`].
#[derive(Debug)]
pub struct Registration {
    registry: String,
    id: String,
    writer: Writer,
    heartbeats: JoinHandle<()>,
    stop: CancellationToken,
}

impl Registration {
    /// Registers the instance `spec` describes (retrying every 200 ms until the registry
    /// answers or `shutdown` fires), then keeps the lease alive.
    ///
    /// `health` is marked ready while a registration request is in flight, and not ready
    /// between failed attempts: the registry can only probe an instance it knows, so its first
    /// probe finds the instance ready, and an instance that is not registered is not ready.
    ///
    /// Returns `None` if `shutdown` fired first.
    pub async fn start(
        spec: Spec<'_>,
        health: &Health,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let Spec {
            registry,
            service,
            address,
            metadata,
            heartbeat,
            ttl,
            token,
        } = spec;
        let writer = Writer {
            http: client::client(),
            token,
        };
        let id = format!("{service}-{}", uuid::Uuid::now_v7().simple());
        let registry = registry.trim_end_matches('/').to_owned();
        let url = format!("{registry}/v1/registry/instances/{id}");
        let body = Body {
            service,
            address,
            metadata: &metadata,
            ttl_ms: ttl.as_millis() as u64,
        };
        let body = serde_json::to_value(&body).ok()?;
        let timeout = Duration::from_secs(2);
        loop {
            health.set_ready(true);
            health.ready_again("registry");
            let answer = writer.send(Method::PUT, &url, Some(&body), timeout).await;
            let why = match answer {
                Ok((status, _)) if status.is_success() => break,
                Ok((status, detail)) => {
                    let detail = String::from_utf8_lossy(&detail);
                    tracing::error!(%status, %detail, "registration refused");
                    format!("not registered: the registry answered {status}")
                }
                Err(error) => {
                    tracing::warn!(%error, "registry unreachable; retrying");
                    format!("not registered: {error}")
                }
            };
            health.not_ready("registry", why);
            health.set_ready(false);
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tracing::info!(instance = %id, %service, %address, "registered");
        let stop = CancellationToken::new();
        let heartbeats = tokio::spawn(beat(writer.clone(), url, body, heartbeat, stop.clone()));
        Some(Self {
            registry,
            id,
            writer,
            heartbeats,
            stop,
        })
    }

    /// The instance id the registry knows this process by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops the heartbeats and removes the instance from the registry (best effort: if the
    /// registry is gone, the lease simply runs out).
    pub async fn deregister(self) {
        self.stop.cancel();
        let _ = self.heartbeats.await;
        let url = format!("{}/v1/registry/instances/{}", self.registry, self.id);
        match self
            .writer
            .send(Method::DELETE, &url, None, Duration::from_secs(1))
            .await
        {
            Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                tracing::info!(instance = %self.id, "deregistered");
            }
            Ok((status, _)) => tracing::warn!(%status, "deregistration refused"),
            Err(error) => tracing::warn!(%error, "deregistration failed"),
        }
    }
}

async fn beat(
    writer: Writer,
    url: String,
    body: serde_json::Value,
    every: Duration,
    stop: CancellationToken,
) {
    let heartbeat_url = format!("{url}/heartbeat");
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = writer.send(Method::PUT, &heartbeat_url, None, every).await;
        match result {
            Ok((status, _)) if status.is_success() => {}
            Ok((StatusCode::NOT_FOUND, _)) => {
                // The registry forgot us (it restarted, or our lease ran out): register again.
                tracing::warn!("registry does not know this instance; registering again");
                if let Err(error) = register_again(&writer, &url, &body, every).await {
                    tracing::warn!(%error, "registering again failed; will retry");
                }
            }
            Ok((status, _)) => tracing::warn!(%status, "heartbeat refused"),
            Err(error) => tracing::warn!(%error, "heartbeat failed"),
        }
    }
}

async fn register_again(
    writer: &Writer,
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(), CallError> {
    match writer.send(Method::PUT, url, Some(body), timeout).await? {
        (status, _) if status.is_success() => Ok(()),
        (status, body) => Err(CallError::Status {
            url: url.to_owned(),
            status,
            body,
        }),
    }
}
