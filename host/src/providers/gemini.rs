//! Google's Gemini API: `POST {base_url}/models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` for streams, with the key in
//! `x-goog-api-key`; embeddings through `:batchEmbedContents`.
//!
//! Requests are rebuilt field by field: system and developer messages become
//! `systemInstruction`; the conversation becomes `contents` with roles `user`
//! and `model` (consecutive turns of one role merged); assistant tool calls
//! become `functionCall` parts and tool results `functionResponse` parts
//! (Gemini wants the function's name there, so it is looked up from the tool
//! call the result answers); images become `inlineData` (data URLs) or
//! `fileData` (other URLs, which Gemini must be able to fetch); sampling
//! settings go to `generationConfig`, `n` to `candidateCount`, a JSON
//! `response_format` to `responseMimeType` (+ `responseSchema`). Gemini's
//! schemas are an OpenAPI subset that rejects unknown keywords, so tool
//! parameters and response schemas are pruned to the keywords it accepts
//! (`additionalProperties`, `$schema`, `$ref`… are dropped; `["string",
//! "null"]` types become `nullable`).
//!
//! Answers: candidates → choices; function calls → `tool_calls` with
//! generated `call_…` ids (Gemini sends none) and `finish_reason:
//! "tool_calls"`; `usageMetadata` → usage, where `completion_tokens` counts
//! thinking tokens too (Gemini bills them as output; OpenAI reports reasoning
//! inside `completion_tokens` the same way), `prompt_tokens` includes the
//! cached ones (as Gemini's `promptTokenCount` does) and tool-use prompt
//! tokens. A prompt Gemini blocks outright is a 400 `content_filter`.
//!
//! Streams have no start or end event: every SSE event is a partial
//! `GenerateContentResponse`; the role chunk comes with a choice's first
//! event, and the stream ends cleanly only if the body ends after every
//! choice reported a `finishReason` (then the usage chunk follows).

use std::collections::{HashMap, VecDeque};

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    AttemptError, ChatReply, ChunkMeta, ChunkStream, EventError, HttpClient, Provider, StreamFault,
    Translate, Translated, UpstreamBody, UpstreamFailure, Whole, base64_encode, body_excerpt,
    classify, error_body, key_from_env, max_upstream_body, now_secs, parse_data_url, post_json,
    read_body, role_delta, send,
};
use crate::chat::open::Extra;
use crate::chat::{
    ChatChunk, ChatCompletion, ChatRequest, Choice, CompletionTokensDetails, Delta, FunctionDelta,
    PromptTokensDetails, ResponseMessage, ToolCallDelta, Usage,
};
use crate::config::{Config, ProviderConfig};
use crate::error::GatewayError;
use crate::sse::SseEvent;
use crate::tokens;

/// A Gemini upstream.
#[derive(Debug)]
pub struct Gemini {
    /// `base_url` without a trailing slash, e.g.
    /// `https://generativelanguage.googleapis.com/v1beta`.
    base: String,
    key: Option<HeaderValue>,
}

/// `models/{model}`, unless the target already names a resource path
/// (`tunedModels/…`).
fn model_path(model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("models/{model}")
    }
}

impl Gemini {
    /// From a validated provider config.
    pub fn new(p: &ProviderConfig) -> Gemini {
        Gemini {
            base: Config::base_url(p)
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            key: key_from_env(p.api_key_env.as_deref(), ""),
        }
    }

    async fn post(
        &self,
        client: &HttpClient,
        provider: &Provider,
        url: &str,
        body: &Value,
        stream: bool,
    ) -> Result<UpstreamBody, AttemptError> {
        let name = HeaderName::from_static("x-goog-api-key");
        let headers: Vec<(&HeaderName, &HeaderValue)> =
            self.key.iter().map(|key| (&name, key)).collect();
        let request = post_json(url, body.to_string().into_bytes(), stream, &headers)?;
        let response = send(client, provider, request).await?;
        let status = response.status();
        let mut incoming = response.into_body();
        if !status.is_success() {
            let bytes = error_body(&mut incoming, provider.idle_timeout).await;
            return Err(error_from_body(status, &bytes));
        }
        Ok(incoming)
    }

