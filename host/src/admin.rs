//! The admin API (SPEC §5), on its own listener.
//!
//! Every route but `/healthz` and `/readyz` requires the admin token when
//! `admin_token_env` is set.

use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::GatewayError;
use crate::gateway::{Body, Gateway, error_response, full};

/// Serve one admin-listener request.
pub async fn handle(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    if let Some(probe) = gw.probe(req.uri().path()) {
        return probe;
    }
    if !gw.admin_authorized(req.headers()) {
        return error_response(&GatewayError::AdminUnauthorized);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(full(gw.render_metrics()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (_, "/metrics") => {
            error_response(&GatewayError::MethodNotAllowed(req.method().to_string()))
        }
        (method, path) => {
            let mut response = error_response(&GatewayError::NotFound {
                method: method.to_string(),
                path: path.to_string(),
            });
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}
