//! The moderation service judges each comment once, by whole banned words.

use std::sync::Arc;
use std::time::Duration;

use blog_events::{CommentCreated, CommentId, CommentModerated, CommentStatus, PostId, Verdict};
use blog_moderation::{Config, Rules};
use testkit::TestApp;

async fn app(banned: &str) -> TestApp {
    let config = Config {
        rules: Arc::new(Rules::parse(banned).unwrap()),
    };
    TestApp::spawn_for(blog_events::PRODUCT, |deps| async move {
        Ok::<_, store::StoreError>(vec![
            blog_moderation::start(&deps, config, Default::default()).await?,
        ])
    })
    .await
}

fn written(content: &str) -> CommentCreated {
    CommentCreated {
        id: CommentId::new(),
        post_id: PostId::new(),
        content: content.into(),
        status: CommentStatus::Pending,
        version: 0,
    }
}

#[tokio::test]
async fn comments_with_banned_words_are_rejected_and_the_rest_approved() {
    let app = app("orange").await;
    let mut verdicts = app.watch::<CommentModerated>().await;
    let clean = written("Apples and oranges");
    let banned = written("I prefer ORANGE.");
    app.publish(&clean).await;
    app.publish(&banned).await;
    let mut got = vec![verdicts.next().await, verdicts.next().await];
    got.sort_by_key(|v| v.id);
    assert_eq!(
        got,
        [
            CommentModerated {
                id: clean.id,
                post_id: clean.post_id,
                status: Verdict::Approved
            },
            CommentModerated {
                id: banned.id,
                post_id: banned.post_id,
                status: Verdict::Rejected
            },
        ]
    );
}

#[tokio::test]
async fn a_comment_delivered_twice_is_judged_once() {
    let app = app("spam").await;
    let mut verdicts = app.watch::<CommentModerated>().await;
    let c = written("spam spam spam");
    app.publish(&c).await;
    app.publish(&c).await;
    assert_eq!(verdicts.next().await.status, Verdict::Rejected);
    assert!(
        verdicts.next_within(Duration::from_secs(1)).await.is_none(),
        "a second verdict"
    );
}
