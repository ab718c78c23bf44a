//! The microservices mode on one machine: a nats-server of its own and
//! `ticketing run` child processes, each of which can be killed (`kill -9`)
//! and started again on the same port with the same settings. Used by
//! `ticketing drill` and by the multi-process tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port the OS says is free now (it may be taken before it is used; the
/// callers start their servers at once).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where a child's stderr goes.
#[derive(Debug, Clone)]
pub enum Logs {
    /// The parent's stderr (tests).
    Inherit,
    /// `<dir>/<name>.log`, appended across restarts (the drill).
    Dir(PathBuf),
}

impl Logs {
    fn stderr(&self, name: &str) -> std::io::Result<Stdio> {
        Ok(match self {
            Logs::Inherit => Stdio::inherit(),
            Logs::Dir(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.log")))?
                .into(),
        })
    }
}

/// A nats-server with JetStream, storing under a directory of the caller's,
/// on a fixed port so it can be killed and restarted with its data.
pub struct NatsServer {
    binary: String,
    port: u16,
    store_dir: PathBuf,
    logs: Logs,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts `binary` (e.g. `nats-server`) on a free port.
    pub fn start(binary: &str, store_dir: &Path, logs: Logs) -> std::io::Result<NatsServer> {
        let mut server = NatsServer {
            binary: binary.to_owned(),
            port: free_port()?,
            store_dir: store_dir.to_owned(),
            logs,
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again (killing it first if it runs), same port and
    /// store, so streams and consumers survive.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .stdout(Stdio::null())
            .stderr(match self.logs {
                // The server's start-up banner would drown a test's output.
                Logs::Inherit => Stdio::null(),
                Logs::Dir(_) => self.logs.stderr("nats-server")?,
            })
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot start {}: {e}", self.binary))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Connects (retrying while the server starts) and returns a JetStream
    /// context.
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context, String> {
        let url = self.url();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match async_nats::connect(&url).await {
                Ok(c) => return Ok(async_nats::jetstream::new(c)),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(format!("nats-server at {url} never came up: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Proc {
    name: String,
    services: String,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// Service processes of one binary. Killed when dropped.
pub struct Cluster {
    exe: PathBuf,
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
            common: common
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            logs,
            procs: Vec::new(),
        }
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
        cmd.args([
            "run",
            "--services",
            &p.services,
            "--port",
            &p.port.to_string(),
        ]);
        for var in [
            "NATS_URL",
            "DATABASE_URL",
            "TICKETING_SERVICES",
            "STRIPE_SECRET_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.common.iter().cloned())
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

    /// Waits until `/readyz` answers 200; false after `timeout`, or at once
    /// if the process has exited.
    pub async fn ready(&mut self, id: ProcId, timeout: Duration) -> bool {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.url(id));
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let exited = match self.procs[id].child.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if exited {
                return false;
            }
            let status = client.get(&url).send().await.map(|r| r.status());
            if status.is_ok_and(|s| s.is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits for every process to be ready; the first that is not, by name.
    pub async fn all_ready(&mut self, timeout: Duration) -> Result<(), String> {
        for id in 0..self.procs.len() {
            if !self.ready(id, timeout).await {
                return Err(format!("{} never became ready", self.procs[id].name));
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 0..self.procs.len() {
            self.kill(id);
        }
    }
}
