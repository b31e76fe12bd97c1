//! The normalized chat model every provider translates to and from.
//!
//! Clients speak OpenAI's Chat Completions format, so the normalized stream
//! *is* a typed OpenAI chunk: per choice a text delta, tool-call fragments and
//! a finish reason, plus usage. Providers turn their wire format into
//! [`ChatChunk`] / [`ChatCompletion`] values; guardrails see the text deltas;
//! the encoder writes them back out. Fields weir does not interpret are kept
//! in `extra` maps so they reach the client unchanged (`logprobs`,
//! `system_fingerprint`, `refusal`, `reasoning_content`, …).

pub mod open;
pub mod splice;

use serde_json::{Map, Value};

use crate::error::GatewayError;
use open::open_struct;

/// `serde_json::from_slice`, with UTF-8 checked once over the whole input
/// instead of string by string: serde_json's slice reader checks each
/// string it reads (a tenth of the instructions of parsing a 1 KB prompt),
/// its `str` reader none. The same values and the same errors: input that
/// is not UTF-8 goes through `from_slice` for its error.
pub fn from_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

open_struct! {
    /// Token usage as OpenAI reports it: `usage` of a completion or the
    /// final stream chunk.
    pub struct Usage {
        pub prompt_tokens: u64 = "prompt_tokens" always,
        pub completion_tokens: u64 = "completion_tokens" always,
        pub total_tokens: u64 = "total_tokens" always,
        pub prompt_tokens_details: Option<PromptTokensDetails> = "prompt_tokens_details" skip_none,
        pub completion_tokens_details: Option<CompletionTokensDetails> = "completion_tokens_details" skip_none,
    }
}

open_struct! {
    /// `usage.prompt_tokens_details`.
    pub struct PromptTokensDetails {
        pub cached_tokens: u64 = "cached_tokens" always,
    }
}

open_struct! {
    /// `usage.completion_tokens_details`.
    pub struct CompletionTokensDetails {
        pub reasoning_tokens: u64 = "reasoning_tokens" always,
    }
}

impl Usage {
    /// Usage with the given input and output tokens.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            ..Default::default()
        }
    }

    /// Prompt tokens served from the provider's cache.
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details
            .as_ref()
            .map_or(0, |d| d.cached_tokens)
    }

    /// Output tokens spent on reasoning.
    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details
            .as_ref()
            .map_or(0, |d| d.reasoning_tokens)
    }
}

open_struct! {
    /// One `chat.completion.chunk`.
    pub struct ChatChunk {
        pub id: String = "id" always,
        pub object: String = "object" always,
        pub created: u64 = "created" always,
        pub model: String = "model" always,
        pub choices: Vec<ChunkChoice> = "choices" always,
        pub usage: Option<Usage> = "usage" skip_none,
    }
}

open_struct! {
    /// One choice's part of a chunk.
    pub struct ChunkChoice {
        pub index: u32 = "index" always,
        pub delta: Delta = "delta" always,
        /// Always serialized (`null` until the choice ends), as OpenAI does.
        pub finish_reason: Option<String> = "finish_reason" always,
    }
}

open_struct! {
    /// What a choice adds in one chunk.
    pub struct Delta {
        pub role: Option<String> = "role" skip_none,
        pub content: Option<String> = "content" skip_none,
        pub tool_calls: Option<Vec<ToolCallDelta>> = "tool_calls" skip_none,
    }
}

open_struct! {
    /// A fragment of a streamed tool call; `arguments` arrive in pieces.
    pub struct ToolCallDelta {
        pub index: u32 = "index" always,
        pub id: Option<String> = "id" skip_none,
        pub kind: Option<String> = "type" skip_none,
        pub function: Option<FunctionDelta> = "function" skip_none,
    }
}

open_struct! {
    /// The function part of a tool-call fragment.
    pub struct FunctionDelta {
        pub name: Option<String> = "name" skip_none,
        pub arguments: Option<String> = "arguments" skip_none,
    }
}

