//! HTTP pieces every service's handlers use: a JSON body extractor and a
//! query extractor that reject in the shared error shape, the peer's
//! address, the body limit, and the readiness-check type. The middleware
//! around them (request id, trace span, metrics, panic catching, fallbacks)
//! is the runtime's HTTP edge.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::wire::Validate;

/// The largest request body any route accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body that must be a JSON object, read with the size limit and
/// content-type check applied. Handlers take [`ValidJson`] of a request type.
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
        let bytes = read_body(req.into_body(), BODY_LIMIT).await?;
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

/// The error a request body yields when it did not arrive within the
/// server's body timeout (the server wraps every request body with it).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub std::time::Duration);

/// Reads a whole request body of at most `limit` bytes: 413 past the limit,
/// 408 when it does not arrive within the server's body timeout. (Any other
/// failure is the client hanging up, when no one reads the answer anyway.)
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<BodyTimedOut>() {
                return ApiError::RequestTimeout;
            }
            cause = c.source();
        }
        ApiError::PayloadTooLarge
    })
}

/// A JSON body read into `T` and checked at the edge of a handler: 415
/// unless it is JSON, 413 over the limit, 400 for malformed JSON, and 400
/// listing each bad field ([`crate::wire`]). The handler gets `T::Valid`.
pub struct ValidJson<T: Validate>(pub T::Valid);

impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        crate::wire::validate::<T>(Value::Object(body)).map(ValidJson)
    }
}

/// The id in a route's path, read as `T` (an id type): a path segment that
/// is not one — malformed, or not even UTF-8 (`%ff`) — is a 404 in the
/// shared shape, as an unknown id is.
pub struct IdPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for IdPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|_| ApiError::NotFound)
    }
}

/// A list's page: `limit` (1 to 200, default 50) items after the item
/// `after` (the last id of the previous page; none: from the start).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// The last id of the previous page.
    #[param(value_type = Option<String>, format = Uuid)]
    pub after: Option<String>,
}

impl PageQuery {
    /// The page size and the cursor, read with `parse` (the list's id
    /// type); 400 naming the parameter when either is malformed. `noun`
    /// names the items in the message (`after must be a ticket id`).
    pub fn read<T>(
        &self,
        parse: impl Fn(&str) -> Option<T>,
        noun: &str,
    ) -> Result<(i64, Option<T>), ApiError> {
        let limit = match self.limit.as_deref() {
            None => 50,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=200).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        "limit must be a whole number from 1 to 200",
                    ));
                }
            },
        };
        let after = match self.after.as_deref() {
            None => None,
            Some(s) => Some(
                parse(s)
                    .ok_or_else(|| ApiError::field("after", format!("after must be {noun} id")))?,
            ),
        };
        Ok((limit, after))
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

/// A boxed future, for checks stored behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One readiness check: `Err` says what is not ready.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), NotReady>> + Send + Sync>;

/// Why a readiness check fails: `reason` in the service's own words, fit
/// for anyone who asks `/readyz`; `detail`, the underlying error (a
/// database's or a broker's own message), for the log and the operators'
/// metrics port only — it can tell an outsider about the internals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub reason: String,
    pub detail: Option<String>,
}

impl NotReady {
    /// A reason with the error behind it.
    pub fn with_detail(reason: impl Into<String>, detail: impl Into<String>) -> NotReady {
        NotReady {
            reason: reason.into(),
            detail: Some(detail.into()),
        }
    }
}

impl From<String> for NotReady {
    fn from(reason: String) -> Self {
        NotReady {
            reason,
            detail: None,
        }
    }
}

impl From<&str> for NotReady {
    fn from(reason: &str) -> Self {
        reason.to_owned().into()
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
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
