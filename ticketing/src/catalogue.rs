//! `ticketing [blog] events`: the marketplace's and the blog's catalogues
//! (rendered and checked by the platform's `catalogue`).

pub use catalogue::{Format, Product, entries, render};

/// The marketplace's events.
pub const MARKETPLACE: Product = Product {
    command: "ticketing ",
    markdown_file: "docs/events.md",
    contract_file: "docs/events.json",
    schemas: marketplace_events::schemas,
    catalogue: marketplace_events::CATALOGUE,
    streams: marketplace_events::STREAMS,
    title: "Event catalogue",
    conventions: " Money is in integer cents.",
};

/// The blog's events.
pub const BLOG: Product = Product {
    command: "ticketing blog ",
    markdown_file: "docs/blog-events.md",
    contract_file: "docs/blog-events.json",
    schemas: blog_events::schemas,
    catalogue: blog_events::CATALOGUE,
    streams: blog_events::STREAMS,
    title: "The blog's event catalogue",
    conventions: "",
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_event_has_a_publisher_a_stream_and_a_schema() {
        let entries = entries(&MARKETPLACE);
        assert_eq!(entries.len(), marketplace_events::ALL_SUBJECTS.len());
        for e in &entries {
            assert_ne!(e.publisher, "(none)", "{}", e.subject);
            assert!(e.stream.is_some(), "{}", e.subject);
            assert!(e.schema["properties"].is_object(), "{}", e.subject);
        }
        let created = entries
            .iter()
            .find(|e| e.subject == "order.created")
            .unwrap();
        let consumers: Vec<&str> = created.consumers.iter().map(|(s, _)| *s).collect();
        assert_eq!(consumers, ["tickets", "expiration", "payments"]);
        assert_eq!(created.stream.as_deref(), Some("ORDERS"));
    }

    #[test]
    fn the_flow_maps_draw_every_edge() {
        let m = render(&MARKETPLACE, Format::Mermaid);
        assert!(m.contains("orders -- order.created --> tickets"), "{m}");
        assert!(
            m.contains("payments -- payment.authorized --> orders"),
            "{m}"
        );
        assert!(m.contains("auth -. user.created .->"), "{m}");
        let d = render(&MARKETPLACE, Format::Dot);
        assert!(
            d.contains("\"tickets\" -> \"orders\" [label=\"ticket.created\""),
            "{d}"
        );
        let j: Value = serde_json::from_str(&render(&MARKETPLACE, Format::Json)).unwrap();
        assert_eq!(
            j.as_array().unwrap().len(),
            marketplace_events::ALL_SUBJECTS.len()
        );
    }

    #[test]
    fn the_blog_has_a_catalogue_of_its_own() {
        let entries = entries(&BLOG);
        assert_eq!(entries.len(), blog_events::ALL_SUBJECTS.len());
        for e in &entries {
            assert_ne!(e.publisher, "(none)", "{}", e.subject);
            assert!(e.stream.is_some(), "{}", e.subject);
            assert_eq!(e.schema["x-schema-version"], 1, "{}", e.subject);
        }
        let m = render(&BLOG, Format::Mermaid);
        assert!(
            m.contains("comments -- comment.created --> moderation"),
            "{m}"
        );
        assert!(!m.contains("orders"), "{m}");
        let md = render(&BLOG, Format::Markdown);
        assert!(
            md.contains("ticketing blog events --format markdown"),
            "{md}"
        );
        assert!(md.contains("`deploy/blog-streams.yaml`"), "{md}");
    }
}
