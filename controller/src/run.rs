//! `mirrorfleet-controller run`: scan → plan → enqueue → scale.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt as _;
use mirrorfleet_common::cli::{Exit, usage};
use mirrorfleet_common::cli::{OutputFormat, RegistryArgs, table};
use mirrorfleet_common::control::enqueue::{self, RunSummary};
use mirrorfleet_common::control::plan::Plan;
use mirrorfleet_common::control::scan::{self, EventFilter, RowPlan};
use mirrorfleet_common::error::error_line;
use mirrorfleet_common::registry::RequestReport;
use mirrorfleet_common::store::queue::{Queue, SqsQueue};
use mirrorfleet_common::store::{DynamoStore, Store};

use crate::scale::{self, ScaleArgs};

#[derive(Debug, Args)]
#[command(
    about = "Scan the mirror table, queue a job for every row that differs, and start workers",
    after_help = "Examples:\n  \
  # What would be copied? (changes nothing)\n  \
  mirrorfleet-controller run --table mirrors --queue-url $QUEUE_URL --dry-run\n\n  \
  # Scheduled run: enqueue and start up to 20 Batch workers\n  \
  mirrorfleet-controller run --table mirrors --queue-url $QUEUE_URL \\\n      \
      --batch-job-queue mirrorfleet --batch-job-definition mirrorfleet-worker --max-workers 20\n\n  \
  # ECR push event (EventBridge passes the repository and tag)\n  \
  mirrorfleet-controller run --table mirrors --queue-url $QUEUE_URL --repository golang --tag 1.17"
)]
pub struct RunArgs {
    /// The mirror table (DynamoDB).
    #[arg(long, env = "MIRRORFLEET_TABLE")]
    table: String,
    /// The job queue (SQS URL).
    #[arg(long, env = "MIRRORFLEET_QUEUE_URL")]
    queue_url: String,
    /// Parallel scan segments.
    #[arg(long, env = "MIRRORFLEET_SEGMENTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    segments: u32,
    /// Items per scan page (a page is also at most 1 MB, DynamoDB's own
    /// limit). The pages read ahead are most of the controller's memory:
    /// 1,000 small rows are ~0.5 MB, against ~2,400 in a 1 MB page.
    #[arg(long, env = "MIRRORFLEET_SCAN_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    scan_page_size: u32,
    /// Rows checked at once (each one HEADs its source and destinations);
    /// each registry's own limit adapts below this to what it sustains.
    #[arg(long, env = "MIRRORFLEET_PROBE_CONCURRENCY", default_value_t = 64)]
    probe_concurrency: usize,
    /// Strongly consistent scan reads (twice the read units). Not needed:
    /// every write the controller makes is conditional on what it read.
    #[arg(long, env = "MIRRORFLEET_CONSISTENT_SCAN")]
    consistent_scan: bool,
    /// Queue a destination again when it has been `queued` this long with no
    /// result (its message was lost, or a controller died before sending it).
    #[arg(long, env = "MIRRORFLEET_REQUEUE_AFTER", default_value = "1h", value_parser = mirrorfleet_common::cli::parse_duration)]
    requeue_after: std::time::Duration,
    /// Also compare signature and attestation tags (`sha256-<hex>`, `.sig`,
    /// `.att`, `.sbom`) of images in sync, so one signed after it was
    /// mirrored is brought over: 4 more HEADs per image and destination.
    #[arg(long, env = "MIRRORFLEET_CHECK_REFERRERS")]
    check_referrers: bool,
    /// Print the plan and change nothing (no table writes, no messages, no workers).
    #[arg(long, env = "MIRRORFLEET_DRY_RUN")]
    dry_run: bool,
    /// An EventBridge ECR push event (file, or - for stdin): plan only rows whose source is that image.
    #[arg(long, env = "MIRRORFLEET_EVENT", value_name = "FILE|-", conflicts_with_all = ["repository", "tag"])]
    event: Option<String>,
    /// With --tag: plan only rows whose source is this repository and tag.
    #[arg(long, env = "MIRRORFLEET_EVENT_REPOSITORY", requires = "tag")]
    repository: Option<String>,
    #[arg(long, env = "MIRRORFLEET_EVENT_TAG", requires = "repository")]
    tag: Option<String>,
    /// With --repository/--tag: only sources on this registry host.
    #[arg(long, env = "MIRRORFLEET_EVENT_REGISTRY", requires = "repository")]
    registry_host: Option<String>,
    #[command(flatten)]
    scale: ScaleArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Result format on stdout.
    #[arg(long, env = "MIRRORFLEET_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

pub async fn main(args: RunArgs) -> anyhow::Result<Exit> {
    // Logged too, so a scheduled run's failure reaches CloudWatch.
    run(args).await.inspect_err(|e| {
        let e: &(dyn std::error::Error + 'static) = e.as_ref();
        tracing::error!(error = %error_line(e), "controller run failed");
    })
}

fn event_filter(args: &RunArgs) -> anyhow::Result<Option<EventFilter>> {
    if let Some(src) = &args.event {
        let text = if src == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the event from stdin")?
        } else {
            std::fs::read_to_string(src).with_context(|| format!("reading the event file {src}"))?
        };
        return Ok(Some(
            EventFilter::from_event_json(&text).map_err(anyhow::Error::msg)?,
        ));
    }
    Ok(match (&args.repository, &args.tag) {
        (Some(r), Some(t)) => Some(EventFilter {
            registry: args.registry_host.clone(),
            repository: r.clone(),
            tag: t.clone(),
        }),
        _ => None,
    })
}

async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let filter = event_filter(&args).map_err(usage)?;
    let engine = Arc::new(args.registry.configured_engine().await?);
    let store = Store::Dynamo(
        DynamoStore::new(&args.table)
            .await
            .with_page_size(Some(args.scan_page_size)),
    );
    let queue = Queue::Sqs(SqsQueue::new(&args.queue_url).await);
    let opts = scan::ScanOptions {
        segments: args.segments,
        concurrency: args.probe_concurrency,
        requeue_after: args.requeue_after,
        check_referrers: args.check_referrers,
        consistent: args.consistent_scan,
        reindex: !args.dry_run && filter.is_none(),
    };
    // Rows are planned and enqueued as the scan reads them: memory stays
    // bounded by the page size and the concurrency, whatever the table's
    // size. Only a dry run keeps every plan, for its table.
    let mut enqueuer = enqueue::Enqueuer::new(&store, Some(&queue), args.dry_run);
    let mut shown = Vec::new();
    let mut plans =
        std::pin::pin!(scan::plan_stream(&store, &engine, filter.as_ref(), &opts).await);
    // When the first planned row arrives (its page read and probed): the
    // rest of the run is the controller's pace, not the first read's.
    let mut first_row = None;
    while let Some(row_plans) = plans.next().await {
        let row_plans = row_plans.context("scanning the table")?;
        first_row.get_or_insert_with(|| started.elapsed().as_secs_f64());
        if args.dry_run {
            shown.extend(row_plans.iter().cloned());
        }
        enqueuer.add(row_plans).await.context("enqueueing")?;
    }
    let mut summary = enqueuer.finish().await.context("enqueueing")?;
    if args.dry_run {
        shown.sort_by(|a, b| a.key.cmp(&b.key));
        print_plan(&shown, args.output)?;
    }
    let scaled = if args.dry_run {
        None
    } else {
        scale::scale(&args.scale, &queue)
            .await
            .context("starting workers")?
    };
    summary.seconds = started.elapsed().as_secs_f64();
    summary.first_row_seconds = first_row.unwrap_or(summary.seconds);
    let requests = engine.registries().request_report().await;
    report(&summary, &requests, scaled, args.output, !args.dry_run)?;
    Ok(if summary.rows_failed > 0 {
        Exit::Failed
    } else {
        Exit::Success
    })
}

