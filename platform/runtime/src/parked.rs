//! The operator's API over parked messages, the same on every bus and for
//! every product: list them, show one (payload, headers, the last error,
//! its trace), replay them to the consumer that gave up on them, or discard
//! them with a reason. Admins only (the product says who is one); a product mounts it in
//! one of its services (the one that knows the accounts), and the gateway
//! routes `/api/admin` there.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use bus::{Bus, BusError, BusErrorKind, ParkedFilter, ParkedMessage, ParkedState, Resolution};
use serde::{Deserialize, Serialize};
use shared::ApiError;
use shared::auth::{AuthKeys, AuthUser};
use shared::http::{ApiQuery, IdPath, ValidJson};
use shared::time::Timestamp;
use shared::wire::{Check, Field, Validate};

/// What the routes need: the bus, and who may use them — the admins among
/// signed-in users, or, for a product without accounts, whoever presents
/// the operator's token.
#[derive(Clone)]
pub struct ParkedAdmin {
    bus: Arc<dyn Bus>,
    way_in: WayIn,
}

/// Who may use the routes.
#[derive(Clone)]
enum WayIn {
    /// Signed-in users (their sessions checked with `keys`) whom
    /// `is_admin` says are admins.
    Admins {
        keys: Arc<AuthKeys>,
        is_admin: AdminCheck,
    },
    /// Whoever presents the operator's token (its SHA-256 is kept).
    OperatorToken([u8; 32]),
}

/// Whether a signed-in user is an admin: the product's answer (its
/// accounts service reads it from its users).
pub type AdminCheck = Arc<
    dyn Fn(shared::ids::UserId) -> shared::http::BoxFuture<'static, Result<bool, ApiError>>
        + Send
        + Sync,
>;

impl ParkedAdmin {
    /// Open to the signed-in users `is_admin` says are admins.
    pub fn new(bus: Arc<dyn Bus>, keys: Arc<AuthKeys>, is_admin: AdminCheck) -> Self {
        ParkedAdmin {
            bus,
            way_in: WayIn::Admins { keys, is_admin },
        }
    }

    /// For a product without accounts: the routes answer a request that
    /// carries `Authorization: Bearer <token>`, nothing else (no session is
    /// accepted).
    pub fn for_operator_token(bus: Arc<dyn Bus>, token: &str) -> Self {
        ParkedAdmin {
            bus,
            way_in: WayIn::OperatorToken(digest(token)),
        }
    }
}

/// Tokens are compared by their SHA-256: comparing digests leaks nothing
/// useful about the token through timing, without a constant-time crate.
fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl ParkedAdmin {
    /// Keeps the parked-message gauges current from this bus (see
    /// [`spawn_gauges`]).
    pub fn spawn_gauges(
        &self,
        every: std::time::Duration,
        shutdown: shared::shutdown::Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        spawn_gauges(self.bus.clone(), every, shutdown)
    }
}

/// Keeps the gauges an operator's alerts read current — messages waiting
/// per consumer (`bus_parked_waiting`) and the age of the oldest
/// (`bus_parked_oldest_seconds`) — reading `bus` every `every` until
/// `shutdown`. Every process serving the parked routes reports them (alerts
/// take the `max` over processes); a product without those routes may too.
pub fn spawn_gauges(
    bus: Arc<dyn Bus>,
    every: std::time::Duration,
    mut shutdown: shared::shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reported = std::collections::BTreeSet::new();
        loop {
            let waiting = ParkedFilter {
                waiting_only: true,
                ..Default::default()
            };
            match bus.parked_messages(&waiting).await {
                Ok(found) => reported = report_waiting(&found, reported),
                Err(e) => {
                    tracing::debug!(error = %store::report(&e), "cannot read parked messages for their gauges");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => break,
            }
        }
    })
}

