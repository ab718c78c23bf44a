//! The committed event catalogue (`docs/events.md`) is what the code
//! generates: the docs cannot drift from the event types, the services'
//! registrations or the stream spec.

use ticketing::catalogue::{Format, render};

#[test]
fn docs_events_md_is_what_the_code_generates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = render(Format::Markdown);
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/events.md is out of date with the code; regenerate it with\n\
         cargo run -q -- events --format markdown > docs/events.md"
    );
}
