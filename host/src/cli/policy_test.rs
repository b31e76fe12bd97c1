//! `weir policy inspect` and `weir policy test`: a policy author's tools,
//! running the same runtime as the gateway, offline.
//!
//! A test case is one JSON line:
//! `{"name": "…", "request": {"messages": […], "tools": […]}, "expect": "allow|deny|rewrite", "expect_contains": "…"}`
//! runs `on-request`; `{"name": "…", "chunks": ["jo", "hn@example.com"], "expect": "pass|block", "expect_output": "…"}`
//! streams the chunks through a response guard and prints what each
//! releases. `expect*` fields are optional; any mismatch exits 1.
//!
//! Every case runs on a fresh instance. A guardrail that declares itself
//! stateless then runs them all again, twice over, on one reused instance
//! (as the gateway would serve them): a case that decides otherwise there
//! breaks the declaration and fails too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::ChatRequest;
use crate::config::{OnError, PolicyConfig, PolicyKind};
use crate::policy::inspect::inspect as inspect_component;
use crate::policy::{
    EngineOptions, GuardChain, MemoryKv, Policy, PolicyRuntime, RequestContext, Stop,
};

fn tool_runtime() -> Option<(tokio::runtime::Runtime, Arc<PolicyRuntime>)> {
    let rt = super::runtime()?;
    let options = EngineOptions {
        instances: 16,
        ..EngineOptions::default()
    };
    match PolicyRuntime::new(&options, Arc::new(MemoryKv::default())) {
        Ok(runtime) => Some((rt, runtime)),
        Err(e) => {
            eprintln!("cannot start the policy engine: {e:#}");
            None
        }
    }
}

/// `weir policy inspect FILE`.
pub fn inspect(file: &Path, json: bool) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            eprintln!(
                "{}: a core WebAssembly module, not a component (build for wasm32-wasip2 or use `wasm-tools component new`)",
                file.display()
            );
            return ExitCode::from(2);
        }
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => {
            eprintln!("{}: not a WebAssembly component", file.display());
            return ExitCode::from(2);
        }
    }
    let Some((_rt, runtime)) = tool_runtime() else {
        return ExitCode::from(1);
    };
    let digest = crate::policy::digest(&bytes);
    let component = match runtime
        .engine()
        .compile(&bytes, digest.trim_start_matches("sha256:"))
    {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("{}: not a valid component: {e:#}", file.display());
            return ExitCode::from(2);
        }
    };
    let report = inspect_component(runtime.engine(), &component, &bytes);
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    say!("{}", file.display());
    say!("  size:    {} bytes", report.size_bytes);
    say!("  digest:  {}", report.digest);
    if report.worlds.is_empty() {
        say!("  worlds:  none (exports no weir:policy interface)");
    } else {
        say!("  worlds:  {}", report.worlds.join(", "));
    }
    say!("  exports:");
    for e in &report.exports {
        say!("    {e}");
    }
    say!("  imports:");
    for i in &report.imports {
        say!("    {i}");
    }
    for u in &report.unsatisfiable {
        say!("  warning: weir cannot satisfy the import {u}");
    }
    ExitCode::SUCCESS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    request: Option<Value>,
    #[serde(default)]
    chunks: Option<Vec<String>>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    expect_contains: Option<String>,
    #[serde(default)]
    expect_output: Option<String>,
}

