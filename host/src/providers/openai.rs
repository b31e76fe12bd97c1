//! OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Together…),
//! and Azure OpenAI, which speaks the same body at other URLs: kind
//! `azure-openai` posts to `{base_url}/openai/deployments/{deployment}/…
//! ?api-version=…` (the target's `model` is the deployment name) with the key
//! in an `api-key` header instead of `Authorization: Bearer`.
//!
//! The client's body is forwarded as is, with `model` set to the target's and,
//! for streams, `stream_options.include_usage` forced on so weir can account
//! tokens (the usage chunk is stripped again later if the client did not ask
//! for it). Streamed answers are parsed incrementally: each upstream read is
//! fed to the SSE parser and every complete event becomes a [`ChatChunk`]
//! right away; nothing is buffered beyond the unfinished line.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Full;
use serde_json::{Map, Value};

use super::{
    AttemptError, ChatReply, ChunkStream, HttpClient, Provider, RawChunk, StreamFault, StreamItem,
    UpstreamBody, Whole, body_with, check_completion, error_chain, key_from_env, max_upstream_body,
    post_json, read_body, send_ok,
};
use crate::chat::splice::{self, Edit};
use crate::chat::{ChatChunk, ChatRequest};
use crate::config::{Config, DEFAULT_AZURE_API_VERSION, ProviderConfig};
use crate::sse::{SseEvent, SseParser};

/// An OpenAI-style upstream.
#[derive(Debug)]
pub struct OpenAi {
    /// `base_url` without a trailing slash, e.g. `https://api.openai.com/v1`.
    base: String,
    /// `Authorization: Bearer …`, or Azure's `api-key: …`.
    auth: Option<(HeaderName, HeaderValue)>,
    /// Azure OpenAI's `api-version`; `None` for plain OpenAI URLs.
    azure_api_version: Option<String>,
    /// Each operation's URL, parsed once, where it does not depend on the
    /// model (not Azure's).
    fixed_uris: Option<[http::Uri; 2]>,
}

/// What an OpenAI-style upstream is asked to do.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Chat = 0,
    Embeddings = 1,
}

impl Operation {
    fn path(self) -> &'static str {
        match self {
            Operation::Chat => "chat/completions",
            Operation::Embeddings => "embeddings",
        }
    }
}

impl OpenAi {
    /// From a validated provider config.
    pub fn new(p: &ProviderConfig) -> OpenAi {
        let base = base(p);
        let uri = |op: Operation| format!("{base}/{}", op.path()).parse().ok();
        OpenAi {
            fixed_uris: uri(Operation::Chat)
                .zip(uri(Operation::Embeddings))
                .map(<[_; 2]>::from),
            base,
            auth: key_from_env(p.api_key_env.as_deref(), "Bearer ").map(|v| (AUTHORIZATION, v)),
            azure_api_version: None,
        }
    }