    pub(super) async fn chat(
        &self,
        client: &HttpClient,
        provider: &Provider,
        req: &ChatRequest,
        model: &str,
    ) -> Result<ChatReply, AttemptError> {
        let body = translate_request(req).map_err(AttemptError::Rejected)?;
        let url = if req.stream {
            format!(
                "{}/{}:streamGenerateContent?alt=sse",
                self.base,
                model_path(model)
            )
        } else {
            format!("{}/{}:generateContent", self.base, model_path(model))
        };
        let mut incoming = self.post(client, provider, &url, &body, req.stream).await?;
        if !req.stream {
            let bytes =
                read_body(&mut incoming, provider.idle_timeout, max_upstream_body()).await?;
            return Ok(ChatReply::Complete(Whole::Parsed(Box::new(
                translate_response(&bytes, model, &mut ToolIds::new())?,
            ))));
        }
        let stream = Translated::start(incoming, provider.idle_timeout, Events::new(model)).await?;
        Ok(ChatReply::Stream(ChunkStream::Gemini(Box::new(stream))))
    }

    /// OpenAI embeddings through `:batchEmbedContents`.
    pub(super) async fn embeddings(
        &self,
        client: &HttpClient,
        provider: &Provider,
        body: &Map<String, Value>,
        model: &str,
    ) -> Result<Value, AttemptError> {
        let (request, inputs, base64) =
            translate_embeddings(body, model).map_err(AttemptError::Rejected)?;
        let url = format!("{}/{}:batchEmbedContents", self.base, model_path(model));
        let mut incoming = self.post(client, provider, &url, &request, false).await?;
        let bytes = read_body(&mut incoming, provider.idle_timeout, max_upstream_body()).await?;
        embeddings_response(&bytes, model, &inputs, base64)
    }
}

/// A Gemini error body (`{"error":{"code","message","status","details"}}`,
/// sometimes wrapped in an array) → an attempt error. An invalid key is
/// answered with 400 `API_KEY_INVALID` and a disabled or unavailable project
/// with 400 `FAILED_PRECONDITION`: both are the target's problem, not the
/// caller's, so they fail over like a 401.
pub fn error_from_body(status: StatusCode, bytes: &[u8]) -> AttemptError {
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let error = match &parsed {
        Some(Value::Array(items)) => items.first().and_then(|v| v.get("error")),
        Some(v) => v.get("error"),
        None => None,
    };
    let Some(error) = error else {
        return classify(
            status,
            UpstreamFailure {
                message: body_excerpt(bytes),
                ..Default::default()
            },
        );
    };
    let failure = failure_from(error);
    let key_invalid = error["details"].as_array().is_some_and(|details| {
        details
            .iter()
            .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
    });
    if key_invalid {
        return classify(StatusCode::UNAUTHORIZED, failure);
    }
    if failure.code.as_deref() == Some("failed_precondition") {
        return AttemptError::Status(status, failure.message.chars().take(200).collect());
    }
    classify(status, failure)
}

/// `error.message`, and `error.status` (lower-cased) as the OpenAI code.
fn failure_from(error: &Value) -> UpstreamFailure {
    UpstreamFailure {
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        kind: None,
        code: error
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        param: None,
    }
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(param, message)
}

/// Build the `generateContent` body for `req`.
pub fn translate_request(req: &ChatRequest) -> Result<Value, GatewayError> {
    let body = req.body();
    let mut out = Map::new();
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut tool_names: HashMap<&str, &str> = HashMap::new();
    for (i, message) in req.messages().iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, parts) = match role {
            "system" | "developer" => {
                system.extend(text_parts(i, message)?);
                continue;
            }
            "user" => ("user", user_parts(i, message)?),
            "assistant" => ("model", model_parts(i, message, &mut tool_names)?),
            "tool" | "function" => ("user", vec![function_response(i, message, &tool_names)?]),
            other => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format!("`messages[{i}].role` `{other}` is not supported"),
                ));
            }
        };
        match contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    out.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) if tools.is_empty() => {}
        Some(Value::Array(tools)) => {
            out.insert(
                "tools".into(),
                json!([{"functionDeclarations": function_declarations(tools)?}]),
            );
        }
        Some(_) => return Err(invalid("tools", "`tools` must be an array")),
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": function_calling_config(choice)?}),
        );
    }
    let config = generation_config(req)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

fn unsupported_part(i: usize, j: usize, part: &Value) -> GatewayError {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("?");
    invalid(
        format!("messages[{i}].content[{j}].type"),
        format!(
            "content part type `{kind}` in `messages[{i}].content[{j}]` is not supported by a gemini provider"
        ),
    )
}

