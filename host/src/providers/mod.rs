//! Model providers: the edge where the normalized chat model meets each
//! vendor's wire format.
//!
//! Each provider module turns a [`ChatRequest`] into its own HTTP request and
//! its answers back into [`ChatCompletion`] values or a [`ChunkStream`] of
//! normalized chunks. Nothing outside this module knows a provider's JSON.
//! One pooled HTTP client (hyper-util, keep-alive, HTTP/1.1 and HTTP/2 over
//! rustls) serves every provider; a provider's `timeout_ms` bounds connect +
//! response headers, `stream_idle_timeout_ms` each later read.

pub mod mock;
pub mod openai;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Map, Value};

use crate::chat::{ChatChunk, ChatCompletion, ChatRequest};
use crate::config::{Config, ProviderConfig, ProviderKind};
use crate::error::GatewayError;

/// The pooled upstream HTTP client.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest upstream body weir reads whole (non-streamed answers, errors).
const MAX_UPSTREAM_BODY: usize = 64 << 20;
/// Largest upstream error body kept for the message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Build the shared upstream client.
pub fn http_client() -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// A configured provider.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Connect + response headers.
    pub timeout: Duration,
    /// Each gap between streamed reads.
    pub idle_timeout: Duration,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    OpenAi(openai::OpenAi),
    Mock(mock::Mock),
}

/// What one attempt at one target returned.
#[derive(Debug)]
pub enum ChatReply {
    Complete(Box<ChatCompletion>),
    Stream(ChunkStream),
}

/// Why one attempt at one target failed.
#[derive(Debug)]
pub enum AttemptError {
    /// Could not connect or the connection broke before an answer.
    Connect(String),
    /// No response headers (or no first event) within the timeout.
    Timeout,
    /// A status worth failing over on: 401, 403, 408, 5xx.
    Status(StatusCode, String),
    /// 429: fail over, and rest this target for `retry-after` (if given).
    RateLimited(Option<Duration>, String),
    /// The upstream answered something that is not its wire format.
    Malformed(String),
    /// The caller's fault (400, 404, 422…): relayed, no failover.
    Rejected(GatewayError),
}

impl AttemptError {
    /// A short description for logs and the final error message. Never
    /// includes headers (and so never a key).
    pub fn describe(&self) -> String {
        match self {
            AttemptError::Connect(e) => format!("connection failed: {e}"),
            AttemptError::Timeout => "timed out".into(),
            AttemptError::Status(s, m) if m.is_empty() => format!("HTTP {}", s.as_u16()),
            AttemptError::Status(s, m) => format!("HTTP {}: {m}", s.as_u16()),
            AttemptError::RateLimited(_, m) if m.is_empty() => "HTTP 429".into(),
            AttemptError::RateLimited(_, m) => format!("HTTP 429: {m}"),
            AttemptError::Malformed(e) => format!("malformed response: {e}"),
            AttemptError::Rejected(e) => e.to_string(),
        }
    }

    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect",
            AttemptError::Timeout => "timeout",
            AttemptError::RateLimited(..) => "rate_limited",
            AttemptError::Status(s, _) if s.is_server_error() => "server_error",
            AttemptError::Status(..) => "auth",
            AttemptError::Malformed(_) => "malformed",
            AttemptError::Rejected(_) => "rejected",
        }
    }
}

/// A failure after the stream began: ends the client's stream with an SSE
/// error event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamFault {
    #[error("the upstream sent nothing for {0:?}")]
    IdleTimeout(Duration),
    #[error("the upstream connection failed mid-stream: {0}")]
    Read(String),
    #[error("the upstream closed the stream before it finished")]
    Closed,
    #[error("the upstream sent a malformed event: {0}")]
    Malformed(String),
    #[error("the upstream reported an error mid-stream: {0}")]
    Upstream(String),
}

impl StreamFault {
    /// The `error.code` of the client's error event.
    pub fn code(&self) -> &'static str {
        match self {
            StreamFault::IdleTimeout(_) => "upstream_timeout",
            _ => "upstream_error",
        }
    }
}

/// A normalized chunk stream from any provider.
#[derive(Debug)]
pub enum ChunkStream {
    OpenAi(Box<openai::ChunkReader>),
    Mock(mock::ChunkReader),
}

impl ChunkStream {
    /// The next chunk; `None` at a clean end.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, StreamFault>> {
        match self {
            ChunkStream::OpenAi(r) => r.next().await,
            ChunkStream::Mock(r) => r.next().await,
        }
    }
}

impl Provider {
    fn from_config(p: &ProviderConfig) -> Provider {
        let backend = match p.kind {
            ProviderKind::Mock => Backend::Mock(mock::Mock::new(p)),
            _ => Backend::OpenAi(openai::OpenAi::new(p)),
        };
        Provider {
            name: p.name.clone(),
            timeout: Duration::from_millis(p.timeout_ms),
            idle_timeout: Duration::from_millis(p.stream_idle_timeout_ms),
            backend,
        }
    }

