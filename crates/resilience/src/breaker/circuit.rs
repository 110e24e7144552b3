//! The breaker itself: [`CircuitBreaker`], the shared state behind its handles, and the
//! [`Permit`] a call holds and reports its outcome on.

use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;

use super::config::{BreakerConfig, ConfigError};
use super::metric::{self, Metrics};
use super::state::{CircuitOpen, Forced, Outcome, State, Transition};
use super::window::Outcomes;
use crate::clock::{Clock, nanos};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: u64 },
    HalfOpen { admitted: u32, successes: u32 },
    ForcedOpen,
    Disabled,
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
            Phase::ForcedOpen => State::ForcedOpen,
            Phase::Disabled => State::Disabled,
        }
    }
}

#[derive(Debug)]
struct Core {
    config: BreakerConfig,
    slow_nanos: u64,
    window: Outcomes,
    phase: Phase,
    /// Incremented on every transition; permits carry the epoch they were issued in.
    epoch: u64,
    /// Openings since the breaker last closed (the open wait grows with it).
    opens_in_a_row: u32,
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    clock: Clock,
    /// True while closed: the fast path admits calls without taking the lock.
    closed: std::sync::atomic::AtomicBool,
    /// While open, when the wait ends (clock nanoseconds); 0 otherwise. Rejections while open
    /// read it without taking the lock: they are the calls that arrive in floods.
    open_until: std::sync::atomic::AtomicU64,
    /// The epoch, readable without the lock (written under it).
    epoch: std::sync::atomic::AtomicU64,
    core: Mutex<Core>,
    events: broadcast::Sender<Transition>,
    metrics: Metrics,
}

