//! The provisioning spec: every stream and durable consumer, read from YAML
//! and checked before anything talks to a server. Errors name the file, the
//! entry and the problem.

use std::time::Duration;

use serde::Deserialize;

use bus::subject;

/// A spec that cannot be used: where and why, and the error underneath
/// (the file system's, the YAML parser's) as its source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    message: String,
    #[source]
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SpecError {
    fn new(message: String) -> SpecError {
        SpecError {
            message,
            cause: None,
        }
    }

    fn caused_by(
        message: String,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> SpecError {
        SpecError {
            message,
            cause: Some(Box::new(cause)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Limits,
    Interest,
    Workqueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    Old,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    S2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    All,
    New,
    Last,
    LastPerSubject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    Explicit,
    All,
    None,
}

/// What the server calls each value (its JSON API's spelling).
pub trait ApiName {
    fn api_name(&self) -> &'static str;
}

macro_rules! api_names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl ApiName for $ty {
            fn api_name(&self) -> &'static str {
                match self { $(<$ty>::$variant => $name),* }
            }
        }
    };
}
api_names!(Storage { File => "file", Memory => "memory" });
api_names!(Retention { Limits => "limits", Interest => "interest", Workqueue => "workqueue" });
api_names!(Discard { Old => "old", New => "new" });
api_names!(Compression { None => "none", S2 => "s2" });
api_names!(DeliverPolicy { All => "all", New => "new", Last => "last", LastPerSubject => "last_per_subject" });
api_names!(AckPolicy { Explicit => "explicit", All => "all", None => "none" });

/// A duration or size as written: `5s`, `1GiB`, `-1`, `unlimited`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    streams: Vec<StreamEntry>,
    #[serde(default)]
    consumers: Vec<ConsumerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamEntry {
    name: String,
    owner: String,
    #[serde(default)]
    description: String,
    subjects: Vec<String>,
    storage: Option<Storage>,
    retention: Option<Retention>,
    discard: Option<Discard>,
    max_age: Option<Quantity>,
    max_bytes: Option<Quantity>,
    max_msgs: Option<i64>,
    max_msg_size: Option<Quantity>,
    max_consumers: Option<i64>,
    duplicate_window: Option<Quantity>,
    replicas: Option<u32>,
    compression: Option<Compression>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerEntry {
    stream: String,
    name: String,
    owner: String,
    #[serde(default)]
    description: String,
    filter_subject: String,
    deliver_policy: Option<DeliverPolicy>,
    ack_policy: Option<AckPolicy>,
    ack_wait: Option<Quantity>,
    max_deliver: Option<i64>,
    #[serde(default)]
    backoff: Vec<Quantity>,
    max_ack_pending: Option<i64>,
}

/// A stream as the spec wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub name: String,
    pub owner: String,
    pub description: String,
    pub subjects: Vec<String>,
    pub storage: Storage,
    pub retention: Retention,
    pub discard: Discard,
    /// Zero: no age limit.
    pub max_age: Duration,
    /// -1: no limit.
    pub max_bytes: i64,
    pub max_msgs: i64,
    pub max_msg_size: i64,
    pub max_consumers: i64,
    pub duplicate_window: Duration,
    pub replicas: u32,
    pub compression: Compression,
}

/// A durable pull consumer as the spec wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    pub stream: String,
    pub name: String,
    pub owner: String,
    pub description: String,
    pub filter_subject: String,
    pub deliver_policy: DeliverPolicy,
    pub ack_policy: AckPolicy,
    pub ack_wait: Duration,
    /// -1: no limit.
    pub max_deliver: i64,
    pub backoff: Vec<Duration>,
    pub max_ack_pending: i64,
}

/// A checked spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Where it came from, for messages.
    pub source: String,
    pub streams: Vec<StreamSpec>,
    pub consumers: Vec<ConsumerSpec>,
}