/// `weir policy test FILE --cases CASES`.
pub fn run(file: &Path, cases_path: &Path, policy_config: &str) -> ExitCode {
    let cases = match read_cases(cases_path) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let config: toml::Table = match serde_json::from_str::<Value>(policy_config)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("--policy-config is not a JSON object: {e}");
            return ExitCode::from(2);
        }
    };
    let Some((rt, runtime)) = tool_runtime() else {
        return ExitCode::from(1);
    };
    let name = file
        .file_stem()
        .map_or_else(|| "policy".into(), |s| s.to_string_lossy().into_owned());
    let policy_config = PolicyConfig {
        name,
        kind: PolicyKind::Guardrail,
        path: PathBuf::from(file),
        config,
        global: true,
        on_error: OnError::Deny,
        timeout_ms: 1000,
        memory_mb: 128,
        max_hold_bytes: 1 << 20,
        reuse_instances: Some(0),
    };
    rt.block_on(async {
        let policy = match runtime.load_file(&policy_config, file).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let mut failures = 0;
        let mut fresh = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let label = label(case, i);
            let outcome = match run_case(&runtime, &policy, case, i).await {
                Ok(o) => o,
                Err(e) => {
                    say!("ERROR {label}: {e}");
                    fresh.push(Err(e));
                    failures += 1;
                    continue;
                }
            };
            let mut problems = Vec::new();
            if let Some(want) = &case.expect
                && *want != outcome.decision
            {
                problems.push(format!("expected {want}, got {}", outcome.decision));
            }
            if let Some(want) = &case.expect_contains
                && !outcome.detail.contains(want.as_str())
            {
                problems.push(format!("expected the result to contain {want:?}"));
            }
            if let Some(want) = &case.expect_output
                && *want != outcome.output
            {
                problems.push(format!(
                    "expected output {want:?}, got {:?}",
                    outcome.output
                ));
            }
            let status = if problems.is_empty() { "ok  " } else { "FAIL" };
            say!(
                "{status} {label}: {} — {}",
                outcome.decision,
                outcome.detail
            );
            for p in &problems {
                say!("     {p}");
            }
            failures += usize::from(!problems.is_empty());
            fresh.push(Ok(outcome));
        }
        if policy.stateless {
            let reused = PolicyConfig {
                reuse_instances: None,
                ..policy_config.clone()
            };
            match runtime.load_file(&reused, file).await {
                Ok(reused) if reused.limits.reuse > 0 => {
                    failures += check_stateless(&runtime, &reused, &cases, &fresh).await;
                }
                Ok(_) => {
                    say!("stateless: declared, but weir never reuses this component's instances")
                }
                Err(e) => {
                    say!("ERROR stateless: the policy did not load again: {e}");
                    failures += 1;
                }
            }
        }
        say!("{} cases, {failures} failed", cases.len());
        if failures == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}

fn read_cases(path: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let case: Case =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        if case.request.is_some() == case.chunks.is_some() {
            return Err(format!(
                "{}:{}: a case has either `request` or `chunks`",
                path.display(),
                n + 1
            ));
        }
        cases.push(case);
    }
    Ok(cases)
}

fn label(case: &Case, i: usize) -> String {
    case.name
        .clone()
        .unwrap_or_else(|| format!("case {}", i + 1))
}

/// Run every case twice over on `policy`'s reused instances (a policy
/// loaded with instance reuse) and compare each outcome with the one on a
/// fresh instance; prints the verdict and returns the cases that differed.
async fn check_stateless(
    runtime: &Arc<PolicyRuntime>,
    policy: &Arc<Policy>,
    cases: &[Case],
    fresh: &[Result<Outcome, String>],
) -> usize {
    let mut differed = vec![false; cases.len()];
    for round in 0..2 {
        for (i, case) in cases.iter().enumerate() {
            let reused = run_case(runtime, policy, case, i).await;
            if differed[i] || reused == fresh[i] {
                continue;
            }
            differed[i] = true;
            let show = |o: &Result<Outcome, String>| match o {
                Ok(o) => format!("{} — {}", o.decision, o.detail),
                Err(e) => format!("error: {e}"),
            };
            say!(
                "FAIL stateless: {} decided otherwise on a reused instance (round {}): {}; on a fresh one: {}",
                label(case, i),
                round + 1,
                show(&reused),
                show(&fresh[i])
            );
        }
    }
    let failed = differed.iter().filter(|d| **d).count();
    if failed == 0 {
        say!(
            "ok   stateless: all {} cases decided the same, twice over, on a reused instance",
            cases.len()
        );
    } else {
        say!(
            "     the policy declares itself stateless, yet keeps something between requests: fix it, or make `stateless` return false"
        );
    }
    failed
}

