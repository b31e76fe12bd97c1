//! `POST /v1/embeddings`: authenticate → limit → forward → account.
//!
//! The body passes through with `model` set to the target's; the answer's
//! `model` is the name the client asked for.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::chat::{account, settle};
use super::{Body, EmbeddingsCall, Gateway, RequestLog, Snapshot, json_response, read_client_body};
use crate::chat::{Usage, parse_object, required_model};
use crate::error::GatewayError;
use crate::tokens;

pub(super) async fn handle(
    gw: &Arc<Gateway>,
    snap: &Snapshot,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<Body>, GatewayError> {
    let caller = snap.config.keys.authenticate(req.headers())?;
    log.key = caller.name().map(str::to_owned);
    let bytes = read_client_body(req, snap.config.config.server.max_body_bytes).await?;
    let body = parse_object(&bytes)?;
    let name = required_model(&body)?;
    log.model.clone_from(&name);
    let estimate = match body.get("input") {
        Some(Value::String(s)) => tokens::estimate_text(s),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map_or(i.to_string().len() as u64 / 4, tokens::estimate_text)
            })
            .sum(),
        _ => {
            return Err(GatewayError::invalid(
                "input",
                "`input` must be a string or a non-empty array",
            ));
        }
    };
    let model = snap.config.model_for(&caller, &name)?.clone();
    let reservation = match caller.key() {
        Some(key) => gw
            .limits
            .reserve(key, estimate, model.price.micro_usd(estimate, 0, 0))?,
        None => None,
    };
    let rate = reservation
        .as_ref()
        .map(|r| r.info.clone())
        .unwrap_or_default();
    let order = gw.plan(snap, &model, None, false).await;
    let (target, mut answer, _in_flight) = match gw
        .forward(&model, &order, EmbeddingsCall(&body), false, log)
        .await
    {
        Ok(ok) => ok,
        Err(error) => {
            settle(gw, reservation, 0, 0);
            return Err(error);
        }
    };
    log.provider = Some(target.label.clone());
    let input = answer
        .get("usage")
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(estimate);
    let cost = account(gw, &target.price, &Usage::new(input, 0), reservation, log);
    answer["model"] = Value::String(model.name.clone());
    let mut response = json_response(StatusCode::OK, answer.to_string());
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target.label) {
        headers.insert("x-weir-provider", v);
    }
    if let Ok(v) = HeaderValue::from_str(&super::usd(cost)) {
        headers.insert("x-weir-cost-usd", v);
    }
    for (name, value) in rate.headers() {
        headers.insert(name, value);
    }
    Ok(response)
}
