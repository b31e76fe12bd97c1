//! Anthropic's Messages API: `POST {base_url}/v1/messages` with `x-api-key`
//! and `anthropic-version: 2023-06-01`.
//!
//! Requests are rebuilt field by field (nothing passes through unread, since
//! Anthropic rejects unknown fields): system and developer messages become
//! `system`; tool results become `tool_result` blocks of a user turn, and
//! consecutive turns of one role are merged into one (Anthropic wants them
//! alternating, with tool results first); `image_url` parts become `image`
//! blocks (`url` or `base64` source); `max_tokens` is required, so a request
//! without one gets [`DEFAULT_MAX_TOKENS`]. What has no Anthropic equivalent
//! is refused with a 400 naming the field (`n` > 1, JSON response formats,
//! audio parts, file ids) rather than silently dropped; sampling knobs that
//! only tune (penalties, `seed`, `logit_bias`, `logprobs`) are ignored.
//!
//! Usage: Anthropic's `input_tokens` excludes cache reads and cache writes,
//! OpenAI's `prompt_tokens` includes everything read. So `prompt_tokens` =
//! input + cache reads + cache writes, `cached_tokens` = cache reads, and the
//! cache writes are also reported as `prompt_tokens_details.
//! cache_creation_tokens`. Weir prices cache writes at the normal input rate
//! (Anthropic bills them at 1.25×, so cost is under-counted by a quarter of
//! the write tokens; exact when no cache is written).
//!
//! Streams: `message_start` → the role chunk; text and `input_json_delta`
//! deltas → content and tool-call fragments (the OpenAI tool-call `index`
//! counts `tool_use` blocks only); `message_delta` → the finish chunk;
//! `message_stop` → the usage chunk and the end; `ping` and unknown events
//! are skipped; an `error` event fails the attempt (overloaded → failover) or,
//! after the first chunk, ends the stream with an error.

use std::collections::VecDeque;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    AttemptError, ChatReply, ChunkMeta, ChunkStream, EventError, HttpClient, Provider, StreamFault,
    Translate, Translated, UpstreamFailure, Whole, key_from_env, max_upstream_body, now_secs,
    parse_data_url, post_json, read_body, role_delta, send_ok,
};
use crate::chat::open::Extra;
use crate::chat::{
    ChatChunk, ChatCompletion, ChatRequest, Choice, CompletionTokensDetails, Delta, FunctionDelta,
    PromptTokensDetails, ResponseMessage, ToolCallDelta, Usage,
};
use crate::config::{Config, ProviderConfig};
use crate::error::GatewayError;
use crate::sse::SseEvent;

/// The `anthropic-version` header weir speaks.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the request has none (Anthropic requires it). Every
/// current Claude model accepts at least this many output tokens.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An Anthropic upstream.
#[derive(Debug)]
pub struct Anthropic {
    /// `base_url` without a trailing slash, e.g. `https://api.anthropic.com`.
    base: String,
    key: Option<HeaderValue>,
    version: HeaderValue,
}

impl Anthropic {
    /// From a validated provider config.
    pub fn new(p: &ProviderConfig) -> Anthropic {
        Anthropic {
            base: Config::base_url(p)
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            key: key_from_env(p.api_key_env.as_deref(), ""),
            version: HeaderValue::from_static(API_VERSION),
        }
    }

    pub(super) async fn chat(
        &self,
        client: &HttpClient,
        provider: &Provider,
        req: &ChatRequest,
        model: &str,
    ) -> Result<ChatReply, AttemptError> {
        let body = translate_request(req, model).map_err(AttemptError::Rejected)?;
        let api_key = HeaderName::from_static("x-api-key");
        let version = HeaderName::from_static("anthropic-version");
        let mut headers = vec![(&version, &self.version)];
        if let Some(key) = &self.key {
            headers.push((&api_key, key));
        }
        let request = post_json(
            &format!("{}/v1/messages", self.base),
            body.to_string().into_bytes(),
            req.stream,
            &headers,
        )?;
        let mut incoming = send_ok(client, provider, request).await?;
        if !req.stream {
            let bytes =
                read_body(&mut incoming, provider.idle_timeout, max_upstream_body()).await?;
            return Ok(ChatReply::Complete(Whole::Parsed(Box::new(
                translate_response(&bytes, model)?,
            ))));
        }
        let stream = Translated::start(incoming, provider.idle_timeout, Events::new(model)).await?;
        Ok(ChatReply::Stream(ChunkStream::Anthropic(Box::new(stream))))
    }
}

