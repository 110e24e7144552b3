//! Per-route transformations: header edits both ways, the upstream path, the fields of a JSON
//! response.
//!
//! This module owns the optional keys of a `[[routes]]` table below (the route parser reads
//! them into a [`TransformSpec`], flattened into its route); [`Transform::check`] turns a spec
//! into a [`Transform`] once, when the route file is loaded.
//!
//! ```toml
//! [[routes]]
//! name = "catalog"
//! service = "inventory"
//! path = "/catalog"
//! # Header names are case-insensitive. Applied in this order: remove, rename (every value moves,
//! # replacing any under the new name), add (replacing any value).
//! request_headers = { add = { x-gateway = "flotilla" }, remove = ["x-debug"], rename = { x-nickname = "x-customer" } }
//! response_headers = { add = { cache-control = "no-store" }, remove = ["server"], rename = { x-internal-id = "x-id" } }
//! # The path sent upstream (with its version already in the URL): a prefix of whole segments
//! # replaced. `/v1/catalog/7` becomes `/v1/products/7`; `/v1/catalogue` is left alone.
//! rewrite = { prefix = "/v1/catalog", to = "/v1/products" }
//! # Keep only these fields of a JSON response: dotted paths into nested objects; a path through
//! # an array applies to each element; a top-level array is filtered element by element.
//! fields = ["sku", "name", "stock.available", "lines.sku"]
//! ```
//!
//! Hop-by-hop and framing headers (`connection`, `transfer-encoding`, `content-length`, `host`,
//! `te`, `upgrade`, `keep-alive`, `trailer`) belong to the proxy and cannot be edited.
//!
//! Fields: a listed path keeps its whole value (`stock` keeps all of `stock`, whatever else names
//! `stock.…`); where a path goes deeper than the body does (a number where an object was
//! expected), the value is dropped; a top-level scalar is left as it is. The filtered body's
//! object keys come out sorted, and its length changes: the caller sets `content-length` again.
//! A JSON key holding a `.` cannot be named.

use std::collections::{BTreeMap, HashSet};

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The transformation keys of a route, as written. The top level takes no
/// `deny_unknown_fields` so that it can be `#[serde(flatten)]`ed into the route's table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TransformSpec {
    /// Edits of the request's headers, before it goes upstream.
    pub request_headers: HeaderEdits,
    /// Edits of the response's headers, before it goes to the client.
    pub response_headers: HeaderEdits,
    /// A prefix of the upstream path replaced.
    pub rewrite: Option<RewriteSpec>,
    /// The fields of a JSON response to keep (dotted paths); empty keeps the body as it is.
    pub fields: Vec<String>,
}

/// Header edits, as written: names and values are strings, checked by [`Transform::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers set, replacing any value: name → value.
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    pub remove: Vec<String>,
    /// Headers renamed: old name → new name.
    pub rename: BTreeMap<String, String>,
}

/// A path rewrite, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewriteSpec {
    /// The prefix replaced (whole segments), starting with `/`.
    pub prefix: String,
    /// What replaces it, starting with `/`.
    pub to: String,
}

/// A checked transformation, ready to apply (header names and values parsed once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transform {
    request: Edits,
    response: Edits,
    rewrite: Option<RewriteSpec>,
    fields: BTreeMap<String, Keep>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Edits {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// What to keep of a field: all of it, or some of its own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keep {
    All,
    Some(BTreeMap<String, Keep>),
}

/// The headers the proxy manages itself.
const RESERVED: [&str; 8] = [
    "connection",
    "transfer-encoding",
    "content-length",
    "host",
    "te",
    "upgrade",
    "keep-alive",
    "trailer",
];

type CheckError = (String, String);

