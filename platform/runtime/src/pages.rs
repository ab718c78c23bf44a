//! The security headers every answer carries — pages, the API, and the
//! refusals of every layer: a CSP without inline scripts or styles,
//! `nosniff`, `Referrer-Policy`, frame denial and (unless set)
//! `Cache-Control: no-store`. And how pages read a submitted form.

use std::collections::HashMap;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The security headers, by name and value.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    // Answers depend on the session: never cache them (assets say
    // otherwise for themselves).
    ("cache-control", "no-store"),
];

/// Adds each security header `res` does not have already (a route with a
/// policy of its own — the API docs' page, long-cached assets — keeps it).
/// The HTTP edge does it for every answer; nothing else needs to.
pub fn with_security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        let name = HeaderName::from_static(name);
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    res
}

/// A submitted web form's fields, read with the body limit and the server's
/// body timeout. What cannot be read is refused with a status and a
/// sentence for a page ([`FormRefused`]: 415 not a form, 413 too large, 408
/// too slow) instead of the framework's plain-text
/// rejections.
pub struct FormFields(pub HashMap<String, String>);

/// Why a form could not be read. As a response: a plain HTML page with the
/// status (a product with a layout of its own renders it in that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormRefused {
    pub status: StatusCode,
    pub message: &'static str,
}

impl IntoResponse for FormRefused {
    fn into_response(self) -> Response {
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><meta charset=\"utf-8\"><title>This form could not be read</title>\
             <h1>This form could not be read</h1><p>{}</p></html>",
            self.message
        );
        (self.status, axum::response::Html(html)).into_response()
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for FormFields {
    type Rejection = FormRefused;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, FormRefused> {
        let refused = |status, message| FormRefused { status, message };
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "The form was not sent as a web form.",
            ));
        }
        let bytes = shared::http::read_body(req.into_body(), shared::http::BODY_LIMIT)
            .await
            .map_err(|e| match e {
                shared::ApiError::RequestTimeout => refused(
                    StatusCode::REQUEST_TIMEOUT,
                    "The form did not arrive in time. Send it again.",
                ),
                _ => refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large (64 KiB at most).",
                ),
            })?;
        // Fields of text read from any bytes (bad escapes as U+FFFD), so
        // this refusal is there only should the shape ever be stricter.
        serde_urlencoded::from_bytes(&bytes)
            .map(FormFields)
            .map_err(|_| refused(StatusCode::BAD_REQUEST, "The form is malformed."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest as _;

    async fn read(content_type: &str, body: Vec<u8>) -> Result<FormFields, FormRefused> {
        let req = axum::http::Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from(body))
            .unwrap();
        FormFields::from_request(req, &()).await
    }

    #[tokio::test]
    async fn a_form_is_read_and_what_is_not_one_is_refused_with_its_status() {
        let form = read(
            "application/x-www-form-urlencoded; charset=utf-8",
            b"title=A+show&price=5".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(form.0["title"], "A show");
        assert_eq!(form.0["price"], "5");
        let status = |r: Result<FormFields, FormRefused>| r.err().map(|e| e.status);
        assert_eq!(
            status(read("text/plain", b"a=b".to_vec()).await),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            status(
                read(
                    "application/x-www-form-urlencoded",
                    vec![b'a'; shared::http::BODY_LIMIT + 1]
                )
                .await
            ),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        // Text fields read from anything (bad escapes read as U+FFFD).
        let lossy = read("application/x-www-form-urlencoded", b"a=%FF".to_vec())
            .await
            .unwrap();
        assert_eq!(lossy.0["a"], "\u{FFFD}");
        // As a page: the status, HTML, and the message.
        let page = FormRefused {
            status: StatusCode::BAD_REQUEST,
            message: "The form is malformed.",
        }
        .into_response();
        assert_eq!(page.status(), StatusCode::BAD_REQUEST);
        assert!(
            page.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
}