/// A request that cannot be expressed for Anthropic: 400 naming the field.
fn invalid(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(param, message)
}

/// Build the Messages API body for `req`, sent to `model`.
pub fn translate_request(req: &ChatRequest, model: &str) -> Result<Value, GatewayError> {
    let body = req.body();
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );

    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in req.messages().iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(i, message)?);
                continue;
            }
            "user" => ("user", user_blocks(i, message)?),
            "assistant" => ("assistant", assistant_blocks(i, message)?),
            "tool" => ("user", vec![tool_result(i, message)?]),
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "`messages[{i}].role` `{other}` cannot be sent to an anthropic provider; use `tool` messages for function results"
                    ),
                ));
            }
        };
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    match system.len() {
        0 => {}
        1 if is_plain_text(&system[0]) => {
            out.insert("system".into(), system[0]["text"].clone());
        }
        _ => {
            out.insert("system".into(), Value::Array(system));
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| {
            let content = match blocks.as_slice() {
                [only] if is_plain_text(only) => only["text"].clone(),
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    if let Some(stop) = body.get("stop") {
        match stop {
            Value::Null => {}
            Value::String(s) => {
                out.insert("stop_sequences".into(), json!([s]));
            }
            Value::Array(items) if items.iter().all(Value::is_string) => {
                out.insert("stop_sequences".into(), stop.clone());
            }
            _ => {
                return Err(invalid(
                    "stop",
                    "`stop` must be a string or an array of strings",
                ));
            }
        }
    }
    for field in ["temperature", "top_p", "top_k"] {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    if req.stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(invalid(
            "n",
            "`n` must be 1 for an anthropic provider (it answers with one choice)",
        ));
    }
    if let Some(format) = body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        && format != "text"
    {
        return Err(invalid(
            "response_format",
            format!("`response_format` `{format}` is not supported by an anthropic provider"),
        ));
    }

    let tools = match body.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(tools)) => Some(translate_tools(tools)?),
        Some(_) => return Err(invalid("tools", "`tools` must be an array")),
    };
    let has_tools = tools.as_ref().is_some_and(|t| !t.is_empty());
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(choice) => Some(tool_choice(choice)?),
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) && has_tools {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(out))
}

/// A text block with nothing but text (can be written as a plain string).
fn is_plain_text(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("text")
        && block.as_object().is_some_and(|b| b.len() == 2)
}

fn text_block(text: &str, part: Option<&Value>) -> Value {
    let mut block = json!({"type": "text", "text": text});
    if let Some(cache) = part.and_then(|p| p.get("cache_control")) {
        block["cache_control"] = cache.clone();
    }
    block
}

/// The text parts of a message (system, developer).
fn text_blocks(i: usize, message: &Value) -> Result<Vec<Value>, GatewayError> {
    match message.get("content") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![text_block(s, None)]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .filter_map(|(j, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                    (!text.is_empty()).then(|| Ok(text_block(text, Some(part))))
                }
                _ => Some(Err(unsupported_part(i, j, part))),
            })
            .collect(),
        Some(_) => Ok(Vec::new()),
    }
}

fn unsupported_part(i: usize, j: usize, part: &Value) -> GatewayError {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("?");
    invalid(
        format!("messages[{i}].content[{j}].type"),
        format!(
            "content part type `{kind}` in `messages[{i}].content[{j}]` is not supported by an anthropic provider"
        ),
    )
}

/// A user message's blocks: text, images, PDF documents.
fn user_blocks(i: usize, message: &Value) -> Result<Vec<Value>, GatewayError> {
    let Some(Value::Array(parts)) = message.get("content") else {
        return text_blocks(i, message);
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    blocks.push(text_block(text, Some(part)));
                }
            }
            Some("image_url") => blocks.push(image_block(i, j, part)?),
            Some("file") => blocks.push(document_block(i, j, part)?),
            _ => return Err(unsupported_part(i, j, part)),
        }
    }
    Ok(blocks)
}

