//! `/api/orders`: buy, list mine, show mine, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use bus::outbox::OutboxTx;
use marketplace_api as api;
use marketplace_events::{
    OrderCancelled, OrderCreated, OrderStatus, OrderTicket, TicketRef, TicketStatus,
};
use marketplace_events::{OrderId, TicketId};
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{ApiQuery, IdPath, PageQuery, ValidJson};
use shared::idempotency::{Claim, IdempotencyKey};
use shared::ids::UserId;
use shared::money::{Dollars, Money};
use shared::time::Timestamp;
use shared::trace::TraceContext;
use store::{Conn, Row, StoreError};

use crate::AppState;

/// The routes and their OpenAPI description, registered together.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(list, create))
        .routes(utoipa_axum::routes!(show, cancel))
}

/// An order as the API returns it.
impl From<&Order> for api::Order {
    fn from(o: &Order) -> Self {
        api::Order {
            id: o.id,
            user_id: o.user_id,
            status: o.status,
            expires_at: o.expires_at,
            version: o.version,
            ticket: api::OrderTicket {
                id: o.ticket_id,
                title: o.ticket_title.clone(),
                price: Dollars(o.ticket_price),
                version: o.ticket_version,
            },
        }
    }
}

/// An order joined with its ticket as this service knows it.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub status: OrderStatus,
    pub expires_at: Timestamp,
    pub version: i64,
    pub ticket_id: TicketId,
    pub ticket_title: String,
    pub ticket_price: Money,
    pub ticket_version: i64,
}

const SELECT: &str = "SELECT o.id, o.user_id, o.status, o.expires_at, o.version, t.id, t.title, t.price_cents, t.version
                      FROM orders o JOIN tickets t ON t.id = o.ticket_id";

impl Order {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Order {
            id: r.get(0)?,
            user_id: r.get(1)?,
            status: r.get(2)?,
            expires_at: r.get(3)?,
            version: r.get(4)?,
            ticket_id: r.get(5)?,
            ticket_title: r.get(6)?,
            ticket_price: r.get(7)?,
            ticket_version: r.get(8)?,
        })
    }

    /// Finds an order and locks it (and its ticket row) until the transaction ends.
    pub(crate) fn find_for_update(
        c: &mut dyn Conn,
        id: OrderId,
    ) -> Result<Option<Order>, StoreError> {
        c.query_opt(&format!("{SELECT} WHERE o.id = $1 FOR UPDATE"), &[&id])?
            .map(|r| Order::from_row(&r))
            .transpose()
    }

    /// Finds an order and locks its row alone (not its ticket's) until the
    /// transaction ends: for listeners, which only change the order's
    /// status. They apply events in batches, locking many orders in one
    /// transaction; taking each ticket's row as well made them deadlock with
    /// the ticket replica's batch, which locks tickets in its own order
    /// (PostgreSQL broke each such cycle only after its 1 s deadlock
    /// timeout).
    pub(crate) fn find_for_status_change(
        c: &mut dyn Conn,
        id: OrderId,
    ) -> Result<Option<Order>, StoreError> {
        c.query_opt(&format!("{SELECT} WHERE o.id = $1 FOR UPDATE OF o"), &[&id])?
            .map(|r| Order::from_row(&r))
            .transpose()
    }

    pub(crate) fn find(c: &mut dyn Conn, id: OrderId) -> Result<Option<Order>, StoreError> {
        c.query_opt(&format!("{SELECT} WHERE o.id = $1"), &[&id])?
            .map(|r| Order::from_row(&r))
            .transpose()
    }

    /// Moves the order to a terminal `status`, bumping its version.
    pub(crate) fn finish(
        &mut self,
        c: &mut dyn Conn,
        status: OrderStatus,
    ) -> Result<(), StoreError> {
        self.status = status;
        self.version += 1;
        c.execute(
            "UPDATE orders SET status = $2, version = $3 WHERE id = $1",
            &[&self.id, &status.as_str(), &self.version],
        )?;
        Ok(())
    }

    pub(crate) fn cancelled_event(&self) -> OrderCancelled {
        OrderCancelled {
            id: self.id,
            version: self.version,
            ticket: TicketRef { id: self.ticket_id },
        }
    }
}

