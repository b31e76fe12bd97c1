//! Policies in other languages, through the binary: the Python
//! (`topic-filter-py`, componentize-py), JavaScript (`secrets-js`,
//! componentize-js), C (`length-limit-c`, clang + wasm-component-ld) and Go
//! (`length-limit-go`, Go's wasip1 port + the preview1 adapter) guardrails
//! built from source by `policies/build-other.sh`, on requests and streamed
//! chunks, under `weir policy test`, with `reuse_instances`; and the refusal
//! of `reuse_instances` for Go guests.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use weir_testkit::client::{self, get, post_json, send};
use weir_testkit::gateway::{Gateway, run};
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::policies::{entry, policy, ready};
use crate::support::{bin, chat_body, config, start, stream_body};

/// topic-filter-py's config in the tests (and in its test-config.json).
const TOPICS: &str = r#"{ threshold = 2.0, responses = true, topics = { "investment-advice" = { stocks = 1.5, "stock tips" = 2.0, portfolio = 1.0, "buy shares" = 1.5 }, "medical-diagnosis" = { threshold = 1.5, keywords = { diagnose = 1.0, symptoms = 0.5, prescription = 1.0 } } } }"#;

/// Interpreters start in about a millisecond; give them memory and a
/// deadline that a busy two-core test machine cannot miss.
const INTERPRETER: &str = "memory_mb = 64\ntimeout_ms = 2000\n";

