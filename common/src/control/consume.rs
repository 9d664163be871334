//! The worker loop: take jobs from the queue, copy, write each destination's
//! outcome to the table, and delete the message only when every destination
//! is synced.
//!
//! - Jobs run at once up to a limit that adapts (`control::concurrency`):
//!   it grows while throughput grows and backs off when registries push
//!   back, never above `concurrency`. Each job holds a permit.
//! - While a copy runs its message's visibility is extended (heartbeat), so a
//!   long copy is never delivered to a second worker at the same time.
//! - A failed destination leaves the message to be redelivered; after the
//!   queue's maximum receive count it goes to the dead-letter queue, and the
//!   row says `failed` with the error.
//! - A malformed message is logged with the reason and released at once, so it
//!   reaches the dead-letter queue after its receives instead of looping.
//! - On shutdown no new jobs are taken; copies in hand are cancelled and their
//!   messages released (visibility 0) for another worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::control::concurrency::{Adaptive, ConcurrencyReport};
use crate::control::job::Job;
use crate::control::table::status::Attempt;
use crate::control::table::{DestStatus, now_rfc3339};
use crate::copy::{CopyRules, Engine, Outcome};
use crate::retry::Backoff;
use crate::store::queue::{Message, Queue};
use crate::store::{Store, StoreError};

/// The default cap on images copied at once (`--jobs`, `--workers`): high
/// enough that the adaptive limit, not the cap, decides.
pub const DEFAULT_MAX_JOBS: usize = 32;

/// SQS's longest visibility timeout: 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// The most jobs in flight at once; how many do is adapted below it.
    pub concurrency: usize,
    /// How long a received message stays invisible; extended by the heartbeat.
    pub visibility: Duration,
    /// Long-poll wait (SQS allows at most 20 s).
    pub wait: Duration,
    /// Stop after the queue has been empty (and nothing ran) this long.
    pub exit_when_idle: Option<Duration>,
    /// With `exit_when_idle`: also wait for messages in flight elsewhere to be
    /// deleted or redelivered (local mode, where this process is every worker).
    pub drain: bool,
    /// Copy the digest the job names instead of HEADing the source again
    /// (local mode, where the plan is moments old). Off for SQS jobs, which
    /// may be stale by the time they are taken.
    pub trust_job_digest: bool,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            concurrency: DEFAULT_MAX_JOBS,
            visibility: Duration::from_secs(120),
            wait: Duration::from_secs(20),
            exit_when_idle: None,
            drain: false,
            trust_job_digest: false,
        }
    }
}

/// What a consume run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConsumeSummary {
    pub jobs: u64,
    pub completed: u64,
    pub failed: u64,
    pub malformed: u64,
    pub released: u64,
    pub bytes_copied: u64,
    /// How many images were copied at once, and how that changed.
    pub concurrency: ConcurrencyReport,
}

/// How one job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobEnd {
    Completed,
    Failed,
    Malformed,
    Released,
}

