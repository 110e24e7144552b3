//! The limits kept in Redis, so that every gateway with the same `redis_url` and `key_prefix`
//! enforces one limit.
//!
//! Each call runs [`SCRIPT`], a Lua script, atomically on the server: it refills the client's
//! bucket, checks its quota window, and takes a token and a unit only if both allow the call.
//! Time is the server's (`TIME`), so the gateways' clocks do not matter. The script is sent by
//! its SHA-1 (`EVALSHA`), and whole (`EVAL`) when the server does not know it (`NOSCRIPT`: a
//! restarted or flushed Redis).
//!
//! | key | what | expires |
//! | --- | --- | --- |
//! | `PREFIX:{ROUTE:CLIENT}:b` | the bucket: `tokens`, `at` (server time, µs) | once it would be full again (a missing bucket is a full one) |
//! | `PREFIX:{ROUTE:CLIENT}:q` | the quota: `window` (periods since the epoch), `used` | at the end of its window |
//!
//! The braces make both keys of a client one hash slot, should the server be a cluster.
//!
//! **When Redis does not answer** within `redis_timeout_ms` (a hung server holds no request
//! longer), the store counts as down: the gateway says so once in its log, sets
//! [`REDIS_UP`] to 0, and decides every limited call as `on_redis_down` says (counted in
//! [`FALLBACK`]) without asking Redis, until a check every `redis_retry_ms` finds it back;
//! then it says so once more and the limits are shared again. The connection reconnects by
//! itself (redis-rs's connection manager).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;

use super::client::Client;
use super::verdict::{Left, Policy, Usage, Verdict};
use crate::routes::Limits;
use crate::settings::{OnRedisDown, RateLimitSettings};

/// Counter: limited calls decided without Redis while it was down, by `action`
/// (`on_redis_down`: `local`, `allow` or `deny`).
pub const FALLBACK: &str = "gateway_ratelimit_fallback_total";
/// Gauge: 1 while the limits are shared through Redis, 0 while Redis is down.
pub const REDIS_UP: &str = "gateway_ratelimit_redis_up";

/// Registers the HELP text of this module's metrics (once the recorder exists).
pub fn describe_metrics() {
    metrics::describe_counter!(
        FALLBACK,
        "Rate-limited calls decided without Redis while it was down, by action (on_redis_down)"
    );
    metrics::describe_gauge!(
        REDIS_UP,
        "Whether the rate limits are shared through Redis (1) or Redis is down (0)"
    );
}

/// The token bucket and the quota of one client on one route, checked and taken at once.
///
/// `KEYS[1]` the bucket, `KEYS[2]` the quota; `ARGV` the rate per second (0: no bucket), the
/// burst, the quota's limit (0: no quota) and its period in seconds. Answers `{verdict,
/// tokens left, µs to the next token, quota left, µs to the next window}`, the verdict 1
/// (admitted), 0 (the bucket is empty) or 2 (the quota is spent). Lua numbers are doubles:
/// exact for server times in microseconds until the year 2255.
pub const SCRIPT: &str = r"
local clock = redis.call('TIME')
local seconds = tonumber(clock[1])
local now = seconds * 1000000 + tonumber(clock[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local period = tonumber(ARGV[4])

local tokens = 0
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local left, at = tonumber(bucket[1]), tonumber(bucket[2])
  if left == nil or at == nil then
    tokens = burst
  elseif now > at then
    tokens = math.min(burst, left + (now - at) * rate / 1000000)
  else
    tokens = math.min(burst, left)
  end
end

local window, used, reset = 0, 0, 0
if limit > 0 then
  window = math.floor(seconds / period)
  reset = (window + 1) * period * 1000000 - now
  local count = redis.call('HMGET', KEYS[2], 'window', 'used')
  if tonumber(count[1]) == window then
    used = tonumber(count[2]) or 0
  end
  if used >= limit then
    return {2, math.floor(tokens), 0, 0, reset}
  end
end

if rate > 0 and tokens < 1 then
  return {0, 0, math.ceil((1 - tokens) * 1000000 / rate), limit - used, reset}
end

local next_token = 0
if rate > 0 then
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
  if tokens < burst then
    next_token = math.ceil((math.floor(tokens) + 1 - tokens) * 1000000 / rate)
  end
end
if limit > 0 then
  used = used + 1
  redis.call('HSET', KEYS[2], 'window', window, 'used', used)
  redis.call('PEXPIRE', KEYS[2], math.ceil(reset / 1000) + 1000)
end
return {1, math.floor(tokens), next_token, limit - used, reset}
";

/// The limits' store in Redis, shared by every route of the gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    /// [`SCRIPT`]'s SHA-1, in hex.
    sha: String,
    /// The URL without its password, for the log.
    shown: String,
    prefix: String,
    timeout: Duration,
    retry: Duration,
    on_down: OnRedisDown,
    /// Whether calls go to Redis.
    up: AtomicBool,
    /// Wakes the watcher when Redis goes down (or the store is dropped).
    wake: Arc<Notify>,
    fallback: metrics::Counter,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("redis", &self.shown)
            .field("prefix", &self.prefix)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The watcher ends when it finds the store gone.
        self.wake.notify_one();
    }
}

