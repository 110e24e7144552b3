//! The relay's retry backoff runs on the relay's clock: a message whose publish failed is not
//! tried again before its wait is over, is tried again once the clock has moved past it, and
//! each failure doubles the wait. The clock is a manual one: nothing waits in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flotilla_kit::clock::Clock;
use flotilla_messaging::outbox::{self, Pass, Relay, RelayConfig};
use flotilla_messaging::{Deliveries, Message, Transport, TransportError};
use flotilla_testkit::TempData;
use serde_json::json;

/// Fails the first `failures` publishes, then publishes; counts every attempt.
struct Flaky {
    failures: u32,
    attempts: AtomicU32,
}

impl Transport for Flaky {
    async fn publish(&self, _: &Message) -> Result<(), TransportError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt < self.failures {
            Err(TransportError::Unavailable(format!(
                "attempt {attempt} fails"
            )))
        } else {
            Ok(())
        }
    }

    async fn subscribe(&self, _: &str, _: &[&str]) -> Result<Deliveries, TransportError> {
        Err(TransportError::Unavailable("publish only".into()))
    }
}

fn pass(published: u32, failed: u32) -> Pass {
    Pass {
        published,
        failed,
        dead: 0,
    }
}

#[tokio::test]
async fn a_failed_message_waits_its_backoff_on_the_relays_clock() {
    let data = TempData::new();
    let pool = data.messaging_pool("producer").await;
    let message = Message::new("orders", "Placed", "o-1", json!({ "n": 1 }));
    let mut tx = pool.begin().await.expect("begin");
    flotilla_sqlite::direct(&mut tx, |db| outbox::enqueue(db, &message))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let transport = Arc::new(Flaky {
        failures: 2,
        attempts: AtomicU32::new(0),
    });
    let clock = Clock::manual_from_now();
    let config = RelayConfig {
        base_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let relay = Relay::new(pool.clone(), transport.clone(), config).with_clock(clock.clone());
    let attempts = || transport.attempts.load(Ordering::SeqCst);

    // The relay's passes in turn: how far the clock moves first (ms), the pass, the attempts by
    // then, and why.
    let timeline = [
        (0, pass(0, 1), 1, "the first attempt fails"),
        // Within the first wait (1 s): not tried again, however often the relay looks.
        (0, pass(0, 0), 1, "not within the first wait"),
        (999, pass(0, 0), 1, "not before its backoff is over"),
        // Past it: tried again, fails again, and now waits twice as long (2 s).
        (2, pass(0, 1), 2, "tried again past its backoff"),
        (1_900, pass(0, 0), 2, "the second wait is twice the first"),
        (200, pass(1, 0), 3, "tried again past the second, published"),
    ];
    for (advance, expected, tried, why) in timeline {
        clock.advance(Duration::from_millis(advance));
        assert_eq!(relay.relay_once().await.expect("pass"), expected, "{why}");
        assert_eq!(attempts(), tried, "{why}");
    }
    let left: i64 = flotilla_testkit::number(
        &pool,
        "SELECT COUNT(*) FROM messaging_outbox WHERE published_at IS NULL",
    )
    .await;
    assert_eq!(left, 0, "published and marked");
}