/// Consume until shutdown, or until idle for `exit_when_idle`.
pub async fn run(
    engine: Arc<Engine>,
    queue: Arc<Queue>,
    store: Arc<Store>,
    opts: ConsumeOptions,
    shutdown: CancellationToken,
) -> ConsumeSummary {
    let permits = Adaptive::new(opts.concurrency);
    let mut tasks: JoinSet<(JobEnd, u64)> = JoinSet::new();
    let mut summary = ConsumeSummary::default();
    let mut idle_since = Instant::now();
    let mut receive_backoff = Backoff::forever();
    loop {
        while let Some(done) = tasks.try_join_next() {
            tally(&mut summary, done);
            permits.finished(engine.registries().pushback().await);
            idle_since = Instant::now();
        }
        if shutdown.is_cancelled() {
            break;
        }
        if let Some(limit) = opts.exit_when_idle
            && tasks.is_empty()
            && idle_since.elapsed() >= limit
        {
            let pending = if opts.drain {
                queue.depth().await.map(|(v, f)| v + f).unwrap_or(0)
            } else {
                0
            };
            if pending == 0 {
                tracing::info!(idle_seconds = limit.as_secs_f64(), "queue idle; exiting");
                break;
            }
        }
        // Wait for a free slot before taking messages, so none sit unworked.
        let first = tokio::select! {
            p = permits.acquire() => match p { Some(p) => p, None => break },
            // A job ending frees a slot and may move the limit.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                tally(&mut summary, done);
                permits.finished(engine.registries().pushback().await);
                idle_since = Instant::now();
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        let free = 1 + permits.available();
        let wait = match opts.exit_when_idle {
            Some(limit) if tasks.is_empty() => opts.wait.min(
                limit
                    .saturating_sub(idle_since.elapsed())
                    .max(Duration::from_secs(1)),
            ),
            _ => opts.wait,
        };
        let received = tokio::select! {
            r = queue.receive(free.min(10), wait, opts.visibility) => r,
            _ = shutdown.cancelled() => break,
        };
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot receive from the queue; retrying");
                drop(first);
                tokio::select! {
                    _ = receive_backoff.wait(None) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        receive_backoff = Backoff::forever();
        if messages.is_empty() {
            continue;
        }
        let mut first = Some(first);
        for m in messages {
            let permit = match first.take() {
                Some(p) => p,
                None => match permits.acquire().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let (engine, queue, store, opts, cancel) = (
                engine.clone(),
                queue.clone(),
                store.clone(),
                opts.clone(),
                shutdown.child_token(),
            );
            let span = tracing::info_span!(
                "job",
                job_id = %m.id,
                receive_count = m.receive_count,
                source = tracing::field::Empty
            );
            tasks.spawn(
                async move {
                    let _permit = permit;
                    handle(&engine, &queue, &store, &opts, m, &cancel).await
                }
                .instrument(span),
            );
        }
    }
    // Let jobs in hand finish their cancellation and release their messages.
    while let Some(done) = tasks.join_next().await {
        tally(&mut summary, done);
    }
    summary.concurrency = permits.report();
    summary
}

fn tally(summary: &mut ConsumeSummary, done: Result<(JobEnd, u64), tokio::task::JoinError>) {
    summary.jobs += 1;
    match done {
        Ok((end, bytes)) => {
            summary.bytes_copied += bytes;
            match end {
                JobEnd::Completed => summary.completed += 1,
                JobEnd::Failed => summary.failed += 1,
                JobEnd::Malformed => summary.malformed += 1,
                JobEnd::Released => summary.released += 1,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "a job task ended abnormally");
            summary.failed += 1;
        }
    }
}

async fn handle(
    engine: &Engine,
    queue: &Queue,
    store: &Store,
    opts: &ConsumeOptions,
    m: Message,
    cancel: &CancellationToken,
) -> (JobEnd, u64) {
    let job = match Job::parse(&m.body) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(job_id = %m.id, receive_count = m.receive_count, reason = %e,
                "malformed job; released for the dead-letter queue");
            let _ = queue.set_visibility(&m, Duration::ZERO).await;
            return (JobEnd::Malformed, 0);
        }
    };
    let source_key = job.row.clone();
    tracing::Span::current().record("source", source_key.as_str());
    let row = match store.get(&source_key).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::info!(job_id = %m.id, source = %source_key, "the row was deleted; dropping its job");
            let _ = queue.delete(&m).await;
            return (JobEnd::Completed, 0);
        }
        Err(e) => {
            tracing::error!(job_id = %m.id, error = %e, "cannot read the table; the job will be retried");
            return (JobEnd::Failed, 0);
        }
    };
    let row = match row.row {
        Ok(r) => r,
        Err(reason) => {
            tracing::error!(job_id = %m.id, source = %source_key, %reason, "the row is invalid; job released");
            let _ = store.set_row_error(&source_key, Some(&reason)).await;
            let _ = queue.set_visibility(&m, Duration::ZERO).await;
            return (JobEnd::Malformed, 0);
        }
    };
    // Destinations removed from the row since the job was queued are dropped.
    let dests: Vec<_> = job
        .destinations
        .iter()
        .filter(|d| row.mirror.covers(&job.source, d))
        .cloned()
        .collect();
    if dests.is_empty() {
        tracing::info!(job_id = %m.id, source = %source_key, "no destination of this job is still in the row; dropping it");
        let _ = queue.delete(&m).await;
        return (JobEnd::Completed, 0);
    }

    let started = now_rfc3339();
    for d in &dests {
        let st = row
            .status
            .get(&d.to_string())
            .cloned()
            .unwrap_or_default()
            .copying(&started);
        write_status(store, &source_key, &d.to_string(), &st, &m.id).await;
    }

    // Heartbeat: keep the message invisible while the copy runs.
    let source = match (&job.source_digest, opts.trust_job_digest) {
        (Some(d), true) => job.source.with_digest(d.clone()),
        _ => job.source.clone(),
    };
    let rules = CopyRules {
        overwrite: row.mirror.overwrite,
        platforms: row.mirror.platforms.clone(),
    };
    let copy = engine.copy_with(&source, &dests, &rules, cancel);
    tokio::pin!(copy);
    let mut beat = tokio::time::interval(opts.visibility / 3);
    beat.tick().await;
    let report = loop {
        tokio::select! {
            r = &mut copy => break r,
            _ = beat.tick() => {
                if let Err(e) = queue.set_visibility(&m, opts.visibility).await {
                    tracing::warn!(job_id = %m.id, error = %e, "heartbeat failed");
                }
            }
        }
    };

    let mut bytes = 0;
    let attempt = Attempt {
        started: started.clone(),
        finished: now_rfc3339(),
        source_digest: report.source_digest.clone(),
        platforms: row.mirror.platforms_key(),
    };
    for d in &report.destinations {
        let key = d.destination.clone();
        let before = row.status.get(&key).cloned().unwrap_or_default();
        bytes += d.bytes_copied;
        let st = match d.outcome {
            Outcome::Copied | Outcome::InSync => {
                tracing::info!(job_id = %m.id, source = %report.source, destination = %key,
                    digest = %d.digest.as_ref().map(ToString::to_string).unwrap_or_default(),
                    bytes = d.bytes_copied, "destination synced");
                before.synced(
                    &attempt,
                    d.digest.clone(),
                    d.bytes_copied,
                    &d.refused_referrers,
                )
            }
            Outcome::Failed if cancel.is_cancelled() => {
                // Shutting down: leave the status as it was before this attempt.
                continue;
            }
            Outcome::Failed => {
                tracing::error!(job_id = %m.id, source = %report.source, destination = %key,
                    receive_count = m.receive_count, error = d.error.as_deref().unwrap_or(""), "destination failed");
                before.failed(&attempt, d.error.clone())
            }
        };
        write_status(store, &source_key, &key, &st, &m.id).await;
    }
    let _ = store.set_row_error(&source_key, None).await;
    emit_metrics("worker", &report, &job.enqueued_at);

    if report.all_synced() {
        if let Err(e) = queue.delete(&m).await {
            tracing::warn!(job_id = %m.id, error = %e, "cannot delete the finished job; it will be redelivered and found in sync");
        }
        (JobEnd::Completed, bytes)
    } else if cancel.is_cancelled() {
        let _ = queue.set_visibility(&m, Duration::ZERO).await;
        tracing::info!(job_id = %m.id, "released for another worker");
        (JobEnd::Released, bytes)
    } else {
        // A registry that said when to come back (a used-up pull quota):
        // the job waits that long instead of spending its receives now.
        let defer = report
            .destinations
            .iter()
            .filter(|d| d.outcome == Outcome::Failed)
            .filter_map(|d| d.retry_after_seconds)
            .max();
        if let Some(secs) = defer {
            let wait = Duration::from_secs(secs).min(MAX_VISIBILITY);
            tracing::info!(job_id = %m.id, seconds = wait.as_secs(), "deferred until the registry's quota resets");
            if let Err(e) = queue.set_visibility(&m, wait).await {
                tracing::warn!(job_id = %m.id, error = %e, "cannot defer the job");
            }
        }
        // Left invisible until its timeout: redelivered later, or dead-lettered.
        (JobEnd::Failed, bytes)
    }
}

