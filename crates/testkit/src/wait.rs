//! Bounded waits: poll a condition until it holds or a deadline passes, then fail saying what
//! was awaited and what was last seen. Never a fixed sleep used as an assertion.
//!
//! The async waits keep time with tokio's clock, so they work under paused time too.

use std::fmt::Debug;
use std::time::Duration;

/// How often the waits poll, unless told otherwise.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL`] until it returns `Ok`, and returns its value; panics after
/// `within` with `what` and the last `Err` seen (what the condition looked at).
pub async fn eventually<T, E: Debug, Fut>(
    within: Duration,
    what: &str,
    check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    eventually_every(within, POLL, what, check).await
}

/// [`eventually`], polling every `every`.
pub async fn eventually_every<T, E: Debug, Fut>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen:?}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Polls `condition` every [`POLL`] until it holds; panics after `within` with `what`.
pub async fn wait_until<Fut>(within: Duration, what: &str, mut condition: impl FnMut() -> Fut)
where
    Fut: Future<Output = bool>,
{
    eventually(within, what, || {
        let holds = condition();
        async move { if holds.await { Ok(()) } else { Err("false") } }
    })
    .await
}

/// Checks `condition` every [`POLL`] for `during`, and once more at its end; panics with
/// `what` and what was seen the first time it does not hold. For what must stay true (nothing
/// is applied twice), where a fixed sleep and one look would miss a passing breach.
pub async fn holds_for<E: Debug, Fut>(
    during: Duration,
    what: &str,
    mut condition: impl FnMut() -> Fut,
) where
    Fut: Future<Output = Result<(), E>>,
{
    let end = tokio::time::Instant::now() + during;
    loop {
        let last = tokio::time::Instant::now() >= end;
        if let Err(seen) = condition().await {
            panic!("{what}: broken within {during:?}; seen: {seen:?}");
        }
        if last {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for a thread without a runtime: polls `check` every [`POLL`], sleeping the
/// thread in between.
pub fn eventually_blocking<T, E: Debug>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen:?}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_the_first_value_that_holds() {
        let calls = std::cell::Cell::new(0);
        let value = eventually(Duration::from_secs(1), "three calls", || async {
            calls.set(calls.get() + 1);
            if calls.get() == 3 {
                Ok(calls.get())
            } else {
                Err(calls.get())
            }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "never: not within 1s; last seen: \"still no\"")]
    async fn eventually_says_what_it_last_saw() {
        eventually(Duration::from_secs(1), "never", || async {
            Err::<(), _>("still no")
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "stays small: broken within 1s; seen: 4")]
    async fn holds_for_fails_on_the_first_breach() {
        let n = std::cell::Cell::new(0);
        holds_for(Duration::from_secs(1), "stays small", || async {
            n.set(n.get() + 1);
            if n.get() < 4 { Ok(()) } else { Err(n.get()) }
        })
        .await;
    }

    #[test]
    fn the_blocking_wait_polls_too() {
        let mut calls = 0;
        eventually_blocking(Duration::from_secs(5), "two calls", || {
            calls += 1;
            if calls == 2 { Ok(()) } else { Err(calls) }
        });
        assert_eq!(calls, 2);
    }
}
