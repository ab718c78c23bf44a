//! `ticketing streams plan/apply` as an operator runs it: the real binary
//! against a nats-server of each test's own (`TICKETING_TEST_NATS_SERVER`;
//! CI runs this file on 2.9.10 and on the current release, which differ in
//! what may change in place).

use std::process::Output;
use std::time::Duration;

use drill::cluster::{Logs, NatsServer};
use futures_util::StreamExt;
use provision::Version;

const BUILTIN: &str = include_str!("../../deploy/streams.yaml");

struct Server {
    nats: NatsServer,
    dir: tempfile::TempDir,
}

/// A fresh server, or `None` when nats-server is missing and optional.
fn server() -> Option<Server> {
    let dir = tempfile::tempdir().unwrap();
    let binary =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    match NatsServer::start(&binary, &dir.path().join("nats"), Logs::Inherit) {
        Ok(nats) => Some(Server { nats, dir }),
        Err(e) if store::testing::engines_required() => panic!("{e}"),
        Err(e) => {
            store::testing::skipped(&e.to_string());
            None
        }
    }
}

impl Server {
    fn url(&self) -> String {
        self.nats.url()
    }

    /// Runs `ticketing streams <args>` against this server.
    fn streams(&self, args: &[&str]) -> Run {
        run(&self.url(), args)
    }

    /// Writes a spec file: the built-in one with `edit` applied.
    fn spec(&self, name: &str, edit: impl Fn(&str) -> String) -> String {
        let path = self.dir.path().join(name);
        let text = edit(BUILTIN);
        assert_ne!(text, BUILTIN, "the edit changed nothing");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        self.nats.jetstream().await.unwrap()
    }

