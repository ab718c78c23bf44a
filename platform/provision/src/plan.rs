//! Planning: the configs a spec asks for, compared field by field with the
//! server's, and what would change — printed for the operator.

use serde::Serialize;

use super::*;

pub(crate) fn marked_description(description: &str, owner: &str) -> String {
    if description.is_empty() {
        format!("{MARK}{owner})")
    } else {
        format!("{description} {MARK}{owner})")
    }
}

/// The owner this tool recorded on a server resource, if it manages it.
pub(crate) fn recorded_owner(config: &Map<String, Value>) -> Option<String> {
    if let Some(owner) = config
        .get("metadata")
        .and_then(|m| m.get(META_OWNER))
        .and_then(Value::as_str)
    {
        return Some(owner.to_owned());
    }
    let description = config.get("description").and_then(Value::as_str)?;
    let start = description.rfind(MARK)? + MARK.len();
    let end = description[start..].find(')')? + start;
    Some(description[start..end].to_owned())
}

/// Who owns a resource and what manages it, recorded in its metadata
/// (nats-server 2.10 and later; before, in its description only). A map:
/// its keys are the wire names `META_OWNER` and `META_MANAGED`.
pub(crate) fn metadata(owner: &str) -> Value {
    json!({ META_OWNER: owner, META_MANAGED: MANAGED_BY })
}

/// A duration as JetStream's API takes it: nanoseconds.
fn as_nanos<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_nanos() as u64)
}

fn all_as_nanos<S: serde::Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ds.iter().map(|d| d.as_nanos() as u64))
}

/// The stream configuration this tool manages, in JetStream API's names:
/// what it sends, and the fields it compares with the server's.
#[derive(Serialize)]
pub(crate) struct StreamConfig<'a> {
    name: &'a str,
    description: String,
    subjects: &'a [String],
    storage: &'static str,
    retention: &'static str,
    discard: &'static str,
    #[serde(serialize_with = "as_nanos")]
    max_age: Duration,
    max_bytes: i64,
    max_msgs: i64,
    max_msg_size: i64,
    max_consumers: i64,
    #[serde(serialize_with = "as_nanos")]
    duplicate_window: Duration,
    num_replicas: u32,
    /// 2.10 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<&'static str>,
    /// 2.10 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

/// The durable consumer configuration this tool manages, in JetStream
/// API's names.
#[derive(Serialize)]
pub(crate) struct ConsumerConfig<'a> {
    durable_name: &'a str,
    description: String,
    filter_subject: &'a str,
    deliver_policy: &'static str,
    ack_policy: &'static str,
    #[serde(serialize_with = "as_nanos")]
    ack_wait: Duration,
    max_deliver: i64,
    #[serde(serialize_with = "all_as_nanos")]
    backoff: &'a [Duration],
    max_ack_pending: i64,
    /// 2.10 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

/// A configuration as the field map the plan compares and apply sends.
fn fields(config: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        // Structs of strings, numbers and lists serialise to objects.
        _ => Map::new(),
    }
}

pub(crate) fn desired_stream(
    s: &StreamSpec,
    facts: &ServerFacts,
    options: &Options,
) -> Map<String, Value> {
    let v2_10 = facts.version.at_least_2_10();
    fields(&StreamConfig {
        name: &s.name,
        description: marked_description(&s.description, &s.owner),
        subjects: &s.subjects,
        storage: s.storage.api_name(),
        retention: s.retention.api_name(),
        discard: s.discard.api_name(),
        max_age: s.max_age,
        max_bytes: s.max_bytes,
        max_msgs: s.max_msgs,
        max_msg_size: s.max_msg_size,
        max_consumers: s.max_consumers,
        duplicate_window: s.duplicate_window,
        num_replicas: options.replicas.unwrap_or(s.replicas),
        compression: v2_10.then(|| s.compression.api_name()),
        metadata: v2_10.then(|| metadata(&s.owner)),
    })
}

