//! `mirrorfleet-controller table ...`: manage the mirror table in DynamoDB.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use mirrorfleet_common::Reference;
use mirrorfleet_common::cli::{Exit, usage};
use mirrorfleet_common::cli::{OutputFormat, table};
use mirrorfleet_common::control::select::{RepoRules, TagRules};
use mirrorfleet_common::control::table::{
    Mirror, MirrorFile, Row, ScannedRow, parse_csv, render_csv,
};
use mirrorfleet_common::store::DynamoStore;

#[derive(Debug, Args)]
#[command(
    about = "Add, remove, list, import and export mirrors",
    after_help = "Examples:\n  \
  mirrorfleet-controller table create --table mirrors\n  \
  mirrorfleet-controller table add --table mirrors golang:1.17 \\\n      \
      123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17 \\\n      \
      123456789012.dkr.ecr.us-east-2.amazonaws.com/golang:1.17\n  \
  # The 5 newest tags >= 1.20, kept as mirror/library/golang\n  \
  mirrorfleet-controller table add --table mirrors --semver '>=1.20' --latest 5 golang \\\n      \
      123456789012.dkr.ecr.us-east-1.amazonaws.com/mirror/\n  \
  # A whole namespace: team/app -> migrated/app\n  \
  mirrorfleet-controller table add --table mirrors --strip team 'harbor.example.com/team/*' \\\n      \
      123456789012.dkr.ecr.us-east-1.amazonaws.com/migrated/\n  \
  # Two platforms only (a filtered index)\n  \
  mirrorfleet-controller table add --table mirrors --platform linux/amd64,linux/arm64 \\\n      \
      nginx:1.27 123456789012.dkr.ecr.us-east-1.amazonaws.com/nginx:1.27\n  \
  # Each image of repository rows\n  \
  mirrorfleet-controller table ls --table mirrors --expand\n  \
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