/// `{"type":"image_url","image_url":{"url"}}` → an `image` block.
fn image_block(i: usize, j: usize, part: &Value) -> Result<Value, GatewayError> {
    let image = &part["image_url"];
    let url = image
        .get("url")
        .and_then(Value::as_str)
        .or_else(|| image.as_str())
        .ok_or_else(|| {
            invalid(
                format!("messages[{i}].content[{j}].image_url.url"),
                format!("`messages[{i}].content[{j}].image_url.url` is required"),
            )
        })?;
    let source = if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url).ok_or_else(|| {
            invalid(
                format!("messages[{i}].content[{j}].image_url.url"),
                format!(
                    "`messages[{i}].content[{j}].image_url.url` must be a base64 data URL (data:image/png;base64,…) or an http(s) URL"
                ),
            )
        })?;
        json!({"type": "base64", "media_type": media_type, "data": data})
    } else {
        json!({"type": "url", "url": url})
    };
    let mut block = json!({"type": "image", "source": source});
    if let Some(cache) = part.get("cache_control") {
        block["cache_control"] = cache.clone();
    }
    Ok(block)
}

/// `{"type":"file","file":{"file_data":"data:application/pdf;base64,…"}}` →
/// a `document` block. OpenAI file ids mean nothing to Anthropic.
fn document_block(i: usize, j: usize, part: &Value) -> Result<Value, GatewayError> {
    let data = part["file"]["file_data"].as_str().and_then(parse_data_url);
    let Some((media_type, data)) = data else {
        return Err(invalid(
            format!("messages[{i}].content[{j}].file.file_data"),
            format!(
                "`messages[{i}].content[{j}].file` needs `file_data` as a base64 data URL for an anthropic provider"
            ),
        ));
    };
    Ok(json!({
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data}
    }))
}

/// An assistant turn: its text, then a `tool_use` block per tool call.
fn assistant_blocks(i: usize, message: &Value) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = match message.get("content") {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .filter(|t| !t.is_empty())
            .map(|t| text_block(t, None))
            .collect(),
        _ => text_blocks(i, message)?,
    };
    let calls = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls.as_slice(),
        _ => &[],
    };
    for (j, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let id = call.get("id").and_then(Value::as_str);
        let name = call["function"].get("name").and_then(Value::as_str);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(invalid(
                at.clone(),
                format!("`{at}` needs an `id` and a `function.name`"),
            ));
        };
        let arguments = call["function"]["arguments"].as_str().unwrap_or("");
        let input = super::arguments_object(arguments).ok_or_else(|| {
            invalid(
                format!("{at}.function.arguments"),
                format!("`{at}.function.arguments` must be a JSON object"),
            )
        })?;
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(blocks)
}

/// A `tool` message → a `tool_result` block.
fn tool_result(i: usize, message: &Value) -> Result<Value, GatewayError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                format!("messages[{i}].tool_call_id"),
                format!("`messages[{i}].tool_call_id` is required for a tool message"),
            )
        })?;
    let content = match message.get("content") {
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(_)) => Value::Array(user_blocks(i, message)?),
        _ => json!(""),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

/// OpenAI function tools → Anthropic tools.
fn translate_tools(tools: &[Value]) -> Result<Vec<Value>, GatewayError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(invalid(
                    format!("tools[{i}].type"),
                    format!(
                        "tool type `{kind}` is not supported by an anthropic provider (only `function`)"
                    ),
                ));
            }
            let function = &tool["function"];
            let name = function.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(
                    format!("tools[{i}].function.name"),
                    format!("`tools[{i}].function.name` is required"),
                )
            })?;
            let mut out = json!({"name": name});
            if let Some(d) = function.get("description").and_then(Value::as_str) {
                out["description"] = json!(d);
            }
            out["input_schema"] = match function.get("parameters") {
                Some(p @ Value::Object(_)) => p.clone(),
                _ => json!({"type": "object", "properties": {}}),
            };
            Ok(out)
        })
        .collect()
}

