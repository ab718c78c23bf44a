//! `/api/tickets`: list, show, create, edit.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use marketplace_events::{OrderId, TicketId};
use marketplace_events::{TicketCreated, TicketStatus, TicketUpdated};
use serde::Serialize;
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{ApiQuery, Fields, FromFields, IdPath, PageQuery, ValidJson};
use shared::ids::UserId;
use shared::money::{Dollars, Money};
use shared::trace::TraceContext;
use store::{Conn, Row, StoreError};

use crate::AppState;

/// The routes and their OpenAPI description, registered together.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(list, create))
        .routes(utoipa_axum::routes!(mine))
        .routes(utoipa_axum::routes!(show, update))
}

/// A ticket as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Ticket)]
pub struct TicketBody {
    #[schema(value_type = String, format = Uuid)]
    id: TicketId,
    title: String,
    /// Dollars, at most two decimals.
    #[schema(value_type = f64)]
    price: Dollars,
    #[schema(value_type = String, format = Uuid)]
    user_id: UserId,
    /// 0 when listed, one more with every change.
    version: i64,
    status: TicketStatus,
    /// The order holding the ticket while it is reserved, else null.
    #[schema(value_type = Option<String>, format = Uuid, required = true)]
    order_id: Option<OrderId>,
}

impl From<&Ticket> for TicketBody {
    fn from(t: &Ticket) -> Self {
        TicketBody {
            id: t.id,
            title: t.title.clone(),
            price: Dollars(t.price),
            user_id: t.user_id,
            version: t.version,
            status: t.status,
            order_id: t.order_id,
        }
    }
}

/// What a seller sends to list or edit a ticket.
#[derive(utoipa::ToSchema)]
pub struct TicketInput {
    /// 1 to 120 characters after trimming, something visible among them; no
    /// control, text-direction or other format characters (`shared::text`;
    /// the pattern is `shared::text::one_line_pattern()`, which a test
    /// keeps it equal to).
    #[schema(
        min_length = 1,
        max_length = 120,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890\\u0891\\u08E2\\u180E\\u200B\\u200E\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}]*[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890\\u0891\\u08E2\\u180E\\u200B\\u200E\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}\\u0020\\u00A0\\u034F\\u115F\\u1160\\u1680\\u17B4\\u17B5\\u180B-\\u180D\\u180F\\u2000-\\u200A\\u200C\\u200D\\u202F\\u205F\\u2065\\u2800\\u3000\\u3164\\uFE00-\\uFE0F\\uFFA0\u{E0000}\u{E0002}-\u{E001F}\u{E0080}-\u{E0FFF}][^\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890\\u0891\\u08E2\\u180E\\u200B\\u200E\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}]*$"
    )]
    title: String,
    /// Dollars: more than 0, at most 1 000 000, at most two decimals.
    #[schema(value_type = f64, minimum = 0.01, maximum = 1000000, multiple_of = 0.01)]
    price: Money,
}

impl FromFields for TicketInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let title = f.line("title", "Title", 120);
        let price = match f.value("price") {
            None => {
                f.fail("price", "Price is required");
                None
            }
            Some(v) => match Money::parse_price(v) {
                Ok(m) => Some(m),
                Err(msg) => {
                    f.fail("price", msg);
                    None
                }
            },
        };
        Some(TicketInput {
            title: title?.to_owned(),
            price: price?,
        })
    }
}

/// A ticket as stored.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub id: TicketId,
    pub title: String,
    pub price: Money,
    pub user_id: UserId,
    pub version: i64,
    pub status: TicketStatus,
    pub order_id: Option<OrderId>,
}

pub(crate) const COLUMNS: &str = "id, title, price_cents, user_id, version, status, order_id";