    async fn version(&self) -> Version {
        Version::parse(&self.js().await.client().server_info().version)
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(url: &str, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .arg("streams")
        .args(args)
        .args(["--nats-url", url])
        .env_remove("NATS_URL")
        .env_remove("TICKETING_STREAMS_FILE")
        .env_remove("TICKETING_STREAM_REPLICAS")
        .output()
        .unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

async fn stream_config(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Info {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().clone()
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        js.publish(subject.to_owned(), format!("{{\"n\":{i}}}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn names(js: &async_nats::jetstream::Context) -> Vec<String> {
    let mut names: Vec<String> = js
        .stream_names()
        .map(|n| n.unwrap())
        .collect::<Vec<_>>()
        .await;
    names.sort();
    names
}

#[tokio::test]
async fn a_fresh_server_gets_everything_and_a_second_apply_changes_nothing() {
    let Some(s) = server() else { return };
    let plan = s.streams(&["plan"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("+ stream TICKETS"), "{plan:?}");
    assert!(
        plan.stdout.contains("Plan: 36 to create, 0 to update"),
        "{plan:?}"
    );

    let apply = s.streams(&["apply"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("created consumer ORDERS > payments-order-created")
    );
    let js = s.js().await;
    assert_eq!(
        names(&js).await,
        [
            "EXPIRATION",
            "ORDERS",
            "PARKED",
            "PAYMENTS",
            "TICKETS",
            "USERS"
        ]
    );
    let tickets = stream_config(&js, "TICKETS").await.config;
    assert_eq!(tickets.subjects, ["ticket.>"]);
    assert_eq!(tickets.duplicate_window, Duration::from_secs(120));
    assert!(tickets.description.unwrap().contains("owner: tickets"));
    let mut consumer = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("payments-order-created")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.filter_subject, "order.created");
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
    assert_eq!(info.config.max_deliver, 20);

    let again = s.streams(&["apply"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("nothing was changed"), "{again:?}");
    let plan = s.streams(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stdout
            .contains("0 to create, 0 to update, 0 to recreate, 0 to delete, 36 unchanged")
    );
}

/// Every durable consumer's replay consumer on PARKED (what the bus makes
/// when a service subscribes) is part of the spec: apply creates it with the
/// bus's settings, and one a service made first is managed, not listed as
/// unmanaged — apply takes it over in place.
#[tokio::test]
async fn replay_consumers_of_parked_messages_are_provisioned_with_their_durables() {
    let Some(s) = server() else { return };
    let apply = s.streams(&["apply"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply
            .stdout
            .contains("created consumer PARKED > orders-ticket-created-replay"),
        "{apply:?}"
    );
    let js = s.js().await;
    let parked = js.get_stream("PARKED").await.unwrap();
    let mut replay = parked
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            "orders-ticket-created-replay",
        )
        .await
        .unwrap();
    let info = replay.info().await.unwrap();
    assert_eq!(
        info.config.filter_subject,
        "parked.orders-ticket-created.replay"
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
    assert_eq!(info.config.max_deliver, 20);

    // As if the orders service had subscribed before anyone provisioned.
    parked
        .delete_consumer("orders-ticket-created-replay")
        .await
        .unwrap();
    let bus =
        bus::jetstream::JetStreamBus::from_client(async_nats::connect(s.url()).await.unwrap());
    let mut config = bus::ConsumerConfig::new("orders-ticket-created", "ticket.created");
    config.ack_wait = Duration::from_secs(5);
    config.max_deliver = 20;
    drop(bus::Bus::subscribe(&bus, config).await.unwrap());
    parked
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            "orders-ticket-created-replay",
        )
        .await
        .expect("the bus made the replay consumer");
    let plan = s.streams(&["plan"]);
    assert!(!plan.stdout.contains("Not managed"), "{plan:?}");
    assert!(
        plan.stdout
            .contains("~ consumer PARKED > orders-ticket-created-replay"),
        "{plan:?}"
    );
    let apply = s.streams(&["apply"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let plan = s.streams(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
}

#[tokio::test]
async fn a_mutable_change_is_made_in_place_and_keeps_the_data() {
    let Some(s) = server() else { return };
    assert_eq!(s.streams(&["apply"]).code, 0);
    let js = s.js().await;
    publish(&js, "ticket.created", 3).await;
    let spec = s.spec("mutable.yaml", |t| {
        t.replacen(
            "subjects: [\"ticket.>\"]\n",
            "subjects: [\"ticket.>\"]\n    max_age: 30d\n    max_bytes: 1GiB\n",
            1,
        )
        .replacen(
            "name: orders-ticket-created, owner: orders, filter_subject: ticket.created, ack_wait: 5s",
            "name: orders-ticket-created, owner: orders, filter_subject: ticket.created, ack_wait: 10s",
            1,
        )
    });
    let plan = s.streams(&["plan", "-f", &spec]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("~ stream TICKETS"), "{plan:?}");
    assert!(plan.stdout.contains("max_age: 0s → 30d"), "{plan:?}");
    assert!(
        plan.stdout.contains("max_bytes: -1 → 1073741824"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains("ack_wait: 5s → 10s"), "{plan:?}");
    // The consumer's replay consumer follows its ack wait.
    assert!(
        plan.stdout
            .contains("~ consumer PARKED > orders-ticket-created-replay"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains("0 to create, 3 to update"), "{plan:?}");

    let apply = s.streams(&["apply", "-f", &spec]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(apply.stdout.contains("updated stream TICKETS"), "{apply:?}");
    let info = stream_config(&js, "TICKETS").await;
    assert_eq!(info.config.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(
        info.state.messages, 3,
        "updating in place keeps the messages"
    );
    assert_eq!(s.streams(&["plan", "-f", &spec]).code, 0);
    // The built-in spec now differs from the server: drift.
    assert_eq!(s.streams(&["plan"]).code, 2);
}

#[tokio::test]
async fn an_immutable_change_is_refused_with_what_is_at_stake_until_allowed() {
    let Some(s) = server() else { return };
    assert_eq!(s.streams(&["apply"]).code, 0);
    let js = s.js().await;
    publish(&js, "ticket.created", 3).await;
    let spec = s.spec("immutable.yaml", |t| {
        t.replacen(
            "subjects: [\"ticket.>\"]\n",
            "subjects: [\"ticket.>\"]\n    storage: memory\n",
            1,
        )
    });
    let plan = s.streams(&["plan", "-f", &spec]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("! stream TICKETS"), "{plan:?}");
    assert!(plan.stdout.contains("cannot change in place"), "{plan:?}");
    assert!(
        plan.stdout.contains("storage: \"file\" → \"memory\""),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("3 stored messages"),
        "the plan says what is at stake: {plan:?}"
    );
    assert!(
        plan.stdout.contains(
            "2 consumers with their positions (orders-ticket-created, orders-ticket-updated)"
        ) || plan.stdout.contains(
            "2 consumers with their positions (orders-ticket-updated, orders-ticket-created)"
        ),
        "{plan:?}"
    );

    let refused = s.streams(&["apply", "-f", &spec]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("Nothing was changed"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("--allow-recreate"), "{refused:?}");
    let info = stream_config(&js, "TICKETS").await;
    assert_eq!(info.state.messages, 3, "refusing changed nothing");

    let apply = s.streams(&["apply", "-f", &spec, "--allow-recreate"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    let info = stream_config(&js, "TICKETS").await;
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(info.state.messages, 0);
    assert_eq!(
        info.state.consumer_count, 2,
        "its consumers are recreated with it"
    );
    assert_eq!(s.streams(&["plan", "-f", &spec]).code, 0);
}

#[tokio::test]
async fn what_may_change_in_place_depends_on_the_server_version() {
    let Some(s) = server() else { return };
    assert_eq!(s.streams(&["apply"]).code, 0);
    let version = s.version().await;
    // Retention limits → interest: in place from 2.10, not before.
    let spec = s.spec("interest.yaml", |t| {
        t.replacen(
            "subjects: [\"order.>\"]\n",
            "subjects: [\"order.>\"]\n    retention: interest\n",
            1,
        )
    });
    let plan = s.streams(&["plan", "-f", &spec]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains("retention: \"limits\" → \"interest\""),
        "{plan:?}"
    );
    let apply = s.streams(&["apply", "-f", &spec]);
    if version.at_least_2_10() {
        assert!(plan.stdout.contains("~ stream ORDERS"), "{plan:?}");
        assert_eq!(apply.code, 0, "{apply:?}");
    } else {
        assert!(plan.stdout.contains("! stream ORDERS"), "{plan:?}");
        assert!(plan.stdout.contains("before nats-server 2.10"), "{plan:?}");
        assert_eq!(apply.code, 1, "{apply:?}");
    }
    // A consumer's deliver policy never changes in place.
    let spec = s.spec("deliver.yaml", |t| {
        t.replacen(
            "filter_subject: payment.authorized, ack_wait: 5s",
            "filter_subject: payment.authorized, deliver_policy: new, ack_wait: 5s",
            1,
        )
    });
    let plan = s.streams(&["plan", "-f", &spec]);
    assert!(
        plan.stdout
            .contains("! consumer PAYMENTS > orders-payment-authorized"),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains("deliver policy never changes in place"),
        "{plan:?}"
    );
    // Compression exists from 2.10; a 2.9 server would drop it silently.
    let spec = s.spec("compressed.yaml", |t| {
        t.replacen(
            "subjects: [\"user.>\"]\n",
            "subjects: [\"user.>\"]\n    compression: s2\n",
            1,
        )
    });
    let apply = s.streams(&["apply", "-f", &spec]);
    if version.at_least_2_10() {
        assert_eq!(apply.code, 0, "{apply:?}");
        // (The client library's typed config predates compression.)
        let reply = s
            .js()
            .await
            .client()
            .request("$JS.API.STREAM.INFO.USERS", "".into())
            .await
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(info["config"]["compression"], "s2", "{info}");
    } else {
        assert_eq!(apply.code, 1, "{apply:?}");
        assert!(apply.stderr.contains("compression"), "{apply:?}");
        assert!(apply.stderr.contains("2.10 or later"), "{apply:?}");
    }
    // Replicas need a cluster.
    let plan = s.streams(&["plan", "--replicas", "3"]);
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(plan.stdout.contains("not part of a cluster"), "{plan:?}");
}

#[tokio::test]
async fn prune_deletes_only_what_the_tool_owns_and_the_spec_dropped() {
    let Some(s) = server() else { return };
    assert_eq!(s.streams(&["apply"]).code, 0);
    let js = s.js().await;
    // Made by hand: never touched.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HANDMADE".into(),
        subjects: vec!["handmade.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.get_stream("ORDERS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("someone-elses".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&js, "payment.authorized", 2).await;
    // The spec drops PAYMENTS (and the consumer on it) and one consumer on ORDERS.
    let spec = s.spec("smaller.yaml", |t| {
        let t = t.replacen(
            "  - name: PAYMENTS\n    owner: payments\n    description: Holds on cards and their fate (payment.authorized, payment.captured, payment.voided, payment.refunded)\n    subjects: [\"payment.>\"]\n    duplicate_window: 2m\n",
            "",
            1,
        );
        t.lines()
            .filter(|l| !l.contains("orders-payment-authorized") && !l.contains("payments-order-completed"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let plan = s.streams(&["plan", "-f", &spec]);
    assert_eq!(
        plan.code, 0,
        "left-overs are not pending without --prune: {plan:?}"
    );
    assert!(plan.stdout.contains("? stream PAYMENTS"), "{plan:?}");
    assert!(
        plan.stdout
            .contains("? consumer ORDERS > payments-order-completed"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains("2 stored messages"), "{plan:?}");
    assert!(
        plan.stdout.contains(
            "Not managed by this spec, left alone: stream HANDMADE, consumer ORDERS > someone-elses"
        ),
        "{plan:?}"
    );
    let apply = s.streams(&["apply", "-f", &spec]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        names(&js).await.contains(&"PAYMENTS".to_owned()),
        "kept without --prune"
    );

    let plan = s.streams(&["plan", "-f", &spec, "--prune"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("- stream PAYMENTS"), "{plan:?}");
    let apply = s.streams(&["apply", "-f", &spec, "--prune"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(
        apply.stdout.contains("deleted stream PAYMENTS"),
        "{apply:?}"
    );
    assert!(
        apply
            .stdout
            .contains("deleted consumer ORDERS > payments-order-completed"),
        "{apply:?}"
    );
    assert_eq!(
        names(&js).await,
        [
            "EXPIRATION",
            "HANDMADE",
            "ORDERS",
            "PARKED",
            "TICKETS",
            "USERS"
        ]
    );
    let orders = js.get_stream("ORDERS").await.unwrap();
    let mut consumers: Vec<String> = orders.consumer_names().map(|n| n.unwrap()).collect().await;
    consumers.sort();
    assert!(
        consumers.contains(&"someone-elses".to_owned()),
        "{consumers:?}"
    );
    assert!(
        !consumers.contains(&"payments-order-completed".to_owned()),
        "{consumers:?}"
    );
    assert_eq!(s.streams(&["plan", "-f", &spec, "--prune"]).code, 0);
}

#[tokio::test]
async fn apply_waits_for_nats_to_come_up_but_not_forever() {
    let Some(mut s) = server() else { return };
    s.nats.kill();
    let gone = s.streams(&["plan", "--wait", "1s"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stderr.contains("is not ready after 1s"), "{gone:?}");

    let url = s.url();
    let waiting = std::thread::spawn(move || run(&url, &["apply", "--wait", "30s"]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.nats.restart().unwrap();
    let apply = waiting.join().unwrap();
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(apply.stdout.contains("created stream ORDERS"), "{apply:?}");
}

#[test]
fn a_bad_spec_file_is_an_error_naming_the_file_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "streams:\n  - {name: A, owner: a, subjects: [a.>], duplicate_window: forever}\n",
    )
    .unwrap();
    // No server is needed to find out.
    let r = run(
        "nats://127.0.0.1:9",
        &["plan", "-f", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{}: streams[0] (A): duplicate_window",
            path.display()
        )),
        "{r:?}"
    );
    let missing = run(
        "nats://127.0.0.1:9",
        &["apply", "-f", "/nonexistent/streams.yaml"],
    );
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("/nonexistent/streams.yaml: cannot read it"),
        "{missing:?}"
    );
}
