//! Typed events, for every product: the [`Event`] trait binding a payload
//! type to its subject at compile time, the headers every message carries,
//! and the shape of a product's event catalogue ([`ServiceEvents`]). The
//! products' own events live in their contract crates.

use serde::{Serialize, de::DeserializeOwned};

/// An event type: its payload, subject and schema version.
pub trait Event:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The subject it is published on, e.g. `ticket.created`.
    const SUBJECT: &'static str;
    /// Bumped when the payload changes incompatibly (and then
    /// [`Event::upcast`] reads the previous versions still in the streams).
    const SCHEMA_VERSION: u32 = 1;
    /// The oldest schema version this type reads, through [`Event::upcast`]
    /// (the `events check` gate lets a version be bumped only from a
    /// version at or after it).
    const READS_FROM: u32 = Self::SCHEMA_VERSION;

    /// A payload of schema version `from` (at least [`Event::READS_FROM`],
    /// below [`Event::SCHEMA_VERSION`]) rewritten as version `from + 1`'s;
    /// `None` when this type cannot read that version.
    fn upcast(from: u32, payload: serde_json::Value) -> Option<serde_json::Value> {
        let _ = (from, payload);
        None
    }
}

/// Reads a payload of schema `version` (the [`SCHEMA_VERSION_HEADER`]; none:
/// the current one) as `E`, upcasting an older version step by step.
pub fn decode<E: Event>(version: Option<u32>, payload: &[u8]) -> Result<E, String> {
    let version = version.unwrap_or(E::SCHEMA_VERSION);
    if version == E::SCHEMA_VERSION {
        return serde_json::from_slice(payload).map_err(|e| e.to_string());
    }
    if version > E::SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is newer than this consumer reads ({})",
            E::SCHEMA_VERSION
        ));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    for from in version..E::SCHEMA_VERSION {
        value = E::upcast(from, value)
            .ok_or_else(|| format!("no upcaster from schema version {from}"))?;
    }
    serde_json::from_value(value)
        .map_err(|e| format!("after upcasting from version {version}: {e}"))
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
        // The version the schema header carries: what the `events check`
        // gate holds against the committed contract.
        o.insert("x-schema-version".into(), E::SCHEMA_VERSION.into());
        if E::READS_FROM < E::SCHEMA_VERSION {
            o.insert("x-reads-from".into(), E::READS_FROM.into());
        }
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

/// A product's stream spec as its contract crate carries it: the YAML
/// built into the binary and the file it comes from. Reading it is the
/// provisioning's (`provision::Spec::built_in`), so a service, which only
/// needs its contract's events, does not compile the provisioning.
#[derive(Debug, Clone, Copy)]
pub struct StreamsFile {
    /// The file in the repository (`deploy/streams.yaml`).
    pub path: &'static str,
    pub yaml: &'static str,
}

/// What tools and tests know of a product: its services (a database each)
/// and its streams.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub services: &'static [&'static str],
    pub streams: StreamsFile,
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    /// Version 2 of an event whose version 1 had `price` (whole dollars);
    /// version 2 has `priceCents` and a `currency`.
    #[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "camelCase")]
    struct Priced {
        price_cents: i64,
        currency: String,
    }

    impl Event for Priced {
        const SUBJECT: &'static str = "test.priced";
        const SCHEMA_VERSION: u32 = 2;
        const READS_FROM: u32 = 1;

        fn upcast(from: u32, mut payload: serde_json::Value) -> Option<serde_json::Value> {
            match from {
                1 => {
                    let o = payload.as_object_mut()?;
                    let dollars = o.remove("price")?.as_i64()?;
                    o.insert("priceCents".into(), (dollars * 100).into());
                    o.insert("currency".into(), "usd".into());
                    Some(payload)
                }
                _ => None,
            }
        }
    }

    /// A payload as version 1 published it (recorded, not generated).
    const RECORDED_V1: &[u8] = br#"{"price":12}"#;

    #[test]
    fn an_older_version_is_read_through_the_upcaster() {
        assert_eq!(
            decode::<Priced>(Some(1), RECORDED_V1).unwrap(),
            Priced {
                price_cents: 1200,
                currency: "usd".into()
            }
        );
        let current = br#"{"priceCents":5,"currency":"eur"}"#;
        assert_eq!(decode::<Priced>(Some(2), current).unwrap().price_cents, 5);
        assert_eq!(decode::<Priced>(None, current).unwrap().currency, "eur");
    }

    #[test]
    fn a_version_without_an_upcaster_or_from_the_future_is_refused_with_the_reason() {
        assert_eq!(
            decode::<Priced>(Some(0), b"{}").unwrap_err(),
            "no upcaster from schema version 0"
        );
        assert!(
            decode::<Priced>(Some(3), b"{}")
                .unwrap_err()
                .contains("schema version 3 is newer than this consumer reads (2)")
        );
    }

    #[test]
    fn the_schema_says_its_version_and_the_oldest_it_reads() {
        let schema = schema_of::<Priced>();
        assert_eq!(schema["x-schema-version"], 2);
        assert_eq!(schema["x-reads-from"], 1);
    }
}