impl Spec {
    /// A product's built-in spec (its contract crate's
    /// [`shared::events::StreamsFile`]), parsed; it was checked when the
    /// binary was built and tested, so a malformed one is a bug and panics.
    pub fn built_in(file: &shared::events::StreamsFile) -> Spec {
        Spec::parse(file.yaml, &format!("{} (built in)", file.path))
            .unwrap_or_else(|e| panic!("the built-in streams spec is malformed: {e}"))
    }

    /// Reads and checks the spec in `path`.
    pub fn load(path: &std::path::Path) -> Result<Spec, SpecError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::caused_by(format!("{name}: cannot read it"), e))?;
        Spec::parse(&text, &name)
    }

    /// Parses and checks `text`, naming it `source` in errors.
    pub fn parse(text: &str, source: &str) -> Result<Spec, SpecError> {
        let file: FileSpec = serde_saphyr::from_str(text)
            .map_err(|e| SpecError::caused_by(format!("{source}: not a valid spec"), e))?;
        let mut streams = Vec::new();
        for (i, s) in file.streams.into_iter().enumerate() {
            let at = format!("{source}: streams[{i}] ({})", s.name);
            streams.push(stream_spec(s).map_err(|e| SpecError::new(format!("{at}: {e}")))?);
        }
        let mut consumers = Vec::new();
        for (i, c) in file.consumers.into_iter().enumerate() {
            let at = format!("{source}: consumers[{i}] ({})", c.name);
            consumers.push(consumer_spec(c).map_err(|e| SpecError::new(format!("{at}: {e}")))?);
        }
        add_replay_consumers(&streams, &mut consumers);
        let spec = Spec {
            source: source.to_owned(),
            streams,
            consumers,
        };
        spec.check_references()?;
        Ok(spec)
    }

    pub fn stream(&self, name: &str) -> Option<&StreamSpec> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The stream whose subjects capture `subject`.
    pub fn stream_for_subject(&self, subject: &str) -> Option<&StreamSpec> {
        self.streams
            .iter()
            .find(|s| s.subjects.iter().any(|f| subject::matches(f, subject)))
    }

    pub fn consumer(&self, stream: &str, name: &str) -> Option<&ConsumerSpec> {
        self.consumers
            .iter()
            .find(|c| c.stream == stream && c.name == name)
    }

    /// Rules across entries: unique names, disjoint stream subjects,
    /// consumers on declared streams filtering subjects their stream holds.
    fn check_references(&self) -> Result<(), SpecError> {
        let src = &self.source;
        if self.streams.is_empty() {
            return Err(SpecError::new(format!("{src}: declares no streams")));
        }
        for (i, a) in self.streams.iter().enumerate() {
            for b in &self.streams[i + 1..] {
                if a.name == b.name {
                    return Err(SpecError::new(format!(
                        "{src}: stream {} is declared twice",
                        a.name
                    )));
                }
                for sa in &a.subjects {
                    for sb in &b.subjects {
                        if subjects_overlap(sa, sb) {
                            return Err(SpecError::new(format!(
                                "{src}: streams {} and {} overlap ({sa} and {sb}); JetStream \
                                 stores a subject in one stream only",
                                a.name, b.name
                            )));
                        }
                    }
                }
            }
        }
        for (i, c) in self.consumers.iter().enumerate() {
            let at = format!("{src}: consumers[{i}] ({})", c.name);
            let Some(stream) = self.stream(&c.stream) else {
                return Err(SpecError::new(format!(
                    "{at}: stream {} is not declared in streams",
                    c.stream
                )));
            };
            if !stream
                .subjects
                .iter()
                .any(|s| subject_within(&c.filter_subject, s))
            {
                return Err(SpecError::new(format!(
                    "{at}: filter_subject {} is not among stream {}'s subjects ({})",
                    c.filter_subject,
                    c.stream,
                    stream.subjects.join(", ")
                )));
            }
            if self.consumers[..i]
                .iter()
                .any(|o| o.stream == c.stream && o.name == c.name)
            {
                return Err(SpecError::new(format!(
                    "{at}: declared twice on stream {}",
                    c.stream
                )));
            }
        }
        Ok(())
    }
}