/// A circuit breaker: a cheap, cloneable handle on shared state.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced, State};
/// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
/// let handle = breaker.clone(); // say, for an admin endpoint
/// handle.force(Some(Forced::Open));
/// assert_eq!(breaker.state(), State::ForcedOpen); // clones share the state
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the name labels its metrics and events).
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, State};
    /// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
    /// assert_eq!(breaker.state(), State::Closed);
    /// let invalid = BreakerConfig { minimum_calls: 0, ..BreakerConfig::default() };
    /// assert_eq!(CircuitBreaker::new("payment", invalid).unwrap_err().field, "minimum_calls");
    /// ```
    pub fn new(name: &str, config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::with_clock(name, config, Clock::system())
    }

    /// A breaker reading time from `clock` (a manual clock in tests).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
    /// let clock = flotilla_resilience::Clock::manual();
    /// let config = BreakerConfig { window: Window::Count { calls: 1 }, minimum_calls: 1, ..BreakerConfig::default() };
    /// let breaker = CircuitBreaker::with_clock("payment", config, clock.clone()).unwrap();
    /// breaker.try_acquire().unwrap().record(Outcome::Failure); // opens for 5 s
    /// clock.advance(Duration::from_millis(4_990));
    /// assert_eq!(breaker.try_acquire().unwrap_err().retry_after, Duration::from_millis(10));
    /// clock.advance(Duration::from_millis(10));
    /// let _trial = breaker.try_acquire().unwrap();
    /// assert_eq!(breaker.state(), State::HalfOpen);
    /// ```
    pub fn with_clock(
        name: &str,
        config: BreakerConfig,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let name: Arc<str> = Arc::from(name);
        let metrics = Metrics::new(&name);
        metrics.set_state(State::Closed);
        Ok(Self {
            inner: Arc::new(Inner {
                clock,
                closed: true.into(),
                open_until: 0.into(),
                epoch: 0.into(),
                core: Mutex::new(Core {
                    slow_nanos: config.slow_call_duration_ms.saturating_mul(1_000_000),
                    window: Outcomes::new(&config.window),
                    config,
                    phase: Phase::Closed,
                    epoch: 0,
                    opens_in_a_row: 0,
                }),
                events: broadcast::channel(64).0,
                metrics,
                name,
            }),
        })
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        // Every update of the core is complete before any call that could panic.
        self.inner
            .core
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The breaker's name.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced};
    /// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
    /// assert_eq!(breaker.name(), "payment");
    /// breaker.force(Some(Forced::Open));
    /// assert_eq!(&*breaker.try_acquire().unwrap_err().breaker, "payment"); // rejections carry it
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state. (An open breaker whose wait is over turns half-open on the next call.)
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
    /// let clock = flotilla_resilience::Clock::manual();
    /// let config = BreakerConfig { window: Window::Count { calls: 1 }, minimum_calls: 1, ..BreakerConfig::default() };
    /// let breaker = CircuitBreaker::with_clock("payment", config, clock.clone()).unwrap();
    /// breaker.try_acquire().unwrap().record(Outcome::Failure);
    /// clock.advance(Duration::from_secs(5));
    /// assert_eq!(breaker.state(), State::Open); // the wait is over, but no call came yet
    /// let _trial = breaker.try_acquire().unwrap();
    /// assert_eq!(breaker.state(), State::HalfOpen);
    /// ```
    pub fn state(&self) -> State {
        self.core().phase.state()
    }

    /// The current configuration.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
    /// assert_eq!(breaker.config(), BreakerConfig::default());
    /// assert_eq!(breaker.config().minimum_calls, 10);
    /// ```
    pub fn config(&self) -> BreakerConfig {
        self.core().config.clone()
    }

    /// Receives every transition from now on.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced, State};
    /// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
    /// let mut transitions = breaker.subscribe();
    /// breaker.force(Some(Forced::Disabled));
    /// let transition = transitions.try_recv().unwrap();
    /// assert_eq!((transition.from, transition.to), (State::Closed, State::Disabled));
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.events.subscribe()
    }

    /// Asks to make a call: a [`Permit`] to report the outcome on, or [`CircuitOpen`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
    /// let clock = flotilla_resilience::Clock::manual();
    /// let config = BreakerConfig {
    ///     window: Window::Count { calls: 1 }, minimum_calls: 1, half_open_permits: 1, success_threshold: 1,
    ///     ..BreakerConfig::default()
    /// };
    /// let breaker = CircuitBreaker::with_clock("payment", config, clock.clone()).unwrap();
    /// breaker.try_acquire().unwrap().record(Outcome::Failure); // opens
    /// clock.advance(Duration::from_secs(5));
    /// let trial = breaker.try_acquire().unwrap();
    /// assert_eq!(breaker.try_acquire().unwrap_err().retry_after, Duration::ZERO); // the one trial place is taken
    /// trial.record(Outcome::Success);
    /// assert_eq!(breaker.state(), State::Closed);
    /// ```
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let inner = &self.inner;
        if inner.closed.load(Acquire) {
            return Ok(self.permit(inner.epoch.load(Acquire), false));
        }
        let now = inner.clock.now();
        let until = inner.open_until.load(Acquire);
        if now < until {
            return Err(self.reject(Duration::from_nanos(until - now)));
        }
        let mut core = self.core();
        match core.phase {
            Phase::Closed | Phase::Disabled => Ok(self.permit(core.epoch, false)),
            Phase::Open { until } if now >= until => {
                self.transition(
                    &mut core,
                    Phase::HalfOpen {
                        admitted: 1,
                        successes: 0,
                    },
                    now,
                );
                Ok(self.permit(core.epoch, true))
            }
            Phase::Open { until } => Err(self.reject(Duration::from_nanos(until - now))),
            Phase::HalfOpen {
                admitted,
                successes,
            } if admitted < core.config.half_open_permits => {
                core.phase = Phase::HalfOpen {
                    admitted: admitted + 1,
                    successes,
                };
                Ok(self.permit(core.epoch, true))
            }
            Phase::HalfOpen { .. } => Err(self.reject(Duration::ZERO)),
            Phase::ForcedOpen => {
                let wait = core.config.wait_in_open(0);
                Err(self.reject(wait))
            }
        }
    }

    fn permit(&self, epoch: u64, trial: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            epoch,
            trial,
            started: self.inner.clock.now(),
            reported: false,
        }
    }

    fn reject(&self, retry_after: Duration) -> CircuitOpen {
        self.inner.metrics.rejected.increment(1);
        CircuitOpen {
            breaker: self.inner.name.clone(),
            retry_after,
        }
    }

    fn report(&self, epoch: u64, outcome: Outcome, took: u64, now: u64) {
        let metrics = &self.inner.metrics;
        match outcome {
            Outcome::Success => metrics.success.increment(1),
            Outcome::Failure => metrics.failure.increment(1),
            Outcome::Ignored => metrics.ignored.increment(1),
        }
        let mut core = self.core();
        let slow = took >= core.slow_nanos;
        if slow && outcome != Outcome::Ignored {
            metrics.slow.increment(1);
        }
        if epoch != core.epoch {
            // Issued before the last transition: says nothing about the current state.
            return;
        }
        match core.phase {
            Phase::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let totals = core.window.record(now, outcome == Outcome::Failure, slow);
                let config = &core.config;
                if totals.calls >= config.minimum_calls {
                    let calls = f64::from(totals.calls);
                    let failure_rate = f64::from(totals.failures) * 100.0 / calls;
                    let slow_rate = f64::from(totals.slow) * 100.0 / calls;
                    if failure_rate >= config.failure_rate_threshold
                        || slow_rate >= config.slow_call_rate_threshold
                    {
                        let until = now.saturating_add(nanos(config.wait_in_open(0)));
                        core.opens_in_a_row = 0;
                        self.transition(&mut core, Phase::Open { until }, now);
                    }
                }
            }
            Phase::HalfOpen {
                admitted,
                successes,
            } => match outcome {
                Outcome::Ignored => {
                    core.phase = Phase::HalfOpen {
                        admitted: admitted.saturating_sub(1),
                        successes,
                    };
                }
                Outcome::Failure => self.reopen(&mut core, now),
                Outcome::Success if slow => self.reopen(&mut core, now),
                Outcome::Success if successes + 1 >= core.config.success_threshold => {
                    core.opens_in_a_row = 0;
                    core.window = Outcomes::new(&core.config.window);
                    self.transition(&mut core, Phase::Closed, now);
                }
                Outcome::Success => {
                    core.phase = Phase::HalfOpen {
                        admitted,
                        successes: successes + 1,
                    };
                }
            },
            Phase::Open { .. } | Phase::ForcedOpen | Phase::Disabled => {}
        }
    }

    fn reopen(&self, core: &mut Core, now: u64) {
        core.opens_in_a_row = core.opens_in_a_row.saturating_add(1);
        let until = now.saturating_add(nanos(core.config.wait_in_open(core.opens_in_a_row)));
        self.transition(core, Phase::Open { until }, now);
    }

    fn transition(&self, core: &mut Core, to: Phase, now: u64) {
        let from = core.phase.state();
        core.phase = to;
        core.epoch += 1;
        let inner = &self.inner;
        inner.epoch.store(core.epoch, Release);
        inner.closed.store(to == Phase::Closed, Release);
        let until = match to {
            Phase::Open { until } => until,
            _ => 0,
        };
        inner.open_until.store(until, Release);
        let to = to.state();
        inner.metrics.set_state(to);
        metrics::counter!(
            metric::TRANSITIONS,
            "breaker" => inner.name.to_string(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        tracing::info!(breaker = %inner.name, from = from.as_str(), to = to.as_str(), "circuit breaker transition");
        let _ = inner.events.send(Transition {
            breaker: inner.name.clone(),
            from,
            to,
            at: now,
        });
    }

    /// Forces the breaker open or disabled; `None` returns it to closed with an empty window.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced, State};
    /// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
    /// breaker.force(Some(Forced::Open));
    /// assert!(breaker.try_acquire().is_err());
    /// breaker.force(None);
    /// assert_eq!(breaker.state(), State::Closed);
    /// ```
    pub fn force(&self, forced: Option<Forced>) {
        let now = self.inner.clock.now();
        let mut core = self.core();
        let to = match forced {
            Some(Forced::Open) => Phase::ForcedOpen,
            Some(Forced::Disabled) => Phase::Disabled,
            None => {
                core.window = Outcomes::new(&core.config.window);
                core.opens_in_a_row = 0;
                Phase::Closed
            }
        };
        if core.phase != to {
            self.transition(&mut core, to, now);
        }
    }

    /// Replaces the configuration at run time. The state is kept; calls in flight finish and
    /// report as usual. A new window shape starts empty.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
    /// breaker.reconfigure(BreakerConfig { minimum_calls: 5, ..BreakerConfig::default() }).unwrap();
    /// assert_eq!(breaker.config().minimum_calls, 5);
    /// assert!(breaker.reconfigure(BreakerConfig { half_open_permits: 0, ..BreakerConfig::default() }).is_err());
    /// ```
    pub fn reconfigure(&self, config: BreakerConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut core = self.core();
        if config.window != core.config.window {
            core.window = Outcomes::new(&config.window);
        }
        core.slow_nanos = config.slow_call_duration_ms.saturating_mul(1_000_000);
        core.config = config;
        Ok(())
    }
}

/// Leave to make one call; report how it went with [`Permit::record`]. Dropping it unreported
/// counts as [`Outcome::Ignored`].
///
/// ```
/// use std::time::Duration;
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome};
/// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
/// let permit = breaker.try_acquire().unwrap();
/// assert!(!permit.is_trial());
/// permit.record_with_duration(Outcome::Success, Duration::from_millis(12));
/// ```
#[derive(Debug)]
#[must_use = "a permit reports the call's outcome; dropping it counts the call as ignored"]
pub struct Permit {
    breaker: CircuitBreaker,
    epoch: u64,
    trial: bool,
    started: u64,
    reported: bool,
}

