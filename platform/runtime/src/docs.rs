//! An API's description served as users read it: the OpenAPI document at
//! `/api/docs/openapi.json`, and Swagger UI at `/api/docs` from assets in
//! the binary (`assets/`, with their licence). The product assembles the
//! document; this serves it.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::OpenApi;

const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui.css");
const INIT: &[u8] = include_bytes!("../assets/init.js");

/// The viewer's page; `{title}` is the API's.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
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
    pub(super) struct DocsApi;
}

/// The description of `/api/docs` itself, to merge into the API's.
pub fn docs_openapi() -> OpenApi {
    <self_doc::DocsApi as utoipa::OpenApi>::openapi()
}

/// `/api/docs/openapi.json` (`api`, as it is), and `/api/docs`: Swagger UI
/// reading it, from assets in this binary, its page titled after the API.
pub fn router(api: &OpenApi) -> axum::Router {
    let spec = serde_json::to_string_pretty(api).unwrap_or_else(|_| "{}".into());
    let page = PAGE.replace("{title}", &html_escape(&format!("{} API", api.info.title)));
    axum::Router::new()
        .route(
            "/api/docs/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], spec) }
            }),
        )
        .route("/api/docs", get(move || viewer(page.clone())))
        .route("/api/docs/assets/{file}", get(asset))
}

/// The few characters a title must not bring into HTML as they are.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn viewer(page: String) -> Response {
    let mut res = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_reaches_the_page_as_text_never_as_markup() {
        assert_eq!(html_escape("a <b> & c"), "a &lt;b&gt; &amp; c");
    }
}
