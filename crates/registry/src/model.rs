//! The registry's state, with no I/O: every rule about leases, status and the change index.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// Health of an instance as the registry last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// In rotation.
    Passing,
    /// Out of rotation: its last probe failed. Still registered; a passing probe brings it back.
    Critical,
}

/// What an instance sends to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Service name, `[a-z0-9-]{1,63}`.
    pub service: String,
    /// `host:port` where the instance serves HTTP.
    pub address: String,
    /// Free-form metadata (version, zone, weight, topics…).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Lease duration; the instance must heartbeat within it. Defaults to the registry's TTL.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// A registered instance as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id, chosen by the instance, unique in the registry.
    pub id: String,
    /// Service name.
    pub service: String,
    /// `host:port`.
    pub address: String,
    /// Metadata given at registration.
    pub metadata: BTreeMap<String, String>,
    /// Current health.
    pub status: Status,
}

/// A service's instances at a given change index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// The registry's change index when this snapshot was taken.
    pub index: u64,
    /// Every registered instance of the service, passing or not.
    pub instances: Vec<Instance>,
}

#[derive(Debug)]
struct Entry {
    instance: Instance,
    ttl: Duration,
    expires: Instant,
    /// Who registered it (a token's subject); only they may renew, replace or remove it.
    /// `None` in a registry that checks no credential.
    holder: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// service → instance id → entry.
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    /// instance id → service, to find an instance by id alone.
    owners: BTreeMap<String, String>,
    index: u64,
}

/// The registry state: a cheap, cloneable handle.
///
/// The change index grows on every change of membership or status (not on heartbeats), so a
/// watcher that blocks until the index passes the one it has seen wakes exactly when there is
/// something new to see.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<Mutex<State>>,
    changes: Arc<watch::Sender<u64>>,
    default_ttl: Duration,
    closing: tokio_util::sync::CancellationToken,
}

/// Why a registry operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No instance has this id (never registered, deregistered or evicted).
    #[error("no instance `{0}` is registered")]
    UnknownInstance(String),
    /// The registration is invalid.
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// The instance was registered by another principal: only its holder may renew, replace
    /// or remove it.
    #[error("instance `{0}` was registered by another principal")]
    NotHolder(String),
}