// Parsed once per process: the size of the `add` variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        #[arg(long, env = "MIRRORFLEET_NO_OVERWRITE")]
        no_overwrite: bool,
        /// Add it disabled (the controller skips it).
        #[arg(long, env = "MIRRORFLEET_DISABLED")]
        disabled: bool,
        /// Mirror only these platforms of a multi-platform image (repeatable
        /// or comma-separated: os/arch[/variant]). The destination then holds
        /// a filtered index whose digest differs from the source's.
        #[arg(
            long = "platform",
            env = "MIRRORFLEET_PLATFORMS",
            value_name = "OS/ARCH",
            value_delimiter = ','
        )]
        platforms: Vec<String>,
        /// A repository row (SOURCE without a tag): mirror the tags matching
        /// this regex (repeatable); destinations are repositories, or prefixes
        /// ending in `/` under which the source path is kept.
        #[arg(
            long = "include-tags",
            env = "MIRRORFLEET_INCLUDE_TAGS",
            value_name = "REGEX"
        )]
        include_tags: Vec<String>,
        /// A repository row: skip the tags matching this regex (repeatable).
        #[arg(
            long = "exclude-tags",
            env = "MIRRORFLEET_EXCLUDE_TAGS",
            value_name = "REGEX"
        )]
        exclude_tags: Vec<String>,
        /// A repository row: only tags in this semver range (e.g. ">=1.20 <2").
        #[arg(long, env = "MIRRORFLEET_SEMVER", value_name = "RANGE")]
        semver: Option<String>,
        /// A registry-wide row (SOURCE ending in /*): mirror the repositories
        /// matching this glob (repeatable; `*` one path level, `**` any).
        #[arg(
            long = "include-repos",
            env = "MIRRORFLEET_INCLUDE_REPOS",
            value_name = "GLOB"
        )]
        include_repos: Vec<String>,
        /// A registry-wide row: skip the repositories matching this glob (repeatable).
        #[arg(
            long = "exclude-repos",
            env = "MIRRORFLEET_EXCLUDE_REPOS",
            value_name = "GLOB"
        )]
        exclude_repos: Vec<String>,
        /// A row with prefix destinations: drop this leading path of each
        /// source repository (`--strip team`: team/app -> PREFIX/app).
        #[arg(long, env = "MIRRORFLEET_STRIP", value_name = "PATH")]
        strip: Option<String>,
        /// A repository row: only the newest N tags (by semver).
        #[arg(long, env = "MIRRORFLEET_LATEST", value_name = "N")]
        latest: Option<usize>,
    },
    /// Remove a mirror (images already mirrored stay where they are).
    Rm { source: String },
    /// List mirrors with each destination's state.
    Ls {
        #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        /// List each image of a repository row instead of a summary line.
        #[arg(long, env = "MIRRORFLEET_EXPAND")]
        expand: bool,
    },
    /// Add every mirror of a YAML or CSV file (`-` for stdin); all are validated first.
    Import {
        file: PathBuf,
        #[arg(long, env = "MIRRORFLEET_FILE_FORMAT", value_enum)]
        format: Option<FileFormat>,
    },
    /// Print every mirror as YAML or CSV.
    Export {
        #[arg(long, env = "MIRRORFLEET_FILE_FORMAT", value_enum, default_value_t = FileFormat::Yaml)]
        format: FileFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FileFormat {
    Yaml,
    Csv,
}

pub async fn main(args: TableArgs) -> anyhow::Result<Exit> {
    let Some(name) = args.table else {
        return Err(usage("give the table with --table NAME or MIRRORFLEET_TABLE").into());
    };
    let store = DynamoStore::new(&name).await;
    match args.command {
        TableCommand::Create => {
            use mirrorfleet_common::store::Created;
            let said = match store.create_table().await? {
                Created::Table => format!("created table {name}"),
                Created::Index => format!(
                    "table {name} already exists; added its source index {} (rows written \
                     before it are indexed by the next scheduled controller run)",
                    mirrorfleet_common::store::index::INDEX
                ),
                Created::Nothing => format!("table {name} already exists"),
            };
            println!("{said}");
        }
        TableCommand::Add {
            source,
            destinations,
            no_overwrite,
            disabled,
            platforms,
            include_tags,
            exclude_tags,
            semver,
            latest,
            include_repos,
            exclude_repos,
            strip,
        } => {
            let rules = TagRules {
                include: include_tags,
                exclude: exclude_tags,
                semver,
                latest,
            };
            // Validate before writing: an invalid reference is refused with the reason.
            let repos = RepoRules {
                include: include_repos,
                exclude: exclude_repos,
            };
            let made = if rules.is_empty() && repos.is_empty() && !source.ends_with("/*") {
                Mirror::new(&source, &destinations)
            } else {
                Mirror::with_selection(
                    &source,
                    &destinations,
                    rules,
                    (!repos.is_empty()).then_some(repos),
                )
            };
            let mut m = made.map_err(anyhow::Error::msg)?;
            fits_in_an_item(&m).map_err(anyhow::Error::msg)?;
            m.enabled = !disabled;
            m.overwrite = no_overwrite.then_some(false);
            m.set_platforms(&platforms).map_err(anyhow::Error::msg)?;
            m.set_strip(strip.as_deref()).map_err(anyhow::Error::msg)?;
            store.put_mirror(&m).await?;
            println!("added {} -> {}", m.key(), m.destination_names().join(", "));
        }
        TableCommand::Rm { source } => {
            // An image row's key is its normalised reference; a repository
            // row's has no tag; a registry-wide row's ends in /*.
            let mut keys: Vec<String> = Vec::new();
            if let Ok(r) = source.parse::<Reference>() {
                keys.push(r.to_string());
            }
            if let Ok(r) = Reference::parse_repository(&source) {
                keys.push(r.to_string());
            }
            keys.push(source.clone());
            let mut removed = None;
            for key in keys {
                if store.delete(&key).await? {
                    removed = Some(key);
                    break;
                }
            }
            match removed {
                Some(key) => println!("removed {key}"),
                None => {
                    eprintln!("no mirror for {source}");
                    return Ok(Exit::Failed);
                }
            }
        }
        TableCommand::Ls { output, expand } => list(&store.scan(4).await?, output, expand)?,
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
            // A file that is not a mirror file is refused whole; in one that
            // is, each bad row is reported and the rest go in.
            let mut parsed = if csv {
                parse_csv(&text)
            } else {
                MirrorFile::parse_rows(&text, &name)?
            };
            parsed.refuse_where(fits_in_an_item);
            for refused in &parsed.refused {
                eprintln!("error: {name}: {refused}");
            }
            let refused = parsed.refused.len();
            let mirrors = parsed.into_mirrors();
            // New rows in batches of 25, existing ones updated in place.
            let imported = store.put_mirrors(&mirrors).await?;
            tracing::info!(
                created = imported.created,
                updated = imported.updated,
                refused,
                "table import"
            );
            let s = if mirrors.len() == 1 { "" } else { "s" };
            if refused == 0 {
                println!("imported {} mirror{s}", mirrors.len());
            } else {
                println!("imported {} mirror{s}; refused {refused}", mirrors.len());
                return Ok(Exit::Failed);
            }
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
                FileFormat::Csv => print!("{}", render_csv(&mirrors)?),
            }
        }
    }
    Ok(Exit::Success)
}

