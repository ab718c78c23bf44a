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
         cargo run -q -- events --format markdown > docs/events.md"
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
