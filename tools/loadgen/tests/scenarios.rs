//! The load generator against a real all-in-one marketplace (in this test's
//! process, on the embedded defaults): each scenario runs briefly, reports
//! JSON of the documented shape, and its correctness checks pass.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The `ticketing` binary: `TICKETING_BIN`, else the one cargo built
/// beside this test (`cargo test --workspace` builds it; the load generator
/// does not depend on the binary's crate, so `cargo test -p loadgen` alone
/// needs `cargo build -p ticketing` first).
fn ticketing_bin() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("TICKETING_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("ticketing"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ticketing` (or set TICKETING_BIN)",
        bin.display()
    );
    bin
}

/// The all-in-one marketplace, a child process on the embedded defaults;
/// killed when dropped.
struct Marketplace {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Marketplace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the marketplace on a free port; returns its URL and the guard
/// that stops it.
async fn marketplace(order_expiration: Duration) -> (String, Marketplace) {
    let dir = tempfile::tempdir().unwrap();
    let port = provision::local::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(ticketing_bin())
        .args(["run", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("TICKETING_SERVICES")
        .env_remove("STRIPE_SECRET_KEY")
        .env("AUTH_RATE_LIMIT_PER_MINUTE", "1000000")
        .env("MAX_ACTIVE_ORDERS_PER_USER", "1000")
        .env(
            "ORDER_EXPIRATION_SECONDS",
            order_expiration.as_secs().to_string(),
        )
        .env("JWT_KEY", "loadgen-test-key-0123456789")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let guard = Marketplace { child, _dir: dir };
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return (url, guard);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the marketplace at {url} did not become ready");
}

/// Runs loadgen (off the test's runtime) and parses its JSON report.
async fn loadgen(args: Vec<String>) -> (bool, Value) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(&args)
            .arg("--json")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), report)
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn op<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

fn checks_pass(report: &Value) {
    for c in report["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_reports_figures_and_passes_its_checks() {
    let (url, _marketplace) = marketplace(Duration::from_secs(2)).await;
    let plot = tempfile::NamedTempFile::with_suffix(".svg").unwrap();

    let (ok, browse) = loadgen(args(&[
        "browse",
        "--url",
        &url,
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "-c",
        "4",
        "--tickets",
        "20",
        "--baseline",
        "--plot",
        plot.path().to_str().unwrap(),
    ]))
    .await;
    assert!(ok);
    checks_pass(&browse);
    let show = op(&browse, "show");
    assert!(show["ok"].as_u64().unwrap() > 0);
    assert_eq!(show["errors"], 0);
    assert!(show["p50_ms"].as_f64().unwrap() <= show["p99_ms"].as_f64().unwrap());
    assert!(show["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    let cmp = &browse["comparisons"][0];
    assert_eq!(cmp["what"], "GET /api/tickets/:id");
    assert!(
        cmp["limit"].as_f64().unwrap() > 0.0,
        "the trivial handler was measured"
    );
    let svg = std::fs::read_to_string(plot.path()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("show p99"));

    let (ok, purchase) = loadgen(args(&[
        "purchase",
        "--url",
        &url,
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "4",
        // One buyer: more orders than one page of `GET /api/orders`, which
        // the completion check must read to the end.
        "--buyers",
        "1",
        "--tickets",
        "200",
        "--rate",
        "100",
        "--baseline",
    ]))
    .await;
    assert!(ok, "{purchase:#}");
    checks_pass(&purchase);
    let paid = op(&purchase, "pay")["ok"].as_u64().unwrap();
    assert!(paid > 50, "open loop at 100/s for 1 s: {paid} paid");
    assert_eq!(op(&purchase, "order")["ok"].as_u64().unwrap(), paid);
    assert!(purchase["comparisons"][0]["limit"].as_f64().unwrap() > 0.0);
    // The cascade's raw minimum on the same engine (SQLite), beside the
    // purchases.
    let cascade = &purchase["comparisons"][1];
    assert!(
        cascade["limit_what"]
            .as_str()
            .unwrap()
            .starts_with("raw minimum of the purchase cascade")
            && cascade["limit"].as_f64().unwrap() > 0.0,
        "{purchase:#}"
    );
    assert!(
        purchase["memory"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["peak_mb"].as_f64().unwrap() >= m["idle_mb"].as_f64().unwrap())
    );

    let (ok, contention) = loadgen(args(&[
        "contention",
        "--url",
        &url,
        "--buyers",
        "60",
        "--tickets",
        "6",
    ]))
    .await;
    assert!(ok, "{contention:#}");
    checks_pass(&contention);
    let answers = &op(&contention, "order")["answers"];
    assert_eq!(answers["201"], 6);
    assert_eq!(answers["409"], 54);

    let (ok, expiry) = loadgen(args(&[
        "expiry", "--url", &url, "--orders", "30", "--sample", "30", "--poll", "20ms",
    ]))
    .await;
    assert!(ok, "{expiry:#}");
    checks_pass(&expiry);
    let figures = expiry["figures"].as_array().unwrap();
    assert!(figures.iter().any(|f| {
        f["what"]
            .as_str()
            .unwrap()
            .starts_with("client-seen lateness p99")
    }));
    assert!(figures.iter().any(|f| {
        f["what"]
            .as_str()
            .unwrap()
            .starts_with("scheduler lateness p99")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_scenario_compares_the_embedded_path_with_raw_sqlite() {
    let (ok, report) = loadgen(args(&[
        "events",
        "--bus",
        "embedded",
        "--events",
        "300",
        "--writers",
        "2",
        "--consumers",
        "2",
    ]))
    .await;
    assert!(ok);
    let c = &report["comparisons"][0];
    assert!(
        c["figure"].as_f64().unwrap() > 0.0 && c["limit"].as_f64().unwrap() > 0.0,
        "{c}"
    );
}

#[test]
fn a_target_that_cannot_be_reached_is_an_error_not_a_report() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["browse", "--url", "http://127.0.0.1:9", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // What was being done, and why it failed, down to the cause.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

/// `loadgen fill`, small: the rows it writes are the ones asked for, read
/// back through the API, and purchases on the full stores pass every
/// check (a schema change the fill misses fails here).
async fn fill_small(database_url: Option<&str>) {
    let bin = ticketing_bin();
    let mut list = vec![
        "fill",
        "--binary",
        bin.to_str().unwrap(),
        "--users",
        "300",
        "--tickets",
        "2000",
        "--orders",
        "3000",
        "--rounds",
        "1",
        "--listed",
        "100",
        "--buyers",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ];
    if let Some(url) = database_url {
        list.extend(["--database-url", url]);
    }
    let (ok, report) = loadgen(args(&list)).await;
    assert!(ok, "{report:#}");
    checks_pass(&report);
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "filled rows answer through the API"),
        "{report:#}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "every paid order completes (full stores, round 1)"),
        "{report:#}"
    );
    // Every order of the first 2 000 that is even completed: 1 000 paid;
    // 3 000 orders on 2 000 tickets, in both services that replicate them.
    let rows = &report["settings"]["rows"];
    for (table, n) in [
        ("auth.users", 300),
        ("tickets.tickets", 2000),
        ("tickets.orders", 3000),
        ("orders.tickets", 2000),
        ("orders.orders", 3000),
        ("orders.buyers", 300),
        ("payments.orders", 3000),
        ("payments.payments", 1000),
    ] {
        assert_eq!(rows[table], n, "{table}: {report:#}");
    }
    let c = &report["comparisons"][0];
    assert!(
        c["figure"].as_f64().unwrap() > 0.0 && c["limit"].as_f64().unwrap() > 0.0,
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fill_scenario_fills_sqlite_stores_that_the_marketplace_serves() {
    fill_small(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fill_scenario_fills_postgresql_stores_that_the_marketplace_serves() {
    // A scratch schema as the probe: it skips or fails as the other engine
    // suites do when PostgreSQL is away.
    let Some(_probe) = store::testing::postgres_schema().await else {
        return;
    };
    let url = store::testing::postgres_url();
    fill_small(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_scenario_times_the_binary_to_ready() {
    let bin = ticketing_bin();
    let (ok, report) = loadgen(args(&[
        "startup",
        "--binary",
        bin.to_str().unwrap(),
        "--runs",
        "1",
    ]))
    .await;
    assert!(ok, "{report:#}");
    let ready = report["figures"][0]["value"].as_f64().unwrap();
    assert!(ready > 0.0 && ready < 30_000.0, "{report:#}");
    let idle = report["figures"][1]["value"].as_f64().unwrap();
    assert!(idle > 0.0, "{report:#}");
}
