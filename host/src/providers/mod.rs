//! Model providers: the edge where the normalized chat model meets each
//! vendor's wire format.
//!
//! Each provider module turns a [`ChatRequest`] into its own HTTP request and
//! its answers back into [`ChatCompletion`] values or a [`ChunkStream`] of
//! normalized chunks. Nothing outside this module knows a provider's JSON.
//! One pooled HTTP client ([`client`]: hyper, keep-alive, HTTP/1.1 and
//! HTTP/2 over rustls) serves every provider; a provider's `timeout_ms`
//! bounds connect + response headers, `stream_idle_timeout_ms` each later
//! read.
//!
//! Kinds: `openai` and `azure-openai` ([`openai`], the body passes through),
//! `anthropic` ([`anthropic`]) and `gemini` ([`gemini`]) (translated both
//! ways), `mock` ([`mock`]). The translating kinds share [`Translated`]: an
//! SSE body read event by event, each event handed to the provider's
//! [`Translate`] state machine, which queues normalized chunks. Such a stream
//! only counts as answered once a chunk with substance (text, a tool call, a
//! finish reason or usage) arrived: a vendor that opens with a bare
//! `message_start` and then reports `overloaded_error` is still failed over,
//! since nothing has reached the client yet.

pub mod anthropic;
pub mod client;
pub mod gemini;
pub mod mock;
pub mod openai;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

use crate::chat::open::Extra;
use crate::chat::{ChatChunk, ChatCompletion, ChatRequest, ChunkChoice, Delta, Usage};
use crate::config::{Config, ProviderConfig, ProviderKind};
use crate::error::GatewayError;
use crate::sse::{SseEvent, SseParser};

pub use client::{HttpClient, UpstreamBody};

/// Largest upstream body weir reads whole (non-streamed answers, errors).
const MAX_UPSTREAM_BODY: usize = 64 << 20;
/// Largest upstream error body kept for the message.
const MAX_ERROR_BODY: usize = 64 << 10;

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
    /// `openai` and `azure-openai`.
    OpenAi(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
    Mock(mock::Mock),
}

/// What one attempt at one target returned.
#[derive(Debug)]
pub enum ChatReply {
    Complete(Whole),
    Stream(ChunkStream),
}

/// A whole completion.
#[derive(Debug)]
pub enum Whole {
    /// Translated into OpenAI's shape (or written) by weir.
    Parsed(Box<ChatCompletion>),
    /// An OpenAI-style upstream's own bytes, checked to be a completion:
    /// sent on as they are (`model` spliced in) when no guardrail reads
    /// them, parsed in full only when one does.
    Raw(RawCompletion),
}

/// An OpenAI completion's bytes and what accounting needs from them.
#[derive(Debug)]
pub struct RawCompletion {
    pub bytes: Bytes,
    pub usage: Option<Usage>,
    /// Bytes of message text over all choices (the output estimate when
    /// the upstream reports no usage).
    pub content_bytes: usize,
    /// Each choice's text, in order: guardrails read and rewrite it there,
    /// and the rest is never parsed in full or re-serialized.
    pub texts: Vec<RawText>,
    /// Where the `model` string is (`None` when null or absent).
    pub model: Option<std::ops::Range<usize>>,
}

/// Where one choice's text is in a [`RawCompletion`] or [`RawChunk`].
#[derive(Debug, Clone, PartialEq)]
pub struct RawText {
    /// The choice's `index`.
    pub index: u32,
    /// Its `message.content` JSON string, quotes included; `None` when
    /// null or absent.
    pub range: Option<std::ops::Range<usize>>,
}

impl RawText {
    /// The text, unescaped, read from `json` (the bytes it was found in);
    /// `None` when it has none.
    pub fn text(&self, json: &[u8]) -> Option<String> {
        serde_json::from_slice(json.get(self.range.clone()?)?).ok()
    }

    /// Whether `text` is what the string at `range` in `json` says, so it
    /// can stay as the upstream wrote it.
    pub fn unchanged(&self, json: &[u8], text: &str) -> bool {
        let Some(quoted) = self.range.clone().and_then(|r| json.get(r)) else {
            return false;
        };
        match serde_json::from_slice::<&str>(quoted) {
            Ok(original) => original == text,
            // Escaped: compare the unescaped text.
            Err(_) => self.text(json).as_deref() == Some(text),
        }
    }
}