    /// An `azure-openai` provider, from a validated config.
    pub fn azure(p: &ProviderConfig) -> OpenAi {
        OpenAi {
            base: base(p),
            auth: key_from_env(p.api_key_env.as_deref(), "")
                .map(|v| (HeaderName::from_static("api-key"), v)),
            azure_api_version: Some(
                p.api_version
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.into()),
            ),
            fixed_uris: None,
        }
    }

    /// The URL of `operation` for `model`, as text (Azure's, or one that
    /// did not parse: the request builder reports it).
    fn url(&self, operation: Operation, model: &str) -> String {
        let path = operation.path();
        match &self.azure_api_version {
            None => format!("{}/{path}", self.base),
            Some(version) => format!(
                "{}/openai/deployments/{model}/{path}?api-version={version}",
                self.base
            ),
        }
    }

    fn request(
        &self,
        operation: Operation,
        model: &str,
        body: Vec<u8>,
        stream: bool,
    ) -> Result<Request<Full<Bytes>>, AttemptError> {
        let auth: Vec<(&HeaderName, &HeaderValue)> = self
            .auth
            .iter()
            .map(|(name, value)| (name, value))
            .collect();
        match &self.fixed_uris {
            Some(uris) => post_json(uris[operation as usize].clone(), body, stream, &auth),
            None => post_json(self.url(operation, model), body, stream, &auth),
        }
    }

    pub(super) async fn chat(
        &self,
        client: &HttpClient,
        provider: &Provider,
        req: &ChatRequest,
        model: &str,
    ) -> Result<ChatReply, AttemptError> {
        let body = chat_body(req, model);
        let request = self.request(Operation::Chat, model, body, req.stream)?;
        let mut incoming = send_ok(client, provider, request).await?;
        if !req.stream {
            let bytes =
                read_body(&mut incoming, provider.idle_timeout, max_upstream_body()).await?;
            let raw = check_completion(Bytes::from(bytes))?;
            return Ok(ChatReply::Complete(Whole::Raw(raw)));
        }
        let mut reader = ChunkReader::new(incoming, provider.idle_timeout);
        match reader.next().await {
            Some(Ok(first)) => {
                reader.peeked = Some(first);
                Ok(ChatReply::Stream(ChunkStream::OpenAi(Box::new(reader))))
            }
            None => Err(AttemptError::Malformed(
                "the stream ended without a chunk".into(),
            )),
            Some(Err(StreamFault::IdleTimeout(_))) => Err(AttemptError::Timeout),
            Some(Err(StreamFault::Read(e))) => Err(AttemptError::Connect(e)),
            Some(Err(fault)) => Err(AttemptError::Malformed(fault.to_string())),
        }
    }

    pub(super) async fn embeddings(
        &self,
        client: &HttpClient,
        provider: &Provider,
        body: &Map<String, Value>,
        model: &str,
    ) -> Result<Value, AttemptError> {
        let model_value = Value::String(model.to_string());
        let request = self.request(
            Operation::Embeddings,
            model,
            body_with(body, &[("model", &model_value)]),
            false,
        )?;
        let mut incoming = send_ok(client, provider, request).await?;
        let bytes = read_body(&mut incoming, provider.idle_timeout, max_upstream_body()).await?;
        match crate::chat::from_json::<Value>(&bytes) {
            Ok(v @ Value::Object(_)) if v.get("data").is_some_and(Value::is_array) => Ok(v),
            _ => Err(AttemptError::Malformed("not an embeddings response".into())),
        }
    }
}

