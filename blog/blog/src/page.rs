//! The blog's page, rendered on the server (askama) and usable without
//! JavaScript: every post with its comments, a form to write a post and one
//! per post to comment. Pending comments read "awaiting moderation",
//! rejected ones "Removed by moderation" (their text is not shown).
//!
//! It knows the services only through their HTTP API. Reads come from the
//! query service, which learns of writes through events: after a write the
//! page waits briefly until the read model shows it, so the reader sees
//! what they just wrote.

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use runtime::client::Api;
use runtime::client::{Caller, Reply};
use runtime::pages::FormFields;
use serde::Deserialize;

const CSS: &str = include_str!("../assets/blog.css");

/// How long a write waits for the read model to show it.
const READ_YOUR_WRITE: Duration = Duration::from_secs(2);

/// The page's routes (`/`, its forms and its stylesheet), calling the API
/// through `api`. (The HTTP edge gives every response the security
/// headers.)
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/new-post", post(new_post))
        .route("/posts/{id}/new-comment", post(new_comment))
        .route("/assets/blog.css", get(css))
        .with_state(api)
}

/// Ready when the query service answers through `api`.
pub async fn check_ready(api: &Api) -> Result<(), runtime::NotReady> {
    let reply = api
        .call(Method::GET, "/posts", &Caller::default(), None)
        .await
        .map_err(|e| runtime::NotReady::with_detail("page: the API is unreachable", e.0))?;
    if reply.ok() {
        Ok(())
    } else {
        Err(format!("page: the query service answered {}", reply.status).into())
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        CSS,
    )
        .into_response()
}

/// The stylesheet's version, for its URL: it changes when the file does.
fn asset_version() -> String {
    let hash = CSS.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{:012x}", hash & 0xffff_ffff_ffff)
}

#[derive(Debug, Clone, Deserialize)]
struct CommentView {
    id: String,
    content: String,
    status: String,
}

#[derive(Debug, Clone, Deserialize)]
struct PostView {
    id: String,
    title: String,
    comments: Vec<CommentView>,
}

/// A form as it was sent, with what was wrong with it.
#[derive(Default)]
struct FormState {
    /// The post a comment form belongs to ("" for the post form).
    post_id: String,
    value: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    assets: String,
    notice: Option<&'static str>,
    posts: Vec<PostView>,
    post_form: FormState,
    comment_form: FormState,
    max_title: usize,
    max_content: usize,
}

#[derive(Deserialize)]
struct Notice {
    notice: Option<String>,
}

fn notice_text(key: Option<&str>) -> Option<&'static str> {
    match key? {
        "posted" => Some("Your post is published."),
        "commented" => Some("Thanks! Your comment is awaiting moderation."),
        _ => None,
    }
}

fn caller(headers: &HeaderMap) -> Caller {
    Caller {
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Caller::default()
    }
}

/// What a page handler answers when the API cannot.
fn unavailable(why: &str) -> Response {
    tracing::warn!(error = why, "blog page: the API is unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(
            "<!doctype html><title>Unavailable</title><h1>Temporarily unavailable</h1>\
             <p>The blog cannot answer right now. Please try again in a moment.</p>"
                .to_owned(),
        ),
    )
        .into_response()
}

async fn fetch_posts(api: &Api, caller: &Caller) -> Result<Vec<PostView>, String> {
    let reply = api
        .call(Method::GET, "/posts", caller, None)
        .await
        .map_err(|e| e.0)?;
    if !reply.ok() {
        return Err(format!("the query service answered {}", reply.status));
    }
    let mut posts: Vec<PostView> = reply.parse().map_err(|e| e.0)?;
    posts.reverse(); // newest first
    Ok(posts)
}

