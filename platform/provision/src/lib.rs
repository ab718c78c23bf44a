//! Stream provisioning: make a NATS server's streams and durable consumers
//! match a [`Spec`], in the open.
//!
//! - [`plan`] compares the spec with the server field by field: create,
//!   update (old → new), unchanged, or cannot change in place (storage
//!   always; retention before 2.10 and to or from workqueue after;
//!   max_consumers before 2.10; a consumer's deliver and ack policies), with
//!   what recreating would lose. It knows the server's version: fields a
//!   2.9 server would silently drop are refused up front, and after every
//!   change the config the server returns is compared with what was sent.
//! - [`apply`] carries the plan out, or changes nothing when it holds a
//!   change it may not make: recreations need `allow_recreate`, deletions
//!   `prune`, and only resources this tool marked as its own are ever
//!   deleted (the mark is in the description, and on 2.10+ in the metadata
//!   too).
//!
//! - [`local`] runs a nats-server with JetStream as a child process, for
//!   drills, benchmarks and tests that need a server of their own.
//!
//! It knows no product: each product hands it its own spec (the
//! marketplace's `deploy/streams.yaml`, the blog's `deploy/blog-streams.yaml`)
//! and its own event catalogue.
//!
//! It speaks the JetStream JSON API directly (`$JS.API.…`), so what is sent
//! and compared is exactly what the server sees, on every server version.

pub mod local;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use serde_json::{Map, Value, json};

use spec::{ApiName, format_duration};
pub use spec::{ConsumerSpec, Spec, SpecError, StreamSpec};

/// How the tool marks what it owns, in descriptions.
const MARK: &str = "(managed by ticketing streams; owner: ";
/// Metadata keys (2.10+) recording the same.
const META_OWNER: &str = "ticketing.owner";
const META_MANAGED: &str = "ticketing.managed-by";
const MANAGED_BY: &str = "ticketing streams";

/// What the tool may do beyond creating and updating in place.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Delete and recreate what cannot change in place (its data is lost).
    pub allow_recreate: bool,
    /// Delete streams and consumers this tool owns that the spec no longer
    /// declares.
    pub prune: bool,
    /// Replicas for every stream, instead of the spec's (1 for a single
    /// server, 3 for a cluster).
    pub replicas: Option<u32>,
}

/// A failure to plan or apply.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Unavailable(String),
    /// The server refused a request.
    #[error("{0}")]
    Api(String),
    /// The plan holds changes that need a flag, or the spec asks for what
    /// this server cannot do; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The server did not keep what was sent.
    #[error("{0}")]
    Drift(String),
}

/// A server version, `2.9.10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(text: &str) -> Version {
        let mut parts = text
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse().unwrap_or(0));
        Version(
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    }

    /// 2.10 brought metadata, compression and more updatable fields.
    pub fn at_least_2_10(self) -> bool {
        self >= Version(2, 10, 0)
    }
}

/// What the plan needs to know about the server itself.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version_text: String,
    pub version: Version,
    pub clustered: bool,
}

#[derive(Debug, Clone)]
struct ServerStream {
    name: String,
    config: Map<String, Value>,
    messages: u64,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct ServerConsumer {
    stream: String,
    name: String,
    config: Map<String, Value>,
    num_pending: u64,
    num_ack_pending: u64,
}

/// Streams and consumers as the server has them.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub facts: ServerFacts,
    streams: Vec<ServerStream>,
    consumers: Vec<ServerConsumer>,
}

impl ServerState {
    fn stream(&self, name: &str) -> Option<&ServerStream> {
        self.streams.iter().find(|s| s.name == name)
    }

    fn consumer(&self, stream: &str, name: &str) -> Option<&ServerConsumer> {
        self.consumers
            .iter()
            .find(|c| c.stream == stream && c.name == name)
    }

    fn consumers_of<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a ServerConsumer> {
        self.consumers.iter().filter(move |c| c.stream == stream)
    }
}

// ---------------------------------------------------------------- server API

