//! The JetStream API, spoken directly (`$JS.API.…`): requests with their
//! error replies turned into errors, repeated while a cluster settles, and
//! the server's state read back.

use super::*;

/// Requests to the JetStream API with their error replies turned into errors.
pub(crate) struct Api<'a> {
    pub(crate) client: &'a async_nats::Client,
}

/// How long a request is repeated while the JetStream API answers 503
/// ("JetStream system temporarily unavailable"): what a cluster that has
/// just started, or just lost a node, says until its meta leader is
/// elected. `streams apply` right after the cluster starts (a Helm hook, the
/// cluster drill) failed on it.
pub(crate) const SETTLING: Duration = Duration::from_secs(30);

/// Whether an API error reply is the cluster settling (worth repeating):
/// 503, or "no suitable peers for placement" (10005) while the nodes are
/// still finding each other — also what a stream with more replicas than
/// nodes gets, which then fails after [`SETTLING`].
pub(crate) fn settling(err: &Value) -> bool {
    err.get("code").and_then(Value::as_u64) == Some(503)
        || err.get("err_code").and_then(Value::as_u64) == Some(10005)
}

/// Runs `attempt` until it is not settling or [`SETTLING`] has passed.
pub(crate) async fn through_settling<F, Fut>(mut attempt: F) -> Result<Value, ProvisionError>
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
    pub(crate) async fn call(&self, subject: &str, body: Value) -> Result<Value, ProvisionError> {
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
            fixed(ProvisionError::unavailable(format!(
                "$JS.API.{subject}: no reply in 10s"
            )))
        })?
        .map_err(|e| {
            fixed(if e.kind() == async_nats::RequestErrorKind::NoResponders {
                ProvisionError::unavailable(format!(
                    "$JS.API.{subject}: no responder: is JetStream enabled on this server (nats-server -js)?"
                ))
            } else {
                ProvisionError::Unavailable {
                    what: format!("$JS.API.{subject}"),
                    cause: Some(Box::new(e)),
                }
            })
        })?;
        let value: Value = serde_json::from_slice(&reply.payload).map_err(|e| {
            fixed(ProvisionError::Api {
                what: format!("$JS.API.{subject}: unreadable reply"),
                cause: Some(Box::new(e)),
            })
        })?;
        if let Some(err) = value.get("error") {
            let description = err
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let code = err.get("code").and_then(Value::as_u64).unwrap_or(0);
            return Err((
                ProvisionError::api(format!(
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

pub(crate) fn object(v: &Value, field: &str) -> Map<String, Value> {
    v.get(field)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn number(v: &Value, path: &[&str]) -> u64 {
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
            return Err(ProvisionError::unavailable(format!(
                "NATS at {url} is not ready after {}: {why}",
                format_duration(wait)
            )));
        }
        tracing::info!(url, error = %why, retry_in_ms = pause.as_millis() as u64, "waiting for NATS");
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
