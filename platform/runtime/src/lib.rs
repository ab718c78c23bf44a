//! What starts, serves and stops a service, for every product: what a
//! service is handed ([`service::Deps`]) and hands back
//! ([`service::Running`]), what a process runs ([`role::Role`]), the choice
//! of engines ([`engines`]), the HTTP [`edge`] every process's router gets
//! once, listening with one shutdown signal ([`serve`]), the reverse proxy
//! of the microservices mode ([`gateway`]), logging and trace export
//! ([`telemetry`]), the API [`client`] of server-rendered pages, the
//! security headers every answer carries ([`pages`]), and hyper's own
//! refusals rewritten in the shared shape ([`refusals`]).
//!
//! It knows no product: every product starts its services through it the
//! same way.

pub mod client;
pub mod docs;
pub mod edge;
pub mod engines;
pub mod gateway;
pub mod pages;
pub mod parked;
pub mod refusals;
pub mod role;
pub mod serve;
pub mod service;
pub mod telemetry;

pub use edge::Fallback;
pub use role::Role;
pub use serve::{HttpLimits, MetricsAt, Stopping, listen, serve, serve_running, serve_with};
pub use service::{Databases, Deps, Running, ServiceBase};
pub use shared::http::NotReady;
