//! The web client's only way to the services: their public HTTP API, through
//! the platform's client ([`runtime::client::Api`]: in process, or over HTTP
//! to the upstreams the marketplace's prefix table names), with the bodies
//! the API's contract crate defines — the same types the services read and
//! answer with.

pub use marketplace_api::*;
pub use runtime::client::{Api, ApiFieldError, Caller, Reply, Unavailable};