async fn render(
    api: &Api,
    caller: &Caller,
    status: StatusCode,
    notice: Option<&'static str>,
    post_form: FormState,
    comment_form: FormState,
) -> Response {
    let posts = match fetch_posts(api, caller).await {
        Ok(p) => p,
        Err(e) => return unavailable(&e),
    };
    let page = IndexPage {
        assets: asset_version(),
        notice,
        posts,
        post_form,
        comment_form,
        max_title: blog_posts::MAX_TITLE,
        max_content: blog_comments::MAX_CONTENT,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => unavailable(&format!("cannot render the page: {e}")),
    }
}

async fn index(State(api): State<Api>, headers: HeaderMap, Query(q): Query<Notice>) -> Response {
    render(
        &api,
        &caller(&headers),
        StatusCode::OK,
        notice_text(q.notice.as_deref()),
        FormState::default(),
        FormState::default(),
    )
    .await
}

/// The first error message of a failed API answer.
fn first_error(reply: &Reply) -> String {
    reply
        .errors()
        .into_iter()
        .next()
        .map(|e| e.message)
        .unwrap_or_else(|| "Something went wrong".into())
}

/// Waits until the read model shows `id` (a post or a comment), for at most
/// [`READ_YOUR_WRITE`]; the page is shown either way.
async fn wait_visible(api: &Api, caller: &Caller, id: &str) {
    let deadline = tokio::time::Instant::now() + READ_YOUR_WRITE;
    while tokio::time::Instant::now() < deadline {
        if let Ok(posts) = fetch_posts(api, caller).await {
            let seen = posts
                .iter()
                .any(|p| p.id == id || p.comments.iter().any(|c| c.id == id));
            if seen {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn new_post(
    State(api): State<Api>,
    headers: HeaderMap,
    FormFields(form): FormFields,
) -> Response {
    let caller = caller(&headers);
    let title = form.get("title").cloned().unwrap_or_default();
    let reply = match api
        .call(
            Method::POST,
            "/posts",
            &caller,
            Some(serde_json::json!({ "title": title })),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return unavailable(&e.0),
    };
    match reply.status {
        StatusCode::CREATED => {
            let id = reply.body["id"].as_str().unwrap_or_default().to_owned();
            wait_visible(&api, &caller, &id).await;
            Redirect::to(&format!("/?notice=posted#post-{id}")).into_response()
        }
        StatusCode::BAD_REQUEST => {
            let form = FormState {
                post_id: String::new(),
                value: title,
                error: Some(first_error(&reply)),
            };
            render(
                &api,
                &caller,
                StatusCode::BAD_REQUEST,
                None,
                form,
                FormState::default(),
            )
            .await
        }
        status => unavailable(&format!("the posts service answered {status}")),
    }
}

async fn new_comment(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(post_id): Path<String>,
    FormFields(form): FormFields,
) -> Response {
    let caller = caller(&headers);
    let content = form.get("content").cloned().unwrap_or_default();
    let Some(post) = blog_events::PostId::parse(&post_id) else {
        return (
            StatusCode::NOT_FOUND,
            Html("<h1>No such post</h1>".to_owned()),
        )
            .into_response();
    };
    let reply = match api
        .call(
            Method::POST,
            &format!("/posts/{post}/comments"),
            &caller,
            Some(serde_json::json!({ "content": content })),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return unavailable(&e.0),
    };
    let error = match reply.status {
        StatusCode::CREATED => {
            let id = reply.body["id"].as_str().unwrap_or_default().to_owned();
            wait_visible(&api, &caller, &id).await;
            return Redirect::to(&format!("/?notice=commented#comment-{id}")).into_response();
        }
        StatusCode::BAD_REQUEST => (StatusCode::BAD_REQUEST, first_error(&reply)),
        StatusCode::NOT_FOUND => (
            StatusCode::NOT_FOUND,
            "This post cannot take comments yet. Please try again in a moment.".to_owned(),
        ),
        status => return unavailable(&format!("the comments service answered {status}")),
    };
    let form = FormState {
        post_id: post.to_string(),
        value: content,
        error: Some(error.1),
    };
    render(&api, &caller, error.0, None, FormState::default(), form).await
}