/// The non-empty content deltas of a stream.
fn deltas(s: &client::SseResponse) -> Vec<String> {
    s.chunks()
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

fn finish_reason(s: &client::SseResponse) -> Value {
    s.chunks()
        .iter()
        .rev()
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .find(|f| !f.is_null())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_topic_filter_denies_by_topic_and_blocks_streams_before_the_crossing_word() {
    let up = MockUpstream::start().await;
    let extra = entry(
        "topic-filter-py",
        &policy("topic-filter-py"),
        true,
        TOPICS,
        INTERPRETER,
    );
    let gw = start(&config(&up, &extra));
    let url = gw.url("/v1/chat/completions");

    let ok = post_json(&url, &chat_body("Summarize the quarterly report."), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        up.last().body["messages"][0]["content"],
        "Summarize the quarterly report."
    );

    let before = up.received().len();
    let denied = post_json(
        &url,
        &chat_body("Any stock tips? Which stocks should I pick?"),
        None,
    )
    .await;
    assert_eq!(denied.status, 400, "{}", denied.text());
    assert_eq!(denied.error_code(), "off_topic");
    let message = denied.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("investment-advice"), "{message}");
    assert_eq!(up.received().len(), before, "a denied request never leaves");
    // A topic with its own threshold.
    let medical = post_json(&url, &chat_body("Please diagnose my symptoms"), None).await;
    assert_eq!(medical.status, 400);
    assert!(
        medical.text().contains("medical-diagnosis"),
        "{}",
        medical.text()
    );

    // "stock" + "s" is held and scored as "stocks" (1.5, allowed);
    // "portf" + "olio" crosses the threshold and is never released.
    up.push(Reply::Chat(
        Chat::text(&[
            "Here are some stock",
            "s and a portf",
            "olio plan",
            " for you.",
        ])
        .delay(Duration::from_millis(10)),
    ));
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert_eq!(s.status, 200);
    assert!(s.done(), "a block ends with [DONE]: {:?}", s.events);
    assert_eq!(s.text(), "Here are some stocks and a ");
    assert_eq!(finish_reason(&s), "content_filter");
    for delta in deltas(&s) {
        assert!(!delta.contains("portf"), "leaked {delta:?}");
    }
    assert!(!s.raw.contains("for you"));

    // Clean text streams through whole; the trailing word is released at the end.
    up.push(Reply::Chat(Chat::text(&["The report ", "is rea", "dy"])));
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert!(s.done());
    assert_eq!(s.text(), "The report is ready");
    assert_eq!(finish_reason(&s), "stop");

    // Not streamed: the same guard over the whole text.
    up.push(Reply::Chat(Chat::text(&["Buy shares for your portfolio."])));
    let r = post_json(&url, &chat_body("hi"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-policy"), Some("topic-filter-py"));
    assert_eq!(r.json()["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(r.json()["choices"][0]["message"]["content"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_guardrail_declares_its_hooks_from_its_config_and_itself_stateless() {
    let up = MockUpstream::start().await;
    // Without `responses = true` topic-filter-py only judges requests, and
    // says so: streams no longer pass through the interpreter per delta.
    let request_only = TOPICS.replace("responses = true", "responses = false");
    let extra = entry(
        "topic-filter-py",
        &policy("topic-filter-py"),
        true,
        &request_only,
        INTERPRETER,
    ) + &entry(
        "both",
        &policy("topic-filter-py"),
        true,
        TOPICS,
        INTERPRETER,
    );
    let gw = start(&config(&up, &extra));
    let listing = get(&gw.admin_url("/admin/policies"), None).await.json();
    let declared: Vec<Value> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!([p["hooks"], p["stateless"], p["reuse_instances"]]))
        .collect();
    // It declares itself stateless too, so its instances are reused.
    assert_eq!(
        declared,
        [
            json!([["requests"], true, 1000]),
            json!([["requests", "responses"], true, 1000])
        ]
    );

    up.push(Reply::Chat(Chat::text(&["Buy", " shares", " now"])));
    let s = client::stream(&gw.url("/v1/chat/completions"), &stream_body("hi"), None).await;
    assert!(s.done());
    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    let calls = |policy: &str| {
        let series = format!("weir_policy_calls_total{{policy=\"{policy}\",hook=\"on_chunk\"}}");
        metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .map_or(0.0, |l| l[series.len()..].trim().parse::<f64>().unwrap())
    };
    assert_eq!(calls("topic-filter-py"), 0.0, "{metrics}");
    assert!(calls("both") >= 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_secrets_redact_requests_and_keys_split_across_chunks() {
    let up = MockUpstream::start().await;
    let extra = entry(
        "secrets-js",
        &policy("secrets-js"),
        true,
        "{ action = \"redact\" }",
        INTERPRETER,
    );
    let gw = start(&config(&up, &extra));
    let url = gw.url("/v1/chat/completions");

    let r = post_json(
        &url,
        &chat_body("my key AKIAIOSFODNN7EXAMPLE fails, and sk-proj-abcdefghijklmnopqrstuvwxyz too"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().body["messages"][0]["content"],
        "my key [REDACTED_AWS_ACCESS_KEY] fails, and [REDACTED_OPENAI_KEY] too"
    );
    // Tool-call arguments are redacted too, other fields kept.
    let body = json!({"model": "chat", "messages": [
        {"role": "user", "content": "deploy"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "deploy", "arguments": "{\"token\":\"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]});
    assert_eq!(post_json(&url, &body, None).await.status, 200);
    let sent = up.last().body["messages"].clone();
    assert_eq!(
        sent[1]["tool_calls"][0]["function"]["arguments"],
        "{\"token\":\"[REDACTED_GITHUB_TOKEN]\"}"
    );
    assert_eq!(sent[1]["tool_calls"][0]["id"], "call_1");

    // A GitHub token in three deltas: no piece of it is ever sent.
    up.push(Reply::Chat(
        Chat::text(&[
            "Your token is gh",
            "p_abcdefghijklmnopqrstu",
            "vwxyz0123456789AB",
            " - keep it safe.",
        ])
        .delay(Duration::from_millis(10)),
    ));
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(
        s.text(),
        "Your token is [REDACTED_GITHUB_TOKEN] - keep it safe."
    );
    for delta in deltas(&s) {
        assert!(
            !delta.contains("gh") && !delta.contains("abcdef") && !delta.contains("vwxyz"),
            "leaked {delta:?}"
        );
    }
    // Ordinary text is not held: "Your token is " went out before the key ended.
    assert_eq!(deltas(&s)[0], "Your token is ");

    // A private key is held until its END line, then redacted whole.
    up.push(Reply::Chat(Chat::text(&[
        "Here:\n-----BEG",
        "IN RSA PRIVATE KEY-----\nMIIEow",
        "IBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nDone.",
    ])));
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert_eq!(s.text(), "Here:\n[REDACTED_PRIVATE_KEY]\nDone.");
    assert!(!s.raw.contains("MIIE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_secrets_block_mode_denies_and_stops_the_stream() {
    let up = MockUpstream::start().await;
    let extra = entry(
        "secrets-js",
        &policy("secrets-js"),
        true,
        "{ action = \"block\" }",
        INTERPRETER,
    );
    let gw = start(&config(&up, &extra));
    let url = gw.url("/v1/chat/completions");

    let denied = post_json(&url, &chat_body("key AKIAIOSFODNN7EXAMPLE"), None).await;
    assert_eq!(denied.status, 400);
    assert_eq!(denied.error_code(), "secret_detected");
    assert!(
        denied.text().contains("aws-access-key"),
        "{}",
        denied.text()
    );
    assert!(!denied.text().contains("AKIAIOSFODNN7EXAMPLE"));

    up.push(Reply::Chat(
        Chat::text(&[
            "the key is sk-abcdefghij",
            "klmnopqrstuvwxyz and more",
            " text",
        ])
        .delay(Duration::from_millis(10)),
    ));
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(s.text(), "the key is ");
    assert_eq!(finish_reason(&s), "content_filter");
    assert!(!s.raw.contains("sk-"));
}

/// `weir policy test WASM --cases CASES --policy-config CONFIG`, run in
/// `dir`: (exit code, stdout, stderr).
fn policy_test(wasm: &Path, cases: &str, config: &str, dir: &Path) -> (i32, String, String) {
    let args = [
        "policy",
        "test",
        wasm.to_str().unwrap(),
        "--cases",
        cases,
        "--policy-config",
        config,
    ];
    run(bin(), &args, dir)
}

/// `weir policy test` over the cases each policy ships with.
#[test]
fn policy_test_runs_the_cases_each_policy_ships_with() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let topics_config =
        std::fs::read_to_string(root.join("topic-filter-py/test-config.json")).unwrap();
    let runs = [
        ("topic-filter-py", "cases.jsonl", topics_config.as_str()),
        ("secrets-js", "cases.jsonl", "{}"),
        ("secrets-js", "block-cases.jsonl", "{\"action\": \"block\"}"),
        (
            "length-limit-c",
            "cases.jsonl",
            "{\"max_request_bytes\": 40, \"max_response_bytes\": 25}",
        ),
        (
            "length-limit-go",
            "cases.jsonl",
            "{\"max_request_bytes\": 40, \"max_response_bytes\": 25}",
        ),
    ];
    for (name, cases, policy_config) in runs {
        let wasm = policy(name);
        let (code, out, err) = policy_test(&wasm, cases, policy_config, &root.join(name));
        assert_eq!(code, 0, "{name} {cases}: {out}{err}");
        assert!(out.contains(" 0 failed"), "{out}");
    }

    // A failing expectation exits 1 (the cases really are checked).
    let dir = tempfile::tempdir().unwrap();
    let wrong = json!({"name": "wrong", "request": {"messages": [{"role": "user", "content": "stock tips"}]}, "expect": "allow"});
    std::fs::write(dir.path().join("wrong.jsonl"), wrong.to_string()).unwrap();
    let wasm = policy("topic-filter-py");
    let (code, out, _) = policy_test(&wasm, "wrong.jsonl", &topics_config, dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expected allow, got deny"), "{out}");
}

/// The length-limit guardrail `name` (C and Go implement the same one) with
/// `extra` settings: refuses requests over 40 bytes of text, ends a stream
/// after 25 bytes with `content_filter`. Returns the gateway for more checks.
async fn length_limit_refuses_and_ends(up: &MockUpstream, name: &str, extra: &str) -> Gateway {
    let entry = entry(
        name,
        &policy(name),
        true,
        "{ max_request_bytes = 40, max_response_bytes = 25 }",
        extra,
    );
    let gw = start(&config(up, &entry));
    let url = gw.url("/v1/chat/completions");
    for _ in 0..6 {
        assert_eq!(post_json(&url, &chat_body("short"), None).await.status, 200);
        let long = post_json(&url, &chat_body(&"x".repeat(41)), None).await;
        assert_eq!(long.status, 400, "{name}");
        assert_eq!(long.error_code(), "request_too_long");
        assert!(long.text().contains("41 bytes of text; the limit is 40"));
    }
    up.push(Reply::Chat(Chat::text(&[
        "0123456789",
        "0123456789",
        "0123456789",
        "never sent",
    ])));
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(s.text(), "01234567890123456789");
    assert_eq!(finish_reason(&s), "content_filter");
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_length_limit_refuses_long_requests_and_ends_long_responses() {
    let up = MockUpstream::start().await;
    length_limit_refuses_and_ends(&up, "length-limit-c", "reuse_instances = 4").await;
}

/// The same guardrail in Go, on fresh instances (Go guests cannot reuse
/// them): every request gets a new instance of the Go runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_length_limit_refuses_long_requests_and_ends_long_responses() {
    let up = MockUpstream::start().await;
    let gw = length_limit_refuses_and_ends(&up, "length-limit-go", "").await;
    let url = gw.url("/v1/chat/completions");
    // Not streamed: one call with the whole text.
    up.push(Reply::Chat(Chat::text(&["0123456789", "0123456789"])));
    let r = post_json(&url, &chat_body("hi"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "01234567890123456789"
    );
    // The load's smoke call, one per request (13), and the 4 made ahead
    // for the next requests once the last response went out.
    ready(&gw, "length-limit-go", 4).await;
    assert_eq!(instantiations(&gw, "length-limit-go").await, 14 + 4);
}

/// Go's garbage collector runs in length-limit-go only where the component
/// may call out (see policies/length-limit-go/abi.go): one response of 8 MB
/// in 4 KB chunks (two collections on one instance) and a 4 MB request
/// (allocated while collections are off) pass.
#[test]
fn go_length_limit_collects_garbage_over_a_long_response_and_a_large_request() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<String> = (0..2048)
        .map(|i| format!("{i:04}{}", "x".repeat(4092)))
        .collect();
    let cases = [
        json!({"name": "8 MB response", "chunks": chunks, "expect": "pass"}),
        json!({"name": "4 MB request", "request": {"messages": [{"role": "user", "content": "y".repeat(4 << 20)}]}, "expect": "allow"}),
    ];
    let lines: Vec<String> = cases.iter().map(Value::to_string).collect();
    std::fs::write(dir.path().join("gc.jsonl"), lines.join("\n")).unwrap();
    let wasm = policy("length-limit-go");
    let config = "{\"max_request_bytes\": 0}";
    let (code, out, err) = policy_test(&wasm, "gc.jsonl", config, dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 cases, 0 failed"), "{out}");
}

/// Fresh instances started for `policy`, from the admin metrics.
async fn instantiations(gw: &Gateway, policy: &str) -> u64 {
    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("weir_policy_call_duration_seconds_count")
                && l.contains("hook=\"instantiate\"")
                && l.contains(&format!("policy=\"{policy}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_instances_serves_python_and_javascript_guardrails_correctly() {
    let up = MockUpstream::start().await;
    let reuse = format!("{INTERPRETER}reuse_instances = 5\n");
    let extra = entry(
        "topic-filter-py",
        &policy("topic-filter-py"),
        true,
        TOPICS,
        &reuse,
    ) + &entry("secrets-js", &policy("secrets-js"), true, "{}", &reuse);
    let gw = start(&config(&up, &extra));
    let url = gw.url("/v1/chat/completions");

    let rounds = 10;
    for i in 0..rounds {
        let ok = post_json(
            &url,
            &chat_body(&format!("report {i} AKIAIOSFODNN7EXAMPLE")),
            None,
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert_eq!(
            up.last().body["messages"][0]["content"],
            format!("report {i} [REDACTED_AWS_ACCESS_KEY]")
        );
        // Per-response state lives in the guard, not the instance: every
        // stream starts clean on a reused instance.
        up.push(Reply::Chat(Chat::text(&[
            "one stock",
            "s, key AKIAIOSFOD",
            "NN7EXAMPLE.",
        ])));
        let s = client::stream(&url, &stream_body("hi"), None).await;
        assert!(s.done(), "round {i}: {:?}", s.events);
        assert_eq!(
            s.text(),
            "one stocks, key [REDACTED_AWS_ACCESS_KEY].",
            "round {i}"
        );
    }
    // 20 requests per policy, at most 5 per instance.
    for name in ["topic-filter-py", "secrets-js"] {
        let fresh = instantiations(&gw, name).await;
        assert!(
            (4..=6).contains(&fresh),
            "{name}: {fresh} fresh instances for {} requests",
            2 * rounds
        );
    }
    // A denial on a reused instance is still a denial, and the next
    // request is served normally.
    for _ in 0..3 {
        let denied = post_json(&url, &chat_body("stock tips on stocks"), None).await;
        assert_eq!(denied.status, 400);
        assert_eq!(denied.error_code(), "off_topic");
        let ok = post_json(&url, &chat_body("the weather"), None).await;
        assert_eq!(ok.status, 200);
    }
}

/// The WebAssembly `producers` custom section with one field.
fn producers_section(field: &str, name: &str, version: &str) -> Vec<u8> {
    fn string(s: &str, out: &mut Vec<u8>) {
        assert!(s.len() < 128);
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    string("producers", &mut body);
    body.push(1);
    string(field, &mut body);
    body.push(1);
    string(name, &mut body);
    string(version, &mut body);
    assert!(body.len() < 128);
    let mut out = vec![0, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[test]
fn go_guests_are_refused_reuse_instances_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let check = |wasm: &Path, reuse: &str| {
        let cfg = format!(
            "[[providers]]\nname = \"m\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"m\", model = \"m\" }}]\n[[policies]]\nname = \"go\"\nkind = \"guardrail\"\npath = \"{}\"\n{reuse}\n",
            wasm.display()
        );
        std::fs::write(dir.path().join("weir.toml"), cfg).unwrap();
        run(bin(), &["check", "--config", "weir.toml"], dir.path())
    };

    // length-limit-go, built by Go's own toolchain: Go's linker leaves its
    // go:buildid section (and a producers section) in the core module.
    let real = policy("length-limit-go");
    let (code, out, err) = check(&real, "reuse_instances = 4");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("policies[0]")
            && err.contains("reuse_instances is unsafe")
            && err.contains("built with Go (a go:buildid section)"),
        "{err}"
    );
    let (code, out, err) = check(&real, "");
    assert_eq!(code, 0, "fresh instances are fine: {out}{err}");

    // A component that only says in its producers section that Go made it
    // (as TinyGo and wit-bindgen-go do).
    let mut go = std::fs::read(policy("allow-all")).unwrap();
    go.extend(producers_section("language", "Go", "go1.27.3"));
    let synthetic = dir.path().join("go.wasm");
    std::fs::write(&synthetic, go).unwrap();
    let (code, out, err) = check(&synthetic, "reuse_instances = 4");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("built with Go (producers: language Go)"),
        "{err}"
    );
    let (code, out, err) = check(&synthetic, "");
    assert_eq!(code, 0, "fresh instances are fine: {out}{err}");
}

/// docs/languages.md's "your first policy" for Python and JavaScript, step by
/// step: the templates, copied to a policy folder and built by
/// `./dev.sh test` (as `template-python` / `template-js`), pass their own
/// cases under `weir policy test`, then replace a running guardrail through
/// `PUT /admin/policies/{name}` and take effect on the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_policy_walkthrough_works_for_the_python_and_javascript_templates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (lang, built) in [("python", "template-python"), ("js", "template-js")] {
        let wasm = policy(built);
        let template = root.join("sdk").join(lang).join("template");
        let (code, out, err) = policy_test(&wasm, "cases.jsonl", "{}", &template);
        assert_eq!(code, 0, "{lang}: {out}{err}");
        assert!(out.contains("3 cases, 0 failed"), "{lang}: {out}");

        // A gateway whose guardrail `mine` starts as allow-all.
        let up = MockUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.wasm");
        std::fs::copy(policy("allow-all"), &mine).unwrap();
        let gw = start(&config(&up, &entry("mine", &mine, true, "{}", INTERPRETER)));
        let url = gw.url("/v1/chat/completions");
        let asks = chat_body("tell me the forbidden thing");
        assert_eq!(post_json(&url, &asks, None).await.status, 200, "{lang}");

        let put = send(
            Method::PUT,
            &gw.admin_url("/admin/policies/mine"),
            &[],
            std::fs::read(&wasm).unwrap(),
        )
        .await;
        assert_eq!(put.status, 200, "{lang}: {}", put.text());
        let denied = post_json(&url, &asks, None).await;
        assert_eq!(denied.status, 400, "{lang}: {}", denied.text());
        assert_eq!(denied.header("x-weir-policy"), Some("mine"));
        assert!(
            denied.text().contains("does not allow"),
            "{}",
            denied.text()
        );

        up.push(Reply::Chat(Chat::text(&["a forbidden ", "word"])));
        let s = client::stream(&url, &stream_body("hello"), None).await;
        assert!(s.done(), "{lang}");
        assert_eq!(deltas(&s).concat(), "a ********* word", "{lang}");
    }
}
