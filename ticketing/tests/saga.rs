//! The payment saga on the real binary (all services in one process), with
//! the real Stripe client against a local fake Stripe: paying races
//! cancelling and expiring, the process is killed between the saga's steps,
//! and the web client shows each outcome. The invariant everywhere: a buyer
//! told 201 owns the ticket, no hold is captured without a completed order,
//! and every hold ends captured or voided, once.

#[path = "../../marketplace/payments/tests/fake_stripe/mod.rs"]
mod fake_stripe;

mod common;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::time::{Clock, Timestamp};
use testkit::eventually;

use common::{Proc, Shopper, free_port};
use fake_stripe::FakeStripe;

const NOTHING_CHARGED: &str = "Order was cancelled; nothing was charged";
const CANCELLED_FIRST: &str = "Cannot pay for a cancelled order";

fn env(stripe: &FakeStripe, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("STRIPE_SECRET_KEY", "sk_test_123".to_owned()),
        ("STRIPE_API_BASE", stripe.url()),
        ("MAX_ACTIVE_ORDERS_PER_USER", "1000".to_owned()),
        ("PAYMENT_AUTHORIZE_RECOVERY_SECONDS", "2".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

async fn message(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap_or(Value::Null);
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until payments knows the order: a card token the gateway cannot
/// read is a 400 (a 404 before), leaves the order payable and counts for
/// nothing against card testing.
async fn payable(buyer: &Shopper, order: &str) {
    eventually(Duration::from_secs(15), || async {
        let res = buyer
            .post(
                "/api/payments",
                json!({"orderId": order, "token": "tok_probe_unknown"}),
            )
            .await;
        (res.status() == StatusCode::BAD_REQUEST).then_some(())
    })
    .await
    .expect("payments learns the order");
}

async fn delete(user: &Shopper, path: &str) -> reqwest::Response {
    user.client
        .delete(format!("{}{path}", user.base()))
        .send()
        .await
        .unwrap()
}

/// Every order of the buyer's: id → status.
async fn orders_of(buyer: &Shopper) -> HashMap<String, String> {
    let list = buyer.get("/api/orders?limit=200").await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Once no hold is left pending: order id → the statuses of its holds at
/// the gateway (`succeeded` = captured, `canceled` = voided).
async fn settled_holds(stripe: &FakeStripe) -> HashMap<String, Vec<String>> {
    eventually(Duration::from_secs(30), || async {
        let intents = stripe.described_intents();
        intents
            .iter()
            .all(|(_, s)| s == "succeeded" || s == "canceled")
            .then_some(intents)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "holds left neither captured nor voided: {:?}",
            stripe.described_intents()
        )
    })
    .into_iter()
    .fold(HashMap::new(), |mut by_order, (description, status)| {
        let order = description
            .strip_prefix("ticketing order ")
            .unwrap_or(&description)
            .to_owned();
        by_order.entry(order).or_insert_with(Vec::new).push(status);
        by_order
    })
}

/// The saga's invariant over everything the buyer ordered: a complete
/// order has exactly one hold and it was captured; any other order has no
/// captured hold; every order that was answered 201 is complete; each
/// capture was executed once at the gateway.
async fn check_invariant(stripe: &FakeStripe, buyer: &Shopper, paid_201: &[String]) {
    let holds = settled_holds(stripe).await;
    let orders = orders_of(buyer).await;
    for (order, statuses) in &holds {
        let status = orders
            .get(order)
            .unwrap_or_else(|| panic!("a hold for an order the buyer does not have: {order}"));
        match status.as_str() {
            "complete" => assert_eq!(statuses, &["succeeded"], "order {order}"),
            "cancelled" => assert!(
                statuses.iter().all(|s| s == "canceled"),
                "a cancelled order was charged: {order} {statuses:?}"
            ),
            other => panic!("order {order} is still {other} with holds {statuses:?}"),
        }
    }
    for order in paid_201 {
        assert_eq!(
            orders[order], "complete",
            "told 201 but not complete: {order}"
        );
    }
    let captured = holds
        .values()
        .flatten()
        .filter(|s| *s == "succeeded")
        .count();
    let complete = orders.values().filter(|s| *s == "complete").count();
    assert_eq!(captured, complete, "captures and completed orders");
    assert_eq!(
        stripe.executed("/capture").len(),
        captured,
        "one capture each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_and_cancelling_at_the_same_moment_never_charge_a_cancelled_order() {
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start_with(free_port(), dir.path(), 900, &env(&stripe, &[])).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    let (mut paid, mut voided, mut refused) = (Vec::new(), 0, 0);
    for i in 0..50 {
        let ticket = seller.sell(&format!("Race {i}"), 12.5).await;
        let order = buyer.buy(&ticket).await;
        payable(&buyer, &order).await;
        // The cancellation leaves 0–9 ms after the payment, so every
        // interleaving of the two gets its turn.
        let cancel_after = Duration::from_millis(i % 10);
        let ((pay_status, pay_message), cancel) = tokio::join!(
            async {
                let res = buyer
                    .post(
                        "/api/payments",
                        json!({"orderId": order, "token": "tok_visa"}),
                    )
                    .await;
                let status = res.status();
                (status, message(res).await)
            },
            async {
                tokio::time::sleep(cancel_after).await;
                delete(&buyer, &format!("/api/orders/{order}"))
                    .await
                    .status()
            }
        );
        match (pay_status, cancel) {
            (StatusCode::CREATED, StatusCode::CONFLICT) => paid.push(order.clone()),
            (StatusCode::CONFLICT, StatusCode::NO_CONTENT) if pay_message == NOTHING_CHARGED => {
                voided += 1
            }
            (StatusCode::CONFLICT, StatusCode::NO_CONTENT) if pay_message == CANCELLED_FIRST => {
                refused += 1
            }
            other => {
                panic!("pair {i}: payment and cancellation answered {other:?} ({pay_message})")
            }
        }
        let status = buyer.get(&format!("/api/orders/{order}")).await["status"].clone();
        let want = if paid.last() == Some(&order) {
            "complete"
        } else {
            "cancelled"
        };
        assert_eq!(status, want, "pair {i}");
    }
    eprintln!(
        "cancel vs pay, 50 pairs: {} paid (cancel 409), {voided} cancelled with the hold voided, {refused} cancelled before the hold",
        paid.len()
    );
    check_invariant(&stripe, &buyer, &paid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_in_the_last_moments_before_expiry_is_all_or_nothing() {
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start_with(free_port(), dir.path(), 2, &env(&stripe, &[])).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    let (mut paid, mut voided, mut refused) = (Vec::new(), 0, 0);
    // Ten purchases at a time, each paying 0–90 ms before its order expires.
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..10u64 {
            let (seller, buyer) = (seller.clone(), buyer.clone());
            tasks.push(tokio::spawn(async move {
                let ticket = seller.sell(&format!("Expiry {round}-{i}"), 8.0).await;
                let id = buyer.buy(&ticket).await;
                let order = buyer.get(&format!("/api/orders/{id}")).await;
                let expires = Timestamp::parse_rfc3339(order["expiresAt"].as_str().unwrap())
                    .unwrap()
                    .millis();
                payable(&buyer, &id).await;
                let pay_at = expires - 10 * i as i64;
                let wait = pay_at - Clock::System.now().millis();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
                let res = buyer
                    .post("/api/payments", json!({"orderId": id, "token": "tok_visa"}))
                    .await;
                let status = res.status();
                (id, status, message(res).await)
            }));
        }
        for t in tasks {
            let (order, status, text) = t.await.unwrap();
            let final_status = buyer
                .until_in(&format!("/api/orders/{order}"), &["complete", "cancelled"])
                .await;
            match status {
                StatusCode::CREATED => {
                    assert_eq!(final_status, "complete", "{order}");
                    paid.push(order);
                }
                StatusCode::CONFLICT if text == NOTHING_CHARGED => {
                    assert_eq!(final_status, "cancelled", "{order}");
                    voided += 1;
                }
                StatusCode::CONFLICT if text == CANCELLED_FIRST => {
                    assert_eq!(final_status, "cancelled", "{order}");
                    refused += 1;
                }
                other => panic!("payment before expiry answered {other} ({text})"),
            }
        }
    }
    eprintln!(
        "pay vs expiry, 50 orders: {} paid in time, {voided} expired with the hold voided, {refused} expired before the hold",
        paid.len()
    );
    check_invariant(&stripe, &buyer, &paid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_process_between_the_sagas_steps_loses_no_hold_and_charges_nothing_twice() {
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = env(&stripe, &[]);
    let mut p = Proc::start_with(port, dir.path(), 4, &env).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    let mut paid = Vec::new();
    for i in 0..16u64 {
        let ticket = seller.sell(&format!("Crash {i}"), 5.0).await;
        let order = buyer.buy(&ticket).await;
        payable(&buyer, &order).await;
        let paying = {
            let buyer = buyer.clone();
            let order = order.clone();
            tokio::spawn(async move {
                buyer
                    .client
                    .post(format!("{}/api/payments", buyer.base()))
                    .json(&json!({"orderId": order, "token": "tok_visa"}))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        };
        // SIGKILL 0–15 ms into the payment: before the hold, between the
        // hold and its record, before or after orders' verdict, mid-capture.
        tokio::time::sleep(Duration::from_millis(i)).await;
        p.crash();
        // A request cut off by the kill gets no answer (reqwest errors out).
        if let Ok(Ok(Ok(StatusCode::CREATED))) =
            tokio::time::timeout(Duration::from_secs(1), paying).await
        {
            paid.push(order.clone());
        }
        p = Proc::start_with(port, dir.path(), 4, &env).await;
    }
    // Recovery: unanswered holds are asked for again and settled, verdicts
    // arrive, the unpaid orders expire. Then the invariant holds.
    eventually(Duration::from_secs(60), || async {
        orders_of(&buyer)
            .await
            .values()
            .all(|s| s != "created")
            .then_some(())
    })
    .await
    .expect("every order reaches its end");
    check_invariant(&stripe, &buyer, &paid).await;
    let complete = orders_of(&buyer)
        .await
        .values()
        .filter(|s| *s == "complete")
        .count();
    eprintln!(
        "kill -9 mid-payment, 16 purchases: {} answered 201, {complete} complete, {} holds in all",
        paid.len(),
        stripe.described_intents().len()
    );
    drop(p);
}

/// Orders slow to decide, for real: one service per process on JetStream +
/// PostgreSQL, and a transaction of the test's own holds the order's row,
/// so orders' verdict waits (its reads go on). The web client shows
/// "Processing…", offers no second payment, refreshes itself, and shows
/// "Paid" once the verdict is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_shows_processing_then_paid() {
    let names = ["auth", "tickets", "orders", "expiration", "payments"];
    let Some(engines) = common::engines(&names).await else {
        return;
    };
    // Kept to the end: dropping it stops the processes.
    let stack = engines
        .web_stack(&[("PAYMENT_WAIT_SECONDS", "1".into())])
        .await;
    let gw = stack.gateway.clone();

    let seller = Shopper::sign_up(&gw, "seller@example.com").await;
    let buyer = Shopper::sign_up(&gw, "buyer@example.com").await;
    let ticket = seller.sell("Opera", 40.0).await;
    let order = buyer.buy(&ticket).await;
    payable(&buyer, &order).await;

    let orders_db = store::Db::postgres_lazy(&engines.schemas["orders"].url, 1).unwrap();
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let id = order.clone();
    let hold = tokio::spawn(async move {
        orders_db
            .write(move |c| {
                c.query("SELECT id FROM orders WHERE id = $1 FOR UPDATE", &[&id])?;
                let _ = locked.send(());
                let _ = released.recv_timeout(Duration::from_secs(30));
                Ok::<_, store::StoreError>(())
            })
            .await
    });
    is_locked.await.unwrap();

    let page = buyer.page(&format!("/orders/{order}")).await;
    let csrf = common::form_token(&page);
    let res = buyer
        .client
        .post(format!("{gw}/orders/{order}/pay"))
        .form(&[("_csrf", csrf.as_str()), ("token", "tok_visa")])
        .send()
        .await
        .unwrap();
    // 202: redirected to the order page of the pending payment.
    let url = res.url().to_string();
    let text = res.text().await.unwrap();
    assert!(url.contains("?payment="), "{url}");
    assert!(text.contains("Processing…"), "{text}");
    assert!(
        text.contains(r#"<meta http-equiv="refresh" content="1">"#),
        "{text}"
    );
    assert!(!text.contains(r#"id="pay-form""#), "{text}");
    release.send(()).unwrap();
    hold.await.unwrap().unwrap();
    let paid = eventually(Duration::from_secs(15), || async {
        let text = buyer.page(&url.replacen(&gw, "", 1)).await;
        text.contains("Paid — the ticket is yours.").then_some(text)
    })
    .await
    .expect("the page turns to Paid");
    assert!(!paid.contains("Processing…"));
    assert!(!paid.contains(r#"http-equiv="refresh""#));
    // A payment parameter that is no payment id is ignored, never sent on.
    for junk in ["not-an-id", "..%2F..%2Fapi%2Forders", ""] {
        let text = buyer.page(&format!("/orders/{order}?payment={junk}")).await;
        assert!(
            text.contains("Paid — the ticket is yours."),
            "{junk}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_says_nothing_was_charged_when_the_order_was_cancelled_first() {
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start_with(free_port(), dir.path(), 900, &env(&stripe, &[])).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    // The pay form and the cancellation race until the hold loses one
    // (the order is cancelled after the card was held); what the page says
    // then is the point.
    for i in 0..60u64 {
        let ticket = seller.sell(&format!("Ballet {i}"), 9.0).await;
        let order = buyer.buy(&ticket).await;
        payable(&buyer, &order).await;
        let page = buyer.page(&format!("/orders/{order}")).await;
        let csrf = common::form_token(&page);
        let (text, _) = tokio::join!(
            async {
                buyer
                    .client
                    .post(format!("{}/orders/{order}/pay", p.base))
                    .form(&[("_csrf", csrf.as_str()), ("token", "tok_visa")])
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            },
            async {
                tokio::time::sleep(Duration::from_millis(i % 8)).await;
                delete(&buyer, &format!("/api/orders/{order}")).await
            }
        );
        if text.contains(NOTHING_CHARGED) {
            assert!(text.contains("This order was cancelled"), "{text}");
            return;
        }
    }
    panic!("in 60 races the cancellation never landed between the hold and the verdict");
}

/// The operator's refund, as the binary runs it beside the running service:
/// once however often it is run, announced and shown; refused for what was
/// not captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_refunds_a_captured_payment_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    let ticket = seller.sell("Recital", 15.0).await;
    let order = buyer.buy(&ticket).await;
    payable(&buyer, &order).await;
    let res = buyer
        .post(
            "/api/payments",
            json!({"orderId": order, "token": "tok_visa"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let payment = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refund = |id: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(["payments", "refund", id, "--data-dir"])
            .arg(dir.path())
            .env_remove("STRIPE_SECRET_KEY")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let first = refund(&payment);
    assert!(first.status.success(), "{first:?}");
    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        said.contains(&format!("payment {payment} refunded: re_offline_")),
        "{said}"
    );
    let again = refund(&payment);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        said,
        "the same refund"
    );
    let shown = eventually(Duration::from_secs(5), || async {
        let p = buyer.get(&format!("/api/payments/{payment}")).await;
        (p["status"] == "refunded").then_some(p)
    })
    .await;
    assert!(shown.is_some(), "the payment shows refunded");
    for (id, why) in [
        (uuid_like(), "no payment"),
        ("not-an-id".to_owned(), "not a payment id"),
    ] {
        let out = refund(&id);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
}

fn uuid_like() -> String {
    marketplace_events::PaymentId::new().to_string()
}