    /// One chat attempt at `model` on this provider. For streams, the first
    /// chunk has already arrived when this returns `Ok`, so a target that
    /// answers 200 and then nothing, or garbage, is still failed over.
    pub async fn chat(
        &self,
        client: &HttpClient,
        req: &ChatRequest,
        model: &str,
    ) -> Result<ChatReply, AttemptError> {
        match &self.backend {
            Backend::OpenAi(p) => p.chat(client, self, req, model).await,
            Backend::Mock(p) => Ok(p.chat(req, model)),
        }
    }

    /// One embeddings attempt.
    pub async fn embeddings(
        &self,
        client: &HttpClient,
        body: &Map<String, Value>,
        model: &str,
    ) -> Result<Value, AttemptError> {
        match &self.backend {
            Backend::OpenAi(p) => p.embeddings(client, self, body, model).await,
            Backend::Mock(p) => Ok(p.embeddings(body, model)),
        }
    }
}

/// Every configured provider by name.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
}

impl Providers {
    /// Build from a validated config.
    pub fn from_config(config: &Config) -> Providers {
        Providers {
            by_name: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), Arc::new(Provider::from_config(p))))
                .collect(),
        }
    }

    /// A provider by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }
}

/// Read a provider key from the environment as a sensitive header value.
pub fn key_from_env(var: Option<&str>, prefix: &str) -> Option<HeaderValue> {
    let key = std::env::var(var?).ok()?;
    let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Send one request, bounded by the provider's connect + headers timeout.
pub async fn send(
    client: &HttpClient,
    provider: &Provider,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, AttemptError> {
    match tokio::time::timeout(provider.timeout, client.request(request)).await {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Err(e)) => Err(AttemptError::Connect(error_chain(&e))),
        // Every provider's 429 is handled here, with its retry-after.
        Ok(Ok(response)) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
            let wait = retry_after(response.headers());
            let mut body = response.into_body();
            let message = match status_error(StatusCode::TOO_MANY_REQUESTS, &mut body, provider.idle_timeout).await {
                AttemptError::Status(_, m) => m,
                _ => String::new(),
            };
            Err(AttemptError::RateLimited(wait, message))
        }
        Ok(Ok(response)) => Ok(response),
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates are
/// not worth parsing for a cooldown.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
        .map(|d| d.min(Duration::from_secs(300)))
}

/// Read a whole body; each read is bounded by the idle timeout.
pub async fn read_body(
    body: &mut Incoming,
    idle: Duration,
    limit: usize,
) -> Result<Vec<u8>, AttemptError> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(AttemptError::Timeout),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(AttemptError::Connect(error_chain(&e))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(AttemptError::Malformed(format!(
                            "the body exceeds {limit} bytes"
                        )));
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Turn a non-2xx upstream answer into an attempt error: failover-worthy
/// statuses become [`AttemptError::Status`], the caller's own mistakes are
/// relayed with the upstream's status and message in OpenAI's shape.
pub async fn status_error(status: StatusCode, body: &mut Incoming, idle: Duration) -> AttemptError {
    let bytes = read_body(body, idle, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message")
        .or_else(|| error.and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            text.chars()
                .take(300)
                .collect::<String>()
                .trim()
                .to_string()
        });
    let retry = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status.is_server_error();
    if retry {
        // 401/403 messages can echo part of the provider key: keep them out.
        let message = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            String::new()
        } else {
            message.chars().take(200).collect()
        };
        return AttemptError::Status(status, message);
    }
    AttemptError::Rejected(GatewayError::UpstreamRejected {
        status,
        message: if message.is_empty() {
            format!("the upstream answered HTTP {}", status.as_u16())
        } else {
            message
        },
        kind: field("type").unwrap_or_else(|| "invalid_request_error".into()),
        code: field("code"),
        param: field("param"),
    })
}

/// Serialize `body` with some top-level fields replaced or added, without
/// cloning the client's JSON.
pub fn body_with(body: &Map<String, Value>, overrides: &[(&str, &Value)]) -> Vec<u8> {
    use serde::ser::{SerializeMap, Serializer};
    fn write(
        out: &mut Vec<u8>,
        body: &Map<String, Value>,
        overrides: &[(&str, &Value)],
    ) -> Result<(), serde_json::Error> {
        let mut ser = serde_json::Serializer::new(out);
        let mut map = ser.serialize_map(None)?;
        for (k, v) in overrides {
            map.serialize_entry(k, v)?;
        }
        for (k, v) in body {
            if !overrides.iter().any(|(o, _)| o == k) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
    let mut out = Vec::with_capacity(256);
    // Serializing JSON values into a Vec cannot fail.
    let _ = write(&mut out, body, overrides);
    out
}

/// The whole error chain on one line (hyper hides the cause otherwise).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Parse a non-streamed completion, or explain why it is not one.
pub fn parse_completion(bytes: &[u8]) -> Result<ChatCompletion, AttemptError> {
    serde_json::from_slice::<ChatCompletion>(bytes)
        .map_err(|e| AttemptError::Malformed(format!("not a chat completion: {e}")))
}

/// Limits for reading whole upstream bodies.
pub const fn max_upstream_body() -> usize {
    MAX_UPSTREAM_BODY
}
