//! The job queue: SQS, or (local mode) an in-memory queue with the same
//! semantics: visibility timeouts, receive counts, and a dead-letter list
//! after too many receives.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use tokio::sync::{Mutex, Notify};

use crate::control::job::Job;
use crate::retry::Backoff;

#[derive(Debug, thiserror::Error)]
#[error("queue {queue}: {message}")]
pub struct QueueError {
    pub queue: String,
    /// What failed, with its causes' words.
    pub message: String,
    /// The SDK's error, when one caused it.
    #[source]
    pub cause: Option<crate::error::Cause>,
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub receipt: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

#[derive(Debug)]
pub enum Queue {
    Sqs(SqsQueue),
    Memory(MemoryQueue),
}

impl Queue {
    /// Send jobs; returns how many were accepted.
    pub async fn send(&self, jobs: &[Job]) -> Result<usize, QueueError> {
        match self {
            Queue::Sqs(q) => q.send(jobs).await,
            Queue::Memory(q) => Ok(q.send(jobs).await),
        }
    }

    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        match self {
            Queue::Sqs(q) => q.receive(max, wait, visibility).await,
            Queue::Memory(q) => Ok(q.receive(max, wait, visibility).await),
        }
    }

    pub async fn delete(&self, m: &Message) -> Result<(), QueueError> {
        match self {
            Queue::Sqs(q) => q.delete(&m.receipt).await,
            Queue::Memory(q) => {
                q.delete(&m.receipt).await;
                Ok(())
            }
        }
    }

    /// Extend (heartbeat) or end (0: release now) a message's invisibility.
    pub async fn set_visibility(
        &self,
        m: &Message,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        match self {
            Queue::Sqs(q) => q.set_visibility(&m.receipt, visibility).await,
            Queue::Memory(q) => {
                q.set_visibility(&m.receipt, visibility).await;
                Ok(())
            }
        }
    }

    /// Messages waiting and in flight (approximate for SQS).
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        match self {
            Queue::Sqs(q) => q.depth().await,
            Queue::Memory(q) => Ok(q.depth().await),
        }
    }
}

// ---------------------------------------------------------------- SQS

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// SQS's limit for one message and for one batch of messages.
const MAX_SQS_BYTES: usize = 256 * 1024;
const MAX_BATCH: usize = 10;

/// Message bodies for `jobs`, each within [`MAX_SQS_BYTES`]: a job with too
/// many destinations becomes several jobs with fewer.
fn fit(jobs: &[Job]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut todo: Vec<Job> = jobs.iter().rev().cloned().collect();
    while let Some(job) = todo.pop() {
        let body = job.to_json();
        if body.len() <= MAX_SQS_BYTES {
            out.push(body);
            continue;
        }
        if job.destinations.len() < 2 {
            return Err(format!(
                "the job for {} is {} bytes, more than SQS's 256 KiB",
                job.source,
                body.len()
            ));
        }
        let mut second = job.clone();
        let mut first = job;
        second.destinations = first.destinations.split_off(first.destinations.len() / 2);
        todo.push(second);
        todo.push(first);
    }
    Ok(out)
}

