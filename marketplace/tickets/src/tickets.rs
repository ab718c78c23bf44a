//! `/api/tickets`: list, show, create, edit.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use marketplace_api as api;
use marketplace_events::{OrderId, TicketId};
use marketplace_events::{TicketCreated, TicketStatus, TicketUpdated};
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{ApiQuery, IdPath, PageQuery, ValidJson};
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
impl From<&Ticket> for api::Ticket {
    fn from(t: &Ticket) -> Self {
        api::Ticket {
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

const INSERT: &str = "INSERT INTO tickets
        (id, title, price_cents, user_id, version, status, order_id, created_at)
    VALUES ($1, $2, $3, $4, 0, 'available', NULL, $5)";

const UPDATE: &str = "UPDATE tickets
    SET title = $2, price_cents = $3, version = $4, status = $5, order_id = $6
    WHERE id = $1";

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
            UPDATE,
            &[
                &self.id,
                &self.title,
                &self.price,
                &self.version,
                &self.status.as_str(),
                &self.order_id,
            ],
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
) -> Result<Json<Vec<api::Ticket>>, ApiError> {
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
    Ok(Json(tickets.iter().map(api::Ticket::from).collect()))
}

/// Tickets for sale (`available`), oldest first.
#[utoipa::path(get, path = "/api/tickets", tag = "tickets",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of tickets for sale, oldest first", body = Vec<api::Ticket>),
        (status = 400, description = "limit or after is malformed", body = shared::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<api::Ticket>>, ApiError> {
    list_where(&state, "status = $1", "available".into(), &q).await
}

/// The caller's own tickets, whatever their status, oldest first.
#[utoipa::path(get, path = "/api/tickets/mine", tag = "tickets",
    params(PageQuery),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of the caller's tickets, oldest first", body = Vec<api::Ticket>),
        (status = 400, description = "limit or after is malformed", body = shared::openapi::ErrorBody),
    ))]
async fn mine(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<api::Ticket>>, ApiError> {
    list_where(&state, "user_id = $1", user.id.to_string(), &q).await
}

/// One ticket, whatever its status.
#[utoipa::path(get, path = "/api/tickets/{id}", tag = "tickets",
    params(("id" = String, Path, description = "ticket id")),
    responses(
        (status = 200, description = "The ticket", body = api::Ticket),
        (status = 404, description = "No such ticket", body = shared::openapi::ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    IdPath(id): IdPath<TicketId>,
) -> Result<Json<api::Ticket>, ApiError> {
    let ticket = state
        .db
        .read(move |c| Ticket::find(c, id))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(api::Ticket::from(&ticket)))
}

/// Lists a ticket for sale; publishes `ticket.created`.
#[utoipa::path(post, path = "/api/tickets", tag = "tickets",
    request_body = api::TicketInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "Listed, version 0, available", body = api::Ticket),
    ))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    ValidJson(input): ValidJson<api::TicketInput>,
) -> Result<(StatusCode, Json<api::Ticket>), ApiError> {
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
            c.execute(INSERT, &[&t.id, &t.title, &t.price, &t.user_id, &now])?;
            let event = TicketCreated {
                id: t.id,
                version: 0,
                title: t.title.clone(),
                price_cents: t.price,
                user_id: t.user_id,
            };
            c.enqueue(&event, &trace, now)?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(api::Ticket::from(&ticket))))
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
    request_body = api::TicketInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Edited; version one more", body = api::Ticket),
        (status = 403, description = "Not the seller", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = shared::openapi::ErrorBody),
        (status = 409, description = "The ticket is reserved or sold", body = shared::openapi::ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    IdPath(id): IdPath<TicketId>,
    ValidJson(input): ValidJson<api::TicketInput>,
) -> Result<Json<api::Ticket>, ApiError> {
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
    Ok(Json(api::Ticket::from(&ticket)))
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
