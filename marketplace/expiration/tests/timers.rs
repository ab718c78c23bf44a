//! The expiration service's timers: on time, once, and across restarts.

use std::time::Duration;

use bus::listener::ListenerOptions;
use marketplace_events::{ExpirationComplete, OrderCreated, OrderStatus, OrderTicket};
use marketplace_events::{OrderId, TicketId};
use shared::ids::UserId;
use shared::money::Money;
use shared::time::{Clock, Timestamp};
use testkit::TestApp;

async fn start(dir: Option<testkit::Stopped>) -> TestApp {
    let start = |deps: runtime::service::Deps| async move {
        expiration::start(&deps, ListenerOptions::default())
            .await
            .map(|r| vec![r])
    };
    match dir {
        None => TestApp::spawn(start).await,
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

fn in_ms(ms: i64) -> Timestamp {
    Timestamp::from_millis(Clock::System.now().millis() + ms)
}

#[tokio::test]
async fn a_timer_fires_at_its_expiry_not_before_and_not_much_after() {
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let o = order(in_ms(800));
    app.publish(&o).await;
    assert!(
        fired
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "fired early"
    );
    let e = fired
        .next_within(Duration::from_secs(3))
        .await
        .expect("fired");
    let now = Clock::System.now().millis();
    assert_eq!(e.order_id, o.id);
    assert!(
        now >= o.expires_at.millis(),
        "fired {} ms early",
        o.expires_at.millis() - now
    );
    assert!(
        now - o.expires_at.millis() < 1500,
        "fired {} ms late",
        now - o.expires_at.millis()
    );
}

#[tokio::test]
async fn a_sooner_timer_arriving_later_fires_first() {
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let late = order(in_ms(60_000));
    let soon = order(in_ms(400));
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
    let app = start(None).await;
    let mut fired = app.watch::<ExpirationComplete>().await;
    let o = order(in_ms(200));
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

#[tokio::test]
async fn a_timer_that_came_due_while_stopped_fires_right_after_start() {
    let app = start(None).await;
    let o = order(in_ms(700));
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
