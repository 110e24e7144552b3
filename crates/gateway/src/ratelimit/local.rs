//! The limits of one route kept in this process: the resilience crate's token bucket per
//! client, and a count per client of the calls in the current quota window.
//!
//! The quota's count and the bucket are checked under the count's lock, so that a call the
//! bucket refuses costs no quota and a call over quota costs no token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_resilience::ratelimit::{MAX_KEYS, RateLimitConfigError, RateLimiter};

use super::client::Client;
use super::verdict::{Left, Policy, Usage, Verdict};
use crate::routes::{Limits, Quota};

/// Counts kept after making room at the cap (see [`Counts::make_room`]).
const ROOM_MADE: usize = MAX_KEYS - MAX_KEYS / 10;

/// A route's limits in this process.
#[derive(Debug)]
pub(super) struct Local {
    rate: Option<RateLimiter<Client>>,
    quota: Option<(Quota, Mutex<Counts>)>,
}

impl Local {
    /// Limits as `limits` says.
    pub(super) fn new(limits: &Limits) -> Result<Self, RateLimitConfigError> {
        Ok(Self {
            rate: limits
                .rate
                .map(|rate| RateLimiter::new(rate.config()))
                .transpose()?,
            quota: limits.quota.map(|quota| (quota, Mutex::default())),
        })
    }

    /// Counts a call of `client` at `now` (wall-clock time since the Unix epoch, for the
    /// quota's windows), or refuses it.
    pub(super) fn check(&self, client: &Client, now: Duration) -> Verdict {
        let Some((quota, counts)) = &self.quota else {
            return self.take_token(client, Usage::default());
        };
        let window = Window::at(quota, now);
        let mut counts = counts.lock().unwrap_or_else(|poison| poison.into_inner());
        let used = counts.used(client, window.index);
        if used >= quota.limit {
            return Verdict::Refused {
                policy: Policy::Quota,
                retry_after: window.reset,
                usage: Usage {
                    rate: None,
                    quota: Some(Left {
                        remaining: 0,
                        reset: window.reset,
                    }),
                },
            };
        }
        let quota_left = |remaining| Left {
            remaining,
            reset: window.reset,
        };
        let usage = Usage {
            rate: None,
            quota: Some(quota_left(quota.limit - used)),
        };
        match self.take_token(client, usage) {
            Verdict::Admitted(usage) => {
                counts.add(client, window.index);
                Verdict::Admitted(Usage {
                    quota: Some(quota_left(quota.limit - used - 1)),
                    ..usage
                })
            }
            refused => refused,
        }
    }

    /// Takes a token of `client`'s bucket, if the route has one; `usage` says the rest.
    fn take_token(&self, client: &Client, usage: Usage) -> Verdict {
        let Some(rate) = &self.rate else {
            return Verdict::Admitted(usage);
        };
        match rate.take(client) {
            Ok(left) => Verdict::Admitted(Usage {
                rate: Some(Left {
                    remaining: u64::from(left.tokens),
                    reset: left.next_token,
                }),
                ..usage
            }),
            Err(limited) => Verdict::Refused {
                policy: Policy::Rate,
                retry_after: limited.retry_after,
                usage: Usage {
                    rate: Some(Left {
                        remaining: 0,
                        reset: limited.retry_after,
                    }),
                    ..usage
                },
            },
        }
    }
}

/// The quota window a moment falls in.
struct Window {
    /// Windows since the epoch.
    index: u64,
    /// Until the next window.
    reset: Duration,
}

impl Window {
    fn at(quota: &Quota, now: Duration) -> Self {
        let period = quota.period.as_secs().max(1);
        let index = now.as_secs() / period;
        let end = Duration::from_secs(index.saturating_add(1).saturating_mul(period));
        Self {
            index,
            reset: end.saturating_sub(now),
        }
    }
}

/// The calls of each client in its latest window.
#[derive(Debug, Default)]
struct Counts {
    by_client: HashMap<Client, Count>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    window: u64,
    used: u64,
}

impl Counts {
    /// The calls `client` made in window `window`.
    fn used(&self, client: &Client, window: u64) -> u64 {
        match self.by_client.get(client) {
            Some(count) if count.window == window => count.used,
            _ => 0,
        }
    }

    /// Counts a call of `client` in window `window`.
    fn add(&mut self, client: &Client, window: u64) {
        if let Some(count) = self.by_client.get_mut(client) {
            if count.window != window {
                *count = Count { window, used: 0 };
            }
            count.used += 1;
            return;
        }
        if self.by_client.len() >= MAX_KEYS {
            self.make_room(window);
        }
        self.by_client
            .insert(client.clone(), Count { window, used: 1 });
    }