/// `tool_choice`: auto, none, required (= any), or one named function.
fn tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(invalid(
                "tool_choice",
                format!("`tool_choice` `{other}` is not one of auto, none, required"),
            )),
        },
        _ => match choice["function"]["name"].as_str() {
            Some(name) => Ok(json!({"type": "tool", "name": name})),
            None => Err(invalid(
                "tool_choice",
                "`tool_choice` must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":…}}",
            )),
        },
    }
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything newer.
        _ => "stop",
    }
}

/// `usage` of a message or stream.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Later figures win (a stream reports input at the start, output at
    /// the end; newer versions repeat both).
    fn merge(&mut self, later: &AnthropicUsage) {
        let pick = |a: &mut Option<u64>, b: Option<u64>| {
            if b.is_some() {
                *a = b;
            }
        };
        pick(&mut self.input_tokens, later.input_tokens);
        pick(&mut self.output_tokens, later.output_tokens);
        pick(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        pick(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }

    /// In OpenAI's terms (see the module docs for cache tokens).
    pub fn to_openai(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens.unwrap_or(0) + read + written;
        let mut usage = Usage::new(prompt, self.output_tokens.unwrap_or(0));
        let mut details = PromptTokensDetails {
            cached_tokens: read,
            extra: Extra::default(),
        };
        if written > 0 {
            details
                .extra
                .insert("cache_creation_tokens", &json!(written));
        }
        usage.prompt_tokens_details = Some(details);
        usage.completion_tokens_details = Some(CompletionTokensDetails::default());
        usage
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking, server tools and anything newer: not part of the answer.
    #[serde(other)]
    Other,
}

/// A whole Messages API answer → a chat completion.
pub fn translate_response(bytes: &[u8], model: &str) -> Result<ChatCompletion, AttemptError> {
    let message: Message = crate::chat::from_json(bytes)
        .map_err(|e| AttemptError::Malformed(format!("not an anthropic message: {e}")))?;
    if message.kind != "message" {
        return Err(AttemptError::Malformed(format!(
            "expected an anthropic message, got type `{}`",
            message.kind
        )));
    }
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": input_text(&input)},
            })),
            Block::Other => {}
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(text)
    };
    Ok(ChatCompletion {
        id: message.id,
        object: "chat.completion".into(),
        created: now_secs(),
        model: model.to_string(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                extra: Extra::default(),
            },
            finish_reason: Some(
                finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn")).into(),
            ),
            extra: Extra::default(),
        }],
        usage: Some(message.usage.to_openai()),
        extra: Extra::default(),
    })
}

/// A tool's `input` as the JSON text OpenAI's `arguments` carries.
fn input_text(input: &Value) -> String {
    match input {
        Value::Null => "{}".into(),
        other => other.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    /// `ping`, `content_block_stop` and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking and signature deltas.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// The HTTP status an Anthropic error type stands for.
fn error_status(kind: &str) -> StatusCode {
    let code = match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    };
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The stream translator: Anthropic events → OpenAI chunks.
#[derive(Debug)]
pub struct Events {
    meta: ChunkMeta,
    role_sent: bool,
    /// Content block index → OpenAI tool-call index.
    tools: Vec<(u64, u32)>,
    usage: AnthropicUsage,
    finished: bool,
}

impl Events {
    /// For a stream from `model`.
    pub fn new(model: &str) -> Events {
        Events {
            meta: ChunkMeta {
                id: String::new(),
                created: now_secs(),
                model: model.to_string(),
            },
            role_sent: false,
            tools: Vec::new(),
            usage: AnthropicUsage::default(),
            finished: false,
        }
    }

    fn push(&mut self, delta: Delta, out: &mut VecDeque<ChatChunk>) {
        if !self.role_sent {
            self.role_sent = true;
            out.push_back(self.meta.chunk(0, role_delta(), None));
        }
        out.push_back(self.meta.chunk(0, delta, None));
    }

    fn tool_delta(index: u32, id: Option<String>, function: FunctionDelta) -> Delta {
        Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                kind: id.as_ref().map(|_| "function".to_string()),
                id,
                function: Some(function),
                extra: Extra::default(),
            }]),
            ..Default::default()
        }
    }
}

