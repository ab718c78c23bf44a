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
