use super::*;

fn head<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> Head<'a> {
    Head {
        method,
        path,
        headers,
    }
}

/// `(service, upstream path)` for a GET of `path` with `headers`.
fn route_of(routes: &Routes, path: &str, headers: &[(&str, &str)]) -> Option<(String, String)> {
    route_with(routes, &Method::GET, path, headers)
}

fn route_with(
    routes: &Routes,
    method: &Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(String, String)> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    routes
        .find(head(method, path, &map))
        .map(|matched| (matched.route.name.clone(), matched.upstream_path))
}

fn pair(name: &str, path: &str) -> Option<(String, String)> {
    Some((name.to_owned(), path.to_owned()))
}

#[test]
fn the_shipped_file_reproduces_the_public_api() {
    let routes = Routes::default();
    let cases = [
        ("/v1/orders", pair("orders", "/v1/orders")),
        (
            "/v1/orders/123/events",
            pair("orders", "/v1/orders/123/events"),
        ),
        ("/v1/products/SKU-1", pair("products", "/v1/products/SKU-1")),
        ("/v1/payments", pair("payments", "/v1/payments")),
        ("/v1/accounts/alice", pair("accounts", "/v1/accounts/alice")),
        ("/v1/shipments/9", pair("shipments", "/v1/shipments/9")),
        ("/v1/ordersx", None),
        ("/v2/orders", None),
        ("/v1", None),
        ("/", None),
    ];
    for (path, expected) in cases {
        assert_eq!(route_of(&routes, path, &[]), expected, "{path}");
    }
    assert_eq!(
        routes.services(),
        ["inventory", "order", "payment", "shipping"]
    );
}

#[test]
fn the_version_comes_from_the_url_or_the_api_version_header() {
    let routes = Routes::default();
    let by_header = route_of(&routes, "/orders/7", &[("api-version", "1")]);
    assert_eq!(
        by_header,
        pair("orders", "/v1/orders/7"),
        "sent with the version in the URL"
    );
    let spelled = route_of(&routes, "/orders", &[("api-version", "v1")]);
    assert_eq!(spelled, pair("orders", "/v1/orders"));
    let both = route_of(&routes, "/v1/orders", &[("api-version", "1")]);
    assert_eq!(both, pair("orders", "/v1/orders"));
    assert_eq!(route_of(&routes, "/orders", &[("api-version", "2")]), None);
    assert_eq!(route_of(&routes, "/orders", &[]), None, "no version at all");
    let conflict = route_of(&routes, "/v1/orders", &[("api-version", "2")]);
    assert_eq!(conflict, None, "two versions: no versioned route");
    let garbage = route_of(&routes, "/v1/orders", &[("api-version", "latest")]);
    assert_eq!(garbage, None, "an unreadable version is not ignored");
}

const MATCHERS: &str = r#"
[[routes]]
name = "catch-all"
service = "fallback"
path = "/"

[[routes]]
name = "orders"
service = "order"
path = "/api/orders"

[[routes]]
name = "order-events"
service = "events"
path = "/api/orders/{id}/events"
methods = ["get"]

[[routes]]
name = "files"
service = "files"
path = "/api/files/{*rest}"

[[routes]]
name = "acme-orders"
service = "acme"
path = "/api/orders"
host = "*.acme.example"

[[routes]]
name = "beta-orders"
service = "beta"
path = "/api/orders"
headers = { x-beta = "on", x-user = "*" }

[[routes]]
name = "order-writes"
service = "writer"
path = "/api/orders"
methods = ["POST", "PUT"]
"#;

