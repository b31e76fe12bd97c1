//! `POST /v1/chat/completions`, top to bottom:
//! accept → authenticate → limit → route + forward → answer (whole, or a
//! stream) → account.
//!
//! Each step is one function with one job. A failure at any step is a
//! [`GatewayError`] that `Gateway::handle` turns into an OpenAI-shaped answer;
//! once a reservation is taken it is always settled, on every path.

use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::stream::ClientStream;
use super::{
    Body, ChatCall, Gateway, Model, RequestLog, Target, json_response, read_client_body, usd,
};
use crate::auth::Caller;
use crate::chat::{ChatCompletion, ChatRequest, Usage};
use crate::error::GatewayError;
use crate::limits::{RateInfo, Reservation};
use crate::providers::{ChatReply, ChunkStream};
use crate::tokens;

pub(super) async fn handle(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<Body>, GatewayError> {
    let caller = gw.keys.authenticate(req.headers())?;
    log.key = caller.name().map(str::to_owned);
    let body = read_client_body(req, gw.config.server.max_body_bytes).await?;
    let chat = ChatRequest::parse(&body)?;
    log.model.clone_from(&chat.model);
    let model = gw.model_for(&caller, &chat.model)?.clone();
    let (reservation, prompt_estimate) = reserve(gw, &caller, &model, &chat)?;
    let rate = reservation
        .as_ref()
        .map(|r| r.info.clone())
        .unwrap_or_default();
    let (target, reply) = match gw.forward(&model, ChatCall(&chat), log).await {
        Ok(answer) => answer,
        Err(error) => {
            settle(gw, reservation, 0, 0);
            return Err(error);
        }
    };
    log.provider = Some(target.label.clone());
    let response = match reply {
        ChatReply::Complete(completion) => {
            answer_whole(gw, &model, completion, reservation, prompt_estimate, log)
        }
        ChatReply::Stream(stream) => {
            answer_stream(gw, &model, &chat, stream, reservation, prompt_estimate, log)
        }
    };
    Ok(with_headers(response, target, &rate))
}

/// Reserve the request's estimated tokens and cost against its key.
fn reserve(
    gw: &Gateway,
    caller: &Caller,
    model: &Model,
    chat: &ChatRequest,
) -> Result<(Option<Reservation>, u64), GatewayError> {
    let prompt = tokens::estimate_request(chat);
    let Some(key) = caller.key() else {
        return Ok((None, prompt));
    };
    let output = chat.max_tokens.unwrap_or(model.max_output_tokens);
    let cost = model.price.micro_usd(prompt, 0, output);
    let reservation = gw.limits.reserve(key, prompt + output, cost)?;
    Ok((reservation, prompt))
}

/// Replace a reservation's estimate with what was used.
pub(super) fn settle(gw: &Gateway, reservation: Option<Reservation>, tokens: u64, cost: u64) {
    if let Some(r) = reservation {
        gw.limits.settle(r, tokens, cost);
    }
}

/// A whole completion: rename the model, account, answer.
fn answer_whole(
    gw: &Gateway,
    model: &Model,
    mut completion: Box<ChatCompletion>,
    reservation: Option<Reservation>,
    prompt_estimate: u64,
    log: &mut RequestLog,
) -> Response<Body> {
    completion.model.clone_from(&model.name);
    let usage = completion.usage.clone().unwrap_or_else(|| {
        let text: usize = completion
            .choices
            .iter()
            .filter_map(|c| c.message.content.as_deref())
            .map(str::len)
            .sum();
        Usage::new(prompt_estimate, (text as u64).div_ceil(4))
    });
    let cost = account(gw, model, &usage, reservation, log);
    let body = serde_json::to_vec(&completion).unwrap_or_default();
    let mut response = json_response(StatusCode::OK, body);
    if let Ok(v) = HeaderValue::from_str(&usd(cost)) {
        response.headers_mut().insert("x-weir-cost-usd", v);
    }
    response
}

/// Settle the reservation and record tokens and cost; returns the cost.
pub(super) fn account(
    gw: &Gateway,
    model: &Model,
    usage: &Usage,
    reservation: Option<Reservation>,
    log: &mut RequestLog,
) -> u64 {
    let cost = model.price.micro_usd(
        usage.prompt_tokens,
        usage.cached_tokens(),
        usage.completion_tokens,
    );
    settle(
        gw,
        reservation,
        usage.prompt_tokens + usage.completion_tokens,
        cost,
    );
    log.input_tokens = usage.prompt_tokens;
    log.output_tokens = usage.completion_tokens;
    log.cost_micro_usd = cost;
    cost
}

/// A streamed completion: chunks go to the client as they arrive.
fn answer_stream(
    gw: &Arc<Gateway>,
    model: &Arc<Model>,
    chat: &ChatRequest,
    stream: ChunkStream,
    reservation: Option<Reservation>,
    prompt_estimate: u64,
    log: &mut RequestLog,
) -> Response<Body> {
    let body = ClientStream::new(
        gw.clone(),
        model.clone(),
        stream,
        chat.include_usage,
        reservation,
        prompt_estimate,
        log.hand_off(),
    )
    .into_body();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn with_headers(mut response: Response<Body>, target: &Target, rate: &RateInfo) -> Response<Body> {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target.label) {
        headers.insert("x-weir-provider", v);
    }
    for (name, value) in rate.headers() {
        headers.insert(name, value);
    }
    response
}
