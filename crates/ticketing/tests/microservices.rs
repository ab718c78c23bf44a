//! The microservices mode as processes: five services, each its own
//! `ticketing` process with its own PostgreSQL schema, on a nats-server of the
//! test's own, behind the stand-alone gateway. The same purchase flow as the
//! all-in-one test, through the gateway.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purchase_flow_works_with_one_process_per_service_on_nats_and_postgres() {
    let names = ["auth", "tickets", "orders", "expiration", "payments"];
    let Some(engines) = common::engines(&names).await else {
        return;
    };
    // Five services, one process each, then the gateway.
    let mut cluster = engines.cluster(&[("ORDER_EXPIRATION_SECONDS", "3".into())]);
    let urls: Vec<String> = names
        .iter()
        .map(|name| {
            let id = engines.spawn(&mut cluster, name, name);
            cluster.url(id)
        })
        .collect();
    cluster.all_ready(Duration::from_secs(30)).await.unwrap();
    let gateway = cluster
        .spawn(
            "gateway",
            "gateway",
            &[
                ("AUTH_URL", urls[0].clone()),
                ("TICKETS_URL", urls[1].clone()),
                ("ORDERS_URL", urls[2].clone()),
                ("PAYMENTS_URL", urls[4].clone()),
            ],
        )
        .unwrap();
    assert!(
        cluster.ready(gateway, Duration::from_secs(30)).await,
        "gateway never became ready"
    );
    let gw = cluster.url(gateway);

    // The flow, through the gateway.
    let user = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap()
    };
    let (seller, buyer) = (user(), user());
    for (c, email) in [
        (&seller, "seller@example.com"),
        (&buyer, "buyer@example.com"),
    ] {
        let res = c
            .post(format!("{gw}/api/users/signup"))
            .json(&json!({"email": email, "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let sell = |title: &'static str| {
        let (seller, gw) = (seller.clone(), gw.clone());
        async move {
            let res = seller
                .post(format!("{gw}/api/tickets"))
                .json(&json!({"title": title, "price": 30}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let buy = |ticket: String| {
        let (buyer, gw) = (buyer.clone(), gw.clone());
        async move {
            eventually(Duration::from_secs(15), || async {
                let res = buyer
                    .post(format!("{gw}/api/orders"))
                    .json(&json!({"ticketId": ticket}))
                    .send()
                    .await
                    .unwrap();
                if res.status() == StatusCode::CREATED {
                    Some(
                        res.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    )
                } else {
                    None
                }
            })
            .await
            .expect("order placed")
        }
    };
    let until = |path: String, field: &'static str, value: Value| {
        let (buyer, gw) = (buyer.clone(), gw.clone());
        async move {
            eventually(Duration::from_secs(15), || async {
                let v: Value = buyer
                    .get(format!("{gw}{path}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (v[field] == value).then_some(v)
            })
            .await
            .unwrap_or_else(|| panic!("{path} never had {field} = {value}"))
        }
    };

    let ticket = sell("Festival").await;
    let order = buy(ticket.clone()).await;
    until(
        format!("/api/tickets/{ticket}"),
        "status",
        json!("reserved"),
    )
    .await;
    let paid = eventually(Duration::from_secs(15), || async {
        let res = buyer
            .post(format!("{gw}/api/payments"))
            .json(&json!({"orderId": order, "token": "tok_visa"}))
            .send()
            .await
            .unwrap();
        (res.status() == StatusCode::CREATED).then_some(())
    })
    .await;
    assert!(
        paid.is_some(),
        "payment accepted once payments knew the order"
    );
    until(format!("/api/orders/{order}"), "status", json!("complete")).await;
    until(format!("/api/tickets/{ticket}"), "status", json!("sold")).await;

    let other = sell("Matinee").await;
    let unpaid = buy(other.clone()).await;
    until(
        format!("/api/orders/{unpaid}"),
        "status",
        json!("cancelled"),
    )
    .await;
    until(
        format!("/api/tickets/{other}"),
        "status",
        json!("available"),
    )
    .await;
    drop(cluster);
}

/// A service never creates streams and never waits for them: without its
/// streams it still serves what it can, says on `/readyz` which listeners
/// cannot join and why, keeps its events in its outbox, and recovers once the
/// streams are provisioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_its_streams_serves_reports_why_and_recovers_once_provisioned() {
    let Some(engines) = common::engines_without_streams(&["tickets"]).await else {
        return;
    };
    let mut cluster = engines.cluster(&[]);
    let tickets = engines.spawn(&mut cluster, "tickets", "tickets");
    let url = cluster.url(tickets);
    let http = reqwest::Client::new();
    let reasons = eventually(Duration::from_secs(30), || async {
        let res = http.get(format!("{url}/readyz")).send().await.ok()?;
        if res.status() != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let body: Value = res.json().await.ok()?;
        let text = body.to_string();
        text.contains("listener tickets-order-created cannot join its consumer")
            .then_some(text)
    })
    .await
    .expect("/readyz names the listener that cannot join");
    assert!(reasons.contains("order.created"), "{reasons}");

    // It still takes writes; the event waits in the outbox.
    let seller = common::Api::new("seller@example.com");
    let (status, ticket) = seller
        .send(
            "POST",
            &format!("{url}/api/tickets"),
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
    assert!(
        cluster.ready(tickets, Duration::from_secs(30)).await,
        "ready once the streams exist"
    );
    let drained = eventually(Duration::from_secs(15), || async {
        let n = engines
            .query("tickets", "SELECT COUNT(*) FROM outbox")
            .await;
        (n[0][0] == "0").then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "the outbox drains once the stream exists"
    );
}