/// Why a call to Redis did not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within `redis_timeout_ms`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the server failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The script answered something it never answers.
    #[error("unexpected answer from the rate limit script: {0:?}")]
    Answer(Vec<i64>),
}

impl Store {
    /// The store `settings` name, if any; its connection is made in the background (the
    /// limits fall back as `on_redis_down` says until it is up). Fails outside a tokio
    /// runtime, or if the URL is not one (the settings' check refuses those first).
    pub fn connect(settings: &RateLimitSettings) -> Result<Option<Self>, String> {
        let Some(url) = &settings.redis_url else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the Redis rate limit store needs a tokio runtime".to_owned())?;
        let client = redis::Client::open(url.as_str())
            .map_err(|error| format!("rate_limit.redis_url: {error}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.redis_retry().max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(settings.redis_retry());
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| format!("rate_limit.redis_url: {error}"))?;
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            connection,
            sha: sha1_hex(SCRIPT),
            shown: without_password(url),
            prefix: settings.key_prefix.clone(),
            timeout: settings.redis_timeout(),
            retry: settings.redis_retry(),
            on_down: settings.on_redis_down,
            // Up until a call or the watcher's first check fails.
            up: AtomicBool::new(true),
            wake: wake.clone(),
            fallback: metrics::counter!(FALLBACK, "action" => settings.on_redis_down.label()),
        });
        runtime.spawn(watch(Arc::downgrade(&inner), wake));
        Ok(Some(Self { inner }))
    }

    /// What the limits do while Redis is down.
    pub fn on_down(&self) -> OnRedisDown {
        self.inner.on_down
    }

    /// The time between checks of a Redis that is down.
    pub fn retry(&self) -> Duration {
        self.inner.retry
    }

    /// Whether the limits are shared through Redis now.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Counts a call of `client` on route `route` with `limits` in Redis; `None` if Redis is
    /// down (or just failed: then it is down from now on, said once), for the caller to fall
    /// back as [`Store::on_down`] says.
    pub async fn check(&self, route: &str, client: &Client, limits: &Limits) -> Option<Verdict> {
        let inner = &*self.inner;
        if inner.up.load(Ordering::Acquire) {
            match self.ask(route, client, limits).await {
                Ok(verdict) => return Some(verdict),
                Err(error) => self.went_down(&error),
            }
        }
        inner.fallback.increment(1);
        None
    }

    /// Runs the script for one call, within the timeout.
    pub async fn ask(
        &self,
        route: &str,
        client: &Client,
        limits: &Limits,
    ) -> Result<Verdict, StoreError> {
        let inner = &*self.inner;
        let tag = format!("{}:{{{route}:{client}}}", inner.prefix);
        let (rate, burst) = limits
            .rate
            .map(|rate| (rate.config().per_second, rate.config().burst))
            .unwrap_or((0.0, 0));
        let (limit, period) = limits
            .quota
            .map(|quota| (quota.limit, quota.period.as_secs()))
            .unwrap_or((0, 0));
        let command = |verb: &str, script: &str| {
            let mut command = redis::cmd(verb);
            command
                .arg(script)
                .arg(2)
                .arg(format!("{tag}:b"))
                .arg(format!("{tag}:q"))
                .arg(rate)
                .arg(burst)
                .arg(limit)
                .arg(period);
            command
        };
        let mut connection = inner.connection.clone();
        let answer = async {
            match command("EVALSHA", &inner.sha)
                .query_async::<Vec<i64>>(&mut connection)
                .await
            {
                Err(error)
                    if error.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    command("EVAL", SCRIPT)
                        .query_async::<Vec<i64>>(&mut connection)
                        .await
                }
                answer => answer,
            }
        };
        let answer = tokio::time::timeout(inner.timeout, answer)
            .await
            .map_err(|_| StoreError::Timeout(inner.timeout))??;
        verdict_of(&answer, limits).ok_or(StoreError::Answer(answer))
    }

    /// Redis failed a call: from now on calls fall back, until the watcher finds it back.
    fn went_down(&self, error: &StoreError) {
        self.inner.went_down(error);
    }
}