/// Sets the gauges from the waiting messages `found` (consumers reported
/// before and now clear go to 0); the consumers reported now.
fn report_waiting(
    found: &[ParkedMessage],
    before: std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let now = shared::time::Clock::System.now().millis();
    let mut per: std::collections::BTreeMap<&str, (u64, i64)> = Default::default();
    for p in found {
        let e = per.entry(&p.consumer).or_insert((0, i64::MAX));
        e.0 += 1;
        e.1 = e.1.min(p.parked_at.millis());
    }
    for gone in before.iter().filter(|c| !per.contains_key(c.as_str())) {
        shared::metrics::set("bus_parked_waiting", &[("consumer", gone)], 0.0);
        shared::metrics::set("bus_parked_oldest_seconds", &[("consumer", gone)], 0.0);
    }
    for (consumer, (count, oldest)) in &per {
        shared::metrics::set(
            "bus_parked_waiting",
            &[("consumer", consumer)],
            *count as f64,
        );
        shared::metrics::set(
            "bus_parked_oldest_seconds",
            &[("consumer", consumer)],
            (now - oldest).max(0) as f64 / 1000.0,
        );
    }
    per.keys().map(|c| (*c).to_owned()).collect()
}

/// The routes, with their OpenAPI description.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<ParkedAdmin> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(list))
        .routes(utoipa_axum::routes!(show))
        .routes(utoipa_axum::routes!(replay_one))
        .routes(utoipa_axum::routes!(replay_many))
        .routes(utoipa_axum::routes!(discard))
}

/// The routes, ready to merge into a service's router.
pub fn router(state: ParkedAdmin) -> axum::Router {
    routes().split_for_parts().0.with_state(state)
}

/// Who is asking, for the log: an admin's e-mail, or `operator` (token).
/// 401 without a session (or without the right token), 403 for a user who
/// is not an admin.
struct Admin(String);

impl FromRequestParts<ParkedAdmin> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ParkedAdmin) -> Result<Self, ApiError> {
        let (keys, is_admin) = match &state.way_in {
            WayIn::OperatorToken(want) => {
                let given = parts
                    .headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                return match given {
                    Some(token) if digest(token.trim()) == *want => Ok(Admin("operator".into())),
                    _ => Err(ApiError::Unauthorized),
                };
            }
            WayIn::Admins { keys, is_admin } => (keys, is_admin),
        };
        let user = AuthUser::from_request_parts(parts, keys).await?;
        if !is_admin(user.id).await? {
            return Err(ApiError::Forbidden("Only an admin may do this".into()));
        }
        Ok(Admin(user.email))
    }
}

const CONSUMER_RULE: &str =
    "consumer must be a durable consumer's name: letters, digits, '-' and '_'";

/// Whether `s` can name a durable consumer (what every bus accepts).
fn is_durable_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn bus_error(e: BusError) -> ApiError {
    match e.kind {
        BusErrorKind::Unavailable | BusErrorKind::Timeout | BusErrorKind::StreamMissing => {
            ApiError::Unavailable("The event bus cannot be reached; try again".into())
        }
        _ => ApiError::internal(e),
    }
}

/// A parked message as an operator sees it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ParkedMessage)]
pub struct ParkedBody {
    /// The record's id: what `show`, `replay` and `discard` take.
    pub id: u64,
    /// The durable consumer that gave up on it.
    pub consumer: String,
    pub subject: String,
    /// Its position in its stream.
    pub seq: u64,
    /// The message's own id.
    pub message_id: String,
    /// Deliveries it had before it was parked.
    pub deliveries: u32,
    /// Why: the handler's last error, the reason it was terminated, or that
    /// no delivery was acknowledged in time.
    pub reason: String,
    #[schema(format = DateTime)]
    pub parked_at: String,
    /// The trace it belongs to (W3C trace id), if it carried one.
    pub trace_id: Option<String>,
    /// `parked` (waiting), `replayed` or `discarded`.
    pub state: String,
    /// When it was replayed or discarded.
    #[schema(format = DateTime)]
    pub resolved_at: Option<String>,
    /// The reason it was discarded with.
    pub discard_reason: Option<String>,
    /// Its headers as `[name, value]` pairs (`show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Vec<String>>>)]
    pub headers: Option<Vec<(String, String)>>,
    /// Its payload: the JSON it holds, or the text if it is not JSON
    /// (`show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

impl ParkedBody {
    fn of(p: ParkedMessage, whole: bool) -> Self {
        let (resolved_at, discard_reason) = match &p.state {
            ParkedState::Parked => (None, None),
            ParkedState::Replayed { at } => (Some(at.to_rfc3339()), None),
            ParkedState::Discarded { at, reason } => (Some(at.to_rfc3339()), Some(reason.clone())),
        };
        ParkedBody {
            id: p.record,
            trace_id: p.trace_id().map(str::to_owned),
            state: p.state.name().to_owned(),
            consumer: p.consumer,
            subject: p.subject,
            seq: p.seq,
            message_id: p.id,
            deliveries: p.deliveries,
            reason: p.reason,
            parked_at: p.parked_at.to_rfc3339(),
            resolved_at,
            discard_reason,
            headers: whole.then_some(p.headers),
            payload: whole.then(|| {
                serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                })
            }),
        }
    }
}

