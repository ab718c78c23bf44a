//! `POST /api/payments` (place a hold, wait for the order's verdict) and
//! `GET /api/payments/:id`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use marketplace_api::{self as api, PaymentRequest, PublicStatus};
use marketplace_events::{OrderId, OrderStatus, PaymentId};
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{IdPath, ValidJson};
use shared::idempotency::{Claim, IdempotencyKey};
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
fn public_status(p: &Payment) -> PublicStatus {
    match p.status {
        _ if p.refund_id.is_some() => PublicStatus::Refunded,
        Status::Authorizing | Status::Authorized => PublicStatus::Pending,
        Status::Capturing => PublicStatus::Capturing,
        Status::Captured => PublicStatus::Captured,
        Status::Voiding | Status::Voided => PublicStatus::Voided,
        Status::Declined => PublicStatus::Declined,
    }
}

/// A payment as the API returns it.
impl From<&Payment> for api::Payment {
    fn from(p: &Payment) -> Self {
        api::Payment {
            id: p.id,
            order_id: p.order_id,
            status: public_status(p),
            authorization_id: p.authorization_id.clone(),
            amount: Dollars(p.amount),
        }
    }
}

/// A payment begins as `authorizing`, with the card token kept until the
/// gateway answers and the time the settler recovers it by.
const INSERT_AUTHORIZING: &str = "
    INSERT INTO payments
        (id, order_id, authorization_id, amount_cents, created_at, status, card_token, next_try_at, user_id)
    VALUES ($1, $2, '', $3, $4, 'authorizing', $5, $6, $7)";

/// The 409 of an order that was cancelled before the payment's verdict.
pub const NOTHING_CHARGED: &str = "Order was cancelled; nothing was charged";

/// The 409 for an order that has a live payment: it names the payment, so
/// a client whose first answer was lost can read it.
fn conflict_for(p: &Payment) -> ApiError {
    ApiError::Conflict(match public_status(p) {
        PublicStatus::Pending => format!(
            "A payment for this order is already being processed (payment {})",
            p.id
        ),
        PublicStatus::Voided => NOTHING_CHARGED.into(),
        _ => format!("Order is already paid (payment {})", p.id),
    })
}

/// The buyer's declined cards within the window, and the oldest: a range
/// of the index of declines by buyer, however many orders the buyer has.
const PER_BUYER_DECLINES: &str = "SELECT COUNT(*), MIN(created_at) FROM payments
    WHERE user_id = $1 AND card_declined = 1 AND created_at > $2";

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
    let per_buyer = counted(c.query_opt(PER_BUYER_DECLINES, &[&user, &since])?)?;
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
    request_body = api::PaymentInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "The order completed and the amount was captured (status `captured`, or `capturing` while the gateway confirms)", body = api::Payment),
        (status = 202, description = "The hold is placed but the verdict did not come in time (status `pending`): read `GET /api/payments/{id}` or the order later", body = api::Payment),
        (status = 402, description = "The card was declined; the order can still be paid", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such order of the caller's", body = shared::openapi::ErrorBody),
        (status = 409, description = "The order is cancelled (nothing was charged), already paid, or a payment for it is in progress", body = shared::openapi::ErrorBody),
        (status = 422, description = "The Idempotency-Key was used with another request", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many cards declined for this order or this buyer lately (card testing); `Retry-After` says when to try again", body = shared::openapi::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds until a payment is taken again"))),
    ),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Makes a retry safe: a request with the key of an earlier one (same body, within 24 h) answers from the payment that one recorded, and never holds the card again")))]
