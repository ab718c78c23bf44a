//! The gateways themselves: the Stripe client against the fake Stripe, and
//! the offline gateway holding the same way.

use super::*;

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

/// A gateway that cannot be reached says what it was doing and keeps the
/// HTTP client's error as its cause; a refund that fails on it says each
/// once in the chain an operator reads.
#[tokio::test]
async fn an_unreachable_gateway_keeps_the_http_error_as_its_cause_said_once() {
    use payments::PaymentGateway as _;
    use payments::gateway::{GatewayError, Settled};
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = StripeGateway::new(format!("http://127.0.0.1:{port}"), "sk_test_123").unwrap();
    let e = gateway
        .settle("pi_x".into(), Settled::Captured, "k".into())
        .await
        .unwrap_err();
    assert!(matches!(e, GatewayError::Unavailable { .. }), "{e:?}");
    let cause = std::error::Error::source(&e).expect("the HTTP client's error is kept");
    assert!(cause.to_string().contains("request"), "{cause}");
    let refund = payments::saga::RefundError::from(e);
    let report = store::report(&refund);
    assert!(
        report.starts_with(
            "the payment gateway refused or failed the refund: gateway unavailable: \
             cannot reach Stripe (/v1/payment_intents/pi_x/capture): "
        ),
        "{report}"
    );
    assert_eq!(
        report.matches("cannot reach Stripe").count(),
        1,
        "each cause once: {report}"
    );
}
