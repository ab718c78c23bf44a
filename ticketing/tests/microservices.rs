//! The microservices mode as processes: five services, each its own
//! `ticketing` process with its own PostgreSQL schema, on a nats-server of the
//! test's own, behind the stand-alone gateway. The same purchase flow as the
//! all-in-one test, through the gateway.

mod common;

use std::time::Duration;

use common::Shopper;
use reqwest::StatusCode;
use serde_json::json;
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purchase_flow_works_with_one_process_per_service_on_nats_and_postgres() {
    let names = ["auth", "tickets", "orders", "expiration", "payments"];
    let Some(engines) = common::engines(&names).await else {
        return;
    };
    // Five services, one process each, the web client, then the gateway;
    // all export their spans to one collector.
    let collector = common::otlp::Collector::start().await;
    let mut env = collector.env();
    env.push(("ORDER_EXPIRATION_SECONDS", "3".into()));
    let common::WebStack {
        cluster,
        services: ids,
        gateway: gw,
    } = engines.web_stack(&env).await;

    // The flow, through the gateway.
    let seller = Shopper::sign_up(&gw, "seller@example.com").await;
    let buyer = Shopper::sign_up(&gw, "buyer@example.com").await;

    let ticket = seller.sell("Festival", 30.0).await;
    let order = buyer.buy(&ticket).await;
    buyer
        .until(
            &format!("/api/tickets/{ticket}"),
            "status",
            json!("reserved"),
        )
        .await;
    // Accepted once payments knows the order.
    buyer
        .until_created(
            "/api/payments",
            json!({"orderId": order, "token": "tok_visa"}),
        )
        .await;
    buyer.until_complete_and_sold(&order, &ticket).await;

    let other = seller.sell("Matinee", 30.0).await;
    let unpaid = buyer.buy(&other).await;
    buyer
        .until(
            &format!("/api/orders/{unpaid}"),
            "status",
            json!("cancelled"),
        )
        .await;
    buyer
        .until(
            &format!("/api/tickets/{other}"),
            "status",
            json!("available"),
        )
        .await;

    // The same state through the web client's pages, via the gateway: the
    // landing page lists what is for sale; the buyer's session (the cookie
    // the API set) is forwarded, so "My orders" shows their orders.
    let landing = buyer.client.get(format!("{gw}/")).send().await.unwrap();
    assert_eq!(landing.status(), StatusCode::OK);
    let html = landing.text().await.unwrap();
    assert!(
        html.contains("Matinee") && !html.contains("Festival"),
        "{html}"
    );
    assert!(
        html.contains("Sign out"),
        "signed in through the forwarded session"
    );
    let orders = buyer.page("/orders").await;
    assert!(
        orders.contains("Festival") && orders.contains("Paid"),
        "{orders}"
    );
    assert!(
        orders.contains("Matinee") && orders.contains("Cancelled"),
        "{orders}"
    );

    // One trace per user action across the processes: the payment from the
    // gateway through payments, its event, to the orders consumer; the
    // landing page from the gateway through the web client to tickets.
    let expected_payment = [
        "gateway POST",
        "payments POST /api/payments",
        "payments create payment.authorized",
        "orders process payment.authorized",
    ];
    let expected_page = ["gateway GET", "web GET /", "tickets GET /api/tickets"];
    let traced = eventually(Duration::from_secs(10), || async {
        let spans = collector.spans();
        let chains = |service: &str, name: &str| -> Vec<Vec<String>> {
            spans
                .iter()
                .filter(|s| s.service == service && s.name == name)
                .map(|s| common::otlp::chain(&spans, s))
                .collect()
        };
        let payment = chains("orders", "process payment.authorized");
        let page = chains("tickets", "GET /api/tickets");
        (payment.iter().any(|c| c == &expected_payment) && page.iter().any(|c| c == &expected_page))
            .then_some(())
    })
    .await;
    if traced.is_none() {
        let spans = collector.spans();
        let all: Vec<Vec<String>> = spans
            .iter()
            .map(|s| common::otlp::chain(&spans, s))
            .collect();
        panic!("the payment and the page were not each one trace across processes: {all:#?}");
    }

    // On JetStream the bus can tell each consumer's lag: nothing is left.
    let lag = eventually(Duration::from_secs(15), || async {
        let text = reqwest::get(cluster.metrics_url(ids[2]))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("consumer_pending{durable=\"orders-ticket-created\"} 0")
            .then_some(text)
    })
    .await;
    let text = lag.expect("orders reports its consumers' lag");
    assert!(
        text.contains("consumer_ack_pending{durable=\"orders-payment-authorized\"} 0"),
        "{text}"
    );
    drop(cluster);
}

