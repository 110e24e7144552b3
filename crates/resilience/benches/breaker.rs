//! Overhead of the circuit breaker per call, against failsafe-rs measured in the same run.
//!
//! `cargo bench -p flotilla-resilience --bench breaker`
//!
//! * `closed`: admit a call and report a success (what every call pays while all is well);
//! * `open`: reject a call (what a caller pays to fail fast while the target is down).
//!
//! In `closed` both breakers use their default policies (Flotilla: a 20-call count window;
//! failsafe: success rate over a time window, or else consecutive failures). In `open` both wait
//! an hour before half-opening, so that every measured call is a rejection.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced, Outcome, State};

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed");
    let flotilla = CircuitBreaker::new("bench", BreakerConfig::default()).expect("valid");
    group.bench_function("flotilla", |b| {
        b.iter(|| {
            let permit = flotilla.try_acquire().expect("closed");
            permit.record(black_box(Outcome::Success));
        })
    });
    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| {
            assert!(failsafe.is_call_permitted());
            failsafe.on_success();
        })
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    // Both breakers wait an hour in open, so that the whole measurement stays in the open state
    // (with the default waits, both would half-open during the run and the figures would mix
    // rejections with half-open admissions).
    let hour = Duration::from_secs(3600);
    let long_wait = BreakerConfig {
        wait_in_open_ms: 3_600_000,
        max_wait_in_open_ms: 3_600_000,
        ..BreakerConfig::default()
    };
    let flotilla = CircuitBreaker::new("bench", long_wait.clone()).expect("valid");
    while let Ok(permit) = flotilla.try_acquire() {
        permit.record(Outcome::Failure);
    }
    assert_eq!(flotilla.state(), State::Open, "opened by failures");
    group.bench_function("flotilla", |b| {
        b.iter(|| black_box(flotilla.try_acquire()).is_err())
    });
    assert_eq!(flotilla.state(), State::Open, "still open after the run");

    let forced = CircuitBreaker::new("bench-forced", long_wait).expect("valid");
    forced.force(Some(Forced::Open));
    group.bench_function("flotilla_forced_open", |b| {
        b.iter(|| black_box(forced.try_acquire()).is_err())
    });

    let failsafe = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(hour),
        ))
        .build();
    while failsafe.is_call_permitted() {
        failsafe.on_error();
    }
    assert!(!failsafe.is_call_permitted(), "opened by failures");
    group.bench_function("failsafe", |b| {
        b.iter(|| black_box(failsafe.is_call_permitted()))
    });
    assert!(!failsafe.is_call_permitted(), "still open after the run");
    group.finish();
}

fn clock(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    let clock = flotilla_resilience::Clock::system();
    group.bench_function("flotilla", |b| b.iter(|| black_box(clock.now())));
    group.bench_function("std_instant", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.finish();
}

criterion_group!(benches, closed, open, clock);
criterion_main!(benches);
