//! A scriptable stand-in for the providers weir talks to: OpenAI (and any
//! OpenAI-compatible server, Azure OpenAI included), Anthropic's Messages API
//! and Gemini's `generateContent`, each in its exact wire format ([`Wire`]).
//!
//! Each test queues the replies it wants ([`Reply`]); when the queue is empty
//! the default reply is used. One script serves every wire format: a
//! [`Chat`] says what to answer (text pieces, tool calls, usage, finish
//! reason) and each format writes it its own way. OpenAI streams: a role
//! chunk, content chunks, a finish chunk, then — only if the request asked
//! with `stream_options.include_usage` — a usage chunk with empty `choices`
//! (and `"usage": null` on every other chunk), then `data: [DONE]`. The
//! Anthropic and Gemini formats live in `upstream_anthropic.rs` and
//! `upstream_gemini.rs`. Faults, in every format: any status with the
//! vendor's error body, a hang (headers never sent), a connection dropped
//! mid-stream, malformed JSON, an error event mid-stream. Every request is
//! recorded (path, query, headers, JSON body, HTTP version, connection) for
//! assertions. [`MockUpstream::start_tls`] serves over TLS, offering HTTP/2
//! and HTTP/1.1 by ALPN as real providers do, with a certificate for
//! `127.0.0.1` signed by the test CA in `tests/fixtures/tls/ca.pem`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{upstream_anthropic as anthropic, upstream_gemini as gemini};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The wire format a mock upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// OpenAI Chat Completions (also what Azure OpenAI speaks).
    #[default]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Gemini's `generateContent` / `streamGenerateContent?alt=sse`.
    Gemini,
}

/// A scripted chat answer.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The content pieces; streamed one per chunk, joined when not streamed.
    /// `None` = echo: `"echo: <last user message>"` split into `echo_chunks`.
    pub pieces: Option<Vec<String>>,
    pub echo_chunks: usize,
    /// Prompt and completion tokens reported, as the vendor counts them
    /// (Anthropic's `input_tokens` excludes cache reads and writes; OpenAI's
    /// and Gemini's prompt counts include cache reads).
    pub usage: (u64, u64),
    pub cached_tokens: u64,
    /// Anthropic only: `cache_creation_input_tokens`.
    pub cache_creation_tokens: u64,
    /// Reasoning (Gemini: thoughts) tokens reported.
    pub reasoning_tokens: u64,
    /// Delay before each content chunk (streams) or before answering.
    pub delay: Duration,
    /// OpenAI's name (`stop`, `length`, `tool_calls`, `content_filter`),
    /// written as each vendor's equivalent; any other value is sent as is
    /// (`stop_sequence`, `refusal`, `SAFETY`…).
    pub finish_reason: String,
    /// Tool calls after the text: name and argument pieces.
    pub tool_calls: Vec<(String, Vec<String>)>,
    /// Streams: how long after the last event the body ends.
    pub end_delay: Duration,
}

impl Default for Chat {
    fn default() -> Self {
        Chat {
            pieces: Some(vec!["Hello".into(), " from".into(), " upstream".into()]),
            echo_chunks: 4,
            usage: (11, 3),
            cached_tokens: 0,
            cache_creation_tokens: 0,
            reasoning_tokens: 0,
            delay: Duration::ZERO,
            finish_reason: "stop".into(),
            tool_calls: Vec::new(),
            end_delay: Duration::ZERO,
        }
    }
}

impl Chat {
    /// An answer made of these pieces.
    pub fn text(pieces: &[&str]) -> Chat {
        Chat {
            pieces: Some(pieces.iter().map(|s| s.to_string()).collect()),
            ..Chat::default()
        }
    }

    /// An answer of `n` numbered pieces: `"{prefix}0 "`, `"{prefix}1 "`, …
    pub fn numbered(prefix: &str, n: usize) -> Chat {
        Chat {
            pieces: Some((0..n).map(|i| format!("{prefix}{i} ")).collect()),
            ..Chat::default()
        }
    }

    /// Echo the last user message back, in `chunks` pieces.
    pub fn echo(chunks: usize) -> Chat {
        Chat {
            pieces: None,
            echo_chunks: chunks,
            ..Chat::default()
        }
    }

    /// Report this usage.
    pub fn usage(mut self, prompt: u64, completion: u64) -> Chat {
        self.usage = (prompt, completion);
        self
    }

