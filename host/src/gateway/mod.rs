//! The client API (SPEC §4): routing, shared state and the per-request record.
//!
//! [`Gateway`] is built once from a validated [`Config`] with everything the
//! hot path needs precomputed (key digests, model → targets, prices), then
//! shared behind an `Arc` by every connection. Each route lives in its own
//! module; `chat` holds the main request path, top to bottom.

mod chat;
mod embeddings;
pub mod policies;
pub mod reload;
mod stream;

/// The response headers weir adds, as constants: a header name given as a
/// string is parsed again on every insert.
pub(crate) mod header {
    use http::HeaderName;

    pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-weir-request-id");
    pub const PROVIDER: HeaderName = HeaderName::from_static("x-weir-provider");
    pub const COST_USD: HeaderName = HeaderName::from_static("x-weir-cost-usd");
    pub const POLICY: HeaderName = HeaderName::from_static("x-weir-policy");
}

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustc_hash::FxHashMap;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::auth::{Caller, KeyStore};
use crate::config::{CircuitConfig, Strategy};
use crate::config::{Config, PriceConfig};
use crate::error::GatewayError;
use crate::metrics;
use crate::policy::{PolicyRuntime, RequestContext, RouteCandidate};
use crate::pricing::PriceTable;
use crate::providers::{AttemptError, ChatReply, HttpClient, Provider, Providers};
use crate::routing::{
    self,
    health::{HealthRegistry, InFlight, Outcome, TargetHealth},
};
use crate::state::Ledger;
use arc_swap::ArcSwap;
use policies::PolicySet;

/// Every response body the gateway sends.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The OpenAI-shaped response for an error.
pub fn error_response(error: &GatewayError) -> Response<Body> {
    let mut response = json_response(error.status(), error.body_bytes());
    for (name, value) in error.headers() {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Prices in micro-USD per token (numerically equal to USD per million).
#[derive(Debug, Clone, Copy, Default)]
pub struct Price {
    input: f64,
    cached_input: f64,
    output: f64,
}

impl Price {
    fn from_config(p: Option<&PriceConfig>) -> Price {
        p.map_or_else(Price::default, |p| Price {
            input: p.input_per_mtok,
            cached_input: p.cached_input_per_mtok.unwrap_or(p.input_per_mtok),
            output: p.output_per_mtok,
        })
    }

    /// Integer micro-USD for a usage, rounded to the nearest.
    pub fn micro_usd(&self, input: u64, cached: u64, output: u64) -> u64 {
        let cached = cached.min(input);
        let exact = (input - cached) as f64 * self.input
            + cached as f64 * self.cached_input
            + output as f64 * self.output;
        exact.round() as u64
    }
}

/// One place a model can be served.
#[derive(Debug)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub model: String,
    /// `provider/model`, as `x-weir-provider` shows it.
    pub label: String,
    /// `label` as that header's value (made once, not per response).
    pub label_header: Option<HeaderValue>,
    pub weight: f64,
    /// What tokens cost here (the target's price, else the model's).
    pub price: Price,
    pub health: Arc<TargetHealth>,
}

/// A configured model.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub targets: Vec<Arc<Target>>,
    /// The model's price, for estimates before a target is chosen.
    pub price: Price,
    pub max_output_tokens: u64,
    strategy: Strategy,
    max_attempts: u32,
    backoff: (Duration, Duration),
    deadline: Duration,
    circuit: CircuitConfig,
}

/// What a client request is recorded as when it ends: one log line and the
/// request metrics. Never holds a body or a key.
#[derive(Debug)]
pub struct RequestLog {
    pub id: String,
    route: &'static str,
    start: Instant,
    key: Option<String>,
    model: String,
    provider: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cost_micro_usd: u64,
    /// Ownership moved to a streaming body that will finish it.
    handed_off: bool,
}

