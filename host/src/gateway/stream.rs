//! The client side of a streamed completion.
//!
//! Pull-based: the client connection polls this body, which polls the
//! upstream, so backpressure is end to end (a slow client slows the upstream
//! read; nothing piles up in between) and a client that goes away drops the
//! upstream request with it. Each normalized chunk is re-encoded as soon as it
//! arrives: the model renamed to the client's, the usage chunk kept only if
//! the client asked for it. The stream ends with `[DONE]`, or with an SSE
//! error event and no `[DONE]` when the upstream fails mid-stream (so the
//! official SDKs raise instead of returning a silently truncated answer).
//! Accounting happens exactly once, when the stream ends or is dropped.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;

use super::{Body, Gateway, Model, RequestLog, chat};
use crate::chat::{ChatChunk, Usage};
use crate::limits::Reservation;
use crate::metrics;
use crate::providers::{ChunkStream, StreamFault};
use crate::sse;

/// How a stream ended.
enum End {
    Done,
    Fault(StreamFault),
    ClientGone,
}

pub(super) struct ClientStream {
    gw: Arc<Gateway>,
    model: Arc<Model>,
    source: ChunkStream,
    include_usage: bool,
    reservation: Option<Reservation>,
    prompt_estimate: u64,
    usage: Option<Usage>,
    output_bytes: usize,
    first_sent: bool,
    log: RequestLog,
    finished: bool,
}

impl ClientStream {
    pub(super) fn new(
        gw: Arc<Gateway>,
        model: Arc<Model>,
        source: ChunkStream,
        include_usage: bool,
        reservation: Option<Reservation>,
        prompt_estimate: u64,
        log: RequestLog,
    ) -> Self {
        ClientStream {
            gw,
            model,
            source,
            include_usage,
            reservation,
            prompt_estimate,
            usage: None,
            output_bytes: 0,
            first_sent: false,
            log,
            finished: false,
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

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            match self.source.next().await {
                Some(Ok(chunk)) => {
                    if let Some(bytes) = self.encode(chunk) {
                        return Some(bytes);
                    }
                }
                None => {
                    self.finish(End::Done);
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Some(Err(fault)) => {
                    let event = json!({"error": {
                        "message": fault.to_string(),
                        "type": "upstream_error",
                        "code": fault.code(),
                    }});
                    self.finish(End::Fault(fault));
                    let mut out = Vec::new();
                    sse::encode_data(event.to_string().as_bytes(), &mut out);
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    /// Re-encode one chunk for the client; `None` if it is not for them.
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
        for choice in &chunk.choices {
            if let Some(text) = &choice.delta.content {
                self.output_bytes += text.len();
            }
        }
        if !self.first_sent {
            self.first_sent = true;
            metrics::time_to_first_token(&self.model.name, self.log.start.elapsed());
        }
        chunk.model.clone_from(&self.model.name);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"data: ");
        if serde_json::to_writer(&mut out, &chunk).is_err() {
            return None;
        }
        out.extend_from_slice(b"\n\n");
        Some(Bytes::from(out))
    }

    fn finish(&mut self, end: End) {
        if self.finished {
            return;
        }
        self.finished = true;
        let usage = self.usage.take().unwrap_or_else(|| {
            Usage::new(self.prompt_estimate, (self.output_bytes as u64).div_ceil(4))
        });
        chat::account(
            &self.gw,
            &self.model,
            &usage,
            self.reservation.take(),
            &mut self.log,
        );
        match end {
            End::Done => self.log.finish(200, None),
            End::Fault(fault) => {
                metrics::stream_aborted(&self.model.name, "upstream");
                tracing::warn!(request_id = %self.log.id, error = %fault, "upstream failed mid-stream");
                self.log.finish(200, Some(fault.code()));
            }
            End::ClientGone => {
                metrics::stream_aborted(&self.model.name, "client_closed");
                self.log.finish(499, Some("client_closed"));
            }
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        self.finish(End::ClientGone);
    }
}