/// Only the text of a message (system instructions).
fn text_parts(i: usize, message: &Value) -> Result<Vec<Value>, GatewayError> {
    match message.get("content") {
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![json!({"text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .filter_map(|(j, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                    (!text.is_empty()).then(|| Ok(json!({"text": text})))
                }
                _ => Some(Err(unsupported_part(i, j, part))),
            })
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// A user message: text, images, audio, inline files.
fn user_parts(i: usize, message: &Value) -> Result<Vec<Value>, GatewayError> {
    let parts = match message.get("content") {
        Some(Value::Array(parts)) => parts,
        Some(Value::String(s)) => return Ok(vec![json!({"text": s})]),
        _ => return Ok(vec![json!({"text": ""})]),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                out.push(json!({"text": part.get("text").and_then(Value::as_str).unwrap_or("")}))
            }
            Some("image_url") => {
                let image = &part["image_url"];
                let url = image
                    .get("url")
                    .and_then(Value::as_str)
                    .or_else(|| image.as_str())
                    .ok_or_else(|| {
                        invalid(
                            format!("{at}.image_url.url"),
                            format!("`{at}.image_url.url` is required"),
                        )
                    })?;
                if url.starts_with("data:") {
                    let (mime, data) = parse_data_url(url).ok_or_else(|| {
                        invalid(
                            format!("{at}.image_url.url"),
                            format!(
                                "`{at}.image_url.url` must be a base64 data URL or an http(s) URL"
                            ),
                        )
                    })?;
                    out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
                } else {
                    out.push(json!({"fileData": {"mimeType": guess_mime(url), "fileUri": url}}));
                }
            }
            Some("input_audio") => {
                let audio = &part["input_audio"];
                let (Some(data), Some(format)) = (
                    audio.get("data").and_then(Value::as_str),
                    audio.get("format").and_then(Value::as_str),
                ) else {
                    return Err(invalid(
                        format!("{at}.input_audio"),
                        format!("`{at}.input_audio` needs `data` and `format`"),
                    ));
                };
                out.push(
                    json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}),
                );
            }
            Some("file") => {
                let Some((mime, data)) =
                    part["file"]["file_data"].as_str().and_then(parse_data_url)
                else {
                    return Err(invalid(
                        format!("{at}.file.file_data"),
                        format!(
                            "`{at}.file` needs `file_data` as a base64 data URL for a gemini provider"
                        ),
                    ));
                };
                out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
            }
            _ => return Err(unsupported_part(i, j, part)),
        }
    }
    Ok(out)
}

/// The media type of a URL from its extension (`fileData` requires one).
fn guess_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

/// An assistant turn: its text, then a `functionCall` per tool call.
fn model_parts<'a>(
    i: usize,
    message: &'a Value,
    tool_names: &mut HashMap<&'a str, &'a str>,
) -> Result<Vec<Value>, GatewayError> {
    let mut parts = match message.get("content") {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"text": s})],
        Some(Value::Array(items)) => items
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .filter(|t| !t.is_empty())
            .map(|t| json!({"text": t}))
            .collect(),
        _ => Vec::new(),
    };
    let calls = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls.as_slice(),
        _ => &[],
    };
    for (j, call) in calls.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let Some(name) = call["function"].get("name").and_then(Value::as_str) else {
            return Err(invalid(
                format!("{at}.function.name"),
                format!("`{at}.function.name` is required"),
            ));
        };
        let arguments = call["function"]["arguments"].as_str().unwrap_or("");
        let args = super::arguments_object(arguments).ok_or_else(|| {
            invalid(
                format!("{at}.function.arguments"),
                format!("`{at}.function.arguments` must be a JSON object"),
            )
        })?;
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            tool_names.insert(id, name);
        }
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    Ok(parts)
}

