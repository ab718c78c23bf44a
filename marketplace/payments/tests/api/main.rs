//! Black-box tests of the payments service, with the offline gateway and
//! with the real Stripe client against a local fake Stripe. The orders
//! service is played by the test: it publishes the verdicts.

#[path = "../fake_stripe/mod.rs"]
mod fake_stripe;

use std::sync::Arc;
use std::time::Duration;

use bus::listener::ListenerOptions;
use marketplace_events::{
    OrderCancelled, OrderCompleted, OrderCreated, OrderStatus, OrderTicket, PaymentAuthorized,
    PaymentCaptured, PaymentRefunded, PaymentVoided, TicketRef,
};
use marketplace_events::{OrderId, PaymentId, TicketId};
use payments::{Config, StripeGateway};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::ids::UserId;
use shared::money::Money;
use shared::time::Timestamp;
use testkit::{TestApp, eventually};

mod abuse;
mod gateways;

async fn app_with(config: Config) -> TestApp {
    TestApp::spawn_for(marketplace_events::PRODUCT, |deps| async move {
        payments::start(&deps, config, ListenerOptions::default())
            .await
            .map(|r| vec![r])
    })
    .await
}

async fn app() -> TestApp {
    app_with(Config::default()).await
}

/// Settings with the real Stripe client talking to `stripe`.
fn with_stripe(stripe: &fake_stripe::FakeStripe) -> Config {
    Config {
        gateway: Arc::new(StripeGateway::new(stripe.url(), "sk_test_123").unwrap()),
        ..Config::default()
    }
}

/// An order placed by `buyer` as the orders service announces it; waits
/// until payments has it.
async fn order(app: &TestApp, buyer: UserId, token: &str, cents: i64) -> OrderId {
    let id = OrderId::new();
    let ticket = TicketId::new();
    app.publish(&OrderCreated {
        id,
        version: 0,
        status: OrderStatus::Created,
        user_id: buyer,
        expires_at: Timestamp::from_millis(0),
        ticket: OrderTicket {
            id: ticket,
            price_cents: Money::from_cents(cents),
        },
    })
    .await;
    // A token the gateway cannot read is a 400 only once the order is
    // known (404 before); it leaves the order payable and counts for
    // nothing against card testing.
    eventually(Duration::from_secs(5), || async {
        (pay(app, token, id, PROBE).await.status() == StatusCode::BAD_REQUEST).then_some(())
    })
    .await
    .expect("order replicated");
    id
}

/// A card token no gateway knows.
const PROBE: &str = "tok_probe_unknown";

async fn pay(app: &TestApp, token: &str, order: OrderId, card: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        "/api/payments",
        Some(token),
        Some(json!({"orderId": order.to_string(), "token": card})),
    )
    .await
}

