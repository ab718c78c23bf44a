//! Accounts under attack: who can become an admin.

use std::process::Command;

#[test]
fn a_process_with_admin_emails_set_refuses_to_start_and_says_how_to_grant_admin() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(["run", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("ADMIN_EMAILS", "admin@example.com")
        .env("RUST_LOG", "warn")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ADMIN_EMAILS is no longer read")
            && stderr.contains("ticketing users grant-admin"),
        "{stderr}"
    );
}

/// With `TRUST_FORWARDED_FOR` but no `TRUSTED_PROXIES`, no proxy is
/// trusted: a client on a private network (here loopback) that writes a
/// new `X-Forwarded-For` on every attempt is still limited by its own
/// address. (Loopback and the private networks used to be trusted by
/// default.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_x_forwarded_for_from_a_private_network_does_not_escape_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = crate::common::Proc::start_with(
        crate::common::free_port(),
        dir.path(),
        900,
        &[
            ("TRUST_FORWARDED_FOR", "true".into()),
            ("AUTH_RATE_LIMIT_PER_MINUTE", "3".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let res = http
            .post(format!("{}/api/users/signin", p.base))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&serde_json::json!({"email": "x@example.com", "password": "password123"}))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
}