/// `req_` and 24 random hex digits (written by hand: `format!` is a tenth
/// of a request's bookkeeping).
fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (u128::from(fastrand::u64(..)) << 32) | u128::from(fastrand::u32(..));
    let mut id = String::with_capacity(28);
    id.push_str("req_");
    for digit in (0..24).rev() {
        id.push(char::from(HEX[((bits >> (4 * digit)) & 0xf) as usize]));
    }
    id
}

impl RequestLog {
    fn new(route: &'static str) -> Self {
        RequestLog {
            id: request_id(),
            route,
            start: Instant::now(),
            key: None,
            model: String::new(),
            provider: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            handed_off: false,
        }
    }

    /// Move the record into a stream that finishes it later.
    fn hand_off(&mut self) -> RequestLog {
        let mut moved = RequestLog::new(self.route);
        std::mem::swap(self, &mut moved);
        self.handed_off = true;
        self.id.clone_from(&moved.id);
        moved
    }

    fn finish(&self, status: u16, error: Option<&str>) {
        let elapsed = self.start.elapsed();
        metrics::request_finished(self.route, &self.model, status, elapsed);
        let key = self.key.as_deref().unwrap_or(crate::state::ANONYMOUS);
        if self.input_tokens + self.output_tokens > 0 {
            metrics::tokens(key, &self.model, self.input_tokens, self.output_tokens);
        }
        if self.cost_micro_usd > 0 {
            metrics::cost(key, &self.model, self.cost_micro_usd);
        }
        info!(
            request_id = %self.id,
            route = self.route,
            key = self.key.as_deref().unwrap_or("-"),
            model = %self.model,
            provider = self.provider.as_deref().unwrap_or("-"),
            status,
            error = error.unwrap_or("-"),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            input_tokens = self.input_tokens,
            output_tokens = self.output_tokens,
            cost_usd = self.cost_micro_usd as f64 / 1e6,
            "request"
        );
    }
}

/// One kind of upstream call, tried target by target by [`Gateway::forward`].
trait UpstreamCall {
    type Reply;
    fn call(
        &self,
        client: &HttpClient,
        target: &Target,
    ) -> impl Future<Output = Result<Self::Reply, AttemptError>> + Send;
}

/// A chat completion.
struct ChatCall<'a>(&'a crate::chat::ChatRequest);

impl UpstreamCall for ChatCall<'_> {
    type Reply = ChatReply;
    async fn call(&self, client: &HttpClient, target: &Target) -> Result<ChatReply, AttemptError> {
        target.provider.chat(client, self.0, &target.model).await
    }
}

/// An embeddings request.
struct EmbeddingsCall<'a>(&'a serde_json::Map<String, Value>);

impl UpstreamCall for EmbeddingsCall<'_> {
    type Reply = Value;
    async fn call(&self, client: &HttpClient, target: &Target) -> Result<Value, AttemptError> {
        target
            .provider
            .embeddings(client, self.0, &target.model)
            .await
    }
}

/// What one config makes of the gateway: keys, models, prices, targets.
#[derive(Debug)]
pub struct ConfigState {
    pub config: Config,
    keys: KeyStore,
    models: FxHashMap<String, Arc<Model>>,
    model_order: Vec<String>,
    admin_token: Option<[u8; 32]>,
}

