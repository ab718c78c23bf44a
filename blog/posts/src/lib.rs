//! The posts service: owns `posts`; `POST /posts {title}` writes one and
//! publishes `post.created` through its outbox, in the same transaction.
//! Consumes nothing.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use blog_events::{PostCreated, PostId};
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox};
use runtime::service::{Deps, Running};
use serde::{Deserialize, Serialize};
use shared::ApiError;
use shared::http::ValidJson;
use shared::time::Clock;
use shared::trace::TraceContext;
use shared::wire::{Check, Field, Validate};
use store::Conn as _;
use store::Migration;

pub const SERVICE: &str = "posts";

/// The longest title, in characters.
pub const MAX_TITLE: usize = 200;

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "posts",
        sql: "CREATE TABLE posts (
                  id TEXT PRIMARY KEY,
                  title TEXT NOT NULL,
                  created_at BIGINT NOT NULL
              );",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
];

#[derive(Clone)]
struct AppState {
    outbox: Outbox,
    clock: Clock,
}

/// What a writer sends: a title of 1 to [`MAX_TITLE`] characters (trimmed).
#[derive(Deserialize)]
struct PostInput {
    title: Field<String>,
}

impl Validate for PostInput {
    /// The title, trimmed.
    type Valid = String;

    fn validate(self, check: &mut Check) -> Option<String> {
        check.line(self.title, "title", "Title", MAX_TITLE)
    }
}

/// A post as the API returns it.
#[derive(Serialize)]
struct PostBody {
    id: PostId,
    title: String,
}

/// Writes a post; publishes `post.created`.
async fn create(
    State(state): State<AppState>,
    trace: TraceContext,
    ValidJson(title): ValidJson<PostInput>,
) -> Result<(StatusCode, Json<PostBody>), ApiError> {
    let event = PostCreated {
        id: PostId::new(),
        title,
    };
    let now = state.clock.now();
    let e = event.clone();
    state
        .outbox
        .write(move |c| {
            c.execute(
                "INSERT INTO posts (id, title, created_at) VALUES ($1, $2, $3)",
                &[&e.id, &e.title, &now],
            )?;
            c.enqueue(&e, &trace, now)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PostBody {
            id: event.id,
            title: event.title,
        }),
    ))
}

/// Opens the database and starts the relay; returns the routes.
pub async fn start(deps: &Deps) -> Result<Running, store::StoreError> {
    let base = deps
        .open_service(blog_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let state = AppState {
        outbox: base.outbox.clone(),
        clock: deps.clock.clone(),
    };
    let router = axum::Router::new()
        .route("/posts", post(create))
        .with_state(state);
    Ok(base.running(router, Vec::new()))
}
