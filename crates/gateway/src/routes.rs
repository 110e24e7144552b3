//! The route table: which service serves a request, read from a route file.
//!
//! A route matches on the request's path (a prefix of whole segments, or a template with
//! parameters), and optionally its host, its method, some of its headers and its API version
//! (in the URL, `/v1/…`, or in an `API-Version` header). It names the service that serves it.
//! The shipped file, `config/gateway.toml`, reproduces the public API; it is also the table the
//! gateway uses when no file is configured ([`Routes::default`]).
//!
//! ```toml
//! [[routes]]
//! name = "orders"            # unique; errors and metrics name the route by it
//! service = "order"          # the upstream, as registered
//! path = "/orders"           # a prefix of whole segments…
//! version = 1                # …under /v1, or with `API-Version: 1`
//!
//! [[routes]]
//! name = "order-events"
//! service = "order"
//! path = "/v1/orders/{id}/events"   # a template: `{name}` is one segment, `{*name}` the rest
//! methods = ["GET"]
//! host = "*.example.com"            # exact, or `*.` and a suffix; the port is ignored
//! headers = { x-tenant = "acme", x-debug = "*" }   # a value, or `*` for "present"
//! ```
//!
//! **Who may call.** Every route needs a valid bearer token unless it says `auth = "public"`;
//! `roles` asks for any one of them, `scopes` for all of them:
//!
//! ```toml
//! [[routes]]
//! name = "catalog"
//! service = "inventory"
//! path = "/products"
//! version = 1
//! auth = "public"                  # or "authenticated", the default
//!
//! [[routes]]
//! name = "admin-orders"
//! service = "order"
//! path = "/admin/orders"
//! roles = ["admin"]                # any of these roles…
//! scopes = ["orders:read"]         # …and every one of these scopes
//! ```
//!
//! **How often.** A route may limit each client (the token's subject for a user, its client id
//! for a machine, the address for an anonymous caller) with a token bucket and a quota per
//! period; see [`crate::ratelimit`]:
//!
//! ```toml
//! [[routes]]
//! name = "orders"
//! service = "order"
//! path = "/orders"
//! version = 1
//! rate_limit = { per_second = 10, burst = 20 }   # burst defaults to a second's worth
//! quota = { limit = 1000, period = "day" }        # second, minute, hour, day, or 15m, 12h, 7d…
//! ```
//!
//! **Precedence.** When several routes match, the most specific wins: more literal path
//! segments first, then a template over a prefix, then a route with a host, with more header
//! conditions, with methods, with a version; among equals, the one written first.
//!
//! **Versions.** A route with `version = N` matches a request whose version is `N`: the
//! `API-Version` header's (`N` or `vN`) if it has one, else its path's first segment `vN`
//! (then the route's path is matched against the rest). A request naming two different
//! versions matches no versioned route. The upstream always receives the version in the URL:
//! `/orders` with `API-Version: 1` is forwarded as `/v1/orders`.
//!
//! The table is a value: the gateway holds it behind a pointer it can swap (a later
//! configuration server changes routes live without dropping requests in flight).

mod limits;
mod policy;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

pub use self::limits::{Limits, MAX_PERIOD, Quota, Rate};
pub use self::policy::{DEFAULT_BULKHEAD, Fallback, UpstreamSpec};
use crate::transform::{Transform, TransformSpec};

/// The route file shipped with Flotilla: the public API of `docs/DESIGN.md`.
pub const SHIPPED: &str = include_str!("../../../config/gateway.toml");

/// One route, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its name, unique in the table.
    pub name: String,
    /// The service that serves it.
    pub service: String,
    path: PathPattern,
    methods: Vec<Method>,
    host: Option<HostPattern>,
    headers: Vec<(HeaderName, HeaderCondition)>,
    version: Option<u32>,
    /// The deadline of a call, retries included (`timeout_ms`); the process's
    /// `request_timeout_ms` if `None`.
    pub timeout: Option<Duration>,
    /// Whether a failed call may be sent again (`retry = false` turns it off).
    pub retry: bool,
    /// What to answer when the upstream cannot (`fallback`); the upstream's default if `None`.
    pub fallback: Option<Fallback>,
    /// How the request and its answer are changed on the way.
    pub transform: Transform,
    /// Who may call it (`auth`, `roles`, `scopes`).
    pub access: Access,
    /// How often each client may call it (`rate_limit`, `quota`).
    pub limits: Limits,
}