/// Which parked messages to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParkedQuery {
    /// One durable consumer's only (e.g. `orders-payment-authorized`).
    pub consumer: Option<String>,
    /// Parked at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// `parked` (waiting for an operator; the default), `replayed`,
    /// `discarded`, or `all`.
    pub state: Option<String>,
}

/// Parked messages, oldest first (without payloads and headers: `GET
/// /api/admin/parked/{id}` has them). Admins only.
#[utoipa::path(get, path = "/api/admin/parked", tag = "admin",
    params(ParkedQuery),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Parked messages, oldest first", body = Vec<ParkedBody>),
        (status = 400, description = "A malformed consumer, time or state", body = shared::openapi::ErrorBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 503, description = "The event bus cannot be reached", body = shared::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<ParkedAdmin>,
    _: Admin,
    ApiQuery(q): ApiQuery<ParkedQuery>,
) -> Result<Json<Vec<ParkedBody>>, ApiError> {
    let since = match q.since.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(Timestamp::parse_rfc3339(s).ok_or_else(|| {
            ApiError::field(
                "since",
                "since must be a time in RFC 3339 (2026-12-05T10:00:00Z)",
            )
        })?),
    };
    let wanted = q.state.as_deref().unwrap_or("parked");
    if !["parked", "replayed", "discarded", "all"].contains(&wanted) {
        return Err(ApiError::field(
            "state",
            "state must be parked, replayed, discarded or all",
        ));
    }
    let consumer = q.consumer.filter(|c| !c.trim().is_empty());
    if consumer.as_deref().is_some_and(|c| !is_durable_name(c)) {
        return Err(ApiError::field("consumer", CONSUMER_RULE));
    }
    let filter = ParkedFilter {
        consumer,
        since,
        waiting_only: wanted == "parked",
    };
    let found = state
        .bus
        .parked_messages(&filter)
        .await
        .map_err(bus_error)?;
    Ok(Json(
        found
            .into_iter()
            .filter(|p| wanted == "all" || p.state.name() == wanted)
            .map(|p| ParkedBody::of(p, false))
            .collect(),
    ))
}

async fn find(state: &ParkedAdmin, id: u64) -> Result<ParkedMessage, ApiError> {
    // Records are few and listing is what every bus does well; a lookup by
    // id goes through it.
    let all = state
        .bus
        .parked_messages(&ParkedFilter::default())
        .await
        .map_err(bus_error)?;
    all.into_iter()
        .find(|p| p.record == id)
        .ok_or(ApiError::NotFound)
}

/// One parked message, whole: payload, headers, the last error, its trace.
/// Admins only.
#[utoipa::path(get, path = "/api/admin/parked/{id}", tag = "admin",
    params(("id" = u64, Path, description = "the record's id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The parked message", body = ParkedBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such record", body = shared::openapi::ErrorBody),
        (status = 503, description = "The event bus cannot be reached", body = shared::openapi::ErrorBody),
    ))]
async fn show(
    State(state): State<ParkedAdmin>,
    _: Admin,
    IdPath(id): IdPath<u64>,
) -> Result<Json<ParkedBody>, ApiError> {
    Ok(Json(ParkedBody::of(find(&state, id).await?, true)))
}

fn settled(resolution: Resolution) -> Result<ParkedMessage, ApiError> {
    match resolution {
        Resolution::Done(p) => Ok(p),
        Resolution::Already(p) => Err(ApiError::Conflict(format!(
            "Parked message {} was {} already",
            p.record,
            p.state.name()
        ))),
        Resolution::NotFound => Err(ApiError::NotFound),
    }
}

