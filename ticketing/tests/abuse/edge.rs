//! The HTTP edge under hostile requests: what they can make `/metrics`
//! hold.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::common::Proc;

/// The series of the HTTP request metrics on a `/metrics` page (name and
/// labels, without the value).
fn http_series(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| l.starts_with("http_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let http = reqwest::Client::new();
    // An API route, an API path no route takes, a page, a path nothing takes.
    let paths = |i: usize| {
        [
            "/api/tickets".to_owned(),
            format!("/api/nothing-{i}"),
            "/".to_owned(),
            format!("/nothing/{i}/here"),
        ]
    };
    let send = |method: String, path: String| {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        http.request(method, format!("{}{path}", p.base)).send()
    };
    // One made-up method on each kind of path first: their series exist.
    for path in paths(0) {
        send("MADEUP".into(), path).await.unwrap();
    }
    let metrics = || async { testkit::get_text(&http, format!("{}/metrics", p.base)).await };
    // The page's own series exist after a first read.
    metrics().await;
    let before = metrics().await;
    for i in 0..3000 {
        // Long, distinct methods: a label made of each would be costly.
        let method = format!("M{i}{}", "X".repeat(i % 200));
        let path = paths(i)[i % 4].clone();
        let res = send(method, path).await.unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let after = metrics().await;
    let added: Vec<_> = http_series(&after)
        .difference(&http_series(&before))
        .take(10)
        .cloned()
        .collect();
    assert!(added.is_empty(), "new series: {added:#?}");
    assert!(
        after.len() < before.len() + 4096,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains(r#"method="OTHER""#), "{after}");
}

/// An answer read off a raw connection.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The security headers every answer carries.
    fn assert_protected(&self, what: &str) {
        for (name, want) in [
            ("x-content-type-options", Some("nosniff")),
            ("x-frame-options", Some("DENY")),
            ("referrer-policy", Some("same-origin")),
            ("content-security-policy", None),
        ] {
            let got = self.header(name);
            assert!(got.is_some(), "{what}: no {name} in {:?}", self.headers);
            if let Some(want) = want {
                assert_eq!(got, Some(want), "{what}: {name}");
            }
        }
    }

    fn assert_json_error(&self, what: &str, status: u16) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let body: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", self.body));
        assert!(body["errors"][0]["message"].is_string(), "{what}: {body}");
        self.assert_protected(what);
    }

    fn assert_page(&self, what: &str, status: u16) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{what}: {:?}",
            self.headers
        );
        assert!(
            self.body.contains("<!doctype html>"),
            "{what}: {}",
            self.body
        );
        self.assert_protected(what);
    }
}