/// Who may call a route: anyone, or the bearer of a valid token, which may need some roles
/// and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`auth = "public"`); a token, if sent, is forwarded unchecked.
    Public,
    /// A valid bearer token (`auth = "authenticated"`, the default).
    Authenticated {
        /// The token must carry at least one of these roles (any role if empty).
        roles: Vec<String>,
        /// The token must carry every one of these scopes.
        scopes: Vec<String>,
    },
}

impl Access {
    /// Whether the route needs a token.
    pub fn needs_token(&self) -> bool {
        matches!(self, Access::Authenticated { .. })
    }
}

/// The `auth` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthSpec {
    Public,
    #[default]
    Authenticated,
}

/// What a request offers to be matched.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its path, normalised.
    pub path: &'a str,
    /// Its headers (`Host` and `API-Version` among them).
    pub headers: &'a HeaderMap,
}

/// A matched route and the path to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// The path for the upstream: the request's, with its version in the URL.
    pub upstream_path: String,
    /// The route's position in [`Routes::iter`].
    pub index: usize,
}

/// The route table.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    /// In precedence order.
    routes: Vec<Route>,
    /// The `[upstreams.NAME]` sections.
    upstreams: BTreeMap<String, UpstreamSpec>,
}

impl Default for Routes {
    /// The shipped table ([`SHIPPED`]).
    fn default() -> Self {
        match Self::parse(SHIPPED) {
            Ok(routes) => routes,
            // The shipped file is checked by a test; a build cannot ship a broken one.
            Err(error) => unreachable!("the shipped route file is invalid: {error}"),
        }
    }
}

/// A route file that cannot be used: the message names the route and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(String);

impl RouteError {
    fn of(route: &str, key: &str, reason: impl fmt::Display) -> Self {
        Self(format!("route `{route}`, key `{key}`: {reason}"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    routes: Vec<toml::Value>,
    #[serde(default)]
    upstreams: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    service: String,
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    version: Option<u32>,
    timeout_ms: Option<u64>,
    retry: Option<bool>,
    fallback: Option<policy::FallbackSpec>,
    #[serde(default)]
    request_headers: crate::transform::HeaderEdits,
    #[serde(default)]
    response_headers: crate::transform::HeaderEdits,
    rewrite: Option<crate::transform::RewriteSpec>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    auth: AuthSpec,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    // Read on their own, for their errors to name the key.
    rate_limit: Option<toml::Value>,
    quota: Option<toml::Value>,
}

impl Routes {
    /// Reads and checks the route file at `path`.
    pub fn load(path: &Path) -> Result<Self, RouteError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| RouteError(format!("{}: {error}", path.display())))?;
        Self::parse(&text)
            .map_err(|RouteError(message)| RouteError(format!("{}: {message}", path.display())))
    }

    /// Reads and checks a route file's text.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let file: File = toml::from_str(text).map_err(|error| RouteError(error.to_string()))?;
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(file.routes.len());
        for (n, value) in file.routes.into_iter().enumerate() {
            let label = value
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", n + 1), str::to_owned);
            let spec = Spec::deserialize(value)
                .map_err(|error| RouteError(format!("route `{label}`: {}", error.message())))?;
            let route = Route::check(spec)?;
            if !names.insert(route.name.clone()) {
                return Err(RouteError::of(
                    &route.name,
                    "name",
                    "another route has this name",
                ));
            }
            routes.push(route);
        }
        // Stable: among equals, the order of the file.
        routes.sort_by_key(|route| std::cmp::Reverse(route.specificity()));
        let mut upstreams = BTreeMap::new();
        for (service, value) in file.upstreams {
            let spec = UpstreamSpec::deserialize(value).map_err(|error| {
                RouteError(format!("upstream `{service}`: {}", error.message()))
            })?;
            spec.check().map_err(|(key, reason)| {
                RouteError(format!("upstream `{service}`, key `{key}`: {reason}"))
            })?;
            upstreams.insert(service, spec);
        }
        for route in &routes {
            if let Some(Fallback::Service(other)) = &route.fallback
                && *other == route.service
            {
                return Err(RouteError::of(
                    &route.name,
                    "fallback",
                    "the alternative service is the route's own",
                ));
            }
        }
        Ok(Self { routes, upstreams })
    }

