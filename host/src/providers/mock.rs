//! The built-in `mock` provider: a model that needs no key and no network.
//!
//! Its answer is derived from the prompt (so the same prompt always gets the
//! same words), streamed in a configurable number of chunks with a
//! configurable delay, and its usage numbers count the prompt and the answer
//! at 4 bytes a token ([`Tokenizer::Bytes`], also how weir estimates the
//! model named `mock`, so its estimates and usage agree), whether streamed or
//! not. It is what `weir serve` with no config answers with, and a stable
//! upstream for demos and policy tests.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::{ChatReply, ChunkStream, StreamFault, Whole};
use crate::chat::open::Extra;
use crate::chat::{
    ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, ResponseMessage, Usage,
};
use crate::config::ProviderConfig;
use crate::tokens::{self, Tokenizer};

/// The mock provider's settings.
#[derive(Debug)]
pub struct Mock {
    chunks: usize,
    delay: Duration,
}

impl Mock {
    /// From a validated provider config.
    pub fn new(p: &ProviderConfig) -> Mock {
        Mock {
            chunks: p.chunks.unwrap_or(8).max(1) as usize,
            delay: Duration::from_millis(p.chunk_delay_ms.unwrap_or(0)),
        }
    }

    /// The deterministic answer to a request, cut to `max_tokens`.
    fn answer(req: &ChatRequest, model: &str) -> (String, &'static str) {
        let prompt = req.last_user_text();
        let quoted: String = prompt.chars().take(160).collect();
        let ellipsis = if prompt.chars().count() > 160 {
            "…"
        } else {
            ""
        };
        let text = format!(
            "Hello from weir's mock model `{model}`. You said: \"{quoted}{ellipsis}\" \
             ({} characters, {} words). Ask again and you will get the same answer.",
            prompt.chars().count(),
            prompt.split_whitespace().count(),
        );
        match req.max_tokens {
            Some(max) if Tokenizer::Bytes.count(&text) > max => {
                let cut = tokens::prefix_within(&text, max);
                (text[..cut].to_string(), "length")
            }
            _ => (text, "stop"),
        }
    }

    fn usage(req: &ChatRequest, text: &str) -> Usage {
        Usage::new(
            Tokenizer::Bytes.count_request(req),
            Tokenizer::Bytes.count(text),
        )
    }

    pub(super) fn chat(&self, req: &ChatRequest, model: &str) -> ChatReply {
        let (text, finish) = Self::answer(req, model);
        let usage = Self::usage(req, &text);
        let id = format!("chatcmpl-mock{:016x}", fastrand::u64(..));
        let created = now_secs();
        if !req.stream {
            return ChatReply::Complete(Whole::Parsed(Box::new(ChatCompletion {
                id,
                object: "chat.completion".into(),
                created,
                model: model.to_string(),
                choices: vec![Choice {
                    index: 0,
                    message: ResponseMessage {
                        role: "assistant".into(),
                        content: Some(text),
                        ..Default::default()
                    },
                    finish_reason: Some(finish.into()),
                    extra: Extra::default(),
                }],
                usage: Some(usage),
                extra: Extra::default(),
            })));
        }
        let chunk = |delta: Delta, finish_reason: Option<String>| ChatChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.to_string(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                extra: Extra::default(),
            }],
            usage: None,
            extra: Extra::default(),
        };
        let mut queue = VecDeque::new();
        queue.push_back((
            false,
            chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            ),
        ));
        for piece in split_even(&text, self.chunks) {
            queue.push_back((
                true,
                chunk(
                    Delta {
                        content: Some(piece.to_string()),
                        ..Default::default()
                    },
                    None,
                ),
            ));
        }
        queue.push_back((false, chunk(Delta::default(), Some(finish.into()))));
        let mut usage_chunk = chunk(Delta::default(), None);
        usage_chunk.choices.clear();
        usage_chunk.usage = Some(usage);
        queue.push_back((false, usage_chunk));
        ChatReply::Stream(ChunkStream::Mock(ChunkReader {
            queue,
            delay: self.delay,
        }))
    }

    pub(super) fn embeddings(&self, body: &Map<String, Value>, model: &str) -> Value {
        let inputs: Vec<String> = match body.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect(),
            _ => vec![String::new()],
        };
        let dims = body
            .get("dimensions")
            .and_then(Value::as_u64)
            .unwrap_or(8)
            .clamp(1, 4096) as usize;
        let prompt_tokens: u64 = inputs.iter().map(|i| Tokenizer::Bytes.count(i)).sum();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                json!({"object": "embedding", "index": i, "embedding": embed(input, dims)})
            })
            .collect();
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })
    }
}

/// A unit vector derived from the text (FNV-1a seeded per dimension).
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|d| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (d as u64).wrapping_mul(0x9e37_79b9);
            for b in text.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Split `text` into `n` pieces of about equal length on char boundaries.
fn split_even(text: &str, n: usize) -> Vec<&str> {
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let n = n.min(chars.len()).max(1);
    let mut pieces = Vec::with_capacity(n);
    let mut start = 0;
    for k in 1..=n {
        let end = if k == n {
            text.len()
        } else {
            chars[chars.len() * k / n]
        };
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Plays back the mock's chunks, sleeping before each text chunk.
#[derive(Debug)]
pub struct ChunkReader {
    queue: VecDeque<(bool, ChatChunk)>,
    delay: Duration,
}

impl ChunkReader {
    /// The next chunk if it is due now (no delay before it): `None` when it
    /// is not, `Some(None)` at the end.
    pub fn next_ready(&mut self) -> Option<Option<Result<ChatChunk, StreamFault>>> {
        match self.queue.front() {
            Some((true, _)) if !self.delay.is_zero() => None,
            _ => Some(self.queue.pop_front().map(|(_, chunk)| Ok(chunk))),
        }
    }

    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<ChatChunk, StreamFault>> {
        let (delayed, chunk) = self.queue.pop_front()?;
        if delayed && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Some(Ok(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_covers_the_text() {
        for n in [1, 3, 7, 100] {
            let text = "héllo wörld, this is text";
            let pieces = split_even(text, n);
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len(), n.min(text.chars().count()));
        }
        assert_eq!(split_even("", 4), vec![""]);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("abc", 16);
        assert_eq!(a, embed("abc", 16));
        assert_ne!(a, embed("abd", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