/// Requests to the JetStream API with their error replies turned into errors.
struct Api<'a> {
    client: &'a async_nats::Client,
}

/// How long a request is repeated while the JetStream API answers 503
/// ("JetStream system temporarily unavailable"): what a cluster that has
/// just started, or just lost a node, says until its meta leader is
/// elected. `streams apply` right after the cluster starts (a Helm hook, the
/// cluster drill) failed on it.
const SETTLING: Duration = Duration::from_secs(30);

/// Whether an API error reply is the cluster settling (worth repeating):
/// 503, or "no suitable peers for placement" (10005) while the nodes are
/// still finding each other — also what a stream with more replicas than
/// nodes gets, which then fails after [`SETTLING`].
fn settling(err: &Value) -> bool {
    err.get("code").and_then(Value::as_u64) == Some(503)
        || err.get("err_code").and_then(Value::as_u64) == Some(10005)
}

/// Runs `attempt` until it is not settling or [`SETTLING`] has passed.
async fn through_settling<F, Fut>(mut attempt: F) -> Result<Value, ProvisionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, (ProvisionError, bool)>>,
{
    let deadline = tokio::time::Instant::now() + SETTLING;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err((e, true)) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "JetStream is settling, repeating the request");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

impl Api<'_> {
    async fn call(&self, subject: &str, body: Value) -> Result<Value, ProvisionError> {
        through_settling(|| self.call_once(subject, &body)).await
    }

    async fn call_once(
        &self,
        subject: &str,
        body: &Value,
    ) -> Result<Value, (ProvisionError, bool)> {
        let fixed = |e: ProvisionError| (e, false);
        let payload = if body.is_null() {
            bytes::Bytes::new()
        } else {
            serde_json::to_vec(body).unwrap_or_default().into()
        };
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request(format!("$JS.API.{subject}"), payload),
        )
        .await
        .map_err(|_| {
            fixed(ProvisionError::Unavailable(format!(
                "$JS.API.{subject}: no reply in 10s"
            )))
        })?
        .map_err(|e| {
            let why = if e.kind() == async_nats::RequestErrorKind::NoResponders {
                "no responder: is JetStream enabled on this server (nats-server -js)?".to_owned()
            } else {
                e.to_string()
            };
            fixed(ProvisionError::Unavailable(format!(
                "$JS.API.{subject}: {why}"
            )))
        })?;
        let value: Value = serde_json::from_slice(&reply.payload).map_err(|e| {
            fixed(ProvisionError::Api(format!(
                "$JS.API.{subject}: unreadable reply: {e}"
            )))
        })?;
        if let Some(err) = value.get("error") {
            let description = err
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let code = err.get("code").and_then(Value::as_u64).unwrap_or(0);
            return Err((
                ProvisionError::Api(format!(
                    "the server refused {subject} ({code}): {description}"
                )),
                settling(err),
            ));
        }
        Ok(value)
    }

    /// Every page of a list request.
    async fn list(&self, subject: &str, field: &str) -> Result<Vec<Value>, ProvisionError> {
        let mut out = Vec::new();
        loop {
            let page = self.call(subject, json!({ "offset": out.len() })).await?;
            let items = page
                .get(field)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = page.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            let got = items.len();
            out.extend(items);
            if got == 0 || out.len() >= total {
                return Ok(out);
            }
        }
    }
}

