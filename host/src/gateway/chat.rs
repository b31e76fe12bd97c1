//! `POST /v1/chat/completions`, top to bottom:
//! accept → authenticate → limit → guardrails (request) → route + forward →
//! answer (whole, or a stream, through the guardrails) → account.
//!
//! Each step is one function with one job. A failure at any step is a
//! [`GatewayError`] that `Gateway::handle` turns into an OpenAI-shaped answer;
//! once a reservation is taken it is always settled or released, on every
//! path.

use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::stream::ClientStream;
use super::{
    Body, ChatCall, Gateway, Model, RequestLog, Snapshot, Target, header, json_response,
    read_client_body, usd,
};
use crate::auth::Caller;
use crate::chat::{ChatCompletion, ChatRequest, Usage};
use crate::error::GatewayError;
use crate::limits::RateInfo;
use crate::policy::{GuardChain, Policy, PolicyUsage, PricePhase, RequestContext, Stop};
use crate::providers::{ChatReply, RawCompletion, Whole};
use crate::state::{ANONYMOUS, Actual, Ask, Reservation};
use crate::tokens;

pub(super) async fn handle(
    gw: &Arc<Gateway>,
    snap: &Snapshot,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<Body>, GatewayError> {
    let caller = snap.config.keys.authenticate(req.headers())?;
    log.key = caller.name().map(str::to_owned);
    let meta = meta_headers(req.headers());
    let body = read_client_body(req, snap.config.config.server.max_body_bytes).await?;
    let mut chat = ChatRequest::parse_bytes(body)?;
    log.model.clone_from(&chat.model);
    let model = snap.config.model_for(&caller, &chat.model)?.clone();
    let ctx = RequestContext {
        request_id: log.id.clone(),
        key_name: log.key.clone(),
        model: chat.model.clone(),
        streaming: chat.stream,
        metadata: metadata(&chat, meta),
    };
    let pricing = Pricing {
        pricer: snap.policies.pricer(&model.name).cloned(),
        ctx: ctx.clone(),
    };
    let (reservation, counted) = reserve(gw, &caller, &model, &chat, &pricing).await?;
    let rate = reservation
        .as_ref()
        .map(|r| r.info.clone())
        .unwrap_or_default();
    let mut chain =
        match guard_request(gw, snap.policies.guardrails(&model.name), &mut chat, &ctx).await {
            Ok(chain) => chain,
            Err(error) => {
                release(gw, &model, reservation).await;
                return Err(error);
            }
        };
    let order = gw
        .plan(snap, &model, Some((&chat, &ctx)), chat.stream)
        .await;
    let forwarding = gw.forward(&model, &order, ChatCall(&chat), chat.stream, log);
    // The response guards are made while the upstream works on the request
    // (after the request went out: the yield lets the connection's task
    // write it first), not between its answer and the client.
    let forwarded = match &mut chain {
        Some(chain) => {
            tokio::join!(forwarding, async {
                tokio::task::yield_now().await;
                chain.prepare_response().await;
            })
            .0
        }
        None => forwarding.await,
    };
    let (target, reply, in_flight) = match forwarded {
        Ok(answer) => answer,
        Err(error) => {
            release(gw, &model, reservation).await;
            return Err(error);
        }
    };
    log.provider = Some(target.label.clone());
    let include_usage = chat.include_usage;
    let prompt_estimate = match counted {
        Some(tokens) => PromptEstimate::Counted(tokens),
        None => PromptEstimate::Deferred(Box::new(chat)),
    };
    let response = match reply {
        ChatReply::Complete(whole) => {
            let response = answer_whole(
                gw,
                &model,
                &target,
                &pricing,
                whole,
                chain,
                reservation,
                prompt_estimate,
                log,
            )
            .await?;
            drop(in_flight);
            response
        }
        ChatReply::Stream(stream) => {
            if let Some(chain) = &mut chain
                && let Err(stop) = chain.begin_response().await
            {
                release(gw, &model, reservation).await;
                return Err(stop_error(stop));
            }
            let stream = ClientStream::new(
                gw.clone(),
                model.clone(),
                (target.clone(), in_flight),
                pricing,
                stream,
                chain,
                include_usage,
                reservation,
                prompt_estimate,
                log.hand_off(),
            );
            answer_stream(stream)
        }
    };
    Ok(with_headers(response, &target, &rate))
}

/// `x-weir-meta-<name>` headers, for policies' request metadata.
fn meta_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-weir-meta-")?;
            Some((key.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect()
}

/// The OpenAI `user` field, string `metadata` entries, then meta headers.
fn metadata(chat: &ChatRequest, headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(user) = chat.body().get("user").and_then(|u| u.as_str()) {
        out.push(("user".to_string(), user.to_string()));
    }
    if let Some(meta) = chat.body().get("metadata").and_then(|m| m.as_object()) {
        out.extend(
            meta.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))),
        );
    }
    out.extend(headers);
    out
}

