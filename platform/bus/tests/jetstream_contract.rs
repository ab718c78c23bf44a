//! The bus contract suite against a real nats-server with JetStream, plus
//! what only a real broker can show. Each test has a stream of its own.
//! `TICKETING_TEST_NATS_URL` picks the server (CI runs this file against
//! nats-server 2.9 and the current release).

use std::sync::Arc;
use std::time::Duration;

use bus::contract::{Env, next_within};
use bus::jetstream::{JetStreamBus, testing};
use bus::{Bus, ConsumerConfig, Message};
use provision::local::{Logs, NatsServer};

async fn fresh() -> Option<Env> {
    let client = testing::connect().await?;
    let bus = JetStreamBus::from_client(client);
    let stream = testing::stream(&bus).await;
    let prefix = stream.prefix.clone();
    Some(Env {
        bus: Arc::new(bus),
        prefix,
        guard: Box::new(stream),
    })
}

bus::bus_contract_tests!(fresh);

fn msg(subject: &str, id: &str) -> Message {
    Message {
        subject: subject.into(),
        id: id.into(),
        headers: vec![],
        payload: b"{}".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_subject_no_stream_holds_says_the_stream_is_missing() {
    let Some(client) = testing::connect().await else {
        return;
    };
    let bus = JetStreamBus::from_client(client);
    let err = bus.publish(msg("nostream.here", "x")).await.unwrap_err();
    assert_eq!(err.kind, bus::BusErrorKind::StreamMissing, "{err}");
    let err = bus
        .subscribe(ConsumerConfig::new("nostream-c", "nostream.here"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind, bus::BusErrorKind::StreamMissing, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_one_replica_never_acks_is_redelivered_to_another() {
    let Some(client) = testing::connect().await else {
        return;
    };
    let bus = JetStreamBus::from_client(client);
    let stream = testing::stream(&bus).await;
    let subject = format!("{}.a", stream.prefix);
    let mut config = ConsumerConfig::new(format!("{}-group", stream.name), subject.clone());
    config.ack_wait = Duration::from_secs(1);
    // Replica one takes the message and dies without acking.
    let mut one = bus.subscribe(config.clone()).await.unwrap();
    bus.publish(msg(&subject, "m")).await.unwrap();
    let first = next_within(&mut one, Duration::from_secs(5))
        .await
        .expect("delivered to one");
    drop(first);
    drop(one);
    // Replica two, on its own connection, gets it after the ack wait.
    let other = JetStreamBus::from_client(testing::connect().await.unwrap());
    let mut two = other.subscribe(config).await.unwrap();
    let again = next_within(&mut two, Duration::from_secs(8))
        .await
        .expect("redelivered to two");
    assert_eq!((again.message.id.as_str(), again.delivered), ("m", 2));
    again.ack().await.unwrap();
}

/// A nats-server of the test's own (`TICKETING_TEST_NATS_SERVER`, default
/// `nats-server`), or `None` after saying why when it cannot run and engines
/// are optional.
fn own_server(store: &std::path::Path) -> Option<NatsServer> {
    let binary =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    match NatsServer::start(&binary, store, Logs::Inherit) {
        Ok(server) => Some(server),
        Err(e) if store::testing::engines_required() => panic!("{e}"),
        Err(e) => {
            store::testing::skipped(&format!("{e}; set TICKETING_TEST_NATS_SERVER"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_receiving_after_the_server_restarts() {
    let store_dir = tempfile::tempdir().unwrap();
    let Some(mut server) = own_server(store_dir.path()) else {
        return;
    };
    let bus = JetStreamBus::connect(&server.url(), "restart-test")
        .await
        .unwrap();
    let js = bus.context().clone();
    let created = testkit_retry(|| {
        let js = js.clone();
        async move {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: "RESTART".into(),
                subjects: vec!["restart.>".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .ok()
        }
    })
    .await;
    assert!(created.is_some(), "stream created");
    let mut config = ConsumerConfig::new("restart-c", "restart.a");
    config.ack_wait = Duration::from_secs(2);
    let mut sub = bus.subscribe(config).await.unwrap();
    bus.publish(msg("restart.a", "before")).await.unwrap();
    next_within(&mut sub, Duration::from_secs(5))
        .await
        .expect("before restart")
        .ack()
        .await
        .unwrap();

    server.restart().expect("restarts");
    // Publishing retries until the client has reconnected.
    let published = testkit_retry(|| {
        let bus = bus.clone();
        async move { bus.publish(msg("restart.a", "after")).await.ok() }
    })
    .await;
    assert!(published.is_some(), "published after restart");
    // A server killed hard may not have written the consumer's last ack to
    // disk, so "before" may come again — more than once if an ack sent
    // while the client reconnects is lost (at least once); "after" must come.
    let mut d = next_within(&mut sub, Duration::from_secs(15))
        .await
        .expect("delivered after restart");
    for _ in 0..5 {
        if d.message.id != "before" {
            break;
        }
        let _ = d.ack().await;
        d = next_within(&mut sub, Duration::from_secs(15))
            .await
            .expect("delivered after restart");
    }
    assert_eq!(d.message.id, "after");
    d.ack().await.unwrap();
    assert!(bus.check_ready().await.is_ok());
    drop(server);
}

/// Tries `f` every 200 ms for up to 15 s.
async fn testkit_retry<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..75 {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The server's advisories about our consumers become counters per stream
/// and consumer: max-deliveries and terminate (both sent by 2.9 and the
/// current release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_advisories_are_counted_per_stream_and_consumer() {
    let Some(client) = testing::connect().await else {
        return;
    };
    let version = client.server_info().version;
    let bus = JetStreamBus::from_client(client);
    let stream = testing::stream(&bus).await;
    let subject = format!("{}.a", stream.prefix);
    let mut config = ConsumerConfig::new(format!("{}-adv", stream.name), subject.clone());
    config.ack_wait = Duration::from_secs(1);
    config.max_deliver = 1;
    let labels = [
        ("stream", stream.name.as_str()),
        ("consumer", config.durable.as_str()),
    ];
    let mut sub = bus.subscribe(config.clone()).await.unwrap();
    bus.publish(msg(&subject, "refused")).await.unwrap();
    bus.publish(msg(&subject, "hangs")).await.unwrap();
    for _ in 0..2 {
        let d = next_within(&mut sub, Duration::from_secs(5))
            .await
            .expect("delivered");
        if d.message.id == "refused" {
            d.term("refused by the test").await.unwrap();
        } else {
            drop(d); // never acknowledged: its one delivery runs out
        }
    }
    let counted = |metric: &'static str| async move {
        for _ in 0..100 {
            if shared::metrics::get(metric, &labels) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shared::metrics::get(metric, &labels)
    };
    assert_eq!(counted("bus_max_deliveries_advisories_total").await, 1);
    assert_eq!(
        counted("bus_terminated_advisories_total").await,
        1,
        "nats-server {version}: terminate advisories counted"
    );
}
