//! The marketplace's contract: its events (one Rust type per event, bound to
//! its subject at compile time: a listener for `TicketCreated` can only ever
//! be handed a `TicketCreated`, decoded from a message on `ticket.created`),
//! its ids, the catalogue of who publishes and who consumes each subject,
//! and its streams (`deploy/streams.yaml`, built in). The twin of the blog's
//! `blog-events`; every marketplace service depends on it, and on no other
//! service.
//!
//! Money in events is integer cents; every event about a versioned record
//! carries the record's new version.

use serde::{Deserialize, Serialize};
pub use shared::events::{Event, ServiceEvents, schema_of};
use shared::ids::{SessionId, UserId};
use shared::money::Money;
use shared::time::Timestamp;

shared::id_type!(/** A listed ticket. */ TicketId);
shared::id_type!(/** A buyer's order. */ OrderId);
shared::id_type!(/** A recorded payment. */ PaymentId);

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TicketStatus {
    Available,
    Reserved,
    Sold,
    /// Off sale while its seller is banned; available again when the ban
    /// is lifted.
    Withdrawn,
}

impl TicketStatus {
    /// Its name, as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum OrderStatus {
    Created,
    Cancelled,
    Complete,
}

impl OrderStatus {
    /// Its name, as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Decodes a status stored as its name; an unknown name is a decode error.
pub fn decode_status<T>(
    value: &store::Value,
    parse: fn(&str) -> Option<T>,
) -> Result<T, store::StoreError> {
    let name = <String as store::FromValue>::from_value(value)?;
    parse(&name).ok_or_else(|| {
        store::StoreError::new(store::StoreErrorKind::Decode, format!("bad status {name}"))
    })
}

/// Statuses are stored as their names (`as_str`).
impl store::FromValue for TicketStatus {
    fn from_value(value: &store::Value) -> Result<Self, store::StoreError> {
        decode_status(value, TicketStatus::parse)
    }
}

impl store::FromValue for OrderStatus {
    fn from_value(value: &store::Value) -> Result<Self, store::StoreError> {
        decode_status(value, OrderStatus::parse)
    }
}

/// `user.created`: auth, on sign-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCreated {
    pub id: UserId,
    /// The user record's version (0 when created).
    #[serde(default)]
    pub version: i64,
    pub email: String,
}
shared::event!(UserCreated, "user.created");

/// `user.banned`: auth, when an admin bans a user. Every session the user
/// began up to `bannedAt` is revoked (they cannot begin another while
/// banned); services also withdraw what the user offers or holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserBanned {
    pub id: UserId,
    pub version: i64,
    pub banned_at: Timestamp,
    /// When the last session begun by `bannedAt` expires: a deny list keeps
    /// the ban no longer.
    pub until: Timestamp,
}
shared::event!(UserBanned, "user.banned");

/// `user.unbanned`: auth, when an admin lifts a ban. The user may sign in
/// again; sessions from before the ban stay revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserUnbanned {
    pub id: UserId,
    pub version: i64,
}
shared::event!(UserUnbanned, "user.unbanned");

/// `user.admin-granted`: auth, when an operator makes a user an admin
/// (`ticketing users grant-admin`). Signing up never does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAdminGranted {
    pub id: UserId,
    pub version: i64,
}
shared::event!(UserAdminGranted, "user.admin-granted");

/// `user.admin-revoked`: auth, when an operator takes a user's admin role
/// away (`ticketing users revoke-admin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAdminRevoked {
    pub id: UserId,
    pub version: i64,
}
shared::event!(UserAdminRevoked, "user.admin-revoked");

/// `user.signed-out`: auth, when a user ends one session (`sessionId`) or
/// every session they began up to `before` (sign out everywhere). Exactly
/// one of the two is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSignedOut {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Timestamp>,
    /// When the last session it ends expires: a deny list keeps it no longer.
    pub until: Timestamp,
}
shared::event!(UserSignedOut, "user.signed-out");

impl UserSignedOut {
    /// The revocation it stands for (`None` when it names neither a session
    /// nor a moment, which auth never publishes).
    pub fn revocation(&self) -> Option<shared::auth::Revocation> {
        use shared::auth::Revocation;
        match (self.session_id, self.before) {
            (Some(session), _) => Some(Revocation::Session {
                session,
                until: self.until,
            }),
            (None, Some(before)) => Some(Revocation::Before {
                user: self.user_id,
                before,
                until: self.until,
            }),
            (None, None) => None,
        }
    }
}

