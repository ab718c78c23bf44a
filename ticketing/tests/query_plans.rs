//! What a purchase costs in the databases, and that the cost stays flat as
//! the data grows (issue 35): the all-in-one marketplace runs in this
//! process with every SQLite statement's query plan and work recorded
//! (`store::testing::record_plans`). The same purchases (orders, payments,
//! a declined card, the saga, the replicas, the relays, the listings) run
//! twice: on nearly empty stores, then after the buyer and the seller have
//! hundreds of orders and tickets more. SQLite's count of virtual-machine
//! steps is the same on every machine and grows with the rows a statement
//! visits, so a statement whose worst run costs much more the second time
//! is one whose cost grows with the data: the test names it.
//!
//! The plans are printed (`--nocapture`): `docs/performance.md` shows the
//! hot statements' plans from this output.

// The report is the point of `--nocapture`; the harness captures it
// otherwise.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser as _;
use reqwest::StatusCode;
use serde_json::json;
use store::testing::Plan;

mod common;

use common::{Shopper, free_port};

/// Purchases added between the two rounds: the old per-buyer decline
/// count visited each of the buyer's orders (about ten steps each).
const FILL: usize = 150;

/// Statements whose cost may grow with the data, and why that is right.
const ALLOWED_TO_GROW: &[(&str, &str)] = &[
    // Housekeeping once a second, not per request: the pending timers, for
    // the gauge.
    (
        "SELECT COUNT(*) FROM timers",
        "counted at most once a second",
    ),
];

/// A purchase round: `n` tickets sold, ordered, paid; one order paid with
/// a declined card; the listings read.
async fn round(seller: &Shopper, buyer: &Shopper, n: usize, tag: &str) {
    for i in 0..n {
        let ticket = seller.sell(&format!("{tag} {i}"), 10.0).await;
        let order = buyer.buy(&ticket).await;
        let res = buyer.until_paid(&order, "tok_visa").await;
        assert_eq!(res, StatusCode::CREATED);
        buyer.until_complete_and_sold(&order, &ticket).await;
    }
    let ticket = seller.sell(&format!("{tag} declined"), 10.0).await;
    let order = buyer.buy(&ticket).await;
    assert_eq!(
        buyer.until_paid(&order, "tok_chargeDeclined").await,
        StatusCode::PAYMENT_REQUIRED
    );
    buyer.get("/api/orders").await;
    buyer.get("/api/tickets").await;
}

impl Shopper {
    /// Pays `order` with `token` once payments knows it (404 until then);
    /// the answer's status.
    async fn until_paid(&self, order: &str, token: &str) -> StatusCode {
        testkit::eventually(Duration::from_secs(15), || async {
            let res = self
                .post("/api/payments", json!({"orderId": order, "token": token}))
                .await;
            (res.status() != StatusCode::NOT_FOUND).then_some(res.status())
        })
        .await
        .expect("payments learns of the order")
    }
}

fn allowed_to_grow(sql: &str) -> bool {
    ALLOWED_TO_GROW.iter().any(|(s, _)| sql.trim() == *s)
}