/// Delivers a parked message again — its original id, headers and payload
/// — to the consumer that parked it, and no other; marks it replayed. Fix
/// the cause first: if it fails again it is parked again, as a new record.
/// Admins only.
#[utoipa::path(post, path = "/api/admin/parked/{id}/replay", tag = "admin",
    params(("id" = u64, Path, description = "the record's id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Replayed", body = ParkedBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such record", body = shared::openapi::ErrorBody),
        (status = 409, description = "Replayed or discarded already", body = shared::openapi::ErrorBody),
        (status = 503, description = "The event bus cannot be reached", body = shared::openapi::ErrorBody),
    ))]
async fn replay_one(
    State(state): State<ParkedAdmin>,
    Admin(admin): Admin,
    IdPath(id): IdPath<u64>,
) -> Result<Json<ParkedBody>, ApiError> {
    let p = settled(state.bus.replay_parked(id).await.map_err(bus_error)?)?;
    tracing::info!(record = id, consumer = %p.consumer, admin = %admin, "parked message replayed");
    Ok(Json(ParkedBody::of(p, false)))
}

/// Which parked messages to replay: exactly one of the three.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayInput {
    /// These records.
    #[schema(value_type = Option<Vec<u64>>)]
    pub ids: Field<Vec<u64>>,
    /// Every message waiting on this consumer.
    #[schema(value_type = Option<String>)]
    pub consumer: Field<String>,
    /// Every message waiting on any consumer (`true`).
    #[schema(value_type = Option<bool>)]
    pub all: Field<bool>,
}

/// The messages a replay names, checked.
#[derive(Debug)]
pub enum Replay {
    Ids(Vec<u64>),
    Consumer(String),
    All,
}

impl Validate for ReplayInput {
    type Valid = Replay;

    fn validate(self, check: &mut Check) -> Option<Replay> {
        let ids = check.optional(self.ids, "ids", "ids", "a list of record ids");
        let consumer = match self.consumer {
            Field::Absent => Some(None),
            given => check
                .non_empty(given, "consumer", "Consumer")
                .and_then(|c| {
                    if is_durable_name(&c) {
                        Some(c)
                    } else {
                        check.fail("consumer", CONSUMER_RULE);
                        None
                    }
                })
                .map(Some),
        };
        let all = check.optional(self.all, "all", "all", "true or false");
        let (ids, consumer, all) = (ids?, consumer?, all?);
        match (ids, consumer, all == Some(true)) {
            (Some(ids), None, false) => Some(Replay::Ids(ids)),
            (None, Some(consumer), false) => Some(Replay::Consumer(consumer)),
            (None, None, true) => Some(Replay::All),
            _ => {
                check.fail(
                    "ids",
                    "Name the messages to replay: ids, consumer, or all: true (one of them)",
                );
                None
            }
        }
    }
}

/// The records of the messages `filter` finds.
async fn waiting_records(state: &ParkedAdmin, filter: ParkedFilter) -> Result<Vec<u64>, ApiError> {
    Ok(state
        .bus
        .parked_messages(&filter)
        .await
        .map_err(bus_error)?
        .into_iter()
        .map(|p| p.record)
        .collect())
}

/// What a replay of several messages did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayOutcome {
    /// Records replayed now.
    pub replayed: Vec<u64>,
    /// Records left alone: replayed or discarded before, or unknown.
    pub skipped: Vec<u64>,
}

/// Replays several parked messages at once: the records named, every one
/// waiting on a consumer (after a fix for its handler is deployed), or all
/// of them. Admins only.
#[utoipa::path(post, path = "/api/admin/parked/replay", tag = "admin",
    request_body = ReplayInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "What was replayed and what was left alone", body = ReplayOutcome),
        (status = 400, description = "Not exactly one of ids, consumer and all", body = shared::openapi::ErrorBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 503, description = "The event bus cannot be reached", body = shared::openapi::ErrorBody),
    ))]
