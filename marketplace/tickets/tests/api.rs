//! Black-box tests of the tickets service: its HTTP contract and how it
//! reacts to order events.

use std::time::Duration;

use bus::listener::{ListenerOptions, durable_name};
use marketplace_events::{
    Event, OrderCancelled, OrderCompleted, OrderCreated, OrderStatus, OrderTicket, TicketCreated,
    TicketRef, TicketUpdated,
};
use marketplace_events::{OrderId, TicketId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::ids::UserId;
use shared::money::Money;
use shared::time::Timestamp;
use testkit::{TestApp, eventually};

async fn app() -> TestApp {
    TestApp::spawn_for(marketplace_events::PRODUCT, |deps| async move {
        tickets::start(&deps, ListenerOptions::default())
            .await
            .map(|r| vec![r])
    })
    .await
}

async fn create(app: &TestApp, token: &str, title: &str, price: Value) -> reqwest::Response {
    app.send(
        Method::POST,
        "/api/tickets",
        Some(token),
        Some(json!({"title": title, "price": price})),
    )
    .await
}

async fn created(app: &TestApp, token: &str, title: &str, price: f64) -> Value {
    let res = create(app, token, title, json!(price)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn get_ticket(app: &TestApp, id: &str) -> Value {
    app.send(Method::GET, &format!("/api/tickets/{id}"), None, None)
        .await
        .json()
        .await
        .unwrap()
}

async fn fields(res: reqwest::Response) -> Vec<String> {
    let body: Value = res.json().await.unwrap();
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn order_created(order: OrderId, ticket: &Value) -> OrderCreated {
    OrderCreated {
        id: order,
        version: 0,
        status: OrderStatus::Created,
        user_id: UserId::new(),
        expires_at: Timestamp::from_millis(0),
        ticket: OrderTicket {
            id: TicketId::parse(ticket["id"].as_str().unwrap()).unwrap(),
            price_cents: Money::from_cents(1),
        },
    }
}

fn ticket_ref(ticket: &Value) -> TicketRef {
    TicketRef {
        id: TicketId::parse(ticket["id"].as_str().unwrap()).unwrap(),
    }
}

/// Waits until the ticket reaches `version`, then returns it.
async fn at_version(app: &TestApp, id: &str, version: i64) -> Value {
    eventually(Duration::from_secs(5), || async {
        let t = get_ticket(app, id).await;
        (t["version"] == version).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("ticket {id} never reached version {version}"))
}

#[tokio::test]
async fn creating_a_ticket_stores_cents_returns_version_0_and_publishes_ticket_created() {
    let app = app().await;
    let mut events = app.watch::<TicketCreated>().await;
    let (seller, token) = app.user();
    let t = created(&app, &token, "  Concert  ", 19.99).await;
    assert_eq!(t["title"], "Concert");
    assert_eq!(t["price"], json!(19.99));
    assert_eq!(
        (
            t["version"].clone(),
            t["status"].clone(),
            t["orderId"].clone()
        ),
        (json!(0), json!("available"), json!(null))
    );
    assert_eq!(t["userId"], seller.to_string());
    let e = events.next().await;
    assert_eq!(
        (e.price_cents, e.version, e.title.as_str()),
        (Money::from_cents(1999), 0, "Concert")
    );
    assert_eq!(get_ticket(&app, t["id"].as_str().unwrap()).await, t);
}

/// One trace from the HTTP request to the event: the event's `traceparent`
/// is in the caller's trace, and the response carries the request id.
#[tokio::test]
async fn a_request_s_trace_continues_in_the_event_it_publishes() {
    let app = app().await;
    let mut sub = app
        .bus
        .subscribe(bus::ConsumerConfig::new(
            "trace-test",
            TicketCreated::SUBJECT,
        ))
        .await
        .unwrap();
    let (_, token) = app.user();
    let caller = shared::trace::TraceContext::new_root();
    let res = app
        .client
        .post(app.url("/api/tickets"))
        .bearer_auth(&token)
        .header("traceparent", caller.to_string())
        .header("x-request-id", "req-42")
        .json(&json!({"title": "Traced", "price": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-request-id"], "req-42");
    let delivery = bus::contract::next_within(&mut sub, Duration::from_secs(5))
        .await
        .expect("ticket.created published");
    let header = delivery.message.header("traceparent").expect("traceparent");
    let event_trace = shared::trace::TraceContext::parse(header).unwrap();
    assert_eq!(event_trace.trace_id, caller.trace_id, "same trace");
    assert_ne!(event_trace.span_id, caller.span_id, "a span of its own");
    // Without a request id, one is made up and returned.
    let res = app.send(Method::GET, "/api/tickets", None, None).await;
    assert_eq!(res.headers()["x-request-id"].len(), 32);
}

#[tokio::test]
async fn creating_needs_a_session_and_valid_fields() {
    let app = app().await;
    let res = app
        .send(
            Method::POST,
            "/api/tickets",
            None,
            Some(json!({"title": "x", "price": 1})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Authentication is checked before the body.
    let res = app
        .send(Method::POST, "/api/tickets", None, Some(json!({})))
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (_, token) = app.user();
    for (body, expected) in [
        (json!({}), vec!["title", "price"]),
        (json!({"title": "   ", "price": 10}), vec!["title"]),
        (
            json!({"title": "x".repeat(121), "price": 10}),
            vec!["title"],
        ),
        (json!({"title": "ok", "price": 0}), vec!["price"]),
        (json!({"title": "ok", "price": -3}), vec!["price"]),
        (json!({"title": "ok", "price": 19.999}), vec!["price"]),
        (json!({"title": "ok", "price": "20"}), vec!["price"]),
        (json!({"title": "ok", "price": 1000000.5}), vec!["price"]),
        (json!({"title": 7, "price": 10}), vec!["title"]),
        // Hidden characters, and nothing visible.
        (
            json!({"title": "evil\u{202E}gnp.exe", "price": 10}),
            vec!["title"],
        ),
        (json!({"title": "bell\u{7}", "price": 10}), vec!["title"]),
        (json!({"title": "two\nlines", "price": 10}), vec!["title"]),
        (
            json!({"title": "\u{200B}\u{2060}", "price": 10}),
            vec!["title"],
        ),
        (json!({"title": "\u{3164}", "price": 10}), vec!["title"]),
        // Invisible: a braille blank alone, and format characters or
        // separators inside a title.
        (json!({"title": "\u{2800}", "price": 10}), vec!["title"]),
        (
            json!({"title": "Con\u{200B}cert", "price": 10}),
            vec!["title"],
        ),
        (
            json!({"title": "Con\u{2060}cert", "price": 10}),
            vec!["title"],
        ),
        (
            json!({"title": "\u{FEFF}Concert", "price": 10}),
            vec!["title"],
        ),
        (
            json!({"title": "Concert\u{FFF9}", "price": 10}),
            vec!["title"],
        ),
        (
            json!({"title": "Concert\u{E0041}", "price": 10}),
            vec!["title"],
        ),
        (
            json!({"title": "Con\u{2028}cert", "price": 10}),
            vec!["title"],
        ),
    ] {
        let res = app
            .send(
                Method::POST,
                "/api/tickets",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(fields(res).await, expected, "{body}");
    }
}

#[tokio::test]
async fn listing_shows_available_tickets_oldest_first_in_pages() {
    let app = app().await;
    let (_, token) = app.user();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            created(&app, &token, &format!("t{i}"), 10.0).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page: Vec<Value> = app
        .send(Method::GET, "/api/tickets?limit=2", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page.iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        &ids[0..2]
    );
    let next: Vec<Value> = app
        .send(
            Method::GET,
            &format!("/api/tickets?limit=2&after={}", ids[1]),
            None,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        &ids[2..4]
    );
    let all: Vec<Value> = app
        .send(Method::GET, "/api/tickets", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    for bad in [
        "/api/tickets?limit=0",
        "/api/tickets?limit=201",
        "/api/tickets?limit=x",
        "/api/tickets?after=nope",
    ] {
        assert_eq!(
            app.send(Method::GET, bad, None, None).await.status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_seller_sees_their_own_tickets_in_any_status() {
    let app = app().await;
    let (_, seller) = app.user();
    let (_, other) = app.user();
    let first = created(&app, &seller, "first", 10.0).await;
    let second = created(&app, &seller, "second", 20.0).await;
    created(&app, &other, "someone else's", 30.0).await;
    // The first is reserved: gone from the public list, still the seller's.
    let order = OrderId::new();
    app.publish(&order_created(order, &first)).await;
    at_version(&app, first["id"].as_str().unwrap(), 1).await;

    let mine: Vec<Value> = app
        .send(Method::GET, "/api/tickets/mine", Some(&seller), None)
        .await
        .json()
        .await
        .unwrap();
    let titles: Vec<&str> = mine.iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["first", "second"]);
    assert_eq!(mine[0]["status"], "reserved");
    let page: Vec<Value> = app
        .send(
            Method::GET,
            &format!(
                "/api/tickets/mine?limit=1&after={}",
                first["id"].as_str().unwrap()
            ),
            Some(&seller),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["id"], second["id"]);
    let public: Vec<Value> = app
        .send(Method::GET, "/api/tickets", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(public.iter().all(|t| t["title"] != "first"));

    let anonymous = app.send(Method::GET, "/api/tickets/mine", None, None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let bad = app
        .send(
            Method::GET,
            "/api/tickets/mine?limit=0",
            Some(&seller),
            None,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let app = app().await;
    let (_, token) = app.user();
    for path in [
        format!("/api/tickets/{}", TicketId::new()),
        "/api/tickets/not-an-id".to_owned(),
    ] {
        assert_eq!(
            app.send(Method::GET, &path, None, None).await.status(),
            StatusCode::NOT_FOUND
        );
        let res = app
            .send(
                Method::PUT,
                &path,
                Some(&token),
                Some(json!({"title": "a", "price": 1})),
            )
            .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn the_seller_edits_bumping_the_version_and_others_get_403() {
    let app = app().await;
    let mut updates = app.watch::<TicketUpdated>().await;
    let (_, seller) = app.user();
    let (_, stranger) = app.user();
    let t = created(&app, &seller, "Show", 5.0).await;
    let path = format!("/api/tickets/{}", t["id"].as_str().unwrap());
    let res = app
        .send(
            Method::PUT,
            &path,
            Some(&stranger),
            Some(json!({"title": "Mine", "price": 1})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = app
        .send(
            Method::PUT,
            &path,
            Some(&seller),
            Some(json!({"title": "Show"})),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "both fields required"
    );
    let res = app
        .send(
            Method::PUT,
            &path,
            None,
            Some(json!({"title": "x", "price": 1})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .send(
            Method::PUT,
            &path,
            Some(&seller),
            Some(json!({"title": "Better show", "price": 10})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["version"].clone(), body["price"].clone()),
        (json!(1), json!(10))
    );
    let e = updates.next().await;
    assert_eq!(
        (e.version, e.title.as_str(), e.price_cents),
        (1, "Better show", Money::from_cents(1000))
    );
}

#[tokio::test]
async fn an_order_reserves_the_ticket_which_then_cannot_be_edited() {
    let app = app().await;
    let (_, seller) = app.user();
    let t = created(&app, &seller, "Gig", 20.0).await;
    let id = t["id"].as_str().unwrap();
    let order = OrderId::new();
    app.publish(&order_created(order, &t)).await;
    let reserved = at_version(&app, id, 1).await;
    assert_eq!(
        (reserved["status"].clone(), reserved["orderId"].clone()),
        (json!("reserved"), json!(order.to_string()))
    );
    let res = app
        .send(
            Method::PUT,
            &format!("/api/tickets/{id}"),
            Some(&seller),
            Some(json!({"title": "x", "price": 1})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["message"],
        "Cannot edit a reserved ticket"
    );
    // Reserved tickets leave the public list.
    let list: Vec<Value> = app
        .send(Method::GET, "/api/tickets", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
    // A duplicate delivery changes nothing.
    app.publish(&order_created(order, &t)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_ticket(&app, id).await["version"], 1);
}

#[tokio::test]
async fn only_the_holding_order_releases_the_ticket() {
    let app = app().await;
    let (_, seller) = app.user();
    let t = created(&app, &seller, "Gig", 20.0).await;
    let id = t["id"].as_str().unwrap();
    let holder = OrderId::new();
    app.publish(&order_created(holder, &t)).await;
    at_version(&app, id, 1).await;
    // A cancellation of some other order does not free this ticket.
    let stranger = OrderId::new();
    app.publish(&OrderCancelled {
        id: stranger,
        version: 1,
        ticket: ticket_ref(&t),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_ticket(&app, id).await["status"], "reserved");
    app.publish(&OrderCancelled {
        id: holder,
        version: 1,
        ticket: ticket_ref(&t),
    })
    .await;
    let released = at_version(&app, id, 2).await;
    assert_eq!(
        (released["status"].clone(), released["orderId"].clone()),
        (json!("available"), json!(null))
    );
}

#[tokio::test]
async fn a_completed_order_sells_the_ticket_for_good() {
    let app = app().await;
    let (_, seller) = app.user();
    let t = created(&app, &seller, "Gig", 20.0).await;
    let id = t["id"].as_str().unwrap();
    let order = OrderId::new();
    app.publish(&order_created(order, &t)).await;
    app.publish(&OrderCompleted {
        id: order,
        version: 1,
        ticket: ticket_ref(&t),
    })
    .await;
    let sold = at_version(&app, id, 2).await;
    assert_eq!(sold["status"], "sold");
    let res = app
        .send(
            Method::PUT,
            &format!("/api/tickets/{id}"),
            Some(&seller),
            Some(json!({"title": "x", "price": 1})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["message"], "Cannot edit a sold ticket");
}

#[tokio::test]
async fn a_cancellation_that_overtakes_its_creation_never_leaves_the_ticket_reserved() {
    let app = app().await;
    let (_, seller) = app.user();
    let t = created(&app, &seller, "Gig", 20.0).await;
    let id = t["id"].as_str().unwrap();
    let order = OrderId::new();
    app.publish(&OrderCancelled {
        id: order,
        version: 1,
        ticket: ticket_ref(&t),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.publish(&order_created(order, &t)).await;
    let after = at_version(&app, id, 2).await;
    assert_eq!(
        (after["status"].clone(), after["orderId"].clone()),
        (json!("available"), json!(null))
    );
}

#[tokio::test]
async fn an_order_for_a_ticket_still_held_waits_for_the_previous_release() {
    let app = app().await;
    let (_, seller) = app.user();
    let t = created(&app, &seller, "Gig", 20.0).await;
    let id = t["id"].as_str().unwrap();
    let (first, second) = (OrderId::new(), OrderId::new());
    app.publish(&order_created(first, &t)).await;
    at_version(&app, id, 1).await;
    // The second order's creation arrives before the first's cancellation.
    app.publish(&order_created(second, &t)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.publish(&OrderCancelled {
        id: first,
        version: 1,
        ticket: ticket_ref(&t),
    })
    .await;
    let after = at_version(&app, id, 3).await;
    assert_eq!(
        (after["status"].clone(), after["orderId"].clone()),
        (json!("reserved"), json!(second.to_string()))
    );
}

#[tokio::test]
async fn an_undecodable_order_event_is_parked_not_retried_forever() {
    let app = app().await;
    app.bus
        .publish(bus::Message {
            subject: OrderCreated::SUBJECT.into(),
            id: "junk".into(),
            headers: vec![],
            payload: b"{\"id\":1}".to_vec(),
        })
        .await
        .unwrap();
    let durable = durable_name("tickets", OrderCreated::SUBJECT);
    let parked = eventually(Duration::from_secs(5), || async {
        let p = app.bus.parked(&durable).await.unwrap();
        (!p.is_empty()).then_some(p)
    })
    .await
    .expect("parked");
    assert_eq!(parked[0].id, "junk");
}

fn banned(user: UserId, version: i64) -> marketplace_events::UserBanned {
    let now = shared::time::Clock::System.now();
    marketplace_events::UserBanned {
        id: user,
        version,
        banned_at: now,
        until: now.plus_secs(3600),
    }
}

fn unbanned(user: UserId, version: i64) -> marketplace_events::UserUnbanned {
    marketplace_events::UserUnbanned { id: user, version }
}

async fn listed(app: &TestApp) -> Vec<String> {
    let list: Value = app
        .send(Method::GET, "/api/tickets", None, None)
        .await
        .json()
        .await
        .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_banned_sellers_tickets_leave_the_listing_and_come_back_when_the_ban_is_lifted() {
    let app = app().await;
    let mut updates = app.watch::<TicketUpdated>().await;
    let (seller, token) = app.user();
    let (_, other) = app.user();
    let free = created(&app, &token, "Free", 10.0).await;
    let held = created(&app, &token, "Held", 10.0).await;
    let others = created(&app, &other, "Other", 10.0).await;
    let (free_id, held_id) = (free["id"].as_str().unwrap(), held["id"].as_str().unwrap());
    let order = OrderId::new();
    app.publish(&order_created(order, &held)).await;
    at_version(&app, held_id, 1).await;
    assert_eq!(
        updates.next().await.status,
        marketplace_events::TicketStatus::Reserved
    );

    app.publish(&banned(seller, 1)).await;
    let withdrawn = at_version(&app, free_id, 1).await;
    assert_eq!(withdrawn["status"], "withdrawn");
    let event = updates.next().await;
    assert_eq!(
        (event.status, event.version),
        (marketplace_events::TicketStatus::Withdrawn, 1)
    );
    assert_eq!(listed(&app).await, [others["id"].as_str().unwrap()]);
    // A ticket released while the ban lasts is withdrawn, not put on sale.
    app.publish(&OrderCancelled {
        id: order,
        version: 1,
        ticket: ticket_ref(&held),
    })
    .await;
    assert_eq!(at_version(&app, held_id, 2).await["status"], "withdrawn");
    // A request on a session not yet ended lists nothing new.
    let refused = create(&app, &token, "Sneaky", json!(5)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    app.publish(&unbanned(seller, 2)).await;
    assert_eq!(at_version(&app, free_id, 2).await["status"], "available");
    assert_eq!(at_version(&app, held_id, 3).await["status"], "available");
    let mut ids = listed(&app).await;
    ids.sort();
    let mut expected = vec![
        free_id.to_owned(),
        held_id.to_owned(),
        others["id"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(ids, expected);
}

/// Waits until the ticket has `status` and keeps it, unchanged, for 300 ms
/// (bans and unbans arrive on consumers of their own, so an intermediate
/// state may show before the highest version's).
async fn settles_at(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = get_ticket(app, id).await;
        if t["status"] == status {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if get_ticket(app, id).await == t {
                return t;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ticket {id} never settled at {status}: {t}"
        );
    }
}

#[tokio::test]
async fn duplicate_and_out_of_order_bans_end_in_the_state_of_the_highest_version() {
    let app = app().await;
    let (seller, token) = app.user();
    let t = created(&app, &token, "Gig", 10.0).await;
    let id = t["id"].as_str().unwrap();
    // Version 2 (lifted) is published before version 1 (banned); 3 bans again.
    app.publish(&unbanned(seller, 2)).await;
    app.publish(&banned(seller, 1)).await;
    app.publish(&banned(seller, 3)).await;
    settles_at(&app, id, "withdrawn").await;
    // Duplicates and stale versions change nothing.
    app.publish(&banned(seller, 3)).await;
    app.publish(&unbanned(seller, 2)).await;
    app.publish(&banned(seller, 1)).await;
    settles_at(&app, id, "withdrawn").await;
    app.publish(&unbanned(seller, 4)).await;
    settles_at(&app, id, "available").await;
    app.publish(&banned(seller, 3)).await;
    settles_at(&app, id, "available").await;
}
