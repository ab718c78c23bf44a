//! The HTTP edge: what every process's outermost router gets, once, in every
//! mode and for pages as well as the API — a request id and trace span per
//! request, request metrics, panic catching, the body limit, and answers
//! for paths and methods no route takes (the shared JSON error shape for
//! the API, the product's HTML page for pages), and the security headers on
//! every answer, whatever refused it. [`crate::serve`] applies it; nothing
//! else attaches middleware of its own.
//!
//! Also the health routes every process serves: `/healthz`, `/readyz`,
//! `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::error::{ApiError, FieldError, error_body};
use shared::http::{BODY_LIMIT, BoxFuture, ReadyCheck};

/// What a process answers for a path no route takes.
#[derive(Clone)]
pub enum Fallback {
    /// The shared JSON error shape (404, 405), on every path: an API alone.
    Json,
    /// The product's HTML page for paths outside its API, and the JSON shape
    /// under it (`api` says which paths are the API's); `page` renders the
    /// product's page for a status (404, 405).
    Pages {
        api: fn(&str) -> bool,
        page: fn(StatusCode) -> BoxFuture<'static, Response>,
    },
    /// The router has a fallback of its own (the gateway's proxy).
    Own,
}

/// The edge around `router`: the fallbacks, the body limit and the
/// middleware stack. Applied once, to the outermost router (axum cannot
/// merge two routers that both have fallbacks).
pub fn edge(router: Router, fallback: Fallback) -> Router {
    let router = match fallback {
        Fallback::Json => router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed),
        Fallback::Pages { api, page } => router
            .fallback(move |req: Request| async move {
                if api(req.uri().path()) {
                    ApiError::NotFound.into_response()
                } else {
                    page(StatusCode::NOT_FOUND).await
                }
            })
            .method_not_allowed_fallback(move |req: Request| async move {
                if api(req.uri().path()) {
                    ApiError::MethodNotAllowed.into_response()
                } else {
                    page(StatusCode::METHOD_NOT_ALLOWED).await
                }
            }),
        Fallback::Own => router,
    };
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(refuse_cross_site))
        .layer(axum::middleware::from_fn(count_requests))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn(request_span))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(res: Response) -> Response {
    crate::pages::with_security_headers(res)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(error_body(&[FieldError {
            message: "Something went wrong".into(),
            field: None,
        }])),
    )
        .into_response()
}

/// Refuses a state-changing request that a browser sent from anywhere but
/// this site with the session cookie (cross-site request forgery): an
/// `Origin` whose host is not this one — a sibling subdomain included — or,
/// without an `Origin`, `Sec-Fetch-Site` saying `cross-site` or
/// `same-site`. API clients that send a bearer token, and requests without
/// the session cookie, are not affected.
async fn refuse_cross_site(req: Request, next: Next) -> Response {
    if is_cross_site_with_session(&req) {
        return ApiError::Forbidden("Cross-site requests with a session cookie are refused".into())
            .into_response();
    }
    next.run(req).await
}