fn stream_spec(s: StreamEntry) -> Result<StreamSpec, String> {
    check_name(&s.name)?;
    check_owner(&s.owner)?;
    if s.subjects.is_empty() {
        return Err("subjects: at least one subject is needed".into());
    }
    for subject in &s.subjects {
        check_subject(subject).map_err(|e| format!("subjects: {e}"))?;
    }
    let max_age = match s.max_age {
        None => Duration::ZERO,
        Some(q) => limit_duration(&q).map_err(|e| format!("max_age: {e}"))?,
    };
    let duplicate_window = match s.duplicate_window {
        None => Duration::from_secs(120),
        Some(q) => duration(&q).map_err(|e| format!("duplicate_window: {e}"))?,
    };
    if !max_age.is_zero() && duplicate_window > max_age {
        return Err(format!(
            "duplicate_window ({}) is longer than max_age ({}); the server refuses that",
            format_duration(duplicate_window),
            format_duration(max_age)
        ));
    }
    let replicas = s.replicas.unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        return Err(format!("replicas: {replicas} is not between 1 and 5"));
    }
    let max_msgs = s.max_msgs.unwrap_or(-1);
    let max_consumers = s.max_consumers.unwrap_or(-1);
    for (field, v) in [("max_msgs", max_msgs), ("max_consumers", max_consumers)] {
        if v < -1 || v == 0 {
            return Err(format!("{field}: {v} is neither a positive limit nor -1"));
        }
    }
    Ok(StreamSpec {
        name: s.name,
        owner: s.owner,
        description: s.description,
        subjects: s.subjects,
        storage: s.storage.unwrap_or(Storage::File),
        retention: s.retention.unwrap_or(Retention::Limits),
        discard: s.discard.unwrap_or(Discard::Old),
        max_age,
        max_bytes: optional_size(s.max_bytes).map_err(|e| format!("max_bytes: {e}"))?,
        max_msgs,
        max_msg_size: optional_size(s.max_msg_size).map_err(|e| format!("max_msg_size: {e}"))?,
        max_consumers,
        duplicate_window,
        replicas,
        compression: s.compression.unwrap_or(Compression::None),
    })
}

fn consumer_spec(c: ConsumerEntry) -> Result<ConsumerSpec, String> {
    check_name(&c.name)?;
    check_owner(&c.owner)?;
    check_subject(&c.filter_subject).map_err(|e| format!("filter_subject: {e}"))?;
    let ack_wait = match c.ack_wait {
        None => Duration::from_secs(30),
        Some(q) => duration(&q).map_err(|e| format!("ack_wait: {e}"))?,
    };
    if ack_wait.is_zero() {
        return Err("ack_wait: must be longer than zero".into());
    }
    let max_deliver = c.max_deliver.unwrap_or(-1);
    if max_deliver < -1 || max_deliver == 0 {
        return Err(format!(
            "max_deliver: {max_deliver} is neither a positive limit nor -1"
        ));
    }
    let backoff = c
        .backoff
        .iter()
        .map(duration)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("backoff: {e}"))?;
    if !backoff.is_empty() && max_deliver != -1 && max_deliver <= backoff.len() as i64 {
        return Err(format!(
            "backoff has {} steps, so max_deliver must be more than that (it is {max_deliver})",
            backoff.len()
        ));
    }
    let max_ack_pending = c.max_ack_pending.unwrap_or(1000);
    if max_ack_pending < -1 || max_ack_pending == 0 {
        return Err(format!(
            "max_ack_pending: {max_ack_pending} is neither a positive limit nor -1"
        ));
    }
    Ok(ConsumerSpec {
        stream: c.stream,
        name: c.name,
        owner: c.owner,
        description: c.description,
        filter_subject: c.filter_subject,
        deliver_policy: c.deliver_policy.unwrap_or(DeliverPolicy::All),
        ack_policy: c.ack_policy.unwrap_or(AckPolicy::Explicit),
        ack_wait,
        max_deliver,
        backoff,
        max_ack_pending,
    })
}

