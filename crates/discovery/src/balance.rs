//! Load balancing over one service's instances: which instance a request tries first, which
//! next, and which are set aside for failing. The gateway and the discovery client share it.
//!
//! A [`Balancer`] owns, per instance id, the requests in flight ([`InFlight`]) and the run of
//! failures with its ejections ([`Balancer::record`]). It owns no list of instances: each
//! [`Balancer::order`] is given the current one, and the state of ids no longer given is
//! dropped after a while. Its [`BalanceConfig`] is read from a route file section:
//!
//! ```toml
//! [upstreams.order]
//! balance = "p2c"            # or "round_robin"
//! weights = { v1 = 90, v2 = 10 }   # by `metadata["version"]`; unnamed versions weigh 0
//! canary = "v2"              # default: the lightest version when weights name 2+ versions
//! ejection = { consecutive_failures = 5, base_ms = 5000, max_ms = 60000, max_percent = 50 }
//! ```
//!
//! A client pins itself to the canary, or away from it, with `X-Canary: always|never` ([`Pin`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Endpoint;

/// The header a client pins itself with.
pub const CANARY_HEADER: &str = "x-canary";

/// Calls to [`Balancer::order`] after which the state of an id none of them listed is dropped.
const PRUNE_EVERY: u64 = 1024;

/// How a service's instances are chosen: one `[upstreams.<service>]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalanceConfig {
    /// How an instance is picked within the chosen version.
    pub balance: Strategy,
    /// Share of the traffic per version (`metadata["version"]`); empty: no split by version.
    pub weights: BTreeMap<String, u32>,
    /// The canary version; `None`: the version with the smallest weight when `weights` names
    /// two or more (ties: the one whose name sorts last), else no canary.
    pub canary: Option<String>,
    /// When a failing instance is set aside.
    pub ejection: EjectionConfig,
}

/// How an instance is picked among candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Power of two choices: of two distinct random instances, the one with fewer requests in
    /// flight.
    #[default]
    P2c,
    /// Each instance in turn.
    RoundRobin,
}

/// When a failing instance is set aside (outlier ejection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EjectionConfig {
    /// Failures in a row that eject an instance; 0: never eject.
    pub consecutive_failures: u32,
    /// Length of a first ejection; each further one doubles it.
    pub base_ms: u64,
    /// Longest ejection; also how long an instance must stay in for its past ejections to be
    /// forgotten.
    pub max_ms: u64,
    /// Most of the service's instances that may be out at once, in percent; one always stays in.
    pub max_percent: u32,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ms: 5_000,
            max_ms: 60_000,
            max_percent: 50,
        }
    }
}

impl BalanceConfig {
    /// Checks the section's rules; the message starts with the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.keys().any(String::is_empty) {
            return Err("weights: a version name is empty".into());
        }
        if !self.weights.is_empty() && self.weights.values().all(|&weight| weight == 0) {
            return Err("weights: every weight is 0".into());
        }
        if let Some(canary) = &self.canary {
            if canary.is_empty() {
                return Err("canary: empty".into());
            }
            if !self.weights.is_empty() && !self.weights.contains_key(canary) {
                return Err(format!("canary: `{canary}` has no weight"));
            }
        }
        let ejection = &self.ejection;
        if ejection.max_percent > 100 {
            return Err("ejection.max_percent: at most 100".into());
        }
        if ejection.base_ms > ejection.max_ms {
            return Err("ejection.base_ms: more than max_ms".into());
        }
        if ejection.consecutive_failures > 0 && ejection.base_ms == 0 {
            return Err("ejection.base_ms: must be positive".into());
        }
        Ok(())
    }

    /// The canary version: `canary`, or the lightest of two or more weighted versions.
    pub fn canary_version(&self) -> Option<&str> {
        if let Some(canary) = &self.canary {
            return Some(canary);
        }
        if self.weights.len() < 2 {
            return None;
        }
        let lightest = self.weights.iter().rev().min_by_key(|(_, weight)| **weight);
        lightest.map(|(version, _)| version.as_str())
    }
}

/// What a request's `X-Canary` header asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pin {
    /// No header, or another value: the weights decide.
    #[default]
    Free,
    /// `always`: only the canary's instances.
    Always,
    /// `never`: none of the canary's instances.
    Never,
}

