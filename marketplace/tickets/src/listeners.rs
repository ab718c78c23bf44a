//! How tickets reacts to orders: reserve on `order.created`, release on
//! `order.cancelled` (only if that order holds the ticket), mark sold on
//! `order.completed`. Order events are applied in version order through the
//! local order replica; duplicates are acked and ignored.

use bus::listener::{EventContext, ListenerError, Listeners, Outcome, check_version};
use marketplace_events::{OrderCancelled, OrderCompleted, OrderCreated, OrderStatus, TicketStatus};
use marketplace_events::{OrderId, TicketId};
use store::Conn;

use crate::AppState;
use crate::tickets::Ticket;

pub(crate) fn spawn(state: &AppState, listeners: Listeners) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .with_state(state.clone())
        .on(on_order_created)
        .on(on_order_cancelled)
        .on(on_order_completed)
        .into_tasks()
}

/// The stored version of an order, if this service has seen it.
fn order_version(c: &mut dyn Conn, id: OrderId) -> Result<Option<i64>, store::StoreError> {
    c.query_opt(
        "SELECT version FROM orders WHERE id = $1 FOR UPDATE",
        &[&id],
    )?
    .map(|r| r.get(0))
    .transpose()
}

async fn on_order_created(
    state: AppState,
    e: OrderCreated,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    let now = state.clock.now();
    let outcome = state
        .outbox
        .write(move |c| {
            if order_version(c, e.id)?.is_some() {
                return Ok(Outcome::Done); // duplicate
            }
            let Some(mut ticket) = Ticket::find_for_update(c, e.ticket.id)? else {
                return Ok(Outcome::NotYet(format!("ticket {} unknown", e.ticket.id)));
            };
            if ticket.order_id.is_some() || ticket.status != TicketStatus::Available {
                // Held by an order whose cancellation has not reached us yet.
                return Ok(Outcome::NotYet(format!("ticket {} still held", ticket.id)));
            }
            c.execute(
                "INSERT INTO orders (id, ticket_id, version, status) VALUES ($1, $2, $3, $4)",
                &[
                    &e.id,
                    &e.ticket.id,
                    &e.version,
                    &OrderStatus::Created.as_str(),
                ],
            )?;
            ticket.status = TicketStatus::Reserved;
            ticket.order_id = Some(e.id);
            ticket.version += 1;
            ticket.save(c)?;
            c.enqueue(&ticket.updated_event(), &ctx.trace, now)?;
            Ok::<_, ListenerError>(Outcome::Done)
        })
        .await?;
    Ok(outcome)
}

/// Applies a terminal order event (`cancelled` or `complete`) at `version`.
async fn on_order_finished(
    state: AppState,
    order: OrderId,
    version: i64,
    ticket_id: TicketId,
    status: OrderStatus,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    let now = state.clock.now();
    let outcome = state
        .outbox
        .write(move |c| {
            if let Some(outcome) =
                check_version(&format!("order {order}"), order_version(c, order)?, version)
            {
                return Ok(outcome);
            }
            c.execute(
                "UPDATE orders SET version = $2, status = $3 WHERE id = $1",
                &[&order, &version, &status.as_str()],
            )?;
            let Some(mut ticket) = Ticket::find_for_update(c, ticket_id)? else {
                return Ok(Outcome::Done);
            };
            // Only the order that holds the ticket may release or sell it.
            if ticket.order_id != Some(order) {
                return Ok(Outcome::Done);
            }
            ticket.status = if status == OrderStatus::Complete {
                TicketStatus::Sold
            } else {
                TicketStatus::Available
            };
            ticket.order_id = None;
            ticket.version += 1;
            ticket.save(c)?;
            c.enqueue(&ticket.updated_event(), &ctx.trace, now)?;
            Ok::<_, ListenerError>(Outcome::Done)
        })
        .await?;
    Ok(outcome)
}

async fn on_order_cancelled(
    state: AppState,
    e: OrderCancelled,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    on_order_finished(
        state,
        e.id,
        e.version,
        e.ticket.id,
        OrderStatus::Cancelled,
        ctx,
    )
    .await
}

async fn on_order_completed(
    state: AppState,
    e: OrderCompleted,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    on_order_finished(
        state,
        e.id,
        e.version,
        e.ticket.id,
        OrderStatus::Complete,
        ctx,
    )
    .await
}
