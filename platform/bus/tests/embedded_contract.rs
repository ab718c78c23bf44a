//! The bus contract suite against the embedded bus, plus what only the
//! embedded bus promises: its log and consumers survive a restart.

use std::sync::Arc;
use std::time::Duration;

use bus::contract::{Env, next_within};
use bus::embedded::EmbeddedBus;
use bus::{Bus, ConsumerConfig, Message};

async fn fresh() -> Option<Env> {
    // A prefix of each test's own: the bus is fresh, but the process's
    // metrics, which some cases read by consumer, are shared.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db")).await.unwrap();
    Some(Env {
        bus: Arc::new(bus),
        prefix: format!("t{n}"),
        guard: Box::new(dir),
    })
}

bus::bus_contract_tests!(fresh);

fn msg(id: &str) -> Message {
    Message {
        subject: "t.a".into(),
        id: id.into(),
        headers: vec![],
        payload: b"{}".to_vec(),
    }
}

#[tokio::test]
async fn messages_and_consumer_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let mut config = ConsumerConfig::new("c", "t.a");
    config.ack_wait = Duration::from_secs(1);
    {
        let bus = EmbeddedBus::open(&path).await.unwrap();
        let mut sub = bus.subscribe(config.clone()).await.unwrap();
        for id in ["m1", "m2", "m3"] {
            bus.publish(msg(id)).await.unwrap();
        }
        next_within(&mut sub, Duration::from_secs(5))
            .await
            .unwrap()
            .ack()
            .await
            .unwrap();
        // m2 is delivered but never acked: the process "dies" here.
        let _in_flight = next_within(&mut sub, Duration::from_secs(5)).await.unwrap();
    }
    let bus = EmbeddedBus::open(&path).await.unwrap();
    // The dedup memory survives too.
    assert!(bus.publish(msg("m1")).await.unwrap().duplicate);
    let mut sub = bus.subscribe(config).await.unwrap();
    let mut ids = Vec::new();
    while let Some(d) = next_within(&mut sub, Duration::from_secs(5)).await {
        ids.push(d.message.id.clone());
        d.ack().await.unwrap();
        if ids.len() == 2 {
            break;
        }
    }
    ids.sort();
    assert_eq!(ids, ["m2", "m3"]);
}

/// A delivery in flight when the process died is nobody's any more: after
/// a restart it is delivered again at once, not when its ack wait (here a
/// minute) would have run out.
#[tokio::test]
async fn deliveries_in_flight_at_a_crash_are_redelivered_at_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let mut config = ConsumerConfig::new("c", "t.a");
    config.ack_wait = Duration::from_secs(60);
    {
        let bus = EmbeddedBus::open(&path).await.unwrap();
        let mut sub = bus.subscribe(config.clone()).await.unwrap();
        bus.publish(msg("m1")).await.unwrap();
        let _in_flight = next_within(&mut sub, Duration::from_secs(5)).await.unwrap();
    }
    let bus = EmbeddedBus::open(&path).await.unwrap();
    let mut sub = bus.subscribe(config).await.unwrap();
    let d = next_within(&mut sub, Duration::from_secs(2))
        .await
        .expect("redelivered without waiting out the ack wait");
    assert_eq!(d.message.id, "m1");
    assert_eq!(d.delivered, 2);
}

#[tokio::test]
async fn a_durable_cannot_be_rejoined_with_a_different_filter() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db")).await.unwrap();
    bus.subscribe(ConsumerConfig::new("c", "t.a"))
        .await
        .unwrap();
    let err = bus
        .subscribe(ConsumerConfig::new("c", "t.b"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind, bus::BusErrorKind::Config);
}

/// Acknowledgements are committed in groups: hundreds acked at once from
/// many tasks all return, each once written — none is redelivered after a
/// restart, and the bus's database ran far fewer transactions than acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_are_committed_together_and_each_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    let mut config = ConsumerConfig::new("c", "t.a");
    config.ack_wait = Duration::from_millis(300);
    let n = 600;
    {
        let bus = EmbeddedBus::open(&path).await.unwrap();
        let mut sub = bus.subscribe(config.clone()).await.unwrap();
        let batch: Vec<Message> = (0..n).map(|i| msg(&format!("m{i}"))).collect();
        bus.publish_batch(batch).await.unwrap();
        let mut deliveries = Vec::new();
        while deliveries.len() < n {
            deliveries.push(next_within(&mut sub, Duration::from_secs(5)).await.unwrap());
        }
        let before = bus.database_transactions();
        let acks: Vec<_> = deliveries
            .into_iter()
            .map(|d| tokio::spawn(async move { d.ack().await }))
            .collect();
        for a in acks {
            a.await.unwrap().unwrap();
        }
        let transactions = bus.database_transactions() - before;
        assert!(
            transactions < n as u64 / 4,
            "{n} acks took {transactions} transactions"
        );
    }
    // After a restart and past the ack wait, nothing comes back.
    let bus = EmbeddedBus::open(&path).await.unwrap();
    let mut sub = bus.subscribe(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        next_within(&mut sub, Duration::from_millis(300))
            .await
            .is_none(),
        "an acknowledged message was delivered again"
    );
}

/// A watch reads the log only when something it watches is published: the
/// rest of the traffic (every ticket and order event, for the sessions'
/// watch on `user.>`) costs the bus's database no extra transaction.
#[tokio::test]
async fn a_watch_costs_nothing_for_subjects_it_does_not_watch() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus.db")).await.unwrap();
    let mut watch = bus
        .watch("t.watched", shared::time::Clock::System.now())
        .await
        .unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), bus::Watched::CaughtUp);
    let waiting = tokio::spawn(async move { watch.next().await.map(|r| r.map(|_| ())) });
    tokio::task::yield_now().await;
    let before = bus.database_transactions();
    for i in 0..50 {
        bus.publish(msg(&format!("other-{i}"))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        bus.database_transactions() - before,
        50,
        "one transaction per publish, none for the watch"
    );
    bus.publish(Message {
        subject: "t.watched".into(),
        ..msg("watched")
    })
    .await
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert!(
        matches!(seen, Ok(Ok(Some(Ok(()))))),
        "the watched one arrives"
    );
}
