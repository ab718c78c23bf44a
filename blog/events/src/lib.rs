//! The blog's events: one Rust type per event, bound to its subject, and the
//! catalogue of who publishes and who consumes each subject, and its
//! streams. Built on the platform's `Event` trait, id macro and catalogue
//! shape (`shared::events`), as the marketplace's `marketplace-events` is,
//! so the same bus, outbox and listeners carry them.
//!
//! Comments are versioned records: `comment.created` carries version 0 and
//! every `comment.updated` one more, so a consumer keeps the highest version
//! it has seen whatever order the events arrive in.

use serde::{Deserialize, Serialize};
use shared::events::{Event, ServiceEvents};

shared::id_type!(/** A blog post. */ PostId);
shared::id_type!(/** A comment on a post. */ CommentId);

/// Where a comment stands with moderation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum CommentStatus {
    /// Written, not yet moderated.
    Pending,
    Approved,
    Rejected,
}

impl CommentStatus {
    /// Its name, as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// What moderation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approved,
    Rejected,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        self.status().as_str()
    }

    /// The comment status this verdict gives.
    pub fn status(self) -> CommentStatus {
        match self {
            Verdict::Approved => CommentStatus::Approved,
            Verdict::Rejected => CommentStatus::Rejected,
        }
    }
}

/// `post.created`: posts, when a post is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PostCreated {
    pub id: PostId,
    pub title: String,
}
shared::event!(PostCreated, "post.created");

/// `comment.created`: comments, when a comment is written (pending, version 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentCreated {
    pub id: CommentId,
    pub post_id: PostId,
    pub content: String,
    pub status: CommentStatus,
    pub version: i64,
}
shared::event!(CommentCreated, "comment.created");

/// `comment.moderated`: moderation, with its verdict on a comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentModerated {
    pub id: CommentId,
    pub post_id: PostId,
    pub status: Verdict,
}
shared::event!(CommentModerated, "comment.moderated");

/// `comment.updated`: comments, when a comment's status changes (its
/// version one more than before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentUpdated {
    pub id: CommentId,
    pub post_id: PostId,
    pub content: String,
    pub status: CommentStatus,
    pub version: i64,
}
shared::event!(CommentUpdated, "comment.updated");

/// Every subject of the blog.
pub const ALL_SUBJECTS: &[&str] = &[
    PostCreated::SUBJECT,
    CommentCreated::SUBJECT,
    CommentModerated::SUBJECT,
    CommentUpdated::SUBJECT,
];

/// Every blog event's subject with the JSON Schema of its payload.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    use shared::events::schema_of;
    vec![
        (PostCreated::SUBJECT, schema_of::<PostCreated>()),
        (CommentCreated::SUBJECT, schema_of::<CommentCreated>()),
        (CommentModerated::SUBJECT, schema_of::<CommentModerated>()),
        (CommentUpdated::SUBJECT, schema_of::<CommentUpdated>()),
    ]
}

/// The blog's services, in the order they are started.
pub const SERVICES: &[&str] = &["posts", "comments", "moderation", "query"];

/// Who publishes and who consumes each subject, held to as the
/// marketplace's catalogue is: a service's listeners must register exactly
/// what it consumes and its outbox refuses what it does not publish; a test
/// holds `deploy/blog-streams.yaml` to it.
pub const CATALOGUE: &[ServiceEvents] = &[
    ServiceEvents {
        service: "posts",
        publishes: &[PostCreated::SUBJECT],
        consumes: &[],
    },
    ServiceEvents {
        service: "comments",
        publishes: &[CommentCreated::SUBJECT, CommentUpdated::SUBJECT],
        // Which posts exist, to refuse comments on posts that do not.
        consumes: &[PostCreated::SUBJECT, CommentModerated::SUBJECT],
    },
    ServiceEvents {
        service: "moderation",
        publishes: &[CommentModerated::SUBJECT],
        consumes: &[CommentCreated::SUBJECT],
    },
    ServiceEvents {
        service: "query",
        publishes: &[],
        consumes: &[
            PostCreated::SUBJECT,
            CommentCreated::SUBJECT,
            CommentUpdated::SUBJECT,
        ],
    },
];

/// `service`'s entry in the [`CATALOGUE`]; panics for a service the blog
/// does not have (a bug in the caller).
pub fn service_events(service: &str) -> &'static ServiceEvents {
    CATALOGUE
        .iter()
        .find(|s| s.service == service)
        .unwrap_or_else(|| panic!("{service} is not in blog_events::CATALOGUE"))
}

/// The blog's streams and durable consumers: `deploy/blog-streams.yaml`
/// as it was built (`provision::Spec::built_in` reads it).
pub const STREAMS: shared::events::StreamsFile = shared::events::StreamsFile {
    path: "deploy/blog-streams.yaml",
    yaml: include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/blog-streams.yaml"
    )),
};

/// The blog, as tools and tests see it: its services and streams.
pub const PRODUCT: shared::events::Product = shared::events::Product {
    services: SERVICES,
    streams: STREAMS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_streams_spec_declares_what_the_services_publish_and_consume() {
        if let Err(problems) =
            provision::check_catalogue(&provision::Spec::built_in(&STREAMS), CATALOGUE)
        {
            panic!("{}", problems.join("\n"));
        }
    }

    #[test]
    fn every_subject_has_one_publisher_and_every_service_is_catalogued() {
        for s in ALL_SUBJECTS {
            let publishers = CATALOGUE.iter().filter(|e| e.publishes.contains(s)).count();
            assert_eq!(publishers, 1, "{s}");
        }
        for e in CATALOGUE {
            assert!(SERVICES.contains(&e.service), "{}", e.service);
            for s in e.publishes.iter().chain(e.consumes) {
                assert!(ALL_SUBJECTS.contains(s), "{}: {s}", e.service);
            }
        }
        assert_eq!(schemas().len(), ALL_SUBJECTS.len());
    }

    #[test]
    fn payloads_use_camel_case_and_lowercase_statuses() {
        let (id, post_id) = (CommentId::new(), PostId::new());
        let e = CommentUpdated {
            id,
            post_id,
            content: "hi".into(),
            status: CommentStatus::Rejected,
            version: 1,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"id": id.to_string(), "postId": post_id.to_string(), "content": "hi",
                   "status": "rejected", "version": 1})
        );
        let m: CommentModerated = serde_json::from_value(
            json!({"id": id.to_string(), "postId": post_id.to_string(), "status": "approved"}),
        )
        .unwrap();
        assert_eq!(m.status, Verdict::Approved);
        assert!(
            serde_json::from_value::<CommentModerated>(
                json!({"id": id.to_string(), "postId": post_id.to_string(), "status": "pending"})
            )
            .is_err(),
            "a verdict is approved or rejected"
        );
    }
}