/// Run the model's guardrails over the request (a rewrite changes `chat`).
async fn guard_request(
    gw: &Gateway,
    policies: &[Arc<Policy>],
    chat: &mut ChatRequest,
    ctx: &RequestContext,
) -> Result<Option<GuardChain>, GatewayError> {
    if policies.is_empty() {
        return Ok(None);
    }
    let mut chain = GuardChain::start(&gw.runtime, policies, ctx)
        .await
        .map_err(stop_error)?;
    chain.on_request(chat).await.map_err(stop_error)?;
    // Only request-only guardrails (or none left running): the response
    // goes out unguarded, with no per-chunk work.
    Ok((!chain.is_empty()).then_some(chain))
}

/// A guardrail's stop as the client's error.
fn stop_error(stop: Stop) -> GatewayError {
    match stop {
        Stop::Blocked { policy, rejection } => GatewayError::ContentFilter {
            policy,
            reason: rejection.message,
            code: Some(rejection.code).filter(|c| !c.is_empty()),
        },
        Stop::Failed { policy, reason } => GatewayError::PolicyError { policy, reason },
    }
}

/// What the guardrails made of one choice of a whole completion.
enum Guarded {
    /// The text to answer with (`None`: the choice had none and gets none).
    Text(Option<String>),
    /// A guardrail blocked it: no text, `finish_reason: "content_filter"`.
    Blocked,
}

/// Run a whole completion's texts — (choice index, text) — through the
/// guardrails, choice by choice. Returns each choice's outcome and the name
/// of the policy that blocked one, if any.
async fn guard_texts(
    chain: &mut GuardChain,
    texts: Vec<(u32, Option<String>)>,
) -> Result<(Vec<Guarded>, Option<String>), GatewayError> {
    chain.begin_response().await.map_err(stop_error)?;
    let mut blocked_by = None;
    let mut outcomes = Vec::new();
    for (index, text) in texts {
        let had_text = text.is_some();
        let released = match chain.on_chunk(index, text.unwrap_or_default()).await {
            Ok(mut out) => chain.on_end(index).await.map(|tail| {
                out.push_str(&tail);
                out
            }),
            Err(stop) => Err(stop),
        };
        outcomes.push(match released {
            Ok(text) => Guarded::Text((had_text || !text.is_empty()).then_some(text)),
            Err(Stop::Blocked { policy, .. }) => {
                blocked_by = Some(policy);
                Guarded::Blocked
            }
            Err(stop @ Stop::Failed { .. }) => return Err(stop_error(stop)),
        });
    }
    Ok((outcomes, blocked_by))
}

/// Put the guardrails' outcomes into a parsed completion.
fn apply(completion: &mut ChatCompletion, outcomes: Vec<Guarded>) {
    for (choice, outcome) in completion.choices.iter_mut().zip(outcomes) {
        match outcome {
            Guarded::Text(text) => choice.message.content = text,
            Guarded::Blocked => {
                choice.message.content = None;
                choice.finish_reason = Some("content_filter".into());
            }
        }
    }
}

/// The upstream's bytes with each guarded text written where it was and
/// `model` renamed to `name`, or `None` when that cannot express the
/// outcome (a block, or text for a choice that had none).
fn splice_texts(raw: &RawCompletion, outcomes: &[Guarded], name: &[u8]) -> Option<Vec<u8>> {
    let mut edits = Vec::new();
    for (t, outcome) in raw.texts.iter().zip(outcomes) {
        let Guarded::Text(text) = outcome else {
            return None;
        };
        match (&t.range, text) {
            (_, None) => {}
            (Some(range), Some(text)) => {
                if !t.unchanged(&raw.bytes, text) {
                    edits.push((range.clone(), serde_json::to_vec(text).ok()?));
                }
            }
            (None, Some(_)) => return None,
        }
    }
    raw.edited(edits, name)
}

