//! `ticketing parked …` against a running system on JetStream and
//! PostgreSQL: an event no handler can read is parked by the service that
//! consumes it, and an operator finds it, reads it, replays it and — since
//! it fails again — discards it, from the command line alone.

mod common;

use std::process::Output;

use common::{Proc, Shopper, engines, free_port};
use serde_json::Value;

const ADMIN: &str = "ops@example.com";

/// Runs `ticketing parked <args…>` against `base` as the admin.
async fn parked(base: &str, args: &[&str]) -> Output {
    let (base, args): (String, Vec<String>) = (
        base.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .arg("parked")
            .args([
                "--url",
                &base,
                "--email",
                ADMIN,
                "--password",
                "password123",
            ])
            .args(&args)
            .env_remove("TICKETING_TOKEN")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ticketing parked failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn list(base: &str, state: &str) -> Vec<Value> {
    serde_json::from_str(&stdout(
        &parked(base, &["list", "--state", state, "--json"]).await,
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_reads_replays_and_discards_a_parked_event_from_the_cli() {
    let services = ["auth", "tickets", "orders", "expiration", "payments"];
    let Some(engines) = engines(&services).await else {
        return;
    };
    let mut env = vec![
        ("NATS_URL", engines.nats.url()),
        ("ADMIN_EMAILS", ADMIN.to_owned()),
    ];
    let urls: Vec<(String, String)> = services
        .iter()
        .map(|s| {
            (
                format!("{}_DATABASE_URL", s.to_uppercase()),
                engines.schemas[s].url.clone(),
            )
        })
        .collect();
    env.extend(urls.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let dir = tempfile::tempdir().unwrap();
    let proc = Proc::start_with(free_port(), dir.path(), 60, &env).await;
    let base = proc.base.clone();
    Shopper::sign_up(&base, ADMIN).await;

    // Without an admin's session the commands say what they need.
    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
                .args(["parked", "--url", &base, "list"])
                .env_remove("TICKETING_TOKEN")
                .env_remove("TICKETING_ADMIN_EMAIL")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("an admin's session is needed"));
    assert_eq!(
        stdout(&parked(&base, &["list"]).await).trim(),
        "no parked messages"
    );

    // A ticket.created that no one can read: orders parks it at once.
    let client = async_nats::connect(engines.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "unreadable-1");
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    js.publish_with_headers("ticket.created", headers, "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for _ in 0..100 {
        waiting = list(&base, "parked").await;
        if !waiting.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let first = &waiting[0];
    assert_eq!(first["consumer"], "orders-ticket-created");
    assert_eq!(first["messageId"], "unreadable-1");
    assert!(
        first["reason"].as_str().unwrap().starts_with("terminated:"),
        "{first}"
    );
    let id = first["id"].as_u64().unwrap().to_string();
    let table = stdout(&parked(&base, &["list", "--consumer", "orders-ticket-created"]).await);
    assert!(
        table.contains("orders-ticket-created") && table.contains("ticket.created"),
        "{table}"
    );

    let shown: Value = serde_json::from_str(&stdout(&parked(&base, &["show", &id]).await)).unwrap();
    assert_eq!(shown["payload"], "not json");
    assert_eq!(shown["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // Replayed to orders alone; it still cannot be read, so it is parked
    // again as a new record, and the first one says it was replayed.
    let out = stdout(&parked(&base, &["replay", &id]).await);
    assert!(out.starts_with(&format!("replayed 1: [{id}]")), "{out}");
    let mut again = Vec::new();
    for _ in 0..100 {
        again = list(&base, "parked").await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0]["id"], first["id"]);
    assert_eq!(again[0]["messageId"], "unreadable-1");
    let replayed = list(&base, "replayed").await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["id"], first["id"]);
    let out = stdout(&parked(&base, &["replay", &id]).await);
    assert!(
        out.contains("left alone"),
        "a second replay changes nothing: {out}"
    );

    // Discarded with a reason; nothing waits any more.
    let second = again[0]["id"].as_u64().unwrap().to_string();
    let out = stdout(&parked(&base, &["discard", &second, "--reason", "test data"]).await);
    assert_eq!(out.trim(), format!("{second}: discarded"));
    assert!(list(&base, "parked").await.is_empty());
    let discarded = list(&base, "discarded").await;
    assert!(
        discarded[0]["discardReason"]
            .as_str()
            .unwrap()
            .starts_with("test data"),
        "{discarded:?}"
    );
    let out = parked(&base, &["discard", &second, "--reason", "again"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("discarded already"));
    proc.stop();
}
