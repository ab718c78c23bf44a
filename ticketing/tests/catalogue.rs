//! The committed event catalogue (`docs/events.md`) is what the code
//! generates: the docs cannot drift from the event types, the services'
//! registrations or the stream spec.

use ticketing::catalogue::{Format, render};

#[test]
fn docs_events_md_is_what_the_code_generates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = render(Format::Markdown);
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/events.md is out of date with the code; regenerate it with\n\
         cargo run -q -- events --format markdown > docs/events.md\n\
         (and docs/events.json, the contract: events --format json)"
    );
}

#[test]
fn docs_api_md_lists_every_event_and_stream() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md");
    let doc = std::fs::read_to_string(path).unwrap();
    for subject in marketplace_events::ALL_SUBJECTS {
        assert!(
            doc.contains(&format!("| `{subject}` |")),
            "docs/api.md has no row for the event {subject}"
        );
    }
    for stream in marketplace_events::streams().streams {
        assert!(
            doc.contains(&format!("| `{}` |", stream.name)),
            "docs/api.md has no row for the stream {}",
            stream.name
        );
    }
}

/// `ticketing events check` (which CI runs) passes on the committed
/// contract, and fails — naming the change — when the code no longer has a
/// field the contract has (as if the code had removed it).
#[test]
fn the_events_check_holds_the_code_to_the_committed_contract() {
    let check = |contract: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
            .args(["events", "check", "--contract"])
            .arg(contract)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.json"));
    let out = check(path);
    assert!(
        out.status.success(),
        "docs/events.json does not match the code:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut contract: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let order = contract
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["subject"] == "order.created")
        .unwrap();
    order["schema"]["properties"]["seatNumber"] = serde_json::json!({"type": "string"});
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("events.json");
    std::fs::write(&planted, contract.to_string()).unwrap();
    let out = check(&planted);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BREAKING  order.created: seatNumber: field removed or renamed"),
        "{text}"
    );
}
