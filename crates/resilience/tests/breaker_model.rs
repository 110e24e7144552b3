//! Model-based property test: random sequences of calls, outcomes, durations, clock steps and
//! operator actions, run against the breaker and against a small reference model written
//! independently from the rules in the breaker's documentation. Both must agree on every
//! admission decision and every state.
//!
//! Proptest prints the seed and the shrunk failing sequence on failure;
//! `PROPTEST_CASES=5000 cargo test -p flotilla-resilience --test breaker_model` runs longer.

use std::time::Duration;

use flotilla_resilience::Clock;
use flotilla_resilience::breaker::{
    BreakerConfig, CircuitBreaker, Forced, Outcome, Permit, State, Window,
};
use proptest::prelude::*;

/// The reference model: the rules, computed the plain way (every rate from the full list of
/// recorded calls, no ring buffers, no atomics).
#[derive(Debug, Clone)]
struct Model {
    config: BreakerConfig,
    state: State,
    open_until: u64,
    trials_admitted: u32,
    trial_successes: u32,
    opens_in_a_row: u32,
    /// Calls recorded while closed: (time, failed, slow).
    calls: Vec<(u64, bool, bool)>,
    epoch: u64,
}

const MS: u64 = 1_000_000;

impl Model {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            open_until: 0,
            trials_admitted: 0,
            trial_successes: 0,
            opens_in_a_row: 0,
            calls: Vec::new(),
            epoch: 0,
        }
    }

    fn wait(&self) -> u64 {
        let factor = self.config.wait_multiplier.powi(self.opens_in_a_row as i32);
        let ms = (self.config.wait_in_open_ms as f64 * factor)
            .min(self.config.max_wait_in_open_ms as f64);
        ms as u64 * MS
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.epoch += 1;
    }

    fn open(&mut self, now: u64) {
        self.open_until = now + self.wait();
        self.enter(State::Open);
    }

    /// `Ok((epoch, trial))` or `Err(retry_after in ns)`.
    fn acquire(&mut self, now: u64) -> Result<(u64, bool), u64> {
        match self.state {
            State::Closed | State::Disabled => Ok((self.epoch, false)),
            State::Open if now >= self.open_until => {
                self.enter(State::HalfOpen);
                self.trials_admitted = 1;
                self.trial_successes = 0;
                Ok((self.epoch, true))
            }
            State::Open => Err(self.open_until - now),
            State::HalfOpen if self.trials_admitted < self.config.half_open_permits => {
                self.trials_admitted += 1;
                Ok((self.epoch, true))
            }
            State::HalfOpen => Err(0),
            State::ForcedOpen => Err(self.config.wait_in_open_ms * MS),
        }
    }

    fn in_window(&self, now: u64) -> Vec<(bool, bool)> {
        match self.config.window {
            Window::Count { calls } => {
                let skip = self.calls.len().saturating_sub(calls as usize);
                self.calls[skip..].iter().map(|c| (c.1, c.2)).collect()
            }
            Window::Time { millis } => {
                let width = (millis * MS).div_ceil(10);
                let current = now / width;
                self.calls
                    .iter()
                    .filter(|c| c.0 / width + 9 >= current)
                    .map(|c| (c.1, c.2))
                    .collect()
            }
        }
    }

    fn report(&mut self, epoch: u64, outcome: Outcome, took: u64, now: u64) {
        if epoch != self.epoch {
            return;
        }
        let slow = took >= self.config.slow_call_duration_ms * MS;
        match self.state {
            State::Closed if outcome != Outcome::Ignored => {
                self.calls.push((now, outcome == Outcome::Failure, slow));
                let window = self.in_window(now);
                let n = window.len() as f64;
                if window.len() >= self.config.minimum_calls as usize {
                    let failures = window.iter().filter(|c| c.0).count() as f64;
                    let slows = window.iter().filter(|c| c.1).count() as f64;
                    if failures * 100.0 / n >= self.config.failure_rate_threshold
                        || slows * 100.0 / n >= self.config.slow_call_rate_threshold
                    {
                        self.opens_in_a_row = 0;
                        self.open(now);
                    }
                }
            }
            State::HalfOpen => match outcome {
                Outcome::Ignored => self.trials_admitted -= 1,
                Outcome::Failure => {
                    self.opens_in_a_row += 1;
                    self.open(now);
                }
                Outcome::Success if slow => {
                    self.opens_in_a_row += 1;
                    self.open(now);
                }
                Outcome::Success => {
                    self.trial_successes += 1;
                    if self.trial_successes >= self.config.success_threshold {
                        self.opens_in_a_row = 0;
                        self.calls.clear();
                        self.enter(State::Closed);
                    }
                }
            },
            _ => {}
        }
    }

    fn force(&mut self, forced: Option<Forced>) {
        let to = match forced {
            Some(Forced::Open) => State::ForcedOpen,
            Some(Forced::Disabled) => State::Disabled,
            None => {
                self.calls.clear();
                self.opens_in_a_row = 0;
                State::Closed
            }
        };
        if to != self.state {
            self.enter(to);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Report {
        pick: usize,
        outcome: u8,
        took_ms: u64,
    },
    Drop {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Force(Option<Forced>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), 0u8..3, prop_oneof![0u64..50, 900u64..1_200]).prop_map(|(pick, outcome, took_ms)| Op::Report { pick, outcome, took_ms }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        3 => prop_oneof![0u64..100, 100u64..2_000, 2_000u64..20_000].prop_map(|ms| Op::Advance { ms }),
        1 => prop_oneof![Just(None), Just(Some(Forced::Open)), Just(Some(Forced::Disabled))].prop_map(Op::Force),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        prop_oneof![
            (1u32..8).prop_map(|calls| Window::Count { calls }),
            (100u64..5_000).prop_map(|millis| Window::Time { millis })
        ],
        prop_oneof![Just(20.0), Just(50.0), Just(100.0)],
        prop_oneof![Just(50.0), Just(100.0)],
        1u32..6,
        100u64..3_000,
        prop_oneof![Just(1.0), Just(2.0)],
        1u32..4,
        any::<u32>(),
    )
        .prop_map(
            |(window, failure, slow, minimum, wait, multiplier, permits, success)| {
                let minimum = match window {
                    Window::Count { calls } => minimum.min(calls),
                    Window::Time { .. } => minimum,
                };
                BreakerConfig {
                    window,
                    failure_rate_threshold: failure,
                    slow_call_duration_ms: 1_000,
                    slow_call_rate_threshold: slow,
                    minimum_calls: minimum,
                    wait_in_open_ms: wait,
                    wait_multiplier: multiplier,
                    max_wait_in_open_ms: wait * 4,
                    half_open_permits: permits,
                    success_threshold: 1 + success % permits,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_breaker_agrees_with_the_model(config in config(), ops in prop::collection::vec(op(), 1..120)) {
        let clock = Clock::manual();
        let breaker = CircuitBreaker::with_clock("model", config.clone(), clock.clone()).expect("valid config");
        let mut model = Model::new(config);
        // Outstanding permits, each with the model's epoch it was issued in.
        let mut permits: Vec<(Permit, u64)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let now = clock.now();
            match op {
                Op::Acquire => {
                    let real = breaker.try_acquire();
                    let expected = model.acquire(now);
                    match (real, expected) {
                        (Ok(permit), Ok((epoch, trial))) => {
                            prop_assert_eq!(permit.is_trial(), trial, "step {}", step);
                            permits.push((permit, epoch));
                        }
                        (Err(open), Err(retry_after)) => {
                            prop_assert_eq!(open.retry_after, Duration::from_nanos(retry_after), "step {}", step);
                        }
                        (real, expected) => {
                            prop_assert!(false, "step {step}: breaker {:?}, model {:?}", real.map(|_| ()), expected);
                        }
                    }
                }
                Op::Report { pick, outcome, took_ms } if !permits.is_empty() => {
                    let (permit, epoch) = permits.remove(pick % permits.len());
                    let outcome = [Outcome::Success, Outcome::Failure, Outcome::Ignored][outcome as usize];
                    permit.record_with_duration(outcome, Duration::from_millis(took_ms));
                    model.report(epoch, outcome, took_ms * MS, now);
                }
                Op::Drop { pick } if !permits.is_empty() => {
                    let (permit, epoch) = permits.remove(pick % permits.len());
                    drop(permit);
                    model.report(epoch, Outcome::Ignored, 0, now);
                }
                Op::Advance { ms } => clock.advance(Duration::from_millis(ms)),
                Op::Force(forced) => {
                    breaker.force(forced);
                    model.force(forced);
                }
                Op::Report { .. } | Op::Drop { .. } => {}
            }
            prop_assert_eq!(breaker.state(), model.state, "step {}", step);
        }
        // Whatever happened, the permits still out give their places back.
        drop(permits);
    }
}
