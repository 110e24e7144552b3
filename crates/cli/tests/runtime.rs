//! The binary's runtime: one worker means one thread (tokio's current-thread scheduler), more
//! means tokio's multi-thread scheduler.

use std::time::Duration;

/// Starts `flotilla run registry` on a free port with `TOKIO_WORKER_THREADS` set to `workers`
/// (unset for `None`), waits until it answers `/readyz`, and returns the names of its threads.
async fn threads_of_registry(workers: Option<&str>) -> Vec<String> {
    let data = flotilla_testkit::TempData::new();
    let address = flotilla_testkit::dead_address().await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    command
        .args(["run", "registry", "--listen", &address, "--data-dir"])
        .arg(data.path())
        .env_remove("TOKIO_WORKER_THREADS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(workers) = workers {
        command.env("TOKIO_WORKER_THREADS", workers);
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
    drop(child);
    names
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