    /// A table with no route: every request is 404.
    pub fn empty() -> Self {
        Self {
            routes: Vec::new(),
            upstreams: BTreeMap::new(),
        }
    }

    /// The `[upstreams.NAME]` section of `service` (empty if the file has none).
    pub fn upstream(&self, service: &str) -> UpstreamSpec {
        self.upstreams.get(service).cloned().unwrap_or_default()
    }

    /// The route for `head` and the path to send upstream, if any route matches.
    pub fn find(&self, head: Head<'_>) -> Option<Matched<'_>> {
        let versions = Versions::of(head);
        self.routes
            .iter()
            .enumerate()
            .find_map(|(index, route)| route.matches(head, &versions, index))
    }

    /// Every route, in precedence order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The first route that needs a token, if any (the gateway then needs a verifier).
    pub fn first_protected(&self) -> Option<&Route> {
        self.routes.iter().find(|route| route.access.needs_token())
    }

    /// The services the routes lead to (their alternatives included), each once, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut services: Vec<String> = self
            .routes
            .iter()
            .flat_map(|route| {
                let alternative = match &route.fallback {
                    Some(Fallback::Service(other)) => Some(other.clone()),
                    _ => None,
                };
                std::iter::once(route.service.clone()).chain(alternative)
            })
            .collect();
        services.sort();
        services.dedup();
        services
    }
}

