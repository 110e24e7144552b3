//! Half-open admits exactly `half_open_permits` trial calls, however many threads race for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use flotilla_resilience::Clock;
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};

#[test]
fn half_open_never_admits_more_than_the_permitted_calls() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 300;
    let clock = Clock::manual();
    for permits in [1u32, 3] {
        let config = BreakerConfig {
            window: Window::Count { calls: 2 },
            minimum_calls: 2,
            half_open_permits: permits,
            success_threshold: permits,
            wait_in_open_ms: 1_000,
            wait_multiplier: 1.0,
            ..BreakerConfig::default()
        };
        let breaker = CircuitBreaker::with_clock("race", config, clock.clone()).expect("valid");
        for round in 0..ROUNDS {
            // Open it, and let the wait run out: the next callers race for the trial places.
            breaker
                .try_acquire()
                .expect("closed")
                .record(Outcome::Failure);
            breaker
                .try_acquire()
                .expect("closed")
                .record(Outcome::Failure);
            assert_eq!(breaker.state(), State::Open);
            clock.advance(Duration::from_millis(1_000));

            let admitted = Arc::new(AtomicUsize::new(0));
            let start = Arc::new(Barrier::new(THREADS));
            let held = Arc::new(Barrier::new(THREADS));
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (breaker, admitted, start, held) = (
                        breaker.clone(),
                        admitted.clone(),
                        start.clone(),
                        held.clone(),
                    );
                    std::thread::spawn(move || {
                        start.wait();
                        let permit = breaker.try_acquire().ok();
                        if permit.is_some() {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        // Every thread holds its answer until all have asked.
                        held.wait();
                        if let Some(permit) = permit {
                            permit.record(Outcome::Success);
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("thread");
            }
            assert_eq!(
                admitted.load(Ordering::SeqCst),
                permits as usize,
                "round {round}: {} trials admitted with {permits} permits",
                admitted.load(Ordering::SeqCst)
            );
            assert_eq!(
                breaker.state(),
                State::Closed,
                "round {round}: the trials succeeded"
            );
        }
    }
}

#[test]
fn cancelled_trials_give_their_place_back() {
    let clock = Clock::manual();
    let config = BreakerConfig {
        window: Window::Count { calls: 1 },
        minimum_calls: 1,
        half_open_permits: 1,
        success_threshold: 1,
        wait_in_open_ms: 10,
        ..BreakerConfig::default()
    };
    let breaker = CircuitBreaker::with_clock("cancel", config, clock.clone()).expect("valid");
    breaker
        .try_acquire()
        .expect("closed")
        .record(Outcome::Failure);
    clock.advance(Duration::from_millis(10));
    let trial = breaker.try_acquire().expect("half-open trial");
    assert!(breaker.try_acquire().is_err(), "the only place is taken");
    drop(trial);
    let again = breaker.try_acquire().expect("the place came back");
    again.record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}
