//! A scriptable stand-in for OpenAI (and any OpenAI-compatible server).
//!
//! Each test queues the replies it wants ([`Reply`]); when the queue is empty
//! the default reply is used. Streamed answers follow OpenAI's format exactly:
//! a role chunk, content chunks, a finish chunk, then — only if the request
//! asked with `stream_options.include_usage` — a usage chunk with empty
//! `choices` (and `"usage": null` on every other chunk), then `data: [DONE]`.
//! Faults: any status with an OpenAI error body, a hang (headers never sent),
//! a connection dropped mid-stream, malformed JSON, an error event mid-stream.
//! Every request is recorded (path, headers, JSON body) for assertions.

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
use serde_json::{Value, json};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A scripted chat answer.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The content pieces; streamed one per chunk, joined when not streamed.
    /// `None` = echo: `"echo: <last user message>"` split into `echo_chunks`.
    pub pieces: Option<Vec<String>>,
    pub echo_chunks: usize,
    /// Prompt and completion tokens reported.
    pub usage: (u64, u64),
    pub cached_tokens: u64,
    /// Delay before each content chunk (streams) or before answering.
    pub delay: Duration,
    pub finish_reason: String,
    /// A tool call instead of text: name and argument pieces.
    pub tool_call: Option<(String, Vec<String>)>,
}

impl Default for Chat {
    fn default() -> Self {
        Chat {
            pieces: Some(vec!["Hello".into(), " from".into(), " upstream".into()]),
            echo_chunks: 4,
            usage: (11, 3),
            cached_tokens: 0,
            delay: Duration::ZERO,
            finish_reason: "stop".into(),
            tool_call: None,
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

    /// Wait this long before each chunk.
    pub fn delay(mut self, delay: Duration) -> Chat {
        self.delay = delay;
        self
    }

    /// Answer with a tool call.
    pub fn tool_call(name: &str, argument_pieces: &[&str]) -> Chat {
        Chat {
            tool_call: Some((
                name.into(),
                argument_pieces.iter().map(|s| s.to_string()).collect(),
            )),
            finish_reason: "tool_calls".into(),
            ..Chat::default()
        }
    }

    fn pieces_for(&self, request: &Value) -> Vec<String> {
        if let Some(p) = &self.pieces {
            return p.clone();
        }
        let text = format!("echo: {}", last_user_text(request));
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
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    /// Benchmarks turn recording off so memory stays flat.
    no_record: std::sync::atomic::AtomicBool,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
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
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(serve(listener, shared.clone()));
        MockUpstream { addr, shared, task }
    }

    /// The OpenAI-style base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
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

    /// The last request that reached this upstream.
    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received nothing")
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
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
            headers,
            body: body.clone(),
        });
    }
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| shared.default.lock().unwrap().clone())
        .unwrap_or(Reply::Chat(Chat::default()));
    if path.ends_with("/embeddings") && matches!(reply, Reply::Chat(_)) {
        return embeddings(&body);
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    match reply {
        Reply::Chat(chat) if stream => sse(chat_events(&chat, &body), chat.delay, Tail::Done),
        Reply::Chat(chat) => {
            if !chat.delay.is_zero() {
                tokio::time::sleep(chat.delay).await;
            }
            json_response(200, completion(&chat, &body).to_string())
        }
        Reply::Error {
            status,
            message,
            code,
        } => json_response(
            status,
            json!({"error": {"message": message, "type": error_type(status), "param": null, "code": code}})
                .to_string(),
        ),
        Reply::Hang => std::future::pending().await,
        Reply::DropAfter(chat, n) => sse(first_content(&chat, &body, n), chat.delay, Tail::Drop),
        Reply::StallAfter(chat, n) => sse(first_content(&chat, &body, n), chat.delay, Tail::Stall),
        Reply::ErrorEventAfter(chat, n) => {
            let mut events = first_content(&chat, &body, n);
            events.push((
                false,
                json!({"error": {"message": "The server had an error while processing your request", "type": "server_error", "param": null, "code": null}})
                    .to_string(),
            ));
            sse(events, chat.delay, Tail::End)
        }
        Reply::Malformed if stream => sse(vec![(false, "{\"id\": \"x\", \"choices\": [".into())], Duration::ZERO, Tail::Done),
        Reply::Malformed => json_response(200, "{\"id\": \"chatcmpl-1\", \"choices\": [".into()),
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

fn last_user_text(request: &Value) -> String {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
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
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn completion(chat: &Chat, request: &Value) -> Value {
    let message = match &chat.tool_call {
        Some((name, args)) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": "call_abc123", "type": "function", "function": {"name": name, "arguments": args.concat()}}],
            "refusal": null
        }),
        None => {
            json!({"role": "assistant", "content": chat.pieces_for(request).concat(), "refusal": null})
        }
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

/// (delayed, data) pairs: content chunks are delayed.
fn chat_events(chat: &Chat, request: &Value) -> Vec<(bool, String)> {
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
        c.to_string()
    };
    let mut events = Vec::new();
    match &chat.tool_call {
        Some((name, args)) => {
            events.push((
                false,
                chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_abc123", "type": "function", "function": {"name": name, "arguments": ""}}], "refusal": null}),
                    Value::Null,
                ),
            ));
            for a in args {
                events.push((
                    true,
                    chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
                        Value::Null,
                    ),
                ));
            }
        }
        None => {
            events.push((
                false,
                chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                ),
            ));
            for p in chat.pieces_for(request) {
                events.push((true, chunk(json!({"content": p}), Value::Null)));
            }
        }
    }
    events.push((false, chunk(json!({}), json!(chat.finish_reason))));
    if include_usage {
        events.push((
            false,
            json!({
                "id": "chatcmpl-upstream1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [],
                "usage": usage_json(chat),
            })
            .to_string(),
        ));
    }
    events
}

/// The role chunk and the first `n` content chunks.
fn first_content(chat: &Chat, request: &Value, n: usize) -> Vec<(bool, String)> {
    chat_events(chat, request).into_iter().take(n + 1).collect()
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

fn sse(events: Vec<(bool, String)>, delay: Duration, tail: Tail) -> Response<Body> {
    let mut frames: VecDeque<(bool, Bytes)> = events
        .into_iter()
        .map(|(delayed, data)| (delayed, Bytes::from(format!("data: {data}\n\n"))))
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
                Tail::Done | Tail::End => None,
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
