//! The payments service: pay for an order, as a saga in which the orders
//! service alone decides.
//!
//! Owns `payments` and a replica of orders; publishes `payment.authorized`,
//! `payment.captured`, `payment.voided` and `payment.refunded`; consumes
//! `order.created`, `order.cancelled` and `order.completed`.
//!
//! 1. `POST /api/payments` places a hold on the card (authorize: no money
//!    moves) and records the payment `authorized` with `payment.authorized`
//!    in the same transaction.
//! 2. Orders completes the order if it is still awaiting payment
//!    (`order.completed`), or has already cancelled it (`order.cancelled`).
//! 3. That verdict makes payments capture the hold or void it, retried until
//!    the gateway confirms (one idempotency key per payment and step), by a
//!    settler that survives restarts; `payment.captured` / `payment.voided`.
//! 4. The request waits for the verdict, bounded: 201 captured, 409 nothing
//!    was charged, or 202 pending (then `GET /api/payments/:id`).
//!
//! A hold that gets no verdict within a bound is voided and counted. Money
//! that was captured goes back only by an operator's refund.

pub mod gateway;
mod listeners;
mod payments;
pub mod saga;

use std::sync::Arc;
use std::time::Duration;

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
    // The saga: a payment is a hold that is later captured or voided. Rows
    // from before were captured charges (their ids stay in
    // `authorization_id`); a declined attempt keeps the order payable.
    // `next_try_at` is when the settler looks at the row next; NULL once it
    // reached an end (captured, voided, declined).
    Migration {
        version: 3,
        description: "payments as authorize, then capture or void",
        sql: "ALTER TABLE payments RENAME COLUMN charge_id TO authorization_id;
              ALTER TABLE payments ADD COLUMN status TEXT NOT NULL DEFAULT 'captured';
              ALTER TABLE payments ADD COLUMN card_token TEXT;
              ALTER TABLE payments ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
              ALTER TABLE payments ADD COLUMN next_try_at BIGINT;
              ALTER TABLE payments ADD COLUMN last_error TEXT;
              DROP INDEX payments_one_per_order;
              CREATE UNIQUE INDEX payments_one_live_per_order ON payments (order_id)
                  WHERE status <> 'declined';
              CREATE INDEX payments_due ON payments (next_try_at)
                  WHERE next_try_at IS NOT NULL;",
    },
    // Card testing: declines by the card's issuer (not unreadable tokens)
    // are counted per order and per buyer over a window.
    Migration {
        version: 4,
        description: "declines counted",
        sql: "ALTER TABLE payments ADD COLUMN card_declined BIGINT NOT NULL DEFAULT 0;
              CREATE INDEX payments_card_declines ON payments (order_id, created_at)
                  WHERE card_declined = 1;
              CREATE INDEX orders_by_user ON orders (user_id);",
    },
    Migration {
        version: 5,
        description: "idempotency keys",
        sql: shared::idempotency::TABLE_SQL,
    },
    // The buyer's declines counted from an index of declines alone: the
    // count through the order replica visited every order the buyer ever
    // placed, so a payment cost more the more a buyer had bought (issue 35).
    Migration {
        version: 6,
        description: "a payment names its buyer; declines indexed per buyer",
        sql: "ALTER TABLE payments ADD COLUMN user_id TEXT;
              UPDATE payments SET user_id = (SELECT o.user_id FROM orders o WHERE o.id = payments.order_id);
              CREATE INDEX payments_card_declines_by_buyer ON payments (user_id, created_at)
                  WHERE card_declined = 1;",
    },
];

/// Settings of the payments service.
#[derive(Clone)]
pub struct Config {
    pub gateway: Arc<dyn PaymentGateway>,
    /// ISO currency code charged (`PAYMENT_CURRENCY`, default `usd`).
    pub currency: String,
    /// How long `POST /api/payments` waits for the order's verdict before
    /// answering 202 (`PAYMENT_WAIT_SECONDS`, default 5).
    pub verdict_wait: Duration,
    /// How long a hold waits for a verdict before it is voided
    /// (`PAYMENT_VERDICT_TIMEOUT_SECONDS`, default one hour; orders expire
    /// long before, so only a lost order gets there).
    pub verdict_timeout: Duration,
    /// How long an authorization may stay unconfirmed (a crash or a gateway
    /// outage mid-request) before the settler asks the gateway again with
    /// the same idempotency key. Longer than the gateway client's timeout.
    pub authorize_recovery: Duration,
    /// Card testing: past this many declined cards within `decline_window`,
    /// a buyer's payments are refused with 429 (`PAYMENT_MAX_DECLINES`,
    /// default 5, at most 10).
    pub max_declines_per_buyer: u32,
    /// The same for one order (`PAYMENT_MAX_DECLINES_PER_ORDER`, default 3).
    pub max_declines_per_order: u32,
    /// The window declines are counted over (`PAYMENT_DECLINE_WINDOW_SECONDS`,
    /// default one hour).
    pub decline_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: Arc::new(OfflineGateway),
            currency: "usd".into(),
            verdict_wait: Duration::from_secs(5),
            verdict_timeout: Duration::from_secs(3600),
            authorize_recovery: Duration::from_secs(60),
            max_declines_per_buyer: 5,
            max_declines_per_order: 3,
            decline_window: Duration::from_secs(3600),
        }
    }
}

/// The settings plus what the request path and the settler share in
/// process: verdicts as they are applied, and a wake-up for the settler.
#[derive(Clone)]
pub struct Shared {
    pub settings: Config,
    pub(crate) verdicts: saga::Verdicts,
    pub(crate) settler: Arc<tokio::sync::Notify>,
}

/// What the handlers and listeners share.
pub type AppState = runtime::service::ServiceState<Shared>;

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
    let state = base.state(
        deps,
        Shared {
            settings: config,
            verdicts: saga::Verdicts::default(),
            settler: Arc::new(tokio::sync::Notify::new()),
        },
    )?;
    let mut tasks = listeners::spawn(&state, base.listeners(listener_options));
    tasks.push(tokio::spawn(saga::run_settler(
        state.clone(),
        deps.shutdown.clone(),
    )));
    Ok(base.running(router(state), tasks))
}
