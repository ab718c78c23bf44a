//! The committed event catalogue (`docs/events.md`) is what the code
//! generates: the docs cannot drift from the event types, the services'
//! registrations or the stream spec.

use ticketing::catalogue::{BLOG, Format, MARKETPLACE, Product, render};

/// `product`'s committed catalogue is what the code generates.
fn assert_generated(product: &Product) {
    let path = format!(
        "{}/../{}",
        env!("CARGO_MANIFEST_DIR"),
        product.markdown_file
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = render(product, Format::Markdown);
    assert!(
        committed.trim_end() == generated.trim_end(),
        "{md} is out of date with the code; regenerate it with\n\
         cargo run -q -- {cmd}events --format markdown > {md}\n\
         (and {json}, the contract: {cmd}events --format json)",
        md = product.markdown_file,
        json = product.contract_file,
        // `cargo run -- …` takes the arguments after the binary's name.
        cmd = product.command.split_once(' ').map_or("", |(_, rest)| rest),
    );
}

#[test]
fn docs_events_md_is_what_the_code_generates() {
    assert_generated(&MARKETPLACE);
}

#[test]
fn docs_blog_events_md_is_what_the_code_generates() {
    assert_generated(&BLOG);
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
    for stream in provision::Spec::built_in(&marketplace_events::STREAMS).streams {
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
    let check = |contract: &std::path::Path| events_check(&[], contract);
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

fn events_check(product: &[&str], contract: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .args(product)
        .args(["events", "check", "--contract"])
        .arg(contract)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The blog's events are under the same gate, against their own contract:
/// it passes on docs/blog-events.json and fails on a removed enum value.
#[test]
fn the_blog_events_check_holds_the_blog_to_its_contract() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/blog-events.json"
    ));
    let out = events_check(&["blog"], path);
    assert!(
        out.status.success(),
        "docs/blog-events.json does not match the code:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut contract: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let moderated = contract
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["subject"] == "comment.moderated")
        .unwrap();
    // The contract knew a verdict the code no longer has.
    let status = moderated["schema"]["$defs"]["Verdict"]["enum"]
        .as_array_mut()
        .expect("comment.moderated's verdict is an enum in $defs");
    status.push(serde_json::json!("spam"));
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("blog-events.json");
    std::fs::write(&planted, contract.to_string()).unwrap();
    let out = events_check(&["blog"], &planted);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BREAKING  comment.moderated") && text.contains("spam"),
        "{text}"
    );
}
