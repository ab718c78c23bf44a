//! The posts service's HTTP API and the event it publishes.

use blog_events::PostCreated;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::TestApp;

async fn app() -> TestApp {
    TestApp::spawn_for(blog_events::PRODUCT, |deps| async move {
        Ok::<_, store::StoreError>(vec![blog_posts::start(&deps).await?])
    })
    .await
}

#[tokio::test]
async fn a_post_is_created_and_announced() {
    let app = app().await;
    let mut created = app.watch::<PostCreated>().await;
    let res = app
        .send(
            Method::POST,
            "/posts",
            None,
            Some(json!({"title": "  Hello, world  "})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["title"], "Hello, world");
    let event = created.next().await;
    assert_eq!(event.id.to_string(), body["id"].as_str().unwrap());
    assert_eq!(event.title, "Hello, world");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn bad_titles_are_refused_in_the_shared_error_shape() {
    let app = app().await;
    let long = "x".repeat(blog_posts::MAX_TITLE + 1);
    for (body, message) in [
        (json!({}), "Title is required"),
        (json!({"title": "   "}), "Title is required"),
        (json!({"title": 7}), "Title must be a string"),
        (
            json!({"title": long}),
            "Title must be at most 200 characters",
        ),
        (json!({"title": "\u{200D}\u{3164}"}), "Title is required"),
        (
            json!({"title": "\u{200B}\u{FEFF}"}),
            "Title must not contain control, invisible formatting or text-direction characters",
        ),
        (
            json!({"title": "a\u{202E}b"}),
            "Title must not contain control, invisible formatting or text-direction characters",
        ),
        (
            json!({"title": "two\nlines"}),
            "Title must not contain control, invisible formatting or text-direction characters",
        ),
    ] {
        let res = app.send(Method::POST, "/posts", None, Some(body)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let errors: Value = res.json().await.unwrap();
        assert_eq!(
            errors,
            json!({"errors": [{"message": message, "field": "title"}]})
        );
    }
    let res = app
        .client
        .post(app.url("/posts"))
        .body("title=x")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = app.send(Method::DELETE, "/posts", None, None).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let errors: Value = res.json().await.unwrap();
    assert!(errors["errors"][0]["message"].is_string(), "{errors}");
}