impl Registry {
    /// An empty registry whose leases last `default_ttl` unless an instance asks otherwise.
    pub fn new(default_ttl: Duration) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            state: Arc::default(),
            changes: Arc::new(changes),
            default_ttl,
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every change is one assignment), so a
        // poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn bump(&self, state: &mut State) {
        state.index += 1;
        self.changes.send_replace(state.index);
        record_instances(state);
    }

    /// Registers (or re-registers) instance `id`. Returns the instance as stored.
    pub fn register(
        &self,
        id: &str,
        registration: Registration,
    ) -> Result<Instance, RegistryError> {
        self.register_held(id, registration, None)
    }

    /// Registers (or re-registers) instance `id` on behalf of `holder` (a verified token's
    /// subject): an instance registered by another holder is not replaced
    /// (`RegistryError::NotHolder`), and nothing changes.
    pub fn register_held(
        &self,
        id: &str,
        registration: Registration,
        holder: Option<&str>,
    ) -> Result<Instance, RegistryError> {
        validate_name("instance id", id)?;
        validate_name("service", &registration.service)?;
        validate_address(&registration.address)?;
        let ttl = match registration.ttl_ms {
            Some(0) => return Err(RegistryError::Invalid("ttl_ms must be positive".into())),
            Some(ms) => Duration::from_millis(ms.min(3_600_000)),
            None => self.default_ttl,
        };
        let instance = Instance {
            id: id.to_owned(),
            service: registration.service,
            address: registration.address,
            metadata: registration.metadata,
            status: Status::Passing,
        };
        let mut state = self.lock();
        check_holder(&mut state, id, holder)?;
        if let Some(previous) = state.owners.get(id).cloned()
            && previous != instance.service
        {
            remove(&mut state, id);
        }
        state.owners.insert(id.to_owned(), instance.service.clone());
        let entry = Entry {
            instance: instance.clone(),
            ttl,
            expires: Instant::now() + ttl,
            holder: holder.map(str::to_owned),
        };
        let previous = state
            .services
            .entry(instance.service.clone())
            .or_default()
            .insert(id.to_owned(), entry);
        if previous.map(|p| p.instance) != Some(instance.clone()) {
            self.bump(&mut state);
        }
        Ok(instance)
    }

    /// Renews the lease of instance `id`.
    pub fn heartbeat(&self, id: &str) -> Result<(), RegistryError> {
        self.heartbeat_held(id, None)
    }

    /// Renews the lease of instance `id` on behalf of `holder` (see [`Registry::register_held`]).
    pub fn heartbeat_held(&self, id: &str, holder: Option<&str>) -> Result<(), RegistryError> {
        let mut state = self.lock();
        check_holder(&mut state, id, holder)?;
        let entry =
            find(&mut state, id).ok_or_else(|| RegistryError::UnknownInstance(id.into()))?;
        entry.expires = Instant::now() + entry.ttl;
        Ok(())
    }

    /// Removes instance `id`.
    pub fn deregister(&self, id: &str) -> Result<Instance, RegistryError> {
        self.deregister_held(id, None)
    }

    /// Removes instance `id` on behalf of `holder` (see [`Registry::register_held`]).
    pub fn deregister_held(
        &self,
        id: &str,
        holder: Option<&str>,
    ) -> Result<Instance, RegistryError> {
        let mut state = self.lock();
        check_holder(&mut state, id, holder)?;
        let removed =
            remove(&mut state, id).ok_or_else(|| RegistryError::UnknownInstance(id.into()))?;
        self.bump(&mut state);
        Ok(removed)
    }

    /// Sets the status of instance `id` from a probe result; returns whether it changed.
    pub fn set_status(&self, id: &str, status: Status) -> bool {
        let mut state = self.lock();
        let Some(entry) = find(&mut state, id) else {
            return false;
        };
        if entry.instance.status == status {
            return false;
        }
        entry.instance.status = status;
        tracing::info!(instance = id, ?status, "instance status changed");
        self.bump(&mut state);
        true
    }

    /// Evicts every instance whose lease has run out; returns the evicted ones.
    pub fn evict_expired(&self) -> Vec<Instance> {
        let now = Instant::now();
        let mut state = self.lock();
        let expired: Vec<String> = state
            .services
            .values()
            .flat_map(|instances| instances.values())
            .filter(|entry| entry.expires <= now)
            .map(|entry| entry.instance.id.clone())
            .collect();
        let evicted: Vec<Instance> = expired
            .iter()
            .filter_map(|id| remove(&mut state, id))
            .collect();
        if !evicted.is_empty() {
            self.bump(&mut state);
        }
        evicted
    }

    /// `(id, address)` of every instance: the ones to probe. (An instance is ready from its
    /// registration request on, so even a new one can be probed at once.)
    pub fn probe_targets(&self) -> Vec<(String, String)> {
        let state = self.lock();
        state
            .services
            .values()
            .flat_map(|instances| instances.values())
            .map(|entry| (entry.instance.id.clone(), entry.instance.address.clone()))
            .collect()
    }

    /// The instances of `service` now.
    pub fn snapshot(&self, service: &str) -> ServiceSnapshot {
        let state = self.lock();
        ServiceSnapshot {
            index: state.index,
            instances: state
                .services
                .get(service)
                .map(|instances| instances.values().map(|e| e.instance.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Every registered instance, by service, with the current index.
    pub fn all(&self) -> (u64, BTreeMap<String, Vec<Instance>>) {
        let state = self.lock();
        let services = state
            .services
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(name, instances)| {
                (
                    name.clone(),
                    instances.values().map(|e| e.instance.clone()).collect(),
                )
            })
            .collect();
        (state.index, services)
    }

    /// The current change index.
    pub fn index(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Waits until the change index differs from `seen` or `wait` elapses; returns the index
    /// then. An index lower than `seen` (the registry restarted and counts from zero again)
    /// answers at once, so that a client never waits on a number that will not come back.
    pub async fn wait_for_change(&self, seen: u64, wait: Duration) -> u64 {
        let mut changes = self.changes.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(wait, changes.wait_for(|index| *index != seen)) => {}
            _ = self.closing.cancelled() => {}
        }
        *changes.borrow()
    }

    /// Answers every pending and future watch at once: called on shutdown so that blocking
    /// queries do not hold the drain back.
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// Gauge: registered instances, by `service` and `status` (`passing`, `critical`).
pub const INSTANCES: &str = "registry_instances";

/// Sets [`INSTANCES`] from `state` (a service that lost every instance shows 0).
fn record_instances(state: &State) {
    for (service, instances) in &state.services {
        let passing = instances
            .values()
            .filter(|e| e.instance.status == Status::Passing)
            .count();
        let critical = instances.len() - passing;
        for (status, count) in [("passing", passing), ("critical", critical)] {
            metrics::gauge!(INSTANCES, "service" => service.clone(), "status" => status)
                .set(count as f64);
        }
    }
}

/// `Ok` if instance `id` is not registered, or was registered by `holder`.
fn check_holder(state: &mut State, id: &str, holder: Option<&str>) -> Result<(), RegistryError> {
    match find(state, id) {
        Some(entry) if entry.holder.as_deref() != holder => {
            Err(RegistryError::NotHolder(id.to_owned()))
        }
        _ => Ok(()),
    }
}

fn find<'a>(state: &'a mut State, id: &str) -> Option<&'a mut Entry> {
    let service = state.owners.get(id)?.clone();
    state.services.get_mut(&service)?.get_mut(id)
}

fn remove(state: &mut State, id: &str) -> Option<Instance> {
    let service = state.owners.remove(id)?;
    let instances = state.services.get_mut(&service)?;
    let entry = instances.remove(id)?;
    if instances.is_empty() {
        state.services.remove(&service);
    }
    Some(entry.instance)
}

fn validate_name(what: &str, name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{what} `{name}` must be 1 to 63 characters of a-z, 0-9, '-', '.' or '_'"
        )))
    }
}

