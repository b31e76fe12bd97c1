//! The command line: `weir check`, `weir serve` on bad configs, and the
//! embedded default.

use std::time::Duration;

use serde_json::json;
use weir_testkit::client::{self, post_json};
use weir_testkit::gateway::{Gateway, run};

use crate::support::{bin, stream_body};

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("weir.toml"),
        r#"
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:8000/v1"

[[models]]
name = "chat"
targets = [{ provider = "local", model = "llama" }]
"#,
    )
    .unwrap();
    let (code, out, err) = run(bin(), &["check", "--config", "weir.toml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_lists_every_error_with_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        r#"
[server]
listen = "not-an-address"
max_body_bytes = "big"

[[providers]]
name = "openai"
kind = "openai"
api_key_env = "WEIR_TEST_DEFINITELY_UNSET"

[[providers]]
name = "openai"
kind = "martian"

[[models]]
name = "chat"
targets = [{ provider = "nobody", model = "x" }]
guardrails = ["ghost"]

[[keys]]
name = "team"
key = "sk-weir-team"
models = ["chat", "missing-model"]
typo_field = 1

[surprise]
"#,
    )
    .unwrap();
    let (code, out, err) = run(bin(), &["check", "--config", "bad.toml"], dir.path());
    assert_eq!(code, 2, "{out}{err}");
    for needle in [
        "bad.toml",
        "server.max_body_bytes",
        "providers[0].api_key_env: environment variable `WEIR_TEST_DEFINITELY_UNSET` is not set",
        "providers[1].kind",
        "models[0].targets[0].provider: no provider named `nobody`",
        "models[0].guardrails[0]: no policy named `ghost`",
        "keys[0].typo_field",
        "surprise: unknown section",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    std::fs::write(dir.path().join("syntax.toml"), "[server\nlisten = 1").unwrap();
    let (code, _, err) = run(bin(), &["check", "--config", "syntax.toml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("line 1"), "{err}");

    let (code, _, err) = run(bin(), &["check", "--config", "missing.toml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");

    let (code, _, _) = run(bin(), &["serve", "--config", "bad.toml"], dir.path());
    assert_eq!(code, 2, "serve refuses a bad config");
    let (code, _, _) = run(bin(), &["frobnicate"], dir.path());
    assert_eq!(code, 2, "bad usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_serves_the_mock_model_with_no_config() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded default listens on 4000/4001; move it to free ports.
    let mut cmd = Gateway::embedded(bin()).dir(dir.path());
    cmd = cmd.env("RUST_LOG", "info");
    let gw = start_embedded(cmd);
    let models = client::get(&gw.url("/v1/models"), None).await.json();
    assert_eq!(models["data"][0]["id"], "mock");

    let mut body = stream_body("What is weir?");
    body["model"] = json!("mock");
    body["stream_options"] = json!({"include_usage": true});
    let s = client::stream(&gw.url("/v1/chat/completions"), &body, None).await;
    assert_eq!(s.status, 200);
    assert!(s.done());
    let text = s.text();
    assert!(text.contains("What is weir?"), "{text}");
    // The answer is streamed in several chunks, with real usage numbers.
    assert!(s.chunks().len() >= 10, "{:?}", s.events);
    let usage = s.chunks().last().unwrap()["usage"].clone();
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["completion_tokens"].as_u64().unwrap(),
        (text.len() as u64).div_ceil(4)
    );
    assert_eq!(s.header("x-weir-provider"), Some("mock/mock"));

    // Deterministic: the same prompt gets the same words, whole or streamed.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let r = post_json(&gw.url("/v1/chat/completions"), &whole, None).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], text);
    gw.wait_for_log("embedded default", Duration::from_secs(1));
}

fn start_embedded(builder: weir_testkit::gateway::GatewayBuilder) -> Gateway {
    builder.listen_overrides().start()
}
