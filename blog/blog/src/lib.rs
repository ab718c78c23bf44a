//! The blog system: posts, comments, moderation and query, four services
//! built on the marketplace's library (bus, outbox, listeners, store, error
//! shape), and a server-rendered page in front of them. This crate only
//! wires them: which services a process runs, and where the page finds the
//! API.

pub mod page;

use bus::listener::ListenerOptions;
use runtime::service::{Deps, Running};

pub use blog_events::SERVICES;
pub use page::router as page_router;

/// The page: no database, no bus; it speaks the services' HTTP API.
pub const WEB: &str = "web";

/// What the services of one process need.
#[derive(Clone)]
pub struct Config {
    /// Which of [`SERVICES`] to run here.
    pub services: Vec<&'static str>,
    pub moderation: blog_moderation::Config,
}

/// Starts the configured services on `deps`.
pub async fn start(deps: &Deps, config: &Config) -> Result<Vec<Running>, store::StoreError> {
    let options = ListenerOptions::default();
    let mut running = Vec::new();
    for service in &config.services {
        running.push(match *service {
            blog_posts::SERVICE => blog_posts::start(deps).await?,
            blog_comments::SERVICE => blog_comments::start(deps, options.clone()).await?,
            blog_moderation::SERVICE => {
                blog_moderation::start(deps, config.moderation.clone(), options.clone()).await?
            }
            blog_query::SERVICE => blog_query::start(deps, options.clone()).await?,
            other => {
                return Err(store::StoreError::new(
                    store::StoreErrorKind::Other,
                    format!("the blog has no service {other}"),
                ));
            }
        });
    }
    Ok(running)
}

/// Where the page finds each service over HTTP (the microservices mode).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub posts: String,
    pub comments: String,
    pub query: String,
}

impl Upstreams {
    /// The origin that serves `method path`: `POST /posts` is the posts
    /// service, `/posts/{id}/comments` the comments service, and reads of
    /// `/posts` the query service.
    pub fn base_for(&self, method: &axum::http::Method, path: &str) -> &str {
        if path.ends_with("/comments") {
            &self.comments
        } else if path == "/posts" && method == axum::http::Method::POST {
            &self.posts
        } else {
            &self.query
        }
    }

    /// A client of the blog's API over HTTP.
    pub fn api(self) -> runtime::client::Api {
        runtime::client::Api::http(std::sync::Arc::new(move |method, path| {
            Some(self.base_for(method, path).trim_end_matches('/').to_owned())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn each_request_goes_to_the_service_that_owns_it() {
        let u = Upstreams {
            posts: "http://posts".into(),
            comments: "http://comments".into(),
            query: "http://query".into(),
        };
        assert_eq!(u.base_for(&Method::POST, "/posts"), "http://posts");
        assert_eq!(u.base_for(&Method::GET, "/posts"), "http://query");
        assert_eq!(
            u.base_for(&Method::POST, "/posts/x/comments"),
            "http://comments"
        );
        assert_eq!(
            u.base_for(&Method::GET, "/posts/x/comments"),
            "http://comments"
        );
        assert_eq!(u.base_for(&Method::GET, "/readyz"), "http://query");
    }
}