async fn pay(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    IdempotencyKey(key): IdempotencyKey,
    ValidJson(PaymentRequest { order_id, token }): ValidJson<api::PaymentInput>,
) -> Result<Response, ApiError> {
    let order_id = OrderId::parse(&order_id).ok_or(ApiError::NotFound)?;
    let hash = shared::idempotency::request_hash(&[&order_id.to_string(), &token]);

    // Record the attempt first: the unique index on the order's live
    // payment lets one of any number of concurrent requests through, and a
    // crash from here on leaves a row the settler finishes. An idempotency
    // key is claimed in the same transaction and names the payment, so a
    // retry finds it even if this request dies.
    let now = state.clock.now();
    let recovery = now.plus_secs(state.config.settings.authorize_recovery.as_secs());
    let id = PaymentId::new();
    let card = token.clone();
    let settings = state.config.settings.clone();
    let started = state
        .db
        .write(move |c| {
            if let Some(key) = &key {
                match shared::idempotency::claim(c, user.id, key, &hash, now)? {
                    Claim::New => {}
                    Claim::Answered { status, body } => return Ok(Started::Replay(status, body)),
                    Claim::Resource(earlier) => {
                        let earlier = PaymentId::parse(&earlier).ok_or_else(|| {
                            ApiError::internal(format!("idempotency key names {earlier}"))
                        })?;
                        return Ok(Started::Retry(earlier));
                    }
                    // The key and its payment commit together; this cannot
                    // be seen, but say so if it is.
                    Claim::InFlight => {
                        return Err(ApiError::Conflict(
                            "A request with this Idempotency-Key is being processed".into(),
                        ));
                    }
                }
            }
            let (status, price, live) = load(c, order_id, user.id)?.ok_or(ApiError::NotFound)?;
            if let Some(p) = live {
                return Err(conflict_for(&p));
            }
            match status {
                OrderStatus::Cancelled => {
                    return Err(ApiError::Conflict(
                        "Cannot pay for a cancelled order".into(),
                    ));
                }
                OrderStatus::Complete => {
                    return Err(ApiError::Conflict("Order is already paid".into()));
                }
                OrderStatus::Created => {}
            }
            check_declines(c, &settings, order_id, user.id, now)?;
            c.execute(
                INSERT_AUTHORIZING,
                &[&id, &order_id, &price, &now, &card, &recovery, &user.id],
            )
            .map_err(|e| {
                if e.is_unique_violation() {
                    ApiError::Conflict("A payment for this order is already being processed".into())
                } else {
                    e.into()
                }
            })?;
            if let Some(key) = &key {
                shared::idempotency::remember_resource(c, user.id, key, &id.to_string())?;
            }
            // The row just written, as `Payment::find` would read it back
            // (without the round trip; test builds check that it would).
            let payment = Payment {
                id,
                order_id,
                user_id: Some(user.id),
                authorization_id: String::new(),
                amount: price,
                status: Status::Authorizing,
                refund_id: None,
                card_token: Some(card),
                attempts: 0,
            };
            debug_assert_eq!(
                format!("{:?}", Payment::find(c, id)?),
                format!("{:?}", Some(&payment))
            );
            Ok(Started::New(payment))
        })
        .await?;
    let payment = match started {
        Started::New(p) => p,
        Started::Replay(status, body) => return Ok(shared::idempotency::replay(status, body)),
        Started::Retry(earlier) => {
            tracing::info!(%order_id, payment_id = %earlier, "payment retried under its idempotency key");
            return answer_from(&state, earlier).await;
        }
    };

    let answer = saga::authorize(&state, &payment, token).await;
    let status = match &answer {
        // The outcome is unknown (the gateway may hold the card): the
        // settler asks again with the same key once the recovery bound has
        // passed, and the saga goes on from its answer.
        Err(e @ GatewayError::Unavailable { .. }) => {
            tracing::warn!(error = %store::report(e), payment_id = %id, "payment gateway unavailable; the settler will retry");
            Status::Authorizing
        }
        _ => saga::record_authorization(&state, id, &answer, trace)
            .await?
            .unwrap_or(Status::Authorizing),
    };
    if let (Status::Declined, Err(e)) = (status, &answer) {
        return Err(declined(e));
    }
    let status = if status == Status::Authorized {
        saga::wait_for_verdict(&state, id, state.config.settings.verdict_wait).await
    } else {
        status
    };
    tracing::info!(%order_id, payment_id = %id, status = status.as_str(), "payment answered");
    respond(&state, id, status).await
}

