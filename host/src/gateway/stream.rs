//! The client side of a streamed completion.
//!
//! Pull-based: the client connection polls this body, which polls the
//! upstream, so backpressure is end to end (a slow client slows the upstream
//! read; nothing piles up in between) and a client that goes away drops the
//! upstream request with it. Each normalized chunk goes through the request's
//! guardrails (text deltas per choice; held text is released later, a block
//! ends the stream) and is re-encoded as soon as it arrives: the model
//! renamed to the client's, the usage chunk kept only if the client asked for
//! it. The stream ends with `[DONE]`; with a `content_filter` chunk then
//! `[DONE]` when a guardrail blocks (the upstream request is dropped at
//! once); or with an SSE error event and no `[DONE]` when the upstream or a
//! fail-closed policy fails mid-stream, so the official SDKs raise instead of
//! returning a silently truncated answer. Accounting happens exactly once,
//! when the stream ends or is dropped.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;

use super::chat::{Pricing, PromptEstimate};
use super::{Body, Gateway, Model, RequestLog, Target, chat};
use crate::chat::splice::{self, Edit};
use crate::chat::{ChatChunk, ChunkChoice, Delta, Usage};
use crate::metrics;
use crate::policy::PricePhase;
use crate::policy::{GuardChain, Stop};
use crate::providers::{ChunkStream, RawChunk, StreamFault, StreamItem};
use crate::routing::health::InFlight;
use crate::sse;
use crate::state::Reservation;

/// How a stream ended.
enum End {
    Done,
    Fault(StreamFault),
    Blocked(String),
    PolicyFailed(String),
    ClientGone,
}

pub(super) struct ClientStream {
    gw: Arc<Gateway>,
    model: Arc<Model>,
    /// The target serving the stream, counted in flight until it ends.
    target: (Arc<Target>, InFlight),
    /// `None` once a guardrail blocked: the upstream request is dropped.
    source: Option<ChunkStream>,
    chain: Option<GuardChain>,
    include_usage: bool,
    reservation: Option<Reservation>,
    prompt_estimate: PromptEstimate,
    usage: Option<Usage>,
    output_bytes: usize,
    /// Choices that ended (their guards' `on-end` ran).
    ended: Vec<u32>,
    /// Choices seen, for a final flush if the upstream never finished them.
    seen: Vec<u32>,
    /// `id` and `created` of the last chunk, for chunks weir writes itself
    /// (read from `last_raw` instead when that is newer).
    last: (String, u64),
    /// The last chunk, when it passed through guardrails undecoded.
    last_raw: Option<String>,
    /// The client's model name as JSON, spliced into passed-through chunks.
    model_json: Vec<u8>,
    first_sent: bool,
    /// Whether frames gather what the upstream sent together (from the
    /// second frame on: the first goes out at once).
    coalesce: bool,
    log: RequestLog,
    finished: bool,
    pricing: Pricing,
    /// What is left to price, log and record once the stream ended:
    /// (usage, status, error code).
    unsettled: Option<(Usage, u16, Option<&'static str>)>,
}

/// Events gathered into one frame at most, and the frame size that stops
/// gathering: a burst still reaches the client in pieces it can use.
const MAX_COALESCED: usize = 32;
const MAX_FRAME_BYTES: usize = 16 << 10;

impl ClientStream {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        gw: Arc<Gateway>,
        model: Arc<Model>,
        target: (Arc<Target>, InFlight),
        pricing: Pricing,
        source: ChunkStream,
        chain: Option<GuardChain>,
        include_usage: bool,
        reservation: Option<Reservation>,
        prompt_estimate: PromptEstimate,
        log: RequestLog,
    ) -> Self {
        let mut source = source;
        // Chunks pass as they came, `model` spliced in; guardrails read and
        // rewrite their text where it is.
        source.pass_through(chain.is_some());
        let model_json = serde_json::to_vec(&model.name).unwrap_or_default();
        ClientStream {
            gw,
            model,
            target,
            source: Some(source),
            chain,
            include_usage,
            reservation,
            prompt_estimate,
            usage: None,
            output_bytes: 0,
            ended: Vec::new(),
            seen: Vec::new(),
            last: (String::new(), 0),
            last_raw: None,
            model_json,
            first_sent: false,
            coalesce: false,
            log,
            finished: false,
            pricing,
            unsettled: None,
        }
    }