async fn message(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap();
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

fn completed(order: OrderId) -> OrderCompleted {
    OrderCompleted {
        id: order,
        version: 1,
        ticket: TicketRef {
            id: TicketId::new(),
        },
    }
}

fn cancelled(order: OrderId) -> OrderCancelled {
    OrderCancelled {
        id: order,
        version: 1,
        ticket: TicketRef {
            id: TicketId::new(),
        },
    }
}

/// Pays while playing the orders service: the first `payment.authorized`
/// for the order is answered with `verdict`.
async fn pay_with_verdict(
    app: &TestApp,
    token: &str,
    order: OrderId,
    card: &str,
    complete: bool,
) -> reqwest::Response {
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let verdict = async {
        loop {
            let e = authorized.next().await;
            if e.order_id == order {
                break;
            }
        }
        if complete {
            app.publish(&completed(order)).await;
        } else {
            app.publish(&cancelled(order)).await;
        }
    };
    let (res, ()) = tokio::join!(pay(app, token, order, card), verdict);
    res
}

/// A second handle on the payments service's database and outbox, as the
/// operator's command opens them (the running service's relay publishes
/// what it writes).
async fn payments_store(app: &TestApp) -> (store::Db, bus::outbox::Outbox) {
    let db = app
        .deps
        .open_db(payments::SERVICE, payments::MIGRATIONS)
        .await
        .unwrap();
    db.wait_ready().await;
    let outbox = bus::outbox::Outbox::new(db.clone(), payments::SERVICE)
        .declaring(marketplace_events::service_events(payments::SERVICE).publishes);
    (db, outbox)
}

async fn get_payment(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.send(
        Method::GET,
        &format!("/api/payments/{id}"),
        Some(token),
        None,
    )
    .await
}

#[tokio::test]
async fn paying_holds_the_card_and_captures_once_the_order_completes() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(Config {
        currency: "eur".into(),
        ..with_stripe(&stripe)
    })
    .await;
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let mut captured = app.watch::<PaymentCaptured>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 1999).await;
    let res = pay_with_verdict(&app, &token, id, "tok_visa", true).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (&body["orderId"], &body["amount"], &body["status"]),
        (&json!(id.to_string()), &json!(19.99), &json!("captured"))
    );
    let intent = body["authorizationId"].as_str().unwrap().to_owned();
    let payment = body["id"].as_str().unwrap().to_owned();
    assert_eq!(stripe.intents()[&intent], "succeeded");

    // Exactly one hold and one capture, each under its own key, in
    // Stripe's request shape.
    let holds: Vec<_> = stripe
        .requests_to("/v1/payment_intents")
        .into_iter()
        .filter(|r| {
            r.form
                .get("payment_method_data[card][token]")
                .map(String::as_str)
                == Some("tok_visa")
        })
        .collect();
    assert_eq!(holds.len(), 1);
    let h = &holds[0];
    assert_eq!(h.authorization.as_deref(), Some("Bearer sk_test_123"));
    assert_eq!(
        h.idempotency_key.as_deref(),
        Some(format!("authorize-{payment}").as_str())
    );
    assert_eq!(
        h.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    for (field, value) in [
        ("amount", "1999"),
        ("currency", "eur"),
        ("capture_method", "manual"),
        ("confirm", "true"),
    ] {
        assert_eq!(
            h.form.get(field).map(String::as_str),
            Some(value),
            "{field}"
        );
    }
    let captures = stripe.requests_to(&format!("/v1/payment_intents/{intent}/capture"));
    assert_eq!(captures.len(), 1);
    assert_eq!(
        captures[0].idempotency_key.as_deref(),
        Some(format!("capture-{payment}").as_str())
    );

    let a = authorized.next().await;
    assert_eq!(
        (a.order_id, a.amount_cents, a.authorization_id.as_str()),
        (id, Money::from_cents(1999), intent.as_str())
    );
    let c = captured.next().await;
    assert_eq!((c.order_id, c.id.to_string()), (id, payment.clone()));

    let res = get_payment(&app, &token, &payment).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "captured");
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(
        message(res).await,
        format!("Order is already paid (payment {payment})")
    );
}

