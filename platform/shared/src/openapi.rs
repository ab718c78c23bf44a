//! OpenAPI pieces every service shares: the error shape, the session and
//! bearer security schemes, and the responses every operation can give
//! (added to each operation so the spec lists every status a client sees).

use utoipa::PartialSchema;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};

pub use crate::error::{ErrorBody, FieldError as ErrorEntry};

/// The security requirement of operations that need a session: the
/// `session` cookie or the same token as a bearer token.
pub const SESSION: &str = "session";
pub const BEARER: &str = "bearer";

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build(),
    )
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| error_response(description));
}

/// Adds to `api` the shared components (error schema, security schemes)
/// and to every operation the responses any request may get: 500 and 503
/// always; 400, 413 and 415 with a body; 401 where a session is needed.
pub fn finish(mut api: OpenApi) -> OpenApi {
    let components = api.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert("ErrorBody".into(), ErrorBody::schema());
    components
        .schemas
        .insert("ErrorEntry".into(), ErrorEntry::schema());
    components.security_schemes.insert(
        SESSION.into(),
        RefOr::T(SecurityScheme::ApiKey(ApiKey::Cookie(
            ApiKeyValue::with_description(
                "session",
                "The session cookie set by sign-up and sign-in (HttpOnly, a signed JWT).",
            ),
        ))),
    );
    components.security_schemes.insert(
        BEARER.into(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "The same token as the session cookie, for API clients.",
                ))
                .build(),
        )),
    );
    for item in api.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            if op.request_body.is_some() {
                add(op, "400", "The request is malformed or a field is invalid");
                add(op, "413", "The body is larger than 64 KiB");
                add(op, "415", "The body is not JSON");
            }
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add(op, "401", "No valid session");
            }
            add(
                op,
                "500",
                "A bug; the body says only \"Something went wrong\"",
            );
            add(
                op,
                "503",
                "A dependency (database, bus) is unavailable; retry later",
            );
        }
    }
    api
}