    /// The response body.
    pub(super) fn into_body(self) -> Body {
        let frames = futures_util::stream::unfold(self, |mut stream| async move {
            let bytes = stream.next_frame().await?;
            Some((Ok(Frame::data(bytes)), stream))
        });
        StreamBody::new(frames).boxed_unsync()
    }

    /// The next bytes for the client. After the first, events the upstream
    /// sent together go out together: once one is ready, the upstream
    /// connection gets a turn and whatever it has already read is added
    /// (never waiting for more), so a burst costs the client's socket one
    /// write instead of one per event.
    async fn next_frame(&mut self) -> Option<Bytes> {
        let first = loop {
            if self.finished {
                return None;
            }
            let next = match &mut self.source {
                Some(source) => source.next().await,
                None => None,
            };
            if let Some(bytes) = self.take(next).await {
                break bytes;
            }
        };
        if !self.coalesce {
            self.coalesce = true;
            return Some(first);
        }
        let mut frame: Option<Vec<u8>> = None;
        for _ in 0..MAX_COALESCED {
            if self.finished || frame.as_ref().map_or(first.len(), Vec::len) >= MAX_FRAME_BYTES {
                break;
            }
            // The connection's task runs after the second yield (the first
            // resumes this task before it: tokio wakes yielded tasks first).
            let mut ready = None;
            for _ in 0..2 {
                tokio::task::yield_now().await;
                ready = self.source.as_mut().and_then(ChunkStream::next_ready);
                if ready.is_some() {
                    break;
                }
            }
            let Some(next) = ready else {
                break;
            };
            if let Some(bytes) = self.take(next).await {
                frame
                    .get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(&bytes);
            }
        }
        Some(frame.map_or(first, Bytes::from))
    }

    /// What one upstream item (`None`: the upstream ended) sends the
    /// client, if anything.
    async fn take(&mut self, next: Option<Result<StreamItem, StreamFault>>) -> Option<Bytes> {
        match next {
            Some(Ok(StreamItem::Raw(raw))) => match self.guard_raw(raw).await {
                Ok(bytes) => bytes,
                Err(stop) => {
                    let bytes = self.stop(stop);
                    self.record().await;
                    Some(bytes)
                }
            },
            Some(Ok(StreamItem::Chunk(mut chunk))) => {
                if let Err(stop) = self.guard(&mut chunk).await {
                    let bytes = self.stop(stop);
                    self.record().await;
                    return Some(bytes);
                }
                self.encode(chunk)
            }
            None => {
                let mut out = Vec::new();
                match self.flush_unended().await {
                    Ok(Some(chunk)) => self.write(&chunk, &mut out),
                    Ok(None) => {}
                    Err(stop) => {
                        let bytes = self.stop(stop);
                        self.record().await;
                        return Some(bytes);
                    }
                }
                // Before `[DONE]`: the client's next request may follow
                // at once and find this one's instances free.
                if let Some(chain) = self.chain.take() {
                    chain.release().await;
                }
                self.finish(End::Done);
                self.record().await;
                out.extend_from_slice(b"data: [DONE]\n\n");
                Some(Bytes::from(out))
            }
            Some(Err(fault)) => {
                let bytes = error_event(&fault.to_string(), "upstream_error", fault.code());
                self.finish(End::Fault(fault));
                self.record().await;
                Some(bytes)
            }
        }
    }

    /// Run a chunk's text deltas through the guardrails; a finishing choice
    /// gets its guards' last word first.
    async fn guard(&mut self, chunk: &mut ChatChunk) -> Result<(), Stop> {
        self.last = (chunk.id.clone(), chunk.created);
        self.last_raw = None;
        let Some(chain) = &mut self.chain else {
            return Ok(());
        };
        for choice in &mut chunk.choices {
            if !self.seen.contains(&choice.index) {
                self.seen.push(choice.index);
            }
            if let Some(text) = choice.delta.content.take() {
                let had_text = !text.is_empty();
                let released = chain.on_chunk(choice.index, text).await?;
                // Keep `"content": ""` on the role chunk as upstreams send it;
                // drop a delta that was entirely held.
                choice.delta.content = (!released.is_empty() || !had_text).then_some(released);
            }
            if choice.finish_reason.is_some() && !self.ended.contains(&choice.index) {
                self.ended.push(choice.index);
                let tail = chain.on_end(choice.index).await?;
                if !tail.is_empty() {
                    let content = choice.delta.content.get_or_insert_with(String::new);
                    content.push_str(&tail);
                }
            }
        }
        Ok(())
    }

