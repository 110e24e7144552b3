//! Serving a test's own HTTP router as a service instance would be served: on a loopback port of
//! its own, ready as soon as it listens; and an address where no instance listens, for failover
//! tests. What the router answers is the test's business.

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

/// Serves `router` on `127.0.0.1:0`, with a `GET /readyz` that answers `ok` (so a registry's
/// prober finds it ready), until the test's runtime ends; returns its address (`127.0.0.1:PORT`),
/// the form an instance registers.
pub async fn serve_instance(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let router = router.route("/readyz", get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// An address on loopback on which nothing listens (a port bound, then let go): connections to
/// it are refused, as they are to an instance that died.
pub async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").to_string()
}