impl ConfigState {
    /// Precompute everything the request path needs from `config`;
    /// targets share their health with earlier configs through `health`.
    pub fn new(config: Config, health: &HealthRegistry) -> ConfigState {
        let providers = Providers::from_config(&config);
        // Validated at load: a bad file never gets here.
        let table = PriceTable::for_config(&config).unwrap_or_else(|_| PriceTable::embedded());
        let mut models = FxHashMap::default();
        let mut model_order = Vec::new();
        for m in &config.models {
            // The model's price, else the price table's for its first target.
            let first = m
                .targets
                .first()
                .map(|t| t.model.as_str())
                .unwrap_or_default();
            let price_config = m.price.or_else(|| table.lookup(first));
            if price_config.is_none() && m.pricing.is_none() {
                warn!(model = %m.name, "no price configured or known for this model: its requests cost $0");
            }
            let price = Price::from_config(price_config.as_ref());
            let targets: Vec<Arc<Target>> = m
                .targets
                .iter()
                .filter_map(|t| {
                    let label = format!("{}/{}", t.provider, t.model);
                    Some(Arc::new(Target {
                        provider: providers.get(&t.provider)?.clone(),
                        model: t.model.clone(),
                        health: health.get(&label),
                        label_header: HeaderValue::from_str(&label).ok(),
                        label,
                        weight: t.weight,
                        // The target's price, else the model's, else the table's.
                        price: match (t.price, m.price) {
                            (Some(p), _) | (None, Some(p)) => Price::from_config(Some(&p)),
                            (None, None) => table
                                .lookup(&t.model)
                                .map_or(price, |p| Price::from_config(Some(&p))),
                        },
                    }))
                })
                .collect();
            model_order.push(m.name.clone());
            models.insert(
                m.name.clone(),
                Arc::new(Model {
                    name: m.name.clone(),
                    max_attempts: m.max_attempts.unwrap_or(targets.len() as u32).max(1),
                    targets,
                    price,
                    max_output_tokens: m.max_output_tokens,
                    strategy: m.strategy,
                    backoff: (
                        Duration::from_millis(m.retry_backoff_ms),
                        Duration::from_millis(m.retry_max_backoff_ms),
                    ),
                    deadline: Duration::from_millis(m.deadline_ms),
                    circuit: m.circuit,
                }),
            );
        }
        let admin_token = config
            .server
            .admin_token_env
            .as_deref()
            .and_then(|var| std::env::var(var).ok())
            .map(|t| crate::auth::sha256(t.as_bytes()));
        let keys = KeyStore::from_config(&config);
        if keys.is_open() {
            warn!("no [[keys]] configured: the gateway is open to anyone who can reach it");
        }
        ConfigState {
            config,
            keys,
            models,
            model_order,
            admin_token,
        }
    }

    /// The model a caller asked for: 404 if unknown (even for a restricted
    /// key), 403 if the key may not use it.
    fn model_for(&self, caller: &Caller, name: &str) -> Result<&Arc<Model>, GatewayError> {
        let model = self
            .models
            .get(name)
            .ok_or_else(|| GatewayError::ModelNotFound(name.to_string()))?;
        if !caller.allows(name) {
            return Err(GatewayError::ModelNotAllowed {
                key: caller.name().unwrap_or_default().to_string(),
                model: name.to_string(),
            });
        }
        Ok(model)
    }
}

/// What a request runs against, start to finish: one config's state and
/// one policy set. Replaced whole by reloads; a request keeps the snapshot
/// it started with.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<ConfigState>,
    pub policies: Arc<PolicySet>,
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    client: HttpClient,
    ledger: Arc<dyn Ledger>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ready: AtomicBool,
    started: u64,
    runtime: Arc<PolicyRuntime>,
    /// Serializes reloads (file watcher, admin API, SIGHUP).
    reload_lock: tokio::sync::Mutex<()>,
    /// The last failed reload per policy, for `/admin/policies`.
    last_errors: parking_lot::Mutex<HashMap<String, String>>,
    /// Folders the file watcher watches.
    watcher: parking_lot::Mutex<reload::Watcher>,
    /// Every target's health, across config reloads.
    health: HealthRegistry,
}