fn is_cross_site_with_session(req: &Request) -> bool {
    use axum::http::Method;
    let headers = req.headers();
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || shared::auth::bearer_token(headers).is_some()
        || !shared::auth::has_session_cookie(headers)
    {
        return false;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // `same-site` is another origin of the same site: a sibling subdomain,
    // whose pages must not act with this site's cookie either.
    let other_site = text("sec-fetch-site").is_some_and(|site| {
        site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site")
    });
    let Some(origin) = text("origin") else {
        return other_site;
    };
    // Behind the gateway, the host the browser addressed is X-Forwarded-Host.
    let host = text("x-forwarded-host").or_else(|| text("host"));
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    other_site || host.is_none_or(|h| !origin_host.eq_ignore_ascii_case(h))
}

/// Marks a request the pages' in-process client sends through the edge:
/// the page request that made it is counted, this one is not (a page
/// would otherwise count twice in `http_requests_total`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InProcessCall;

async fn count_requests(req: Request, next: Next) -> Response {
    if req.extensions().get::<InProcessCall>().is_some() {
        return next.run(req).await;
    }
    // The route template (`/api/tickets/{id}`), not the path, so the series
    // stay few; "unmatched" for what no route took.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let response = next.run(req).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    shared::metrics::inc("http_responses_total", &[("class", class)]);
    shared::metrics::inc(
        "http_requests_total",
        &[
            ("method", method),
            ("route", &route),
            ("status", response.status().as_str()),
        ],
    );
    response
}

/// A request method as a metric label or span name: one of the methods
/// HTTP defines, or `OTHER`. Clients may send any token as a method, and a
/// label taken from it would add a family of series per made-up method
/// (300 requests once took `/metrics` from 2 KB to 43 MB).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The request id header: taken from the caller when it is a sane token,
/// else generated; echoed on the response and on every log line of the
/// request.
pub const REQUEST_ID: &str = "x-request-id";

fn sane_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Opens the request's span: its request id, and its trace context (a child
/// of the caller's `traceparent`, or a new trace) — the one the handler's
/// [`TraceContext`](shared::trace::TraceContext) extractor returns, so what
/// the handler publishes continues this trace. The span follows the
/// OpenTelemetry HTTP server conventions in its field names.
async fn request_span(mut req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let parent = shared::trace::TraceContext::parent_from_headers(req.headers());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    // The OpenTelemetry HTTP span name: method and route, or the method
    // alone where no route matched (the gateway's proxy, a 404).
    let method = method_label(req.method());
    let name = if route.is_empty() {
        method.to_owned()
    } else {
        format!("{method} {route}")
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = method,
        http.route = %route,
        url.path = %req.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let trace = shared::trace::join(&span, parent);
    req.extensions_mut().insert(trace);
    // From here on the request's `traceparent` names this span, so whatever
    // passes the headers on (the gateway, the web client's API calls)
    // continues this trace as its child.
    if let Ok(v) = axum::http::HeaderValue::from_str(&trace.to_string()) {
        req.headers_mut().insert(shared::trace::TRACEPARENT, v);
    }
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if !route.is_empty() {
        shared::metrics::observe(
            "http_request_duration_seconds",
            &[("method", method), ("route", &route)],
            elapsed.as_secs_f64(),
        );
    }
    span.in_scope(|| {
        let ms = elapsed.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(status, latency_ms = ms, "request failed");
        } else {
            tracing::debug!(status, latency_ms = ms, "request");
        }
    });
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The paths of the health routes.
pub const HEALTH_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// `{"status": "ok" | "ready"}`
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatusBody {
    status: String,
}

type Checks = Arc<Vec<(String, ReadyCheck)>>;

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process serves", body = StatusBody)))]
async fn healthz() -> axum::Json<StatusBody> {
    axum::Json(StatusBody {
        status: "ok".into(),
    })
}

/// Readiness: 200 only when the database, the bus, the streams and the
/// consumers are usable; 503 names what is not, in the service's own words
/// (the engines' error text goes to the log and to the metrics port's
/// `/readyz`, never to anyone who asks).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = StatusBody),
        (status = 503, description = "Not ready; one entry per reason", body = shared::error::ErrorBody),
    ))]
async fn readyz(axum::extract::State(checks): axum::extract::State<Checks>) -> Response {
    readiness(&checks, false).await
}

/// `/readyz` as the operators' metrics port serves it: each reason with the
/// error behind it.
pub(crate) async fn readyz_detailed() -> Response {
    let checks = registered()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match checks {
        Some(checks) => readiness(&checks, true).await,
        None => axum::Json(StatusBody {
            status: "ready".into(),
        })
        .into_response(),
    }
}

/// The checks of this process's health routes, for the metrics port.
fn registered() -> &'static std::sync::RwLock<Option<Checks>> {
    static CHECKS: std::sync::OnceLock<std::sync::RwLock<Option<Checks>>> =
        std::sync::OnceLock::new();
    CHECKS.get_or_init(Default::default)
}

async fn readiness(checks: &Checks, detailed: bool) -> Response {
    let failures = run_checks(checks, detailed).await;
    if failures.is_empty() {
        axum::Json(StatusBody {
            status: "ready".into(),
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(error_body(&failures)),
        )
            .into_response()
    }
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
async fn metrics_and_readiness(
    axum::extract::State(checks): axum::extract::State<Checks>,
) -> impl IntoResponse {
    run_checks(&checks, false).await;
    metrics().await
}

/// The metrics alone (a `METRICS_ADDR` of their own; `ready` is then set
/// by the readiness probes).
pub(crate) async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared::metrics::render(),
    )
}

/// Runs the readiness checks: what failed, one entry per reason. Each
/// check's outcome is also the gauge `ready{check}` (1 or 0), set by every
/// `/readyz` and every scrape of the public `/metrics`, so an alert sees a
/// process that stays unready.
async fn run_checks(checks: &Checks, detailed: bool) -> Vec<FieldError> {
    let mut failures = Vec::new();
    for (name, check) in checks.iter() {
        let outcome = check().await;
        shared::metrics::set(
            "ready",
            &[("check", name)],
            if outcome.is_ok() { 1.0 } else { 0.0 },
        );
        log_cause(name, outcome.as_ref().err());
        if let Err(not_ready) = outcome {
            failures.push(FieldError {
                message: if detailed {
                    format!("{name}: {not_ready}")
                } else {
                    format!("{name}: {}", not_ready.reason)
                },
                field: None,
            });
        }
    }
    failures
}

