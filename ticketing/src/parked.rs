//! `ticketing parked …`: the operator's commands over parked messages. They
//! talk to the running system's admin API (`/api/admin/parked`, through
//! the gateway or the all-in-one port), so they work the same on the
//! embedded bus — whose file only the running process may open — and on
//! JetStream, and every action is checked and logged as an admin's.

use crate::cli::{ParkedArgs, ParkedCommand};
use runtime::parked::{DiscardInput, ParkedBody, ReplayInput, ReplayOutcome};
use serde_json::Value;

type Error = Box<dyn std::error::Error>;

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// The API's error message (the shared shape), or the status.
async fn failure(res: reqwest::Response) -> String {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let messages: Vec<&str> = body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    if messages.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {}", messages.join("; "))
    }
}

impl Client {
    async fn connect(args: &ParkedArgs) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let base = args.url.trim_end_matches('/').to_owned();
        let token = match (&args.token, &args.email, &args.password) {
            (Some(t), _, _) => t.clone(),
            (None, Some(email), Some(password)) => {
                let res = http
                    .post(format!("{base}/api/users/signin"))
                    .json(&marketplace_api::SignIn {
                        email: email.clone().into(),
                        password: password.clone().into(),
                    })
                    .send()
                    .await?;
                if !res.status().is_success() {
                    return Err(format!("cannot sign in: {}", failure(res).await).into());
                }
                let prefix = format!("{}=", shared::auth::SESSION_COOKIE);
                res.headers()
                    .get_all(reqwest::header::SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| v.strip_prefix(&prefix))
                    .and_then(|v| v.split(';').next())
                    .map(str::to_owned)
                    .ok_or("the sign-in answered without a session cookie")?
            }
            _ => {
                return Err("an admin's session is needed: --token (TICKETING_TOKEN), or --email and --password (TICKETING_ADMIN_EMAIL, TICKETING_ADMIN_PASSWORD)".into());
            }
        };
        Ok(Client { http, base, token })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await?;
        if !res.status().is_success() {
            return Err(failure(res).await.into());
        }
        Ok(res.json().await?)
    }
}

/// One line per message: id, state, consumer, subject, deliveries, when,
/// and why.
fn table(items: &[ParkedBody]) -> String {
    if items.is_empty() {
        return "no parked messages".into();
    }
    let mut out = format!(
        "{:>6}  {:<9}  {:<32}  {:<22}  {:>4}  {:<24}  reason\n",
        "id", "state", "consumer", "subject", "dlv", "parked at"
    );
    for p in items {
        let reason: String = p.reason.chars().take(80).collect();
        out.push_str(&format!(
            "{:>6}  {:<9}  {:<32}  {:<22}  {:>4}  {:<24}  {reason}\n",
            p.id, p.state, p.consumer, p.subject, p.deliveries, p.parked_at
        ));
    }
    out.trim_end().to_owned()
}

/// Runs a `parked` command; the exit code.
pub async fn run(args: ParkedArgs) -> Result<u8, Error> {
    let client = Client::connect(&args).await?;
    match args.command {
        ParkedCommand::List {
            consumer,
            since,
            state,
            json,
        } => {
            let mut query = vec![("state", state.as_str())];
            if let Some(c) = &consumer {
                query.push(("consumer", c));
            }
            if let Some(s) = &since {
                query.push(("since", s));
            }
            let found = client
                .call(reqwest::Method::GET, "/api/admin/parked", &query, None)
                .await?;
            if json {
                crate::print_report(&serde_json::to_string_pretty(&found)?);
            } else {
                let items: Vec<ParkedBody> = serde_json::from_value(found)?;
                crate::print_report(&table(&items));
            }
        }
        ParkedCommand::Show { id } => {
            let found = client
                .call(
                    reqwest::Method::GET,
                    &format!("/api/admin/parked/{id}"),
                    &[],
                    None,
                )
                .await?;
            crate::print_report(&serde_json::to_string_pretty(&found)?);
        }
        ParkedCommand::Replay { ids, consumer, all } => {
            let body = match (ids.is_empty(), consumer, all) {
                (false, None, false) => ReplayInput {
                    ids: ids.into(),
                    ..Default::default()
                },
                (true, Some(c), false) => ReplayInput {
                    consumer: c.into(),
                    ..Default::default()
                },
                (true, None, true) => ReplayInput {
                    all: true.into(),
                    ..Default::default()
                },
                _ => return Err("name what to replay: record ids, --consumer D, or --all".into()),
            };
            let done: ReplayOutcome = serde_json::from_value(
                client
                    .call(
                        reqwest::Method::POST,
                        "/api/admin/parked/replay",
                        &[],
                        Some(serde_json::to_value(body)?),
                    )
                    .await?,
            )?;
            crate::print_report(&format!(
                "replayed {}: {:?}{}",
                done.replayed.len(),
                done.replayed,
                if done.skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\nleft alone (replayed or discarded before, or unknown): {:?}",
                        done.skipped
                    )
                }
            ));
        }
        ParkedCommand::Discard { ids, reason } => {
            let mut failed = false;
            for id in ids {
                let res = client
                    .call(
                        reqwest::Method::POST,
                        &format!("/api/admin/parked/{id}/discard"),
                        &[],
                        Some(serde_json::to_value(DiscardInput {
                            reason: reason.clone().into(),
                        })?),
                    )
                    .await;
                match res {
                    Ok(_) => crate::print_report(&format!("{id}: discarded")),
                    Err(e) => {
                        failed = true;
                        eprintln!("{id}: {e}");
                    }
                }
            }
            return Ok(u8::from(failed));
        }
    }
    Ok(0)
}
