//! How payments follows orders: a replica applied in version order, and the
//! order's verdict on a hold — capture it when the order completed, void it
//! when the order was cancelled.

use bus::listener::{EventContext, ListenerError, Listeners, Outcome, check_version};
use bus::outbox::OutboxTx;
use marketplace_events::OrderId;
use marketplace_events::{OrderCancelled, OrderCompleted, OrderCreated, OrderStatus};
use store::Conn as _;

use crate::AppState;
use crate::saga;

pub(crate) fn spawn(state: &AppState, listeners: Listeners) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .with_state(state.clone())
        .on_tx(on_created)
        .on_tx(|state, c, e: OrderCancelled, _| {
            on_finished(state, c, e.id, e.version, OrderStatus::Cancelled)
        })
        .on_tx(|state, c, e: OrderCompleted, _| {
            on_finished(state, c, e.id, e.version, OrderStatus::Complete)
        })
        .into_tasks()
}

/// The replica learns of a new order (applied with the others in hand, in
/// one transaction).
fn on_created(
    _: &AppState,
    c: &mut OutboxTx<'_>,
    e: OrderCreated,
    _: &EventContext,
) -> Result<Outcome, ListenerError> {
    c.execute(
        "INSERT INTO orders (id, user_id, price_cents, status, version) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING",
        &[
            &e.id,
            &e.user_id,
            &e.ticket.price_cents,
            &e.status.as_str(),
            &e.version,
        ],
    )?;
    Ok(Outcome::Done)
}

/// The order reached its end: the replica takes it and, in the same
/// transaction (with the other verdicts in hand), the order's hold gets its
/// verdict — a durable obligation the settler keeps if what follows fails.
/// Once that has committed, the capture or void is tried at once, in a task
/// of its own: the gateway's latency does not queue the verdicts behind it.
fn on_finished(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    id: OrderId,
    version: i64,
    status: OrderStatus,
) -> Result<Outcome, ListenerError> {
    let stored: Option<i64> = c
        .query_opt(
            "SELECT version FROM orders WHERE id = $1 FOR UPDATE",
            &[&id],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    if let Some(outcome) = check_version(&format!("order {id}"), stored, version) {
        return Ok(outcome);
    }
    c.execute(
        "UPDATE orders SET status = $2, version = $3 WHERE id = $1",
        &[&id, &status.as_str(), &version],
    )?;
    let work = saga::apply_verdict(c, id, status == OrderStatus::Complete, state.clock.now())?;
    if let Some((payment, _)) = work {
        let state = state.clone();
        c.after_commit(move || {
            // A failure or a crash from here on is the settler's to retry:
            // the verdict is stored.
            tokio::spawn(async move {
                if let Err(e) = saga::settle(&state, payment).await {
                    tracing::warn!(%payment, error = %store::report(&e), "cannot settle the payment now; the settler will retry");
                }
            });
        });
    }
    Ok(Outcome::Done)
}