/// The upstream body: the client's, with `model` replaced and, for a
/// stream, `stream_options.include_usage` set (weir accounts from the final
/// usage chunk; it is dropped again if the client did not ask for it).
/// Spliced into the client's bytes when it can be (see
/// [`crate::chat::splice`]), else the parsed body re-serialized.
fn chat_body(req: &ChatRequest, model: &str) -> Vec<u8> {
    let model_value = Value::String(model.to_string());
    let stream_options = req.body().get("stream_options");
    if let Some(raw) = req.raw() {
        let model_json = serde_json::to_vec(&model_value).unwrap_or_default();
        let spliced = match (req.stream, stream_options) {
            (false, _) => splice::with_members(raw, &[("model", Edit::Set(&model_json))]),
            (true, _) if req.include_usage => {
                splice::with_members(raw, &[("model", Edit::Set(&model_json))])
            }
            (true, None | Some(Value::Null)) => splice::with_members(
                raw,
                &[
                    ("model", Edit::Set(&model_json)),
                    ("stream_options", Edit::Set(br#"{"include_usage":true}"#)),
                ],
            ),
            // Options of the client's own to keep: merged below.
            (true, Some(_)) => None,
        };
        if let Some(body) = spliced {
            return body;
        }
    }
    if !req.stream {
        return body_with(req.body(), &[("model", &model_value)]);
    }
    let mut options = match stream_options {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    options.insert("include_usage".into(), Value::Bool(true));
    let options = Value::Object(options);
    body_with(
        req.body(),
        &[("model", &model_value), ("stream_options", &options)],
    )
}

fn base(p: &ProviderConfig) -> String {
    Config::base_url(p)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string()
}

/// Reads an OpenAI SSE stream chunk by chunk.
#[derive(Debug)]
pub struct ChunkReader {
    body: UpstreamBody,
    idle: Duration,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
    peeked: Option<ChatChunk>,
    saw_finish: bool,
    ended: bool,
    /// Chunks may be passed through as they came (see [`RawChunk`]).
    pub(super) raw: bool,
    /// Raw chunks note where their texts are.
    pub(super) texts: bool,
}

impl ChunkReader {
    fn new(body: UpstreamBody, idle: Duration) -> Self {
        ChunkReader {
            body,
            idle,
            parser: SseParser::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            peeked: None,
            saw_finish: false,
            ended: false,
            raw: false,
            texts: false,
        }
    }

    /// The next chunk, passed through as it came when the reader is in
    /// raw mode and the chunk is a plain one.
    pub async fn next_item(&mut self) -> Option<Result<StreamItem, StreamFault>> {
        if self.raw && self.peeked.is_none() && !self.ended {
            if let Err(end) = self.fill().await {
                return end.map(Err);
            }
            if let Some(event) = self.events.pop_front() {
                match read_raw(event, self.texts) {
                    Ok(raw) => return Some(Ok(StreamItem::Raw(raw))),
                    // Errors, `[DONE]`, a finish and anything unusual are
                    // decoded.
                    Err(event) => self.events.push_front(event),
                }
            }
        }
        self.next().await.map(|c| c.map(StreamItem::Chunk))
    }

    /// Read until an event is queued. `Err` when the stream ended: `None`
    /// cleanly, else the fault.
    async fn fill(&mut self) -> Result<(), Option<StreamFault>> {
        while self.events.is_empty() {
            match self.body.next_frame(self.idle).await {
                Err(_) => {
                    self.ended = true;
                    return Err(Some(StreamFault::IdleTimeout(self.idle)));
                }
                Ok(None) => {
                    self.ended = true;
                    // Some compatible servers omit `[DONE]`; a stream whose
                    // choices all finished has ended cleanly anyway.
                    return Err((!self.saw_finish).then_some(StreamFault::Closed));
                }
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Err(Some(StreamFault::Read(error_chain(&e))));
                }
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = self.parser.feed(&data, &mut self.scratch) {
                        self.ended = true;
                        return Err(Some(StreamFault::Malformed(e.to_string())));
                    }
                    self.events.extend(self.scratch.drain(..));
                }
            }
        }
        Ok(())
    }

    /// The next chunk; `None` after `[DONE]`.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, StreamFault>> {
        if let Some(chunk) = self.peeked.take() {
            return Some(Ok(chunk));
        }
        loop {
            if self.ended {
                return None;
            }
            if let Err(end) = self.fill().await {
                return end.map(Err);
            }
            let Some(event) = self.events.pop_front() else {
                continue;
            };
            match decode_event(&event) {
                Decoded::Done => {
                    self.ended = true;
                    self.body.finish();
                    return None;
                }
                Decoded::Skip => continue,
                Decoded::Chunk(chunk) => {
                    if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                        self.saw_finish = true;
                    }
                    return Some(Ok(chunk));
                }
                Decoded::Fault(fault) => {
                    self.ended = true;
                    return Some(Err(fault));
                }
            }
        }
    }
}

/// The top-level members a passed-through chunk is scanned for, in this
/// order ([`RawChunk::members`]).
pub const RAW_KEYS: [&str; 4] = ["model", "usage", "choices", "error"];