impl Inner {
    /// See [`Store::went_down`]; said once per change.
    fn went_down(&self, error: &StoreError) {
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!(REDIS_UP).set(0.0);
            tracing::warn!(
                redis = %self.shown,
                %error,
                on_redis_down = self.on_down.label(),
                "rate limits: Redis does not answer; deciding without it until it is back"
            );
            self.wake.notify_one();
        }
    }

    /// Redis answered: calls go to it again; said once per change (and at start).
    fn came_up(&self, first: bool) {
        if !self.up.swap(true, Ordering::AcqRel) || first {
            metrics::gauge!(REDIS_UP).set(1.0);
            tracing::info!(redis = %self.shown, prefix = %self.prefix, "rate limits: shared through Redis");
        }
    }
}

/// While the store lives: loads the script at start, and whenever Redis is down every `retry`
/// until it answers; sleeps while it is up.
async fn watch(store: Weak<Inner>, wake: Arc<Notify>) {
    let mut first = true;
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        if !first && inner.up.load(Ordering::Acquire) {
            drop(inner);
            wake.notified().await;
            continue;
        }
        let mut connection = inner.connection.clone();
        let mut command = redis::cmd("SCRIPT");
        command.arg("LOAD").arg(SCRIPT);
        let load = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(inner.retry, load).await {
            Ok(Ok(_)) => {
                inner.came_up(first);
                first = false;
                continue;
            }
            Ok(Err(error)) => inner.went_down(&StoreError::Redis(error)),
            Err(_) => inner.went_down(&StoreError::Timeout(inner.retry)),
        }
        first = false;
        let retry = inner.retry;
        drop(inner);
        tokio::time::sleep(retry).await;
    }
}

/// The verdict the script's `answer` gives for `limits`.
fn verdict_of(answer: &[i64], limits: &Limits) -> Option<Verdict> {
    let &[verdict, tokens, next_token, quota_left, reset] = answer else {
        return None;
    };
    let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let quota = |remaining| {
        limits.quota.map(|_| Left {
            remaining,
            reset: micros(reset),
        })
    };
    match verdict {
        1 => Some(Verdict::Admitted(Usage {
            rate: limits.rate.map(|_| Left {
                remaining: count(tokens),
                reset: micros(next_token),
            }),
            quota: quota(count(quota_left)),
        })),
        0 => Some(Verdict::Refused {
            policy: Policy::Rate,
            retry_after: micros(next_token),
            usage: Usage {
                rate: Some(Left {
                    remaining: 0,
                    reset: micros(next_token),
                }),
                quota: quota(count(quota_left)),
            },
        }),
        2 => Some(Verdict::Refused {
            policy: Policy::Quota,
            retry_after: micros(reset),
            usage: Usage {
                rate: None,
                quota: quota(0),
            },
        }),
        _ => None,
    }
}

