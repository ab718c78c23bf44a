//! The OpenAPI description and the routes agree, both ways.
//!
//! - Every operation the spec describes is routed: the all-in-one binary is
//!   asked each one, and `/metrics` shows which route template took it.
//! - Every route is described: the services register routes only together
//!   with their description (`utoipa_axum::routes!`); any plain `.route("…")`
//!   left in the code must be a path the spec describes (web pages aside).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

fn spec() -> Value {
    serde_json::to_value(ticketing::docs::openapi()).unwrap()
}

fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[test]
fn the_spec_is_openapi_3_1_with_the_shared_error_shape_and_both_sessions() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["session"]["in"], "cookie");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let ops = operations(&spec);
    assert_eq!(ops.len(), 31, "{ops:?}");
    // Every operation lists the statuses any request may get, each error
    // in the shared shape.
    for (method, path) in &ops {
        let op = &spec["paths"][path][method.to_lowercase()];
        for status in ["500", "503"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} {status}"
            );
        }
        if op["requestBody"].is_object() {
            for status in ["400", "413", "415"] {
                let r = &op["responses"][status];
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        if op["security"].is_array() {
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
        }
    }
    let create = &spec["paths"]["/api/tickets"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TicketInput"
    );
}

/// `docs/api.md`, the contract people read.
fn api_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap()
}

