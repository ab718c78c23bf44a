//! The blog as a whole: the moderation flow through the API and the page,
//! and a moderation service that was down judging the backlog when it
//! returns. On SQLite and the embedded bus, or with
//! `TICKETING_TEST_ON_ENGINES=1` on PostgreSQL and JetStream.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{TestApp, eventually};

fn config(services: &[&'static str]) -> blog::Config {
    blog::Config {
        services: services.to_vec(),
        moderation: blog_moderation::Config {
            rules: Arc::new(blog_moderation::Rules::parse("orange").unwrap()),
        },
    }
}

async fn spawn(services: &'static [&'static str]) -> TestApp {
    TestApp::spawn_for(blog_events::PRODUCT, move |deps| async move {
        blog::start(&deps, &config(services)).await
    })
    .await
}

/// Writes a post through the API; returns its id.
async fn post(app: &TestApp, title: &str) -> String {
    let res = app
        .send(
            Method::POST,
            "/posts",
            None,
            Some(json!({ "title": title })),
        )
        .await;
    testkit::created_id(res).await
}

/// Comments on `post` once the comments service knows of it.
async fn comment(app: &TestApp, post: &str, content: &str) -> String {
    let path = format!("/posts/{post}/comments");
    let id = eventually(Duration::from_secs(10), || async {
        let res = app
            .send(
                Method::POST,
                &path,
                None,
                Some(json!({ "content": content })),
            )
            .await;
        if res.status() == StatusCode::CREATED {
            Some(
                res.json::<Value>().await.unwrap()["id"]
                    .as_str()?
                    .to_owned(),
            )
        } else {
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{content}");
            None
        }
    })
    .await;
    id.expect("the comments service never learned of the post")
}

/// The statuses of `post`'s comments in the read model, in order.
async fn statuses(app: &TestApp, post: &str) -> Vec<String> {
    let posts: Value = app
        .send(Method::GET, "/posts", None, None)
        .await
        .json()
        .await
        .unwrap();
    posts
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == post)
        .map(|p| {
            p["comments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["status"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn until_statuses(app: &TestApp, post: &str, expected: &[&str]) {
    let seen = eventually(Duration::from_secs(20), || async {
        (statuses(app, post).await == expected).then_some(())
    })
    .await;
    if seen.is_none() {
        assert_eq!(statuses(app, post).await, expected);
    }
}

#[tokio::test]
async fn a_comment_is_moderated_end_to_end_and_the_page_shows_it() {
    let app = spawn(blog::SERVICES).await;
    // The page, in front of the services over HTTP as in the microservices mode.
    let base = app.url("");
    let api = blog::Upstreams {
        posts: base.clone(),
        comments: base.clone(),
        query: base,
    }
    .api();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, blog::page_router(api)).await.unwrap();
    });
    let browser = reqwest::Client::new();

    let res = browser
        .post(format!("{page_url}/new-post"))
        .form(&[("title", "Fruit")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the redirect leads to the page"
    );
    assert!(
        res.url().as_str().contains("notice=posted"),
        "{}",
        res.url()
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("<h2>Fruit</h2>"), "{html}");
    assert!(html.contains("Your post is published."));

    let posts: Value = app
        .send(Method::GET, "/posts", None, None)
        .await
        .json()
        .await
        .unwrap();
    let post_id = posts[0]["id"].as_str().unwrap().to_owned();
    comment(&app, &post_id, "warming up").await; // the comments service knows the post
    for content in ["I love an Orange", "Apples!"] {
        let res = browser
            .post(format!("{page_url}/posts/{post_id}/new-comment"))
            .form(&[("content", content)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.url().as_str().contains("notice=commented"),
            "{}",
            res.url()
        );
    }
    until_statuses(&app, &post_id, &["approved", "rejected", "approved"]).await;
    let html = testkit::get_text(&browser, &page_url).await;
    assert!(html.contains("Removed by moderation"), "{html}");
    assert!(
        !html.contains("I love an Orange"),
        "a rejected comment's text is shown"
    );
    assert!(html.contains("Apples!"));
    assert!(!html.contains("awaiting moderation"), "{html}");

    // Bad input is shown on the form, with the status the API gave.
    let res = browser
        .post(format!("{page_url}/new-post"))
        .form(&[("title", "  ")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("Title is required"));
}

#[tokio::test]
async fn comments_written_while_moderation_is_down_are_moderated_when_it_returns() {
    let app = spawn(&["posts", "comments", "query"]).await;
    let post_id = post(&app, "Backlog").await;
    for content in ["one", "an orange", "three", "ORANGE!", "five"] {
        comment(&app, &post_id, content).await;
    }
    until_statuses(&app, &post_id, &["pending"; 5]).await;

    let stopped = app.shutdown().await;
    let app = TestApp::spawn_in(stopped, |deps| async move {
        blog::start(&deps, &config(blog::SERVICES)).await
    })
    .await;
    until_statuses(
        &app,
        &post_id,
        &["approved", "rejected", "approved", "rejected", "approved"],
    )
    .await;
}
