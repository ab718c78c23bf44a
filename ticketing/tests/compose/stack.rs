//! A compose project driven with the docker CLI: the image built once from
//! the binary under test, `up`, health states, `exec`, queries through the
//! PostgreSQL container, logs when a test fails, `down` when it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository's root (the compose files' paths are relative to it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `command`; its stdout, or a panic with what it printed.
fn output(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The Docker engine and the CLIs that drive it.
pub struct Docker {
    /// The docker CLI (`DOCKER`, default `docker`).
    docker: String,
    /// `docker compose` (v2) or `docker-compose` (v1, 1.29).
    compose: Vec<String>,
    /// Whether deploy/standins' images replace the public third-party ones
    /// (`TICKETING_TEST_STANDINS=1`: a machine that reaches no registry).
    standins: bool,
}

/// Builds `ticketing:local` once per test binary.
static IMAGE: Mutex<bool> = Mutex::new(false);

impl Docker {
    /// The engine, or `None` (after saying why) where these tests are
    /// optional: they run where engines are required (CI) or where
    /// `TICKETING_TEST_DOCKER=1` asks for them.
    pub fn available() -> Option<Docker> {
        let required = store::testing::engines_required();
        let asked = std::env::var("TICKETING_TEST_DOCKER").is_ok_and(|v| v == "1");
        if !required && !asked {
            store::testing::skipped(
                "the docker compose tests (set TICKETING_TEST_DOCKER=1 with a Docker engine running)",
            );
            return None;
        }
        let docker = std::env::var("DOCKER").unwrap_or_else(|_| "docker".into());
        let engine = Command::new(&docker)
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match engine {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "no Docker engine answers {docker}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("cannot run {docker}: {e}"),
        }
        let v2 = Command::new(&docker)
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let compose = if v2 {
            vec![docker.clone(), "compose".into()]
        } else {
            vec!["docker-compose".into()]
        };
        let standins = std::env::var("TICKETING_TEST_STANDINS").is_ok_and(|v| v == "1");
        let docker = Docker {
            docker,
            compose,
            standins,
        };
        docker.build_image();
        Some(docker)
    }

    /// `ticketing:local`: the binary under test (stripped) on the image's
    /// runtime base, through the Dockerfile's `prebuilt` target.
    fn build_image(&self) {
        let mut built = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
        if *built {
            return;
        }
        let dir = root().join("target/docker");
        std::fs::create_dir_all(&dir).unwrap();
        output(
            Command::new("strip")
                .arg("-o")
                .arg(dir.join("ticketing"))
                .arg(env!("CARGO_BIN_EXE_ticketing")),
        );
        let mut build = Command::new(&self.docker);
        build.current_dir(root()).env("DOCKER_BUILDKIT", "1").args([
            "build",
            "--quiet",
            "--target",
            "prebuilt",
            "-t",
            "ticketing:local",
        ]);
        if self.standins {
            build.args([
                "--build-arg",
                "RUNTIME_IMAGE=ticketing-standin/runtime:local",
            ]);
        }
        output(build.arg("."));
        *built = true;
    }

    /// A compose project of `files` (relative to the repository) named
    /// `name`, with `env` for the files' variables; the stand-ins' override
    /// is added where they are used and the project has third-party images.
    pub fn stack(&self, name: &str, files: &[&str], env: &[(&str, String)]) -> Stack<'_> {
        let mut files: Vec<PathBuf> = files.iter().map(|f| root().join(f)).collect();
        if self.standins
            && files
                .iter()
                .any(|f| f.ends_with("deploy/docker-compose.yaml"))
        {
            files.push(root().join("deploy/standins/docker-compose.yaml"));
        }
        let stack = Stack {
            docker: self,
            project: format!("ticketing-test-{name}"),
            files,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        // What an earlier run, killed before it cleaned up, left behind.
        stack.compose(&["down", "--volumes", "--timeout", "1"]);
        stack
    }
}

pub struct Stack<'d> {
    docker: &'d Docker,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Stack<'_> {
    /// The compose project's name.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.docker.compose[0]);
        c.args(&self.docker.compose[1..])
            .current_dir(root())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["-p", &self.project]);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c
    }

    /// `docker compose <args>`; its stdout.
    pub fn compose(&self, args: &[&str]) -> String {
        output(self.command().args(args))
    }

    /// `up -d`: returns once what the services depend on is healthy or
    /// done, and the services are started.
    pub fn up(&self) {
        self.compose(&["up", "-d", "--no-build"]);
    }

    /// The container of `service` (the first, if scaled).
    pub fn container(&self, service: &str) -> String {
        let ids = self.compose(&["ps", "-q", service]);
        ids.lines()
            .next()
            .unwrap_or_else(|| panic!("no container runs {service}"))
            .to_owned()
    }

    /// `docker inspect -f format` of `service`'s container.
    pub fn inspect(&self, service: &str, format: &str) -> String {
        output(Command::new(&self.docker.docker).args([
            "inspect",
            "-f",
            format,
            &self.container(service),
        ]))
    }

    /// `docker <args>`; its stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        output(Command::new(&self.docker.docker).args(args))
    }

    /// Waits until `docker inspect` reports every one of `services`
    /// healthy, for at most `wait`.
    pub fn until_healthy(&self, services: &[&str], wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let states: Vec<(String, String)> = services
                .iter()
                .map(|s| {
                    let state = Command::new(&self.docker.docker)
                        .args(["inspect", "-f", "{{.State.Health.Status}}"])
                        .arg(
                            self.compose(&["ps", "-q", s])
                                .lines()
                                .next()
                                .unwrap_or("none"),
                        )
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                        .unwrap_or_default();
                    ((*s).to_owned(), state)
                })
                .collect();
            if states.iter().all(|(_, h)| h == "healthy") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every service became healthy within {wait:?}: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `docker compose exec -T service args…`; its stdout.
    pub fn exec(&self, service: &str, args: &[&str]) -> String {
        let mut all = vec!["exec", "-T", service];
        all.extend_from_slice(args);
        self.compose(&all)
    }

    /// Rows of `sql` in the PostgreSQL container's database `db`, each a
    /// list of columns as text (NULL as empty; a query of no rows and one
    /// of a single NULL read alike: avoid the latter).
    pub fn query(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        let out = self.exec(
            "postgres",
            &[
                "psql", "-U", "postgres", "-d", db, "-At", "-F", "\t", "-c", sql,
            ],
        );
        if out.is_empty() {
            return Vec::new();
        }
        out.lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self
                .command()
                .args(["logs", "--no-color", "--tail", "60"])
                .output()
            {
                eprintln!(
                    "--- logs of {} ---\n{}",
                    self.project,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let _ = self
            .command()
            .args(["down", "--volumes", "--timeout", "5"])
            .output();
    }
}
