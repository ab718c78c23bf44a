//! The payment's life after the request: the hold is recorded, the orders
//! service's verdict turns it into a capture or a void, and a settler makes
//! each step happen exactly once however often services crash.
//!
//! Stored states (`payments.status`):
//!
//! ```text
//! authorizing ──► authorized ──► capturing ──► captured (──► refunded by an operator)
//!      │               └────────► voiding ───► voided
//!      └──► declined
//! ```
//!
//! Every move is a conditional `UPDATE … WHERE status = <from>`, so two
//! actors racing for the same move (a listener and the settler, two
//! replicas) make it once; the gateway sees one idempotency key per payment
//! and step (`authorize-<id>`, `capture-<id>`, `void-<id>`), so a retried
//! call is the same call. Rows with work left carry `next_try_at`: the
//! settler picks them up when it is due, after a crash or a gateway outage.

use std::time::Duration;

use marketplace_events::{
    OrderId, OrderStatus, PaymentAuthorized, PaymentCaptured, PaymentId, PaymentRefunded,
    PaymentVoided,
};
use shared::money::Money;
use shared::shutdown::Shutdown;
use shared::time::Timestamp;
use shared::trace::TraceContext;
use store::{Conn, StoreError};
use tokio::sync::broadcast;

use crate::AppState;
use crate::gateway::{ChargeRequest, GatewayError, Settled};

/// How long a step that the request or the listener takes at once is left
/// to them before the settler takes it over (they crashed, or the gateway
/// failed): the settler never races a first attempt.
const FIRST_ATTEMPT_GRACE_SECS: u64 = 10;

/// Where a payment stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum Status {
    /// The hold was asked for; the gateway's answer is not recorded yet.
    Authorizing,
    /// The card holds the amount; waiting for the order's verdict.
    Authorized,
    /// The order completed: the hold is being taken.
    Capturing,
    Captured,
    /// The order was cancelled (or no verdict came): the hold is being released.
    Voiding,
    Voided,
    /// The gateway refused the card; the order stays payable.
    Declined,
}

impl Status {
    /// Its name, as the database spells it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Status> {
        s.parse().ok()
    }

    /// The order's verdict is known: capture (`Some(true)`) or void.
    pub fn verdict(self) -> Option<bool> {
        match self {
            Status::Capturing | Status::Captured => Some(true),
            Status::Voiding | Status::Voided => Some(false),
            _ => None,
        }
    }
}

/// A payment row as the saga reads it.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub user_id: Option<shared::ids::UserId>,
    pub authorization_id: String,
    pub amount: Money,
    pub status: Status,
    pub refund_id: Option<String>,
    pub card_token: Option<String>,
    pub attempts: i64,
}

const SELECT: &str =
    "SELECT p.id, p.order_id, o.user_id, p.authorization_id, p.amount_cents, p.status,
        p.refund_id, p.card_token, p.attempts
    FROM payments p LEFT JOIN orders o ON o.id = p.order_id";

impl store::FromValue for Status {
    fn from_value(value: &store::Value) -> Result<Self, StoreError> {
        marketplace_events::decode_status(value, Status::parse)
    }
}

fn decode(r: &store::Row) -> Result<Payment, StoreError> {
    Ok(Payment {
        id: r.get(0)?,
        order_id: r.get(1)?,
        user_id: r.get(2)?,
        authorization_id: r.get(3)?,
        amount: r.get(4)?,
        status: r.get(5)?,
        refund_id: r.get(6)?,
        card_token: r.get(7)?,
        attempts: r.get(8)?,
    })
}

impl Payment {
    pub fn find(c: &mut dyn Conn, id: PaymentId) -> Result<Option<Payment>, StoreError> {
        c.query_opt(&format!("{SELECT} WHERE p.id = $1"), &[&id])?
            .map(|r| decode(&r))
            .transpose()
    }

    /// The order's payment that is not declined (at most one).
    pub fn live_for_order(c: &mut dyn Conn, order: OrderId) -> Result<Option<Payment>, StoreError> {
        c.query_opt(
            &format!("{SELECT} WHERE p.order_id = $1 AND p.status <> 'declined'"),
            &[&order],
        )?
        .map(|r| decode(&r))
        .transpose()
    }
}