fn validate_address(address: &str) -> Result<(), RegistryError> {
    let invalid = || RegistryError::Invalid(format!("address `{address}` must be host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || host.len() > 253 || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid());
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
    {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(service: &str, address: &str) -> Registration {
        Registration {
            service: service.into(),
            address: address.into(),
            metadata: BTreeMap::new(),
            ttl_ms: None,
        }
    }

    /// A registry of leases of `ttl` holding `instances`, each `(id, service, address)`.
    fn holding(ttl: Duration, instances: &[(&str, &str, &str)]) -> Registry {
        let registry = Registry::new(ttl);
        for (id, service, address) in instances {
            registry
                .register(id, registration(service, address))
                .expect("valid");
        }
        registry
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_stops_heartbeating_is_evicted_after_its_ttl() {
        let registry = holding(
            Duration::from_millis(1_500),
            &[
                ("a", "inventory", "127.0.0.1:1001"),
                ("b", "inventory", "127.0.0.1:1002"),
            ],
        );

        for _ in 0..4 {
            tokio::time::advance(Duration::from_millis(500)).await;
            registry.heartbeat("a").expect("a is registered");
            assert!(registry.evict_expired().iter().all(|i| i.id != "a"));
        }
        // b never heart-beat: 2 s have passed, more than its 1.5 s lease.
        let snapshot = registry.snapshot("inventory");
        assert_eq!(snapshot.instances.len(), 1);
        assert_eq!(snapshot.instances[0].id, "a");
        assert_eq!(
            registry.heartbeat("b"),
            Err(RegistryError::UnknownInstance("b".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_not_evicted_a_moment_before_it_ends() {
        let registry = holding(
            Duration::from_millis(1_500),
            &[("a", "inventory", "127.0.0.1:1001")],
        );
        tokio::time::advance(Duration::from_millis(1_499)).await;
        assert!(registry.evict_expired().is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(registry.evict_expired().len(), 1);
    }

    #[tokio::test]
    async fn deregistration_removes_the_instance_and_bumps_the_index() {
        let registry = holding(Duration::from_secs(5), &[("a", "order", "127.0.0.1:1001")]);
        let before = registry.index();
        registry.deregister("a").expect("registered");
        assert!(registry.index() > before);
        assert!(registry.snapshot("order").instances.is_empty());
        assert!(registry.all().1.is_empty());
        assert_eq!(
            registry.deregister("a"),
            Err(RegistryError::UnknownInstance("a".into()))
        );
    }

    #[tokio::test]
    async fn a_watch_wakes_up_on_a_change_and_not_before() {
        let registry = Registry::new(Duration::from_secs(5));
        let seen = registry.index();
        let watcher = {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .wait_for_change(seen, Duration::from_secs(30))
                    .await
            })
        };
        // Heartbeats of nobody and no-op status changes do not wake it.
        assert!(!registry.set_status("nobody", Status::Critical));
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());

        registry
            .register("a", registration("payment", "127.0.0.1:1001"))
            .expect("valid");
        let woke_at = tokio::time::timeout(Duration::from_secs(1), watcher)
            .await
            .expect("the watch woke up within a second")
            .expect("task");
        assert!(woke_at > seen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_returns_the_same_index_when_nothing_changes() {
        let registry = Registry::new(Duration::from_secs(5));
        let seen = registry.index();
        assert_eq!(
            registry
                .wait_for_change(seen, Duration::from_secs(10))
                .await,
            seen
        );
    }

    #[tokio::test]
    async fn status_changes_bump_the_index_once() {
        let registry = holding(
            Duration::from_secs(5),
            &[("a", "payment", "127.0.0.1:1001")],
        );
        let before = registry.index();
        assert!(registry.set_status("a", Status::Critical));
        assert!(!registry.set_status("a", Status::Critical));
        assert_eq!(registry.index(), before + 1);
        assert_eq!(
            registry.snapshot("payment").instances[0].status,
            Status::Critical
        );
    }

    #[test]
    fn bad_registrations_are_refused() {
        let registry = Registry::new(Duration::from_secs(5));
        // Each case spoils one part of a valid registration: `("a", "order", "127.0.0.1:1")`.
        let refused = |id: &str, service: &str, address: &str| {
            assert!(
                registry
                    .register(id, registration(service, address))
                    .is_err(),
                "{id:?} {service:?} {address:?} was accepted"
            );
        };
        for id in ["", "a b"] {
            refused(id, "order", "127.0.0.1:1");
        }
        refused("a", "Order", "127.0.0.1:1");
        for address in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":80"] {
            refused("a", "order", address);
        }
        assert!(registry.all().1.is_empty());
        assert_eq!(registry.index(), 0);
    }
}
