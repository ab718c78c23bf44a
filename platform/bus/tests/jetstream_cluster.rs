//! The bus on a three-node NATS cluster of the test's own: a stream with
//! three replicas keeps taking publishes and delivering to its durable
//! consumer when its leader is killed, and a client whose node dies moves
//! to another from the server list (`NATS_URL` with commas). Nothing
//! published is lost; each message is delivered until acknowledged.
//! `TICKETING_TEST_NATS_SERVER` picks the nats-server binary.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bus::contract::next_within;
use bus::jetstream::JetStreamBus;
use bus::{Bus, ConsumerConfig, Message, Subscription};
use provision::local::{Logs, NatsCluster};

fn msg(id: &str) -> Message {
    Message {
        subject: "cluster.a".into(),
        id: id.into(),
        headers: vec![],
        payload: b"{}".to_vec(),
    }
}

/// Three nodes, or `None` (after saying why) when nats-server cannot run
/// and engines are optional.
fn cluster(dir: &std::path::Path) -> Option<NatsCluster> {
    let binary =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    match NatsCluster::start(&binary, dir, 3, Logs::Inherit) {
        Ok(c) => Some(c),
        Err(e) if store::testing::engines_required() => panic!("{e}"),
        Err(e) => {
            store::testing::skipped(&format!("{e}; set TICKETING_TEST_NATS_SERVER"));
            None
        }
    }
}

/// How long one publish took, retries included, and where the time went:
/// each failed attempt (when it started, how long it waited, the error).
#[derive(Debug, Default, Clone)]
struct Stall {
    took: Duration,
    attempts: Vec<(Duration, Duration, String)>,
}

impl Stall {
    fn longest(self, other: Stall) -> Stall {
        if other.took > self.took { other } else { self }
    }
}