fn object(v: &Value, field: &str) -> Map<String, Value> {
    v.get(field)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn number(v: &Value, path: &[&str]) -> u64 {
    let mut at = v;
    for p in path {
        at = match at.get(p) {
            Some(next) => next,
            None => return 0,
        };
    }
    at.as_u64().unwrap_or(0)
}

/// Reads the server's version and every stream and consumer it has.
pub async fn read_state(client: &async_nats::Client) -> Result<ServerState, ProvisionError> {
    let api = Api { client };
    api.call("INFO", Value::Null).await?;
    let info = client.server_info();
    let facts = ServerFacts {
        version: Version::parse(&info.version),
        version_text: info.version.clone(),
        clustered: info.cluster.is_some(),
    };
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    for s in api.list("STREAM.LIST", "streams").await? {
        let config = object(&s, "config");
        let name = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for c in api
            .list(&format!("CONSUMER.LIST.{name}"), "consumers")
            .await?
        {
            consumers.push(ServerConsumer {
                stream: name.clone(),
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                config: object(&c, "config"),
                num_pending: number(&c, &["num_pending"]),
                num_ack_pending: number(&c, &["num_ack_pending"]),
            });
        }
        streams.push(ServerStream {
            name,
            messages: number(&s, &["state", "messages"]),
            bytes: number(&s, &["state", "bytes"]),
            config,
        });
    }
    Ok(ServerState {
        facts,
        streams,
        consumers,
    })
}

/// Connects to `url`, retrying until the server and its JetStream answer or
/// `wait` has passed (a pre-install hook may start before NATS is up).
pub async fn connect(
    url: &str,
    name: &str,
    wait: Duration,
) -> Result<async_nats::Client, ProvisionError> {
    let servers =
        bus::jetstream::server_list(url).map_err(|e| ProvisionError::Refused(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(250);
    loop {
        let attempt = async {
            let client = tokio::time::timeout(
                Duration::from_secs(5),
                async_nats::ConnectOptions::new()
                    .name(name)
                    .connect(servers.clone()),
            )
            .await
            .map_err(|_| "no answer in 5s".to_owned())?
            .map_err(|e| e.to_string())?;
            Api { client: &client }
                .call("INFO", Value::Null)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(client)
        };
        let why = match attempt.await {
            Ok(client) => return Ok(client),
            Err(why) => why,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ProvisionError::Unavailable(format!(
                "NATS at {url} is not ready after {}: {why}",
                format_duration(wait)
            )));
        }
        tracing::info!(url, error = %why, retry_in_ms = pause.as_millis() as u64, "waiting for NATS");
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

// ---------------------------------------------------------- desired configs

fn nanos(d: Duration) -> Value {
    Value::from(d.as_nanos() as u64)
}

fn marked_description(description: &str, owner: &str) -> String {
    if description.is_empty() {
        format!("{MARK}{owner})")
    } else {
        format!("{description} {MARK}{owner})")
    }
}

/// The owner this tool recorded on a server resource, if it manages it.
fn recorded_owner(config: &Map<String, Value>) -> Option<String> {
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

fn metadata(owner: &str) -> Value {
    json!({ META_OWNER: owner, META_MANAGED: MANAGED_BY })
}

fn desired_stream(s: &StreamSpec, facts: &ServerFacts, options: &Options) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("name".into(), json!(s.name));
    c.insert(
        "description".into(),
        json!(marked_description(&s.description, &s.owner)),
    );
    c.insert("subjects".into(), json!(s.subjects));
    c.insert("storage".into(), json!(s.storage.api_name()));
    c.insert("retention".into(), json!(s.retention.api_name()));
    c.insert("discard".into(), json!(s.discard.api_name()));
    c.insert("max_age".into(), nanos(s.max_age));
    c.insert("max_bytes".into(), json!(s.max_bytes));
    c.insert("max_msgs".into(), json!(s.max_msgs));
    c.insert("max_msg_size".into(), json!(s.max_msg_size));
    c.insert("max_consumers".into(), json!(s.max_consumers));
    c.insert("duplicate_window".into(), nanos(s.duplicate_window));
    c.insert(
        "num_replicas".into(),
        json!(options.replicas.unwrap_or(s.replicas)),
    );
    if facts.version.at_least_2_10() {
        c.insert("compression".into(), json!(s.compression.api_name()));
        c.insert("metadata".into(), metadata(&s.owner));
    }
    c
}

fn desired_consumer(c: &ConsumerSpec, facts: &ServerFacts) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("durable_name".into(), json!(c.name));
    m.insert(
        "description".into(),
        json!(marked_description(&c.description, &c.owner)),
    );
    m.insert("filter_subject".into(), json!(c.filter_subject));
    m.insert("deliver_policy".into(), json!(c.deliver_policy.api_name()));
    m.insert("ack_policy".into(), json!(c.ack_policy.api_name()));
    m.insert("ack_wait".into(), nanos(c.ack_wait));
    m.insert("max_deliver".into(), json!(c.max_deliver));
    m.insert(
        "backoff".into(),
        Value::Array(c.backoff.iter().map(|d| nanos(*d)).collect()),
    );
    m.insert("max_ack_pending".into(), json!(c.max_ack_pending));
    if facts.version.at_least_2_10() {
        m.insert("metadata".into(), metadata(&c.owner));
    }
    m
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

fn is_duration_field(field: &str) -> bool {
    matches!(
        field,
        "max_age" | "duplicate_window" | "ack_wait" | "backoff"
    )
}

fn show(field: &str, v: Option<&Value>) -> String {
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
fn same(field: &str, want: &Value, have: Option<&Value>) -> bool {
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
enum Kind {
    Stream,
    Consumer,
}

fn immutable_reason(
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

fn diff(
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

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn human_bytes(n: u64) -> String {
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

fn stream_at_stake(s: &ServerStream, state: &ServerState) -> String {
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
fn consumer_at_stake(c: &ServerConsumer, stream_messages: u64, recreated: bool) -> String {
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

// ------------------------------------------------------------------ applying

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The plan it carried out.
    pub plan: Plan,
    /// One line per change made, in order.
    pub log: Vec<String>,
}

/// Checks that the config the server returned holds what was sent.
fn verify_kept(
    kind: Kind,
    label: &str,
    sent: &Map<String, Value>,
    reply: &Value,
    facts: &ServerFacts,
) -> Result<(), ProvisionError> {
    let kept = object(reply, "config");
    let lost = diff(kind, sent, &kept, facts.version);
    if lost.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "nats-server {} did not keep what was set on {label}:",
        facts.version_text
    );
    for c in &lost {
        let _ = write!(msg, " {} is {} (sent {});", c.field, c.old, c.new);
    }
    msg.push_str(" this server version may not support those fields");
    Err(ProvisionError::Drift(msg))
}

/// Makes the server match `spec`: plans, refuses (changing nothing) if the
/// plan needs a flag it was not given or asks what the server cannot do,
/// then deletes, creates and updates, checking each reply, and finally
/// plans again to confirm nothing is left.
pub async fn apply(
    client: &async_nats::Client,
    spec: &Spec,
    options: &Options,
) -> Result<Applied, ProvisionError> {
    // A service starting while this runs creates its durable consumer itself
    // when it finds the stream but not the consumer; if that happens between
    // our write and our check, the consumer has the service's description
    // instead of the spec's. Each consumer can be caught so at most once (the
    // service finds it the next time), so another round puts it right.
    let mut log = Vec::new();
    let mut rounds = 0;
    loop {
        match apply_round(client, spec, options, &mut log).await {
            Err(ProvisionError::Drift(_)) if rounds < 2 => rounds += 1,
            Ok(plan) => return Ok(Applied { plan, log }),
            Err(e) => return Err(e),
        }
    }
}

/// One round of [`apply`]: plan, then carry the plan out (appending what
/// was done to `log`), then plan again; `Drift` if something still differs.
async fn apply_round(
    client: &async_nats::Client,
    spec: &Spec,
    options: &Options,
    log: &mut Vec<String>,
) -> Result<Plan, ProvisionError> {
    let state = read_state(client).await?;
    let plan = plan(spec, &state, options);
    if !plan.problems.is_empty() {
        return Err(ProvisionError::Refused(format!(
            "{plan}\n\nNothing was changed: {}",
            plan.problems.join("; ")
        )));
    }
    let refused = plan.refused();
    if !refused.is_empty() {
        let names: Vec<String> = refused.iter().map(|i| i.label()).collect();
        return Err(ProvisionError::Refused(format!(
            "{plan}\n\nNothing was changed: {} cannot change in place; \
             --allow-recreate deletes and recreates {}, losing what is listed above",
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        )));
    }
    let api = Api { client };
    let facts = &state.facts;
    // Deletions first (consumers before their streams), so recreated and
    // new resources never meet what they replace.
    for item in plan.items.iter().filter(|i| i.consumer) {
        if let Change::Delete { .. } | Change::Recreate { .. } = item.change {
            api.call(
                &format!("CONSUMER.DELETE.{}.{}", item.stream, item.name),
                Value::Null,
            )
            .await?;
            log.push(format!("deleted {}", item.label()));
        }
    }
    for item in plan.items.iter().filter(|i| !i.consumer) {
        if let Change::Delete { .. } | Change::Recreate { .. } = item.change {
            api.call(&format!("STREAM.DELETE.{}", item.name), Value::Null)
                .await?;
            log.push(format!("deleted {}", item.label()));
        }
    }
    for item in plan.items.iter().filter(|i| !i.consumer) {
        let Some(s) = spec.stream(&item.name) else {
            continue;
        };
        let verb = match item.change {
            Change::Create | Change::Recreate { .. } => "CREATE",
            Change::Update(_) => "UPDATE",
            _ => continue,
        };
        let sent = desired_stream(s, facts, options);
        let reply = api
            .call(
                &format!("STREAM.{verb}.{}", s.name),
                Value::Object(sent.clone()),
            )
            .await?;
        verify_kept(Kind::Stream, &item.label(), &sent, &reply, facts)?;
        log.push(format!("{}d {}", verb.to_lowercase(), item.label()));
    }
    for item in plan.items.iter().filter(|i| i.consumer) {
        let Some(c) = spec.consumer(&item.stream, &item.name) else {
            continue;
        };
        let verb = match item.change {
            Change::Create | Change::Recreate { .. } => "created",
            Change::Update(_) => "updated",
            _ => continue,
        };
        let sent = desired_consumer(c, facts);
        let reply = api
            .call(
                &format!("CONSUMER.DURABLE.CREATE.{}.{}", c.stream, c.name),
                json!({ "stream_name": c.stream, "config": sent }),
            )
            .await?;
        verify_kept(Kind::Consumer, &item.label(), &sent, &reply, facts)?;
        log.push(format!("{verb} {}", item.label()));
    }
    let after = self::plan(spec, &read_state(client).await?, options);
    if after.pending() {
        return Err(ProvisionError::Drift(format!(
            "after applying, the server still differs from the spec:\n{after}"
        )));
    }
    Ok(plan)
}

/// Makes the server's streams and consumers match `spec`, creating and
/// updating only (never recreating or deleting), as `streams apply` does
/// with its defaults. Services never call this; drills, benchmarks and
/// tests do.
pub async fn ensure(client: &async_nats::Client, spec: &Spec) -> Result<(), ProvisionError> {
    apply(client, spec, &Options::default()).await.map(|_| ())
}

/// Per service (owner), the streams and consumers of a spec: for reports.
pub fn owners(spec: &Spec) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &spec.streams {
        out.entry(s.owner.clone())
            .or_default()
            .push(format!("stream {}", s.name));
    }
    for c in &spec.consumers {
        out.entry(c.owner.clone())
            .or_default()
            .push(format!("consumer {} > {}", c.stream, c.name));
    }
    out
}

/// Whether `spec` and a product's event catalogue agree: every subject a
/// service publishes is held by a stream that service owns, every subject
/// it consumes has its durable consumer (named as the listeners name it,
/// with their ack wait and delivery limit, delivering all, acking
/// explicitly), the spec declares no consumer the code does not run, and
/// parked messages have their stream. `Err` lists every disagreement.
pub fn check_catalogue(
    spec: &Spec,
    catalogue: &[shared::events::ServiceEvents],
) -> Result<(), Vec<String>> {
    use bus::listener::{ListenerOptions, durable_name};
    let defaults = ListenerOptions::default();
    let mut problems = Vec::new();
    let mut expected = Vec::new();
    for service in catalogue {
        let name = service.service;
        for subject in service.publishes {
            match spec.stream_for_subject(subject) {
                None => problems.push(format!(
                    "{name} publishes {subject}; no stream in the spec holds it"
                )),
                Some(stream) if stream.owner != name => problems.push(format!(
                    "stream {} holds {subject}, published by {name}, but is owned by {}",
                    stream.name, stream.owner
                )),
                Some(_) => {}
            }
        }
        for subject in service.consumes {
            let Some(stream) = spec.stream_for_subject(subject) else {
                problems.push(format!(
                    "{name} consumes {subject}; no stream in the spec holds it"
                ));
                continue;
            };
            let durable = durable_name(name, subject);
            expected.push((stream.name.clone(), durable.clone()));
            let Some(c) = spec.consumer(&stream.name, &durable) else {
                problems.push(format!(
                    "{name} consumes {subject}; the spec has no consumer {} > {durable}",
                    stream.name
                ));
                continue;
            };
            let mut differs = |what: &str, ok: bool| {
                if !ok {
                    problems.push(format!(
                        "consumer {durable}: {what} differs from the code's"
                    ));
                }
            };
            differs("owner", c.owner == name);
            differs("filter_subject", c.filter_subject == *subject);
            differs("ack_wait", c.ack_wait == defaults.ack_wait);
            differs(
                "max_deliver",
                c.max_deliver == i64::from(defaults.max_deliver),
            );
            differs(
                "deliver_policy",
                c.deliver_policy == spec::DeliverPolicy::All,
            );
            differs("ack_policy", c.ack_policy == spec::AckPolicy::Explicit);
        }
    }
    for c in &spec.consumers {
        let replays_one = c.stream == bus::jetstream::PARKED_STREAM
            && expected
                .iter()
                .any(|(_, durable)| bus::jetstream::replay_durable(durable) == c.name);
        if !replays_one && !expected.contains(&(c.stream.clone(), c.name.clone())) {
            problems.push(format!(
                "the spec declares consumer {} > {}, which no service runs",
                c.stream, c.name
            ));
        }
    }
    match spec.stream_for_subject(&format!("{}.x", bus::jetstream::PARKED_PREFIX)) {
        Some(s) if s.name == bus::jetstream::PARKED_STREAM => {}
        _ => problems.push(format!(
            "no stream {} holds parked messages ({}.>)",
            bus::jetstream::PARKED_STREAM,
            bus::jetstream::PARKED_PREFIX
        )),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freshly started cluster answers 503 until its meta leader is
    /// elected: the request is repeated, other refusals are not, and the
    /// repeating stops after [`SETTLING`].
    #[tokio::test(start_paused = true)]
    async fn requests_are_repeated_while_the_cluster_settles_and_only_then() {
        let unavailable = json!({"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"});
        assert!(settling(&unavailable));
        assert!(settling(
            &json!({"code": 400, "err_code": 10005, "description": "no suitable peers for placement"})
        ));
        assert!(!settling(&json!({"code": 404, "err_code": 10059})));

        let refusal =
            |transient| Err::<Value, _>((ProvisionError::Api("refused".into()), transient));
        let mut tries = 0;
        let got = through_settling(|| {
            tries += 1;
            let answer = if tries < 4 {
                refusal(true)
            } else {
                Ok(json!({"ok": tries}))
            };
            async move { answer }
        })
        .await
        .unwrap();
        assert_eq!(got, json!({"ok": 4}));

        let mut tries = 0;
        let err = through_settling(|| {
            tries += 1;
            async move { refusal(false) }
        })
        .await;
        assert!(matches!(err, Err(ProvisionError::Api(_))));
        assert_eq!(tries, 1, "a plain refusal is not repeated");

        let started = tokio::time::Instant::now();
        let err = through_settling(|| async { refusal(true) }).await;
        assert!(err.is_err());
        assert!(started.elapsed() >= SETTLING, "repeated until the bound");
    }

    /// A small product of two services for the tests: `shelves` publishes
    /// `book.added`, which `loans` consumes.
    const FIXTURE: &str = r#"
streams:
  - { name: BOOKS, owner: shelves, subjects: ["book.>"], duplicate_window: 2m }
  - { name: PARKED, owner: platform, subjects: ["parked.>"], max_age: 90d, duplicate_window: 2m }
consumers:
  - { stream: BOOKS, name: loans-book-added, owner: loans, filter_subject: book.added, ack_wait: 5s, max_deliver: 20 }
"#;

    const CATALOGUE: &[shared::events::ServiceEvents] = &[
        shared::events::ServiceEvents {
            service: "shelves",
            publishes: &["book.added"],
            consumes: &[],
        },
        shared::events::ServiceEvents {
            service: "loans",
            publishes: &[],
            consumes: &["book.added"],
        },
    ];

    fn fixture() -> Spec {
        Spec::parse(FIXTURE, "fixture.yaml").unwrap()
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(Version::parse("2.9.10") < Version::parse("2.10.0"));
        assert!(Version::parse("2.15.1").at_least_2_10());
        assert!(!Version::parse("2.9.25").at_least_2_10());
        assert_eq!(Version::parse("2.11.0-beta.2"), Version(2, 11, 0));
    }

    #[test]
    fn ownership_is_read_back_from_the_description_or_metadata() {
        let mut c = Map::new();
        c.insert(
            "description".into(),
            json!(marked_description("Ticket events", "tickets")),
        );
        assert_eq!(recorded_owner(&c).as_deref(), Some("tickets"));
        c.insert("description".into(), json!("made by hand"));
        assert_eq!(recorded_owner(&c), None);
        c.insert("metadata".into(), metadata("orders"));
        assert_eq!(recorded_owner(&c).as_deref(), Some("orders"));
    }

    #[test]
    fn a_spec_that_declares_what_the_services_publish_and_consume_agrees() {
        if let Err(problems) = check_catalogue(&fixture(), CATALOGUE) {
            panic!("{}", problems.join("\n"));
        }
    }

    #[test]
    fn a_spec_missing_a_consumer_or_declaring_a_stray_one_disagrees() {
        let mut spec = fixture();
        let removed = spec.consumers[0].clone();
        let mut stray = spec.consumers[0].clone();
        stray.name = "nobody-runs-this".into();
        spec.consumers.push(stray);
        spec.consumers.remove(0);
        let problems = check_catalogue(&spec, CATALOGUE).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains(&removed.name)),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("nobody-runs-this")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_field_the_server_did_not_keep_is_an_error() {
        let facts = ServerFacts {
            version_text: "2.15.1".into(),
            version: Version(2, 15, 1),
            clustered: false,
        };
        let spec = fixture();
        let mut s = spec.streams[0].clone();
        s.compression = spec::Compression::S2;
        let sent = desired_stream(&s, &facts, &Options::default());
        let mut kept = sent.clone();
        kept.remove("compression");
        kept.insert("max_age".into(), json!(5));
        let e = verify_kept(
            Kind::Stream,
            "stream USERS",
            &sent,
            &json!({ "config": kept }),
            &facts,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("did not keep what was set on stream USERS"),
            "{e}"
        );
        assert!(e.contains("compression is (not set) (sent \"s2\")"), "{e}");
        assert!(e.contains("max_age"), "{e}");
        let reply = json!({ "config": sent.clone() });
        assert!(verify_kept(Kind::Stream, "stream USERS", &sent, &reply, &facts).is_ok());
    }

    #[test]
    fn absent_server_fields_count_as_their_defaults() {
        assert!(same("backoff", &json!([]), None));
        assert!(same("description", &json!(""), None));
        assert!(!same("description", &json!("x"), None));
        assert!(same(
            "subjects",
            &json!(["a", "b"]),
            Some(&json!(["b", "a"]))
        ));
        assert!(same(
            "metadata",
            &json!({"k": "v"}),
            Some(&json!({"k": "v", "_nats.ver": "2.15.1"}))
        ));
        assert!(!same("metadata", &json!({"k": "v"}), None));
    }
}
