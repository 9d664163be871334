//! `mirrorfleet-controller sync mirrors.yaml`: local mode. The same planner
//! and copy engine with no AWS: mirrors from a YAML file, an in-process
//! queue and workers, and status in `mirrors.yaml.state.db` (an embedded
//! SQLite database, `store::FileStore`) next to it, so a second run is
//! incremental. Two `sync` processes may share the file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use mirrorfleet_common::cli::{Exit, usage};
use mirrorfleet_common::cli::{OutputFormat, RegistryArgs};
use mirrorfleet_common::control::consume::{self, ConsumeOptions};
use mirrorfleet_common::control::enqueue;
use mirrorfleet_common::control::scan;
use mirrorfleet_common::store::queue::{MemoryQueue, Queue};
use mirrorfleet_common::store::{FileStore, Store};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(
    about = "Mirror everything in a YAML file, locally, with no AWS (status kept next to the file)",
    after_help = "Examples:\n  \
  mirrorfleet-controller sync mirrors.yaml\n  \
  mirrorfleet-controller sync --plain-http 127.0.0.1:5001,127.0.0.1:5002 mirrors.yaml\n  \
  mirrorfleet-controller sync --watch 10m mirrors.yaml     # repeat every 10 minutes\n\n\
The file:\n  \
  mirrors:\n    \
    - source: docker.io/library/golang:1.17\n      \
      destinations:\n        \
        - 123456789012.dkr.ecr.us-east-1.amazonaws.com/golang:1.17"
)]
pub struct SyncArgs {
    /// The mirror list (YAML).
    #[arg(env = "MIRRORFLEET_MIRRORS")]
    file: PathBuf,
    /// The most images copied at once. How many are is adapted below it:
    /// it grows while throughput grows and backs off when registries answer
    /// 429 or time out, so the default needs no tuning.
    #[arg(long, env = "MIRRORFLEET_WORKERS", default_value_t = consume::DEFAULT_MAX_JOBS)]
    workers: usize,
    /// Attempts per image before it is given up for this run.
    #[arg(long, env = "MIRRORFLEET_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// Repeat every INTERVAL (e.g. 10m) until interrupted.
    #[arg(long, env = "MIRRORFLEET_WATCH", value_parser = mirrorfleet_common::cli::parse_duration)]
    watch: Option<Duration>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Also compare signature and attestation tags (`sha256-<hex>`, `.sig`,
    /// `.att`, `.sbom`) of images in sync, so one signed after it was
    /// mirrored is brought over: 4 more HEADs per image and destination.
    #[arg(long, env = "MIRRORFLEET_CHECK_REFERRERS")]
    check_referrers: bool,
    /// Result format on stdout.
    #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

pub async fn main(args: SyncArgs, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let engine = Arc::new(args.registry.configured_engine().await?);
    loop {
        let code = once(&args, &engine, &shutdown).await?;
        let Some(every) = args.watch else {
            return Ok(code);
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return Ok(Exit::Interrupted),
        }
    }
}

async fn once(
    args: &SyncArgs,
    engine: &Arc<mirrorfleet_common::Engine>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Exit> {
    let started = Instant::now();
    // Re-read the file each round so edits are picked up under --watch.
    let file = FileStore::open(&args.file).map_err(usage)?;
    // The queue below lives in this process: a destination left `queued` or
    // `copying` by a `sync` that was killed has lost its job. When no other
    // `sync` has the file open, every such claim is one of those, so it is
    // queued again now; while another one runs, its claims are its own and
    // wait out the hold-off.
    let requeue_after = if file.others_open().await? {
        scan::ScanOptions::default().requeue_after
    } else {
        Duration::ZERO
    };
    let store = Arc::new(Store::File(file));
    let queue = Arc::new(Queue::Memory(MemoryQueue::new(args.max_attempts)));
    let opts = scan::ScanOptions {
        check_referrers: args.check_referrers,
        requeue_after,
        ..scan::ScanOptions::default()
    };
    let plans = scan::scan(&store, engine, None, &opts).await?;
    let summary = enqueue::apply(&store, Some(&queue), &plans, false, started).await?;
    let opts = ConsumeOptions {
        concurrency: args.workers.max(1),
        // A failed job comes back quickly in local mode; nothing else waits for it.
        visibility: Duration::from_secs(2),
        wait: Duration::from_millis(200),
        // With `drain`, idle means nothing queued or in flight: exit at once.
        exit_when_idle: Some(Duration::from_millis(20)),
        drain: true,
        trust_job_digest: true,
    };
    // Nothing queued (everything in sync): no workers to start or wait for.
    let consumed = if summary.jobs_enqueued == 0 {
        consume::ConsumeSummary::default()
    } else {
        consume::run(
            engine.clone(),
            queue.clone(),
            store.clone(),
            opts,
            shutdown.clone(),
        )
        .await
    };
    let rows = store.scan(1).await?;
    match args.output {
        OutputFormat::Text => crate::table_cmd::list(&rows, OutputFormat::Text, false)?,
        OutputFormat::Json => {
            let v = serde_json::json!({
                "plan": summary,
                "workers": consumed,
                "registries": engine.registries().request_counts().await,
                "ecr_api": engine.registries().ecr().api_calls(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    let failed = rows.iter().any(|r| match &r.row {
        Err(_) => true,
        Ok(row) => {
            row.error.is_some()
                || (row.mirror.enabled
                    && row.destination_statuses().iter().any(|(_, st)| {
                        st.state != Some(mirrorfleet_common::control::table::State::Synced)
                    }))
        }
    });
    tracing::info!(
        rows = summary.rows_scanned,
        jobs = summary.jobs_enqueued,
        completed = consumed.completed,
        failed = consumed.failed,
        bytes = consumed.bytes_copied,
        seconds = started.elapsed().as_secs_f64(),
        "sync finished"
    );
    Ok(if shutdown.is_cancelled() {
        Exit::Interrupted
    } else if failed {
        Exit::Failed
    } else {
        Exit::Success
    })
}
