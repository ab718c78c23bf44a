//! The expiration service: one durable timer per order.
//!
//! Consumes `order.created` and stores a timer for its `expiresAt` in its own
//! database; a scheduler sleeps until the earliest timer is due (woken early
//! when a sooner one arrives — no polling), then deletes the due timers and
//! writes `expiration.complete` to the outbox in the same transaction, so
//! each timer fires once. A fired timer's order is remembered for
//! [`FIRED_KEPT`], so that an `order.created` delivered again (its first
//! acknowledgement lost) does not set it again. Timers that came due while
//! the process was down fire right after start.

use std::time::Duration;
use store::Conn as _;

use bus::listener::{EventContext, ListenerError, ListenerOptions, Outcome};
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox, OutboxTx};
use marketplace_events::OrderId;
use marketplace_events::{ExpirationComplete, OrderCreated};
use runtime::service::{Deps, Running};
use shared::shutdown::Shutdown;
use shared::time::{Clock, Timestamp};
use shared::trace::TraceContext;
use std::sync::Arc;
use store::{Db, Migration, StoreError};
use tokio::sync::Notify;

pub const SERVICE: &str = "expiration";

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "timers",
        sql: "CREATE TABLE timers (
                  order_id TEXT PRIMARY KEY,
                  expires_at BIGINT NOT NULL,
                  traceparent TEXT NOT NULL
              );
              CREATE INDEX timers_due ON timers (expires_at);",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
    Migration {
        version: 3,
        description: "fired timers remembered",
        // A table of their own: `timers` stays the pending ones alone, so
        // finding the next and counting them cost what they did.
        sql: "CREATE TABLE fired_timers (
                  order_id TEXT PRIMARY KEY,
                  fired_at BIGINT NOT NULL
              );
              CREATE INDEX fired_timers_at ON fired_timers (fired_at);",
    },
];

/// How long a fired timer's order is remembered: longer than any
/// redelivery of its `order.created` can come (a consumer parks a message
/// after its deliveries run out, within minutes; a week covers a consumer
/// down for days).
pub const FIRED_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Stores (once) a timer for an order (with the others in hand, in one
/// transaction) and wakes the scheduler once that has committed. An order
/// whose timer has fired already gets none.
fn on_order_created(
    wake: &Arc<Notify>,
    c: &mut OutboxTx<'_>,
    e: OrderCreated,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    if c.query_opt("SELECT 1 FROM fired_timers WHERE order_id = $1", &[&e.id])?
        .is_some()
    {
        return Ok(Outcome::Done);
    }
    c.execute(
        "INSERT INTO timers (order_id, expires_at, traceparent) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
        &[&e.id, &e.expires_at, &ctx.trace.to_string()],
    )?;
    let wake = wake.clone();
    c.after_commit(move || wake.notify_one());
    Ok(Outcome::Done)
}

/// Fires every timer due at `now`; returns how many fired. `DELETE …
/// RETURNING` hands each due timer to exactly one caller, also when several
/// replicas race on PostgreSQL, and the event is written in the same
/// transaction: a timer fires once. Its order is remembered as fired, and
/// orders fired more than [`FIRED_KEPT`] ago are forgotten.
pub async fn fire_due(outbox: &Outbox, now: Timestamp) -> Result<usize, StoreError> {
    outbox
        .write(move |c| {
            let due = c.query(
                "DELETE FROM timers WHERE expires_at <= $1 RETURNING order_id, traceparent, expires_at",
                &[&now],
            )?;
            if !due.is_empty() {
                let forget = Timestamp::from_millis(now.millis() - FIRED_KEPT.as_millis() as i64);
                c.execute("DELETE FROM fired_timers WHERE fired_at < $1", &[&forget])?;
            }
            for row in &due {
                let order_id: OrderId = row.get(0)?;
                let trace = TraceContext::parse(&row.get::<String>(1)?)
                    .unwrap_or_else(TraceContext::new_root);
                // How late the timer fires, against the order's expiresAt.
                let expires_at: Timestamp = row.get(2)?;
                shared::metrics::observe(
                    "expiration_lateness_seconds",
                    &[],
                    (now.millis() - expires_at.millis()).max(0) as f64 / 1000.0,
                );
                c.execute(
                    "INSERT INTO fired_timers (order_id, fired_at) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
                    &[&order_id, &now],
                )?;
                c.enqueue(&ExpirationComplete { order_id }, &trace, now)?;
                tracing::info!(%order_id, "order timer fired");
            }
            Ok(due.len())
        })
        .await
}

/// How often at most the scheduler counts the pending timers (the gauge
/// `expiration_timers_pending`): counting is a scan of the table, which
/// on every order (each one wakes the scheduler) cost more than the rest of
/// the order's handling once timers were in the tens of thousands.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// The next timer due, and — when `count` — how many are pending.
pub async fn next_due(db: &Db, count: bool) -> Result<Option<Timestamp>, StoreError> {
    let (next, pending) = db
        .read(move |c| {
            let next = c.query("SELECT MIN(expires_at) FROM timers", &[])?[0]
                .get::<Option<Timestamp>>(0)?;
            let pending = if count {
                Some(c.query("SELECT COUNT(*) FROM timers", &[])?[0].get::<i64>(0)?)
            } else {
                None
            };
            Ok::<_, StoreError>((next, pending))
        })
        .await?;
    if let Some(pending) = pending {
        shared::metrics::set("expiration_timers_pending", &[], pending as f64);
    }
    Ok(next)
}

/// Why the scheduler cannot fire timers, while it cannot (the service is
/// not ready meanwhile).
#[derive(Clone, Default)]
struct SchedulerHealth(Arc<std::sync::Mutex<Option<shared::http::NotReady>>>);

impl SchedulerHealth {
    fn set(&self, problem: Option<shared::http::NotReady>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    fn check(&self) -> Result<(), shared::http::NotReady> {
        match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(problem) => Err(problem.clone()),
        }
    }
}

/// How long the scheduler waits after failing to fire timers: 100 ms,
/// doubling up to 30 s while it keeps failing.
fn fire_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(Duration::from_millis(100), |d| {
        (d * 2).min(Duration::from_secs(30))
    })
}

