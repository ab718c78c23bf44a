//! The provisioning's unit tests: settling, versions, ownership, the
//! catalogue check and the comparison of what the server kept.

use super::*;

/// A freshly started cluster answers 503 until its meta leader is
/// elected: the request is repeated, other refusals are not, and the
/// repeating stops after [`SETTLING`].
#[tokio::test(start_paused = true)]
async fn requests_are_repeated_while_the_cluster_settles_and_only_then() {
    let unavailable = json!({"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"});
    assert!(settling(&unavailable));
    assert!(settling(
        &json!({"code": 400, "err_code": 10005, "description": "no suitable peers for placement"})
    ));
    assert!(!settling(&json!({"code": 404, "err_code": 10059})));

    let refusal = |transient| Err::<Value, _>((ProvisionError::api("refused".into()), transient));
    let mut tries = 0;
    let got = through_settling(|| {
        tries += 1;
        let answer = if tries < 4 {
            refusal(true)
        } else {
            Ok(json!({"ok": tries}))
        };
        async move { answer }
    })
    .await
    .unwrap();
    assert_eq!(got, json!({"ok": 4}));

    let mut tries = 0;
    let err = through_settling(|| {
        tries += 1;
        async move { refusal(false) }
    })
    .await;
    assert!(matches!(err, Err(ProvisionError::Api { .. })));
    assert_eq!(tries, 1, "a plain refusal is not repeated");

    let started = tokio::time::Instant::now();
    let err = through_settling(|| async { refusal(true) }).await;
    assert!(err.is_err());
    assert!(started.elapsed() >= SETTLING, "repeated until the bound");
}

/// A small product of two services for the tests: `shelves` publishes
/// `book.added`, which `loans` consumes.
const FIXTURE: &str = r#"
streams:
  - { name: BOOKS, owner: shelves, subjects: ["book.>"], duplicate_window: 2m }
  - { name: PARKED, owner: platform, subjects: ["parked.>"], max_age: 90d, duplicate_window: 2m }
consumers:
  - { stream: BOOKS, name: loans-book-added, owner: loans, filter_subject: book.added, ack_wait: 5s, max_deliver: 20 }
"#;

const CATALOGUE: &[shared::events::ServiceEvents] = &[
    shared::events::ServiceEvents {
        service: "shelves",
        publishes: &["book.added"],
        consumes: &[],
    },
    shared::events::ServiceEvents {
        service: "loans",
        publishes: &[],
        consumes: &["book.added"],
    },
];

fn fixture() -> Spec {
    Spec::parse(FIXTURE, "fixture.yaml").unwrap()
}

#[test]
fn versions_compare_by_number() {
    assert!(Version::parse("2.9.10") < Version::parse("2.10.0"));
    assert!(Version::parse("2.15.1").at_least_2_10());
    assert!(!Version::parse("2.9.25").at_least_2_10());
    assert_eq!(Version::parse("2.11.0-beta.2"), Version(2, 11, 0));
}

#[test]
fn ownership_is_read_back_from_the_description_or_metadata() {
    let mut c = Map::new();
    c.insert(
        "description".into(),
        json!(marked_description("Ticket events", "tickets")),
    );
    assert_eq!(recorded_owner(&c).as_deref(), Some("tickets"));
    c.insert("description".into(), json!("made by hand"));
    assert_eq!(recorded_owner(&c), None);
    c.insert("metadata".into(), metadata("orders"));
    assert_eq!(recorded_owner(&c).as_deref(), Some("orders"));
}

#[test]
fn a_spec_that_declares_what_the_services_publish_and_consume_agrees() {
    if let Err(problems) = check_catalogue(&fixture(), CATALOGUE) {
        panic!("{}", problems.join("\n"));
    }
}

#[test]
fn a_spec_missing_a_consumer_or_declaring_a_stray_one_disagrees() {
    let mut spec = fixture();
    let removed = spec.consumers[0].clone();
    let mut stray = spec.consumers[0].clone();
    stray.name = "nobody-runs-this".into();
    spec.consumers.push(stray);
    spec.consumers.remove(0);
    let problems = check_catalogue(&spec, CATALOGUE).unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains(&removed.name)),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("nobody-runs-this")),
        "{problems:?}"
    );
}

