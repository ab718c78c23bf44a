//! The tickets service: the catalogue of tickets for sale.
//!
//! Owns `tickets`; publishes `ticket.created` and `ticket.updated`; consumes
//! `order.created` (reserve), `order.cancelled` (release) and
//! `order.completed` (sold), `user.banned` and `user.unbanned` (a banned
//! seller's available tickets are withdrawn from sale, and come back when
//! the ban is lifted). It keeps a small replica of orders (id, ticket,
//! version, status) so order events that arrive out of order are applied in
//! version order and a late `order.created` never re-reserves a ticket for a
//! cancelled order.

mod listeners;
mod tickets;

use bus::outbox::OUTBOX_TABLE_SQL;
use runtime::service::{Deps, Running};
use store::Migration;

pub const SERVICE: &str = "tickets";

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "tickets and the order replica",
        sql: "CREATE TABLE tickets (
                  id TEXT PRIMARY KEY,
                  title TEXT NOT NULL,
                  price_cents BIGINT NOT NULL,
                  user_id TEXT NOT NULL,
                  version BIGINT NOT NULL,
                  status TEXT NOT NULL,
                  order_id TEXT,
                  created_at BIGINT NOT NULL
              );
              CREATE INDEX tickets_available ON tickets (status, id);
              CREATE TABLE orders (
                  id TEXT PRIMARY KEY,
                  ticket_id TEXT NOT NULL,
                  version BIGINT NOT NULL,
                  status TEXT NOT NULL
              );",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
    Migration {
        version: 3,
        description: "a seller's tickets",
        sql: "CREATE INDEX tickets_seller ON tickets (user_id, id);",
    },
    Migration {
        version: 4,
        description: "sellers' bans",
        sql: "CREATE TABLE sellers (
                  user_id TEXT PRIMARY KEY,
                  version BIGINT NOT NULL,
                  banned_at BIGINT
              );",
    },
];

/// What the handlers and listeners share.
pub type AppState = runtime::service::ServiceState<()>;

/// The tickets service's routes.
pub fn router(state: AppState) -> axum::Router {
    tickets::router().split_for_parts().0.with_state(state)
}

/// The OpenAPI description of the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    tickets::router().into_openapi()
}

/// Opens the database, starts the relay and the listeners, returns the routes.
pub async fn start(
    deps: &Deps,
    listener_options: bus::listener::ListenerOptions,
) -> Result<Running, store::StoreError> {
    let base = deps
        .open_service(marketplace_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let state = base.state(deps, ())?;
    let listeners = listeners::spawn(&state, base.listeners(listener_options));
    Ok(base.running(router(state), listeners))
}