impl RawCompletion {
    /// The bytes with `edits` (ranges of them, ascending and apart) made
    /// and `model` set to `name` (JSON): found where the check saw it, or
    /// spliced in as a member when it was null or absent.
    pub fn edited(
        &self,
        mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)>,
        name: &[u8],
    ) -> Option<Vec<u8>> {
        use crate::chat::splice::{self, Edit};

        let Some(model) = &self.model else {
            let body = splice::replace(&self.bytes, &edits)?;
            return splice::with_members(&body, &[("model", Edit::Set(name))]);
        };
        let at = edits.partition_point(|(range, _)| range.start < model.start);
        edits.insert(at, (model.clone(), name.to_vec()));
        splice::replace(&self.bytes, &edits)
    }
}

impl Whole {
    /// The completion as a value, for guardrails to read and rewrite.
    pub fn parse(self) -> Result<Box<ChatCompletion>, AttemptError> {
        match self {
            Whole::Parsed(completion) => Ok(completion),
            Whole::Raw(raw) => parse_completion(&raw.bytes).map(Box::new),
        }
    }
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
    Anthropic(Box<Translated<anthropic::Events>>),
    Gemini(Box<Translated<gemini::Events>>),
    Mock(mock::ChunkReader),
}

/// One step of a stream.
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub enum StreamItem {
    /// A decoded chunk.
    Chunk(ChatChunk),
    /// An OpenAI-style upstream's chunk as it came, in pass-through mode.
    Raw(RawChunk),
}

/// An OpenAI-style upstream's chunk kept as its JSON, read only as far as
/// the gateway needs it when nothing inspects the text (no guardrail): its
/// usage, whether it has choices, its text's length. Re-encoding a decoded
/// chunk costs ~12k instructions; this read and a splice of `model` ~4k.
#[derive(Debug)]
pub struct RawChunk {
    /// The event's `data`: one chat.completion.chunk object.
    pub data: String,
    /// Where its members are, scanned for `openai::RAW_KEYS`.
    pub members: crate::chat::splice::Members,
    pub usage: Option<Usage>,
    pub has_choices: bool,
    /// Bytes of `delta.content` over its choices.
    pub content_bytes: usize,
    /// Each choice's `delta.content`, in order, where it is in `data`:
    /// guardrails read and rewrite the text there (left empty when no
    /// guardrail reads the stream).
    pub texts: Vec<RawText>,
}

impl ChunkStream {
    /// The next chunk; `None` at a clean end.
    pub async fn next(&mut self) -> Option<Result<StreamItem, StreamFault>> {
        match self {
            ChunkStream::OpenAi(r) => r.next_item().await,
            ChunkStream::Anthropic(r) => r.next().await.map(|c| c.map(StreamItem::Chunk)),
            ChunkStream::Gemini(r) => r.next().await.map(|c| c.map(StreamItem::Chunk)),
            ChunkStream::Mock(r) => r.next().await.map(|c| c.map(StreamItem::Chunk)),
        }
    }

    /// The next item if it is already there — read by the upstream
    /// connection, or due now from the mock — without waiting: `None` when
    /// it is not. Nothing is lost by asking: the upstream readers wait only
    /// in the body read, which keeps what it has not yet returned.
    pub fn next_ready(&mut self) -> Option<Option<Result<StreamItem, StreamFault>>> {
        use futures_util::FutureExt;
        match self {
            ChunkStream::Mock(r) => r.next_ready().map(|c| c.map(|c| c.map(StreamItem::Chunk))),
            _ => self.next().now_or_never(),
        }
    }

    /// OpenAI-style chunks may come as [`StreamItem::Raw`] from now on
    /// (other providers translate, so theirs stay decoded); with `texts`,
    /// each notes where its choices' texts are, for guardrails.
    pub fn pass_through(&mut self, texts: bool) {
        if let ChunkStream::OpenAi(r) = self {
            r.raw = true;
            r.texts = texts;
        }
    }
}