#[derive(Debug, PartialEq)]
struct Outcome {
    decision: String,
    detail: String,
    output: String,
}

/// Run one case on an instance of `policy` (case `i` of the file), then
/// finish the chain as the gateway does (a reusable instance goes back to
/// its idle list).
async fn run_case(
    runtime: &Arc<PolicyRuntime>,
    policy: &Arc<Policy>,
    case: &Case,
    i: usize,
) -> Result<Outcome, String> {
    let ctx = RequestContext {
        request_id: format!("test-{}", i + 1),
        key_name: None,
        model: "test".into(),
        streaming: case.chunks.is_some(),
        metadata: Vec::new(),
    };
    let mut chain = GuardChain::start(runtime, std::slice::from_ref(policy), &ctx)
        .await
        .map_err(describe)?;
    let outcome = decide(&mut chain, case).await;
    chain.finish().await;
    outcome
}

async fn decide(chain: &mut GuardChain, case: &Case) -> Result<Outcome, String> {
    if let Some(request) = &case.request {
        let mut body = request.clone();
        if let Value::Object(map) = &mut body {
            map.entry("model").or_insert(json!("test"));
        }
        let mut chat =
            ChatRequest::parse(body.to_string().as_bytes()).map_err(|e| e.to_string())?;
        let before = chat.body().get("messages").cloned();
        return Ok(match chain.on_request(&mut chat).await {
            Ok(()) if chat.body().get("messages") == before.as_ref() => Outcome {
                decision: "allow".into(),
                detail: "unchanged".into(),
                output: String::new(),
            },
            Ok(()) => {
                let texts: Vec<String> = chat
                    .messages()
                    .iter()
                    .map(|m| {
                        format!(
                            "{}: {:?}",
                            m.get("role").and_then(Value::as_str).unwrap_or("?"),
                            crate::chat::message_text(m)
                        )
                    })
                    .collect();
                Outcome {
                    decision: "rewrite".into(),
                    detail: texts.join(" | "),
                    output: String::new(),
                }
            }
            Err(Stop::Blocked { rejection, .. }) => Outcome {
                decision: "deny".into(),
                detail: format!("{} ({})", rejection.message, rejection.code),
                output: String::new(),
            },
            Err(stop) => return Err(describe(stop)),
        });
    }
    chain.begin_response().await.map_err(describe)?;
    let mut steps = Vec::new();
    let mut output = String::new();
    for chunk in case.chunks.iter().flatten() {
        match chain.on_chunk(0, chunk.clone()).await {
            Ok(released) => {
                steps.push(format!("{chunk:?} → {released:?}"));
                output.push_str(&released);
            }
            Err(Stop::Blocked { rejection, .. }) => {
                steps.push(format!("{chunk:?} → block: {}", rejection.message));
                return Ok(Outcome {
                    decision: "block".into(),
                    detail: steps.join(", "),
                    output,
                });
            }
            Err(stop) => return Err(describe(stop)),
        }
    }
    match chain.on_end(0).await {
        Ok(tail) => {
            steps.push(format!("end → {tail:?}"));
            output.push_str(&tail);
        }
        Err(Stop::Blocked { rejection, .. }) => {
            steps.push(format!("end → block: {}", rejection.message));
            return Ok(Outcome {
                decision: "block".into(),
                detail: steps.join(", "),
                output,
            });
        }
        Err(stop) => return Err(describe(stop)),
    }
    Ok(Outcome {
        decision: "pass".into(),
        detail: format!("{}; output {output:?}", steps.join(", ")),
        output,
    })
}

fn describe(stop: Stop) -> String {
    match stop {
        Stop::Blocked { policy, rejection } => format!("{policy} blocked: {}", rejection.message),
        Stop::Failed { policy, reason } => format!("{policy} failed: {reason}"),
    }
}