/// A `tool` (or legacy `function`) message → a `functionResponse` part.
fn function_response(
    i: usize,
    message: &Value,
    tool_names: &HashMap<&str, &str>,
) -> Result<Value, GatewayError> {
    let name = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .and_then(|id| tool_names.get(id).copied())
        .or_else(|| message.get("name").and_then(Value::as_str))
        .ok_or_else(|| {
            invalid(
                format!("messages[{i}].tool_call_id"),
                format!(
                    "`messages[{i}]` answers no earlier tool call (gemini needs the function's name: give a `tool_call_id` of a previous assistant tool call, or a `name`)"
                ),
            )
        })?;
    let text = crate::chat::message_text(message);
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

fn function_declarations(tools: &[Value]) -> Result<Vec<Value>, GatewayError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                return Err(invalid(
                    format!("tools[{i}].type"),
                    format!(
                        "tool type `{kind}` is not supported by a gemini provider (only `function`)"
                    ),
                ));
            }
            let function = &tool["function"];
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(
                        format!("tools[{i}].function.name"),
                        format!("`tools[{i}].function.name` is required"),
                    )
                })?;
            let mut out = json!({"name": name});
            if let Some(d) = function.get("description").and_then(Value::as_str) {
                out["description"] = json!(d);
            }
            if let Some(parameters) = function.get("parameters").filter(|p| p.is_object()) {
                let schema = schema(parameters);
                // Gemini refuses an object schema without properties: a
                // function without parameters simply has none.
                let empty_object = schema.get("type").and_then(Value::as_str) == Some("object")
                    && schema
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_none_or(Map::is_empty);
                if !empty_object {
                    out["parameters"] = schema;
                }
            }
            Ok(out)
        })
        .collect()
}

/// A JSON Schema pruned to the OpenAPI subset Gemini accepts.
pub fn schema(value: &Value) -> Value {
    let Value::Object(map) = value else {
        return value.clone();
    };
    let mut out = Map::new();
    for (key, v) in map {
        match key.as_str() {
            "type" => match v {
                Value::Array(types) => {
                    let mut non_null = types.iter().filter(|t| t.as_str() != Some("null"));
                    if let Some(t) = non_null.next() {
                        out.insert("type".into(), t.clone());
                    }
                    if types.len() > 1 && types.iter().any(|t| t.as_str() == Some("null")) {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "properties" => {
                if let Value::Object(props) = v {
                    let props = props.iter().map(|(k, s)| (k.clone(), schema(s))).collect();
                    out.insert("properties".into(), Value::Object(props));
                }
            }
            "items" => {
                out.insert("items".into(), schema(v));
            }
            "anyOf" | "oneOf" => {
                if let Value::Array(options) = v {
                    out.insert(
                        "anyOf".into(),
                        Value::Array(options.iter().map(schema).collect()),
                    );
                }
            }
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            "format" => {
                if matches!(
                    v.as_str(),
                    Some("enum" | "date-time" | "int32" | "int64" | "float" | "double")
                ) {
                    out.insert("format".into(), v.clone());
                }
            }
            "description" | "nullable" | "enum" | "required" | "minItems" | "maxItems"
            | "minimum" | "maximum" | "minLength" | "maxLength" | "pattern" | "title"
            | "minProperties" | "maxProperties" | "default" | "example" | "propertyOrdering" => {
                out.insert(key.clone(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// `tool_choice` → `functionCallingConfig`.
fn function_calling_config(choice: &Value) -> Result<Value, GatewayError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"mode": "AUTO"})),
            "none" => Ok(json!({"mode": "NONE"})),
            "required" => Ok(json!({"mode": "ANY"})),
            other => Err(invalid(
                "tool_choice",
                format!("`tool_choice` `{other}` is not one of auto, none, required"),
            )),
        },
        _ => match choice["function"]["name"].as_str() {
            Some(name) => Ok(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            None => Err(invalid(
                "tool_choice",
                "`tool_choice` must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":…}}",
            )),
        },
    }
}

fn generation_config(req: &ChatRequest) -> Result<Map<String, Value>, GatewayError> {
    let body = req.body();
    let mut config = Map::new();
    if let Some(max) = req.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(stop @ Value::Array(items)) if items.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), stop.clone());
        }
        Some(_) => {
            return Err(invalid(
                "stop",
                "`stop` must be a string or an array of strings",
            ));
        }
    }
    if let Some(format) = body.get("response_format").filter(|v| !v.is_null()) {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(s) = format["json_schema"].get("schema") {
                    config.insert("responseSchema".into(), schema(s));
                }
            }
            _ => {
                return Err(invalid(
                    "response_format",
                    "`response_format.type` must be text, json_object or json_schema",
                ));
            }
        }
    }
    Ok(config)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    /// A thought summary, not part of the answer.
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

/// `usageMetadata`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    /// In OpenAI's terms (see the module docs).
    pub fn to_openai(&self) -> Usage {
        let mut usage = Usage::new(
            self.prompt_token_count + self.tool_use_prompt_token_count,
            self.candidates_token_count + self.thoughts_token_count,
        );
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: self.cached_content_token_count,
            extra: Extra::default(),
        });
        usage.completion_tokens_details = Some(CompletionTokensDetails {
            reasoning_tokens: self.thoughts_token_count,
            extra: Extra::default(),
        });
        usage
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    block_reason_message: Option<String>,
}