pub(crate) fn desired_consumer(c: &ConsumerSpec, facts: &ServerFacts) -> Map<String, Value> {
    fields(&ConsumerConfig {
        durable_name: &c.name,
        description: marked_description(&c.description, &c.owner),
        filter_subject: &c.filter_subject,
        deliver_policy: c.deliver_policy.api_name(),
        ack_policy: c.ack_policy.api_name(),
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        backoff: &c.backoff,
        max_ack_pending: c.max_ack_pending,
        metadata: facts.version.at_least_2_10().then(|| metadata(&c.owner)),
    })
}

// ------------------------------------------------------------------ diffing

/// One field that differs.
#[derive(Debug, Clone)]
pub struct FieldChange {
    pub field: String,
    pub old: String,
    pub new: String,
    /// Why it cannot change in place, if it cannot.
    pub immutable: Option<String>,
}

pub(crate) fn is_duration_field(field: &str) -> bool {
    matches!(
        field,
        "max_age" | "duplicate_window" | "ack_wait" | "backoff"
    )
}

pub(crate) fn show(field: &str, v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "(not set)".into();
    };
    if is_duration_field(field) {
        let one = |v: &Value| format_duration(Duration::from_nanos(v.as_u64().unwrap_or(0)));
        return match v {
            Value::Array(items) => {
                format!("[{}]", items.iter().map(one).collect::<Vec<_>>().join(", "))
            }
            v => one(v),
        };
    }
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| i
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        v => v.to_string(),
    }
}