    /// Brings the counts down to [`ROOM_MADE`]: those of past windows first (nothing is lost),
    /// then the smallest (those clients get a little of their quota again: the price of
    /// bounded memory, as with the buckets).
    fn make_room(&mut self, window: u64) {
        self.by_client.retain(|_, count| count.window == window);
        let Some(excess) = self
            .by_client
            .len()
            .checked_sub(ROOM_MADE)
            .filter(|&n| n > 0)
        else {
            return;
        };
        let mut used: Vec<u64> = self.by_client.values().map(|count| count.used).collect();
        let (_, &mut cutoff, _) = used.select_nth_unstable(excess - 1);
        let mut to_drop = excess;
        self.by_client.retain(|_, count| {
            if to_drop > 0 && count.used <= cutoff {
                to_drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::routes::Routes;

    fn limits(keys: &str) -> Limits {
        let text = format!(
            "[[routes]]\nname = \"r\"\nservice = \"s\"\npath = \"/r\"\nauth = \"public\"\n{keys}"
        );
        let routes = Routes::parse(&text).expect("routes");
        routes.iter().next().expect("a route").limits.clone()
    }

    fn user(name: &str) -> Client {
        Client::User(Arc::from(name))
    }

    const DAY: u64 = 86_400;

    #[test]
    fn a_quota_counts_calls_per_client_and_renews_with_the_window() {
        let local = Local::new(&limits("quota = { limit = 3, period = \"day\" }")).expect("valid");
        // 20:00 UTC on some day: 4 h to midnight.
        let evening = Duration::from_secs(19_000 * DAY + 20 * 3_600);
        for remaining in [2, 1, 0] {
            let Verdict::Admitted(usage) = local.check(&user("alice"), evening) else {
                panic!("within the quota");
            };
            let left = usage.quota.expect("a quota");
            assert_eq!(left.remaining, remaining);
            assert_eq!(left.reset, Duration::from_secs(4 * 3_600));
        }
        let Verdict::Refused {
            policy,
            retry_after,
            ..
        } = local.check(&user("alice"), evening + Duration::from_millis(1_500))
        else {
            panic!("over the quota");
        };
        assert_eq!(policy, Policy::Quota);
        assert_eq!(retry_after, Duration::from_millis(4 * 3_600_000 - 1_500));
        assert!(
            matches!(local.check(&user("bob"), evening), Verdict::Admitted(_)),
            "bob has his own"
        );
        let next_day = Duration::from_secs(19_001 * DAY);
        assert!(
            matches!(local.check(&user("alice"), next_day), Verdict::Admitted(_)),
            "a new window, a new quota"
        );
    }

    #[test]
    fn a_call_the_bucket_refuses_costs_no_quota_and_one_over_quota_no_token() {
        let local = Local::new(&limits(
            "rate_limit = { per_second = 0.001, burst = 2 }\nquota = { limit = 3, period = \"1h\" }",
        ))
        .expect("valid");
        let now = Duration::from_secs(1_000 * 3_600);
        let alice = user("alice");
        for _ in 0..2 {
            assert!(matches!(local.check(&alice, now), Verdict::Admitted(_)));
        }
        let Verdict::Refused { policy, usage, .. } = local.check(&alice, now) else {
            panic!("the burst is spent");
        };
        assert_eq!(policy, Policy::Rate);
        assert_eq!(
            usage.quota.map(|left| left.remaining),
            Some(1),
            "the refused call cost no quota"
        );
        let Verdict::Refused { policy, .. } = local.check(&alice, now + Duration::from_secs(3_600))
        else {
            panic!("still no token an hour later at 0.001/s");
        };
        assert_eq!(policy, Policy::Rate);
    }

    #[test]
    fn the_counts_are_bounded_and_past_windows_go_first() {
        let mut counts = Counts::default();
        for n in 0..MAX_KEYS {
            counts.add(&Client::User(Arc::from(n.to_string())), 1);
        }
        counts.add(&user("heavy"), 2);
        counts.add(&user("heavy"), 2);
        assert_eq!(counts.by_client.len(), 1, "the past window's counts went");
        for n in 0..MAX_KEYS {
            counts.add(&Client::User(Arc::from(n.to_string())), 2);
        }
        assert!(counts.by_client.len() <= MAX_KEYS);
        assert_eq!(counts.used(&user("heavy"), 2), 2, "the largest count stays");
    }
}
