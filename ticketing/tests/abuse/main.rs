//! The all-in-one binary attacked as an outsider would, bounded in time:
//! slow and idle connections under a low file limit, SIGTERM with a stuck
//! connection, SIGTERM under write load. Each ends by itself.

mod accounts;
#[path = "../common/mod.rs"]
mod common;
mod edge;
mod retries;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::{Proc, Shopper, free_port};
use reqwest::StatusCode;
use serde_json::json;
use store::{Db, StoreError};

/// Rows left in the outbox of every service database in `dir`.
async fn outbox_rows(dir: &std::path::Path) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for service in ["auth", "tickets", "orders", "expiration", "payments"] {
        let path = dir.join(format!("{service}.db"));
        let db = Db::open_sqlite(&path, &[]).await.unwrap();
        let n = db
            .read(|c| c.query("SELECT COUNT(*) FROM outbox", &[])?[0].get::<i64>(0))
            .await
            .map_err(|e: StoreError| e)
            .unwrap();
        rows.push((service.to_owned(), n));
    }
    rows
}

fn wait_exit(p: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "still running {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_served_while_a_thousand_slow_connections_exhaust_a_low_file_limit() {
    // This process opens the slow connections: it needs the descriptors.
    runtime::serve::raise_open_files_limit();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = Proc::launch(
        port,
        dir.path(),
        900,
        &[("HTTP_HEADER_TIMEOUT_SECONDS", "1".into())],
        Some(256),
    )
    .await;
    // A thousand clients that start a request and never finish its head.
    let mut slow = Vec::new();
    for _ in 0..1000 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /api/tickets HTTP/1.1\r\nHost: x\r\n");
            slow.push(s);
        }
    }
    assert!(slow.len() >= 900, "only {} connected", slow.len());
    let start = Instant::now();
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}/api/tickets", p.base))
        .send()
        .await
        .expect("served despite the slow connections");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    drop(slow);
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_connection_exits_within_the_deadline_and_flushes_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::launch(
        free_port(),
        dir.path(),
        900,
        &[
            ("SHUTDOWN_DEADLINE_SECONDS", "1".into()),
            ("HTTP_HEADER_TIMEOUT_SECONDS", "60".into()),
        ],
        None,
    )
    .await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    seller.sell("Stuck", 10.0).await;
    // Half a request head, and nothing more.
    let mut stuck = std::net::TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    stuck.write_all(b"GET /api/tickets HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    p.terminate();
    let exit = wait_exit(&mut p, Duration::from_secs(10));
    assert!(exit.success(), "{exit}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for (service, n) in outbox_rows(dir.path()).await {
        assert_eq!(n, 0, "{service}'s outbox kept {n} events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_write_load_leaves_every_outbox_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), 900).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    // Writers that keep listing tickets until the server stops answering.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let seller = seller.clone();
            tokio::spawn(async move {
                let mut created = 0;
                for i in 0.. {
                    let res = seller
                        .client
                        .post(format!("{}/api/tickets", seller.base()))
                        .json(&json!({"title": format!("t{w}-{i}"), "price": 5}))
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == StatusCode::CREATED => created += 1,
                        _ => break,
                    }
                }
                created
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.terminate();
    let exit = wait_exit(&mut p, Duration::from_secs(30));
    assert!(exit.success(), "{exit}");
    let mut created = 0;
    for w in writers {
        created += w.await.unwrap();
    }
    assert!(created > 0, "the load wrote nothing");
    for (service, n) in outbox_rows(dir.path()).await {
        assert_eq!(
            n, 0,
            "{service}'s outbox kept {n} events after {created} writes"
        );
    }
}

/// A browser-like client that does not follow redirects, so the test sees
/// where it would be sent.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_next_values_never_redirect_off_site_or_fail() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    Shopper::sign_up(&p.base, "user@example.com").await;
    // Percent-encoded, as they would arrive in a link.
    let hostile = [
        "//evil.example",
        "/%09/evil.example",
        "/%0A/evil.example",
        "/%0D%0A/x",
        "/%0D%0ASet-Cookie:%20a=b",
        "/%5Cevil.example",
        "%5C%5Cevil.example",
        "https:%2F%2Fevil.example",
        "javascript:alert(1)",
        "/%E3%80%80/evil.example",
        "/%ff",
    ];
    for next in hostile {
        let res = sign_in_through_page(
            &browser(),
            &p.base,
            &format!("?next={next}"),
            "user@example.com",
        )
        .await
        .1;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{next}");
        assert_eq!(res.headers()["location"], "/", "{next}");
    }
    // A local path is kept.
    let res = sign_in_through_page(&browser(), &p.base, "?next=/orders", "user@example.com")
        .await
        .1;
    assert_eq!(res.headers()["location"], "/orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_in_page_and_api_paths_get_404_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    let ticket = seller.sell("Show", 10.0).await;
    let order = buyer.buy(&ticket).await;
    let b = &buyer.client;
    // The pages: the not-found page, whatever the id.
    for path in [
        "/tickets/%ff".to_owned(),
        "/tickets/not-an-id".to_owned(),
        format!("/orders/{order}%0A"),
        format!("/tickets/{ticket}%0D%0Aedit/edit"),
    ] {
        let res = b.get(format!("{}{path}", p.base)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
    }
    // Paying through a path with a newline after the id: refused, and the
    // order stays unpaid (it used to be paid, then answered with a 500).
    let html = testkit::get_text(b, format!("{}/orders/{order}", p.base)).await;
    let res = b
        .post(format!("{}/orders/{order}%0A/pay", p.base))
        .form(&[
            ("_csrf", common::form_token(&html).as_str()),
            ("token", "tok_visa"),
        ])
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        buyer.get(&format!("/api/orders/{order}")).await["status"],
        "created"
    );
    // The API: 404 in the shared shape.
    for path in ["/api/tickets/%ff", "/api/orders/%ff", "/api/tickets/%ff%fe"] {
        let res = b.get(format!("{}{path}", p.base)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"errors": [{"message": "Not found"}]}),
            "{path}"
        );
    }
}

/// Unmounts a test's tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system at `dir` until it refuses more.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_503_and_not_ready_and_the_service_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            !store::testing::engines_required(),
            "mounting a tmpfs (as root) is required in CI (TICKETING_REQUIRE_ENGINES=1)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Mounted(dir.path().to_path_buf());
    let metrics_port = free_port();
    let p = Proc::start_with(
        free_port(),
        dir.path(),
        900,
        &[("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))],
    )
    .await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    seller.sell("Before", 10.0).await;

    let filler = fill(dir.path());
    let title = "x".repeat(120);
    let mut refused = None;
    for _ in 0..500 {
        let res = seller
            .post("/api/tickets", json!({"title": title, "price": 10}))
            .await;
        if res.status() != StatusCode::CREATED {
            refused = Some((res.status(), res.text().await.unwrap()));
            break;
        }
    }
    let (status, body) = refused.expect("a write failed on the full disk");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        r#"{"errors":[{"message":"The service cannot store data right now, try again later"}]}"#
    );
    let not_ready = testkit::eventually(Duration::from_secs(10), || async {
        let r = seller
            .client
            .get(format!("{}/readyz", p.base))
            .send()
            .await
            .ok()?;
        let status = r.status();
        let text = r.text().await.ok()?;
        (status == StatusCode::SERVICE_UNAVAILABLE && text.contains("cannot write")).then_some(text)
    })
    .await;
    let public = not_ready.expect("/readyz never reported the full disk");
    // The engine's own words stay inside: the public answer gives reasons
    // alone, the operators' port the error behind each.
    assert!(
        !public.to_lowercase().contains("sqlite") && !public.contains("disk"),
        "{public}"
    );
    let detailed = testkit::get_text(
        &reqwest::Client::new(),
        format!("http://127.0.0.1:{metrics_port}/readyz"),
    )
    .await;
    assert!(
        detailed.contains("the database cannot write: ") && detailed.len() > public.len(),
        "{detailed}"
    );

    std::fs::remove_file(filler).unwrap();
    let ready = testkit::eventually(Duration::from_secs(30), || async {
        let r = seller
            .client
            .get(format!("{}/readyz", p.base))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "/readyz did not recover once space returned"
    );
    seller.sell("After", 10.0).await;
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_requests_from_another_site_are_refused_bearer_clients_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    // A page on another site posting with the victim's cookie.
    for (path, body) in [
        ("/api/tickets", json!({"title": "Forged", "price": 1})),
        ("/api/users/signout", json!({})),
    ] {
        let res = seller
            .client
            .post(format!("{}{path}", p.base))
            .header("sec-fetch-site", "cross-site")
            .header("origin", "https://evil.example")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            res.text().await.unwrap(),
            r#"{"errors":[{"message":"Cross-site requests with a session cookie are refused"}]}"#
        );
    }
    // A page on a sibling subdomain: the same site to the browser, another
    // origin. Its POSTs without a body need no preflight.
    for path in ["/api/users/signout-all", "/api/users/signout"] {
        let res = seller
            .client
            .post(format!("{}{path}", p.base))
            .header("sec-fetch-site", "same-site")
            .header("origin", "https://evil.127.0.0.1.nip.io")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // Still signed in: the forged sign-out did nothing.
    let me = seller.get("/api/users/currentuser").await;
    assert_eq!(me["currentUser"]["email"], "seller@example.com");
    // The same from the site itself passes.
    let res = seller
        .client
        .post(format!("{}/api/tickets", p.base))
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"title": "Mine", "price": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // An API client with a bearer token is not a browser being forged.
    let signin = reqwest::Client::new()
        .post(format!("{}/api/users/signin", p.base))
        .json(&json!({"email": "seller@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let cookie = signin.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie
        .trim_start_matches("session=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let res = reqwest::Client::new()
        .post(format!("{}/api/tickets", p.base))
        .bearer_auth(&token)
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"title": "By API", "price": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// Signs `b` in through the sign-in page at `/auth/signin{query}`: the
/// token the page carried, and the answer to the form.
async fn sign_in_through_page(
    b: &reqwest::Client,
    base: &str,
    query: &str,
    email: &str,
) -> (String, reqwest::Response) {
    let form = b
        .get(format!("{base}/auth/signin{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK, "{query}");
    let token = common::form_token(&form.text().await.unwrap());
    let res = b
        .post(format!("{base}/auth/signin{query}"))
        .form(&[
            ("_csrf", token.as_str()),
            ("email", email),
            ("password", "password123"),
        ])
        .send()
        .await
        .unwrap();
    (token, res)
}

/// Signs `b` in through the sign-in page; the token the page carried.
async fn page_sign_in(b: &reqwest::Client, base: &str, email: &str) -> String {
    let (token, res) = sign_in_through_page(b, base, "", email).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    token
}

async fn new_ticket_form(b: &reqwest::Client, base: &str, token: &str) -> StatusCode {
    b.post(format!("{base}/tickets/new"))
        .form(&[("_csrf", token), ("title", "Form"), ("price", "5")])
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_tokens_are_bound_to_the_session_and_rotate_at_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    Shopper::sign_up(&p.base, "alice@example.com").await;
    Shopper::sign_up(&p.base, "bob@example.com").await;

    let alice = browser();
    let before = page_sign_in(&alice, &p.base, "alice@example.com").await;
    let html = testkit::get_text(&alice, format!("{}/tickets/new", p.base)).await;
    let after = common::form_token(&html);
    assert_ne!(before, after, "signing in rotates the form token");
    assert_eq!(
        new_ticket_form(&alice, &p.base, &before).await,
        StatusCode::FORBIDDEN
    );

    // Another visitor's token is no good for this session, nor this
    // session's for theirs.
    let bob = browser();
    page_sign_in(&bob, &p.base, "bob@example.com").await;
    let bobs =
        common::form_token(&testkit::get_text(&bob, format!("{}/tickets/new", p.base)).await);
    assert_ne!(bobs, after);
    assert_eq!(
        new_ticket_form(&alice, &p.base, &bobs).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        new_ticket_form(&bob, &p.base, &after).await,
        StatusCode::FORBIDDEN
    );

    assert_eq!(
        new_ticket_form(&alice, &p.base, &after).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        new_ticket_form(&bob, &p.base, &bobs).await,
        StatusCode::SEE_OTHER
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = Proc::start(&data, 900).await;
    Shopper::sign_up(&p.base, "user@example.com").await;
    p.stop();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".db") || name == "jwt.key" {
            assert_eq!(mode(&path), 0o600, "{name}");
            files += 1;
        }
    }
    assert!(files >= 7, "only {files} files checked");
}

/// Each connection is a file descriptor: the process raises its soft limit
/// of open files to the hard one at start.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    // Started with a soft limit of 256 under a hard one of 4 096.
    let mut child = std::process::Command::new("prlimit")
        .args([
            "--nofile=256:4096",
            "--",
            env!("CARGO_BIN_EXE_ticketing"),
            "run",
        ])
        .args(["--port", &free_port().to_string(), "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let limits_file = format!("/proc/{}/limits", child.id());
    let soft = testkit::eventually(Duration::from_secs(10), || {
        let limits_file = limits_file.clone();
        async move {
            let text = std::fs::read_to_string(&limits_file).ok()?;
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let soft: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
            (soft == 4096).then_some(soft)
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, Some(4096), "the soft limit stayed at 256");
}

/// In a split deployment `/metrics` stays off the public port: a process
/// without `METRICS_ADDR` does not serve it there, one with it serves it on
/// that address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_process_keeps_metrics_off_its_public_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = drill::cluster::Cluster::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_ticketing")),
        &[("RUST_LOG", "warn".to_owned())],
        drill::cluster::Logs::Inherit,
    );
    let data = |name: &str| {
        (
            "TICKETING_DATA_DIR",
            dir.path().join(name).display().to_string(),
        )
    };
    let unset = cluster
        .spawn(
            "tickets-a",
            "tickets",
            &[data("a"), ("METRICS_ADDR", String::new())],
        )
        .unwrap();
    let given = cluster.spawn("tickets-b", "tickets", &[data("b")]).unwrap();
    cluster.all_ready(Duration::from_secs(30)).await.unwrap();
    let http = reqwest::Client::new();
    for id in [unset, given] {
        let res = http
            .get(format!("{}/metrics", cluster.url(id)))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    let metrics = testkit::get_text(&http, cluster.metrics_url(given)).await;
    assert!(metrics.contains("http_requests_total"), "{metrics}");
}