#[test]
fn each_matcher_narrows_and_the_most_specific_route_wins() {
    let routes = Routes::parse(MATCHERS).expect("valid");
    let get = |path: &str, headers: &[(&str, &str)]| {
        route_of(&routes, path, headers).map(|(name, _)| name)
    };
    let named = |name: &str| Some(name.to_owned());
    // Path: prefix, template, rest; the catch-all takes what nothing else does.
    assert_eq!(get("/api/orders/1", &[]), named("orders"));
    assert_eq!(get("/api/orders/1/events", &[]), named("order-events"));
    assert_eq!(
        get("/api/orders/1/events/x", &[]),
        named("orders"),
        "a template matches whole"
    );
    assert_eq!(get("/api/files/a/b/c", &[]), named("files"));
    assert_eq!(get("/elsewhere", &[]), named("catch-all"));
    // Host: a suffix pattern, port ignored, case folded; not the bare suffix.
    assert_eq!(
        get("/api/orders", &[("host", "eu.ACME.example:8080")]),
        named("acme-orders")
    );
    assert_eq!(
        get("/api/orders", &[("host", "acme.example")]),
        named("orders")
    );
    // Headers: a value and a presence, both needed.
    let beta = [("x-beta", "on"), ("x-user", "u1")];
    assert_eq!(get("/api/orders", &beta), named("beta-orders"));
    assert_eq!(get("/api/orders", &[("x-beta", "on")]), named("orders"));
    assert_eq!(
        get("/api/orders", &[("x-beta", "off"), ("x-user", "u1")]),
        named("orders")
    );
    // Host over headers, headers over methods.
    let both = [
        ("host", "a.acme.example"),
        ("x-beta", "on"),
        ("x-user", "u"),
    ];
    assert_eq!(get("/api/orders", &both), named("acme-orders"));
    let post = |headers: &[(&str, &str)]| {
        route_with(&routes, &Method::POST, "/api/orders", headers).map(|(name, _)| name)
    };
    assert_eq!(post(&[]), named("order-writes"));
    assert_eq!(post(&beta), named("beta-orders"));
    // Methods: the events route takes GET only; a POST falls to the write route, a DELETE to
    // the plain prefix.
    let post_events = route_with(&routes, &Method::POST, "/api/orders/1/events", &[]);
    assert_eq!(post_events.map(|(name, _)| name), named("order-writes"));
    let delete = route_with(&routes, &Method::DELETE, "/api/orders/1/events", &[]);
    assert_eq!(delete.map(|(name, _)| name), named("orders"));
}

#[test]
fn among_equals_the_first_written_wins() {
    let routes = Routes::parse(
        r#"
        [[routes]]
        name = "first"
        service = "a"
        path = "/x"
        [[routes]]
        name = "second"
        service = "b"
        path = "/x"
        "#,
    )
    .expect("valid");
    assert_eq!(
        route_of(&routes, "/x/1", &[])
            .map(|(name, _)| name)
            .as_deref(),
        Some("first")
    );
}

#[test]
fn a_route_file_with_an_error_names_the_route_and_the_key() {
    let cases = [
        (
            "name = \"a\"\nservice = \"s\"\npath = \"/a\"\nmethds = [\"GET\"]",
            "route `a`",
            "methds",
        ),
        (
            "name = \"b\"\nservice = \"s\"\npath = \"b\"",
            "route `b`, key `path`",
            "start with /",
        ),
        (
            "name = \"c\"\nservice = \"s\"\npath = \"/c/{id\"",
            "route `c`, key `path`",
            "whole segment",
        ),
        (
            "name = \"d\"\nservice = \"s\"\npath = \"/d/{*rest}/x\"",
            "route `d`, key `path`",
            "last segment",
        ),
        (
            "name = \"e\"\nservice = \"S!\"\npath = \"/e\"",
            "route `e`, key `service`",
            "a-z",
        ),
        (
            "name = \"f\"\nservice = \"s\"\npath = \"/f\"\nmethods = [\"G T\"]",
            "route `f`, key `methods`",
            "no method",
        ),
        (
            "name = \"g\"\nservice = \"s\"\npath = \"/g\"\nhost = \"a b\"",
            "route `g`, key `host`",
            "no host",
        ),
        (
            "name = \"h\"\nservice = \"s\"\npath = \"/h\"\nheaders = { \"a b\" = \"1\" }",
            "route `h`, key `headers`",
            "no header name",
        ),
        (
            "name = \"i\"\nservice = \"s\"\npath = \"/i\"\nversion = 0",
            "route `i`, key `version`",
            "start at 1",
        ),
        ("service = \"s\"\npath = \"/j\"", "route `#1`", "name"),
        (
            "name = \"k\"\nservice = \"s\"\npath = \"/k\"\ntimeout_ms = 0",
            "route `k`, key `timeout_ms`",
            "above 0",
        ),
        (
            "name = \"l\"\nservice = \"s\"\npath = \"/l\"\nfallback = { kind = \"cached\", max_age_ms = 0 }",
            "route `l`, key `fallback`",
            "max_age_ms",
        ),
        (
            "name = \"m\"\nservice = \"s\"\npath = \"/m\"\nfallback = { kind = \"default\", status = 99 }",
            "route `m`, key `fallback`",
            "no final status",
        ),
        (
            "name = \"n\"\nservice = \"s\"\npath = \"/n\"\nfallback = { kind = \"service\", service = \"s\" }",
            "route `n`, key `fallback`",
            "the route's own",
        ),
        (
            "name = \"o\"\nservice = \"s\"\npath = \"/o\"\nfallback = { kind = \"later\" }",
            "route `o`",
            "later",
        ),
        (
            "name = \"p\"\nservice = \"s\"\npath = \"/p\"\nrequest_headers = { add = { \"a b\" = \"1\" } }",
            "route `p`, key `request_headers.add`",
            "a b",
        ),
        (
            "name = \"q\"\nservice = \"s\"\npath = \"/q\"\nrewrite = { prefix = \"q\", to = \"/r\" }",
            "route `q`, key `rewrite.prefix`",
            "/",
        ),
    ];
    for (route, names, reason) in cases {
        let text = format!("[[routes]]\n{route}\n");
        let error = Routes::parse(&text).expect_err(route).to_string();
        assert!(error.contains(names), "{error}");
        assert!(error.contains(reason), "{error}");
    }
    let upstreams = [
        (
            "weights = { v1 = 0 }",
            "upstream `s`, key `balance`",
            "weights",
        ),
        (
            "weights = { v1 = 9, v2 = 1 }\ncanary = \"v3\"",
            "upstream `s`, key `balance`",
            "canary",
        ),
        (
            "retry = { max_attempts = 0 }",
            "upstream `s`, key `retry`",
            "max_attempts",
        ),
        (
            "bulkhead = { max_concurrent = 0 }",
            "upstream `s`, key `bulkhead`",
            "max_concurrent",
        ),
        ("balance = \"fastest\"", "upstream `s`", "fastest"),
        ("retries = 3", "upstream `s`", "retries"),
    ];
    for (section, names, reason) in upstreams {
        let text = format!(
            "[[routes]]\nname = \"a\"\nservice = \"s\"\npath = \"/a\"\n\n[upstreams.s]\n{section}\n"
        );
        let error = Routes::parse(&text).expect_err(section).to_string();
        assert!(error.contains(names), "{error}");
        assert!(error.contains(reason), "{error}");
    }
    let twice = "[[routes]]\nname = \"a\"\nservice = \"s\"\npath = \"/a\"\n".repeat(2);
    let error = Routes::parse(&twice).expect_err("a name twice").to_string();
    assert!(error.contains("route `a`, key `name`"), "{error}");
}

