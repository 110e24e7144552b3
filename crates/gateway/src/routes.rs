//! The route table: which service serves which path.

/// One route: requests whose path is `prefix` or starts with `prefix/` go to `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, without a trailing slash.
    pub prefix: String,
    /// Service name in the registry.
    pub service: String,
}

/// The route table, matched by longest prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Default for Routes {
    /// The public API of docs/DESIGN.md.
    fn default() -> Self {
        Self::new([
            ("/v1/orders", "order"),
            ("/v1/products", "inventory"),
            ("/v1/payments", "payment"),
            ("/v1/accounts", "payment"),
            ("/v1/shipments", "shipping"),
        ])
    }
}

impl Routes {
    /// A table from `(prefix, service)` pairs.
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|(prefix, service)| Route {
                prefix: prefix.trim_end_matches('/').to_owned(),
                service: service.to_owned(),
            })
            .collect();
        // Longest prefix first, so that the first match is the most specific.
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self { routes }
    }

    /// The route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| {
            path.strip_prefix(route.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments_only() {
        let routes = Routes::default();
        let service = |path| routes.find(path).map(|r| r.service.as_str());
        assert_eq!(service("/v1/orders"), Some("order"));
        assert_eq!(service("/v1/orders/123/events"), Some("order"));
        assert_eq!(service("/v1/products/SKU-1"), Some("inventory"));
        assert_eq!(service("/v1/accounts/alice"), Some("payment"));
        assert_eq!(service("/v1/ordersx"), None);
        assert_eq!(service("/v2/orders"), None);
        assert_eq!(service("/"), None);
    }

    #[test]
    fn the_longest_prefix_wins() {
        let routes = Routes::new([("/v1", "a"), ("/v1/orders", "b")]);
        assert_eq!(
            routes.find("/v1/orders/1").map(|r| r.service.as_str()),
            Some("b")
        );
        assert_eq!(
            routes.find("/v1/other").map(|r| r.service.as_str()),
            Some("a")
        );
    }
}
