//! Routing: circuit breakers, cooldowns, retries, strategies and router
//! policies, through the binary.

use std::time::{Duration, Instant};

use serde_json::json;
use weir_testkit::client::{get, post_json};
use weir_testkit::gateway::Gateway;
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::policies::{guest, policy};
use crate::support::{SERVER, chat_body, provider, start};

/// Model `chat` over targets a and b, with `model_extra` TOML on the model
/// and `extra` after it.
fn two(a: &MockUpstream, b: &MockUpstream, model_extra: &str, extra: &str) -> String {
    format!(
        r#"{SERVER}
{}{}
[[models]]
name = "chat"
targets = [{{ provider = "a", model = "model-a" }}, {{ provider = "b", model = "model-b" }}]
{model_extra}
{extra}"#,
        provider("a", a, 2000),
        provider("b", b, 2000)
    )
}

async fn served_by(gw: &Gateway, prompt: &str) -> String {
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body(prompt), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-weir-provider").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opens_after_consecutive_failures_and_recovers_through_a_probe() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Reply::status(500));
    let gw = start(&two(
        &a,
        &b,
        "circuit = { failures = 3, cooldown_ms = 400 }",
        "",
    ));
    for _ in 0..3 {
        assert_eq!(served_by(&gw, "x").await, "b/model-b");
    }
    assert_eq!(a.received().len(), 3);
    let opened = Instant::now();
    for _ in 0..5 {
        assert_eq!(served_by(&gw, "x").await, "b/model-b");
    }
    assert_eq!(a.received().len(), 3, "an open circuit is skipped");
    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    assert!(
        metrics.contains("weir_circuit_opened_total{target=\"a/model-a\"} 1"),
        "{metrics}"
    );

    // a recovers; after the cooldown one probe goes through and closes it.
    a.set_default(Reply::Chat(Chat::default()));
    loop {
        let by = served_by(&gw, "x").await;
        if by == "a/model-a" {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "no probe after the cooldown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(400),
        "probed before the cooldown ended"
    );
    for _ in 0..3 {
        assert_eq!(served_by(&gw, "x").await, "a/model-a", "closed again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_rests_the_target() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Reply::RetryAfter(1));
    let gw = start(&two(&a, &b, "", ""));
    assert_eq!(served_by(&gw, "x").await, "b/model-b");
    let throttled = Instant::now();
    assert_eq!(served_by(&gw, "x").await, "b/model-b", "a is cooling down");
    assert_eq!(a.received().len(), 1);
    loop {
        if served_by(&gw, "x").await == "a/model-a" {
            break;
        }
        assert!(
            throttled.elapsed() < Duration::from_secs(4),
            "a never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        throttled.elapsed() >= Duration::from_millis(800),
        "retry-after was not honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_and_stop_at_the_attempt_cap_or_deadline() {
    let a = MockUpstream::start().await;
    a.push(Reply::status(500)).push(Reply::status(502));
    let cfg = format!(
        r#"{SERVER}
{}
[[models]]
name = "chat"
targets = [{{ provider = "a", model = "m" }}]
max_attempts = 3
retry_backoff_ms = 20
circuit = {{ failures = 100 }}

[[models]]
name = "slow"
targets = [{{ provider = "a", model = "m" }}]
max_attempts = 50
retry_backoff_ms = 10
retry_max_backoff_ms = 20
deadline_ms = 600
circuit = {{ failures = 1000 }}
"#,
        provider("a", &a, 150)
    );
    let gw = start(&cfg);
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    assert_eq!(r.status, 200, "the third attempt succeeds: {}", r.text());
    assert_eq!(a.received().len(), 3);

    a.set_default(Reply::Hang);
    let before = a.received().len();
    let mut slow = chat_body("x");
    slow["model"] = json!("slow");
    let started = Instant::now();
    let r = post_json(&gw.url("/v1/chat/completions"), &slow, None).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "the deadline bounds retries: {elapsed:?}"
    );
    let attempts = a.received().len() - before;
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} attempts in a 600 ms deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_and_least_latency_strategies() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let weighted = two(&a, &b, "strategy = \"weighted\"", "")
        .replace("model = \"model-a\" }", "model = \"model-a\", weight = 9 }");
    let gw = start(&weighted);
    for _ in 0..200 {
        served_by(&gw, "x").await;
    }
    let to_a = a.received().len();
    assert!(
        (150..=195).contains(&to_a),
        "{to_a} of 200 went to the weight-9 target"
    );
    drop(gw);

    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Reply::Chat(
        Chat::default().delay(Duration::from_millis(60)),
    ));
    let gw = start(&two(&a, &b, "strategy = \"least-latency\"", ""));
    for _ in 0..20 {
        served_by(&gw, "x").await;
    }
    let to_b = b.received().len();
    assert!(
        to_b >= 17,
        "the faster target serves most requests: {to_b} of 20"
    );
}

fn router_entry(name: &str, path: &std::path::Path, config: &str) -> String {
    format!(
        "\n[[policies]]\nname = \"{name}\"\nkind = \"router\"\npath = \"{}\"\nconfig = {config}\ntimeout_ms = 1000\n",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheapest_healthy_router_orders_by_price_and_health() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let cfg = two(
        &a,
        &b,
        "router = \"cheapest\"\ncircuit = { failures = 1, cooldown_ms = 60000 }",
        &router_entry("cheapest", &policy("cheapest-healthy"), "{}"),
    )
    .replace(
        "model = \"model-a\" }",
        "model = \"model-a\", price = { input_per_mtok = 2.5, output_per_mtok = 10.0 } }",
    )
    .replace(
        "model = \"model-b\" }",
        "model = \"model-b\", price = { input_per_mtok = 0.15, output_per_mtok = 0.6 } }",
    );
    let gw = start(&cfg);
    assert_eq!(
        served_by(&gw, "x").await,
        "b/model-b",
        "the cheaper target first"
    );
    // The served target's price is what the request costs: 11 × 0.15 + 3 × 0.6 = 3.45 µUSD.
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.000003"));
    // b fails once: its circuit opens, it is unhealthy, the router puts it last.
    b.push(Reply::status(500));
    assert_eq!(served_by(&gw, "x").await, "a/model-a");
    assert_eq!(served_by(&gw, "x").await, "a/model-a");
    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    assert!(
        metrics.contains("weir_policy_calls_total{policy=\"cheapest\",hook=\"route\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_aware_router_learns_the_faster_target() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Reply::Chat(
        Chat::default().delay(Duration::from_millis(60)),
    ));
    let cfg = two(
        &a,
        &b,
        "router = \"fast\"",
        &router_entry("fast", &policy("latency-aware"), "{}"),
    );
    let gw = start(&cfg);
    for _ in 0..20 {
        served_by(&gw, "x").await;
    }
    assert!(
        b.received().len() >= 17,
        "b is faster: {}",
        b.received().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_router_falls_back_to_the_configured_order() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let cfg = two(
        &a,
        &b,
        "router = \"bad\"",
        &router_entry("bad", &guest("bad-router"), "{}"),
    );
    let gw = start(&cfg);
    assert_eq!(
        served_by(&gw, "fine").await,
        "b/model-b",
        "the router reverses the order"
    );
    assert_eq!(
        served_by(&gw, "ROUTER:bad").await,
        "a/model-a",
        "invalid order: configured order"
    );
    assert_eq!(
        served_by(&gw, "ROUTER:trap").await,
        "a/model-a",
        "trap: configured order"
    );
    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    assert!(
        metrics.contains("weir_policy_errors_total{policy=\"bad\",kind=\"router\"} 2"),
        "{metrics}"
    );
}
