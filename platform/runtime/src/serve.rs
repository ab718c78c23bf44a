//! Listening, serving and stopping: one shutdown signal (SIGTERM or Ctrl-C)
//! stops accepting, lets in-flight requests finish, then waits for the
//! services' tasks (listeners, timers) and flushes their outbox relays.

use std::time::Duration;

use shared::shutdown::{self, Shutdown};

use crate::edge::{Fallback, edge};
use crate::service::Running;

/// Listens on `host:port`, and returns with it a shutdown signal that fires
/// on SIGTERM or Ctrl-C.
pub async fn listen(
    host: &str,
    port: u16,
) -> Result<(tokio::net::TcpListener, Shutdown), Box<dyn std::error::Error>> {
    let addr = format!("{host}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let (trigger, signal) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.fire();
    });
    Ok((listener, signal))
}

/// Serves `router` behind the HTTP edge (with `fallback` for what no route
/// takes) on `listener` until `shutdown` fires, then stops accepting and
/// lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    fallback: Fallback,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let router = edge(router, fallback);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.wait().await })
    .await
}

/// Serves started services on `listener` (their routes composed with the
/// health routes, then passed through `wrap`, e.g. to add the pages) behind
/// the HTTP edge until `shutdown` fires; then stops accepting, finishes
/// in-flight requests and handlers, and flushes the outbox relays.
pub async fn serve_running(
    mut running: Vec<Running>,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
    databases: &crate::service::Databases,
    fallback: Fallback,
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> Result<(), Box<dyn std::error::Error>> {
    let local = listener.local_addr()?;
    let tasks: Vec<_> = running
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.tasks))
        .collect();
    let names: Vec<_> = running.iter().map(|r| r.name).collect();
    let router = wrap(crate::service::compose(&mut running));
    tracing::info!(services = ?names, ?databases, "listening on http://{local}");
    serve(listener, router, fallback, shutdown).await?;
    tracing::info!("http server stopped; finishing handlers and flushing outboxes");
    let drain = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 15 s");
    }
    tracing::info!("stopped");
    Ok(())
}
