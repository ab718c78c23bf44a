//! The HTTP edge under hostile requests: what they can make `/metrics`
//! hold.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::common::Proc;

/// The series of the HTTP request metrics on a `/metrics` page (name and
/// labels, without the value).
fn http_series(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| l.starts_with("http_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let http = reqwest::Client::new();
    // An API route, an API path no route takes, a page, a path nothing takes.
    let paths = |i: usize| {
        [
            "/api/tickets".to_owned(),
            format!("/api/nothing-{i}"),
            "/".to_owned(),
            format!("/nothing/{i}/here"),
        ]
    };
    let send = |method: String, path: String| {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        http.request(method, format!("{}{path}", p.base)).send()
    };
    // One made-up method on each kind of path first: their series exist.
    for path in paths(0) {
        send("MADEUP".into(), path).await.unwrap();
    }
    let metrics = || async { testkit::get_text(&http, format!("{}/metrics", p.base)).await };
    // The page's own series exist after a first read.
    metrics().await;
    let before = metrics().await;
    for i in 0..3000 {
        // Long, distinct methods: a label made of each would be costly.
        let method = format!("M{i}{}", "X".repeat(i % 200));
        let path = paths(i)[i % 4].clone();
        let res = send(method, path).await.unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let after = metrics().await;
    let added: Vec<_> = http_series(&after)
        .difference(&http_series(&before))
        .take(10)
        .cloned()
        .collect();
    assert!(added.is_empty(), "new series: {added:#?}");
    assert!(
        after.len() < before.len() + 4096,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains(r#"method="OTHER""#), "{after}");
}
