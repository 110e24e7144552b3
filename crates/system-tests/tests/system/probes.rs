//! The probes of a process that is not there yet: `/startupz` answers from the start and says
//! which step is under way (here: waiting for its broker), `/readyz` says why the process takes
//! no traffic (start-up, then an unreachable registry), and the API answers 503 meanwhile.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_system_tests::{Answer, Gateway, eventually, flotilla};
use http::{Method, StatusCode};

/// A port nothing listens on (bound, then let go).
fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address").port()
}

/// `flotilla run inventory` on `port` with `environment`, its data in `data`.
fn inventory(port: u16, data: &std::path::Path, environment: &[(&str, String)]) -> Child {
    Command::new(flotilla())
        .args(["run", "inventory", "--listen", &format!("127.0.0.1:{port}")])
        .env("FLOTILLA_DATA_DIR", data)
        .envs(environment.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla runs")
}

/// `GET path` on `port`, once something answers there.
async fn probe(client: &Gateway, port: u16, path: &str) -> Answer {
    let url = format!("http://127.0.0.1:{port}{path}");
    eventually(Duration::from_secs(15), &format!("{url} answers"), || {
        client.try_call(Method::GET, &url, &[], None)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_process_says_what_it_waits_for_and_an_unregistered_one_why_it_is_not_ready() {
    let client = Gateway::new("http://unused".to_owned(), "");
    let data = flotilla_testkit::TempData::new();

    // Its broker is not there: it does not start, and says so.
    let port = free_port();
    let broker = format!("nats://127.0.0.1:{}", free_port());
    let mut waiting = inventory(
        port,
        data.path(),
        &[
            ("FLOTILLA_MESSAGING__TRANSPORT", "nats".to_owned()),
            ("FLOTILLA_MESSAGING__NATS_URL", broker),
        ],
    );
    let started = eventually(Duration::from_secs(15), "the start-up step", || async {
        let answer = probe(&client, port, "/startupz").await;
        match answer.body["step"].as_str() {
            Some(step) if step.contains("transport") => Ok(answer),
            _ => Err(answer.body),
        }
    })
    .await;
    assert_eq!(started.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.body["type"], "/problems/not-started");
    assert_eq!(started.headers["content-type"], "application/problem+json");
    let ready = probe(&client, port, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body["reasons"]["startup"].is_string(),
        "{}",
        ready.body
    );
    let live = probe(&client, port, "/livez").await;
    assert_eq!(live.status, StatusCode::OK);
    let api = probe(&client, port, "/v1/products").await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE, "{}", api.body);
    let _ = waiting.kill();
    let _ = waiting.wait();

    // Started, but its registry is not there: not ready, and why.
    let port = free_port();
    let registry = format!("http://127.0.0.1:{}", free_port());
    let mut unregistered = inventory(port, data.path(), &[("FLOTILLA_REGISTRY_URL", registry)]);
    let ready = eventually(Duration::from_secs(15), "the registry's reason", || async {
        let answer = probe(&client, port, "/readyz").await;
        if answer.body["reasons"]["registry"].is_string() {
            Ok(answer)
        } else {
            Err(answer.body)
        }
    })
    .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["type"], "/problems/not-ready");
    let detail = ready.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("registry: not registered"), "{detail}");
    assert_eq!(
        probe(&client, port, "/startupz").await.status,
        StatusCode::OK
    );
    let _ = unregistered.kill();
    let _ = unregistered.wait();
}
