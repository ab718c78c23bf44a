//! The API's description: the OpenAPI 3.1 document generated from the
//! services' route annotations (each route and its description are
//! registered together), served at `/api/docs/openapi.json`, and Swagger UI
//! at `/api/docs` from assets in this binary.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");
const INIT: &[u8] = include_bytes!("../assets/swagger-ui/init.js");

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>ticketing API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/api/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/api/docs/assets/init.js"></script>
</body>
</html>
"#;

/// Swagger UI sets inline styles; scripts stay `'self'` only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The OpenAPI description of `/api/docs` itself.
mod self_doc {
    /// This document.
    #[utoipa::path(get, path = "/api/docs/openapi.json", tag = "operations",
        responses((status = 200, description = "The OpenAPI 3.1 description of the API", content_type = "application/json", body = Object)))]
    #[allow(dead_code)]
    pub fn spec() {}

    /// Swagger UI, reading this document.
    #[utoipa::path(get, path = "/api/docs", tag = "operations",
        responses((status = 200, description = "The API viewer", content_type = "text/html", body = String)))]
    #[allow(dead_code)]
    pub fn viewer() {}

    /// The viewer's files.
    #[utoipa::path(get, path = "/api/docs/assets/{file}", tag = "operations",
        params(("file" = String, Path, description = "swagger-ui-bundle.js, swagger-ui.css or init.js")),
        responses(
            (status = 200, description = "The file", content_type = "text/plain", body = String),
            (status = 404, description = "No such file", body = shared::openapi::ErrorBody),
        ))]
    #[allow(dead_code)]
    pub fn asset() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(spec, viewer, asset))]
    pub struct DocsApi;
}

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
        <self_doc::DocsApi as utoipa::OpenApi>::openapi(),
    ] {
        api.merge(part);
    }
    shared::openapi::finish(api)
}

/// `/api/docs`, `/api/docs/openapi.json` and the viewer's assets.
pub fn router() -> axum::Router {
    let spec = serde_json::to_string_pretty(&openapi()).unwrap_or_else(|_| "{}".into());
    axum::Router::new()
        .route(
            "/api/docs/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], spec) }
            }),
        )
        .route("/api/docs", get(viewer))
        .route("/api/docs/assets/{file}", get(asset))
}

async fn viewer() -> Response {
    let mut res = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "swagger-ui-bundle.js" => (BUNDLE, "text/javascript; charset=utf-8"),
        "init.js" => (INIT, "text/javascript; charset=utf-8"),
        "swagger-ui.css" => (CSS, "text/css; charset=utf-8"),
        _ => return shared::ApiError::NotFound.into_response(),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}
