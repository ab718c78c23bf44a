//! How payments follows orders: a replica applied in version order, and a
//! refund when an order that was paid turns out to be cancelled.

use bus::listener::{EventContext, ListenerError, Listeners, Outcome, check_version};
use marketplace_events::OrderId;
use marketplace_events::{OrderCancelled, OrderCompleted, OrderCreated, OrderStatus};

use crate::AppState;
use crate::payments::refund_if_cancelled;

pub(crate) fn spawn(state: &AppState, listeners: Listeners) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .with_state(state.clone())
        .on(on_created)
        .on(|state, e: OrderCancelled, ctx| {
            on_finished(state, e.id, e.version, OrderStatus::Cancelled, ctx)
        })
        .on(|state, e: OrderCompleted, ctx| {
            on_finished(state, e.id, e.version, OrderStatus::Complete, ctx)
        })
        .into_tasks()
}

async fn on_created(
    state: AppState,
    e: OrderCreated,
    _: EventContext,
) -> Result<Outcome, ListenerError> {
    state
        .db
        .write(move |c| {
            c.execute(
                "INSERT INTO orders (id, user_id, price_cents, status, version) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
                &[&e.id, &e.user_id, &e.ticket.price_cents, &e.status.as_str(), &e.version],
            )?;
            Ok(Outcome::Done)
        })
        .await
}

async fn on_finished(
    state: AppState,
    id: OrderId,
    version: i64,
    status: OrderStatus,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    let outcome = state
        .db
        .write(move |c| {
            let stored: Option<i64> = c
                .query_opt(
                    "SELECT version FROM orders WHERE id = $1 FOR UPDATE",
                    &[&id],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            if let Some(outcome) = check_version(&format!("order {id}"), stored, version) {
                return Ok::<_, ListenerError>(outcome);
            }
            c.execute(
                "UPDATE orders SET status = $2, version = $3 WHERE id = $1",
                &[&id, &status.as_str(), &version],
            )?;
            Ok(Outcome::Done)
        })
        .await?;
    // Checked on every delivery, duplicates included, so a refund that failed
    // half-way (gateway down, crash) is retried until it is recorded.
    if outcome == Outcome::Done && status == OrderStatus::Cancelled {
        refund_if_cancelled(&state, id, &ctx.trace)
            .await
            .map_err(|e| ListenerError::dependency(format!("refunding order {id}"), e))?;
    }
    Ok(outcome)
}
