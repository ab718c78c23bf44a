//! How fast an ended session ends everywhere: after `POST /api/users/:id/ban`
//! (and after `POST /api/users/signout`) answers, every service is polled
//! with the user's token until each rejects it; the figure is the time from
//! the answer until the last one did. One at a time: this is a latency, not
//! a throughput. Also the memory a deny list of 100 000 ended sessions
//! takes, measured in this process with the services' own structure.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{Api, User};
use crate::report::{Check, Figure};

/// A route of each service that needs a session (auth: the current user,
/// `null` once the session is ended).
const PROBES: &[(&str, &str)] = &[
    ("auth", "/api/users/currentuser"),
    ("tickets", "/api/tickets/mine"),
    ("orders", "/api/orders"),
    (
        "payments",
        "/api/payments/0191d3b2-7c4e-7000-8000-000000000000",
    ),
];

/// Whether `service` at `api` rejects `user`'s session.
async fn rejects(api: &Api, service: &str, path: &str, user: &User) -> bool {
    let answer = api.get(path, Some(user)).await;
    if service == "auth" {
        answer.is(200) && answer.body["currentUser"].is_null()
    } else {
        answer.is(401)
    }
}

/// Polls every service until each rejects `user`; the time from `since`
/// until the last did, or `None` after 10 s.
async fn until_rejected(
    services: &[(String, Api)],
    user: &User,
    since: Instant,
    poll: Duration,
) -> Option<f64> {
    let mut set = tokio::task::JoinSet::new();
    for (service, api) in services {
        let path = PROBES.iter().find(|(s, _)| s == service)?.1;
        let (service, api, user) = (service.clone(), api.clone(), user.clone());
        set.spawn(async move {
            while since.elapsed() < Duration::from_secs(10) {
                if rejects(&api, &service, path, &user).await {
                    return Some(since.elapsed());
                }
                tokio::time::sleep(poll).await;
            }
            None
        });
    }
    let mut last = Duration::ZERO;
    while let Some(r) = set.join_next().await {
        last = last.max(r.ok()??);
    }
    Some(last.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub struct Outcome {
    pub figures: Vec<Figure>,
    pub checks: Vec<Check>,
}

/// `users` bans and `users` sign-outs, each of a fresh user; `services`
/// names each service's base URL.
pub async fn run(
    auth: &Api,
    services: &[(String, Api)],
    admin_email: &str,
    users: usize,
    poll: Duration,
) -> anyhow::Result<Outcome> {
    let admin = match auth.session("signup", admin_email).await {
        Ok((u, _)) => u,
        Err(_) => auth.session("signin", admin_email).await?.0,
    };
    let mut bans = Vec::new();
    let mut signouts = Vec::new();
    let mut missed = 0;
    for i in 0..users {
        let email = format!(
            "revoke-{i}-{}@loadgen.invalid",
            uuid::Uuid::new_v4().simple()
        );
        let (victim, id) = auth.session("signup", &email).await?;
        let ban = auth
            .post(&format!("/api/users/{id}/ban"), &admin, json!({}))
            .await;
        if !ban.is(200) {
            anyhow::bail!(
                "ban answered {:?}: is {admin_email} an admin (`ticketing users grant-admin {admin_email}`)?",
                ban.status
            );
        }
        match until_rejected(services, &victim, Instant::now(), poll).await {
            Some(ms) => bans.push(ms),
            None => missed += 1,
        }
        let email = format!(
            "signout-{i}-{}@loadgen.invalid",
            uuid::Uuid::new_v4().simple()
        );
        let (leaver, _) = auth.session("signup", &email).await?;
        let out = auth.post("/api/users/signout", &leaver, json!({})).await;
        if !out.is(204) {
            anyhow::bail!("sign-out answered {:?}", out.status);
        }
        match until_rejected(services, &leaver, Instant::now(), poll).await {
            Some(ms) => signouts.push(ms),
            None => missed += 1,
        }
    }
    let mut figures = Vec::new();
    for (what, mut v) in [("ban", bans), ("sign-out", signouts)] {
        v.sort_by(f64::total_cmp);
        let p99 = percentile(&v, 0.99);
        figures.push(Figure {
            what: format!(
                "{what} answered → every service rejects the token, p50 ({} samples)",
                v.len()
            ),
            value: percentile(&v, 0.5),
            unit: "ms".into(),
            goal: None,
            met: None,
        });
        figures.push(Figure {
            what: format!("{what} answered → every service rejects the token, p99"),
            value: p99,
            unit: "ms".into(),
            goal: Some("< 1000 ms".into()),
            met: Some(p99 < 1000.0),
        });
    }
    figures.push(deny_list_memory(100_000));
    Ok(Outcome {
        figures,
        checks: vec![Check::new(
            "every ended session was rejected everywhere within 10 s",
            missed == 0,
            format!("{missed} not"),
        )],
    })
}

/// The resident memory `n` ended sessions add to a deny list, in this
/// process (the structure every service holds).
fn deny_list_memory(n: usize) -> Figure {
    use shared::auth::{Revocation, Revocations};
    use shared::ids::SessionId;
    let me = std::process::id();
    let before = crate::procs::rss_mb(me).unwrap_or(0.0);
    let list = Revocations::default();
    let now = shared::time::Clock::System.now();
    for _ in 0..n {
        list.apply(
            Revocation::Session {
                session: SessionId::new(),
                until: now.plus_secs(3600),
            },
            now,
        );
    }
    let after = crate::procs::rss_mb(me).unwrap_or(0.0);
    let held = list.len();
    drop(list);
    Figure {
        what: format!("deny list holding {held} ended sessions: resident memory added"),
        value: after - before,
        unit: "MB".into(),
        goal: None,
        met: None,
    }
}
