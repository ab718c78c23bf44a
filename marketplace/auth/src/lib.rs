//! The auth service: accounts and sessions.
//!
//! Owns the `users` table; publishes `user.created`, `user.banned`,
//! `user.unbanned`, `user.admin-granted`, `user.admin-revoked` and
//! `user.signed-out`; consumes nothing. Every other
//! service verifies the session token it issues locally, with the shared key,
//! and learns of ended sessions from the events ([`sessions::follow`]).

mod admin;
pub mod emails;
mod password;
mod rate_limit;
pub mod roles;
pub mod sessions;
mod users;

use std::sync::Arc;
use std::time::Duration;

use bus::outbox::OUTBOX_TABLE_SQL;
use runtime::service::{Deps, Running};
use shared::client_addr::TrustedProxies;
use store::Migration;

pub use rate_limit::RateLimiter;

pub const SERVICE: &str = "auth";

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users",
        sql: "CREATE TABLE users (
                  id TEXT PRIMARY KEY,
                  email TEXT NOT NULL,
                  password_hash TEXT NOT NULL,
                  created_at BIGINT NOT NULL
              );
              CREATE UNIQUE INDEX users_email_key ON users (email);",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
    Migration {
        version: 3,
        description: "user versions and bans",
        sql: "ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE users ADD COLUMN banned_at BIGINT;",
    },
    Migration {
        version: 4,
        description: "admins by grant, and when the latest session began",
        // `admin_since`: set by `ticketing users grant-admin` alone.
        // `last_session_at`: the start of the user's latest session; an end
        // of every session (a ban, a sign-out everywhere, a password change)
        // reaches at least that far, so a sign-in that raced it is ended too.
        sql: "ALTER TABLE users ADD COLUMN admin_since BIGINT;
              ALTER TABLE users ADD COLUMN last_session_at BIGINT NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 5,
        description: "e-mails normalised once (NFKC, IDNA)",
        // A row here: the addresses stored before normalisation have been
        // rewritten ([`emails::normalise_stored`]).
        sql: "CREATE TABLE emails_normalised (at BIGINT NOT NULL);",
    },
];

/// Settings of the auth service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sign-in and sign-up attempts allowed per client per window.
    pub attempts_per_window: u32,
    pub window: Duration,
    /// Behind proxies (an ingress, the gateway, the web client): the ones
    /// whose `X-Forwarded-For` entries tell who the client is. `None`: the
    /// TCP peer is the client.
    pub trusted_proxies: Option<TrustedProxies>,
    /// How often the parked-message gauges are read from the bus.
    pub parked_gauges_every: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attempts_per_window: 20,
            window: Duration::from_secs(60),
            trusted_proxies: None,
            parked_gauges_every: Duration::from_secs(15),
        }
    }
}

/// What the handlers share: the sign-in allowance and how to tell clients
/// apart.
#[derive(Clone)]
pub struct Limits {
    limiter: Arc<RateLimiter>,
    trusted_proxies: Option<TrustedProxies>,
}

/// What the handlers share.
pub type AppState = runtime::service::ServiceState<Limits>;

/// The auth service's routes.
pub fn router(state: AppState) -> axum::Router {
    routes().split_for_parts().0.with_state(state)
}

fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    users::router().merge(admin::router())
}

/// The OpenAPI description of the routes (the operator's routes over
/// parked messages, which auth serves for the marketplace, included).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = routes().into_openapi();
    api.merge(runtime::parked::routes().into_openapi());
    api
}

/// Opens the database, starts the outbox relay and returns the routes.
pub async fn start(deps: &Deps, config: Config) -> Result<Running, store::StoreError> {
    let base = deps
        .open_service(marketplace_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let state = base.state(
        deps,
        Limits {
            limiter: Arc::new(RateLimiter::new(config.attempts_per_window, config.window)),
            trusted_proxies: config.trusted_proxies,
        },
    )?;
    let parked = runtime::parked::ParkedAdmin::new(
        deps.bus.clone(),
        state.keys.clone(),
        roles::admin_check(base.db.clone()),
    );
    // Warm the dummy hash now so the first unknown-email sign-in is not
    // measurably slower than the rest.
    tokio::task::spawn_blocking(password::warm_up);
    let gauges = parked.spawn_gauges(config.parked_gauges_every, deps.shutdown.clone());
    let normalise = tokio::spawn(emails::normalise_when_ready(
        base.db.clone(),
        deps.clock.clone(),
        deps.shutdown.clone(),
    ));
    let routes = router(state).merge(runtime::parked::router(parked));
    Ok(base.running(routes, vec![gauges, normalise]))
}
