//! What starts, serves and stops a service, for every product: what a
//! service is handed ([`service::Deps`]) and hands back
//! ([`service::Running`]), the choice of engines ([`engines`]), listening
//! with one shutdown signal ([`serve`]), logging and trace export
//! ([`telemetry`]), and what server-rendered pages share (the API
//! [`client`], the [`pages`]' security headers).
//!
//! It knows no product: the marketplace and the blog start their services
//! through it the same way.

pub mod client;
pub mod engines;
pub mod pages;
pub mod serve;
pub mod service;
pub mod telemetry;

pub use serve::{listen, serve, serve_running};
pub use service::{Databases, Deps, Running, ServiceBase};