async fn replay_many(
    State(state): State<ParkedAdmin>,
    Admin(admin): Admin,
    ValidJson(replay): ValidJson<ReplayInput>,
) -> Result<Json<ReplayOutcome>, ApiError> {
    let waiting = |consumer| ParkedFilter {
        consumer,
        since: None,
        waiting_only: true,
    };
    let ids = match replay {
        Replay::Ids(ids) => ids,
        Replay::Consumer(c) => waiting_records(&state, waiting(Some(c))).await?,
        Replay::All => waiting_records(&state, waiting(None)).await?,
    };
    let mut outcome = ReplayOutcome {
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    for id in ids {
        match state.bus.replay_parked(id).await.map_err(bus_error)? {
            Resolution::Done(_) => outcome.replayed.push(id),
            Resolution::Already(_) | Resolution::NotFound => outcome.skipped.push(id),
        }
    }
    tracing::info!(replayed = outcome.replayed.len(), skipped = outcome.skipped.len(), admin = %admin, "parked messages replayed");
    Ok(Json(outcome))
}

/// Why a parked message is given up on.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiscardInput {
    /// Recorded with the message (1 to 500 characters).
    #[schema(value_type = String)]
    pub reason: Field<String>,
}

impl Validate for DiscardInput {
    /// The reason, trimmed.
    type Valid = String;

    fn validate(self, check: &mut Check) -> Option<String> {
        check.text(self.reason, "reason", "Reason", 500)
    }
}

/// Gives up on a parked message for good, recording the reason (it is kept,
/// as discarded, and is never delivered again). Admins only.
#[utoipa::path(post, path = "/api/admin/parked/{id}/discard", tag = "admin",
    params(("id" = u64, Path, description = "the record's id")),
    request_body = DiscardInput,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Discarded", body = ParkedBody),
        (status = 400, description = "No reason", body = shared::openapi::ErrorBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such record", body = shared::openapi::ErrorBody),
        (status = 409, description = "Replayed or discarded already", body = shared::openapi::ErrorBody),
        (status = 503, description = "The event bus cannot be reached", body = shared::openapi::ErrorBody),
    ))]
async fn discard(
    State(state): State<ParkedAdmin>,
    Admin(admin): Admin,
    IdPath(id): IdPath<u64>,
    ValidJson(reason): ValidJson<DiscardInput>,
) -> Result<Json<ParkedBody>, ApiError> {
    let p = settled(
        state
            .bus
            .discard_parked(id, format!("{reason} ({admin})"))
            .await
            .map_err(bus_error)?,
    )?;
    tracing::info!(record = id, consumer = %p.consumer, admin = %admin, "parked message discarded");
    Ok(Json(ParkedBody::of(p, false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: serde_json::Value) -> Vec<(String, String)> {
        match shared::wire::validate::<ReplayInput>(body) {
            Err(ApiError::Validation(errors)) => errors
                .into_iter()
                .map(|e| (e.field.unwrap_or_default(), e.message))
                .collect(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_replay_names_exactly_one_of_ids_a_consumer_or_all() {
        let valid = |body| shared::wire::validate::<ReplayInput>(body).unwrap();
        assert!(matches!(valid(json!({ "ids": [3, 4] })), Replay::Ids(ids) if ids == [3, 4]));
        assert!(
            matches!(valid(json!({ "consumer": " orders-x " })), Replay::Consumer(c) if c == "orders-x")
        );
        assert!(matches!(valid(json!({ "all": true })), Replay::All));
        assert!(matches!(
            valid(json!({ "ids": [1], "all": false })),
            Replay::Ids(_)
        ));

        let one_of = "Name the messages to replay: ids, consumer, or all: true (one of them)";
        assert_eq!(refused(json!({})), [("ids".to_owned(), one_of.to_owned())]);
        assert_eq!(
            refused(json!({ "all": false })),
            [("ids".to_owned(), one_of.to_owned())]
        );
        assert_eq!(
            refused(json!({ "ids": [1], "consumer": "c" })),
            [("ids".to_owned(), one_of.to_owned())]
        );
        // Every bad field at once, and no "one of" on top of them.
        assert_eq!(
            refused(json!({ "ids": "1", "consumer": "a b", "all": "yes" })),
            [
                (
                    "ids".to_owned(),
                    "ids must be a list of record ids".to_owned()
                ),
                ("consumer".to_owned(), CONSUMER_RULE.to_owned()),
                ("all".to_owned(), "all must be true or false".to_owned()),
            ]
        );
    }

    #[test]
    fn a_discard_needs_a_reason() {
        let reason = shared::wire::validate::<DiscardInput>(json!({ "reason": " fixed by hand " }));
        assert_eq!(reason.unwrap(), "fixed by hand");
        assert!(matches!(
            shared::wire::validate::<DiscardInput>(json!({ "reason": "  " })),
            Err(ApiError::Validation(_))
        ));
    }
}
