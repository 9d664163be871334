//! Start AWS Batch workers for the backlog: enough that the worker count
//! matches the queue depth, never more than `--max-workers`.

use anyhow::Context;
use aws_sdk_batch::types::{ArrayProperties, JobStatus};
use clap::Args;
use mirrorfleet_common::store::queue::Queue;

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Batch job queue for workers; without it no workers are started.
    #[arg(long, env = "MIRRORFLEET_BATCH_JOB_QUEUE")]
    pub batch_job_queue: Option<String>,
    /// Batch job definition of the consuming worker.
    #[arg(
        long,
        env = "MIRRORFLEET_BATCH_JOB_DEFINITION",
        requires = "batch_job_queue"
    )]
    pub batch_job_definition: Option<String>,
    /// At most this many workers at once.
    #[arg(long, env = "MIRRORFLEET_MAX_WORKERS", default_value_t = 10)]
    pub max_workers: u64,
    /// Queued jobs one worker is expected to take on.
    #[arg(long, env = "MIRRORFLEET_JOBS_PER_WORKER", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs_per_worker: u64,
}

/// Workers to add for `backlog` messages when `active` are already running or waiting.
pub fn workers_needed(backlog: u64, active: u64, jobs_per_worker: u64, max_workers: u64) -> u64 {
    let wanted = backlog.div_ceil(jobs_per_worker.max(1)).min(max_workers);
    wanted.saturating_sub(active)
}

const WORKER_JOB_NAME: &str = "mirrorfleet-worker";

/// Submit the workers needed; returns how many were started.
pub async fn scale(args: &ScaleArgs, queue: &Queue) -> anyhow::Result<Option<u64>> {
    let (Some(job_queue), Some(definition)) = (&args.batch_job_queue, &args.batch_job_definition)
    else {
        return Ok(None);
    };
    let (visible, in_flight) = queue.depth().await.context("reading the queue depth")?;
    let conf = mirrorfleet_common::aws::config().await;
    let batch = aws_sdk_batch::Client::new(&conf);
    let mut active = 0;
    for status in [
        JobStatus::Submitted,
        JobStatus::Pending,
        JobStatus::Runnable,
        JobStatus::Starting,
        JobStatus::Running,
    ] {
        let mut pages = batch
            .list_jobs()
            .job_queue(job_queue)
            .job_status(status)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.context("listing Batch jobs")?;
            active += page
                .job_summary_list()
                .iter()
                .filter(|j| j.job_name().is_some_and(|n| n.starts_with(WORKER_JOB_NAME)))
                .map(|j| {
                    j.array_properties()
                        .and_then(|a| a.size())
                        .unwrap_or(1)
                        .max(1) as u64
                })
                .sum::<u64>();
        }
    }
    let add = workers_needed(
        visible + in_flight,
        active,
        args.jobs_per_worker,
        args.max_workers,
    );
    tracing::info!(backlog = visible + in_flight, active, add, "worker scaling");
    if add == 0 {
        return Ok(Some(0));
    }
    let mut req = batch
        .submit_job()
        .job_name(format!("{WORKER_JOB_NAME}-{}", std::process::id()))
        .job_queue(job_queue)
        .job_definition(definition);
    // Batch array jobs need at least 2 children.
    if add > 1 {
        req = req.array_properties(ArrayProperties::builder().size(add as i32).build());
    }
    req.send().await.context("submitting worker jobs")?;
    Ok(Some(add))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing() {
        assert_eq!(workers_needed(0, 0, 20, 10), 0);
        assert_eq!(workers_needed(1, 0, 20, 10), 1);
        assert_eq!(workers_needed(41, 0, 20, 10), 3);
        assert_eq!(workers_needed(41, 2, 20, 10), 1);
        assert_eq!(workers_needed(41, 5, 20, 10), 0);
        assert_eq!(workers_needed(10_000, 3, 20, 10), 7);
    }
}