impl Provider {
    fn from_config(p: &ProviderConfig) -> Provider {
        let backend = match p.kind {
            ProviderKind::Openai => Backend::OpenAi(openai::OpenAi::new(p)),
            ProviderKind::AzureOpenai => Backend::OpenAi(openai::OpenAi::azure(p)),
            ProviderKind::Anthropic => Backend::Anthropic(anthropic::Anthropic::new(p)),
            ProviderKind::Gemini => Backend::Gemini(gemini::Gemini::new(p)),
            ProviderKind::Mock => Backend::Mock(mock::Mock::new(p)),
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
            Backend::Anthropic(p) => p.chat(client, self, req, model).await,
            Backend::Gemini(p) => p.chat(client, self, req, model).await,
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
            Backend::Gemini(p) => p.embeddings(client, self, body, model).await,
            Backend::Anthropic(_) => Err(AttemptError::Rejected(GatewayError::invalid(
                "model",
                format!(
                    "provider `{}` is of kind `anthropic`, which has no embeddings API",
                    self.name
                ),
            ))),
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

/// [`send`], then the body of a successful answer; any other status is the
/// upstream's error, as [`status_error`] reads it.
pub async fn send_ok(
    client: &HttpClient,
    provider: &Provider,
    request: http::Request<Full<Bytes>>,
) -> Result<UpstreamBody, AttemptError> {
    let response = send(client, provider, request).await?;
    let status = response.status();
    let mut incoming = response.into_body();
    if !status.is_success() {
        return Err(status_error(status, &mut incoming, provider.idle_timeout).await);
    }
    Ok(incoming)
}

/// Send one request, bounded by the provider's connect + headers timeout.
pub async fn send(
    client: &HttpClient,
    provider: &Provider,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<UpstreamBody>, AttemptError> {
    match tokio::time::timeout(provider.timeout, client.request(request)).await {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Err(e)) => Err(AttemptError::Connect(error_chain(&e))),
        // Every provider's 429 is handled here, with its retry-after.
        Ok(Ok(response)) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
            let wait = retry_after(response.headers());
            let mut body = response.into_body();
            let message = match status_error(
                StatusCode::TOO_MANY_REQUESTS,
                &mut body,
                provider.idle_timeout,
            )
            .await
            {
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
    body: &mut UpstreamBody,
    idle: Duration,
    limit: usize,
) -> Result<Vec<u8>, AttemptError> {
    let mut out = Vec::new();
    loop {
        match body.next_frame(idle).await {
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

/// Turn a non-2xx upstream answer in OpenAI's error shape (Anthropic's is
/// compatible: `error.type` and `error.message`) into an attempt error.
pub async fn status_error(
    status: StatusCode,
    body: &mut UpstreamBody,
    idle: Duration,
) -> AttemptError {
    let bytes = error_body(body, idle).await;
    classify(status, UpstreamFailure::from_openai_body(&bytes))
}

/// Read an error body, at most [`MAX_ERROR_BODY`] bytes; empty if unreadable.
pub async fn error_body(body: &mut UpstreamBody, idle: Duration) -> Vec<u8> {
    read_body(body, idle, MAX_ERROR_BODY)
        .await
        .unwrap_or_default()
}

/// What an upstream said about a failure, in OpenAI's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamFailure {
    pub message: String,
    /// `error.type`.
    pub kind: Option<String>,
    /// `error.code`.
    pub code: Option<String>,
    pub param: Option<String>,
}

impl UpstreamFailure {
    /// Read `{"error": {"message", "type", "code", "param"}}` (or
    /// `{"error": "text"}`); anything else becomes the message, trimmed.
    pub fn from_openai_body(bytes: &[u8]) -> UpstreamFailure {
        let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let field = |name: &str| {
            error
                .and_then(|e| e.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let message = field("message")
            .or_else(|| error.and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| body_excerpt(bytes));
        UpstreamFailure {
            message,
            kind: field("type"),
            code: field("code"),
            param: field("param"),
        }
    }
}

/// The start of a body that is not a known error shape, for the message.
pub fn body_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.chars()
        .take(300)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Failover-worthy statuses become [`AttemptError::Status`], the caller's own
/// mistakes are relayed with the upstream's status and message in OpenAI's
/// shape.
pub fn classify(status: StatusCode, failure: UpstreamFailure) -> AttemptError {
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
            failure.message.chars().take(200).collect()
        };
        return AttemptError::Status(status, message);
    }
    AttemptError::Rejected(GatewayError::UpstreamRejected {
        status,
        message: if failure.message.is_empty() {
            format!("the upstream answered HTTP {}", status.as_u16())
        } else {
            failure.message
        },
        kind: failure
            .kind
            .unwrap_or_else(|| "invalid_request_error".into()),
        code: failure.code,
        param: failure.param,
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
    crate::chat::from_json::<ChatCompletion>(bytes)
        .map_err(|e| AttemptError::Malformed(format!("not a chat completion: {e}")))
}

/// Check that `bytes` are an OpenAI chat completion — the same fields and
/// types [`parse_completion`] accepts — reading only the usage and where
/// each choice's text is: no allocation for fields weir passes on
/// untouched (a fifth of the instructions of the full parse).
pub fn check_completion(bytes: Bytes) -> Result<RawCompletion, AttemptError> {
    use std::borrow::Cow;

    use serde::de::IgnoredAny;

    // Every known field may be missing or null, as in `open_struct!`.
    #[derive(serde::Deserialize)]
    struct Lite<'a> {
        #[serde(borrow, default, rename = "id")]
        _id: Option<LiteStr<'a>>,
        #[serde(borrow, default, rename = "object")]
        _object: Option<LiteStr<'a>>,
        #[serde(default, rename = "created")]
        _created: Option<u64>,
        #[serde(borrow, default)]
        model: Option<LiteText<'a>>,
        #[serde(borrow, default)]
        choices: Option<Vec<Obj<LiteChoice<'a>>>>,
        #[serde(default)]
        usage: Option<Obj<LiteUsage>>,
    }
    /// An object and only an object, as `open_struct!` reads them (a
    /// derived struct would also take an array of its fields).
    struct Obj<T>(T);
    impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(std::marker::PhantomData<T>);
            impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
                type Value = T;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                    T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData)).map(Obj)
        }
    }
    /// A string (only its type is checked), borrowed unless it has escapes.
    #[derive(serde::Deserialize)]
    #[serde(transparent)]
    struct LiteStr<'a>(
        #[serde(borrow)]
        #[allow(dead_code)]
        Cow<'a, str>,
    );
    #[derive(serde::Deserialize)]
    struct LiteChoice<'a> {
        #[serde(default)]
        index: Option<u32>,
        #[serde(borrow, default)]
        message: Option<Obj<LiteMessage<'a>>>,
        #[serde(borrow, default, rename = "finish_reason")]
        _finish_reason: Option<LiteStr<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct LiteMessage<'a> {
        #[serde(borrow, default, rename = "role")]
        _role: Option<LiteStr<'a>>,
        #[serde(borrow, default)]
        content: Option<LiteText<'a>>,
        #[serde(default, rename = "tool_calls")]
        _tool_calls: Option<Vec<IgnoredAny>>,
    }
    #[derive(serde::Deserialize)]
    struct LiteUsage {
        #[serde(default)]
        prompt_tokens: Option<u64>,
        #[serde(default)]
        completion_tokens: Option<u64>,
        #[serde(default)]
        total_tokens: Option<u64>,
        #[serde(default)]
        prompt_tokens_details: Option<Obj<Cached>>,
        #[serde(default)]
        completion_tokens_details: Option<Obj<Reasoning>>,
    }
    #[derive(serde::Deserialize)]
    struct Cached {
        #[serde(default)]
        cached_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Reasoning {
        #[serde(default)]
        reasoning_tokens: Option<u64>,
    }

    let Obj(lite): Obj<Lite> = crate::chat::from_json(&bytes)
        .map_err(|e| AttemptError::Malformed(format!("not a chat completion: {e}")))?;
    let model = lite.model.as_ref().map(|m| m.range(&bytes));
    let mut content_bytes = 0;
    let texts = lite
        .choices
        .iter()
        .flatten()
        .map(|Obj(choice)| {
            let content = choice.message.as_ref().and_then(|m| m.0.content.as_ref());
            let range = content.map(|text| {
                content_bytes += text.text_len();
                text.range(&bytes)
            });
            RawText {
                index: choice.index.unwrap_or_default(),
                range,
            }
        })
        .collect();
    let usage = lite.usage.map(|Obj(u)| Usage {
        prompt_tokens: u.prompt_tokens.unwrap_or_default(),
        completion_tokens: u.completion_tokens.unwrap_or_default(),
        total_tokens: u.total_tokens.unwrap_or_default(),
        prompt_tokens_details: u.prompt_tokens_details.map(|Obj(d)| {
            crate::chat::PromptTokensDetails {
                cached_tokens: d.cached_tokens.unwrap_or_default(),
                ..Default::default()
            }
        }),
        completion_tokens_details: u.completion_tokens_details.map(|Obj(d)| {
            crate::chat::CompletionTokensDetails {
                reasoning_tokens: d.reasoning_tokens.unwrap_or_default(),
                ..Default::default()
            }
        }),
        ..Default::default()
    });
    Ok(RawCompletion {
        bytes,
        usage,
        content_bytes,
        texts,
        model,
    })
}

/// A JSON string as it is in the bytes it was read from (quotes and
/// escapes): where it is, and its length unescaped.
pub(crate) struct LiteText<'a>(pub &'a serde_json::value::RawValue);

impl<'de: 'a, 'a> serde::Deserialize<'de> for LiteText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&serde_json::value::RawValue>::deserialize(d)?;
        match raw.get().starts_with('"') {
            true => Ok(LiteText(raw)),
            false => Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Other(raw.get()),
                &"a string",
            )),
        }
    }
}