impl UserBanned {
    /// The revocation it stands for: every session begun up to the ban.
    pub fn revocation(&self) -> shared::auth::Revocation {
        shared::auth::Revocation::Before {
            user: self.id,
            before: self.banned_at,
            until: self.until,
        }
    }
}

/// `ticket.created`: tickets, on create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketCreated {
    pub id: TicketId,
    pub version: i64,
    pub title: String,
    pub price_cents: Money,
    pub user_id: UserId,
}
shared::event!(TicketCreated, "ticket.created");

/// `ticket.updated`: tickets, on edit, reserve, release and sale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketUpdated {
    pub id: TicketId,
    pub version: i64,
    pub title: String,
    pub price_cents: Money,
    pub user_id: UserId,
    pub order_id: Option<OrderId>,
    pub status: TicketStatus,
}
shared::event!(TicketUpdated, "ticket.updated");

/// The ticket as an `order.created` event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderTicket {
    pub id: TicketId,
    pub price_cents: Money,
}

/// A bare ticket reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TicketRef {
    pub id: TicketId,
}

/// `order.created`: orders, on create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub id: OrderId,
    pub version: i64,
    pub status: OrderStatus,
    pub user_id: UserId,
    pub expires_at: Timestamp,
    pub ticket: OrderTicket,
}
shared::event!(OrderCreated, "order.created");

/// `order.cancelled`: orders, on cancel or expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderCancelled {
    pub id: OrderId,
    pub version: i64,
    pub ticket: TicketRef,
}
shared::event!(OrderCancelled, "order.cancelled");

/// `order.completed`: orders, when paid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderCompleted {
    pub id: OrderId,
    pub version: i64,
    pub ticket: TicketRef,
}
shared::event!(OrderCompleted, "order.completed");

/// `expiration.complete`: expiration, when an order's timer fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationComplete {
    pub order_id: OrderId,
}
shared::event!(ExpirationComplete, "expiration.complete");

/// `payment.authorized`: payments, when the card holds the order's price
/// (no money has moved). Orders answers with its verdict: `order.completed`
/// if the order was still awaiting payment, otherwise the `order.cancelled`
/// it already published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentAuthorized {
    pub id: PaymentId,
    pub order_id: OrderId,
    /// The gateway's authorization (a Stripe PaymentIntent id).
    pub authorization_id: String,
    pub amount_cents: Money,
}
shared::event!(PaymentAuthorized, "payment.authorized");

/// `payment.captured`: payments, when the held amount was taken because the
/// order completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCaptured {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub authorization_id: String,
    pub amount_cents: Money,
}
shared::event!(PaymentCaptured, "payment.captured");

/// `payment.voided`: payments, when the hold was released: the order was
/// cancelled first, or no verdict came within the bound. Nothing was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentVoided {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub authorization_id: String,
    pub amount_cents: Money,
    /// `order-cancelled` or `no-verdict`.
    pub reason: String,
}
shared::event!(PaymentVoided, "payment.voided");

/// `payment.refunded`: payments, when an operator gave captured money back
/// (`ticketing payments refund`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRefunded {
    pub id: PaymentId,
    pub order_id: OrderId,
    pub refund_id: String,
    pub amount_cents: Money,
}
shared::event!(PaymentRefunded, "payment.refunded");

/// Every subject, for catalogues and stream definitions.
pub const ALL_SUBJECTS: &[&str] = &[
    UserCreated::SUBJECT,
    UserBanned::SUBJECT,
    UserUnbanned::SUBJECT,
    UserAdminGranted::SUBJECT,
    UserAdminRevoked::SUBJECT,
    UserSignedOut::SUBJECT,
    TicketCreated::SUBJECT,
    TicketUpdated::SUBJECT,
    OrderCreated::SUBJECT,
    OrderCancelled::SUBJECT,
    OrderCompleted::SUBJECT,
    ExpirationComplete::SUBJECT,
    PaymentAuthorized::SUBJECT,
    PaymentCaptured::SUBJECT,
    PaymentVoided::SUBJECT,
    PaymentRefunded::SUBJECT,
];

