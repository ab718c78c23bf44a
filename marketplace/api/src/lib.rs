//! The marketplace's HTTP API: each request and response body, once. The
//! services read requests and answer with these types, the web client sends
//! and reads them, and the OpenAPI description is derived from them.
//!
//! A request type's fields are [`Field`]s and its [`Validate`] holds the
//! contract's checks and words; what a handler gets is its `Valid` type.

use marketplace_events::{OrderId, OrderStatus, PaymentId, TicketId, TicketStatus};
use serde::{Deserialize, Serialize};
use shared::email::Email;
use shared::ids::UserId;
use shared::money::{Dollars, Money};
use shared::time::Timestamp;
use shared::wire::{Check, Field, Validate};

// ------------------------------------------------------------------ users

/// A user as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    #[schema(format = Email)]
    pub email: String,
    /// Whether the user is an admin (may list, ban and unban users).
    pub admin: bool,
}

/// Who the session belongs to, if anyone.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentUser {
    #[schema(required = true)]
    pub current_user: Option<User>,
}

/// A user as an admin sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUser {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    #[schema(format = Email)]
    pub email: String,
    /// The user record's version: bumped by every ban and unban.
    pub version: i64,
    pub admin: bool,
    pub banned: bool,
    /// When the ban began, if banned.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub banned_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Sign-up details.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignUp {
    /// Stored trimmed and lower-cased.
    #[schema(value_type = String, format = Email)]
    pub email: Field<String>,
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub password: Field<String>,
}

/// An address and a password, checked.
#[derive(Debug)]
pub struct Credentials {
    pub email: Email,
    pub password: String,
}

impl Credentials {
    /// Both, when both passed their checks.
    fn of(email: Option<Email>, password: Option<String>) -> Option<Credentials> {
        Some(Credentials {
            email: email?,
            password: password?,
        })
    }
}

impl Validate for SignUp {
    type Valid = Credentials;

    fn validate(self, check: &mut Check) -> Option<Credentials> {
        let email = email(check, self.email);
        let password = new_password(check, self.password, "password", "Password");
        Credentials::of(email, password)
    }
}

/// Sign-in credentials.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    #[schema(value_type = String, format = Email)]
    pub email: Field<String>,
    #[schema(value_type = String, min_length = 1)]
    pub password: Field<String>,
}

impl Validate for SignIn {
    type Valid = Credentials;

    fn validate(self, check: &mut Check) -> Option<Credentials> {
        let email = email(check, self.email);
        let password = given_password(check, self.password, "password", "Password");
        Credentials::of(email, password)
    }
}

/// A new password, and the current one to prove it is the owner asking.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordChange {
    #[schema(value_type = String, min_length = 1)]
    pub current_password: Field<String>,
    /// The same rules as at sign-up.
    #[schema(value_type = String, min_length = 8, max_length = 128)]
    pub new_password: Field<String>,
}

/// A password change, checked.
#[derive(Debug)]
pub struct NewPassword {
    pub current: String,
    pub new: String,
}

impl Validate for PasswordChange {
    type Valid = NewPassword;

    fn validate(self, check: &mut Check) -> Option<NewPassword> {
        let current = given_password(
            check,
            self.current_password,
            "currentPassword",
            "Current password",
        );
        let new = new_password(check, self.new_password, "newPassword", "New password");
        Some(NewPassword {
            current: current?,
            new: new?,
        })
    }
}

/// The address, normalised ([`Email::parse`]).
fn email(check: &mut Check, value: Field<String>) -> Option<Email> {
    let raw = check.non_empty(value, "email", "Email")?;
    Email::parse(&raw)
        .map_err(|msg| check.fail("email", msg))
        .ok()
}

/// A password a user chooses: 8 to 128 characters.
fn new_password(
    check: &mut Check,
    value: Field<String>,
    field: &str,
    label: &str,
) -> Option<String> {
    let p = check.string(value, field, label)?;
    if !(8..=128).contains(&p.chars().count()) {
        check.fail(
            field,
            format!("{label} must be between 8 and 128 characters"),
        );
        return None;
    }
    Some(p)
}