impl LiteText<'_> {
    /// Where the string is in `within` (the text it was read from).
    pub fn range(&self, within: &[u8]) -> std::ops::Range<usize> {
        let json = self.0.get();
        let at = json.as_ptr() as usize - within.as_ptr() as usize;
        at..at + json.len()
    }

    /// Its length unescaped.
    pub fn text_len(&self) -> usize {
        let json = self.0.get();
        match json.contains('\\') {
            false => json.len() - 2,
            true => serde_json::from_str::<String>(json).map_or(0, |s| s.len()),
        }
    }
}

/// Limits for reading whole upstream bodies.
pub const fn max_upstream_body() -> usize {
    MAX_UPSTREAM_BODY
}

/// Build a JSON POST to an upstream; `headers` carry the auth (sensitive
/// values stay out of logs and `Debug`).
pub fn post_json<U>(
    uri: U,
    body: Vec<u8>,
    stream: bool,
    headers: &[(&HeaderName, &HeaderValue)],
) -> Result<http::Request<Full<Bytes>>, AttemptError>
where
    http::Uri: TryFrom<U>,
    <http::Uri as TryFrom<U>>::Error: Into<http::Error>,
{
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .header(
            http::header::ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| AttemptError::Connect(format!("cannot build the request: {e}")))
}

