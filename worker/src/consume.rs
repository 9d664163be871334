//! `mirrorfleet-worker consume`: the SQS worker loop, as run by AWS Batch.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use mirrorfleet_common::cli::{Exit, usage};
use mirrorfleet_common::cli::{OutputFormat, RegistryArgs};
use mirrorfleet_common::control::consume::{self, ConsumeOptions};
use mirrorfleet_common::store::queue::{Queue, SqsQueue};
use mirrorfleet_common::store::{DynamoStore, Store};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(
    about = "Copy images from the job queue and write each outcome to the mirror table",
    after_help = "Examples:\n  \
  mirrorfleet-worker consume --table mirrors --queue-url $QUEUE_URL\n  \
  # As a Batch job: stop once the queue has been empty for a minute\n  \
  mirrorfleet-worker consume --table mirrors --queue-url $QUEUE_URL \\\n      \
      --exit-when-idle 60s --jobs 8\n\n\
SIGTERM (Batch, Spot) stops taking jobs and releases the ones in hand for another worker;\n\
a second signal exits at once."
)]
pub struct ConsumeArgs {
    /// The mirror table (DynamoDB).
    #[arg(long, env = "MIRRORFLEET_TABLE")]
    table: String,
    /// The job queue (SQS URL).
    #[arg(long, env = "MIRRORFLEET_QUEUE_URL")]
    queue_url: String,
    /// The most jobs (images) copied at once. How many are is adapted
    /// below it: it grows while throughput grows and backs off when
    /// registries answer 429 or time out, so the default needs no tuning.
    #[arg(long = "jobs", env = "MIRRORFLEET_JOBS", default_value_t = consume::DEFAULT_MAX_JOBS)]
    jobs: usize,
    /// How long a received job stays hidden from other workers; extended every third of it while the copy runs.
    #[arg(long, env = "MIRRORFLEET_VISIBILITY", default_value = "2m", value_parser = mirrorfleet_common::cli::parse_duration)]
    visibility: Duration,
    /// Exit after the queue has stayed empty this long (e.g. 60s).
    #[arg(long, env = "MIRRORFLEET_EXIT_WHEN_IDLE", value_parser = mirrorfleet_common::cli::parse_duration)]
    exit_when_idle: Option<Duration>,
    /// Long-poll wait per receive (at most 20s).
    #[arg(long, env = "MIRRORFLEET_WAIT", default_value = "20s", value_parser = mirrorfleet_common::cli::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Summary format on stdout at exit.
    #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

pub async fn main(args: ConsumeArgs, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    if args.visibility < Duration::from_secs(3) {
        return Err(usage("--visibility must be at least 3s").into());
    }
    let engine = Arc::new(args.registry.configured_engine().await?);
    let store = Arc::new(Store::Dynamo(DynamoStore::new(&args.table).await));
    let queue = Arc::new(Queue::Sqs(SqsQueue::new(&args.queue_url).await));
    let opts = ConsumeOptions {
        concurrency: args.jobs.max(1),
        visibility: args.visibility,
        wait: args.wait.min(Duration::from_secs(20)),
        exit_when_idle: args.exit_when_idle,
        drain: false,
        trust_job_digest: false,
    };
    tracing::info!(queue = %args.queue_url, table = %args.table, jobs = opts.concurrency, "worker started");
    let summary = consume::run(engine, queue, store, opts, shutdown.clone()).await;
    tracing::info!(
        jobs = summary.jobs,
        completed = summary.completed,
        failed = summary.failed,
        malformed = summary.malformed,
        released = summary.released,
        bytes = summary.bytes_copied,
        "worker finished"
    );
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(if shutdown.is_cancelled() {
        Exit::Interrupted
    } else {
        Exit::Success
    })
}
