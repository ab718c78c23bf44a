//! `ticketing blog` as a user runs it: all in one process on the embedded
//! defaults with one command, and as separate processes on JetStream and
//! PostgreSQL with the streams of `deploy/blog-streams.yaml`.

mod common;

use std::time::Duration;

use drill::cluster::{Cluster, Logs};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` every 50 ms until it returns `Some` or `WAIT` passes.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The blog's API, wherever each service runs.
struct Blog {
    http: reqwest::Client,
    posts: String,
    comments: String,
    query: String,
}

impl Blog {
    fn at(base: &str) -> Blog {
        Blog::split(base, base, base)
    }

    fn split(posts: &str, comments: &str, query: &str) -> Blog {
        Blog {
            http: reqwest::Client::new(),
            posts: posts.to_owned(),
            comments: comments.to_owned(),
            query: query.to_owned(),
        }
    }

    async fn post(&self, title: &str) -> String {
        let res = self
            .http
            .post(format!("{}/posts", self.posts))
            .json(&json!({ "title": title }))
            .send()
            .await
            .unwrap();
        testkit::created_id(res).await
    }

    /// Comments once the comments service has heard of the post.
    async fn comment(&self, post: &str, content: &str) {
        let url = format!("{}/posts/{post}/comments", self.comments);
        until("a comment accepted", || async {
            let res = self
                .http
                .post(&url)
                .json(&json!({ "content": content }))
                .send()
                .await
                .ok()?;
            (res.status() == StatusCode::CREATED).then_some(())
        })
        .await;
    }

    async fn read(&self) -> Option<Value> {
        let res = self
            .http
            .get(format!("{}/posts", self.query))
            .send()
            .await
            .ok()?;
        if res.status() != StatusCode::OK {
            return None;
        }
        res.json().await.ok()
    }

    /// Waits until the read model gives `post` comments with `expected` statuses.
    async fn until_statuses(&self, post: &str, expected: &[&str]) -> Value {
        until(&format!("statuses {expected:?}"), || async {
            let all = self.read().await?;
            let statuses: Vec<&str> = all.as_array()?.iter().find(|p| p["id"] == post)?["comments"]
                .as_array()?
                .iter()
                .filter_map(|c| c["status"].as_str())
                .collect();
            (statuses == expected).then_some(all.clone())
        })
        .await
    }
}

#[tokio::test]
async fn the_blog_runs_all_in_one_with_one_command_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_ticketing")),
        &[
            ("BLOG_DATA_DIR", dir.path().display().to_string()),
            ("BLOG_BANNED_WORDS", "orange".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ],
        Logs::Inherit,
    )
    .with_command(&["blog", "run"]);
    let id = cluster.spawn("blog", "all", &[]).unwrap();
    assert!(
        cluster.ready(id, WAIT).await,
        "ticketing blog never became ready"
    );
    let blog = Blog::at(&cluster.url(id));
    let post = blog.post("One command").await;
    blog.comment(&post, "Orange you glad?").await;
    blog.comment(&post, "Nice").await;
    let model = blog.until_statuses(&post, &["rejected", "approved"]).await;

    // The page carries the security headers (the HTTP edge adds them).
    let res = blog.http.get(cluster.url(id)).send().await.unwrap();
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert!(res.headers().contains_key("content-security-policy"));
    let page = testkit::get_text(&blog.http, cluster.url(id)).await;
    assert!(page.contains("<h2>One command</h2>"), "{page}");
    assert!(page.contains("Removed by moderation"));
    assert!(page.contains("Nice"));

    // Killed and started again on the same data: the same read model.
    cluster.kill(id);
    cluster.start(id).unwrap();
    assert!(cluster.ready(id, WAIT).await);
    assert_eq!(blog.read().await, Some(model));
}

#[tokio::test]
async fn the_blog_runs_as_separate_processes_on_jetstream_and_postgres() {
    let services = ["posts", "comments", "moderation", "query"];
    let Some(engines) = common::engines_without_streams(&services).await else {
        return;
    };
    engines.apply_streams(&["blog"]).await;
    let mut cluster = engines
        .cluster(&[("BLOG_BANNED_WORDS", "orange".to_owned())])
        .with_command(&["blog", "run"]);
    let posts = engines.spawn(&mut cluster, "posts", "posts");
    let comments = engines.spawn(&mut cluster, "comments", "comments");
    let query = engines.spawn(&mut cluster, "query", "query");
    let page = cluster
        .spawn(
            "page",
            "web",
            &[
                ("POSTS_URL", cluster.url(posts)),
                ("COMMENTS_URL", cluster.url(comments)),
                ("QUERY_URL", cluster.url(query)),
            ],
        )
        .unwrap();
    cluster.all_ready(WAIT).await.unwrap();
    let blog = Blog::split(
        &cluster.url(posts),
        &cluster.url(comments),
        &cluster.url(query),
    );

    // Moderation is not running: comments wait.
    let post = blog.post("Separate processes").await;
    for content in ["first", "an ORANGE", "third"] {
        blog.comment(&post, content).await;
    }
    blog.until_statuses(&post, &["pending"; 3]).await;
    let html = testkit::get_text(&reqwest::Client::new(), cluster.url(page)).await;
    assert_eq!(html.matches("awaiting moderation").count(), 3, "{html}");

    // Moderation comes up and works through the backlog.
    let moderation = engines.spawn(&mut cluster, "moderation", "moderation");
    assert!(cluster.ready(moderation, WAIT).await);
    let model = blog
        .until_statuses(&post, &["approved", "rejected", "approved"])
        .await;
    let html = testkit::get_text(&reqwest::Client::new(), cluster.url(page)).await;
    assert!(html.contains("Removed by moderation"), "{html}");
    assert!(!html.contains("awaiting moderation"));

    // The query service loses its database and rebuilds it from the streams.
    cluster.kill(query);
    engines.schemas["query"].wipe().await.unwrap();
    cluster.start(query).unwrap();
    assert!(cluster.ready(query, WAIT).await);
    until("the rebuilt read model", || async {
        (blog.read().await? == model).then_some(())
    })
    .await;
    let rows = engines
        .query("query", "SELECT COUNT(*) FROM comments")
        .await;
    assert_eq!(rows, [["3"]]);
}

/// The blog has no accounts: its parked messages are an operator's, through
/// `/api/admin/parked` with `BLOG_ADMIN_TOKEN` (401 without it or with
/// another), from any blog process, and through `ticketing parked --token`.
#[tokio::test]
async fn an_operator_lists_replays_and_discards_the_blogs_parked_messages_with_its_token() {
    const TOKEN: &str = "operator-token-0123456789";
    let services = ["comments", "query"];
    let Some(engines) = common::engines_without_streams(&services).await else {
        return;
    };
    engines.apply_streams(&["blog"]).await;
    let mut cluster = engines
        .cluster(&[
            ("BLOG_ADMIN_TOKEN", TOKEN.to_owned()),
            ("BLOG_PARKED_GAUGES_SECONDS", "1".to_owned()),
        ])
        .with_command(&["blog", "run"]);
    let comments = engines.spawn(&mut cluster, "comments", "comments");
    engines.spawn(&mut cluster, "query", "query");
    cluster.all_ready(WAIT).await.unwrap();
    let admin = format!("{}/api/admin/parked", cluster.url(comments));

    // A post.created nobody can read: comments and query each park it.
    let js = async_nats::jetstream::new(async_nats::connect(engines.nats.url()).await.unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "unreadable-post");
    js.publish_with_headers("post.created", headers, "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&admin).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.get(&admin)
            .bearer_auth("another-token-0123456789")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let waiting = || async {
        let res = http.get(&admin).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        body.as_array().unwrap().clone()
    };
    let parked = until("both consumers parked it", || async {
        let list = waiting().await;
        (list.len() == 2).then_some(list)
    })
    .await;
    let mut consumers: Vec<&str> = parked
        .iter()
        .map(|p| p["consumer"].as_str().unwrap())
        .collect();
    consumers.sort_unstable();
    assert_eq!(consumers, ["comments-post-created", "query-post-created"]);
    // The gauges the alerts read, from the blog's own processes.
    let metrics = cluster.metrics_url(comments);
    until("the parked gauge", || async {
        let text = http.get(&metrics).send().await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| l == "bus_parked_waiting{consumer=\"comments-post-created\"} 1")
            .then_some(())
    })
    .await;

    // From the command line, with the token: discard one, replay the other
    // (it fails again: parked again as a new record).
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(["parked", "--url", &cluster.url(comments), "--token", TOKEN])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let record = |consumer: &str| {
        parked.iter().find(|p| p["consumer"] == consumer).unwrap()["id"]
            .as_u64()
            .unwrap()
            .to_string()
    };
    let listed = cli(&["list", "--consumer", "query-post-created"]);
    assert!(listed.contains("query-post-created"), "{listed}");
    cli(&[
        "discard",
        &record("query-post-created"),
        "--reason",
        "test data",
    ]);
    cli(&["replay", &record("comments-post-created")]);
    let again = until("the replay parked again", || async {
        let list = waiting().await;
        (list.len() == 1
            && list[0]["id"].as_u64().unwrap().to_string() != record("comments-post-created"))
        .then_some(list)
    })
    .await;
    assert_eq!(again[0]["consumer"], "comments-post-created");
    let all: Vec<Value> =
        serde_json::from_str(&cli(&["list", "--state", "all", "--json"])).unwrap();
    let discarded = all
        .iter()
        .find(|p| p["state"] == "discarded")
        .expect("the discarded record stays");
    assert!(
        discarded["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("test data")
            || discarded.to_string().contains("test data (operator)"),
        "{discarded}"
    );
}
