//! `ticketing drill concurrency` end to end: the command starts its own
//! nats-server and replicas of tickets and orders on PostgreSQL, and must
//! report every copy converged and one winner per ticket.

use std::process::Command;

#[test]
fn the_concurrency_drill_passes_on_two_replicas_of_tickets_and_orders() {
    let nats_server =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    if Command::new(&nats_server)
        .arg("--version")
        .output()
        .is_err()
    {
        if store::testing::engines_required() {
            panic!("{nats_server} is required (TICKETING_REQUIRE_ENGINES=1) but cannot run");
        }
        return store::testing::skipped(&format!("{nats_server} cannot run"));
    }
    let database_url = store::testing::postgres_url();
    let reachable = std::net::TcpStream::connect(
        database_url
            .rsplit('@')
            .next()
            .and_then(|hp| hp.split('/').next())
            .unwrap_or("127.0.0.1:5432"),
    )
    .is_ok();
    if !reachable {
        if store::testing::engines_required() {
            panic!("PostgreSQL at {database_url} is required but unreachable");
        }
        return store::testing::skipped(&format!("PostgreSQL at {database_url} is unreachable"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(["drill", "concurrency", "--clients", "40", "--timeout", "30"])
        .args([
            "--nats-server",
            &nats_server,
            "--database-url",
            &database_url,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("ticketing runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drill failed:\n{stdout}\n{stderr}");
    for line in [
        "40 clients, 2 tickets replicas, 2 orders replicas",
        "120 requests",
        "0 failed",
        "40/40 tickets at price 15, version 2",
        "ticket.created: 40 published, 40 handled",
        "ticket.updated: 80 published, 80 handled",
        "40 won, 40 refused with 409, 0 tickets with two winners; at most 1 active order(s)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("PASS"), "{stdout}");
}
