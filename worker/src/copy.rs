//! `mirrorfleet-worker copy SRC DEST[,DEST...] [DEST...]`: the ad-hoc copy,
//! as run by `aws batch submit-job --parameters source=...,dest=...`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};
use mirrorfleet_common::cli::{Exit, usage};
use mirrorfleet_common::cli::{OutputFormat, RegistryArgs, SourceDestArgs, human_bytes, table};
use mirrorfleet_common::copy::Progress;
use mirrorfleet_common::oci::manifest::PlatformSpec;
use mirrorfleet_common::{CopyReport, CopyRules, Outcome, Reference};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(
    about = "Copy one image, every platform, to one or more destinations",
    after_help = "Examples:\n  \
  # Docker Hub to two ECR regions (repositories are created when missing)\n  \
  mirrorfleet-worker copy golang:1.17 \\\n      \
      123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17,123456789012.dkr.ecr.us-east-2.amazonaws.com/golang:1.17\n\n  \
  # Only two platforms of a multi-platform image (a filtered index, new digest)\n  \
  mirrorfleet-worker copy --platform linux/amd64,linux/arm64 \\\n      \
      nginx:1.27 registry.example.com/nginx:1.27\n\n  \
  # Between two local registries over plain HTTP, summary as JSON\n  \
  mirrorfleet-worker copy --plain-http 127.0.0.1:5001,127.0.0.1:5002 --output json \\\n      \
      127.0.0.1:5001/app:1.0 127.0.0.1:5002/mirror/app:1.0\n\n  \
  # As an AWS Batch job (the job definition passes Ref::source and Ref::dest)\n  \
  aws batch submit-job --job-name copy --job-queue mirrorfleet --job-definition mirrorfleet-copy \\\n      \
      --parameters source=golang:1.17,dest=123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17"
)]
pub struct CopyArgs {
    #[command(flatten)]
    images: SourceDestArgs,

    #[command(flatten)]
    registry: RegistryArgs,

    /// Result format on stdout.
    #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    /// Copy only these platforms of a multi-platform image (repeatable or
    /// comma-separated: os/arch[/variant]); the destination gets a filtered
    /// index with a digest of its own.
    #[arg(
        long = "platform",
        env = "MIRRORFLEET_PLATFORMS",
        value_name = "OS/ARCH",
        value_delimiter = ','
    )]
    platforms: Vec<String>,

    /// Progress bar on stderr: `auto` shows it on a terminal only.
    #[arg(long, env = "MIRRORFLEET_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    Auto,
    Always,
    Never,
}

/// The validated form of [`CopyArgs`].
pub struct Config {
    source: Reference,
    destinations: Vec<Reference>,
    rules: CopyRules,
    engine: mirrorfleet_common::Engine,
    output: OutputFormat,
    progress: bool,
}

impl CopyArgs {
    async fn config(self) -> anyhow::Result<Config> {
        let (source, destinations) = self.images.references()?;
        anyhow::ensure!(!destinations.is_empty(), "no destination given");
        let platforms = self
            .platforms
            .iter()
            .map(|p| p.trim().parse::<PlatformSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let rules = CopyRules {
            overwrite: None,
            platforms,
        };
        let engine = self.registry.configured_engine().await?;
        let progress = match self.progress {
            ProgressMode::Always => true,
            ProgressMode::Never => false,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        };
        Ok(Config {
            source,
            destinations,
            rules,
            engine,
            output: self.output,
            progress,
        })
    }
}

pub async fn main(args: CopyArgs, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let config = args.config().await.map_err(usage)?;
    let report = run(&config, shutdown.clone()).await;
    match print(&report, config.output) {
        Ok(()) => {}
        Err(e) => eprintln!("error: cannot write the summary: {e}"),
    }
    Ok(exit_code(&report, shutdown.is_cancelled()))
}

/// Copy and return the per-destination report.
pub async fn run(config: &Config, shutdown: CancellationToken) -> CopyReport {
    let bar = config.progress.then(|| spawn_bar(config.engine.progress()));
    tracing::info!(source = %config.source, destinations = config.destinations.len(), "copy started");
    let report = config
        .engine
        .copy_with(
            &config.source,
            &config.destinations,
            &config.rules,
            &shutdown,
        )
        .await;
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    mirrorfleet_common::control::consume::emit_metrics("copy", &report, "");
    for d in &report.destinations {
        match d.outcome {
            Outcome::Failed => tracing::error!(
                source = %report.source, destination = %d.destination,
                error = d.error.as_deref().unwrap_or(""), "copy failed"
            ),
            _ => tracing::info!(
                source = %report.source, destination = %d.destination,
                digest = %d.digest.as_ref().map(|x| x.to_string()).unwrap_or_default(),
                outcome = ?d.outcome, bytes = d.bytes_copied, blobs_copied = d.blobs_copied,
                blobs_mounted = d.blobs_mounted, blobs_skipped = d.blobs_skipped,
                seconds = d.seconds, "destination synced"
            ),
        }
    }
    report
}

fn spawn_bar(progress: Arc<Progress>) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            b.set_length(progress.bytes_total.load(Ordering::Relaxed));
            b.set_position(progress.bytes_read.load(Ordering::Relaxed));
            b.set_message(format!(
                "blobs {}/{}",
                progress.blobs_done.load(Ordering::Relaxed),
                progress.blobs_total.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, task)
}

fn print(report: &CopyReport, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> = report
                .destinations
                .iter()
                .map(|d| {
                    vec![
                        d.destination.clone(),
                        match d.outcome {
                            Outcome::Copied => "copied".into(),
                            Outcome::InSync => "in sync".into(),
                            Outcome::Failed => "FAILED".into(),
                        },
                        d.digest
                            .as_ref()
                            .map(|x| x.to_string()[..19].to_string())
                            .unwrap_or_else(|| "-".into()),
                        human_bytes(d.bytes_copied),
                        format!("{}/{}/{}", d.blobs_copied, d.blobs_mounted, d.blobs_skipped),
                        format!("{:.1}s", d.seconds),
                        d.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "DESTINATION",
                        "RESULT",
                        "DIGEST",
                        "COPIED",
                        "BLOBS c/m/s",
                        "TIME",
                        "ERROR"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(())
}

fn exit_code(report: &CopyReport, interrupted: bool) -> Exit {
    if interrupted && !report.all_synced() {
        return Exit::Interrupted;
    }
    let failed: Vec<_> = report
        .destinations
        .iter()
        .filter(|d| d.outcome == Outcome::Failed)
        .collect();
    if failed.is_empty() {
        Exit::Success
    } else if failed.iter().all(|d| d.transient) {
        Exit::Transient
    } else {
        Exit::Failed
    }
}