impl Permit {
    /// Reports the outcome; the call's duration is measured from the permit's issue.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
    /// let clock = flotilla_resilience::Clock::manual();
    /// let config = BreakerConfig {
    ///     window: Window::Count { calls: 1 }, minimum_calls: 1, slow_call_duration_ms: 100,
    ///     ..BreakerConfig::default()
    /// };
    /// let breaker = CircuitBreaker::with_clock("payment", config, clock.clone()).unwrap();
    /// let permit = breaker.try_acquire().unwrap();
    /// clock.advance(Duration::from_millis(150)); // the call takes 150 ms
    /// permit.record(Outcome::Success);
    /// assert_eq!(breaker.state(), State::Open); // a success, but slow: 100 % slow calls
    /// ```
    pub fn record(mut self, outcome: Outcome) {
        let now = self.breaker.inner.clock.now();
        self.reported = true;
        self.breaker
            .report(self.epoch, outcome, now.saturating_sub(self.started), now);
    }

    /// Reports the outcome with a duration measured elsewhere.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
    /// let config = BreakerConfig { window: Window::Count { calls: 2 }, minimum_calls: 2, ..BreakerConfig::default() };
    /// let breaker = CircuitBreaker::new("payment", config).unwrap();
    /// for _ in 0..2 {
    ///     breaker.try_acquire().unwrap().record_with_duration(Outcome::Success, Duration::from_secs(3));
    /// }
    /// assert_eq!(breaker.state(), State::Open); // every call slower than the 2 s default
    /// ```
    pub fn record_with_duration(mut self, outcome: Outcome, took: Duration) {
        self.reported = true;
        let now = self.breaker.inner.clock.now();
        self.breaker.report(self.epoch, outcome, nanos(took), now);
    }

    /// Whether this is a half-open trial call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, Window};
    /// let clock = flotilla_resilience::Clock::manual();
    /// let config = BreakerConfig { window: Window::Count { calls: 1 }, minimum_calls: 1, ..BreakerConfig::default() };
    /// let breaker = CircuitBreaker::with_clock("payment", config, clock.clone()).unwrap();
    /// let permit = breaker.try_acquire().unwrap();
    /// assert!(!permit.is_trial());
    /// permit.record(Outcome::Failure); // opens
    /// clock.advance(Duration::from_secs(5));
    /// assert!(breaker.try_acquire().unwrap().is_trial());
    /// ```
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            let now = self.breaker.inner.clock.now();
            self.breaker.report(self.epoch, Outcome::Ignored, 0, now);
        }
    }
}
