//! The comments service's HTTP API, and how it reacts to posts and
//! moderation verdicts.

use std::time::Duration;

use blog_events::{
    CommentCreated, CommentModerated, CommentStatus, CommentUpdated, PostCreated, PostId, Verdict,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{TestApp, eventually};

async fn app() -> TestApp {
    TestApp::spawn_for(blog_events::PRODUCT, |deps| async move {
        Ok::<_, store::StoreError>(vec![blog_comments::start(&deps, Default::default()).await?])
    })
    .await
}

/// A post the comments service has heard of.
async fn known_post(app: &TestApp) -> PostId {
    let id = PostId::new();
    app.publish(&PostCreated {
        id,
        title: "A post".into(),
    })
    .await;
    let path = format!("/posts/{id}/comments");
    let known = eventually(Duration::from_secs(10), || async {
        let res = app.send(Method::GET, &path, None, None).await;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(known.is_some(), "post.created never reached comments");
    id
}

async fn comment(app: &TestApp, post: PostId, content: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        &format!("/posts/{post}/comments"),
        None,
        Some(json!({ "content": content })),
    )
    .await
}

#[tokio::test]
async fn a_comment_is_pending_listed_and_announced() {
    let app = app().await;
    let mut created = app.watch::<CommentCreated>().await;
    let post = known_post(&app).await;
    let res = comment(&app, post, " First! ").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(body["content"], "First!");
    assert_eq!(body["postId"], post.to_string());
    let event = created.next().await;
    assert_eq!(event.id.to_string(), body["id"].as_str().unwrap());
    assert_eq!((event.post_id, event.version), (post, 0));
    assert_eq!(event.status, CommentStatus::Pending);

    assert_eq!(
        comment(&app, post, "Second").await.status(),
        StatusCode::CREATED
    );
    let list: Value = app
        .send(Method::GET, &format!("/posts/{post}/comments"), None, None)
        .await
        .json()
        .await
        .unwrap();
    let contents: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["First!", "Second"]);
}

#[tokio::test]
async fn comments_on_posts_that_do_not_exist_are_404() {
    let app = app().await;
    let unknown = PostId::new();
    for path in [
        format!("/posts/{unknown}/comments"),
        "/posts/not-an-id/comments".to_owned(),
    ] {
        let res = app
            .send(Method::POST, &path, None, Some(json!({"content": "hi"})))
            .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(body["errors"][0]["message"].is_string(), "{body}");
        let res = app.send(Method::GET, &path, None, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn bad_content_is_refused() {
    let app = app().await;
    let post = known_post(&app).await;
    let long = "y".repeat(blog_comments::MAX_CONTENT + 1);
    for (body, message) in [
        (json!({}), "Content is required"),
        (json!({"content": ""}), "Content is required"),
        (json!({"content": ["a"]}), "Content must be a string"),
        (
            json!({"content": long}),
            "Content must be at most 2000 characters",
        ),
        (
            json!({"content": "\u{2800}\n\u{3164}"}),
            "Content is required",
        ),
        (
            json!({"content": "hidden\u{2060}joiner"}),
            "Content must not contain control, invisible formatting or text-direction characters",
        ),
        (
            json!({"content": "hi\u{1b}[2J"}),
            "Content must not contain control, invisible formatting or text-direction characters",
        ),
    ] {
        let res = app
            .send(
                Method::POST,
                &format!("/posts/{post}/comments"),
                None,
                Some(body),
            )
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let errors: Value = res.json().await.unwrap();
        assert_eq!(
            errors,
            json!({"errors": [{"message": message, "field": "content"}]})
        );
    }
}

#[tokio::test]
async fn a_verdict_is_applied_once_and_announced_as_an_update() {
    let app = app().await;
    let mut updated = app.watch::<CommentUpdated>().await;
    let post = known_post(&app).await;
    let body: Value = comment(&app, post, "nice post").await.json().await.unwrap();
    let id = blog_events::CommentId::parse(body["id"].as_str().unwrap()).unwrap();
    let verdict = CommentModerated {
        id,
        post_id: post,
        status: Verdict::Rejected,
    };
    app.publish(&verdict).await;
    let event = updated.next().await;
    assert_eq!((event.id, event.version), (id, 1));
    assert_eq!(event.status, CommentStatus::Rejected);
    assert_eq!(event.content, "nice post");
    let list: Value = app
        .send(Method::GET, &format!("/posts/{post}/comments"), None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["status"], "rejected");

    // The same verdict again, or a contradicting one, changes nothing.
    app.publish(&verdict).await;
    app.publish(&CommentModerated {
        status: Verdict::Approved,
        ..verdict
    })
    .await;
    assert!(
        updated.next_within(Duration::from_secs(1)).await.is_none(),
        "a second update for one comment"
    );
    let list: Value = app
        .send(Method::GET, &format!("/posts/{post}/comments"), None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["status"], "rejected");
}
