//! `mirrorfleet-controller table ...`: manage the mirror table in DynamoDB.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use mirrorfleet_common::cli::{OutputFormat, table};
use mirrorfleet_common::store::DynamoStore;
use mirrorfleet_common::table::{Mirror, MirrorFile, ScannedRow, parse_csv, render_csv};

#[derive(Debug, Args)]
#[command(
    about = "Add, remove, list, import and export mirrors",
    after_help = "Examples:\n  \
  mirrorfleet-controller table create --table mirrors\n  \
  mirrorfleet-controller table add --table mirrors golang:1.17 \\\n      \
      123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17 123456789012.dkr.ecr.us-east-2.amazonaws.com/golang:1.17\n  \
  mirrorfleet-controller table ls --table mirrors\n  \
  mirrorfleet-controller table import --table mirrors mirrors.yaml\n  \
  mirrorfleet-controller table export --table mirrors --format csv > mirrors.csv"
)]
pub struct TableArgs {
    /// The mirror table (DynamoDB).
    #[arg(long, env = "MIRRORFLEET_TABLE", global = true)]
    table: Option<String>,
    #[command(subcommand)]
    command: TableCommand,
}

#[derive(Debug, Subcommand)]
enum TableCommand {
    /// Create the DynamoDB table (key `source`, on-demand); an existing one is fine.
    Create,
    /// Add a mirror, or replace an existing one's destinations (its status is kept).
    Add {
        source: String,
        #[arg(required = true, num_args = 1.., value_delimiter = ',')]
        destinations: Vec<String>,
        /// Refuse to move a destination tag that holds another digest.
        #[arg(long)]
        no_overwrite: bool,
        /// Add it disabled (the controller skips it).
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a mirror (images already mirrored stay where they are).
    Rm { source: String },
    /// List mirrors with each destination's state.
    Ls {
        #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Add every mirror of a YAML or CSV file (`-` for stdin); all are validated first.
    Import {
        file: PathBuf,
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
    },
    /// Print every mirror as YAML or CSV.
    Export {
        #[arg(long, value_enum, default_value_t = FileFormat::Yaml)]
        format: FileFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FileFormat {
    Yaml,
    Csv,
}

pub async fn main(args: TableArgs) -> ExitCode {
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: TableArgs) -> anyhow::Result<ExitCode> {
    let Some(name) = args.table else {
        anyhow::bail!("give the table with --table NAME or MIRRORFLEET_TABLE");
    };
    let store = DynamoStore::new(&name).await;
    match args.command {
        TableCommand::Create => {
            let created = store.create_table().await?;
            println!(
                "{}",
                if created {
                    format!("created table {name}")
                } else {
                    format!("table {name} already exists")
                }
            );
        }
        TableCommand::Add {
            source,
            destinations,
            no_overwrite,
            disabled,
        } => {
            // Validate before writing: an invalid reference is refused with the reason.
            let mut m = Mirror::new(&source, &destinations).map_err(anyhow::Error::msg)?;
            fits_in_an_item(&m)?;
            m.enabled = !disabled;
            m.overwrite = no_overwrite.then_some(false);
            store.put_mirror(&m).await?;
            println!(
                "added {} -> {}",
                m.source,
                m.destinations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        TableCommand::Rm { source } => {
            let key = source
                .parse::<mirrorfleet_common::Reference>()
                .map(|r| r.to_string())
                .unwrap_or(source);
            if store.delete(&key).await? {
                println!("removed {key}");
            } else {
                eprintln!("no mirror for {key}");
                return Ok(ExitCode::from(1));
            }
        }
        TableCommand::Ls { output } => list(&store.scan(4).await?, output)?,
        TableCommand::Import { file, format } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let csv = match format {
                Some(f) => f == FileFormat::Csv,
                None => file.extension().is_some_and(|e| e == "csv"),
            };
            let name = if file.as_os_str() == "-" {
                "stdin".to_string()
            } else {
                file.display().to_string()
            };
            let mirrors = if csv {
                parse_csv(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?
            } else {
                MirrorFile::parse(&text, &name)?
            };
            for (i, m) in mirrors.iter().enumerate() {
                fits_in_an_item(m).with_context(|| format!("{name}: mirror {}", i + 1))?;
            }
            for m in &mirrors {
                store.put_mirror(m).await?;
            }
            println!("imported {} mirrors", mirrors.len());
        }
        TableCommand::Export { format } => {
            let mirrors: Vec<Mirror> = store
                .scan(4)
                .await?
                .into_iter()
                .filter_map(|r| r.row.ok().map(|r| r.mirror))
                .collect();
            match format {
                FileFormat::Yaml => print!("{}", MirrorFile::render(&mirrors)),
                FileFormat::Csv => print!("{}", render_csv(&mirrors)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// DynamoDB's limit on one item, status map included.
const ITEM_LIMIT: usize = 400 * 1024;
/// Room for one destination's recorded status (digests, times, counters and
/// an error), besides its name.
const STATUS_BYTES: usize = 400;

/// Refuse a row that would outgrow a DynamoDB item once each destination's
/// status is recorded: writing it would work, and every later status write
/// to it would fail.
fn fits_in_an_item(m: &Mirror) -> anyhow::Result<()> {
    let source = m.source.to_string().len();
    let base = 64 + 2 * source;
    let per: Vec<usize> = m
        .destinations
        .iter()
        .map(|d| 2 * d.to_string().len() + STATUS_BYTES)
        .collect();
    let total = base + per.iter().sum::<usize>();
    if total <= ITEM_LIMIT {
        return Ok(());
    }
    let average = per.iter().sum::<usize>() / per.len().max(1);
    anyhow::bail!(
        "the row is too large for the table: with each destination's status recorded, its {} destinations \
         need about {} KB, and a DynamoDB item holds at most 400 KB (about {} destinations like these fit)",
        m.destinations.len(),
        total / 1024,
        (ITEM_LIMIT - base) / average.max(1)
    )
}

/// The status table: one line per destination.
pub fn list(rows: &[ScannedRow], output: OutputFormat) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for r in rows {
        match &r.row {
            Err(e) => {
                lines.push(vec![
                    r.key.clone(),
                    "-".into(),
                    "INVALID".into(),
                    "-".into(),
                    "-".into(),
                    e.clone(),
                ]);
                json.push(serde_json::json!({"source": r.key, "error": e}));
            }
            Ok(row) => {
                for d in &row.mirror.destinations {
                    let st = row.status.get(&d.to_string()).cloned().unwrap_or_default();
                    let state = if !row.mirror.enabled {
                        "disabled".to_string()
                    } else {
                        st.state
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_else(|| "new".into())
                    };
                    let digest = st
                        .dest_digest
                        .as_ref()
                        .or(st.source_digest.as_ref())
                        .map(|d| d.to_string()[..19].to_string())
                        .unwrap_or_else(|| "-".into());
                    let error = st
                        .error
                        .clone()
                        .or_else(|| row.error.clone())
                        .unwrap_or_default();
                    lines.push(vec![
                        row.mirror.source.to_string(),
                        d.to_string(),
                        state.clone(),
                        digest,
                        st.last_success.clone().unwrap_or_else(|| "-".into()),
                        error.clone(),
                    ]);
                    json.push(serde_json::json!({
                        "source": row.mirror.source.to_string(), "destination": d.to_string(), "state": state,
                        "status": st, "row_error": row.error,
                    }));
                }
            }
        }
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        OutputFormat::Text => print!(
            "{}",
            table(
                &[
                    "SOURCE",
                    "DESTINATION",
                    "STATE",
                    "DIGEST",
                    "LAST SUCCESS",
                    "ERROR"
                ],
                &lines
            )
        ),
    }
    Ok(())
}
