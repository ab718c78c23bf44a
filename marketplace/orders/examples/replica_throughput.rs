//! How fast the orders service drains a backlog of `ticket.created` events
//! into its ticket replica (decode, handler transaction, ack) on the
//! embedded bus.
//!
//! `cargo run --release -p orders --example replica_throughput -- 20000`
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Bus, Message};
use marketplace_events::{Event, TicketCreated};

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let bus: Arc<dyn Bus> = Arc::new(
        bus::embedded::EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .expect("bus"),
    );
    let msgs: Vec<Message> = (0..n)
        .map(|_| {
            let e = TicketCreated {
                id: marketplace_events::TicketId::new(),
                version: 0,
                title: "t".into(),
                price_cents: shared::money::Money::from_cents(500),
                user_id: shared::ids::UserId::new(),
            };
            Message {
                subject: TicketCreated::SUBJECT.into(),
                id: shared::ids::EventId::new().to_string(),
                headers: vec![],
                payload: serde_json::to_vec(&e).expect("encode"),
            }
        })
        .collect();
    for chunk in msgs.chunks(256) {
        bus.publish_batch(chunk.to_vec()).await.expect("publish");
    }
    let deps = runtime::service::Deps {
        databases: runtime::service::Databases::Sqlite(dir.path().into()),
        bus: bus.clone(),
        keys: Some(shared::auth::AuthKeys::new(
            b"bench",
            Duration::from_secs(60),
            false,
        )),
        clock: shared::time::Clock::System,
        shutdown: shared::shutdown::Shutdown::never(),
    };
    let t = Instant::now();
    let _running = orders::start(
        &deps,
        orders::Config::default(),
        bus::listener::ListenerOptions::default(),
    )
    .await
    .expect("start");
    let labels = [("service", "orders"), ("subject", TicketCreated::SUBJECT)];
    while shared::metrics::get("events_handled_total", &labels) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "orders applied {n} ticket.created in {secs:.3} s = {:.0} events/s",
        n as f64 / secs
    );
}
