//! The upstream HTTP client: hyper's connection API, rustls, and a
//! keep-alive pool of our own.
//!
//! Connections are made by hyper-util's `HttpConnector` wrapped in
//! hyper-rustls (TLS for `https`, ALPN picks HTTP/2 or HTTP/1.1) and driven
//! by hyper's `client::conn` (one task per connection). TLS trusts the
//! Mozilla roots bundled with weir and, when `SSL_CERT_FILE` names a PEM
//! file, the certificates in it (a private CA in front of a self-hosted
//! model server). The pool is a list of idle HTTP/1.1 senders per origin,
//! taken last-in first-out, and one shared sender per origin for HTTP/2.
//!
//! Why not hyper-util's `legacy::Client`: sending a request through it cost
//! 13.8k instructions per request in the gateway, 4.0k through this one
//! (callgrind, `bench/instructions.sh`; a keyed request 122.5k → 113.0k):
//! its checkout future was raced against a lazily built connect future,
//! its pool key of cloned URI parts hashed with SipHash, the `Host` header
//! written with `format!` and the URI's port parsed on every request, a
//! connection-info extension added to every response. Here a request
//! costs an uncontended lock, a lookup, and the `Host` value computed when
//! the origin was first seen.
//!
//! What it keeps from the legacy client's behaviour: a request that found a
//! reused connection already closed before the request was written is sent
//! again on another (the upstream closed an idle keep-alive connection); a
//! connection goes back to the pool only once its response body was read to
//! the end, or its stream's own end marker arrived ([`UpstreamBody::finish`]);
//! a body dropped early closes it; idle connections older than
//! [`IDLE_TIMEOUT`] are closed when next seen.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;
use tower_service::Service as _;
use tracing::{debug, info};

/// Idle connections older than this are closed instead of reused (servers
/// close theirs after 5 s to a few minutes; a request on a connection the
/// server just closed is sent again on another, see [`HttpClient::request`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Swept at most this often: closed and expired idle connections are
/// dropped from an origin's list when a connection goes back to it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Names a PEM file of certificates to trust besides the bundled roots.
pub const CA_FILE_ENV: &str = "SSL_CERT_FILE";

/// Add the certificates in the PEM file at `path` to `roots`; how many.
/// Ones webpki cannot use are skipped (system bundles carry a few), but a
/// file with none usable is an error.
fn add_pem_roots(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> anyhow::Result<usize> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_file_iter(path)?.collect::<Result<Vec<_>, _>>()?;
    let (added, skipped) = roots.add_parsable_certificates(certs);
    if skipped > 0 {
        tracing::warn!(file = %path.display(), skipped, "some certificates in {CA_FILE_ENV} cannot be used as roots");
    }
    anyhow::ensure!(added > 0, "no usable certificate in the file");
    Ok(added)
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URI has no scheme or host, or a scheme other than http(s).
    #[error("cannot send to `{0}`: not an absolute http(s) URL")]
    Uri(Uri),
    /// TCP or TLS connect failed.
    #[error("cannot connect")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP handshake failed.
    #[error("HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
    /// The request could not be sent, or the connection failed before the
    /// response's headers.
    #[error("request failed")]
    Send(#[source] hyper::Error),
}

/// The shared upstream client (cheap to clone).
#[derive(Clone)]
pub struct HttpClient(Arc<Shared>);

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("origins", &self.0.origins.lock().len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    connector: HttpsConnector<HttpConnector>,
    origins: Mutex<HashMap<Origin, OriginPool, FxBuildHasher>>,
}

/// Where connections go: scheme and authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    authority: Authority,
}

struct OriginPool {
    /// `Host` for HTTP/1.1 requests: the host, and the port when it is not
    /// the scheme's default.
    host: Option<HeaderValue>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The origin's HTTP/2 connection, shared by every request.
    h2: Option<http2::SendRequest<Full<Bytes>>>,
    last_sweep: Instant,
}

struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
    /// The unread end of the last response (see [`UpstreamBody::finish`]).
    rest: Option<Incoming>,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        let ready = match self.rest {
            None => self.sender.is_ready(),
            Some(_) => !self.sender.is_closed(),
        };
        ready && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