    /// Report these cache reads (and, for Anthropic, cache writes).
    pub fn cache(mut self, read: u64, written: u64) -> Chat {
        self.cached_tokens = read;
        self.cache_creation_tokens = written;
        self
    }

    /// Report these reasoning tokens.
    pub fn reasoning(mut self, tokens: u64) -> Chat {
        self.reasoning_tokens = tokens;
        self
    }

    /// End with this finish reason (see [`Chat::finish_reason`]).
    pub fn finish(mut self, reason: &str) -> Chat {
        self.finish_reason = reason.into();
        self
    }

    /// Streams: end the body this long after the last event (`[DONE]`).
    pub fn end_after(mut self, delay: Duration) -> Chat {
        self.end_delay = delay;
        self
    }

    /// Wait this long before each chunk.
    pub fn delay(mut self, delay: Duration) -> Chat {
        self.delay = delay;
        self
    }

    /// Answer with a tool call (and no text).
    pub fn tool_call(name: &str, argument_pieces: &[&str]) -> Chat {
        Chat {
            pieces: Some(Vec::new()),
            finish_reason: "tool_calls".into(),
            ..Chat::default()
        }
        .and_tool_call(name, argument_pieces)
    }

    /// Add another tool call.
    pub fn and_tool_call(mut self, name: &str, argument_pieces: &[&str]) -> Chat {
        self.tool_calls.push((
            name.into(),
            argument_pieces.iter().map(|s| s.to_string()).collect(),
        ));
        self.finish_reason = "tool_calls".into();
        self
    }

    /// Say these pieces before the tool calls.
    pub fn with_text(mut self, pieces: &[&str]) -> Chat {
        self.pieces = Some(pieces.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The content pieces for a request whose last user text is `last_user`.
    pub fn pieces_for(&self, last_user: &str) -> Vec<String> {
        if let Some(p) = &self.pieces {
            return p.clone();
        }
        let text = format!("echo: {last_user}");
        let chars: Vec<char> = text.chars().collect();
        let n = self.echo_chunks.max(1).min(chars.len().max(1));
        (0..n)
            .map(|k| {
                chars[chars.len() * k / n..chars.len() * (k + 1) / n]
                    .iter()
                    .collect()
            })
            .collect()
    }
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal answer; streamed if the request has `stream: true`.
    Chat(Chat),
    /// This status with OpenAI's error body.
    Error {
        status: u16,
        message: String,
        code: Option<String>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Stream this many content chunks, then drop the connection.
    DropAfter(Chat, usize),
    /// Stream this many content chunks, then stop sending (connection open).
    StallAfter(Chat, usize),
    /// Stream this many content chunks, then an OpenAI error event.
    ErrorEventAfter(Chat, usize),
    /// 200 with a body that is not valid JSON (or not valid SSE data).
    Malformed,
    /// Exact bytes.
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// 429 with OpenAI's error body and `retry-after: <secs>`.
    RetryAfter(u64),
}

impl Reply {
    /// An OpenAI-shaped error with this status.
    pub fn status(status: u16) -> Reply {
        let (message, code) = match status {
            400 => ("Invalid value for 'temperature'", "invalid_value"),
            401 => ("Incorrect API key provided: sk-up***key", "invalid_api_key"),
            404 => ("The model does not exist", "model_not_found"),
            429 => ("Rate limit reached for requests", "rate_limit_exceeded"),
            _ => (
                "The server had an error while processing your request",
                "server_error",
            ),
        };
        let message = if status == 529 { "Overloaded" } else { message };
        Reply::Error {
            status,
            message: message.into(),
            code: Some(code.into()),
        }
    }
}

/// What reached the upstream.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The query string (`""` when none).
    pub query: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body's bytes as they arrived.
    pub raw: bytes::Bytes,
    /// Which connection it came on: 1 for the first this upstream
    /// accepted, 2 for the next…
    pub connection: u64,
    pub version: http::Version,
}

#[derive(Default)]
struct Shared {
    wire: Wire,
    /// Benchmarks turn recording off so memory stays flat.
    no_record: std::sync::atomic::AtomicBool,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
    /// Connections accepted so far.
    connections: std::sync::atomic::AtomicU64,
    /// Connections open now.
    open: std::sync::atomic::AtomicU64,
    /// Serving over TLS (`https` URLs).
    tls: bool,
}

/// A running mock upstream; stops when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Start on a free loopback port.
    pub async fn start() -> MockUpstream {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Start on a given address.
    pub async fn start_on(addr: SocketAddr) -> MockUpstream {
        Self::start_wire(addr, Wire::OpenAi).await
    }

    /// An Anthropic Messages API stand-in on a free loopback port.
    pub async fn anthropic() -> MockUpstream {
        Self::start_wire("127.0.0.1:0".parse().unwrap(), Wire::Anthropic).await
    }

    /// A Gemini API stand-in on a free loopback port.
    pub async fn gemini() -> MockUpstream {
        Self::start_wire("127.0.0.1:0".parse().unwrap(), Wire::Gemini).await
    }

    /// Start speaking `wire` on a given address.
    pub async fn start_wire(addr: SocketAddr, wire: Wire) -> MockUpstream {
        Self::start_with(addr, wire, None).await
    }

    /// An OpenAI stand-in on a free loopback port, over TLS: HTTP/2 or
    /// HTTP/1.1 as the client's ALPN asks. The gateway trusts it with
    /// `SSL_CERT_FILE` = [`TEST_CA`].
    pub async fn start_tls() -> MockUpstream {
        let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with("127.0.0.1:0".parse().unwrap(), Wire::OpenAi, Some(acceptor)).await
    }

    async fn start_with(
        addr: SocketAddr,
        wire: Wire,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            wire,
            tls: tls.is_some(),
            ..Shared::default()
        });
        let task = tokio::spawn(serve(listener, shared.clone(), tls));
        MockUpstream { addr, shared, task }
    }

