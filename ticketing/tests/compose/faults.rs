//! Purchases under load through the compose gateway while each service's
//! container is killed (SIGKILL) in turn and then every container is
//! restarted; afterwards the crash suite's invariants hold, read from the
//! services' databases in the PostgreSQL container.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::Shopper;
use crate::stack::Stack;

/// `POST base+path` with `body`; `None` when nothing answered (a killed
/// container) or the answer was not JSON.
async fn try_post(user: &Shopper, path: &str, body: &Value) -> Option<(StatusCode, Value)> {
    let res = user
        .client
        .post(format!("{}{path}", user.base()))
        .timeout(Duration::from_secs(10))
        .json(body)
        .send()
        .await
        .ok()?;
    let status = res.status();
    Some((status, res.json().await.unwrap_or(Value::Null)))
}

/// Retries `POST path` until it is answered 201, for at most `wait`; the
/// created id.
async fn created(user: &Shopper, path: &str, body: Value, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some((StatusCode::CREATED, v)) = try_post(user, path, &body).await {
            return v["id"].as_str().map(str::to_owned);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// What the load saw: the orders whose payment was answered 201, and those
/// whose payment was taken but not confirmed (202, or 409 "A payment for
/// this order…" after a retry).
#[derive(Default)]
struct Seen {
    paid: Vec<String>,
    taken: Vec<String>,
    purchases: usize,
}

/// One seller and one buyer buying until `stop` (or `max` purchases): sell,
/// order, pay with a card that is accepted; failures while a container is
/// down are retried or the purchase is abandoned, never counted as paid.
async fn shop(seller: Shopper, buyer: Shopper, stop: Arc<AtomicBool>, max: usize) -> Seen {
    let mut seen = Seen::default();
    let wait = Duration::from_secs(20);
    for i in 0..max {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let body = json!({"title": format!("Load {i}"), "price": 12.5});
        let Some(ticket) = created(&seller, "/api/tickets", body, wait).await else {
            continue;
        };
        let body = json!({"ticketId": ticket});
        let Some(order) = created(&buyer, "/api/orders", body, wait).await else {
            continue;
        };
        let body = json!({"orderId": order, "token": "tok_visa"});
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match try_post(&buyer, "/api/payments", &body).await {
                Some((StatusCode::CREATED, _)) => {
                    seen.paid.push(order.clone());
                    break;
                }
                Some((StatusCode::ACCEPTED, _)) => {
                    seen.taken.push(order.clone());
                    break;
                }
                Some((StatusCode::CONFLICT, v))
                    if v["errors"][0]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("A payment for this order")) =>
                {
                    seen.taken.push(order.clone());
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        seen.purchases += 1;
    }
    seen
}

/// Rows of `sql` in `db` once `check` holds (within 90 s).
fn until_rows(
    stack: &Stack<'_>,
    db: &str,
    sql: &str,
    what: &str,
    check: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = stack.query(db, sql);
        if check(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what}: last saw {rows:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs the load with `pairs` seller–buyer pairs while every one of
/// `services` is killed in turn and started again, then every container is
/// restarted; checks the invariants. `admin` reads the parked messages.
pub async fn kills_under_load(
    stack: &Stack<'_>,
    gw: &str,
    services: &[&str],
    pairs: usize,
    admin: &str,
) {
    let mut users = Vec::new();
    for i in 0..pairs {
        users.push((
            Shopper::sign_up(gw, &format!("load-seller-{i}@example.com")).await,
            Shopper::sign_up(gw, &format!("load-buyer-{i}@example.com")).await,
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let shoppers: Vec<_> = users
        .into_iter()
        .map(|(seller, buyer)| tokio::spawn(shop(seller, buyer, stop.clone(), 200)))
        .collect();

    // Each container killed in turn while purchases run, then started again
    // as a supervisor would (a container killed by `docker kill` stays down
    // whatever its restart policy).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for service in services {
        let container = stack.container(service);
        stack.docker(&["kill", "-s", "KILL", &container]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.compose(&["start", service]);
        stack.until_healthy(&[service], Duration::from_secs(90));
    }
    stack.compose(&["restart", "--timeout", "30"]);
    stack.until_healthy(super::SERVICES, Duration::from_secs(180));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    for s in shoppers {
        let s = s.await.unwrap();
        seen.paid.extend(s.paid);
        seen.taken.extend(s.taken);
        seen.purchases += s.purchases;
    }
    assert!(!seen.paid.is_empty(), "some purchases went through");
    eprintln!(
        "load: {} purchases tried, {} paid (201), {} taken (202/409)",
        seen.purchases,
        seen.paid.len(),
        seen.taken.len()
    );

    // Every payment answered 201 or taken: its order completes.
    let settled: HashSet<&String> = seen.paid.iter().chain(&seen.taken).collect();
    let rows = until_rows(
        stack,
        "ticketing_orders",
        "SELECT id, status FROM orders",
        "every paid order completes",
        |rows| {
            let status: HashMap<&str, &str> = rows
                .iter()
                .map(|r| (r[0].as_str(), r[1].as_str()))
                .collect();
            settled
                .iter()
                .all(|o| status.get(o.as_str()) == Some(&"complete"))
        },
    );
    let complete: HashSet<&str> = rows
        .iter()
        .filter(|r| r[1] == "complete")
        .map(|r| r[0].as_str())
        .collect();
    // No ticket sold twice.
    let twice = stack.query(
        "ticketing_orders",
        "SELECT ticket_id FROM orders WHERE status = 'complete' GROUP BY ticket_id HAVING COUNT(*) > 1",
    );
    assert!(twice.is_empty(), "tickets sold twice: {twice:?}");
    // Every hold settled — captured or voided — once, and captured exactly
    // for the complete orders.
    let holds = until_rows(
        stack,
        "ticketing_payments",
        "SELECT order_id, status, refund_id IS NULL FROM payments WHERE status <> 'declined'",
        "every hold is captured or voided",
        |rows| rows.iter().all(|r| r[1] == "captured" || r[1] == "voided"),
    );
    let captured: HashSet<&str> = holds
        .iter()
        .filter(|r| r[1] == "captured")
        .map(|r| r[0].as_str())
        .collect();
    for order in &complete {
        assert!(
            captured.contains(order),
            "order {order} complete without a captured hold"
        );
    }
    for order in &captured {
        assert!(
            complete.contains(order),
            "a hold captured for order {order}, which is not complete"
        );
    }
    assert!(holds.iter().all(|r| r[2] == "t"), "nothing refunded");
    // Sold tickets are exactly the complete orders' tickets.
    let bought: HashSet<String> = stack
        .query(
            "ticketing_orders",
            "SELECT ticket_id FROM orders WHERE status = 'complete'",
        )
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let sold = until_rows(
        stack,
        "ticketing_tickets",
        "SELECT id FROM tickets WHERE status = 'sold'",
        "the sold tickets are the complete orders'",
        |rows| rows.len() == bought.len(),
    );
    for r in &sold {
        assert!(
            bought.contains(&r[0]),
            "ticket {} sold without a complete order",
            r[0]
        );
    }
    // The outboxes drain; nothing was parked.
    for db in ["auth", "tickets", "orders", "expiration", "payments"] {
        until_rows(
            stack,
            &format!("ticketing_{db}"),
            "SELECT COUNT(*) FROM outbox",
            &format!("{db}'s outbox drains"),
            |r| r[0][0] == "0",
        );
    }
    let parked: Value = reqwest::Client::new()
        .get(format!("{gw}/api/admin/parked"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(parked, json!([]), "nothing was parked");
}
