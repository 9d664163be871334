//! Blobs: claim each in the ledger, skip it when present, mount it within a
//! registry, or read it once from the source and stream it to every
//! destination lacking it, checking its sha256 before the last chunk goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use url::Url;

use crate::copy::ledger::Claim;
use crate::error::{Error, Result};
use crate::oci::digest::Digest;
use crate::oci::manifest::Descriptor;
use crate::oci::reference::Reference;
use crate::registry::client::{Mount, Registry};

use super::Engine;
use super::dest::Dest;
use crate::retry::Backoff;

impl Engine {
    /// Mark the blobs the destination says it has in bulk (ECR) as present.
    /// Best effort: on any failure the blobs are HEADed as usual.
    pub(super) async fn learn_known_blobs(&self, d: &Dest, blobs: &[Descriptor]) {
        if blobs.is_empty() || self.is_new_repository(&d.reference).await {
            return;
        }
        let digests: Vec<Digest> = blobs
            .iter()
            .filter(|b| !b.is_foreign())
            .map(|b| b.digest.clone())
            .collect();
        match self.registries.known_blobs(&d.reference, &digests).await {
            None => {}
            Some(Ok(present)) => {
                tracing::debug!(destination = %d.reference, present = present.len(), of = digests.len(), "bulk layer check");
                for digest in present {
                    if let Claim::Mine(guard) = self.ledger.claim(d.key(&digest)) {
                        guard.complete();
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!(destination = %d.reference, error = %e, "bulk layer check failed; checking blobs one by one");
            }
        }
    }

    /// On first sight of a destination repository, learn whether it is new:
    /// from `created` when the registry's API said, else by listing it.
    pub(super) async fn note_new_repository(
        &self,
        registry: &Registry,
        dest: &Reference,
        created: Option<bool>,
    ) -> Result<()> {
        let key = (dest.registry().to_string(), dest.repository().to_string());
        let cell = self.new_repos.lock().await.entry(key).or_default().clone();
        cell.get_or_try_init(|| async {
            match created {
                Some(c) => Ok::<_, Error>(c),
                None => Ok(!registry.repository_exists(dest.repository()).await?),
            }
        })
        .await?;
        Ok(())
    }

    pub(super) async fn is_new_repository(&self, dest: &Reference) -> bool {
        let key = (dest.registry().to_string(), dest.repository().to_string());
        let cell = self.new_repos.lock().await.get(&key).cloned();
        cell.and_then(|c| c.get().copied()).unwrap_or(false)
    }

    /// Make `blob` present in every active destination repository.
    pub(super) async fn transfer_blob(
        &self,
        src: &Arc<Registry>,
        src_repo: &str,
        blob: &Descriptor,
        dests: &[Dest],
        bytes_read: &AtomicU64,
    ) -> Result<()> {
        let mut targets = Vec::new();
        for d in dests.iter().filter(|d| d.active()) {
            match self.place_without_data(src, src_repo, blob, d).await {
                Ok(None) => {}
                Ok(Some(t)) => targets.push(t),
                Err(e) => d.fail(&e),
            }
        }
        let mut backoff = Backoff::attempts(self.options.blob_attempts);
        // What a registry asked for when it refused the last attempt (429).
        let mut asked: Option<Duration> = None;
        while !targets.is_empty() {
            let attempt = backoff.attempt();
            let outcome = self
                .stream_blob(src, src_repo, blob, &targets, bytes_read)
                .await;
            let results = match outcome {
                Ok(r) => r,
                // Bytes damaged in transit read right the next time; a registry
                // that lies keeps failing and ends with the mismatch error.
                Err(e)
                    if !(e.is_transient() || matches!(e, Error::DigestMismatch { .. }))
                        || attempt >= self.options.blob_attempts =>
                {
                    return Err(e);
                }
                Err(e) => {
                    tracing::info!(digest = %blob.digest, error = %e, attempt, "source read failed; retrying the transfer");
                    targets.iter().map(|_| Err(Error::Cancelled)).collect()
                }
            };
            let mut retry = Vec::new();
            for (t, r) in targets.into_iter().zip(results) {
                if let Err(e) = &r
                    && let Some(wait) = e.retry_after()
                {
                    asked = Some(asked.map_or(wait, |a| a.max(wait)));
                }
                match r {
                    Ok(()) => {
                        t.dest.bytes.fetch_add(blob.size, Ordering::Relaxed);
                        t.dest.copied.fetch_add(1, Ordering::Relaxed);
                        t.guard.complete();
                    }
                    Err(e)
                        if attempt < self.options.blob_attempts
                            && (e.is_transient()
                                || matches!(e, Error::Cancelled | Error::Auth { .. })) =>
                    {
                        match t
                            .dest
                            .registry()
                            .start_upload(t.dest.reference.repository())
                            .await
                        {
                            Ok(location) => retry.push(Target { location, ..t }),
                            Err(e) => t.dest.fail(&e),
                        }
                    }
                    Err(e) => t.dest.fail(&e),
                }
            }
            targets = retry;
            // Only transfers with attempts left are in `retry`, so this waits.
            if !targets.is_empty() {
                backoff.wait(asked.take()).await;
            }
        }
        Ok(())
    }

    /// Claim the blob for `d`, then skip or mount it if possible. Returns an
    /// upload target when the bytes must be streamed.
    pub(super) async fn place_without_data<'a>(
        &self,
        src: &Registry,
        src_repo: &str,
        blob: &Descriptor,
        d: &'a Dest,
    ) -> Result<Option<Target<'a>>> {
        let Some(guard) = self.ledger.acquire(d.key(&blob.digest)).await else {
            d.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let reg = d.registry();
        let repo = d.reference.repository();
        if !self.is_new_repository(&d.reference).await
            && reg.blob_exists(repo, &blob.digest).await?
        {
            d.skipped.fetch_add(1, Ordering::Relaxed);
            guard.complete();
            return Ok(None);
        }
        let location = if reg.host() == src.host() && repo != src_repo {
            match reg.mount_blob(repo, &blob.digest, src_repo).await? {
                Mount::Mounted => {
                    d.mounted.fetch_add(1, Ordering::Relaxed);
                    guard.complete();
                    return Ok(None);
                }
                Mount::Upload(location) => location,
            }
        } else {
            reg.start_upload(repo).await?
        };
        Ok(Some(Target {
            dest: d,
            location,
            guard,
        }))
    }

    /// Read `blob` once from the source and stream it into every target's
    /// upload. `Err` means the source side failed (for all targets); the inner
    /// results are per target.
    pub(super) async fn stream_blob(
        &self,
        src: &Registry,
        src_repo: &str,
        blob: &Descriptor,
        targets: &[Target<'_>],
        bytes_read: &AtomicU64,
    ) -> Result<Vec<Result<()>>> {
        let mut resp = src.get_blob(src_repo, &blob.digest).await?;
        let what = || format!("blob {} from {}/{src_repo}", blob.digest, src.host());
        if let Some(len) = resp.content_length()
            && len != blob.size
        {
            return Err(Error::SizeMismatch {
                what: what(),
                expected: blob.size,
                actual: len,
            });
        }
        // Small bounded channels: memory per transfer stays at a few chunks
        // whatever the blob size, and the slowest destination sets the pace.
        let mut senders = Vec::new();
        let mut puts = Vec::new();
        for t in targets {
            let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
            let body =
                reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
                    rx.recv().await.map(|item| (item, rx))
                }));
            senders.push(Some(tx));
            let reg = t.dest.registry().clone();
            let repo = t.dest.reference.repository().to_string();
            let location = t.location.clone();
            let digest = blob.digest.clone();
            let size = blob.size;
            puts.push(async move { reg.put_blob(&repo, location, &digest, size, body).await });
        }
        let reader = async {
            let mut verifier = blob.digest.verifier();
            let mut held: Option<Bytes> = None;
            let read: Result<()> = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        verifier.update(&chunk);
                        bytes_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        self.progress
                            .bytes_read
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if verifier.len() > blob.size {
                            break Err(Error::SizeMismatch {
                                what: what(),
                                expected: blob.size,
                                actual: verifier.len(),
                            });
                        }
                        if let Some(prev) = held.replace(chunk) {
                            send_all(&mut senders, Ok(prev)).await;
                        }
                        if senders.iter().all(Option::is_none) {
                            // Every upload ended early; their errors say why.
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        break Err(Error::Transport {
                            registry: src.host().to_string(),
                            message: format!(
                                "reading {}: {}",
                                what(),
                                crate::error::error_line(&e)
                            ),
                        });
                    }
                }
            };
            let verified = read.and_then(|()| {
                if senders.iter().all(Option::is_none) {
                    return Ok(());
                }
                if verifier.len() != blob.size {
                    return Err(Error::SizeMismatch {
                        what: what(),
                        expected: blob.size,
                        actual: verifier.len(),
                    });
                }
                let actual = verifier.finish();
                if actual != blob.digest {
                    return Err(Error::DigestMismatch {
                        what: what(),
                        expected: blob.digest.clone(),
                        actual,
                    });
                }
                Ok(())
            });
            match &verified {
                Ok(()) => {
                    if let Some(last) = held.take() {
                        send_all(&mut senders, Ok(last)).await;
                    }
                }
                Err(e) => {
                    // Fail the bodies so no upload completes with unverified bytes.
                    let msg = e.to_string();
                    send_all(&mut senders, Err(std::io::Error::other(msg))).await;
                }
            }
            senders.clear();
            verified
        };
        let (verified, results) = tokio::join!(reader, futures_util::future::join_all(puts));
        verified?;
        Ok(results)
    }
}

pub(super) struct Target<'a> {
    pub(super) dest: &'a Dest,
    pub(super) location: Url,
    pub(super) guard: crate::copy::ledger::Guard,
}

pub(super) async fn send_all(
    senders: &mut [Option<mpsc::Sender<std::result::Result<Bytes, std::io::Error>>>],
    item: std::result::Result<Bytes, std::io::Error>,
) {
    for slot in senders.iter_mut() {
        if let Some(tx) = slot {
            let item = match &item {
                Ok(b) => Ok(b.clone()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            if tx.send(item).await.is_err() {
                // That upload's request ended; its own result tells why.
                *slot = None;
            }
        }
    }
}
