//! HTTP calls to a system: the gateway's API, and any instance's address directly.

use std::time::Duration;

use bytes::Bytes;
use flotilla_testkit::body_bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body: JSON, or the text as a JSON string.
    pub body: Value,
}

/// The calls a test makes against the gateway, usable from another task (cheap to clone).
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The gateway's base URL.
    pub gateway: String,
    /// `Bearer …`: the token every call to the gateway carries unless it sends its own.
    pub authorization: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    /// Calls to the gateway at `gateway` (a base URL) with the bearer `token`.
    pub fn new(gateway: String, token: &str) -> Self {
        Self {
            gateway,
            authorization: format!("Bearer {token}"),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Any request, to any URL; the answer must come within 15 s. A request to the gateway
    /// without an `Authorization` header of its own carries the client's token; an empty
    /// `authorization` value sends none.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        self.try_call(method, url, headers, body)
            .await
            .unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    /// [`Gateway::call`], with the failure to get an answer (nothing listening, no answer within
    /// 15 s) as an error instead of a panic.
    pub async fn try_call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let mut request = http::Request::builder().method(method).uri(url);
        let own = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        if !own && url.starts_with(&self.gateway) {
            request = request.header("authorization", &self.authorization);
        }
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("authorization") && value.is_empty() {
                continue;
            }
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(15), self.http.request(request))
            .await
            .map_err(|_| "no answer within 15 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = body_bytes(response).await;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// GET `path` through the gateway.
    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, &format!("{}{path}", self.gateway), &[], None)
            .await
    }

    /// POST the JSON text `body` to `path` through the gateway.
    pub async fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.call(
            Method::POST,
            &format!("{}{path}", self.gateway),
            &all,
            Some(body.as_bytes().to_vec()),
        )
        .await
    }

    /// POST an order through the gateway.
    pub async fn post_order(&self, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.post("/v1/orders", &body.to_string(), headers).await
    }
}