/// DynamoDB's limit on one item, status map included.
const ITEM_LIMIT: usize = 400 * 1024;
/// Room for one destination's recorded status (digests, times, counters and
/// an error), besides its name.
const STATUS_BYTES: usize = 400;

/// Refuse a row that would outgrow a DynamoDB item once each destination's
/// status is recorded: writing it would work, and every later status write
/// to it would fail.
fn fits_in_an_item(m: &Mirror) -> Result<(), String> {
    let source = m.key().len();
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
    Err(format!(
        "the row is too large for the table: with each destination's status recorded, its {} destinations \
         need about {} KB, and a DynamoDB item holds at most 400 KB (about {} destinations like these fit)",
        m.destinations.len(),
        total / 1024,
        (ITEM_LIMIT - base) / average.max(1)
    ))
}

/// One line for a repository row: its targets and how many of its images
/// are in each state.
fn repository_summary(row: &Row) -> (Vec<String>, serde_json::Value) {
    let statuses = row.destination_statuses();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, st) in &statuses {
        *counts
            .entry(st.state.map(|s| s.as_str()).unwrap_or("new"))
            .or_default() += 1;
    }
    let state = if !row.mirror.enabled {
        "disabled".to_string()
    } else if statuses.is_empty() {
        "no images yet".to_string()
    } else {
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!("{} images: {}", statuses.len(), parts.join(", "))
    };
    let last = statuses
        .iter()
        .filter_map(|(_, st)| st.last_success.clone())
        .max()
        .unwrap_or_else(|| "-".into());
    let targets = row.mirror.destination_names().join(", ");
    let line = vec![
        row.mirror.key(),
        targets.clone(),
        state.clone(),
        "-".into(),
        last,
        row.error.clone().unwrap_or_default(),
    ];
    let json = serde_json::json!({
        "source": row.mirror.key(), "destination": targets, "state": state,
        "images": statuses.len(), "states": counts, "row_error": row.error,
    });
    (line, json)
}

/// The status table: one line per destination; a repository row is one
/// summary line unless `expand` lists each of its images.
pub fn list(rows: &[ScannedRow], output: OutputFormat, expand: bool) -> anyhow::Result<()> {
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
            Ok(row) if row.mirror.select.is_some() && !expand => {
                let (line, j) = repository_summary(row);
                lines.push(line);
                json.push(j);
            }
            Ok(row) => {
                for (d, st) in row.destination_statuses() {
                    // A repository row's image: its source is the row's
                    // repository at the destination's tag.
                    let source = match (&row.mirror.select, d.parse::<Reference>()) {
                        (Some(_), Ok(dr)) => dr
                            .tag()
                            .and_then(|t| row.mirror.source.with_tag(t).ok())
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| row.mirror.source.to_string()),
                        _ => row.mirror.source.to_string(),
                    };
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
                    let platforms: Vec<String> = row
                        .mirror
                        .platforms
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    let shown = if platforms.is_empty() {
                        source.clone()
                    } else {
                        format!("{source} [{}]", platforms.join(","))
                    };
                    lines.push(vec![
                        shown,
                        d.clone(),
                        state.clone(),
                        digest,
                        st.last_success.clone().unwrap_or_else(|| "-".into()),
                        error.clone(),
                    ]);
                    json.push(serde_json::json!({
                        "source": source, "destination": d, "state": state,
                        "status": st, "row_error": row.error, "row": r.key,
                        "platforms": platforms,
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
