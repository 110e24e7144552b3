//! Every key, from a file and from the environment, arrives in its section; a bad value's error
//! names its key. The environment is changed inside `figment::Jail`, which serialises the tests
//! that use it and restores the variables.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Jail;
use flotilla_kit::settings::LogFormat;
use flotilla_messaging::TransportKind;
use flotilla_order::SagaStyle;
use flotilla_resilience::breaker::Window;

use super::*;

/// No overrides.
#[derive(Serialize)]
struct NoFlags {}

/// Every key set to a value other than its default, as the file and the environment both say.
fn check_every_key(settings: &Settings) {
    let server = &settings.server;
    assert_eq!(server.listen, SocketAddr::from(([127, 0, 0, 1], 7171)));
    assert_eq!(
        server.admin_listen,
        SocketAddr::from(([127, 0, 0, 1], 7172))
    );
    assert_eq!(server.advertise_host, "node-7.example");
    assert_eq!(server.data_dir, PathBuf::from("/var/lib/flotilla-test"));
    assert_eq!(server.log_format, LogFormat::Json);
    assert_eq!(server.log_level, "debug,hyper=warn");
    assert_eq!(server.max_body_bytes, 12_345);
    assert_eq!(server.shutdown_grace_ms, 2_500);
    let limits = server.connection_limits();
    assert_eq!(limits.header_read_timeout, Duration::from_secs(4));
    assert_eq!(limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(
        (
            limits.max_headers,
            limits.max_header_bytes,
            limits.max_uri_bytes
        ),
        (50, 8_000, 4_000)
    );
    assert!(server.supervised);
    assert!(server.fault_injection);

    let discovery = &settings.discovery;
    assert_eq!(
        discovery.registry_url.as_deref(),
        Some("http://127.0.0.1:7070")
    );
    assert_eq!(discovery.request_timeout_ms, 3_000);

    let registry = &settings.registry;
    assert_eq!(registry.heartbeat_ms, 250);
    assert_eq!(registry.ttl_ms, 900);
    assert_eq!(registry.probe_interval_ms, 300);
    assert_eq!(registry.probe_timeout_ms, 200);

    let breaker = &settings.resilience.breaker;
    assert_eq!(breaker.window, Window::Count { calls: 50 });
    assert_eq!(breaker.failure_rate_threshold, 40.0);
    assert_eq!(breaker.slow_call_duration_ms, 1_500);
    assert_eq!(breaker.minimum_calls, 5);
    assert_eq!(breaker.wait_in_open_ms, 1_000);
    let retry = &settings.resilience.retry;
    assert_eq!(retry.max_attempts, 2);
    assert_eq!(retry.base_delay_ms, 30);
    assert_eq!(retry.budget_percent, 50.0);

    assert_eq!(settings.gateway.queue_for_later, vec!["order".to_owned()]);
    assert!(settings.gateway.admin_api);
    assert_eq!(
        settings.gateway.routes_file.as_deref(),
        Some(Path::new("/etc/flotilla/routes.toml"))
    );
    let limits = &settings.gateway.rate_limit;
    assert_eq!(limits.redis_url.as_deref(), Some("redis://10.0.0.9:6380/2"));
    assert_eq!(
        limits.on_redis_down,
        flotilla_gateway::settings::OnRedisDown::Deny
    );
    assert_eq!(limits.redis_timeout_ms, 20);
    assert_eq!(limits.redis_retry_ms, 250);
    assert_eq!(limits.key_prefix, "shop:limits");

    assert_eq!(settings.order.saga_style, SagaStyle::Choreography);
    assert_eq!(settings.order.catalog_cache_ms, 0);
    assert_eq!(settings.order.choreography_deadline_ms, 45_000);

    let messaging = &settings.messaging;
    assert_eq!(messaging.transport, TransportKind::Nats);
    assert_eq!(messaging.nats_url, "nats://10.0.0.9:4222");
    assert_eq!(messaging.nats_stream, "TEST");
    assert_eq!(messaging.nats_subject_prefix, "test");
    assert_eq!(messaging.push_token, "s3cret");
    assert_eq!(messaging.outbox_retention_ms, 60_000);
    assert_eq!(messaging.inbox_retention_ms, 7_200_000);

    let identity = &settings.identity;
    assert_eq!(
        identity.client.url.as_deref(),
        Some("http://127.0.0.1:7272")
    );
    let (verifier, provider) = (&identity.client.verifier, &identity.provider);
    for (issuer, audiences, skew) in [
        (
            &verifier.issuer,
            &verifier.audiences,
            verifier.max_clock_skew_ms,
        ),
        (
            &provider.issuer,
            &provider.audiences,
            provider.max_clock_skew_ms,
        ),
    ] {
        assert_eq!(issuer, "test-idp", "one key, both readers");
        assert_eq!(audiences, &["shop".to_owned(), "ops".to_owned()]);
        assert_eq!(skew, 10_000);
    }
    assert_eq!(verifier.max_token_bytes, 4096);
    assert_eq!(verifier.jwks_refetch_interval_ms, 5_000);
    assert_eq!(verifier.jwks_fetch_timeout_ms, 1_000);
    assert_eq!(verifier.cache_capacity, 500);
    assert_eq!(verifier.jwks_max_age_ms, 60_000);
    assert_eq!(provider.jwks_max_age_ms, 60_000);
    assert_eq!(provider.token_lifetime_ms, 120_000);
    assert_eq!(provider.key_file, Path::new("/etc/flotilla/keys.json"));
    assert_eq!(provider.rotation_interval_ms, Some(3_600_000));
    assert_eq!(provider.public_url.as_deref(), Some("http://idp.example"));
    assert_eq!(
        provider.seed_file.as_deref(),
        Some(Path::new("/etc/flotilla/identity.toml"))
    );
    assert_eq!(
        provider.platform_secret.as_deref(),
        Some("a platform secret of 32 characters")
    );
    assert_eq!(provider.token_requests_per_second, 7);
    assert_eq!(provider.attempts_per_account_per_minute, 4);
    assert_eq!(identity.client.client_id.as_deref(), Some("order"));
    assert_eq!(
        identity.client.client_secret.as_deref(),
        Some("order's secret")
    );
    // Secrets are never printed.
    let printed = format!("{settings:?}");
    assert!(!printed.contains("order's secret"), "{printed}");
    assert!(!printed.contains("a platform secret"), "{printed}");
}

const FILE: &str = r#"
listen = "127.0.0.1:7171"
admin_listen = "127.0.0.1:7172"
advertise_host = "node-7.example"
data_dir = "/var/lib/flotilla-test"
log_format = "json"
log_level = "debug,hyper=warn"
max_body_bytes = 12345
header_read_timeout_ms = 4000
idle_timeout_ms = 30000
max_headers = 50
max_header_bytes = 8000
max_uri_bytes = 4000
shutdown_grace_ms = 2500
supervised = true
fault_injection = true
registry_url = "http://127.0.0.1:7070"
request_timeout_ms = 3000
heartbeat_ms = 250
ttl_ms = 900
probe_interval_ms = 300
probe_timeout_ms = 200
queue_for_later = ["order"]
admin_api = true
routes_file = "/etc/flotilla/routes.toml"
saga_style = "choreography"
catalog_cache_ms = 0
choreography_deadline_ms = 45000

[breaker]
window = { kind = "count", calls = 50 }
failure_rate_threshold = 40.0
slow_call_duration_ms = 1500
minimum_calls = 5
wait_in_open_ms = 1000

[retry]
max_attempts = 2
base_delay_ms = 30
budget_percent = 50.0

[rate_limit]
redis_url = "redis://10.0.0.9:6380/2"
on_redis_down = "deny"
redis_timeout_ms = 20
redis_retry_ms = 250
key_prefix = "shop:limits"

[messaging]
transport = "nats"
nats_url = "nats://10.0.0.9:4222"
nats_stream = "TEST"
nats_subject_prefix = "test"
push_token = "s3cret"
outbox_retention_ms = 60000
inbox_retention_ms = 7200000

[identity]
url = "http://127.0.0.1:7272"
issuer = "test-idp"
audiences = ["shop", "ops"]
max_clock_skew_ms = 10000
max_token_bytes = 4096
jwks_refetch_interval_ms = 5000
jwks_fetch_timeout_ms = 1000
jwks_max_age_ms = 60000
cache_capacity = 500
token_lifetime_ms = 120000
key_file = "/etc/flotilla/keys.json"
rotation_interval_ms = 3600000
public_url = "http://idp.example"
seed_file = "/etc/flotilla/identity.toml"
platform_secret = "a platform secret of 32 characters"
token_requests_per_second = 7
attempts_per_account_per_minute = 4
client_id = "order"
client_secret = "order's secret"
"#;

const ENV: &[(&str, &str)] = &[
    ("FLOTILLA_LISTEN", "127.0.0.1:7171"),
    ("FLOTILLA_ADMIN_LISTEN", "127.0.0.1:7172"),
    ("FLOTILLA_ADVERTISE_HOST", "node-7.example"),
    ("FLOTILLA_DATA_DIR", "/var/lib/flotilla-test"),
    ("FLOTILLA_LOG_FORMAT", "json"),
    ("FLOTILLA_LOG_LEVEL", "debug,hyper=warn"),
    ("FLOTILLA_MAX_BODY_BYTES", "12345"),
    ("FLOTILLA_HEADER_READ_TIMEOUT_MS", "4000"),
    ("FLOTILLA_IDLE_TIMEOUT_MS", "30000"),
    ("FLOTILLA_MAX_HEADERS", "50"),
    ("FLOTILLA_MAX_HEADER_BYTES", "8000"),
    ("FLOTILLA_MAX_URI_BYTES", "4000"),
    ("FLOTILLA_SHUTDOWN_GRACE_MS", "2500"),
    ("FLOTILLA_SUPERVISED", "true"),
    ("FLOTILLA_FAULT_INJECTION", "true"),
    ("FLOTILLA_REGISTRY_URL", "http://127.0.0.1:7070"),
    ("FLOTILLA_REQUEST_TIMEOUT_MS", "3000"),
    ("FLOTILLA_HEARTBEAT_MS", "250"),
    ("FLOTILLA_TTL_MS", "900"),
    ("FLOTILLA_PROBE_INTERVAL_MS", "300"),
    ("FLOTILLA_PROBE_TIMEOUT_MS", "200"),
    ("FLOTILLA_QUEUE_FOR_LATER", r#"["order"]"#),
    ("FLOTILLA_ADMIN_API", "true"),
    ("FLOTILLA_ROUTES_FILE", "/etc/flotilla/routes.toml"),
    ("FLOTILLA_RATE_LIMIT__REDIS_URL", "redis://10.0.0.9:6380/2"),
    ("FLOTILLA_RATE_LIMIT__ON_REDIS_DOWN", "deny"),
    ("FLOTILLA_RATE_LIMIT__REDIS_TIMEOUT_MS", "20"),
    ("FLOTILLA_RATE_LIMIT__REDIS_RETRY_MS", "250"),
    ("FLOTILLA_RATE_LIMIT__KEY_PREFIX", "shop:limits"),
    ("FLOTILLA_SAGA_STYLE", "choreography"),
    ("FLOTILLA_CATALOG_CACHE_MS", "0"),
    ("FLOTILLA_CHOREOGRAPHY_DEADLINE_MS", "45000"),
    ("FLOTILLA_BREAKER__WINDOW__KIND", "count"),
    ("FLOTILLA_BREAKER__WINDOW__CALLS", "50"),
    ("FLOTILLA_BREAKER__FAILURE_RATE_THRESHOLD", "40"),
    ("FLOTILLA_BREAKER__SLOW_CALL_DURATION_MS", "1500"),
    ("FLOTILLA_BREAKER__MINIMUM_CALLS", "5"),
    ("FLOTILLA_BREAKER__WAIT_IN_OPEN_MS", "1000"),
    ("FLOTILLA_RETRY__MAX_ATTEMPTS", "2"),
    ("FLOTILLA_RETRY__BASE_DELAY_MS", "30"),
    ("FLOTILLA_RETRY__BUDGET_PERCENT", "50"),
    ("FLOTILLA_MESSAGING__TRANSPORT", "nats"),
    ("FLOTILLA_MESSAGING__NATS_URL", "nats://10.0.0.9:4222"),
    ("FLOTILLA_MESSAGING__NATS_STREAM", "TEST"),
    ("FLOTILLA_MESSAGING__NATS_SUBJECT_PREFIX", "test"),
    ("FLOTILLA_MESSAGING__PUSH_TOKEN", "s3cret"),
    ("FLOTILLA_MESSAGING__OUTBOX_RETENTION_MS", "60000"),
    ("FLOTILLA_MESSAGING__INBOX_RETENTION_MS", "7200000"),
    ("FLOTILLA_IDENTITY__URL", "http://127.0.0.1:7272"),
    ("FLOTILLA_IDENTITY__ISSUER", "test-idp"),
    ("FLOTILLA_IDENTITY__AUDIENCES", r#"["shop", "ops"]"#),
    ("FLOTILLA_IDENTITY__MAX_CLOCK_SKEW_MS", "10000"),
    ("FLOTILLA_IDENTITY__MAX_TOKEN_BYTES", "4096"),
    ("FLOTILLA_IDENTITY__JWKS_REFETCH_INTERVAL_MS", "5000"),
    ("FLOTILLA_IDENTITY__JWKS_FETCH_TIMEOUT_MS", "1000"),
    ("FLOTILLA_IDENTITY__JWKS_MAX_AGE_MS", "60000"),
    ("FLOTILLA_IDENTITY__CACHE_CAPACITY", "500"),
    ("FLOTILLA_IDENTITY__TOKEN_LIFETIME_MS", "120000"),
    ("FLOTILLA_IDENTITY__KEY_FILE", "/etc/flotilla/keys.json"),
    ("FLOTILLA_IDENTITY__ROTATION_INTERVAL_MS", "3600000"),
    ("FLOTILLA_IDENTITY__PUBLIC_URL", "http://idp.example"),
    (
        "FLOTILLA_IDENTITY__SEED_FILE",
        "/etc/flotilla/identity.toml",
    ),
    (
        "FLOTILLA_IDENTITY__PLATFORM_SECRET",
        "a platform secret of 32 characters",
    ),
    ("FLOTILLA_IDENTITY__TOKEN_REQUESTS_PER_SECOND", "7"),
    ("FLOTILLA_IDENTITY__ATTEMPTS_PER_ACCOUNT_PER_MINUTE", "4"),
    ("FLOTILLA_IDENTITY__CLIENT_ID", "order"),
    ("FLOTILLA_IDENTITY__CLIENT_SECRET", "order's secret"),
];

/// Runs `test` in a jail whose environment holds no `FLOTILLA_*` variable of the caller.
fn jailed(test: impl FnOnce(&mut Jail) -> figment::error::Result<()>) {
    Jail::expect_with(|jail| {
        jail.clear_env();
        test(jail)
    });
}

#[test]
fn overrides_win_and_rules_are_checked() {
    #[derive(Serialize)]
    struct Flags {
        ttl_ms: u64,
    }
    jailed(|_| {
        let settings = Settings::load(None, Flags { ttl_ms: 5_000 }).expect("valid");
        assert_eq!(settings.registry.ttl_ms, 5_000);

        let error = Settings::load(None, Flags { ttl_ms: 10 }).expect_err("too short");
        assert!(error.to_string().contains("ttl_ms"), "{error}");
        Ok(())
    });
}

#[test]
fn every_key_of_a_file_arrives_in_its_section() {
    jailed(|jail| {
        jail.create_file("flotilla.toml", FILE)?;
        let settings =
            Settings::load(Some(Path::new("flotilla.toml")), NoFlags {}).expect("every key valid");
        check_every_key(&settings);
        Ok(())
    });
}

#[test]
fn every_flotilla_variable_arrives_in_its_section() {
    jailed(|jail| {
        for (name, value) in ENV {
            jail.set_env(name, value);
        }
        let settings = Settings::load(None, NoFlags {}).expect("every variable valid");
        check_every_key(&settings);
        Ok(())
    });
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_both() {
    #[derive(Serialize)]
    struct Flags {
        data_dir: PathBuf,
    }
    jailed(|jail| {
        jail.create_file("flotilla.toml", "ttl_ms = 4000\ndata_dir = \"from-file\"\n")?;
        jail.set_env("FLOTILLA_TTL_MS", "6000");
        jail.set_env("FLOTILLA_DATA_DIR", "from-env");
        let settings = Settings::load(
            Some(Path::new("flotilla.toml")),
            Flags {
                data_dir: "from-flag".into(),
            },
        )
        .expect("valid");
        assert_eq!(settings.registry.ttl_ms, 6_000);
        assert_eq!(settings.server.data_dir, PathBuf::from("from-flag"));
        Ok(())
    });
}

#[test]
fn a_bad_value_names_its_key_in_every_section() {
    let cases: &[(&str, &str, &str)] = &[
        ("FLOTILLA_TTL_MS", "10", "ttl_ms"),
        ("FLOTILLA_HEARTBEAT_MS", "0", "heartbeat_ms"),
        ("FLOTILLA_PROBE_TIMEOUT_MS", "0", "probe_timeout_ms"),
        ("FLOTILLA_MAX_BODY_BYTES", "0", "max_body_bytes"),
        (
            "FLOTILLA_HEADER_READ_TIMEOUT_MS",
            "0",
            "header_read_timeout_ms",
        ),
        ("FLOTILLA_IDLE_TIMEOUT_MS", "0", "idle_timeout_ms"),
        ("FLOTILLA_ADVERTISE_HOST", "", "advertise_host"),
        ("FLOTILLA_REQUEST_TIMEOUT_MS", "0", "request_timeout_ms"),
        ("FLOTILLA_REGISTRY_URL", "registry:7070", "registry_url"),
        (
            "FLOTILLA_CHOREOGRAPHY_DEADLINE_MS",
            "0",
            "choreography_deadline_ms",
        ),
        ("FLOTILLA_BREAKER__SUCCESS_THRESHOLD", "0", "breaker"),
        ("FLOTILLA_RETRY__MAX_ATTEMPTS", "0", "retry"),
        (
            "FLOTILLA_MESSAGING__INBOX_RETENTION_MS",
            "60000",
            "inbox_retention_ms",
        ),
        (
            "FLOTILLA_MESSAGING__OUTBOX_RETENTION_MS",
            "0",
            "outbox_retention_ms",
        ),
        ("FLOTILLA_IDENTITY__URL", "idp:7272", "identity.url"),
        (
            "FLOTILLA_IDENTITY__MAX_CLOCK_SKEW_MS",
            "600000",
            "max_clock_skew_ms",
        ),
        (
            "FLOTILLA_IDENTITY__TOKEN_LIFETIME_MS",
            "0",
            "token_lifetime_ms",
        ),
        (
            "FLOTILLA_IDENTITY__PLATFORM_SECRET",
            "short",
            "platform_secret",
        ),
        (
            "FLOTILLA_IDENTITY__ATTEMPTS_PER_ACCOUNT_PER_MINUTE",
            "0",
            "attempts_per_account_per_minute",
        ),
        (
            "FLOTILLA_IDENTITY__CLIENT_ID",
            "order",
            "identity.client_secret",
        ),
        // Values of the wrong type.
        ("FLOTILLA_TTL_MS", "soon", "ttl_ms"),
        ("FLOTILLA_SHUTDOWN_GRACE_MS", "-1", "shutdown_grace_ms"),
        ("FLOTILLA_LOG_FORMAT", "xml", "log_format"),
        ("FLOTILLA_LISTEN", "everywhere", "listen"),
        ("FLOTILLA_ADMIN_API", "maybe", "admin_api"),
        ("FLOTILLA_SAGA_STYLE", "both", "saga_style"),
        ("FLOTILLA_RETRY__MAX_ATTEMPTS", "many", "retry.max_attempts"),
        (
            "FLOTILLA_MESSAGING__TRANSPORT",
            "kafka",
            "messaging.transport",
        ),
        (
            "FLOTILLA_MESSAGING__NO_SUCH_KEY",
            "1",
            "messaging.no_such_key",
        ),
        (
            "FLOTILLA_IDENTITY__CACHE_CAPACITY",
            "many",
            "cache_capacity",
        ),
        (
            "FLOTILLA_RATE_LIMIT__REDIS_URL",
            "rediss://cache:6380",
            "rate_limit.redis_url",
        ),
        (
            "FLOTILLA_RATE_LIMIT__REDIS_URL",
            "cache:6379",
            "rate_limit.redis_url",
        ),
        (
            "FLOTILLA_RATE_LIMIT__REDIS_TIMEOUT_MS",
            "0",
            "rate_limit.redis_timeout_ms",
        ),
        (
            "FLOTILLA_RATE_LIMIT__REDIS_RETRY_MS",
            "1",
            "rate_limit.redis_retry_ms",
        ),
        (
            "FLOTILLA_RATE_LIMIT__KEY_PREFIX",
            "a b",
            "rate_limit.key_prefix",
        ),
        (
            "FLOTILLA_RATE_LIMIT__ON_REDIS_DOWN",
            "panic",
            "on_redis_down",
        ),
        (
            "FLOTILLA_RATE_LIMIT__REDIS_TIMEOUT_MS",
            "soon",
            "redis_timeout_ms",
        ),
    ];
    // Figment names a variable's key as written (`TTL_MS`), a file's in lower case.
    for (name, value, key) in cases {
        jailed(|jail| {
            jail.set_env(name, value);
            let error = Settings::load(None, NoFlags {}).expect_err(name);
            assert!(
                error.to_string().to_lowercase().contains(key),
                "{name}={value}: `{error}` does not name `{key}`"
            );
            Ok(())
        });
    }
    let files: &[(&str, &str)] = &[
        ("ttl_ms = \"soon\"", "ttl_ms"),
        ("registry_url = 7070", "registry_url"),
        ("queue_for_later = \"order\"", "queue_for_later"),
        ("[breaker]\nwait_in_open = 1", "breaker.wait_in_open"),
        ("[messaging]\ntransport = \"kafka\"", "messaging.transport"),
        (
            "[rate_limit]\non_redis_down = \"panic\"",
            "rate_limit.on_redis_down",
        ),
        ("[rate_limit]\nredis = \"x\"", "redis"),
    ];
    for (file, key) in files {
        jailed(|jail| {
            jail.create_file("flotilla.toml", file)?;
            let error =
                Settings::load(Some(Path::new("flotilla.toml")), NoFlags {}).expect_err(file);
            assert!(
                error.to_string().contains(key),
                "{file}: `{error}` does not name `{key}`"
            );
            Ok(())
        });
    }
}

#[test]
fn the_defaults_load_as_they_are_and_no_key_has_two_sections() {
    jailed(|_| {
        assert_eq!(
            Settings::load(None, NoFlags {}).expect("defaults"),
            Settings::default()
        );
        Ok(())
    });
    let keys = |section: serde_json::Value| -> BTreeSet<String> {
        section
            .as_object()
            .expect("a table")
            .keys()
            .cloned()
            .collect()
    };
    let defaults = Settings::default();
    let sections = [
        serde_json::to_value(&defaults.server),
        serde_json::to_value(&defaults.discovery),
        serde_json::to_value(&defaults.registry),
        serde_json::to_value(&defaults.resilience),
        serde_json::to_value(&defaults.gateway),
        serde_json::to_value(&defaults.order),
    ]
    .map(|section| keys(section.expect("serialisable")));
    let mut seen = BTreeSet::from(["messaging".to_owned(), "identity".to_owned()]);
    for section in &sections {
        for key in section {
            assert!(seen.insert(key.clone()), "`{key}` is in two sections");
        }
    }
    let whole = keys(serde_json::to_value(&defaults).expect("serialisable"));
    assert_eq!(whole, seen, "every key of the whole is in one section");
}
