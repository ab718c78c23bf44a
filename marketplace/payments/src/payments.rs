//! `POST /api/payments` (place a hold, wait for the order's verdict) and
//! `GET /api/payments/:id`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use marketplace_events::{OrderId, OrderStatus, PaymentId};
use serde::Serialize;
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{Fields, FromFields, IdPath, ValidJson};
use shared::money::{Dollars, Money};
use shared::trace::TraceContext;
use store::StoreError;

use crate::AppState;
use crate::gateway::GatewayError;
use crate::saga::{self, Payment, Status};

/// The routes and their OpenAPI description, registered together.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(pay))
        .routes(utoipa_axum::routes!(show))
}

/// Where a payment stands, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublicStatus {
    /// The card holds the amount; the order's verdict is not known yet.
    Pending,
    /// The order completed; the held amount is being taken.
    Capturing,
    /// The order completed and the amount was taken.
    Captured,
    /// The order was cancelled (or no verdict came): the hold was released,
    /// nothing was charged.
    Voided,
    /// The card was declined; nothing was held.
    Declined,
    /// Captured, then given back by an operator.
    Refunded,
}

impl PublicStatus {
    fn of(p: &Payment) -> PublicStatus {
        match p.status {
            _ if p.refund_id.is_some() => PublicStatus::Refunded,
            Status::Authorizing | Status::Authorized => PublicStatus::Pending,
            Status::Capturing => PublicStatus::Capturing,
            Status::Captured => PublicStatus::Captured,
            Status::Voiding | Status::Voided => PublicStatus::Voided,
            Status::Declined => PublicStatus::Declined,
        }
    }
}

/// A payment as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Payment)]
pub struct PaymentBody {
    #[schema(value_type = String, format = Uuid)]
    id: PaymentId,
    #[schema(value_type = String, format = Uuid)]
    order_id: OrderId,
    status: PublicStatus,
    /// The gateway's authorization (a Stripe PaymentIntent id); empty while
    /// the gateway has not answered.
    authorization_id: String,
    /// Dollars held, charged or released.
    #[schema(value_type = f64)]
    amount: Dollars,
}

impl From<&Payment> for PaymentBody {
    fn from(p: &Payment) -> Self {
        PaymentBody {
            id: p.id,
            order_id: p.order_id,
            status: PublicStatus::of(p),
            authorization_id: p.authorization_id.clone(),
            amount: Dollars(p.amount),
        }
    }
}

/// What a buyer sends to pay for an order.
#[derive(utoipa::ToSchema)]
#[schema(as = PaymentInput)]
pub struct PaymentInput {
    /// The order's id; one that names no order of the caller's is a 404.
    #[schema(rename = "orderId", min_length = 1)]
    order_id: String,
    /// A card token, such as Stripe's `tok_visa`.
    #[schema(min_length = 1)]
    token: String,
}

impl FromFields for PaymentInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let order_id = f.non_empty("orderId", "orderId");
        let token = f.non_empty("token", "token");
        Some(PaymentInput {
            order_id: order_id?.trim().to_owned(),
            token: token?.trim().to_owned(),
        })
    }
}

/// The 409 of an order that was cancelled before the payment's verdict.
pub const NOTHING_CHARGED: &str = "Order was cancelled; nothing was charged";

fn conflict_for(p: &Payment) -> ApiError {
    ApiError::Conflict(
        match PublicStatus::of(p) {
            PublicStatus::Pending => "A payment for this order is already being processed",
            PublicStatus::Voided => NOTHING_CHARGED,
            _ => "Order is already paid",
        }
        .into(),
    )
}

/// Card testing: 429 once the order, or its buyer, has had as many cards
/// declined within the window as the settings allow; `Retry-After` is when
/// the oldest of them leaves the window.
fn check_declines(
    c: &mut dyn store::Conn,
    settings: &crate::Config,
    order: OrderId,
    user: shared::ids::UserId,
    now: shared::time::Timestamp,
) -> Result<(), ApiError> {
    let window_ms = settings.decline_window.as_millis() as i64;
    let since = shared::time::Timestamp::from_millis(now.millis() - window_ms);
    let counted = |row: Option<store::Row>| -> Result<(i64, Option<i64>), StoreError> {
        match row {
            Some(r) => Ok((r.get(0)?, r.get(1)?)),
            None => Ok((0, None)),
        }
    };
    let per_order = counted(c.query_opt(
        "SELECT COUNT(*), MIN(created_at) FROM payments
         WHERE order_id = $1 AND card_declined = 1 AND created_at > $2",
        &[&order, &since],
    )?)?;
    let per_buyer = counted(c.query_opt(
        "SELECT COUNT(*), MIN(p.created_at) FROM payments p JOIN orders o ON o.id = p.order_id
         WHERE o.user_id = $1 AND p.card_declined = 1 AND p.created_at > $2",
        &[&user, &since],
    )?)?;
    for ((count, oldest), max) in [
        (per_order, settings.max_declines_per_order),
        (per_buyer, settings.max_declines_per_buyer),
    ] {
        if count >= i64::from(max) {
            let free_at = oldest.unwrap_or(now.millis()) + window_ms;
            let retry_after_secs = ((free_at - now.millis()).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            shared::metrics::inc("payments_decline_limited_total", &[]);
            tracing::warn!(%order, user_id = %user, count, "too many declined cards: payment refused");
            return Err(ApiError::TooManyRequests { retry_after_secs });
        }
    }
    Ok(())
}

/// The replica's order, if it is the caller's, and its live payment.
fn load(
    c: &mut dyn store::Conn,
    order: OrderId,
    user: shared::ids::UserId,
) -> Result<Option<(OrderStatus, Money, Option<Payment>)>, StoreError> {
    let Some(row) = c.query_opt(
        "SELECT user_id, price_cents, status FROM orders WHERE id = $1",
        &[&order],
    )?
    else {
        return Ok(None);
    };
    if row.get::<shared::ids::UserId>(0)? != user {
        return Ok(None);
    }
    Ok(Some((
        row.get(2)?,
        row.get(1)?,
        Payment::live_for_order(c, order)?,
    )))
}

/// Places a hold for the order's price on the card and waits (bounded) for
/// the orders service's verdict: 201 when the order completed and the
/// amount was captured, 409 when the order was cancelled first (the hold is
/// released: nothing is charged), 202 when no verdict came in time — read
/// the payment or the order later. One live payment per order: a second,
/// concurrent one is a 409 and never holds the card twice.
#[utoipa::path(post, path = "/api/payments", tag = "payments",
    request_body = PaymentInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "The order completed and the amount was captured (status `captured`, or `capturing` while the gateway confirms)", body = PaymentBody),
        (status = 202, description = "The hold is placed but the verdict did not come in time (status `pending`): read `GET /api/payments/{id}` or the order later", body = PaymentBody),
        (status = 402, description = "The card was declined; the order can still be paid", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such order of the caller's", body = shared::openapi::ErrorBody),
        (status = 409, description = "The order is cancelled (nothing was charged), already paid, or a payment for it is in progress", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many cards declined for this order or this buyer lately (card testing); `Retry-After` says when to try again", body = shared::openapi::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds until a payment is taken again"))),
    ))]