impl PromptFeedback {
    /// A blocked prompt, as the 400 `content_filter` weir answers.
    fn blocked(&self) -> Option<UpstreamFailure> {
        let reason = self.block_reason.as_deref()?;
        let mut message = format!("the provider blocked the prompt ({reason})");
        if let Some(detail) = &self.block_reason_message {
            message.push_str(": ");
            message.push_str(detail);
        }
        Some(UpstreamFailure {
            message,
            kind: Some("invalid_request_error".into()),
            code: Some("content_filter".into()),
            param: Some("messages".into()),
        })
    }
}

/// Gemini's `finishReason` as an OpenAI `finish_reason`.
pub fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => "content_filter",
        _ if called_tools => "tool_calls",
        // STOP, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL and anything newer.
        _ => "stop",
    }
}

/// Tool-call ids for one answer: Gemini does not send any (or not always).
#[derive(Debug)]
pub struct ToolIds {
    prefix: String,
    next: u32,
}

impl ToolIds {
    /// Ids unique to one answer: `call_<random>_<n>`.
    pub fn new() -> ToolIds {
        ToolIds {
            prefix: format!("call_{:016x}", fastrand::u64(..)),
            next: 0,
        }
    }

    fn id(&mut self, given: Option<String>) -> String {
        given.filter(|id| !id.is_empty()).unwrap_or_else(|| {
            self.next += 1;
            format!("{}_{}", self.prefix, self.next)
        })
    }
}

impl Default for ToolIds {
    fn default() -> Self {
        ToolIds::new()
    }
}

/// The text (without thoughts) and function calls of a candidate.
fn split_parts(candidate: Candidate) -> (String, Vec<FunctionCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
        if let Some(call) = part.function_call {
            calls.push(call);
        } else if let Some(t) = part.text
            && part.thought != Some(true)
        {
            text.push_str(&t);
        }
    }
    (text, calls)
}

fn args_text(args: Option<Value>) -> String {
    match args {
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => "{}".into(),
    }
}

fn completion_id(response_id: Option<String>) -> String {
    match response_id {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{:016x}", fastrand::u64(..)),
    }
}

/// A whole `generateContent` answer → a chat completion.
pub fn translate_response(
    bytes: &[u8],
    model: &str,
    ids: &mut ToolIds,
) -> Result<ChatCompletion, AttemptError> {
    let response: GenerateResponse = crate::chat::from_json(bytes)
        .map_err(|e| AttemptError::Malformed(format!("not a gemini response: {e}")))?;
    if response.candidates.is_empty() {
        if let Some(failure) = response
            .prompt_feedback
            .as_ref()
            .and_then(PromptFeedback::blocked)
        {
            return Err(classify(StatusCode::BAD_REQUEST, failure));
        }
        return Err(AttemptError::Malformed(
            "a gemini response without candidates".into(),
        ));
    }
    let mut choices = Vec::with_capacity(response.candidates.len());
    for candidate in response.candidates {
        let index = candidate.index.unwrap_or(0);
        let finish = candidate.finish_reason.clone();
        let (text, calls) = split_parts(candidate);
        let tool_calls: Vec<Value> = calls
            .into_iter()
            .map(|call| {
                json!({
                    "id": ids.id(call.id),
                    "type": "function",
                    "function": {"name": call.name, "arguments": args_text(call.args)},
                })
            })
            .collect();
        let called = !tool_calls.is_empty();
        choices.push(Choice {
            index,
            message: ResponseMessage {
                role: "assistant".into(),
                content: if text.is_empty() && called {
                    None
                } else {
                    Some(text)
                },
                tool_calls: called.then_some(tool_calls),
                extra: Extra::default(),
            },
            finish_reason: Some(finish_reason(finish.as_deref().unwrap_or("STOP"), called).into()),
            extra: Extra::default(),
        });
    }
    choices.sort_by_key(|c| c.index);
    Ok(ChatCompletion {
        id: completion_id(response.response_id),
        object: "chat.completion".into(),
        created: now_secs(),
        model: model.to_string(),
        choices,
        usage: Some(response.usage_metadata.unwrap_or_default().to_openai()),
        extra: Extra::default(),
    })
}

/// One choice of a stream.
#[derive(Debug)]
struct StreamChoice {
    index: u32,
    tools: u32,
    finished: bool,
}