impl Transform {
    /// Checks a spec. An error is `(key, reason)`: the key as written in the route
    /// (`request_headers.add`, `rewrite.prefix`, `fields`, …) and why it is refused.
    pub fn check(spec: TransformSpec) -> Result<Self, CheckError> {
        let rewrite = match spec.rewrite {
            Some(r) => {
                check_path("rewrite.prefix", &r.prefix)?;
                check_path("rewrite.to", &r.to)?;
                (r.prefix != r.to).then_some(r)
            }
            None => None,
        };
        let mut fields = BTreeMap::new();
        for field in &spec.fields {
            let segments: Vec<&str> = field.split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                return Err(error("fields", format!("empty field name in `{field}`")));
            }
            insert_field(&mut fields, &segments);
        }
        Ok(Self {
            request: Edits::check("request_headers", spec.request_headers)?,
            response: Edits::check("response_headers", spec.response_headers)?,
            rewrite,
            fields,
        })
    }

    /// Whether there is nothing to do (the stack skips the layer's work).
    pub fn is_identity(&self) -> bool {
        self.request.is_empty()
            && self.response.is_empty()
            && self.rewrite.is_none()
            && self.fields.is_empty()
    }

    /// Rewrites `path` (no query; normalised, starting with `/`) if the prefix matches at a
    /// segment boundary: `/v1/catalog` matches `/v1/catalog` and `/v1/catalog/7`, not
    /// `/v1/catalogue`. Returns the new path, or `None` if it is unchanged.
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let RewriteSpec { prefix, to } = self.rewrite.as_ref()?;
        if path == prefix {
            return Some(to.clone());
        }
        // `/` as a prefix or a replacement is the empty run of segments.
        let rest = path.strip_prefix(prefix.trim_end_matches('/'))?;
        if !rest.starts_with('/') {
            return None;
        }
        let new = format!("{}{rest}", to.trim_end_matches('/'));
        (new != path).then_some(new)
    }

    /// Applies the request header edits: remove, then rename (every value moves, replacing any
    /// under the new name), then add (replacing any value).
    pub fn request_headers(&self, headers: &mut HeaderMap) {
        self.request.apply(headers);
    }

    /// Applies the response header edits, in the same order as [`Self::request_headers`].
    pub fn response_headers(&self, headers: &mut HeaderMap) {
        self.response.apply(headers);
    }

    /// Whether the JSON body of responses is filtered.
    pub fn filters_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Filters a JSON body to the configured fields: an object keeps only the listed paths, a
    /// top-level array is filtered element by element, and so is an array along a dotted path; a
    /// listed field absent from the body is simply absent. Returns `None` if the body is not
    /// valid JSON (the caller passes it through unchanged).
    /// A top-level scalar, or any body when no fields are configured, comes back as it is.
    pub fn filter_json(&self, body: &[u8]) -> Option<Vec<u8>> {
        let value: Value = serde_json::from_slice(body).ok()?;
        if self.fields.is_empty() || !(value.is_object() || value.is_array()) {
            return Some(body.to_vec());
        }
        serde_json::to_vec(&filter(value, &self.fields)?).ok()
    }
}

impl Edits {
    fn check(key: &str, spec: HeaderEdits) -> Result<Self, CheckError> {
        let mut edits = Self::default();
        let mut seen = HashSet::new();
        for name in &spec.remove {
            edits
                .remove
                .push(header_name(&format!("{key}.remove"), name, &mut seen)?);
        }
        let rename_key = format!("{key}.rename");
        let mut targets = HashSet::new();
        for (old, new) in &spec.rename {
            let old = header_name(&rename_key, old, &mut seen)?;
            let new = header_name(&rename_key, new, &mut targets)?;
            if old == new {
                return Err(error(&rename_key, format!("`{old}` is renamed to itself")));
            }
            edits.rename.push((old, new));
        }
        let add_key = format!("{key}.add");
        let mut added = HashSet::new();
        for (name, value) in &spec.add {
            let name = header_name(&add_key, name, &mut added)?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| error(&add_key, format!("`{value}` is not a header value")))?;
            edits.add.push((name, value));
        }
        Ok(edits)
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.add.is_empty()
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        if !self.rename.is_empty() {
            // All values are taken out before any is put back, so that `a = "b", b = "c"`
            // moves `a` to `b` and the old `b` to `c`, whatever the order.
            let mut moved = Vec::new();
            for (old, new) in &self.rename {
                if let Entry::Occupied(entry) = headers.entry(old) {
                    let values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
                    moved.push((new, values));
                }
            }
            for (new, values) in moved {
                headers.remove(new);
                for value in values {
                    headers.append(new.clone(), value);
                }
            }
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

fn error(key: &str, reason: String) -> CheckError {
    (key.to_owned(), reason)
}

/// Parses a header name the proxy lets a route edit, not yet in `seen`.
fn header_name(
    key: &str,
    name: &str,
    seen: &mut HashSet<HeaderName>,
) -> Result<HeaderName, CheckError> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| error(key, format!("`{name}` is not a header name")))?;
    if RESERVED.contains(&parsed.as_str()) {
        return Err(error(
            key,
            format!("`{parsed}` is a hop-by-hop or framing header: the proxy manages it"),
        ));
    }
    if !seen.insert(parsed.clone()) {
        let reason = format!("`{parsed}` is named twice (names are case-insensitive)");
        return Err(error(key, reason));
    }
    Ok(parsed)
}

