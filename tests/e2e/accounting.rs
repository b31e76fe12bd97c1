//! Token accounting through the binary: usage and spend per key and model,
//! persistence (sqlite), limits and budgets under concurrency, and several
//! gateway processes sharing one Redis.

use std::time::Duration;

use serde_json::{Value, json};
use weir_testkit::client::{self, get, post_json};
use weir_testkit::gateway::Gateway;
use weir_testkit::redis::RedisServer;
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{chat_body, config, gateway, stream_body};

/// Our config with `state` replaced and `extra` appended.
fn with_state(up: &MockUpstream, state: &str, extra: &str) -> String {
    config(up, extra).replace("[state]\nbackend = \"memory\"", state)
}

fn key(name: &str, settings: &str) -> String {
    format!("\n[[keys]]\nname = \"{name}\"\nkey = \"sk-{name}-secret\"\n{settings}\n")
}

async fn chat(gw: &Gateway, key: &str, body: &Value) -> client::HttpResponse {
    post_json(
        &gw.url("/v1/chat/completions"),
        body,
        Some(&format!("sk-{key}-secret")),
    )
    .await
}

async fn usage(gw: &Gateway, key: &str) -> Value {
    let r = get(&gw.admin_url(&format!("/admin/usage?key={key}")), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_spend_survive_a_restart_with_sqlite() {
    let up = MockUpstream::start().await;
    // Each answer: 11 input + 3 output tokens (2 of them cached), at
    // 0.15 / 0.60 per Mtok and cached input at 0.075:
    // 9 × 0.15 + 2 × 0.075 + 3 × 0.60 = 3.3 µUSD → 3.
    up.set_default(Reply::Chat(Chat {
        cached_tokens: 2,
        ..Chat::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_state(
        &up,
        "[state]\nbackend = \"sqlite\"\npath = \"state/weir.db\"",
        &key("team", "budget_usd = 0.00001"),
    )
    .replace(
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }",
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.60, cached_input_per_mtok = 0.075 }\nmax_output_tokens = 5",
    );
    let gw = gateway(&cfg).dir(dir.path()).start();
    let r = chat(&gw, "team", &chat_body("one")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.000003"));
    let s = client::stream(
        &gw.url("/v1/chat/completions"),
        &stream_body("two"),
        Some("sk-team-secret"),
    )
    .await;
    assert!(s.done());
    let u = usage(&gw, "team").await;
    assert_eq!(u["key"], "team");
    assert_eq!(u["requests"], 2);
    assert_eq!(u["input_tokens"], 22);
    assert_eq!(u["output_tokens"], 6);
    assert_eq!(u["cached_input_tokens"], 4);
    assert_eq!(u["cost_usd"], 0.000006);
    assert_eq!(u["models"]["chat"]["requests"], 2);

    let mut gw = gw;
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    drop(gw);
    assert!(
        dir.path().join("state/weir.db").is_file(),
        "the sqlite file is next to the config"
    );
    let gw = gateway(&cfg).dir(dir.path()).start();
    let u = usage(&gw, "team").await;
    assert_eq!(u["requests"], 2, "usage survived the restart: {u}");
    assert_eq!(u["cost_usd"], 0.000006);
    // 6 of 10 µUSD spent; a request reserves its prompt + 5 output tokens
    // (≈ 4 µUSD): the third fits, the fourth does not.
    assert_eq!(chat(&gw, "team", &chat_body("three")).await.status, 200);
    let refused = chat(&gw, "team", &chat_body("four")).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "insufficient_quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_api_lists_keys_and_models_and_metrics_count_by_key() {
    let up = MockUpstream::start().await;
    let extra =
        "[[models]]\nname = \"other\"\ntargets = [{ provider = \"up\", model = \"house-model-7b\" }]\n"
            .to_string()
            + &key("a", "")
            + &key("b", "");
    let gw = gateway(&with_state(&up, "[state]\nbackend = \"memory\"", &extra)).start();
    assert_eq!(chat(&gw, "a", &chat_body("x")).await.status, 200);
    let mut other = chat_body("x");
    other["model"] = json!("other");
    assert_eq!(chat(&gw, "a", &other).await.status, 200);
    assert_eq!(chat(&gw, "b", &chat_body("x")).await.status, 200);

    let a = usage(&gw, "a").await;
    assert_eq!(a["requests"], 2);
    assert_eq!(a["models"]["chat"]["input_tokens"], 11);
    assert_eq!(a["models"]["other"]["output_tokens"], 3);
    assert_eq!(
        a["models"]["other"]["cost_usd"], 0.0,
        "model `other` has no price, and the price table does not know its target"
    );
    let all = get(&gw.admin_url("/admin/usage"), None).await.json();
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(
        get(&gw.admin_url("/admin/usage?key=nobody"), None)
            .await
            .status,
        404
    );

    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    for needle in [
        "weir_tokens_total{key=\"a\",model=\"chat\",direction=\"input\"} 11",
        "weir_tokens_total{key=\"b\",model=\"chat\",direction=\"output\"} 3",
        "weir_cost_micro_usd_total{key=\"a\",model=\"chat\"} 3",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_model_limits_and_concurrent_reservations_never_overshoot() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(
        Chat::default().delay(Duration::from_millis(100)),
    ));
    let extra =
        "[[models]]\nname = \"other\"\ntargets = [{ provider = \"up\", model = \"gpt-4o\" }]\n"
            .to_string()
            + &key(
                "team",
                "limits = [{ model = \"other\", requests_per_minute = 1 }]",
            )
            + &key("tight", "tokens_per_minute = 1000");
    let gw = gateway(&with_state(&up, "[state]\nbackend = \"memory\"", &extra)).start();
    let mut other = chat_body("x");
    other["model"] = json!("other");
    assert_eq!(chat(&gw, "team", &other).await.status, 200);
    let refused = chat(&gw, "team", &other).await;
    assert_eq!(refused.status, 429);
    assert!(
        refused.text().contains("on model `other`"),
        "{}",
        refused.text()
    );
    assert_eq!(
        chat(&gw, "team", &chat_body("x")).await.status,
        200,
        "the key's other models are not limited"
    );

    // 30 concurrent requests, each reserving its prompt + 100 tokens,
    // against 1000 tokens per minute: at most 1000 / 100+ fit.
    let mut body = chat_body("x");
    body["max_tokens"] = json!(100);
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(
                async move { post_json(&url, &body, Some("sk-tight-secret")).await.status },
            )
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=9).contains(&ok),
        "{ok} requests fit in 1000 tokens per minute"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_limits_and_budgets_through_redis() {
    let redis = RedisServer::start();
    let up = MockUpstream::start().await;
    let state = format!("[state]\nbackend = \"redis\"\nurl = \"{}\"", redis.url());
    let extra = key("limited", "requests_per_minute = 5")
        // Each served request costs 3 µUSD and reserves 11 × 0.15 + 5 × 0.6 ≈ 5.
        + &key("budgeted", "budget_usd = 0.000008");
    let cfg = with_state(&up, &state, &extra).replace(
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }",
        "price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }\nmax_output_tokens = 5",
    );
    let gw1 = gateway(&cfg).start();
    let gw2 = gateway(&cfg).start();

    let mut statuses = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        statuses.push(chat(gw, "limited", &chat_body("x")).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );

    assert_eq!(chat(&gw1, "budgeted", &chat_body("x")).await.status, 200);
    assert_eq!(chat(&gw2, "budgeted", &chat_body("x")).await.status, 200);
    // 6 of 8 µUSD spent across both processes: the next reservation does not fit on either.
    for gw in [&gw1, &gw2] {
        let r = chat(gw, "budgeted", &chat_body("x")).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.error_code(), "insufficient_quota");
    }
    // Usage recorded by one process is visible from the other.
    let u = usage(&gw2, "limited").await;
    assert_eq!(u["requests"], 5);
    assert_eq!(usage(&gw1, "budgeted").await["cost_usd"], 0.000006);
}

/// The `team-markup` pricing policy, built from source, on model `chat`.
fn priced_by_team_markup(up: &MockUpstream, keys: &str) -> String {
    let path = crate::policies::policy("team-markup");
    config(up, keys).replace("price = {", "pricing = \"team-markup\"\nprice = {")
        + &format!(
            r#"
[[policies]]
name = "team-markup"
kind = "pricing"
path = "{}"
timeout_ms = 1000
config = {{ models = {{ "gpt-4o-mini" = {{ input_per_mtok = 1000.0, output_per_mtok = 2000.0 }} }}, default = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}, markups = {{ a = 0.5, c = 0.5 }} }}
"#,
            path.display()
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pricing_policy_prices_each_key_and_its_estimate_guards_budgets() {
    let up = MockUpstream::start().await;
    let keys = key("a", "") + &key("b", "") + &key("c", "budget_usd = 0.03");
    let gw = gateway(&priced_by_team_markup(&up, &keys)).start();
    // 11 input × 1000 + 3 output × 2000 USD/Mtok = 17000 µUSD; key a pays
    // 50 % more. The model's configured price (0.15 / 0.60) would be 3.
    let r = chat(&gw, "a", &chat_body("x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.025500"));
    let r = chat(&gw, "b", &chat_body("x")).await;
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.017000"));
    // Streamed responses are priced by the policy too.
    let s = client::stream(
        &gw.url("/v1/chat/completions"),
        &stream_body("y"),
        Some("sk-a-secret"),
    )
    .await;
    assert!(s.done());
    let a = usage(&gw, "a").await;
    assert_eq!(a["requests"], 2);
    assert_eq!(a["cost_usd"], 0.051);

    // Budgets are checked with the policy's estimate: 20 output tokens at
    // 2000 × 1.5 alone is 0.06 USD, over c's 0.03 — refused before sending,
    // where the configured price would have let it through.
    let mut long = chat_body("x");
    long["max_tokens"] = json!(20);
    let sent = up.received().len();
    let refused = chat(&gw, "c", &long).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "insufficient_quota");
    assert_eq!(up.received().len(), sent, "nothing reached the upstream");
    // One output token fits (≈ 0.02 USD estimated) and is charged what the
    // upstream reports: 0.0255; the next no longer fits.
    let mut short = chat_body("x");
    short["max_tokens"] = json!(1);
    let r = chat(&gw, "c", &short).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.025500"));
    let refused = chat(&gw, "c", &short).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "insufficient_quota");

    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    for needle in [
        "weir_cost_micro_usd_total{key=\"a\",model=\"chat\"} 51000",
        "weir_cost_micro_usd_total{key=\"b\",model=\"chat\"} 17000",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

/// A stream that ends before the upstream reported usage is charged the
/// prompt tokens weir estimates. A key with limits has them counted before
/// the request is sent; a key without is counted only then: both come to
/// the same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_before_its_usage_is_charged_the_estimated_prompt_with_or_without_limits() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::DropAfter(
        Chat::text(&["The ", "river ", "rose."]),
        2,
    ));
    let extra = key("open", "") + &key("limited", "tokens_per_minute = 1000000");
    let gw = gateway(&with_state(&up, "[state]\nbackend = \"memory\"", &extra)).start();
    let prompt = "The river had been rising for three days before anyone in the village thought to move the boats.";
    let mut charged = Vec::new();
    for name in ["open", "limited"] {
        let sse = client::stream(
            &gw.url("/v1/chat/completions"),
            &stream_body(prompt),
            Some(&format!("sk-{name}-secret")),
        )
        .await;
        assert!(
            sse.error().is_some(),
            "the cut reaches the client as an error event"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let usage = loop {
            let u = usage(&gw, name).await;
            if u["requests"] == 1 || std::time::Instant::now() > deadline {
                break u;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(usage["requests"], 1, "{usage}");
        charged.push(usage["models"]["chat"]["input_tokens"].as_u64().unwrap());
    }
    assert_eq!(charged[0], charged[1], "open vs limited key");
    // 19 words and a full stop in o200k, plus the chat format's overhead.
    assert!((20..=40).contains(&charged[0]), "{charged:?}");
}
