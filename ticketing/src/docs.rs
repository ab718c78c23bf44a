//! The marketplace's API description: the OpenAPI 3.1 document generated
//! from the services' route annotations (each route and its description
//! are registered together), served with Swagger UI by `runtime::docs`.

use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

/// The whole API: every service's routes, health, and these docs.
pub fn openapi() -> OpenApi {
    let mut api = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("ticketing")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A ticket resale marketplace of event-driven services. Every error has \
                     the shape {\"errors\": [{\"message\", \"field\"?}]}. Sessions are a \
                     `session` cookie (HttpOnly JWT) set by sign-up and sign-in, or the same \
                     token as a bearer token. Prices are decimal dollars (at most two \
                     decimals), stored as integer cents.",
                ))
                .build(),
        )
        .build();
    for part in [
        auth::openapi(),
        tickets::openapi(),
        orders::openapi(),
        payments::openapi(),
        runtime::edge::health_openapi(),
        runtime::docs::docs_openapi(),
    ] {
        api.merge(part);
    }
    shared::openapi::finish(api)
}

/// `/api/docs` and `/api/docs/openapi.json`.
pub fn router() -> axum::Router {
    runtime::docs::router(&openapi())
}
