//! How orders reacts to the world: keep the ticket replica current (in
//! version order), cancel expired orders, decide the fate of payments,
//! cancel a banned buyer's unpaid orders. Every handler only reads and
//! writes orders' database, inside the transaction its listener gives it
//! (events in hand are applied together).

use bus::listener::{EventContext, ListenerError, Listeners, Outcome, check_version};
use bus::outbox::OutboxTx;
use marketplace_events::{
    ExpirationComplete, OrderCompleted, OrderStatus, PaymentAuthorized, TicketCreated, TicketRef,
    TicketUpdated, UserBanned, UserUnbanned,
};
use shared::ids::UserId;
use shared::time::Timestamp;
use store::Conn as _;

use crate::AppState;
use crate::orders::Order;

pub(crate) fn spawn(state: &AppState, listeners: Listeners) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .with_state(state.clone())
        .on_tx(on_ticket_created)
        .on_tx(on_ticket_updated)
        .on_tx(on_expired)
        .on_tx(on_authorized)
        .on_tx(on_user_banned)
        .on_tx(on_user_unbanned)
        .into_tasks()
}

/// Records the user's ban state at `version`, if newer than what is
/// recorded; `false` for a duplicate or an older event.
fn record_ban(
    c: &mut dyn store::Conn,
    user: UserId,
    version: i64,
    banned_at: Option<Timestamp>,
) -> Result<bool, store::StoreError> {
    let stored: Option<i64> = c
        .query_opt(
            "SELECT version FROM users WHERE id = $1 FOR UPDATE",
            &[&user],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    if stored.is_some_and(|v| v >= version) {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO users (id, version, banned_at) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, banned_at = excluded.banned_at",
        &[&user, &version, &banned_at],
    )?;
    Ok(true)
}

/// A banned buyer's unpaid orders are cancelled (each `order.cancelled`
/// frees its ticket and voids any hold); paid ones stand.
fn on_user_banned(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: UserBanned,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    if !record_ban(c, e.id, e.version, Some(e.banned_at))? {
        return Ok(Outcome::Done);
    }
    let now = state.clock.now();
    let open: Vec<marketplace_events::OrderId> = c
        .query(
            "SELECT id FROM orders WHERE user_id = $1 AND status = 'created' ORDER BY id",
            &[&e.id],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    for id in &open {
        let Some(mut order) = Order::find_for_status_change(c, *id)? else {
            continue;
        };
        if order.status != OrderStatus::Created {
            continue;
        }
        order.finish(c, OrderStatus::Cancelled)?;
        c.enqueue(&order.cancelled_event(), &ctx.trace, now)?;
    }
    tracing::info!(user_id = %e.id, version = e.version, cancelled = open.len(), "buyer banned");
    Ok(Outcome::Done)
}

fn on_user_unbanned(
    _: &AppState,
    c: &mut OutboxTx<'_>,
    e: UserUnbanned,
    _: &EventContext,
) -> Result<Outcome, ListenerError> {
    record_ban(c, e.id, e.version, None)?;
    Ok(Outcome::Done)
}

fn on_ticket_created(
    _: &AppState,
    c: &mut OutboxTx<'_>,
    e: TicketCreated,
    _: &EventContext,
) -> Result<Outcome, ListenerError> {
    c.execute(
        "INSERT INTO tickets (id, title, price_cents, user_id, version) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING",
        &[&e.id, &e.title, &e.price_cents, &e.user_id, &e.version],
    )?;
    Ok(Outcome::Done)
}

fn on_ticket_updated(
    _: &AppState,
    c: &mut OutboxTx<'_>,
    e: TicketUpdated,
    _: &EventContext,
) -> Result<Outcome, ListenerError> {
    let stored: Option<i64> = c
        .query_opt(
            "SELECT version FROM tickets WHERE id = $1 FOR UPDATE",
            &[&e.id],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    if let Some(outcome) = check_version(&format!("ticket {}", e.id), stored, e.version) {
        return Ok(outcome);
    }
    c.execute(
        "UPDATE tickets SET title = $2, price_cents = $3, version = $4, status = $5 WHERE id = $1",
        &[
            &e.id,
            &e.title,
            &e.price_cents,
            &e.version,
            &e.status.as_str(),
        ],
    )?;
    Ok(Outcome::Done)
}

fn on_expired(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: ExpirationComplete,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    let Some(mut order) = Order::find_for_status_change(c, e.order_id)? else {
        tracing::warn!(order_id = %e.order_id, "expiration for an unknown order");
        return Ok(Outcome::Done);
    };
    if order.status != OrderStatus::Created {
        return Ok(Outcome::Done); // paid or already cancelled: nothing to do
    }
    order.finish(c, OrderStatus::Cancelled)?;
    c.enqueue(&order.cancelled_event(), &ctx.trace, state.clock.now())?;
    tracing::info!(order_id = %order.id, "order expired");
    Ok(Outcome::Done)
}

/// The verdict on a hold: orders alone decides whether a payment completes
/// the order. Still `created` → complete it (`order.completed` tells payments
/// to capture). Cancelled (by the buyer or by expiry) → nothing to do: the
/// `order.cancelled` already published tells payments to void the hold.
/// Complete → a duplicate. The order's row lock orders this against a
/// concurrent cancellation or expiry, so exactly one of them wins.
fn on_authorized(
    state: &AppState,
    c: &mut OutboxTx<'_>,
    e: PaymentAuthorized,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    let Some(mut order) = Order::find_for_status_change(c, e.order_id)? else {
        // Payments voids a hold that gets no verdict within its bound.
        tracing::warn!(order_id = %e.order_id, "payment for an unknown order");
        return Ok(Outcome::Done);
    };
    if order.status != OrderStatus::Created {
        return Ok(Outcome::Done);
    }
    order.finish(c, OrderStatus::Complete)?;
    let event = OrderCompleted {
        id: order.id,
        version: order.version,
        ticket: TicketRef {
            id: order.ticket_id,
        },
    };
    c.enqueue(&event, &ctx.trace, state.clock.now())?;
    Ok(Outcome::Done)
}