/// A password a user proves they know: any but empty.
fn given_password(
    check: &mut Check,
    value: Field<String>,
    field: &str,
    label: &str,
) -> Option<String> {
    let p = check.string(value, field, label)?;
    if p.is_empty() {
        check.fail(field, format!("{label} is required"));
        return None;
    }
    Some(p)
}

// ---------------------------------------------------------------- tickets

/// A ticket as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    #[schema(value_type = String, format = Uuid)]
    pub id: TicketId,
    pub title: String,
    /// Dollars, at most two decimals.
    #[schema(value_type = f64)]
    pub price: Dollars,
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// 0 when listed, one more with every change.
    pub version: i64,
    pub status: TicketStatus,
    /// The order holding the ticket while it is reserved, else null.
    #[schema(value_type = Option<String>, format = Uuid, required = true)]
    pub order_id: Option<OrderId>,
}

/// What a seller sends to list or edit a ticket.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketInput {
    /// 1 to 120 characters after trimming, something visible among them; no
    /// control, text-direction or other format characters (`shared::text`;
    /// the pattern is `shared::text::one_line_pattern()`, which a test
    /// keeps it equal to).
    #[schema(
        value_type = String,
        min_length = 1,
        max_length = 120,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890\\u0891\\u08E2\\u180E\\u200B\\u200E\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}]*[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890\\u0891\\u08E2\\u180E\\u200B\\u200E\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}\\u0020\\u00A0\\u034F\\u115F\\u1160\\u1680\\u17B4\\u17B5\\u180B-\\u180D\\u180F\\u2000-\\u200A\\u200C\\u200D\\u202F\\u205F\\u2065\\u2800\\u3000\\u3164\\uFE00-\\uFE0F\\uFFA0\u{E0000}\u{E0002}-\u{E001F}\u{E0080}-\u{E0FFF}][^\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890\\u0891\\u08E2\\u180E\\u200B\\u200E\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}]*$"
    )]
    pub title: Field<String>,
    /// Dollars: more than 0, at most 1 000 000, at most two decimals.
    #[schema(value_type = f64, minimum = 0.01, maximum = 1000000, multiple_of = 0.01)]
    pub price: Field<f64>,
}

/// A ticket's title and price, checked.
#[derive(Debug)]
pub struct TicketDraft {
    pub title: String,
    pub price: Money,
}

impl Validate for TicketInput {
    type Valid = TicketDraft;

    fn validate(self, check: &mut Check) -> Option<TicketDraft> {
        let title = check.line(self.title, "title", "Title", 120);
        let price = check
            .required(self.price, "price", "Price", "a number")
            .and_then(|dollars| {
                Money::parse_price(&dollars.into())
                    .map_err(|msg| check.fail("price", msg))
                    .ok()
            });
        Some(TicketDraft {
            title: title?,
            price: price?,
        })
    }
}

// ----------------------------------------------------------------- orders

/// An order as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[schema(value_type = String, format = Uuid)]
    pub id: OrderId,
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    pub status: OrderStatus,
    /// When the hold on the ticket ends (RFC 3339, UTC).
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    pub version: i64,
    pub ticket: OrderTicket,
}

/// The ticket an order is for, as the orders service knows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderTicket {
    #[schema(value_type = String, format = Uuid)]
    pub id: TicketId,
    pub title: String,
    /// Dollars.
    #[schema(value_type = f64)]
    pub price: Dollars,
    pub version: i64,
}

/// What a buyer sends to order a ticket.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderInput {
    /// The ticket's id; one that names no ticket is a 404.
    #[schema(value_type = String, min_length = 1)]
    pub ticket_id: Field<String>,
}

impl Validate for OrderInput {
    /// The ticket id as sent, trimmed (read as an id by the handler: one
    /// that is not is a 404, as an unknown one is).
    type Valid = String;

    fn validate(self, check: &mut Check) -> Option<String> {
        check.non_empty(self.ticket_id, "ticketId", "ticketId")
    }
}

// --------------------------------------------------------------- payments

/// Where a payment stands, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublicStatus {
    /// The card holds the amount; the order's verdict is not known yet.
    Pending,
    /// The order completed; the held amount is being taken.
    Capturing,
    /// The order completed and the amount was taken.
    Captured,
    /// The order was cancelled (or no verdict came): the hold was released,
    /// nothing was charged.
    Voided,
    /// The card was declined; nothing was held.
    Declined,
    /// Captured, then given back by an operator.
    Refunded,
}

