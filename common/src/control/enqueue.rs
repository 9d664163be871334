//! The controller's second half: send a job per row that differs (just the
//! destinations that differ), mark those destinations `queued`, and record
//! row problems and newly found in-sync destinations on the rows.

use std::time::Instant;

use serde::Serialize;

use crate::control::job::Job;
use crate::control::plan::Plan;
use crate::control::scan::RowPlan;
use crate::control::table::{DestStatus, now_rfc3339};
use crate::store::queue::{Queue, QueueError};
use crate::store::{Store, StoreError};

/// Jobs claimed and sent together (SQS takes 10 messages per batch).
const SEND_BATCH: usize = 10;

/// In-sync statuses written together: one transaction of a local state
/// file (its write lock held for milliseconds, so another `sync` on the
/// same file waits little), where one each made the first run of 10,000
/// in-sync rows write 10,000 transactions.
const IN_SYNC_BATCH: usize = 500;

/// What a controller run found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunSummary {
    pub rows_scanned: u64,
    pub in_sync: u64,
    pub disabled: u64,
    pub jobs_enqueued: u64,
    pub destinations_queued: u64,
    pub already_queued: u64,
    pub rows_failed: u64,
    pub seconds: f64,
    /// When the first planned row arrived (a controller run fills it in).
    pub first_row_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Apply the plans: write row problems and in-sync statuses, send jobs, mark
/// queued. With `dry_run` nothing is written or sent; the summary is the same.
pub async fn apply(
    store: &Store,
    queue: Option<&Queue>,
    plans: &[RowPlan],
    dry_run: bool,
    started: Instant,
) -> Result<RunSummary, EnqueueError> {
    let mut enqueuer = Enqueuer::new(store, queue, dry_run);
    enqueuer.add(plans.to_vec()).await?;
    let mut summary = enqueuer.finish().await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Applies plans as they arrive (a streaming scan), sending jobs a batch at
/// a time, so only one batch of jobs is ever held.
#[derive(Debug)]
pub struct Enqueuer<'a> {
    store: &'a Store,
    queue: Option<&'a Queue>,
    dry_run: bool,
    summary: RunSummary,
    /// Jobs waiting for a full batch, with the plan each came from.
    jobs: Vec<(Job, RowPlan)>,
    /// Destinations found in sync, waiting to be written together:
    /// (row key, destination, status).
    in_sync: Vec<(String, String, DestStatus)>,
}

