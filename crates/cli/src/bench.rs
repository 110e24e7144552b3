//! `flotilla bench orders`: places orders through the gateway at a fixed rate (open loop, so a
//! slow system does not slow the offered load) and measures each order's time to its final
//! state, with `Prefer: wait=8` (the answer comes when the saga ends; the gateway's deadline is 10 s),
//! in the saga style `--style` asks for (header `X-Saga-Style`). Every order is the seeded
//! `loadtest` customer's, for one unit of a product with ample stock, so every saga runs to
//! approval.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use flotilla_order::SagaStyle;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// Orders offered.
    pub offered: usize,
    /// Orders whose saga ended within the wait (approved or rejected).
    pub completed: usize,
    /// Of those, approved.
    pub approved: usize,
    /// Orders refused or not ended in time (errors, 202 after the wait).
    pub failed: usize,
    /// Completed sagas per second over the run (first send to last completion).
    pub sagas_per_second: f64,
    /// Median time from sending the order to its final state, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
}

/// The products the load orders: the two whose seeded stock (a million cables, 200,000 desk
/// mats) outlasts any run, so that every saga runs all its steps.
const SKUS: [&str; 2] = ["CB-005", "MP-010"];

/// The seeded customer whose credit never runs out.
const CUSTOMER: &str = "loadtest";

fn body(n: usize) -> String {
    let sku = SKUS[n % SKUS.len()];
    serde_json::json!({
        "customer_id": CUSTOMER,
        "items": [{ "sku": sku, "quantity": 1 }],
        "ship_to": { "name": "Load Test", "street": "1 Bench St", "city": "Paris",
                     "postal_code": "75002", "country": "FR" }
    })
    .to_string()
}

/// What a run without waiting measured: the sustained rate of sagas.
#[derive(Debug, Serialize)]
pub struct Sustained {
    /// Orders offered.
    pub offered: usize,
    /// Orders accepted (202).
    pub accepted: usize,
    /// Seconds from the first order until no order was pending any more.
    pub seconds: f64,
    /// Sagas ended per second over that time.
    pub sagas_per_second: f64,
    /// Orders by final status.
    pub orders: std::collections::BTreeMap<String, u64>,
}

