//! The microservices mode on one machine: a nats-server of its own and
//! `ticketing run` child processes, each of which can be killed (`kill -9`)
//! and started again on the same port with the same settings. Used by
//! `ticketing drill` and by the multi-process tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use provision::local::{Logs, NatsServer, free_port};

struct Proc {
    name: String,
    services: String,
    port: u16,
    /// Where it serves `/metrics` (`METRICS_ADDR`): a process of a split
    /// deployment keeps them off its public port.
    metrics_port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// Service processes of one binary. Killed when dropped.
pub struct Cluster {
    exe: PathBuf,
    /// What comes before `--services`: `run`, or `blog run`.
    command: Vec<String>,
    common: Vec<(String, String)>,
    logs: Logs,
    procs: Vec<Proc>,
}

/// Index of a process in its [`Cluster`].
pub type ProcId = usize;

impl Cluster {
    /// `exe` is the `ticketing` binary; `common` is set for every process
    /// (JWT key, NATS URL…). The parent's `NATS_URL`, `DATABASE_URL`,
    /// `TICKETING_SERVICES` and `STRIPE_SECRET_KEY` are not inherited.
    pub fn new(exe: &Path, common: &[(&str, String)], logs: Logs) -> Cluster {
        Cluster {
            exe: exe.to_owned(),
            command: vec!["run".to_owned()],
            common: common
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            logs,
            procs: Vec::new(),
        }
    }

    /// Runs another of the binary's commands instead of `run` (`blog run`).
    pub fn with_command(mut self, args: &[&str]) -> Cluster {
        self.command = args.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Starts `ticketing run --services <services>` on a free port, with
    /// `env` on top of the common settings. `name` labels its log.
    pub fn spawn(
        &mut self,
        name: &str,
        services: &str,
        env: &[(&str, String)],
    ) -> std::io::Result<ProcId> {
        self.procs.push(Proc {
            name: name.to_owned(),
            services: services.to_owned(),
            port: free_port()?,
            metrics_port: free_port()?,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            child: None,
        });
        let id = self.procs.len() - 1;
        self.start(id)?;
        Ok(id)
    }

    /// Starts process `id` again (after [`Cluster::kill`]) on its port.
    pub fn start(&mut self, id: ProcId) -> std::io::Result<()> {
        let p = &self.procs[id];
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.command)
            .args(["--services", &p.services, "--port", &p.port.to_string()]);
        for var in [
            "NATS_URL",
            "DATABASE_URL",
            "TICKETING_SERVICES",
            "STRIPE_SECRET_KEY",
            "BLOG_SERVICES",
            "BLOG_API_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.common.iter().cloned())
            .env("METRICS_ADDR", format!("127.0.0.1:{}", p.metrics_port))
            .envs(p.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.logs.stderr(&p.name)?);
        let child = cmd.spawn()?;
        self.procs[id].child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown hook runs, in-flight work is cut off.
    pub fn kill(&mut self, id: ProcId) {
        if let Some(mut c) = self.procs[id].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self, id: ProcId) -> String {
        format!("http://127.0.0.1:{}", self.procs[id].port)
    }

    /// Where the process serves its metrics, e.g.
    /// `http://127.0.0.1:40124/metrics`.
    pub fn metrics_url(&self, id: ProcId) -> String {
        format!("http://127.0.0.1:{}/metrics", self.procs[id].metrics_port)
    }

    /// Waits until `/readyz` answers 200; false after `timeout`, or at once
    /// if the process has exited.
    pub async fn ready(&mut self, id: ProcId, timeout: Duration) -> bool {
        self.wait_ready(id, timeout).await.is_ok()
    }

    /// Waits until `/readyz` answers 200: `None` if it did at once, else
    /// why it last said it was not ready. `Err` after `timeout`, or at once
    /// if the process has exited.
    async fn wait_ready(&mut self, id: ProcId, timeout: Duration) -> Result<Option<String>, ()> {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.url(id));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut why = None;
        while tokio::time::Instant::now() < deadline {
            let exited = match self.procs[id].child.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if exited {
                return Err(());
            }
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(why),
                Ok(r) => why = Some(r.text().await.unwrap_or_default()),
                Err(e) => why = Some(format!("no answer: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(())
    }

    /// Waits for every process to be ready; the first that is not, by name.
    pub async fn all_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.all_ready_last(timeout).await.map(|_| ())
    }

    /// Waits for every process to be ready: the last one that had to be
    /// waited for, by name, with what its `/readyz` last said; `Err` names
    /// the first that never became ready.
    pub async fn all_ready_last(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<(String, String)>> {
        let mut last = None;
        for id in 0..self.procs.len() {
            match self.wait_ready(id, timeout).await {
                Ok(Some(why)) => last = Some((self.procs[id].name.clone(), why)),
                Ok(None) => {}
                Err(()) => anyhow::bail!("{} never became ready", self.procs[id].name),
            }
        }
        Ok(last)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 0..self.procs.len() {
            self.kill(id);
        }
    }
}