    /// A passed-through chunk: its texts through the guardrails (if any),
    /// each released text written where the text was; `Ok(None)` when
    /// nothing is left for the client. What a splice cannot express (a
    /// delta held whole, which drops its choice) is decoded and encoded.
    async fn guard_raw(&mut self, raw: RawChunk) -> Result<Option<Bytes>, Stop> {
        let Some(chain) = &mut self.chain else {
            return Ok(self.pass(raw));
        };
        for t in &raw.texts {
            if !self.seen.contains(&t.index) {
                self.seen.push(t.index);
            }
        }
        if raw.texts.iter().all(|t| t.range.is_none()) {
            return Ok(self.pass(raw));
        }
        // Per choice: the text released, and whether it had any.
        let mut released = Vec::with_capacity(raw.texts.len());
        for t in &raw.texts {
            let Some(text) = t.text(raw.data.as_bytes()) else {
                released.push(None);
                continue;
            };
            let had_text = !text.is_empty();
            released.push(Some((chain.on_chunk(t.index, text).await?, had_text)));
        }
        let held_whole = released
            .iter()
            .any(|r| matches!(r, Some((out, true)) if out.is_empty()));
        if !held_whole && let Some(bytes) = self.splice_released(&raw, &released) {
            // For the chunks weir writes itself (a block, a last flush).
            self.last_raw = Some(raw.data);
            return Ok(Some(bytes));
        }
        let Ok(mut chunk) = serde_json::from_str::<ChatChunk>(&raw.data) else {
            return Ok(None);
        };
        self.last = (chunk.id.clone(), chunk.created);
        self.last_raw = None;
        for (choice, r) in chunk.choices.iter_mut().zip(released) {
            if let Some((out, had_text)) = r {
                choice.delta.content = (!out.is_empty() || !had_text).then_some(out);
            }
        }
        Ok(self.encode(chunk))
    }