/// Logs the error behind a failing check when it changes (not at every
/// probe), and when the check passes again.
fn log_cause(name: &str, failure: Option<&shared::http::NotReady>) {
    static LOGGED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, String>>,
    > = std::sync::OnceLock::new();
    let mut logged = LOGGED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match failure {
        Some(f) => {
            let cause = f.to_string();
            if logged.get(name) != Some(&cause) {
                tracing::warn!(check = name, cause = %cause, "not ready");
                logged.insert(name.to_owned(), cause);
            }
        }
        None => {
            if logged.remove(name).is_some() {
                tracing::info!(check = name, "ready again");
            }
        }
    }
}

fn health_routes() -> utoipa_axum::router::OpenApiRouter<Checks> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(readyz))
        .routes(utoipa_axum::routes!(metrics_and_readiness))
}

/// `GET /healthz` (live while serving), `GET /readyz` (200 when every check
/// passes, else 503 with the reasons), `GET /metrics` (Prometheus text).
pub fn health_router(checks: Vec<(String, ReadyCheck)>) -> Router {
    let checks = Arc::new(checks);
    *registered().write().unwrap_or_else(|e| e.into_inner()) = Some(checks.clone());
    health_routes().split_for_parts().0.with_state(checks)
}

/// The OpenAPI description of the health routes.
pub fn health_openapi() -> utoipa::openapi::OpenApi {
    health_routes().into_openapi()
}

#[cfg(test)]
mod cross_site_tests {
    use super::is_cross_site_with_session;

    fn req(method: &str, headers: &[(&str, &str)]) -> axum::extract::Request {
        let mut r = axum::http::Request::builder()
            .method(method)
            .uri("/api/orders");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(axum::body::Body::empty()).unwrap()
    }

    const SESSION: (&str, &str) = ("cookie", "session=abc");

    #[test]
    fn cookie_requests_from_another_site_are_refused_and_the_rest_pass() {
        let refused = [
            req("POST", &[SESSION, ("sec-fetch-site", "cross-site")]),
            req("DELETE", &[SESSION, ("sec-fetch-site", "cross-site")]),
            req(
                "POST",
                &[
                    SESSION,
                    ("origin", "https://evil.example"),
                    ("host", "shop.example"),
                ],
            ),
            req(
                "POST",
                &[SESSION, ("origin", "null"), ("host", "shop.example")],
            ),
            req(
                "POST",
                &[
                    SESSION,
                    ("authorization", "Basic eA=="),
                    ("sec-fetch-site", "cross-site"),
                ],
            ),
            // A sibling subdomain: same site, another origin.
            req(
                "POST",
                &[
                    SESSION,
                    ("sec-fetch-site", "same-site"),
                    ("origin", "https://evil.shop.example"),
                    ("host", "shop.example"),
                ],
            ),
            req("POST", &[SESSION, ("sec-fetch-site", "same-site")]),
            // A browser's own word that the request is same-origin does not
            // outweigh an Origin naming another host.
            req(
                "POST",
                &[
                    SESSION,
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://evil.example"),
                    ("host", "shop.example"),
                ],
            ),
        ];
        for r in &refused {
            assert!(is_cross_site_with_session(r), "{:?}", r.headers());
        }
        let passed = [
            req("POST", &[SESSION, ("sec-fetch-site", "same-origin")]),
            req("POST", &[SESSION, ("sec-fetch-site", "none")]),
            req(
                "POST",
                &[
                    SESSION,
                    ("origin", "https://shop.example"),
                    ("host", "shop.example"),
                ],
            ),
            req(
                "POST",
                &[
                    SESSION,
                    ("origin", "https://shop.example"),
                    ("host", "10.0.0.5:3000"),
                    ("x-forwarded-host", "shop.example"),
                ],
            ),
            // No browser evidence either way (curl, scripts).
            req("POST", &[SESSION]),
            // A bearer client, and a request without the session cookie.
            req(
                "POST",
                &[
                    SESSION,
                    ("authorization", "Bearer t"),
                    ("sec-fetch-site", "cross-site"),
                ],
            ),
            req("POST", &[("sec-fetch-site", "cross-site")]),
            // Reading is not forgery.
            req("GET", &[SESSION, ("sec-fetch-site", "cross-site")]),
        ];
        for r in &passed {
            assert!(!is_cross_site_with_session(r), "{:?}", r.headers());
        }
    }
}
