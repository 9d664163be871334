//! `mirrorfleet-controller`: decides what needs mirroring.
//!
//! - `run`: scan the mirror table, plan, enqueue jobs, start Batch workers.
//! - `table`: add, remove, list, import, export mirrors; create the table.
//! - `sync`: local mode, the whole pipeline in one process from a YAML file.
//! - `check`: compare one source with its destinations (HEAD only).

mod check;
mod run;
mod scale;
mod sync;
mod table_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirrorfleet_common::cli::{self, LogArgs};

#[derive(Debug, Parser)]
#[command(
    name = "mirrorfleet-controller",
    version,
    about = "Decide which mirrored images are out of date",
    after_help = "Every flag can also be set from the environment variable shown in its help.\n\n\
Exit codes: 0 success (in sync); 1 some mirror failed or differs; 2 invalid usage or configuration;\n130 interrupted."
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
    Run(run::RunArgs),
    Table(table_cmd::TableArgs),
    Sync(sync::SyncArgs),
}

fn main() -> ExitCode {
    let Cli { log, command } = Cli::parse();
    cli::main(&log, |shutdown| async move {
        match command {
            Command::Check(args) => check::main(args).await,
            Command::Run(args) => run::main(args).await,
            Command::Table(args) => table_cmd::main(args).await,
            Command::Sync(args) => sync::main(args, shutdown).await,
        }
    })
}