/// The stream translator: partial `GenerateContentResponse`s → OpenAI chunks.
#[derive(Debug)]
pub struct Events {
    meta: ChunkMeta,
    ids: ToolIds,
    choices: Vec<StreamChoice>,
    usage: UsageMetadata,
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
            ids: ToolIds::new(),
            choices: Vec::new(),
            usage: UsageMetadata::default(),
        }
    }

    /// The state of choice `index`, opening it (role chunk) on first sight.
    fn choice(&mut self, index: u32, out: &mut VecDeque<ChatChunk>) -> usize {
        if let Some(at) = self.choices.iter().position(|c| c.index == index) {
            return at;
        }
        out.push_back(self.meta.chunk(index, role_delta(), None));
        self.choices.push(StreamChoice {
            index,
            tools: 0,
            finished: false,
        });
        self.choices.len() - 1
    }
}

/// An in-stream `{"error": {...}}` → the status it stands for.
fn stream_error(error: &Value) -> EventError {
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut failure = failure_from(error);
    if failure.message.is_empty() {
        failure.message = "the upstream reported an error".into();
    }
    EventError::Upstream(status, failure)
}

impl Translate for Events {
    fn event(
        &mut self,
        event: &SseEvent,
        out: &mut VecDeque<ChatChunk>,
    ) -> Result<bool, EventError> {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(false);
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| EventError::malformed(format!("not a gemini stream event: {e}")))?;
        if let Some(error) = value.get("error") {
            return Err(stream_error(error));
        }
        let response: GenerateResponse = serde_json::from_value(value)
            .map_err(|e| EventError::malformed(format!("not a gemini stream event: {e}")))?;
        if self.meta.id.is_empty() {
            self.meta.id = completion_id(response.response_id);
        }
        if let Some(usage) = response.usage_metadata {
            self.usage = usage;
        }
        if response.candidates.is_empty()
            && let Some(failure) = response
                .prompt_feedback
                .as_ref()
                .and_then(PromptFeedback::blocked)
        {
            return Err(EventError::Upstream(StatusCode::BAD_REQUEST, failure));
        }
        for candidate in response.candidates {
            let index = candidate.index.unwrap_or(0);
            let finish = candidate.finish_reason.clone();
            let at = self.choice(index, out);
            let (text, calls) = split_parts(candidate);
            if !text.is_empty() {
                let delta = Delta {
                    content: Some(text),
                    ..Default::default()
                };
                out.push_back(self.meta.chunk(index, delta, None));
            }
            if !calls.is_empty() {
                let mut deltas = Vec::with_capacity(calls.len());
                for call in calls {
                    let tool = self.choices[at].tools;
                    self.choices[at].tools += 1;
                    deltas.push(ToolCallDelta {
                        index: tool,
                        id: Some(self.ids.id(call.id)),
                        kind: Some("function".into()),
                        function: Some(FunctionDelta {
                            name: Some(call.name),
                            arguments: Some(args_text(call.args)),
                            extra: Extra::default(),
                        }),
                        extra: Extra::default(),
                    });
                }
                let delta = Delta {
                    tool_calls: Some(deltas),
                    ..Default::default()
                };
                out.push_back(self.meta.chunk(index, delta, None));
            }
            if let Some(reason) = finish
                && !self.choices[at].finished
            {
                self.choices[at].finished = true;
                let reason = finish_reason(&reason, self.choices[at].tools > 0);
                out.push_back(
                    self.meta
                        .chunk(index, Delta::default(), Some(reason.to_string())),
                );
            }
        }
        Ok(false)
    }

    fn end(&mut self, out: &mut VecDeque<ChatChunk>) -> Result<(), StreamFault> {
        if self.choices.is_empty() || self.choices.iter().any(|c| !c.finished) {
            return Err(StreamFault::Closed);
        }
        out.push_back(self.meta.usage_chunk(self.usage.to_openai()));
        Ok(())
    }
}

