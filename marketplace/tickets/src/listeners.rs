//! How tickets reacts to orders: reserve on `order.created`, release on
//! `order.cancelled` (only if that order holds the ticket), mark sold on
//! `order.completed`. Order events are applied in version order through the
//! local order replica; duplicates are acked and ignored. A seller's ban
//! withdraws their available tickets (and any released while it lasts); its
//! lifting puts them back on sale. Bans apply by the user record's version:
//! the highest seen wins, whatever order the events arrive in. Every
//! handler runs inside the transaction its listener gives it (events in
//! hand are applied together).

use bus::listener::{EventContext, ListenerError, Listeners, Outcome, check_version};
use bus::outbox::OutboxTx;
use marketplace_events::{
    OrderCancelled, OrderCompleted, OrderCreated, OrderStatus, TicketStatus, UserBanned,
    UserUnbanned,
};
use marketplace_events::{OrderId, TicketId};
use shared::ids::UserId;
use shared::time::Timestamp;
use store::Conn;

use crate::AppState;
use crate::tickets::Ticket;

pub(crate) fn spawn(state: &AppState, listeners: Listeners) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .with_state(state.clone())
        .on_tx(on_order_created)
        .on_tx(on_order_cancelled)
        .on_tx(on_order_completed)
        .on_tx(on_seller_banned)
        .on_tx(on_seller_unbanned)
        .into_tasks()
}

/// Whether `seller` is banned, as far as this service knows.
pub(crate) fn seller_banned(c: &mut dyn Conn, seller: UserId) -> Result<bool, store::StoreError> {
    Ok(c.query_opt(
        "SELECT banned_at FROM sellers WHERE user_id = $1",
        &[&seller],
    )?
    .map(|r| r.get::<Option<Timestamp>>(0))
    .transpose()?
    .flatten()
    .is_some())
}

/// Records the seller's ban state at `version` and moves their tickets
/// from `from` to `to`, each with its `ticket.updated`; nothing when this
/// version is not newer than the one recorded.
fn set_seller_ban(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    seller: UserId,
    version: i64,
    banned_at: Option<Timestamp>,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    let (from, to) = match banned_at {
        Some(_) => (TicketStatus::Available, TicketStatus::Withdrawn),
        None => (TicketStatus::Withdrawn, TicketStatus::Available),
    };
    let stored: Option<i64> = c
        .query_opt(
            "SELECT version FROM sellers WHERE user_id = $1 FOR UPDATE",
            &[&seller],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    if stored.is_some_and(|v| v >= version) {
        return Ok(Outcome::Done); // a duplicate, or older than what we know
    }
    c.execute(
        "INSERT INTO sellers (user_id, version, banned_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, banned_at = excluded.banned_at",
        &[&seller, &version, &banned_at],
    )?;
    let ids: Vec<TicketId> = c
        .query(
            "SELECT id FROM tickets WHERE user_id = $1 AND status = $2 ORDER BY id",
            &[&seller, &from.as_str()],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    let now = state.clock.now();
    for id in &ids {
        let Some(mut ticket) = Ticket::find_for_update(c, *id)? else {
            continue;
        };
        ticket.status = to;
        ticket.version += 1;
        ticket.save(c)?;
        c.enqueue(&ticket.updated_event(), &ctx.trace, now)?;
    }
    tracing::info!(seller = %seller, version, tickets = ids.len(), status = to.as_str(), "seller's tickets moved");
    Ok(Outcome::Done)
}

fn on_seller_banned(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: UserBanned,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    set_seller_ban(state, c, e.id, e.version, Some(e.banned_at), ctx)
}

fn on_seller_unbanned(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: UserUnbanned,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    set_seller_ban(state, c, e.id, e.version, None, ctx)
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

fn on_order_created(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: OrderCreated,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
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
    c.enqueue(&ticket.updated_event(), &ctx.trace, state.clock.now())?;
    Ok(Outcome::Done)
}

/// Applies a terminal order event (`cancelled` or `complete`) at `version`.
fn on_order_finished(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    (order, version, ticket_id): (OrderId, i64, TicketId),
    status: OrderStatus,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
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
    } else if seller_banned(c, ticket.user_id)? {
        TicketStatus::Withdrawn
    } else {
        TicketStatus::Available
    };
    ticket.order_id = None;
    ticket.version += 1;
    ticket.save(c)?;
    c.enqueue(&ticket.updated_event(), &ctx.trace, state.clock.now())?;
    Ok(Outcome::Done)
}

fn on_order_cancelled(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: OrderCancelled,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    let order = (e.id, e.version, e.ticket.id);
    on_order_finished(state, c, order, OrderStatus::Cancelled, ctx)
}

fn on_order_completed(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: OrderCompleted,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    let order = (e.id, e.version, e.ticket.id);
    on_order_finished(state, c, order, OrderStatus::Complete, ctx)
}