impl Ticket {
    pub(crate) fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(Ticket {
            id: r.get(0)?,
            title: r.get(1)?,
            price: r.get(2)?,
            user_id: r.get(3)?,
            version: r.get(4)?,
            status: r.get(5)?,
            order_id: r.get(6)?,
        })
    }

    /// Finds a ticket and locks it until the transaction ends (it is about to change).
    pub(crate) fn find_for_update(
        c: &mut dyn Conn,
        id: TicketId,
    ) -> Result<Option<Ticket>, StoreError> {
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM tickets WHERE id = $1 FOR UPDATE"),
            &[&id],
        )?
        .map(|r| Ticket::from_row(&r))
        .transpose()
    }

    pub(crate) fn find(c: &mut dyn Conn, id: TicketId) -> Result<Option<Ticket>, StoreError> {
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM tickets WHERE id = $1"),
            &[&id],
        )?
        .map(|r| Ticket::from_row(&r))
        .transpose()
    }

    /// Writes the ticket's current fields back (its version already bumped).
    pub(crate) fn save(&self, c: &mut dyn Conn) -> Result<(), StoreError> {
        c.execute(
            "UPDATE tickets SET title = $2, price_cents = $3, version = $4, status = $5, order_id = $6 WHERE id = $1",
            &[&self.id, &self.title, &self.price, &self.version, &self.status.as_str(), &self.order_id],
        )?;
        Ok(())
    }

    pub(crate) fn updated_event(&self) -> TicketUpdated {
        TicketUpdated {
            id: self.id,
            version: self.version,
            title: self.title.clone(),
            price_cents: self.price,
            user_id: self.user_id,
            order_id: self.order_id,
            status: self.status,
        }
    }
}

/// One page of the tickets `condition` (with `$1` bound to `key`) selects,
/// oldest first.
async fn list_where(
    state: &AppState,
    condition: &'static str,
    key: String,
    q: &PageQuery,
) -> Result<Json<Vec<TicketBody>>, ApiError> {
    let (limit, after) = q.read(TicketId::parse, "a ticket")?;
    let tickets = state
        .db
        .read(move |c| {
            let rows = match after {
                Some(after) => c.query(
                    &format!("SELECT {COLUMNS} FROM tickets WHERE {condition} AND id > $2 ORDER BY id LIMIT $3"),
                    &[&key, &after, &limit],
                )?,
                None => c.query(
                    &format!("SELECT {COLUMNS} FROM tickets WHERE {condition} ORDER BY id LIMIT $2"),
                    &[&key, &limit],
                )?,
            };
            rows.iter().map(Ticket::from_row).collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(tickets.iter().map(TicketBody::from).collect()))
}

/// Tickets for sale (`available`), oldest first.
#[utoipa::path(get, path = "/api/tickets", tag = "tickets",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of tickets for sale, oldest first", body = Vec<TicketBody>),
        (status = 400, description = "limit or after is malformed", body = shared::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<TicketBody>>, ApiError> {
    list_where(&state, "status = $1", "available".into(), &q).await
}

/// The caller's own tickets, whatever their status, oldest first.
#[utoipa::path(get, path = "/api/tickets/mine", tag = "tickets",
    params(PageQuery),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of the caller's tickets, oldest first", body = Vec<TicketBody>),
        (status = 400, description = "limit or after is malformed", body = shared::openapi::ErrorBody),
    ))]
