//! `ticketing streams plan|apply`: the provisioning job's command line. The
//! work is in the `provision` crate; this prints it and picks the exit
//! code (plan: 0 the server matches, 2 changes pending, 1 error).

use std::path::PathBuf;
use std::time::Duration;

use provision::{Options, Spec};

#[derive(Debug, clap::Subcommand)]
pub enum Streams {
    /// Compare the spec with the server and print what apply would change.
    /// Exit code 0: the server matches; 2: changes are pending; 1: error.
    Plan(StreamsArgs),
    /// Make the server match the spec; changes nothing if the plan holds a
    /// change that needs --allow-recreate, or the spec asks what the server
    /// cannot do. Exit code 0 when the server matches afterwards.
    Apply(StreamsArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StreamsArgs {
    /// The spec file. Without it: the copy built into this binary
    /// (deploy/streams.yaml; deploy/blog-streams.yaml for `blog streams`).
    #[arg(short = 'f', long = "file", env = "TICKETING_STREAMS_FILE")]
    pub file: Option<PathBuf>,
    /// The NATS server (with JetStream).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How long to wait for NATS to come up before giving up (30s, 2m, …).
    #[arg(long, default_value = "60s", value_parser = parse_wait)]
    pub wait: Duration,
    /// Delete and recreate streams or consumers whose changes JetStream
    /// cannot make in place (their messages or positions are lost).
    #[arg(long)]
    pub allow_recreate: bool,
    /// Delete streams and consumers this tool created that the spec no
    /// longer declares (never anything it does not own).
    #[arg(long)]
    pub prune: bool,
    /// Replicas for every stream instead of the spec's: 1 on a single
    /// server, 3 on a three-node cluster.
    #[arg(long, env = "TICKETING_STREAM_REPLICAS")]
    pub replicas: Option<u32>,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    provision::spec::parse_duration(text)
}

/// What the command prints is its output.
#[allow(clippy::print_stdout)]
fn out(text: &str) {
    println!("{text}");
}

/// Runs the command with `builtin` as the spec when no file is given;
/// returns its exit code.
pub async fn run(command: Streams, builtin: shared::events::StreamsFile) -> u8 {
    let (args, apply) = match command {
        Streams::Plan(a) => (a, false),
        Streams::Apply(a) => (a, true),
    };
    match execute(&args, apply, builtin).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", store::report(&e));
            1
        }
    }
}

async fn execute(
    args: &StreamsArgs,
    apply: bool,
    builtin: shared::events::StreamsFile,
) -> Result<u8, provision::ProvisionError> {
    let spec = match &args.file {
        Some(path) => Spec::load(path)?,
        None => Spec::built_in(&builtin),
    };
    let options = Options {
        allow_recreate: args.allow_recreate,
        prune: args.prune,
        replicas: args.replicas,
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let client = provision::connect(
        &args.nats_url,
        &format!("ticketing-streams-{host}"),
        args.wait,
    )
    .await?;
    if !apply {
        let state = provision::read_state(&client).await?;
        let plan = provision::plan(&spec, &state, &options);
        out(&plan.to_string());
        return Ok(plan.exit_code());
    }
    let applied = provision::apply(&client, &spec, &options).await?;
    out(&applied.plan.to_string());
    out("");
    if applied.log.is_empty() {
        out("The server already matches the spec; nothing was changed.");
    } else {
        for line in &applied.log {
            out(&format!("  {line}"));
        }
        out(&format!(
            "Applied: the server now matches {} ({} changes).",
            spec.source,
            applied.log.len()
        ));
    }
    Ok(0)
}
