//! The one error type every HTTP handler returns, and its JSON shape:
//! `{"errors":[{"message":"...","field":"..."}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The one error shape of every service: `{"errors": [{"message", "field"?}]}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub errors: Vec<FieldError>,
}

/// One error; `field` names the input it is about (validation errors only).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = ErrorEntry)]
pub struct FieldError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub field: Option<String>,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors named by what a client can do about them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with one entry per bad field.
    #[error("validation failed: {0:?}")]
    Validation(Vec<FieldError>),
    /// 400 about the request as a whole (bad JSON, bad query string).
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not authorized")]
    Unauthorized,
    /// 401 with a specific message (sign-in failures).
    #[error("unauthorized: {0}")]
    InvalidCredentials(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0}")]
    Conflict(String),
    /// 422: well-formed, but unusable as sent (an idempotency key reused
    /// with another request).
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// 402: the payment gateway declined the card.
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    #[error("payload too large")]
    PayloadTooLarge,
    /// 408: the body did not arrive within the server's body timeout.
    #[error("request body timed out")]
    RequestTimeout,
    /// 431: the request line and headers are larger than the server takes.
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// 503: a dependency is down; the client may retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500: a bug. The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl ApiError {
    pub fn internal(err: impl Into<BoxError>) -> Self {
        ApiError::Internal(err.into())
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidCredentials(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PaymentDeclined(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn entries(&self) -> Vec<FieldError> {
        let plain = |m: &str| {
            vec![FieldError {
                message: m.to_owned(),
                field: None,
            }]
        };
        match self {
            ApiError::Validation(errors) => errors.clone(),
            ApiError::BadRequest(m)
            | ApiError::InvalidCredentials(m)
            | ApiError::Forbidden(m)
            | ApiError::Conflict(m)
            | ApiError::Unprocessable(m)
            | ApiError::PaymentDeclined(m)
            | ApiError::Unavailable(m) => plain(m),
            ApiError::Unauthorized => plain("Not authorized"),
            ApiError::NotFound => plain("Not found"),
            ApiError::MethodNotAllowed => plain("Method not allowed"),
            ApiError::PayloadTooLarge => plain("Request body is too large (limit 64 KiB)"),
            ApiError::UnsupportedMediaType => plain("Content-Type must be application/json"),
            ApiError::RequestTimeout => plain("The request body did not arrive in time"),
            ApiError::HeadersTooLarge => plain("The request headers are too large"),
            ApiError::TooManyRequests { .. } => plain("Too many attempts, try again later"),
            ApiError::Internal(_) => plain("Something went wrong"),
        }
    }
}

impl ApiError {
    /// The body this error answers with, as JSON text (for an answer kept
    /// to be given again).
    pub fn body_json(&self) -> String {
        serde_json::to_string(&error_body(&self.entries())).unwrap_or_default()
    }
}

/// Builds the shared JSON error body.
pub fn error_body(entries: &[FieldError]) -> ErrorBody {
    ErrorBody {
        errors: entries.to_vec(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %store::report(cause.as_ref()), "request failed");
            }
            ApiError::Unavailable(reason) => tracing::warn!(%reason, "dependency unavailable"),
            _ => {}
        }
        let mut response = (self.status(), axum::Json(error_body(&self.entries()))).into_response();
        if let ApiError::TooManyRequests { retry_after_secs } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<store::StoreError> for ApiError {
    fn from(err: store::StoreError) -> Self {
        match err.kind() {
            store::StoreErrorKind::Unavailable => {
                ApiError::Unavailable("The database is unavailable, try again shortly".into())
            }
            store::StoreErrorKind::Storage => {
                tracing::error!(error = %store::report(&err), "the database cannot write");
                ApiError::Unavailable(
                    "The service cannot store data right now, try again later".into(),
                )
            }
            _ => ApiError::Internal(Box::new(err)),
        }
    }
}