#[tokio::test]
async fn paying_checks_session_body_existence_ownership_and_state() {
    let app = app_with(Config {
        verdict_wait: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let (buyer, token) = app.user();
    let (_, stranger) = app.user();
    let id = order(&app, buyer, &token, 500).await;
    assert_eq!(
        pay(&app, "bad-token", id, "tok_visa").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = app
        .send(
            Method::POST,
            "/api/payments",
            Some(&token),
            Some(json!({"orderId": ""})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);
    assert_eq!(
        pay(&app, &token, OrderId::new(), "tok_visa").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        pay(&app, &stranger, id, "tok_visa").await.status(),
        StatusCode::NOT_FOUND
    );
    let res = pay(&app, &token, id, "tok_bogus").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = pay(&app, &token, id, "tok_chargeDeclined").await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(message(res).await, "Your card was declined.");
    // No verdict within the wait: 202, pending; the payment can be read.
    let res = pay(&app, &token, id, "tok_mastercard").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    let payment = body["id"].as_str().unwrap().to_owned();
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(
        message(res).await,
        format!("A payment for this order is already being processed (payment {payment})")
    );
    let res = get_payment(&app, &token, &payment).await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "pending");
    for (who, path) in [
        (&stranger, payment.clone()),
        (&token, PaymentId::new().to_string()),
        (&token, "not-an-id".to_owned()),
    ] {
        assert_eq!(
            get_payment(&app, who, &path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // The verdict arrives later: the payment is captured.
    app.publish(&completed(id)).await;
    eventually(Duration::from_secs(5), || async {
        let res = get_payment(&app, &token, &payment).await;
        (res.json::<Value>().await.unwrap()["status"] == "captured").then_some(())
    })
    .await
    .expect("captured after the late verdict");
}

#[tokio::test]
async fn a_cancelled_order_cannot_be_paid() {
    let app = app().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 500).await;
    app.publish(&cancelled(id)).await;
    let res = eventually(Duration::from_secs(5), || async {
        let r = pay(&app, &token, id, "tok_chargeDeclined").await;
        (r.status() == StatusCode::CONFLICT).then_some(r)
    })
    .await
    .expect("409 once the cancellation is known");
    assert_eq!(message(res).await, "Cannot pay for a cancelled order");
}

#[tokio::test]
async fn a_hold_on_an_order_cancelled_meanwhile_is_voided_and_nothing_is_charged() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(with_stripe(&stripe)).await;
    let mut voided = app.watch::<PaymentVoided>().await;
    let mut captured = app.watch::<PaymentCaptured>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 1200).await;
    let res = pay_with_verdict(&app, &token, id, "tok_visa", false).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(
        message(res).await,
        "Order was cancelled; nothing was charged"
    );
    let v = voided.next().await;
    assert_eq!(
        (v.order_id, v.amount_cents, v.reason.as_str()),
        (id, Money::from_cents(1200), "order-cancelled")
    );
    assert_eq!(stripe.intents()[&v.authorization_id], "canceled");
    let voids = stripe.requests_to(&format!(
        "/v1/payment_intents/{}/cancel",
        v.authorization_id
    ));
    assert_eq!(voids.len(), 1);
    assert_eq!(
        voids[0].idempotency_key.as_deref(),
        Some(format!("void-{}", v.id).as_str())
    );
    // A redelivered cancellation, and a completion after it (orders never
    // sends one, but a late or stray verdict must not move money).
    app.publish(&cancelled(id)).await;
    app.publish(&completed(id)).await;
    assert!(
        voided
            .next_within(Duration::from_millis(400))
            .await
            .is_none()
    );
    assert!(
        captured
            .next_within(Duration::from_millis(100))
            .await
            .is_none()
    );
    assert_eq!(stripe.executed("/capture"), Vec::<String>::new());
    assert_eq!(stripe.executed("/cancel").len(), 1);
    assert_eq!(
        stripe.requests_to("/v1/refunds").len(),
        0,
        "nothing to refund"
    );
}

#[tokio::test]
async fn concurrent_payments_for_one_order_hold_and_capture_once() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(with_stripe(&stripe)).await;
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 2500).await;
    let body = json!({"orderId": id.to_string(), "token": "tok_visa"});
    let verdict = async {
        authorized.next().await;
        app.publish(&completed(id)).await;
    };
    let (statuses, ()) = tokio::join!(
        app.race("/api/payments", vec![(Some(token.clone()), body); 6]),
        verdict
    );
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    // Declined probes aside (the helper's), one PaymentIntent exists.
    assert_eq!(
        stripe.intents().len(),
        1,
        "held more than once: {:?}",
        stripe.intents()
    );
    assert_eq!(stripe.executed("/capture").len(), 1);
    assert!(
        authorized
            .next_within(Duration::from_millis(400))
            .await
            .is_none(),
        "two payment.authorized events"
    );
}

#[tokio::test]
async fn a_gateway_outage_leaves_the_payment_pending_and_the_settler_finishes_it_after_a_restart() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let config = Config {
        authorize_recovery: Duration::from_secs(1),
        ..with_stripe(&stripe)
    };
    let app = app_with(config.clone()).await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 700).await;
    stripe.set_down(true);
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    let payment = body["id"].as_str().unwrap().to_owned();
    // A second payment waits for this one instead of holding the card twice.
    assert_eq!(
        pay(&app, &token, id, "tok_visa").await.status(),
        StatusCode::CONFLICT
    );

    // The service restarts; Stripe comes back; the settler asks again with
    // the same key, the hold is recorded and the saga goes on.
    let stopped = app.shutdown().await;
    stripe.set_down(false);
    let app = TestApp::spawn_in(stopped, |deps| async move {
        payments::start(&deps, config, ListenerOptions::default())
            .await
            .map(|r| vec![r])
    })
    .await;
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let a = authorized.next().await;
    assert_eq!(a.id.to_string(), payment);
    app.publish(&completed(id)).await;
    let body = eventually(Duration::from_secs(5), || async {
        let body: Value = get_payment(&app, &token, &payment)
            .await
            .json()
            .await
            .unwrap();
        (body["status"] == "captured").then_some(body)
    })
    .await
    .expect("captured");
    assert_eq!(body["authorizationId"], json!(a.authorization_id));
    assert_eq!(
        stripe.intents().len(),
        1,
        "one hold: {:?}",
        stripe.intents()
    );
    let holds: Vec<_> = stripe
        .requests_to("/v1/payment_intents")
        .into_iter()
        .filter(|r| {
            r.form
                .get("payment_method_data[card][token]")
                .map(String::as_str)
                == Some("tok_visa")
        })
        .map(|r| r.idempotency_key.unwrap())
        .collect();
    assert!(holds.len() >= 2, "asked again after the outage: {holds:?}");
    assert!(
        holds.iter().all(|k| *k == format!("authorize-{payment}")),
        "{holds:?}"
    );
}

