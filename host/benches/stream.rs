//! The per-event cost of the streaming path without the network: SSE
//! parsing, decoding an OpenAI chunk into the normalized type, and encoding
//! it back for the client. `cargo bench -p weir --bench stream`.

#![allow(clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir::chat::ChatChunk;
use weir::sse::{SseEvent, SseParser};

/// One OpenAI content chunk as the API sends it with include_usage on.
const EVENT: &str = r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_4d82a4d1ab","choices":[{"index":0,"delta":{"content":" tok0012"},"logprobs":null,"finish_reason":null}],"usage":null}

"#;

fn bench(c: &mut Criterion) {
    let stream: String = EVENT.repeat(20);
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Elements(20));
    group.bench_function("sse_parse_20_events", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut out: Vec<SseEvent> = Vec::with_capacity(20);
            parser.feed(stream.as_bytes(), &mut out).expect("parses");
            std::hint::black_box(out)
        })
    });
    let data = EVENT.trim().trim_start_matches("data: ");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_chunk", |b| {
        b.iter(|| std::hint::black_box(serde_json::from_str::<ChatChunk>(data).expect("decodes")))
    });
    let chunk: ChatChunk = serde_json::from_str(data).expect("decodes");
    group.bench_function("encode_chunk", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            serde_json::to_writer(&mut out, &chunk).expect("encodes");
            std::hint::black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
