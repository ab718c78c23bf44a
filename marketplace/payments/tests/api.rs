//! Black-box tests of the payments service, with the offline gateway and
//! with the real Stripe client against a local fake Stripe. The orders
//! service is played by the test: it publishes the verdicts.

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

async fn app_with(config: Config) -> TestApp {
    TestApp::spawn(|deps| async move {
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

/// The authorize-then-settle calls the saga is built on, in Stripe's shape:
/// a PaymentIntent confirmed with manual capture, then captured or
/// cancelled; each step idempotent per key.
#[tokio::test]
async fn the_stripe_client_authorizes_then_captures_or_voids_payment_intents() {
    use payments::PaymentGateway as _;
    use payments::gateway::{ChargeRequest, GatewayError, Settled};
    let stripe = fake_stripe::FakeStripe::start().await;
    let gateway = StripeGateway::new(stripe.url(), "sk_test_123").unwrap();
    let request = |token: &str, key: &str| ChargeRequest {
        amount: Money::from_cents(1250),
        currency: "usd".into(),
        token: token.into(),
        idempotency_key: key.into(),
        description: "ticketing order x".into(),
    };
    let held = gateway
        .authorize(request("tok_visa", "authorize-a"))
        .await
        .unwrap();
    // A retry with the same key is the same authorization.
    assert_eq!(
        gateway
            .authorize(request("tok_visa", "authorize-a"))
            .await
            .unwrap(),
        held
    );
    let creates = stripe.requests_to("/v1/payment_intents");
    assert_eq!(creates.len(), 2);
    let form = &creates[0].form;
    for (field, value) in [
        ("amount", "1250"),
        ("currency", "usd"),
        ("capture_method", "manual"),
        ("confirm", "true"),
        ("payment_method_types[]", "card"),
        ("payment_method_data[type]", "card"),
        ("payment_method_data[card][token]", "tok_visa"),
    ] {
        assert_eq!(form.get(field).map(String::as_str), Some(value), "{field}");
    }
    assert_eq!(creates[0].idempotency_key.as_deref(), Some("authorize-a"));
    assert_eq!(stripe.intents()[&held], "requires_capture");

    gateway
        .settle(held.clone(), Settled::Captured, "capture-a".into())
        .await
        .unwrap();
    gateway
        .settle(held.clone(), Settled::Captured, "capture-a".into())
        .await
        .unwrap();
    assert_eq!(stripe.intents()[&held], "succeeded");
    let captures = stripe.requests_to(&format!("/v1/payment_intents/{held}/capture"));
    assert_eq!(captures.len(), 2);
    assert!(
        captures
            .iter()
            .all(|r| r.idempotency_key.as_deref() == Some("capture-a"))
    );

    // Another hold, released: nothing is charged.
    let other = gateway
        .authorize(request("tok_mastercard", "authorize-b"))
        .await
        .unwrap();
    gateway
        .settle(other.clone(), Settled::Voided, "void-b".into())
        .await
        .unwrap();
    assert_eq!(stripe.intents()[&other], "canceled");
    // A captured hold cannot be voided under a new key: Stripe says so.
    assert!(matches!(
        gateway
            .settle(held.clone(), Settled::Voided, "void-a".into())
            .await,
        Err(GatewayError::Invalid(_))
    ));

    // Declines, and cards that would need the buyer present.
    assert!(matches!(
        gateway.authorize(request("tok_chargeDeclined", "authorize-c")).await,
        Err(GatewayError::Declined(m)) if m == "Your card was declined."
    ));
    assert!(matches!(
        gateway
            .authorize(request("tok_threeDSecureRequired", "authorize-d"))
            .await,
        Err(GatewayError::Declined(_))
    ));
}

#[tokio::test]
async fn the_offline_gateway_emulates_the_same_holds() {
    use payments::PaymentGateway as _;
    use payments::gateway::{ChargeRequest, GatewayError, Settled};
    let gateway = payments::OfflineGateway;
    let request = |token: &str| ChargeRequest {
        amount: Money::from_cents(500),
        currency: "usd".into(),
        token: token.into(),
        idempotency_key: "authorize-k".into(),
        description: String::new(),
    };
    let held = gateway.authorize(request("tok_visa")).await.unwrap();
    assert_eq!(gateway.authorize(request("tok_visa")).await.unwrap(), held);
    for how in [Settled::Captured, Settled::Voided] {
        gateway.settle(held.clone(), how, "k".into()).await.unwrap();
    }
    assert!(matches!(
        gateway.authorize(request("tok_chargeDeclined")).await,
        Err(GatewayError::Declined(_))
    ));
    assert!(matches!(
        gateway.authorize(request("tok_nope")).await,
        Err(GatewayError::Invalid(_))
    ));
    assert!(matches!(
        gateway
            .settle("pi_elsewhere".into(), Settled::Captured, "k".into())
            .await,
        Err(GatewayError::Invalid(_))
    ));
}

/// Card testing: a few declined cards on one order, or by one buyer, within
/// the window, then every payment of theirs is a 429 with `Retry-After`
/// until the oldest decline leaves the window. Cards the gateway cannot
/// read count for nothing; other buyers are not affected.
#[tokio::test]
async fn declined_cards_past_the_limit_per_order_and_per_buyer_are_refused_with_retry_after() {
    let virtual_time = testkit::virtual_time();
    let app = app_with(Config {
        max_declines_per_order: 2,
        max_declines_per_buyer: 3,
        decline_window: Duration::from_secs(600),
        ..Config::default()
    })
    .await;
    let declined_before = shared::metrics::get("payments_declined_total", &[]);
    let limited_before = shared::metrics::get("payments_decline_limited_total", &[]);
    let (buyer, token) = app.user();
    let first = order(&app, buyer, &token, 1000).await;
    // Unreadable tokens (the probe above, and these) are not declines.
    for _ in 0..3 {
        assert_eq!(
            pay(&app, &token, first, PROBE).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    for _ in 0..2 {
        let res = pay(&app, &token, first, "tok_chargeDeclined").await;
        assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    }
    // The order has had its two: a good card is refused too.
    let refused = pay(&app, &token, first, "tok_visa").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    assert_eq!(message(refused).await, "Too many attempts, try again later");

    // Another order of the buyer's: one more decline, then the buyer's
    // three are used up.
    let second = order(&app, buyer, &token, 1000).await;
    let res = pay(&app, &token, second, "tok_chargeDeclined").await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    let res = pay(&app, &token, second, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    // Someone else pays as usual.
    let (other, other_token) = app.user();
    let theirs = order(&app, other, &other_token, 1000).await;
    let res = pay_with_verdict(&app, &other_token, theirs, "tok_visa", true).await;
    assert_eq!(res.status(), StatusCode::CREATED);

    assert!(shared::metrics::get("payments_declined_total", &[]) >= declined_before + 3);
    assert!(shared::metrics::get("payments_decline_limited_total", &[]) >= limited_before + 2);

    if virtual_time {
        // Once the declines are older than the window, the buyer pays.
        tokio::time::advance(Duration::from_secs(601)).await;
        let res = pay_with_verdict(&app, &token, first, "tok_visa", true).await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
}

async fn pay_keyed(
    app: &TestApp,
    token: &str,
    order: OrderId,
    card: &str,
    key: &str,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut req = reqwest::Client::new()
        .post(app.url("/api/payments"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"orderId": order.to_string(), "token": card}));
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    req.send().await
}

/// The first answer is lost (the client gave up while the payment waited
/// for its verdict, as when payments dies mid-request behind the gateway):
/// a retry under the same `Idempotency-Key` answers from the payment the
/// first request recorded — captured, 201, the same id — and never holds the
/// card again. The same key with another body is a 422; without the key,
/// the 409 names the payment.
#[tokio::test]
async fn a_retry_under_the_same_idempotency_key_answers_from_the_first_payment() {
    let app = app_with(Config {
        verdict_wait: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 1200).await;
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let lost = pay_keyed(
        &app,
        &token,
        id,
        "tok_visa",
        "key-1",
        Some(Duration::from_millis(300)),
    )
    .await;
    assert!(lost.is_err(), "the first answer never arrived");
    let hold = authorized.next().await;
    assert_eq!(hold.order_id, id);
    // The orders service's verdict comes meanwhile.
    app.publish(&completed(id)).await;

    let retry = pay_keyed(&app, &token, id, "tok_visa", "key-1", None)
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    let body: Value = retry.json().await.unwrap();
    assert_eq!(body["id"], hold.id.to_string());
    assert!(
        body["status"] == "captured" || body["status"] == "capturing",
        "{body}"
    );
    // Once more: the same.
    let again: Value = pay_keyed(&app, &token, id, "tok_visa", "key-1", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], hold.id.to_string());
    assert!(
        authorized
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the card was held once"
    );

    let other_body = pay_keyed(&app, &token, id, "tok_mastercard", "key-1", None)
        .await
        .unwrap();
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        message(other_body).await,
        "This Idempotency-Key was used with another request; use a new key"
    );
    let unkeyed = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(unkeyed.status(), StatusCode::CONFLICT);
    assert_eq!(
        message(unkeyed).await,
        format!("Order is already paid (payment {})", hold.id)
    );
    // Another buyer's key of the same name is theirs alone.
    let (other, other_token) = app.user();
    let theirs = order(&app, other, &other_token, 500).await;
    let res = pay_with_verdict_keyed(&app, &other_token, theirs, "key-1").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // A declined card's answer is kept with its key too.
    let (third, third_token) = app.user();
    let declined_order = order(&app, third, &third_token, 500).await;
    for _ in 0..2 {
        let res = pay_keyed(
            &app,
            &third_token,
            declined_order,
            "tok_chargeDeclined",
            "d",
            None,
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(message(res).await, "Your card was declined.");
    }
    // A malformed key is refused before anything is done.
    let res = pay_keyed(
        &app,
        &third_token,
        declined_order,
        "tok_visa",
        &"k".repeat(256),
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

async fn pay_with_verdict_keyed(
    app: &TestApp,
    token: &str,
    order: OrderId,
    key: &str,
) -> reqwest::Response {
    let mut authorized = app.watch::<PaymentAuthorized>().await;
    let verdict = async {
        while authorized.next().await.order_id != order {}
        app.publish(&completed(order)).await;
    };
    let (res, ()) = tokio::join!(pay_keyed(app, token, order, "tok_visa", key, None), verdict);
    res.unwrap()
}
