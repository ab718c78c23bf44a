//! The query service's read model: built only from events, whatever their
//! order and however often they come, and rebuilt from the streams' history
//! when it starts on an empty database.

use std::time::Duration;

use blog_events::{CommentCreated, CommentId, CommentStatus, CommentUpdated, PostCreated, PostId};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestApp, eventually};

async fn start(
    deps: runtime::service::Deps,
) -> Result<Vec<runtime::service::Running>, store::StoreError> {
    Ok(vec![blog_query::start(&deps, Default::default()).await?])
}

async fn posts(app: &TestApp) -> Value {
    let res = app.send(Method::GET, "/posts", None, None).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Waits until `GET /posts` answers `expected`; panics with the last answer.
async fn expect_posts(app: &TestApp, expected: &Value) {
    let seen = eventually(Duration::from_secs(20), || async {
        let got = posts(app).await;
        (got == *expected).then_some(())
    })
    .await;
    if seen.is_none() {
        assert_eq!(&posts(app).await, expected);
    }
}

fn created(id: CommentId, post: PostId, content: &str) -> CommentCreated {
    CommentCreated {
        id,
        post_id: post,
        content: content.into(),
        status: CommentStatus::Pending,
        version: 0,
    }
}

fn updated(c: &CommentCreated, status: CommentStatus) -> CommentUpdated {
    CommentUpdated {
        id: c.id,
        post_id: c.post_id,
        content: c.content.clone(),
        status,
        version: 1,
    }
}

#[tokio::test]
async fn every_post_comes_with_its_comments_and_their_statuses() {
    let app = TestApp::spawn_for(blog_events::PRODUCT, start).await;
    let (p1, p2) = (PostId::new(), PostId::new());
    app.publish(&PostCreated {
        id: p1,
        title: "First".into(),
    })
    .await;
    app.publish(&PostCreated {
        id: p2,
        title: "Second".into(),
    })
    .await;
    let a = created(CommentId::new(), p1, "approved one");
    let b = created(CommentId::new(), p1, "rejected one");
    let c = created(CommentId::new(), p1, "still pending");
    for e in [&a, &b, &c] {
        app.publish(e).await;
    }
    app.publish(&updated(&a, CommentStatus::Approved)).await;
    app.publish(&updated(&b, CommentStatus::Rejected)).await;
    expect_posts(
        &app,
        &json!([
            {"id": p1.to_string(), "title": "First", "comments": [
                {"id": a.id.to_string(), "content": "approved one", "status": "approved"},
                {"id": b.id.to_string(), "content": "rejected one", "status": "rejected"},
                {"id": c.id.to_string(), "content": "still pending", "status": "pending"},
            ]},
            {"id": p2.to_string(), "title": "Second", "comments": []},
        ]),
    )
    .await;
}

#[tokio::test]
async fn duplicates_and_events_out_of_order_do_not_corrupt_the_read_model() {
    let app = TestApp::spawn_for(blog_events::PRODUCT, start).await;
    let post = PostId::new();
    let c = created(CommentId::new(), post, "late creation");
    let d = created(CommentId::new(), post, "twice over");
    // The update overtakes the creation, and the comment its post.
    app.publish(&updated(&c, CommentStatus::Rejected)).await;
    app.publish(&c).await;
    app.publish(&d).await;
    app.publish(&updated(&d, CommentStatus::Approved)).await;
    // Every event again.
    app.publish(&d).await;
    app.publish(&c).await;
    app.publish(&updated(&d, CommentStatus::Approved)).await;
    app.publish(&PostCreated {
        id: post,
        title: "Post".into(),
    })
    .await;
    app.publish(&PostCreated {
        id: post,
        title: "Post".into(),
    })
    .await;
    expect_posts(
        &app,
        &json!([{"id": post.to_string(), "title": "Post", "comments": [
            {"id": c.id.to_string(), "content": "late creation", "status": "rejected"},
            {"id": d.id.to_string(), "content": "twice over", "status": "approved"},
        ]}]),
    )
    .await;
}

/// The history: `posts` posts with `per_post` comments each, every other
/// comment approved.
async fn publish_history(app: &TestApp, posts: usize, per_post: usize) -> Value {
    let mut expected = Vec::new();
    for i in 0..posts {
        let post = PostId::new();
        app.publish(&PostCreated {
            id: post,
            title: format!("Post {i}"),
        })
        .await;
        let mut comments = Vec::new();
        for j in 0..per_post {
            let c = created(CommentId::new(), post, &format!("Comment {i}.{j}"));
            app.publish(&c).await;
            let status = if j % 2 == 0 {
                app.publish(&updated(&c, CommentStatus::Approved)).await;
                "approved"
            } else {
                "pending"
            };
            comments.push(json!({"id": c.id.to_string(), "content": c.content, "status": status}));
        }
        expected.push(
            json!({"id": post.to_string(), "title": format!("Post {i}"), "comments": comments}),
        );
    }
    Value::Array(expected)
}

#[tokio::test]
async fn a_query_service_started_late_or_wiped_rebuilds_from_history_then_keeps_up() {
    // 300 events before the query service has ever run.
    let app = TestApp::spawn_for(blog_events::PRODUCT, |_| async {
        Ok::<_, store::StoreError>(vec![])
    })
    .await;
    let expected = publish_history(&app, 60, 3).await;
    let stopped = app.shutdown().await;

    let app = TestApp::spawn_in(stopped, start).await;
    expect_posts(&app, &expected).await;
    // Live after the catch-up.
    let post = PostId::new();
    app.publish(&PostCreated {
        id: post,
        title: "Live".into(),
    })
    .await;
    let mut with_live = expected.as_array().unwrap().clone();
    with_live.push(json!({"id": post.to_string(), "title": "Live", "comments": []}));
    let with_live = Value::Array(with_live);
    expect_posts(&app, &with_live).await;

    // A restart with its data resumes: nothing is read twice or lost.
    let stopped = app.shutdown().await;
    let app = TestApp::spawn_in(stopped, start).await;
    expect_posts(&app, &with_live).await;

    // Wiped: its consumers had read everything, yet it rebuilds it all.
    let stopped = app.shutdown().await;
    stopped.wipe("query").await;
    let app = TestApp::spawn_in(stopped, start).await;
    expect_posts(&app, &with_live).await;
}