/// Finds the caller's order; someone else's is as good as missing.
fn find_mine(c: &mut dyn Conn, id: OrderId, user: UserId, lock: bool) -> Result<Order, ApiError> {
    let found = if lock {
        Order::find_for_update(c, id)?
    } else {
        Order::find(c, id)?
    };
    match found {
        Some(o) if o.user_id == user => Ok(o),
        _ => Err(ApiError::NotFound),
    }
}

/// Orders a ticket: it is held for the caller until `expiresAt`; publishes
/// `order.created`. Of concurrent buyers, exactly one wins.
#[utoipa::path(post, path = "/api/orders", tag = "orders",
    request_body = api::OrderInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Ordered; the ticket is held", body = api::Order),
        (status = 403, description = "The caller's own ticket", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = shared::openapi::ErrorBody),
        (status = 409, description = "The ticket is reserved or sold, or the caller holds as many unpaid orders as allowed", body = shared::openapi::ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another request", body = shared::openapi::ErrorBody),
    ),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Makes a retry safe: a request with the key of an earlier one (same body, within 24 h) gets that one's answer")))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    IdempotencyKey(key): IdempotencyKey,
    ValidJson(ticket_id): ValidJson<api::OrderInput>,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let expires_at = now.plus_secs(state.config.order_expiration.as_secs());
    let cap = state.config.max_active_orders_per_user;
    let hash = shared::idempotency::request_hash(&[&ticket_id]);
    let answer = state
        .outbox
        .write(move |c| {
            // The buyer's row, written and so locked until this
            // transaction ends: one buyer's orders are placed one at a
            // time, so the count below holds also for concurrent requests
            // (on PostgreSQL; SQLite runs one write at a time anyway) —
            // and so do retries under one idempotency key.
            c.execute(
                "INSERT INTO buyers (user_id) VALUES ($1)
                 ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id",
                &[&user.id],
            )?;
            let placed =
                |c: &mut OutboxTx<'_>| place(c, &user, &ticket_id, cap, now, expires_at, &trace);
            let Some(key) = key else {
                return placed(c).map(Answer::Placed);
            };
            // The claim and the order commit together: a refusal rolls the
            // claim back too, so only an order is an answer to give again
            // (a refused request's retry is asked afresh: what refused it —
            // a ticket not yet known, one reserved — may have changed).
            if let Claim::Answered { status, body } =
                shared::idempotency::claim(c, user.id, &key, &hash, now)?
            {
                return Ok(Answer::Replay(status, body));
            }
            let order = placed(c)?;
            let body =
                serde_json::to_string(&api::Order::from(&order)).map_err(ApiError::internal)?;
            shared::idempotency::answer(c, user.id, &key, 201, &body)?;
            Ok(Answer::Placed(order))
        })
        .await?;
    match answer {
        Answer::Placed(order) => {
            Ok((StatusCode::CREATED, Json(api::Order::from(&order))).into_response())
        }
        Answer::Replay(status, body) => Ok(shared::idempotency::replay(status, body)),
    }
}

/// What an order request comes to.
enum Answer {
    Placed(Order),
    /// The answer an earlier request with the same key got.
    Replay(u16, String),
}

