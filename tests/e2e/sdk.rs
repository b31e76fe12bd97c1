//! The official `openai` SDKs against weir, changing only the base URL:
//! Python (`tests/sdk/openai_sdk_check.py`) and JavaScript
//! (`tests/sdk/openai_sdk_check.mjs`); `./dev.sh test` installs both.

use std::process::Command;

use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{config, start};

/// Run `interpreter SCRIPT BASE_URL KEY` (a script in `tests/sdk/`) against
/// a gateway whose upstream answers its calls in order, and expect `ok`.
async fn sdk_check(interpreter: &'static str, script: &str) {
    let up = MockUpstream::start().await;
    // Replies in the order the scripts make their upstream calls.
    up.push(Reply::Chat(Chat::default()));
    up.push(Reply::Chat(Chat::default()));
    up.push(Reply::Chat(Chat::tool_call(
        "get_weather",
        &["{\"ci", "ty\": \"Par", "is\"}"],
    )));
    up.push(Reply::DropAfter(Chat::text(&["partial ", "answer"]), 1));
    let extra = r#"
[[models]]
name = "embed"
targets = [{ provider = "up", model = "text-embedding-3-small" }]

[[keys]]
name = "sdk"
key = "sk-weir-sdk-test"
"#;
    let gw = start(&config(&up, extra));
    let script = format!("{}/../tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking({
        let base = gw.url("/v1");
        move || {
            Command::new(interpreter)
                .args([&script, &base, "sk-weir-sdk-test"])
                .output()
                .unwrap_or_else(|e| {
                    panic!("{interpreter} runs (./dev.sh test installs the openai SDKs): {e}")
                })
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the SDK check failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_with_only_a_base_url_change() {
    sdk_check("python3", "openai_sdk_check.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_javascript_sdk_works_with_only_a_base_url_change() {
    sdk_check("node", "openai_sdk_check.mjs").await;
}