/// Sends `request` as it is and reads the first answer.
fn raw(port: u16, request: &[u8]) -> Raw {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        // One answer is enough: stop once its body is in.
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| out.len() >= end + 4 + n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(request)));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layers_refusals_come_in_the_shared_shape_with_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let p = crate::common::Proc::start_with(
        crate::common::free_port(),
        dir.path(),
        900,
        &[("HTTP_BODY_TIMEOUT_SECONDS", "1".into())],
    )
    .await;
    let port = p.port;
    let run = |request: Vec<u8>| tokio::task::spawn_blocking(move || raw(port, &request));
    // Refused by the HTTP parser, before any route.
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: 1\r\n")).collect();
    for (what, request, status) in [
        (
            "a duplicate Content-Length",
            "POST /api/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef".to_owned(),
            400,
        ),
        (
            "Transfer-Encoding: xchunked",
            "POST /api/tickets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n".to_owned(),
            400,
        ),
        (
            "120 headers",
            format!("GET /api/tickets HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            431,
        ),
        (
            "a method that is not a token",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            400,
        ),
    ] {
        run(request.into_bytes())
            .await
            .unwrap()
            .assert_json_error(what, status);
    }
    // Refused by the edge and the API.
    for (what, request, status) in [
        (
            "PUT on an API route",
            "PUT /api/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        (
            "no API route",
            "GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            404,
        ),
        (
            "JSON of the wrong type",
            "POST /api/users/signin HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            415,
        ),
    ] {
        run(request.as_bytes().to_vec())
            .await
            .unwrap()
            .assert_json_error(what, status);
    }
    // Pages answer in the page layout.
    let big = "a".repeat(70 * 1024);
    for (what, request, status) in [
        (
            "PUT on a page",
            "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_owned(),
            405,
        ),
        (
            "a form that is not a form",
            "POST /auth/signin HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi".to_owned(),
            415,
        ),
        (
            "a form too large",
            format!(
                "POST /auth/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\nemail={big}",
                big.len() + 6
            ),
            413,
        ),
        (
            // Ten bytes promised, none sent: the body timeout (1 s) ends it.
            "a form too slow",
            "POST /auth/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\n".to_owned(),
            408,
        ),
    ] {
        run(request.into_bytes())
            .await
            .unwrap()
            .assert_page(what, status);
    }
    // And what is served carries them too.
    run(b"GET /api/tickets HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
        .await
        .unwrap()
        .assert_protected("GET /api/tickets");
}

/// One address holding many idle connections starves no one: past
/// `HTTP_MAX_CONNECTIONS_PER_CLIENT` its next connection is answered 429 in
/// the shared shape and closed, while another address is served; closing
/// some lets it in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = crate::common::Proc::start_with(
        crate::common::free_port(),
        dir.path(),
        900,
        &[
            ("HTTP_MAX_CONNECTIONS_PER_CLIENT", "20".into()),
            // Idle connections are closed after 2 s without a request.
            ("HTTP_HEADER_TIMEOUT_SECONDS", "2".into()),
        ],
    )
    .await;
    let port = p.port;
    // Twenty-five idle connections from 127.0.0.1, nothing sent on them:
    // the server takes them in order, holds twenty (closing them without a
    // word once the header timeout passes) and answers the last five 429
    // and closes them.
    // From 127.0.0.3: no other connection of the test's (the readiness
    // probe's, say, still closing) counts against it.
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(from(HOG, port).await.into_std().unwrap());
    }
    for s in &idle {
        s.set_nonblocking(false).unwrap();
    }
    let (idle, answers) = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let answers: Vec<String> = idle
            .iter()
            .map(|mut s| {
                s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                String::from_utf8_lossy(&got).into_owned()
            })
            .collect();
        (idle, answers)
    })
    .await
    .unwrap();
    let refused: Vec<usize> = (0..answers.len())
        .filter(|i| !answers[*i].is_empty())
        .collect();
    assert_eq!(
        refused,
        [20, 21, 22, 23, 24],
        "the process exited: {:?}",
        p.child.try_wait()
    );
    let refusal = &answers[20];
    assert!(
        refusal.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{refusal}"
    );
    assert!(refusal.contains("\r\nretry-after: 1\r\n"), "{refusal}");
    assert!(
        refusal.contains("\r\nx-content-type-options: nosniff\r\n"),
        "{refusal}"
    );
    assert!(
        refusal.ends_with(
            r#"{"errors":[{"message":"Too many open connections from your address; close some and try again"}]}"#
        ),
        "{refusal}"
    );
    // Another address (loopback has them all) is served meanwhile.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/api/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), reqwest::StatusCode::OK);
    drop(idle);
    let again = testkit::eventually(std::time::Duration::from_secs(10), || async {
        reqwest::Client::builder()
            .local_address(HOG)
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/api/tickets"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == reqwest::StatusCode::OK)
            .map(|_| ())
    })
    .await;
    assert!(again.is_some(), "the address was not let in again");
}

/// The address the connection hog uses.
const HOG: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// A connection to `port` on 127.0.0.1 from `local`.
async fn from(local: std::net::IpAddr, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(local, 0)).unwrap();
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}
