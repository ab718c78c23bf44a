//! The query service: one read model, built only from events. `GET /posts`
//! returns every post with its comments and their statuses in one response
//! (two queries, however many posts). It never calls or reads another
//! service.
//!
//! - `post.created` adds a post; `comment.created` and `comment.updated`
//!   upsert a comment, keeping the highest version seen. Duplicates change
//!   nothing and the order events arrive in does not matter: an update that
//!   overtakes its creation is kept and the creation then ignored, and a
//!   comment that arrives before its post is shown once the post arrives.
//! - **Catch-up.** On an empty database (its first start, or after it was
//!   wiped) it rewinds its durable consumers before they join, so it reads
//!   the streams' whole history from the first message, then keeps up live.
//!   The rewind is recorded in the same database, so a restart with its data
//!   resumes where it left off instead.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use blog_events::{CommentCreated, CommentId, CommentStatus, CommentUpdated, PostCreated, PostId};
use bus::listener::{EventContext, ListenerError, ListenerOptions, Outcome, durable_name};
use bus::{Bus, ConsumerConfig};
use runtime::service::{Deps, Running};
use serde::Serialize;
use shared::ApiError;
use shared::events::Event;
use shared::shutdown::Shutdown;
use std::sync::Arc;
use store::{Db, Migration, StoreError};

pub const SERVICE: &str = "query";

pub static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "the read model, and when it last replayed the streams",
    sql: "CREATE TABLE posts (
              id TEXT PRIMARY KEY,
              title TEXT NOT NULL
          );
          CREATE TABLE comments (
              id TEXT PRIMARY KEY,
              post_id TEXT NOT NULL,
              content TEXT NOT NULL,
              status TEXT NOT NULL,
              version BIGINT NOT NULL
          );
          CREATE INDEX comments_post ON comments (post_id, id);
          CREATE TABLE replays (
              id BIGINT PRIMARY KEY,
              replayed_at BIGINT NOT NULL
          );",
}];

/// A post with its comments, as `GET /posts` returns it.
#[derive(Serialize)]
struct PostView {
    id: PostId,
    title: String,
    comments: Vec<CommentView>,
}

/// A comment in a [`PostView`].
#[derive(Serialize)]
struct CommentView {
    id: CommentId,
    content: String,
    status: CommentStatus,
}

