//! Listening, serving and stopping: one shutdown signal (SIGTERM or Ctrl-C)
//! stops accepting, lets in-flight requests finish, then waits for the
//! services' tasks (listeners, timers) and flushes their outbox relays.

use std::time::Duration;

use shared::shutdown::{self, Shutdown};

use axum::response::IntoResponse as _;
use std::future::Future as _;

use crate::edge::{Fallback, edge};
use crate::service::Running;

/// Listens on `host:port`, and returns with it a shutdown signal that fires
/// on SIGTERM or Ctrl-C.
pub async fn listen(
    host: &str,
    port: u16,
) -> Result<(tokio::net::TcpListener, Shutdown), Box<dyn std::error::Error>> {
    raise_open_files_limit();
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

/// How the HTTP server treats slow, idle, oversized and stuck connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client may take to send a request's line and headers,
    /// and — on a kept-alive connection — how long it may stay idle
    /// before the next one (hyper measures both with one timer). Past it
    /// the connection is closed.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive, from when the handler
    /// starts reading it; past it the request is answered 408.
    pub body_timeout: Duration,
    /// The largest request line plus headers: past it, 431.
    pub max_head_bytes: usize,
    /// After the shutdown signal: how long requests in flight may take to
    /// finish before their connections are dropped (the outboxes are
    /// flushed either way).
    pub shutdown_deadline: Duration,
    /// Where `/metrics` is served.
    pub metrics: MetricsAt,
    /// The most connections one client address may hold open at once;
    /// past it a new one is answered 429 and closed. `None`: no cap (a
    /// service behind a gateway, whose connections all come from it).
    pub max_connections_per_client: Option<usize>,
}

/// Where a process serves `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAt {
    /// On the public port, beside the API (the all-in-one default).
    Public,
    /// On an address of its own (`METRICS_ADDR`, e.g. `0.0.0.0:9100`,
    /// reachable by the scraper only); the public port answers 404.
    Address(String),
    /// Not at all: a process of a split deployment without
    /// `METRICS_ADDR` keeps its metrics off the public port.
    Off,
}

/// Connections one address may hold open on a process that faces clients:
/// far above what a browser opens (six or so per site), or a NAT of a
/// hundred browsers, far below what starves everyone else.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: usize = 256;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_head_bytes: 32 * 1024,
            shutdown_deadline: Duration::from_secs(20),
            metrics: MetricsAt::Public,
            max_connections_per_client: Some(DEFAULT_CONNECTIONS_PER_CLIENT),
        }
    }
}

impl HttpLimits {
    /// The defaults, overridden by `HTTP_HEADER_TIMEOUT_SECONDS`,
    /// `HTTP_BODY_TIMEOUT_SECONDS`, `HTTP_MAX_HEADER_BYTES`,
    /// `SHUTDOWN_DEADLINE_SECONDS`, `METRICS_ADDR` and
    /// `HTTP_MAX_CONNECTIONS_PER_CLIENT`. Without `METRICS_ADDR`,
    /// `/metrics` is on the public port only when `all_in_one` (one process
    /// serving everything); a process of a split deployment serves it only
    /// on the address it is given. Connections per client are capped by
    /// default only where clients connect (`faces_clients`: the all-in-one
    /// process, the gateway); `0` lifts the cap.
    pub fn from_env(
        all_in_one: bool,
        faces_clients: bool,
    ) -> Result<HttpLimits, shared::config::ConfigError> {
        use shared::config::env_var;
        let d = HttpLimits::default();
        let secs = |name: &str, default: Duration| {
            env_var::<u64>(name).map(|v| v.map_or(default, Duration::from_secs))
        };
        Ok(HttpLimits {
            header_timeout: secs("HTTP_HEADER_TIMEOUT_SECONDS", d.header_timeout)?,
            body_timeout: secs("HTTP_BODY_TIMEOUT_SECONDS", d.body_timeout)?,
            max_head_bytes: env_var::<usize>("HTTP_MAX_HEADER_BYTES")?
                .unwrap_or(d.max_head_bytes)
                .max(1024),
            shutdown_deadline: secs("SHUTDOWN_DEADLINE_SECONDS", d.shutdown_deadline)?,
            metrics: match env_var::<String>("METRICS_ADDR")? {
                Some(addr) => MetricsAt::Address(addr),
                None if all_in_one => MetricsAt::Public,
                None => MetricsAt::Off,
            },
            max_connections_per_client: match env_var::<usize>("HTTP_MAX_CONNECTIONS_PER_CLIENT")? {
                Some(0) => None,
                Some(n) => Some(n),
                None if faces_clients => d.max_connections_per_client,
                None => None,
            },
        })
    }
}

