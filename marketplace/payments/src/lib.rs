//! The payments service: pay for an order.
//!
//! Owns `payments` and a replica of orders; publishes `payment.created` and
//! `payment.refunded`; consumes `order.created`, `order.cancelled` and
//! `order.completed`. Paying is idempotent per order: the gateway gets one
//! idempotency key per order and the database one payment per order, so a
//! retried or concurrent second payment never charges twice. A payment that
//! lands after its order was cancelled is refunded.

pub mod gateway;
mod listeners;
mod payments;

use std::sync::Arc;

use bus::outbox::OUTBOX_TABLE_SQL;
use runtime::service::{Deps, Running};
use store::Migration;

pub use gateway::{OfflineGateway, PaymentGateway, StripeGateway};

pub const SERVICE: &str = "payments";

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "payments and the order replica",
        sql: "CREATE TABLE orders (
                  id TEXT PRIMARY KEY,
                  user_id TEXT NOT NULL,
                  price_cents BIGINT NOT NULL,
                  status TEXT NOT NULL,
                  version BIGINT NOT NULL
              );
              CREATE TABLE payments (
                  id TEXT PRIMARY KEY,
                  order_id TEXT NOT NULL,
                  charge_id TEXT NOT NULL,
                  amount_cents BIGINT NOT NULL,
                  created_at BIGINT NOT NULL,
                  refund_id TEXT
              );
              CREATE UNIQUE INDEX payments_one_per_order ON payments (order_id);",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
];

/// Settings of the payments service.
#[derive(Clone)]
pub struct Config {
    pub gateway: Arc<dyn PaymentGateway>,
    /// ISO currency code charged (`PAYMENT_CURRENCY`, default `usd`).
    pub currency: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: Arc::new(OfflineGateway),
            currency: "usd".into(),
        }
    }
}

/// What the handlers and listeners share.
pub type AppState = runtime::service::ServiceState<Config>;

pub fn router(state: AppState) -> axum::Router {
    payments::router().split_for_parts().0.with_state(state)
}

/// The OpenAPI description of the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    payments::router().into_openapi()
}

pub async fn start(
    deps: &Deps,
    config: Config,
    listener_options: bus::listener::ListenerOptions,
) -> Result<Running, store::StoreError> {
    if config.gateway.name() == "offline" {
        tracing::warn!(
            "no STRIPE_SECRET_KEY: using the offline test gateway (tok_visa and tok_mastercard succeed, tok_chargeDeclined is declined); no real money moves"
        );
    } else {
        tracing::info!(
            gateway = config.gateway.name(),
            "payment gateway configured"
        );
    }
    let base = deps
        .open_service(marketplace_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let state = base.state(deps, config);
    let listeners = listeners::spawn(&state, base.listeners(listener_options));
    Ok(base.running(router(state), listeners))
}
