//! A request's guardrails: one fresh instance per guardrail, in order
//! (global ones first, then the model's), kept from `on-request` to the
//! response's last chunk. Fresh instances are made ahead of requests (a
//! small stock per policy, topped up after each response) so a request
//! neither instantiates on its way to the upstream nor frees its instances
//! before answering.
//!
//! Holding is done here, per guard and per choice: a guard that answers
//! `hold` (or `partial`) keeps that text, and it is offered again in front of
//! the next delta. Text flows guard to guard — each sees what the previous
//! one released — so a chunk costs one call per guardrail that has something
//! to look at, and nothing when every delta is empty. When no guard holds,
//! text is released in the same step it arrived: guardrails add no
//! time-to-first-token beyond their own call cost.
//!
//! A guard that traps, times out, runs out of memory, exceeds its hold bound
//! or returns a policy error is finished for this request: with
//! `on_error = "deny"` the request (or stream) ends with `policy_error`; with
//! `"allow"` its text passes on unchecked and the guard is skipped from then
//! on. Either way the failure is logged with the policy's name and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::guardrail::exports::weir::policy::guardrail::{ChunkVerdict, RequestVerdict};
use super::bindings::guardrail::weir::policy::types as wit;
use super::exports::Guardrail;
use super::state::{PolicyState, arm};
use super::{Policy, PolicyRuntime, Pre, Rejection};
use crate::chat::{ChatRequest, message_text};
use crate::config::OnError;

/// The most text one verdict may return (a rewrite's messages, or a
/// chunk's replacement); more is a policy failure, not a 100 MB upstream
/// request or client chunk.
const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Why a response or request stops.
#[derive(Debug, Clone)]
pub enum Stop {
    /// A guardrail denied or blocked.
    Blocked {
        policy: String,
        rejection: Rejection,
    },
    /// A guardrail failed and its `on_error` is `deny`.
    Failed { policy: String, reason: String },
}

/// Who is asking, for `request-info`.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub key_name: Option<String>,
    pub model: String,
    pub streaming: bool,
    pub metadata: Vec<(String, String)>,
}

impl RequestContext {
    /// The `request-info` every hook receives.
    pub(super) fn info(&self) -> wit::RequestInfo {
        wit::RequestInfo {
            request_id: self.request_id.clone(),
            key_name: self.key_name.clone(),
            model: self.model.clone(),
            streaming: self.streaming,
            metadata: self.metadata.clone(),
        }
    }
}

struct Live {
    store: Store<PolicyState>,
    bindings: Guardrail,
    response: Option<ResourceAny>,
    permit: OwnedSemaphorePermit,
    /// Requests this instance served before this one.
    uses: u32,
}

/// An instance kept between requests (`reuse_instances`, or a guardrail
/// that declared itself stateless). While idle it holds one of the idle
/// slots (`engine::IDLE_SLOTS`), not a request's place in the budget. It
/// only serves requests of the virtual key it served before: a reused
/// instance never crosses tenants.
pub(super) struct Idle {
    /// The key name of the requests it served (`None` on an open gateway).
    tenant: Option<String>,
    store: Store<PolicyState>,
    bindings: Guardrail,
    _slot: OwnedSemaphorePermit,
    uses: u32,
}

/// Idle instances kept per policy: enough for the concurrency of a small
/// machine; more would only hold memory.
const MAX_IDLE: usize = 16;

/// A fresh instance made ahead of a request, off its latency path: never
/// called, so it carries nothing from any request. It holds a spare slot
/// (`engine::SPARE_SLOTS`), not one of the request budget, while it waits.
pub(super) struct Fresh {
    store: Store<PolicyState>,
    bindings: Guardrail,
    _slot: OwnedSemaphorePermit,
}

/// A policy's fresh instances: those ready, and how many are being made.
#[derive(Default)]
pub(super) struct Stock {
    ready: Vec<Fresh>,
    making: usize,
}

/// Fresh instances kept ready per policy (without `reuse_instances`): a
/// request takes one instead of instantiating on its way to the upstream,
/// and the stock is topped up after the response went out.
pub(super) const FRESH_STOCK: usize = 4;