/// Seconds since the Unix epoch, for `created`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `id`, `created` and `model` shared by every chunk of one translated
/// stream.
#[derive(Debug, Clone, Default)]
pub struct ChunkMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ChunkMeta {
    /// A chunk with one choice.
    pub fn chunk(&self, index: u32, delta: Delta, finish_reason: Option<String>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index,
                delta,
                finish_reason,
                extra: Extra::default(),
            }],
            usage: None,
            extra: Extra::default(),
        }
    }

    /// The final usage chunk: empty `choices`, as OpenAI sends it.
    pub fn usage_chunk(&self, usage: Usage) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: Some(usage),
            extra: Extra::default(),
        }
    }
}

/// The delta that opens a choice, as OpenAI's first chunk has it.
pub fn role_delta() -> Delta {
    Delta {
        role: Some("assistant".into()),
        content: Some(String::new()),
        ..Default::default()
    }
}

/// An upstream event stream, read event by event; each read is bounded by
/// the idle timeout and nothing is buffered beyond the unfinished line.
#[derive(Debug)]
pub struct SseBody {
    body: UpstreamBody,
    idle: Duration,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
}

impl SseBody {
    /// Read `body` with `idle` as the limit for each gap.
    pub fn new(body: UpstreamBody, idle: Duration) -> SseBody {
        SseBody {
            body,
            idle,
            parser: SseParser::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// The stream's end marker arrived: nothing more is read (see
    /// [`UpstreamBody::finish`]).
    pub fn finish(&mut self) {
        self.body.finish();
    }

    /// The next event; `None` when the body ended.
    pub async fn next(&mut self) -> Option<Result<SseEvent, StreamFault>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(Ok(event));
            }
            match self.body.next_frame(self.idle).await {
                Err(_) => return Some(Err(StreamFault::IdleTimeout(self.idle))),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(StreamFault::Read(error_chain(&e)))),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = self.parser.feed(&data, &mut self.scratch) {
                        return Some(Err(StreamFault::Malformed(e.to_string())));
                    }
                    self.events.extend(self.scratch.drain(..));
                }
            }
        }
    }
}

