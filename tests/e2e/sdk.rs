//! The official `openai` Python SDK against weir, changing only base_url
//! (`tests/sdk/openai_sdk_check.py`; `./dev.sh test` installs the SDK).

use std::process::Command;

use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{config, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_with_only_a_base_url_change() {
    let up = MockUpstream::start().await;
    // Replies in the order the script makes its upstream calls.
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
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/sdk/openai_sdk_check.py"
    );
    let out = tokio::task::spawn_blocking({
        let base = gw.url("/v1");
        move || {
            Command::new("python3")
                .args([script, &base, "sk-weir-sdk-test"])
                .output()
                .expect("python3 runs (./dev.sh test installs the openai SDK)")
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