struct Guard {
    policy: Arc<Policy>,
    /// `None` once the guard failed (with `on_error = "allow"`).
    live: Option<Live>,
    /// Per choice: text held, and all text offered so far.
    held: Vec<(u32, String)>,
    full: Vec<(u32, String)>,
}

impl Guard {
    fn take_held(&mut self, index: u32) -> String {
        match self.held.iter_mut().find(|(i, _)| *i == index) {
            Some((_, h)) => std::mem::take(h),
            None => String::new(),
        }
    }

    fn set_held(&mut self, index: u32, text: String) {
        match self.held.iter_mut().find(|(i, _)| *i == index) {
            Some((_, h)) => *h = text,
            None => self.held.push((index, text)),
        }
    }

    fn record(&mut self, index: u32, text: &str) {
        match self.full.iter_mut().find(|(i, _)| *i == index) {
            Some((_, f)) => f.push_str(text),
            None => self.full.push((index, text.to_string())),
        }
    }

    /// Handle a failure: `Err` to stop (deny), `Ok` to skip the guard (allow).
    fn fail(&mut self, kind: &'static str, reason: String, request_id: &str) -> Result<(), Stop> {
        self.live = None;
        let policy = &self.policy.name;
        metrics::counter!("weir_policy_errors_total", "policy" => policy.clone(), "kind" => kind)
            .increment(1);
        warn!(policy = %policy, request_id, kind, reason = %reason, on_error = ?self.policy.limits.on_error, "policy failed");
        match self.policy.limits.on_error {
            OnError::Deny => Err(Stop::Failed {
                policy: policy.clone(),
                reason,
            }),
            OnError::Allow => Ok(()),
        }
    }
}

/// Classify a wasmtime error: (metric label, message).
pub(super) fn describe_failure(e: &wasmtime::Error) -> (&'static str, String) {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::Interrupt {
            return ("timeout", "exceeded its CPU deadline (timeout_ms)".into());
        }
        return ("trap", format!("trapped: {trap}"));
    }
    let text = format!("{e:#}");
    if text.contains("growing memory") || text.contains("memory allocation") {
        return ("oom", format!("ran out of memory (memory_mb): {text}"));
    }
    ("error", text)
}

/// The guardrails of one request.
pub struct GuardChain {
    guards: Vec<Guard>,
    info: wit::RequestInfo,
    runtime: Arc<PolicyRuntime>,
    /// The policies whose fresh-instance stock this request drew on (or
    /// found empty): topped up by [`GuardChain::finish`].
    stocked: Vec<Arc<Policy>>,
    /// What [`GuardChain::prepare_response`] met, for `begin_response`.
    stopped: Option<Stop>,
}

impl std::fmt::Debug for GuardChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardChain")
            .field("guards", &self.guards.len())
            .finish()
    }
}

fn role(value: Option<&str>) -> wit::Role {
    match value {
        Some("system") => wit::Role::System,
        Some("developer") => wit::Role::Developer,
        Some("assistant") => wit::Role::Assistant,
        Some("tool" | "function") => wit::Role::Tool,
        _ => wit::Role::User,
    }
}