/// Stream and consumer names: what JetStream accepts everywhere (no
/// whitespace, dots, wildcards or path separators).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("name {name:?} must be 1 to 200 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "name {name:?} may hold only letters, digits, '-' and '_' (not {c:?})"
        ));
    }
    Ok(())
}

fn check_owner(owner: &str) -> Result<(), String> {
    if owner.is_empty()
        || !owner
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "owner {owner:?} must be a service name (lowercase letters, digits, '-')"
        ));
    }
    Ok(())
}

fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() || t.chars().any(char::is_whitespace) {
            return Err(format!("{subject:?} has an empty or blank token"));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(format!("{subject:?}: '>' may only be the last token"));
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Err(format!(
                "{subject:?}: wildcards must be whole tokens, as in a.*.c or a.>"
            ));
        }
    }
    Ok(())
}

/// Whether some subject matches both filters.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every subject matching `inner` also matches `outer`.
pub fn subject_within(inner: &str, outer: &str) -> bool {
    let (mut i, mut o) = (inner.split('.'), outer.split('.'));
    loop {
        match (i.next(), o.next()) {
            (None, None) => return true,
            (Some(_), Some(">")) => return true,
            (Some(">"), _) => return false,
            (Some(x), Some("*")) if x != ">" => {}
            (Some(x), Some(y)) if x == y && x != "*" => {}
            _ => return false,
        }
    }
}

/// `2m`, `1h30m`, `500ms`, `30d`; the integer 0 for zero.
fn duration(q: &Quantity) -> Result<Duration, String> {
    match q {
        Quantity::Int(0) => Ok(Duration::ZERO),
        Quantity::Int(n) => Err(format!("{n} has no unit; write e.g. {n}s, {n}m or {n}ms")),
        Quantity::Text(t) => parse_duration(t),
    }
}

/// A duration, or -1 / 0 / `unlimited` for no limit (zero).
fn limit_duration(q: &Quantity) -> Result<Duration, String> {
    match q {
        Quantity::Int(-1) => Ok(Duration::ZERO),
        Quantity::Text(t) if t == "unlimited" => Ok(Duration::ZERO),
        q => duration(q),
    }
}

