//! `POST /api/payments`: pay for an order, and the refund of payments whose
//! order was cancelled first.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use marketplace_events::{OrderId, PaymentId};
use marketplace_events::{OrderStatus, PaymentCreated, PaymentRefunded};
use serde::Serialize;
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{Fields, FromFields, ValidJson};
use shared::ids::UserId;
use shared::money::{Dollars, Money};
use shared::trace::TraceContext;
use store::Conn as _;
use store::StoreError;

use crate::AppState;
use crate::gateway::{ChargeRequest, GatewayError};

/// The routes and their OpenAPI description, registered together.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::default().routes(utoipa_axum::routes!(pay))
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
    /// The gateway's charge id.
    charge_id: String,
    /// Dollars charged.
    #[schema(value_type = f64)]
    amount: Dollars,
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

struct OrderCopy {
    user_id: UserId,
    price: Money,
    status: OrderStatus,
}

/// The replica of an order; `lock` holds its row until the transaction ends.
fn load_order(
    c: &mut dyn store::Conn,
    id: OrderId,
    lock: bool,
) -> Result<Option<OrderCopy>, StoreError> {
    let sql = if lock {
        "SELECT user_id, price_cents, status FROM orders WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT user_id, price_cents, status FROM orders WHERE id = $1"
    };
    c.query_opt(sql, &[&id])?
        .map(|r| {
            let status: String = r.get(2)?;
            Ok(OrderCopy {
                user_id: r.get(0)?,
                price: r.get(1)?,
                status: OrderStatus::parse(&status).ok_or_else(|| {
                    StoreError::new(
                        store::StoreErrorKind::Decode,
                        format!("bad status {status}"),
                    )
                })?,
            })
        })
        .transpose()
}

fn already_paid() -> ApiError {
    ApiError::Conflict("Order is already paid".into())
}

fn cancelled() -> ApiError {
    ApiError::Conflict("Cannot pay for a cancelled order".into())
}

/// Charges the order's price; publishes `payment.created`. Idempotent per
/// order: a second payment never charges twice.
#[utoipa::path(post, path = "/api/payments", tag = "payments",
    request_body = PaymentInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Charged", body = PaymentBody),
        (status = 402, description = "The card was declined", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such order of the caller's", body = shared::openapi::ErrorBody),
        (status = 409, description = "The order is cancelled or already paid", body = shared::openapi::ErrorBody),
    ))]
async fn pay(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    ValidJson(PaymentInput { order_id, token }): ValidJson<PaymentInput>,
) -> Result<(StatusCode, Json<PaymentBody>), ApiError> {
    let order_id = OrderId::parse(&order_id).ok_or(ApiError::NotFound)?;

    let order = state
        .db
        .read(move |c| {
            let order = load_order(c, order_id, false)?;
            let paid = c
                .query_opt("SELECT 1 FROM payments WHERE order_id = $1", &[&order_id])?
                .is_some();
            Ok::<_, StoreError>(order.map(|o| (o, paid)))
        })
        .await?;
    let (order, paid) = match order {
        Some((o, paid)) if o.user_id == user.id => (o, paid),
        _ => return Err(ApiError::NotFound),
    };
    match order.status {
        OrderStatus::Cancelled => return Err(cancelled()),
        OrderStatus::Complete => return Err(already_paid()),
        OrderStatus::Created if paid => return Err(already_paid()),
        OrderStatus::Created => {}
    }

    // One idempotency key per order: a retried or concurrent payment gets
    // the same charge back from the gateway instead of a second one.
    let charge_id = state
        .config
        .gateway
        .charge(ChargeRequest {
            amount: order.price,
            currency: state.config.currency.clone(),
            token,
            idempotency_key: format!("charge-{order_id}"),
            description: format!("ticketing order {order_id}"),
        })
        .await
        .map_err(|e| match e {
            GatewayError::Declined(m) => ApiError::PaymentDeclined(m),
            GatewayError::Invalid(m) => ApiError::field("token", m),
            GatewayError::Unavailable(m) => {
                tracing::warn!(error = %m, "payment gateway unavailable");
                ApiError::Unavailable(
                    "The payment gateway is unavailable, try again shortly".into(),
                )
            }
        })?;

    let now = state.clock.now();
    let payment_id = PaymentId::new();
    let amount = order.price;
    let charge = charge_id.clone();
    // Record the charge even if the order was cancelled meanwhile, so the
    // refund below (or the cancellation listener) gives the money back.
    let status_now = state
        .outbox
        .write(move |c| {
            let status = load_order(c, order_id, true)?.map(|o| o.status).unwrap_or(OrderStatus::Cancelled);
            c.execute(
                "INSERT INTO payments (id, order_id, charge_id, amount_cents, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&payment_id, &order_id, &charge, &amount, &now],
            )
            .map_err(|e| if e.is_unique_violation() { already_paid() } else { e.into() })?;
            let event = PaymentCreated { id: payment_id, order_id, charge_id: charge.clone(), amount_cents: amount };
            c.enqueue(&event, &trace, now)?;
            Ok::<_, ApiError>(status)
        })
        .await?;
    tracing::info!(%order_id, %payment_id, charge_id = %charge_id, "payment recorded");

    if status_now == OrderStatus::Cancelled {
        refund_if_cancelled(&state, order_id, &TraceContext::new_root())
            .await
            .map_err(ApiError::internal)?;
        return Err(cancelled());
    }
    Ok((
        StatusCode::CREATED,
        Json(PaymentBody {
            id: payment_id,
            order_id,
            charge_id,
            amount: Dollars(amount),
        }),
    ))
}

/// Why a refund could not be made or recorded (it is retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefundError {
    #[error("cannot read or record the refund")]
    Store(#[from] StoreError),
    #[error("the payment gateway refused or failed the refund")]
    Gateway(#[from] GatewayError),
}

/// Refunds the order's payment if the order is cancelled and the payment not
/// yet refunded. Safe to call any number of times: the gateway sees one
/// idempotency key per payment and the refund is recorded once.
pub(crate) async fn refund_if_cancelled(
    state: &AppState,
    order_id: OrderId,
    trace: &TraceContext,
) -> Result<(), RefundError> {
    let pending = state
        .db
        .read(move |c| {
            c.query_opt(
                "SELECT p.id, p.charge_id, p.amount_cents FROM payments p JOIN orders o ON o.id = p.order_id
                 WHERE p.order_id = $1 AND p.refund_id IS NULL AND o.status = 'cancelled'",
                &[&order_id],
            )?
            .map(|r| Ok::<_, StoreError>((r.get::<PaymentId>(0)?, r.get::<String>(1)?, r.get::<Money>(2)?)))
            .transpose()
        })
        .await?;
    let Some((payment_id, charge_id, amount)) = pending else {
        return Ok(());
    };
    let refund_id = state
        .config
        .gateway
        .refund(charge_id, format!("refund-{payment_id}"))
        .await?;
    let now = state.clock.now();
    let trace = *trace;
    let recorded = state
        .outbox
        .write(move |c| {
            let n = c.execute(
                "UPDATE payments SET refund_id = $2 WHERE id = $1 AND refund_id IS NULL",
                &[&payment_id, &refund_id],
            )?;
            if n == 1 {
                c.enqueue(
                    &PaymentRefunded {
                        id: payment_id,
                        order_id,
                        refund_id,
                        amount_cents: amount,
                    },
                    &trace,
                    now,
                )?;
            }
            Ok::<_, StoreError>(n == 1)
        })
        .await?;
    if recorded {
        tracing::info!(%order_id, %payment_id, "payment refunded: its order was cancelled first");
    }
    Ok(())
}