/// Serves `router` behind the HTTP edge (with `fallback` for what no route
/// takes) on `listener` with the default [`HttpLimits`] until `shutdown`
/// fires; see [`serve_with`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    fallback: Fallback,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    serve_with(listener, router, fallback, shutdown, HttpLimits::default()).await
}

/// Unless `/metrics` is public: the public router answers it with 404, and
/// with an address of its own it is served there alone until `shutdown`.
async fn metrics_elsewhere(
    router: axum::Router,
    limits: &HttpLimits,
    shutdown: &Shutdown,
) -> std::io::Result<axum::Router> {
    let addr = match &limits.metrics {
        MetricsAt::Public => return Ok(router),
        MetricsAt::Off => None,
        MetricsAt::Address(addr) => Some(addr.clone()),
    };
    let hidden = router.layer(axum::middleware::from_fn(
        |req: axum::extract::Request, next: axum::middleware::Next| async move {
            if req.uri().path() == "/metrics" {
                return shared::ApiError::NotFound.into_response();
            }
            next.run(req).await
        },
    ));
    let Some(addr) = addr else {
        tracing::info!("/metrics is not served (set METRICS_ADDR to serve it)");
        return Ok(hidden);
    };
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on METRICS_ADDR {addr}: {e}"),
        )
    })?;
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    // The operators' port: the metrics, and readiness with the error behind
    // each reason (the public `/readyz` gives the reasons alone).
    let metrics = axum::Router::new()
        .route("/metrics", axum::routing::get(crate::edge::metrics))
        .route("/readyz", axum::routing::get(crate::edge::readyz_detailed));
    let inner = HttpLimits {
        metrics: MetricsAt::Public,
        ..limits.clone()
    };
    tokio::spawn(accept_and_drain(
        listener,
        edge(metrics, Fallback::Json),
        shutdown.clone(),
        inner,
    ));
    Ok(hidden)
}

/// Serves `router` behind the HTTP edge on `listener` until `shutdown`
/// fires; then stops accepting, lets requests in flight finish for at most
/// `limits.shutdown_deadline`, drops the connections still open, and
/// returns.
///
/// Written on hyper directly rather than `axum::serve`, which runs without
/// a timer (so no header timeout ever applies) and has no body timeout,
/// head limit or shutdown deadline.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    fallback: Fallback,
    shutdown: Shutdown,
    limits: HttpLimits,
) -> std::io::Result<()> {
    let router = metrics_elsewhere(router, &limits, &shutdown).await?;
    accept_and_drain(listener, edge(router, fallback), shutdown, limits).await
}

