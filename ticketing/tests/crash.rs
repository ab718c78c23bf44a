//! Crashes across processes, on a nats-server and PostgreSQL of the test's
//! own: services killed with SIGKILL mid-flow, NATS killed and restarted, a
//! service restarted in front of a backlog. After recovery no event is lost
//! (every copy converges, nothing is parked, every outbox is empty), none is
//! applied twice (every record's version counts its changes exactly), every
//! order reaches a terminal state, and the replicas agree.

#[path = "../../marketplace/payments/tests/fake_stripe/mod.rs"]
mod fake_stripe;

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Api, Engines};
use reqwest::StatusCode;
use serde_json::json;
use testkit::eventually;

const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];

/// Waits until `check` holds for the rows of `sql` in `service`'s database.
async fn until_rows(
    engines: &Engines,
    service: &'static str,
    sql: &'static str,
    what: &str,
    check: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let rows = engines.query(service, sql).await;
        if check(&rows) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last saw {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn parked(engines: &Engines) -> u64 {
    let js = engines.nats.jetstream().await.unwrap();
    let mut stream = js.get_stream("PARKED").await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn outboxes_drain(engines: &Engines, services: &[&'static str]) {
    for s in services {
        until_rows(
            engines,
            s,
            "SELECT COUNT(*) FROM outbox",
            &format!("{s}'s outbox drains"),
            |r| r[0][0] == "0",
        )
        .await;
    }
}

/// Pays until payments has taken the payment: 201 (captured), or 202 /
/// "already being processed" when a killed process left it to the settler
/// (the final checks hold it to completing).
async fn pay_for(buyer: &Api, urls: &[String], order: &str) {
    let taken = testkit::eventually(Duration::from_secs(30), || async {
        let url = format!("{}/api/payments", urls[0]);
        let (status, body) = buyer
            .send(
                "POST",
                &url,
                Some(json!({"orderId": order, "token": "tok_visa"})),
            )
            .await?;
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        (status == StatusCode::CREATED
            || status == StatusCode::ACCEPTED
            || (status == StatusCode::CONFLICT && message.starts_with("A payment for this order")))
        .then_some(())
    })
    .await;
    assert!(taken.is_some(), "payment for {order} never taken");
}

/// The payment saga with payments or orders killed (SIGKILL) a few
/// milliseconds into each payment, on JetStream + PostgreSQL with the real
/// Stripe client against a fake Stripe: after recovery every hold at the
/// gateway is captured or voided, a hold is captured exactly when its order
/// completed, each capture ran once, and every payment answered 201 belongs
/// to a complete order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_or_orders_killed_between_the_sagas_steps_settle_every_hold_once() {
    let Some(engines) = common::engines(&SERVICES).await else {
        return;
    };
    let stripe = fake_stripe::FakeStripe::start().await;
    let mut c = engines.cluster(&[
        ("ORDER_EXPIRATION_SECONDS", "8".into()),
        ("STRIPE_SECRET_KEY", "sk_test_123".into()),
        ("STRIPE_API_BASE", stripe.url()),
        ("PAYMENT_AUTHORIZE_RECOVERY_SECONDS", "2".into()),
        ("MAX_ACTIVE_ORDERS_PER_USER", "100".into()),
    ]);
    let t = engines.spawn(&mut c, "tickets", "tickets");
    let o = engines.spawn(&mut c, "orders", "orders");
    let _exp = engines.spawn(&mut c, "expiration", "expiration");
    let pay = engines.spawn(&mut c, "payments", "payments");
    c.all_ready(Duration::from_secs(60)).await.unwrap();
    let (tickets, orders, payments) = (vec![c.url(t)], vec![c.url(o)], c.url(pay));
    let (seller, buyer) = (
        Api::new("seller@example.com"),
        Api::new("buyer@example.com"),
    );
    let n = 10u64;
    let mut paid = Vec::new();
    for i in 0..n {
        let ticket = create_ticket(&seller, &tickets, &format!("Saga {i}")).await;
        let order = place_order(&buyer, &orders, &ticket).await;
        buyer
            .until(
                "POST",
                std::slice::from_ref(&payments),
                "/api/payments",
                Some(json!({"orderId": order, "token": "tok_probe_unknown"})),
                StatusCode::BAD_REQUEST,
            )
            .await;
        let paying = {
            let (buyer, url, order) = (
                buyer.clone(),
                format!("{payments}/api/payments"),
                order.clone(),
            );
            tokio::spawn(async move {
                buyer
                    .send(
                        "POST",
                        &url,
                        Some(json!({"orderId": order, "token": "tok_visa"})),
                    )
                    .await
                    .map(|(s, _)| s)
            })
        };
        tokio::time::sleep(Duration::from_millis(i * 2)).await;
        // Payments before it records the hold or mid-capture; orders
        // before or after its verdict.
        let victim = if i % 2 == 0 { pay } else { o };
        c.kill(victim);
        c.start(victim).unwrap();
        if let Ok(Some(StatusCode::CREATED)) = paying.await {
            paid.push(order);
        }
        c.all_ready(Duration::from_secs(60)).await.unwrap();
    }
    // Every order ends; every hold is settled.
    let rows = until_rows(
        &engines,
        "orders",
        "SELECT id, status FROM orders",
        "every order reaches a terminal state",
        |r| r.len() == n as usize && r.iter().all(|o| o[1] != "created"),
    )
    .await;
    let status: HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    let intents = eventually(Duration::from_secs(40), || async {
        let all = stripe.described_intents();
        all.iter()
            .all(|(_, s)| s == "succeeded" || s == "canceled")
            .then_some(all)
    })
    .await
    .unwrap_or_else(|| panic!("holds left unsettled: {:?}", stripe.described_intents()));
    let mut captured_per_order: HashMap<&str, usize> = HashMap::new();
    for (description, state) in &intents {
        let order = description.trim_start_matches("ticketing order ");
        let order_status = status[order];
        if state == "succeeded" {
            assert_eq!(
                order_status, "complete",
                "captured without a completed order: {order}"
            );
            *captured_per_order.entry(order).or_default() += 1;
        }
    }
    for (order, s) in &status {
        let captured = captured_per_order.get(order).copied().unwrap_or(0);
        assert_eq!(
            captured,
            usize::from(*s == "complete"),
            "order {order} ({s})"
        );
    }
    for order in &paid {
        assert_eq!(status[order.as_str()], "complete", "told 201: {order}");
    }
    assert_eq!(
        stripe.executed("/capture").len(),
        captured_per_order.len(),
        "one capture each"
    );
    eprintln!(
        "kill -9 of payments/orders mid-payment, {n} purchases: {} answered 201, {} complete, {} holds",
        paid.len(),
        captured_per_order.len(),
        intents.len()
    );
    outboxes_drain(&engines, &["tickets", "orders", "expiration", "payments"]).await;
    assert_eq!(parked(&engines).await, 0, "no event was parked");
}

/// Orders `ticket` (retrying while orders has not learned of it); the id.
async fn place_order(buyer: &Api, orders: &[String], ticket: &str) -> String {
    buyer
        .until(
            "POST",
            orders,
            "/api/orders",
            Some(json!({"ticketId": ticket})),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create_ticket(seller: &Api, tickets: &[String], title: &str) -> String {
    seller
        .until(
            "POST",
            tickets,
            "/api/tickets",
            Some(json!({"title": title, "price": 20})),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_killed_mid_purchase_lose_nothing_and_apply_nothing_twice() {
    let Some(engines) = common::engines(&SERVICES).await else {
        return;
    };
    let mut c = engines.cluster(&[("ORDER_EXPIRATION_SECONDS", "15".into())]);
    let t = [
        engines.spawn(&mut c, "tickets-1", "tickets"),
        engines.spawn(&mut c, "tickets-2", "tickets"),
    ];
    let o = [
        engines.spawn(&mut c, "orders-1", "orders"),
        engines.spawn(&mut c, "orders-2", "orders"),
    ];
    let exp = engines.spawn(&mut c, "expiration", "expiration");
    let pay = engines.spawn(&mut c, "payments", "payments");
    c.all_ready(Duration::from_secs(60)).await.unwrap();
    let tickets_urls: Vec<String> = t.iter().map(|id| c.url(*id)).collect();
    let orders_urls: Vec<String> = o.iter().map(|id| c.url(*id)).collect();
    let payments_url = vec![c.url(pay)];
    let (seller, buyer) = (
        Api::new("seller@example.com"),
        Api::new("buyer@example.com"),
    );

    let n = 12;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(create_ticket(&seller, &tickets_urls, &format!("Show {i}")).await);
    }
    // Order every ticket and pay for the even ones; kill processes on the way.
    let mut orders = Vec::new();
    for (i, ticket) in ids.iter().enumerate() {
        if i == n / 3 {
            c.kill(o[1]);
            c.kill(t[0]);
        }
        if i == n / 2 {
            c.kill(exp);
            c.kill(pay);
            c.start(pay).unwrap();
        }
        let order = place_order(&buyer, &orders_urls, ticket).await;
        if i % 2 == 0 {
            pay_for(&buyer, &payments_url, &order).await;
        }
        orders.push(order);
    }
    for id in [o[1], t[0], exp] {
        c.start(id).unwrap();
    }
    c.all_ready(Duration::from_secs(60)).await.unwrap();

    // Every order terminal: the paid ones complete, the rest expired.
    let rows = until_rows(
        &engines,
        "orders",
        "SELECT id, status, version FROM orders",
        "every order reaches a terminal state",
        |r| r.len() == n && r.iter().all(|o| o[1] != "created"),
    )
    .await;
    let status: HashMap<&str, (&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), (r[1].as_str(), r[2].as_str())))
        .collect();
    for (i, order) in orders.iter().enumerate() {
        let want = if i % 2 == 0 { "complete" } else { "cancelled" };
        assert_eq!(status[order.as_str()], (want, "1"), "order {i}");
    }
    // Tickets: reserved once, then sold or released once — version 2.
    let rows = until_rows(
        &engines,
        "tickets",
        "SELECT id, status, version FROM tickets",
        "every ticket settles",
        |r| r.iter().all(|t| t[1] != "reserved"),
    )
    .await;
    let tickets: HashMap<&str, (&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), (r[1].as_str(), r[2].as_str())))
        .collect();
    for (i, ticket) in ids.iter().enumerate() {
        let want = if i % 2 == 0 { "sold" } else { "available" };
        assert_eq!(tickets[ticket.as_str()], (want, "2"), "ticket {i}");
    }
    // The replicas converge: orders' ticket copies, payments' order copies.
    until_rows(
        &engines,
        "orders",
        "SELECT version FROM tickets",
        "orders' copies of the tickets reach version 2",
        |r| r.len() == n && r.iter().all(|t| t[0] == "2"),
    )
    .await;
    until_rows(
        &engines,
        "payments",
        "SELECT status, version FROM orders",
        "payments' copies of the orders reach their final state",
        |r| {
            r.len() == n
                && r.iter().filter(|o| o[0] == "complete").count() == n / 2
                && r.iter().all(|o| o[1] == "1")
        },
    )
    .await;
    // One hold per paid order, each captured; nothing voided or refunded.
    let holds = until_rows(
        &engines,
        "payments",
        "SELECT status, COUNT(*), COUNT(refund_id) FROM payments WHERE status <> 'declined' GROUP BY status",
        "every hold is settled",
        |r| r.iter().all(|s| s[0] == "captured" || s[0] == "voided"),
    )
    .await;
    assert_eq!(
        holds,
        vec![vec!["captured".to_owned(), (n / 2).to_string(), "0".into()]],
        "one captured hold per paid order"
    );
    outboxes_drain(&engines, &["tickets", "orders", "expiration", "payments"]).await;
    assert_eq!(parked(&engines).await, 0, "no event was parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_nats_is_down_arrive_after_it_restarts() {
    let Some(mut engines) = common::engines(&["tickets", "orders"]).await else {
        return;
    };
    let mut c = engines.cluster(&[]);
    let t = engines.spawn(&mut c, "tickets", "tickets");
    let _orders = engines.spawn(&mut c, "orders", "orders");
    c.all_ready(Duration::from_secs(60)).await.unwrap();
    let tickets_url = vec![c.url(t)];
    let seller = Api::new("seller@example.com");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create_ticket(&seller, &tickets_url, &format!("Before {i}")).await);
    }
    until_rows(
        &engines,
        "orders",
        "SELECT COUNT(*) FROM tickets",
        "copies",
        |r| r[0][0] == "5",
    )
    .await;

    engines.nats.kill();
    let http = reqwest::Client::new();
    let not_ready = eventually(Duration::from_secs(20), || async {
        let r = http.get(format!("{}/readyz", c.url(t))).send().await.ok()?;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(
        not_ready.is_some(),
        "tickets reports not-ready without NATS"
    );
    // Writes keep working; their events wait in the outbox.
    for i in 0..5 {
        ids.push(create_ticket(&seller, &tickets_url, &format!("During {i}")).await);
    }
    for id in &ids[..5] {
        let (status, _) = seller
            .send(
                "PUT",
                &format!("{}/api/tickets/{id}", tickets_url[0]),
                Some(json!({"title": "Edited", "price": 25})),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let pending = engines
        .query("tickets", "SELECT COUNT(*) FROM outbox")
        .await;
    assert_eq!(pending[0][0], "10", "events kept in the outbox");

    engines.nats.restart().unwrap();
    c.all_ready(Duration::from_secs(60)).await.unwrap();
    until_rows(
        &engines,
        "orders",
        "SELECT version, price_cents FROM tickets ORDER BY version, price_cents",
        "orders catches up with every event written during the outage",
        |r| {
            r.len() == 10
                && r[..5].iter().all(|t| t == &["0", "2000"])
                && r[5..].iter().all(|t| t == &["1", "2500"])
        },
    )
    .await;
    outboxes_drain(&engines, &["tickets"]).await;
    assert_eq!(parked(&engines).await, 0);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_restarted_in_front_of_a_backlog_handle_each_event_once() {
    let Some(engines) = common::engines(&["tickets", "orders"]).await else {
        return;
    };
    let mut c = engines.cluster(&[]);
    let t = engines.spawn(&mut c, "tickets", "tickets");
    let o = [
        engines.spawn(&mut c, "orders-1", "orders"),
        engines.spawn(&mut c, "orders-2", "orders"),
    ];
    c.all_ready(Duration::from_secs(60)).await.unwrap();
    for id in o {
        c.kill(id);
    }
    // A backlog: 30 tickets, each edited twice, while no orders replica runs.
    let tickets_url = vec![c.url(t)];
    let seller = Api::new("seller@example.com");
    let n = 30;
    for i in 0..n {
        let id = create_ticket(&seller, &tickets_url, &format!("Backlog {i}")).await;
        for price in [21, 22] {
            let (status, _) = seller
                .send(
                    "PUT",
                    &format!("{}/api/tickets/{id}", tickets_url[0]),
                    Some(json!({"title": "Edited", "price": price})),
                )
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK);
        }
    }
    outboxes_drain(&engines, &["tickets"]).await;
    for id in o {
        c.start(id).unwrap();
    }
    c.all_ready(Duration::from_secs(60)).await.unwrap();
    until_rows(
        &engines,
        "orders",
        "SELECT version, price_cents FROM tickets",
        "both replicas together work off the backlog",
        |r| r.len() == n && r.iter().all(|t| t == &["2", "2200"]),
    )
    .await;
    // Counted since the restart: each event handled by exactly one replica.
    let http = reqwest::Client::new();
    let mut handled = HashMap::new();
    for id in o {
        let text = testkit::get_text(&http, c.metrics_url(id)).await;
        for subject in ["ticket.created", "ticket.updated"] {
            let key = format!("events_handled_total{{service=\"orders\",subject=\"{subject}\"}} ");
            let v: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            *handled.entry(subject).or_insert(0) += v;
        }
    }
    assert_eq!(handled["ticket.created"], n as u64);
    assert_eq!(handled["ticket.updated"], 2 * n as u64);
    assert_eq!(parked(&engines).await, 0);
}