async fn write_status(store: &Store, source: &str, dest: &str, st: &DestStatus, job_id: &str) {
    match store.update_status(source, dest, st).await {
        Ok(()) => {}
        Err(StoreError::RowGone(_)) => {
            tracing::info!(
                job_id,
                source,
                "the row was deleted during the copy; status not written"
            );
        }
        Err(e @ StoreError::Stale { .. }) => tracing::info!(job_id, source, "{e}"),
        Err(e) => tracing::error!(job_id, source, dest, error = %e, "cannot write the status"),
    }
}

/// One EMF report per copy: outcomes, bytes, time, blob reuse, queue lag.
pub fn emit_metrics(component: &str, report: &crate::copy::CopyReport, enqueued_at: &str) {
    use crate::metrics::Unit;
    let count = |o: Outcome| {
        report
            .destinations
            .iter()
            .filter(|d| d.outcome == o)
            .count() as f64
    };
    let sum = |f: fn(&crate::copy::DestinationReport) -> u64| {
        report.destinations.iter().map(f).sum::<u64>() as f64
    };
    let mut values = vec![
        ("ImagesSynced", count(Outcome::Copied), Unit::Count),
        ("ImagesSkipped", count(Outcome::InSync), Unit::Count),
        ("ImagesFailed", count(Outcome::Failed), Unit::Count),
        ("BytesCopied", sum(|d| d.bytes_copied), Unit::Bytes),
        ("CopySeconds", report.seconds, Unit::Seconds),
        ("BlobsMounted", sum(|d| d.blobs_mounted), Unit::Count),
        ("BlobsSkipped", sum(|d| d.blobs_skipped), Unit::Count),
    ];
    if let Ok(t) = humantime::parse_rfc3339(enqueued_at) {
        let lag = std::time::SystemTime::now()
            .duration_since(t)
            .unwrap_or_default();
        values.push(("QueueLagSeconds", lag.as_secs_f64(), Unit::Seconds));
    }
    crate::metrics::emit(component, &values);
}
