//! The marketplace's public API as the load sees it: JSON over HTTP, the
//! session as a bearer token.

use anyhow::Context as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
}

/// One answer: its status (`None`: no answer) and body.
pub struct Answer {
    pub status: Option<u16>,
    pub body: Value,
}

impl Answer {
    pub fn is(&self, status: u16) -> bool {
        self.status == Some(status)
    }

    pub fn id(&self) -> Option<String> {
        self.body["id"].as_str().map(str::to_owned)
    }
}

/// A signed-in user.
#[derive(Clone)]
pub struct User {
    pub token: String,
}

impl Api {
    pub fn new(base: &str, connections: usize) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(connections.max(1))
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&User>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(u) = user {
            req = req.bearer_auth(&u.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let body = res.json().await.unwrap_or(Value::Null);
                Answer {
                    status: Some(status),
                    body,
                }
            }
            Err(_) => Answer {
                status: None,
                body: Value::Null,
            },
        }
    }

    pub async fn get(&self, path: &str, user: Option<&User>) -> Answer {
        self.send(reqwest::Method::GET, path, user, None).await
    }

    pub async fn post(&self, path: &str, user: &User, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(user), Some(body))
            .await
    }

    /// Signs up a new user (the email is made unique per run).
    pub async fn sign_up(&self, who: &str) -> anyhow::Result<User> {
        let email = format!("{who}-{}@loadgen.invalid", uuid::Uuid::new_v4().simple());
        Ok(self.session("signup", &email).await?.0)
    }

    /// Signs `email` up (`action` `signup`) or in (`signin`): the session
    /// and the user's id.
    pub async fn session(&self, action: &str, email: &str) -> anyhow::Result<(User, String)> {
        let res = self
            .client
            .post(format!("{}/api/users/{action}", self.base))
            .json(&json!({"email": email, "password": "loadgen-password"}))
            .send()
            .await
            .with_context(|| self.base.clone())?;
        let status = res.status().as_u16();
        if status == 429 {
            anyhow::bail!(
                "sign-up refused with 429: start the target with AUTH_RATE_LIMIT_PER_MINUTE=1000000 \
                 (the limit counts sign-ups per client address)"
            );
        }
        if !(200..300).contains(&status) {
            anyhow::bail!("{action} answered {status}");
        }
        let token = res
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("session="))
            .and_then(|c| c.split(';').next())
            .map(str::to_owned)
            .context("sign-up set no session cookie")?;
        let body: Value = res.json().await?;
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        Ok((User { token }, id))
    }

    /// Signs up `n` users, `parallel` at a time.
    pub async fn sign_up_many(&self, who: &str, n: usize) -> anyhow::Result<Vec<User>> {
        let mut users = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for _ in chunk {
                let (api, who) = (self.clone(), who.to_owned());
                set.spawn(async move { api.sign_up(&who).await });
            }
            while let Some(r) = set.join_next().await {
                users.push(r??);
            }
        }
        Ok(users)
    }

    /// Lists `n` tickets as `seller`, `parallel` requests at a time; returns
    /// their ids in creation order.
    pub async fn sell_many(
        &self,
        seller: &User,
        n: usize,
        parallel: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = vec![String::new(); n];
        for chunk in (0..n).collect::<Vec<_>>().chunks(parallel.max(1)) {
            let mut set = tokio::task::JoinSet::new();
            for &i in chunk {
                let (api, seller) = (self.clone(), seller.clone());
                set.spawn(async move {
                    let a = api
                        .post(
                            "/api/tickets",
                            &seller,
                            json!({"title": format!("Load test {i}"), "price": 20}),
                        )
                        .await;
                    (i, a)
                });
            }
            while let Some(r) = set.join_next().await {
                let (i, a) = r?;
                if !a.is(201) {
                    anyhow::bail!("listing a ticket answered {:?}: {}", a.status, a.body);
                }
                ids[i] = a.id().context("no ticket id")?;
            }
        }
        Ok(ids)
    }

    /// Orders `ticket` as `buyer`. A 404 means the orders service has not
    /// yet learned of the ticket (its copy arrives by event, and events of
    /// different tickets may be applied out of order): asked again for up
    /// to 10 s.
    pub async fn order(&self, buyer: &User, ticket: &str) -> Answer {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let a = self
                .post("/api/orders", buyer, json!({"ticketId": ticket}))
                .await;
            if !a.is(404) || std::time::Instant::now() > deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the orders service knows `ticket` (its copy arrives by
    /// event): orders it as `probe` until that works, then cancels.
    pub async fn wait_until_orderable(&self, probe: &User, ticket: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let a = self
                .post("/api/orders", probe, json!({"ticketId": ticket}))
                .await;
            if a.is(201) {
                let id = a.id().unwrap_or_default();
                self.send(
                    reqwest::Method::DELETE,
                    &format!("/api/orders/{id}"),
                    Some(probe),
                    None,
                )
                .await;
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "orders never learned of ticket {ticket} (last answer {:?})",
                    a.status
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `{base}/readyz` every `poll` until it answers 200 (true) or
/// `within` has passed since `since` (false).
pub async fn wait_ready(base: &str, since: Instant, within: Duration, poll: Duration) -> bool {
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");
    while since.elapsed() < within {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(poll).await;
    }
    false
}
