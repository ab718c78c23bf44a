//! hyper's own refusals in the shared shape. hyper answers some requests
//! itself, before any service sees them — a malformed head (a duplicate
//! `Content-Length` with another value, a `Transfer-Encoding` other than
//! `chunked`, a method or header that is not a token), more headers than it
//! parses (100), a head past its buffer — with a bare status line and
//! `content-length: 0`, then closes the connection. It has no hook for that
//! answer, so [`Shaped`] wraps the connection and rewrites it on its way
//! out: the same status, the shared JSON error body and the security
//! headers every other answer carries.
//!
//! Hand-written because no crate does this: the answer is recognised by
//! its exact form — a whole write holding only a head whose headers are
//! `connection`, `content-length: 0` and `date`, which no answer of ours
//! is (every one passes the HTTP edge, which adds a request id and the
//! security headers).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose bare refusals from hyper are rewritten.
pub struct Shaped<T> {
    io: T,
    rewrite: Option<Rewrite>,
}

/// An answer being written in place of hyper's.
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer: what the write reports once done.
    replaces: usize,
}

impl<T> Shaped<T> {
    pub fn new(io: T) -> Self {
        Shaped { io, rewrite: None }
    }
}

/// The status and `date` line of hyper's bare refusal, if `buf` is one.
fn bare_refusal(buf: &[u8]) -> Option<(u16, &[u8])> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    if !buf.ends_with(b"\r\n\r\n") || !matches!(rest.first(), Some(b'4' | b'5')) {
        return None;
    }
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    let mut date: &[u8] = b"";
    let mut lines = buf[..buf.len() - 4].split(|b| *b == b'\n').skip(1);
    let mut empty_body = false;
    for line in lines.by_ref() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.to_ascii_lowercase().as_slice() {
            b"connection: close" => {}
            b"content-length: 0" => empty_body = true,
            l if l.starts_with(b"date: ") => date = line,
            _ => return None,
        }
    }
    empty_body.then_some((status, date))
}

/// The answer that stands for hyper's bare `status`.
fn shaped(status: u16, date: &[u8]) -> Vec<u8> {
    let message = match status {
        431 => "The request headers are too large or too many",
        414 => "The request target is too long",
        505 => "Only HTTP/1.1 and HTTP/1.0 are served",
        _ => "The request is malformed",
    };
    let date = std::str::from_utf8(date)
        .ok()
        .and_then(|d| d.split_once(": "))
        .map(|(_, v)| v);
    let extra: Vec<(&str, &str)> = date.into_iter().map(|d| ("date", d)).collect();
    answer(status, message, &extra)
}

/// A whole HTTP/1.1 answer that closes the connection: `status`, the shared
/// JSON error body with `message`, the security headers and `extra`.
pub fn answer(status: u16, message: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = serde_json::to_vec(&shared::error::error_body(&[shared::error::FieldError {
        message: message.into(),
        field: None,
    }]))
    .unwrap_or_default();
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in crate::pages::SECURITY_HEADERS.iter().chain(extra) {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

impl<T: AsyncRead + Unpin> AsyncRead for Shaped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Shaped<T> {
    /// Writes the rewritten answer out; done, it reports hyper's answer as
    /// written.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some(r) = &mut self.rewrite {
            if r.written == r.bytes.len() {
                let n = r.replaces;
                self.rewrite = None;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &r.bytes[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        Poll::Ready(Ok(0))
    }

    fn begin_rewrite(&mut self, buf: &[u8]) -> bool {
        if self.rewrite.is_some() {
            return true;
        }
        match bare_refusal(buf) {
            Some((status, date)) => {
                tracing::debug!(status, "a request refused by the HTTP parser");
                self.rewrite = Some(Rewrite {
                    bytes: shaped(status, date),
                    written: 0,
                    replaces: buf.len(),
                });
                true
            }
            None => false,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Shaped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.begin_rewrite(buf) {
            return this.poll_rewrite(cx);
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // hyper's bare answer is a head alone: one slice, or one followed
        // by empty ones.
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (nonempty.next(), nonempty.next()) {
            if this.begin_rewrite(first) {
                return this.poll_rewrite(cx);
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 08:22:51 GMT\r\n\r\n";

    #[test]
    fn only_hypers_bare_refusals_are_recognised() {
        assert_eq!(
            bare_refusal(BARE),
            Some((400, &b"date: Mon, 07 Dec 2026 08:22:51 GMT"[..]))
        );
        let too_many = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(bare_refusal(too_many).map(|r| r.0), Some(431));
        for ours in [
            // Answers of ours carry a request id and the security headers.
            &b"HTTP/1.1 404 Not Found\r\nx-request-id: 1\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            // A head with its body in the same write.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx",
            b"{\"errors\":[]}",
        ] {
            assert_eq!(bare_refusal(ours), None, "{}", String::from_utf8_lossy(ours));
        }
    }

    #[tokio::test]
    async fn a_bare_refusal_is_written_as_json_with_the_security_headers() {
        use tokio::io::AsyncWriteExt as _;
        let mut out = Shaped::new(Vec::new());
        let n = out.write(BARE).await.unwrap();
        assert_eq!(n, BARE.len(), "hyper sees its answer written whole");
        let text = String::from_utf8(out.io).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(head.contains("date: Mon, 07 Dec 2026"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert_eq!(
            body,
            r#"{"errors":[{"message":"The request is malformed"}]}"#
        );
        // What follows passes untouched.
        let mut plain = Shaped::new(Vec::new());
        plain.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(plain.io, b"HTTP/1.1 200 OK\r\n");
    }
}