/// The server's loop: accepts connections until `shutdown`, then drains
/// them for at most the shutdown deadline.
async fn accept_and_drain(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut shutdown: Shutdown,
    limits: HttpLimits,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let per_client = PerClient::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        // Reap finished connections as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                let held = match limits.max_connections_per_client {
                    Some(max) => match per_client.hold(peer.ip(), max) {
                        Some(held) => Some(held),
                        None => {
                            connections.spawn(refuse_connection(stream));
                            continue;
                        }
                    },
                    None => None,
                };
                let conn = connection(stream, peer, router.clone(), &limits);
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    drop(held);
                });
            }
            Err(e) => backoff.wait(e, &mut shutdown).await,
        }
    }
    drop(listener);
    let in_flight = connections.len();
    if in_flight > 0 {
        tracing::info!(connections = in_flight, deadline = ?limits.shutdown_deadline, "draining connections");
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_deadline) => {
            tracing::warn!(
                connections = connections.len(),
                "connections still open at the shutdown deadline: dropped"
            );
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// The connections each client address holds open.
#[derive(Clone, Default)]
struct PerClient(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
);

/// One open connection of a client's, counted until dropped.
struct Held {
    counts: PerClient,
    ip: std::net::IpAddr,
}

impl PerClient {
    fn counts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        // A poisoned lock only means a panic between two integer updates.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection of `ip`'s, unless it holds `max` already.
    fn hold(&self, ip: std::net::IpAddr, max: usize) -> Option<Held> {
        let ip = ip.to_canonical();
        let mut counts = self.counts();
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.counts.counts();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Answers a connection over its client's cap with 429 in the shared
/// shape, and closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    shared::metrics::inc("http_connections_refused_total", &[]);
    let answer = crate::refusals::answer(
        429,
        "Too many open connections from your address; close some and try again",
        &[("retry-after", "1")],
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// One HTTP/1.1 connection: the header timeout on hyper's timer, the head
/// limit, the body timeout around every request body, and the peer's
/// address for the handlers.
fn connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    router: axum::Router,
    limits: &HttpLimits,
) -> impl hyper_util::server::graceful::GracefulConnection<Error = hyper::Error> + use<> {
    use tower::ServiceExt as _;
    let (max_head_bytes, body_timeout) = (limits.max_head_bytes, limits.body_timeout);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            if head_size(&req) > max_head_bytes {
                return Ok(crate::pages::with_security_headers(
                    shared::ApiError::HeadersTooLarge.into_response(),
                ));
            }
            let mut req =
                req.map(|body| axum::body::Body::new(DeadlineBody::new(body, body_timeout)));
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.oneshot(req).await
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper refuses a head past its read buffer with a bare 431; keep
        // that for heads far over the limit, and answer the rest in the
        // shared shape above.
        .max_buf_size((limits.max_head_bytes * 2).max(8192))
        .serve_connection(
            hyper_util::rt::TokioIo::new(crate::refusals::Shaped::new(stream)),
            service,
        )
}

/// The size of a request's line and headers as the client sent them.
fn head_size<B>(req: &hyper::Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// A request body that fails with [`shared::http::BodyTimedOut`] once its
/// time is up. Hand-written: tower-http's `TimeoutBody` (0.6) restarts its
/// timer on every frame, so a client sending one byte at a time would never
/// be cut off; a whole-body deadline is what bounds it.
struct DeadlineBody<B> {
    body: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    started: bool,
}

impl<B> DeadlineBody<B> {
    fn new(body: B, limit: Duration) -> Self {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            started: false,
        }
    }
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<shared::error::BoxError>,
{
    type Data = B::Data;
    type Error = shared::error::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if !this.started {
            // The clock starts when the handler starts reading.
            this.started = true;
            let at = tokio::time::Instant::now() + this.limit;
            this.deadline.as_mut().reset(at);
        }
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Some(Err(Box::new(shared::http::BodyTimedOut(this.limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Backing off when `accept` fails: out of file descriptors (`EMFILE`,
/// `ENFILE`) or memory, accepting again at once only spins and floods the
/// log. Waits 10 ms, doubling up to 1 s, while accepting keeps failing;
/// logs the first failure of a run and then once a second at most.
#[derive(Default)]
struct AcceptBackoff {
    wait: Option<Duration>,
    logged: Option<tokio::time::Instant>,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        if self.wait.take().is_some() {
            tracing::info!("accepting connections again");
        }
        self.logged = None;
    }

    async fn wait(&mut self, error: std::io::Error, shutdown: &mut Shutdown) {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        // The client gave up before we accepted: nothing to back off from.
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | Interrupted
        ) {
            return;
        }
        let wait = self.wait.map_or(Duration::from_millis(10), |w| {
            (w * 2).min(Duration::from_secs(1))
        });
        self.wait = Some(wait);
        shared::metrics::inc("http_accept_errors_total", &[]);
        let now = tokio::time::Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.logged = Some(now);
            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot accept connections");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (each
/// connection is a file descriptor; the usual soft limit, 1 024, is low for
/// a server). Reports what it could not do and carries on.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// The two stages of stopping a process that runs services: `http` (the
/// signal, SIGTERM or Ctrl-C) stops the HTTP server; only once it has
/// drained does `services` fire — the signal the services' tasks were
/// started with (their `Deps::shutdown`) — so the listeners and outbox
/// relays stop after the last request's events are in the outbox, and the
/// relays flush them.
pub struct Stopping {
    pub http: Shutdown,
    pub services: shared::shutdown::ShutdownTrigger,
}

/// Serves started services on `listener` (their routes composed with the
/// health routes, then passed through `wrap`, e.g. to add the pages) behind
/// the HTTP edge until `stop.http` fires; then stops accepting, lets
/// requests in flight finish (up to `limits.shutdown_deadline`), and only
/// then stops the services' tasks and flushes their outbox relays.
///
/// The services' tasks are supervised while the server runs: one that dies
/// (a panic) takes the process to not ready at once, is logged with its
/// cause, and stops the process as a signal would; this then returns an
/// error, so the process ends non-zero and its supervisor (systemd,
/// Kubernetes, Compose) starts it again. Nothing keeps serving with a
/// listener or a relay gone. A task that returns of its own accord (a
/// one-off catch-up) is done, not dead.
pub async fn serve_running(
    mut running: Vec<Running>,
    listener: tokio::net::TcpListener,
    stop: Stopping,
    fallback: Fallback,
    limits: HttpLimits,
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures_util::StreamExt as _;
    let local = listener.local_addr()?;
    let mut tasks: futures_util::stream::FuturesUnordered<_> = running
        .iter_mut()
        .flat_map(|r| {
            let name = r.name;
            std::mem::take(&mut r.tasks)
                .into_iter()
                .map(move |t| async move { (name, t.await) })
        })
        .collect();
    let names: Vec<_> = running.iter().map(|r| r.name).collect();
    let death = Death::default();
    running.push(Running {
        name: "supervisor",
        router: axum::Router::new(),
        ready_checks: vec![("tasks".into(), death.ready_check())],
        tasks: Vec::new(),
    });
    let router = wrap(crate::service::compose(&mut running));
    tracing::info!(services = ?names, "listening on http://{local}");
    // The server stops on the signal, or when a task dies.
    let (stop_now, http) = shutdown::channel();
    let mut signal = stop.http;
    let forward = {
        let stop_now = stop_now.clone();
        tokio::spawn(async move {
            signal.wait().await;
            stop_now.fire();
        })
    };
    let server = serve_with(listener, router, fallback, http, limits);
    tokio::pin!(server);
    let served = loop {
        tokio::select! {
            served = &mut server => break served,
            Some((service, ended)) = tasks.next(), if !death.happened() => {
                match ended {
                    Ok(()) => tracing::debug!(service, "a task finished its work"),
                    Err(e) => {
                        let cause = if e.is_panic() { "panicked" } else { "was cancelled" };
                        tracing::error!(service, "a task of {service} {cause}; the process is not ready and stops");
                        death.record(format!("a task of {service} {cause}"));
                        stop_now.fire();
                    }
                }
            }
        }
    };
    forward.abort();
    served?;
    tracing::info!("http server stopped; finishing handlers and flushing outboxes");
    stop.services.fire();
    let drain = async { while tasks.next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 15 s");
    }
    if let Some(why) = death.cause() {
        return Err(format!("{why}: stopped so that a supervisor starts the process again").into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// What a process that runs services of a product is made of, beside the
/// services themselves: the engines, the session keys (none for a product
/// without accounts), and how it answers what no route takes.
pub struct ServicesProcess<'a> {
    pub bus: &'a crate::engines::BusChoice,
    pub data_dir: &'a std::path::Path,
    pub databases: crate::service::Databases,
    pub keys: Option<std::sync::Arc<shared::auth::AuthKeys>>,
    pub fallback: Fallback,
    pub limits: HttpLimits,
}

/// The one way every product's services run in a process: opens the bus,
/// gives the services their dependencies (with the signal that stops them
/// only after the HTTP server has drained), starts them with `start`, and
/// serves them (their routes passed through `wrap`, e.g. to add the pages)
/// until `shutdown` fires, as [`serve_running`] does.
pub async fn run_services<S, W>(
    process: ServicesProcess<'_>,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
    start: S,
    wrap: W,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: AsyncFnOnce(&crate::service::Deps) -> Result<Vec<Running>, Box<dyn std::error::Error>>,
    W: FnOnce(axum::Router) -> axum::Router,
{
    let bus = crate::engines::open_bus(process.bus, process.data_dir).await?;
    let (stop_services, services_shutdown) = shutdown::channel();
    let deps = crate::service::Deps {
        databases: process.databases.clone(),
        bus,
        keys: process.keys,
        clock: shared::time::Clock::System,
        shutdown: services_shutdown,
    };
    tracing::info!(databases = ?process.databases, "starting services");
    let running = start(&deps).await?;
    serve_running(
        running,
        listener,
        Stopping {
            http: shutdown,
            services: stop_services,
        },
        process.fallback,
        process.limits,
        wrap,
    )
    .await
}

/// Whether (and how) one of the services' tasks died; read by the
/// readiness check `tasks`.
#[derive(Clone, Default)]
struct Death(std::sync::Arc<std::sync::OnceLock<String>>);

impl Death {
    fn record(&self, cause: String) {
        let _ = self.0.set(cause);
    }

    fn happened(&self) -> bool {
        self.0.get().is_some()
    }

    fn cause(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn ready_check(&self) -> shared::http::ReadyCheck {
        let death = self.clone();
        std::sync::Arc::new(move || {
            let cause = death.cause().map(str::to_owned);
            Box::pin(async move {
                match cause {
                    None => Ok(()),
                    Some(why) => Err(shared::http::NotReady::with_detail(
                        "a task of this process died",
                        why,
                    )),
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Death;

    #[tokio::test]
    async fn a_death_makes_the_tasks_check_fail() {
        let death = Death::default();
        let check = death.ready_check();
        assert_eq!(check().await, Ok(()));
        death.record("a task of notes panicked".into());
        death.record("a second death is not the cause".into());
        let not_ready = check().await.unwrap_err();
        assert_eq!(not_ready.reason, "a task of this process died");
        assert_eq!(
            not_ready.detail.as_deref(),
            Some("a task of notes panicked")
        );
    }
}
