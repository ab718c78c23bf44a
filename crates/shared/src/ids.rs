//! Opaque identifiers: UUIDv7 (time-ordered), parsed at the edge.

use serde::{Deserialize, Serialize};
use store::{FromValue, StoreError, StoreErrorKind, ToValue, Value};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh id; ids made later sort after earlier ones.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }

            /// Parses the canonical text form; anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::try_parse(s).ok().map($name)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "format": "uuid" })
            }

            fn inline_schema() -> bool {
                true
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl ToValue for $name {
            fn to_value(&self) -> Value {
                Value::Text(self.to_string())
            }
        }

        impl FromValue for $name {
            fn from_value(value: &Value) -> Result<Self, StoreError> {
                let s = String::from_value(value)?;
                $name::parse(&s).ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Decode, format!("bad id {s:?}"))
                })
            }
        }
    };
}

id_type!(/** A user account. */ UserId);
id_type!(/** A listed ticket. */ TicketId);
id_type!(/** A buyer's order. */ OrderId);
id_type!(/** A recorded payment. */ PaymentId);
id_type!(/** An event; also the bus's de-duplication id. */ EventId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_later_sort_after_earlier_ones() {
        let ids: Vec<TicketId> = (0..1000).map(|_| TicketId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids[0].to_string() < ids[999].to_string());
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        assert!(OrderId::parse("123").is_none());
        assert!(OrderId::parse("").is_none());
        let id = OrderId::new();
        assert_eq!(OrderId::parse(&id.to_string()), Some(id));
    }
}
