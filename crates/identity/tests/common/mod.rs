//! What the black-box tests share: signers of all three algorithms that forge tokens by hand,
//! an identity provider served on 127.0.0.1:0, and HTTP helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use flotilla_identity::jwk::{Jwk, Jwks};
use flotilla_identity::{Credentials, Idp, IdpSettings};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Now, in UNIX seconds.
pub fn now() -> i64 {
    flotilla_kit::clock::now_micros() / 1_000_000
}

/// A private key of one algorithm that signs tokens assembled by the test.
pub enum Signer {
    Ed25519(signature::Ed25519KeyPair),
    P256(signature::EcdsaKeyPair),
    Rsa(signature::RsaKeyPair),
}

pub struct TestKey {
    pub kid: String,
    pub signer: Signer,
}

impl TestKey {
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.to_owned(),
            signer: Signer::Ed25519(pair),
        }
    }

    pub fn p256(kid: &str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        Self {
            kid: kid.to_owned(),
            signer: Signer::P256(pair),
        }
    }

    /// The RSA fixture (see tests/fixtures/README.md).
    pub fn rsa(kid: &str) -> Self {
        let der = include_bytes!("../fixtures/rsa-2048.pk8.der");
        Self {
            kid: kid.to_owned(),
            signer: Signer::Rsa(signature::RsaKeyPair::from_pkcs8(der).unwrap()),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ed25519(_) => "EdDSA",
            Signer::P256(_) => "ES256",
            Signer::Rsa(_) => "RS256",
        }
    }

    pub fn jwk(&self) -> Jwk {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.signer {
            Signer::Ed25519(pair) => Jwk::ed25519(pair.public_key().as_ref()),
            Signer::P256(pair) => {
                let point = pair.public_key().as_ref();
                assert_eq!(point.len(), 65, "uncompressed point");
                Jwk {
                    kty: "EC".into(),
                    kid: None,
                    alg: Some("ES256".into()),
                    key_use: Some("sig".into()),
                    crv: Some("P-256".into()),
                    x: Some(b64(&point[1..33])),
                    y: Some(b64(&point[33..])),
                    n: None,
                    e: None,
                }
            }
            Signer::Rsa(pair) => {
                let public: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                Jwk {
                    kty: "RSA".into(),
                    kid: None,
                    alg: Some("RS256".into()),
                    key_use: Some("sig".into()),
                    crv: None,
                    x: None,
                    y: None,
                    n: Some(b64(&public.n)),
                    e: Some(b64(&public.e)),
                }
            }
        };
        jwk.kid = Some(self.kid.clone());
        jwk
    }

    /// The raw signature of `message`.
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            Signer::P256(pair) => pair.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .unwrap();
                out
            }
        }
    }

    /// A compact JWS of `claims` with the header `{"alg": <own>, "kid": <own>, "typ": "JWT"}`.
    pub fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"});
        self.token_with_header(&header, claims)
    }

    /// A compact JWS with a header of the test's choice, signed with this key.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        sign_parts(self, &header, &payload)
    }
}

/// `header.payload.signature` over base64url parts given as they are.
pub fn sign_parts(key: &TestKey, header_b64: &str, payload_b64: &str) -> String {
    let message = format!("{header_b64}.{payload_b64}");
    let signature = URL_SAFE_NO_PAD.encode(key.sign_raw(message.as_bytes()));
    format!("{message}.{signature}")
}

pub fn jwks(keys: &[&TestKey]) -> Jwks {
    Jwks {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    }
}

/// Claims valid for the default verifier settings for ten minutes.
pub fn claims(subject: &str) -> Value {
    let now = now();
    json!({
        "iss": flotilla_identity::DEFAULT_ISSUER,
        "aud": flotilla_identity::DEFAULT_AUDIENCE,
        "sub": subject,
        "exp": now + 600,
        "nbf": now,
        "iat": now,
        "jti": uuid::Uuid::now_v7().to_string(),
        "roles": ["customer"],
        "scope": "orders:read orders:write",
    })
}

/// An identity provider with the shipped credentials served on 127.0.0.1:0.
pub struct TestIdp {
    pub idp: Idp,
    pub address: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub shutdown: CancellationToken,
}

impl TestIdp {
    pub async fn start() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, |_| {}).await
    }

    /// Starts one with its key file in `dir` and the settings changed by `change`.
    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        change: impl FnOnce(&mut IdpSettings),
    ) -> Self {
        let mut settings = IdpSettings {
            key_file: dir.path().join("identity-keys.json"),
            ..IdpSettings::default()
        };
        change(&mut settings);
        let credentials = Credentials::shipped().unwrap();
        let idp = tokio::task::spawn_blocking(move || Idp::open(settings, credentials))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        // The admin routes beside the public ones (the process serves them on its admin
        // listener): these tests are about what the handlers do.
        let router = flotilla_identity::routes(idp.clone())
            .merge(flotilla_identity::server::admin_routes(idp.clone()));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            // With the peer's address, as the kit's listener gives it (the token endpoint limits
            // requests per address).
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
        });
        Self {
            idp,
            address,
            dir,
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// Sends a request and reads the whole answer within five seconds.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(header::HeaderName, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = flotilla_kit::client::client();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("answered in time")
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub const FORM: (header::HeaderName, &str) =
    (header::CONTENT_TYPE, "application/x-www-form-urlencoded");

/// `POST /oauth2/token` with a form body and extra headers.
pub async fn token_request(
    idp: &TestIdp,
    form: &str,
    headers: &[(header::HeaderName, &str)],
) -> Answer {
    let mut all = vec![FORM];
    all.extend_from_slice(headers);
    send(
        Method::POST,
        &idp.url("/oauth2/token"),
        &all,
        form.to_owned(),
    )
    .await
}

/// The `Authorization: Basic` value of a client.
pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// Asserts that `answer` is a problem document of `status` with the OAuth `error` code.
pub fn assert_oauth_error(answer: &Answer, status: StatusCode, error: &str) {
    assert_eq!(
        answer.status,
        status,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header(header::CONTENT_TYPE),
        "application/problem+json"
    );
    let body = answer.json();
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(
        body["type"],
        format!("/problems/{}", error.replace('_', "-")),
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}
