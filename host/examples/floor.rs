//! The floor under weir's CPU per request: the parts of weir's forwarding
//! path that are not weir's own work, and nothing else.
//!
//! The same allocator, tokio runtime, connection builder
//! ([`weir::server::connection_builder`]: HTTP/1.1 and HTTP/2, header-read
//! timeout, keep-alive) and pooled upstream client
//! ([`weir::providers::HttpClient`]) as `weir serve`, relaying each request
//! to one upstream and its response back the way weir does: a stream event
//! by event, a whole answer read whole and then written. No key check, no
//! JSON, no token counts, no usage check, no metrics or logs, no `model`
//! rewrite. `bench/run.sh` runs it as the `hyper floor` row: what weir's
//! stack costs before weir does anything, next to nginx.
//!
//!     cargo run --profile dist -p weir --example floor -- 127.0.0.1:18008 http://127.0.0.1:18000

#![forbid(unsafe_code)]

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use weir::config::ServerConfig;
use weir::providers::HttpClient;

#[global_allocator]
static ALLOCATOR: weir::alloc::Allocator = weir::alloc::Allocator;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: floor LISTEN_ADDR UPSTREAM_ORIGIN");
    };
    let upstream: &'static str = upstream.trim_end_matches('/').to_string().leak();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: String, upstream: &'static str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let client = HttpClient::from_env()?;
    // `weir serve`'s defaults: its connection options, its body limit.
    let server = ServerConfig::default();
    let builder = weir::server::connection_builder(&server);
    let max_body_bytes = server.max_body_bytes;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |req| relay(client.clone(), upstream, max_body_bytes, req));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Forward `req` to `upstream` with its path, content type and body; answer
/// with the upstream's status, content type and body, streamed.
async fn relay(
    client: HttpClient,
    upstream: &'static str,
    max_body_bytes: usize,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, max_body_bytes).collect().await else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = Request::builder()
        .method(parts.method)
        .uri(format!("{upstream}{path}"));
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        forward = forward.header(CONTENT_TYPE, content_type);
    }
    let Ok(forward) = forward.body(Full::new(body.to_bytes())) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let Ok(response) = client.request(forward).await else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    let (parts, body) = response.into_parts();
    let streamed = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    // As weir does: a stream is relayed event by event, a whole answer
    // read whole first and written in one go.
    let body = if streamed {
        body.boxed_unsync()
    } else {
        match body.collect().await {
            Ok(whole) => Full::new(whole.to_bytes())
                .map_err(|never| match never {})
                .boxed_unsync(),
            Err(_) => return Ok(status(StatusCode::BAD_GATEWAY)),
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        out.headers_mut().insert(CONTENT_TYPE, content_type.clone());
    }
    Ok(out)
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = code;
    response
}