/// The scheduler: fire what is due, sleep until the next timer or a wake-up.
/// When firing fails (the database cannot write), it backs off, counts the
/// failure (`expiration_fire_failures_total`) and reports not-ready until
/// a round succeeds again.
async fn run_scheduler(
    db: Db,
    outbox: Outbox,
    clock: Clock,
    wake: Arc<Notify>,
    health: SchedulerHealth,
    mut shutdown: Shutdown,
) {
    tokio::select! {
        _ = db.wait_ready() => {}
        _ = shutdown.wait() => return,
    }
    let mut counted_at: Option<tokio::time::Instant> = None;
    let mut failing: Option<Duration> = None;
    loop {
        match fire_due(&outbox, clock.now()).await {
            Ok(_) => {
                if failing.take().is_some() {
                    tracing::info!("firing timers again");
                    health.set(None);
                }
            }
            Err(e) => {
                let wait = fire_backoff(failing);
                failing = Some(wait);
                shared::metrics::inc("expiration_fire_failures_total", &[]);
                tracing::warn!(error = %store::report(&e), retry_in_ms = wait.as_millis() as u64, "cannot fire timers");
                health.set(Some(shared::http::NotReady::with_detail(
                    "cannot fire timers",
                    store::report(&e),
                )));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.wait() => break,
                }
            }
        }
        let now = tokio::time::Instant::now();
        let count = counted_at.is_none_or(|at| now.duration_since(at) >= COUNT_EVERY);
        let mut sleep_until = match next_due(&db, count).await {
            Ok(Some(at)) => clock.instant_at(at),
            Ok(None) => now + Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %store::report(&e), "cannot read timers");
                now + Duration::from_secs(1)
            }
        };
        match (count, counted_at) {
            (true, _) => counted_at = Some(now),
            // Not counted this time: come back to count what changed.
            (false, Some(at)) => sleep_until = sleep_until.min(at + COUNT_EVERY),
            (false, None) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = wake.notified() => {}
            _ = shutdown.wait() => break,
        }
    }
    tracing::info!("expiration scheduler stopped");
}

/// Opens the database, starts the listener, the scheduler and the relay.
pub async fn start(deps: &Deps, listener_options: ListenerOptions) -> Result<Running, StoreError> {
    let base = deps
        .open_service(marketplace_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let wake = Arc::new(Notify::new());
    let health = SchedulerHealth::default();
    let mut tasks = base
        .listeners(listener_options)
        .with_state(wake.clone())
        .on_tx(on_order_created)
        .into_tasks();
    let scheduler = run_scheduler(
        base.db.clone(),
        base.outbox.clone(),
        deps.clock.clone(),
        wake,
        health.clone(),
        deps.shutdown.clone(),
    );
    tasks.push(tokio::spawn(scheduler));
    let mut running = base.running(axum::Router::new(), tasks);
    running.ready_checks.push((
        "expiration scheduler".into(),
        Arc::new(move || {
            let health = health.clone();
            Box::pin(async move { health.check() })
        }),
    ));
    Ok(running)
}