    /// The base URL as the provider kind's config wants it: OpenAI-style
    /// `http://127.0.0.1:PORT/v1`, Anthropic's without `/v1`, Gemini's with
    /// `/v1beta`.
    pub fn base_url(&self) -> String {
        let root = self.root_url();
        match self.shared.wire {
            Wire::OpenAi => format!("{root}/v1"),
            Wire::Anthropic => root,
            Wire::Gemini => format!("{root}/v1beta"),
        }
    }

    /// `http://127.0.0.1:PORT` (`https` over TLS), e.g. an Azure OpenAI
    /// resource endpoint.
    pub fn root_url(&self) -> String {
        let scheme = if self.shared.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Queue a reply for the next request.
    pub fn push(&self, reply: Reply) -> &Self {
        self.shared.script.lock().unwrap().push_back(reply);
        self
    }

    /// The reply used once the queue is empty.
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = Some(reply);
    }

    /// Stop recording requests (for long benchmark runs).
    pub fn stop_recording(&self) {
        self.shared
            .no_record
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Everything that reached this upstream so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections open now (a connection counts until the mock has
    /// noticed its end: at its next read or write).
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last request that reached this upstream.
    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received nothing")
    }
}

/// The test CA that signed [`MockUpstream::start_tls`]'s certificate.
pub const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls/ca.pem");

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let connection = 1 + shared
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tls = tls.clone();
        tokio::spawn(async move {
            shared
                .open
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let service = service_fn({
                let shared = shared.clone();
                move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&shared, req, connection).await) }
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
            shared
                .open
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
}

async fn answer(shared: &Shared, req: Request<Incoming>, connection: u64) -> Response<Body> {
    let method = req.method().to_string();
    let version = req.version();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers = req.headers().clone();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !shared.no_record.load(std::sync::atomic::Ordering::Relaxed) {
        shared.received.lock().unwrap().push(Received {
            method,
            path: path.clone(),
            query,
            headers,
            body: body.clone(),
            raw: bytes.clone(),
            connection,
            version,
        });
    }
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| shared.default.lock().unwrap().clone())
        .unwrap_or(Reply::Chat(Chat::default()));
    let wire = shared.wire;
    if matches!(reply, Reply::Chat(_)) {
        if path.ends_with("/embeddings") {
            return embeddings(&body);
        }
        if path.ends_with(":batchEmbedContents") {
            return json_response(200, gemini::embeddings(&body).to_string());
        }
    }
    let stream = match wire {
        Wire::Gemini => path.ends_with(":streamGenerateContent"),
        _ => body["stream"].as_bool().unwrap_or(false),
    };
    // OpenAI streams end with `[DONE]`; the others just close.
    let clean_end = match wire {
        Wire::OpenAi => Tail::Done,
        _ => Tail::End,
    };
    let events = |chat: &Chat| match wire {
        Wire::OpenAi => openai_events(chat, &body),
        Wire::Anthropic => anthropic::events(chat, &body),
        Wire::Gemini => gemini::events(chat, &body),
    };
    match reply {
        Reply::Chat(chat) if stream => sse(events(&chat), (chat.delay, chat.end_delay), clean_end),
        Reply::Chat(chat) => {
            if !chat.delay.is_zero() {
                tokio::time::sleep(chat.delay).await;
            }
            let answer = match wire {
                Wire::OpenAi => completion(&chat, &body),
                Wire::Anthropic => anthropic::message(&chat, &body),
                Wire::Gemini => gemini::response(&chat, &body),
            };
            json_response(200, answer.to_string())
        }
        Reply::Error {
            status,
            message,
            code,
        } => {
            let error = match wire {
                Wire::OpenAi => {
                    json!({"error": {"message": message, "type": error_type(status), "param": null, "code": code}})
                }
                Wire::Anthropic => anthropic::error_body(status, &message),
                Wire::Gemini => gemini::error_body(status, &message),
            };
            json_response(status, error.to_string())
        }
        Reply::Hang => std::future::pending().await,
        Reply::DropAfter(chat, n) => sse(
            first_content(events(&chat), n),
            (chat.delay, Duration::ZERO),
            Tail::Drop,
        ),
        Reply::StallAfter(chat, n) => sse(
            first_content(events(&chat), n),
            (chat.delay, Duration::ZERO),
            Tail::Stall,
        ),
        Reply::ErrorEventAfter(chat, n) => {
            let mut events = first_content(events(&chat), n);
            events.push((
                false,
                match wire {
                    Wire::OpenAi => data_event(
                        &json!({"error": {"message": "The server had an error while processing your request", "type": "server_error", "param": null, "code": null}}),
                    ),
                    Wire::Anthropic => anthropic::error_event(),
                    Wire::Gemini => gemini::error_event(),
                },
            ));
            sse(events, (chat.delay, chat.end_delay), Tail::End)
        }
        Reply::Malformed if stream => {
            let event = match wire {
                Wire::OpenAi => "data: {\"id\": \"x\", \"choices\": [\n\n".to_string(),
                Wire::Anthropic => anthropic::MALFORMED_EVENT.to_string(),
                Wire::Gemini => gemini::MALFORMED_EVENT.to_string(),
            };
            sse(
                vec![(false, event)],
                (Duration::ZERO, Duration::ZERO),
                clean_end,
            )
        }
        Reply::Malformed => {
            let body = match wire {
                Wire::OpenAi => "{\"id\": \"chatcmpl-1\", \"choices\": [",
                Wire::Anthropic => anthropic::MALFORMED_BODY,
                Wire::Gemini => gemini::MALFORMED_BODY,
            };
            json_response(200, body.into())
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => {
            let mut r = Response::new(full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            r
        }
        Reply::RetryAfter(secs) => {
            let mut r = json_response(
                429,
                json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
                    .to_string(),
            );
            r.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
            r
        }
    }
}

/// One `data:` event of an SSE stream.
pub(crate) fn data_event(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn error_type(status: u16) -> &'static str {
    match status {
        401 => "invalid_request_error",
        429 => "requests",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn json_response(status: u16, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// The last user message of a request with `messages` (OpenAI, Anthropic).
pub(crate) fn last_user_message(request: &Value) -> Option<&Value> {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
}

fn last_user_text(request: &Value) -> String {
    last_user_message(request)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn usage_json(chat: &Chat) -> Value {
    let (p, c) = chat.usage;
    json!({
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": chat.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": chat.reasoning_tokens, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn completion(chat: &Chat, request: &Value) -> Value {
    let text = chat.pieces_for(&last_user_text(request)).concat();
    let message = if chat.tool_calls.is_empty() {
        json!({"role": "assistant", "content": text, "refusal": null})
    } else {
        let calls: Vec<Value> = chat
            .tool_calls
            .iter()
            .enumerate()
            .map(|(k, (name, args))| json!({"id": tool_id(k), "type": "function", "function": {"name": name, "arguments": args.concat()}}))
            .collect();
        json!({
            "role": "assistant",
            "content": if text.is_empty() { Value::Null } else { json!(text) },
            "tool_calls": calls,
            "refusal": null
        })
    };
    json!({
        "id": "chatcmpl-upstream1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": request["model"],
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": chat.finish_reason}],
        "usage": usage_json(chat),
    })
}

/// OpenAI's id for tool call `k` (the first is `call_abc123`).
fn tool_id(k: usize) -> String {
    if k == 0 {
        "call_abc123".into()
    } else {
        format!("call_abc123_{k}")
    }
}

/// (delayed, event) pairs: content chunks are delayed.
fn openai_events(chat: &Chat, request: &Value) -> Vec<(bool, String)> {
    let include_usage = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let model = request["model"].clone();
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": "chatcmpl-upstream1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        data_event(&c)
    };
    let header = |k: usize, name: &str| json!([{"index": k, "id": tool_id(k), "type": "function", "function": {"name": name, "arguments": ""}}]);
    let pieces = chat.pieces_for(&last_user_text(request));
    let mut events = Vec::new();
    // Without text, the first tool call opens in the role chunk, as OpenAI does.
    match chat.tool_calls.first() {
        Some((name, _)) if pieces.is_empty() => events.push((
            false,
            chunk(
                json!({"role": "assistant", "content": null, "tool_calls": header(0, name), "refusal": null}),
                Value::Null,
            ),
        )),
        _ => events.push((
            false,
            chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ),
        )),
    }
    for p in &pieces {
        events.push((true, chunk(json!({"content": p}), Value::Null)));
    }
    for (k, (name, args)) in chat.tool_calls.iter().enumerate() {
        if k > 0 || !pieces.is_empty() {
            events.push((
                false,
                chunk(json!({"tool_calls": header(k, name)}), Value::Null),
            ));
        }
        for a in args {
            events.push((
                true,
                chunk(
                    json!({"tool_calls": [{"index": k, "function": {"arguments": a}}]}),
                    Value::Null,
                ),
            ));
        }
    }
    events.push((false, chunk(json!({}), json!(chat.finish_reason))));
    if include_usage {
        events.push((
            false,
            data_event(&json!({
                "id": "chatcmpl-upstream1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [],
                "usage": usage_json(chat),
            })),
        ));
    }
    events
}

/// The events up to and including the `n`th content event (for `n = 0`,
/// those before the first content event).
fn first_content(events: Vec<(bool, String)>, n: usize) -> Vec<(bool, String)> {
    let mut seen = 0;
    let mut out = Vec::new();
    for (content, event) in events {
        if seen == n && (content || n > 0) {
            break;
        }
        seen += usize::from(content);
        out.push((content, event));
    }
    out
}

enum Tail {
    /// `data: [DONE]`, then close.
    Done,
    /// Close without `[DONE]`.
    End,
    /// Abort the connection.
    Drop,
    /// Keep the connection open and send nothing more.
    Stall,
}

/// Stream whole SSE events (`(delayed, text)`), then end as `tail` says;
/// `delay` goes before each delayed event, `end_delay` before a clean end.
fn sse(
    events: Vec<(bool, String)>,
    (delay, end_delay): (Duration, Duration),
    tail: Tail,
) -> Response<Body> {
    let mut frames: VecDeque<(bool, Bytes)> = events
        .into_iter()
        .map(|(delayed, event)| (delayed, Bytes::from(event)))
        .collect();
    if let Tail::Done = tail {
        frames.push_back((false, Bytes::from_static(b"data: [DONE]\n\n")));
    }
    let stream = futures_util::stream::unfold(
        (frames, tail, false),
        move |(mut frames, tail, ended)| async move {
            if ended {
                return None;
            }
            if let Some((delayed, bytes)) = frames.pop_front() {
                if delayed && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                return Some((Ok(Frame::data(bytes)), (frames, tail, false)));
            }
            // Let hyper flush what was sent before the fault, as a real
            // server's earlier writes would have reached the wire.
            tokio::task::yield_now().await;
            match tail {
                Tail::Drop => Some((
                    Err(std::io::Error::other("connection dropped by the mock")),
                    (frames, tail, true),
                )),
                Tail::Stall => std::future::pending().await,
                Tail::Done | Tail::End => {
                    // Not even a zero sleep: tokio rounds a timer up to its
                    // next millisecond, and a provider ends its body with
                    // the last event (weir reads the end before the next
                    // request on the connection: a late one holds that up).
                    if !end_delay.is_zero() {
                        tokio::time::sleep(end_delay).await;
                    }
                    None
                }
            }
        },
    );
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

fn embeddings(request: &Value) -> Response<Body> {
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect(),
        _ => vec![],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": [s.len() as f64, 0.5, -0.25]}))
        .collect();
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    json_response(
        200,
        json!({"object": "list", "data": data, "model": request["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
            .to_string(),
    )
}
