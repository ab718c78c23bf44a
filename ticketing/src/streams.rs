//! `ticketing streams plan|apply`: the provisioning job's command line. The
//! work is in the `provision` crate; this prints it and picks the exit
//! code (plan: 0 the server matches, 2 changes pending, 1 error).

use provision::{Options, Spec};

use crate::cli::{Streams, StreamsArgs};

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
