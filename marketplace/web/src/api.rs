//! The web client's only way to the services: their public HTTP API, through
//! the platform's client ([`runtime::client::Api`]), and the shapes of what
//! the API returns.

use std::sync::Arc;

use axum::http::Method;
use serde::Deserialize;

pub use runtime::client::{Api, ApiFieldError, Caller, Reply, Unavailable};

/// Where each API prefix lives, for the HTTP transport.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub auth: String,
    pub tickets: String,
    pub orders: String,
    pub payments: String,
}

impl Upstreams {
    /// Everything behind one origin (a gateway or an ingress).
    pub fn all_at(base: &str) -> Upstreams {
        let base = base.trim_end_matches('/').to_owned();
        Upstreams {
            auth: base.clone(),
            tickets: base.clone(),
            orders: base.clone(),
            payments: base,
        }
    }

    fn base_for(&self, path: &str) -> &str {
        if path.starts_with("/api/users") {
            &self.auth
        } else if path.starts_with("/api/tickets") {
            &self.tickets
        } else if path.starts_with("/api/orders") {
            &self.orders
        } else {
            &self.payments
        }
    }
}

impl Upstreams {
    /// A client of the API over HTTP to these upstreams.
    pub fn client(self) -> Api {
        Api::http(Arc::new(move |_: &Method, path: &str| {
            self.base_for(path).to_owned()
        }))
    }
}

// ------------------------------------------------------ what the API returns

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub id: String,
    pub title: String,
    pub price: f64,
    pub user_id: String,
    pub version: i64,
    pub status: String,
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderTicket {
    pub id: String,
    pub title: String,
    pub price: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: String,
    pub status: String,
    pub expires_at: String,
    pub ticket: OrderTicket,
}
