//! The expiration service's timers: on time, once, and across restarts.
//!
//! On the embedded engines these run on virtual time (`testkit::virtual_time`):
//! a minute-long timer costs no real time and "on time" is exact, not
//! subject to the machine's load. On PostgreSQL and JetStream they run the
//! same steps in real time.

use std::time::Duration;

use bus::listener::ListenerOptions;
use marketplace_events::{ExpirationComplete, OrderCreated, OrderStatus, OrderTicket};
use marketplace_events::{OrderId, TicketId};
use shared::ids::UserId;
use shared::money::Money;
use shared::time::Timestamp;
use testkit::TestApp;

async fn start(dir: Option<testkit::Stopped>) -> TestApp {
    let start = |deps: runtime::service::Deps| async move {
        expiration::start(&deps, ListenerOptions::default())
            .await
            .map(|r| vec![r])
    };
    match dir {
        None => TestApp::spawn_for(marketplace_events::PRODUCT, start).await,
        Some(dir) => TestApp::spawn_in(dir, start).await,
    }
}

fn order(expires_at: Timestamp) -> OrderCreated {
    OrderCreated {
        id: OrderId::new(),
        version: 0,
        status: OrderStatus::Created,
        user_id: UserId::new(),
        expires_at,
        ticket: OrderTicket {
            id: TicketId::new(),
            price_cents: Money::from_cents(100),
        },
    }
}

/// `ms` from now on the app's clock.
fn in_ms(app: &TestApp, ms: i64) -> Timestamp {
    Timestamp::from_millis(app.deps.clock.now().millis() + ms)
}

#[tokio::test]
async fn a_timer_fires_at_its_expiry_not_before_and_not_much_after() {
    let virtual_time = testkit::virtual_time();
    // The real hold, 15 minutes, when time is virtual.
    let hold_ms = if virtual_time { 15 * 60_000 } else { 800 };
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let o = order(in_ms(&app, hold_ms));
    app.publish(&o).await;
    assert!(
        fired
            .next_within(Duration::from_millis(hold_ms as u64 - 300))
            .await
            .is_none(),
        "fired early"
    );
    let e = fired
        .next_within(Duration::from_secs(3))
        .await
        .expect("fired");
    let now = app.deps.clock.now().millis();
    assert_eq!(e.order_id, o.id);
    assert!(
        now >= o.expires_at.millis(),
        "fired {} ms early",
        o.expires_at.millis() - now
    );
    // On virtual time nothing else runs late: the timer fires on the dot.
    let allowed_ms = if virtual_time { 10 } else { 1500 };
    assert!(
        now - o.expires_at.millis() < allowed_ms,
        "fired {} ms late",
        now - o.expires_at.millis()
    );
}

#[tokio::test]
async fn a_sooner_timer_arriving_later_fires_first() {
    testkit::virtual_time();
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let late = order(in_ms(&app, 60_000));
    let soon = order(in_ms(&app, 400));
    app.publish(&late).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the scheduler now sleeps for a minute
    app.publish(&soon).await;
    assert_eq!(
        fired
            .next_within(Duration::from_secs(3))
            .await
            .expect("soon fired")
            .order_id,
        soon.id
    );
}

#[tokio::test]
async fn a_duplicate_order_event_fires_once() {
    testkit::virtual_time();
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let o = order(in_ms(&app, 200));
    app.publish(&o).await;
    app.publish(&o).await;
    assert_eq!(fired.next().await.order_id, o.id);
    assert!(
        fired
            .next_within(Duration::from_millis(800))
            .await
            .is_none(),
        "fired twice"
    );
}

/// An `order.created` handled again after its timer fired — the ack of
/// its first delivery lost, as when a NATS node is cut off — must not set
/// the timer again: the cluster drill saw an order's timer fire twice.
#[tokio::test]
async fn an_order_event_delivered_again_after_its_timer_fired_does_not_fire_it_again() {
    testkit::virtual_time();
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let o = order(in_ms(&app, 200));
    app.publish(&o).await;
    assert_eq!(fired.next().await.order_id, o.id);
    app.publish(&o).await;
    assert!(
        fired
            .next_within(Duration::from_millis(2000))
            .await
            .is_none(),
        "fired again"
    );
}

#[tokio::test]
async fn a_timer_that_came_due_while_stopped_fires_right_after_start() {
    testkit::virtual_time();
    let app = start(None).await;
    let o = order(in_ms(&app, 700));
    app.publish(&o).await;
    // Wait until the timer is stored, then stop before it is due.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = app.shutdown().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let app = start(Some(dir)).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    assert_eq!(
        fired
            .next_within(Duration::from_secs(3))
            .await
            .expect("fired after restart")
            .order_id,
        o.id
    );
}

/// When firing fails (here a trigger refuses the delete, as a full disk
/// would), the scheduler backs off instead of spinning, counts each failure,
/// reports not-ready, and fires the timer once writing works again. (The
/// injected failure is SQLite's trigger syntax: embedded engines only.)
#[tokio::test]
async fn a_scheduler_that_cannot_write_backs_off_reports_not_ready_and_recovers() {
    if !testkit::virtual_time() {
        eprintln!("skipped on the engines: the failure is injected with an SQLite trigger");
        return;
    }
    let app = start(None).await;
    let side = store::Db::open_sqlite(&app.dir.path().join("expiration.db"), &[])
        .await
        .unwrap();
    side.write(|c| {
        c.execute(
            "CREATE TRIGGER refuse_firing BEFORE DELETE ON timers
             BEGIN SELECT RAISE(ABORT, 'injected: cannot write'); END",
            &[],
        )
    })
    .await
    .unwrap();
    let before = shared::metrics::get("expiration_fire_failures_total", &[]);
    let mut fired = app.watch::<ExpirationComplete>().await;
    let o = order(in_ms(&app, 100));
    app.publish(&o).await;
    // Five virtual minutes of failing: 100 ms doubling up to 30 s is about
    // fifteen attempts, where a loop without pause makes thousands.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let failures = shared::metrics::get("expiration_fire_failures_total", &[]) - before;
    assert!((5..=20).contains(&failures), "{failures} attempts");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let reasons = ready.text().await.unwrap();
    assert!(
        reasons.contains("expiration scheduler: cannot fire timers"),
        "{reasons}"
    );

    side.write(|c| c.execute("DROP TRIGGER refuse_firing", &[]))
        .await
        .unwrap();
    let e = fired
        .next_within(Duration::from_secs(60))
        .await
        .expect("fired once writing works again");
    assert_eq!(e.order_id, o.id);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
}
