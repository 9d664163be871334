//! `mirrorfleet-controller`: decides what needs mirroring.
//!
//! For now it has `check`, which compares a source's digest with its
//! destinations' using HEAD requests only (HEAD does not count against Docker
//! Hub's pull limit). The table scan, planner and queue come with the control
//! plane.

mod check;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirrorfleet_common::cli::LogArgs;

#[derive(Debug, Parser)]
#[command(
    name = "mirrorfleet-controller",
    version,
    about = "Decide which mirrored images are out of date",
    after_help = "Every flag can also be set from the environment variable shown in its help.\n\n\
Exit codes: 0 in sync; 1 out of sync or unreadable; 2 invalid usage or configuration."
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    mirrorfleet_common::cli::run_async(async move {
        match cli.command {
            Command::Check(args) => check::main(args).await,
        }
    })
}