/// A connection checked out for one request.
enum Conn {
    /// With the unread end of its last response.
    H1(http1::SendRequest<Full<Bytes>>, Option<Incoming>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl HttpClient {
    /// The gateway's client: TCP with `TCP_NODELAY` and keep-alive probes,
    /// TLS with the bundled roots plus those in [`CA_FILE_ENV`]'s file.
    pub fn from_env() -> anyhow::Result<HttpClient> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = std::env::var_os(CA_FILE_ENV) {
            let path = std::path::Path::new(&path);
            let added = add_pem_roots(&mut roots, path).with_context(|| {
                format!(
                    "cannot read trusted certificates from {CA_FILE_ENV}={}",
                    path.display()
                )
            })?;
            info!(file = %path.display(), certificates = added, "trusting extra roots from {CA_FILE_ENV}");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(HttpClient(Arc::new(Shared {
            connector,
            origins: Mutex::new(HashMap::default()),
        })))
    }

    /// Send `req` (an absolute `http` or `https` URI) and return the
    /// response once its headers arrived; its body is read from the
    /// connection as the caller polls it.
    pub async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let origin = origin(req.uri()).ok_or_else(|| ClientError::Uri(req.uri().clone()))?;
        loop {
            let (conn, host, reused) = self.checkout(&origin, req.uri()).await?;
            let absolute = req.uri().clone();
            let mut failed = match conn {
                Conn::H1(mut sender, rest) => {
                    if let Some(rest) = rest
                        && !settle(&mut sender, rest).await
                    {
                        continue;
                    }
                    if let Some(host) = host
                        && !req.headers().contains_key(HOST)
                    {
                        req.headers_mut().insert(HOST, host);
                    }
                    *req.uri_mut() = origin_form(&absolute);
                    match sender.try_send_request(req).await {
                        Ok(response) => {
                            let back = Some(Checkin {
                                client: self.clone(),
                                origin,
                                sender,
                            });
                            return Ok(response.map(|body| UpstreamBody::new(body, back)));
                        }
                        Err(e) => e,
                    }
                }
                Conn::H2(mut sender) => match sender.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(response.map(|body| UpstreamBody::new(body, None)));
                    }
                    Err(e) => e,
                },
            };
            match failed.take_message() {
                // Not written: the reused connection was closed under us.
                Some(mut unsent) if reused => {
                    debug!(error = %failed.error(), "a pooled connection was closed; sending again on another");
                    *unsent.uri_mut() = absolute;
                    req = unsent;
                }
                _ => return Err(ClientError::Send(failed.into_error())),
            }
        }
    }

    /// An idle connection to `origin`, or a new one; with the `Host` value
    /// and whether the connection served before.
    async fn checkout(
        &self,
        origin: &Origin,
        uri: &Uri,
    ) -> Result<(Conn, Option<HeaderValue>, bool), ClientError> {
        let host = {
            let mut origins = self.0.origins.lock();
            let pool = match origins.get_mut(origin) {
                Some(pool) => pool,
                None => origins
                    .entry(origin.clone())
                    .or_insert_with(|| OriginPool::new(origin)),
            };
            if let Some(h2) = &pool.h2 {
                if !h2.is_closed() {
                    return Ok((Conn::H2(h2.clone()), None, true));
                }
                pool.h2 = None;
            }
            // The newest idle connection: expired or closed means older ones
            // may be too, so the sweep drops them all.
            if let Some(newest) = pool.idle.last() {
                let now = Instant::now();
                if !newest.usable(now) {
                    pool.sweep(now);
                }
            }
            if let Some(idle) = pool.idle.pop() {
                return Ok((Conn::H1(idle.sender, idle.rest), pool.host.clone(), true));
            }
            pool.host.clone()
        };
        let conn = self.connect(origin, uri).await?;
        Ok((conn, host, false))
    }

    /// A new connection to `origin`; an HTTP/2 one is shared from now on.
    async fn connect(&self, origin: &Origin, uri: &Uri) -> Result<Conn, ClientError> {
        let mut connector = self.0.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::Connect)?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(ClientError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(ClientError::Handshake)?;
            drive(connection);
            if let Some(pool) = self.0.origins.lock().get_mut(origin) {
                pool.h2 = Some(sender.clone());
            }
            Ok(Conn::H2(sender))
        } else {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(ClientError::Handshake)?;
            drive(connection);
            Ok(Conn::H1(sender, None))
        }
    }

    /// Put an HTTP/1.1 connection whose response was read to the end back
    /// in its origin's idle list (once it is ready for the next request).
    fn checkin(&self, origin: Origin, mut sender: http1::SendRequest<Full<Bytes>>) {
        if sender.is_ready() {
            self.idle(origin, sender, None);
        } else if !sender.is_closed() {
            // The connection's task has not yet taken in the end of the
            // response; wait for it off the request's path.
            let client = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    client.idle(origin, sender, None);
                }
            });
        }
    }

    fn idle(
        &self,
        origin: Origin,
        sender: http1::SendRequest<Full<Bytes>>,
        rest: Option<Incoming>,
    ) {
        let now = Instant::now();
        let mut origins = self.0.origins.lock();
        if let Some(pool) = origins.get_mut(&origin) {
            if now.duration_since(pool.last_sweep) >= SWEEP_EVERY {
                pool.sweep(now);
            }
            pool.idle.push(Idle {
                sender,
                since: now,
                rest,
            });
        }
    }
}