impl Translate for Events {
    fn event(
        &mut self,
        event: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, EventError> {
        if event.data.trim().is_empty() {
            return Ok(false);
        }
        let parsed: Event = serde_json::from_str(&event.data)
            .map_err(|e| EventError::malformed(format!("not an anthropic stream event: {e}")))?;
        match parsed {
            Event::MessageStart { message } => {
                self.meta.id = message.id;
                self.usage.merge(&message.usage);
                if !self.role_sent {
                    self.role_sent = true;
                    out.push_back(self.meta.chunk(0, role_delta(), None));
                }
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::Text { text } if !text.is_empty() => self.push(
                    Delta {
                        content: Some(text),
                        ..Default::default()
                    },
                    out,
                ),
                Block::ToolUse { id, name, input } => {
                    let tool = self.tools.len() as u32;
                    self.tools.push((index, tool));
                    // Arguments normally follow as `input_json_delta`s; a
                    // block that arrives whole carries them here.
                    let arguments = match &input {
                        Value::Object(m) if !m.is_empty() => input.to_string(),
                        _ => String::new(),
                    };
                    let delta = Self::tool_delta(
                        tool,
                        Some(id),
                        FunctionDelta {
                            name: Some(name),
                            arguments: Some(arguments),
                            extra: Extra::default(),
                        },
                    );
                    self.push(delta, out);
                }
                _ => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } if !text.is_empty() => self.push(
                    Delta {
                        content: Some(text),
                        ..Default::default()
                    },
                    out,
                ),
                BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                    if let Some(&(_, tool)) = self.tools.iter().find(|(block, _)| *block == index) {
                        let delta = Self::tool_delta(
                            tool,
                            None,
                            FunctionDelta {
                                name: None,
                                arguments: Some(partial_json),
                                extra: Extra::default(),
                            },
                        );
                        self.push(delta, out);
                    }
                }
                _ => {}
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.usage.merge(&usage);
                }
                if let Some(reason) = delta.stop_reason {
                    self.finish(finish_reason(&reason), out);
                }
            }
            Event::MessageStop => {
                self.finish("stop", out);
                out.push_back(self.meta.usage_chunk(self.usage.to_openai()));
                return Ok(true);
            }
            Event::Error { error } => {
                return Err(EventError::Upstream(
                    error_status(&error.kind),
                    UpstreamFailure {
                        message: if error.message.is_empty() {
                            error.kind.clone()
                        } else {
                            error.message
                        },
                        kind: (!error.kind.is_empty()).then_some(error.kind),
                        ..Default::default()
                    },
                ));
            }
            Event::Other => {}
        }
        Ok(false)
    }

    fn end(&mut self, _out: &mut VecDeque<ChatChunk>) -> Result<(), StreamFault> {
        Err(StreamFault::Closed)
    }
}