impl Gateway {
    /// Build from a validated config; `metrics` renders `/metrics`.
    pub fn new(
        config: Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        runtime: Arc<PolicyRuntime>,
        policies: PolicySet,
        ledger: Arc<dyn Ledger>,
    ) -> anyhow::Result<Arc<Gateway>> {
        for entry in policies.entries.values() {
            reload::record_generation(entry);
        }
        let health = HealthRegistry::default();
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::new(ConfigState::new(config, &health)),
                policies: Arc::new(policies),
            }),
            health,
            client: HttpClient::from_env()?,
            ledger,
            metrics,
            ready: AtomicBool::new(false),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            runtime,
            reload_lock: tokio::sync::Mutex::new(()),
            last_errors: parking_lot::Mutex::default(),
            watcher: parking_lot::Mutex::default(),
        }))
    }

    /// What a request starting now runs against.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The config in force.
    pub fn config(&self) -> Arc<ConfigState> {
        self.snapshot.load().config.clone()
    }

    /// The usage and limits store.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Mark the gateway ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// `/healthz` and `/readyz`, answered on both listeners without a token.
    pub fn probe(&self, path: &str) -> Option<Response<Body>> {
        match path {
            "/healthz" => Some(json_response(StatusCode::OK, r#"{"status":"ok"}"#)),
            "/readyz" if self.ready.load(Ordering::Acquire) => {
                Some(json_response(StatusCode::OK, r#"{"status":"ready"}"#))
            }
            "/readyz" => Some(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"not ready"}"#,
            )),
            _ => None,
        }
    }

    /// Fold recorded histogram samples into their buckets. The exporter
    /// buffers every sample until this runs, so it must run regularly even
    /// when nobody scrapes `/metrics`, or memory grows with traffic.
    pub fn metrics_upkeep(&self) {
        if let Some(h) = &self.metrics {
            h.run_upkeep();
        }
    }

    /// The Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default()
    }

    /// Does `headers` carry the admin token (or is none configured)?
    pub fn admin_authorized(&self, headers: &http::HeaderMap) -> bool {
        match &self.snapshot.load().config.admin_token {
            None => true,
            Some(want) => crate::auth::bearer(headers)
                .is_some_and(|t| crate::auth::sha256(t.as_bytes()) == *want),
        }
    }

    /// Serve one client-listener request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if let Some(probe) = self.probe(req.uri().path()) {
            return probe;
        }
        let route = match req.uri().path() {
            "/v1/chat/completions" => "chat",
            "/v1/embeddings" => "embeddings",
            "/v1/models" => "models",
            p if p.starts_with("/v1/models/") => "models",
            _ => "other",
        };
        let mut log = RequestLog::new(route);
        let snap = self.snapshot();
        metrics::in_flight(1.0);
        let result = match (req.method(), route) {
            (&Method::POST, "chat") => chat::handle(&self, &snap, req, &mut log).await,
            (&Method::POST, "embeddings") => embeddings::handle(&self, &snap, req, &mut log).await,
            (&Method::GET, "models") => self.models_route(&snap.config, &req),
            (method, "other") => Err(GatewayError::NotFound {
                method: method.to_string(),
                path: req.uri().path().to_string(),
            }),
            (method, _) => Err(GatewayError::MethodNotAllowed(method.to_string())),
        };
        metrics::in_flight(-1.0);
        let mut response = match result {
            Ok(response) => {
                if !log.handed_off {
                    log.finish(response.status().as_u16(), None);
                }
                response
            }
            Err(error) => {
                log.finish(error.status().as_u16(), error.code());
                error_response(&error)
            }
        };
        if let Ok(id) = HeaderValue::from_str(&log.id) {
            response.headers_mut().insert(header::REQUEST_ID, id);
        }
        response
    }

    /// `GET /v1/models` and `GET /v1/models/{id}`: the models this caller may use.
    fn models_route(
        &self,
        state: &ConfigState,
        req: &Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        let caller = state.keys.authenticate(req.headers())?;
        let entry = |name: &str| json!({"id": name, "object": "model", "created": self.started, "owned_by": "weir"});
        if let Some(id) = req.uri().path().strip_prefix("/v1/models/") {
            state.model_for(&caller, id)?;
            return Ok(json_response(StatusCode::OK, entry(id).to_string()));
        }
        let data: Vec<Value> = state
            .model_order
            .iter()
            .filter(|name| caller.allows(name))
            .map(|name| entry(name))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            json!({"object": "list", "data": data}).to_string(),
        ))
    }

    /// The order in which to try `model`'s targets for this request: its
    /// router policy's answer (configured order if the router fails), else
    /// its strategy.
    async fn plan(
        &self,
        snap: &Snapshot,
        model: &Model,
        request: Option<(&crate::chat::ChatRequest, &RequestContext)>,
        streaming: bool,
    ) -> Vec<usize> {
        let now = Instant::now();
        if let (Some(router), Some((chat, ctx))) = (snap.policies.router(&model.name), request) {
            let candidates: Vec<RouteCandidate> = model
                .targets
                .iter()
                .map(|t| {
                    let f = t.health.figures(now);
                    RouteCandidate {
                        provider: t.provider.name.clone(),
                        model: t.model.clone(),
                        healthy: f.healthy,
                        latency_ewma_us: f.latency_ewma_us,
                        ttft_ewma_us: f.ttft_ewma_us,
                        error_rate_permille: f.error_rate_permille,
                        in_flight: f.in_flight,
                        input_micro_usd_per_mtok: (t.price.input * 1e6).round() as u64,
                        output_micro_usd_per_mtok: (t.price.output * 1e6).round() as u64,
                    }
                })
                .collect();
            match self.runtime.route(router, ctx, chat, &candidates).await {
                Ok(order) if !order.is_empty() => return order,
                Ok(_) => {
                    warn!(request_id = %ctx.request_id, policy = %router.name, "the router chose no target; using the configured order")
                }
                Err(e) => {
                    ::metrics::counter!("weir_policy_errors_total", "policy" => router.name.clone(), "kind" => "router").increment(1);
                    warn!(request_id = %ctx.request_id, policy = %router.name, error = %e, "the router failed; using the configured order");
                }
            }
            return (0..model.targets.len()).collect();
        }
        let candidates: Vec<routing::Candidate<'_>> = model
            .targets
            .iter()
            .map(|t| routing::Candidate {
                weight: t.weight,
                health: &t.health,
            })
            .collect();
        routing::order(model.strategy, &candidates, streaming, now)
    }

    /// Walk the plan until a target answers. Failover-worthy failures
    /// (connect, timeout, 401/403/429/5xx, malformed) move on, skipping
    /// targets whose circuit is open or that are cooling down (they are
    /// tried last, if attempts remain); the caller's own mistakes (400, 404,
    /// 422…) are relayed at once. Rounds repeat with backoff while
    /// `max_attempts` and the deadline allow.
    async fn forward<C: UpstreamCall>(
        &self,
        model: &Model,
        order: &[usize],
        call: C,
        streaming: bool,
        log: &RequestLog,
    ) -> Result<(Arc<Target>, C::Reply, InFlight), GatewayError> {
        let started = Instant::now();
        let deadline = started + model.deadline;
        let mut attempts = 0u32;
        let mut round = 0u32;
        let mut failures = Vec::new();
        let mut all_timeouts = true;
        'rounds: loop {
            // First the admitted targets in plan order; then, as a last
            // resort, the ones skipped for an open circuit or a cooldown.
            let mut pass: Vec<usize> = order.to_vec();
            let mut last_resort = false;
            loop {
                let mut skipped = Vec::new();
                for i in pass {
                    let Some(target) = model.targets.get(i) else {
                        continue;
                    };
                    if attempts >= model.max_attempts || Instant::now() >= deadline {
                        break 'rounds;
                    }
                    if !last_resort && !target.health.admit(Instant::now(), &model.circuit) {
                        skipped.push(i);
                        continue;
                    }
                    if attempts > 0 {
                        metrics::failover(&model.name);
                    }
                    attempts += 1;
                    let in_flight = target.health.enter();
                    let t0 = Instant::now();
                    let result = call.call(&self.client, target).await;
                    let elapsed = t0.elapsed();
                    let now = Instant::now();
                    // A reply, or the upstream's verdict on the request
                    // itself (a healthy target either way): the answer.
                    let answered = match result {
                        Ok(reply) => Ok(Ok(reply)),
                        Err(AttemptError::Rejected(error)) => Ok(Err(error)),
                        Err(error) => Err(error),
                    };
                    match answered {
                        Ok(answer) => {
                            target.health.record(
                                Outcome::Ok {
                                    latency: elapsed,
                                    streaming,
                                },
                                &model.circuit,
                                now,
                            );
                            let outcome = if answer.is_ok() { "ok" } else { "rejected" };
                            metrics::upstream_attempt(
                                &target.provider.name,
                                &target.model,
                                outcome,
                                elapsed,
                            );
                            return answer.map(|reply| (target.clone(), reply, in_flight));
                        }
                        Err(error) => {
                            metrics::upstream_attempt(
                                &target.provider.name,
                                &target.model,
                                error.reason(),
                                elapsed,
                            );
                            let outcome = match &error {
                                // Without retry-after: fail over, no cooldown.
                                AttemptError::RateLimited(wait, _) => {
                                    Outcome::Throttled(wait.unwrap_or(Duration::ZERO))
                                }
                                _ => Outcome::Failed,
                            };
                            if target.health.record(outcome, &model.circuit, now) {
                                metrics::circuit_opened(&target.label);
                                warn!(target = %target.label, cooldown_ms = model.circuit.cooldown_ms, "circuit opened");
                            }
                            warn!(
                                request_id = %log.id,
                                target = %target.label,
                                reason = %error.describe(),
                                "upstream attempt failed"
                            );
                            all_timeouts &= matches!(error, AttemptError::Timeout);
                            failures.push(format!("{}: {}", target.label, error.describe()));
                        }
                    }
                }
                if last_resort || skipped.is_empty() {
                    break;
                }
                last_resort = true;
                pass = skipped;
            }
            if attempts >= model.max_attempts {
                break;
            }
            round += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(routing::backoff(round, model.backoff.0, model.backoff.1).min(left))
                .await;
        }
        if failures.is_empty() {
            failures.push("no target could be tried before the deadline".into());
            all_timeouts = true;
        }
        let message = format!(
            "every target of model `{}` failed: {}",
            model.name,
            failures.join("; ")
        );
        Err(if all_timeouts {
            GatewayError::UpstreamTimeout(message)
        } else {
            GatewayError::UpstreamError(message)
        })
    }
}