/// The order was cancelled while the gateway could not answer: when the
/// settler gets the hold at last, it is released at once, never captured.
#[tokio::test]
async fn a_hold_recorded_after_its_order_was_cancelled_is_voided_at_once() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(Config {
        authorize_recovery: Duration::from_secs(1),
        ..with_stripe(&stripe)
    })
    .await;
    let mut voided = app.watch::<PaymentVoided>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 650).await;
    stripe.set_down(true);
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let payment = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.publish(&cancelled(id)).await;
    stripe.set_down(false);
    let v = voided
        .next_within(Duration::from_secs(10))
        .await
        .expect("voided once the hold is recorded");
    assert_eq!(
        (v.id.to_string(), v.reason.as_str()),
        (payment.clone(), "order-cancelled")
    );
    assert_eq!(stripe.intents()[&v.authorization_id], "canceled");
    assert!(stripe.executed("/capture").is_empty());
    let body: Value = get_payment(&app, &token, &payment)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "voided");
}

#[tokio::test]
async fn a_capture_the_gateway_fails_is_retried_until_it_is_confirmed() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(with_stripe(&stripe)).await;
    let mut captured = app.watch::<PaymentCaptured>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 900).await;
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let paying = pay(&app, &token, id, "tok_visa");
    let verdict = async {
        let a = authorized.next().await;
        // Stripe goes away just as the order completes.
        stripe.set_down(true);
        app.publish(&completed(id)).await;
        a
    };
    let (res, a) = tokio::join!(paying, verdict);
    // The order completed: the buyer is told so, the capture is owed.
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "capturing");
    let capture = format!("/v1/payment_intents/{}/capture", a.authorization_id);
    eventually(Duration::from_secs(5), || async {
        (!stripe.requests_to(&capture).is_empty()).then_some(())
    })
    .await
    .expect("the capture was tried while Stripe was down");
    stripe.set_down(false);
    let c = captured
        .next_within(Duration::from_secs(15))
        .await
        .expect("captured after the retry");
    assert_eq!(c.id, a.id);
    assert_eq!(stripe.intents()[&a.authorization_id], "succeeded");
    assert_eq!(stripe.executed("/capture").len(), 1);
    assert!(shared::metrics::get("payments_gateway_retries_total", &[("step", "capturing")]) >= 1);
}

