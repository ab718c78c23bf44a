//! Opaque identifiers: UUIDv7 (time-ordered), parsed at the edge. The
//! platform's own are users (sessions name them) and events; products
//! declare theirs with [`id_type!`](crate::id_type).

/// Declares an opaque UUIDv7 identifier type: serde as its text form, a
/// JSON Schema of a uuid string, and stored as TEXT. For other crates too
/// (`shared::id_type!(/** A post. */ PostId);`): they need `serde`, `uuid`,
/// `schemars` and `store` as dependencies.
#[macro_export]
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(::uuid::Uuid);

        impl $name {
            /// A fresh id; ids made later sort after earlier ones.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                $name(::uuid::Uuid::now_v7())
            }

            /// Parses the canonical text form; anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                ::uuid::Uuid::try_parse(s).ok().map($name)
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({ "type": "string", "format": "uuid" })
            }

            fn inline_schema() -> bool {
                true
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl ::store::ToValue for $name {
            fn to_value(&self) -> ::store::Value {
                ::store::Value::Text(self.to_string())
            }
        }

        impl ::store::FromValue for $name {
            fn from_value(value: &::store::Value) -> Result<Self, ::store::StoreError> {
                let s = <String as ::store::FromValue>::from_value(value)?;
                $name::parse(&s).ok_or_else(|| {
                    ::store::StoreError::new(::store::StoreErrorKind::Decode, format!("bad id {s:?}"))
                })
            }
        }
    };
}

crate::id_type!(/** A user account. */ UserId);
crate::id_type!(/** An event; also the bus's de-duplication id. */ EventId);
crate::id_type!(/** One sign-in: what a session token names next to its user, so sign-out can end it alone. */ SessionId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_later_sort_after_earlier_ones() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids[0].to_string() < ids[999].to_string());
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        assert!(UserId::parse("123").is_none());
        assert!(UserId::parse("").is_none());
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()), Some(id));
    }
}