async fn mine(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<TicketBody>>, ApiError> {
    list_where(&state, "user_id = $1", user.id.to_string(), &q).await
}

/// One ticket, whatever its status.
#[utoipa::path(get, path = "/api/tickets/{id}", tag = "tickets",
    params(("id" = String, Path, description = "ticket id")),
    responses(
        (status = 200, description = "The ticket", body = TicketBody),
        (status = 404, description = "No such ticket", body = shared::openapi::ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    IdPath(id): IdPath<TicketId>,
) -> Result<Json<TicketBody>, ApiError> {
    let ticket = state
        .db
        .read(move |c| Ticket::find(c, id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(TicketBody::from(&ticket)))
}

/// Lists a ticket for sale; publishes `ticket.created`.
#[utoipa::path(post, path = "/api/tickets", tag = "tickets",
    request_body = TicketInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Listed, version 0, available", body = TicketBody),
    ))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    ValidJson(input): ValidJson<TicketInput>,
) -> Result<(StatusCode, Json<TicketBody>), ApiError> {
    let now = state.clock.now();
    let ticket = Ticket {
        id: TicketId::new(),
        title: input.title,
        price: input.price,
        user_id: user.id,
        version: 0,
        status: TicketStatus::Available,
        order_id: None,
    };
    let t = ticket.clone();
    state
        .outbox
        .write(move |c| {
            refuse_banned(c, t.user_id)?;
            c.execute(
                "INSERT INTO tickets (id, title, price_cents, user_id, version, status, order_id, created_at)
                 VALUES ($1, $2, $3, $4, 0, 'available', NULL, $5)",
                &[&t.id, &t.title, &t.price, &t.user_id, &now],
            )?;
            let event = TicketCreated { id: t.id, version: 0, title: t.title.clone(), price_cents: t.price, user_id: t.user_id };
            c.enqueue(&event, &trace, now)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(TicketBody::from(&ticket))))
}

/// 403 for a seller this service knows to be banned: a request on a
/// session its deny list had not yet ended (the ban's events travel
/// separately) still lists or edits nothing.
fn refuse_banned(c: &mut dyn Conn, seller: UserId) -> Result<(), ApiError> {
    if crate::listeners::seller_banned(c, seller)? {
        return Err(ApiError::Forbidden("This account is banned".into()));
    }
    Ok(())
}

/// Edits the caller's ticket; publishes `ticket.updated`.
#[utoipa::path(put, path = "/api/tickets/{id}", tag = "tickets",
    params(("id" = String, Path, description = "ticket id")),
    request_body = TicketInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Edited; version one more", body = TicketBody),
        (status = 403, description = "Not the seller", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = shared::openapi::ErrorBody),
        (status = 409, description = "The ticket is reserved or sold", body = shared::openapi::ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    IdPath(id): IdPath<TicketId>,
    ValidJson(input): ValidJson<TicketInput>,
) -> Result<Json<TicketBody>, ApiError> {
    let now = state.clock.now();
    // Check and change in one transaction, so a reservation cannot slip in
    // between the check and the write.
    let ticket = state
        .outbox
        .write(move |c| {
            let mut ticket = Ticket::find_for_update(c, id)?.ok_or(ApiError::NotFound)?;
            if ticket.user_id != user.id {
                return Err(ApiError::Forbidden(
                    "Only the seller can edit this ticket".into(),
                ));
            }
            refuse_banned(c, user.id)?;
            match ticket.status {
                TicketStatus::Reserved => {
                    return Err(ApiError::Conflict("Cannot edit a reserved ticket".into()));
                }
                TicketStatus::Sold => {
                    return Err(ApiError::Conflict("Cannot edit a sold ticket".into()));
                }
                // Withdrawn: its seller is banned, and was refused above.
                TicketStatus::Available | TicketStatus::Withdrawn => {}
            }
            ticket.title = input.title;
            ticket.price = input.price;
            ticket.version += 1;
            ticket.save(c)?;
            c.enqueue(&ticket.updated_event(), &trace, now)?;
            Ok(ticket)
        })
        .await?;
    Ok(Json(TicketBody::from(&ticket)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_title_pattern_in_the_api_description_is_the_text_rule() {
        let spec = serde_json::to_value(crate::openapi()).unwrap();
        let pattern =
            &spec["components"]["schemas"]["TicketInput"]["properties"]["title"]["pattern"];
        assert_eq!(
            pattern.as_str(),
            Some(shared::text::one_line_pattern().as_str()),
            "paste shared::text::one_line_pattern() into TicketInput's title"
        );
    }
}
