//! Black-box tests of the payments service, with the offline gateway and
//! with the real Stripe client against a local fake Stripe.

mod fake_stripe;

use std::sync::Arc;
use std::time::Duration;

use bus::listener::ListenerOptions;
use marketplace_events::{
    OrderCancelled, OrderCreated, OrderStatus, OrderTicket, PaymentCreated, PaymentRefunded,
    TicketRef,
};
use marketplace_events::{OrderId, TicketId};
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
    // A declined card says 402 only once the order is known (404 before),
    // and records nothing.
    eventually(Duration::from_secs(5), || async {
        (pay(app, token, id, "tok_chargeDeclined").await.status() == StatusCode::PAYMENT_REQUIRED)
            .then_some(())
    })
    .await
    .expect("order replicated");
    id
}

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

#[tokio::test]
async fn paying_charges_the_price_in_cents_and_publishes_payment_created() {
    let app = app().await;
    let mut created = app.watch::<PaymentCreated>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 1999).await;
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["orderId"].clone(), body["amount"].clone()),
        (json!(id.to_string()), json!(19.99))
    );
    assert!(body["chargeId"].as_str().unwrap().starts_with("ch_"));
    let e = created.next().await;
    assert_eq!(
        (e.order_id, e.amount_cents, e.charge_id.as_str()),
        (
            id,
            Money::from_cents(1999),
            body["chargeId"].as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn paying_checks_session_body_existence_ownership_and_state() {
    let app = app().await;
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
    assert_eq!(
        pay(&app, &token, id, "tok_mastercard").await.status(),
        StatusCode::CREATED
    );
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(message(res).await, "Order is already paid");
}

#[tokio::test]
async fn a_cancelled_order_cannot_be_paid() {
    let app = app().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 500).await;
    app.publish(&OrderCancelled {
        id,
        version: 1,
        ticket: TicketRef {
            id: TicketId::new(),
        },
    })
    .await;
    let res = eventually(Duration::from_secs(5), || async {
        let r = pay(&app, &token, id, "tok_chargeDeclined").await;
        (r.status() == StatusCode::CONFLICT).then_some(r)
    })
    .await
    .expect("409 once the cancellation is known");
    assert_eq!(message(res).await, "Cannot pay for a cancelled order");
}

#[tokio::test]
async fn concurrent_payments_for_one_order_charge_once() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let gateway = Arc::new(StripeGateway::new(stripe.url(), "sk_test_123").unwrap());
    let app = app_with(Config {
        gateway,
        currency: "usd".into(),
    })
    .await;
    let mut created = app.watch::<PaymentCreated>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 2500).await;
    let body = json!({"orderId": id.to_string(), "token": "tok_visa"});
    let statuses = app
        .race("/api/payments", vec![(Some(token.clone()), body); 6])
        .await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    assert_eq!(stripe.distinct_charges(), 1, "charged more than once");
    created.next().await;
    assert!(
        created
            .next_within(Duration::from_millis(400))
            .await
            .is_none(),
        "two payment.created events"
    );
}

#[tokio::test]
async fn a_payment_whose_order_was_cancelled_first_is_refunded() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let gateway = Arc::new(StripeGateway::new(stripe.url(), "sk_test_123").unwrap());
    let app = app_with(Config {
        gateway,
        currency: "usd".into(),
    })
    .await;
    let mut refunded = app.watch::<PaymentRefunded>().await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 1200).await;
    let res = pay(&app, &token, id, "tok_visa").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let charge = res.json::<Value>().await.unwrap()["chargeId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The order had expired meanwhile: orders cancels it and payments learns.
    app.publish(&OrderCancelled {
        id,
        version: 1,
        ticket: TicketRef {
            id: TicketId::new(),
        },
    })
    .await;
    let e = refunded.next().await;
    assert_eq!((e.order_id, e.amount_cents), (id, Money::from_cents(1200)));
    let refunds = stripe.requests_to("/v1/refunds");
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].form.get("charge"), Some(&charge));
    // A redelivered cancellation does not refund twice.
    app.publish(&OrderCancelled {
        id,
        version: 1,
        ticket: TicketRef {
            id: TicketId::new(),
        },
    })
    .await;
    assert!(
        refunded
            .next_within(Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_stripe_client_sends_stripes_request_shape() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(Config {
        gateway: Arc::new(StripeGateway::new(stripe.url(), "sk_test_123").unwrap()),
        currency: "eur".into(),
    })
    .await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 1999).await;
    assert_eq!(
        pay(&app, &token, id, "tok_visa").await.status(),
        StatusCode::CREATED
    );
    let charges: Vec<_> = stripe
        .requests_to("/v1/charges")
        .into_iter()
        .filter(|r| r.form.get("source").map(String::as_str) == Some("tok_visa"))
        .collect();
    assert_eq!(charges.len(), 1);
    let c = &charges[0];
    assert_eq!(c.authorization.as_deref(), Some("Bearer sk_test_123"));
    assert_eq!(
        c.idempotency_key.as_deref(),
        Some(format!("charge-{id}").as_str())
    );
    assert_eq!(
        c.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(c.form.get("amount").map(String::as_str), Some("1999"));
    assert_eq!(c.form.get("currency").map(String::as_str), Some("eur"));
}

#[tokio::test]
async fn stripe_declines_and_outages_map_to_402_and_503() {
    let stripe = fake_stripe::FakeStripe::start().await;
    let app = app_with(Config {
        gateway: Arc::new(StripeGateway::new(stripe.url(), "sk_test_123").unwrap()),
        currency: "usd".into(),
    })
    .await;
    let (buyer, token) = app.user();
    let id = order(&app, buyer, &token, 100).await;
    let res = pay(&app, &token, id, "tok_chargeDeclined").await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(message(res).await, "Your card was declined.");
    let res = pay(&app, &token, id, "tok_outage").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.text().await.unwrap();
    assert!(!body.contains("500"), "internals leaked: {body}");
    // Nothing was recorded: the order can still be paid.
    assert_eq!(
        pay(&app, &token, id, "tok_visa").await.status(),
        StatusCode::CREATED
    );
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
