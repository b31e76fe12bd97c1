//! Listeners, connections and shutdown.
//!
//! Two listeners: the client API and the admin API (loopback by default).
//! Every connection is served by hyper-util's auto builder (HTTP/1.1 and
//! HTTP/2), with TCP_NODELAY and a header-read timeout against clients that
//! trickle their headers. SIGTERM or SIGINT stops accepting, lets in-flight
//! requests and streams finish for up to `shutdown_grace_ms`, then returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::admin;
use crate::config::ServerConfig;
use crate::gateway::Gateway;

/// Which API a connection came in on.
#[derive(Debug, Clone, Copy)]
enum Api {
    Client,
    Admin,
}

/// Bind both listeners, serve until a shutdown signal, drain, return.
pub async fn run(gw: Arc<Gateway>) -> anyhow::Result<()> {
    let config = gw.config();
    let server = &config.config.server;
    let client = TcpListener::bind(server.listen_addr())
        .await
        .with_context(|| format!("cannot listen on {}", server.listen))?;
    let admin = TcpListener::bind(server.admin_addr())
        .await
        .with_context(|| format!("cannot listen on {}", server.admin_listen))?;
    let listen = client.local_addr()?;
    let admin_listen = admin.local_addr()?;

    let builder = connection_builder(server);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let upkeep = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                gw.metrics_upkeep();
            }
        })
    };
    crate::gateway::reload::spawn_watcher(&gw);
    crate::gateway::reload::spawn_sighup(&gw);
    gw.set_ready(true);
    info!(listen = %listen, admin = %admin_listen, "listening");

    loop {
        let (accepted, api) = tokio::select! {
            accepted = client.accept() => (accepted, Api::Client),
            accepted = admin.accept() => (accepted, Api::Admin),
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => serve_connection(&gw, &builder, &graceful, stream, peer, api),
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    drop(client);
    drop(admin);
    upkeep.abort();
    gw.set_ready(false);
    let grace = Duration::from_millis(server.shutdown_grace_ms);
    info!(
        connections = graceful.count(),
        grace_ms = server.shutdown_grace_ms,
        "draining"
    );
    tokio::select! {
        () = graceful.shutdown() => info!("drained"),
        () = tokio::time::sleep(grace) => warn!("grace period over; closing the remaining connections"),
    }
    gw.ledger().flush().await;
    info!("exiting");
    Ok(())
}

/// How every client and admin connection is served: HTTP/1.1 or HTTP/2,
/// keep-alive, and `server.header_read_timeout_ms` against slow clients.
pub fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(server.header_read_timeout_ms))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

fn serve_connection(
    gw: &Arc<Gateway>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    api: Api,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    let gw = gw.clone();
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let gw = gw.clone();
            async move {
                Ok::<_, std::convert::Infallible>(match api {
                    Api::Client => gw.handle(req).await,
                    Api::Admin => admin::handle(&gw, req).await,
                })
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(connection).await {
            debug!(peer = %peer, error = %e, "connection ended with an error");
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the gateway with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