/// The status of the payments replica's copy of an order.
pub(crate) fn order_status(
    c: &mut dyn Conn,
    id: OrderId,
) -> Result<Option<OrderStatus>, StoreError> {
    c.query_opt("SELECT status FROM orders WHERE id = $1 FOR UPDATE", &[&id])?
        .map(|r| r.get(0))
        .transpose()
}

/// Verdicts as this process applies them, for requests waiting on them. A
/// verdict applied by another replica is found by polling the database.
#[derive(Clone)]
pub struct Verdicts(broadcast::Sender<(PaymentId, Status)>);

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts(broadcast::channel(1024).0)
    }
}

impl Verdicts {
    fn tell(&self, id: PaymentId, status: Status) {
        // No receiver is fine: nobody waits in this process.
        let _ = self.0.send((id, status));
    }
}

/// Waits up to `bound` for the payment's verdict; the last known status.
pub(crate) async fn wait_for_verdict(state: &AppState, id: PaymentId, bound: Duration) -> Status {
    let mut told = state.config.verdicts.0.subscribe();
    let deadline = tokio::time::Instant::now() + bound;
    // Polled as well, slowly: another replica may apply the verdict.
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settling_seen = false;
    loop {
        tokio::select! {
            got = told.recv() => match got {
                Ok((pid, status)) if pid == id && status.verdict().is_some() => return status,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {}
            },
            _ = poll.tick() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let stored = state
            .db
            .read(move |c| Payment::find(c, id))
            .await
            .ok()
            .flatten()
            .map(|p| p.status);
        match stored {
            Some(s @ (Status::Captured | Status::Voided)) => return s,
            // Being captured or voided: this process tells when it is done
            // (or failed); a verdict settled elsewhere is taken at the next
            // look, so a capture in flight is not answered as `capturing`.
            Some(s) if s.verdict().is_some() && settling_seen => return s,
            Some(s) if s.verdict().is_some() => settling_seen = true,
            Some(s) if tokio::time::Instant::now() >= deadline => return s,
            None if tokio::time::Instant::now() >= deadline => return Status::Authorizing,
            _ => {}
        }
    }
}

/// The gateway's answer to an authorization, recorded. A hold becomes
/// `authorized` with `payment.authorized` (orders decides next) — or goes
/// straight to `voiding` when this replica already knows the order was
/// cancelled. A refusal becomes `declined`, which leaves the order payable.
/// Nothing happens unless the payment is still `authorizing`.
pub(crate) async fn record_authorization(
    state: &AppState,
    id: PaymentId,
    answer: &Result<String, GatewayError>,
    trace: TraceContext,
) -> Result<Option<Status>, StoreError> {
    let now = state.clock.now();
    let verdict_due = now.plus_secs(state.config.settings.verdict_timeout.as_secs());
    // What the transaction needs of the answer: the hold, or whether the
    // issuer refused (it counts against card testing; a token the gateway
    // cannot read does not) and why.
    let answer = match answer {
        Ok(a) => Ok(a.clone()),
        Err(e) => Err((
            i64::from(matches!(e, GatewayError::Declined(_))),
            store::report(e),
        )),
    };
    let status = state
        .outbox
        .write(move |c| {
            let Some(p) = Payment::find(c, id)? else {
                return Ok(None);
            };
            if p.status != Status::Authorizing {
                return Ok(Some(p.status));
            }
            let authorization = match answer {
                Ok(a) => a,
                Err((by_card, error)) => {
                    c.execute(
                        "UPDATE payments SET status = 'declined', card_token = NULL, next_try_at = NULL,
                             last_error = $2, card_declined = $3 WHERE id = $1",
                        &[&id, &error, &by_card],
                    )?;
                    return Ok(Some(Status::Declined));
                }
            };
            // The replica row is locked, so a cancellation applied now
            // either came before (void at once) or sees this hold.
            let cancelled = order_status(c, p.order_id)? == Some(OrderStatus::Cancelled);
            let (status, next) = if cancelled {
                (Status::Voiding, now.plus_secs(FIRST_ATTEMPT_GRACE_SECS))
            } else {
                (Status::Authorized, verdict_due)
            };
            c.execute(
                "UPDATE payments SET status = $2, authorization_id = $3, card_token = NULL,
                     next_try_at = $4, attempts = 0 WHERE id = $1",
                &[&id, &status.as_str(), &authorization, &next],
            )?;
            c.enqueue(
                &PaymentAuthorized {
                    id,
                    order_id: p.order_id,
                    authorization_id: authorization,
                    amount_cents: p.amount,
                },
                &trace,
                now,
            )?;
            Ok::<_, StoreError>(Some(status))
        })
        .await?;
    if status == Some(Status::Voiding) {
        settle(state, id).await?;
    }
    Ok(status)
}

/// The order's verdict, applied inside the listener's transaction that
/// updated the replica: its live hold moves to `capturing` (completed) or
/// `voiding` (cancelled). A payment still `authorizing` is left alone: when
/// its hold is recorded it sees the cancelled order and voids it. Returns
/// the payment that now has work to do.
pub(crate) fn apply_verdict(
    c: &mut dyn Conn,
    order: OrderId,
    completed: bool,
    now: Timestamp,
) -> Result<Option<(PaymentId, Status)>, StoreError> {
    let Some(p) = Payment::live_for_order(c, order)? else {
        if completed {
            // Orders completes only on payment.authorized, which is written
            // with the hold: a completed order without one is a bug or an
            // operator's doing, and money is owed.
            shared::metrics::inc("payments_completed_without_hold_total", &[]);
            tracing::error!(order_id = %order, "order completed without a payment hold");
        }
        return Ok(None);
    };
    if p.status != Status::Authorized {
        if completed && matches!(p.status, Status::Voiding | Status::Voided) {
            shared::metrics::inc("payments_completed_without_hold_total", &[]);
            tracing::error!(order_id = %order, payment_id = %p.id,
                "order completed after its hold was voided (no verdict in time)");
        }
        return Ok(None); // a duplicate or late verdict
    }
    let to = if completed {
        Status::Capturing
    } else {
        Status::Voiding
    };
    c.execute(
        "UPDATE payments SET status = $2, next_try_at = $3, attempts = 0 WHERE id = $1 AND status = 'authorized'",
        &[&p.id, &to.as_str(), &now.plus_secs(FIRST_ATTEMPT_GRACE_SECS)],
    )?;
    Ok(Some((p.id, to)))
}

/// Takes a payment with work to do one step further: asks the gateway
/// again for an unconfirmed authorization, settles a hold whose verdict is
/// known, or voids one whose verdict is overdue. On a gateway failure the
/// row is put back with a later `next_try_at` (backing off up to 5 min).
pub(crate) async fn advance(state: &AppState, id: PaymentId) -> Result<(), StoreError> {
    let Some(p) = state.db.read(move |c| Payment::find(c, id)).await? else {
        return Ok(());
    };
    match p.status {
        Status::Authorizing => {
            // The request that asked for the hold crashed or lost the
            // gateway's answer: ask again with the same key (the same hold,
            // if there was one) and go on from the answer.
            let Some(token) = p.card_token.clone() else {
                return Ok(());
            };
            let answer = authorize(state, &p, token).await;
            if let Err(e @ GatewayError::Unavailable { .. }) = &answer {
                return retry_later(state, &p, &store::report(e)).await;
            }
            record_authorization(state, id, &answer, TraceContext::new_root()).await?;
            Ok(())
        }
        Status::Authorized => {
            // Due: no verdict came within the bound.
            let now = state.clock.now();
            let moved = state
                .db
                .write(move |c| {
                    c.execute(
                        "UPDATE payments SET status = 'voiding', next_try_at = $2, attempts = 0
                         WHERE id = $1 AND status = 'authorized'",
                        &[&id, &now],
                    )
                })
                .await?;
            if moved == 1 {
                shared::metrics::inc("payments_verdicts_missing_total", &[]);
                tracing::warn!(payment_id = %id, order_id = %p.order_id, "no verdict on the hold in time: voiding it");
                Box::pin(settle(state, id)).await?;
            }
            Ok(())
        }
        Status::Capturing | Status::Voiding => settle(state, id).await,
        _ => Ok(()),
    }
}

fn authorization_request(state: &AppState, p: &Payment, token: String) -> ChargeRequest {
    ChargeRequest {
        amount: p.amount,
        currency: state.config.settings.currency.clone(),
        token,
        idempotency_key: format!("authorize-{}", p.id),
        description: format!("ticketing order {}", p.order_id),
    }
}

/// Asks the gateway for the hold of a new payment (the request path).
pub(crate) async fn authorize(
    state: &AppState,
    p: &Payment,
    token: String,
) -> Result<String, GatewayError> {
    state
        .config
        .settings
        .gateway
        .authorize(authorization_request(state, p, token))
        .await
}

/// Captures or voids a hold whose verdict is known, and records it with
/// `payment.captured` / `payment.voided`; tells waiting requests.
pub(crate) async fn settle(state: &AppState, id: PaymentId) -> Result<(), StoreError> {
    let Some(p) = state.db.read(move |c| Payment::find(c, id)).await? else {
        return Ok(());
    };
    let (how, key, done) = match p.status {
        Status::Capturing => (Settled::Captured, format!("capture-{id}"), Status::Captured),
        Status::Voiding => (Settled::Voided, format!("void-{id}"), Status::Voided),
        _ => return Ok(()),
    };
    if let Err(e) = state
        .config
        .settings
        .gateway
        .settle(p.authorization_id.clone(), how, key)
        .await
    {
        // Told now so a waiting request can answer: the verdict is known.
        state.config.verdicts.tell(id, p.status);
        return retry_later(state, &p, &e.to_string()).await;
    }
    let now = state.clock.now();
    let from = p.status;
    let recorded = state
        .outbox
        .write(move |c| {
            let n = c.execute(
                "UPDATE payments SET status = $2, next_try_at = NULL, last_error = NULL
                 WHERE id = $1 AND status = $3",
                &[&id, &done.as_str(), &from.as_str()],
            )?;
            if n == 0 {
                return Ok::<_, StoreError>(false); // another settler was first
            }
            let trace = TraceContext::new_root();
            if done == Status::Captured {
                c.enqueue(
                    &PaymentCaptured {
                        id,
                        order_id: p.order_id,
                        authorization_id: p.authorization_id.clone(),
                        amount_cents: p.amount,
                    },
                    &trace,
                    now,
                )?;
            } else {
                let reason = match order_status(c, p.order_id)? {
                    Some(OrderStatus::Cancelled) => "order-cancelled",
                    _ => "no-verdict",
                };
                c.enqueue(
                    &PaymentVoided {
                        id,
                        order_id: p.order_id,
                        authorization_id: p.authorization_id.clone(),
                        amount_cents: p.amount,
                        reason: reason.into(),
                    },
                    &trace,
                    now,
                )?;
            }
            Ok(true)
        })
        .await?;
    if recorded {
        tracing::info!(payment_id = %id, order_id = %p.order_id, status = done.as_str(), "payment settled");
    }
    state.config.verdicts.tell(id, done);
    Ok(())
}

/// The settle or authorize step failed at the gateway: try again later.
async fn retry_later(state: &AppState, p: &Payment, error: &str) -> Result<(), StoreError> {
    shared::metrics::inc(
        "payments_gateway_retries_total",
        &[("step", p.status.as_str())],
    );
    let attempts = p.attempts + 1;
    let wait = backoff(attempts);
    tracing::warn!(payment_id = %p.id, step = p.status.as_str(), attempts, retry_in_ms = wait.as_millis() as u64, %error, "payment gateway step failed; retrying");
    let at = Timestamp::from_millis(state.clock.now().millis() + wait.as_millis() as i64);
    let (id, from, error) = (p.id, p.status, error.to_owned());
    state
        .db
        .write(move |c| {
            c.execute(
                "UPDATE payments SET attempts = $2, next_try_at = $3, last_error = $4
                 WHERE id = $1 AND status = $5",
                &[&id, &attempts, &at, &error, &from.as_str()],
            )
        })
        .await?;
    state.config.settler.notify_one();
    Ok(())
}

/// 1 s, 2 s, 4 s … up to 5 minutes between attempts.
fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    Duration::from_secs(1u64 << exp.min(9)).min(Duration::from_secs(300))
}

