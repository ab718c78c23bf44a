//! The orders service: a buyer's claim on a ticket.
//!
//! Owns `orders` and a replica of tickets; publishes `order.created`,
//! `order.cancelled` and `order.completed`; consumes `ticket.created`,
//! `ticket.updated` (replica, in version order), `expiration.complete`
//! (cancel unless complete) and `payment.authorized` (complete if still
//! `created`: orders alone decides whether a hold is captured), `user.banned`
//! (a banned buyer's unpaid orders are cancelled, freeing their tickets) and
//! `user.unbanned` (the ban's version, so the newest wins). One active order per ticket is enforced by a partial unique
//! index, so of any number of concurrent buyers exactly one wins.

mod listeners;
mod orders;

use std::time::Duration;

use bus::outbox::OUTBOX_TABLE_SQL;
use runtime::service::{Deps, Running};
use store::Migration;

pub const SERVICE: &str = "orders";

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "orders and the ticket replica",
        sql: "CREATE TABLE tickets (
                  id TEXT PRIMARY KEY,
                  title TEXT NOT NULL,
                  price_cents BIGINT NOT NULL,
                  user_id TEXT NOT NULL,
                  version BIGINT NOT NULL
              );
              CREATE TABLE orders (
                  id TEXT PRIMARY KEY,
                  user_id TEXT NOT NULL,
                  ticket_id TEXT NOT NULL,
                  status TEXT NOT NULL,
                  expires_at BIGINT NOT NULL,
                  version BIGINT NOT NULL,
                  created_at BIGINT NOT NULL
              );
              CREATE INDEX orders_by_user ON orders (user_id, id);
              CREATE UNIQUE INDEX orders_one_active_per_ticket ON orders (ticket_id)
                  WHERE status IN ('created', 'complete');",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
    Migration {
        version: 3,
        description: "buyers, whose row serializes one buyer's orders",
        sql: "CREATE TABLE buyers (
                  user_id TEXT PRIMARY KEY
              );
              CREATE INDEX orders_active_by_user ON orders (user_id) WHERE status = 'created';",
    },
    Migration {
        version: 4,
        description: "tickets' status in the replica; users' bans",
        sql: "ALTER TABLE tickets ADD COLUMN status TEXT NOT NULL DEFAULT 'available';
              CREATE TABLE users (
                  id TEXT PRIMARY KEY,
                  version BIGINT NOT NULL,
                  banned_at BIGINT
              );",
    },
    Migration {
        version: 5,
        description: "idempotency keys",
        sql: shared::idempotency::TABLE_SQL,
    },
];

/// Settings of the orders service.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long an order holds its ticket (`ORDER_EXPIRATION_SECONDS`).
    pub order_expiration: Duration,
    /// How many unpaid orders one buyer may hold at once
    /// (`MAX_ACTIVE_ORDERS_PER_USER`): a buyer cannot reserve a whole
    /// listing and let it expire.
    pub max_active_orders_per_user: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            order_expiration: Duration::from_secs(900),
            max_active_orders_per_user: 10,
        }
    }
}

/// What the handlers and listeners share.
pub type AppState = runtime::service::ServiceState<Config>;

pub fn router(state: AppState) -> axum::Router {
    orders::router().split_for_parts().0.with_state(state)
}

/// The OpenAPI description of the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    orders::router().into_openapi()
}

pub async fn start(
    deps: &Deps,
    config: Config,
    listener_options: bus::listener::ListenerOptions,
) -> Result<Running, store::StoreError> {
    let base = deps
        .open_service(marketplace_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let state = base.state(deps, config)?;
    let listeners = listeners::spawn(&state, base.listeners(listener_options));
    Ok(base.running(router(state), listeners))
}