/// A normalised path: `/`, or `/` and segments that are neither empty nor `.` nor `..`.
fn check_path(key: &str, path: &str) -> Result<(), CheckError> {
    let Some(segments) = path.strip_prefix('/') else {
        return Err(error(key, "must start with `/`".to_owned()));
    };
    if path.contains(|c: char| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#')) {
        let reason = format!("`{path}` holds a space, a control character, `?` or `#`");
        return Err(error(key, reason));
    }
    let odd = |segment: &str| matches!(segment, "" | "." | "..");
    if !segments.is_empty() && segments.split('/').any(odd) {
        let reason = format!("`{path}` is not normalised (an empty, `.` or `..` segment)");
        return Err(error(key, reason));
    }
    Ok(())
}

fn insert_field(tree: &mut BTreeMap<String, Keep>, segments: &[&str]) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        tree.insert((*first).to_owned(), Keep::All);
        return;
    }
    let node = tree
        .entry((*first).to_owned())
        .or_insert_with(|| Keep::Some(BTreeMap::new()));
    // A field kept whole stays whole.
    if let Keep::Some(children) = node {
        insert_field(children, rest);
    }
}

/// What `keep` leaves of `value`; `None` for a scalar, which has none of the fields asked for.
fn filter(value: Value, keep: &BTreeMap<String, Keep>) -> Option<Value> {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                let kept = match keep.get(&key) {
                    Some(Keep::All) => Some(value),
                    Some(Keep::Some(children)) => filter(value, children),
                    None => None,
                };
                if let Some(kept) = kept {
                    out.insert(key, kept);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => Some(Value::Array(
            items
                .into_iter()
                .filter_map(|item| filter(item, keep))
                .collect(),
        )),
        _ => None,
    }
}

/// The largest JSON answer whose fields are filtered; a larger one passes unfiltered.
pub const FILTER_BODY_LIMIT: u64 = 1024 * 1024;

/// Layer of [`TransformService`].
#[derive(Debug, Clone)]
pub struct TransformLayer(std::sync::Arc<Transform>);

impl TransformLayer {
    /// Applies `transform`.
    pub fn new(transform: Transform) -> Self {
        Self(std::sync::Arc::new(transform))
    }
}

impl<S> tower::Layer<S> for TransformLayer {
    type Service = TransformService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TransformService {
            inner,
            transform: self.0.clone(),
        }
    }
}

/// Changes a request on its way up (path, headers) and its answer on its way down (headers,
/// JSON fields).
#[derive(Debug, Clone)]
pub struct TransformService<S> {
    inner: S,
    transform: std::sync::Arc<Transform>,
}

type Answer = Result<axum::response::Response, flotilla_discovery::outbound::Failure>;

impl<S> tower::Service<flotilla_discovery::outbound::Exchange> for TransformService<S>
where
    S: tower::Service<
            flotilla_discovery::outbound::Exchange,
            Response = axum::response::Response,
            Error = flotilla_discovery::outbound::Failure,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = axum::response::Response;
    type Error = flotilla_discovery::outbound::Failure;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut exchange: flotilla_discovery::outbound::Exchange) -> Self::Future {
        use tower::ServiceExt as _;
        let inner = self.inner.clone();
        if self.transform.is_identity() {
            return Box::pin(inner.oneshot(exchange));
        }
        let transform = self.transform.clone();
        let (path, query) = match exchange.path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (exchange.path_and_query.as_str(), None),
        };
        if let Some(rewritten) = transform.rewrite_path(path) {
            exchange.path_and_query = match query {
                Some(query) => format!("{rewritten}?{query}"),
                None => rewritten,
            };
        }
        transform.request_headers(&mut exchange.headers);
        let deadline = exchange.deadline;
        let service = exchange.service.clone();
        Box::pin(async move {
            let mut response = inner.oneshot(exchange).await?;
            transform.response_headers(response.headers_mut());
            if transform.filters_fields() {
                response = filter_fields(&transform, &service, response, deadline).await?;
            }
            Ok(response)
        })
    }
}