async fn pay(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    ValidJson(PaymentInput { order_id, token }): ValidJson<PaymentInput>,
) -> Result<(StatusCode, Json<PaymentBody>), ApiError> {
    let order_id = OrderId::parse(&order_id).ok_or(ApiError::NotFound)?;

    // Record the attempt first: the unique index on the order's live
    // payment lets one of any number of concurrent requests through, and a
    // crash from here on leaves a row the settler finishes.
    let now = state.clock.now();
    let recovery = now.plus_secs(state.config.settings.authorize_recovery.as_secs());
    let id = PaymentId::new();
    let card = token.clone();
    let settings = state.config.settings.clone();
    let payment = state
        .db
        .write(move |c| {
            let (status, price, live) = load(c, order_id, user.id)?.ok_or(ApiError::NotFound)?;
            check_declines(c, &settings, order_id, user.id, now)?;
            if let Some(p) = live {
                return Err(conflict_for(&p));
            }
            match status {
                OrderStatus::Cancelled => {
                    return Err(ApiError::Conflict("Cannot pay for a cancelled order".into()));
                }
                OrderStatus::Complete => return Err(ApiError::Conflict("Order is already paid".into())),
                OrderStatus::Created => {}
            }
            c.execute(
                "INSERT INTO payments (id, order_id, authorization_id, amount_cents, created_at, status, card_token, next_try_at)
                 VALUES ($1, $2, '', $3, $4, 'authorizing', $5, $6)",
                &[&id, &order_id, &price, &now, &card, &recovery],
            )
            .map_err(|e| {
                if e.is_unique_violation() {
                    ApiError::Conflict("A payment for this order is already being processed".into())
                } else {
                    e.into()
                }
            })?;
            Payment::find(c, id)?.ok_or_else(|| ApiError::internal(format!("payment {id} not inserted")))
        })
        .await?;

    let answer = saga::authorize(&state, &payment, token).await;
    let status = match &answer {
        // The outcome is unknown (the gateway may hold the card): the
        // settler asks again with the same key once the recovery bound has
        // passed, and the saga goes on from its answer.
        Err(GatewayError::Unavailable(m)) => {
            tracing::warn!(error = %m, payment_id = %id, "payment gateway unavailable; the settler will retry");
            Status::Authorizing
        }
        _ => saga::record_authorization(&state, id, &answer, trace)
            .await?
            .unwrap_or(Status::Authorizing),
    };
    match (status, answer) {
        (Status::Declined, Err(GatewayError::Declined(m))) => {
            shared::metrics::inc("payments_declined_total", &[]);
            return Err(ApiError::PaymentDeclined(m));
        }
        (Status::Declined, Err(GatewayError::Invalid(m))) => {
            return Err(ApiError::field("token", m));
        }
        _ => {}
    }
    let status = if status == Status::Authorized {
        saga::wait_for_verdict(&state, id, state.config.settings.verdict_wait).await
    } else {
        status
    };
    let payment = state
        .db
        .read(move |c| Payment::find(c, id))
        .await?
        .ok_or_else(|| ApiError::internal(format!("payment {id} vanished")))?;
    tracing::info!(%order_id, payment_id = %id, status = status.as_str(), "payment answered");
    match status.verdict() {
        Some(true) => Ok((StatusCode::CREATED, Json(PaymentBody::from(&payment)))),
        Some(false) => Err(ApiError::Conflict(NOTHING_CHARGED.into())),
        None => Ok((StatusCode::ACCEPTED, Json(PaymentBody::from(&payment)))),
    }
}

/// One of the caller's payments, as it stands now.
#[utoipa::path(get, path = "/api/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "payment id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The payment", body = PaymentBody),
        (status = 404, description = "No such payment of the caller's", body = shared::openapi::ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<PaymentId>,
) -> Result<Json<PaymentBody>, ApiError> {
    let payment = state.db.read(move |c| Payment::find(c, id)).await?;
    match payment {
        Some(p) if p.user_id == Some(user.id) => Ok(Json(PaymentBody::from(&p))),
        _ => Err(ApiError::NotFound),
    }
}
