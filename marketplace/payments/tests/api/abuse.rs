//! Payments under misuse: card testing (too many declines) and retries
//! under an idempotency key after a lost answer.

use super::*;

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