/// The answer with its JSON body filtered, if it is JSON of known size within the limit.
async fn filter_fields(
    transform: &Transform,
    service: &str,
    response: axum::response::Response,
    deadline: tokio::time::Instant,
) -> Answer {
    use http_body_util::BodyExt as _;
    let json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let essence = value.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
        });
    let small = http_body::Body::size_hint(response.body())
        .exact()
        .is_some_and(|length| length <= FILTER_BODY_LIMIT);
    if !json || !small {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let body = match tokio::time::timeout_at(deadline, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => {
            return Err(flotilla_discovery::outbound::Failure::upstream(
                service,
                format!("the answer of `{service}` broke off"),
            ));
        }
    };
    let body = match transform.filter_json(&body) {
        Some(filtered) => bytes::Bytes::from(filtered),
        None => body,
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(axum::response::Response::from_parts(
        parts,
        axum::body::Body::from(body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform(toml_text: &str) -> Result<Transform, CheckError> {
        #[derive(Deserialize)]
        struct Route {
            #[allow(dead_code)]
            name: String,
            #[serde(flatten)]
            spec: TransformSpec,
        }
        let route: Route = toml::from_str(toml_text).expect("toml");
        Transform::check(route.spec)
    }

    fn ok(toml_text: &str) -> Transform {
        transform(&format!("name = \"r\"\n{toml_text}")).expect("valid")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn values(map: &HeaderMap, name: &str) -> Vec<String> {
        let all = map.get_all(name).iter();
        all.map(|v| v.to_str().expect("ascii").to_owned()).collect()
    }

    #[test]
    fn spec_parses_flattened_from_toml() {
        let text = r#"
            name = "catalog"
            request_headers = { add = { x-gateway = "flotilla" }, remove = ["x-debug"], rename = { x-nickname = "x-customer" } }
            response_headers = { add = { cache-control = "no-store" }, remove = ["server"] }
            rewrite = { prefix = "/v1/catalog", to = "/v1/products" }
            fields = ["sku", "stock.available"]
        "#;
        let t = transform(text).expect("valid");
        assert!(!t.is_identity() && t.filters_fields());
        assert_eq!(t.request.rename.len(), 1);
        assert!(transform("name = \"r\"").expect("empty").is_identity());
        let unknown = "name = \"r\"\nrequest_headers = { added = {} }";
        #[derive(Deserialize)]
        struct Route {
            #[serde(flatten)]
            _spec: TransformSpec,
        }
        let rejected = toml::from_str::<Route>(unknown).err();
        let rejected = rejected.map(|e| e.to_string()).unwrap_or_default();
        assert!(rejected.contains("added"), "{rejected}");
    }

    #[test]
    fn add_replaces_remove_removes() {
        let t = ok(r#"request_headers = { add = { X-Gw = "flotilla" }, remove = ["X-Debug"] }"#);
        let mut map = headers(&[("x-gw", "a"), ("x-gw", "b"), ("x-debug", "1")]);
        t.request_headers(&mut map);
        assert_eq!(values(&map, "x-gw"), ["flotilla"]);
        assert!(!map.contains_key("x-debug"));
        let mut response = headers(&[("x-debug", "1")]);
        t.response_headers(&mut response);
        assert_eq!(values(&response, "x-debug"), ["1"], "its own edits");
    }

    #[test]
    fn rename_moves_every_value_case_insensitively() {
        let t = ok(r#"response_headers.rename = { X-User = "X-Customer", a = "b", b = "c" }"#);
        let mut map = headers(&[("x-user", "1"), ("X-USER", "2"), ("x-customer", "old")]);
        map.extend(headers(&[("a", "A"), ("b", "B")]));
        t.response_headers(&mut map);
        assert!(!map.contains_key("x-user") && !map.contains_key("a"));
        assert_eq!(values(&map, "X-Customer"), ["1", "2"]);
        assert_eq!([values(&map, "b"), values(&map, "c")], [["A"], ["B"]]);
    }

    #[test]
    fn edits_remove_then_rename_then_add() {
        let t = ok(r#"request_headers = { remove = ["a"], rename.b = "a", add.b = "new" }"#);
        let mut map = headers(&[("a", "old"), ("b", "moved")]);
        t.request_headers(&mut map);
        assert_eq!([values(&map, "a"), values(&map, "b")], [["moved"], ["new"]]);
    }

    #[test]
    fn rewrite_at_segment_boundaries_only() {
        // prefix, to, path, the rewritten path or `-` for none
        let cases = [
            "/v1/catalog /v1/products /v1/catalog /v1/products",
            "/v1/catalog /v1/products /v1/catalog/7 /v1/products/7",
            "/v1/catalog /v1/products /v1/catalog/ /v1/products/",
            "/v1/catalog /v1/products /v1/catalogue -",
            "/v1/catalog /v1/products /v1 -",
            "/v1/catalog / /v1/catalog /",
            "/v1/catalog / /v1/catalog/7 /7",
            "/ /api / /api",
            "/ /api /x/y /api/x/y",
            "/a /a /a/b -",
        ];
        for case in cases {
            let [prefix, to, path, want] = case.split(' ').collect::<Vec<_>>()[..] else {
                panic!("{case}");
            };
            let t = ok(&format!("rewrite = {{ prefix = {prefix:?}, to = {to:?} }}"));
            let got = t.rewrite_path(path);
            assert_eq!(got.as_deref().unwrap_or("-"), want, "{case}");
        }
        assert!(ok(r#"rewrite = { prefix = "/a", to = "/a" }"#).is_identity());
    }

    fn filtered(t: &Transform, body: &str) -> String {
        String::from_utf8(t.filter_json(body.as_bytes()).expect("json")).expect("utf-8")
    }

    #[test]
    fn fields_filter_objects_arrays_and_nested_paths() {
        let t = ok(r#"fields = ["sku", "stock.available", "lines.sku", "missing", "tags"]"#);
        let body = r#"{"sku":"a","name":"n","stock":{"available":3,"reserved":1},
            "lines":[{"sku":"x","qty":1},{"qty":2},7],"tags":[1,{"a":1}]}"#;
        let want =
            r#"{"lines":[{"sku":"x"},{}],"sku":"a","stock":{"available":3},"tags":[1,{"a":1}]}"#;
        assert_eq!(filtered(&t, body), want);
        assert_eq!(
            filtered(&t, r#"[{"sku":"a","name":"n"},{"name":"m"}]"#),
            r#"[{"sku":"a"},{}]"#
        );
        assert_eq!(filtered(&t, r#"{"stock":5,"name":"n"}"#), "{}");
        assert_eq!(filtered(&t, " 42"), " 42");
        let whole = ok(r#"fields = ["stock.available", "stock"]"#);
        let body = r#"{"stock":{"a":1,"b":2}}"#;
        assert_eq!(filtered(&whole, body), body);
        assert_eq!(filtered(&Transform::default(), body), body);
    }

    #[test]
    fn non_json_is_none() {
        let t = ok(r#"fields = ["sku"]"#);
        for body in [&b"<html>"[..], b"{\"sku\":", b"", &[0xff, 0xfe]] {
            assert_eq!(t.filter_json(body), None);
        }
    }

    #[test]
    fn every_check_error_names_its_key() {
        // key | part of the reason | TOML
        let cases = [
            r#"request_headers.add|not a header name|request_headers.add."bad name" = "v""#,
            r#"request_headers.add|not a header value|request_headers.add.x-a = "a\nb""#,
            r#"request_headers.add|twice|request_headers.add = { X-A = "1", x-a = "2" }"#,
            r#"request_headers.remove|hop-by-hop|request_headers.remove = ["Connection"]"#,
            r#"response_headers.remove|twice|response_headers.remove = ["x", "X"]"#,
            r#"response_headers.rename|framing|response_headers.rename.a = "Content-Length""#,
            r#"response_headers.rename|itself|response_headers.rename.x-a = "X-A""#,
            r#"response_headers.rename|twice|response_headers.rename = { a = "c", b = "c" }"#,
            r#"response_headers.rename|twice|response_headers = { remove = ["a"], rename.a = "b" }"#,
            r#"rewrite.prefix|must start with `/`|rewrite = { prefix = "v1", to = "/" }"#,
            r#"rewrite.prefix|not normalised|rewrite = { prefix = "/v1/", to = "/" }"#,
            r#"rewrite.to|not normalised|rewrite = { prefix = "/v1", to = "/a/../b" }"#,
            r#"rewrite.to|`?`|rewrite = { prefix = "/v1", to = "/a?b" }"#,
            r#"fields|empty field name in `a..b`|fields = ["a..b"]"#,
            r#"fields|empty field name in ``|fields = ["ok", ""]"#,
        ];
        for case in cases {
            let [key, reason, text] = case.splitn(3, '|').collect::<Vec<_>>()[..] else {
                panic!("{case}");
            };
            let (got_key, got_reason) =
                transform(&format!("name = \"r\"\n{text}")).expect_err(text);
            assert_eq!(got_key, key, "{text}");
            assert!(got_reason.contains(reason), "{text}: {got_reason}");
        }
    }
}