impl OriginPool {
    fn new(origin: &Origin) -> OriginPool {
        let default_port = if origin.https { 443 } else { 80 };
        let host = match origin.authority.port_u16() {
            Some(port) if port != default_port => {
                format!("{}:{port}", origin.authority.host())
            }
            _ => origin.authority.host().to_string(),
        };
        OriginPool {
            host: HeaderValue::from_str(&host).ok(),
            idle: Vec::new(),
            h2: None,
            last_sweep: Instant::now(),
        }
    }

    /// Drop idle connections that are closed or expired.
    fn sweep(&mut self, now: Instant) {
        self.idle.retain(|idle| idle.usable(now));
        self.last_sweep = now;
    }
}

/// Run a connection's I/O in a task of its own until it closes.
fn drive(connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
}

fn origin(uri: &Uri) -> Option<Origin> {
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        _ => return None,
    };
    Some(Origin {
        https,
        authority: uri.authority()?.clone(),
    })
}

/// `/path?query` of an absolute URI, as HTTP/1.1 request lines want it.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// What is read of a response after its end marker (see
/// [`UpstreamBody::finish`]) before giving up on the connection: the next
/// request waits at most this long for the rest (normally there already)
/// before it opens a new connection instead.
const DRAIN_BYTES: usize = 64 << 10;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);

/// Sends a connection back to the pool when its response is read.
struct Checkin {
    client: HttpClient,
    origin: Origin,
    sender: http1::SendRequest<Full<Bytes>>,
}

/// An upstream response body. Read to the end (or [`finish`]ed), its
/// HTTP/1.1 connection goes back to the pool; dropped before that, the
/// connection is closed, which is how an upstream learns that a request
/// was cancelled (a client gone, a stream blocked by a guardrail).
///
/// [`finish`]: UpstreamBody::finish
pub struct UpstreamBody {
    /// `None` once handed to [`UpstreamBody::finish`].
    body: Option<Incoming>,
    back: Option<Checkin>,
    /// [`UpstreamBody::next_frame`]'s timer, made at its first wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// [`UpstreamBody::next_frame`] waited longer than its limit.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeout;

impl UpstreamBody {
    fn new(body: Incoming, back: Option<Checkin>) -> UpstreamBody {
        UpstreamBody {
            body: Some(body),
            back,
            idle: None,
        }
    }

