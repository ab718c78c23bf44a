//! A nats-server with JetStream as a child process on this machine, for
//! drills, benchmarks and tests that need a server of their own (own port,
//! own store, killable and restartable).

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
    /// Where the process `name` writes its stderr.
    pub fn stderr(&self, name: &str) -> std::io::Result<Stdio> {
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
