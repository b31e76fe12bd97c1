//! Anthropic's Messages API as the mock upstream writes it: whole messages,
//! the named-event stream (`message_start`, `content_block_start`, `ping`,
//! `content_block_delta` with `text_delta` / `input_json_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`), error bodies
//! `{"type":"error","error":{"type","message"}}` and the `error` event.

use serde_json::{Value, json};

use crate::upstream::{Chat, last_user_message};

/// A `message_start` cut off in the middle of its JSON.
pub(crate) const MALFORMED_EVENT: &str =
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\n\n";
/// A message cut off in the middle of its JSON.
pub(crate) const MALFORMED_BODY: &str = "{\"id\":\"msg_01\",\"type\":\"message\",\"content\":[";

const ID: &str = "msg_01XFDUDYJgAACzvnptvVoYEL";

fn tool_id(k: usize) -> String {
    format!("toolu_01A09q90qw90lq917835lq9{k}")
}

/// The text of the last user turn: a string, or its text blocks.
fn last_user_text(request: &Value) -> String {
    match last_user_message(request).map(|m| &m["content"]) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// Anthropic's `stop_reason` for a scripted finish reason.
fn stop_reason(chat: &Chat) -> &str {
    match chat.finish_reason.as_str() {
        "stop" => "end_turn",
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        "content_filter" => "refusal",
        other => other,
    }
}

fn stop_sequence(chat: &Chat, request: &Value) -> Value {
    if stop_reason(chat) == "stop_sequence" {
        request["stop_sequences"][0].clone()
    } else {
        Value::Null
    }
}

fn input(args: &[String]) -> Value {
    serde_json::from_str(&args.concat()).unwrap_or_else(|_| json!({}))
}

/// A whole message.
pub(crate) fn message(chat: &Chat, request: &Value) -> Value {
    let text = chat.pieces_for(&last_user_text(request)).concat();
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for (k, (name, args)) in chat.tool_calls.iter().enumerate() {
        content.push(
            json!({"type": "tool_use", "id": tool_id(k), "name": name, "input": input(args)}),
        );
    }
    json!({
        "id": ID,
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": content,
        "stop_reason": stop_reason(chat),
        "stop_sequence": stop_sequence(chat, request),
        "usage": {
            "input_tokens": chat.usage.0,
            "cache_creation_input_tokens": chat.cache_creation_tokens,
            "cache_read_input_tokens": chat.cached_tokens,
            "output_tokens": chat.usage.1,
        },
    })
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The stream as (content?, event text); text and argument deltas are content.
pub(crate) fn events(chat: &Chat, request: &Value) -> Vec<(bool, String)> {
    let mut out = vec![(
        false,
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": ID, "type": "message", "role": "assistant", "model": request["model"],
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {
                    "input_tokens": chat.usage.0,
                    "cache_creation_input_tokens": chat.cache_creation_tokens,
                    "cache_read_input_tokens": chat.cached_tokens,
                    "output_tokens": 1,
                },
            }}),
        ),
    )];
    let pieces = chat.pieces_for(&last_user_text(request));
    let mut block = 0;
    if !pieces.is_empty() {
        out.push((
            false,
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": block, "content_block": {"type": "text", "text": ""}}),
            ),
        ));
        out.push((false, event("ping", json!({"type": "ping"}))));
        for piece in &pieces {
            out.push((
                true,
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": piece}}),
                ),
            ));
        }
        out.push((
            false,
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": block}),
            ),
        ));
        block += 1;
    }
    for (k, (name, args)) in chat.tool_calls.iter().enumerate() {
        out.push((
            false,
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": block, "content_block": {"type": "tool_use", "id": tool_id(k), "name": name, "input": {}}}),
            ),
        ));
        out.push((
            false,
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
        ));
        for piece in args {
            out.push((
                true,
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ),
            ));
        }
        out.push((
            false,
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": block}),
            ),
        ));
        block += 1;
    }
    out.push((
        false,
        event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(chat), "stop_sequence": stop_sequence(chat, request)},
                "usage": {"output_tokens": chat.usage.1}}),
        ),
    ));
    out.push((
        false,
        event("message_stop", json!({"type": "message_stop"})),
    ));
    out
}

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body for `status`.
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    })
}

/// The `error` event Anthropic sends when it fails mid-stream.
pub(crate) fn error_event() -> String {
    event(
        "error",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}