/// With a parked stream in the spec, every durable consumer gets the
/// consumer on it that delivers its replayed messages (`<durable>-replay`,
/// filtering `parked.<durable>.replay`), owned by the same service with the
/// same ack wait and delivery limit — what the bus creates when a service
/// subscribes, so provisioning declares it and a plan does not list it as
/// unmanaged. A spec may declare one itself; then that one stands.
fn add_replay_consumers(streams: &[StreamSpec], consumers: &mut Vec<ConsumerSpec>) {
    use bus::jetstream::{PARKED_STREAM, replay_durable, replay_subject};
    if !streams.iter().any(|s| s.name == PARKED_STREAM) {
        return;
    }
    let replays: Vec<ConsumerSpec> = consumers
        .iter()
        .filter(|c| c.stream != PARKED_STREAM)
        .map(|c| ConsumerSpec {
            stream: PARKED_STREAM.to_owned(),
            name: replay_durable(&c.name),
            owner: c.owner.clone(),
            description: bus::jetstream::replay_description(&c.name),
            filter_subject: replay_subject(&c.name),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: c.ack_wait,
            max_deliver: c.max_deliver,
            backoff: Vec::new(),
            max_ack_pending: c.max_ack_pending,
        })
        .filter(|r| {
            !consumers
                .iter()
                .any(|c| c.stream == r.stream && c.name == r.name)
        })
        .collect();
    consumers.extend(replays);
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("cannot read {text:?} as a duration (write e.g. 500ms, 5s, 2m, 24h, 30d, 1h30m)")
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        total += unit
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// How a duration is shown: the largest units that add up to it.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut ms = d.as_millis();
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// A byte count, -1 or `unlimited`; absent is -1.
fn optional_size(q: Option<Quantity>) -> Result<i64, String> {
    match q {
        None | Some(Quantity::Int(-1)) => Ok(-1),
        Some(Quantity::Int(n)) if n > 0 => Ok(n),
        Some(Quantity::Int(n)) => Err(format!("{n} is neither a positive size nor -1")),
        Some(Quantity::Text(t)) if t == "unlimited" => Ok(-1),
        Some(Quantity::Text(t)) => parse_size(&t),
    }
}

fn parse_size(text: &str) -> Result<i64, String> {
    let bad = || format!("cannot read {text:?} as a size (write e.g. 1048576, 512MB, 1GiB)");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: i64 = t[..split].parse().map_err(|_| bad())?;
    let factor: i64 = match t[split..].trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error with its causes, as a log line says it.
    fn err(yaml: &str) -> String {
        let e = Spec::parse(yaml, "x.yaml").unwrap_err();
        match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }
    }

    #[test]
    fn durations_and_sizes_read_like_people_write_them() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert!(parse_size("12 apples").is_err());
    }

    #[test]
    fn subject_algebra_follows_nats_wildcards() {
        assert!(subjects_overlap("a.>", "a.b"));
        assert!(subjects_overlap("a.*", "a.b"));
        assert!(!subjects_overlap("a.*", "a.b.c"));
        assert!(!subjects_overlap("a.>", "b.>"));
        assert!(subject_within("ticket.created", "ticket.>"));
        assert!(subject_within("ticket.*", "ticket.>"));
        assert!(!subject_within("ticket.>", "ticket.*"));
        assert!(!subject_within("order.created", "ticket.>"));
        assert!(subject_within("a.*.c", "a.*.c"));
        assert!(!subject_within("a.*.c", "a.b.c"));
    }

    #[test]
    fn bad_specs_name_the_file_the_entry_and_the_problem() {
        let e = err("streams:\n  - {name: A, owner: a, subjects: [a.>], max_age: 3 weeks}\n");
        assert!(
            e.contains("x.yaml: streams[0] (A): max_age: cannot read"),
            "{e}"
        );
        let e = err("streams:\n  - {name: A, owner: a, subjects: [a.>], storage: disk}\n");
        assert!(e.starts_with("x.yaml: not a valid spec"), "{e}");
        assert!(e.contains("disk"), "{e}");
        let e = err("streams:\n  - {name: A, owner: a, subjects: [a.>], colour: red}\n");
        assert!(e.contains("colour"), "{e}");
        let e = err(
            "streams:\n  - {name: A, owner: a, subjects: [a.>]}\n  - {name: B, owner: b, subjects: [a.b]}\n",
        );
        assert!(e.contains("streams A and B overlap"), "{e}");
        let e = err("streams:\n  - {name: A.B, owner: a, subjects: [a.>]}\n");
        assert!(e.contains("streams[0] (A.B): name"), "{e}");
        let e = err(
            "streams:\n  - {name: A, owner: a, subjects: [a.>]}\nconsumers:\n  - {stream: A, name: c, owner: a, filter_subject: b.x}\n",
        );
        assert!(
            e.contains("consumers[0] (c): filter_subject b.x is not among stream A's subjects"),
            "{e}"
        );
        let e = err(
            "streams:\n  - {name: A, owner: a, subjects: [a.>]}\nconsumers:\n  - {stream: Z, name: c, owner: a, filter_subject: a.x}\n",
        );
        assert!(e.contains("stream Z is not declared"), "{e}");
        let e = err(
            "streams:\n  - {name: A, owner: a, subjects: [a.>]}\nconsumers:\n  - {stream: A, name: c, owner: a, filter_subject: a.x, max_deliver: 2, backoff: [1s, 2s]}\n",
        );
        assert!(e.contains("backoff has 2 steps"), "{e}");
        let e = err(
            "streams:\n  - {name: A, owner: a, subjects: [a.>], max_age: 1m, duplicate_window: 2m}\n",
        );
        assert!(e.contains("longer than max_age"), "{e}");
        let e = err("streams: []\n");
        assert!(e.contains("declares no streams"), "{e}");
    }
}