#[test]
fn a_rate_limit_or_quota_error_names_the_route_and_the_key() {
    let cases = [
        (
            "rate_limit = { per_second = 0 }",
            "rate_limit",
            "per_second",
        ),
        (
            "rate_limit = { per_second = 5, burst = 0 }",
            "rate_limit",
            "burst",
        ),
        ("rate_limit = { per_sec = 5 }", "rate_limit", "per_sec"),
        ("rate_limit = { burst = 5 }", "rate_limit", "per_second"),
        ("rate_limit = 5", "rate_limit", "struct"),
        (
            "rate_limit = { per_second = 1e10 }",
            "rate_limit",
            "1e-6 to 1e9",
        ),
        (
            "quota = { limit = 0, period = \"day\" }",
            "quota",
            "at least 1",
        ),
        (
            "quota = { limit = 5, period = \"fortnight\" }",
            "quota",
            "fortnight",
        ),
        ("quota = { limit = 5, period = \"400d\" }", "quota", "366d"),
        ("quota = { limit = 5 }", "quota", "period"),
        ("quota = { limit = -5, period = \"day\" }", "quota", "-5"),
        (
            "quota = { limit = 5, period = \"day\", by = \"ip\" }",
            "quota",
            "by",
        ),
    ];
    for (keys, key, reason) in cases {
        let text =
            format!("[[routes]]\nname = \"orders\"\nservice = \"s\"\npath = \"/o\"\n{keys}\n");
        let error = Routes::parse(&text).expect_err(keys).to_string();
        assert!(
            error.contains(&format!("route `orders`, key `{key}`")),
            "{keys}: {error}"
        );
        assert!(error.contains(reason), "{keys}: {error}");
    }
    let routes = Routes::parse(
        "[[routes]]\nname = \"orders\"\nservice = \"s\"\npath = \"/o\"\n\
         rate_limit = { per_second = 10, burst = 20 }\nquota = { limit = 1000, period = \"day\" }\n",
    )
    .expect("valid");
    let limits = &routes.iter().next().expect("a route").limits;
    let rate = limits.rate.expect("a bucket").config();
    assert_eq!((rate.per_second, rate.burst), (10.0, 20));
    assert_eq!(
        limits.quota,
        Some(crate::routes::Quota {
            limit: 1000,
            period: Duration::from_secs(86_400)
        })
    );
}