/// Consecutive bodies grouped into batches of at most [`MAX_BATCH`]
/// messages and [`MAX_SQS_BYTES`] in all.
fn batches(bodies: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, b) in bodies.iter().enumerate() {
        if i > start && (i - start == MAX_BATCH || bytes + b.len() > MAX_SQS_BYTES) {
            out.push(&bodies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b.len();
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

impl SqsQueue {
    pub async fn new(url: &str) -> SqsQueue {
        let conf = crate::aws::config().await;
        SqsQueue {
            client: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(&conf)
                    .interceptor(crate::usage::Tally)
                    .build(),
            ),
            url: url.to_string(),
        }
    }

    fn err(&self, message: String) -> QueueError {
        QueueError {
            queue: self.url.clone(),
            message,
            cause: None,
        }
    }

    /// An SDK failure, its words in the message and itself as the cause.
    fn sdk_err<E: std::error::Error + Send + Sync + 'static>(&self, e: E) -> QueueError {
        QueueError {
            queue: self.url.clone(),
            message: crate::error::error_line(&e),
            cause: Some(Box::new(e)),
        }
    }

    /// SendMessageBatch, within SQS's limits of 10 messages and 256 KiB per
    /// batch (a job too large for one message is split by destinations);
    /// entries SQS reports as failed are sent again (up to 3 rounds) before
    /// giving up on them.
    async fn send(&self, jobs: &[Job]) -> Result<usize, QueueError> {
        let mut sent = 0;
        let bodies = fit(jobs).map_err(|e| self.err(e))?;
        for chunk in batches(&bodies) {
            let mut pending: Vec<(String, String)> = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| (format!("m{i}"), body.to_string()))
                .collect();
            let mut backoff = Backoff::attempts(3);
            loop {
                let entries = pending
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(body)
                            .build()
                            .map_err(|e| self.err(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| self.sdk_err(e))?;
                sent += out.successful().len();
                let failed: Vec<String> = out.failed().iter().map(|f| f.id().to_string()).collect();
                for f in out.failed() {
                    tracing::warn!(queue = %self.url, code = f.code(), message = f.message().unwrap_or(""), "SQS refused a message; retrying");
                }
                pending.retain(|(id, _)| failed.contains(id));
                if pending.is_empty() || !backoff.wait(None).await {
                    break;
                }
            }
            if !pending.is_empty() {
                return Err(self.err(format!(
                    "{} messages were refused three times",
                    pending.len()
                )));
            }
        }
        Ok(sent)
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| self.sdk_err(e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| Message {
                id: m.message_id().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| self.sdk_err(e))?;
        Ok(())
    }

    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility.as_secs() as i32)
            .send()
            .await
            .map_err(|e| self.sdk_err(e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<(u64, u64), QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| self.sdk_err(e))?;
        let get = |k: A| {
            out.attributes()
                .and_then(|a| a.get(&k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(A::ApproximateNumberOfMessages),
            get(A::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

// ---------------------------------------------------------------- memory

#[derive(Debug)]
struct Entry {
    id: String,
    body: String,
    receives: u32,
}

#[derive(Debug, Default)]
struct MemState {
    visible: VecDeque<Entry>,
    in_flight: HashMap<String, (Entry, Instant)>,
    dead: Vec<(String, String)>,
    next_id: u64,
}

/// In-process queue for local mode. A message received `max_receives` times
/// without being deleted goes to the dead-letter list, like an SQS redrive policy.
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<MemState>,
    notify: Notify,
    max_receives: u32,
}

impl MemoryQueue {
    pub fn new(max_receives: u32) -> MemoryQueue {
        MemoryQueue {
            state: Mutex::new(MemState::default()),
            notify: Notify::new(),
            max_receives: max_receives.max(1),
        }
    }

    async fn send(&self, jobs: &[Job]) -> usize {
        let mut st = self.state.lock().await;
        for j in jobs {
            st.next_id += 1;
            let id = format!("local-{}", st.next_id);
            st.visible.push_back(Entry {
                id,
                body: j.to_json(),
                receives: 0,
            });
        }
        drop(st);
        self.notify.notify_waiters();
        jobs.len()
    }

    /// Return expired in-flight messages to the queue (or the dead list).
    fn expire(&self, st: &mut MemState) {
        let now = Instant::now();
        let expired: Vec<String> = st
            .in_flight
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for receipt in expired {
            if let Some((e, _)) = st.in_flight.remove(&receipt) {
                if e.receives >= self.max_receives {
                    tracing::warn!(message = %e.id, receives = e.receives, "message moved to the dead-letter list");
                    st.dead.push((e.id, e.body));
                } else {
                    st.visible.push_back(e);
                }
            }
        }
    }

    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Vec<Message> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.state.lock().await;
                self.expire(&mut st);
                let mut out = Vec::new();
                while out.len() < max.max(1) {
                    let Some(mut e) = st.visible.pop_front() else {
                        break;
                    };
                    e.receives += 1;
                    st.next_id += 1;
                    let receipt = format!("{}#{}", e.id, st.next_id);
                    out.push(Message {
                        id: e.id.clone(),
                        body: e.body.clone(),
                        receipt: receipt.clone(),
                        receive_count: e.receives,
                    });
                    st.in_flight
                        .insert(receipt, (e, Instant::now() + visibility));
                }
                if !out.is_empty() {
                    return out;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Vec::new();
            }
            // Wake on a send, or poll for visibility expiry now and then.
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), notified)
                    .await;
        }
    }

    async fn delete(&self, receipt: &str) {
        self.state.lock().await.in_flight.remove(receipt);
    }

    async fn set_visibility(&self, receipt: &str, visibility: Duration) {
        let mut st = self.state.lock().await;
        if let Some((_, until)) = st.in_flight.get_mut(receipt) {
            *until = Instant::now() + visibility;
        }
        drop(st);
        if visibility.is_zero() {
            self.notify.notify_waiters();
        }
    }

    async fn depth(&self) -> (u64, u64) {
        let mut st = self.state.lock().await;
        self.expire(&mut st);
        (st.visible.len() as u64, st.in_flight.len() as u64)
    }

    /// Messages that were received too often (id, body).
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        self.state.lock().await.dead.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::reference::Reference;

    #[test]
    fn large_jobs_are_split_and_batches_stay_within_sqs_limits() {
        let src: Reference = "a.example.com/app:1".parse().unwrap();
        let many: Vec<Reference> = (0..10_000)
            .map(|i| {
                format!("b.example.com/some/long/repository/path/number-{i}:1")
                    .parse()
                    .unwrap()
            })
            .collect();
        let small = Job::new(&src, None, &many[..3], "new");
        let big = Job::new(&src, None, &many, "new");
        let mut jobs = vec![small.clone(); 25];
        jobs.push(big);
        let bodies = fit(&jobs).unwrap();
        assert!(bodies.len() > 26, "the big job was not split");
        assert!(bodies.iter().all(|b| b.len() <= MAX_SQS_BYTES));
        // Every destination is in exactly one message.
        let mut dests = 0;
        for b in &bodies[25..] {
            let j: Job = serde_json::from_str(b).unwrap();
            dests += j.destinations.len();
        }
        assert_eq!(dests, 10_000);
        let groups = batches(&bodies);
        assert!(
            groups.iter().all(|g| g.len() <= MAX_BATCH
                && g.iter().map(String::len).sum::<usize>() <= MAX_SQS_BYTES)
        );
        assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), bodies.len());
    }

    fn job() -> Job {
        let r: Reference = "a.example.com/x:1".parse().unwrap();
        Job::new(&r, None, &["b.example.com/x:1".parse().unwrap()], "test")
    }

    #[tokio::test]
    async fn memory_queue_redelivers_then_dead_letters() {
        let q = MemoryQueue::new(2);
        q.send(&[job()]).await;
        let short = Duration::from_millis(10);
        let m = q.receive(10, short, short).await;
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].receive_count, 1);
        // Not deleted: comes back after the visibility timeout.
        let m = q.receive(10, Duration::from_millis(500), short).await;
        assert_eq!(m[0].receive_count, 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            q.receive(10, Duration::from_millis(50), short)
                .await
                .is_empty()
        );
        assert_eq!(q.dead_letters().await.len(), 1);
        assert_eq!(q.depth().await, (0, 0));
    }

    #[tokio::test]
    async fn deleted_messages_are_gone_and_released_ones_return() {
        let q = MemoryQueue::new(3);
        q.send(&[job(), job()]).await;
        let long = Duration::from_secs(60);
        let m = q.receive(1, long, long).await;
        q.delete(&m[0].receipt).await;
        let m = q.receive(1, long, long).await;
        q.set_visibility(&m[0].receipt, Duration::ZERO).await;
        let again = q.receive(1, Duration::from_millis(500), long).await;
        assert_eq!(again[0].id, m[0].id);
        assert_eq!(q.depth().await, (0, 1));
    }
}
