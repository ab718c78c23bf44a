//! A product's event catalogue, generated from the code's own
//! registrations — the event types (their subjects and JSON Schemas), the
//! services' catalogue entries (who publishes, who consumes; enforced by
//! listeners and relays), the listeners' durable names and the built-in
//! stream spec — so the picture cannot drift from the code: rendered as a
//! document, JSON, or a flow map ([`render`]), and checked against the
//! committed contract ([`compat`]). It knows no product: each hands it a
//! [`Product`].

pub mod compat;

use std::fmt::Write as _;

use bus::listener::durable_name;
use serde_json::{Value, json};

/// How to print the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A document: the flow map (Mermaid) and a section per event.
    Markdown,
    /// Every event with its schema, publisher, consumers and stream.
    Json,
    /// The flow map alone, as a Mermaid flowchart.
    Mermaid,
    /// The flow map alone, for Graphviz.
    Dot,
}

/// A product on the platform, as far as its events go. Each has its own
/// catalogue, docs and committed contract.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    /// The command line before `events` (`"shop "`, `"shop notes "`).
    pub command: &'static str,
    /// The generated document and the committed contract.
    pub markdown_file: &'static str,
    pub contract_file: &'static str,
    pub schemas: fn() -> Vec<(&'static str, Value)>,
    pub catalogue: &'static [shared::events::ServiceEvents],
    /// The stream spec the stream of each subject comes from.
    pub streams: shared::events::StreamsFile,
    /// The document's title and what it says of payloads in general.
    pub title: &'static str,
    pub conventions: &'static str,
}

/// One event in the catalogue.
#[derive(Debug, Clone)]
pub struct Entry {
    pub subject: &'static str,
    pub publisher: &'static str,
    /// (service, durable consumer name)
    pub consumers: Vec<(&'static str, String)>,
    pub stream: Option<String>,
    pub schema: Value,
}

/// Every event of `product`, in the order the event types are declared.
pub fn entries(product: &Product) -> Vec<Entry> {
    let spec = provision::Spec::built_in(&product.streams);
    (product.schemas)()
        .into_iter()
        .map(|(subject, schema)| {
            let publisher = product
                .catalogue
                .iter()
                .find(|s| s.publishes.contains(&subject))
                .map_or("(none)", |s| s.service);
            let consumers = product
                .catalogue
                .iter()
                .filter(|s| s.consumes.contains(&subject))
                .map(|s| (s.service, durable_name(s.service, subject)))
                .collect();
            Entry {
                subject,
                publisher,
                consumers,
                stream: spec.stream_for_subject(subject).map(|s| s.name.clone()),
                schema,
            }
        })
        .collect()
}

pub fn render(product: &Product, format: Format) -> String {
    let entries = entries(product);
    let services: Vec<&str> = product.catalogue.iter().map(|s| s.service).collect();
    match format {
        Format::Markdown => markdown(product, &services, &entries),
        Format::Json => {
            serde_json::to_string_pretty(&json_doc(&entries)).unwrap_or_default() + "\n"
        }
        Format::Mermaid => mermaid(&services, &entries),
        Format::Dot => dot(&services, &entries),
    }
}

fn json_doc(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({
                    "subject": e.subject,
                    "publisher": e.publisher,
                    "consumers": e.consumers.iter()
                        .map(|(service, durable)| json!({"service": service, "durable": durable}))
                        .collect::<Vec<_>>(),
                    "stream": e.stream,
                    "schema": e.schema,
                })
            })
            .collect(),
    )
}

/// `services`: in a stable order, as the product's catalogue lists them.
fn mermaid(services: &[&str], entries: &[Entry]) -> String {
    let mut out = String::from("flowchart LR\n");
    for s in services {
        let _ = writeln!(out, "    {s}([{s}])");
    }
    for e in entries {
        if e.consumers.is_empty() {
            let _ = writeln!(
                out,
                "    {} -. {} .-> nobody_{}[(no consumer yet)]",
                e.publisher,
                e.subject,
                e.subject.replace('.', "_")
            );
        }
        for (consumer, _) in &e.consumers {
            let _ = writeln!(out, "    {} -- {} --> {consumer}", e.publisher, e.subject);
        }
    }
    out
}

