//! Every way a client request can fail, and the one place each failure becomes
//! an OpenAI-shaped HTTP answer (SPEC §4's error table).
//!
//! Handlers return `Result<_, GatewayError>`; nothing else builds error
//! responses, so status codes, `error.code` values and headers such as
//! `retry-after` stay consistent across the whole client API.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::json;

/// A failed client request. Each variant maps to exactly one row of SPEC §4.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed JSON or an invalid field; the message names the field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// Missing or unknown virtual key.
    #[error("{0}")]
    InvalidApiKey(&'static str),
    /// The key exists but may not use this model.
    #[error("the API key `{key}` is not allowed to use the model `{model}`")]
    ModelNotAllowed { key: String, model: String },
    /// No model of that name is configured.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// The request body exceeds `max_body_bytes`.
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A request or token rate limit is exhausted.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// The key's budget is spent.
    #[error("{0}")]
    InsufficientQuota(String),
    /// A guardrail denied the request; `code` overrides `content_filter`.
    #[error("request blocked by policy `{policy}`: {reason}")]
    ContentFilter {
        policy: String,
        reason: String,
        code: Option<String>,
    },
    /// A policy failed and its `on_error` is `deny`.
    #[error("policy `{policy}` failed: {reason}")]
    PolicyError { policy: String, reason: String },
    /// Every target failed and at least one did not time out.
    #[error("{0}")]
    UpstreamError(String),
    /// Every target timed out.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// An upstream refused the request as the caller's fault (400/404/422…):
    /// relayed with the upstream's status and message.
    #[error("{message}")]
    UpstreamRejected {
        status: StatusCode,
        message: String,
        kind: String,
        code: Option<String>,
        param: Option<String>,
    },
    /// No route for this method and path.
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    /// The route exists but not for this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// Admin routes: a missing or wrong admin token.
    #[error("a valid admin token is required")]
    AdminUnauthorized,
}

impl GatewayError {
    /// An `invalid_request` error about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidRequest { .. } | ContentFilter { .. } => StatusCode::BAD_REQUEST,
            InvalidApiKey(_) | AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ModelNotFound(_) | NotFound { .. } => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. } | InsufficientQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            UpstreamError(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            PolicyError { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamRejected { status, .. } => *status,
        }
    }

    /// OpenAI's `error.code`.
    pub fn code(&self) -> Option<&str> {
        use GatewayError::*;
        Some(match self {
            InvalidRequest { .. } => "invalid_request",
            InvalidApiKey(_) => "invalid_api_key",
            ModelNotAllowed { .. } => "model_not_allowed",
            ModelNotFound(_) => "model_not_found",
            BodyTooLarge { .. } => "body_too_large",
            RateLimited { .. } => "rate_limit_exceeded",
            InsufficientQuota(_) => "insufficient_quota",
            ContentFilter {
                code: Some(code), ..
            } => code,
            ContentFilter { .. } => "content_filter",
            PolicyError { .. } => "policy_error",
            UpstreamError(_) => "upstream_error",
            UpstreamTimeout(_) => "upstream_timeout",
            UpstreamRejected { code, .. } => return code.as_deref(),
            NotFound { .. } => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            AdminUnauthorized => "invalid_admin_token",
        })
    }

    /// OpenAI's `error.type`.
    pub fn kind(&self) -> &str {
        use GatewayError::*;
        match self {
            InvalidRequest { .. }
            | ModelNotFound(_)
            | BodyTooLarge { .. }
            | ContentFilter { .. }
            | NotFound { .. }
            | MethodNotAllowed(_) => "invalid_request_error",
            InvalidApiKey(_) | AdminUnauthorized => "authentication_error",
            ModelNotAllowed { .. } => "permission_error",
            RateLimited { .. } => "rate_limit_error",
            InsufficientQuota(_) => "insufficient_quota",
            PolicyError { .. } => "policy_error",
            UpstreamError(_) | UpstreamTimeout(_) => "upstream_error",
            UpstreamRejected { kind, .. } => kind,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. }
            | GatewayError::UpstreamRejected { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound(_) | GatewayError::ModelNotAllowed { .. } => Some("model"),
            _ => None,
        }
    }

    /// The JSON body `{"error": {message, type, param, code}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    /// Extra headers this error carries (`retry-after`, `x-weir-policy`).
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        match self {
            GatewayError::RateLimited { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                vec![("retry-after", HeaderValue::from(secs))]
            }
            GatewayError::ContentFilter { policy, .. }
            | GatewayError::PolicyError { policy, .. } => HeaderValue::from_str(policy)
                .map(|v| vec![("x-weir-policy", v)])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The serialized body.
    pub fn body_bytes(&self) -> Bytes {
        Bytes::from(self.body().to_string())
    }
}