open_struct! {
    /// A whole (non-streamed) `chat.completion`.
    pub struct ChatCompletion {
        pub id: String = "id" always,
        pub object: String = "object" always,
        pub created: u64 = "created" always,
        pub model: String = "model" always,
        pub choices: Vec<Choice> = "choices" always,
        pub usage: Option<Usage> = "usage" skip_none,
    }
}

open_struct! {
    /// One choice of a whole completion.
    pub struct Choice {
        pub index: u32 = "index" always,
        pub message: ResponseMessage = "message" always,
        pub finish_reason: Option<String> = "finish_reason" always,
    }
}

open_struct! {
    /// The assistant's message in a whole completion.
    pub struct ResponseMessage {
        pub role: String = "role" always,
        pub content: Option<String> = "content" always,
        pub tool_calls: Option<Vec<Value>> = "tool_calls" skip_none,
    }
}

/// Roles a chat message may have.
pub const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A validated `POST /v1/chat/completions` body.
///
/// The client's JSON object is kept whole so unknown fields pass through to
/// OpenAI-style upstreams; the fields weir acts on are read out once here.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The client's body, forwarded with `model` replaced by the target's.
    body: Map<String, Value>,
    /// The bytes `body` was parsed from, while `body` is unchanged: what
    /// OpenAI-style providers forward (see [`splice`]).
    raw: Option<bytes::Bytes>,
    /// The model name the client asked for.
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
}

impl ChatRequest {
    /// Parse and validate a request body; errors name the offending field.
    pub fn parse(bytes: &[u8]) -> Result<Self, GatewayError> {
        Self::parse_bytes(bytes::Bytes::copy_from_slice(bytes))
    }

    /// [`ChatRequest::parse`], keeping `bytes` for forwarding as they are.
    pub fn parse_bytes(bytes: bytes::Bytes) -> Result<Self, GatewayError> {
        let body = parse_object(&bytes)?;
        let model = required_model(&body)?;
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(opts)) => match opts.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(GatewayError::invalid(
                        "stream_options.include_usage",
                        "`stream_options.include_usage` must be a boolean",
                    ));
                }
            },
            Some(_) => {
                return Err(GatewayError::invalid(
                    "stream_options",
                    "`stream_options` must be an object",
                ));
            }
        };
        let messages = match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            Some(Value::Array(_)) => {
                return Err(GatewayError::invalid(
                    "messages",
                    "`messages` must contain at least one message",
                ));
            }
            Some(_) => {
                return Err(GatewayError::invalid(
                    "messages",
                    "`messages` must be an array of messages",
                ));
            }
            None => {
                return Err(GatewayError::invalid(
                    "messages",
                    "missing required field `messages`",
                ));
            }
        };
        for (i, message) in messages.iter().enumerate() {
            validate_message(i, message)?;
        }
        let max_tokens = match optional_u64(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => optional_u64(&body, "max_tokens")?,
        };
        Ok(ChatRequest {
            body,
            raw: Some(bytes),
            model,
            stream,
            include_usage,
            max_tokens,
        })
    }

    /// The client's JSON object.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// The client's JSON object, to change (a guardrail's rewrite): the
    /// request is then forwarded re-serialized, not as the client's bytes.
    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        self.raw = None;
        &mut self.body
    }

    /// The client's bytes, while the body is unchanged.
    pub fn raw(&self) -> Option<&[u8]> {
        self.raw.as_deref()
    }

    /// The messages (validated to be an array of objects).
    pub fn messages(&self) -> &[Value] {
        match self.body.get("messages") {
            Some(Value::Array(m)) => m,
            _ => &[],
        }
    }

    /// All text a model would read: every message's text parts and tool
    /// definitions. What token estimates and guardrails look at.
    pub fn prompt_text_len(&self) -> usize {
        let messages: usize = self.messages().iter().map(message_text_len).sum();
        let tools = self.body.get("tools").map_or(0, |t| t.to_string().len());
        messages + tools
    }

    /// The text of the last user message, if any.
    pub fn last_user_text(&self) -> String {
        self.messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(message_text)
            .unwrap_or_default()
    }
}

/// The concatenated text parts of a message's `content`.
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn message_text_len(message: &Value) -> usize {
    let content = match message.get("content") {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum(),
        _ => 0,
    };
    let tool_calls = message.get("tool_calls").map_or(0, |t| t.to_string().len());
    content + tool_calls
}

