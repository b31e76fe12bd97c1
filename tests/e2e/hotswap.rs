//! Hot swaps: policies replaced on a live gateway (upload, file change,
//! reload, SIGHUP) without failing a request or mixing versions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use weir_testkit::client::{self, HttpResponse, get, post_json, send};
use weir_testkit::gateway::Gateway;
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::policies::{entry, guest, policy};
use crate::support::{chat_body, config, gateway, stream_body};

const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// A gateway whose global guardrail `stamp` lives at `<dir>/stamp.wasm`,
/// starting as v1.
fn stamped(up: &MockUpstream, dir: &Path) -> (String, PathBuf) {
    let path = dir.join("policies").join("stamp.wasm");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(guest("stamp-v1"), &path).unwrap();
    let cfg = config(
        up,
        &entry(
            "stamp",
            &PathBuf::from("policies/stamp.wasm"),
            true,
            "{}",
            "",
        ),
    )
    .replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nadmin_token_env = \"WEIR_TEST_ADMIN_TOKEN\"",
    );
    (cfg, path)
}

fn start_in(cfg: &str, dir: &Path) -> Gateway {
    gateway(cfg)
        .dir(dir)
        .env("WEIR_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
}

async fn put(gw: &Gateway, name: &str, bytes: Vec<u8>) -> HttpResponse {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send(
        Method::PUT,
        &gw.admin_url(&format!("/admin/policies/{name}")),
        &[("authorization", auth.as_str())],
        bytes,
    )
    .await
}

async fn reload(gw: &Gateway) -> HttpResponse {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send(
        Method::POST,
        &gw.admin_url("/admin/policies/reload"),
        &[("authorization", auth.as_str())],
        Vec::new(),
    )
    .await
}

async fn admin_get(gw: &Gateway, path: &str) -> HttpResponse {
    get(&gw.admin_url(path), Some(ADMIN_TOKEN)).await
}

/// The version a whole response was handled by, or an error if it mixed.
fn version_of(text: &str) -> Result<&'static str, String> {
    let v1 = text.contains("<v1>") || text.contains("[v1]");
    let v2 = text.contains("<v2>") || text.contains("[v2]");
    match (v1, v2) {
        (true, false) => Ok("v1"),
        (false, true) => Ok("v2"),
        _ => Err(format!("mixed or unstamped response: {text:?}")),
    }
}