#[test]
fn docs_api_md_lists_every_operation_the_code_serves() {
    let doc = api_md();
    let mut missing = Vec::new();
    for (method, path) in operations(&spec()) {
        // The contract writes path parameters as `:id`.
        let path = path.replace('{', ":").replace('}', "");
        let entry = format!("`{method} {path}`");
        if !doc.contains(&entry) {
            missing.push(entry);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md does not list {missing:?}: every contract change lands there too"
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_route_in_the_code_is_described() {
    let spec = spec();
    let paths: BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates = vec![root.join("ticketing")];
    for layer in ["platform", "marketplace"] {
        for krate in std::fs::read_dir(root.join(layer)).unwrap() {
            crates.push(krate.unwrap().path());
        }
    }
    let mut files = Vec::new();
    for krate in crates {
        // The web client's routes are HTML pages, not the API; the load
        // generator's trivial handler is its own baseline, not ours.
        if krate.ends_with("web") || krate.ends_with("loadgen") {
            continue;
        }
        if krate.join("src").is_dir() {
            rust_files(&krate.join("src"), &mut files);
        }
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices(".route(") {
            let rest = text[i + ".route(".len()..].trim_start();
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let path = &literal[..literal.find('"').unwrap()];
            assert!(
                paths.contains(path),
                "{}: route {path} is not in the OpenAPI description; register it with \
                 utoipa_axum::routes! and a #[utoipa::path] annotation",
                file.display()
            );
            checked += 1;
        }
        // Services register their routes with their descriptions.
        let service = ["auth", "tickets", "orders", "payments"]
            .iter()
            .any(|s| file.starts_with(root.join("marketplace").join(s)));
        if service {
            assert!(
                !text.contains(".route("),
                "{}: a service route registered without its description",
                file.display()
            );
        }
    }
    assert!(checked >= 2, "the scan found the docs routes");
}

struct Server {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn all_in_one() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = provision::local::free_port().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(["run", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .env("COOKIE_SECURE", "false")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let ready = testkit::eventually(Duration::from_secs(20), || async {
        let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "the binary became ready");
    Server {
        child,
        base,
        _dir: dir,
    }
}

#[tokio::test]
async fn every_described_operation_is_routed_and_the_docs_are_served() {
    let server = all_in_one().await;
    let served: Value = testkit::get_json(
        &reqwest::Client::new(),
        format!("{}/api/docs/openapi.json", server.base),
    )
    .await;
    assert_eq!(
        served,
        spec(),
        "the served description is the generated one"
    );
    let viewer = reqwest::get(format!("{}/api/docs", server.base))
        .await
        .unwrap();
    assert_eq!(viewer.status(), 200);
    let page = viewer.text().await.unwrap();
    assert!(page.contains("/api/docs/assets/swagger-ui-bundle.js"));
    // Titled after the API the product assembled.
    assert!(page.contains("<title>ticketing API</title>"), "{page}");
    let bundle = reqwest::get(format!(
        "{}/api/docs/assets/swagger-ui-bundle.js",
        server.base
    ))
    .await
    .unwrap();
    assert_eq!(bundle.status(), 200);

    let client = reqwest::Client::new();
    for (method, path) in operations(&served) {
        let concrete = path
            .replace("{id}", "01a20000-0000-7000-8000-000000000000")
            .replace("{file}", "init.js");
        let mut req = client.request(
            method.parse().unwrap(),
            format!("{}{concrete}", server.base),
        );
        if method != "GET" && method != "DELETE" {
            req = req.json(&serde_json::json!({}));
        }
        req.send().await.unwrap();
    }
    let metrics =
        testkit::get_text(&reqwest::Client::new(), format!("{}/metrics", server.base)).await;
    for (method, path) in operations(&served) {
        let series = format!("http_requests_total{{method=\"{method}\",route=\"{path}\",");
        assert!(
            metrics.contains(&series),
            "{method} {path} was not routed by a route of that template:\n{metrics}"
        );
    }
}

/// `/metrics` of the all-in-one process names what the README lists.
#[tokio::test]
async fn metrics_cover_requests_events_outboxes_pools_and_timers() {
    let server = {
        let dir = tempfile::tempdir().unwrap();
        let port = provision::local::free_port().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(["run", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .env("COOKIE_SECURE", "false")
            .env("ORDER_EXPIRATION_SECONDS", "1")
            .spawn()
            .unwrap();
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    };
    let base = server.base.clone();
    assert!(
        testkit::eventually(Duration::from_secs(20), || async {
            reqwest::get(format!("{base}/readyz"))
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await
        .is_some()
    );
    let user = |email: &'static str| {
        let base = base.clone();
        async move {
            let c = reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .unwrap();
            let res = c
                .post(format!("{base}/api/users/signup"))
                .json(&serde_json::json!({"email": email, "password": "password123"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            c
        }
    };
    let (seller, buyer) = (user("s@example.com").await, user("b@example.com").await);
    let ticket: Value = seller
        .post(format!("{base}/api/tickets"))
        .json(&serde_json::json!({"title": "Metered", "price": 9}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ordered = testkit::eventually(Duration::from_secs(10), || async {
        let res = buyer
            .post(format!("{base}/api/orders"))
            .json(&serde_json::json!({"ticketId": ticket["id"]}))
            .send()
            .await
            .ok()?;
        (res.status() == 201).then_some(())
    })
    .await;
    assert!(ordered.is_some());
    // The one-second hold runs out; its timer fires and is measured.
    let metrics = testkit::eventually(Duration::from_secs(15), || async {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // Fired, and the scheduler has counted what is left since.
        (text.contains("expiration_lateness_seconds_count 1")
            && text.contains("expiration_timers_pending 0"))
        .then_some(text)
    })
    .await
    .expect("the timer fired");
    for series in [
        "http_requests_total{method=\"POST\",route=\"/api/tickets\",status=\"201\"} 1",
        "http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/orders\",le=\"+Inf\"}",
        "events_published_total{service=\"tickets\",subject=\"ticket.created\"} 1",
        "events_handled_total{service=\"orders\",subject=\"ticket.created\"} 1",
        "outbox_pending{service=\"orders\"}",
        "outbox_oldest_age_seconds{service=\"tickets\"}",
        "db_connections{service=\"payments\"} 1",
        "db_transactions_in_flight{service=\"auth\"}",
        "expiration_timers_pending 0",
        "# TYPE expiration_lateness_seconds histogram",
    ] {
        assert!(metrics.contains(series), "missing {series}:\n{metrics}");
    }
}

/// In the all-in-one process the pages pass the same HTTP edge as the API:
/// a request id on every answer, request metrics by route, and the 404s
/// in the right shape (HTML for pages, JSON under the API).
#[tokio::test]
async fn pages_and_the_api_pass_one_http_edge() {
    let server = all_in_one().await;
    let client = reqwest::Client::new();
    let page = client
        .get(format!("{}/", server.base))
        .header("x-request-id", "page-1")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-request-id"], "page-1");
    let api = client
        .get(format!("{}/api/tickets", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(api.headers()["x-request-id"].len(), 32);

    let missing_page = client
        .get(format!("{}/no/such/page", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_page.status(), 404);
    assert!(missing_page.headers().contains_key("x-request-id"));
    assert!(
        missing_page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let missing_api = client
        .get(format!("{}/api/no/such/thing", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_api.status(), 404);
    let body: Value = missing_api.json().await.unwrap();
    assert_eq!(body["errors"][0]["message"], "Not found");

    let metrics =
        testkit::get_text(&reqwest::Client::new(), format!("{}/metrics", server.base)).await;
    assert!(
        metrics.contains("http_requests_total{method=\"GET\",route=\"/\",status=\"200\"}"),
        "the landing page is counted:\n{metrics}"
    );
    assert!(
        metrics.contains("route=\"unmatched\",status=\"404\""),
        "what no route took is counted:\n{metrics}"
    );
    // The landing page read the tickets through the API in process: that
    // call is part of the page's request, counted once as the page; the
    // one request from outside to /api/tickets is the only one there.
    assert!(
        metrics.contains(
            "http_requests_total{method=\"GET\",route=\"/api/tickets\",status=\"200\"} 1\n"
        ),
        "a page's in-process API call is not counted again:\n{metrics}"
    );
}
