//! W3C trace context (`traceparent`), carried on requests and events so one
//! request can be followed across services.

use std::fmt;

/// A `traceparent`: version 00, a 16-byte trace id, an 8-byte parent span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

pub const TRACEPARENT: &str = "traceparent";

impl TraceContext {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        let id = uuid::Uuid::new_v4().as_u128();
        TraceContext {
            trace_id: id,
            span_id: (id as u64) | 1,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        let span = (uuid::Uuid::new_v4().as_u128() as u64) | 1;
        TraceContext {
            trace_id: self.trace_id,
            span_id: span,
        }
    }

    /// Parses a `traceparent` header value; invalid values are ignored (the
    /// W3C rule: start a new trace).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext { trace_id, span_id })
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    /// This request's span: the one the request middleware opened (see
    /// [`crate::http::layers`]), else the caller's trace continued, or a new
    /// one.
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        if let Some(t) = parts.extensions.get::<TraceContext>() {
            return Ok(*t);
        }
        Ok(Self::from_headers(&parts.headers))
    }
}

impl TraceContext {
    /// The span of a request with these headers: a child of the caller's
    /// `traceparent`, or the root of a new trace.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        Self::parent_from_headers(headers)
            .map(|t| t.child())
            .unwrap_or_else(TraceContext::new_root)
    }

    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The caller's trace context from a `traceparent` header, if valid.
    pub fn parent_from_headers(headers: &axum::http::HeaderMap) -> Option<Self> {
        headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse)
    }
}

/// Makes `span` the next hop of a trace: a child of `parent` (the
/// caller's or producer's context), or the root of a new trace. Returns the
/// span's own context, to be passed on (response, outbox row, bus headers),
/// and records it on the span's `trace_id`, `span_id` and `parent_span_id`
/// fields, which the span must declare (empty).
///
/// When an OpenTelemetry layer is installed (an OTLP endpoint is
/// configured), the span is exported with `parent` as its remote parent and
/// the ids returned are the exported span's, so what travels on matches what
/// a trace viewer shows. Without one, the ids are generated here.
pub fn join(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let mut own = None;
    let remote = parent.map(|p| {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(p.trace_id),
            SpanId::from(p.span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    });
    // Fails (and does nothing) when no OpenTelemetry layer is installed.
    let exported = span.set_parent(remote.unwrap_or_default()).is_ok();
    if exported {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            own = Some(TraceContext {
                trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
                span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            });
        }
    }
    let own = own.unwrap_or_else(|| match parent {
        Some(p) => p.child(),
        None => TraceContext::new_root(),
    });
    span.record("trace_id", tracing::field::display(own.trace_id_hex()));
    span.record("span_id", tracing::field::display(own.span_id_hex()));
    if let Some(p) = parent {
        span.record("parent_span_id", tracing::field::display(p.span_id_hex()));
    }
    own
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn a_traceparent_round_trips_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.to_string()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert!(TraceContext::parse("00-xyz-abc-01").is_none());
    }
}
