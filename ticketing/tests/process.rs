//! The whole marketplace as a user runs it: the real `ticketing` binary in its
//! own process, driven over HTTP. Covers the purchase flow end to end, a
//! graceful restart, and a crash (SIGKILL) right after a write.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::eventually;

mod common;

use common::{Proc, Shopper as User, free_port, otlp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_purchase_flow_and_an_expiring_order_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 2).await;
    let seller = User::sign_up(&p.base, "seller@example.com").await;
    let buyer = User::sign_up(&p.base, "buyer@example.com").await;
    let rival = User::sign_up(&p.base, "rival@example.com").await;

    let ticket = seller.sell("Concert", 25.5).await;
    let listed: Vec<Value> = serde_json::from_value(seller.get("/api/tickets").await).unwrap();
    assert!(listed.iter().any(|t| t["id"] == ticket.as_str()));

    let order = buyer.buy(&ticket).await;
    let t = buyer
        .until(
            &format!("/api/tickets/{ticket}"),
            "status",
            json!("reserved"),
        )
        .await;
    assert_eq!(t["orderId"], order.as_str());
    let edit = seller
        .put(
            &format!("/api/tickets/{ticket}"),
            json!({"title": "x", "price": 1}),
        )
        .await;
    assert_eq!(edit.status(), StatusCode::CONFLICT);
    let second = rival.post("/api/orders", json!({"ticketId": ticket})).await;
    assert_eq!(second.status(), StatusCode::CONFLICT);

    let paid = buyer
        .post(
            "/api/payments",
            json!({"orderId": order, "token": "tok_visa"}),
        )
        .await;
    assert_eq!(paid.status(), StatusCode::CREATED);
    assert_eq!(paid.json::<Value>().await.unwrap()["amount"], json!(25.5));
    buyer.until_complete_and_sold(&order, &ticket).await;
    let listed: Vec<Value> = serde_json::from_value(seller.get("/api/tickets").await).unwrap();
    assert!(
        !listed.iter().any(|t| t["id"] == ticket.as_str()),
        "a sold ticket is still listed"
    );

    // A second order left unpaid expires and frees its ticket.
    let other = seller.sell("Play", 10.0).await;
    let unpaid = buyer.buy(&other).await;
    buyer
        .until(
            &format!("/api/tickets/{other}"),
            "status",
            json!("reserved"),
        )
        .await;
    buyer
        .until(
            &format!("/api/orders/{unpaid}"),
            "status",
            json!("cancelled"),
        )
        .await;
    let freed = buyer
        .until(
            &format!("/api/tickets/{other}"),
            "status",
            json!("available"),
        )
        .await;
    assert_eq!(freed["orderId"], json!(null));
    let late = buyer
        .post(
            "/api/payments",
            json!({"orderId": unpaid, "token": "tok_visa"}),
        )
        .await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    // And someone else can buy it now.
    rival.buy(&other).await;
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_accounts_sessions_data_and_pending_timers() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 3).await;
    let seller = User::sign_up(&p.base, "seller@example.com").await;
    let buyer = User::sign_up(&p.base, "buyer@example.com").await;
    let ticket = seller.sell("Opera", 42.0).await;
    let order = buyer.buy(&ticket).await;
    buyer
        .until(
            &format!("/api/tickets/{ticket}"),
            "status",
            json!("reserved"),
        )
        .await;
    let port = p.port;
    p.stop();

    // Down for longer than the hold: the timer must fire after the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = Proc::start_on(port, dir.path(), 3).await;
    let again = User::new(&p.base);
    // The same session cookie still works (the generated JWT key was kept)...
    let same_session = buyer.get("/api/users/currentuser").await;
    assert_eq!(same_session["currentUser"]["email"], "buyer@example.com");
    // ...and the account is there to sign in to.
    let res = again
        .post(
            "/api/users/signin",
            json!({"email": "buyer@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        again.get(&format!("/api/tickets/{ticket}")).await["title"],
        "Opera"
    );
    buyer
        .until(
            &format!("/api/orders/{order}"),
            "status",
            json!("cancelled"),
        )
        .await;
    buyer
        .until(
            &format!("/api/tickets/{ticket}"),
            "status",
            json!("available"),
        )
        .await;
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_written_just_before_a_crash_still_reaches_its_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let seller = User::sign_up(&p.base, "seller@example.com").await;
    let buyer = User::sign_up(&p.base, "buyer@example.com").await;
    let ticket = seller.sell("Ballet", 12.0).await;
    // Killed right after the 201: the ticket.created event may still be
    // only in the outbox.
    let port = p.port;
    p.crash();
    let p = Proc::start_on(port, dir.path(), 900).await;
    let order = buyer.buy(&ticket).await; // succeeds only once orders got ticket.created
    buyer
        .until(
            &format!("/api/tickets/{ticket}"),
            "status",
            json!("reserved"),
        )
        .await;
    let o = buyer.get(&format!("/api/orders/{order}")).await;
    assert_eq!(o["ticket"]["price"], json!(12));
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_can_run_alone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args([
            "run",
            "--services",
            "auth",
            "--port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(20), || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(ready.is_some(), "auth alone becomes ready");
    let me = client
        .get(format!("{base}/api/users/currentuser"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let tickets = client
        .get(format!("{base}/api/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tickets.status(),
        StatusCode::NOT_FOUND,
        "tickets is not running here"
    );
    assert!(!dir.path().join("tickets.db").exists());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_malformed_setting_stops_start_up_with_an_error_naming_it() {
    for (name, value) in [
        ("ORDER_EXPIRATION_SECONDS", "soon"),
        ("LISTENER_BATCH", "0"),
        ("LISTENER_BATCH", "many"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(["run", "--port", "0", "--data-dir"])
            .arg(dir.path())
            .env(name, value)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_is_one_exported_trace_from_the_request_through_the_timer() {
    let collector = otlp::Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start_with(free_port(), dir.path(), 1, &collector.env()).await;
    let seller = User::sign_up(&p.base, "seller@example.com").await;
    let buyer = User::sign_up(&p.base, "buyer@example.com").await;
    let ticket = seller.sell("Concert", 10.0).await;
    // Wait until orders knows the ticket, then order it as part of a trace
    // the caller started.
    buyer.buy(&seller.sell("Warm-up", 1.0).await).await;
    let (trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let order: Value = eventually(Duration::from_secs(10), || async {
        let res = buyer
            .client
            .post(format!("{}/api/orders", p.base))
            .header("traceparent", format!("00-{trace}-{caller_span}-01"))
            .json(&json!({"ticketId": ticket}))
            .send()
            .await
            .unwrap();
        (res.status() == StatusCode::CREATED).then_some(res.json::<Value>().await.unwrap())
    })
    .await
    .expect("order placed");
    let order = order["id"].as_str().unwrap().to_owned();
    buyer
        .until(
            &format!("/api/orders/{order}"),
            "status",
            json!("cancelled"),
        )
        .await;

    // Every hop, exported: the request, its event's three consumers, the
    // ticket's reservation and release, the timer's event and the
    // cancellation's consumers.
    let named = |spans: &[otlp::Span], name: &str| -> Vec<otlp::Span> {
        spans.iter().filter(|s| s.name == name).cloned().collect()
    };
    let spans = eventually(Duration::from_secs(10), || async {
        let spans: Vec<otlp::Span> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        let complete = named(&spans, "POST /api/orders").len() == 1
            && named(&spans, "process order.created").len() == 3
            && named(&spans, "process ticket.updated").len() == 2
            && named(&spans, "process expiration.complete").len() == 1
            && named(&spans, "process order.cancelled").len() == 2;
        complete.then_some(spans)
    })
    .await
    .unwrap_or_else(|| {
        let seen: Vec<String> = collector
            .spans()
            .iter()
            .map(|s| format!("{} {} parent {}", s.name, s.trace_id, s.parent_span_id))
            .collect();
        panic!("the trace never had every hop; spans exported: {seen:#?}")
    });

    let server = &named(&spans, "POST /api/orders")[0];
    assert_eq!(server.kind, otlp::SERVER);
    assert_eq!(
        server.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(server.service, "ticketing");
    assert_eq!(server.attributes["http.route"], "/api/orders");
    assert_eq!(server.attributes["http.response.status_code"], "201");
    let created = named(&spans, "process order.created");
    let mut groups: Vec<&str> = created
        .iter()
        .map(|s| s.attributes["messaging.consumer.group.name"].as_str())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            "expiration-order-created",
            "payments-order-created",
            "tickets-order-created"
        ]
    );
    // The event's creation is a producer span of the request; each consumer
    // is its child.
    let create = named(&spans, "create order.created");
    assert_eq!(create.len(), 1);
    assert_eq!(create[0].kind, otlp::PRODUCER);
    assert_eq!(create[0].parent_span_id, server.span_id);
    for span in &created {
        assert_eq!(span.kind, otlp::CONSUMER);
        assert_eq!(
            span.parent_span_id, create[0].span_id,
            "{} follows the event",
            span.name
        );
        assert_eq!(
            span.attributes["messaging.destination.name"],
            "order.created"
        );
    }
    let by_group = |group: &str| {
        spans
            .iter()
            .find(|s| {
                s.attributes
                    .get("messaging.consumer.group.name")
                    .map(String::as_str)
                    == Some(group)
            })
            .unwrap()
            .clone()
    };
    // The timer's event continues the trace of the consumer that set it;
    // the reservation's ticket.updated follows the tickets consumer's span.
    assert_eq!(
        otlp::chain(&spans, &by_group("orders-expiration-complete")),
        [
            "ticketing POST /api/orders",
            "ticketing create order.created",
            "ticketing process order.created",
            "ticketing create expiration.complete",
            "ticketing process expiration.complete",
        ]
    );
    let reserved_by = by_group("tickets-order-created").span_id;
    assert!(
        named(&spans, "create ticket.updated")
            .iter()
            .any(|s| s.parent_span_id == reserved_by)
    );
    // One tree: every span's parent is in the trace, except the request's.
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for span in &spans {
        if span.span_id != server.span_id {
            assert!(
                ids.contains(span.parent_span_id.as_str()),
                "{} ({}) has a parent outside the trace",
                span.name,
                span.service
            );
        }
    }
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_collector_that_is_down_costs_no_request_and_the_process_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: every export fails.
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:9".to_owned(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    let p = Proc::start_with(free_port(), dir.path(), 60, &env).await;
    let seller = User::sign_up(&p.base, "seller@example.com").await;
    for i in 0..5 {
        seller.sell(&format!("Show {i}"), 10.0).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let listed: Vec<Value> = serde_json::from_value(seller.get("/api/tickets").await).unwrap();
    assert_eq!(listed.len(), 5);
    p.stop();
}

#[test]
fn a_gateway_given_an_https_upstream_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(["run", "--services", "gateway", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("AUTH_URL", "https://auth.example:443")
        .env("TICKETS_URL", "http://127.0.0.1:9")
        .env("ORDERS_URL", "http://127.0.0.1:9")
        .env("PAYMENTS_URL", "http://127.0.0.1:9")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AUTH_URL must be http:// URLs"), "{stderr}");
}
