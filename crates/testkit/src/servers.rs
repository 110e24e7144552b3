//! The servers some tests need on the machine (PostgreSQL, NATS, Redis): where each is, and
//! what a test does when it cannot reach it.
//!
//! A server's URL comes from its variable (`FLOTILLA_TEST_POSTGRES_URL`,
//! `FLOTILLA_TEST_NATS_URL`, `FLOTILLA_TEST_REDIS_URL`) or its default. When it cannot be reached, the test fails under CI
//! (the variable `CI` is set: CI never skips silently) and elsewhere skips, saying so in one
//! `skipped: …` line. That line is written to the process's stderr handle, not with
//! `eprintln!`: libtest captures the printing macros of a passing test and would hide it, so
//! that `cargo test` would report as passed a test that never ran.

use std::fmt::Display;
use std::io::Write;

/// A server some tests need.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    /// What it is, as the messages name it.
    pub name: &'static str,
    /// The variable that gives its URL.
    pub variable: &'static str,
    /// Its URL when the variable is unset.
    pub default_url: &'static str,
}

/// The PostgreSQL server (`FLOTILLA_TEST_POSTGRES_URL`).
pub const POSTGRES: Server = Server {
    name: "PostgreSQL",
    variable: "FLOTILLA_TEST_POSTGRES_URL",
    default_url: "postgres://postgres@127.0.0.1:5432/postgres",
};

/// The NATS server with JetStream (`FLOTILLA_TEST_NATS_URL`).
pub const NATS: Server = Server {
    name: "NATS",
    variable: "FLOTILLA_TEST_NATS_URL",
    default_url: "nats://127.0.0.1:4222",
};

/// The Redis server (`FLOTILLA_TEST_REDIS_URL`), which the gateway's shared rate limits use.
pub const REDIS: Server = Server {
    name: "Redis",
    variable: "FLOTILLA_TEST_REDIS_URL",
    default_url: "redis://127.0.0.1:6379",
};

impl Server {
    /// Its URL: the variable's value, or the default.
    pub fn url(&self) -> String {
        std::env::var(self.variable).unwrap_or_else(|_| self.default_url.to_owned())
    }

    /// Connects with `connect(url)`; on failure, [`Server::unreachable`].
    pub async fn reach<T, E: Display, Fut>(&self, connect: impl FnOnce(String) -> Fut) -> Option<T>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let url = self.url();
        match connect(url.clone()).await {
            Ok(connected) => Some(connected),
            Err(error) => self.unreachable(&url, error),
        }
    }

    /// The server at `url` did not answer (`error`): [`skip`] with
    /// `no NAME at URL (ERROR); start it or set VARIABLE`.
    ///
    /// # Panics
    /// Under CI.
    pub fn unreachable<T>(&self, url: &str, error: impl Display) -> Option<T> {
        skip(&self.missing(url, error))
    }

    fn missing(&self, url: &str, error: impl Display) -> String {
        format!(
            "no {} at {url} ({error}); start it or set {}",
            self.name, self.variable
        )
    }
}

/// Whether this runs under CI (the variable `CI` is set), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// The test cannot run here, for `reason`: under CI it fails; elsewhere it writes
/// `skipped: REASON` (and the test's name) in one line that `cargo test` shows, and answers
/// `None`, for the test to return.
///
/// # Panics
/// Under CI, with the reason.
pub fn skip<T>(reason: &str) -> Option<T> {
    // Straight to the handle, which libtest does not capture (see the module's docs).
    say_skipped(&mut std::io::stderr().lock(), in_ci(), reason);
    None
}

/// [`skip`]'s verdict and line, written to `out`.
fn say_skipped(out: &mut impl Write, ci: bool, reason: &str) {
    assert!(!ci, "required in CI: {reason}");
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(|name| format!(" [{name}]"))
        .unwrap_or_default();
    // A failed write has nowhere better to go.
    let _ = writeln!(out, "skipped: {reason}{test}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTHING: Server = Server {
        name: "Nothing",
        variable: "FLOTILLA_TEST_NO_SUCH_VARIABLE",
        default_url: "none://here",
    };

    #[test]
    fn a_server_url_is_its_variable_or_the_default() {
        assert_eq!(NOTHING.url(), "none://here");
    }

    #[test]
    fn a_skip_is_one_line_naming_the_server_the_variable_and_the_test() {
        let mut out = Vec::new();
        say_skipped(&mut out, false, &NOTHING.missing("none://here", "refused"));
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "skipped: no Nothing at none://here (refused); start it or set \
             FLOTILLA_TEST_NO_SUCH_VARIABLE \
             [servers::tests::a_skip_is_one_line_naming_the_server_the_variable_and_the_test]\n"
        );
    }

    #[test]
    #[should_panic(expected = "required in CI: no Nothing at none://here (refused)")]
    fn under_ci_a_missing_server_fails_the_test() {
        say_skipped(
            &mut Vec::new(),
            true,
            &NOTHING.missing("none://here", "refused"),
        );
    }
}