impl Route {
    fn check(spec: Spec) -> Result<Self, RouteError> {
        let name = spec.name;
        let valid_name = |value: &str| {
            !value.is_empty()
                && value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !valid_name(&name) {
            return Err(RouteError::of(
                &name,
                "name",
                "use 1 to 63 of a-z, 0-9 and -",
            ));
        }
        if !valid_name(&spec.service) {
            return Err(RouteError::of(
                &name,
                "service",
                "use 1 to 63 of a-z, 0-9 and -",
            ));
        }
        let path = PathPattern::parse(&spec.path)
            .map_err(|reason| RouteError::of(&name, "path", reason))?;
        let methods = spec
            .methods
            .iter()
            .map(|method| {
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    RouteError::of(&name, "methods", format!("`{method}` is no method"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let host = spec
            .host
            .as_deref()
            .map(HostPattern::parse)
            .transpose()
            .map_err(|reason| RouteError::of(&name, "host", reason))?;
        let headers = spec
            .headers
            .iter()
            .map(|(header, value)| {
                let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    RouteError::of(&name, "headers", format!("`{header}` is no header name"))
                })?;
                let condition = if value == "*" {
                    HeaderCondition::Present
                } else {
                    HeaderValue::from_str(value)
                        .map(HeaderCondition::Equals)
                        .map_err(|_| {
                            RouteError::of(
                                &name,
                                "headers",
                                format!("`{header}`'s value is no header value"),
                            )
                        })?
                };
                Ok((header_name, condition))
            })
            .collect::<Result<Vec<_>, RouteError>>()?;
        if spec.version == Some(0) {
            return Err(RouteError::of(&name, "version", "versions start at 1"));
        }
        if spec.timeout_ms == Some(0) {
            return Err(RouteError::of(&name, "timeout_ms", "must be above 0"));
        }
        let fallback = spec
            .fallback
            .map(policy::FallbackSpec::check)
            .transpose()
            .map_err(|reason| RouteError::of(&name, "fallback", reason))?;
        if let Some(Fallback::Service(other)) = &fallback
            && !valid_name(other)
        {
            return Err(RouteError::of(
                &name,
                "fallback",
                "the service: use 1 to 63 of a-z, 0-9 and -",
            ));
        }
        let transform = Transform::check(TransformSpec {
            request_headers: spec.request_headers,
            response_headers: spec.response_headers,
            rewrite: spec.rewrite,
            fields: spec.fields,
        })
        .map_err(|(key, reason)| RouteError::of(&name, &key, reason))?;
        let access = Self::check_access(&name, spec.auth, spec.roles, spec.scopes)?;
        let limits = Limits {
            rate: check_key(
                &name,
                "rate_limit",
                spec.rate_limit,
                limits::RateSpec::check,
            )?,
            quota: check_key(&name, "quota", spec.quota, limits::QuotaSpec::check)?,
        };
        Ok(Self {
            name,
            service: spec.service,
            path,
            methods,
            host,
            headers,
            version: spec.version,
            timeout: spec.timeout_ms.map(Duration::from_millis),
            retry: spec.retry.unwrap_or(true),
            fallback,
            transform,
            access,
            limits,
        })
    }

    fn check_access(
        name: &str,
        auth: AuthSpec,
        roles: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<Access, RouteError> {
        // A role or scope is one token of printable ASCII without spaces (RFC 6749's scope-token).
        let valid = |value: &String| {
            !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        };
        for (key, values) in [("roles", &roles), ("scopes", &scopes)] {
            if let Some(bad) = values.iter().find(|value| !valid(value)) {
                return Err(RouteError::of(
                    name,
                    key,
                    format!("`{bad}`: use 1 to 64 printable characters, no space or quote"),
                ));
            }
        }
        match auth {
            AuthSpec::Public if !roles.is_empty() || !scopes.is_empty() => {
                let key = if roles.is_empty() { "scopes" } else { "roles" };
                Err(RouteError::of(
                    name,
                    key,
                    "a public route asks for no role or scope (set auth = \"authenticated\")",
                ))
            }
            AuthSpec::Public => Ok(Access::Public),
            AuthSpec::Authenticated => Ok(Access::Authenticated { roles, scopes }),
        }
    }

    /// Higher is more specific.
    fn specificity(&self) -> (usize, bool, bool, usize, bool, bool) {
        (
            self.path.literals(),
            matches!(self.path, PathPattern::Template(_)),
            self.host.is_some(),
            self.headers.len(),
            !self.methods.is_empty(),
            self.version.is_some(),
        )
    }

    fn matches(&self, head: Head<'_>, versions: &Versions, index: usize) -> Option<Matched<'_>> {
        if !self.methods.is_empty() && !self.methods.contains(head.method) {
            return None;
        }
        if let Some(host) = &self.host {
            let requested = head
                .headers
                .get(http::header::HOST)
                .and_then(|value| value.to_str().ok())?;
            if !host.matches(requested) {
                return None;
            }
        }
        let headers_hold = self.headers.iter().all(|(name, condition)| {
            let value = head.headers.get(name);
            match condition {
                HeaderCondition::Present => value.is_some(),
                HeaderCondition::Equals(expected) => value == Some(expected),
            }
        });
        if !headers_hold {
            return None;
        }
        match self.version {
            None => self.path.matches(head.path).then(|| Matched {
                route: self,
                upstream_path: head.path.to_owned(),
                index,
            }),
            Some(version) => {
                if versions.conflict || versions.of_request() != Some(version) {
                    return None;
                }
                let rest = match versions.in_url {
                    Some(_) => versions.rest(head.path),
                    None => head.path,
                };
                self.path.matches(rest).then(|| Matched {
                    route: self,
                    upstream_path: format!("/v{version}{}", if rest == "/" { "" } else { rest }),
                    index,
                })
            }
        }
    }
}

/// The value of `key` of route `route`, read as `S` and checked with `check`, if present.
fn check_key<S, T>(
    route: &str,
    key: &str,
    value: Option<toml::Value>,
    check: impl FnOnce(S) -> Result<T, String>,
) -> Result<Option<T>, RouteError>
where
    S: serde::de::DeserializeOwned,
{
    let Some(value) = value else {
        return Ok(None);
    };
    let spec =
        S::deserialize(value).map_err(|error| RouteError::of(route, key, error.message()))?;
    check(spec)
        .map(Some)
        .map_err(|reason| RouteError::of(route, key, reason))
}

/// The versions a request names.
#[derive(Debug)]
struct Versions {
    in_header: Option<u32>,
    in_url: Option<u32>,
    /// Length of the URL's version segment (`/v1`), to strip it.
    segment: usize,
    conflict: bool,
}

impl Versions {
    fn of(head: Head<'_>) -> Self {
        let in_header = head
            .headers
            .get("api-version")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_version(value.trim()));
        let first = head
            .path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        let in_url = first
            .strip_prefix('v')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok());
        let conflict = matches!((in_header, in_url), (Some(h), Some(u)) if h != u)
            || (head.headers.contains_key("api-version") && in_header.is_none());
        Self {
            in_header,
            in_url,
            segment: first.len() + 1,
            conflict,
        }
    }

    fn of_request(&self) -> Option<u32> {
        self.in_header.or(self.in_url)
    }

    /// `path` without its version segment (`/v1/orders` → `/orders`, `/v1` → `/`).
    fn rest<'p>(&self, path: &'p str) -> &'p str {
        match path.get(self.segment..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => "/",
        }
    }
}

/// `1` or `v1`.
fn parse_version(value: &str) -> Option<u32> {
    let digits = value.strip_prefix(['v', 'V']).unwrap_or(value);
    digits.parse().ok().filter(|version| *version > 0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    /// Whole segments: `/v1/orders` matches itself and `/v1/orders/…`.
    Prefix(String),
    /// Segment by segment; the last may be a rest parameter.
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Parameter,
    Rest,
}

impl PathPattern {
    fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("`{path}` does not start with /"));
        }
        if !path.contains('{') && !path.contains('}') {
            let prefix = path.trim_end_matches('/');
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        let pieces: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut segments = Vec::with_capacity(pieces.len());
        for (n, piece) in pieces.iter().enumerate() {
            let segment = match piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) if inner.starts_with('*') => {
                    if n + 1 != pieces.len() {
                        return Err(format!("`{piece}` must be the last segment of `{path}`"));
                    }
                    Segment::Rest
                }
                Some(inner) if !inner.is_empty() && !inner.contains(['{', '}']) => {
                    Segment::Parameter
                }
                Some(_) => return Err(format!("`{piece}` in `{path}` is no parameter")),
                None if piece.contains(['{', '}']) => {
                    return Err(format!(
                        "a parameter takes a whole segment: `{piece}` in `{path}`"
                    ));
                }
                None if piece.is_empty() => {
                    return Err(format!("`{path}` has an empty segment"));
                }
                None => Segment::Literal((*piece).to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self::Template(segments))
    }

