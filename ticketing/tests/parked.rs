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

/// The marketplace in one process on its own engines, with `ADMIN` an
/// admin (signed up); `None` when the engines are optional and missing.
async fn system() -> Option<(common::Engines, Proc, tempfile::TempDir)> {
    let services = ["auth", "tickets", "orders", "expiration", "payments"];
    let engines = engines(&services).await?;
    // DATABASE_URL turns PostgreSQL on; each service then takes its own
    // `<SERVICE>_DATABASE_URL`.
    let mut env = vec![
        ("NATS_URL", engines.nats.url()),
        ("DATABASE_URL", engines.schemas["auth"].url.clone()),
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
    Shopper::sign_up(&proc.base, ADMIN).await;
    engines.grant_admin(ADMIN);
    Some((engines, proc, dir))
}

/// Publishes a `ticket.created` no one can read (orders parks it at once).
async fn publish_unreadable(engines: &common::Engines, id: &str) {
    let client = async_nats::connect(engines.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    js.publish_with_headers("ticket.created", headers, "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The waiting parked messages, once there are `n`.
async fn until_waiting(base: &str, n: usize) -> Vec<Value> {
    let mut waiting = Vec::new();
    for _ in 0..100 {
        waiting = list(base, "parked").await;
        if waiting.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(waiting.len(), n, "{waiting:?}");
    waiting
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_reads_replays_and_discards_a_parked_event_from_the_cli() {
    let Some((engines, proc, _dir)) = system().await else {
        return;
    };
    let base = proc.base.clone();

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
    publish_unreadable(&engines, "unreadable-1").await;
    let waiting = until_waiting(&base, 1).await;
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
    let again = until_waiting(&base, 1).await;
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

/// The same from the admin's pages in the web client: the list, one
/// message whole, Replay and Discard (forms with the CSRF token); not for
/// anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_replays_and_discards_parked_events_from_the_web_pages() {
    let Some((engines, proc, _dir)) = system().await else {
        return;
    };
    let base = proc.base.clone();
    let admin = Shopper::new(&base);
    let res = admin
        .client
        .post(format!("{base}/api/users/signin"))
        .json(&serde_json::json!({"email": ADMIN, "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let ann = Shopper::sign_up(&base, "ann@example.com").await;
    let res = ann
        .client
        .get(format!("{base}/admin/parked"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN);

    let home = admin.page("/").await;
    assert!(
        home.contains("href=\"/admin/parked\""),
        "admins see the link"
    );
    assert!(
        admin
            .page("/admin/parked")
            .await
            .contains("No parked messages waiting")
    );
    publish_unreadable(&engines, "unreadable-page").await;
    let id = until_waiting(&base, 1).await[0]["id"].as_u64().unwrap();

    let list = admin.page("/admin/parked").await;
    assert!(list.contains("orders-ticket-created"), "{list}");
    assert!(list.contains(&format!("Replay {id}")), "{list}");
    let one = admin.page(&format!("/admin/parked/{id}")).await;
    assert!(
        one.contains("not json") && one.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{one}"
    );
    assert!(one.contains("terminated:"), "{one}");

    // Without the form's token the action is refused.
    let res = admin
        .client
        .post(format!("{base}/admin/parked/{id}/replay"))
        .form(&[("_csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN);
    let token = common::form_token(&one);
    let res = admin
        .client
        .post(format!("{base}/admin/parked/{id}/replay"))
        .form(&[("_csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    let after = res.text().await.unwrap();
    assert!(after.contains("Replayed: delivered again"), "{after}");
    // Still unreadable: parked again, as a new record, which is discarded.
    let again = until_waiting(&base, 1).await[0]["id"].as_u64().unwrap();
    assert_ne!(again, id);
    let page = admin.page("/admin/parked").await;
    let token = common::form_token(&page);
    let res = admin
        .client
        .post(format!("{base}/admin/parked/{again}/discard"))
        .form(&[("_csrf", token.as_str()), ("reason", "test data")])
        .send()
        .await
        .unwrap();
    let after = res.text().await.unwrap();
    assert!(after.contains("Discarded."), "{after}");
    assert!(after.contains("No parked messages waiting"), "{after}");
    let all = admin.page("/admin/parked?state=all").await;
    assert!(
        all.contains("replayed") && all.contains("discarded"),
        "{all}"
    );
    proc.stop();
}