/// A statement that reads at most `LIMIT` rows (a page, a batch of
/// messages): its cost is the rows it returns, which a fuller store or a
/// longer backlog raises up to the limit. Its plan must find them in
/// order, without sorting every match first.
fn bounded_by_limit(sql: &str) -> bool {
    sql.contains(" LIMIT ")
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Set in the child this test runs itself as.
const CHILD: &str = "TICKETING_QUERY_PLANS_CHILD";

/// The test runs in a child process of its own (this test binary again,
/// this test alone) with the marketplace's settings in its environment:
/// the marketplace reads them from there, and this crate sets none of its
/// own process's environment (that needs `unsafe`).
#[test]
fn a_purchase_costs_the_same_in_the_databases_on_fuller_stores() {
    if std::env::var_os(CHILD).is_some() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(purchases_on_empty_and_fuller_stores());
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "a_purchase_costs_the_same_in_the_databases_on_fuller_stores",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1");
    let status = common::test_environment(&mut child).output().unwrap();
    // Shown with `--nocapture`, or when the test fails.
    println!("{}", String::from_utf8_lossy(&status.stdout));
    eprintln!("{}", String::from_utf8_lossy(&status.stderr));
    assert!(
        status.status.success(),
        "the test in its child process: {}",
        status.status
    );
}

async fn purchases_on_empty_and_fuller_stores() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    store::testing::record_plans();
    let cli = ticketing::cli::Cli::parse_from([
        "ticketing",
        "run",
        "--port",
        &port.to_string(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    // On a runtime of its own: the future is not `Send`.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(ticketing::main(cli));
    });
    let base = format!("http://127.0.0.1:{port}");
    testkit::eventually(Duration::from_secs(20), || async {
        let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await
    .expect("the marketplace becomes ready");

    let seller = Shopper::sign_up(&base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&base, "buyer@example.com").await;
    // Warm-up: every statement has run once before the first round.
    round(&seller, &buyer, 1, "warm-up").await;

    store::testing::reset_steps();
    round(&seller, &buyer, 3, "empty").await;
    let empty = store::testing::plans();

    // Fuller stores: the buyer's orders and payments, the seller's sold
    // tickets.
    for i in 0..FILL {
        let ticket = seller.sell(&format!("fill {i}"), 10.0).await;
        let order = buyer.buy(&ticket).await;
        assert_eq!(
            buyer.until_paid(&order, "tok_visa").await,
            StatusCode::CREATED
        );
    }

    store::testing::reset_steps();
    round(&seller, &buyer, 3, "full").await;
    let full = store::testing::plans();

    report(&empty, &full);
    let grew: Vec<String> = full
        .iter()
        .filter_map(|(sql, after)| {
            let before = empty.get(sql)?.steps;
            // A few steps more for a deeper B-tree; a statement that
            // visits the buyer's orders would take over a thousand more.
            let grew = after.steps > 2 * before + 100;
            (grew && !allowed_to_grow(sql) && !bounded_by_limit(sql))
                .then(|| format!("{} → {} steps: {}", before, after.steps, one_line(sql)))
        })
        .collect();
    assert!(
        grew.is_empty(),
        "statements that cost more on fuller stores (worst run per round):\n{}",
        grew.join("\n")
    );
    let sorted: Vec<String> = full
        .iter()
        .filter(|(sql, plan)| {
            bounded_by_limit(sql) && plan.lines.iter().any(|l| l.contains("TEMP B-TREE"))
        })
        .map(|(sql, plan)| format!("{}: {:?}", one_line(sql), plan.lines))
        .collect();
    assert!(
        sorted.is_empty(),
        "statements that sort every match to return a few:\n{}",
        sorted.join("\n")
    );
    // The embedded bus fetches for a consumer when something was published
    // to it: about twice per delivery (the fetch that finds it, and the
    // one that finds nothing more), not once per consumer for every event
    // (16 consumers: 399 fetches for 32 deliveries, before).
    let runs = |starts: &str| {
        full.iter()
            .filter(|(sql, _)| sql.trim_start().starts_with(starts))
            .map(|(_, p)| p.runs)
            .sum::<u64>()
    };
    let (fetches, deliveries) = (
        runs("SELECT p.seq, p.deliveries"),
        runs("INSERT INTO pending"),
    );
    assert!(deliveries > 0);
    assert!(
        fetches <= 3 * deliveries,
        "{fetches} fetches for {deliveries} deliveries"
    );
    // The per-buyer decline count reads the payments table alone.
    let declines = full
        .iter()
        .find(|(sql, _)| sql.contains("card_declined = 1") && sql.contains("user_id"))
        .expect("the per-buyer decline count ran");
    assert!(
        declines
            .1
            .lines
            .iter()
            .any(|l| l.contains("payments_card_declines_by_buyer")),
        "{:?}",
        declines.1.lines
    );
}

/// Prints every statement with its plan and its worst run in each round.
fn report(empty: &BTreeMap<String, Plan>, full: &BTreeMap<String, Plan>) {
    for (sql, plan) in full {
        let before = empty.get(sql).map_or(0, |p| p.steps);
        println!(
            "{before:>6} → {:>6} steps, {:>3} runs  {}\n        {}",
            plan.steps,
            plan.runs,
            one_line(sql),
            plan.lines.join("\n        ")
        );
    }
}