impl Pin {
    /// Reads `X-Canary` (`always` or `never`, any case); anything else is [`Pin::Free`].
    pub fn of(headers: &HeaderMap) -> Pin {
        let Some(value) = headers.get(CANARY_HEADER) else {
            return Pin::Free;
        };
        let value = value.as_bytes().trim_ascii();
        if value.eq_ignore_ascii_case(b"always") {
            Pin::Always
        } else if value.eq_ignore_ascii_case(b"never") {
            Pin::Never
        } else {
            Pin::Free
        }
    }
}

/// One service's balancer: cheap to clone (the clones share their state), `Send + Sync`.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    config: BalanceConfig,
    canary: Option<String>,
    state: Mutex<State>,
}

struct State {
    /// By instance id. foldhash, not SipHash: looked up several times a request (SipHash was
    /// 2 % of the gateway's instructions), and the ids come from the registry, not from clients.
    entries: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// Calls to `order` so far; an entry's `listed` is the last call that listed it.
    generation: u64,
    rng: StdRng,
    /// Round-robin positions: one per weighted version, then one for any other candidate set.
    cursors: Vec<usize>,
}

#[derive(Default)]
struct Entry {
    load: Arc<AtomicUsize>,
    listed: u64,
    failures: u32,
    /// End of the last ejection, kept after it passed.
    until: Option<Instant>,
    ejections: u32,
}

impl Entry {
    fn ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

/// A request in flight to one instance, counted until the guard drops.
#[must_use = "the request counts as in flight only while the guard lives"]
#[derive(Debug)]
pub struct InFlight {
    load: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Balancer")
            .field("service", &inner.service)
            .field("config", &inner.config)
            .finish_non_exhaustive()
    }
}

fn version(endpoint: &Endpoint) -> Option<&str> {
    endpoint.metadata.get("version").map(String::as_str)
}