/// How the first transaction of a payment request ended.
enum Started {
    /// A payment was recorded; the card is to be held.
    New(Payment),
    /// A retry under an idempotency key whose request was answered.
    Replay(u16, String),
    /// A retry under an idempotency key whose request recorded this payment.
    Retry(PaymentId),
}

/// The answer to a declined card: 402 for the issuer's refusal, 400 on
/// `token` for a token the gateway cannot read.
fn declined(e: &GatewayError) -> ApiError {
    match e {
        GatewayError::Invalid(m) => ApiError::field("token", m.clone()),
        GatewayError::Declined(m) => {
            shared::metrics::inc("payments_declined_total", &[]);
            ApiError::PaymentDeclined(m.clone())
        }
        other => ApiError::PaymentDeclined(other.to_string()),
    }
}

/// The answer for payment `id` at `status`: 201 once its order completed,
/// 409 when it was cancelled (nothing charged), else 202.
async fn respond(state: &AppState, id: PaymentId, status: Status) -> Result<Response, ApiError> {
    let payment = state
        .db
        .read(move |c| Payment::find(c, id))
        .await?
        .ok_or_else(|| ApiError::internal(format!("payment {id} vanished")))?;
    match status.verdict() {
        Some(true) => Ok((StatusCode::CREATED, Json(api::Payment::from(&payment))).into_response()),
        Some(false) => Err(ApiError::Conflict(NOTHING_CHARGED.into())),
        None => Ok((StatusCode::ACCEPTED, Json(api::Payment::from(&payment))).into_response()),
    }
}

/// The answer to a retry of a request that recorded payment `id` (its
/// first answer may have been lost with the process that gave it): the
/// payment as it stands, after waiting for its order's verdict as long as
/// the first request would have.
async fn answer_from(state: &AppState, id: PaymentId) -> Result<Response, ApiError> {
    type Settled = Option<(Status, Option<String>, i64)>;
    let read = move |c: &mut dyn store::Conn| -> Result<Settled, StoreError> {
        c.query_opt(
            "SELECT status, last_error, card_declined FROM payments WHERE id = $1",
            &[&id],
        )?
        .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .transpose()
    };
    let (status, last_error, by_card) = state
        .db
        .read(read)
        .await?
        .ok_or_else(|| ApiError::internal(format!("payment {id} vanished")))?;
    if status == Status::Declined {
        let message = last_error.unwrap_or_default();
        // The stored error reads as the gateway error's text.
        return Err(if by_card == 1 {
            ApiError::PaymentDeclined(message.trim_start_matches("declined: ").to_owned())
        } else {
            ApiError::field(
                "token",
                message.trim_start_matches("invalid request: ").to_owned(),
            )
        });
    }
    // Not settled yet (a hold awaiting its verdict, or being captured or
    // voided): wait as the first request would have.
    let status = if matches!(status, Status::Captured | Status::Voided) {
        status
    } else {
        saga::wait_for_verdict(state, id, state.config.settings.verdict_wait).await
    };
    respond(state, id, status).await
}

/// One of the caller's payments, as it stands now.
#[utoipa::path(get, path = "/api/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "payment id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The payment", body = api::Payment),
        (status = 404, description = "No such payment of the caller's", body = shared::openapi::ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    IdPath(id): IdPath<PaymentId>,
) -> Result<Json<api::Payment>, ApiError> {
    let payment = state.db.read(move |c| Payment::find(c, id)).await?;
    match payment {
        Some(p) if p.user_id == Some(user.id) => Ok(Json(api::Payment::from(&p))),
        _ => Err(ApiError::NotFound),
    }
}
