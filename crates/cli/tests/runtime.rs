//! The binary's runtime: one worker means one thread (tokio's current-thread scheduler), more
//! means tokio's multi-thread scheduler; the gateway runs a current-thread runtime per worker.

use std::time::Duration;

/// Starts `flotilla run registry` on a free port with `TOKIO_WORKER_THREADS` set to `workers`
/// (unset for `None`), waits until it answers `/readyz`, and returns the names of its threads.
async fn threads_of_registry(workers: Option<&str>) -> Vec<String> {
    let data = flotilla_testkit::TempData::new();
    let mut env = Vec::new();
    if let Some(workers) = workers {
        env.push(("TOKIO_WORKER_THREADS", workers));
    }
    threads_of("registry", &[], &env, &data).await.1
}

/// Starts `flotilla run ROLE` on a free port with `args` and `env` (and `TOKIO_WORKER_THREADS`
/// unset unless `env` sets it), waits until it answers `/readyz`, and returns its address, the
/// names of its threads and the process (killed when dropped).
async fn threads_of(
    role: &str,
    args: &[&str],
    env: &[(&str, &str)],
    data: &flotilla_testkit::TempData,
) -> (String, Vec<String>, tokio::process::Child) {
    let address = flotilla_testkit::dead_address().await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    command
        .args(["run", role, "--listen", &address, "--data-dir"])
        .arg(data.path())
        .args(args)
        .env_remove("TOKIO_WORKER_THREADS")
        .env_remove("FLOTILLA_WORKERS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("run flotilla");
    let pid = child.id().expect("a pid");
    let url = format!("http://{address}/readyz");
    let client = flotilla_kit::client::client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = flotilla_kit::client::exchange(
            &client,
            &url,
            http::Request::get(&url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
            Duration::from_secs(1),
        )
        .await;
        if matches!(ready, Ok((status, _)) if status.is_success()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the registry never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("its threads") {
        let comm = task.expect("a thread").path().join("comm");
        names.push(
            std::fs::read_to_string(comm)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        );
    }
    (address, names, child)
}

#[tokio::test]
async fn one_worker_runs_on_the_main_thread_more_run_on_worker_threads() {
    let one = threads_of_registry(Some("1")).await;
    assert!(
        !one.iter().any(|name| name.starts_with("tokio-r")),
        "no runtime worker thread with one worker: {one:?}"
    );
    let two = threads_of_registry(Some("2")).await;
    let workers = two
        .iter()
        .filter(|name| name.starts_with("tokio-r"))
        .count();
    assert_eq!(workers, 2, "two runtime worker threads: {two:?}");
}

#[tokio::test]
async fn the_gateway_runs_a_current_thread_runtime_per_worker() {
    let data = flotilla_testkit::TempData::new();
    // The gateway needs a registry to start; one with a single runtime thread.
    let registry_data = flotilla_testkit::TempData::new();
    let (registry, _, _registry) = threads_of(
        "registry",
        &[],
        &[("TOKIO_WORKER_THREADS", "1")],
        &registry_data,
    )
    .await;
    let registry_url = format!("http://{registry}");
    // Its routes need tokens, so an identity provider to check them against (fetched only
    // when a token comes: its address need not answer here).
    let identity = format!("http://{}", flotilla_testkit::dead_address().await);
    for (workers, expected) in [("1", 0), ("3", 2)] {
        let (_, threads, _gateway) = threads_of(
            "gateway",
            &["--registry-url", &registry_url],
            &[
                ("FLOTILLA_WORKERS", workers),
                ("FLOTILLA_IDENTITY__URL", identity.as_str()),
            ],
            &data,
        )
        .await;
        assert!(
            !threads.iter().any(|name| name.starts_with("tokio-r")),
            "no multi-thread scheduler in the gateway: {threads:?}"
        );
        let extra = threads
            .iter()
            .filter(|name| name.starts_with("worker-"))
            .count();
        assert_eq!(
            extra, expected,
            "{workers} workers: the main thread and {expected} more: {threads:?}"
        );
    }
}