/// Offers `rate` orders a second for `duration` without waiting for their sagas, then watches
/// the databases in `data_dir` (read only) until no order is pending: the sustained throughput,
/// which `Prefer: wait` (a poll per waiting request) does not disturb.
pub async fn sustained(
    gateway: &str,
    token: &str,
    data_dir: &std::path::Path,
    rate: u32,
    duration: Duration,
    style: SagaStyle,
) -> anyhow::Result<Sustained> {
    anyhow::ensure!(rate > 0, "--rate must be positive");
    // Right after `flotilla up` a service may not have created its tables yet.
    let before = until_ready(Duration::from_secs(30), || {
        crate::check::check(data_dir, false)
    })
    .await?;
    let already: u64 = before.orders.values().sum();
    let Paced { started, tasks } = paced(
        gateway,
        token,
        rate,
        duration,
        style,
        None,
        Duration::from_secs(15),
    )
    .await?;
    let offered = tasks.len();
    let mut accepted = 0;
    for task in tasks {
        if matches!(
            task.await.context("a client task")?.answer,
            Ok((StatusCode::ACCEPTED, _))
        ) {
            accepted += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let report = crate::check::check(data_dir, false).await?;
        let total: u64 = report.orders.values().sum();
        let pending = report.orders.get("PENDING").copied().unwrap_or(0);
        if pending == 0 && total >= already + accepted as u64 {
            let seconds = started.elapsed().as_secs_f64();
            return Ok(Sustained {
                offered,
                accepted,
                seconds,
                sagas_per_second: accepted as f64 / seconds,
                orders: report.orders,
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "orders still pending after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `attempt`'s first success, trying again every 200 ms for at most `patience`; past it, the
/// last failure, saying how long it waited.
async fn until_ready<T, F, Fut>(patience: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!(
                    "the system's databases were not ready after {patience:?}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One order's answer, as the sender's task saw it.
struct Sent {
    /// The gateway's status and body, or why there was none.
    answer: Result<(StatusCode, Bytes), flotilla_kit::client::CallError>,
    /// From sending the order to its answer.
    took: Duration,
    /// When the answer came.
    at: Instant,
}

/// The orders a paced run sent: when it started, and a task an order, in order.
struct Paced {
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Sent>>,
}

/// Posts `rate` orders a second for `duration` to the gateway's `/v1/orders` with the bearer
/// `token`, open loop: order
/// `n` leaves `n / rate` seconds after the start whatever the answers to the earlier ones, each
/// on a task of its own that waits at most `timeout` for its answer. Every order asks for the
/// saga `style`, and with `prefer` (e.g. `wait=8`) sends that `Prefer` header.
async fn paced(
    gateway: &str,
    token: &str,
    rate: u32,
    duration: Duration,
    style: SagaStyle,
    prefer: Option<&'static str>,
    timeout: Duration,
) -> anyhow::Result<Paced> {
    let client = flotilla_kit::client::client();
    let url = format!("{}/v1/orders", gateway.trim_end_matches('/'));
    let authorization = format!("Bearer {token}");
    let offered = usize::try_from(u64::from(rate) * duration.as_secs()).unwrap_or(usize::MAX);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(offered);
    for n in 0..offered {
        tokio::time::sleep_until((started + interval.mul_f64(n as f64)).into()).await;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("authorization", &authorization)
            .header("content-type", "application/json");
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        let request = request
            .header("x-saga-style", style.as_str())
            .body(Full::new(Bytes::from(body(n))))
            .context("request")?;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = flotilla_kit::client::exchange(&client, "", request, timeout).await;
            Sent {
                answer,
                took: sent.elapsed(),
                at: Instant::now(),
            }
        }));
    }
    Ok(Paced { started, tasks })
}

/// How a failed answer is counted: by status and problem type (each body names its own order).
fn failure(status: StatusCode, body: &[u8]) -> String {
    if status == StatusCode::ACCEPTED {
        return format!("{status}: the saga had not ended when the wait ran out");
    }
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match problem["type"].as_str() {
        Some(kind) => format!("{status}: {kind}"),
        None => format!(
            "{status}: {}",
            String::from_utf8_lossy(body)
                .chars()
                .take(120)
                .collect::<String>()
        ),
    }
}

/// Offers `rate` orders a second for `duration` to the gateway at `gateway`.
pub async fn orders(
    gateway: &str,
    token: &str,
    rate: u32,
    duration: Duration,
    style: SagaStyle,
) -> anyhow::Result<Figures> {
    anyhow::ensure!(rate > 0, "--rate must be positive");
    let Paced { started, tasks } = paced(
        gateway,
        token,
        rate,
        duration,
        style,
        Some("wait=8"),
        Duration::from_secs(12),
    )
    .await?;
    let offered = tasks.len();
    let mut latencies = Vec::with_capacity(offered);
    let (mut approved, mut failed) = (0, 0);
    let mut errors: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut last = started;
    for task in tasks {
        let Sent { answer, took, at } = task.await.context("a client task")?;
        match answer {
            Ok((StatusCode::OK, body)) => {
                let order: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if order["status"] == "APPROVED" {
                    approved += 1;
                }
                latencies.push(took);
                last = last.max(at);
            }
            Ok((status, body)) => {
                failed += 1;
                *errors.entry(failure(status, &body)).or_insert(0) += 1;
            }
            Err(error) => {
                failed += 1;
                *errors.entry(error.to_string()).or_insert(0) += 1;
            }
        }
    }
    for (error, count) in &errors {
        eprintln!("{count} × {error}");
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let elapsed = last.duration_since(started).as_secs_f64().max(f64::EPSILON);
    Ok(Figures {
        offered,
        completed: latencies.len(),
        approved,
        failed,
        sagas_per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_system_not_ready_yet_is_waited_for_and_one_never_ready_is_reported() {
        let mut tries = 0;
        let ready = until_ready(Duration::from_secs(5), || {
            tries += 1;
            let this = tries;
            async move {
                anyhow::ensure!(this >= 3, "no such table: accounts");
                Ok(this)
            }
        })
        .await
        .expect("ready at the third try");
        assert_eq!(ready, 3);
        let never: anyhow::Result<()> = until_ready(Duration::from_millis(300), || async {
            anyhow::bail!("no such table: accounts")
        })
        .await;
        let error = format!("{:#}", never.expect_err("never ready"));
        assert!(
            error.contains("not ready after") && error.contains("no such table: accounts"),
            "{error}"
        );
    }

    #[test]
    fn failures_are_counted_by_status_and_problem_type_not_by_body() {
        let open = |order: &str| {
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"type":"/problems/circuit-open","detail":"{order}"}}"#).as_bytes(),
            )
        };
        assert_eq!(open("o-1"), open("o-2"));
        assert_eq!(
            open("o-1"),
            "503 Service Unavailable: /problems/circuit-open"
        );
        assert_eq!(
            failure(
                StatusCode::ACCEPTED,
                br#"{"order_id":"o-1","status":"PENDING"}"#
            ),
            failure(
                StatusCode::ACCEPTED,
                br#"{"order_id":"o-2","status":"PENDING"}"#
            ),
        );
        assert_eq!(
            failure(StatusCode::BAD_GATEWAY, b"down"),
            "502 Bad Gateway: down"
        );
    }
}