#[test]
fn a_field_the_server_did_not_keep_is_an_error() {
    let facts = ServerFacts {
        version_text: "2.15.1".into(),
        version: Version(2, 15, 1),
        clustered: false,
    };
    let spec = fixture();
    let mut s = spec.streams[0].clone();
    s.compression = spec::Compression::S2;
    let sent = desired_stream(&s, &facts, &Options::default());
    let mut kept = sent.clone();
    kept.remove("compression");
    kept.insert("max_age".into(), json!(5));
    let e = verify_kept(
        Kind::Stream,
        "stream USERS",
        &sent,
        &json!({ "config": kept }),
        &facts,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("did not keep what was set on stream USERS"),
        "{e}"
    );
    assert!(e.contains("compression is (not set) (sent \"s2\")"), "{e}");
    assert!(e.contains("max_age"), "{e}");
    let reply = json!({ "config": sent.clone() });
    assert!(verify_kept(Kind::Stream, "stream USERS", &sent, &reply, &facts).is_ok());
}

/// The typed configurations send JetStream's names and units: durations in
/// nanoseconds, and the 2.10 fields only to a 2.10 server.
#[test]
fn configurations_go_out_in_the_apis_names_and_units_per_server_version() {
    let facts = |text: &str, version| ServerFacts {
        version_text: text.into(),
        version,
        clustered: false,
    };
    let (old, new) = (
        facts("2.9.10", Version(2, 9, 10)),
        facts("2.15.1", Version(2, 15, 1)),
    );
    let spec = fixture();
    let (s, c) = (&spec.streams[0], &spec.consumers[0]);
    let stream = desired_stream(
        s,
        &old,
        &Options {
            replicas: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(stream["name"], json!(s.name));
    assert_eq!(stream["max_age"], json!(s.max_age.as_nanos() as u64));
    assert_eq!(
        stream["duplicate_window"],
        json!(s.duplicate_window.as_nanos() as u64)
    );
    assert_eq!(stream["num_replicas"], json!(3));
    assert_eq!(stream["storage"], json!(s.storage.api_name()));
    assert!(!stream.contains_key("compression") && !stream.contains_key("metadata"));
    let stream = desired_stream(s, &new, &Options::default());
    assert_eq!(stream["compression"], json!(s.compression.api_name()));
    assert_eq!(recorded_owner(&stream).as_deref(), Some(s.owner.as_str()));

    let consumer = desired_consumer(c, &old);
    assert_eq!(consumer["durable_name"], json!(c.name));
    assert_eq!(consumer["ack_wait"], json!(c.ack_wait.as_nanos() as u64));
    let backoff: Vec<u64> = c.backoff.iter().map(|d| d.as_nanos() as u64).collect();
    assert_eq!(consumer["backoff"], json!(backoff));
    assert_eq!(consumer["ack_policy"], json!(c.ack_policy.api_name()));
    assert!(!consumer.contains_key("metadata"));
    assert!(desired_consumer(c, &new).contains_key("metadata"));
}

#[test]
fn absent_server_fields_count_as_their_defaults() {
    assert!(same("backoff", &json!([]), None));
    assert!(same("description", &json!(""), None));
    assert!(!same("description", &json!("x"), None));
    assert!(same(
        "subjects",
        &json!(["a", "b"]),
        Some(&json!(["b", "a"]))
    ));
    assert!(same(
        "metadata",
        &json!({"k": "v"}),
        Some(&json!({"k": "v", "_nats.ver": "2.15.1"}))
    ));
    assert!(!same("metadata", &json!({"k": "v"}), None));
}

/// The error chain as a log line prints it: each cause once.
fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out
}

#[test]
fn a_spec_that_does_not_parse_keeps_the_parsers_error_as_its_cause_said_once() {
    let e = ProvisionError::from(Spec::parse("streams: [", "x.yaml").unwrap_err());
    let said = chain(&e);
    assert_eq!(said[0], "x.yaml: not a valid spec", "{said:?}");
    assert_eq!(said.len(), 2, "the parser's error, once: {said:?}");
    assert!(!said[1].contains("x.yaml: not a valid spec"), "{said:?}");
}
