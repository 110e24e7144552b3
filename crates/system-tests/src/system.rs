//! A running system for a test: started by the supervisor library with the gateway on a port
//! the OS chooses, JSON logs in `system.log` of a temporary data directory (its tail printed
//! when a test fails), and the looks into it the tests share.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_supervisor::{Builder, LogFormat};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::client::Gateway;

/// A running system; dropped, it kills its processes.
pub struct System {
    /// The supervisor's handle (kill, pause, restart an instance).
    pub supervisor: flotilla_supervisor::System,
    /// Calls through the gateway.
    pub api: Gateway,
    /// The registry's base URL.
    pub registry: String,
    data_dir: flotilla_testkit::TempData,
}

impl std::ops::Deref for System {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.api
    }
}

impl System {
    /// Starts the system with every default and waits until it is ready (at most 60 s).
    pub async fn start() -> System {
        Self::start_with(|builder| builder).await
    }

    /// Starts the system with extra settings for every process (`FLOTILLA_*` variables).
    pub async fn start_env(environment: &[(&str, &str)]) -> System {
        Self::start_with(|builder| {
            environment
                .iter()
                .fold(builder, |builder, (name, value)| builder.env(*name, *value))
        })
        .await
    }

    /// Starts the system with the test's options (`configure` receives the harness's builder).
    pub async fn start_with(configure: impl FnOnce(Builder) -> Builder) -> System {
        let data_dir = flotilla_testkit::TempData::new();
        let log = data_dir.path().join("system.log");
        let binary = tokio::task::spawn_blocking(crate::flotilla)
            .await
            .expect("the flotilla binary");
        let builder = Builder::new(binary, data_dir.path())
            .gateway_port(0)
            .log_format(LogFormat::Json)
            .log_file(&log)
            .stop_timeout(Duration::from_secs(5))
            .ready_timeout(Duration::from_secs(60));
        let supervisor = configure(builder).start().await.unwrap_or_else(|error| {
            panic!(
                "the system did not start: {error}; log:\n{}",
                crate::tail(&log)
            )
        });
        let token = crate::token(data_dir.path(), "admin");
        System {
            api: Gateway::new(supervisor.gateway_url(), &token),
            registry: supervisor.registry_url().to_owned(),
            supervisor,
            data_dir,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Everything the processes and the supervisor wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("system.log")).expect("log")
    }

    /// The instances of `service` in the registry's catalogue.
    pub async fn instances(&self, service: &str) -> Vec<Value> {
        let answer = self
            .call(
                Method::GET,
                &format!("{}/v1/registry/services/{service}", self.registry),
                &[],
                None,
            )
            .await;
        answer.body["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The pid of the first registered instance of `service` (waiting at most 15 s for one).
    pub async fn pid_of(&self, service: &str) -> i32 {
        looked_up(
            &format!("{service} is registered"),
            || self.instances(service),
            |instances| {
                instances
                    .first()
                    .and_then(|i| i["metadata"]["pid"].as_str())
                    .and_then(|p| p.parse().ok())
                    .ok_or(instances)
            },
        )
        .await
    }

    /// The order at `location` once it left PENDING (at most 15 s).
    pub async fn final_state(&self, location: &str) -> Value {
        looked_up(
            &format!("{location} ends"),
            || self.get(location),
            |order| {
                if order.status == StatusCode::OK && order.body["status"] != "PENDING" {
                    Ok(order.body)
                } else {
                    Err(order.body)
                }
            },
        )
        .await
    }

    /// The address (`host:port`) of the first registered instance of `service`; panics if
    /// there is none.
    pub async fn address_of(&self, service: &str) -> String {
        let instances = self.instances(service).await;
        instances
            .first()
            .and_then(|i| i["address"].as_str())
            .unwrap_or_else(|| panic!("an instance of {service}"))
            .to_owned()
    }

    /// The admin listener (`/metrics`, `/admin/*`) of the first instance of `service`, as it
    /// registered it.
    pub async fn admin_address_of(&self, service: &str) -> String {
        let instances = self.instances(service).await;
        instances
            .first()
            .and_then(|i| i["metadata"]["admin_address"].as_str())
            .unwrap_or_else(|| panic!("an admin address of {service}"))
            .to_owned()
    }

    /// `method path` on the admin listener of the first instance of `service`, with the
    /// admin's token.
    pub async fn admin(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> crate::Answer {
        let address = self.admin_address_of(service).await;
        let token = format!("Bearer {}", crate::token(self.data_dir(), "admin"));
        let mut headers = vec![("authorization", token.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.call(
            method,
            &format!("http://{address}{path}"),
            &headers,
            body.map(|b| b.as_bytes().to_vec()),
        )
        .await
    }

    /// The `/metrics` text of the first instance of `service`, read on its admin listener.
    pub async fn metrics_of(&self, service: &str) -> String {
        let answer = self.admin(service, Method::GET, "/metrics", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{service}: {}", answer.body);
        answer.body.as_str().map(str::to_owned).unwrap_or_default()
    }

    /// A read-only pool on `service`'s database.
    pub async fn database(&self, service: &str) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!(
            "sqlite://{}?mode=ro",
            self.data_dir().join(format!("{service}.db")).display()
        ))
        .await
        .unwrap_or_else(|error| panic!("{service} database: {error}"))
    }

    /// The orders stored (one `OrderPlaced` event each: orders are event-sourced).
    pub async fn count_orders(&self) -> i64 {
        let pool = self.database("order").await;
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM eventstore_events WHERE event_type = 'OrderPlaced'",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        pool.close().await;
        count
    }

    /// Runs `flotilla ARGS… --data-dir DIR` (ARGS ending with the flag's name is the caller's
    /// job: the data directory is appended) and returns its output.
    pub fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(crate::flotilla())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .expect("flotilla runs")
    }

    /// `flotilla check --json [--settled]` on this system: its success and its report.
    pub fn check(&self, settled: bool) -> (bool, Value) {
        let mut args = vec!["check", "--json"];
        if settled {
            args.push("--settled");
        }
        let output = self.flotilla(&args);
        let report = serde_json::from_str(&String::from_utf8_lossy(&output.stdout))
            .unwrap_or_else(|_| panic!("a JSON report: {output:?}"));
        (output.status.success(), report)
    }

    /// Waits (at most `within`, every `every`) until `flotilla check --settled` passes, and
    /// returns its report.
    pub async fn settled(&self, within: Duration, every: Duration) -> Value {
        crate::eventually_every(within, every, "every order settled", || async {
            let (passed, report) = self.check(true);
            if passed { Ok(report) } else { Err(report) }
        })
        .await
    }
}

/// What `found` takes from what `look` sees (`Ok`), looking again until it takes something, for
/// at most 15 s; past it, a panic saying `what` and what `found` left of the last look (`Err`).
async fn looked_up<S, T, E: std::fmt::Debug, Fut>(
    what: &str,
    mut look: impl FnMut() -> Fut,
    found: impl Fn(S) -> Result<T, E>,
) -> T
where
    Fut: Future<Output = S>,
{
    let found = &found;
    crate::eventually(Duration::from_secs(15), what, || {
        let seen = look();
        async move { found(seen.await) }
    })
    .await
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- system log ---\n{}",
                crate::tail(&self.data_dir().join("system.log"))
            );
        }
    }
}
