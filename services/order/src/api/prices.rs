//! The catalog prices the order service has read from the inventory, kept for a while
//! (cache-aside): placing an order asks the inventory only for the SKUs it has not priced within
//! [`OrderSettings::catalog_cache_ms`](crate::OrderSettings::catalog_cache_ms).
//!
//! The inventory owns the catalog; the order keeps a copy of the one figure it needs, the unit
//! price, so that an order does not cost a request to the inventory (and a read of its one
//! database connection, which the saga's steps queue on). A price changed in the catalog reaches
//! new orders within the cache's time; an order always keeps the price it was placed with
//! (`OrderPlaced` records it). Unknown SKUs are never kept: each order naming one asks again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Unit prices by SKU, each with the time it was read.
#[derive(Debug)]
pub struct Prices {
    keep_for: Duration,
    known: Mutex<HashMap<String, (i64, Instant)>>,
}

impl Prices {
    /// A cache keeping each price for `keep_for` (zero keeps nothing).
    pub fn new(keep_for: Duration) -> Self {
        Self {
            keep_for,
            known: Mutex::default(),
        }
    }

    /// The price of `sku` read less than the cache's time ago.
    pub fn get(&self, sku: &str) -> Option<i64> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get(sku)
            .filter(|(_, read)| read.elapsed() < self.keep_for)
            .map(|(price, _)| *price)
    }

    /// Keeps `price` as `sku`'s, read now.
    pub fn put(&self, sku: &str, price: i64) {
        if self.keep_for.is_zero() {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.insert(sku.to_owned(), (price, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_is_kept_for_the_cache_time_and_no_longer() {
        let prices = Prices::new(Duration::from_millis(50));
        assert_eq!(prices.get("CB-001"), None);
        prices.put("CB-001", 1999);
        assert_eq!(prices.get("CB-001"), Some(1999));
        assert_eq!(prices.get("CB-002"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(prices.get("CB-001"), None, "expired");
        prices.put("CB-001", 2099);
        assert_eq!(prices.get("CB-001"), Some(2099), "read again");
    }

    #[test]
    fn a_zero_cache_time_keeps_nothing() {
        let prices = Prices::new(Duration::ZERO);
        prices.put("CB-001", 1999);
        assert_eq!(prices.get("CB-001"), None);
    }
}