impl<'a> Enqueuer<'a> {
    pub fn new(store: &'a Store, queue: Option<&'a Queue>, dry_run: bool) -> Enqueuer<'a> {
        Enqueuer {
            store,
            queue,
            dry_run,
            summary: RunSummary::default(),
            jobs: Vec::new(),
            in_sync: Vec::new(),
        }
    }

    /// Apply `plans`: record what they say on their rows, and send every
    /// full batch of jobs. The in-sync statuses of `plans` are written
    /// before it returns.
    pub async fn add(&mut self, plans: Vec<RowPlan>) -> Result<(), EnqueueError> {
        for rp in plans {
            self.record(rp).await;
            if self.in_sync.len() >= IN_SYNC_BATCH {
                self.write_in_sync().await;
            }
            while self.jobs.len() >= SEND_BATCH {
                let batch: Vec<_> = self.jobs.drain(..SEND_BATCH).collect();
                self.send(batch).await?;
            }
        }
        self.write_in_sync().await;
        Ok(())
    }

    /// Write the destinations found in sync so far, together.
    async fn write_in_sync(&mut self) {
        if self.in_sync.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.in_sync);
        let keys: Vec<String> = writes.iter().map(|(k, _, _)| k.clone()).collect();
        match self.store.update_statuses(writes).await {
            Ok(done) => {
                for (r, key) in done.into_iter().zip(&keys) {
                    note(r, key);
                }
            }
            Err(e) => tracing::error!(
                rows = keys.len(),
                error = %crate::error::error_line(&e),
                "cannot write the in-sync statuses to the table"
            ),
        }
    }

    /// Send what is left, and say what was done.
    pub async fn finish(mut self) -> Result<RunSummary, EnqueueError> {
        self.write_in_sync().await;
        let rest = std::mem::take(&mut self.jobs);
        if !rest.is_empty() {
            self.send(rest).await?;
        }
        Ok(self.summary)
    }

    /// One plan: row problems and in-sync statuses written, its job kept.
    async fn record(&mut self, rp: RowPlan) {
        let (store, dry_run, summary) = (self.store, self.dry_run, &mut self.summary);
        let in_sync = &mut self.in_sync;
        summary.rows_scanned += 1;
        match &rp.plan {
            Err(reason) => {
                summary.rows_failed += 1;
                tracing::warn!(source = %rp.key, %reason, "invalid row");
                if !dry_run && !rp.key.is_empty() {
                    note(store.set_row_error(&rp.key, Some(reason)).await, &rp.key);
                }
            }
            Ok(Plan::Disabled) => summary.disabled += 1,
            Ok(Plan::SourceProblem(reason)) => {
                summary.rows_failed += 1;
                tracing::warn!(source = %rp.key, %reason, "source unreadable");
                if !dry_run {
                    note(store.set_row_error(&rp.key, Some(reason)).await, &rp.key);
                }
            }
            Ok(Plan::Act {
                source_digest,
                dest_digest,
                copy,
                mark_synced,
                pending,
            }) => {
                summary.already_queued += pending.len() as u64;
                if copy.is_empty() && pending.is_empty() {
                    summary.in_sync += 1;
                }
                let Some(row) = &rp.row else { return };
                if !dry_run {
                    if row.error.is_some() {
                        note(store.set_row_error(&rp.key, None).await, &rp.key);
                    }
                    for d in mark_synced {
                        let key = d.to_string();
                        let st = row
                            .status
                            .get(&key)
                            .cloned()
                            .unwrap_or_default()
                            .found_in_sync(source_digest, dest_digest, row.mirror.platforms_key());
                        in_sync.push((rp.key.clone(), key, st));
                    }
                }
                if !copy.is_empty() {
                    let dests: Vec<_> = copy.iter().map(|(d, _)| d.clone()).collect();
                    let reason = copy
                        .iter()
                        .map(|(_, r)| r.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    let mut job = Job::new(
                        &row.mirror.source,
                        Some(source_digest.clone()),
                        &dests,
                        &reason,
                    );
                    // A repository row, or a key typed in another form than the
                    // normalised source: the worker must find the row by its key.
                    if rp.key != job.source {
                        job.row = Some(rp.key.clone());
                    }
                    self.jobs.push((job, rp));
                }
            }
        }
    }

    /// Claim and send one batch: a controller killed mid-way leaves at most
    /// one batch claimed but unsent, and those rows are queued again after
    /// the hold-off.
    async fn send(&mut self, batch: Vec<(Job, RowPlan)>) -> Result<(), EnqueueError> {
        let claimed = if self.dry_run {
            batch
        } else {
            claim(self.store, batch, &mut self.summary).await
        };
        if claimed.is_empty() {
            return Ok(());
        }
        if !self.dry_run
            && let Some(q) = self.queue
        {
            let bodies: Vec<Job> = claimed.iter().map(|(j, _)| j.clone()).collect();
            if let Err(e) = q.send(&bodies).await {
                release(self.store, &claimed).await;
                return Err(e.into());
            }
        }
        self.summary.jobs_enqueued += claimed.len() as u64;
        self.summary.destinations_queued += claimed
            .iter()
            .map(|(j, _)| j.destinations.len() as u64)
            .sum::<u64>();
        Ok(())
    }
}

/// Mark each job's destinations queued, conditional on nobody having queued
/// them since the scan; keep only what this controller claimed. Another
/// controller running at the same time (or a restarted one) then never
/// sends a second job for the same destination.
async fn claim(
    store: &Store,
    jobs: Vec<(Job, RowPlan)>,
    summary: &mut RunSummary,
) -> Vec<(Job, RowPlan)> {
    let now = now_rfc3339();
    let mut claimed = Vec::with_capacity(jobs.len());
    for (mut job, rp) in jobs {
        let Some(row) = &rp.row else { continue };
        let mut mine = Vec::with_capacity(job.destinations.len());
        for d in &job.destinations {
            let before = row.status.get(d).cloned().unwrap_or_default();
            let st = before.queued(job.source_digest.clone(), &now);
            match store
                .claim_queued(&rp.key, d, before.queued_at.as_deref(), &st)
                .await
            {
                Ok(()) => mine.push(d.clone()),
                Err(StoreError::Stale { .. }) => {
                    summary.already_queued += 1;
                    tracing::info!(source = %rp.key, destination = %d, "another controller queued it first");
                }
                Err(StoreError::RowGone(_)) => {}
                Err(e) => {
                    // Unclaimed but sent: a possible duplicate beats a lost job.
                    tracing::error!(source = %rp.key, error = %e, "cannot mark the destination queued");
                    mine.push(d.clone());
                }
            }
        }
        if !mine.is_empty() {
            job.destinations = mine;
            claimed.push((job, rp));
        }
    }
    claimed
}

/// Give claims back when their jobs could not be sent, so the next run does
/// not wait out the hold-off for them.
async fn release(store: &Store, claimed: &[(Job, RowPlan)]) {
    for (job, rp) in claimed {
        let Some(row) = &rp.row else { continue };
        for d in &job.destinations {
            let before = row.status.get(d).cloned().unwrap_or_default();
            note(store.update_status(&rp.key, d, &before).await, &rp.key);
        }
    }
}

fn note(r: Result<(), StoreError>, source: &str) {
    match r {
        // A deleted row, or a worker's newer status: nothing to record.
        Ok(()) | Err(StoreError::RowGone(_)) | Err(StoreError::Stale { .. }) => {}
        Err(e) => tracing::error!(source, error = %e, "cannot write to the table"),
    }
}