/// The request's prompt tokens as weir estimates them: counted before it
/// is sent when the key's limits or budget need them, otherwise only if the
/// upstream never reports usage (a tokenizer pass over a 1 KB prompt is
/// 2–7 µs, a tenth to a quarter of the gateway's own CPU for the request).
pub(super) enum PromptEstimate {
    Counted(u64),
    Deferred(Box<ChatRequest>),
}

impl PromptEstimate {
    pub(super) fn tokens(&self, model: &Model) -> u64 {
        match self {
            PromptEstimate::Counted(tokens) => *tokens,
            PromptEstimate::Deferred(chat) => estimate_prompt(model, chat),
        }
    }
}

/// Prompt tokens of `chat` with the tokenizer of the model's first target.
fn estimate_prompt(model: &Model, chat: &ChatRequest) -> u64 {
    let name = model
        .targets
        .first()
        .map_or(model.name.as_str(), |t| t.model.as_str());
    tokens::estimate_request(chat, name)
}

/// Reserve the request's estimated tokens and cost against its key, if it
/// has limits; returns the prompt tokens counted for that.
async fn reserve(
    gw: &Gateway,
    caller: &Caller,
    model: &Model,
    chat: &ChatRequest,
    pricing: &Pricing,
) -> Result<(Option<Reservation>, Option<u64>), GatewayError> {
    let Some(key) = caller.key().filter(|k| k.limited(&model.name)) else {
        return Ok((None, None));
    };
    let prompt = estimate_prompt(model, chat);
    let output = chat.max_tokens.unwrap_or(model.max_output_tokens);
    let estimate = Usage::new(prompt, output);
    let cost = match model.targets.first() {
        Some(target) => {
            pricing
                .cost(gw, PricePhase::Estimate, target, &estimate)
                .await
        }
        None => model.price.micro_usd(prompt, 0, output),
    };
    let ask = Ask {
        key: key.clone(),
        model: model.name.clone(),
        tokens: prompt + output,
        cost_micro_usd: cost,
    };
    Ok((Some(gw.ledger.reserve(&ask).await?), Some(prompt)))
}

/// Nothing was served: give the reservation back.
pub(super) async fn release(gw: &Gateway, model: &Model, reservation: Option<Reservation>) {
    if let Some(r) = reservation {
        gw.ledger
            .record(&r.key.clone(), &model.name, Some(r), None)
            .await;
    }
}

