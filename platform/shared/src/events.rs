//! Typed events, for every product: the [`Event`] trait binding a payload
//! type to its subject at compile time, the headers every message carries,
//! and the shape of a product's event catalogue ([`ServiceEvents`]). The
//! products' own events live in their contract crates (`marketplace-events`,
//! `blog-events`).

use serde::{Serialize, de::DeserializeOwned};

/// An event type: its payload, subject and schema version.
pub trait Event:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The subject it is published on, e.g. `ticket.created`.
    const SUBJECT: &'static str;
    /// Bumped when the payload changes incompatibly.
    const SCHEMA_VERSION: u32 = 1;
}

/// Header naming the event type (its subject) on every message.
pub const EVENT_TYPE_HEADER: &str = "Ticketing-Event";
/// Header carrying the event's schema version.
pub const SCHEMA_VERSION_HEADER: &str = "Ticketing-Schema";

/// Binds an event type to its subject: `shared::event!(PostCreated, "post.created");`.
#[macro_export]
macro_rules! event {
    ($ty:ident, $subject:literal) => {
        impl $crate::events::Event for $ty {
            const SUBJECT: &'static str = $subject;
        }
    };
}

/// The JSON Schema of `E`'s payload (draft 2020-12), from its Rust type.
pub fn schema_of<E: Event>() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(E)).unwrap_or_default();
    if let Some(o) = schema.as_object_mut() {
        o.insert(
            "$id".into(),
            format!("urn:ticketing:event:{}", E::SUBJECT).into(),
        );
        // The version the `Ticketing-Schema` header carries: what
        // `ticketing events check` holds against the committed contract.
        o.insert("x-schema-version".into(), E::SCHEMA_VERSION.into());
    }
    schema
}

/// What one service publishes and consumes.
#[derive(Debug, Clone, Copy)]
pub struct ServiceEvents {
    pub service: &'static str,
    pub publishes: &'static [&'static str],
    pub consumes: &'static [&'static str],
}