/// Why a translated event could not become chunks.
#[derive(Debug, Clone)]
pub enum EventError {
    /// The stream itself is broken (bad JSON, cut short…).
    Fault(StreamFault),
    /// The upstream reported an error in the stream, with the HTTP status it
    /// stands for: before anything reached the client it is handled like
    /// that status (so an overloaded upstream is failed over).
    Upstream(StatusCode, UpstreamFailure),
}

impl EventError {
    /// A malformed event.
    pub fn malformed(reason: impl Into<String>) -> EventError {
        EventError::Fault(StreamFault::Malformed(reason.into()))
    }

    /// As a failure after the first chunk.
    pub fn into_fault(self) -> StreamFault {
        match self {
            EventError::Fault(fault) => fault,
            EventError::Upstream(_, failure) => StreamFault::Upstream(failure.message),
        }
    }

    /// As a failure before the first chunk: failover or relay.
    pub fn into_attempt(self) -> AttemptError {
        match self {
            EventError::Fault(StreamFault::IdleTimeout(_)) => AttemptError::Timeout,
            EventError::Fault(StreamFault::Read(e)) => AttemptError::Connect(e),
            EventError::Fault(fault) => AttemptError::Malformed(fault.to_string()),
            EventError::Upstream(status, failure) => classify(status, failure),
        }
    }
}

/// One provider's stream events → normalized chunks.
pub trait Translate {
    /// Translate one event, queueing zero or more chunks; `Ok(true)` when the
    /// provider marked the stream complete (nothing is read after that).
    fn event(
        &mut self,
        event: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, EventError>;

    /// The body ended without an end event: queue the last chunks, or report
    /// that the stream was cut short.
    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), StreamFault>;
}

/// A translated upstream stream: SSE events in, normalized chunks out.
#[derive(Debug)]
pub struct Translated<T> {
    body: SseBody,
    state: T,
    queue: VecDeque<ChatChunk>,
    /// Reported once the queued chunks before it are out.
    error: Option<EventError>,
    ended: bool,
}

impl<T: Translate> Translated<T> {
    /// Read until the first chunk with substance; only then has the target
    /// answered. Everything read so far is replayed by [`Translated::next`].
    pub async fn start(body: UpstreamBody, idle: Duration, state: T) -> Result<Self, AttemptError> {
        let mut stream = Translated {
            body: SseBody::new(body, idle),
            state,
            queue: VecDeque::new(),
            error: None,
            ended: false,
        };
        let mut held = VecDeque::new();
        loop {
            match stream.pull().await {
                Some(Ok(chunk)) => {
                    let substance = has_substance(&chunk);
                    held.push_back(chunk);
                    if substance {
                        held.append(&mut stream.queue);
                        stream.queue = held;
                        return Ok(stream);
                    }
                }
                Some(Err(error)) => return Err(error.into_attempt()),
                None => {
                    return Err(AttemptError::Malformed(
                        "the stream ended without an answer".into(),
                    ));
                }
            }
        }
    }

    /// The next chunk; `None` at a clean end.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, StreamFault>> {
        self.pull().await.map(|r| r.map_err(EventError::into_fault))
    }

    async fn pull(&mut self) -> Option<Result<ChatChunk, EventError>> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(Ok(chunk));
            }
            if let Some(error) = self.error.take() {
                return Some(Err(error));
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                None => {
                    self.ended = true;
                    if let Err(fault) = self.state.end(&mut self.queue) {
                        self.error = Some(EventError::Fault(fault));
                    }
                }
                Some(Err(fault)) => {
                    self.ended = true;
                    self.error = Some(EventError::Fault(fault));
                }
                Some(Ok(event)) => match self.state.event(&event, &mut self.queue) {
                    Ok(done) => {
                        self.ended = done;
                        if done {
                            self.body.finish();
                        }
                    }
                    Err(error) => {
                        self.ended = true;
                        self.error = Some(error);
                    }
                },
            }
        }
    }
}

/// Does a chunk carry anything beyond the opening role?
fn has_substance(chunk: &ChatChunk) -> bool {
    chunk.usage.is_some()
        || chunk.choices.iter().any(|c| {
            c.finish_reason.is_some()
                || c.delta.tool_calls.is_some()
                || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
        })
}