impl Balancer {
    /// A balancer for `service`; the error is [`BalanceConfig::validate`]'s.
    pub fn new(service: &str, config: BalanceConfig) -> Result<Self, String> {
        config.validate()?;
        let state = State {
            entries: HashMap::default(),
            generation: 0,
            rng: StdRng::from_rng(&mut rand::rng()),
            cursors: vec![0; config.weights.len() + 1],
        };
        let canary = config.canary_version().map(str::to_owned);
        let inner = Inner {
            service: service.to_owned(),
            config,
            canary,
            state: Mutex::new(state),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The same balancer drawing from a random generator seeded with `seed` (for tests; the
    /// choices repeat only when the calls do, from one thread).
    pub fn with_rng_seed(self, seed: u64) -> Self {
        self.lock().rng = StdRng::seed_from_u64(seed);
        self
    }

    /// The service balanced.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The configuration, as validated.
    pub fn config(&self) -> &BalanceConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The instances to try for one request, best first: the chosen one, then the others not
    /// ejected (in list order from the chosen one, so failover spreads), then the ejected ones.
    ///
    /// A pin keeps only the canary's instances ([`Pin::Always`]) or all but them
    /// ([`Pin::Never`]), unless that leaves none. Then, with weights, a version is drawn with
    /// probability weight / sum among those with an instance not ejected (under
    /// [`Pin::Never`] too: a version at weight 0 gets no traffic from it either), and the
    /// [`Strategy`] picks within it; without one (no weights, or no such version) it picks among
    /// every instance not ejected, or, when all are, among all of them.
    pub fn order(&self, endpoints: &[Endpoint], pin: Pin) -> Vec<Endpoint> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let config = &self.inner.config;
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.list(endpoints);
        let State {
            entries,
            rng,
            cursors,
            ..
        } = state;

        let canary = self.inner.canary.as_deref();
        let pinned = |endpoint: &Endpoint| match (pin, canary) {
            (Pin::Always, Some(canary)) => version(endpoint) == Some(canary),
            (Pin::Never, Some(canary)) => version(endpoint) != Some(canary),
            _ => true,
        };
        let restrict = endpoints.iter().any(pinned);
        let allowed = |endpoint: &Endpoint| !restrict || pinned(endpoint);
        let ejected = |endpoint: &Endpoint| {
            entries
                .get(endpoint.id.as_str())
                .is_some_and(|e| e.ejected(now))
        };
        let live = |endpoint: &Endpoint| allowed(endpoint) && !ejected(endpoint);

        let weight_of = |(name, weight): (&String, &u32)| {
            let present = endpoints
                .iter()
                .any(|e| version(e) == Some(name) && live(e));
            if present { u64::from(*weight) } else { 0 }
        };
        let total: u64 = config.weights.iter().map(weight_of).sum();
        let mut group = None;
        if total > 0 {
            let mut draw = rng.random_range(0..total);
            for (slot, entry) in config.weights.iter().enumerate() {
                let weight = weight_of(entry);
                if draw < weight {
                    group = Some((slot, entry.0.as_str()));
                    break;
                }
                draw -= weight;
            }
        }

        let any_live = endpoints.iter().any(live);
        let candidate = |endpoint: &Endpoint| {
            if !any_live {
                return allowed(endpoint);
            }
            live(endpoint) && group.is_none_or(|(_, name)| version(endpoint) == Some(name))
        };
        let nth = |k: usize| {
            let mut candidates = endpoints.iter().enumerate().filter(|(_, e)| candidate(e));
            candidates.nth(k).map_or(0, |(index, _)| index)
        };
        let count = endpoints.iter().filter(|e| candidate(e)).count();
        let first = match config.balance {
            Strategy::RoundRobin => {
                let cursor = &mut cursors[group.map_or(config.weights.len(), |(slot, _)| slot)];
                let k = *cursor % count.max(1);
                *cursor = cursor.wrapping_add(1);
                nth(k)
            }
            Strategy::P2c if count < 2 => nth(0),
            Strategy::P2c => {
                let a = rng.random_range(0..count);
                let mut b = rng.random_range(0..count - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a), nth(b));
                let load = |index: usize| {
                    let entry = entries.get(endpoints[index].id.as_str());
                    entry.map_or(0, |e| e.load.load(Ordering::Relaxed))
                };
                if load(b) < load(a) { b } else { a }
            }
        };

        let mut order = Vec::with_capacity(endpoints.len());
        order.push(endpoints[first].clone());
        for wanted in [false, true] {
            for step in 1..endpoints.len() {
                let endpoint = &endpoints[(first + step) % endpoints.len()];
                if allowed(endpoint) && ejected(endpoint) == wanted {
                    order.push(endpoint.clone());
                }
            }
        }
        order
    }

    /// Marks a request in flight to `endpoint` until the guard drops; P2C prefers instances
    /// with fewer. An id [`Balancer::order`] has not listed lately is not counted.
    pub fn start(&self, endpoint: &Endpoint) -> InFlight {
        let load = match self.lock().entries.get(endpoint.id.as_str()) {
            Some(entry) => Arc::clone(&entry.load),
            None => Arc::default(),
        };
        load.fetch_add(1, Ordering::Relaxed);
        InFlight { load }
    }

    /// Records the outcome of an exchange with `endpoint`: `false` for a failure (a 5xx, a
    /// refused or broken connection, a timeout). Returns whether this call ejected it.
    ///
    /// `consecutive_failures` failures in a row eject an instance for `base_ms` × 2^(its past
    /// ejections), at most `max_ms`; a success ends the run. Past ejections are forgotten once
    /// the instance has stayed in for `max_ms` since the last one ended. Outcomes while ejected
    /// do not lengthen the ejection. No ejection puts more than `max_percent` of the instances
    /// the last [`Balancer::order`] listed out, nor the last one in. An id `order` has not
    /// listed lately is not tracked.
    pub fn record(&self, endpoint: &Endpoint, ok: bool) -> bool {
        let rules = &self.inner.config.ejection;
        let now = Instant::now();
        let mut state = self.lock();
        let generation = state.generation;
        let Some(entry) = state.entries.get_mut(endpoint.id.as_str()) else {
            return false;
        };
        if ok {
            entry.failures = 0;
            return false;
        }
        if rules.consecutive_failures == 0 || entry.ejected(now) {
            return false;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures < rules.consecutive_failures {
            return false;
        }
        let mut known = usize::from(entry.listed != generation);
        let mut out = 1;
        for other in state.entries.values().filter(|e| e.listed == generation) {
            known += 1;
            out += usize::from(other.ejected(now));
        }
        let max_percent = usize::try_from(rules.max_percent).unwrap_or(usize::MAX);
        if out >= known || out.saturating_mul(100) > known.saturating_mul(max_percent) {
            return false;
        }
        let Some(entry) = state.entries.get_mut(endpoint.id.as_str()) else {
            return false;
        };
        let max = Duration::from_millis(rules.max_ms);
        let back = entry.until.and_then(|until| until.checked_add(max));
        if back.is_some_and(|back| now >= back) {
            entry.ejections = 0;
        }
        let ms = rules
            .base_ms
            .saturating_mul(2u64.saturating_pow(entry.ejections));
        let Some(until) = now.checked_add(Duration::from_millis(ms.min(rules.max_ms))) else {
            return false;
        };
        entry.until = Some(until);
        entry.ejections = entry.ejections.saturating_add(1);
        entry.failures = 0;
        true
    }

    /// Whether `endpoint` is ejected now.
    pub fn is_ejected(&self, endpoint: &Endpoint) -> bool {
        let now = Instant::now();
        let state = self.lock();
        state
            .entries
            .get(endpoint.id.as_str())
            .is_some_and(|e| e.ejected(now))
    }
}

impl State {
    /// Notes the ids one `order` call lists; drops, now and then, those long unlisted.
    fn list(&mut self, endpoints: &[Endpoint]) {
        self.generation += 1;
        let generation = self.generation;
        for endpoint in endpoints {
            match self.entries.get_mut(endpoint.id.as_str()) {
                Some(entry) => entry.listed = generation,
                None => {
                    let entry = Entry {
                        listed: generation,
                        ..Entry::default()
                    };
                    self.entries.insert(endpoint.id.clone(), entry);
                }
            }
        }
        if generation.is_multiple_of(PRUNE_EVERY) {
            self.entries
                .retain(|_, entry| generation - entry.listed < PRUNE_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 7;

    fn instance(id: &str, version: &str) -> Endpoint {
        let metadata = BTreeMap::from([("version".to_owned(), version.to_owned())]);
        Endpoint {
            id: id.into(),
            address: format!("{id}:80"),
            metadata,
        }
    }

    /// `a` and `b` at v1, `c` at `c_version`.
    fn three(c_version: &str) -> [Endpoint; 3] {
        [
            instance("a", "v1"),
            instance("b", "v1"),
            instance("c", c_version),
        ]
    }

    fn balancer(toml: &str) -> Balancer {
        let config: BalanceConfig = toml::from_str(toml).expect("valid TOML");
        Balancer::new("order", config)
            .expect("valid config")
            .with_rng_seed(SEED)
    }

    fn ids(order: &[Endpoint]) -> Vec<&str> {
        order.iter().map(|e| e.id.as_str()).collect()
    }

    /// Share of `rounds` orders whose first instance runs `version`.
    fn share(balancer: &Balancer, endpoints: &[Endpoint], version: &str, rounds: u32) -> f64 {
        let hits = (0..rounds)
            .filter(|_| super::version(&balancer.order(endpoints, Pin::Free)[0]) == Some(version))
            .count();
        hits as f64 / f64::from(rounds)
    }

    #[test]
    fn weights_split_the_traffic_by_version() {
        let endpoints = three("v2");
        let split = balancer("weights = { v1 = 90, v2 = 10 }");
        let v2 = share(&split, &endpoints, "v2", 2_000);
        assert!((v2 - 0.10).abs() <= 0.05, "v2 share {v2} (seed {SEED})");
        let even = balancer("weights = { v1 = 50, v2 = 50 }\nbalance = \"round_robin\"");
        let v2 = share(&even, &endpoints, "v2", 2_000);
        assert!((v2 - 0.50).abs() <= 0.05, "v2 share {v2} (seed {SEED})");
        // An unweighted version gets nothing while a weighted one has an instance in.
        let v3 = [instance("a", "v1"), instance("d", "v3")];
        assert_eq!(share(&split, &v3, "v3", 200), 0.0);
        // A version whose instances are all ejected gets nothing either.
        assert!((0..5).any(|_| split.record(&endpoints[2], false)));
        assert_eq!(share(&split, &endpoints, "v2", 200), 0.0);
        assert!(split.order(&[], Pin::Free).is_empty());
    }

    #[test]
    fn pins_keep_to_or_away_from_the_canary() {
        let endpoints = three("v2");
        let balancer = balancer("weights = { v1 = 90, v2 = 10 }");
        for _ in 0..100 {
            assert_eq!(ids(&balancer.order(&endpoints, Pin::Always)), ["c"]);
            let never = balancer.order(&endpoints, Pin::Never);
            assert_eq!(never.len(), 2);
            assert!(never.iter().all(|e| super::version(e) == Some("v1")));
        }
        // No canary instance: the pin falls back to every instance.
        assert_eq!(balancer.order(&endpoints[..2], Pin::Always).len(), 2);
        assert_eq!(ids(&balancer.order(&endpoints[2..], Pin::Never)), ["c"]);
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let balancer = balancer("");
        let endpoints = three("v1");
        let first = |endpoints: &[Endpoint], id: &str| {
            (0..1_000)
                .filter(|_| balancer.order(endpoints, Pin::Free)[0].id == id)
                .count()
        };
        balancer.order(&endpoints, Pin::Free);
        let held: Vec<InFlight> = (0..10).map(|_| balancer.start(&endpoints[0])).collect();
        assert_eq!(first(&endpoints[..2], "a"), 0);
        let five: Vec<InFlight> = (0..5).map(|_| balancer.start(&endpoints[1])).collect();
        // a loses every pair; b wins only against a (a third of the pairs), c every other one.
        let (a, b, c) = (
            first(&endpoints, "a"),
            first(&endpoints, "b"),
            first(&endpoints, "c"),
        );
        assert_eq!(a, 0);
        assert!(
            (250..=420).contains(&b) && (580..=750).contains(&c),
            "b {b}, c {c}"
        );
        drop((held, five));
        let a = first(&endpoints[..2], "a");
        assert!(
            (400..=600).contains(&a),
            "a first {a} times out of 1000 once idle"
        );
    }

    #[test]
    fn round_robin_cycles_evenly() {
        let balancer = balancer("balance = \"round_robin\"");
        let endpoints = three("v1");
        let mut counts = HashMap::new();
        let mut last = String::new();
        for _ in 0..300 {
            let order = balancer.order(&endpoints, Pin::Free);
            assert_eq!(order.len(), 3);
            assert_ne!(order[0].id, last);
            last.clone_from(&order[0].id);
            *counts.entry(last.clone()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n == 100), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_eject_for_longer_each_time() {
        let balancer = balancer("balance = \"round_robin\"");
        let endpoints = three("v1");
        let a = &endpoints[0];
        let eject = || {
            (0..5)
                .map(|_| balancer.record(a, false))
                .collect::<Vec<_>>()
        };
        balancer.order(&endpoints, Pin::Free);
        // A success ends the run.
        assert!(!(0..4).any(|_| balancer.record(a, false)));
        assert!(!balancer.record(a, true));
        assert_eq!(eject(), [false, false, false, false, true]);
        assert!(balancer.is_ejected(a) && !balancer.record(a, false));
        for _ in 0..6 {
            assert_eq!(balancer.order(&endpoints, Pin::Free)[2].id, "a");
        }
        tokio::time::advance(Duration::from_millis(5_000)).await;
        assert!(!balancer.is_ejected(a));
        assert!((0..3).any(|_| balancer.order(&endpoints, Pin::Free)[0].id == "a"));
        // The second ejection lasts twice as long.
        assert_eq!(eject(), [false, false, false, false, true]);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(balancer.is_ejected(a));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!balancer.is_ejected(a));
        // In for max_ms since: the past ejections are forgotten.
        tokio::time::advance(Duration::from_millis(60_000)).await;
        assert_eq!(eject(), [false, false, false, false, true]);
        tokio::time::advance(Duration::from_millis(5_000)).await;
        assert!(!balancer.is_ejected(a));
    }

    #[tokio::test(start_paused = true)]
    async fn one_instance_always_stays_in() {
        for max_percent in [50, 100] {
            let balancer = balancer(&format!("ejection = {{ max_percent = {max_percent} }}"));
            let endpoints = [instance("a", "v1"), instance("b", "v1")];
            balancer.order(&endpoints, Pin::Free);
            assert_eq!(
                (0..5)
                    .filter(|_| balancer.record(&endpoints[0], false))
                    .count(),
                1
            );
            assert_eq!(
                (0..20)
                    .filter(|_| balancer.record(&endpoints[1], false))
                    .count(),
                0
            );
            assert!(!balancer.is_ejected(&endpoints[1]));
            assert_eq!(ids(&balancer.order(&endpoints, Pin::Free)), ["b", "a"]);
        }
        // Never ejects with 0, nor an instance no order listed.
        let never = balancer("ejection = { consecutive_failures = 0 }");
        let a = instance("a", "v1");
        never.order(&[a.clone(), instance("b", "v1")], Pin::Free);
        assert!(!(0..20).any(|_| never.record(&a, false)));
        assert!(!(0..20).any(|_| never.record(&instance("z", "v1"), false)));
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_instances_no_longer_listed() {
        let balancer = balancer("");
        let endpoints = three("v1");
        balancer.order(&endpoints, Pin::Free);
        assert!((0..5).any(|_| balancer.record(&endpoints[0], false)));
        for _ in 0..2 * PRUNE_EVERY {
            balancer.order(&endpoints[1..], Pin::Free);
        }
        assert_eq!(balancer.lock().entries.len(), 2);
        assert!(!balancer.is_ejected(&endpoints[0]));
        fn shared<T: Send + Sync + Clone>(_: &T) {}
        shared(&balancer);
    }

    #[test]
    fn validate_names_the_key() {
        let error = |toml: &str| {
            let config: BalanceConfig = toml::from_str(toml).expect("valid TOML");
            Balancer::new("order", config).expect_err("invalid")
        };
        assert_eq!(
            error("weights = { v1 = 0, v2 = 0 }"),
            "weights: every weight is 0"
        );
        assert_eq!(
            error("weights = { v1 = 1 }\ncanary = \"v3\""),
            "canary: `v3` has no weight"
        );
        assert_eq!(
            error("ejection.max_percent = 101"),
            "ejection.max_percent: at most 100"
        );
        let base = "ejection = { base_ms = 9, max_ms = 8 }";
        assert_eq!(error(base), "ejection.base_ms: more than max_ms");
        assert!(toml::from_str::<BalanceConfig>("balance = \"random\"").is_err());
        assert!(toml::from_str::<BalanceConfig>("ejection = { base = 1 }").is_err());
    }

    #[test]
    fn pin_reads_the_header() {
        let pin = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            let value = http::HeaderValue::from_bytes(value).expect("valid value");
            headers.insert(CANARY_HEADER, value);
            Pin::of(&headers)
        };
        assert_eq!(Pin::of(&HeaderMap::new()), Pin::Free);
        assert_eq!(
            (pin(b"Always"), pin(b"NEVER"), pin(b"never ")),
            (Pin::Always, Pin::Never, Pin::Never)
        );
        assert_eq!((pin(b"yes"), pin(b"\xffalways")), (Pin::Free, Pin::Free));
    }

    #[test]
    fn reads_a_route_file_section() {
        #[derive(Deserialize)]
        struct File {
            upstreams: BTreeMap<String, BalanceConfig>,
        }
        let file: File = toml::from_str(
            r#"
            [upstreams.order]
            balance = "p2c"
            weights = { v1 = 90, v2 = 10 }
            canary = "v2"
            ejection = { consecutive_failures = 5, base_ms = 5000, max_ms = 60000, max_percent = 50 }

            [upstreams.payment]
            balance = "round_robin"
            weights = { v1 = 1, v2 = 3 }
            ejection = { max_ms = 10000 }
            "#,
        )
        .expect("valid file");
        let order = &file.upstreams["order"];
        assert_eq!(
            order.weights,
            BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)])
        );
        assert_eq!(
            (order.balance, order.canary.as_deref()),
            (Strategy::P2c, Some("v2"))
        );
        assert_eq!(order.ejection, EjectionConfig::default());
        let payment = &file.upstreams["payment"];
        assert_eq!(payment.balance, Strategy::RoundRobin);
        assert_eq!(
            (payment.canary.as_deref(), payment.canary_version()),
            (None, Some("v1"))
        );
        assert_eq!(payment.ejection.max_ms, 10_000);
        assert_eq!(payment.ejection.consecutive_failures, 5);
        let empty: BalanceConfig = toml::from_str("").expect("valid");
        assert_eq!(empty, BalanceConfig::default());
        assert_eq!((empty.canary_version(), empty.validate()), (None, Ok(())));
    }
}
