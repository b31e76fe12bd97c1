//! Gemini's API as the mock upstream writes it: `generateContent` answers,
//! `streamGenerateContent?alt=sse` streams (each event a partial
//! `GenerateContentResponse`, CRLF-delimited, no end marker: the last one
//! carries `finishReason` and the full `usageMetadata`), error bodies
//! `{"error":{"code","message","status"}}`, the same object as an in-stream
//! error event, and `batchEmbedContents`.

use serde_json::{Value, json};

use crate::upstream::Chat;

/// An event cut off in the middle of its JSON.
pub(crate) const MALFORMED_EVENT: &str =
    "data: {\"candidates\": [{\"content\": {\"parts\": [\r\n\r\n";
/// A response cut off in the middle of its JSON.
pub(crate) const MALFORMED_BODY: &str = "{\"candidates\": [{\"content\": ";

const MODEL_VERSION: &str = "gemini-2.5-flash-mock";
const RESPONSE_ID: &str = "mockResponse01";

/// The text of the last `user` content (its text parts).
fn last_user_text(request: &Value) -> String {
    request["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|c| {
            c["role"] == "user"
                && c["parts"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["text"].is_string()))
        })
        .map(|c| {
            c["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["text"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// Gemini's `finishReason` for a scripted finish reason.
fn finish_reason(chat: &Chat) -> &str {
    match chat.finish_reason.as_str() {
        "stop" | "tool_calls" => "STOP",
        "length" => "MAX_TOKENS",
        "content_filter" => "SAFETY",
        other => other,
    }
}

/// How many candidates the request asked for.
fn candidates(request: &Value) -> u64 {
    request["generationConfig"]["candidateCount"]
        .as_u64()
        .unwrap_or(1)
        .max(1)
}

fn usage(chat: &Chat, complete: bool) -> Value {
    let (prompt, output) = chat.usage;
    let mut usage = json!({
        "promptTokenCount": prompt,
        "totalTokenCount": prompt,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if complete {
        usage["candidatesTokenCount"] = json!(output);
        usage["totalTokenCount"] = json!(prompt + output + chat.reasoning_tokens);
        if chat.reasoning_tokens > 0 {
            usage["thoughtsTokenCount"] = json!(chat.reasoning_tokens);
        }
    }
    if chat.cached_tokens > 0 {
        usage["cachedContentTokenCount"] = json!(chat.cached_tokens);
    }
    usage
}

fn function_call(name: &str, args: &[String]) -> Value {
    let args: Value = serde_json::from_str(&args.concat()).unwrap_or_else(|_| json!({}));
    json!({"functionCall": {"name": name, "args": args}})
}

fn candidate(index: u64, parts: Vec<Value>, finish: Option<&str>) -> Value {
    let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": index});
    if let Some(reason) = finish {
        c["finishReason"] = json!(reason);
        c["safetyRatings"] = json!([]);
    }
    c
}

/// A whole `generateContent` answer (every candidate says the same).
pub(crate) fn response(chat: &Chat, request: &Value) -> Value {
    let text = chat.pieces_for(&last_user_text(request)).concat();
    let mut parts = Vec::new();
    if !text.is_empty() {
        parts.push(json!({"text": text}));
    }
    for (name, args) in &chat.tool_calls {
        parts.push(function_call(name, args));
    }
    let candidates: Vec<Value> = (0..candidates(request))
        .map(|i| candidate(i, parts.clone(), Some(finish_reason(chat))))
        .collect();
    json!({
        "candidates": candidates,
        "usageMetadata": usage(chat, true),
        "modelVersion": MODEL_VERSION,
        "responseId": RESPONSE_ID,
    })
}

fn event(data: Value) -> String {
    format!("data: {data}\r\n\r\n")
}

/// The stream as (content?, event text): one event per text piece, one per
/// function call, then one with the finish reason and the full usage.
pub(crate) fn events(chat: &Chat, request: &Value) -> Vec<(bool, String)> {
    let n = candidates(request);
    let partial = |parts: Vec<Value>| {
        let candidates: Vec<Value> = (0..n).map(|i| candidate(i, parts.clone(), None)).collect();
        event(json!({
            "candidates": candidates,
            "usageMetadata": usage(chat, false),
            "modelVersion": MODEL_VERSION,
            "responseId": RESPONSE_ID,
        }))
    };
    let mut out = Vec::new();
    for piece in chat.pieces_for(&last_user_text(request)) {
        out.push((true, partial(vec![json!({"text": piece})])));
    }
    for (name, args) in &chat.tool_calls {
        out.push((true, partial(vec![function_call(name, args)])));
    }
    let last: Vec<Value> = (0..n)
        .map(|i| candidate(i, vec![json!({"text": ""})], Some(finish_reason(chat))))
        .collect();
    out.push((
        false,
        event(json!({
            "candidates": last,
            "usageMetadata": usage(chat, true),
            "modelVersion": MODEL_VERSION,
            "responseId": RESPONSE_ID,
        })),
    ));
    out
}

/// Google's status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// An error body for `status`.
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

/// The error Gemini sends in place of the next event when it fails mid-stream.
pub(crate) fn error_event() -> String {
    event(error_body(
        503,
        "The model is overloaded. Please try again later.",
    ))
}

/// `batchEmbedContents`: a 3-dimensional vector per input.
pub(crate) fn embeddings(request: &Value) -> Value {
    let embeddings: Vec<Value> = request["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let text = r["content"]["parts"][0]["text"].as_str().unwrap_or("");
            json!({"values": [text.len() as f64, 0.5, -0.25]})
        })
        .collect();
    json!({"embeddings": embeddings})
}