#[tokio::test]
async fn a_hold_without_a_verdict_is_voided_after_the_bound_and_counted() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(Config {
        verdict_wait: Duration::from_millis(100),
        verdict_timeout: Duration::from_secs(1),
        ..with_stripe(&stripe)
    })
    .await;
    let mut voided = app.watch::<PaymentVoided>().await;
    let before = shared::metrics::get("payments_verdicts_missing_total", &[]);
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 300).await;
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let v = voided
        .next_within(Duration::from_secs(10))
        .await
        .expect("voided");
    assert_eq!((v.order_id, v.reason.as_str()), (id, "no-verdict"));
    assert_eq!(stripe.intents()[&v.authorization_id], "canceled");
    assert!(shared::metrics::get("payments_verdicts_missing_total", &[]) > before);
    // The order completing after all is counted (money is owed), and
    // nothing is captured.
    let late = shared::metrics::get("payments_completed_without_hold_total", &[]);
    app.publish(&completed(id)).await;
    eventually(Duration::from_secs(5), || async {
        (shared::metrics::get("payments_completed_without_hold_total", &[]) > late).then_some(())
    })
    .await
    .expect("counted");
    assert!(stripe.executed("/capture").is_empty());
}

#[tokio::test]
async fn an_operator_refund_gives_captured_money_back_once() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(with_stripe(&stripe)).await;
    let mut refunded = app.watch::<PaymentRefunded>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 4200).await;
    let res = pay_with_verdict(&app, &token, id, "tok_visa", true).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let payment = PaymentId::parse(body["id"].as_str().unwrap()).unwrap();
    let gateway = StripeGateway::new(stripe.url(), "sk_test_123").unwrap();
    let (db, outbox) = payments_store(&app).await;
    let first = payments::saga::refund(&db, &outbox, &gateway, Timestamp::from_millis(1), payment)
        .await
        .unwrap();
    let again = payments::saga::refund(&db, &outbox, &gateway, Timestamp::from_millis(2), payment)
        .await
        .unwrap();
    assert_eq!(first, again);
    let e = refunded.next().await;
    assert_eq!(
        (e.id, e.amount_cents, e.refund_id),
        (payment, Money::from_cents(4200), first)
    );
    assert!(
        refunded
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    let refunds = stripe.requests_to("/v1/refunds");
    assert_eq!(
        refunds[0].form.get("payment_intent"),
        body["authorizationId"].as_str().map(str::to_owned).as_ref()
    );
    assert_eq!(stripe.executed("/v1/refunds").len(), 1);
    let res = get_payment(&app, &token, &payment.to_string()).await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "refunded");
    // Only captured money can be refunded.
    let other = order(&app, buyer, &token, 100).await;
    let res = pay_with_verdict(&app, &token, other, "tok_visa", false).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let voided: String = db
        .read(move |c| {
            c.query(
                "SELECT id FROM payments WHERE order_id = $1 AND status <> 'declined'",
                &[&other],
            )?[0]
                .get(0)
        })
        .await
        .unwrap();
    let voided = PaymentId::parse(&voided).unwrap();
    assert!(matches!(
        payments::saga::refund(&db, &outbox, &gateway, Timestamp::from_millis(3), voided).await,
        Err(payments::saga::RefundError::NotCaptured(..))
    ));
}
