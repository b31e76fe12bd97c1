//! What a token estimate costs on the request path, against `tiktoken-rs`'s
//! own `CoreBPE::encode_ordinary` (the direct path) on the same text, and
//! what each vocabulary costs in memory. `cargo bench -p weir --bench tokens`.
//!
//! Before the timings it prints what each vocabulary costs to load and keep
//! resident (with mimalloc, as the `weir` binary runs), and the same for
//! `tiktoken-rs`'s `CoreBPE` for comparison.

#![allow(clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use weir::chat::ChatRequest;
use weir::tokens::{self, Tokenizer};

#[global_allocator]
static ALLOCATOR: weir::alloc::Allocator = weir::alloc::Allocator;

const PROSE: &str = "The river had been rising for three days before anyone in the village thought to move the boats. By the time the ferryman walked down to the landing on Thursday morning, the water was lapping at the second step of the stone stairs, and the willows on the far bank stood knee-deep in a brown, unhurried current. He had seen floods before, of course; every spring the snowmelt from the hills pushed the river over its banks for a week or two, and the farmers along the lower meadows had learned to keep their hay in the lofts until May. But this was September, and the sky had been clear for most of the summer. Nobody could say exactly where the water was coming from. The schoolteacher, who read the newspapers from the city, suggested that a dam upstream might have been opened to relieve a reservoir after the storms in the mountains. The priest thought it was a judgment, though he was careful not to say on whom. The children were delighted: the lower road was closed.";
const CHINESE: &str = "河水已经连续上涨了三天，村里才有人想起要把船挪走。星期四早上，摆渡人走到码头时，水已经漫到了石阶的第二级，对岸的柳树泡在齐膝深的棕色河水里，水流缓慢而沉稳。他当然见过洪水；每年春天，山上的融雪都会让河水漫过堤岸一两个星期，下游草地上的农民早就学会了把干草存放在阁楼里，一直放到五月。可现在是九月，整个夏天天空几乎都是晴朗的。没有人说得清这些水究竟是从哪里来的。经常读城里报纸的女教师猜测，可能是上游的水库在山里的暴雨之后开闸放水了。神父认为这是一种审判，不过他很小心，没有说是针对谁的。至于孩子们，他们高兴极了：下面的公路封闭了，公共汽车开不到学校，磨坊后面的果园变成了一片浅浅的湖，上面漂满了苹果。河水已经连续上涨了三天。";

/// The first `n` bytes of `text`, cut at a char boundary.
fn head(text: &str, n: usize) -> &str {
    let mut n = n.min(text.len());
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    &text[..n]
}

/// `VmRSS` and `VmHWM` (peak) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Each vocabulary's memory, measured in a fresh process (this binary run
/// again with `WEIR_TOKENS_RSS` set), a second after loading so freed
/// memory has gone back to the system.
fn memory() {
    if let Ok(what) = std::env::var("WEIR_TOKENS_RSS") {
        let (before, _) = rss_kib();
        let started = std::time::Instant::now();
        match what.as_str() {
            "o200k_base (weir)" => Tokenizer::O200k.preload(),
            "cl100k_base (weir)" => Tokenizer::Cl100k.preload(),
            "o200k_base (tiktoken-rs CoreBPE)" => {
                std::mem::forget(tiktoken_rs::o200k_base().expect("loads"))
            }
            _ => std::mem::forget(tiktoken_rs::cl100k_base().expect("loads")),
        }
        let ms = started.elapsed().as_millis();
        std::thread::sleep(std::time::Duration::from_secs(1));
        // A little allocator traffic lets mimalloc purge freed pages.
        for _ in 0..1000 {
            std::hint::black_box(vec![0u8; 4096]);
        }
        let (after, peak) = rss_kib();
        println!(
            "tokens: {what}: {ms} ms to load, +{:.1} MiB resident after, peak +{:.1} MiB",
            after.saturating_sub(before) as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0,
        );
        std::process::exit(0);
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    for what in [
        "o200k_base (weir)",
        "cl100k_base (weir)",
        "o200k_base (tiktoken-rs CoreBPE)",
        "cl100k_base (tiktoken-rs CoreBPE)",
    ] {
        if let Ok(out) = std::process::Command::new(&exe)
            .arg("--bench")
            .env("WEIR_TOKENS_RSS", what)
            .output()
        {
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

fn bench(c: &mut Criterion) {
    memory();
    let code = head(include_str!("../src/sse.rs"), 1024);
    let texts = [
        ("prose_1k", head(PROSE, 1024)),
        ("code_1k", code),
        ("chinese_1k", head(CHINESE, 1024)),
    ];
    let o200k = tiktoken_rs::o200k_base_singleton();
    let cl100k = tiktoken_rs::cl100k_base_singleton();
    let mut group = c.benchmark_group("tokens");
    for (name, text) in texts {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("{name}/o200k"), |b| {
            b.iter(|| tokens::estimate_text(std::hint::black_box(text), "gpt-4o-mini"))
        });
        group.bench_function(format!("{name}/o200k_tiktoken_rs"), |b| {
            b.iter(|| o200k.encode_ordinary(std::hint::black_box(text)).len())
        });
        group.bench_function(format!("{name}/cl100k"), |b| {
            b.iter(|| tokens::estimate_text(std::hint::black_box(text), "gpt-4"))
        });
        group.bench_function(format!("{name}/cl100k_tiktoken_rs"), |b| {
            b.iter(|| cl100k.encode_ordinary(std::hint::black_box(text)).len())
        });
        group.bench_function(format!("{name}/claude_approx"), |b| {
            b.iter(|| tokens::estimate_text(std::hint::black_box(text), "claude-3-5-haiku-latest"))
        });
        group.bench_function(format!("{name}/bytes"), |b| {
            b.iter(|| tokens::estimate_text(std::hint::black_box(text), "mock"))
        });
    }

    // A whole chat request: system prompt, a short exchange, one tool.
    let body = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": head(PROSE, 400)},
            {"role": "user", "content": head(PROSE, 300)},
            {"role": "assistant", "content": "Sure, here is a summary."},
            {"role": "user", "content": "Thanks! Now the weather in Lisbon, please."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    });
    let bytes = serde_json::to_vec(&body).expect("encodes");
    let req = ChatRequest::parse(&bytes).expect("parses");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("chat_request/gpt-4o-mini", |b| {
        b.iter(|| tokens::estimate_request(std::hint::black_box(&req), "gpt-4o-mini"))
    });

    // 256 KiB: sampled, not counted whole.
    let long: String = PROSE.repeat(256).chars().take(256 << 10).collect();
    group.throughput(Throughput::Bytes(long.len() as u64));
    group.bench_function("prose_256k/o200k_sampled", |b| {
        b.iter(|| tokens::estimate_text(std::hint::black_box(&long), "gpt-4o-mini"))
    });
    group.sample_size(10);
    group.bench_function("prose_256k/o200k_tiktoken_rs", |b| {
        b.iter(|| o200k.encode_ordinary(std::hint::black_box(&long)).len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