fn dot(services: &[&str], entries: &[Entry]) -> String {
    let mut out =
        String::from("digraph events {\n    rankdir=LR;\n    node [shape=box, style=rounded];\n");
    for s in services {
        let _ = writeln!(out, "    \"{s}\";");
    }
    for e in entries {
        if e.consumers.is_empty() {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"no consumer yet\" [label=\"{}\", style=dashed];",
                e.publisher, e.subject
            );
        }
        for (consumer, durable) in &e.consumers {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{consumer}\" [label=\"{}\", tooltip=\"{durable}\"];",
                e.publisher, e.subject
            );
        }
    }
    out.push_str("}\n");
    out
}

/// A one-line type for the field table: `string (uuid)`, `integer`, …
fn type_of(schema: &Value, defs: &Value) -> String {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        let target = &defs[name];
        if let Some(variants) = target.get("enum").and_then(Value::as_array) {
            let names: Vec<String> = variants
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect();
            return format!("one of {}", names.join(", "));
        }
        return format!("object ({name})");
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        return any
            .iter()
            .map(|s| type_of(s, defs))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    let kind = match schema.get("type") {
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        Some(Value::String(k)) => k.clone(),
        _ => "any".into(),
    };
    match schema.get("format").and_then(Value::as_str) {
        Some(f) => format!("{kind} ({f})"),
        None => kind,
    }
}

fn markdown(product: &Product, services: &[&str], entries: &[Entry]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "# {title}\n\n\
         Generated from the code by `{cmd}events --format markdown` (the event \
         types, the services' catalogue entries, the listeners' durable names and \
         `{streams}`); a test fails when this file differs from what the \
         code generates. Do not edit it by hand: run\n\n\
         ```sh\ncargo run -q -- {args}events --format markdown > {md}\n```\n\n\
         Every message carries the headers `Nats-Msg-Id` (the event id; the stream \
         drops duplicates), `traceparent` (W3C trace context), `{event_header}` \
         (the subject) and `{schema_header}` (the schema version).{conventions}\n\n\
         ## Flow map\n\n```mermaid\n",
        title = product.title,
        conventions = product.conventions,
        cmd = product.command,
        // `cargo run -- …` takes the arguments after the binary's name.
        args = product.command.split_once(' ').map_or("", |(_, rest)| rest),
        event_header = shared::events::EVENT_TYPE_HEADER,
        schema_header = shared::events::SCHEMA_VERSION_HEADER,
        streams = product.streams.path,
        md = product.markdown_file,
    );
    out.push_str(&mermaid(services, entries));
    out.push_str("```\n\n## Events\n\n| subject | publisher | consumers (durable) | stream |\n|---|---|---|---|\n");
    for e in entries {
        let consumers = if e.consumers.is_empty() {
            "—".to_owned()
        } else {
            e.consumers
                .iter()
                .map(|(s, d)| format!("{s} (`{d}`)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| [`{}`](#{}) | {} | {consumers} | {} |",
            e.subject,
            e.subject.replace('.', ""),
            e.publisher,
            e.stream.as_deref().unwrap_or("**none**"),
        );
    }
    for e in entries {
        let _ = write!(out, "\n### `{}`\n\n", e.subject);
        let _ = writeln!(
            out,
            "Published by **{}** on stream `{}`; consumed by {}.\n",
            e.publisher,
            e.stream.as_deref().unwrap_or("(none)"),
            if e.consumers.is_empty() {
                "no service yet".to_owned()
            } else {
                e.consumers
                    .iter()
                    .map(|(s, d)| format!("**{s}** (durable `{d}`)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        out.push_str("| field | type | required |\n|---|---|---|\n");
        let required: Vec<&str> = e.schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let defs = &e.schema["$defs"];
        if let Some(props) = e.schema["properties"].as_object() {
            for (name, schema) in props {
                let _ = writeln!(
                    out,
                    "| `{name}` | {} | {} |",
                    type_of(schema, defs),
                    if required.contains(&name.as_str()) {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
        }
        let _ = write!(
            out,
            "\n<details><summary>JSON Schema</summary>\n\n```json\n{}\n```\n\n</details>\n",
            serde_json::to_string_pretty(&e.schema).unwrap_or_default()
        );
    }
    out
}
