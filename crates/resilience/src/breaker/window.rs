//! Sliding windows of call outcomes: the last N calls, or the calls of the last T.

use super::config::Window;

/// Totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Totals {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }

    fn remove(&mut self, failed: bool, slow: bool) {
        self.calls -= 1;
        self.failures -= u32::from(failed);
        self.slow -= u32::from(slow);
    }
}

/// A window of outcomes.
#[derive(Debug, Clone)]
pub(crate) enum Outcomes {
    /// The last `capacity` calls, in a ring.
    Count {
        ring: Vec<(bool, bool)>,
        next: usize,
        capacity: usize,
        totals: Totals,
    },
    /// The calls of the last `BUCKETS × width`, in buckets of `width` nanoseconds.
    Time {
        buckets: Vec<(u64, Totals)>,
        width: u64,
    },
}

/// Buckets of a time window: its resolution is a tenth of its length.
const BUCKETS: u64 = 10;

impl Outcomes {
    pub(crate) fn new(window: &Window) -> Self {
        match *window {
            Window::Count { calls } => {
                let capacity = calls.max(1) as usize;
                Outcomes::Count {
                    ring: Vec::with_capacity(capacity),
                    next: 0,
                    capacity,
                    totals: Totals::default(),
                }
            }
            Window::Time { millis } => Outcomes::Time {
                buckets: vec![(u64::MAX, Totals::default()); BUCKETS as usize],
                // Saturating: the configuration bounds `millis`, but the arithmetic never
                // overflows even without it.
                width: millis.max(1).saturating_mul(1_000_000).div_ceil(BUCKETS),
            },
        }
    }

    /// Records one call at `now` and returns the totals of the window.
    pub(crate) fn record(&mut self, now: u64, failed: bool, slow: bool) -> Totals {
        match self {
            Outcomes::Count {
                ring,
                next,
                capacity,
                totals,
            } => {
                if ring.len() < *capacity {
                    ring.push((failed, slow));
                } else {
                    let (old_failed, old_slow) = ring[*next];
                    totals.remove(old_failed, old_slow);
                    ring[*next] = (failed, slow);
                }
                *next = (*next + 1) % *capacity;
                totals.add(failed, slow);
                *totals
            }
            Outcomes::Time { buckets, width } => {
                let epoch = now / *width;
                let slot = &mut buckets[(epoch % BUCKETS) as usize];
                if slot.0 != epoch {
                    *slot = (epoch, Totals::default());
                }
                slot.1.add(failed, slow);
                let oldest = epoch.saturating_sub(BUCKETS - 1);
                let mut totals = Totals::default();
                for (bucket_epoch, bucket) in buckets.iter() {
                    if *bucket_epoch != u64::MAX
                        && *bucket_epoch >= oldest
                        && *bucket_epoch <= epoch
                    {
                        totals.calls += bucket.calls;
                        totals.failures += bucket.failures;
                        totals.slow += bucket.slow;
                    }
                }
                totals
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_window_forgets_the_oldest_call() {
        let mut window = Outcomes::new(&Window::Count { calls: 3 });
        window.record(0, true, false);
        window.record(0, false, true);
        let totals = window.record(0, false, false);
        assert_eq!(
            totals,
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        let totals = window.record(0, false, false);
        assert_eq!(
            totals,
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn a_time_window_forgets_old_buckets() {
        // 1 s window: buckets of 100 ms.
        let mut window = Outcomes::new(&Window::Time { millis: 1_000 });
        let ms = 1_000_000;
        window.record(0, true, false);
        window.record(50 * ms, true, false);
        let totals = window.record(950 * ms, false, false);
        assert_eq!(totals.calls, 3);
        // At 1 050 ms the first bucket (0–100 ms) has left the window.
        let totals = window.record(1_050 * ms, false, false);
        assert_eq!(
            totals,
            Totals {
                calls: 2,
                failures: 0,
                slow: 0
            }
        );
        // Much later, only the new call counts.
        let totals = window.record(60_000 * ms, true, true);
        assert_eq!(
            totals,
            Totals {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
    }

    #[test]
    fn a_huge_time_window_does_not_overflow() {
        let mut window = Outcomes::new(&Window::Time { millis: u64::MAX });
        let totals = window.record(u64::MAX, true, false);
        assert_eq!(totals.calls, 1);
        let totals = window.record(u64::MAX, false, false);
        assert_eq!((totals.calls, totals.failures), (2, 1));
    }
}