/// A whole completion: guardrails, rename the model, account, answer.
#[allow(clippy::too_many_arguments)]
async fn answer_whole(
    gw: &Gateway,
    model: &Model,
    target: &Target,
    pricing: &Pricing,
    whole: Whole,
    chain: Option<GuardChain>,
    reservation: Option<Reservation>,
    prompt_estimate: PromptEstimate,
    log: &mut RequestLog,
) -> Result<Response<Body>, GatewayError> {
    // The upstream's own bytes go back with the model renamed, never
    // parsed in full or re-serialized: untouched with no guardrail over the
    // response; otherwise only the choices' texts are read, and what the
    // guardrails released is written where each text was.
    let name = serde_json::to_vec(&model.name).unwrap_or_default();
    let mut chain = chain;
    // The guardrails' outcomes when they could not be written back so.
    let mut pending = None;
    'raw: {
        let Whole::Raw(raw) = &whole else {
            break 'raw;
        };
        match chain.as_mut() {
            None => {
                if let Some(body) = raw.edited(Vec::new(), &name) {
                    let usage = raw.usage.clone().unwrap_or_else(|| {
                        Usage::new(
                            prompt_estimate.tokens(model),
                            (raw.content_bytes as u64).div_ceil(4),
                        )
                    });
                    let cost = settle(gw, pricing, target, &usage, log, reservation).await;
                    return Ok(cost_response(json_response(StatusCode::OK, body), cost));
                }
            }
            Some(guards) => {
                let offered = raw
                    .texts
                    .iter()
                    .map(|t| (t.index, t.text(&raw.bytes)))
                    .collect();
                let (outcomes, blocked_by) = match guard_texts(guards, offered).await {
                    Ok(guarded) => guarded,
                    Err(error) => {
                        let usage = raw.usage.clone().unwrap_or_default();
                        settle(gw, pricing, target, &usage, log, reservation).await;
                        return Err(error);
                    }
                };
                let spliced = match blocked_by {
                    None => splice_texts(raw, &outcomes, &name),
                    Some(_) => None,
                };
                let Some(body) = spliced else {
                    pending = Some((outcomes, blocked_by));
                    break 'raw;
                };
                if let Some(chain) = chain.take() {
                    chain.release().await;
                }
                let usage = raw.usage.clone().unwrap_or_else(|| {
                    let released: usize = outcomes
                        .iter()
                        .map(|o| match o {
                            Guarded::Text(Some(text)) => text.len(),
                            _ => 0,
                        })
                        .sum();
                    Usage::new(prompt_estimate.tokens(model), (released as u64).div_ceil(4))
                });
                let cost = settle(gw, pricing, target, &usage, log, reservation).await;
                return Ok(cost_response(json_response(StatusCode::OK, body), cost));
            }
        }
    }
    let mut completion = match whole.parse() {
        Ok(completion) => completion,
        Err(e) => {
            release(gw, model, reservation).await;
            return Err(GatewayError::UpstreamError(format!(
                "`{}` answered: {}",
                target.label,
                e.describe()
            )));
        }
    };
    let blocked_by = match (chain, pending) {
        (Some(chain), Some((outcomes, blocked_by))) => {
            apply(&mut completion, outcomes);
            chain.release().await;
            blocked_by
        }
        (Some(mut chain), None) => {
            let texts = completion
                .choices
                .iter_mut()
                .map(|c| (c.index, c.message.content.take()))
                .collect::<Vec<_>>();
            match guard_texts(&mut chain, texts).await {
                Ok((outcomes, blocked_by)) => {
                    apply(&mut completion, outcomes);
                    chain.release().await;
                    blocked_by
                }
                Err(error) => {
                    let usage = completion.usage.clone().unwrap_or_default();
                    settle(gw, pricing, target, &usage, log, reservation).await;
                    return Err(error);
                }
            }
        }
        (None, _) => None,
    };
    completion.model.clone_from(&model.name);
    let usage = completion.usage.clone().unwrap_or_else(|| {
        let text: usize = completion
            .choices
            .iter()
            .filter_map(|c| c.message.content.as_deref())
            .map(str::len)
            .sum();
        Usage::new(prompt_estimate.tokens(model), (text as u64).div_ceil(4))
    });
    let cost = settle(gw, pricing, target, &usage, log, reservation).await;
    let body = serde_json::to_vec(&completion).unwrap_or_default();
    let mut response = cost_response(json_response(StatusCode::OK, body), cost);
    if let Some(policy) = blocked_by
        && let Ok(v) = HeaderValue::from_str(&policy)
    {
        response.headers_mut().insert(header::POLICY, v);
    }
    Ok(response)
}

/// Price what a whole completion used, account and record it; the cost.
async fn settle(
    gw: &Gateway,
    pricing: &Pricing,
    target: &Target,
    usage: &Usage,
    log: &mut RequestLog,
    reservation: Option<Reservation>,
) -> u64 {
    let cost = pricing.cost(gw, PricePhase::Actual, target, usage).await;
    let actual = account(usage, cost, log);
    record(gw, log, reservation, actual).await;
    cost
}

/// `x-weir-cost-usd` on a served completion.
fn cost_response(mut response: Response<Body>, cost: u64) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&usd(cost)) {
        response.headers_mut().insert(header::COST_USD, v);
    }
    response
}

/// How a request is priced: its model's pricing policy, if any (the
/// target's price when the policy fails), else the target's price.
#[derive(Debug, Clone)]
pub(super) struct Pricing {
    pub pricer: Option<Arc<Policy>>,
    pub ctx: RequestContext,
}

