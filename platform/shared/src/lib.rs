//! What every service shares: the error shape, request extractors, id, money
//! and e-mail types, typed events, authentication, time and trace context.
//!
//! Nothing here knows about any particular service.

pub mod auth;
pub mod client_addr;
pub mod config;
pub mod email;
pub mod error;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod metrics;
pub mod money;
pub mod openapi;
pub mod shutdown;
pub mod text;
pub mod time;
pub mod trace;
pub mod wire;

pub use error::{ApiError, FieldError};
