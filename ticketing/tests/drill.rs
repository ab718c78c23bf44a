//! The drills end to end. `ticketing drill concurrency` starts its own
//! nats-server and replicas of tickets and orders on PostgreSQL, and must
//! report every copy converged and one winner per ticket; `ticketing drill
//! cluster` starts a three-node NATS cluster and the services, kills and
//! restarts nodes under a purchase load, and must find every invariant
//! holding after each fault.

use std::process::Command;

/// The nats-server binary and the PostgreSQL URL the drills use, or `None`
/// (after saying why) when one is missing and engines are optional.
fn engines() -> Option<(String, String)> {
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
        store::testing::skipped(&format!("{nats_server} cannot run"));
        return None;
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
        store::testing::skipped(&format!("PostgreSQL at {database_url} is unreachable"));
        return None;
    }
    Some((nats_server, database_url))
}

/// Runs `ticketing drill <args…>` on the engines, logging at its default
/// level; its report, once it exited 0.
fn drill(args: &[&str], nats_server: &str, database_url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .arg("drill")
        .args(args)
        .args(["--nats-server", nats_server, "--database-url", database_url])
        .env_remove("RUST_LOG")
        .output()
        .expect("ticketing runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drill failed:\n{stdout}\n{stderr}");
    // A drill is a command for people: its own bus connections (a line per
    // connect and close at info) must not bury the report.
    assert!(
        !stderr.contains("INFO async_nats"),
        "the drill logs its bus client's chatter:\n{stderr}"
    );
    stdout
}

#[test]
fn the_concurrency_drill_passes_on_two_replicas_of_tickets_and_orders() {
    let Some((nats_server, database_url)) = engines() else {
        return;
    };
    let stdout = drill(
        &["concurrency", "--clients", "40", "--timeout", "30"],
        &nats_server,
        &database_url,
    );
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

#[test]
fn the_cluster_drill_loses_nothing_when_nats_nodes_die_under_load() {
    let Some((nats_server, database_url)) = engines() else {
        return;
    };
    // Partitions need network namespaces: required in CI, else left out
    // with a visible message.
    let probe = format!("tkprobe{}", std::process::id());
    let namespaces = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if namespaces {
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    } else if store::testing::engines_required() {
        panic!(
            "network namespaces are required (TICKETING_REQUIRE_ENGINES=1): run as root with iproute2"
        );
    } else {
        store::testing::skipped(
            "the cluster drill's partition: network namespaces need root and iproute2",
        );
    }
    let mut args = vec!["cluster", "--rate", "5", "--phase", "8"];
    if !namespaces {
        args.push("--no-partitions");
    }
    let stdout = drill(&args, &nats_server, &database_url);
    for line in [
        "kill -9 ORDERS leader + orders-1",
        "kill -9 an ORDERS follower + tickets-1",
        "rolling restart of 3 nodes + expiration",
        "orders not terminal: ok",
        "tickets sold twice: ok",
        "copies or payments not settled: ok",
        "outbox rows left: ok",
        "read back from the streams): ok",
        "consumers behind: ok",
        "parked messages: 0",
        "processes that died: ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Every phase placed purchases and none failed after retrying.
    let phases: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("kill") || l.starts_with("rolling") || l.starts_with("ORDERS "))
        .collect();
    assert_eq!(phases.len(), if namespaces { 5 } else { 3 }, "{stdout}");
    // The streams the failed node led are named under its row: the ORDERS
    // leader's include ORDERS.
    let led = stdout
        .lines()
        .skip_while(|l| !l.starts_with("kill -9 ORDERS leader"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        led.trim_start().starts_with("the node led") && led.contains("ORDERS"),
        "{stdout}"
    );
    // The process last ready after a heal is named, with what kept it.
    assert!(stdout.contains("    ready last: "), "{stdout}");
    for partition in [
        "ORDERS leader cut off + orders-2 killed",
        "ORDERS follower cut off + payments killed",
    ] {
        assert_eq!(stdout.contains(partition), namespaces, "{stdout}");
    }
    for line in phases {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let numbers: Vec<&str> = cols
            .iter()
            .copied()
            .filter(|c| c.parse::<u64>().is_ok())
            .collect();
        // The last seven: purchases, failed, 503s, longest request,
        // publish wait, ready after, expired first (a fault's name may hold
        // a number too).
        let numbers = &numbers[numbers.len() - 7..];
        assert!(numbers[0].parse::<u64>().unwrap() > 0, "{line}");
        assert_eq!(numbers[1], "0", "failed purchases in: {line}");
    }
    assert!(stdout.trim_end().ends_with("PASS"), "{stdout}");
}
