//! `ticketing parked …`: the operator's commands over parked messages. They
//! talk to the running system's admin API (`/api/admin/parked`, through
//! the gateway or the all-in-one port), so they work the same on the
//! embedded bus — whose file only the running process may open — and on
//! JetStream, and every action is checked and logged as an admin's.

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use runtime::parked::{DiscardInput, ParkedBody, ReplayInput, ReplayOutcome};
use serde_json::Value;

/// Where the system is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ParkedArgs {
    /// The system's URL (the gateway, or the all-in-one port).
    #[arg(long, env = "TICKETING_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// An admin's session token (e.g. the `session` cookie's value).
    #[arg(long, env = "TICKETING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Or sign in as this admin (with `--password`).
    #[arg(long, env = "TICKETING_ADMIN_EMAIL")]
    pub email: Option<String>,
    #[arg(long, env = "TICKETING_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    #[command(subcommand)]
    pub command: ParkedCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ParkedCommand {
    /// Parked messages, oldest first.
    List {
        /// One durable consumer's only (e.g. orders-payment-authorized).
        #[arg(long)]
        consumer: Option<String>,
        /// Parked at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// parked (waiting; the default), replayed, discarded or all.
        #[arg(long, default_value = "parked")]
        state: String,
        /// Print the JSON the API answered.
        #[arg(long)]
        json: bool,
    },
    /// One parked message, whole: payload, headers, last error, trace id.
    Show { id: u64 },
    /// Deliver parked messages again to the consumer that parked them.
    Replay {
        /// Record ids.
        ids: Vec<u64>,
        /// Every message waiting on this consumer.
        #[arg(long, conflicts_with_all = ["ids", "all"])]
        consumer: Option<String>,
        /// Every message waiting on any consumer.
        #[arg(long, conflicts_with_all = ["ids", "consumer"])]
        all: bool,
    },
    /// Give up on parked messages for good, recording why.
    Discard {
        #[arg(required = true)]
        ids: Vec<u64>,
        #[arg(long)]
        reason: String,
    },
}

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
    async fn connect(args: &ParkedArgs) -> anyhow::Result<Client> {
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
                    .await
                    .with_context(|| format!("cannot reach {base}"))?;
                if !res.status().is_success() {
                    bail!("cannot sign in: {}", failure(res).await);
                }
                let prefix = format!("{}=", shared::auth::SESSION_COOKIE);
                res.headers()
                    .get_all(reqwest::header::SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| v.strip_prefix(&prefix))
                    .and_then(|v| v.split(';').next())
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("the sign-in answered without a session cookie"))?
            }
            _ => {
                bail!(
                    "an admin's session is needed: --token (TICKETING_TOKEN), or --email and --password (TICKETING_ADMIN_EMAIL, TICKETING_ADMIN_PASSWORD)"
                );
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
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if !res.status().is_success() {
            bail!(failure(res).await);
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
pub async fn run(args: ParkedArgs) -> anyhow::Result<u8> {
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
                print_report(&serde_json::to_string_pretty(&found)?);
            } else {
                let items: Vec<ParkedBody> = serde_json::from_value(found)?;
                print_report(&table(&items));
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
            print_report(&serde_json::to_string_pretty(&found)?);
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
                _ => bail!("name what to replay: record ids, --consumer D, or --all"),
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
            print_report(&format!(
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
                    Ok(_) => print_report(&format!("{id}: discarded")),
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

/// A command's output goes to stdout.
#[allow(clippy::print_stdout)]
fn print_report(report: &str) {
    println!("{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(id: u64, reason: &str) -> ParkedBody {
        serde_json::from_value(serde_json::json!({
            "id": id, "consumer": "orders-payment-authorized", "subject": "payment.authorized",
            "seq": 7, "messageId": "m-7", "deliveries": 5, "reason": reason,
            "parkedAt": "2026-12-07T10:00:00Z", "traceId": null, "state": "parked",
            "resolvedAt": null, "discardReason": null,
        }))
        .expect("a parked record as the API answers it")
    }

    #[test]
    fn the_table_has_a_line_per_message_with_its_reason_cut_to_eighty_characters() {
        assert_eq!(table(&[]), "no parked messages");
        let long = "x".repeat(200);
        let out = table(&[parked(3, "no such order"), parked(4, &long)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("    id  state"), "{out}");
        assert!(
            lines[1].contains("orders-payment-authorized") && lines[1].ends_with("no such order")
        );
        assert!(lines[2].ends_with(&"x".repeat(80)) && !lines[2].contains(&"x".repeat(81)));
    }
}
