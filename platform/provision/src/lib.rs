//! Stream provisioning: make a NATS server's streams and durable consumers
//! match a [`Spec`], in the open.
//!
//! - [`plan`] compares the spec with the server field by field: create,
//!   update (old → new), unchanged, or cannot change in place (storage
//!   always; retention before 2.10 and to or from workqueue after;
//!   max_consumers before 2.10; a consumer's deliver and ack policies), with
//!   what recreating would lose. It knows the server's version: fields a
//!   2.9 server would silently drop are refused up front, and after every
//!   change the config the server returns is compared with what was sent.
//! - [`apply`] carries the plan out, or changes nothing when it holds a
//!   change it may not make: recreations need `allow_recreate`, deletions
//!   `prune`, and only resources this tool marked as its own are ever
//!   deleted (the mark is in the description, and on 2.10+ in the metadata
//!   too).
//!
//! - [`local`] runs a nats-server with JetStream as a child process, for
//!   drills, benchmarks and tests that need a server of their own.
//!
//! It knows no product: each product hands it its own spec (its
//! `deploy/*.yaml`) and its own event catalogue.
//!
//! It speaks the JetStream JSON API directly (`$JS.API.…`), so what is sent
//! and compared is exactly what the server sees, on every server version.

mod api;
mod apply;
mod check;
pub mod local;
mod plan;
pub mod spec;
#[cfg(test)]
mod tests;

pub use api::*;
pub use apply::*;
pub use check::*;
pub use plan::*;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use serde_json::{Map, Value, json};

use spec::{ApiName, format_duration};
pub use spec::{ConsumerSpec, Spec, SpecError, StreamSpec};

/// How the tool marks what it owns, in descriptions.
const MARK: &str = "(managed by ticketing streams; owner: ";
/// Metadata keys (2.10+) recording the same.
const META_OWNER: &str = "ticketing.owner";
const META_MANAGED: &str = "ticketing.managed-by";
const MANAGED_BY: &str = "ticketing streams";

/// What the tool may do beyond creating and updating in place.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Delete and recreate what cannot change in place (its data is lost).
    pub allow_recreate: bool,
    /// Delete streams and consumers this tool owns that the spec no longer
    /// declares.
    pub prune: bool,
    /// Replicas for every stream, instead of the spec's (1 for a single
    /// server, 3 for a cluster).
    pub replicas: Option<u32>,
}

/// A failure to plan or apply.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The server could not be asked: what was asked, and why not.
    #[error("{what}")]
    Unavailable {
        what: String,
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The server refused a request, or answered what cannot be read.
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The plan holds changes that need a flag, or the spec asks for what
    /// this server cannot do; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The server did not keep what was sent.
    #[error("{0}")]
    Drift(String),
}

impl ProvisionError {
    fn unavailable(what: String) -> ProvisionError {
        ProvisionError::Unavailable { what, cause: None }
    }

    fn api(what: String) -> ProvisionError {
        ProvisionError::Api { what, cause: None }
    }
}

/// A server version, `2.9.10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(text: &str) -> Version {
        let mut parts = text
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse().unwrap_or(0));
        Version(
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    }

    /// 2.10 brought metadata, compression and more updatable fields.
    pub fn at_least_2_10(self) -> bool {
        self >= Version(2, 10, 0)
    }
}

/// What the plan needs to know about the server itself.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version_text: String,
    pub version: Version,
    pub clustered: bool,
}

#[derive(Debug, Clone)]
struct ServerStream {
    name: String,
    config: Map<String, Value>,
    messages: u64,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct ServerConsumer {
    stream: String,
    name: String,
    config: Map<String, Value>,
    num_pending: u64,
    num_ack_pending: u64,
}

/// Streams and consumers as the server has them.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub facts: ServerFacts,
    streams: Vec<ServerStream>,
    consumers: Vec<ServerConsumer>,
}

impl ServerState {
    fn stream(&self, name: &str) -> Option<&ServerStream> {
        self.streams.iter().find(|s| s.name == name)
    }

    fn consumer(&self, stream: &str, name: &str) -> Option<&ServerConsumer> {
        self.consumers
            .iter()
            .find(|c| c.stream == stream && c.name == name)
    }

    fn consumers_of<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a ServerConsumer> {
        self.consumers.iter().filter(move |c| c.stream == stream)
    }
}