/// Read a client body up to `limit` bytes (413 beyond).
async fn read_client_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Err(_) => Err(GatewayError::InvalidRequest {
            message: "timed out reading the request body".into(),
            param: None,
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Ok(Err(e)) => Err(GatewayError::InvalidRequest {
            message: format!("could not read the request body: {e}"),
            param: None,
        }),
    }
}

/// Format micro-USD as a USD decimal for headers.
fn usd(micro: u64) -> String {
    format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_req_and_24_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64).map(|_| request_id()).collect();
        for id in &ids {
            let digits = id.strip_prefix("req_").unwrap();
            assert_eq!(digits.len(), 24, "{id}");
            assert!(
                digits
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position takes more than one value.
        for i in 4..28 {
            let at: std::collections::HashSet<u8> = ids.iter().map(|id| id.as_bytes()[i]).collect();
            assert!(at.len() > 1, "digit {i} never changes");
        }
    }

    #[test]
    fn price_rounds_to_micro_usd() {
        let p = Price::from_config(Some(&PriceConfig {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
            cached_input_per_mtok: Some(0.075),
        }));
        // 1000 * 0.15 + 500 * 0.60 = 450 µUSD.
        assert_eq!(p.micro_usd(1000, 0, 500), 450);
        // 600 * 0.15 + 400 * 0.075 + 0 = 120.
        assert_eq!(p.micro_usd(1000, 400, 0), 120);
        // 3 * 0.15 = 0.45 → 0; 4 * 0.15 = 0.6 → 1.
        assert_eq!(p.micro_usd(3, 0, 0), 0);
        assert_eq!(p.micro_usd(4, 0, 0), 1);
        assert_eq!(usd(1_234_567), "1.234567");
        assert_eq!(usd(450), "0.000450");
    }
}