/// A payment as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[schema(value_type = String, format = Uuid)]
    pub id: PaymentId,
    #[schema(value_type = String, format = Uuid)]
    pub order_id: OrderId,
    pub status: PublicStatus,
    /// The gateway's authorization (a Stripe PaymentIntent id); empty while
    /// the gateway has not answered.
    pub authorization_id: String,
    /// Dollars held, charged or released.
    #[schema(value_type = f64)]
    pub amount: Dollars,
}

/// What a buyer sends to pay for an order.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentInput {
    /// The order's id; one that names no order of the caller's is a 404.
    #[schema(value_type = String, min_length = 1)]
    pub order_id: Field<String>,
    /// A card token, such as Stripe's `tok_visa`.
    #[schema(value_type = String, min_length = 1)]
    pub token: Field<String>,
}

/// A payment request, checked: both trimmed.
#[derive(Debug)]
pub struct PaymentRequest {
    /// Read as an id by the handler (one that is not is a 404).
    pub order_id: String,
    pub token: String,
}

impl Validate for PaymentInput {
    type Valid = PaymentRequest;

    fn validate(self, check: &mut Check) -> Option<PaymentRequest> {
        let order_id = check.non_empty(self.order_id, "orderId", "orderId");
        let token = check.non_empty(self.token, "token", "token");
        Some(PaymentRequest {
            order_id: order_id?,
            token: token?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use shared::error::ApiError;

    fn errors<T: serde::de::DeserializeOwned + Validate>(body: Value) -> Vec<(String, String)>
    where
        T::Valid: std::fmt::Debug,
    {
        match shared::wire::validate::<T>(body) {
            Err(ApiError::Validation(errors)) => errors
                .into_iter()
                .map(|e| (e.field.unwrap_or_default(), e.message))
                .collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect()
    }

    #[test]
    fn every_bad_field_of_a_request_is_named_at_once() {
        assert_eq!(
            errors::<SignUp>(json!({ "email": "not an address", "password": "short" })),
            pairs(&[
                ("email", "Email must be valid"),
                ("password", "Password must be between 8 and 128 characters")
            ])
        );
        assert_eq!(
            errors::<PasswordChange>(json!({ "currentPassword": "", "newPassword": 12345678 })),
            pairs(&[
                ("currentPassword", "Current password is required"),
                ("newPassword", "New password must be a string")
            ])
        );
        assert_eq!(
            errors::<TicketInput>(json!({ "title": "  ", "price": "20" })),
            pairs(&[
                ("title", "Title is required"),
                ("price", "Price must be a number")
            ])
        );
        assert_eq!(
            errors::<TicketInput>(json!({ "title": "a", "price": 19.999 })),
            pairs(&[("price", "Price must have at most two decimals")])
        );
        assert_eq!(
            errors::<PaymentInput>(json!({ "orderId": " " })),
            pairs(&[
                ("orderId", "orderId is required"),
                ("token", "token is required")
            ])
        );
        assert_eq!(
            errors::<OrderInput>(json!({ "ticketId": 5 })),
            pairs(&[("ticketId", "ticketId must be a string")])
        );
    }

    #[test]
    fn what_the_web_client_sends_the_service_reads() {
        let sent = TicketInput {
            title: " Concert ".to_owned().into(),
            price: 19.99.into(),
        };
        let draft =
            shared::wire::validate::<TicketInput>(serde_json::to_value(&sent).unwrap()).unwrap();
        assert_eq!(
            (draft.title.as_str(), draft.price),
            ("Concert", Money::from_cents(1999))
        );
        // What a person typed that is not a number is passed on as typed,
        // and the service says what is wrong with it.
        let typed = TicketInput {
            title: "a".to_owned().into(),
            price: Field::Mistyped("twenty".into()),
        };
        assert_eq!(
            errors::<TicketInput>(serde_json::to_value(&typed).unwrap()),
            pairs(&[("price", "Price must be a number")])
        );
    }
}