/// Every post with its comments, oldest first.
async fn list(State(db): State<Db>) -> Result<Json<Vec<PostView>>, ApiError> {
    let (posts, comments) = db
        .read(|c| {
            let posts = c
                .query("SELECT id, title FROM posts ORDER BY id", &[])?
                .iter()
                .map(|r| Ok((r.get::<PostId>(0)?, r.get::<String>(1)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let comments = c
                .query(
                    "SELECT id, post_id, content, status FROM comments ORDER BY id",
                    &[],
                )?
                .iter()
                .map(|r| {
                    let status: String = r.get(3)?;
                    let status = CommentStatus::parse(&status).ok_or_else(|| {
                        StoreError::new(
                            store::StoreErrorKind::Decode,
                            format!("bad status {status}"),
                        )
                    })?;
                    Ok((
                        r.get::<CommentId>(0)?,
                        r.get::<PostId>(1)?,
                        r.get::<String>(2)?,
                        status,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok::<_, StoreError>((posts, comments))
        })
        .await?;
    let mut by_post: HashMap<PostId, Vec<CommentView>> = HashMap::new();
    for (id, post_id, content, status) in comments {
        by_post.entry(post_id).or_default().push(CommentView {
            id,
            content,
            status,
        });
    }
    Ok(Json(
        posts
            .into_iter()
            .map(|(id, title)| PostView {
                id,
                comments: by_post.remove(&id).unwrap_or_default(),
                title,
            })
            .collect(),
    ))
}

async fn on_post_created(
    db: Db,
    e: PostCreated,
    _: EventContext,
) -> Result<Outcome, ListenerError> {
    db.write(move |c| {
        c.execute(
            "INSERT INTO posts (id, title) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&e.id, &e.title],
        )
    })
    .await?;
    Ok(Outcome::Done)
}

/// A comment as an event states it at `version`: stored unless a version
/// as high is already there.
async fn upsert_comment(
    db: Db,
    id: CommentId,
    post_id: PostId,
    content: String,
    status: CommentStatus,
    version: i64,
) -> Result<Outcome, ListenerError> {
    db.write(move |c| {
        c.execute(
            "INSERT INTO comments (id, post_id, content, status, version)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE
                 SET post_id = excluded.post_id, content = excluded.content,
                     status = excluded.status, version = excluded.version
                 WHERE excluded.version > comments.version",
            &[&id, &post_id, &content, &status.as_str(), &version],
        )
    })
    .await?;
    Ok(Outcome::Done)
}

/// Before the listeners join: on an empty read model, rewind every durable
/// consumer of this service so the whole history is read again. Retries
/// while the bus cannot (NATS down, streams not yet provisioned), then lets
/// the listeners go.
async fn prepare(
    db: Db,
    bus: Arc<dyn Bus>,
    clock: shared::time::Clock,
    go: tokio::sync::watch::Sender<bool>,
    mut shutdown: Shutdown,
) {
    tokio::select! {
        _ = db.wait_ready() => {}
        _ = shutdown.wait() => return,
    }
    let mut retry = Duration::from_millis(200);
    loop {
        match replay_if_empty(&db, bus.as_ref(), clock.now()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %store::report(&e), "cannot prepare the read model's consumers yet");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.wait() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(10));
            }
        }
    }
    let _ = go.send(true);
}

/// Why the read model's consumers could not be rewound yet (it is retried).
#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("cannot read or record the replay")]
    Store(#[from] StoreError),
    #[error("cannot rewind a consumer")]
    Bus(#[from] bus::BusError),
}

async fn replay_if_empty(
    db: &Db,
    bus: &dyn Bus,
    now: shared::time::Timestamp,
) -> Result<(), ReplayError> {
    let replayed = db
        .read(|c| c.query_opt("SELECT 1 FROM replays WHERE id = 1", &[]))
        .await?
        .is_some();
    if replayed {
        return Ok(());
    }
    for subject in [
        PostCreated::SUBJECT,
        CommentCreated::SUBJECT,
        CommentUpdated::SUBJECT,
    ] {
        bus.rewind(&ConsumerConfig::new(
            durable_name(SERVICE, subject),
            subject,
        ))
        .await?;
    }
    // Recorded only after the rewinds: a crash in between rewinds again,
    // which the idempotent handlers absorb.
    db.write(move |c| {
        c.execute(
            "INSERT INTO replays (id, replayed_at) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
            &[&now],
        )
    })
    .await?;
    tracing::info!("empty read model: reading the streams from their first message");
    Ok(())
}

/// Opens the database and starts the listeners (after the catch-up rewind
/// when the read model is empty); returns the routes.
pub async fn start(deps: &Deps, options: ListenerOptions) -> Result<Running, StoreError> {
    let base = deps
        .open_service(blog_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let db = base.db.clone();
    let (go, gate) = tokio::sync::watch::channel(false);
    let prep = tokio::spawn(prepare(
        db.clone(),
        base.bus(),
        deps.clock.clone(),
        go,
        deps.shutdown.clone(),
    ));
    let mut tasks = base
        .listeners(options)
        .after(gate)
        .with_state(db.clone())
        .on(on_post_created)
        .on(|db, e: CommentCreated, _| {
            upsert_comment(db, e.id, e.post_id, e.content, e.status, e.version)
        })
        .on(|db, e: CommentUpdated, _| {
            upsert_comment(db, e.id, e.post_id, e.content, e.status, e.version)
        })
        .into_tasks();
    tasks.push(prep);
    let router = axum::Router::new()
        .route("/posts", get(list))
        .with_state(db);
    Ok(base.running(router, tasks))
}