/// `(request body, the inputs, base64 wanted)` for an OpenAI embeddings body.
fn translate_embeddings(
    body: &Map<String, Value>,
    model: &str,
) -> Result<(Value, Vec<String>, bool), GatewayError> {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        }
        _ => {
            return Err(invalid(
                "input",
                "`input` must be a string or an array of strings for a gemini provider (token arrays are not supported)",
            ));
        }
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(invalid(
                "encoding_format",
                "`encoding_format` must be float or base64",
            ));
        }
    };
    let path = model_path(model);
    let dimensions = body.get("dimensions").and_then(Value::as_u64);
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut r = json!({"model": path, "content": {"parts": [{"text": text}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    Ok((json!({"requests": requests}), inputs, base64))
}

/// `{"embeddings":[{"values":[…]}]}` → OpenAI's list. Gemini reports no
/// token usage for embeddings, so usage is weir's estimate of the inputs.
fn embeddings_response(
    bytes: &[u8],
    model: &str,
    inputs: &[String],
    base64: bool,
) -> Result<Value, AttemptError> {
    #[derive(Deserialize)]
    struct Batch {
        embeddings: Vec<Embedding>,
    }
    #[derive(Deserialize)]
    struct Embedding {
        values: Vec<f32>,
    }
    let batch: Batch = crate::chat::from_json(bytes)
        .map_err(|e| AttemptError::Malformed(format!("not a gemini embeddings response: {e}")))?;
    if batch.embeddings.len() != inputs.len() {
        return Err(AttemptError::Malformed(format!(
            "{} embeddings for {} inputs",
            batch.embeddings.len(),
            inputs.len()
        )));
    }
    let data: Vec<Value> = batch
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(e.values)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|t| tokens::estimate_text(t, model)).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    fn fixed_ids() -> ToolIds {
        ToolIds {
            prefix: "call_test".into(),
            next: 0,
        }
    }

    fn translate_stream(transcript: &str) -> (Vec<Value>, Option<EventError>) {
        let mut events = Vec::new();
        SseParser::new()
            .feed(transcript.as_bytes(), &mut events)
            .unwrap();
        let mut state = Events::new("gemini-test");
        state.meta.created = 1_700_000_000;
        state.ids = fixed_ids();
        let mut out = VecDeque::new();
        let mut error = None;
        for event in &events {
            if let Err(e) = state.event(event, &mut out) {
                error = Some(e);
                break;
            }
        }
        if error.is_none()
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
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these pictures?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png?size=large"}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                ]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"},
                {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather by city", "parameters": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "city": {"type": "string", "format": "uri", "description": "City"},
                        "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                        "days": {"type": "array", "items": {"type": "integer", "minimum": 1}}
                    },
                    "required": ["city"]
                }}},
                {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "stop": ["END", "STOP"],
            "temperature": 0.2,
            "top_p": 0.9,
            "n": 2,
            "max_tokens": 300,
            "seed": 7,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true, "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "additionalProperties": false}}}
        }));
        insta::assert_json_snapshot!(translate_request(&req).unwrap());
    }

    #[test]
    fn minimal_request_and_tool_choice_forms() {
        let req =
            request(json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            translate_request(&req).unwrap(),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        );
        for (choice, want) in [
            (json!("auto"), json!({"mode": "AUTO"})),
            (json!("none"), json!({"mode": "NONE"})),
            (json!("required"), json!({"mode": "ANY"})),
        ] {
            assert_eq!(function_calling_config(&choice).unwrap(), want);
        }
        let json_mode = request(
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}),
        );
        assert_eq!(
            translate_request(&json_mode).unwrap()["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
    }

    #[test]
    fn a_tool_result_needs_its_call() {
        let req = request(json!({"model": "chat", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "nowhere", "content": "x"}
        ]}));
        let err = translate_request(&req).unwrap_err();
        assert!(err.to_string().contains("messages[1]"), "{err}");
    }

    #[test]
    fn whole_response_with_function_calls_and_usage() {
        let body = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "thinking about it", "thought": true},
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {}}}
                ]},
                "finishReason": "STOP",
                "safetyRatings": []
            }],
            "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 9, "totalTokenCount": 149, "cachedContentTokenCount": 100, "thoughtsTokenCount": 20},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "abc123"
        });
        let completion =
            translate_response(body.to_string().as_bytes(), "m", &mut fixed_ids()).unwrap();
        let mut v = serde_json::to_value(&completion).unwrap();
        v["created"] = json!(0);
        insta::assert_json_snapshot!(v);
        let usage = completion.usage.unwrap();
        assert_eq!(usage.prompt_tokens, 120);
        assert_eq!(usage.completion_tokens, 29);
        assert_eq!(usage.cached_tokens(), 100);
        assert_eq!(usage.reasoning_tokens(), 20);
    }

    #[test]
    fn finish_reasons() {
        for (reason, tools, want) in [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", false, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("BLOCKLIST", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("OTHER", false, "stop"),
        ] {
            assert_eq!(finish_reason(reason, tools), want, "{reason}");
        }
    }

    #[test]
    fn blocked_prompts_and_errors() {
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":5}}"#;
        match translate_response(blocked, "m", &mut fixed_ids()) {
            Err(AttemptError::Rejected(e)) => {
                assert_eq!(e.code(), Some("content_filter"));
                assert_eq!(e.status(), StatusCode::BAD_REQUEST);
                assert!(e.to_string().contains("SAFETY"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let bad_key = br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}]"#;
        match error_from_body(StatusCode::BAD_REQUEST, bad_key) {
            AttemptError::Status(s, m) => assert!(s == StatusCode::UNAUTHORIZED && m.is_empty()),
            other => panic!("{other:?}"),
        }
        let invalid = br#"{"error":{"code":400,"message":"Invalid value at 'generation_config.temperature'","status":"INVALID_ARGUMENT"}}"#;
        match error_from_body(StatusCode::BAD_REQUEST, invalid) {
            AttemptError::Rejected(e) => {
                assert_eq!(e.code(), Some("invalid_argument"));
                assert!(e.to_string().contains("temperature"));
            }
            other => panic!("{other:?}"),
        }
        let unavailable = br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        assert!(matches!(
            error_from_body(StatusCode::SERVICE_UNAVAILABLE, unavailable),
            AttemptError::Status(..)
        ));
    }

    const STREAM: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Let me\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"totalTokenCount\": 12},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" look.\"},{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}}}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"totalTokenCount\": 12},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_time\",\"args\": {}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"candidatesTokenCount\": 8,\"totalTokenCount\": 20,\"cachedContentTokenCount\": 4},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n";

    #[test]
    fn stream_with_text_and_function_calls() {
        let (chunks, error) = translate_stream(STREAM);
        assert!(error.is_none(), "{error:?}");
        insta::assert_json_snapshot!(chunks);
    }

    #[test]
    fn stream_errors_and_cut_short() {
        let first = STREAM.split("\r\n\r\n").next().unwrap();
        let (_, error) = translate_stream(&format!("{first}\r\n\r\n"));
        assert!(matches!(
            error,
            Some(EventError::Fault(StreamFault::Closed))
        ));
        let (chunks, error) = translate_stream(&format!(
            "{first}\r\n\r\ndata: {{\"error\": {{\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}}}\r\n\r\n"
        ));
        assert_eq!(chunks.len(), 2, "role and text: {chunks:?}");
        match error.unwrap() {
            EventError::Upstream(status, failure) => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(failure.message, "The model is overloaded.");
            }
            other => panic!("{other:?}"),
        }
        let (_, error) = translate_stream("data: {\"candidates\": [\r\n\r\n");
        assert!(matches!(
            error,
            Some(EventError::Fault(StreamFault::Malformed(_)))
        ));
    }

    #[test]
    fn schemas_are_pruned() {
        let s = schema(&json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"a": {"type": ["integer", "null"], "const": 3, "$ref": "#/x"}},
            "oneOf": [{"type": "string", "format": "email"}]
        }));
        assert_eq!(
            s,
            json!({
                "type": "object",
                "properties": {"a": {"type": "integer", "nullable": true, "enum": [3]}},
                "anyOf": [{"type": "string"}]
            })
        );
    }

    #[test]
    fn embeddings_round_trip() {
        let body = json!({"model": "e", "input": ["ab", "cd"], "dimensions": 3, "encoding_format": "base64"});
        let (request, inputs, base64) =
            translate_embeddings(body.as_object().unwrap(), "text-embedding-004").unwrap();
        assert!(base64);
        assert_eq!(
            request["requests"][1],
            json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": "cd"}]}, "outputDimensionality": 3})
        );
        let answer = br#"{"embeddings":[{"values":[1.0,0.5,-0.25]},{"values":[0,0,0]}]}"#;
        let v = embeddings_response(answer, "e", &inputs, false).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([1.0, 0.5, -0.25]));
        assert_eq!(v["data"][1]["index"], 1);
        let v = embeddings_response(answer, "e", &inputs, true).unwrap();
        assert_eq!(v["data"][0]["embedding"], "AACAPwAAAD8AAIC+");
        let tokens = json!({"model": "e", "input": [[1, 2]]});
        assert!(translate_embeddings(tokens.as_object().unwrap(), "x").is_err());
    }
}