async fn version_now(gw: &Gateway) -> &'static str {
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("which"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    version_of(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_nothing_and_never_mix_versions() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::echo(4).delay(Duration::from_millis(2))));
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = stamped(&up, dir.path());
    let gw = Arc::new(start_in(&cfg, dir.path()));
    let v1 = std::fs::read(guest("stamp-v1")).unwrap();
    let v2 = std::fs::read(guest("stamp-v2")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let url = gw.url("/v1/chat/completions");
    let http = client::client();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (stop, served, url, http) =
                (stop.clone(), served.clone(), url.clone(), http.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let prompt = format!("worker {w} request {i}");
                    let text = if w % 2 == 0 {
                        let s = client::open_stream_with(&http, &url, &stream_body(&prompt), None)
                            .await
                            .collect()
                            .await;
                        assert_eq!(s.status, 200, "{prompt}: {}", s.raw);
                        assert!(s.done(), "{prompt}: {:?}", s.events);
                        s.text()
                    } else {
                        let r = client::send_with(
                            &http,
                            Method::POST,
                            &url,
                            &[("content-type", "application/json")],
                            chat_body(&prompt).to_string().into_bytes(),
                        )
                        .await;
                        assert_eq!(r.status, 200, "{prompt}: {}", r.text());
                        r.json()["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    };
                    let version = version_of(&text).unwrap_or_else(|e| panic!("{prompt}: {e}"));
                    // The request stamp and every delta stamp agree.
                    let plain = text.replace("<v1>", "").replace("<v2>", "");
                    assert!(plain.contains(&format!("[{version}] {prompt}")), "{text}");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for swap in 0..50 {
        let (bytes, want) = if swap % 2 == 0 {
            (&v2, "v2")
        } else {
            (&v1, "v1")
        };
        let r = put(&gw, "stamp", bytes.clone()).await;
        assert_eq!(r.status, 200, "swap {swap}: {}", r.text());
        assert_eq!(r.json()["swapped"], true);
        // Requests after a swap see the new behaviour.
        assert_eq!(version_now(&gw).await, want, "after swap {swap}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("no request failed or mixed versions");
    }
    assert!(
        served.load(Ordering::Relaxed) >= 50,
        "the load ran alongside the swaps"
    );

    let listing = admin_get(&gw, "/admin/policies").await.json();
    let stamp = &listing[0];
    assert_eq!(stamp["name"], "stamp");
    assert_eq!(stamp["kind"], "guardrail");
    assert_eq!(stamp["generation"], 51);
    assert_eq!(stamp["last_error"], Value::Null);
    assert!(stamp["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(stamp["loaded_at"].as_str().unwrap().ends_with('Z'));
    let metrics = admin_get(&gw, "/metrics").await.text();
    assert!(
        metrics.contains("weir_policy_generation{policy=\"stamp\"} 51"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_policy_reloads_total{policy=\"stamp\",outcome=\"ok\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_policy_reload_seconds_count{policy=\"stamp\"} 50"),
        "{metrics}"
    );

    // Same bytes again: nothing to do, the generation stays.
    let r = put(&gw, "stamp", v1.clone()).await;
    assert_eq!(r.json()["swapped"], false);
    assert_eq!(
        admin_get(&gw, "/admin/policies").await.json()[0]["generation"],
        51
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_rejected_and_the_old_version_keeps_answering() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::echo(2)));
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = stamped(&up, dir.path());
    let cfg = cfg.replace("config = {}", "config = { trap_always = true }");
    let gw = start_in(&cfg, dir.path());
    let before = std::fs::read(&path).unwrap();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "empty component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not implement the `weir:policy/guardrail-policy` world",
        ),
        (
            "wrong imports",
            std::fs::read(policy("allow-all")).unwrap()[..64].to_vec(),
            "compile",
        ),
        (
            "traps in the smoke call",
            std::fs::read(guest("hostile")).unwrap(),
            "smoke call failed",
        ),
    ];
    for (what, bytes, reason) in cases {
        let r = put(&gw, "stamp", bytes).await;
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "policy_rejected");
        let failure = v["failures"][0]["reason"].as_str().unwrap().to_string();
        assert!(failure.contains(reason), "{what}: {failure}");
        assert_eq!(
            version_now(&gw).await,
            "v1",
            "{what}: the old version keeps serving"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{what}: the file is untouched"
        );
        let listing = admin_get(&gw, "/admin/policies").await.json();
        assert_eq!(listing[0]["generation"], 1);
        assert!(
            listing[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(reason)),
            "{listing}"
        );
    }
    let metrics = admin_get(&gw, "/metrics").await.text();
    assert!(
        metrics.contains("weir_policy_reloads_total{policy=\"stamp\",outcome=\"failed\"} 5"),
        "{metrics}"
    );
    let r = put(&gw, "nope", Vec::new()).await;
    assert_eq!(r.status, 404);
    // Without the admin token: 401, on every admin route.
    let anon = send(
        Method::PUT,
        &gw.admin_url("/admin/policies/stamp"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(anon.status, 401);
    assert_eq!(
        get(&gw.admin_url("/admin/policies"), None).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_atomic_rename_is_live_within_two_seconds() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::echo(2)));
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = stamped(&up, dir.path());
    let gw = start_in(&cfg, dir.path());
    assert_eq!(version_now(&gw).await, "v1");
    // What deploy tools and editors do: write elsewhere, rename over.
    let tmp = path.with_extension("wasm.tmp");
    std::fs::copy(guest("stamp-v2"), &tmp).unwrap();
    let renamed = Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    loop {
        if version_now(&gw).await == "v2" {
            break;
        }
        assert!(
            renamed.elapsed() < Duration::from_secs(2),
            "not live within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    gw.wait_for_log("\"trigger\":\"file\"", Duration::from_secs(1));
    // A broken file keeps the running version.
    std::fs::write(&tmp, b"garbage").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    gw.wait_for_log("policy reload failed", Duration::from_secs(5));
    assert_eq!(version_now(&gw).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_policy_survives_a_restart_and_reload_is_all_or_nothing() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::echo(2)));
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = stamped(&up, dir.path());
    let gw = start_in(&cfg, dir.path());
    let r = put(&gw, "stamp", std::fs::read(guest("stamp-v2")).unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(guest("stamp-v2")).unwrap()
    );
    drop(gw);
    let gw = start_in(&cfg, dir.path());
    assert_eq!(
        version_now(&gw).await,
        "v2",
        "the upload was written to the policy's path"
    );

    // POST reload: unchanged files do nothing…
    let r = reload(&gw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], json!([]));
    // …and a broken file rejects the whole reload with every failure listed.
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let r = reload(&gw).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.json()["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module")
    );
    assert_eq!(version_now(&gw).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_the_running_one_when_broken() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::echo(2)));
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = stamped(&up, dir.path());
    let gw = start_in(&cfg, dir.path());
    let config_path = gw.dir.join("weir.toml");

    std::fs::write(&config_path, "[server\nthis is broken").unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reload failed", Duration::from_secs(5));
    assert_eq!(
        version_now(&gw).await,
        "v1",
        "the running config keeps serving"
    );

    // A valid change: a new model, and the stamp policy swapped for v2 at a new path.
    std::fs::copy(guest("stamp-v2"), gw.dir.join("policies/stamp2.wasm")).unwrap();
    let changed = cfg.replace("policies/stamp.wasm", "policies/stamp2.wasm")
        + "\n[[models]]\nname = \"added\"\ntargets = [{ provider = \"up\", model = \"gpt-4o\" }]\n";
    std::fs::write(&config_path, changed).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(version_now(&gw).await, "v2");
    let mut body = chat_body("hi");
    body["model"] = json!("added");
    let r = post_json(&gw.url("/v1/chat/completions"), &body, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body["model"], "gpt-4o");
    let listing = admin_get(&gw, "/admin/policies").await.json();
    assert_eq!(listing[0]["generation"], 2);
    assert!(
        listing[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("stamp2.wasm")
    );
}
