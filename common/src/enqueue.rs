//! The controller's second half: send a job per row that differs (just the
//! destinations that differ), mark those destinations `queued`, and record
//! row problems and newly found in-sync destinations on the rows.

use std::time::Instant;

use serde::Serialize;

use crate::job::Job;
use crate::plan::Plan;
use crate::queue::{Queue, QueueError};
use crate::scan::RowPlan;
use crate::store::{Store, StoreError};
use crate::table::{DestStatus, State, now_rfc3339};

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
    let mut summary = RunSummary {
        rows_scanned: plans.len() as u64,
        ..RunSummary::default()
    };
    let mut jobs: Vec<(Job, &RowPlan)> = Vec::new();
    for rp in plans {
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
                copy,
                mark_synced,
                pending,
            }) => {
                summary.already_queued += pending.len() as u64;
                if copy.is_empty() && pending.is_empty() {
                    summary.in_sync += 1;
                }
                let Some(row) = &rp.row else { continue };
                if !dry_run {
                    if row.error.is_some() {
                        note(store.set_row_error(&rp.key, None).await, &rp.key);
                    }
                    for d in mark_synced {
                        let key = d.to_string();
                        let mut st = row.status.get(&key).cloned().unwrap_or_default();
                        st.state = Some(State::Synced);
                        st.source_digest = Some(source_digest.clone());
                        st.dest_digest = Some(source_digest.clone());
                        st.error = None;
                        note(store.update_status(&rp.key, &key, &st).await, &rp.key);
                    }
                }
                if !copy.is_empty() {
                    let dests: Vec<_> = copy.iter().map(|(d, _)| d.clone()).collect();
                    let reason = copy
                        .iter()
                        .map(|(_, r)| r.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    jobs.push((
                        Job::new(
                            &row.mirror.source,
                            Some(source_digest.clone()),
                            &dests,
                            &reason,
                        ),
                        rp,
                    ));
                }
            }
        }
    }
    summary.jobs_enqueued = jobs.len() as u64;
    summary.destinations_queued = jobs.iter().map(|(j, _)| j.destinations.len() as u64).sum();
    if !dry_run && !jobs.is_empty() {
        if let Some(q) = queue {
            let bodies: Vec<Job> = jobs.iter().map(|(j, _)| j.clone()).collect();
            q.send(&bodies).await?;
        }
        let now = now_rfc3339();
        for (job, rp) in &jobs {
            let Some(row) = &rp.row else { continue };
            for d in &job.destinations {
                let mut st: DestStatus = row.status.get(d).cloned().unwrap_or_default();
                st.state = Some(State::Queued);
                st.source_digest = job.source_digest.clone();
                st.queued_at = Some(now.clone());
                note(store.update_status(&rp.key, d, &st).await, &rp.key);
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn note(r: Result<(), StoreError>, source: &str) {
    match r {
        // A deleted row, or a worker's newer status: nothing to record.
        Ok(()) | Err(StoreError::RowGone(_)) | Err(StoreError::Stale { .. }) => {}
        Err(e) => tracing::error!(source, error = %e, "cannot write to the table"),
    }
}