impl Events {
    /// The finish chunk, once.
    fn finish(&mut self, reason: &str, out: &mut VecDeque<ChatChunk>) {
        if self.finished {
            return;
        }
        self.finished = true;
        if !self.role_sent {
            self.role_sent = true;
            out.push_back(self.meta.chunk(0, role_delta(), None));
        }
        out.push_back(self.meta.chunk(0, Delta::default(), Some(reason.into())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    /// Every chunk a transcript turns into, or the error that ended it.
    fn translate_stream(transcript: &str) -> (Vec<Value>, Option<EventError>) {
        let mut events = Vec::new();
        SseParser::new()
            .feed(transcript.as_bytes(), &mut events)
            .unwrap();
        let mut state = Events::new("claude-test");
        state.meta.created = 1_700_000_000;
        let mut out = VecDeque::new();
        let mut error = None;
        let mut done = false;
        for event in &events {
            match state.event(event, &mut out) {
                Ok(true) => {
                    done = true;
                    break;
                }
                Ok(false) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if !done
            && error.is_none()
            && let Err(fault) = state.end(&mut out)
        {
            error = Some(EventError::Fault(fault));
        }
        let chunks = out
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        (chunks, error)
    }

    #[test]
    fn full_request_translation() {
        let req = request(json!({
            "model": "chat",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these pictures?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "low"}}
                ]},
                {"role": "assistant", "content": "Let me check the weather first.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C, cloudy"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "14:05"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather by city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 300,
            "user": "user-42",
            "seed": 7,
            "stream": true
        }));
        insta::assert_json_snapshot!(translate_request(&req, "claude-sonnet-4-5").unwrap());
    }

    #[test]
    fn defaults_and_plain_strings() {
        let req = request(json!({
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
        }));
        assert_eq!(
            translate_request(&req, "claude-haiku").unwrap(),
            json!({
                "model": "claude-haiku",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "messages": [{"role": "user", "content": "hi"}],
            })
        );
    }

    #[test]
    fn tool_choice_forms() {
        for (choice, want) in [
            (json!("auto"), json!({"type": "auto"})),
            (json!("none"), json!({"type": "none"})),
            (json!("required"), json!({"type": "any"})),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                json!({"type": "tool", "name": "f"}),
            ),
        ] {
            assert_eq!(tool_choice(&choice).unwrap(), want);
        }
        assert!(tool_choice(&json!("sometimes")).is_err());
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let base = json!({"model": "chat", "messages": [{"role": "user", "content": "x"}]});
        let cases = [
            ("n", json!(2), "n"),
            (
                "response_format",
                json!({"type": "json_object"}),
                "response_format",
            ),
            ("tools", json!([{"type": "web_search"}]), "tools[0].type"),
            ("stop", json!(5), "stop"),
        ];
        for (field, value, param) in cases {
            let mut body = base.clone();
            body[field] = value;
            let err = translate_request(&request(body), "m").unwrap_err();
            match err {
                GatewayError::InvalidRequest { param: Some(p), .. } => assert_eq!(p, param),
                other => panic!("{field}: {other:?}"),
            }
        }
        let bad_args = json!({"model": "chat", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1"}}]}
        ]});
        let err = translate_request(&request(bad_args), "m").unwrap_err();
        assert!(
            err.to_string().contains("tool_calls[0].function.arguments"),
            "{err}"
        );
        let audio = json!({"model": "chat", "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}
        ]});
        let err = translate_request(&request(audio), "m").unwrap_err();
        assert!(err.to_string().contains("input_audio"), "{err}");
    }

    #[test]
    fn whole_message_with_tools_and_cache_usage() {
        let body = json!({
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 7, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 100}
        });
        let completion = translate_response(body.to_string().as_bytes(), "m").unwrap();
        let mut v = serde_json::to_value(&completion).unwrap();
        v["created"] = json!(0);
        insta::assert_json_snapshot!(v);
        let usage = completion.usage.unwrap();
        assert_eq!(usage.prompt_tokens, 130);
        assert_eq!(usage.cached_tokens(), 100);
        assert_eq!(usage.total_tokens, 137);
    }

    #[test]
    fn stop_reasons() {
        for (reason, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(reason), want, "{reason}");
        }
    }

    #[test]
    fn malformed_messages_are_failed_over() {
        for body in [
            &b"{\"type\":\"message\""[..],
            b"{\"type\":\"error\"}",
            b"[]",
        ] {
            assert!(matches!(
                translate_response(body, "m"),
                Err(AttemptError::Malformed(_))
            ));
        }
    }

    const STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":40,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me look.\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_b\",\"name\":\"get_time\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn stream_with_text_and_two_tool_calls() {
        let (chunks, error) = translate_stream(STREAM);
        assert!(error.is_none(), "{error:?}");
        insta::assert_json_snapshot!(chunks);
    }

    #[test]
    fn stream_error_event_and_cut_short() {
        let start = STREAM.split("event: ping").next().unwrap();
        let errored = format!(
            "{start}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n"
        );
        let (chunks, error) = translate_stream(&errored);
        assert_eq!(chunks.len(), 1, "only the role chunk: {chunks:?}");
        match error.unwrap().into_attempt() {
            AttemptError::Status(s, m) => {
                assert_eq!(s.as_u16(), 529);
                assert_eq!(m, "Overloaded");
            }
            other => panic!("{other:?}"),
        }
        let (_, error) = translate_stream(start);
        assert!(matches!(
            error,
            Some(EventError::Fault(StreamFault::Closed))
        ));
        let (_, error) = translate_stream("event: message_start\ndata: {\"type\":\n\n");
        assert!(matches!(
            error,
            Some(EventError::Fault(StreamFault::Malformed(_)))
        ));
    }
}
