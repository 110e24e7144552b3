//! Each transformation of the route file, through the whole gateway.

use http::{Method, StatusCode};

use super::harness::*;

const ROUTES: &str = r#"
[[routes]]
name = "catalog"
service = "catalog"
path = "/catalog"
version = 1
request_headers = { add = { x-gateway = "flotilla" }, remove = ["x-debug"], rename = { x-nickname = "x-customer" } }
response_headers = { add = { cache-control = "no-store" }, remove = ["server"], rename = { x-internal-id = "x-id" } }
rewrite = { prefix = "/v1/catalog", to = "/v1/products" }

[[routes]]
name = "catalog-summary"
service = "catalog"
path = "/summary"
version = 1
fields = ["sku", "stock.available"]
"#;

/// The gateway with one instance of `catalog` registered (kept while the harness lives).
async fn gateway() -> (Harness, flotilla_discovery::Registration) {
    let harness = harness_routes(ROUTES).await;
    let (address, _) = named_upstream("catalog-1").await;
    let registration = register(&harness, "catalog", &address).await;
    wait_for(&harness, "/v1/catalog/7", StatusCode::OK).await;
    (harness, registration)
}

#[tokio::test]
async fn request_headers_are_added_removed_and_renamed() {
    let (harness, _) = gateway().await;
    let (status, _, body) = harness
        .get_with(
            "/v1/catalog/7",
            &[
                ("x-debug", "1"),
                ("x-nickname", "ada"),
                ("x-gateway", "spoofed"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["x-gateway"], "flotilla", "added, replacing");
    assert!(headers.get("x-debug").is_none(), "removed: {headers}");
    assert!(
        headers.get("x-nickname").is_none(),
        "renamed away: {headers}"
    );
    assert_eq!(headers["x-customer"], "ada", "renamed to");
}

#[tokio::test]
async fn response_headers_are_added_removed_and_renamed() {
    let (harness, _) = gateway().await;
    let (status, headers, _) = harness.get("/v1/catalog/7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!headers.contains_key("server"), "{headers:?}");
    assert!(!headers.contains_key("x-internal-id"), "{headers:?}");
    assert_eq!(headers["x-id"], "7");
}

#[tokio::test]
async fn the_path_is_rewritten_at_a_segment_boundary_with_its_query() {
    let (harness, _) = gateway().await;
    let (_, _, body) = harness.get("/v1/catalog/7?fields=all").await;
    assert_eq!(body["path"], "/v1/products/7?fields=all");
    // The version header leads to the same route and the same rewrite.
    let (_, _, body) = harness.get_with("/catalog", &[("api-version", "1")]).await;
    assert_eq!(body["path"], "/v1/products");
    // `/v1/catalogue` is not under `/v1/catalog`: no route.
    let (status, _, _) = harness.get("/v1/catalogue").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn json_fields_are_filtered_for_the_frontend() {
    let (harness, _) = gateway().await;
    let (status, headers, text) = call_text(
        Method::GET,
        &format!("{}/v1/summary", harness.gateway),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({ "sku": "SKU-1", "stock": { "available": 4 } })
    );
    assert_eq!(
        headers["content-length"].to_str().ok(),
        Some(text.len().to_string().as_str()),
        "the length of the filtered body"
    );
}
