//! HTTP plumbing shared by every service: a JSON body extractor and a query
//! extractor that reject in the shared error shape, the fallbacks for unknown
//! routes and methods, panic catching, request metrics, and health routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError, error_body};

/// The largest request body any route accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body that must be a JSON object, read with the size limit and
/// content-type check applied. Handlers validate its fields with [`Fields`].
pub struct JsonBody(pub Map<String, Value>);

fn is_json_content_type(value: Option<&header::HeaderValue>) -> bool {
    let Some(ct) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT) {
            return Err(ApiError::PayloadTooLarge);
        }
        // Fails only when the body outgrows the limit (or the client hangs
        // up, when no one reads the response anyway).
        let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonBody(map)),
            Ok(_) => Err(ApiError::BadRequest(
                "Request body must be a JSON object".into(),
            )),
            Err(_) => Err(ApiError::BadRequest(
                "Request body must be valid JSON".into(),
            )),
        }
    }
}

/// Collects per-field validation errors while reading a [`JsonBody`], so the
/// client hears about every bad field at once.
pub struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    pub fn new(body: &'a JsonBody) -> Self {
        Fields {
            body: &body.0,
            errors: Vec::new(),
        }
    }

    /// The raw value of `field`, if present and not null.
    pub fn value(&self, field: &str) -> Option<&'a Value> {
        self.body.get(field).filter(|v| !v.is_null())
    }

    /// A required string field; records "`Label` is required" or "`Label`
    /// must be a string" when it is not one.
    pub fn string(&mut self, field: &str, label: &str) -> Option<&'a str> {
        match self.value(field) {
            None => {
                self.fail(field, format!("{label} is required"));
                None
            }
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                self.fail(field, format!("{label} must be a string"));
                None
            }
        }
    }

    /// A required string that is not empty after trimming.
    pub fn non_empty(&mut self, field: &str, label: &str) -> Option<&'a str> {
        let s = self.string(field, label)?;
        if s.trim().is_empty() {
            self.fail(field, format!("{label} is required"));
            return None;
        }
        Some(s)
    }

    /// A required string of 1 to `max` characters after trimming, trimmed.
    pub fn text(&mut self, field: &str, label: &str, max: usize) -> Option<&'a str> {
        let s = self.non_empty(field, label)?.trim();
        if s.chars().count() > max {
            self.fail(field, format!("{label} must be at most {max} characters"));
            return None;
        }
        Some(s)
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// `Ok` when every field was valid, else the 400 listing each bad field.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// `Query<T>` whose rejection is a 400 in the shared shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::BadRequest(format!("Invalid query string: {}", e.body_text())))
    }
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

async fn count_requests(req: Request, next: Next) -> Response {
    // The route template (`/api/tickets/{id}`), not the path, so the series
    // stay few; "unmatched" for what no route took.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    crate::metrics::inc("http_responses_total", &[("class", class)]);
    crate::metrics::inc(
        "http_requests_total",
        &[
            ("method", &method),
            ("route", &route),
            ("status", response.status().as_str()),
        ],
    );
    response
}

/// Finishes a router that serves clients: shared-shape 404 and 405, plus
/// [`layers`]. Apply once, to the outermost router (axum cannot merge two
/// routers that both have fallbacks).
pub fn finish(router: Router) -> Router {
    layers(
        router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed),
    )
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
/// [`TraceContext`](crate::trace::TraceContext) extractor returns, so what
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
    let parent = crate::trace::TraceContext::parent_from_headers(req.headers());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    // The OpenTelemetry HTTP span name: method and route, or the method
    // alone where no route matched (the gateway's proxy, a 404).
    let name = if route.is_empty() {
        req.method().to_string()
    } else {
        format!("{} {route}", req.method())
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        url.path = %req.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let trace = crate::trace::join(&span, parent);
    req.extensions_mut().insert(trace);
    // From here on the request's `traceparent` names this span, so whatever
    // passes the headers on (the gateway, the web client's API calls)
    // continues this trace as its child.
    if let Ok(v) = axum::http::HeaderValue::from_str(&trace.to_string()) {
        req.headers_mut().insert(crate::trace::TRACEPARENT, v);
    }
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if !route.is_empty() {
        crate::metrics::observe(
            "http_request_duration_seconds",
            &[("method", &method), ("route", &route)],
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

/// Panics turned into opaque 500s, request spans (request id, trace
/// context) with a log line per request (debug; warn for 5xx), request
/// counts and latencies.
pub fn layers(router: Router) -> Router {
    router
        .layer(axum::middleware::from_fn(count_requests))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn(request_span))
}

/// A boxed future, for checks stored behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One readiness check: `Err` says what is not ready, in words.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// `GET /healthz` (live while serving), `GET /readyz` (200 when every check
/// passes, else 503 with the reasons), `GET /metrics` (Prometheus text).
pub fn health_router(checks: Vec<(String, ReadyCheck)>) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move {
                    let mut failures = Vec::new();
                    for (name, check) in checks.iter() {
                        if let Err(reason) = check().await {
                            failures.push(FieldError {
                                message: format!("{name}: {reason}"),
                                field: None,
                            });
                        }
                    }
                    if failures.is_empty() {
                        (
                            StatusCode::OK,
                            axum::Json(serde_json::json!({"status": "ready"})),
                        )
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(error_body(&failures)),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(),
                )
            }),
        )
}

/// The TCP peer's address, when the server recorded it (it is absent in
/// in-process router tests).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}