/// Whether the server's value (absent: its default) is what is wanted.
pub(crate) fn same(field: &str, want: &Value, have: Option<&Value>) -> bool {
    match (field, have) {
        ("metadata", have) => {
            // Only our keys: the server adds its own (`_nats.*`).
            let have = have.and_then(Value::as_object);
            want.as_object().is_some_and(|w| {
                w.iter()
                    .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
            })
        }
        ("subjects", Some(Value::Array(have))) => {
            let mut h: Vec<_> = have.iter().filter_map(Value::as_str).collect();
            let mut w: Vec<_> = want
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            h.sort_unstable();
            w.sort_unstable();
            h == w
        }
        (_, Some(have)) => have == want,
        (_, None) => match want {
            Value::String(s) => s.is_empty() || s == "none",
            Value::Array(a) => a.is_empty(),
            Value::Number(n) => n.as_u64() == Some(0),
            Value::Bool(b) => !b,
            Value::Null => true,
            Value::Object(o) => o.is_empty(),
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Stream,
    Consumer,
}

pub(crate) fn immutable_reason(
    kind: Kind,
    field: &str,
    old: Option<&Value>,
    new: &Value,
    version: Version,
) -> Option<String> {
    let workqueue = |v: Option<&Value>| v.and_then(Value::as_str) == Some("workqueue");
    match (kind, field) {
        (Kind::Stream, "storage") => Some("storage never changes in place".into()),
        (Kind::Stream, "retention") if !version.at_least_2_10() => {
            Some("retention cannot change in place before nats-server 2.10".into())
        }
        (Kind::Stream, "retention") if workqueue(old) || workqueue(Some(new)) => {
            Some("retention cannot change to or from workqueue in place".into())
        }
        (Kind::Stream, "max_consumers") if !version.at_least_2_10() => {
            Some("max_consumers cannot change in place before nats-server 2.10".into())
        }
        (Kind::Consumer, "deliver_policy") => {
            Some("a consumer's deliver policy never changes in place".into())
        }
        (Kind::Consumer, "ack_policy") => {
            Some("a consumer's ack policy never changes in place".into())
        }
        _ => None,
    }
}

pub(crate) fn diff(
    kind: Kind,
    want: &Map<String, Value>,
    have: &Map<String, Value>,
    version: Version,
) -> Vec<FieldChange> {
    want.iter()
        .filter(|(field, w)| !same(field, w, have.get(*field)))
        .map(|(field, w)| FieldChange {
            field: field.clone(),
            old: show(field, have.get(field)),
            new: show(field, Some(w)),
            immutable: immutable_reason(kind, field, have.get(field), w, version),
        })
        .collect()
}

// ------------------------------------------------------------------ planning

/// What happens to one stream or consumer.
#[derive(Debug, Clone)]
pub enum Change {
    Create,
    Update(Vec<FieldChange>),
    Unchanged,
    /// Some field cannot change in place: delete and create again.
    Recreate {
        fields: Vec<FieldChange>,
        at_stake: String,
    },
    /// Owned by this tool, not in the spec, and pruning was asked for.
    Delete {
        at_stake: String,
    },
    /// Owned by this tool, not in the spec; kept because pruning was not asked.
    Undeclared {
        at_stake: String,
    },
}

/// One stream or consumer in a plan.
#[derive(Debug, Clone)]
pub struct Item {
    pub consumer: bool,
    pub stream: String,
    /// The consumer's name (the stream's for a stream).
    pub name: String,
    pub owner: String,
    pub change: Change,
    /// Why it is created (e.g. its stream is recreated), if not obvious.
    pub note: Option<String>,
}

impl Item {
    pub fn label(&self) -> String {
        if self.consumer {
            format!("consumer {} > {}", self.stream, self.name)
        } else {
            format!("stream {}", self.name)
        }
    }
}

/// The difference between a spec and a server, and what apply would do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: String,
    pub facts: ServerFacts,
    pub items: Vec<Item>,
    /// Streams and consumers this tool does not manage (left alone).
    pub unmanaged: Vec<String>,
    /// What the spec asks that this server cannot do.
    pub problems: Vec<String>,
    pub options: Options,
    declared: (usize, usize),
}

pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(crate) fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

pub(crate) fn stream_at_stake(s: &ServerStream, state: &ServerState) -> String {
    let consumers: Vec<&str> = state
        .consumers_of(&s.name)
        .map(|c| c.name.as_str())
        .collect();
    let mut out = format!(
        "{} ({}) and ",
        plural(s.messages, "stored message", "stored messages"),
        human_bytes(s.bytes)
    );
    if consumers.is_empty() {
        out.push_str("no consumers");
    } else {
        out.push_str(&format!(
            "{} with their positions ({})",
            plural(consumers.len() as u64, "consumer", "consumers"),
            consumers.join(", ")
        ));
    }
    out
}

/// What deleting a consumer loses; `recreated`: what its replacement does.
pub(crate) fn consumer_at_stake(
    c: &ServerConsumer,
    stream_messages: u64,
    recreated: bool,
) -> String {
    let deliver_all = recreated;
    let mut out = format!(
        "its position: {} not yet delivered, {} awaiting an ack",
        plural(c.num_pending, "message", "messages"),
        plural(c.num_ack_pending, "message", "messages"),
    );
    if deliver_all {
        out.push_str(&format!(
            "; the new one delivers the stream's {} from the start again (the service's handlers must tolerate that)",
            plural(stream_messages, "stored message", "stored messages")
        ));
    }
    out
}

/// Compares `spec` with `state`.
pub fn plan(spec: &Spec, state: &ServerState, options: &Options) -> Plan {
    let facts = &state.facts;
    let mut problems = Vec::new();
    let mut items = Vec::new();
    for s in &spec.streams {
        let replicas = options.replicas.unwrap_or(s.replicas);
        if replicas > 1 && !facts.clustered {
            problems.push(format!(
                "stream {} wants {replicas} replicas, but nats-server {} at this address is not \
                 part of a cluster (set replicas: 1, or pass --replicas 1)",
                s.name, facts.version_text
            ));
        }
        if s.compression != spec::Compression::None && !facts.version.at_least_2_10() {
            problems.push(format!(
                "stream {} asks for {} compression, which nats-server {} does not have (2.10 \
                 or later does); a 2.9 server would silently drop it",
                s.name,
                s.compression.api_name(),
                facts.version_text
            ));
        }
        let want = desired_stream(s, facts, options);
        let (change, recreated) = match state.stream(&s.name) {
            None => (Change::Create, true),
            Some(have) => {
                let fields = diff(Kind::Stream, &want, &have.config, facts.version);
                if fields.is_empty() {
                    (Change::Unchanged, false)
                } else if fields.iter().any(|f| f.immutable.is_some()) {
                    let at_stake = stream_at_stake(have, state);
                    (Change::Recreate { fields, at_stake }, true)
                } else {
                    (Change::Update(fields), false)
                }
            }
        };
        let stream_is_new = state.stream(&s.name).is_some() && recreated;
        items.push(Item {
            consumer: false,
            stream: s.name.clone(),
            name: s.name.clone(),
            owner: s.owner.clone(),
            change,
            note: None,
        });
        for c in spec.consumers.iter().filter(|c| c.stream == s.name) {
            let want = desired_consumer(c, facts);
            let existing = if recreated {
                None
            } else {
                state.consumer(&c.stream, &c.name)
            };
            let change = match existing {
                None => Change::Create,
                Some(have) => {
                    let fields = diff(Kind::Consumer, &want, &have.config, facts.version);
                    if fields.is_empty() {
                        Change::Unchanged
                    } else if fields.iter().any(|f| f.immutable.is_some()) {
                        let messages = state.stream(&c.stream).map_or(0, |s| s.messages);
                        Change::Recreate {
                            fields,
                            at_stake: consumer_at_stake(
                                have,
                                messages,
                                c.deliver_policy == spec::DeliverPolicy::All,
                            ),
                        }
                    } else {
                        Change::Update(fields)
                    }
                }
            };
            items.push(Item {
                consumer: true,
                stream: c.stream.clone(),
                name: c.name.clone(),
                owner: c.owner.clone(),
                change,
                note: stream_is_new.then(|| "with its stream".to_owned()),
            });
        }
    }
    let mut unmanaged = Vec::new();
    let undeclared = |at_stake: String| {
        if options.prune {
            Change::Delete { at_stake }
        } else {
            Change::Undeclared { at_stake }
        }
    };
    for s in &state.streams {
        if spec.stream(&s.name).is_some() {
            continue;
        }
        match recorded_owner(&s.config) {
            Some(owner) => items.push(Item {
                consumer: false,
                stream: s.name.clone(),
                name: s.name.clone(),
                owner,
                change: undeclared(stream_at_stake(s, state)),
                note: None,
            }),
            None => unmanaged.push(format!("stream {}", s.name)),
        }
    }
    for c in &state.consumers {
        if spec.consumer(&c.stream, &c.name).is_some() {
            continue;
        }
        // A stream that goes away takes its consumers with it.
        let stream_goes = items.iter().any(|i| {
            !i.consumer
                && i.name == c.stream
                && matches!(i.change, Change::Delete { .. } | Change::Undeclared { .. })
        });
        if stream_goes {
            continue;
        }
        match recorded_owner(&c.config) {
            Some(owner) => {
                let messages = state.stream(&c.stream).map_or(0, |s| s.messages);
                items.push(Item {
                    consumer: true,
                    stream: c.stream.clone(),
                    name: c.name.clone(),
                    owner,
                    change: undeclared(consumer_at_stake(c, messages, false)),
                    note: None,
                });
            }
            None => unmanaged.push(format!("consumer {} > {}", c.stream, c.name)),
        }
    }
    Plan {
        source: spec.source.clone(),
        facts: facts.clone(),
        items,
        unmanaged,
        problems,
        options: options.clone(),
        declared: (spec.streams.len(), spec.consumers.len()),
    }
}

impl Plan {
    fn count(&self, f: impl Fn(&Change) -> bool) -> usize {
        self.items.iter().filter(|i| f(&i.change)).count()
    }

    /// Whether apply would change anything.
    pub fn pending(&self) -> bool {
        self.items.iter().any(|i| {
            matches!(
                i.change,
                Change::Create
                    | Change::Update(_)
                    | Change::Recreate { .. }
                    | Change::Delete { .. }
            )
        })
    }

    /// Recreations that need `--allow-recreate`.
    pub fn refused(&self) -> Vec<&Item> {
        if self.options.allow_recreate {
            return Vec::new();
        }
        self.items
            .iter()
            .filter(|i| matches!(i.change, Change::Recreate { .. }))
            .collect()
    }

    /// 0: the server matches the spec; 2: changes are pending; 1: the spec
    /// asks what this server cannot do.
    pub fn exit_code(&self) -> u8 {
        if !self.problems.is_empty() {
            1
        } else if self.pending() {
            2
        } else {
            0
        }
    }

    /// The one-line tally.
    pub fn summary(&self) -> String {
        let recreate = self.count(|c| matches!(c, Change::Recreate { .. }));
        let mut s = format!(
            "{} to create, {} to update, {} to recreate",
            self.count(|c| matches!(c, Change::Create)),
            self.count(|c| matches!(c, Change::Update(_))),
            recreate,
        );
        if recreate > 0 && !self.options.allow_recreate {
            s.push_str(" (refused without --allow-recreate)");
        }
        s.push_str(&format!(
            ", {} to delete, {} unchanged",
            self.count(|c| matches!(c, Change::Delete { .. })),
            self.count(|c| matches!(c, Change::Unchanged)),
        ));
        let kept = self.count(|c| matches!(c, Change::Undeclared { .. }));
        if kept > 0 {
            s.push_str(&format!(
                ", {kept} no longer declared (kept; --prune deletes)"
            ));
        }
        s
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (streams, consumers) = self.declared;
        writeln!(
            f,
            "nats-server {} ({}); spec {}: {}, {}",
            self.facts.version_text,
            if self.facts.clustered {
                "clustered"
            } else {
                "single server"
            },
            self.source,
            plural(streams as u64, "stream", "streams"),
            plural(consumers as u64, "consumer", "consumers"),
        )?;
        writeln!(f)?;
        let width = self
            .items
            .iter()
            .map(|i| i.label().chars().count())
            .max()
            .unwrap_or(0);
        for item in &self.items {
            let (sign, what) = match &item.change {
                Change::Create => ("+", "create".to_owned()),
                Change::Update(_) => ("~", "update".to_owned()),
                Change::Unchanged => ("=", "unchanged".to_owned()),
                Change::Recreate { .. } if self.options.allow_recreate => {
                    ("!", "recreate (cannot change in place)".to_owned())
                }
                Change::Recreate { .. } => ("!", "cannot change in place".to_owned()),
                Change::Delete { .. } => ("-", "delete (not in the spec)".to_owned()),
                Change::Undeclared { .. } => ("?", "not in the spec, kept".to_owned()),
            };
            let note = item
                .note
                .as_ref()
                .map(|n| format!(", {n}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  {sign} {:<width$}  {what} (owner {}{note})",
                item.label(),
                item.owner
            )?;
            let fields = match &item.change {
                Change::Update(fields) | Change::Recreate { fields, .. } => fields.as_slice(),
                _ => &[],
            };
            for c in fields {
                let why = c
                    .immutable
                    .as_ref()
                    .map(|w| format!("   [{w}]"))
                    .unwrap_or_default();
                writeln!(f, "        {}: {} → {}{why}", c.field, c.old, c.new)?;
            }
            match &item.change {
                Change::Recreate { at_stake, .. } => writeln!(
                    f,
                    "        recreating it deletes {at_stake}{}",
                    if self.options.allow_recreate {
                        ""
                    } else {
                        "; pass --allow-recreate to accept that"
                    }
                )?,
                Change::Delete { at_stake } => writeln!(f, "        deleting it loses {at_stake}")?,
                Change::Undeclared { at_stake } => {
                    writeln!(f, "        --prune would delete it and {at_stake}")?
                }
                _ => {}
            }
        }
        if !self.unmanaged.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "Not managed by this spec, left alone: {}",
                self.unmanaged.join(", ")
            )?;
        }
        for p in &self.problems {
            writeln!(f)?;
            writeln!(f, "Cannot apply: {p}")?;
        }
        writeln!(f)?;
        write!(f, "Plan: {}.", self.summary())
    }
}
