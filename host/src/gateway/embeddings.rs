//! `POST /v1/embeddings`: authenticate → limit → forward → account.
//!
//! The body passes through with `model` set to the target's; the answer's
//! `model` is the name the client asked for.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::chat::{account, record, release};
use super::{Body, EmbeddingsCall, Gateway, RequestLog, Snapshot, json_response, read_client_body};
use crate::chat::{Usage, parse_object, required_model};
use crate::error::GatewayError;
use crate::state::Ask;
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
    let input = match body.get("input") {
        Some(input @ Value::String(_)) => input,
        Some(input @ Value::Array(items)) if !items.is_empty() => input,
        _ => {
            return Err(GatewayError::invalid(
                "input",
                "`input` must be a string or a non-empty array",
            ));
        }
    };
    let model = snap.config.model_for(&caller, &name)?.clone();
    let target = model
        .targets
        .first()
        .map_or(model.name.as_str(), |t| t.model.as_str());
    let estimate = match input {
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map_or(i.to_string().len() as u64 / 4, |s| {
                    tokens::estimate_text(s, target)
                })
            })
            .sum(),
        other => other
            .as_str()
            .map_or(0, |s| tokens::estimate_text(s, target)),
    };
    let reservation = match caller.key().filter(|k| k.limited(&model.name)) {
        Some(key) => Some(
            gw.ledger
                .reserve(&Ask {
                    key: key.clone(),
                    model: model.name.clone(),
                    tokens: estimate,
                    cost_micro_usd: model.price.micro_usd(estimate, 0, 0),
                })
                .await?,
        ),
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
            release(gw, &model, reservation).await;
            return Err(error);
        }
    };
    log.provider = Some(target.label.clone());
    let input = answer
        .get("usage")
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(estimate);
    let cost = target.price.micro_usd(input, 0, 0);
    let actual = account(&Usage::new(input, 0), cost, log);
    record(gw, log, reservation, actual).await;
    let cost = actual.cost_micro_usd;
    answer["model"] = Value::String(model.name.clone());
    let mut response = json_response(StatusCode::OK, answer.to_string());
    let headers = response.headers_mut();
    if let Some(v) = &target.label_header {
        headers.insert(super::header::PROVIDER, v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&super::usd(cost)) {
        headers.insert(super::header::COST_USD, v);
    }
    rate.add_headers(headers);
    Ok(response)
}
