//! The web client's only way to the services: their public HTTP API, through
//! the platform's client ([`runtime::client::Api`]: in process, or over HTTP
//! to the upstreams the marketplace's prefix table names), and the shapes
//! of what the API returns.

use serde::Deserialize;

pub use runtime::client::{Api, ApiFieldError, Caller, Reply, Unavailable};

// ------------------------------------------------------ what the API returns

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    /// May list, ban and unban users.
    #[serde(default)]
    pub admin: bool,
}

/// A user as an admin sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminUser {
    pub id: String,
    pub email: String,
    pub admin: bool,
    pub banned: bool,
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

/// A payment: `status` is `pending` until the order's verdict, then
/// `captured` (or `capturing`), `voided`, `declined` or `refunded`.
#[derive(Debug, Clone, Deserialize)]
pub struct Payment {
    pub id: String,
    pub status: String,
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