/// The took time, then the failed attempts, the same error in a row
/// told once: `error ×n, at 0.0–5.9 s, each waiting 0.0 s`.
impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} s", self.took.as_secs_f64())?;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, (_, _, e)) in self.attempts.iter().enumerate() {
            match runs.last_mut() {
                Some((first, n)) if self.attempts[*first].2 == *e => *n += 1,
                _ => runs.push((i, 1)),
            }
        }
        for (first, n) in runs {
            let (from, waited, e) = &self.attempts[first];
            let to = self.attempts[first + n - 1].0;
            write!(
                f,
                "; {e} ×{n}, at {:.1}–{:.1} s, each waiting {:.1} s",
                from.as_secs_f64(),
                to.as_secs_f64(),
                waited.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

/// Publishes `id`, retrying while the cluster elects a leader or the
/// client reconnects; returns how long it took.
async fn publish(bus: &JetStreamBus, id: &str) -> Stall {
    let start = Instant::now();
    let mut attempts = Vec::new();
    loop {
        let attempt = Instant::now();
        match bus.publish(msg(id)).await {
            Ok(_) => {
                return Stall {
                    took: start.elapsed(),
                    attempts,
                };
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{id} not published in 30 s: {e}"
                );
                attempts.push((attempt - start, attempt.elapsed(), e.to_string()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Receives and acknowledges until every id in `want` has been `seen`
/// (duplicates allowed: at least once).
async fn receive_all(sub: &mut Subscription, want: &BTreeSet<String>, seen: &mut BTreeSet<String>) {
    while *seen != *want {
        let d = next_within(sub, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                let missing: Vec<_> = want.difference(seen).collect();
                panic!("never delivered: {missing:?}")
            });
        seen.insert(d.message.id.clone());
        // An ack sent while the consumer's leader moves may be lost: the
        // message then comes again and is acknowledged again.
        let _ = d.ack().await;
    }
}

/// Once every node answers: a client on the server list, an R3 stream
/// `CLUSTER` (created as soon as the cluster accepts it) and a durable
/// consumer of `cluster.a` on it.
async fn replicated_stream(
    nodes: &NatsCluster,
    name: &str,
) -> (JetStreamBus, async_nats::jetstream::Context, Subscription) {
    nodes.wait_ready(Duration::from_secs(30)).await.unwrap();
    let bus = JetStreamBus::connect(&nodes.url(), name).await.unwrap();
    let js = bus.context().clone();
    let start = Instant::now();
    loop {
        let created = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "CLUSTER".into(),
                subjects: vec!["cluster.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => break,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut config = ConsumerConfig::new("cluster-c", "cluster.a");
    config.ack_wait = Duration::from_secs(2);
    let sub = bus.subscribe(config).await.unwrap();
    (bus, js, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_survives_its_leader_and_a_clients_node_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nodes) = cluster(dir.path()) else {
        return;
    };
    let (bus, js, mut sub) = replicated_stream(&nodes, "cluster-test").await;
    let (mut want, mut seen) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..20 {
        publish(&bus, &format!("before-{i}")).await;
        want.insert(format!("before-{i}"));
    }
    receive_all(&mut sub, &want, &mut seen).await;

    // The stream's leader dies: another is elected, publishing resumes.
    let leader = nodes.stream_leader("CLUSTER").await.expect("a leader");
    nodes.kill(leader);
    let mut stall = Stall::default();
    for i in 0..20 {
        stall = stall.longest(publish(&bus, &format!("leaderless-{i}")).await);
        want.insert(format!("leaderless-{i}"));
    }
    let new_leader = nodes.stream_leader("CLUSTER").await.expect("a new leader");
    assert_ne!(new_leader, leader);
    receive_all(&mut sub, &want, &mut seen).await;
    eprintln!("longest publish stall with the stream's leader killed: {stall}");
    nodes.restart(leader).unwrap();
    nodes.wait_ready(Duration::from_secs(30)).await.unwrap();
    // The second fault comes only once the first is repaired: the node
    // started again has caught up on the stream. Killing the client's node
    // before that can leave no majority of current replicas (a CI run on
    // 2.9.10 waited 30 s for a leader that way).
    nodes
        .wait_streams_current(["CLUSTER"], Duration::from_secs(60))
        .await
        .unwrap();

    // The node the client is connected to dies: it moves to another.
    let on = bus.client().server_info().server_name;
    let node = nodes.node_named(&on).expect("connected to one of ours");
    nodes.kill(node);
    let mut stall = Stall::default();
    for i in 0..20 {
        stall = stall.longest(publish(&bus, &format!("moved-{i}")).await);
        want.insert(format!("moved-{i}"));
    }
    assert_ne!(
        bus.client().server_info().server_name,
        on,
        "reconnected elsewhere"
    );
    receive_all(&mut sub, &want, &mut seen).await;
    eprintln!("longest publish stall with the client's node killed: {stall}");

    // Everything published is stored once (the stream de-duplicates ids).
    let mut stream = js.get_stream("CLUSTER").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 60);
}

/// Three nodes in network namespaces, or `None` (after saying why) when
/// namespaces cannot be made here and engines are optional.
fn partitionable(dir: &std::path::Path) -> Option<NatsCluster> {
    let binary =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    match NatsCluster::start_partitionable(&binary, dir, 3, Logs::Inherit) {
        Ok(c) => Some(c),
        Err(e) if store::testing::engines_required() => {
            panic!("network namespaces are required (TICKETING_REQUIRE_ENGINES=1): {e}")
        }
        Err(e) => {
            store::testing::skipped(&format!("partitions need root and iproute2: {e}"));
            None
        }
    }
}

/// The stream's leader is cut off from the other nodes and from the
/// client (network namespaces, its link down) for a while, then joined
/// again: the other two elect a leader and keep taking publishes; the
/// client moves off the cut-off node; after the heal the old leader
/// rejoins and catches up, and every message is stored once and
/// delivered. Then (2.10 and later) the client's own node is cut off: the
/// client moves to another and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_and_rejoins_without_losing_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nodes) = partitionable(dir.path()) else {
        return;
    };
    let (bus, js, mut sub) = replicated_stream(&nodes, "partition-test").await;
    let (mut want, mut seen) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..10 {
        publish(&bus, &format!("before-{i}")).await;
        want.insert(format!("before-{i}"));
    }
    receive_all(&mut sub, &want, &mut seen).await;

    let leader = nodes.stream_leader("CLUSTER").await.expect("a leader");
    nodes.partition(leader).unwrap();
    let mut stall = Stall::default();
    for i in 0..10 {
        stall = stall.longest(publish(&bus, &format!("cut-off-{i}")).await);
        want.insert(format!("cut-off-{i}"));
    }
    let new_leader = nodes.stream_leader("CLUSTER").await.expect("a new leader");
    assert_ne!(new_leader, leader, "the majority elected another leader");
    receive_all(&mut sub, &want, &mut seen).await;

    nodes.heal(leader).unwrap();
    for i in 0..10 {
        stall = stall.longest(publish(&bus, &format!("healed-{i}")).await);
        want.insert(format!("healed-{i}"));
    }
    receive_all(&mut sub, &want, &mut seen).await;
    eprintln!("longest publish stall across the partition: {stall}");
    // As above: the next fault only once the healed node has caught up (a
    // CI run on 2.9.10 cut the client's node off before, and its publishes
    // went unacknowledged for 30 s).
    nodes
        .wait_streams_current(["CLUSTER"], Duration::from_secs(60))
        .await
        .unwrap();

    // The node the client is connected to is cut off: the client notices
    // (no answer to its pings) and moves to another node. Not on 2.9.x:
    // cut off a second time, it left the stream without a leader for over
    // 30 s in 2 of 6 runs (docs/operations.md: use 2.10 or later).
    let version = bus.client().server_info().version;
    if version.starts_with("2.9.") {
        eprintln!(
            "nats-server {version}: the second partition (the client's node) is drilled on 2.10 \
             and later only"
        );
        rejoined_as_current(&js, nodes.name(leader), 30).await;
        return;
    }
    let on = bus.client().server_info().server_name;
    let node = nodes.node_named(&on).expect("connected to one of ours");
    nodes.partition(node).unwrap();
    let mut moved = Stall::default();
    for i in 0..10 {
        moved = moved.longest(publish(&bus, &format!("client-cut-off-{i}")).await);
        want.insert(format!("client-cut-off-{i}"));
    }
    assert_ne!(
        bus.client().server_info().server_name,
        on,
        "moved to another node"
    );
    receive_all(&mut sub, &want, &mut seen).await;
    nodes.heal(node).unwrap();
    eprintln!("longest publish stall with the client's node cut off: {moved}");
    // The old leader rejoined, caught up.
    rejoined_as_current(&js, nodes.name(leader), 40).await;
}

/// Waits until the stream holds `messages` and `old` is a current member
/// of its group again: a follower that has caught up, or — after a later
/// fault moved the leadership around — its leader.
async fn rejoined_as_current(js: &async_nats::jetstream::Context, old: &str, messages: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = js.get_stream("CLUSTER").await.unwrap();
        let info = stream.info().await.unwrap();
        let cluster = info.cluster.clone().unwrap();
        let leads = cluster.leader.as_deref() == Some(old);
        let follows = cluster
            .replicas
            .iter()
            .any(|r| r.name == old && r.current && !r.offline && r.lag.unwrap_or(0) == 0);
        if info.state.messages == messages && (leads || follows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stored {}; {old} not a current member: {cluster:?}",
            info.state.messages
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
