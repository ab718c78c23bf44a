//! A local stand-in for the Stripe API: records every request and answers
//! like Stripe's test mode (idempotency keys included). Shared by the
//! payments tests and the whole-system saga tests, which use different parts.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    counter: u64,
    /// PaymentIntent id → status.
    intents: HashMap<String, String>,
    /// PaymentIntent id → the description it was created with.
    descriptions: HashMap<String, String>,
    /// Idempotency key → the answer given, replayed for the same key.
    answers: HashMap<String, (StatusCode, serde_json::Value)>,
    /// Unreachable: every request fails with 503 before Stripe executes it
    /// (so nothing is remembered for its key).
    down: bool,
}

type Answer = (StatusCode, axum::Json<serde_json::Value>);

fn stripe_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
) -> (StatusCode, serde_json::Value) {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

/// Answers once per idempotency key, as Stripe does: a replay gets the
/// first answer back without doing anything again.
fn once(
    inner: &Mutex<Inner>,
    key: Option<&String>,
    act: impl FnOnce(&mut Inner) -> (StatusCode, serde_json::Value),
) -> Answer {
    let mut g = inner.lock().unwrap();
    if g.down {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"type": "api_error", "message": "Service unavailable"}})),
        );
    }
    if let Some(answer) = key.and_then(|k| g.answers.get(k)) {
        let (status, body) = answer.clone();
        return (status, axum::Json(body));
    }
    let (status, body) = act(&mut g);
    if let Some(k) = key {
        g.answers.insert(k.clone(), (status, body.clone()));
    }
    (status, axum::Json(body))
}

async fn create_intent(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let r = record(&inner, "/v1/payment_intents", &headers, &body);
    if r.authorization.as_deref() != Some("Bearer sk_test_123") {
        let (s, b) = stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "",
            "Invalid API Key provided",
        );
        return (s, axum::Json(b));
    }
    once(&inner, r.idempotency_key.as_ref(), |g| {
        let token = r
            .form
            .get("payment_method_data[card][token]")
            .map(String::as_str);
        let status = match token {
            Some("tok_visa" | "tok_mastercard") => "requires_capture",
            Some("tok_threeDSecureRequired") => "requires_action",
            Some("tok_chargeDeclined") => {
                return stripe_error(
                    StatusCode::PAYMENT_REQUIRED,
                    "card_error",
                    "card_declined",
                    "Your card was declined.",
                );
            }
            _ => {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "resource_missing",
                    "No such token",
                );
            }
        };
        g.counter += 1;
        let id = format!("pi_fake_{}", g.counter);
        g.intents.insert(id.clone(), status.to_owned());
        g.descriptions.insert(
            id.clone(),
            r.form.get("description").cloned().unwrap_or_default(),
        );
        (
            StatusCode::OK,
            json!({"id": id, "object": "payment_intent", "status": status, "amount": r.form.get("amount")}),
        )
    })
}

async fn settle_intent(
    State(inner): State<Arc<Mutex<Inner>>>,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let path = format!("/v1/payment_intents/{id}/{action}");
    let r = record(&inner, &path, &headers, &body);
    once(&inner, r.idempotency_key.as_ref(), |g| {
        let Some(status) = g.intents.get(&id).cloned() else {
            return stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "No such payment_intent",
            );
        };
        let next = match (action.as_str(), status.as_str()) {
            ("capture", "requires_capture") => "succeeded",
            ("cancel", "requires_capture") => "canceled",
            (_, other) => {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "payment_intent_unexpected_state",
                    &format!("This PaymentIntent's status is {other}"),
                );
            }
        };
        g.intents.insert(id.clone(), next.to_owned());
        (
            StatusCode::OK,
            json!({"id": id, "object": "payment_intent", "status": next}),
        )
    })
}

#[derive(Clone)]
pub struct FakeStripe {
    addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn record(inner: &Mutex<Inner>, path: &str, headers: &HeaderMap, body: &Bytes) -> Recorded {
    let form = std::str::from_utf8(body)
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let r = Recorded {
        path: path.to_owned(),
        authorization: header(headers, "authorization"),
        idempotency_key: header(headers, "idempotency-key"),
        content_type: header(headers, "content-type"),
        form,
    };
    inner.lock().unwrap().requests.push(r.clone());
    r
}

async fn refunds(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let r = record(&inner, "/v1/refunds", &headers, &body);
    once(&inner, r.idempotency_key.as_ref(), |g| {
        let intent = r.form.get("payment_intent").cloned().unwrap_or_default();
        match g.intents.get(&intent).map(String::as_str) {
            Some("succeeded") => {
                g.counter += 1;
                let id = format!("re_fake_{}", g.counter);
                (
                    StatusCode::OK,
                    json!({"id": id, "object": "refund", "payment_intent": intent, "status": "succeeded"}),
                )
            }
            Some(other) => stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "charge_not_captured",
                &format!("This PaymentIntent's status is {other}"),
            ),
            None => stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "resource_missing",
                "No such payment_intent",
            ),
        }
    })
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/refunds", post(refunds))
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}/{action}", post(settle_intent))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeStripe { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.inner
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Each PaymentIntent's status now.
    pub fn intents(&self) -> HashMap<String, String> {
        self.inner.lock().unwrap().intents.clone()
    }

    /// Each PaymentIntent's description and status now.
    pub fn described_intents(&self) -> Vec<(String, String)> {
        let g = self.inner.lock().unwrap();
        g.intents
            .iter()
            .map(|(id, status)| (g.descriptions[id].clone(), status.clone()))
            .collect()
    }

    /// Makes the fake unreachable (every request a 503) or reachable again.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// Requests to `path` that the fake executed (not replays of a key it
    /// had answered, nor requests while it was down), with their keys.
    pub fn executed(&self, path_suffix: &str) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        let mut keys: Vec<String> = g
            .answers
            .keys()
            .filter(|k| {
                g.requests.iter().any(|r| {
                    r.idempotency_key.as_ref() == Some(*k) && r.path.ends_with(path_suffix)
                })
            })
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}
