//! `mirrorfleet-worker`: copies container images between registries.
//!
//! `main` only parses flags, installs logging and the shutdown signal, and
//! hands a validated configuration to [`copy::run`].

mod consume;
mod copy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirrorfleet_common::cli::{self, LogArgs};

#[derive(Debug, Parser)]
#[command(
    name = "mirrorfleet-worker",
    version,
    about = "Copy container images between OCI registries, all platforms, digests preserved",
    after_help = "Every flag can also be set from the environment variable shown in its help.\n\n\
Exit codes: 0 every destination holds the source digest; 1 a destination failed and needs attention;\n\
2 invalid usage or configuration; 3 only transient failures (retrying later may succeed); 130 interrupted."
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Copy(copy::CopyArgs),
    Consume(consume::ConsumeArgs),
}

fn main() -> ExitCode {
    let Cli { log, command } = Cli::parse();
    cli::main(&log, |shutdown| async move {
        match command {
            Command::Copy(args) => copy::main(args, shutdown).await,
            Command::Consume(args) => consume::main(args, shutdown).await,
        }
    })
}