/// Every event's subject with the JSON Schema of its payload.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (UserCreated::SUBJECT, schema_of::<UserCreated>()),
        (UserBanned::SUBJECT, schema_of::<UserBanned>()),
        (UserUnbanned::SUBJECT, schema_of::<UserUnbanned>()),
        (UserAdminGranted::SUBJECT, schema_of::<UserAdminGranted>()),
        (UserAdminRevoked::SUBJECT, schema_of::<UserAdminRevoked>()),
        (UserSignedOut::SUBJECT, schema_of::<UserSignedOut>()),
        (TicketCreated::SUBJECT, schema_of::<TicketCreated>()),
        (TicketUpdated::SUBJECT, schema_of::<TicketUpdated>()),
        (OrderCreated::SUBJECT, schema_of::<OrderCreated>()),
        (OrderCancelled::SUBJECT, schema_of::<OrderCancelled>()),
        (OrderCompleted::SUBJECT, schema_of::<OrderCompleted>()),
        (
            ExpirationComplete::SUBJECT,
            schema_of::<ExpirationComplete>(),
        ),
        (PaymentAuthorized::SUBJECT, schema_of::<PaymentAuthorized>()),
        (PaymentCaptured::SUBJECT, schema_of::<PaymentCaptured>()),
        (PaymentVoided::SUBJECT, schema_of::<PaymentVoided>()),
        (PaymentRefunded::SUBJECT, schema_of::<PaymentRefunded>()),
    ]
}

/// Who publishes and who consumes each subject. Enforced where it happens:
/// a service's listeners must register exactly its `consumes` (checked when
/// they start) and its outbox relay refuses subjects outside `publishes` (a
/// panic in debug builds), so the tests that run each service keep this true;
/// the stream provisioning spec is checked against it.
pub const CATALOGUE: &[ServiceEvents] = &[
    ServiceEvents {
        service: "auth",
        publishes: &[
            UserCreated::SUBJECT,
            UserBanned::SUBJECT,
            UserUnbanned::SUBJECT,
            UserAdminGranted::SUBJECT,
            UserAdminRevoked::SUBJECT,
            UserSignedOut::SUBJECT,
        ],
        consumes: &[],
    },
    ServiceEvents {
        service: "tickets",
        publishes: &[TicketCreated::SUBJECT, TicketUpdated::SUBJECT],
        consumes: &[
            OrderCreated::SUBJECT,
            OrderCancelled::SUBJECT,
            OrderCompleted::SUBJECT,
            UserBanned::SUBJECT,
            UserUnbanned::SUBJECT,
        ],
    },
    ServiceEvents {
        service: "orders",
        publishes: &[
            OrderCreated::SUBJECT,
            OrderCancelled::SUBJECT,
            OrderCompleted::SUBJECT,
        ],
        consumes: &[
            TicketCreated::SUBJECT,
            TicketUpdated::SUBJECT,
            ExpirationComplete::SUBJECT,
            PaymentAuthorized::SUBJECT,
            UserBanned::SUBJECT,
            UserUnbanned::SUBJECT,
        ],
    },
    ServiceEvents {
        service: "expiration",
        publishes: &[ExpirationComplete::SUBJECT],
        consumes: &[OrderCreated::SUBJECT],
    },
    ServiceEvents {
        service: "payments",
        publishes: &[
            PaymentAuthorized::SUBJECT,
            PaymentCaptured::SUBJECT,
            PaymentVoided::SUBJECT,
            PaymentRefunded::SUBJECT,
        ],
        consumes: &[
            OrderCreated::SUBJECT,
            OrderCancelled::SUBJECT,
            OrderCompleted::SUBJECT,
        ],
    },
];

/// What every process that authenticates requests watches (not a durable:
/// each process sees every message, from one token lifetime ago) to keep its
/// deny list of sessions: `user.banned` and `user.signed-out` on it.
pub const SESSION_EVENTS: &str = "user.>";

/// The marketplace's services, in the order they are started.
pub const SERVICES: &[&str] = &["auth", "tickets", "orders", "expiration", "payments"];

/// `service`'s entry in the [`CATALOGUE`]; panics for a service the
/// marketplace does not have (a bug in the caller).
pub fn service_events(service: &str) -> &'static ServiceEvents {
    CATALOGUE
        .iter()
        .find(|s| s.service == service)
        .unwrap_or_else(|| panic!("{service} is not in marketplace_events::CATALOGUE"))
}

/// Which service serves which part of the public API: the gateway proxies
/// by it, the web client calls by it, the all-in-one process routes by it,
/// and the Helm chart's ingress mirrors it (a deploy test holds that).
pub const API_ROUTES: &[(&str, &str)] = &[
    ("/api/users", "auth"),
    // The operator's routes (parked messages), served by auth.
    ("/api/admin", "auth"),
    ("/api/tickets", "tickets"),
    ("/api/orders", "orders"),
    ("/api/payments", "payments"),
];