/// A `data:` URL split into its media type and base64 payload.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    let media_type = media_type.split(';').next().unwrap_or_default();
    (!media_type.is_empty()).then_some((media_type, data))
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The text of a tool-call `arguments` string as a JSON object (`""` is `{}`).
pub fn arguments_object(arguments: &str) -> Option<Map<String, Value>> {
    if arguments.trim().is_empty() {
        return Some(Map::new());
    }
    match serde_json::from_str(arguments) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each choice's text is found (escapes and all) where it is, in
    /// order, with the index the full parse reads.
    #[test]
    fn raw_texts_are_found_where_they_are() {
        let body = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"a \"b\"\n\u00e9"},"finish_reason":"stop"}, {"message":{"content":null,"tool_calls":[{"id":"t"}]},"index":1},{"index":2,"message":{"role":"assistant"}},{"message":{"content":"x"}}],"model":"m"}"#;
        let raw = check_completion(Bytes::from(body)).unwrap();
        let quoted = r#""a \"b\"\n\u00e9""#;
        let at = body.find(quoted).unwrap();
        let x = body.find(r#""x""#).unwrap();
        let range = |index, range| RawText { index, range };
        assert_eq!(
            raw.texts,
            [
                range(0, Some(at..at + quoted.len())),
                range(1, None),
                range(2, None),
                range(0, Some(x..x + 3)),
            ]
        );
        let texts: Vec<_> = raw.texts.iter().map(|t| t.text(&raw.bytes)).collect();
        assert_eq!(
            texts,
            [Some("a \"b\"\né".into()), None, None, Some("x".into())]
        );
        assert_eq!(raw.content_bytes, "a \"b\"\né".len() + 1);
    }

    /// The model is renamed where it is, with the texts' edits around it;
    /// null or absent, it is set as a member.
    #[test]
    fn raw_completions_are_edited_in_place() {
        let edit = |body: &str, text: &str| -> Value {
            let raw = check_completion(Bytes::from(body.to_owned())).unwrap();
            let range = raw.texts[0].range.clone().unwrap();
            let edits = vec![(range, serde_json::to_vec(text).unwrap())];
            serde_json::from_slice(&raw.edited(edits, br#""chat""#).unwrap()).unwrap()
        };
        for body in [
            r#"{"model":"gpt-4o","choices":[{"index":0,"message":{"content":"a@b.io"}}],"id":"c"}"#,
            r#"{"choices":[{"index":0,"message":{"content":"a@b.io"}}],"model":"gpt-4o","id":"c"}"#,
            r#"{"choices":[{"index":0,"message":{"content":"a@b.io"}}],"model":null,"id":"c"}"#,
            r#"{"choices":[{"index":0,"message":{"content":"a@b.io"}}],"id":"c"}"#,
        ] {
            let out = edit(body, "[EMAIL]");
            assert_eq!(out["model"], "chat", "{body}");
            assert_eq!(out["choices"][0]["message"]["content"], "[EMAIL]", "{body}");
            assert_eq!(out["id"], "c", "{body}");
        }
        let raw = check_completion(Bytes::from_static(br#"{"model":"m","choices":[]}"#)).unwrap();
        assert_eq!(
            raw.edited(Vec::new(), br#""chat""#).unwrap(),
            br#"{"model":"chat","choices":[]}"#
        );
    }

    /// The light check accepts exactly what the full parse accepts, and
    /// reads the same usage and text length.
    #[test]
    fn checked_completions_agree_with_parsed_ones() {
        let good = r#"{"id":"c\u0031","object":"chat.completion","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"logprobs":null,"message":{"role":"assistant","content":"h\u00e9llo","refusal":null,"tool_calls":[{"id":"t","type":"function"}]},"finish_reason":"stop"},{"index":1,"message":{"role":"assistant","content":null}}],"usage":{"prompt_tokens":250,"completion_tokens":20,"total_tokens":270,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":7},"completion_tokens_details":{"reasoning_tokens":3,"audio_tokens":0}}}"#;
        let cases = [
            good,
            r#"{"choices":[]}"#,
            r#"{"choices":[{"message":{"content":"x"}}],"usage":null}"#,
            r#"{}"#,
            r#"{"created":"1","choices":[]}"#,
            r#"{"id":7,"choices":[]}"#,
            r#"{"choices":{}}"#,
            r#"{"choices":[{"index":-1}]}"#,
            r#"{"choices":[{"message":{"content":5}}]}"#,
            r#"{"choices":[{"message":{"tool_calls":{}}}]}"#,
            r#"{"choices":[{"finish_reason":3}]}"#,
            r#"{"usage":{"prompt_tokens":"9"}}"#,
            r#"{"usage":{"prompt_tokens_details":{"cached_tokens":-1}}}"#,
            r#"[]"#,
            r#"["i","o",1,"m",[]]"#,
            r#"{"choices":[[0]]}"#,
            r#"{"choices":[{"message":["assistant","x"]}]}"#,
            r#"{"choices":[{"message":null}]}"#,
            r#"{"id":null,"object":null,"created":null,"model":null,"choices":null,"usage":null}"#,
            r#"{"choices":[{"index":null,"message":{"role":null,"content":null,"tool_calls":null},"finish_reason":null}]}"#,
            r#"{"usage":{"prompt_tokens":null,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":null}}}"#,
            r#"{"usage":[1,2,3]}"#,
            r#"{"usage":{"prompt_tokens_details":[1]}}"#,
            r#"{"choices":[]"#,
            "not json",
        ];
        for case in cases {
            let parsed = parse_completion(case.as_bytes());
            let checked = check_completion(Bytes::from(case));
            assert_eq!(parsed.is_ok(), checked.is_ok(), "{case}");
            let (Ok(parsed), Ok(checked)) = (parsed, checked) else {
                continue;
            };
            let text: usize = parsed
                .choices
                .iter()
                .filter_map(|c| c.message.content.as_deref())
                .map(str::len)
                .sum();
            assert_eq!(checked.content_bytes, text, "{case}");
            let texts: Vec<_> = checked
                .texts
                .iter()
                .map(|t| (t.index, t.text(&checked.bytes)))
                .collect();
            let choices: Vec<_> = parsed
                .choices
                .iter()
                .map(|c| (c.index, c.message.content.clone()))
                .collect();
            assert_eq!(texts, choices, "{case}");
            let fields = |u: &Usage| {
                (
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.total_tokens,
                    u.cached_tokens(),
                    u.reasoning_tokens(),
                )
            };
            assert_eq!(
                checked.usage.as_ref().map(fields),
                parsed.usage.as_ref().map(fields),
                "{case}"
            );
        }
        let checked = check_completion(Bytes::from(good)).unwrap();
        assert_eq!(checked.content_bytes, "héllo".len());
        assert_eq!(checked.usage.unwrap().cached_tokens(), 7);
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/png;base64,iVBORw0KGgo="),
            Some(("image/png", "iVBORw0KGgo="))
        );
        assert_eq!(
            parse_data_url("data:application/pdf;name=a.pdf;base64,JVBE"),
            Some(("application/pdf", "JVBE"))
        );
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://example.com/a.png"), None);
    }

    #[test]
    fn base64_matches_the_standard() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want);
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn failures_are_classified_and_auth_messages_dropped() {
        let failure = |m: &str| UpstreamFailure {
            message: m.into(),
            ..Default::default()
        };
        for s in [401, 403] {
            let status = StatusCode::from_u16(s).unwrap();
            match classify(status, failure("bad key sk-abc")) {
                AttemptError::Status(got, m) => assert!(got == status && m.is_empty()),
                other => panic!("{other:?}"),
            }
        }
        for s in [408, 429, 500, 503, 529] {
            let status = StatusCode::from_u16(s).unwrap();
            assert!(matches!(
                classify(status, failure("x")),
                AttemptError::Status(..)
            ));
        }
        match classify(StatusCode::BAD_REQUEST, failure("bad temperature")) {
            AttemptError::Rejected(GatewayError::UpstreamRejected { message, kind, .. }) => {
                assert_eq!(message, "bad temperature");
                assert_eq!(kind, "invalid_request_error");
            }
            other => panic!("{other:?}"),
        }
        let anthropic =
            br#"{"type":"error","error":{"type":"not_found_error","message":"model: x"}}"#;
        let parsed = UpstreamFailure::from_openai_body(anthropic);
        assert_eq!(parsed.message, "model: x");
        assert_eq!(parsed.kind.as_deref(), Some("not_found_error"));
        assert_eq!(
            UpstreamFailure::from_openai_body(b"  <html>oops</html> ").message,
            "<html>oops</html>"
        );
    }
}