pub fn report(
    summary: &RunSummary,
    requests: &RequestReport,
    scaled: Option<u64>,
    output: OutputFormat,
    print_json: bool,
) -> anyhow::Result<()> {
    use mirrorfleet_common::metrics::{Unit, emit};
    let aws = mirrorfleet_common::usage::snapshot();
    emit(
        "controller",
        &[
            ("RowsScanned", summary.rows_scanned as f64, Unit::Count),
            ("RowsInSync", summary.in_sync as f64, Unit::Count),
            ("JobsEnqueued", summary.jobs_enqueued as f64, Unit::Count),
            ("RowsFailed", summary.rows_failed as f64, Unit::Count),
            ("WorkersStarted", scaled.unwrap_or(0) as f64, Unit::Count),
        ],
    );
    tracing::info!(
        rows_scanned = summary.rows_scanned,
        in_sync = summary.in_sync,
        jobs_enqueued = summary.jobs_enqueued,
        destinations_queued = summary.destinations_queued,
        already_queued = summary.already_queued,
        rows_failed = summary.rows_failed,
        workers_started = scaled.unwrap_or(0),
        registry_requests = requests.registry_requests(),
        ecr_api_calls = requests.ecr_api_calls(),
        dynamodb_requests = aws.requests_to("dynamodb"),
        dynamodb_read_units = aws.dynamodb_read_units,
        dynamodb_write_units = aws.dynamodb_write_units,
        sqs_requests = aws.requests_to("sqs"),
        seconds = summary.seconds,
        "controller run finished"
    );
    if output == OutputFormat::Json && print_json {
        let mut v = serde_json::to_value(summary)?;
        v["workers_started"] = serde_json::json!(scaled.unwrap_or(0));
        // Per row read, so a cycle's cost can be judged at any table size.
        let rows = summary.rows_scanned.max(1) as f64;
        v["requests"] = serde_json::to_value(requests)?;
        v["aws"] = serde_json::to_value(&aws)?;
        v["requests_per_row"] = serde_json::json!({
            "registries": requests.registry_requests() as f64 / rows,
            "ecr_api": requests.ecr_api_calls() as f64 / rows,
            "dynamodb": aws.requests_to("dynamodb") as f64 / rows,
            "sqs": aws.requests_to("sqs") as f64 / rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

pub fn print_plan(plans: &[RowPlan], output: OutputFormat) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for rp in plans {
        match &rp.plan {
            Err(reason) => rows.push(vec![
                rp.key.clone(),
                "-".into(),
                "invalid row".into(),
                reason.clone(),
            ]),
            Ok(Plan::Disabled) => rows.push(vec![
                rp.key.clone(),
                "-".into(),
                "disabled".into(),
                String::new(),
            ]),
            Ok(Plan::SourceProblem(r)) => rows.push(vec![
                rp.key.clone(),
                "-".into(),
                "source problem".into(),
                r.clone(),
            ]),
            Ok(Plan::Act {
                copy,
                mark_synced,
                pending,
                ..
            }) => {
                let row = rp.row.as_ref();
                for d in row
                    .map(|r| r.mirror.destinations.as_slice())
                    .unwrap_or_default()
                {
                    let (action, why) = if let Some((_, why)) = copy.iter().find(|(c, _)| c == d) {
                        ("copy", why.clone())
                    } else if pending.contains(d) {
                        ("already queued", String::new())
                    } else if mark_synced.contains(d) {
                        ("in sync (record)", String::new())
                    } else {
                        ("in sync", String::new())
                    };
                    rows.push(vec![rp.key.clone(), d.to_string(), action.into(), why]);
                }
            }
        }
    }
    match output {
        OutputFormat::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|r| serde_json::json!({"source": r[0], "destination": r[1], "action": r[2], "reason": r[3]}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        OutputFormat::Text => print!(
            "{}",
            table(&["SOURCE", "DESTINATION", "ACTION", "REASON"], &rows)
        ),
    }
    Ok(())
}