/// The services that serve the public API (the others only consume events).
pub fn api_services() -> impl Iterator<Item = &'static str> {
    API_ROUTES.iter().map(|(_, service)| *service)
}

/// The marketplace's streams and durable consumers: `deploy/streams.yaml`
/// as it was built (`provision::Spec::built_in` reads it).
pub const STREAMS: shared::events::StreamsFile = shared::events::StreamsFile {
    path: "deploy/streams.yaml",
    yaml: include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/streams.yaml"
    )),
};

/// The marketplace, as tools and tests see it: its services and streams.
pub const PRODUCT: shared::events::Product = shared::events::Product {
    services: SERVICES,
    streams: STREAMS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_use_the_contracts_field_names_and_integer_cents() {
        let ticket = TicketId::new();
        let order = OrderId::new();
        let user = UserId::new();
        let e = OrderCreated {
            id: order,
            version: 0,
            status: OrderStatus::Created,
            user_id: user,
            expires_at: Timestamp::from_millis(0),
            ticket: OrderTicket {
                id: ticket,
                price_cents: Money::from_cents(1999),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({
                "id": order.to_string(), "version": 0, "status": "created",
                "userId": user.to_string(), "expiresAt": "1970-01-01T00:00:00.000Z",
                "ticket": {"id": ticket.to_string(), "priceCents": 1999}
            })
        );
        let u = TicketUpdated {
            id: ticket,
            version: 3,
            title: "t".into(),
            price_cents: Money::from_cents(5),
            user_id: user,
            order_id: None,
            status: TicketStatus::Available,
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["orderId"], json!(null));
        assert_eq!(v["priceCents"], json!(5));
        assert_eq!(v["status"], json!("available"));
    }

    #[test]
    fn every_event_has_a_schema_that_its_payloads_satisfy_in_shape() {
        let schemas = schemas();
        assert_eq!(schemas.len(), ALL_SUBJECTS.len());
        for s in ALL_SUBJECTS {
            assert!(schemas.iter().any(|(subject, _)| subject == s), "{s}");
        }
        let (_, created) = schemas
            .iter()
            .find(|(s, _)| *s == OrderCreated::SUBJECT)
            .unwrap();
        let props = &created["properties"];
        assert_eq!(props["expiresAt"]["format"], "date-time");
        assert_eq!(props["userId"]["format"], "uuid");
        let required: Vec<&str> = created["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in ["id", "version", "status", "userId", "expiresAt", "ticket"] {
            assert!(required.contains(&field), "{field}");
        }
        let (_, updated) = schemas
            .iter()
            .find(|(s, _)| *s == TicketUpdated::SUBJECT)
            .unwrap();
        assert_eq!(updated["properties"]["priceCents"]["type"], "integer");
    }

    #[test]
    fn every_subject_has_one_publisher_in_the_catalogue() {
        for s in ALL_SUBJECTS {
            let publishers: Vec<_> = CATALOGUE
                .iter()
                .filter(|e| e.publishes.contains(s))
                .collect();
            assert_eq!(publishers.len(), 1, "{s}");
        }
        for e in CATALOGUE {
            for s in e.publishes.iter().chain(e.consumes) {
                assert!(ALL_SUBJECTS.contains(s), "{}: {s}", e.service);
            }
        }
    }

    #[test]
    fn the_builtin_spec_is_valid() {
        let spec = provision::Spec::built_in(&STREAMS);
        assert!(spec.stream("TICKETS").is_some());
        assert!(!spec.consumers.is_empty());
    }

    #[test]
    fn the_builtin_spec_declares_what_the_services_publish_and_consume() {
        if let Err(problems) =
            provision::check_catalogue(&provision::Spec::built_in(&STREAMS), CATALOGUE)
        {
            panic!("{}", problems.join("\n"));
        }
    }

    #[test]
    fn every_api_prefix_belongs_to_a_service() {
        for (prefix, service) in API_ROUTES {
            assert!(SERVICES.contains(service), "{service}");
            assert!(prefix.starts_with("/api/"), "{prefix}");
        }
    }

    #[test]
    fn every_catalogued_service_is_a_service() {
        let names: Vec<_> = CATALOGUE.iter().map(|s| s.service).collect();
        assert_eq!(names, SERVICES);
    }

    #[test]
    fn subjects_are_dotted_and_grouped_by_owner() {
        for s in ALL_SUBJECTS {
            let prefix = s.split('.').next().unwrap();
            assert!(
                ["user", "ticket", "order", "expiration", "payment"].contains(&prefix),
                "{s}"
            );
        }
    }
}