    /// The next frame (`None` at the end of the body), or [`IdleTimeout`]
    /// when none arrived within `idle` of this call. One timer serves every
    /// read of the body: it is re-armed only when it fires before the
    /// current read's deadline (an earlier read ended in time), not
    /// registered and cancelled per read as `tokio::time::timeout` around
    /// each read would (~1k instructions per streamed chunk).
    pub async fn next_frame(
        &mut self,
        idle: Duration,
    ) -> Result<Option<Result<Frame<Bytes>, hyper::Error>>, IdleTimeout> {
        let deadline = tokio::time::Instant::now() + idle;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut *self).poll_frame(cx) {
                return Poll::Ready(Ok(frame));
            }
            let timer = self
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            loop {
                match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if tokio::time::Instant::now() >= deadline => {
                        return Poll::Ready(Err(IdleTimeout));
                    }
                    Poll::Ready(()) => timer.as_mut().reset(deadline),
                }
            }
        })
        .await
    }

    /// The reader has seen the stream's own end marker (`data: [DONE]`,
    /// `message_stop`) and reads no more: the connection goes back to the
    /// pool now. What remains of the HTTP response (the chunked body's
    /// terminator, usually already here) is read by the request that takes
    /// the connection next, before it sends; it is not waited for here, so
    /// the client's stream ends at once.
    pub fn finish(&mut self) {
        let (Some(mut body), Some(back)) = (self.body.take(), self.back.take()) else {
            return;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match poll_drain(&mut body, &mut 0, &mut cx) {
            Poll::Ready(true) => back.client.checkin(back.origin, back.sender),
            Poll::Ready(false) => {}
            Poll::Pending => back.client.idle(back.origin, back.sender, Some(body)),
        }
    }
}

/// Read and drop the rest of `body`, counting into `drained`: `Ready(true)`
/// at its end, `Ready(false)` when it failed or ran past [`DRAIN_BYTES`]
/// (the connection is not worth keeping).
fn poll_drain(body: &mut Incoming, drained: &mut usize, cx: &mut Context<'_>) -> Poll<bool> {
    loop {
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => return Poll::Ready(true),
            Some(Ok(frame)) => {
                *drained += frame.data_ref().map_or(0, Bytes::len);
                if *drained > DRAIN_BYTES {
                    return Poll::Ready(false);
                }
            }
            Some(Err(_)) => return Poll::Ready(false),
        }
    }
}

/// Read the rest of a finished response (see [`UpstreamBody::finish`]),
/// then wait for the connection to take the next request; `false` when
/// the connection is not usable.
async fn settle(sender: &mut http1::SendRequest<Full<Bytes>>, mut rest: Incoming) -> bool {
    let mut drained = 0;
    let read = std::future::poll_fn(|cx| poll_drain(&mut rest, &mut drained, cx));
    let settled = async { read.await && sender.ready().await.is_ok() };
    matches!(tokio::time::timeout(DRAIN_TIMEOUT, settled).await, Ok(true))
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(back) = self.back.take() {
                    back.client.checkin(back.origin, back.sender);
                }
            }
            // A failed read leaves the connection unusable.
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_keeps_path_and_query() {
        let uri: Uri = "https://example.com:8443/v1/chat?x=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/v1/chat?x=1");
        let bare: Uri = "http://example.com".parse().unwrap();
        assert_eq!(origin_form(&bare), "/");
    }

    #[test]
    fn host_names_the_port_only_when_it_is_not_the_default() {
        let host = |url: &str| {
            let uri: Uri = url.parse().unwrap();
            OriginPool::new(&origin(&uri).unwrap()).host.unwrap()
        };
        assert_eq!(host("http://127.0.0.1:18000/v1"), "127.0.0.1:18000");
        assert_eq!(host("http://example.com:80/v1"), "example.com");
        assert_eq!(host("https://api.openai.com/v1"), "api.openai.com");
        assert_eq!(host("https://example.com:80/v1"), "example.com:80");
        assert_eq!(host("http://user:secret@example.com:81/"), "example.com:81");
    }

    #[test]
    fn only_absolute_http_urls_have_an_origin() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert!(origin(&uri("/v1/chat")).is_none());
        assert!(origin(&uri("ftp://example.com/")).is_none());
        assert_eq!(
            origin(&uri("HTTP://Example.com:81/a")),
            origin(&uri("http://example.com:81/b"))
        );
    }
}