    fn literals(&self) -> usize {
        match self {
            Self::Prefix(prefix) => prefix.split('/').filter(|s| !s.is_empty()).count(),
            Self::Template(segments) => segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count(),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty()),
            Self::Template(segments) => {
                let mut pieces = path.trim_start_matches('/').split('/');
                for segment in segments {
                    match (segment, pieces.next()) {
                        (Segment::Rest, _) => return true,
                        (Segment::Parameter, Some(piece)) if !piece.is_empty() => {}
                        (Segment::Literal(literal), Some(piece)) if literal == piece => {}
                        _ => return false,
                    }
                }
                pieces.next().is_none_or(str::is_empty)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn parse(host: &str) -> Result<Self, String> {
        let host = host.to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        match host.strip_prefix("*.") {
            Some(suffix) if valid(suffix) => Ok(Self::Suffix(format!(".{suffix}"))),
            None if valid(&host) => Ok(Self::Exact(host)),
            _ => Err(format!("`{host}` is no host name or `*.` pattern")),
        }
    }

    fn matches(&self, requested: &str) -> bool {
        // The port, if any, is not part of the match.
        let name = match requested.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => requested,
        };
        let name = name.to_ascii_lowercase();
        match self {
            Self::Exact(host) => name == *host,
            Self::Suffix(suffix) => name.ends_with(suffix.as_str()) && name.len() > suffix.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderCondition {
    Present,
    Equals(HeaderValue),
}

#[cfg(test)]
mod tests;