/// `text`'s SHA-1 in lower-case hex, as Redis names a script.
fn sha1_hex(text: &str) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(40), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// `url` without the password, if it has one.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flotilla_testkit::REDIS;

    use super::*;
    use crate::routes::Routes;

    /// A connection to the test server; `None` (said) if it does not answer outside CI.
    async fn test_redis() -> Option<(String, redis::aio::MultiplexedConnection)> {
        REDIS
            .reach(|url| async move {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let connect = client.get_multiplexed_async_connection();
                let mut connection = tokio::time::timeout(Duration::from_secs(2), connect)
                    .await
                    .map_err(|_| "no answer within 2 s".to_owned())?
                    .map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((url, connection))
            })
            .await
    }

    /// A store on `url` with a key prefix of its own.
    fn store(url: &str) -> Store {
        let settings = RateLimitSettings {
            redis_url: Some(url.to_owned()),
            redis_timeout_ms: 2_000,
            key_prefix: format!("flotilla-test:{}", uuid::Uuid::now_v7().simple()),
            ..RateLimitSettings::default()
        };
        Store::connect(&settings).expect("a store").expect("a URL")
    }

    /// Deletes the keys `store` wrote (some would stay for a day).
    async fn forget(store: &Store, connection: &mut redis::aio::MultiplexedConnection) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", store.inner.prefix))
            .query_async(connection)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(keys)
                .query_async::<i64>(connection)
                .await;
        }
    }

    fn limits(keys: &str) -> Limits {
        let text = format!("[[routes]]\nname = \"r\"\nservice = \"s\"\npath = \"/r\"\n{keys}");
        let routes = Routes::parse(&text).expect("routes");
        routes.iter().next().expect("a route").limits.clone()
    }

    fn user(name: &str) -> Client {
        Client::User(Arc::from(name))
    }

    #[tokio::test]
    async fn the_script_takes_a_token_and_a_unit_only_when_both_allow() {
        let Some((url, mut connection)) = test_redis().await else {
            return;
        };
        let store = store(&url);
        let both = limits(
            "rate_limit = { per_second = 0.001, burst = 3 }\nquota = { limit = 4, period = \"day\" }",
        );
        for (tokens, quota) in [(2, 3), (1, 2), (0, 1)] {
            let verdict = store
                .ask("r", &user("alice"), &both)
                .await
                .expect("an answer");
            let Verdict::Admitted(usage) = verdict else {
                panic!("within the limits: {verdict:?}");
            };
            let (rate, left) = (usage.rate.expect("a bucket"), usage.quota.expect("a quota"));
            assert_eq!((rate.remaining, left.remaining), (tokens, quota));
            // The next token in 1000 s at 0.001/s, a hair less as the bucket refills.
            assert!(
                rate.reset > Duration::from_secs(990) && rate.reset <= Duration::from_secs(1_000)
            );
            assert!(left.reset <= Duration::from_secs(86_400));
        }
        let refused = store
            .ask("r", &user("alice"), &both)
            .await
            .expect("an answer");
        let Verdict::Refused {
            policy: Policy::Rate,
            retry_after,
            usage,
        } = refused
        else {
            panic!("the bucket is empty: {refused:?}");
        };
        assert!(retry_after > Duration::from_secs(990), "{retry_after:?}");
        assert_eq!(
            usage.quota.map(|left| left.remaining),
            Some(1),
            "the refused call cost no quota"
        );
        // Bob has his own bucket and quota; the route's other client keys do not mix.
        assert!(matches!(
            store
                .ask("r", &user("bob"), &both)
                .await
                .expect("an answer"),
            Verdict::Admitted(_)
        ));
        assert!(matches!(
            store
                .ask("other", &user("alice"), &both)
                .await
                .expect("an answer"),
            Verdict::Admitted(_)
        ));

        let quota = limits("quota = { limit = 2, period = \"1h\" }");
        for _ in 0..2 {
            let verdict = store
                .ask("q", &user("carol"), &quota)
                .await
                .expect("an answer");
            assert!(matches!(verdict, Verdict::Admitted(_)), "{verdict:?}");
        }
        let refused = store
            .ask("q", &user("carol"), &quota)
            .await
            .expect("an answer");
        let Verdict::Refused {
            policy: Policy::Quota,
            retry_after,
            usage,
        } = refused
        else {
            panic!("the quota is spent: {refused:?}");
        };
        assert!(retry_after <= Duration::from_secs(3_600) && retry_after > Duration::ZERO);
        assert_eq!(usage.quota.map(|left| left.remaining), Some(0));
        forget(&store, &mut connection).await;
    }

    #[tokio::test]
    async fn the_bucket_refills_on_the_servers_clock() {
        let Some((url, mut connection)) = test_redis().await else {
            return;
        };
        let store = store(&url);
        let rate = limits("rate_limit = { per_second = 20, burst = 1 }");
        let dave = user("dave");
        assert!(matches!(
            store.ask("r", &dave, &rate).await.expect("an answer"),
            Verdict::Admitted(_)
        ));
        let Verdict::Refused { retry_after, .. } =
            store.ask("r", &dave, &rate).await.expect("an answer")
        else {
            panic!("one token a 50 ms");
        };
        assert!(retry_after <= Duration::from_millis(50), "{retry_after:?}");
        tokio::time::sleep(retry_after + Duration::from_millis(10)).await;
        let verdict = store.ask("r", &dave, &rate).await.expect("an answer");
        let Verdict::Admitted(usage) = verdict else {
            panic!("a token came back: {verdict:?}");
        };
        assert_eq!(usage.rate.map(|left| left.remaining), Some(0));
        forget(&store, &mut connection).await;
    }

    #[tokio::test]
    async fn a_server_that_lost_the_script_gets_it_whole() {
        let Some((url, mut connection)) = test_redis().await else {
            return;
        };
        let store = store(&url);
        let rate = limits("rate_limit = { per_second = 1, burst = 5 }");
        // Other tests' calls find the script gone too, and send it whole as this one does.
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut connection)
            .await
            .expect("SCRIPT FLUSH");
        let verdict = store
            .ask("r", &user("erin"), &rate)
            .await
            .expect("EVAL after NOSCRIPT");
        assert!(matches!(verdict, Verdict::Admitted(_)), "{verdict:?}");
        let known: Vec<i64> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(sha1_hex(SCRIPT))
            .query_async(&mut connection)
            .await
            .expect("SCRIPT EXISTS");
        assert_eq!(known, [1], "EVAL left the script cached under its SHA-1");
        forget(&store, &mut connection).await;
    }

    #[test]
    fn the_script_is_named_by_its_sha1_and_the_password_is_never_shown() {
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            without_password("redis://:s3cret@cache:6379/2"),
            "redis://cache:6379/2"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