/// A service never creates streams and never waits for them: without its
/// streams every service still starts and serves what it can, says on
/// `/readyz` what is missing, keeps its events in its outbox, and becomes
/// ready once `ticketing streams apply` has run, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_their_streams_serve_report_why_and_recover_once_provisioned() {
    let names = ["auth", "tickets", "orders", "expiration", "payments"];
    let Some(engines) = common::engines_without_streams(&names).await else {
        return;
    };
    let mut cluster = engines.cluster(&[]);
    let ids: Vec<usize> = names
        .iter()
        .map(|name| engines.spawn(&mut cluster, name, name))
        .collect();
    let http = reqwest::Client::new();
    for (name, id) in names.iter().zip(&ids) {
        let url = cluster.url(*id);
        // What each says is missing: the streams it publishes to, and the
        // streams its listeners consume.
        let expected: &[&str] = match *name {
            "auth" => &["no stream holds user.created"],
            "tickets" => &[
                "no stream holds ticket.created, ticket.updated",
                "listener tickets-order-created cannot join its consumer",
                "no stream holds order.created",
            ],
            "orders" => &["listener orders-ticket-created cannot join its consumer"],
            "expiration" => &["listener expiration-order-created cannot join its consumer"],
            _ => &["no stream holds payment.authorized"],
        };
        let reasons = eventually(Duration::from_secs(30), || async {
            let res = http.get(format!("{url}/readyz")).send().await.ok()?;
            if res.status() != StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            let text = res.text().await.ok()?;
            expected.iter().all(|e| text.contains(e)).then_some(text)
        })
        .await;
        let last = testkit::get_text(&http, format!("{url}/readyz")).await;
        assert!(
            reasons.is_some_and(|r| r.contains("run `streams apply`")),
            "{name}: /readyz never said {expected:?}; it says {last}"
        );
    }

    // Tickets still takes writes; the event waits in the outbox.
    let tickets = cluster.url(ids[1]);
    let seller = common::Api::new("seller@example.com");
    let (status, ticket) = seller
        .send(
            "POST",
            &format!("{tickets}/api/tickets"),
            Some(json!({"title": "Early", "price": 12})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let pending = engines
        .query("tickets", "SELECT COUNT(*) FROM outbox")
        .await;
    assert_eq!(pending[0][0], "1");

    engines.provision_streams().await;
    cluster
        .all_ready(Duration::from_secs(30))
        .await
        .expect("every service is ready once the streams exist, without a restart");
    let arrived = eventually(Duration::from_secs(15), || async {
        let rows = engines
            .query("orders", "SELECT COUNT(*) FROM tickets")
            .await;
        (rows[0][0] == "1").then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "the event kept in the outbox reaches orders"
    );
}

/// With the streams provisioned, a service never waits for another: orders
/// starts and is ready while tickets is down, hears what tickets publishes
/// once it runs, and keeps serving when tickets goes away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_starts_and_serves_while_tickets_is_down() {
    let Some(engines) = common::engines(&["tickets", "orders"]).await else {
        return;
    };
    let mut cluster = engines.cluster(&[]);
    let orders = engines.spawn(&mut cluster, "orders", "orders");
    assert!(
        cluster.ready(orders, Duration::from_secs(30)).await,
        "orders is ready without tickets"
    );
    let orders_url = cluster.url(orders);
    let buyer = common::Api::new("buyer@example.com");
    let (status, list) = buyer
        .send("GET", &format!("{orders_url}/api/orders"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{list}");

    let tickets = engines.spawn(&mut cluster, "tickets", "tickets");
    assert!(cluster.ready(tickets, Duration::from_secs(30)).await);
    let seller = common::Api::new("seller@example.com");
    let (status, ticket) = seller
        .send(
            "POST",
            &format!("{}/api/tickets", cluster.url(tickets)),
            Some(json!({"title": "Concert", "price": 20})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    // Orders learns of the ticket from the event: the buyer can order it.
    let order = buyer
        .until(
            "POST",
            std::slice::from_ref(&orders_url),
            "/api/orders",
            Some(json!({"ticketId": ticket["id"]})),
            StatusCode::CREATED,
        )
        .await;

    cluster.kill(tickets);
    let (status, body) = buyer
        .send(
            "GET",
            &format!("{orders_url}/api/orders/{}", order["id"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let ready = http_status(&format!("{orders_url}/readyz")).await;
    assert_eq!(ready, StatusCode::OK, "orders stays ready without tickets");
}

async fn http_status(url: &str) -> StatusCode {
    reqwest::get(url).await.unwrap().status()
}