/// Places the order in the caller's transaction.
fn place(
    c: &mut OutboxTx<'_>,
    user: &AuthUser,
    ticket_id: &str,
    cap: i64,
    now: Timestamp,
    expires_at: Timestamp,
    trace: &TraceContext,
) -> Result<Order, ApiError> {
    let ticket_id = TicketId::parse(ticket_id).ok_or(ApiError::NotFound)?;
    let active: i64 = c.query(
        "SELECT COUNT(*) FROM orders WHERE user_id = $1 AND status = 'created'",
        &[&user.id],
    )?[0]
        .get(0)?;
    if active >= cap {
        return Err(ApiError::Conflict(format!(
            "You already have {cap} unpaid orders; pay for or cancel one first"
        )));
    }
    // A session the deny list had not yet ended still orders nothing.
    if c.query_opt(
        "SELECT 1 FROM users WHERE id = $1 AND banned_at IS NOT NULL",
        &[&user.id],
    )?
    .is_some()
    {
        return Err(ApiError::Forbidden("This account is banned".into()));
    }
    let ticket = c
        .query_opt(
            "SELECT user_id, price_cents, status FROM tickets WHERE id = $1",
            &[&ticket_id],
        )?
        .ok_or(ApiError::NotFound)?;
    let (seller, price, status): (UserId, Money, TicketStatus) =
        (ticket.get(0)?, ticket.get(1)?, ticket.get(2)?);
    if status == TicketStatus::Withdrawn {
        return Err(ApiError::Conflict("Ticket is not for sale".into()));
    }
    if seller == user.id {
        return Err(ApiError::Forbidden("You cannot buy your own ticket".into()));
    }
    if let Some(active) = c.query_opt(
        "SELECT status FROM orders WHERE ticket_id = $1 AND status IN ('created', 'complete')",
        &[&ticket_id],
    )? {
        return Err(ApiError::Conflict(
            if active.get::<String>(0)? == "complete" {
                "Ticket is already sold".into()
            } else {
                "Ticket is already reserved".into()
            },
        ));
    }
    let id = OrderId::new();
    // The partial unique index is the judge between concurrent buyers.
    c.execute(
        "INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at)
         VALUES ($1, $2, $3, 'created', $4, 0, $5)",
        &[&id, &user.id, &ticket_id, &expires_at, &now],
    )
    .map_err(|e| {
        if e.is_unique_violation() {
            ApiError::Conflict("Ticket is already reserved".into())
        } else {
            e.into()
        }
    })?;
    let event = OrderCreated {
        id,
        version: 0,
        status: OrderStatus::Created,
        user_id: user.id,
        expires_at,
        ticket: OrderTicket {
            id: ticket_id,
            price_cents: price,
        },
    };
    c.enqueue(&event, trace, now)?;
    Ok(Order::find(c, id)?.expect("inserted above"))
}

/// The caller's orders, newest first, a page at a time (`limit`, and
/// `after` = the last id of the previous page).
#[utoipa::path(get, path = "/api/orders", tag = "orders",
    params(PageQuery),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = Vec<api::Order>),
        (status = 400, description = "A malformed limit or cursor", body = shared::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<api::Order>>, ApiError> {
    let (limit, after) = q.read(OrderId::parse, "an order")?;
    let orders = state
        .db
        .read(move |c| {
            let rows = match after {
                None => c.query(
                    &format!("{SELECT} WHERE o.user_id = $1 ORDER BY o.id DESC LIMIT $2"),
                    &[&user.id, &limit],
                )?,
                Some(after) => c.query(
                    &format!(
                        "{SELECT} WHERE o.user_id = $1 AND o.id < $2 ORDER BY o.id DESC LIMIT $3"
                    ),
                    &[&user.id, &after, &limit],
                )?,
            };
            rows.iter()
                .map(Order::from_row)
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(orders.iter().map(api::Order::from).collect()))
}

/// One of the caller's orders.
#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "order id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The order", body = api::Order),
        (status = 404, description = "No such order of the caller's", body = shared::openapi::ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<OrderId>,
) -> Result<Json<api::Order>, ApiError> {
    let order = state
        .db
        .read(move |c| find_mine(c, id, user.id, false))
        .await?;
    Ok(Json(api::Order::from(&order)))
}

/// Cancels one of the caller's orders; publishes `order.cancelled` (nothing
/// if it was already cancelled).
#[utoipa::path(delete, path = "/api/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "order id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 404, description = "No such order of the caller's", body = shared::openapi::ErrorBody),
        (status = 409, description = "The order is complete", body = shared::openapi::ErrorBody),
    ))]
async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    IdPath(id): IdPath<OrderId>,
) -> Result<StatusCode, ApiError> {
    let now = state.clock.now();
    state
        .outbox
        .write(move |c| {
            let mut order = find_mine(c, id, user.id, true)?;
            match order.status {
                OrderStatus::Complete => {
                    Err(ApiError::Conflict("Cannot cancel a completed order".into()))
                }
                OrderStatus::Cancelled => Ok(()), // nothing to announce
                OrderStatus::Created => {
                    order.finish(c, OrderStatus::Cancelled)?;
                    c.enqueue(&order.cancelled_event(), &trace, now)?;
                    Ok(())
                }
            }
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