/// A plain chunk event read for pass-through, or the event back when it is
/// not one (`[DONE]`, an error, a finish, anything unusual: those are
/// decoded). One scan for the top-level members; only `choices` (and a
/// non-null `usage`) are parsed; with `texts`, where each choice's text is
/// is noted.
fn read_raw(event: SseEvent, texts: bool) -> Result<RawChunk, SseEvent> {
    use std::borrow::Cow;

    use super::{LiteText, RawText};

    #[derive(serde::Deserialize)]
    struct LiteChoice<'a> {
        #[serde(default)]
        index: Option<u32>,
        #[serde(borrow, default)]
        delta: Option<LiteDelta<'a>>,
        #[serde(borrow, default)]
        finish_reason: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct LiteDelta<'a> {
        #[serde(borrow, default)]
        content: Option<LiteText<'a>>,
    }

    let data = event.data.as_bytes();
    // Several `data:` lines join with newlines, which cannot go out as one.
    if memchr::memchr(b'\n', data).is_some() {
        return Err(event);
    }
    let Some(members) = splice::Members::scan(data, &RAW_KEYS) else {
        return Err(event);
    };
    let is_null = |v: &[u8]| v == b"null";
    if members.value(data, 3).is_some_and(|v| !is_null(v)) {
        return Err(event);
    }
    let usage = match members.value_str(&event.data, 1) {
        None => None,
        Some("null") => None,
        Some(v) => match serde_json::from_str::<crate::chat::Usage>(v) {
            Ok(usage) => Some(usage),
            Err(_) => return Err(event),
        },
    };
    let choices: Vec<LiteChoice> = match members.value_str(&event.data, 2) {
        None => Vec::new(),
        Some(v) => match serde_json::from_str(v) {
            Ok(choices) => choices,
            Err(_) => return Err(event),
        },
    };
    if choices.iter().any(|c| c.finish_reason.is_some()) {
        return Err(event);
    }
    fn content<'c>(c: &'c LiteChoice<'_>) -> Option<&'c LiteText<'c>> {
        c.delta.as_ref()?.content.as_ref()
    }
    let content_bytes = choices
        .iter()
        .filter_map(content)
        .map(LiteText::text_len)
        .sum();
    let texts = match texts {
        false => Vec::new(),
        true => choices
            .iter()
            .map(|c| RawText {
                index: c.index.unwrap_or_default(),
                range: content(c).map(|text| text.range(data)),
            })
            .collect(),
    };
    let has_choices = !choices.is_empty();
    drop(choices);
    Ok(RawChunk {
        data: event.data,
        members,
        usage,
        has_choices,
        content_bytes,
        texts,
    })
}

#[allow(clippy::large_enum_variant)] // short-lived, never stored
enum Decoded {
    Chunk(ChatChunk),
    Done,
    Skip,
    Fault(StreamFault),
}

fn decode_event(event: &SseEvent) -> Decoded {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Decoded::Done;
    }
    if data.is_empty() {
        return Decoded::Skip;
    }
    match serde_json::from_str::<ChatChunk>(data) {
        Ok(chunk) => match chunk.extra.get("error") {
            Some(raw) => {
                let error: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| raw.get().to_string(), str::to_owned);
                Decoded::Fault(StreamFault::Upstream(message))
            }
            None => Decoded::Chunk(chunk),
        },
        Err(e) => Decoded::Fault(StreamFault::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    #[test]
    fn plain_chunks_pass_and_the_rest_is_decoded() {
        let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"h\u00e9llo"},"finish_reason":null}],"usage":null}"#;
        let raw = read_raw(event(chunk), false).unwrap();
        assert_eq!(raw.content_bytes, "héllo".len());
        assert!(raw.has_choices);
        assert!(raw.usage.is_none());
        assert_eq!(
            raw.members.value(raw.data.as_bytes(), 0),
            Some(&b"\"m\""[..])
        );

        let usage = r#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let raw = read_raw(event(usage), false).unwrap();
        assert!(!raw.has_choices);
        assert_eq!(raw.usage.map(|u| u.total_tokens), Some(5));

        for data in [
            "[DONE]",
            "",
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            "{\"choices\":\n[]}",
            r#"{"model":"a","model":"b","choices":[]}"#,
            r#"{"choices":"not a list"}"#,
        ] {
            assert!(read_raw(event(data), false).is_err(), "{data}");
        }
        assert!(read_raw(event(r#"{"error":null,"choices":[]}"#), false).is_ok());
    }
}