fn role_name(role: wit::Role) -> &'static str {
    match role {
        wit::Role::System => "system",
        wit::Role::Developer => "developer",
        wit::Role::User => "user",
        wit::Role::Assistant => "assistant",
        wit::Role::Tool => "tool",
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The request as policies see it.
pub(super) fn to_wit(chat: &ChatRequest) -> wit::ChatRequest {
    let messages = chat
        .messages()
        .iter()
        .map(|m| wit::Message {
            role: role(m.get("role").and_then(Value::as_str)),
            content: message_text(m),
            tool_calls: m
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .map(|c| wit::ToolCall {
                            id: str_field(c, "id").into(),
                            name: c
                                .get("function")
                                .map_or("", |f| str_field(f, "name"))
                                .into(),
                            arguments: c
                                .get("function")
                                .map_or("", |f| str_field(f, "arguments"))
                                .into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            tool_call_id: m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
        .collect();
    let tools = chat
        .body()
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.get("function"))
                .map(|f| wit::ToolDefinition {
                    name: str_field(f, "name").into(),
                    description: str_field(f, "description").into(),
                    parameters: f
                        .get("parameters")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    wit::ChatRequest {
        messages,
        tools,
        max_tokens: chat.max_tokens.map(|n| n.min(u64::from(u32::MAX)) as u32),
    }
}

/// Write rewritten messages back into the client's JSON: message i keeps its
/// other fields and non-text parts, with its text replaced.
fn apply_rewrite(chat: &mut ChatRequest, messages: &[wit::Message]) {
    let old = match chat.body_mut().remove("messages") {
        Some(Value::Array(old)) => old,
        _ => Vec::new(),
    };
    let mut new = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let mut obj = match old.get(i) {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        obj.insert("role".into(), Value::String(role_name(m.role).into()));
        let content = match obj.remove("content") {
            Some(Value::Array(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                let mut placed = false;
                for part in parts {
                    if part.get("type").and_then(Value::as_str) == Some("text") {
                        if !placed {
                            out.push(serde_json::json!({"type": "text", "text": m.content}));
                            placed = true;
                        }
                    } else {
                        out.push(part);
                    }
                }
                if !placed && !m.content.is_empty() {
                    out.insert(0, serde_json::json!({"type": "text", "text": m.content}));
                }
                Value::Array(out)
            }
            Some(Value::Null) if m.content.is_empty() => Value::Null,
            _ => Value::String(m.content.clone()),
        };
        obj.insert("content".into(), content);
        if let Some(Value::Array(calls)) = obj.get_mut("tool_calls")
            && !m.tool_calls.is_empty()
        {
            // Tool-call arguments are rewritten in place (matched by id, else
            // position). A rewrite with no tool calls leaves them alone.
            let mut kept = Vec::with_capacity(m.tool_calls.len());
            for (j, new_call) in m.tool_calls.iter().enumerate() {
                let found = calls
                    .iter()
                    .position(|c| c.get("id").and_then(Value::as_str) == Some(new_call.id.as_str()))
                    .or((j < calls.len()).then_some(j));
                let mut call = found.map_or_else(
                    || serde_json::json!({"type": "function"}),
                    |k| calls[k].clone(),
                );
                call["id"] = Value::String(new_call.id.clone());
                call["function"]["name"] = Value::String(new_call.name.clone());
                call["function"]["arguments"] = Value::String(new_call.arguments.clone());
                kept.push(call);
            }
            *calls = kept;
        }
        if let Some(id) = &m.tool_call_id {
            obj.insert("tool_call_id".into(), Value::String(id.clone()));
        }
        new.push(Value::Object(obj));
    }
    chat.body_mut().insert("messages".into(), Value::Array(new));
}

impl GuardChain {
    /// Instantiate every guardrail for a request.
    pub async fn start(
        runtime: &Arc<PolicyRuntime>,
        policies: &[Arc<Policy>],
        ctx: &RequestContext,
    ) -> Result<GuardChain, Stop> {
        let info = ctx.info();
        let request_id: Arc<str> = ctx.request_id.as_str().into();
        let mut guards = Vec::with_capacity(policies.len());
        let mut stocked = Vec::new();
        for policy in policies {
            let mut guard = Guard {
                policy: policy.clone(),
                live: None,
                held: Vec::new(),
                full: Vec::new(),
            };
            let Pre::Guardrail(pre) = &policy.pre else {
                continue;
            };
            if !policy.hooks.requests && !policy.hooks.responses {
                continue;
            }
            let Some(permit) = runtime.engine.try_permit() else {
                // Never fail open here: a flood must not switch guardrails off.
                metrics::counter!("weir_policy_errors_total", "policy" => policy.name.clone(), "kind" => "pool_full")
                    .increment(1);
                warn!(policy = %policy.name, request_id = %ctx.request_id, "the policy instance pool is full");
                return Err(Stop::Failed {
                    policy: policy.name.clone(),
                    reason: "the policy instance pool is full (server.policy_instances)".into(),
                });
            };
            let reused = (policy.limits.reuse > 0)
                .then(|| {
                    let mut idle = policy.idle.lock();
                    let at = idle.iter().rposition(|i| i.tenant == ctx.key_name)?;
                    Some(idle.remove(at))
                })
                .flatten();
            if let Some(idle) = reused {
                // Its idle slot is freed: it serves under the request's.
                let mut store = idle.store;
                store.data_mut().serve(request_id.clone());
                guard.live = Some(Live {
                    store,
                    bindings: idle.bindings,
                    response: None,
                    permit,
                    uses: idle.uses,
                });
                guards.push(guard);
                continue;
            }
            if policy.limits.reuse == 0 {
                stocked.push(policy.clone());
                let fresh = {
                    let mut stock = policy.stock.lock();
                    let fresh = stock.ready.pop();
                    policy.metrics.ready.set(stock.ready.len() as f64);
                    fresh
                };
                if let Some(fresh) = fresh {
                    let mut store = fresh.store;
                    store.data_mut().serve(request_id.clone());
                    guard.live = Some(Live {
                        store,
                        bindings: fresh.bindings,
                        response: None,
                        permit,
                        uses: 0,
                    });
                    guards.push(guard);
                    continue;
                }
            }
            let started = Instant::now();
            let mut store = runtime
                .engine
                .store(policy.meta.clone(), request_id.clone());
            let ticking = arm(&mut store, policy.limits.ticks);
            let made = pre.instantiate_async(&mut store).await;
            drop(ticking);
            match made {
                Ok(bindings) => {
                    policy
                        .metrics
                        .instantiate
                        .record(started.elapsed().as_secs_f64());
                    guard.live = Some(Live {
                        store,
                        bindings,
                        response: None,
                        permit,
                        uses: 0,
                    });
                }
                Err(e) => {
                    let (kind, reason) = describe_failure(&e);
                    guard.fail(kind, format!("could not start: {reason}"), &ctx.request_id)?;
                }
            }
            guards.push(guard);
        }
        Ok(GuardChain {
            guards,
            info,
            runtime: runtime.clone(),
            stocked,
            stopped: None,
        })
    }

    /// Is there anything to run?
    pub fn is_empty(&self) -> bool {
        self.guards.iter().all(|g| g.live.is_none())
    }

    /// Run `on-request` through the chain; a rewrite is applied to `chat`.
    pub async fn on_request(&mut self, chat: &mut ChatRequest) -> Result<(), Stop> {
        let mut req = to_wit(chat);
        let mut rewritten = false;
        for guard in &mut self.guards {
            if !guard.policy.hooks.requests {
                continue;
            }
            let Some(live) = guard.live.as_mut() else {
                continue;
            };
            let started = Instant::now();
            let _ticking = arm(&mut live.store, guard.policy.limits.ticks);
            let result = live
                .bindings
                .call_on_request(&mut live.store, &self.info, &req)
                .await;
            let m = &guard.policy.metrics;
            m.request_calls.increment(1);
            m.request_time.record(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(RequestVerdict::Allow)) => {}
                Ok(Ok(RequestVerdict::Rewrite(messages))) => {
                    let size: usize = messages.iter().map(|m| m.content.len()).sum();
                    if size > MAX_OUTPUT_BYTES {
                        guard.fail(
                            "output_limit",
                            format!(
                                "rewrote the request to {size} bytes (limit {MAX_OUTPUT_BYTES})"
                            ),
                            &self.info.request_id,
                        )?;
                        continue;
                    }
                    req.messages = messages;
                    rewritten = true;
                }
                Ok(Ok(RequestVerdict::Deny(rejection))) => {
                    m.denials.increment(1);
                    return Err(Stop::Blocked {
                        policy: guard.policy.name.clone(),
                        rejection: rejection.into(),
                    });
                }
                Ok(Err(policy_error)) => {
                    guard.fail("policy_error", policy_error, &self.info.request_id)?;
                }
                Err(e) => {
                    let (kind, reason) = describe_failure(&e);
                    guard.fail(kind, reason, &self.info.request_id)?;
                }
            }
        }
        if rewritten {
            apply_rewrite(chat, &req.messages);
        }
        // Request-only guardrails are done: their instances go back now,
        // not when the response ends, and the response skips them.
        let (responses, done) = std::mem::take(&mut self.guards)
            .into_iter()
            .partition(|g| g.policy.hooks.responses);
        self.guards = responses;
        if !done.is_empty() {
            // Freed off the request's way to the upstream: dropping a store
            // resets its memory.
            let tenant = self.info.key_name.clone();
            let runtime = self.runtime.clone();
            tokio::spawn(async move {
                for guard in done {
                    retire(guard, &tenant, &runtime).await;
                }
            });
        }
        Ok(())
    }

    /// [`GuardChain::begin_response`] ahead of the response (while the
    /// upstream works on the request); a stop it meets is returned by the
    /// next `begin_response`, when the response is there to be refused.
    pub async fn prepare_response(&mut self) {
        if let Err(stop) = self.begin_response().await {
            self.stopped = Some(stop);
        }
    }

    /// Create each guard's `response-guard` before the first chunk (once:
    /// guards that have one keep it).
    pub async fn begin_response(&mut self) -> Result<(), Stop> {
        if let Some(stop) = self.stopped.take() {
            return Err(stop);
        }
        for guard in &mut self.guards {
            if !guard.policy.hooks.responses {
                continue;
            }
            let Some(live) = guard.live.as_mut().filter(|l| l.response.is_none()) else {
                continue;
            };
            let _ticking = arm(&mut live.store, guard.policy.limits.ticks);
            let result = live
                .bindings
                .call_constructor(&mut live.store, &self.info)
                .await;
            match result {
                Ok(resource) => live.response = Some(resource),
                Err(e) => {
                    let (kind, reason) = describe_failure(&e);
                    guard.fail(kind, reason, &self.info.request_id)?;
                }
            }
        }
        Ok(())
    }

    /// One text delta of choice `index`; returns the text to release now.
    pub async fn on_chunk(&mut self, index: u32, delta: String) -> Result<String, Stop> {
        let mut text = delta;
        for guard in &mut self.guards {
            text = Self::chunk_one(guard, &self.info.request_id, index, text).await?;
        }
        Ok(text)
    }

    async fn chunk_one(
        guard: &mut Guard,
        request_id: &str,
        index: u32,
        text: String,
    ) -> Result<String, Stop> {
        let Some(resource) = guard.live.as_ref().and_then(|l| l.response) else {
            return Ok(text);
        };
        let held = guard.take_held(index);
        if text.is_empty() && held.is_empty() {
            return Ok(text);
        }
        guard.record(index, &text);
        let offered = if held.is_empty() { text } else { held + &text };
        let Some(live) = guard.live.as_mut() else {
            return Ok(offered);
        };
        let started = Instant::now();
        let _ticking = arm(&mut live.store, guard.policy.limits.ticks);
        let result = live
            .bindings
            .call_on_chunk(&mut live.store, resource, index, &offered)
            .await;
        let m = &guard.policy.metrics;
        m.chunk_calls.increment(1);
        m.chunk_time.record(started.elapsed().as_secs_f64());
        let too_big = match &result {
            Ok(Ok(ChunkVerdict::Replace(s))) => s.len(),
            Ok(Ok(ChunkVerdict::Partial(p))) => p.release.len() + p.hold.len(),
            _ => 0,
        };
        if too_big > MAX_OUTPUT_BYTES {
            guard.fail(
                "output_limit",
                format!("returned {too_big} bytes of text (limit {MAX_OUTPUT_BYTES})"),
                request_id,
            )?;
            return Ok(offered);
        }
        let released = match result {
            Ok(Ok(verdict)) => match verdict {
                ChunkVerdict::Pass => offered,
                ChunkVerdict::Replace(s) => s,
                ChunkVerdict::Hold => {
                    guard.set_held(index, offered);
                    String::new()
                }
                ChunkVerdict::Partial(p) => {
                    guard.set_held(index, p.hold);
                    p.release
                }
                ChunkVerdict::Block(rejection) => {
                    m.denials.increment(1);
                    return Err(Stop::Blocked {
                        policy: guard.policy.name.clone(),
                        rejection: rejection.into(),
                    });
                }
            },
            Ok(Err(policy_error)) => {
                guard.fail("policy_error", policy_error, request_id)?;
                return Ok(offered);
            }
            Err(e) => {
                let (kind, reason) = describe_failure(&e);
                guard.fail(kind, reason, request_id)?;
                return Ok(offered);
            }
        };
        let held_len = guard
            .held
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, h)| h.len());
        if held_len > guard.policy.limits.max_hold_bytes {
            let limit = guard.policy.limits.max_hold_bytes;
            let everything = guard.take_held(index);
            guard.fail(
                "hold_limit",
                format!("held more than max_hold_bytes ({limit})"),
                request_id,
            )?;
            return Ok(released + &everything);
        }
        Ok(released)
    }

    /// Choice `index` ended: a last verdict from every guard over what it
    /// still holds. Returns the text to release.
    pub async fn on_end(&mut self, index: u32) -> Result<String, Stop> {
        let mut text = String::new();
        for guard in &mut self.guards {
            // Text the previous guard released at its end is new to this one.
            let incoming = std::mem::take(&mut text);
            let mut out = if incoming.is_empty() {
                String::new()
            } else {
                Self::chunk_one(guard, &self.info.request_id, index, incoming).await?
            };
            let Some(resource) = guard.live.as_ref().and_then(|l| l.response) else {
                out.push_str(&guard.take_held(index));
                text = out;
                continue;
            };
            let held = guard.take_held(index);
            let Some(live) = guard.live.as_mut() else {
                continue;
            };
            let started = Instant::now();
            let _ticking = arm(&mut live.store, guard.policy.limits.ticks);
            let full = guard
                .full
                .iter()
                .find(|(i, _)| *i == index)
                .map_or("", |(_, f)| f.as_str());
            let result = live
                .bindings
                .call_on_end(&mut live.store, resource, index, &held, full)
                .await;
            let m = &guard.policy.metrics;
            m.end_calls.increment(1);
            m.end_time.record(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(ChunkVerdict::Pass | ChunkVerdict::Hold)) => out.push_str(&held),
                Ok(Ok(ChunkVerdict::Replace(s))) => out.push_str(&s),
                Ok(Ok(ChunkVerdict::Partial(p))) => {
                    out.push_str(&p.release);
                    out.push_str(&p.hold);
                }
                Ok(Ok(ChunkVerdict::Block(rejection))) => {
                    m.denials.increment(1);
                    return Err(Stop::Blocked {
                        policy: guard.policy.name.clone(),
                        rejection: rejection.into(),
                    });
                }
                Ok(Err(policy_error)) => {
                    guard.fail("policy_error", policy_error, &self.info.request_id)?;
                    out.push_str(&held);
                }
                Err(e) => {
                    let (kind, reason) = describe_failure(&e);
                    guard.fail(kind, reason, &self.info.request_id)?;
                    out.push_str(&held);
                }
            }
            text = out;
        }
        Ok(text)
    }

    /// The response ended cleanly: instances of policies that opted into
    /// reuse go back to their policy's idle list (their response guard
    /// dropped first); the rest are freed.
    /// Then the stock of fresh instances is topped up for the next
    /// requests. [`GuardChain::release`] runs it after the response; run
    /// inline (as the benchmarks do), it is the whole teardown.
    pub async fn finish(mut self) {
        for guard in std::mem::take(&mut self.guards) {
            retire(guard, &self.info.key_name, &self.runtime).await;
        }
        for policy in std::mem::take(&mut self.stocked) {
            restock(&self.runtime, &policy).await;
        }
    }

    /// The response is complete and about to be sent: instances that serve
    /// again go back to their idle lists now (the client's next request may
    /// follow at once), and the rest of [`GuardChain::finish`] — freeing
    /// fresh instances, topping up the stock — runs in a task of its own,
    /// after the response went out.
    ///
    /// Either way the request's slots in the instance budget are free when
    /// this returns: a fresh instance waits to be freed in a spare slot
    /// (or is freed here when there is none), so a full pool never refuses
    /// the client's next request because of this one.
    pub async fn release(mut self) {
        let (reused, mut fresh): (Vec<Guard>, Vec<Guard>) = std::mem::take(&mut self.guards)
            .into_iter()
            .partition(|g| g.policy.limits.reuse > 0);
        for guard in reused {
            retire(guard, &self.info.key_name, &self.runtime).await;
        }
        for guard in &mut fresh {
            let Some(live) = &mut guard.live else {
                continue;
            };
            match self.runtime.engine.try_spare_permit() {
                // The request's permit is dropped with the swap.
                Some(spare) => live.permit = spare,
                None => guard.live = None,
            }
        }
        self.guards = fresh;
        tokio::spawn(self.finish());
    }

    /// Is any guard holding text for some choice?
    pub fn holding(&self) -> bool {
        self.guards
            .iter()
            .any(|g| g.held.iter().any(|(_, h)| !h.is_empty()))
    }
}

impl Drop for GuardChain {
    /// A request that ended early (denied, failed, its client gone) tops up
    /// the stock it drew on too, in a task of its own.
    fn drop(&mut self) {
        if self.stocked.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (runtime, stocked) = (self.runtime.clone(), std::mem::take(&mut self.stocked));
        handle.spawn(async move {
            for policy in stocked {
                restock(&runtime, &policy).await;
            }
        });
    }
}

/// Make fresh instances of `policy` until its stock is full (or the
/// spare slots are all taken, or instantiating fails: the next request
/// then instantiates on its own and reports why).
async fn restock(runtime: &PolicyRuntime, policy: &Policy) {
    let Pre::Guardrail(pre) = &policy.pre else {
        return;
    };
    while !policy.no_stock.load(Ordering::Relaxed) {
        {
            // Counted before it is made: concurrent top-ups never make
            // more than the stock holds.
            let mut stock = policy.stock.lock();
            if stock.ready.len() + stock.making >= FRESH_STOCK {
                return;
            }
            stock.making += 1;
        }
        let Some(slot) = runtime.engine.try_spare_permit() else {
            // Every spare slot is taken (by other policies' stock or
            // instances being freed): try again after a later request.
            policy.stock.lock().making -= 1;
            return;
        };
        let made = make_fresh(runtime, policy, pre, slot).await;
        let mut stock = policy.stock.lock();
        stock.making -= 1;
        let Some(fresh) = made else {
            policy.no_stock.store(true, Ordering::Relaxed);
            return;
        };
        stock.ready.push(fresh);
        policy.metrics.ready.set(stock.ready.len() as f64);
    }
}

/// One fresh instance of `policy` for its stock, in `slot`, or `None` if
/// it cannot be instantiated.
async fn make_fresh(
    runtime: &PolicyRuntime,
    policy: &Policy,
    pre: &super::exports::GuardrailPre<PolicyState>,
    slot: OwnedSemaphorePermit,
) -> Option<Fresh> {
    let started = Instant::now();
    let mut store = runtime.engine.store(policy.meta.clone(), "".into());
    let ticking = arm(&mut store, policy.limits.ticks);
    let bindings = pre.instantiate_async(&mut store).await.ok()?;
    drop(ticking);
    policy
        .metrics
        .instantiate
        .record(started.elapsed().as_secs_f64());
    Some(Fresh {
        store,
        bindings,
        _slot: slot,
    })
}

/// A guard whose request (and response, if it has one) ended cleanly: its
/// instance goes back to the policy's idle list, for `tenant`'s next
/// request, if the policy reuses instances, the instance has uses left and
/// an idle slot is free (its response guard dropped first), else it is
/// freed. A full list makes room by freeing its oldest instance.
async fn retire(guard: Guard, tenant: &Option<String>, runtime: &PolicyRuntime) {
    let Some(mut live) = guard.live else { return };
    let policy = &guard.policy;
    if policy.limits.reuse == 0 || live.uses + 1 >= policy.limits.reuse {
        return;
    }
    if let Some(resource) = live.response.take() {
        let _ticking = arm(&mut live.store, policy.limits.ticks);
        if resource.resource_drop_async(&mut live.store).await.is_err() {
            return;
        }
    }
    let Some(slot) = runtime.engine.try_idle_permit() else {
        return;
    };
    let evicted = {
        let mut idle = policy.idle.lock();
        let evicted = (idle.len() >= MAX_IDLE).then(|| idle.remove(0));
        idle.push(Idle {
            tenant: tenant.clone(),
            store: live.store,
            bindings: live.bindings,
            _slot: slot,
            uses: live.uses + 1,
        });
        evicted
    };
    // Freed outside the lock: dropping a store resets its memory.
    drop(evicted);
}