fn validate_message(i: usize, message: &Value) -> Result<(), GatewayError> {
    let Value::Object(m) = message else {
        return Err(GatewayError::invalid(
            format!("messages[{i}]"),
            format!("`messages[{i}]` must be an object"),
        ));
    };
    match m.get("role") {
        Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
        Some(Value::String(role)) => {
            return Err(GatewayError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` is `{role}`; expected one of {}",
                    ROLES.join(", ")
                ),
            ));
        }
        _ => {
            return Err(GatewayError::invalid(
                format!("messages[{i}].role"),
                format!("`messages[{i}].role` is required and must be a string"),
            ));
        }
    }
    match m.get("content") {
        None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => Ok(()),
        Some(_) => Err(GatewayError::invalid(
            format!("messages[{i}].content"),
            format!("`messages[{i}].content` must be a string or an array of content parts"),
        )),
    }
}

/// Parse a body that must be one JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match from_json::<Value>(bytes) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(GatewayError::InvalidRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
        }),
        Err(e) => Err(GatewayError::InvalidRequest {
            message: format!("the request body is not valid JSON: {e}"),
            param: None,
        }),
    }
}

/// The required string `model`.
pub fn required_model(body: &Map<String, Value>) -> Result<String, GatewayError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) => Err(GatewayError::invalid("model", "`model` must not be empty")),
        Some(_) => Err(GatewayError::invalid("model", "`model` must be a string")),
        None => Err(GatewayError::invalid(
            "model",
            "missing required field `model`",
        )),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(GatewayError::invalid(
            field,
            format!("`{field}` must be a boolean"),
        )),
    }
}

fn optional_u64(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            GatewayError::invalid(field, format!("`{field}` must be a non-negative integer"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip_keeps_unknown_fields() {
        let raw = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"hi","refusal":null},"logprobs":null,"finish_reason":null}]}"#;
        let chunk: ChatChunk = serde_json::from_str(raw).unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("hi"));
        let back: Value = serde_json::to_value(&chunk).unwrap();
        let orig: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn from_json_reads_and_refuses_what_from_slice_does() {
        let inputs: [&[u8]; 10] = [
            br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}]}"#,
            "{\"k\":\"caf\u{e9} \u{1f600}\"}".as_bytes(),
            b"{\"k\":\"\xff\"}",
            b"{\"k\":\"\xe2\x82\"}",
            br#"{"k":"\ud800"}"#,
            br#"{"k":"a"} trailing"#,
            b"{\"k\":\"tab\there\"}",
            br#"{"k":1e400}"#,
            br#"[1, 2, {"a": null}]"#,
            b"",
        ];
        for input in inputs {
            let sliced = serde_json::from_slice::<Value>(input).map_err(|e| e.to_string());
            let checked = from_json::<Value>(input).map_err(|e| e.to_string());
            assert_eq!(checked, sliced, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn usage_details() {
        let u: Usage = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}"#,
        )
        .unwrap();
        assert_eq!(u.cached_tokens(), 4);
        assert_eq!(
            serde_json::to_value(&u).unwrap()["prompt_tokens_details"]["audio_tokens"],
            0
        );
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "`model`"),
            (r#"{"model":3,"messages":[]}"#, "`model`"),
            (r#"{"model":"m"}"#, "`messages`"),
            (r#"{"model":"m","messages":[]}"#, "`messages`"),
            (
                r#"{"model":"m","messages":[{"role":"robot"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":1}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                "`stream`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#,
                "`max_tokens`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":1}}"#,
                "include_usage",
            ),
        ];
        for (body, needle) in cases {
            let err = ChatRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), Some("invalid_request"), "{body}");
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn request_fields() {
        let req = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"ab"},{"type":"text","text":"c"}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":9,"custom":1}"#,
        )
        .unwrap();
        assert!(req.stream && req.include_usage);
        assert_eq!(req.max_tokens, Some(9));
        assert_eq!(req.last_user_text(), "abc");
        assert_eq!(req.body()["custom"], 1);
    }
}