    /// `raw` with each choice's released text where its text was, `model`
    /// spliced in and usage kept only if asked for; `None` if the splice
    /// cannot be made.
    fn splice_released(
        &mut self,
        raw: &RawChunk,
        released: &[Option<(String, bool)>],
    ) -> Option<Bytes> {
        let data = raw.data.as_bytes();
        let choices = raw.members.range(2)?;
        let mut edits = Vec::new();
        for (t, r) in raw.texts.iter().zip(released) {
            let (Some(range), Some((out, _))) = (&t.range, r) else {
                continue;
            };
            if !t.unchanged(data, out) {
                let at = range.start.checked_sub(choices.start)?;
                edits.push((at..at + range.len(), serde_json::to_vec(out).ok()?));
            }
        }
        let new_choices = match edits.is_empty() {
            true => None,
            false => Some(splice::replace(data.get(choices)?, &edits)?),
        };
        let edits = [
            ("model", Edit::Set(&self.model_json)),
            (
                "usage",
                if self.include_usage {
                    Edit::Keep
                } else {
                    Edit::Remove
                },
            ),
            (
                "choices",
                new_choices.as_deref().map_or(Edit::Keep, Edit::Set),
            ),
        ];
        let json = raw.members.edit(data, &edits)?;
        if let Some(usage) = &raw.usage {
            self.usage = Some(usage.clone());
        }
        if !self.first_sent {
            self.first_sent = true;
            metrics::time_to_first_token(&self.model.name, self.log.start.elapsed());
        }
        self.output_bytes += released
            .iter()
            .flatten()
            .map(|(out, _)| out.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(json.len() + 8);
        sse::encode_data(&json, &mut out);
        Some(Bytes::from(out))
    }

    /// At a clean end, run `on-end` for choices the upstream never finished.
    async fn flush_unended(&mut self) -> Result<Option<ChatChunk>, Stop> {
        let Some(chain) = &mut self.chain else {
            return Ok(None);
        };
        let mut choices = Vec::new();
        for index in self.seen.clone() {
            if self.ended.contains(&index) {
                continue;
            }
            self.ended.push(index);
            let tail = chain.on_end(index).await?;
            if !tail.is_empty() {
                choices.push(ChunkChoice {
                    index,
                    delta: Delta {
                        content: Some(tail),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            }
        }
        Ok((!choices.is_empty()).then(|| self.own_chunk(choices)))
    }

    fn own_chunk(&self, choices: Vec<ChunkChoice>) -> ChatChunk {
        let (id, created) = match &self.last_raw {
            None => self.last.clone(),
            Some(data) => {
                #[derive(serde::Deserialize, Default)]
                struct Last {
                    #[serde(default)]
                    id: String,
                    #[serde(default)]
                    created: u64,
                }
                let last: Last = serde_json::from_str(data).unwrap_or_default();
                (last.id, last.created)
            }
        };
        ChatChunk {
            id,
            object: "chat.completion.chunk".into(),
            created,
            model: self.model.name.clone(),
            choices,
            ..Default::default()
        }
    }

    /// A guardrail stopped the stream: block → `content_filter` + `[DONE]`;
    /// failure (deny) → error event. The upstream request is dropped.
    fn stop(&mut self, stop: Stop) -> Bytes {
        self.source = None;
        match stop {
            Stop::Blocked { policy, .. } => {
                let indexes = if self.seen.is_empty() {
                    vec![0]
                } else {
                    self.seen.clone()
                };
                let choices = indexes
                    .into_iter()
                    .map(|index| ChunkChoice {
                        index,
                        finish_reason: Some("content_filter".into()),
                        ..Default::default()
                    })
                    .collect();
                let chunk = self.own_chunk(choices);
                let mut out = Vec::new();
                self.write(&chunk, &mut out);
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.finish(End::Blocked(policy));
                Bytes::from(out)
            }
            Stop::Failed { policy, reason } => {
                let bytes = error_event(
                    &format!("policy `{policy}` failed: {reason}"),
                    "policy_error",
                    "policy_error",
                );
                self.finish(End::PolicyFailed(policy));
                bytes
            }
        }
    }

    /// Re-encode one chunk for the client; `None` if nothing is left for them.
    fn encode(&mut self, mut chunk: ChatChunk) -> Option<Bytes> {
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.clone());
            if !self.include_usage {
                if chunk.choices.is_empty() {
                    return None;
                }
                chunk.usage = None;
            }
        }
        if self.chain.is_some() {
            // Chunks whose only content was held carry nothing now.
            chunk.choices.retain(|c| {
                c.delta.content.is_some()
                    || c.delta.role.is_some()
                    || c.delta.tool_calls.is_some()
                    || c.finish_reason.is_some()
                    || !c.delta.extra.is_empty()
            });
            if chunk.choices.is_empty() && chunk.usage.is_none() {
                return None;
            }
        }
        if !self.first_sent {
            self.first_sent = true;
            metrics::time_to_first_token(&self.model.name, self.log.start.elapsed());
        }
        chunk.model.clone_from(&self.model.name);
        let mut out = Vec::with_capacity(256);
        self.write(&chunk, &mut out);
        Some(Bytes::from(out))
    }

    /// An upstream chunk passed through (no guardrail): the same steps as
    /// [`Self::encode`] on the JSON as it came, `model` spliced in. What the
    /// splice cannot handle is decoded and encoded after all.
    fn pass(&mut self, raw: RawChunk) -> Option<Bytes> {
        if let Some(usage) = raw.usage {
            self.usage = Some(usage);
            if !self.include_usage && !raw.has_choices {
                return None;
            }
        }
        // Usage the client did not ask for is left out, as OpenAI does (weir
        // asked the upstream for it, which then sends `"usage": null`).
        // The edits' keys are `openai::RAW_KEYS`' first two, as scanned.
        let edits = [
            ("model", Edit::Set(&self.model_json)),
            ("usage", Edit::Remove),
        ];
        let edits = if self.include_usage {
            &edits[..1]
        } else {
            &edits[..]
        };
        let Some(json) = raw.members.edit(raw.data.as_bytes(), edits) else {
            let chunk = serde_json::from_str::<ChatChunk>(&raw.data).ok()?;
            return self.encode(chunk);
        };
        if !self.first_sent {
            self.first_sent = true;
            metrics::time_to_first_token(&self.model.name, self.log.start.elapsed());
        }
        self.output_bytes += raw.content_bytes;
        let mut out = Vec::with_capacity(json.len() + 8);
        sse::encode_data(&json, &mut out);
        Some(Bytes::from(out))
    }

    /// Append `chunk` (its model already the client's) as an SSE event.
    fn write(&mut self, chunk: &ChatChunk, out: &mut Vec<u8>) {
        for choice in &chunk.choices {
            if let Some(text) = &choice.delta.content {
                self.output_bytes += text.len();
            }
        }
        let start = out.len();
        out.extend_from_slice(b"data: ");
        if serde_json::to_writer(&mut *out, chunk).is_err() {
            out.truncate(start);
            return;
        }
        out.extend_from_slice(b"\n\n");
    }

    /// The stream ended: note how, for [`Self::record`] (or the drop
    /// path) to price, log and record.
    fn finish(&mut self, end: End) {
        if self.finished {
            return;
        }
        self.finished = true;
        let usage = self.usage.take().unwrap_or_else(|| {
            Usage::new(
                self.prompt_estimate.tokens(&self.model),
                (self.output_bytes as u64).div_ceil(4),
            )
        });
        let (status, error) = match end {
            End::Done => (200, None),
            End::Fault(fault) => {
                metrics::stream_aborted(&self.model.name, "upstream");
                tracing::warn!(request_id = %self.log.id, error = %fault, "upstream failed mid-stream");
                (200, Some(fault.code()))
            }
            End::Blocked(policy) => {
                metrics::stream_aborted(&self.model.name, "content_filter");
                tracing::info!(request_id = %self.log.id, policy = %policy, "stream blocked by a guardrail");
                (200, Some("content_filter"))
            }
            End::PolicyFailed(policy) => {
                metrics::stream_aborted(&self.model.name, "policy_error");
                tracing::warn!(request_id = %self.log.id, policy = %policy, "policy failed mid-stream");
                (200, Some("policy_error"))
            }
            End::ClientGone => {
                metrics::stream_aborted(&self.model.name, "client_closed");
                (499, Some("client_closed"))
            }
        };
        self.unsettled = Some((usage, status, error));
    }
}

/// Price, log and record an ended stream.
async fn settle(
    gw: &Gateway,
    pricing: &Pricing,
    target: &Target,
    log: &mut RequestLog,
    reservation: Option<Reservation>,
    (usage, status, error): (Usage, u16, Option<&'static str>),
) {
    let cost = pricing.cost(gw, PricePhase::Actual, target, &usage).await;
    let actual = chat::account(&usage, cost, log);
    log.finish(status, error);
    chat::record(gw, log, reservation, actual).await;
}

fn error_event(message: &str, kind: &str, code: &str) -> Bytes {
    let event = json!({"error": {"message": message, "type": kind, "code": code}});
    let mut out = Vec::new();
    sse::encode_data(event.to_string().as_bytes(), &mut out);
    Bytes::from(out)
}

impl ClientStream {
    /// Price, log and record (before the last frame goes out, so the next
    /// request of the same key sees this one settled).
    async fn record(&mut self) {
        if let Some(ended) = self.unsettled.take() {
            settle(
                &self.gw,
                &self.pricing,
                &self.target.0,
                &mut self.log,
                self.reservation.take(),
                ended,
            )
            .await;
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        self.finish(End::ClientGone);
        // The client left mid-stream: settle what was used, off this path.
        if let Some(ended) = self.unsettled.take() {
            let gw = self.gw.clone();
            let pricing = self.pricing.clone();
            let target = self.target.0.clone();
            let reservation = self.reservation.take();
            let mut log = self.log.hand_off();
            tokio::spawn(async move {
                settle(&gw, &pricing, &target, &mut log, reservation, ended).await;
            });
        }
    }
}