impl Pricing {
    /// Micro-USD for `usage` served (or to be served) by `target`.
    pub(super) async fn cost(
        &self,
        gw: &Gateway,
        phase: PricePhase,
        target: &Target,
        usage: &Usage,
    ) -> u64 {
        let configured = target.price.micro_usd(
            usage.prompt_tokens,
            usage.cached_tokens(),
            usage.completion_tokens,
        );
        let Some(policy) = &self.pricer else {
            return configured;
        };
        let policy_usage = PolicyUsage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cached_input_tokens: usage.cached_tokens(),
            reasoning_tokens: usage.reasoning_tokens(),
        };
        match gw
            .runtime
            .price(
                policy,
                &self.ctx,
                phase,
                &target.provider.name,
                &target.model,
                &policy_usage,
            )
            .await
        {
            Ok(micro_usd) => micro_usd,
            Err(e) => {
                ::metrics::counter!("weir_policy_errors_total", "policy" => policy.name.clone(), "kind" => "pricing")
                    .increment(1);
                tracing::warn!(request_id = %self.ctx.request_id, policy = %policy.name, error = %e, "the pricing policy failed; charging the configured price");
                configured
            }
        }
    }
}

/// What a served request used and cost, recorded in its log line; the
/// caller hands it to the ledger.
pub(super) fn account(usage: &Usage, cost: u64, log: &mut RequestLog) -> Actual {
    log.input_tokens = usage.prompt_tokens;
    log.output_tokens = usage.completion_tokens;
    log.cost_micro_usd = cost;
    Actual {
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
        cached_input_tokens: usage.cached_tokens(),
        cost_micro_usd: cost,
    }
}

/// Settle a served request's reservation and add it to the usage ledger.
pub(super) async fn record(
    gw: &Gateway,
    log: &RequestLog,
    reservation: Option<Reservation>,
    actual: Actual,
) {
    let key = log.key.as_deref().unwrap_or(ANONYMOUS);
    gw.ledger
        .record(key, &log.model, reservation, Some(actual))
        .await;
}

/// A streamed completion: chunks go to the client as they arrive.
fn answer_stream(stream: ClientStream) -> Response<Body> {
    let mut response = Response::new(stream.into_body());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn with_headers(mut response: Response<Body>, target: &Target, rate: &RateInfo) -> Response<Body> {
    let headers = response.headers_mut();
    if let Some(v) = &target.label_header {
        headers.insert(header::PROVIDER, v.clone());
    }
    rate.add_headers(headers);
    response
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::{Guarded, splice_texts};
    use crate::providers::check_completion;

    /// The guardrails' texts go where the upstream's were; every other
    /// byte stays as it came, but for the model's name.
    #[test]
    fn guarded_texts_are_written_where_they_were() {
        let body = r#"{"id":"c-1","object":"chat.completion","created":7,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"mail jo@example.com","refusal":null},"logprobs":null,"finish_reason":"stop"},{"index":1,"message":{"role":"assistant","content":"same \"text\"\n"},"finish_reason":"stop"},{"index":2,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21},"system_fingerprint":"fp"}"#;
        let raw = check_completion(Bytes::from(body)).unwrap();
        let text = |i: usize| raw.texts[i].text(&raw.bytes);
        let name = br#""chat""#;
        let redacted = "mail [EMAIL] \"é\"";
        let outcomes = [
            Guarded::Text(Some(redacted.into())),
            Guarded::Text(text(1)),
            Guarded::Text(None),
        ];
        let out = splice_texts(&raw, &outcomes, name).unwrap();
        let mut want: Value = serde_json::from_str(body).unwrap();
        want["model"] = json!("chat");
        want["choices"][0]["message"]["content"] = json!(redacted);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), want);
        // Unchanged texts (escaped ones too) are not rewritten: the bytes
        // are the upstream's.
        let same = [
            Guarded::Text(text(0)),
            Guarded::Text(text(1)),
            Guarded::Text(None),
        ];
        let out = splice_texts(&raw, &same, name).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            body.replace(r#""model":"gpt-4o-mini""#, r#""model":"chat""#)
        );
        // A block, or text where there was none, needs the full answer.
        let blocked = [Guarded::Blocked, Guarded::Text(None), Guarded::Text(None)];
        assert!(splice_texts(&raw, &blocked, name).is_none());
        let added = [
            Guarded::Text(text(0)),
            Guarded::Text(text(1)),
            Guarded::Text(Some("new".into())),
        ];
        assert!(splice_texts(&raw, &added, name).is_none());
    }
}
