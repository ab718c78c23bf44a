//! The comments service: owns `comments`.
//!
//! - `POST /posts/{id}/comments {content}` writes a comment, `pending`, and
//!   publishes `comment.created` in the same transaction.
//! - `GET /posts/{id}/comments` lists a post's comments, oldest first.
//! - On `post.created` it records that the post exists (a comment on a post
//!   that does not is a 404).
//! - On `comment.moderated` it stores the verdict, bumps the comment's
//!   version and publishes `comment.updated`, once: a verdict on a comment
//!   that is no longer pending is a duplicate and changes nothing.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use blog_events::{
    CommentCreated, CommentId, CommentModerated, CommentStatus, CommentUpdated, PostCreated, PostId,
};
use bus::listener::{EventContext, ListenerError, ListenerOptions, Outcome};
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox};
use runtime::service::{Deps, Running};
use serde::{Deserialize, Serialize};
use shared::ApiError;
use shared::http::{IdPath, ValidJson};
use shared::time::Clock;
use shared::trace::TraceContext;
use shared::wire::{Check, Field, Validate};
use store::{Conn, Db, Migration, Row, StoreError};

pub const SERVICE: &str = "comments";

/// The longest comment, in characters.
pub const MAX_CONTENT: usize = 2000;

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "comments and the posts they may be written on",
        sql: "CREATE TABLE posts (
                  id TEXT PRIMARY KEY
              );
              CREATE TABLE comments (
                  id TEXT PRIMARY KEY,
                  post_id TEXT NOT NULL,
                  content TEXT NOT NULL,
                  status TEXT NOT NULL,
                  version BIGINT NOT NULL,
                  created_at BIGINT NOT NULL
              );
              CREATE INDEX comments_post ON comments (post_id, id);",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
];

#[derive(Clone)]
struct AppState {
    db: Db,
    outbox: Outbox,
    clock: Clock,
}

struct Comment {
    id: CommentId,
    post_id: PostId,
    content: String,
    status: CommentStatus,
    version: i64,
}

const COLUMNS: &str = "id, post_id, content, status, version";

impl Comment {
    fn from_row(r: &Row) -> Result<Comment, StoreError> {
        let status: String = r.get(3)?;
        Ok(Comment {
            id: r.get(0)?,
            post_id: r.get(1)?,
            content: r.get(2)?,
            status: CommentStatus::parse(&status).ok_or_else(|| {
                StoreError::new(
                    store::StoreErrorKind::Decode,
                    format!("bad status {status}"),
                )
            })?,
            version: r.get(4)?,
        })
    }
}

/// A comment as the API returns it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CommentBody {
    id: CommentId,
    post_id: PostId,
    content: String,
    status: CommentStatus,
}

impl From<&Comment> for CommentBody {
    fn from(c: &Comment) -> Self {
        CommentBody {
            id: c.id,
            post_id: c.post_id,
            content: c.content.clone(),
            status: c.status,
        }
    }
}

/// What a reader sends: 1 to [`MAX_CONTENT`] characters (trimmed).
#[derive(Deserialize)]
struct CommentInput {
    content: Field<String>,
}

impl Validate for CommentInput {
    /// The content, trimmed.
    type Valid = String;

    fn validate(self, check: &mut Check) -> Option<String> {
        check.text(self.content, "content", "Content", MAX_CONTENT)
    }
}

fn post_exists(c: &mut dyn Conn, id: PostId) -> Result<bool, StoreError> {
    Ok(c.query_opt("SELECT 1 FROM posts WHERE id = $1", &[&id])?
        .is_some())
}

/// Writes a comment, pending; publishes `comment.created`.
async fn create(
    State(state): State<AppState>,
    IdPath(post_id): IdPath<PostId>,
    trace: TraceContext,
    ValidJson(content): ValidJson<CommentInput>,
) -> Result<(StatusCode, Json<CommentBody>), ApiError> {
    let comment = Comment {
        id: CommentId::new(),
        post_id,
        content,
        status: CommentStatus::Pending,
        version: 0,
    };
    let now = state.clock.now();
    let event = CommentCreated {
        id: comment.id,
        post_id,
        content: comment.content.clone(),
        status: comment.status,
        version: comment.version,
    };
    let written = state
        .outbox
        .write(move |c| {
            if !post_exists(c, event.post_id)? {
                return Ok(false);
            }
            c.execute(
                "INSERT INTO comments (id, post_id, content, status, version, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &event.id,
                    &event.post_id,
                    &event.content,
                    &event.status.as_str(),
                    &event.version,
                    &now,
                ],
            )?;
            c.enqueue(&event, &trace, now)?;
            Ok::<_, StoreError>(true)
        })
        .await?;
    if !written {
        return Err(ApiError::NotFound);
    }
    Ok((StatusCode::CREATED, Json(CommentBody::from(&comment))))
}

/// A post's comments, oldest first, whatever their status.
async fn list(
    State(state): State<AppState>,
    IdPath(post_id): IdPath<PostId>,
) -> Result<Json<Vec<CommentBody>>, ApiError> {
    let comments = state
        .db
        .read(move |c| {
            if !post_exists(c, post_id)? {
                return Ok(None);
            }
            let rows = c.query(
                &format!("SELECT {COLUMNS} FROM comments WHERE post_id = $1 ORDER BY id"),
                &[&post_id],
            )?;
            rows.iter()
                .map(Comment::from_row)
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(comments.iter().map(CommentBody::from).collect()))
}

async fn on_post_created(db: Db, e: PostCreated) -> Result<Outcome, ListenerError> {
    db.write(move |c| {
        c.execute(
            "INSERT INTO posts (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&e.id],
        )
    })
    .await?;
    Ok(Outcome::Done)
}

/// Applies a verdict to a pending comment and announces the change.
async fn on_comment_moderated(
    state: AppState,
    e: CommentModerated,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    let now = state.clock.now();
    let outcome = state
        .outbox
        .write(move |c| {
            let Some(mut comment) = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM comments WHERE id = $1 FOR UPDATE"),
                    &[&e.id],
                )?
                .map(|r| Comment::from_row(&r))
                .transpose()?
            else {
                return Ok(Outcome::NotYet(format!("comment {} unknown", e.id)));
            };
            if comment.status != CommentStatus::Pending {
                return Ok(Outcome::Done); // a verdict already applied
            }
            comment.status = e.status.status();
            comment.version += 1;
            c.execute(
                "UPDATE comments SET status = $2, version = $3 WHERE id = $1",
                &[&comment.id, &comment.status.as_str(), &comment.version],
            )?;
            let updated = CommentUpdated {
                id: comment.id,
                post_id: comment.post_id,
                content: comment.content,
                status: comment.status,
                version: comment.version,
            };
            c.enqueue(&updated, &ctx.trace, now)?;
            Ok::<_, ListenerError>(Outcome::Done)
        })
        .await?;
    Ok(outcome)
}

/// Opens the database, starts the relay and the listeners; returns the routes.
pub async fn start(deps: &Deps, options: ListenerOptions) -> Result<Running, StoreError> {
    let base = deps
        .open_service(blog_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let state = AppState {
        db: base.db.clone(),
        outbox: base.outbox.clone(),
        clock: deps.clock.clone(),
    };
    let listeners = base
        .listeners(options)
        .with_state(state.clone())
        .on(|state: AppState, e: PostCreated, _| on_post_created(state.db, e))
        .on(on_comment_moderated)
        .into_tasks();
    let router = axum::Router::new()
        .route("/posts/{id}/comments", get(list).post(create))
        .with_state(state);
    Ok(base.running(router, listeners))
}
