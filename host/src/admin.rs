//! The admin API (SPEC §5), on its own listener (loopback by default).
//!
//! Every route but `/healthz` and `/readyz` requires the admin token when
//! `admin_token_env` is set.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::error::GatewayError;
use crate::gateway::reload::{MAX_UPLOAD_BYTES, PutError};
use crate::gateway::{Body, Gateway, error_response, full, json_response};

/// Serve one admin-listener request.
pub async fn handle(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    if let Some(probe) = gw.probe(req.uri().path()) {
        return probe;
    }
    if !gw.admin_authorized(req.headers()) {
        return error_response(&GatewayError::AdminUnauthorized);
    }
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => {
            let mut response = Response::new(full(gw.render_metrics()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (Method::GET, "/admin/usage") => usage(gw, req.uri().query()).await,
        (Method::GET, "/admin/policies") => {
            json_response(StatusCode::OK, gw.policy_listing().to_string())
        }
        (Method::POST, "/admin/policies/reload") => match gw.reload_all_policies().await {
            Ok(changed) => json_response(
                StatusCode::OK,
                json!({"reloaded": changed, "policies": gw.policy_listing()}).to_string(),
            ),
            Err(failures) => {
                let list: Vec<_> = failures
                    .iter()
                    .map(|f| json!({"name": f.name, "source": f.path.display().to_string(), "reason": f.error.to_string()}))
                    .collect();
                rejected(
                    &format!(
                        "{} policies failed to load; nothing was swapped",
                        failures.len()
                    ),
                    json!(list),
                )
            }
        },
        (Method::PUT, p) if p.starts_with("/admin/policies/") => {
            let name = p.trim_start_matches("/admin/policies/").to_string();
            let bytes = match read_upload(req).await {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            match gw.put_policy(&name, bytes.to_vec()).await {
                Ok(generation) => json_response(
                    StatusCode::OK,
                    json!({"swapped": generation.is_some(), "policies": gw.policy_listing()}).to_string(),
                ),
                Err(PutError::Unknown) => error_response(&GatewayError::NotFound {
                    method: "PUT".into(),
                    path: format!("/admin/policies/{name} (no policy named `{name}` is configured)"),
                }),
                Err(PutError::Invalid(e)) => rejected(
                    &format!("policy `{name}` rejected: {e}"),
                    json!([{"name": name, "reason": e.to_string()}]),
                ),
                Err(PutError::Write(e)) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": {"message": format!("the component is valid but could not be written: {e}"), "type": "server_error", "param": null, "code": "write_failed"}}).to_string(),
                ),
            }
        }
        (method, "/metrics" | "/admin/policies" | "/admin/policies/reload") => {
            error_response(&GatewayError::MethodNotAllowed(method.to_string()))
        }
        (method, path) => error_response(&GatewayError::NotFound {
            method: method.to_string(),
            path: path.to_string(),
        }),
    }
}

/// `GET /admin/usage[?key=NAME]`: requests, tokens and USD per key and
/// model (SPEC §8).
async fn usage(gw: &Arc<Gateway>, query: Option<&str>) -> Response<Body> {
    use std::collections::BTreeMap;

    use crate::state::UsageTotals;

    let wanted = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("key="))
            .map(percent_decode)
    });
    let mut per_key: BTreeMap<String, BTreeMap<String, UsageTotals>> = BTreeMap::new();
    for (key, model, totals) in gw.ledger().usage().await {
        per_key.entry(key).or_default().insert(model, totals);
    }
    let fields = |t: &UsageTotals| {
        json!({
            "requests": t.requests,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cached_input_tokens": t.cached_input_tokens,
            "cost_usd": t.micro_usd as f64 / 1e6,
        })
    };
    let entry = |key: &str, models: &BTreeMap<String, UsageTotals>| {
        let total = models
            .values()
            .fold(UsageTotals::default(), |acc, t| acc.plus(t));
        let mut v = fields(&total);
        v["key"] = json!(key);
        v["models"] = json!(
            models
                .iter()
                .map(|(m, t)| (m.clone(), fields(t)))
                .collect::<serde_json::Map<_, _>>()
        );
        v
    };
    match wanted {
        Some(key) => {
            let known = gw.config().config.keys.iter().any(|k| k.name == key);
            match per_key.get(&key) {
                Some(models) => json_response(StatusCode::OK, entry(&key, models).to_string()),
                None if known => {
                    json_response(StatusCode::OK, entry(&key, &BTreeMap::new()).to_string())
                }
                None => error_response(&GatewayError::NotFound {
                    method: "GET".into(),
                    path: format!("/admin/usage?key={key} (no such key and no usage recorded)"),
                }),
            }
        }
        None => {
            let list: Vec<_> = per_key.iter().map(|(k, m)| entry(k, m)).collect();
            json_response(StatusCode::OK, serde_json::Value::Array(list).to_string())
        }
    }
}

/// Decode `%XX` escapes and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// 422 with every failure listed.
fn rejected(message: &str, failures: serde_json::Value) -> Response<Body> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({
            "error": {"message": message, "type": "invalid_request_error", "param": null, "code": "policy_rejected"},
            "failures": failures,
        })
        .to_string(),
    )
}

async fn read_upload(req: Request<Incoming>) -> Result<Bytes, GatewayError> {
    match Limited::new(req.into_body(), MAX_UPLOAD_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::BodyTooLarge {
            limit: MAX_UPLOAD_BYTES,
        }),
        Err(e) => Err(GatewayError::InvalidRequest {
            message: format!("could not read the upload: {e}"),
            param: None,
        }),
    }
}
