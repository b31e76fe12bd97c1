//! Shared fixtures: the binary under test and config templates.

use weir_testkit::gateway::{Gateway, GatewayBuilder};
use weir_testkit::upstream::MockUpstream;

/// The provider key tests give the gateway; it must never leak.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";

/// The `weir` binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// Listeners on free ports, state in memory.
pub const SERVER: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[state]
backend = "memory"
"#;

/// An OpenAI-kind provider named `name` pointing at `up`.
pub fn provider(name: &str, up: &MockUpstream, timeout_ms: u64) -> String {
    format!(
        r#"
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{}"
api_key_env = "WEIR_TEST_UPSTREAM_KEY"
timeout_ms = {timeout_ms}
stream_idle_timeout_ms = {timeout_ms}
"#,
        up.base_url()
    )
}

/// One upstream serving model `chat` as `gpt-4o-mini`, plus `extra` TOML.
pub fn config(up: &MockUpstream, extra: &str) -> String {
    format!(
        r#"{SERVER}
{}
[[models]]
name = "chat"
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
{extra}"#,
        provider("up", up, 2000)
    )
}

/// A builder with the upstream key in the environment.
pub fn gateway(config: &str) -> GatewayBuilder {
    Gateway::builder(bin(), config).env("WEIR_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
}

/// Start a gateway on `config`.
pub fn start(config: &str) -> Gateway {
    gateway(config).start()
}

/// A minimal chat body.
pub fn chat_body(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": content}]})
}

/// A minimal streamed chat body.
pub fn stream_body(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": content}]})
}