/// The payments whose next step is due.
async fn due(state: &AppState, now: Timestamp) -> Result<Vec<PaymentId>, StoreError> {
    state
        .db
        .read(move |c| {
            c.query(
                "SELECT id FROM payments WHERE next_try_at IS NOT NULL AND next_try_at <= $1
                 ORDER BY next_try_at LIMIT 64",
                &[&now],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
        .await
}

/// When the next step of any payment is due.
async fn next_due(state: &AppState) -> Result<Option<Timestamp>, StoreError> {
    state
        .db
        .read(|c| {
            c.query_opt(
                "SELECT MIN(next_try_at) FROM payments WHERE next_try_at IS NOT NULL",
                &[],
            )?
            .map(|r| r.get::<Option<Timestamp>>(0))
            .transpose()
            .map(Option::flatten)
        })
        .await
}

/// The settler: takes every payment with work left a step further when it
/// is due — after a restart, a gateway outage, or a verdict that never came.
pub async fn run_settler(state: AppState, mut shutdown: Shutdown) {
    tokio::select! {
        _ = state.db.wait_ready() => {}
        _ = shutdown.wait() => return,
    }
    loop {
        let now = state.clock.now();
        let mut wait = Duration::from_secs(5);
        match due(&state, now).await {
            Ok(ids) => {
                let full = ids.len() == 64;
                for id in ids {
                    if let Err(e) = advance(&state, id).await {
                        tracing::warn!(payment_id = %id, error = %store::report(&e), "cannot advance payment");
                    }
                }
                if full {
                    continue;
                }
                if let Ok(Some(at)) = next_due(&state).await {
                    let until = state.clock.instant_at(at);
                    wait = until
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(wait);
                }
            }
            Err(e) => tracing::warn!(error = %store::report(&e), "cannot read due payments"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            _ = state.config.settler.notified() => {}
            _ = shutdown.wait() => break,
        }
    }
    tracing::info!("payments settler stopped");
}

/// Why an operator's refund was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("no payment {0}")]
    NotFound(PaymentId),
    #[error("payment {0} was not captured (it is {1}): nothing to refund")]
    NotCaptured(PaymentId, &'static str),
    #[error("cannot read or record the refund")]
    Store(#[from] StoreError),
    #[error("the payment gateway refused or failed the refund")]
    Gateway(#[from] GatewayError),
}

/// Gives captured money back (an operator's decision): the gateway refunds
/// the captured PaymentIntent (key `refund-<payment>`, so a repeated command
/// is the same refund) and the refund is recorded once with
/// `payment.refunded`. Returns the refund id.
pub async fn refund(
    db: &store::Db,
    outbox: &bus::outbox::Outbox,
    gateway: &dyn crate::PaymentGateway,
    now: Timestamp,
    id: PaymentId,
) -> Result<String, RefundError> {
    let p = db
        .read(move |c| Payment::find(c, id))
        .await?
        .ok_or(RefundError::NotFound(id))?;
    if let Some(r) = p.refund_id {
        return Ok(r);
    }
    if p.status != Status::Captured {
        return Err(RefundError::NotCaptured(id, p.status.as_str()));
    }
    let refund_id = gateway
        .refund(p.authorization_id.clone(), format!("refund-{id}"))
        .await?;
    let rid = refund_id.clone();
    outbox
        .write(move |c| {
            let n = c.execute(
                "UPDATE payments SET refund_id = $2 WHERE id = $1 AND refund_id IS NULL",
                &[&id, &rid],
            )?;
            if n == 1 {
                c.enqueue(
                    &PaymentRefunded {
                        id,
                        order_id: p.order_id,
                        refund_id: rid.clone(),
                        amount_cents: p.amount,
                    },
                    &TraceContext::new_root(),
                    now,
                )?;
            }
            Ok::<_, StoreError>(())
        })
        .await?;
    Ok(refund_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let got: Vec<u64> = [1, 2, 3, 9, 10, 40].map(|a| backoff(a).as_secs()).to_vec();
        assert_eq!(got, [1, 2, 4, 256, 300, 300]);
    }

    #[test]
    fn statuses_round_trip_and_only_settling_ones_carry_a_verdict() {
        let names = [
            "authorizing",
            "authorized",
            "capturing",
            "captured",
            "voiding",
            "voided",
            "declined",
        ];
        for name in names {
            assert_eq!(Status::parse(name).map(Status::as_str), Some(name));
        }
        assert_eq!(Status::parse("Captured"), None, "names are lowercase");
        assert_eq!(Status::Authorized.verdict(), None);
        assert_eq!(Status::Capturing.verdict(), Some(true));
        assert_eq!(Status::Voided.verdict(), Some(false));
    }
}
