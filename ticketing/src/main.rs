//! `ticketing`: the marketplace in one binary. Thin: parse the command line,
//! set up logging, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ticketing::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let telemetry = runtime::telemetry::init(
        matches!(
            cli.command,
            Some(
                ticketing::cli::Command::Streams(_)
                    | ticketing::cli::Command::Probe { .. }
                    | ticketing::cli::Command::Parked(_)
                    | ticketing::cli::Command::Events { .. }
                    | ticketing::cli::Command::Drill(_)
                    | ticketing::cli::Command::Blog(ticketing::cli::BlogCommand {
                        command: Some(ticketing::cli::BlogSubcommand::Streams(_)),
                        ..
                    })
            )
        ),
        env!("CARGO_CRATE_NAME"),
        &cli.service_name(),
        runtime.handle(),
    );
    let code = match runtime.block_on(ticketing::main(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // The error with every cause under it, each said once.
            let e = store::report(e.as_ref());
            tracing::error!("{e}");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
